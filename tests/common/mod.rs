//! Support shared by the robustness tests: the corpus, the analysis pipeline (shared with the
//! fuzz target), an allocation guard and a watch on files outside a case's folder.
#![allow(dead_code)]
pub mod analyse;
pub mod corpus;
pub mod guard;
pub mod outputs;
