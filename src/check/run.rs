//! Compiling and running a model with tract, at concrete input shapes.
//!
//! Every call into tract goes through [`guarded`]: tract sometimes panics instead of returning an
//! error (com.microsoft `Attention`, for one), and a panic must become a "skipped: reason", not a
//! crash or a page of stderr.
//!
//! What tract is given to parse (known gaps, the boolean-mask fix) is `run/parse.rs`; how a file
//! of many rows is split along axis 0 is `run/chunks.rs`.

use super::inputs::{read_proto, InputData, InputFact, Inputs, MAX_CHUNK};
use crate::model::tensor::{dt, dtype_name};
use anyhow::{anyhow, bail, Context, Result};
use ndarray::{ArrayD, Axis};
use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::{
    Datum, DatumType, InferenceFact, InferenceModel, InferenceModelExt, IntoRunnable, IntoTensor, TDim, TValue, TVec,
    Tensor, TypedRunnableModel, TypedSimpleState,
};
use tract_onnx::tract_hir::infer::{Factoid, GenericFactoid};

mod chunks;
mod parse;

use chunks::plan_chunking;
pub use chunks::{chunk_rows, cores, one_row_rule, sequence_rule, Chunking, CHUNK_BYTES, ONE_ROW_KEY, SEQUENCE_KEY};
pub(crate) use parse::parse_proto;
use parse::{fix_bool_attention_masks, known_unsupported};

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

/// A model compiled by tract for one set of concrete input shapes.
pub struct Runnable {
    pub path: PathBuf,
    /// Model inputs in tract's (= the ONNX graph's) order.
    pub input_names: Vec<String>,
    pub output_names: Vec<String>,
    /// Per output: integer or boolean (class ids, indices, masks) rather than float.
    pub output_int: Vec<bool>,
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

struct Built {
    plan: Arc<TypedRunnableModel>,
    sources: Arc<HashMap<String, String>>,
    input_names: Vec<String>,
    output_names: Vec<String>,
    chunking: Option<Chunking>,
    notes: Vec<String>,
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
    let (one_row_per_run, sequence);
    let mut model = {
        let proto = read_proto(path)?;
        if let Some(reason) = known_unsupported(&proto) {
            bail!("{reason}");
        }
        one_row_per_run = chunks::convolutional(&proto);
        sequence = chunks::axis0_is_sequence(&proto);
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
    let max_chunk = if one_row_per_run { 1 } else { max_chunk };
    let chunking = plan_chunking(&model, &names, facts, max_chunk, sequence).context("setting input facts failed")?;
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
    let output_int = (0..built.output_names.len())
        .map(|i| {
            built.plan.model().output_fact(i).is_ok_and(|f| {
                let dt = f.datum_type;
                dt.is_integer() || dt == DatumType::Bool || dt == DatumType::TDim
            })
        })
        .collect();
    Ok(Runnable {
        path: path.to_path_buf(),
        input_names: built.input_names,
        output_int,
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

/// Rows `rows` = (start, end, len) of axis 0 of `a` as a tract tensor of `len` rows, padded by
/// repeating the last row (all of `a` when None): one copy, straight from the array's memory.
fn rows_of<T: Datum + Copy>(a: &ArrayD<T>, rows: Option<(usize, usize, usize)>) -> Result<Tensor> {
    let Some(s) = a.as_slice() else {
        return rows_of(&a.as_standard_layout().into_owned(), rows);
    };
    let Some((start, end, len)) = rows else { return Tensor::from_shape(a.shape(), s) };
    let per: usize = a.shape()[1..].iter().product();
    let mut shape = a.shape().to_vec();
    shape[0] = len;
    if end - start == len {
        return Tensor::from_shape(&shape, &s[start * per..end * per]);
    }
    let mut v = Vec::with_capacity(len * per);
    v.extend_from_slice(&s[start * per..end * per]);
    for _ in end - start..len {
        v.extend_from_slice(&s[(end - 1) * per..end * per]);
    }
    Tensor::from_shape(&shape, &v)
}

fn to_tensor(d: &InputData, rows: Option<(usize, usize, usize)>) -> Result<Tensor> {
    match d {
        InputData::F32(a) => rows_of(a, rows),
        InputData::F64(a) => rows_of(a, rows),
        InputData::F16(a) => rows_of(a, rows),
        InputData::I64(a) => rows_of(a, rows),
        InputData::I32(a) => rows_of(a, rows),
        InputData::I8(a) => rows_of(a, rows),
        InputData::U8(a) => rows_of(a, rows),
        InputData::Bool(a) => rows_of(a, rows),
    }
}

/// The tract inputs of a run, made one chunk at a time ([`Batches::get`]): each chunk's rows
/// are copied once from the inputs when it is needed, and an input that is not split (the same
/// in every chunk) once for all of them.
pub(crate) struct Batches<'a> {
    data: Vec<&'a InputData>,
    /// Per input: the tensor every chunk shares, or None for an input split into chunks.
    whole: Vec<Option<TValue>>,
    chunking: Option<&'a Chunking>,
}

impl Batches<'_> {
    /// How many chunks.
    pub(crate) fn len(&self) -> usize {
        self.chunking.map_or(1, |c| c.rows.div_ceil(c.chunk))
    }

    /// Chunk `b`'s inputs.
    pub(crate) fn get(&self, b: usize) -> Result<TVec<TValue>> {
        let mut tv = TVec::new();
        for (d, w) in self.data.iter().zip(&self.whole) {
            tv.push(match (w, self.chunking) {
                (Some(w), _) => w.clone(),
                (None, Some(c)) => {
                    let start = b * c.chunk;
                    TValue::from(to_tensor(d, Some((start, (start + c.chunk).min(c.rows), c.chunk)))?)
                }
                (None, None) => unreachable!("unsplit inputs are whole"),
            });
        }
        Ok(tv)
    }
}

impl Runnable {
    /// The tract inputs for `inputs`, checked against the compiled facts (see [`Batches`]).
    pub(crate) fn batches<'a>(&'a self, inputs: &'a Inputs) -> Result<Batches<'a>> {
        let mut data = vec![];
        let mut whole = vec![];
        for (k, n) in self.input_names.iter().enumerate() {
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
            let split = self.chunking.as_ref().is_some_and(|c| c.batched.get(k).copied().unwrap_or(false));
            whole.push(if split { None } else { Some(TValue::from(to_tensor(&i.data, None)?)) });
            data.push(&*i.data);
        }
        Ok(Batches { data, whole, chunking: self.chunking.as_ref() })
    }

    /// Every chunk's tract inputs at once (for timed runs: converted before the clock starts).
    pub(crate) fn prepare(&self, inputs: &Inputs) -> Result<Vec<TVec<TValue>>> {
        let b = self.batches(inputs)?;
        (0..b.len()).map(|i| b.get(i)).collect()
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
        let batches = r.batches(inputs)?;
        // Chunks of one row run in blocks, each on one run state (see [`chunks::block_runs`]).
        let block = r.chunking.as_ref().map_or(1, |c| chunks::block_runs(&r.facts, c.chunk));
        let run_block = |tvs: Vec<TVec<TValue>>| -> Vec<Result<TVec<TValue>>> {
            if tvs.len() == 1 {
                return tvs.into_iter().map(|tv| r.run_raw(tv)).collect();
            }
            match r.spawn() {
                Ok(mut state) => tvs.into_iter().map(|tv| run_in(&mut state, tv)).collect(),
                Err(e) => vec![Err(e)],
            }
        };
        let mut next = 0usize;
        while next < batches.len() {
            // Up to `threads` blocks at once (tract runs one inference on one core); their
            // outputs are handed to `f` in order, so results do not depend on the thread count.
            // Each chunk's inputs are made as its wave starts.
            let end = (next + threads * block).min(batches.len());
            let wave: Vec<Vec<TVec<TValue>>> = (next..end)
                .step_by(block)
                .map(|b0| (b0..(b0 + block).min(end)).map(|b| batches.get(b)).collect::<Result<_>>())
                .collect::<Result<_>>()?;
            let outs: Vec<Result<TVec<TValue>>> = if wave.len() == 1 {
                wave.into_iter().flat_map(run_block).collect()
            } else {
                std::thread::scope(|s| {
                    let hs: Vec<_> = wave.into_iter().map(|tvs| s.spawn(move || run_block(tvs))).collect();
                    hs.into_iter()
                        .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
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
    fn convolutional_graphs_run_one_row_at_a_time_in_blocks() {
        let path = |name: &str| Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name);
        for (name, conv) in [
            ("fmnist_mobilenet.onnx", true),
            ("fmnist_resnet.onnx", true),
            ("digits_cnn.onnx", true),
            ("fmnist_vit.onnx", false),
            ("digits_transformer.onnx", false),
            ("digits_lstm.onnx", false),
            ("digits_mlp.onnx", false),
        ] {
            assert_eq!(chunks::convolutional(&read_proto(&path(name)).unwrap()), conv, "{name}");
        }
        // 100 images: a MobileNet runs them one by one, a ViT of the same input in one batch.
        let facts = [InputFact { name: "x".into(), elem_type: dt::FLOAT, shape: vec![100, 1, 28, 28] }];
        let r = load_runnable(&path("fmnist_mobilenet.onnx"), &facts).unwrap();
        assert_eq!(r.chunking.as_ref().map(|c| (c.rows, c.chunk)), Some((100, 1)));
        let r = load_runnable(&path("fmnist_vit.onnx"), &facts).unwrap();
        assert!(r.chunking.is_none(), "{:?}", r.chunking);
        // Only when axis 0 holds the samples: a streaming model whose axis 0 is time (its state
        // outputs [1, …]) runs its frames together; unnamed free axes match each other; a model
        // that declares no output shape is not assumed to be per-sample.
        let free = |s: &str| Some(Some(s.to_string()));
        assert!(chunks::samples_on_axis0(free("batch"), [free("batch")]));
        assert!(chunks::samples_on_axis0(free(""), [free(""), None]));
        assert!(!chunks::samples_on_axis0(free("sequence_length"), [free("sequence_length"), Some(None)]));
        assert!(!chunks::samples_on_axis0(free("batch"), [free("batch_size")]));
        assert!(!chunks::samples_on_axis0(free("batch"), [None]));
        assert!(!chunks::samples_on_axis0(Some(None), [Some(None)]));
        // Blocks of one-row runs: about a mebibyte of input, at most 64 runs; larger chunks alone.
        let f = |shape: &[usize]| [InputFact { name: "x".into(), elem_type: dt::FLOAT, shape: shape.to_vec() }];
        assert_eq!(chunks::block_runs(&f(&[1000, 1, 28, 28]), 1), 64);
        assert_eq!(chunks::block_runs(&f(&[1000, 96, 14, 14]), 1), 13);
        assert_eq!(chunks::block_runs(&f(&[1000, 3, 224, 224]), 1), 1);
        assert_eq!(chunks::block_runs(&f(&[1000, 64]), 103), 1);
    }

    /// A streaming model: x [T, 4] (T free), y = Relu(x) [T, 4] and a state s = ΣT x [1, 4].
    fn streaming_model(dir: &Path) -> std::path::PathBuf {
        use crate::model::graph::{model_of, tensor_value_info};
        let node = |op: &str, ins: &[&str], o: &str| {
            let mut n = onnx_protobuf::NodeProto::new();
            (n.op_type, n.name, n.output) = (op.into(), o.into(), vec![o.into()]);
            n.input = ins.iter().map(|s| s.to_string()).collect();
            n
        };
        let mut g = onnx_protobuf::GraphProto::new();
        g.name = "stream".into();
        g.node = vec![node("Relu", &["x"], "y"), node("ReduceSum", &["x", "axes"], "s")];
        g.initializer.push(crate::model::tensor::new_i64("axes", &[1], &[0]));
        g.input.push(tensor_value_info("x", dt::FLOAT, &[None, Some(4)], "T"));
        g.output.push(tensor_value_info("y", dt::FLOAT, &[None, Some(4)], "T"));
        g.output.push(tensor_value_info("s", dt::FLOAT, &[Some(1), Some(4)], "T"));
        let path = dir.join("stream.onnx");
        crate::model::io::save(model_of(g), &path, &Default::default()).unwrap();
        path
    }

    /// A model whose axis 0 is time (an output declares a fixed axis 0: its state) runs all its
    /// rows together, past MAX_CHUNK: in chunks its state would restart (here: fail to join).
    #[test]
    fn a_streaming_model_runs_its_frames_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = streaming_model(dir.path());
        let t = 3 * MAX_CHUNK + 5;
        let x = ndarray::Array2::from_shape_fn((t, 4), |(i, j)| ((i * 4 + j) % 7) as f32 - 3.0).into_dyn();
        let r =
            load_runnable(&path, &[InputFact { name: "x".into(), elem_type: dt::FLOAT, shape: vec![t, 4] }]).unwrap();
        assert!(r.chunking.is_none(), "{:?}", r.chunking);
        let inputs = Inputs {
            inputs: vec![super::super::inputs::Input {
                name: "x".into(),
                data: InputData::F32(x.clone()).into(),
                source: super::super::inputs::InputSource::Generated,
                sample_axis: 0,
            }],
            assumed: vec![],
            file_rows: None,
        };
        let out = run(&r, &inputs).unwrap();
        assert_eq!(out[0].shape(), &[t, 4]);
        let want = x.sum_axis(Axis(0));
        assert_eq!(out[1].shape(), &[1, 4]);
        for j in 0..4 {
            assert_eq!(out[1][[0, j]], want[j]);
        }
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
