//! Compiling and running a model with tract, at concrete input shapes.
//!
//! Every call into tract goes through [`guarded`]: tract sometimes panics instead of returning an
//! error (com.microsoft `Attention`, for one), and a panic must become a "skipped: reason", not a
//! crash or a page of stderr.

use super::inputs::{read_proto, InputData, InputFact, Inputs, MAX_CHUNK};
use crate::model::tensor::{dt, dtype_name};
use anyhow::{anyhow, bail, Context, Result};
use ndarray::{ArrayD, Axis};
use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tract_onnx::pb;
use tract_onnx::prelude::{
    DatumType, InferenceFact, InferenceModel, InferenceModelExt, IntoRunnable, IntoTensor, TDim, TValue, TVec, Tensor,
    TypedRunnableModel, TypedSimpleState,
};
use tract_onnx::tract_hir::infer::{Factoid, GenericFactoid};

// ---------------------------------------------------------------------------------------------
// Panic containment

type Hook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

struct HookState {
    depth: usize,
    prev: Option<Arc<Hook>>,
}

static HOOK: Mutex<HookState> = Mutex::new(HookState { depth: 0, prev: None });

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// While alive, panics on this thread print nothing. The process-wide hook is swapped only while
/// at least one guard exists, and it stays quiet only for threads that hold a guard: a panic on
/// another thread still reaches the previous hook.
struct QuietPanics {
    was_quiet: bool,
}

impl QuietPanics {
    fn new() -> Self {
        let mut s = HOOK.lock().unwrap_or_else(|e| e.into_inner());
        if s.depth == 0 {
            let prev: Arc<Hook> = Arc::new(std::panic::take_hook());
            let p = prev.clone();
            std::panic::set_hook(Box::new(move |info| {
                if !QUIET.with(|q| q.get()) {
                    p(info)
                }
            }));
            s.prev = Some(prev);
        }
        s.depth += 1;
        let was_quiet = QUIET.with(|q| q.replace(true));
        QuietPanics { was_quiet }
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        QUIET.with(|q| q.set(self.was_quiet));
        let mut s = HOOK.lock().unwrap_or_else(|e| e.into_inner());
        s.depth = s.depth.saturating_sub(1);
        if s.depth == 0 {
            if let Some(prev) = s.prev.take() {
                // Dropping our hook drops its clone of `prev`.
                drop(std::panic::take_hook());
                match Arc::try_unwrap(prev) {
                    Ok(h) => std::panic::set_hook(h),
                    Err(shared) => std::panic::set_hook(Box::new(move |i| shared(i))),
                }
            }
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// Run `f`, turning a panic into an error "tract panicked during `what`: message".
pub fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let _quiet = QuietPanics::new();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = panic_message(p.as_ref());
            let line = msg.lines().next().unwrap_or("").to_string();
            Err(anyhow!("tract panicked during {what}: {line}"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Compiling

pub(crate) fn datum_type(elem: i32) -> Result<DatumType> {
    Ok(match elem {
        dt::FLOAT => DatumType::F32,
        dt::DOUBLE => DatumType::F64,
        dt::FLOAT16 => DatumType::F16,
        dt::INT64 => DatumType::I64,
        dt::INT32 => DatumType::I32,
        dt::INT8 => DatumType::I8,
        dt::UINT8 => DatumType::U8,
        dt::BOOL => DatumType::Bool,
        other => bail!("element type {} is not supported", dtype_name(other)),
    })
}

/// Axis-0 chunking of large inputs.
#[derive(Clone, Debug)]
pub struct Chunking {
    /// Rows of the full inputs.
    pub rows: usize,
    /// Rows per run (the compiled batch size); the last chunk is padded by repeating its last row.
    pub chunk: usize,
    /// Per input (in `Runnable::input_names` order): is it split along axis 0?
    pub batched: Vec<bool>,
}

/// A model compiled by tract for one set of concrete input shapes.
pub struct Runnable {
    pub path: PathBuf,
    /// Model inputs in tract's (= the ONNX graph's) order.
    pub input_names: Vec<String>,
    pub output_names: Vec<String>,
    /// The full input facts this was built for.
    pub facts: Vec<InputFact>,
    pub chunking: Option<Chunking>,
    /// The model only compiled with `with_ignore_value_info(true)`.
    pub ignored_value_info: bool,
    /// Anything a report should mention (fallbacks taken).
    pub notes: Vec<String>,
    /// The ONNX graph's node names and their op types, to name tract's plan nodes by.
    pub(crate) sources: Arc<HashMap<String, String>>,
    plan: Arc<TypedRunnableModel>,
}

impl std::fmt::Debug for Runnable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runnable")
            .field("path", &self.path)
            .field("input_names", &self.input_names)
            .field("output_names", &self.output_names)
            .field("chunking", &self.chunking)
            .finish_non_exhaustive()
    }
}

fn model_dir(path: &Path) -> Option<&str> {
    path.parent().and_then(|p| p.to_str())
}

/// Parse an ONNX protobuf with tract (external data resolved relative to `path`'s folder).
pub(crate) fn parse_proto(
    path: &Path,
    proto: &pb::ModelProto,
    ignore_value_info: bool,
) -> Result<(InferenceModel, HashMap<String, tract_onnx::prelude::OutletId>)> {
    let r = tract_onnx::onnx()
        .with_ignore_value_info(ignore_value_info)
        .parse(proto, model_dir(path))
        .map_err(|e| anyhow!("parse failed: {e:#}"))?;
    if !r.unresolved_inputs.is_empty() {
        bail!("parse failed: values used but never defined: {}", r.unresolved_inputs.join(", "));
    }
    Ok((r.model, r.outlets_by_name))
}

/// ONNX `Attention` nodes (default domain) with an `attn_mask` input: (node index, mask name).
fn attention_masks(proto: &pb::ModelProto) -> Vec<(usize, String)> {
    let Some(g) = proto.graph.as_ref() else { return vec![] };
    g.node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type == "Attention" && (n.domain.is_empty() || n.domain == "ai.onnx"))
        .filter_map(|(i, n)| n.input.get(3).filter(|m| !m.is_empty()).map(|m| (i, m.clone())))
        .collect()
}

fn scalar(name: String, data_type: DatumType, v: f32) -> Result<pb::TensorProto> {
    let (code, raw) = match data_type {
        DatumType::F32 => (dt::FLOAT, v.to_le_bytes().to_vec()),
        DatumType::F16 => (dt::FLOAT16, half::f16::from_f32(v).to_le_bytes().to_vec()),
        DatumType::F64 => (dt::DOUBLE, (v as f64).to_le_bytes().to_vec()),
        other => bail!("attention with {other:?} inputs"),
    };
    Ok(pb::TensorProto { name, data_type: code, raw_data: raw, ..Default::default() })
}

/// tract treats a boolean `attn_mask` of ONNX `Attention` as an additive 0/1 mask, which gives
/// silently wrong results when the mask has zeros. Rewrite each boolean mask `m` into the
/// additive form the ONNX spec defines, `Where(m, 0, -inf)`, in the query's float type.
/// Returns the rewritten proto (None when nothing needed rewriting) and notes.
fn fix_bool_attention_masks(
    path: &Path,
    proto: &pb::ModelProto,
    facts: &[InputFact],
    ignore_value_info: bool,
) -> Result<Option<(pb::ModelProto, Vec<String>)>> {
    let masks = attention_masks(proto);
    if masks.is_empty() {
        return Ok(None);
    }
    let (mut probe, outlets) = parse_proto(path, proto, ignore_value_info)?;
    concretize(&mut probe, facts)?;
    let analysis = probe.analyse(true).err();
    let g = proto.graph.as_ref().context("model has no graph")?;
    let dtype_of = |name: &str| -> Option<DatumType> {
        let o = outlets.get(name)?;
        probe.outlet_fact(*o).ok()?.datum_type.concretize()
    };
    let mut out = proto.clone();
    let mut notes = vec![];
    for (k, (ni, mask)) in masks.iter().enumerate() {
        let node = &g.node[*ni];
        let label = if node.name.is_empty() {
            format!("Attention:{}", node.output.first().cloned().unwrap_or_default())
        } else {
            node.name.clone()
        };
        let Some(mdt) = dtype_of(mask) else {
            let why = analysis.as_ref().map(|e| format!(" ({e:#})")).unwrap_or_default();
            bail!("Attention node '{label}': cannot tell the type of attn_mask '{mask}'; tract mishandles boolean masks, so the model is not verified{why}");
        };
        if mdt != DatumType::Bool {
            continue;
        }
        let q = node.input.first().map(|s| s.as_str()).unwrap_or("");
        let qdt = dtype_of(q).with_context(|| format!("Attention node '{label}': type of query '{q}' unknown"))?;
        let base = format!("{mask}__emp_additive_{k}");
        let og = out.graph.as_mut().context("model has no graph")?;
        og.initializer.push(scalar(format!("{base}_zero"), qdt, 0.0)?);
        og.initializer.push(scalar(format!("{base}_neginf"), qdt, f32::NEG_INFINITY)?);
        let where_node = pb::NodeProto {
            name: format!("{base}_where"),
            op_type: "Where".into(),
            input: vec![mask.clone(), format!("{base}_zero"), format!("{base}_neginf")],
            output: vec![base.clone()],
            ..Default::default()
        };
        // `masks` is in node order; each earlier insertion moved this node down by one.
        let at = ni + notes.len();
        og.node[at].input[3] = base.clone();
        og.node.insert(at, where_node);
        notes.push(format!("boolean attn_mask '{mask}' of Attention node '{label}' rewritten as Where(mask, 0, -inf) (tract would add it as 0/1)"));
    }
    if notes.is_empty() {
        return Ok(None);
    }
    Ok(Some((out, notes)))
}

/// Symbol substitutions from the input dims, then concrete input facts. Returns which inputs have
/// a non-fixed axis 0 and the symbols used at axis 0 / at other axes.
pub(crate) fn concretize(model: &mut InferenceModel, facts: &[InputFact]) -> Result<Vec<String>> {
    let outlets = model.input_outlets()?.to_vec();
    let names: Vec<String> = outlets.iter().map(|o| model.node(o.node).name.clone()).collect();
    for n in &names {
        if !facts.iter().any(|f| &f.name == n) {
            bail!("no data for model input '{n}'");
        }
    }
    for f in facts {
        if !names.contains(&f.name) {
            bail!("model has no input '{}' (inputs: {})", f.name, names.join(", "));
        }
    }
    // Symbols named in the inputs' declared shapes get the values of the data's dims. Dynamo
    // exports carry the same symbols in value_info: setting input facts alone would leave
    // "Sym(batch)" there to clash with the concrete value.
    let mut subs: HashMap<tract_onnx::prelude::Symbol, TDim> = HashMap::new();
    for (i, n) in names.iter().enumerate() {
        let Some(f) = facts.iter().find(|f| &f.name == n) else { continue };
        let fact = model.input_fact(i)?;
        let Some(rank) = fact.shape.rank().concretize() else { continue };
        if rank as usize != f.shape.len() {
            bail!("input '{n}': data has rank {} but the model declares rank {rank}", f.shape.len());
        }
        for (axis, d) in fact.shape.dims().enumerate() {
            if let GenericFactoid::Only(TDim::Sym(s)) = d {
                let v = f.shape[axis] as i64;
                if let Some(prev) = subs.get(s) {
                    if prev != &TDim::Val(v) {
                        bail!("symbol '{s}' would be both {prev} and {v} (input '{n}', axis {axis})");
                    }
                }
                subs.insert(s.clone(), TDim::Val(v));
            }
        }
    }
    if !subs.is_empty() {
        model.set_symbols(&subs).map_err(|e| anyhow!("symbol substitution failed: {e:#}"))?;
    }
    for (i, n) in names.iter().enumerate() {
        let Some(f) = facts.iter().find(|f| &f.name == n) else { continue };
        let dtp = datum_type(f.elem_type).with_context(|| format!("input '{n}'"))?;
        model
            .set_input_fact(i, InferenceFact::dt_shape(dtp, f.shape.clone()))
            .map_err(|e| anyhow!("input '{n}': setting shape {:?} failed: {e:#}", f.shape))?;
    }
    Ok(names)
}

fn output_names(model: &InferenceModel) -> Result<Vec<String>> {
    Ok(model
        .output_outlets()?
        .iter()
        .enumerate()
        .map(|(i, o)| model.outlet_label(*o).map(|s| s.to_string()).unwrap_or_else(|| format!("output{i}")))
        .collect())
}

/// Decide axis-0 chunking from the parsed model's declared input shapes: rows in chunks when
/// axis 0 is free and the rows are many, one row per run when the model fixes axis 0 to 1 and
/// more rows are given (exports with a batch of 1: dynamo, TF).
fn plan_chunking(
    model: &InferenceModel,
    names: &[String],
    facts: &[InputFact],
    max_chunk: usize,
) -> Result<Option<Chunking>> {
    let mut batched = vec![];
    let mut rows = None;
    let mut axis0_syms = BTreeSet::new();
    let mut other_syms = BTreeSet::new();
    let mut fixed_one = false;
    for (i, n) in names.iter().enumerate() {
        let fact = model.input_fact(i)?;
        let dims: Vec<&GenericFactoid<TDim>> = fact.shape.dims().collect();
        // A missing fact is reported by `concretize` with the input's name.
        let Some(f) = facts.iter().find(|f| &f.name == n) else { return Ok(None) };
        let free0 = !f.shape.is_empty() && !matches!(dims.first(), Some(GenericFactoid::Only(TDim::Val(_))));
        // A batch fixed to 1 with more rows given: one row per run.
        let one =
            f.shape.first().is_some_and(|&n| n > 1) && matches!(dims.first(), Some(GenericFactoid::Only(TDim::Val(1))));
        fixed_one |= one;
        let free0 = free0 || one;
        for (axis, d) in dims.iter().enumerate() {
            if let GenericFactoid::Only(t) = d {
                for s in t.symbols() {
                    if axis == 0 && free0 {
                        axis0_syms.insert(s.to_string());
                    } else {
                        other_syms.insert(s.to_string());
                    }
                }
            }
        }
        if free0 {
            match rows {
                None => rows = Some(f.shape[0]),
                Some(r) if r != f.shape[0] => return Ok(None),
                _ => {}
            }
        }
        batched.push(free0);
    }
    let Some(rows) = rows else { return Ok(None) };
    if fixed_one {
        return Ok(Some(Chunking { rows, chunk: 1, batched }));
    }
    if rows <= max_chunk || axis0_syms.iter().any(|s| other_syms.contains(s)) {
        return Ok(None);
    }
    let n_chunks = rows.div_ceil(max_chunk);
    Ok(Some(Chunking { rows, chunk: rows.div_ceil(n_chunks), batched }))
}

struct Built {
    plan: Arc<TypedRunnableModel>,
    sources: Arc<HashMap<String, String>>,
    input_names: Vec<String>,
    output_names: Vec<String>,
    chunking: Option<Chunking>,
    notes: Vec<String>,
}

/// Ops tract 0.23 is known not to run (or to misparse: it ignores the domain and takes
/// com.microsoft `Attention` for ONNX `Attention`, then panics). Refused up front with a clear
/// reason rather than a panic message.
const TRACT_UNSUPPORTED: &[(&str, &str)] = &[
    ("com.microsoft", "Attention"),
    ("com.microsoft", "MultiHeadAttention"),
    ("com.microsoft", "EmbedLayerNormalization"),
    ("com.microsoft", "DynamicQuantizeLSTM"),
];

fn known_unsupported(proto: &tract_onnx::pb::ModelProto) -> Option<String> {
    let g = proto.graph.as_ref()?;
    g.node.iter().find_map(|n| {
        TRACT_UNSUPPORTED
            .iter()
            .find(|(d, o)| n.domain == *d && n.op_type == *o)
            .map(|(d, o)| format!("tract 0.23 cannot run {d} {o} (node '{}'; a known gap)", n.name))
    })
}

fn build(path: &Path, facts: &[InputFact], ignore_value_info: bool, max_chunk: usize) -> Result<Built> {
    let mut notes = vec![];
    let (decluttered, input_names, output_names, chunking, sources) =
        declutter(path, facts, ignore_value_info, max_chunk, &mut notes)?;
    // No fallback copy is kept while optimizing (its unpacked weights beside the packed ones
    // raised the peak memory of big models): if optimizing fails, the model is built again.
    let mut optimized = decluttered;
    let model = match optimized.optimize() {
        Ok(()) => optimized,
        Err(e) => {
            drop(optimized);
            notes.push(format!("tract optimize failed ({e:#}); ran the decluttered model"));
            declutter(path, facts, ignore_value_info, max_chunk, &mut vec![])?.0
        }
    };
    let plan = model.into_runnable().map_err(|e| anyhow!("plan failed: {e:#}"))?;
    Ok(Built { plan, sources: Arc::new(sources), input_names, output_names, chunking, notes })
}

type Decluttered =
    (tract_onnx::prelude::TypedModel, Vec<String>, Vec<String>, Option<Chunking>, HashMap<String, String>);

/// Parse, concretize and declutter `path`; the ONNX proto is dropped as soon as tract has its own
/// copy of the weights.
fn declutter(
    path: &Path,
    facts: &[InputFact],
    ignore_value_info: bool,
    max_chunk: usize,
    notes: &mut Vec<String>,
) -> Result<Decluttered> {
    let mut sources = HashMap::new();
    let mut model = {
        let proto = read_proto(path)?;
        if let Some(reason) = known_unsupported(&proto) {
            bail!("{reason}");
        }
        for n in proto.graph.iter().flat_map(|g| &g.node).filter(|n| !n.name.is_empty()) {
            sources.insert(n.name.clone(), n.op_type.clone());
        }
        match fix_bool_attention_masks(path, &proto, facts, ignore_value_info)? {
            None => parse_proto(path, &proto, ignore_value_info)?.0,
            Some((fixed, n)) => {
                notes.extend(n);
                drop(proto);
                parse_proto(path, &fixed, ignore_value_info)?.0
            }
        }
    };
    let output_names = output_names(&model)?;
    let names: Vec<String> = model.input_outlets()?.iter().map(|o| model.node(o.node).name.clone()).collect();
    let chunking = plan_chunking(&model, &names, facts, max_chunk).context("setting input facts failed")?;
    let compile_facts: Vec<InputFact> = match &chunking {
        None => facts.to_vec(),
        Some(c) => facts
            .iter()
            .map(|f| {
                let mut f = f.clone();
                let b = names.iter().position(|n| n == &f.name).map(|i| c.batched[i]).unwrap_or(false);
                if b {
                    f.shape[0] = c.chunk;
                }
                f
            })
            .collect(),
    };
    let input_names = concretize(&mut model, &compile_facts).context("setting input facts failed")?;
    let typed = model.into_typed().map_err(|e| anyhow!("type analysis failed: {e:#}"))?;
    let decluttered = typed.into_decluttered().map_err(|e| anyhow!("declutter failed: {e:#}"))?;
    Ok((decluttered, input_names, output_names, chunking, sources))
}

/// Compile `path` for the given concrete inputs (all stages, one line of error naming the stage).
/// Tries once as is, then once ignoring the model's value_info.
pub fn load_runnable(path: &Path, facts: &[InputFact]) -> Result<Runnable> {
    load_runnable_chunked(path, facts, MAX_CHUNK)
}

/// Input bytes per chunk of reconstruction's calibration passes. tract's time per sample grows
/// with the chunk once its activations leave the cache: on the 113 MB encoder (196 KB per
/// sample) a chunk of 8 samples ran at 90 ms per sample, one of 103 at 150 ms.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Cores to run chunks on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(1)
}

/// Rows per chunk for inputs `facts` (samples on axis 0 of the first): about [`CHUNK_BYTES`] of
/// input, at most ⌈rows / cores⌉ (every core busy) and [`MAX_CHUNK`], balanced so that the last
/// chunk is not mostly padding. Results do not depend on it: tract computes each sample alike in
/// any batch.
pub fn chunk_rows(facts: &[InputFact], cores: usize) -> usize {
    let rows = facts.first().and_then(|f| f.shape.first().copied()).unwrap_or(1).max(1);
    let per_row: usize = facts
        .iter()
        .filter(|f| f.shape.first() == Some(&rows))
        .map(|f| crate::model::tensor::elem_size(f.elem_type).unwrap_or(4) * f.shape[1..].iter().product::<usize>())
        .sum();
    let chunk = (CHUNK_BYTES / per_row.max(1)).clamp(1, MAX_CHUNK).min(rows.div_ceil(cores.max(1)));
    rows.div_ceil(rows.div_ceil(chunk))
}

/// As [`load_runnable`], in chunks of at most `max_chunk` rows (≤ `MAX_CHUNK`) when axis 0 is a
/// free batch axis: [`run_each`] runs the chunks on all cores. Used where the whole batch is run
/// many times (reconstruction's calibration passes).
pub fn load_runnable_chunked(path: &Path, facts: &[InputFact], max_chunk: usize) -> Result<Runnable> {
    let max_chunk = max_chunk.clamp(1, MAX_CHUNK);
    let first = guarded("compile", || build(path, facts, false, max_chunk));
    let (built, ignored) = match first {
        Ok(b) => (b, false),
        Err(e1) => match guarded("compile", || build(path, facts, true, max_chunk)) {
            Ok(b) => (b, true),
            Err(e2) => {
                let (m1, m2) = (format!("{e1:#}"), format!("{e2:#}"));
                if m1 == m2 {
                    bail!("{m1}");
                }
                bail!("{m1} (retry ignoring value_info: {m2})");
            }
        },
    };
    let mut notes = built.notes;
    if ignored {
        notes.insert(0, "compiled with tract's ignore_value_info".into());
    }
    Ok(Runnable {
        path: path.to_path_buf(),
        input_names: built.input_names,
        output_names: built.output_names,
        facts: facts.to_vec(),
        chunking: built.chunking,
        ignored_value_info: ignored,
        notes,
        sources: built.sources,
        plan: built.plan,
    })
}

// ---------------------------------------------------------------------------------------------
// Running

fn to_tensor(d: &InputData) -> Tensor {
    match d {
        InputData::F32(a) => Tensor::from(a.clone()),
        InputData::F64(a) => Tensor::from(a.clone()),
        InputData::F16(a) => Tensor::from(a.clone()),
        InputData::I64(a) => Tensor::from(a.clone()),
        InputData::I32(a) => Tensor::from(a.clone()),
        InputData::I8(a) => Tensor::from(a.clone()),
        InputData::U8(a) => Tensor::from(a.clone()),
        InputData::Bool(a) => Tensor::from(a.clone()),
    }
}

/// Rows [start, end) of axis 0, padded to `len` rows by repeating the last row.
fn slice_rows(t: &Tensor, start: usize, end: usize, len: usize) -> Result<Tensor> {
    let part = t.slice(0, start, end)?;
    if end - start == len {
        return Ok(part);
    }
    let last = t.slice(0, end - 1, end)?;
    let mut parts = vec![part];
    for _ in 0..len - (end - start) {
        parts.push(last.clone());
    }
    Tensor::stack_tensors(0, &parts)
}

impl Runnable {
    /// The tract input batches for `inputs` (one per chunk), checked against the compiled facts.
    pub(crate) fn prepare(&self, inputs: &Inputs) -> Result<Vec<TVec<TValue>>> {
        let mut tensors = vec![];
        for n in &self.input_names {
            let i = inputs.get(n).with_context(|| format!("no data for input '{n}'"))?;
            let f = self.facts.iter().find(|f| &f.name == n).with_context(|| format!("input '{n}' unknown"))?;
            if i.data.shape() != f.shape.as_slice() || i.data.elem_type() != f.elem_type {
                bail!(
                    "input '{n}' is {} {:?} but the model was compiled for {} {:?}",
                    dtype_name(i.data.elem_type()),
                    i.data.shape(),
                    dtype_name(f.elem_type),
                    f.shape
                );
            }
            tensors.push(to_tensor(&i.data));
        }
        let Some(c) = &self.chunking else {
            return Ok(vec![tensors.into_iter().map(TValue::from).collect()]);
        };
        let mut out = vec![];
        let mut start = 0;
        while start < c.rows {
            let end = (start + c.chunk).min(c.rows);
            let mut tv = TVec::new();
            for (t, b) in tensors.iter().zip(&c.batched) {
                tv.push(TValue::from(if *b { slice_rows(t, start, end, c.chunk)? } else { t.clone() }));
            }
            out.push(tv);
            start = end;
        }
        Ok(out)
    }

    pub(crate) fn run_raw(&self, tv: TVec<TValue>) -> Result<TVec<TValue>> {
        self.plan.run(tv).map_err(|e| anyhow!("run failed: {e:#}"))
    }

    /// Each plan node's median time in ms over `runs` runs of `tv` on one run state, with its
    /// name and op (tract's plan nodes are named after the ONNX node they came from, plus a
    /// suffix for each op tract split it into).
    pub(crate) fn node_times(&self, tv: TVec<TValue>, runs: usize) -> Result<Vec<(String, String, f64)>> {
        use tract_onnx::tract_core::plan::eval;
        let mut state = self.spawn()?;
        let model = self.plan.model();
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); model.nodes.len()];
        for _ in 0..runs.max(1) {
            state
                .run_plan_with_eval(tv.clone(), |ctx, st, node, inputs| {
                    let t = std::time::Instant::now();
                    let out = eval(ctx, st, node, inputs);
                    times[node.id].push(t.elapsed().as_secs_f64() * 1e3);
                    out
                })
                .map_err(|e| anyhow!("run failed: {e:#}"))?;
        }
        Ok(times
            .into_iter()
            .enumerate()
            .filter(|(_, t)| !t.is_empty())
            .map(|(i, mut t)| {
                t.sort_by(|a, b| a.total_cmp(b));
                (model.nodes[i].name.clone(), model.nodes[i].op().name().to_string(), t[t.len() / 2])
            })
            .collect())
    }

    /// A run state to call [`run_in`] on repeatedly, as a serving loop keeps one: the ops'
    /// states (scratch buffers, packed operands) are made once, not on every inference.
    pub(crate) fn spawn(&self) -> Result<TypedSimpleState> {
        self.plan.spawn().map_err(|e| anyhow!("cannot make a run state: {e:#}"))
    }
}

/// One inference on a state from [`Runnable::spawn`].
pub(crate) fn run_in(state: &mut TypedSimpleState, tv: TVec<TValue>) -> Result<TVec<TValue>> {
    state.run(tv).map_err(|e| anyhow!("run failed: {e:#}"))
}

fn to_f32(name: &str, v: TValue) -> Result<ArrayD<f32>> {
    let t = v.into_tensor();
    let t = if t.datum_type() == DatumType::TDim { t.cast_to_dt(DatumType::I64)?.into_owned() } else { t };
    let t =
        t.cast_to::<f32>().with_context(|| format!("output '{name}' ({:?}) cannot be cast to f32", t.datum_type()))?;
    t.into_owned().into_plain_array::<f32>().with_context(|| format!("output '{name}'"))
}

/// Run the model on `inputs` one chunk at a time, handing each chunk's outputs (padding rows
/// removed, cast to f32, in the model's output order) to `f`. Memory stays bounded by one chunk:
/// used to stream calibration statistics.
pub fn run_each(r: &Runnable, inputs: &Inputs, mut f: impl FnMut(Vec<ArrayD<f32>>) -> Result<()>) -> Result<()> {
    run_chunks(r, inputs, false, |v| f(v.into_iter().map(|a| a.expect("strict outputs are all present")).collect()))
}

/// As [`run_each`], but an output that is not f32 or (when chunked) does not have the chunk's
/// rows on axis 0 comes as None instead of failing the run: for values that are kept only when
/// they are per-sample float data (reconstruction's boundary cache).
pub fn run_each_f32_rows(
    r: &Runnable,
    inputs: &Inputs,
    f: impl FnMut(Vec<Option<ArrayD<f32>>>) -> Result<()>,
) -> Result<()> {
    run_chunks(r, inputs, true, f)
}

fn run_chunks(
    r: &Runnable,
    inputs: &Inputs,
    lenient: bool,
    mut f: impl FnMut(Vec<Option<ArrayD<f32>>>) -> Result<()>,
) -> Result<()> {
    let threads = cores();
    guarded("run", || {
        let batches = r.prepare(inputs)?;
        let mut next = 0usize;
        let mut pending = batches.into_iter();
        loop {
            // Up to `threads` chunks at once (tract runs one inference on one core); their
            // outputs are handed to `f` in order, so results do not depend on the thread count.
            let wave: Vec<TVec<TValue>> = pending.by_ref().take(threads).collect();
            if wave.is_empty() {
                break;
            }
            let outs: Vec<Result<TVec<TValue>>> = if wave.len() == 1 {
                wave.into_iter().map(|tv| r.run_raw(tv)).collect()
            } else {
                std::thread::scope(|s| {
                    let hs: Vec<_> = wave.into_iter().map(|tv| s.spawn(move || r.run_raw(tv))).collect();
                    hs.into_iter()
                        .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                        .collect()
                })
            };
            for outs in outs {
                let bi = next;
                next += 1;
                let mut v = vec![];
                for (i, o) in outs?.into_iter().enumerate() {
                    let name = r.output_names.get(i).map(|s| s.as_str()).unwrap_or("?");
                    if lenient && o.datum_type() != DatumType::F32 {
                        v.push(None);
                        continue;
                    }
                    let a = to_f32(name, o)?;
                    // One row per run has no padding to remove: each output is that row's, in
                    // whatever layout (a sequence-first internal of a batch-1 export too).
                    if let Some(c) = r.chunking.as_ref().filter(|c| c.chunk > 1) {
                        if a.ndim() == 0 || a.shape()[0] != c.chunk {
                            if lenient {
                                v.push(None);
                                continue;
                            }
                            bail!(
                                "output '{name}' has shape {:?}, not {} rows on axis 0: cannot evaluate {} rows in chunks of {}; pass at most {MAX_CHUNK} rows",
                                a.shape(),
                                c.chunk,
                                c.rows,
                                c.chunk
                            );
                        }
                        let keep = (c.rows - bi * c.chunk).min(c.chunk);
                        v.push(Some(a.slice_axis(Axis(0), ndarray::Slice::from(0..keep)).to_owned()));
                    } else {
                        v.push(Some(a));
                    }
                }
                f(v)?;
            }
        }
        Ok(())
    })
    .with_context(|| r.path.display().to_string())
}

/// Run the model on `inputs`; outputs cast to f32, in the model's output order.
pub fn run(r: &Runnable, inputs: &Inputs) -> Result<Vec<ArrayD<f32>>> {
    let mut per_batch: Vec<Vec<ArrayD<f32>>> = vec![];
    run_each(r, inputs, |v| {
        per_batch.push(v);
        Ok(())
    })?;
    if per_batch.len() == 1 {
        return per_batch.pop().context("no output");
    }
    let n_out = per_batch.first().map(|b| b.len()).unwrap_or(0);
    let mut outs = vec![];
    for i in 0..n_out {
        let views: Vec<_> = per_batch.iter().filter_map(|b| b.get(i).map(|a| a.view())).collect();
        outs.push(ndarray::concatenate(Axis(0), &views).context("joining chunk outputs")?);
    }
    Ok(outs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors() {
        let e = guarded("compile", || -> Result<()> { panic!("boom {}", 1) }).unwrap_err();
        assert_eq!(format!("{e:#}"), "tract panicked during compile: boom 1");
        // nested guards, then normal results pass through
        let r = guarded("outer", || guarded("inner", || -> Result<u8> { panic!("x") }).map_err(|e| anyhow!("{e:#}")));
        assert_eq!(format!("{:#}", r.unwrap_err()), "tract panicked during inner: x");
        assert_eq!(guarded("ok", || Ok(3)).unwrap(), 3);
        assert!(!QUIET.with(|q| q.get()));
    }

    #[test]
    fn chunks_hold_about_a_mebibyte_of_input_and_keep_every_core_busy() {
        let f = |shape: &[usize], elem_type: i32| InputFact { name: "x".into(), elem_type, shape: shape.to_vec() };
        // 205 encoder samples of 64 × 768 f32 (196 KB each): 5 per chunk, 41 chunks.
        assert_eq!(chunk_rows(&[f(&[205, 64, 768], dt::FLOAT)], 2), 5);
        // Small samples: one chunk per core, balanced (103 + 102, not 103 + 103 padded).
        assert_eq!(chunk_rows(&[f(&[205, 64], dt::FLOAT)], 2), 103);
        assert_eq!(chunk_rows(&[f(&[205, 64], dt::FLOAT)], 1), 205);
        // Never more than MAX_CHUNK, never less than one row (a 4 MB sample).
        assert_eq!(chunk_rows(&[f(&[5000, 4], dt::FLOAT)], 1), 500);
        assert_eq!(chunk_rows(&[f(&[3, 1 << 20], dt::FLOAT)], 1), 1);
        // Every batched input counts; one without the samples on axis 0 does not.
        let two = [f(&[205, 64, 768], dt::FLOAT), f(&[205, 64, 768], dt::FLOAT), f(&[7, 1 << 20], dt::INT64)];
        assert_eq!(chunk_rows(&two, 2), 2);
    }
}
