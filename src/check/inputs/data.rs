//! The data of a set of inputs: one array per input in the model's element type ([`InputData`]),
//! where it came from, and the axis its samples lie on; counting, checking (NaN/Inf, constant
//! data, raw pixels, statistics) and cutting samples out of them.
//!
//! Contract: cutting samples ([`Inputs::head`], [`Inputs::samples`], [`Inputs::sample_range`])
//! cuts every input whose samples axis holds the first input's rows, along that axis, and keeps
//! the others whole; a model without a batch axis ([`NO_SAMPLE_AXIS`]) is one sample, never cut.
//! Arrays are shared (`Arc`), so copies of a set cost no data.

use crate::model::tensor::dt;
use ndarray::ArrayD;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// One concrete input array in the model's element type.
#[derive(Clone, Debug)]
pub enum InputData {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    F16(ArrayD<half::f16>),
    I64(ArrayD<i64>),
    I32(ArrayD<i32>),
    I8(ArrayD<i8>),
    U8(ArrayD<u8>),
    Bool(ArrayD<bool>),
}

/// `InputData` of the same element type, from an expression over the array `a` of each variant.
macro_rules! each_array {
    ($d:expr, $a:ident => $e:expr) => {
        match $d {
            InputData::F32($a) => InputData::F32($e),
            InputData::F64($a) => InputData::F64($e),
            InputData::F16($a) => InputData::F16($e),
            InputData::I64($a) => InputData::I64($e),
            InputData::I32($a) => InputData::I32($e),
            InputData::I8($a) => InputData::I8($e),
            InputData::U8($a) => InputData::U8($e),
            InputData::Bool($a) => InputData::Bool($e),
        }
    };
}

impl InputData {
    pub fn shape(&self) -> &[usize] {
        match self {
            InputData::F32(a) => a.shape(),
            InputData::F64(a) => a.shape(),
            InputData::F16(a) => a.shape(),
            InputData::I64(a) => a.shape(),
            InputData::I32(a) => a.shape(),
            InputData::I8(a) => a.shape(),
            InputData::U8(a) => a.shape(),
            InputData::Bool(a) => a.shape(),
        }
    }

    /// The first `k` entries of axis 0 (all of them when there are fewer).
    pub fn head(&self, k: usize) -> InputData {
        self.rows(0, k)
    }

    /// Entries `lo..hi` of axis 0 (clamped to what there is).
    pub fn rows(&self, lo: usize, hi: usize) -> InputData {
        self.rows_on(0, lo, hi)
    }

    /// Entries `lo..hi` of `axis` (clamped to what there is).
    pub fn rows_on(&self, axis: usize, lo: usize, hi: usize) -> InputData {
        use ndarray::{Axis, Slice};
        let hi = hi.min(self.shape().get(axis).copied().unwrap_or(0));
        each_array!(self, a => a.slice_axis(Axis(axis), Slice::from(lo.min(hi)..hi)).to_owned())
    }

    /// The entries of axis 0 at `idx` (in that order; indices past the end are skipped).
    pub fn pick(&self, idx: &[usize]) -> InputData {
        self.pick_on(0, idx)
    }

    /// The entries of `axis` at `idx` (in that order; indices past the end are skipped).
    pub fn pick_on(&self, axis: usize, idx: &[usize]) -> InputData {
        let n = self.shape().get(axis).copied().unwrap_or(0);
        let idx: Vec<usize> = idx.iter().copied().filter(|&i| i < n).collect();
        each_array!(self, a => a.select(ndarray::Axis(axis), &idx))
    }

    /// ONNX element type code.
    pub fn elem_type(&self) -> i32 {
        match self {
            InputData::F32(_) => dt::FLOAT,
            InputData::F64(_) => dt::DOUBLE,
            InputData::F16(_) => dt::FLOAT16,
            InputData::I64(_) => dt::INT64,
            InputData::I32(_) => dt::INT32,
            InputData::I8(_) => dt::INT8,
            InputData::U8(_) => dt::UINT8,
            InputData::Bool(_) => dt::BOOL,
        }
    }
}

/// Where an input's data came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputSource {
    Npy(PathBuf),
    Npz(PathBuf),
    Generated,
}

#[derive(Clone, Debug)]
pub struct Input {
    pub name: String,
    /// Shared: copies of a set of inputs (reconstruction's boundaries each hold the calibration
    /// inputs beside their cached values) share its arrays.
    pub data: Arc<InputData>,
    pub source: InputSource,
    /// The axis its samples lie on: 0, or where the model declares the first input's axis-0
    /// symbol (an LSTM's initial state `[1, batch, H]` beside `x [batch, T, F]`), so that
    /// cutting samples cuts it too; [`NO_SAMPLE_AXIS`] in a model without a batch axis.
    pub sample_axis: usize,
}

/// [`Input::sample_axis`] of the inputs of a model without a batch axis (its first input is one
/// feature vector, rank 1 with a fixed size: `x [16]`): the data is one sample, and no axis of
/// it is cut as samples (the value is past every rank).
pub const NO_SAMPLE_AXIS: usize = usize::MAX;

/// Name, element type and concrete shape: what tract needs to compile a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFact {
    pub name: String,
    pub elem_type: i32,
    pub shape: Vec<usize>,
}

/// The inputs of a model, in the model's input order.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub inputs: Vec<Input>,
    /// Symbolic/unknown dims that were filled with a default (`"seq=8 (default)"`), for reports.
    pub assumed: Vec<String>,
    /// The samples the files held, when [`InputSpec::max_rows`](super::InputSpec::max_rows) read
    /// fewer.
    pub file_rows: Option<usize>,
}

impl Inputs {
    pub fn facts(&self) -> Vec<InputFact> {
        self.inputs
            .iter()
            .map(|i| InputFact { name: i.name.clone(), elem_type: i.data.elem_type(), shape: i.data.shape().to_vec() })
            .collect()
    }

    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.inputs.iter().map(|i| (i.name.clone(), i.data.shape().to_vec())).collect()
    }

    /// Samples: the length of the first input's axis 0 (0 without inputs, 1 for a scalar).
    pub fn rows(&self) -> usize {
        self.inputs.first().map(|i| i.data.shape().first().copied().unwrap_or(1)).unwrap_or(0)
    }

    /// The samples as a report counts them: [`Inputs::rows`], or 1 for a model without a batch
    /// axis, whose axis 0 is its features (`x [16]` is one vector, not 16 samples).
    pub fn sample_count(&self) -> usize {
        match self.inputs.first() {
            Some(i) if i.sample_axis == NO_SAMPLE_AXIS => 1,
            _ => self.rows(),
        }
    }

    /// The first float input holding NaN or ±Inf: its name, how many samples (entries of axis
    /// 0) hold one, and the first of them.
    pub fn non_finite(&self) -> Option<(String, usize, usize)> {
        fn rows<T>(a: &ArrayD<T>, bad: impl Fn(&T) -> bool) -> Vec<usize> {
            if a.ndim() == 0 {
                return if a.iter().any(bad) { vec![0] } else { vec![] };
            }
            let axis = ndarray::Axis(0);
            a.axis_iter(axis).enumerate().filter(|(_, r)| r.iter().any(&bad)).map(|(i, _)| i).collect()
        }
        self.inputs.iter().find_map(|i| {
            let r = match i.data.as_ref() {
                InputData::F32(a) => rows(a, |v| !v.is_finite()),
                InputData::F64(a) => rows(a, |v| !v.is_finite()),
                InputData::F16(a) => rows(a, |v| !v.is_finite()),
                _ => vec![],
            };
            r.first().map(|&first| (i.name.clone(), r.len(), first))
        })
    }

    /// Whether every input holds a single value everywhere.
    pub fn all_constant(&self) -> bool {
        fn one<T: PartialEq>(a: &ArrayD<T>) -> bool {
            a.iter().next().is_none_or(|f| a.iter().all(|v| v == f))
        }
        self.inputs.iter().all(|i| match i.data.as_ref() {
            InputData::F32(a) => one(a),
            InputData::F64(a) => one(a),
            InputData::F16(a) => one(a),
            InputData::I64(a) => one(a),
            InputData::I32(a) => one(a),
            InputData::I8(a) => one(a),
            InputData::U8(a) => one(a),
            InputData::Bool(a) => one(a),
        })
    }

    /// Mean and standard deviation of each float input's values (in input order).
    pub fn float_stats(&self) -> Vec<(String, f64, f64)> {
        fn stats<T: Copy>(a: &ArrayD<T>, f: impl Fn(T) -> f64) -> (f64, f64) {
            let n = a.len().max(1) as f64;
            let mean = a.iter().map(|&v| f(v)).sum::<f64>() / n;
            let var = a.iter().map(|&v| (f(v) - mean).powi(2)).sum::<f64>() / n;
            (mean, var.sqrt())
        }
        self.inputs
            .iter()
            .filter_map(|i| {
                let (m, s) = match i.data.as_ref() {
                    InputData::F32(a) => stats(a, |v| v as f64),
                    InputData::F64(a) => stats(a, |v| v),
                    InputData::F16(a) => stats(a, |v| v.to_f64()),
                    _ => return None,
                };
                Some((i.name.clone(), m, s))
            })
            .collect()
    }

    /// The first float input whose values all lie from 0 to 255 and reach 10 or more (8-bit
    /// pixels, not normalised), with its largest value: what a model trained on normalised inputs
    /// must not be calibrated on.
    pub fn raw_pixels(&self) -> Option<(String, f64)> {
        fn scan(it: impl Iterator<Item = f64>) -> Option<f64> {
            let mut max = 0.0f64;
            for v in it {
                if !(0.0..=255.0).contains(&v) {
                    return None;
                }
                max = max.max(v);
            }
            (max >= 10.0).then_some(max)
        }
        self.inputs.iter().find_map(|i| {
            let max = match i.data.as_ref() {
                InputData::F32(a) => scan(a.iter().map(|&v| v as f64)),
                InputData::F64(a) => scan(a.iter().copied()),
                InputData::F16(a) => scan(a.iter().map(|v| v.to_f64())),
                _ => None,
            }?;
            Some((i.name.clone(), max))
        })
    }

    /// An error naming the first input of a user's file that holds NaN or ±Inf (`what`: the flag).
    pub fn check_finite(&self, what: &str) -> anyhow::Result<()> {
        if let Some((name, n, first)) = self.non_finite() {
            anyhow::bail!(
                "{what}: input '{name}': {n} of {} sample(s) hold NaN or Inf (the first: sample {first}); \
                 drop or repair them: a pruned model fitted or judged on them means nothing",
                self.rows()
            );
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Input> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// The first `k` samples: every input whose samples axis ([`Input::sample_axis`], 0 unless
    /// the model says otherwise) has [`Inputs::rows`] entries is cut to its first `k`, the others
    /// are kept whole. `None` when there are no more than `k`.
    pub fn head(&self, k: usize) -> Option<Inputs> {
        // A model without a batch axis has one sample: cutting its axis 0 cut its features.
        let rows = self.sample_count();
        if rows <= k || k == 0 {
            return None;
        }
        Some(self.sample_range(0, k))
    }

    /// The samples at `idx`, picked as [`Inputs::head`] cuts.
    pub fn samples(&self, idx: &[usize]) -> Inputs {
        self.per_sample_input(|d, axis| d.pick_on(axis, idx))
    }

    /// Samples `lo..hi`, cut as [`Inputs::head`] cuts.
    pub fn sample_range(&self, lo: usize, hi: usize) -> Inputs {
        self.per_sample_input(|d, axis| d.rows_on(axis, lo, hi))
    }

    /// `f` applied to every input whose samples axis has [`Inputs::rows`] entries, with that
    /// axis; the others are kept whole.
    fn per_sample_input(&self, f: impl Fn(&InputData, usize) -> InputData) -> Inputs {
        let rows = self.rows();
        let inputs = self
            .inputs
            .iter()
            .map(|i| Input {
                name: i.name.clone(),
                data: if i.data.shape().get(i.sample_axis) == Some(&rows) {
                    Arc::new(f(&i.data, i.sample_axis))
                } else {
                    i.data.clone()
                },
                source: i.source.clone(),
                sample_axis: i.sample_axis,
            })
            .collect();
        Inputs { inputs, assumed: self.assumed.clone(), file_rows: self.file_rows }
    }
}
