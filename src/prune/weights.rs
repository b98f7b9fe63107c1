//! Per-weight EMP: zero the lowest-magnitude weights of each group, in place, in the weight's
//! original dtype and encoding.
//!
//! Scopes: `unit` = each output unit's incoming weights (a Conv filter, a Gemm/MatMul column of
//! B along the output axis, an LSTM gate row), `layer` = each tensor, `global` = all candidate
//! weights together, `normalized` = all candidates together after dividing each tensor's scores
//! by their mean (so a layer whose weights are small as a whole is not starved).

use crate::emp;
use crate::model::graph::{self, node_label, GraphIndex, WeightRef};
use crate::model::tensor::{self, dt, tname, Storage};
use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use onnx_protobuf::{GraphProto, ModelProto, NodeProto, TensorProto};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One EMP group per output unit (a Conv filter, a Gemm/MatMul output column, an LSTM gate row).
    Unit,
    /// One EMP group per weight tensor.
    Layer,
    /// One EMP group over all candidate weights, raw scores (the paper's VGG/ResNet protocol).
    Global,
    /// One EMP group over all candidate weights, each tensor's scores divided by their mean.
    Normalized,
}

/// The factor that divides a tensor's scores by their mean (`sum` = Σ|s| in element order over
/// `n` scores); 1 for an empty or all-zero tensor. Shared with the reference implementation.
pub(crate) fn norm_scale(sum: f64, n: usize) -> f64 {
    let mean = sum / n as f64;
    if n == 0 || !(mean.is_finite() && mean > 0.0) {
        1.0
    } else {
        1.0 / mean
    }
}

/// Which weights are candidates besides the main ones.
#[derive(Clone, Debug, Default)]
pub struct Include {
    pub bias: bool,
    pub norm: bool,
    pub embedding: bool,
    /// Weights whose output units have fewer than [`SMALL_FAN_IN`] inputs (depthwise 3×3 filters,
    /// a stem on one to three channels, LSTM gates on a few features). Left dense by default:
    /// zeroing a third of a 9-weight filter wrecks it and saves almost nothing.
    pub small: bool,
}

/// Output units with fewer inputs than this are left dense unless `Include::small`.
pub const SMALL_FAN_IN: usize = 32;

#[derive(Clone, Debug)]
pub struct WeightOptions {
    pub beta: f64,
    pub scope: Scope,
    pub include: Include,
    /// Optional per-tensor score override (same length as the tensor); default |w|.
    /// Used by data-driven criteria such as Wanda.
    pub scores: BTreeMap<String, Vec<f64>>,
    /// Baseline instead of EMP: prune this fixed fraction of each group (for comparisons).
    pub fixed_ratio: Option<f64>,
}

/// What EMP did to one weight tensor.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TensorReport {
    pub name: String,
    /// op types and node names that use it, e.g. "Conv conv1"
    pub used_by: Vec<String>,
    pub role: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Number of EMP groups this tensor was split into (units for scope=unit).
    pub groups: usize,
    /// Elements N.
    pub n: usize,
    /// Σ over groups of N_eff (for scope=global: this tensor's share is not a separate EMP).
    pub n_eff: f64,
    /// Elements kept by EMP.
    pub kept: usize,
    /// 1 − kept / N.
    pub sparsity: f64,
    /// Retained |score| mass of this tensor: Σ kept |s| / Σ |s|.
    pub s_eff: f64,
    /// Groups whose scores were all zero (kept whole).
    pub all_zero_groups: usize,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WeightsReport {
    pub tensors: Vec<TensorReport>,
    /// Weights left dense because their output units have few inputs (`--include small` prunes them).
    pub small_filters_kept: Vec<String>,
    /// For scope=global: the single EMP decision over all candidates.
    pub global: Option<GlobalDecision>,
    pub candidates_elems: usize,
    pub kept_elems: usize,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GlobalDecision {
    pub n: usize,
    pub n_eff: f64,
    pub kept: usize,
    pub s_eff: f64,
}

/// A candidate weight: where it is, and along which axis its output units lie.
#[derive(Clone, Debug)]
struct Candidate {
    name: String,
    wref: WeightRef,
    /// axis of output units, None = whole tensor is one unit
    unit_axis: Option<usize>,
    role: String,
    used_by: Vec<String>,
}

/// Which input slots of an op are prunable weights, their role and unit axis (given the rank).
/// The one place that says what "a weight" and "an output unit" are per op.
fn weight_slots(n: &NodeProto, inc: &Include) -> Vec<(usize, &'static str, UnitAxis)> {
    let dom_ok = n.domain.is_empty() || n.domain == "ai.onnx";
    let ms = n.domain == "com.microsoft";
    match (n.op_type.as_str(), dom_ok, ms) {
        ("Conv", true, _) => {
            let mut v = vec![(1, "weight", UnitAxis::Fixed(0))];
            if inc.bias {
                v.push((2, "bias", UnitAxis::Whole));
            }
            v
        }
        // ConvTranspose W = [C_in, C_out/group, k...]: an output unit is a slice of axis 1.
        ("ConvTranspose", true, _) => {
            let mut v = vec![(1, "weight", UnitAxis::Fixed(1))];
            if inc.bias {
                v.push((2, "bias", UnitAxis::Whole));
            }
            v
        }
        ("Gemm", true, _) => {
            let tb = int_attr(n, "transB").ok().flatten().unwrap_or(0) != 0;
            let ta = int_attr(n, "transA").ok().flatten().unwrap_or(0) != 0;
            let mut v = vec![
                (1, "weight", UnitAxis::Fixed(if tb { 0 } else { 1 })),
                (0, "weight", UnitAxis::Fixed(if ta { 1 } else { 0 })),
            ];
            if inc.bias {
                v.push((2, "bias", UnitAxis::Whole));
            }
            v
        }
        // MatMul: a constant B [.., K, N] has output units along its last axis; a constant
        // A [.., M, K] along its second-to-last.
        // A 1-D B [K] has no output axis: it is one unit.
        ("MatMul", true, _) => vec![(1, "weight", UnitAxis::LastOfMatrix), (0, "weight", UnitAxis::SecondLast)],
        // W [dirs, G·H, in], R [dirs, G·H, H]: a unit is one gate row.
        ("LSTM" | "GRU" | "RNN", true, _) => {
            let mut v = vec![(1, "weight", UnitAxis::Fixed(1)), (2, "recurrence", UnitAxis::Fixed(1))];
            if inc.bias {
                v.push((3, "bias", UnitAxis::Whole));
            }
            v
        }
        // com.microsoft Attention: weights [hidden, 3·hidden], bias [3·hidden].
        ("Attention", _, true) => {
            let mut v = vec![(1, "qkv-weight", UnitAxis::Last)];
            if inc.bias {
                v.push((2, "bias", UnitAxis::Whole));
            }
            v
        }
        (
            "BatchNormalization"
            | "InstanceNormalization"
            | "LayerNormalization"
            | "GroupNormalization"
            | "SkipLayerNormalization"
            | "SimplifiedLayerNormalization",
            _,
            _,
        ) if inc.norm => (1..n.input.len()).map(|i| (i, "norm", UnitAxis::Whole)).collect(),
        ("Gather", true, _) if inc.embedding => vec![(0, "embedding", UnitAxis::Fixed(0))],
        ("Add", true, _) if inc.bias => vec![(0, "bias", UnitAxis::Whole), (1, "bias", UnitAxis::Whole)],
        _ => vec![],
    }
}

#[derive(Clone, Copy, Debug)]
enum UnitAxis {
    Whole,
    Fixed(usize),
    Last,
    /// The last axis of a tensor of rank 2 or more.
    LastOfMatrix,
    SecondLast,
}

impl UnitAxis {
    fn resolve(self, rank: usize) -> Option<usize> {
        match self {
            UnitAxis::Whole => None,
            UnitAxis::Fixed(a) if a < rank => Some(a),
            UnitAxis::Fixed(_) => None,
            UnitAxis::Last if rank >= 1 => Some(rank - 1),
            UnitAxis::LastOfMatrix if rank >= 2 => Some(rank - 1),
            UnitAxis::SecondLast if rank >= 2 => Some(rank - 2),
            _ => None,
        }
    }
}

/// An int attribute, or an error when the attribute exists with another type (a FLOAT
/// `transB = 1.0` must not silently read as 0).
fn int_attr(n: &NodeProto, name: &str) -> Result<Option<i64>> {
    match graph::attr(n, name) {
        None => Ok(None),
        Some(a) if a.type_.value() == 2 || (a.type_.value() == 0 && a.f == 0.0) => Ok(Some(a.i)),
        Some(a) => bail!(
            "node '{}' ({}): attribute '{name}' must be an INT, found attribute type {}",
            node_label(n),
            n.op_type,
            a.type_.value()
        ),
    }
}

/// Is a weight of this op and dtype a candidate? `Ok(false)`: legitimately not a float weight
/// (an integer MatMul, a quantized embedding), skip it. `Err`: the model is invalid.
fn check_weight(n: &NodeProto, role: &str, name: &str, t: &onnx_protobuf::TensorProto) -> Result<bool> {
    let main = matches!(role, "weight" | "recurrence" | "qkv-weight");
    let what = || format!("node '{}' ({}): {role} '{name}'", node_label(n), n.op_type);
    if main {
        let rank = t.dims.len();
        let ok = match n.op_type.as_str() {
            "Conv" | "ConvTranspose" => rank >= 3,
            "Gemm" | "Attention" => rank == 2,
            "LSTM" | "GRU" | "RNN" => rank == 3,
            _ => rank >= 1,
        };
        if !ok {
            bail!("{} has dims {:?}: rank {rank} is not valid for {}", what(), t.dims, n.op_type);
        }
    }
    if tensor::is_float(t.data_type) {
        return Ok(true);
    }
    let integer = matches!(
        t.data_type,
        tensor::dt::INT8
            | tensor::dt::UINT8
            | tensor::dt::INT16
            | tensor::dt::UINT16
            | tensor::dt::INT32
            | tensor::dt::UINT32
            | tensor::dt::INT64
            | tensor::dt::UINT64
    );
    let ints_ok = matches!(n.op_type.as_str(), "Gemm" | "MatMul");
    if main && !(integer && ints_ok) {
        bail!(
            "{} has type {} ({}): {} needs a float weight",
            what(),
            tensor::dtype_name(t.data_type),
            t.data_type,
            n.op_type
        );
    }
    Ok(false)
}

fn find_candidates(g: &GraphProto, ix: &GraphIndex, inc: &Include) -> Result<Vec<Candidate>> {
    let mut out: Vec<Candidate> = Vec::new();
    let mut pos: BTreeMap<String, usize> = BTreeMap::new();
    // (candidate, label) pairs already recorded: a weight shared by many nodes stays linear.
    let mut seen: HashSet<(usize, String)> = HashSet::new();
    for n in &g.node {
        if n.op_type == "Gemm" {
            int_attr(n, "transA")?;
            int_attr(n, "transB")?;
        }
        for (slot, role, ua) in weight_slots(n, inc) {
            let Some(name) = n.input.get(slot).filter(|s| !s.is_empty()) else { continue };
            // A Add "bias" must be a constant vector feeding an Add after a MatMul/Gemm/Conv.
            if !ix.is_constant(name) {
                continue;
            }
            let Some(&wref) = ix.weights.get(name) else { continue };
            let Some(t) = graph::weight(g, wref) else { continue };
            if !check_weight(n, role, name, t)? {
                continue;
            }
            if is_small_filter(role, t, ua.resolve(t.dims.len())) && !inc.small {
                continue;
            }
            let rank = t.dims.len();
            let axis = ua.resolve(rank);
            let label = format!("{} {}", n.op_type, node_label(n));
            match pos.get(name) {
                Some(&i) => {
                    let c = &mut out[i];
                    if seen.insert((i, label.clone())) {
                        c.used_by.push(label);
                    }
                    // Consumers disagree on what a unit is: score the tensor as one group.
                    if c.unit_axis != axis {
                        c.unit_axis = None;
                    }
                }
                None => {
                    pos.insert(name.clone(), out.len());
                    seen.insert((out.len(), label.clone()));
                    out.push(Candidate {
                        name: name.clone(),
                        wref,
                        unit_axis: axis,
                        role: role.to_string(),
                        used_by: vec![label],
                    });
                }
            }
        }
    }
    Ok(out)
}

/// A weight whose output units have fewer than `SMALL_FAN_IN` inputs each: a depthwise 3×3 or
/// 1–3-channel stem filter, an LSTM gate row on 8 features, a 1×1 conv on 16 channels.
fn is_small_filter(role: &str, t: &TensorProto, axis: Option<usize>) -> bool {
    let Some(a) = axis else { return false };
    if !matches!(role, "weight" | "recurrence") || t.dims.len() < 2 || a >= t.dims.len() || t.dims[a] <= 0 {
        return false;
    }
    let fan_in = t.dims.iter().product::<i64>() / t.dims[a];
    fan_in > 0 && fan_in < SMALL_FAN_IN as i64
}

/// Weights left dense because their output units have few inputs (see `Include::small`), in
/// graph order.
pub fn small_filters(model: &ModelProto, inc: &Include) -> Result<Vec<String>> {
    small_filters_in(model.graph.as_ref().context("model has no graph")?, inc)
}

fn small_filters_in(g: &GraphProto, inc: &Include) -> Result<Vec<String>> {
    if inc.small {
        return Ok(vec![]);
    }
    let ix = GraphIndex::build(g)?;
    let mut out: Vec<String> = vec![];
    for n in &g.node {
        for (slot, role, ua) in weight_slots(n, inc) {
            let Some(name) = n.input.get(slot).filter(|s| !s.is_empty()) else { continue };
            let Some(t) = ix.weight(g, name) else { continue };
            if is_small_filter(role, t, ua.resolve(t.dims.len())) && !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    Ok(out)
}

/// Names of the candidate weights of a model, in graph order.
pub fn candidate_names(model: &ModelProto, inc: &Include) -> Result<Vec<String>> {
    let g = model.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    Ok(find_candidates(g, &ix, inc)?.into_iter().map(|c| c.name).collect())
}

// ---------------------------------------------------------------------------------------------
// Streaming implementation.
//
// Nothing holds all scores at once and no tensor is converted to f64 as a whole: every pass
// decodes blocks of `BLOCK` scores from the weight bytes (f32, f16, bf16, f64, raw or typed) or
// from a score override into a small f64 buffer. Work that does not depend on order (maxima,
// histograms, finiteness) runs in parallel over chunks; sums run sequentially in exactly the
// order of the all-in-memory version, so every reported number is bit-identical to it and
// independent of the number of threads. Keys: the bit pattern of |s| as f64 (non-negative IEEE
// floats order like their bits).
//
// Cost floor: a sequential f64 sum is one dependent add per element (~1.6 ns here). Scope global
// needs two of them over all candidates (the moments before the cut, the retained mass after it),
// so it cannot run at copy speed while staying bit-identical; per-tensor and per-unit sums run in
// parallel across tensors.
// ---------------------------------------------------------------------------------------------

/// Scores decoded per block.
const BLOCK: usize = 1024;
/// Work item of the parallel passes, in elements (small in tests, to exercise the merging).
const CHUNK: usize = if cfg!(test) { 1 << 12 } else { 1 << 22 };
/// Level-1 radix digit: bits 47..62 of a key (bit 63, the sign, is 0).
const TOP_SHIFT: u32 = 47;
/// Later radix digits have at most this many bits (a 2^20-bucket histogram is 8 MB).
const MAX_DIGIT: u32 = 20;
/// A group (whole tensor) up to this size is selected in memory; a larger one by streaming.
const BUFFER_GROUP_MAX: usize = 1 << 20;
/// Elements gathered per block of units.
const UNIT_BLOCK: usize = 1 << 18;

/// Where the scores of one candidate come from, validated against its dims.
#[derive(Clone, Copy)]
enum Src<'a> {
    F32(&'a [u8]),
    F16(&'a [u8]),
    Bf16(&'a [u8]),
    F64(&'a [u8]),
    F32s(&'a [f32]),
    F64s(&'a [f64]),
    F16s(&'a [i32]),
    Bf16s(&'a [i32]),
    /// A score override (e.g. Wanda), used as given.
    Scores(&'a [f64]),
}

/// The scores of one candidate: its source times `scale` (1, or the normalisation of
/// `Scope::Normalized`).
#[derive(Clone, Copy)]
struct View<'a> {
    src: Src<'a>,
    scale: f64,
}

impl View<'_> {
    fn n(&self) -> usize {
        match self.src {
            Src::F32(b) => b.len() / 4,
            Src::F16(b) | Src::Bf16(b) => b.len() / 2,
            Src::F64(b) => b.len() / 8,
            Src::F32s(v) => v.len(),
            Src::F64s(v) | Src::Scores(v) => v.len(),
            Src::F16s(v) | Src::Bf16s(v) => v.len(),
        }
    }

    /// Scores `lo .. lo + out.len()` as the all-in-memory version saw them: |w| as f64, or the
    /// override value.
    fn fill(&self, lo: usize, out: &mut [f64]) {
        let n = out.len();
        match self.src {
            Src::F32(b) => {
                for (o, c) in out.iter_mut().zip(b[lo * 4..(lo + n) * 4].chunks_exact(4)) {
                    *o = f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).abs();
                }
            }
            Src::F16(b) => {
                for (o, c) in out.iter_mut().zip(b[lo * 2..(lo + n) * 2].chunks_exact(2)) {
                    *o = f64::from(f16::from_le_bytes([c[0], c[1]]).to_f32()).abs();
                }
            }
            Src::Bf16(b) => {
                for (o, c) in out.iter_mut().zip(b[lo * 2..(lo + n) * 2].chunks_exact(2)) {
                    *o = f64::from(bf16::from_le_bytes([c[0], c[1]]).to_f32()).abs();
                }
            }
            Src::F64(b) => {
                for (o, c) in out.iter_mut().zip(b[lo * 8..(lo + n) * 8].chunks_exact(8)) {
                    *o = f64::from_le_bytes(c.try_into().unwrap()).abs();
                }
            }
            Src::F32s(v) => {
                for (o, &x) in out.iter_mut().zip(&v[lo..lo + n]) {
                    *o = f64::from(x).abs();
                }
            }
            Src::F64s(v) => {
                for (o, &x) in out.iter_mut().zip(&v[lo..lo + n]) {
                    *o = x.abs();
                }
            }
            Src::F16s(v) => {
                for (o, &x) in out.iter_mut().zip(&v[lo..lo + n]) {
                    *o = f64::from(f16::from_bits(x as u16).to_f32()).abs();
                }
            }
            Src::Bf16s(v) => {
                for (o, &x) in out.iter_mut().zip(&v[lo..lo + n]) {
                    *o = f64::from(bf16::from_bits(x as u16).to_f32()).abs();
                }
            }
            Src::Scores(v) => out.copy_from_slice(&v[lo..lo + n]),
        }
        if self.scale != 1.0 {
            for o in out.iter_mut() {
                *o *= self.scale;
            }
        }
    }

    /// Call `f(first index, scores)` for consecutive blocks of `lo..hi`.
    #[inline]
    fn blocks(&self, lo: usize, hi: usize, mut f: impl FnMut(usize, &[f64])) {
        let mut buf = [0f64; BLOCK];
        let mut i = lo;
        while i < hi {
            let k = BLOCK.min(hi - i);
            self.fill(i, &mut buf[..k]);
            f(i, &buf[..k]);
            i += k;
        }
    }
}

#[inline]
fn key(v: f64) -> u64 {
    v.abs().to_bits()
}

/// The value `Iterator::sum` starts from for f64 (−0.0 in current Rust): the per-tensor sums are
/// folded the same way as the all-in-memory version's `iter().sum()`.
fn sum_zero() -> f64 {
    std::iter::empty::<f64>().sum()
}

/// Validate one candidate and make its score view. Errors are those of the previous version.
fn make_view<'a>(c: &Candidate, t: &'a TensorProto, opts: &'a WeightOptions) -> Result<View<'a>> {
    if let Some(s) = opts.scores.get(&c.name) {
        let n = tensor::numel(t)?;
        if s.len() != n {
            bail!("tensor '{}': score vector has {} entries for {} weights", c.name, s.len(), n);
        }
        tensor::storage(t).with_context(|| format!("zeroing '{}'", tname(t)))?;
        return Ok(View { src: Src::Scores(s), scale: 1.0 });
    }
    let st = tensor::storage(t).with_context(|| format!("weight '{}'", c.name))?;
    let src = match (st, t.data_type) {
        (Storage::Raw(_), dt::FLOAT) => Src::F32(&t.raw_data),
        (Storage::Raw(_), dt::FLOAT16) => Src::F16(&t.raw_data),
        (Storage::Raw(_), dt::BFLOAT16) => Src::Bf16(&t.raw_data),
        (Storage::Raw(_), dt::DOUBLE) => Src::F64(&t.raw_data),
        (Storage::Float, _) => Src::F32s(&t.float_data),
        (Storage::Double, _) => Src::F64s(&t.double_data),
        (Storage::Int32, dt::FLOAT16) => Src::F16s(&t.int32_data),
        (Storage::Int32, dt::BFLOAT16) => Src::Bf16s(&t.int32_data),
        (s, d) => bail!("weight '{}': float data of type {} stored as {s:?}", c.name, tensor::dtype_name(d)),
    };
    Ok(View { src, scale: 1.0 })
}

/// The first NaN/Inf score of `v[lo..hi]`, as (index, value).
fn first_non_finite(v: View, lo: usize, hi: usize) -> Option<(usize, f64)> {
    let mut bad = None;
    v.blocks(lo, hi, |i0, b| {
        if bad.is_none() && !b.iter().all(|x| x.is_finite()) {
            let j = b.iter().position(|x| !x.is_finite()).unwrap();
            bad = Some((i0 + j, b[j]));
        }
    });
    bad
}

fn non_finite_error(c: &Candidate, (i, v): (usize, f64)) -> anyhow::Error {
    anyhow::anyhow!("tensor '{}': score of element {i} is {v} (NaN/Inf weights cannot be ranked)", c.name)
}

/// Keep bits, one per element.
fn new_mask(n: usize, fill: bool) -> Vec<u64> {
    vec![if fill { !0u64 } else { 0 }; n.div_ceil(64)]
}

#[inline]
fn bit(mask: &[u64], i: usize) -> bool {
    mask[i >> 6] >> (i & 63) & 1 != 0
}

#[inline]
fn set_bit(mask: &mut [u64], i: usize) {
    mask[i >> 6] |= 1 << (i & 63);
}

/// Run `f(acc, item)` for items 0..n on all rayon threads, one accumulator per worker, items
/// taken in any order: only for order-independent accumulations (counts, maxima).
fn par_accumulate<A: Send>(n: usize, init: impl Fn() -> A + Sync, f: impl Fn(&mut A, usize) + Sync) -> Vec<A> {
    let next = AtomicUsize::new(0);
    let workers = rayon::current_num_threads().min(n).max(1);
    (0..workers)
        .into_par_iter()
        .map(|_| {
            let mut a = init();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                f(&mut a, i);
            }
            a
        })
        .collect()
}

/// (part, lo, hi) work items covering `parts` in order.
fn chunks(parts: &[View]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for (p, v) in parts.iter().enumerate() {
        let n = v.n();
        let mut lo = 0;
        while lo < n {
            let hi = (lo + CHUNK).min(n);
            out.push((p, lo, hi));
            lo = hi;
        }
    }
    out
}

/// First streaming pass over a group made of `parts`: per-part max key and first NaN/Inf,
/// OR of all keys, level-1 histogram.
struct Scan {
    max: Vec<u64>,
    bad: Vec<Option<(usize, f64)>>,
    or: u64,
    hist: Vec<u64>,
}

fn scan(parts: &[View], items: &[(usize, usize, usize)]) -> Scan {
    let init = || Scan { max: vec![0; parts.len()], bad: vec![None; parts.len()], or: 0, hist: vec![0; 1 << 16] };
    let accs = par_accumulate(items.len(), init, |a, ci| {
        let (p, lo, hi) = items[ci];
        let (mut mx, mut or) = (a.max[p], a.or);
        let mut bad = None;
        parts[p].blocks(lo, hi, |i0, b| {
            if bad.is_none() && !b.iter().all(|x| x.is_finite()) {
                let j = b.iter().position(|x| !x.is_finite()).unwrap();
                bad = Some((i0 + j, b[j]));
            }
            for &v in b {
                let k = key(v);
                mx = mx.max(k);
                or |= k;
                a.hist[(k >> TOP_SHIFT) as usize & 0xFFFF] += 1;
            }
        });
        a.max[p] = mx;
        a.or = or;
        if let Some(b) = bad {
            if a.bad[p].is_none_or(|o| b.0 < o.0) {
                a.bad[p] = Some(b);
            }
        }
    });
    let mut out = init();
    for a in accs {
        for p in 0..parts.len() {
            out.max[p] = out.max[p].max(a.max[p]);
            if let Some(b) = a.bad[p] {
                if out.bad[p].is_none_or(|o| b.0 < o.0) {
                    out.bad[p] = Some(b);
                }
            }
        }
        out.or |= a.or;
        for (h, x) in out.hist.iter_mut().zip(&a.hist) {
            *h += x;
        }
    }
    out
}

/// Σ a and Σ a² of a = |s| / m over `parts` in order, as one sequential sum (m > 0).
fn moments_seq(parts: &[View], m: f64) -> (f64, f64) {
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut a = [0f64; BLOCK];
    for v in parts {
        v.blocks(0, v.n(), |_, b| {
            let a = &mut a[..b.len()];
            for (x, &y) in a.iter_mut().zip(b) {
                *x = y.abs() / m;
            }
            let (mut r1, mut r2) = (s1, s2);
            for &x in a.iter() {
                r1 += x;
                r2 += x * x;
            }
            (s1, s2) = (r1, r2);
        });
    }
    (s1, s2)
}

/// Per part: (Σ a, Σ a²).
type PartSums = Vec<(f64, f64)>;

/// The global moments (scaled by the global max `m`, one sequential sum over all parts) and, per
/// part, its own moments (scaled by its own max) — each sum in the previous version's order. The global sums and the per-part sums run side by side on two threads.
fn moments_global(parts: &[View], m: f64, part_max: &[u64]) -> ((f64, f64), PartSums) {
    rayon::join(
        || moments_seq(parts, m),
        || {
            parts
                .par_iter()
                .zip(part_max)
                .map(|(v, &mt)| {
                    let mt = f64::from_bits(mt);
                    let (mut t1, mut t2) = (0.0f64, 0.0f64);
                    let mut a = [0f64; BLOCK];
                    v.blocks(0, v.n(), |_, b| {
                        let a = &mut a[..b.len()];
                        for (x, &y) in a.iter_mut().zip(b) {
                            *x = y.abs() / mt;
                        }
                        // Locals: accumulators captured by the closure would live in memory.
                        let (mut q1, mut q2) = (t1, t2);
                        for &x in a.iter() {
                            q1 += x;
                            q2 += x * x;
                        }
                        (t1, t2) = (q1, q2);
                    });
                    // A part whose max is 0 has no moments (t1, t2 are NaN here: not used).
                    if mt == 0.0 {
                        (0.0, 0.0)
                    } else {
                        (t1, t2)
                    }
                })
                .collect()
        },
    )
}

/// The bucket holding rank `r` (0 = largest) and the rank inside it.
fn pick(hist: &[u64], mut r: u64) -> (u64, u64) {
    for b in (0..hist.len()).rev() {
        if r < hist[b] {
            return (b as u64, r);
        }
        r -= hist[b];
    }
    unreachable!("rank beyond the histogram")
}

/// Radix select over the keys of `parts`: the `kept`-th largest key (1 ≤ kept ≤ N) and how many
/// elements equal to it are kept (the first ones in order: lower index wins).
fn threshold(parts: &[View], items: &[(usize, usize, usize)], sc: &Scan, kept: usize) -> (u64, usize) {
    let low = sc.or.trailing_zeros();
    let (mut prefix, mut r) = pick(&sc.hist, kept as u64 - 1);
    let mut shift = TOP_SHIFT;
    while shift > low {
        let w = (shift - low).min(MAX_DIGIT);
        let next = shift - w;
        let dmask = (1u64 << w) - 1;
        let accs = par_accumulate(
            items.len(),
            || vec![0u64; 1 << w],
            |h, ci| {
                let (p, lo, hi) = items[ci];
                parts[p].blocks(lo, hi, |_, b| {
                    for &v in b {
                        let k = key(v);
                        if k >> shift == prefix {
                            h[((k >> next) & dmask) as usize] += 1;
                        }
                    }
                });
            },
        );
        let mut hist = vec![0u64; 1 << w];
        for a in accs {
            for (h, x) in hist.iter_mut().zip(&a) {
                *h += x;
            }
        }
        let (b, rr) = pick(&hist, r);
        prefix = (prefix << w) | b;
        r = rr;
        shift = next;
    }
    // Every key has zeros below `low`, so the bucket holds only equal keys.
    (prefix << shift, r as usize + 1)
}

/// Keep bits of one part given the threshold; `ties` counts down the equal keys still kept.
/// With `retained` = (sum, m): also Σ (kept |s| / m), in order.
fn mark(v: View, thr: u64, ties: &mut usize, mut retained: Option<(&mut f64, f64)>) -> Vec<u64> {
    let n = v.n();
    let mut mask = new_mask(n, false);
    let mut t = *ties;
    let mut a = [0f64; BLOCK];
    let thr_v = f64::from_bits(thr);
    let mut keep = [0u64; BLOCK];
    // Blocks start at multiples of BLOCK, so at whole mask words.
    v.blocks(0, n, |i0, b| {
        let k = b.len();
        let keep = &mut keep[..k];
        let mut any_eq = false;
        for (q, &x) in keep.iter_mut().zip(b) {
            let x = x.abs();
            *q = 0u64.wrapping_sub((x > thr_v) as u64);
            any_eq |= x == thr_v;
        }
        if any_eq && t > 0 {
            // Ties at the threshold: the first ones in order are kept.
            for (q, &x) in keep.iter_mut().zip(b) {
                if t > 0 && x.abs() == thr_v {
                    *q = !0;
                    t -= 1;
                }
            }
        }
        for (wi, c) in keep.chunks(64).enumerate() {
            let mut w = 0u64;
            for (j, &q) in c.iter().enumerate() {
                w |= (q & 1) << j;
            }
            mask[i0 / 64 + wi] = w;
        }
        if let Some((sum, m)) = retained.as_mut() {
            let a = &mut a[..k];
            const NEG0: u64 = 1 << 63;
            // x + (−0.0) == x exactly: adding −0.0 for a pruned element is adding nothing.
            for ((q, &x), &sel) in a.iter_mut().zip(b).zip(keep.iter()) {
                *q = f64::from_bits(((x.abs() / *m).to_bits() & sel) | (NEG0 & !sel));
            }
            let mut r = **sum;
            for &q in a.iter() {
                r += q;
            }
            **sum = r;
        }
    });
    *ties = t;
    mask
}

/// `x` if `keep`, else −0.0, without a branch: x + (−0.0) == x exactly, so adding this is the
/// same sum as adding the kept values only.
#[inline(always)]
fn select(keep: bool, x: f64) -> f64 {
    let sel = 0u64.wrapping_sub(keep as u64);
    f64::from_bits((x.to_bits() & sel) | (!sel & (1u64 << 63)))
}

/// (n_eff, kept, all_zero) of one group, exactly as `emp::select` / `emp::select_ratio` decide.
fn decide(n: usize, s1: f64, s2: f64, opts: &WeightOptions) -> (f64, usize, bool) {
    let ne = emp::n_eff_from_moments(n, s1, s2);
    match opts.fixed_ratio {
        Some(r) => (ne.unwrap_or(n as f64), (n - ((r * n as f64).round() as usize).min(n)).max(1.min(n)), s1 == 0.0),
        None => match ne {
            None => (n as f64, n, true),
            Some(ne) => (ne, emp::keep_count(n, ne, opts.beta), false),
        },
    }
}

/// `emp::moments_scaled` of an in-memory group.
fn moments_buf(s: &[f64]) -> (f64, f64) {
    let m = s.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if m == 0.0 {
        return (0.0, 0.0);
    }
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in s {
        let a = v.abs() / m;
        s1 += a;
        s2 += a * a;
    }
    (s1, s2)
}

/// Per-unit EMP (or one group for the whole tensor) → keep bits, groups, Σ N_eff, all-zero groups.
/// The bool is false when a score was NaN/Inf (the result is then meaningless).
fn unit_mask(
    v: View,
    shape: &[usize],
    axis: Option<usize>,
    opts: &WeightOptions,
) -> ((Vec<u64>, usize, f64, usize), bool) {
    let n = v.n();
    let (outer, dim, inner) = match axis {
        // An empty tensor is one (empty) group: no loop over a huge empty axis.
        Some(a) if n > 0 => (shape[..a].iter().product(), shape[a], shape[a + 1..].iter().product()),
        _ if n > BUFFER_GROUP_MAX => {
            return match first_non_finite(v, 0, n) {
                None => (stream_group(v, opts), true),
                Some(_) => ((Vec::new(), 0, 0.0, 0), false),
            }
        }
        _ => (1, 1, n),
    };
    let mut finite = true;
    let mut mask = new_mask(n, false);
    let len: usize = outer * inner;
    let ub = (UNIT_BLOCK / len.max(1)).clamp(1, dim);
    let mut buf = vec![0f64; ub * len];
    let mut run = vec![0f64; if outer > 1 { ub * inner } else { 0 }];
    let mut sel: Vec<u64> = Vec::with_capacity(len);
    let (mut ne, mut groups, mut zero_groups) = (0.0f64, 0usize, 0usize);
    let mut u0 = 0;
    while u0 < dim {
        let nb = ub.min(dim - u0);
        // Gather units u0..u0+nb: unit b's elements, in unit order, at buf[b·len..].
        if outer == 1 {
            v.fill(u0 * inner, &mut buf[..nb * inner]);
        } else {
            for o in 0..outer {
                let run = &mut run[..nb * inner];
                v.fill((o * dim + u0) * inner, run);
                if inner == 1 {
                    for (b, &x) in run.iter().enumerate() {
                        buf[b * len + o] = x;
                    }
                } else {
                    for (b, r) in run.chunks_exact(inner).enumerate() {
                        buf[b * len + o * inner..b * len + (o + 1) * inner].copy_from_slice(r);
                    }
                }
            }
        }
        let gathered = &buf[..nb * len];
        if !gathered.iter().all(|x| x.is_finite()) {
            finite = false;
            break;
        }
        for b in 0..nb {
            let u = u0 + b;
            let us = &buf[b * len..(b + 1) * len];
            let (s1, s2) = moments_buf(us);
            let (d_ne, kept, all_zero) = decide(len, s1, s2, opts);
            ne += d_ne;
            groups += 1;
            zero_groups += all_zero as usize;
            // Keep the `kept` largest |s|, ties: lower index in the unit wins (= emp::top_k).
            let (thr, mut ties) = if kept >= len {
                (0, usize::MAX)
            } else if kept == 0 {
                (u64::MAX, 0)
            } else {
                sel.clear();
                sel.extend(us.iter().map(|&x| key(x)));
                let idx = len - kept;
                let (_, t, rest) = sel.select_nth_unstable(idx);
                let t = *t;
                let above = rest.iter().filter(|&&k| k > t).count();
                (t, kept - above)
            };
            let mut j = 0;
            for o in 0..outer {
                let base = (o * dim + u) * inner;
                for i in 0..inner {
                    let k = key(us[j]);
                    j += 1;
                    if k > thr
                        || (k == thr && ties > 0 && {
                            ties -= 1;
                            true
                        })
                    {
                        set_bit(&mut mask, base + i);
                    }
                }
            }
        }
        u0 += nb;
    }
    ((mask, groups, ne, zero_groups), finite)
}

/// One EMP group over a whole (large) tensor, streaming: (keep bits, 1, N_eff, all_zero).
fn stream_group(v: View, opts: &WeightOptions) -> (Vec<u64>, usize, f64, usize) {
    let parts = [v];
    let n = v.n();
    let items = chunks(&parts);
    let sc = scan(&parts, &items);
    let m = f64::from_bits(sc.max[0]);
    let (s1, s2) = if m == 0.0 { (0.0, 0.0) } else { moments_seq(&parts, m) };
    let (ne, kept, all_zero) = decide(n, s1, s2, opts);
    let mask = if kept >= n {
        new_mask(n, true)
    } else if kept == 0 {
        new_mask(n, false)
    } else {
        let (thr, mut ties) = threshold(&parts, &items, &sc, kept);
        mark(v, thr, &mut ties, None)
    };
    (mask, 1, ne, all_zero as usize)
}

/// Per-tensor sums in element order, as the previous version's report: (kept, Σ s, Σ kept s);
/// the pruned elements are zeroed in the same sweep (block by block, while they are in cache).
fn account_and_zero(
    c: &Candidate,
    t: &mut TensorProto,
    opts: &WeightOptions,
    mask: &[u64],
) -> Result<(usize, f64, f64)> {
    const SWEEP: usize = 1 << 16;
    let (mut total, mut kept_mass) = (sum_zero(), sum_zero());
    let n = make_view(c, t, opts)?.n();
    let kept = mask_count(mask, n);
    let mut lo = 0;
    while lo < n {
        let hi = (lo + SWEEP).min(n);
        make_view(c, t, opts)?.blocks(lo, hi, |i0, b| {
            let words = &mask[i0 / 64..];
            let (mut tot, mut km) = (total, kept_mass);
            for (j, &x) in b.iter().enumerate() {
                tot += x;
                km += select(words[j / 64] >> (j % 64) & 1 != 0, x);
            }
            (total, kept_mass) = (tot, km);
        });
        zero_masked(t, mask, lo, hi).with_context(|| format!("zeroing '{}'", tname(t)))?;
        lo = hi;
    }
    Ok((kept, total, kept_mass))
}

/// Set bits among the first `n`.
fn mask_count(mask: &[u64], n: usize) -> usize {
    let full = n / 64;
    let mut c: usize = mask[..full].iter().map(|w| w.count_ones() as usize).sum();
    if !n.is_multiple_of(64) {
        c += (mask[full] & ((1u64 << (n % 64)) - 1)).count_ones() as usize;
    }
    c
}

/// Zero the elements `lo..hi` (`lo` a multiple of 64) whose keep bit is clear, in place, keeping
/// the tensor's encoding.
fn zero_masked(t: &mut TensorProto, mask: &[u64], lo: usize, hi: usize) -> Result<()> {
    fn zero<T: Copy>(v: &mut [T], z: T, mask: &[u64]) {
        for (c, &w) in v.chunks_mut(64).zip(mask) {
            if w == !0 {
                continue;
            }
            for (j, x) in c.iter_mut().enumerate() {
                if w >> j & 1 == 0 {
                    *x = z;
                }
            }
        }
    }
    debug_assert!(lo.is_multiple_of(64));
    let mask = &mask[lo / 64..];
    match tensor::storage(t)? {
        Storage::Raw(4) => {
            for (c, &w) in t.raw_data[lo * 4..hi * 4].chunks_mut(256).zip(mask) {
                if w == !0 {
                    continue;
                }
                for (j, x) in c.chunks_exact_mut(4).enumerate() {
                    let sel = 0u32.wrapping_sub((w >> j) as u32 & 1);
                    let v = u32::from_le_bytes([x[0], x[1], x[2], x[3]]) & sel;
                    x.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        Storage::Raw(es) => {
            for (i, c) in t.raw_data[lo * es..hi * es].chunks_exact_mut(es).enumerate() {
                if !bit(mask, i) {
                    c.fill(0);
                }
            }
        }
        Storage::Float => zero(&mut t.float_data[lo..hi], 0.0, mask),
        Storage::Double => zero(&mut t.double_data[lo..hi], 0.0, mask),
        Storage::Int32 => zero(&mut t.int32_data[lo..hi], 0, mask),
        Storage::Int64 => zero(&mut t.int64_data[lo..hi], 0, mask),
        Storage::Uint64 => zero(&mut t.uint64_data[lo..hi], 0, mask),
        Storage::String => bail!("tensor '{}': cannot zero a string tensor", tname(t)),
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn report(
    c: &Candidate,
    t: &TensorProto,
    n: usize,
    groups: usize,
    n_eff: f64,
    all_zero_groups: usize,
    acc: (usize, f64, f64),
) -> TensorReport {
    let (kept, total, kept_mass) = acc;
    TensorReport {
        name: c.name.clone(),
        used_by: c.used_by.clone(),
        role: c.role.clone(),
        dtype: tensor::dtype_name(t.data_type).to_string(),
        shape: t.dims.iter().map(|&d| d as usize).collect(),
        groups,
        n,
        n_eff,
        kept,
        sparsity: if n == 0 { 0.0 } else { 1.0 - kept as f64 / n as f64 },
        s_eff: if total > 0.0 { kept_mass / total } else { 1.0 },
        all_zero_groups,
    }
}

/// Mutable references to the candidate tensors, in candidate order.
fn tensors_mut<'g>(g: &'g mut GraphProto, cands: &[Candidate]) -> Result<Vec<&'g mut TensorProto>> {
    let GraphProto { initializer, node, .. } = g;
    let mut init: Vec<Option<&mut TensorProto>> = initializer.iter_mut().map(Some).collect();
    let mut consts: Vec<Option<&mut TensorProto>> = node
        .iter_mut()
        .map(|n| n.attribute.iter_mut().find(|a| a.name == "value").and_then(|a| a.t.as_mut()))
        .collect();
    cands
        .iter()
        .map(|c| {
            let slot = match c.wref {
                WeightRef::Init(i) => init.get_mut(i),
                WeightRef::Const(n) => consts.get_mut(n),
            };
            slot.and_then(Option::take).with_context(|| format!("weight '{}' vanished", c.name))
        })
        .collect()
}

/// Run per-weight EMP on the model in place. On error the model is left unchanged.
pub fn prune_weights(model: &mut ModelProto, opts: &WeightOptions) -> Result<WeightsReport> {
    emp::check_beta(opts.beta).map_err(|e| anyhow::anyhow!("{e}"))?;
    let g = model.graph.as_mut().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    let cands = find_candidates(g, &ix, &opts.include)?;
    if cands.is_empty() {
        let small = small_filters_in(g, &opts.include)?.len();
        if small > 0 {
            bail!("no prunable weights found: the model's {small} weight(s) have output units with fewer than {SMALL_FAN_IN} inputs, left dense by default (--include small prunes them)");
        }
        bail!("no prunable weights found (Conv, ConvTranspose, Gemm, MatMul, LSTM/GRU/RNN or Attention with constant float weights)");
    }
    let mut ts = tensors_mut(g, &cands)?;
    let progress = crate::progress::Work::new(cands.len() as u64);
    let (reports, global) = match opts.scope {
        Scope::Global => prune_global(&cands, &mut ts, opts, None, &progress)?,
        Scope::Normalized => {
            let scales = mean_scales(&cands, &ts, opts)?;
            prune_global(&cands, &mut ts, opts, Some(&scales), &progress)?
        }
        scope => (prune_groups(&cands, &mut ts, opts, scope, &progress)?, None),
    };
    let candidates_elems = reports.iter().map(|r| r.n).sum();
    let kept_elems = reports.iter().map(|r| r.kept).sum();
    Ok(WeightsReport { tensors: reports, small_filters_kept: vec![], global, candidates_elems, kept_elems })
}

/// Scope unit or layer: tensors in parallel. First every tensor is checked and its keep bits
/// decided (read only), then, once all succeeded, tensors are accounted and zeroed.
fn prune_groups(
    cands: &[Candidate],
    ts: &mut [&mut TensorProto],
    opts: &WeightOptions,
    scope: Scope,
    progress: &crate::progress::Work,
) -> Result<Vec<TensorReport>> {
    type Decided = (Vec<u64>, usize, f64, usize);
    // As before: every tensor's scores are checked before a bad --ratio is reported.
    let bad_ratio = opts.fixed_ratio.filter(|r| !(r.is_finite() && (0.0..1.0).contains(r)));
    let decided: Vec<Result<Option<Decided>>> = cands
        .par_iter()
        .zip(ts.par_iter())
        .map(|(c, t)| {
            let v = make_view(c, t, opts)?;
            if bad_ratio.is_some() {
                return match first_non_finite(v, 0, v.n()) {
                    Some(b) => Err(non_finite_error(c, b)),
                    None => Ok(None),
                };
            }
            let shape = tensor::shape(t)?;
            let axis = if scope == Scope::Unit { c.unit_axis } else { None };
            let d = unit_mask(v, &shape, axis, opts);
            if !d.1 {
                // The gathered units held a NaN/Inf: name the first one in element order.
                let b = first_non_finite(v, 0, v.n()).expect("a non-finite score");
                return Err(non_finite_error(c, b));
            }
            Ok(Some(d.0))
        })
        .collect();
    let decided = decided.into_iter().collect::<Result<Vec<_>>>()?;
    if let Some(r) = bad_ratio {
        bail!("tensor '{}': {}", cands[0].name, emp::EmpError::BadBeta(r));
    }
    let decided: Vec<Decided> = decided.into_iter().map(|d| d.expect("decided")).collect();
    cands
        .par_iter()
        .zip(ts.par_iter_mut())
        .zip(decided)
        .map(|((c, t), (mask, groups, ne, zero_groups))| {
            let acc = account_and_zero(c, t, opts, &mask)?;
            let n = make_view(c, t, opts)?.n();
            progress.inc(1);
            Ok(report(c, t, n, groups, ne, zero_groups, acc))
        })
        .collect()
}

/// Scope global: one EMP over all candidates, in four passes over the weights: (1) maxima,
/// finiteness, level-1 histogram, in parallel; (2) the global and per-tensor sums, in order;
/// (3) the remaining radix levels of the threshold, in parallel; (4) keep bits and retained
/// mass in order, each tensor accounted and zeroed by another thread once its bits are known.
fn prune_global(
    cands: &[Candidate],
    ts: &mut [&mut TensorProto],
    opts: &WeightOptions,
    scales: Option<&[f64]>,
    progress: &crate::progress::Work,
) -> Result<(Vec<TensorReport>, Option<GlobalDecision>)> {
    let scale = |i: usize| scales.map_or(1.0, |s| s[i]);
    // Errors in candidate order, as before: a tensor that cannot be read, or a NaN/Inf score.
    let mut views = Vec::with_capacity(cands.len());
    let mut view_err = None;
    for (i, (c, t)) in cands.iter().zip(ts.iter()).enumerate() {
        match make_view(c, t, opts) {
            Ok(v) => views.push(View { scale: scale(i), ..v }),
            Err(e) => {
                view_err = Some(e);
                break;
            }
        }
    }
    let n: usize = views.iter().map(|v| v.n()).sum();
    let items = chunks(&views);
    let sc = scan(&views, &items);
    if let Some((c, b)) = cands.iter().zip(&sc.bad).find_map(|(c, b)| b.map(|b| (c, b))) {
        return Err(non_finite_error(c, b));
    }
    if let Some(e) = view_err {
        return Err(e);
    }
    let m = f64::from_bits(sc.max.iter().copied().max().unwrap_or(0));
    let ((s1, s2), per) = if m == 0.0 {
        // Every score is 0: every tensor is kept whole.
        ((0.0, 0.0), views.iter().map(|_| (0.0, 0.0)).collect())
    } else {
        moments_global(&views, m, &sc.max)
    };
    let (gd, thr, mut ties) = if m == 0.0 {
        (GlobalDecision { n, n_eff: n as f64, kept: n, s_eff: 1.0 }, 0, usize::MAX)
    } else {
        let ne = emp::n_eff_from_moments(n, s1, s2).unwrap_or(n as f64);
        let kept = match opts.fixed_ratio {
            Some(r) => (n - ((r * n as f64).round() as usize).min(n)).max(1),
            None => emp::keep_count(n, ne, opts.beta),
        };
        let (thr, ties) = if kept >= n { (0, usize::MAX) } else { threshold(&views, &items, &sc, kept) };
        (GlobalDecision { n, n_eff: ne, kept, s_eff: 1.0 }, thr, ties)
    };
    drop(sc);
    drop(views);
    let mut retained = 0.0f64;
    let mut reports: Vec<Option<Result<TensorReport>>> = (0..cands.len()).map(|_| None).collect();
    rayon::scope(|s| {
        for (i, ((c, t), (slot, &(t1, t2)))) in
            cands.iter().zip(ts.iter_mut()).zip(reports.iter_mut().zip(&per)).enumerate()
        {
            let t: &mut TensorProto = t;
            let v = View { scale: scale(i), ..make_view(c, t, opts).expect("validated") };
            let nt = v.n();
            let n_eff = emp::n_eff_from_moments(nt, t1, t2).unwrap_or(nt as f64);
            let mask = if m == 0.0 { None } else { Some(mark(v, thr, &mut ties, Some((&mut retained, m)))) };
            s.spawn(move |_| {
                let r = match mask {
                    // all kept: nothing to zero; Σ kept s = Σ s
                    None => make_view(c, t, opts).map(account_only),
                    Some(mask) => account_and_zero(c, t, opts, &mask),
                };
                *slot = Some(r.map(|acc| report(c, t, nt, 1, n_eff, 0, acc)));
                progress.inc(1);
            });
        }
    });
    let gd = if m == 0.0 || gd.kept >= n {
        // All kept: the retained sum is the s1 sum itself.
        gd
    } else {
        GlobalDecision { s_eff: (retained / s1).min(1.0), ..gd }
    };
    let reports = reports.into_iter().map(|r| r.expect("every tensor was processed")).collect::<Result<Vec<_>>>()?;
    Ok((reports, Some(gd)))
}

/// Per candidate: 1 / mean score (see `norm_scale`), the sum in element order. A tensor that
/// cannot be read or holds NaN/Inf gets 1 here; `prune_global` reports the error.
fn mean_scales(cands: &[Candidate], ts: &[&mut TensorProto], opts: &WeightOptions) -> Result<Vec<f64>> {
    Ok(cands
        .par_iter()
        .zip(ts.par_iter())
        .map(|(c, t)| match make_view(c, t, opts) {
            Ok(v) => {
                let mut sum = sum_zero();
                v.blocks(0, v.n(), |_, b| {
                    let mut r = sum;
                    for &x in b {
                        r += x;
                    }
                    sum = r;
                });
                norm_scale(sum, v.n())
            }
            Err(_) => 1.0,
        })
        .collect())
}

/// (kept, Σ s, Σ kept s) of a tensor kept whole.
fn account_only(v: View) -> (usize, f64, f64) {
    let (mut total, mut kept_mass) = (sum_zero(), sum_zero());
    v.blocks(0, v.n(), |_, b| {
        let (mut tot, mut km) = (total, kept_mass);
        for &x in b {
            tot += x;
            km += x;
        }
        (total, kept_mass) = (tot, km);
    });
    (v.n(), total, kept_mass)
}

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Global selection over plain score vectors (through the streaming code).
    fn global_masks(scores: &[Vec<f64>], beta: f64, ratio: Option<f64>) -> (GlobalDecision, Vec<Vec<bool>>) {
        let mut m = model_of(
            scores.iter().map(|s| (s.iter().map(|&x| x as f32).collect(), vec![s.len()], dt::FLOAT, false)).collect(),
        );
        let opts = WeightOptions {
            beta,
            scope: Scope::Global,
            include: Include { small: true, ..Include::default() },
            scores: BTreeMap::new(),
            fixed_ratio: ratio,
        };
        let r = prune_weights(&mut m, &opts).unwrap();
        let g = m.graph.as_ref().unwrap();
        let masks =
            g.initializer.iter().map(|t| tensor::read_f32(t).unwrap().iter().map(|&x| x != 0.0).collect()).collect();
        (r.global.unwrap(), masks)
    }

    #[test]
    fn global_ties_and_counts() {
        let s = vec![vec![1.0, 1.0], vec![1.0, 0.0]];
        let (d, m) = global_masks(&s, 1.0, None);
        assert_eq!(d.kept, 3);
        assert_eq!(m, vec![vec![true, true], vec![true, false]]);
        let (d, m) = global_masks(&s, 0.5, None);
        assert_eq!(d.kept, 1);
        assert_eq!(m, vec![vec![true, false], vec![false, false]]);
    }

    #[test]
    fn unit_indices_cover_axis() {
        let sh = [2, 3, 2];
        let v: Vec<usize> = reference::unit_indices(&sh, 1, 1).collect();
        assert_eq!(v, vec![2, 3, 8, 9]);
    }

    /// (values, dims, dtype, typed storage instead of raw_data) per weight → a MatMul chain.
    type Spec = (Vec<f32>, Vec<usize>, i32, bool);

    fn model_of(ws: Vec<Spec>) -> ModelProto {
        use onnx_protobuf::ValueInfoProto;
        let mut g = GraphProto::new();
        let mut vi = ValueInfoProto::new();
        vi.name = "x".into();
        g.input.push(vi);
        for (i, (vals, dims, dtype, typed)) in ws.into_iter().enumerate() {
            let name = format!("w{i}");
            let mut t = tensor::new_f32(&name, &dims.iter().map(|&d| d as i64).collect::<Vec<_>>(), &vals);
            t.data_type = dtype;
            let f64s: Vec<f64> = vals.iter().map(|&v| v as f64).collect();
            t.raw_data.clear();
            t.float_data.clear();
            if !vals.is_empty() {
                // write_f64 keeps the encoding it finds: give it the one we want first
                match (dtype, typed) {
                    (dt::FLOAT, true) => t.float_data = vec![0.0; vals.len()],
                    (dt::DOUBLE, true) => t.double_data = vec![0.0; vals.len()],
                    (dt::FLOAT16 | dt::BFLOAT16, true) => t.int32_data = vec![0; vals.len()],
                    _ => t.raw_data = vec![0; vals.len() * tensor::elem_size(dtype).unwrap()],
                }
                tensor::write_f64(&mut t, &f64s).unwrap();
            }
            g.initializer.push(t);
            let mut n = NodeProto::new();
            n.op_type = if dims.len() == 4 { "Conv".into() } else { "MatMul".into() };
            n.name = format!("n{i}");
            n.input = vec!["x".into(), name];
            n.output = vec![format!("y{i}")];
            g.node.push(n);
        }
        let mut m = ModelProto::new();
        m.ir_version = 8;
        m.graph = Some(g).into();
        m
    }

    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            3 => Just(0.0f32),
            3 => prop::sample::select(vec![0.5f32, -0.5, 1.0, 0.25, -1.0]),
            6 => -2.0f32..2.0,
            1 => -1e-30f32..1e-30,
        ]
    }

    fn spec() -> impl Strategy<Value = Spec> {
        let dims = prop_oneof![
            (1usize..40).prop_map(|n| vec![n]),
            (1usize..7, 1usize..7).prop_map(|(a, b)| vec![a, b]),
            (1usize..4, 1usize..4, 1usize..5).prop_map(|(a, b, c)| vec![a, b, c]),
            (1usize..4, 1usize..3, 1usize..3, 1usize..3).prop_map(|(a, b, c, d)| vec![a, b, c, d]),
            Just(vec![0usize, 3]),
        ];
        let dtype = prop::sample::select(vec![dt::FLOAT, dt::FLOAT16, dt::BFLOAT16, dt::DOUBLE]);
        (dims, dtype, any::<bool>()).prop_flat_map(|(dims, dtype, typed)| {
            let n: usize = dims.iter().product();
            (prop::collection::vec(value(), n), Just(dims), Just(dtype), Just(typed))
        })
    }

    fn check_same(
        ws: Vec<Spec>,
        scope: Scope,
        beta: f64,
        ratio: Option<f64>,
        override_first: bool,
    ) -> std::result::Result<(), TestCaseError> {
        let mut a = model_of(ws);
        let mut scores = BTreeMap::new();
        if override_first {
            let t = &a.graph.as_ref().unwrap().initializer[0];
            let n = tensor::numel(t).unwrap();
            scores.insert("w0".to_string(), (0..n).map(|i| ((i * 7919) % 13) as f64 - 4.0).collect::<Vec<f64>>());
        }
        let mut b = a.clone();
        let opts = WeightOptions {
            beta,
            scope,
            include: Include { small: true, ..Include::default() },
            scores,
            fixed_ratio: ratio,
        };
        let ra = reference::prune_weights_reference(&mut a, &opts);
        let rb = prune_weights(&mut b, &opts);
        match (ra, rb) {
            (Ok(ra), Ok(rb)) => {
                prop_assert_eq!(serde_json::to_string(&ra).unwrap(), serde_json::to_string(&rb).unwrap());
                prop_assert!(a == b, "pruned tensors differ");
            }
            (Err(ea), Err(eb)) => prop_assert_eq!(format!("{ea:#}"), format!("{eb:#}")),
            (ra, rb) => prop_assert!(false, "reference {:?} vs streaming {:?}", ra.map(|_| ()), rb.map(|_| ())),
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn streaming_matches_reference(
            ws in prop::collection::vec(spec(), 1..5),
            scope in prop::sample::select(vec![Scope::Unit, Scope::Layer, Scope::Global, Scope::Normalized]),
            beta in prop_oneof![Just(1.0f64), 0.2f64..2.5],
            ratio in prop::option::weighted(0.2, 0.0f64..0.95),
            over in prop::bool::weighted(0.2),
        ) {
            check_same(ws, scope, beta, ratio, over)?;
        }
    }

    #[test]
    fn same_result_with_any_number_of_threads() {
        let mut st = 0x2545F4914F6CDD1Du64;
        let mut rnd = move |k: u64| {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            ((st >> 40) % k) as f32 / k as f32 - 0.5
        };
        let ws: Vec<Spec> = vec![
            ((0..300 * 200).map(|_| rnd(1000)).collect(), vec![300, 200], dt::FLOAT, false),
            ((0..64 * 3 * 3 * 3).map(|_| rnd(50)).collect(), vec![64, 3, 3, 3], dt::FLOAT16, false),
            ((0..BUFFER_GROUP_MAX + 77).map(|_| rnd(100_000)).collect(), vec![BUFFER_GROUP_MAX + 77], dt::FLOAT, true),
        ];
        for scope in [Scope::Global, Scope::Normalized, Scope::Unit, Scope::Layer] {
            let opts = WeightOptions {
                beta: 0.9,
                scope,
                include: Include { small: true, ..Include::default() },
                scores: BTreeMap::new(),
                fixed_ratio: None,
            };
            let runs: Vec<(String, ModelProto)> = [1, 2, 3]
                .into_iter()
                .map(|k| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(k).build().unwrap();
                    let mut m = model_of(ws.clone());
                    let r = pool.install(|| prune_weights(&mut m, &opts)).unwrap();
                    (serde_json::to_string(&r).unwrap(), m)
                })
                .collect();
            assert!(runs.windows(2).all(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1), "{scope:?}");
        }
    }

    #[test]
    fn large_groups_stream_like_the_reference() {
        // Whole-tensor groups above BUFFER_GROUP_MAX take the streaming path.
        let n = BUFFER_GROUP_MAX + 4099;
        let mut st = 0x9E3779B97F4A7C15u64;
        let mut vals: Vec<f32> = (0..n)
            .map(|_| {
                st ^= st << 13;
                st ^= st >> 7;
                st ^= st << 17;
                ((st >> 40) % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        vals[17] = f32::NAN;
        for scope in [Scope::Layer, Scope::Global, Scope::Unit] {
            // a NaN is an error naming the element, and leaves the model unchanged
            let ws = vec![(vals.clone(), vec![n], dt::FLOAT, false)];
            check_same(ws.clone(), scope, 1.0, None, false).unwrap();
            let mut m = model_of(ws);
            let before = m.clone();
            let opts = WeightOptions {
                beta: 1.0,
                scope,
                include: Include { small: true, ..Include::default() },
                scores: BTreeMap::new(),
                fixed_ratio: None,
            };
            assert!(prune_weights(&mut m, &opts).unwrap_err().to_string().contains("element 17 is NaN"));
            assert!(m == before);
        }
        vals[17] = 0.5;
        for scope in [Scope::Layer, Scope::Global, Scope::Normalized] {
            for (beta, ratio) in [(1.0, None), (0.3, None), (1.0, Some(0.5))] {
                let ws = vec![
                    (vals.clone(), vec![n], dt::FLOAT, false),
                    (vals[..5000].to_vec(), vec![50, 100], dt::FLOAT16, false),
                ];
                check_same(ws, scope, beta, ratio, false).unwrap();
            }
        }
    }
}
