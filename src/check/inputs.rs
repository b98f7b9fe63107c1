//! Model inputs for verification: read from `.npy`/`.npz` files (`files`) or generated from a
//! seed (`generate`).
//!
//! Generated data is reproducible bit for bit on every platform: the generator is splitmix64 and
//! normal samples are an Irwin–Hall sum of 12 uniforms (only additions of exactly representable
//! numbers, no `ln`/`cos` whose last bit depends on the platform's libm).
//!
//! Its parts: `declared` (the inputs a model declares, and `--dim` checked against them), `data`
//! (the arrays of a set of inputs, and cutting samples out of them), `prepare` (putting it
//! together: which file feeds which input, shapes checked, the rest generated), `files`,
//! `generate`. The spec of what to prepare and its defaults are here.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

mod data;
mod declared;
mod files;
mod generate;
mod prepare;
pub use data::{Input, InputData, InputFact, InputSource, Inputs, NO_SAMPLE_AXIS};
pub(crate) use declared::read_proto;
pub use declared::{check_dims, model_inputs};
pub(crate) use files::{evenly_spaced, read_labels};
pub use generate::SplitMix64;
pub use prepare::{prepare_for, prepare_inputs, MAX_GENERATED_BYTES};

/// How to obtain inputs.
#[derive(Clone, Debug)]
pub struct InputSpec {
    /// Values for symbolic dims, by symbol name (`batch=4`). Also accepted: `<input>:<axis>=n`
    /// for dims without a name (`x:2=48`), and `batch` for an unnamed axis 0.
    pub dims: BTreeMap<String, i64>,
    /// `.npy` file per input name. The key `""` means "the only input".
    pub files: BTreeMap<String, PathBuf>,
    /// Arrays named like the model's inputs.
    pub npz: Option<PathBuf>,
    pub seed: u64,
    /// Axis-0 dims that nothing else fixes get this value.
    pub default_batch: usize,
    /// At most this many samples are read from the files (0: all): when the first input's file
    /// holds more rows, the [`evenly_spaced`] ones are read, from it and from every file with as
    /// many rows (only those rows are copied from a `.npy`); [`Inputs::file_rows`] says how
    /// many there were.
    pub max_rows: usize,
    /// `max_rows` reads the first rows, not evenly spaced ones: axis 0 holds one sequence (a
    /// streaming model, [`crate::model::graph::axis0_is_sequence`]), whose frames must stay in
    /// order and together.
    pub first_rows: bool,
}

impl Default for InputSpec {
    fn default() -> Self {
        InputSpec {
            dims: BTreeMap::new(),
            files: BTreeMap::new(),
            npz: None,
            seed: 0,
            default_batch: 1,
            max_rows: 0,
            first_rows: false,
        }
    }
}

/// Value for non-batch symbolic dims whose name looks like a sequence length (`seq`, `len`,
/// `time`, `token`, `step`) when nothing else fixes them: with 1 token, attention is the
/// identity and errors in Q/K would be invisible.
pub const DEFAULT_SEQ: usize = 8;
/// Value for any other unresolved dim.
pub const DEFAULT_DIM: usize = 1;
/// Value for an unresolved height or width of an image input (a 4-D float input of 1–4 fixed
/// channels): 1 × 1 images do not survive a CNN's downsampling and its skip Concats (a
/// dynamic-size YOLOv8 export failed to type there); 224 is a multiple of 32, as strided
/// backbones need.
pub const DEFAULT_SPATIAL: usize = 224;
/// Longest axis 0 evaluated in one run; longer inputs run in chunks.
pub const MAX_CHUNK: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum DimSpec {
    Fixed(i64),
    Symbolic(String),
    Unknown,
}

#[derive(Clone, Debug, Serialize)]
pub struct InputInfo {
    pub name: String,
    /// ONNX `TensorProto.DataType` code.
    pub elem_type: i32,
    pub dims: Vec<DimSpec>,
    /// Generated integer values stay below this (the rows of the table the input indexes:
    /// [`super::bounds`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_bound: Option<u64>,
}
