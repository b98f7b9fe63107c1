//! onnx-emp: prune ONNX models with Effective Model Pruning (EMP).
//!
//! Data flows one way: bytes → model → analysis → plan → rewrite → bytes, then verification.
pub mod calib;
pub mod check;
pub mod cli;
pub mod diff;
pub mod emp;
pub mod flags;
pub mod html;
pub mod interrupt;
pub mod model;
pub mod progress;
pub mod prune;
pub mod reconstruct;
pub mod report;
pub mod run;
pub mod simd;
