//! Model inputs for verification: read from `.npy`/`.npz` files (`files`) or generated from a
//! seed (`generate`).
//!
//! Generated data is reproducible bit for bit on every platform: the generator is splitmix64 and
//! normal samples are an Irwin–Hall sum of 12 uniforms (only additions of exactly representable
//! numbers, no `ln`/`cos` whose last bit depends on the platform's libm).

use crate::model::tensor::dt;
use anyhow::{bail, Context, Result};
use ndarray::ArrayD;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as PbDim;
use tract_onnx::prelude::Framework;

mod files;
mod generate;
use files::{convert, npz_names, read_npy_file_picking, read_npz_array};
pub(crate) use files::{evenly_spaced, read_labels};
use generate::generate;
pub use generate::SplitMix64;

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
    /// The samples the files held, when [`InputSpec::max_rows`] read fewer.
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

/// Parse a model file with tract's protobuf types (no external data needed for the graph).
pub(crate) fn read_proto(model_path: &Path) -> Result<pb::ModelProto> {
    tract_onnx::onnx()
        .proto_model_for_path(model_path)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .with_context(|| format!("{}: cannot parse ONNX protobuf", model_path.display()))
}

pub(crate) fn inputs_of(proto: &pb::ModelProto) -> Result<Vec<InputInfo>> {
    let g = proto.graph.as_ref().context("model has no graph")?;
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let bounds = super::bounds::index_bounds(g);
    let mut out = vec![];
    for vi in &g.input {
        if inits.contains(vi.name.as_str()) {
            continue;
        }
        let Some(pb::type_proto::Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            bail!("input '{}' has no tensor type", vi.name);
        };
        let dims = match &t.shape {
            None => bail!("input '{}' has no shape (rank unknown); cannot prepare data for it", vi.name),
            Some(s) => s
                .dim
                .iter()
                .map(|d| match &d.value {
                    Some(PbDim::DimValue(v)) if *v >= 0 => DimSpec::Fixed(*v),
                    Some(PbDim::DimParam(p)) if !p.is_empty() && p != "?" => DimSpec::Symbolic(p.clone()),
                    _ => DimSpec::Unknown,
                })
                .collect(),
        };
        let index_bound = bounds.get(&vi.name).copied();
        out.push(InputInfo { name: vi.name.clone(), elem_type: t.elem_type, dims, index_bound });
    }
    Ok(out)
}

/// The real inputs of a model (graph inputs that are not initializers), in order.
pub fn model_inputs(model_path: &Path) -> Result<Vec<InputInfo>> {
    let proto = read_proto(model_path)?;
    inputs_of(&proto).with_context(|| model_path.display().to_string())
}

// ---------------------------------------------------------------------------------------------
// Putting it together

fn is_seq_like(sym: &str) -> bool {
    let l = sym.to_ascii_lowercase();
    ["seq", "len", "time", "token", "step"].iter().any(|k| l.contains(k))
}

fn fmt_dims(dims: &[DimSpec]) -> String {
    let v: Vec<String> = dims
        .iter()
        .map(|d| match d {
            DimSpec::Fixed(v) => v.to_string(),
            DimSpec::Symbolic(s) => s.clone(),
            DimSpec::Unknown => "?".into(),
        })
        .collect();
    format!("[{}]", v.join(", "))
}

/// Build the inputs of `model_path` as `spec` says.
pub fn prepare_inputs(model_path: &Path, spec: &InputSpec) -> Result<Inputs> {
    let infos = model_inputs(model_path)?;
    prepare_for(&infos, spec).with_context(|| model_path.display().to_string())
}

/// [`prepare_inputs`] on an already known input list.
/// `--dim` values: positive, and each naming a free dim of the model's inputs (a symbol, `batch`,
/// or `input:axis` of an unnamed one); a typo, or an axis the model fixes, is an error.
pub fn check_dims(infos: &[InputInfo], dims: &BTreeMap<String, i64>) -> Result<()> {
    for (k, v) in dims {
        if *v <= 0 {
            bail!("--dim {k}={v}: dims must be positive");
        }
        // A name no free dim has (a typo, or an axis the model fixes) is an error, not ignored;
        // `batch` is always accepted (an unnamed axis 0).
        let free = |name: &str, axis: usize| {
            infos
                .iter()
                .any(|i| i.name == name && matches!(i.dims.get(axis), Some(DimSpec::Symbolic(_) | DimSpec::Unknown)))
        };
        let known = k == "batch"
            || infos.iter().any(|i| i.dims.iter().any(|d| matches!(d, DimSpec::Symbolic(s) if s == k)))
            || k.rsplit_once(':').is_some_and(|(n, a)| a.parse().is_ok_and(|a| free(n, a)));
        if !known {
            let names: Vec<String> = infos
                .iter()
                .flat_map(|i| {
                    i.dims.iter().enumerate().filter_map(move |(a, d)| match d {
                        DimSpec::Symbolic(s) => Some(s.clone()),
                        DimSpec::Unknown => Some(format!("{}:{a}", i.name)),
                        _ => None,
                    })
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let list = if names.is_empty() { "none: every dim is fixed".to_string() } else { names.join(", ") };
            bail!("--dim {k}={v}: the model's inputs have no free dim of that name (free dims: {list})");
        }
    }
    Ok(())
}

/// How a file source is named in messages: the `.npy` path, or `file.npz['array']`.
fn source_name(source: &InputSource, npz_array: &BTreeMap<String, String>, name: &str) -> String {
    match source {
        InputSource::Npy(p) => p.display().to_string(),
        InputSource::Npz(p) => format!("{}['{}']", p.display(), npz_array.get(name).map_or(name, |s| s.as_str())),
        InputSource::Generated => String::new(),
    }
}

/// The largest input generated from random data (`--dim batch=100000000` asked for 25.6 GB and
/// the allocation aborted the process).
pub const MAX_GENERATED_BYTES: usize = 1 << 30;

pub fn prepare_for(infos: &[InputInfo], spec: &InputSpec) -> Result<Inputs> {
    if infos.is_empty() {
        bail!("the model has no inputs");
    }
    check_dims(infos, &spec.dims)?;
    // Which file feeds which input.
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (k, p) in &spec.files {
        if k.is_empty() {
            if infos.len() != 1 {
                let names: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
                bail!(
                    "{}: the model has {} inputs ({}); give files as name=file.npy",
                    p.display(),
                    infos.len(),
                    names.join(", ")
                );
            }
            files.insert(infos[0].name.clone(), p.clone());
        } else if infos.iter().any(|i| &i.name == k) {
            files.insert(k.clone(), p.clone());
        } else {
            let names: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
            bail!("{k}={}: the model has no input '{k}' (inputs: {})", p.display(), names.join(", "));
        }
    }

    // Which array of the .npz feeds which input: its own name. A file that names none of the
    // inputs is an error (it would silently be replaced by generated data), except one array for
    // a model of one input (`np.savez(f, x)` names it `arr_0`).
    let mut npz_array: BTreeMap<String, String> = BTreeMap::new();
    let mut unread: Vec<String> = vec![];
    if let Some(z) = &spec.npz {
        let held = npz_names(z)?;
        for info in infos.iter().filter(|i| !files.contains_key(&i.name)) {
            if held.contains(&info.name) {
                npz_array.insert(info.name.clone(), info.name.clone());
            }
        }
        if npz_array.is_empty() {
            match (infos, held.as_slice()) {
                ([only], [one]) if !files.contains_key(&only.name) => {
                    npz_array.insert(only.name.clone(), one.clone());
                }
                _ => {
                    let names: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
                    bail!(
                        "{}: no array named like the model's inputs ({}); it holds: {}. Save one array per input \
                         under the input's name (np.savez(f, {}=...))",
                        z.display(),
                        names.join(", "),
                        if held.is_empty() { "nothing".into() } else { held.join(", ") },
                        names.first().copied().unwrap_or("x")
                    );
                }
            }
        }
        // Arrays that feed no input (labels saved beside the samples): said, not dropped in
        // silence.
        let fed: Vec<&String> = npz_array.values().collect();
        let rest: Vec<&str> = held.iter().filter(|h| !fed.contains(h)).map(|h| h.as_str()).collect();
        if !rest.is_empty() {
            let first = infos.first().map_or("", |i| i.name.as_str());
            unread.push(format!(
                "input '{first}' comes from {}, whose arrays {} feed no input: ignored",
                z.display(),
                rest.join(", ")
            ));
        }
    }

    let axes = sample_axes(infos);
    // Read the given data, checking rank, fixed dims and symbol consistency.
    let mut sym_vals: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut data: Vec<Option<(InputData, InputSource)>> = Vec::with_capacity(infos.len());
    let mut casts: Vec<String> = vec![];
    // With `max_rows`: the first input's rows and the ones read, once its file had more.
    let mut sampled: Option<(usize, Vec<usize>)> = None;
    for (k, info) in infos.iter().enumerate() {
        let mut pick = |shape: &[usize]| -> Option<Vec<usize>> {
            // One sample (a model without a batch axis): its axis 0 is not cut to `max_rows`.
            if axes[k] == NO_SAMPLE_AXIS {
                return None;
            }
            let n = *shape.first()?;
            if k == 0 && spec.max_rows > 0 && n > spec.max_rows {
                let idx = if spec.first_rows { (0..spec.max_rows).collect() } else { evenly_spaced(n, spec.max_rows) };
                sampled = Some((n, idx));
            }
            sampled.as_ref().filter(|(rows, _)| *rows == n).map(|(_, idx)| idx.clone())
        };
        let found = if let Some(p) = files.get(&info.name) {
            Some((read_npy_file_picking(p, &mut pick)?, InputSource::Npy(p.clone())))
        } else if let (Some(z), Some(array)) = (&spec.npz, npz_array.get(&info.name)) {
            read_npz_array(z, array)?.map(|a| {
                let a = match pick(a.shape()) {
                    Some(idx) => a.pick(&idx),
                    None => a,
                };
                (a, InputSource::Npz(z.clone()))
            })
        } else {
            None
        };
        let Some((arr, source)) = found else {
            data.push(None);
            continue;
        };
        // An input whose samples lie on another axis: the same samples picked there.
        let arr = match &sampled {
            Some((n, idx)) if axes[k] > 0 && arr.shape().get(axes[k]) == Some(n) => arr.pick_on(axes[k], idx),
            _ => arr,
        };
        let shape = arr.shape().to_vec();
        let what = source_name(&source, &npz_array, &info.name);
        if shape.first() == Some(&0) {
            bail!("input '{}': {what} holds no samples (axis 0 is 0)", info.name);
        }
        if shape.len() != info.dims.len() {
            // One more axis in front, the rest as declared: samples for a model that has no batch
            // axis, which runs one sample per run and is not split along one here.
            let stacked = shape.len() == info.dims.len() + 1
                && info.dims.iter().zip(&shape[1..]).all(|(d, &s)| !matches!(d, DimSpec::Fixed(v) if *v as usize != s));
            bail!(
                "input '{}': {what} has shape {shape:?} (rank {}) but the model expects {} (rank {}){}",
                info.name,
                shape.len(),
                fmt_dims(&info.dims),
                info.dims.len(),
                if stacked {
                    ": the model has no batch axis, so a file holds one sample of it (re-export it with a batch \
                     axis to verify or calibrate on many)"
                } else {
                    ""
                }
            );
        }
        for (axis, (d, &s)) in info.dims.iter().zip(&shape).enumerate() {
            match d {
                // A model that fixes its batch to 1 runs a file of many rows one row at a time
                // (`run/chunks.rs`; onnxruntime's worker likewise).
                DimSpec::Fixed(1) if axis == 0 && s > 1 => {}
                DimSpec::Fixed(v) if *v as usize != s => bail!(
                    "input '{}': {what} has shape {shape:?} but the model fixes axis {axis} to {v} (expects {}){}",
                    info.name,
                    fmt_dims(&info.dims),
                    if axis == 0 {
                        // Only a batch of 1 is taken as a batch axis: a fixed axis 0 above 1 may
                        // be a sequence or a channel axis, and splitting a file along it would
                        // run a different computation.
                        format!(
                            ": pass exactly {v} rows, or export the model with a free batch axis \
                             (torch.onnx.export(..., dynamic_axes={{'{}': {{0: 'batch'}}}}))",
                            info.name
                        )
                    } else {
                        String::new()
                    }
                ),
                DimSpec::Symbolic(sym) => {
                    if let Some((prev, by)) = sym_vals.get(sym) {
                        if *prev != s {
                            bail!("dim '{sym}' is {prev} in {by} but {s} in input '{}' ({what})", info.name);
                        }
                    } else {
                        if let Some(v) = spec.dims.get(sym) {
                            if *v as usize != s {
                                bail!("--dim {sym}={v} but input '{}' ({what}) has {sym}={s}", info.name);
                            }
                        }
                        sym_vals.insert(sym.clone(), (s, format!("input '{}'", info.name)));
                    }
                }
                _ => {}
            }
        }
        let from = arr.dtype();
        let conv = convert(&info.name, arr, info.elem_type).with_context(|| what.clone())?;
        // Integer data for a float input (raw uint8 pixels for a normalised image model) is
        // cast as it is: said, since nothing scales it.
        if !from.starts_with("float") && crate::model::tensor::is_float(info.elem_type) {
            casts.push(format!(
                "input '{}': the file holds {from}, read as {} with its values as they are (not scaled)",
                info.name,
                crate::model::tensor::dtype_name(info.elem_type)
            ));
        }
        data.push(Some((conv, source)));
    }

    // Generate the rest (said so when other inputs came from files).
    let mut assumed = casts;
    assumed.extend(unread);
    let any_given = data.iter().any(|d| d.is_some());
    let mut inputs = Vec::with_capacity(infos.len());
    for ((info, given), &sample_axis) in infos.iter().zip(data).zip(&axes) {
        if let Some((d, source)) = given {
            inputs.push(Input { name: info.name.clone(), data: Arc::new(d), source, sample_axis });
            continue;
        }
        let mut shape = Vec::with_capacity(info.dims.len());
        let image = info.dims.len() == 4
            && crate::model::tensor::is_float(info.elem_type)
            && matches!(info.dims[1], DimSpec::Fixed(c) if (1..=4).contains(&c));
        let other = |axis: usize| if image && axis >= 2 { DEFAULT_SPATIAL } else { DEFAULT_DIM };
        for (axis, d) in info.dims.iter().enumerate() {
            let by_axis = spec.dims.get(&format!("{}:{axis}", info.name)).map(|v| *v as usize);
            let v = match d {
                DimSpec::Fixed(v) => *v as usize,
                DimSpec::Symbolic(sym) => {
                    if let Some(v) = by_axis {
                        v
                    } else if let Some((v, _)) = sym_vals.get(sym) {
                        *v
                    } else if let Some(v) = spec.dims.get(sym) {
                        *v as usize
                    } else {
                        let v = if axis == 0 {
                            spec.default_batch.max(1)
                        } else if is_seq_like(sym) {
                            DEFAULT_SEQ
                        } else {
                            other(axis)
                        };
                        assumed.push(format!("{sym}={v} (default)"));
                        v
                    }
                }
                DimSpec::Unknown => {
                    if let Some(v) = by_axis {
                        v
                    } else if let (0, Some(v)) = (axis, spec.dims.get("batch")) {
                        *v as usize
                    } else {
                        let v = if axis == 0 { spec.default_batch.max(1) } else { other(axis) };
                        assumed.push(format!("{}:{axis}={v} (unnamed dim, default)", info.name));
                        v
                    }
                }
            };
            if let DimSpec::Symbolic(sym) = d {
                sym_vals.entry(sym.clone()).or_insert((v, format!("input '{}'", info.name)));
            }
            shape.push(v);
        }
        let n = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
        let bytes = n.and_then(|n| n.checked_mul(crate::model::tensor::elem_size(info.elem_type).unwrap_or(8)));
        match (n, bytes) {
            (Some(n), Some(b)) if n as u64 <= crate::model::tensor::MAX_ELEMS && b <= MAX_GENERATED_BYTES => {}
            _ => bail!(
                "input '{}': shape {shape:?} is too large to generate (over {} GiB): give smaller dims (--dim) \
                 or the data (--inputs)",
                info.name,
                MAX_GENERATED_BYTES >> 30
            ),
        }
        let d = generate(&info.name, info.elem_type, &shape, spec.seed, info.index_bound)?;
        if any_given {
            assumed.push(format!("input '{}' generated (no file gives it)", info.name));
        }
        inputs.push(Input { name: info.name.clone(), data: Arc::new(d), source: InputSource::Generated, sample_axis });
    }
    assumed.dedup();
    Ok(Inputs { inputs, assumed, file_rows: sampled.map(|(n, _)| n) })
}

/// Each input's samples axis: where it declares the symbol the first input's axis 0 has (an
/// LSTM's initial state `[1, batch, H]`), else 0.
fn sample_axes(infos: &[InputInfo]) -> Vec<usize> {
    if infos.first().is_some_and(|i| matches!(i.dims.as_slice(), [DimSpec::Fixed(v)] if *v > 1)) {
        return vec![NO_SAMPLE_AXIS; infos.len()];
    }
    let Some(DimSpec::Symbolic(sym)) = infos.first().and_then(|i| i.dims.first()) else {
        return vec![0; infos.len()];
    };
    infos
        .iter()
        .map(|i| i.dims.iter().position(|d| matches!(d, DimSpec::Symbolic(s) if s == sym)).unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn prng_is_stable() {
        let mut r = SplitMix64::new(0);
        // Reference values of splitmix64 with seed 0.
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut r = SplitMix64::new(42);
        let v: Vec<f64> = (0..20000).map(|_| r.normal()).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }

    fn info(name: &str, elem: i32, dims: Vec<DimSpec>) -> InputInfo {
        InputInfo { name: name.into(), elem_type: elem, dims, index_bound: None }
    }

    #[test]
    fn generates_by_name_and_symbol() {
        let infos = vec![
            info("input_ids", dt::INT64, vec![DimSpec::Symbolic("batch".into()), DimSpec::Symbolic("seq".into())]),
            info("attention_mask", dt::INT64, vec![DimSpec::Symbolic("batch".into()), DimSpec::Symbolic("seq".into())]),
        ];
        let mut spec = InputSpec::default();
        spec.dims.insert("batch".into(), 3);
        let a = prepare_for(&infos, &spec).unwrap();
        assert_eq!(a.inputs[0].data.shape(), &[3, DEFAULT_SEQ]);
        match (&*a.inputs[0].data, &*a.inputs[1].data) {
            (InputData::I64(ids), InputData::I64(mask)) => {
                assert!(ids.iter().all(|v| (0..100).contains(v)));
                assert!(ids.iter().any(|v| *v > 1));
                assert!(mask.iter().all(|v| *v == 1));
            }
            _ => panic!("wrong types"),
        }
        assert_eq!(a.assumed, vec!["seq=8 (default)".to_string()]);
        // Same seed, same data; another seed, other data.
        let b = prepare_for(&infos, &spec).unwrap();
        let c = prepare_for(&infos, &InputSpec { seed: 1, ..spec.clone() }).unwrap();
        let ids = |x: &Inputs| match &*x.inputs[0].data {
            InputData::I64(a) => a.clone(),
            _ => unreachable!(),
        };
        assert_eq!(ids(&a), ids(&b));
        assert_ne!(ids(&a), ids(&c));
    }

    #[test]
    fn an_image_input_of_unknown_size_gets_a_size_a_cnn_can_run() {
        let sym = |s: &str| DimSpec::Symbolic(s.into());
        let img = info("images", dt::FLOAT, vec![sym("batch"), DimSpec::Fixed(3), sym("height"), sym("width")]);
        let a = prepare_for(std::slice::from_ref(&img), &InputSpec::default()).unwrap();
        assert_eq!(a.inputs[0].data.shape(), &[1, 3, DEFAULT_SPATIAL, DEFAULT_SPATIAL]);
        assert_eq!(a.assumed, ["batch=1 (default)", "height=224 (default)", "width=224 (default)"]);
        // --dim still decides.
        let mut spec = InputSpec::default();
        spec.dims.insert("height".into(), 64);
        assert_eq!(prepare_for(&[img], &spec).unwrap().inputs[0].data.shape(), &[1, 3, 64, DEFAULT_SPATIAL]);
        // Not an image (many channels, or not float): the plain default.
        let feat = info("f", dt::FLOAT, vec![sym("batch"), DimSpec::Fixed(64), sym("h"), sym("w")]);
        assert_eq!(prepare_for(&[feat], &InputSpec::default()).unwrap().inputs[0].data.shape(), &[1, 64, 1, 1]);
    }

    /// An `.npz` feeds each input from the array of its name; one array for a one-input model
    /// whatever its name (`np.savez(f, x)` calls it `arr_0`); a file that names none of several
    /// inputs is an error naming both lists, never replaced by generated data unnoticed; an input
    /// no file gives is generated and said so.
    #[test]
    fn npz_arrays_are_matched_to_inputs_by_name_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let npz = |file: &str, arrays: &[&str]| {
            let p = dir.path().join(file);
            let mut w = ndarray_npy::NpzWriter::new(std::fs::File::create(&p).unwrap());
            for a in arrays {
                w.add_array(*a, &ArrayD::<f32>::zeros(IxDyn(&[5, 4]))).unwrap();
            }
            w.finish().unwrap();
            InputSpec { npz: Some(p), ..Default::default() }
        };
        let batch = || DimSpec::Symbolic("batch".into());
        let one = vec![info("x", dt::FLOAT, vec![batch(), DimSpec::Fixed(4)])];
        let a = prepare_for(&one, &npz("pos.npz", &["arr_0"])).unwrap();
        assert_eq!(a.inputs[0].data.shape(), &[5, 4]);
        assert!(matches!(a.inputs[0].source, InputSource::Npz(_)));
        let two = vec![
            info("x", dt::FLOAT, vec![batch(), DimSpec::Fixed(4)]),
            info("y", dt::FLOAT, vec![batch(), DimSpec::Fixed(4)]),
        ];
        let e = format!("{:#}", prepare_for(&two, &npz("wrong.npz", &["a", "b"])).unwrap_err());
        assert!(e.contains("no array named like the model's inputs (x, y)") && e.contains("it holds: a, b"), "{e}");
        // Two arrays for one input, neither named after it: ambiguous, refused.
        assert!(prepare_for(&one, &npz("two.npz", &["a", "b"])).is_err());
        let part = prepare_for(&two, &npz("part.npz", &["y"])).unwrap();
        assert!(matches!(part.inputs[0].source, InputSource::Generated));
        assert_eq!(part.inputs[0].data.shape(), &[5, 4], "the batch comes from the given input");
        assert!(part.assumed.contains(&"input 'x' generated (no file gives it)".to_string()), "{:?}", part.assumed);
        // All generated (no file at all): no such note.
        assert!(prepare_for(&two, &InputSpec::default()).unwrap().assumed.iter().all(|a| !a.contains("generated")));
    }

    /// `max_rows` reads evenly spaced rows from the files: the same rows from a `.npy` viewed in
    /// place, a big-endian or Fortran-order one (read, then picked) and an `.npz`; from every
    /// input with the first one's rows (the mask here), not from one without (the table).
    #[test]
    fn max_rows_reads_evenly_spaced_rows_from_the_files() {
        use ndarray_npy::WriteNpyExt;
        assert_eq!(evenly_spaced(10, 4), vec![0, 2, 5, 7]);
        assert_eq!(evenly_spaced(3, 4), vec![0, 1, 2]);
        assert_eq!(evenly_spaced(5, 0), vec![0, 1, 2, 3, 4]);
        for (n, k) in [(7, 3), (1000, 512), (513, 512), (2, 1)] {
            let v = evenly_spaced(n, k);
            assert_eq!(v.len(), k);
            assert!(v.windows(2).all(|w| w[0] < w[1]) && v[0] == 0 && v[k - 1] < n, "{n} {k} {v:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        // Row r holds r in every element.
        let x = ArrayD::<f32>::from_shape_fn(IxDyn(&[10, 3]), |i| i[0] as f32);
        let save = |file: &str, bytes: &dyn Fn(&mut std::fs::File)| {
            let p = dir.path().join(file);
            bytes(&mut std::fs::File::create(&p).unwrap());
            p
        };
        let plain = save("x.npy", &|f| x.write_npy(f).unwrap());
        let fortran = save("xf.npy", &|f| x.t().as_standard_layout().t().write_npy(f).unwrap());
        // A big-endian float32 .npy (numpy's '>f4'), written by hand.
        let big = save("xb.npy", &|f| {
            use std::io::Write;
            let mut h = "{'descr': '>f4', 'fortran_order': False, 'shape': (10, 3), }".to_string();
            while !(10 + h.len() + 1).is_multiple_of(64) {
                h.push(' ');
            }
            h.push('\n');
            f.write_all(b"\x93NUMPY\x01\x00").unwrap();
            f.write_all(&(h.len() as u16).to_le_bytes()).unwrap();
            f.write_all(h.as_bytes()).unwrap();
            for v in x.iter() {
                f.write_all(&v.to_be_bytes()).unwrap();
            }
        });
        let mask =
            save("m.npy", &|f| ArrayD::<i64>::from_shape_fn(IxDyn(&[10, 2]), |i| i[0] as i64).write_npy(f).unwrap());
        let table = save("t.npy", &|f| ArrayD::<f32>::zeros(IxDyn(&[1, 5])).write_npy(f).unwrap());
        let batch = || DimSpec::Symbolic("batch".into());
        let infos = vec![
            info("x", dt::FLOAT, vec![batch(), DimSpec::Fixed(3)]),
            info("mask", dt::INT64, vec![batch(), DimSpec::Fixed(2)]),
            info("table", dt::FLOAT, vec![DimSpec::Fixed(1), DimSpec::Fixed(5)]),
        ];
        let rows_of = |a: &Inputs, k: usize| -> Vec<f64> {
            match &*a.inputs[k].data {
                InputData::F32(d) => d.outer_iter().map(|r| r.iter().next().copied().unwrap_or(-1.0) as f64).collect(),
                InputData::I64(d) => d.outer_iter().map(|r| r.iter().next().copied().unwrap_or(-1) as f64).collect(),
                _ => unreachable!(),
            }
        };
        for x_file in [&plain, &fortran, &big] {
            let mut spec = InputSpec { max_rows: 4, ..Default::default() };
            spec.files.insert("x".into(), x_file.clone());
            spec.files.insert("mask".into(), mask.clone());
            spec.files.insert("table".into(), table.clone());
            let a = prepare_for(&infos, &spec).unwrap();
            assert_eq!(a.file_rows, Some(10));
            assert_eq!(rows_of(&a, 0), vec![0.0, 2.0, 5.0, 7.0], "{}", x_file.display());
            assert_eq!(rows_of(&a, 1), vec![0.0, 2.0, 5.0, 7.0]);
            assert_eq!(a.inputs[2].data.shape(), &[1, 5]);
            // Without a cap (or with one above the rows) every row is read.
            let all = prepare_for(&infos, &InputSpec { max_rows: 0, ..spec.clone() }).unwrap();
            assert_eq!((all.rows(), all.file_rows), (10, None));
            assert_eq!(prepare_for(&infos, &InputSpec { max_rows: 10, ..spec }).unwrap().rows(), 10);
        }
        let z = dir.path().join("x.npz");
        let mut w = ndarray_npy::NpzWriter::new(std::fs::File::create(&z).unwrap());
        w.add_array("x", &x).unwrap();
        w.finish().unwrap();
        let a = prepare_for(&infos[..1], &InputSpec { npz: Some(z), max_rows: 4, ..Default::default() }).unwrap();
        assert_eq!((rows_of(&a, 0), a.file_rows), (vec![0.0, 2.0, 5.0, 7.0], Some(10)));
    }

    /// Labels as users save them: any integer type, whole-number floats, Keras' float one-hot
    /// rows (their argmax); anything else is refused rather than truncated.
    #[test]
    fn labels_are_read_from_integers_whole_floats_or_one_hot_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("y.npy");
        let put = |a: &dyn Fn(&Path)| {
            a(&p);
            read_labels(&p)
        };
        let v = put(&|p| ndarray_npy::write_npy(p, &ndarray::arr1(&[3u16, 0, 9])).unwrap()).unwrap();
        assert_eq!(v, [3, 0, 9]);
        let v = put(&|p| ndarray_npy::write_npy(p, &ndarray::arr1(&[3.0f64, 0.0, 9.0])).unwrap()).unwrap();
        assert_eq!(v, [3, 0, 9]);
        let one_hot = ndarray::arr2(&[[0f32, 0., 1.], [1., 0., 0.]]);
        let v = put(&|p| ndarray_npy::write_npy(p, &one_hot).unwrap()).unwrap();
        assert_eq!(v, [2, 0]);
        // Probabilities are not labels.
        let soft = ndarray::arr2(&[[0.2f32, 0.8], [0.6, 0.4]]);
        let e = format!("{:#}", put(&|p| ndarray_npy::write_npy(p, &soft).unwrap()).unwrap_err());
        assert!(e.contains("neither class indices") && e.contains("float32 [2, 2]"), "{e}");
    }

    #[test]
    fn file_shape_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let arr = ArrayD::<f64>::zeros(IxDyn(&[5, 64]));
        ndarray_npy::write_npy(&p, &arr).unwrap();
        let infos = vec![info("x", dt::FLOAT, vec![DimSpec::Symbolic("batch".into()), DimSpec::Fixed(64)])];
        let mut spec = InputSpec::default();
        spec.files.insert(String::new(), p.clone());
        let a = prepare_for(&infos, &spec).unwrap();
        assert!(matches!(&*a.inputs[0].data, InputData::F32(x) if x.shape() == [5, 64]));

        let bad = vec![info("x", dt::FLOAT, vec![DimSpec::Symbolic("batch".into()), DimSpec::Fixed(32)])];
        let e = format!("{:#}", prepare_for(&bad, &spec).unwrap_err());
        assert!(e.contains("input 'x'") && e.contains("axis 1"), "{e}");
        let bad = vec![info("x", dt::FLOAT, vec![DimSpec::Unknown])];
        let e = format!("{:#}", prepare_for(&bad, &spec).unwrap_err());
        assert!(e.contains("rank"), "{e}");
        let ints = vec![info("x", dt::INT64, vec![DimSpec::Unknown, DimSpec::Unknown])];
        let e = format!("{:#}", prepare_for(&ints, &spec).unwrap_err());
        assert!(e.contains("int64") && e.contains("float64"), "{e}");
        let mut spec2 = spec.clone();
        spec2.dims.insert("batch".into(), 4);
        let e = format!("{:#}", prepare_for(&infos, &spec2).unwrap_err());
        assert!(e.contains("batch=4"), "{e}");
    }
}
