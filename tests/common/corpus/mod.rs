//! A corpus of broken, hostile and tricky-but-valid ONNX models, built in code from the
//! project's models (`models/*.onnx`) or from hand-made messages and raw bytes.
//!
//! Each [`Case`] is a folder: `model.onnx` plus any files the case needs (external data,
//! symlinks, a named pipe). [`write_case`] lays it out under a parent folder which also holds
//! [`OUTSIDE`], a file that hostile external-data locations point to: nothing may read it.
//!
//! Used by `tests/robustness.rs` (in process) and `examples/make_corpus.rs` (writes the folders,
//! for CLI tests). `Expect::Valid` means a valid ONNX model that must be processed; `tract`
//! says whether running it in tract is also expected to work cheaply.
//!
//! Split by concept: message builders (`builders`, `raw`), the cases one module per category
//! (`bytes`, `tensors`, `graphs`, `attributes`, `external`, `valid`), then `write_case` (`write`)
//! and the fuzzer's `seeds`.
#![allow(dead_code)]

use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, SparseTensorProto,
    StringStringEntryProto, TensorProto, TypeProto, ValueInfoProto,
};
use std::path::{Path, PathBuf};

/// Name of the model file in each case folder.
pub const MODEL: &str = "model.onnx";
/// Bait file in the parent folder of every case: hostile locations point here.
pub const OUTSIDE: &str = "outside.bin";
/// In an external-data location, replaced by the absolute path of [`OUTSIDE`] when written.
pub const OUTSIDE_ABS: &str = "@@OUTSIDE_ABS@@";

#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    /// A valid model: load, index and every prune run must succeed and yield a good model.
    Valid,
    /// Must be refused with a one-line error containing this text (a file, tensor or node name,
    /// or the reason).
    Error(&'static str),
}

#[derive(Clone, Debug)]
pub enum Extra {
    File(String, Vec<u8>),
    Dir(String),
    /// symlink at `.0` pointing to `.1` (relative targets are relative to the link's folder)
    Symlink(String, String),
    /// a named pipe: opening it for reading blocks until a writer comes
    Fifo(String),
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub category: &'static str,
    pub what: &'static str,
    pub model: Vec<u8>,
    pub extra: Vec<Extra>,
    pub expect: Expect,
    /// For `Valid` cases: tract is expected to run the model cheaply too (the CLI's check).
    pub tract: bool,
}

mod attributes;
mod builders;
mod bytes;
mod external;
mod graphs;
mod raw;
mod seeds;
mod tensors;
mod valid;
mod write;

pub use builders::*;
pub use raw::*;
// Not every test crate that includes `common` writes cases or takes the seeds.
#[allow(unused_imports)]
pub use seeds::seeds;
#[allow(unused_imports)]
pub use write::write_case;

use attributes::attribute_cases;
use bytes::bytes_cases;
use external::external_cases;
use graphs::graph_cases;
use tensors::tensor_cases;
use valid::valid_cases;

// ---------------------------------------------------------------------------------------------
// The corpus

fn case(name: &'static str, category: &'static str, what: &'static str, model: Vec<u8>, expect: Expect) -> Case {
    Case { name, category, what, model, extra: vec![], expect, tract: true }
}

fn err(s: &'static str) -> Expect {
    Expect::Error(s)
}

pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    bytes_cases(&mut v);
    tensor_cases(&mut v);
    graph_cases(&mut v);
    attribute_cases(&mut v);
    external_cases(&mut v);
    valid_cases(&mut v);
    v
}
