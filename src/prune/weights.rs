//! Per-weight EMP: zero the lowest-magnitude weights of each group, in place, in the weight's
//! original dtype and encoding.
//!
//! Scopes: `unit` = each output unit's incoming weights (a Conv filter, a Gemm/MatMul column of
//! B along the output axis, an LSTM gate row), `layer` = each tensor, `global` = all candidate
//! weights together.

use crate::emp;
use crate::model::graph::{self, node_label, GraphIndex, WeightRef};
use crate::model::tensor::{self, tname};
use anyhow::{bail, Context, Result};
use onnx_protobuf::{GraphProto, ModelProto, NodeProto};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Unit,
    Layer,
    Global,
}

/// Which weights are candidates besides the main ones.
#[derive(Clone, Debug, Default)]
pub struct Include {
    pub bias: bool,
    pub norm: bool,
    pub embedding: bool,
}

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

impl WeightOptions {
    fn select(&self, s: &[f64]) -> std::result::Result<(emp::Decision, Vec<usize>), emp::EmpError> {
        match self.fixed_ratio {
            Some(r) => emp::select_ratio(s, r),
            None => emp::select(s, self.beta),
        }
    }
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
        ("BatchNormalization" | "InstanceNormalization" | "LayerNormalization" | "GroupNormalization"
        | "SkipLayerNormalization" | "SimplifiedLayerNormalization", _, _)
            if inc.norm =>
        {
            (1..n.input.len()).map(|i| (i, "norm", UnitAxis::Whole)).collect()
        }
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
        tensor::dt::INT8 | tensor::dt::UINT8 | tensor::dt::INT16 | tensor::dt::UINT16 | tensor::dt::INT32
            | tensor::dt::UINT32 | tensor::dt::INT64 | tensor::dt::UINT64
    );
    let ints_ok = matches!(n.op_type.as_str(), "Gemm" | "MatMul");
    if main && !(integer && ints_ok) {
        bail!("{} has type {} ({}): {} needs a float weight", what(), tensor::dtype_name(t.data_type), t.data_type, n.op_type);
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
                    out.push(Candidate { name: name.clone(), wref, unit_axis: axis, role: role.to_string(), used_by: vec![label] });
                }
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

/// Indices of the elements of unit `u` along `axis` (row-major).
fn unit_indices(shape: &[usize], axis: usize, u: usize) -> impl Iterator<Item = usize> + '_ {
    let outer: usize = shape[..axis].iter().product();
    let dim = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    (0..outer).flat_map(move |o| {
        let start = (o * dim + u) * inner;
        start..start + inner
    })
}

/// Run per-weight EMP on the model in place.
pub fn prune_weights(model: &mut ModelProto, opts: &WeightOptions) -> Result<WeightsReport> {
    emp::check_beta(opts.beta).map_err(|e| anyhow::anyhow!("{e}"))?;
    let g = model.graph.as_mut().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    let cands = find_candidates(g, &ix, &opts.include)?;
    if cands.is_empty() {
        bail!("no prunable weights found (Conv, ConvTranspose, Gemm, MatMul, LSTM/GRU/RNN or Attention with constant float weights)");
    }
    let mut scores: Vec<Vec<f64>> = Vec::with_capacity(cands.len());
    for c in &cands {
        let t = graph::weight(g, c.wref).context("weight vanished")?;
        let s = match opts.scores.get(&c.name) {
            Some(s) => {
                if s.len() != tensor::numel(t)? {
                    bail!("tensor '{}': score vector has {} entries for {} weights", c.name, s.len(), tensor::numel(t)?);
                }
                s.clone()
            }
            None => tensor::read_f64(t).with_context(|| format!("weight '{}'", c.name))?.into_iter().map(f64::abs).collect(),
        };
        if let Some(i) = s.iter().position(|v| !v.is_finite()) {
            bail!("tensor '{}': score of element {i} is {} (NaN/Inf weights cannot be ranked)", c.name, s[i]);
        }
        scores.push(s);
    }
    let masks: Vec<(Vec<bool>, TensorReport)>;
    let mut global = None;
    match opts.scope {
        Scope::Global => {
            let (gd, keep_masks) = global_select(&scores, opts.beta, opts.fixed_ratio)?;
            global = Some(gd);
            masks = cands
                .iter()
                .zip(&scores)
                .zip(keep_masks)
                .map(|((c, s), keep)| {
                    let t = graph::weight(g, c.wref).expect("checked above");
                    let r = tensor_report(c, t, s, &keep, 1, tensor_neff(s), 0);
                    (keep, r)
                })
                .collect();
        }
        _ => {
            let mut v = Vec::new();
            for (c, s) in cands.iter().zip(&scores) {
                let t = graph::weight(g, c.wref).expect("checked above");
                let shape = tensor::shape(t)?;
                let axis = if opts.scope == Scope::Unit { c.unit_axis } else { None };
                let mut keep = vec![false; s.len()];
                let (mut ne, mut groups, mut zero_groups) = (0.0, 0usize, 0usize);
                match axis {
                    // An empty tensor is one (empty) group: no loop over a huge empty axis.
                    Some(a) if !s.is_empty() => {
                        for u in 0..shape[a] {
                            let idx: Vec<usize> = unit_indices(&shape, a, u).collect();
                            let us: Vec<f64> = idx.iter().map(|&i| s[i]).collect();
                            let (d, k) = opts.select(&us).map_err(|e| anyhow::anyhow!("tensor '{}': {e}", c.name))?;
                            for j in k {
                                keep[idx[j]] = true;
                            }
                            ne += d.n_eff;
                            groups += 1;
                            zero_groups += d.all_zero as usize;
                        }
                    }
                    _ => {
                        let (d, k) = opts.select(s).map_err(|e| anyhow::anyhow!("tensor '{}': {e}", c.name))?;
                        for j in k {
                            keep[j] = true;
                        }
                        ne = d.n_eff;
                        groups = 1;
                        zero_groups = d.all_zero as usize;
                    }
                }
                let r = tensor_report(c, t, s, &keep, groups, ne, zero_groups);
                v.push((keep, r));
            }
            masks = v;
        }
    }
    let mut reports = Vec::with_capacity(cands.len());
    for (c, (keep, r)) in cands.iter().zip(masks) {
        let t = graph::weight_mut(g, c.wref).context("weight vanished")?;
        let prune: Vec<bool> = keep.iter().map(|k| !k).collect();
        tensor::zero_where(t, &prune).with_context(|| format!("zeroing '{}'", tname(t)))?;
        reports.push(r);
    }
    let candidates_elems = reports.iter().map(|r| r.n).sum();
    let kept_elems = reports.iter().map(|r| r.kept).sum();
    Ok(WeightsReport { tensors: reports, global, candidates_elems, kept_elems })
}

fn tensor_neff(s: &[f64]) -> f64 {
    emp::n_eff(s).unwrap_or(s.len() as f64)
}

fn tensor_report(
    c: &Candidate,
    t: &onnx_protobuf::TensorProto,
    s: &[f64],
    keep: &[bool],
    groups: usize,
    n_eff: f64,
    all_zero_groups: usize,
) -> TensorReport {
    let total: f64 = s.iter().sum();
    let kept_mass: f64 = s.iter().zip(keep).filter(|p| *p.1).map(|p| *p.0).sum();
    let kept = keep.iter().filter(|k| **k).count();
    TensorReport {
        name: c.name.clone(),
        used_by: c.used_by.clone(),
        role: c.role.clone(),
        dtype: tensor::dtype_name(t.data_type).to_string(),
        shape: t.dims.iter().map(|&d| d as usize).collect(),
        groups,
        n: s.len(),
        n_eff,
        kept,
        sparsity: if s.is_empty() { 0.0 } else { 1.0 - kept as f64 / s.len() as f64 },
        s_eff: if total > 0.0 { kept_mass / total } else { 1.0 },
        all_zero_groups,
    }
}

/// One EMP over the concatenation of all score vectors, without building a second copy of the
/// scores in f64: moments are streamed, the cut is found by selection on f64 magnitudes.
fn global_select(scores: &[Vec<f64>], beta: f64, ratio: Option<f64>) -> Result<(GlobalDecision, Vec<Vec<bool>>)> {
    let n: usize = scores.iter().map(|s| s.len()).sum();
    let m = scores.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    if m == 0.0 {
        let masks = scores.iter().map(|s| vec![true; s.len()]).collect();
        return Ok((GlobalDecision { n, n_eff: n as f64, kept: n, s_eff: 1.0 }, masks));
    }
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for v in scores.iter().flatten() {
        let a = v.abs() / m;
        s1 += a;
        s2 += a * a;
    }
    let ne = emp::n_eff_from_moments(n, s1, s2).unwrap_or(n as f64);
    let kept = match ratio {
        Some(r) => (n - ((r * n as f64).round() as usize).min(n)).max(1),
        None => emp::keep_count(n, ne, beta),
    };
    // Threshold = kept-th largest |s|. Ties at the threshold: lower global index wins.
    let mut all: Vec<f64> = scores.iter().flatten().map(|v| v.abs()).collect();
    let thr = if kept >= n {
        f64::NEG_INFINITY
    } else {
        let (_, t, _) = all.select_nth_unstable_by(kept - 1, |a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
        *t
    };
    drop(all);
    let above: usize = scores.iter().flatten().filter(|v| v.abs() > thr).count();
    let mut ties_left = kept.saturating_sub(above);
    let mut retained = 0.0f64;
    let masks = scores
        .iter()
        .map(|s| {
            s.iter()
                .map(|v| {
                    let a = v.abs();
                    let k = a > thr || (a == thr && ties_left > 0 && {
                        ties_left -= 1;
                        true
                    });
                    if k {
                        retained += a / m;
                    }
                    k
                })
                .collect()
        })
        .collect();
    Ok((GlobalDecision { n, n_eff: ne, kept, s_eff: (retained / s1).min(1.0) }, masks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_ties_and_counts() {
        let s = vec![vec![1.0, 1.0], vec![1.0, 0.0]];
        let (d, m) = global_select(&s, 1.0, None).unwrap();
        assert_eq!(d.kept, 3);
        assert_eq!(m, vec![vec![true, true], vec![true, false]]);
        let (d, m) = global_select(&s, 0.5, None).unwrap();
        assert_eq!(d.kept, 1);
        assert_eq!(m, vec![vec![true, false], vec![false, false]]);
    }

    #[test]
    fn unit_indices_cover_axis() {
        let sh = [2, 3, 2];
        let v: Vec<usize> = unit_indices(&sh, 1, 1).collect();
        assert_eq!(v, vec![2, 3, 8, 9]);
    }
}
