//! The fidelity guard of default runs (per-weight and structured, without reconstruction): EMP's
//! cut, checked on the model's own outputs before it is written, and backed off when it moves
//! them too far.
//!
//! Why: without calibration data nothing can repair the kept weights, and on small, barely
//! over-parameterised nets EMP's ~35–45 % per-weight cut costs real accuracy (a trained 8.5 k
//! weight YOLO-style block: 96.4 % → 74.4 %), and EMP's channel cut at β = 1 took a trained
//! ShuffleNet V2 from 90.7 % to 75.3 %. The rule is that the default output is never worse
//! than the input, so the default run measures what it did and keeps more where that is needed.
//!
//! Contract:
//! - Input: the dense model, guard inputs (seeded random inputs, or calibration rows when given),
//!   the starting β, a tolerance τ on the relative L2 error of the outputs
//!   (‖y − y_dense‖ / ‖y_dense‖ over the samples, of the worst float output), and a function that prunes
//!   a copy of the dense model at a given β.
//! - Search: β₀ first; if its error exceeds τ, β grows by [`GROWTH`] until one passes (or
//!   nothing is pruned, which passes trivially: the dense model runs only once a trial cuts),
//!   then [`BISECTIONS`] halvings between the last failing and the first passing β. The error
//!   is not exactly monotone in β; the guard returns a β that was measured to pass, never an
//!   interpolated one.
//! - Output: the passing model (the pruned copy itself, not re-pruned) and every trial, for the
//!   report. Deterministic: the inputs are seeded and the search is a fixed sequence.
//! - Memory: the dense model, the best passing copy and the one being tried.

use crate::check::Inputs;
use anyhow::{bail, Context, Result};
use onnx_protobuf::ModelProto;
use serde::Serialize;
use std::collections::BTreeSet;

/// Default tolerance on the outputs' relative L2 error. Chosen on the trained models in
/// `models/` (docs/figures.md, "How to read the tables"): 0.1 keeps every one within 3 points.
pub const DEFAULT_TOLERANCE: f64 = 0.1;
/// Guard samples per run on models that cost at most [`GUARD_MACS`] / 32 per sample (when the
/// batch axis is free).
pub const GUARD_ROWS: usize = 32;
/// Multiply-accumulates one guard run may cost: above it the samples shrink in proportion, down to
/// [`MIN_GUARD_ROWS`] (the guard repeats its run once per β it tries, typically 5–7 times).
pub const GUARD_MACS: u64 = 1 << 31;
pub const MIN_GUARD_ROWS: usize = 4;

/// Samples per guard run for a model that costs `macs` per sample: 32 up to 67 M MACs per
/// sample, then proportionally fewer (a 224² MobileNetV2 gets 7, a ResNet-50 4). Deterministic:
/// it depends on the model, not on the machine's speed.
pub fn guard_rows(macs: u64) -> usize {
    let rows = GUARD_MACS / macs.max(1);
    (rows.min(GUARD_ROWS as u64) as usize).max(MIN_GUARD_ROWS)
}

/// Factor by which β grows while the error is over the tolerance.
pub const GROWTH: f64 = 1.2;
/// Halvings between the last failing and the first passing β.
pub const BISECTIONS: usize = 3;
/// β beyond which the guard stops growing and keeps the model dense.
pub const MAX_BETA: f64 = 64.0;
pub use crate::prune::KEEP_ALL_BETA;

/// One β the guard tried.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Trial {
    pub beta: f64,
    /// Candidate weights kept at this β.
    pub kept: usize,
    /// Relative L2 error of the outputs against dense.
    pub rel_l2: f64,
    pub pass: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GuardReport {
    /// τ: the largest relative L2 error of the outputs accepted.
    pub tolerance: f64,
    /// What the outputs were measured on.
    pub inputs: String,
    pub samples: usize,
    /// In the order tried; the first is the requested β.
    pub trials: Vec<Trial>,
    /// The β written (the requested one when its cut passed).
    pub beta: f64,
    /// No β up to [`MAX_BETA`] passed: nothing was pruned.
    pub kept_dense: bool,
    /// Candidate weights (per-weight) or units of prunable groups (structured): a trial that
    /// kept all of them pruned nothing.
    pub candidates: usize,
    /// Structured runs whose cut at β₀ failed: the per-group pass ([`choose_groups`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<GroupPass>,
    /// The run cuts the per-group pass's groups at β₀ (it saved more than the β search's cut).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub by_group: bool,
}

impl GuardReport {
    pub fn raised(&self) -> bool {
        self.trials.first().is_some_and(|t| !t.pass)
    }
}

/// What one trial produced: the pruned copy, whatever the caller wants back with it (its
/// report), and (kept, candidates).
pub struct Pruned<T> {
    pub model: ModelProto,
    pub extra: T,
    pub kept: usize,
    pub candidates: usize,
}

/// Find the smallest β ≥ `beta0` (on the search's grid) whose cut keeps the outputs within `tol`
/// of dense on `inputs`. `prune(β)` returns a pruned copy of `dense`.
pub fn choose_beta<T>(
    dense: &ModelProto,
    inputs: &Inputs,
    inputs_label: &str,
    beta0: f64,
    tol: f64,
    mut prune: impl FnMut(f64) -> Result<Pruned<T>>,
) -> Result<(Pruned<T>, GuardReport)> {
    // The dense run, on the first trial that cuts anything (a cut of nothing passes unmeasured,
    // as EMP's is at β = 1 on many random-weight exports).
    let dense_run = || reference_outputs(dense, inputs);
    let mut reference = None;
    let mut trials = Vec::new();
    let mut candidates = 0;
    let mut measure = |beta: f64, trials: &mut Vec<Trial>| -> Result<(Pruned<T>, bool)> {
        let p = prune(beta)?;
        candidates = p.candidates;
        let rel_l2 = if p.kept >= p.candidates {
            0.0
        } else {
            if reference.is_none() {
                reference = Some(dense_run()?);
            }
            let reference = reference.as_ref().context("guard: no dense run")?;
            let out = model_outputs(&p.model, inputs).context("guard: pruned run")?;
            crate::reconstruct::compare(reference, &out).0.sqrt()
        };
        let pass = rel_l2 <= tol;
        trials.push(Trial { beta, kept: p.kept, rel_l2, pass });
        Ok((p, pass))
    };
    let report = |trials: Vec<Trial>, beta: f64, kept_dense: bool, candidates: usize| GuardReport {
        tolerance: tol,
        inputs: inputs_label.to_string(),
        samples: inputs.sample_count(),
        trials,
        beta,
        kept_dense,
        candidates,
        groups: None,
        by_group: false,
    };
    let (first, pass) = measure(beta0, &mut trials)?;
    if pass {
        return Ok((first, report(trials, beta0, false, candidates)));
    }
    drop(first);
    // Grow until a β passes.
    let mut lo = beta0;
    let mut hi = beta0;
    let mut best = None;
    while best.is_none() {
        hi = on_grid(hi * GROWTH);
        if hi > MAX_BETA {
            // Nothing this side of MAX_BETA passed: keep every weight.
            let p = prune(KEEP_ALL_BETA)?;
            return Ok((p, report(trials, KEEP_ALL_BETA, true, candidates)));
        }
        let (p, pass) = measure(hi, &mut trials)?;
        if pass {
            best = Some(p);
        } else {
            lo = hi;
        }
    }
    let mut best = best.context("guard: no passing β")?;
    for _ in 0..BISECTIONS {
        let mid = on_grid(0.5 * (lo + hi));
        if mid <= lo || mid >= hi {
            break;
        }
        let (p, pass) = measure(mid, &mut trials)?;
        if pass {
            hi = mid;
            best = p;
        } else {
            lo = mid;
        }
    }
    Ok((best, report(trials, hi, false, candidates)))
}

/// A model's outputs on the guard inputs (each concatenated over the samples, and the first one's
/// last dim): in tract, or in onnxruntime through python3 when tract cannot run the model (its
/// com.microsoft ops), so that a default run on such a model is guarded too.
fn model_outputs(model: &ModelProto, inputs: &Inputs) -> Result<(Vec<Vec<f32>>, usize)> {
    let (outs, width) = engine_outputs(model, inputs)?;
    // Integer outputs (an ArgMax's class ids, scikit-learn's label) are left out when the model
    // has a float one: their relative L2 measures how far apart the class numbers are (class 3
    // becoming 8 read as 0.226 where the logits moved 0.097).
    let int = |o: &onnx_protobuf::ValueInfoProto| {
        use onnx_protobuf::type_proto::Value;
        let elem = match o.type_.as_ref().and_then(|t| t.value.as_ref()) {
            Some(Value::TensorType(t)) => t.elem_type,
            _ => 0,
        };
        elem != 0 && !crate::model::tensor::is_float(elem)
    };
    let ints: Vec<bool> = model.graph.as_ref().map(|g| g.output.iter().map(int).collect()).unwrap_or_default();
    if ints.len() != outs.len() || ints.iter().all(|&i| i) || !ints.contains(&true) {
        return Ok((outs, width));
    }
    let kept: Vec<Vec<f32>> = outs.into_iter().zip(&ints).filter(|(_, &i)| !i).map(|(o, _)| o).collect();
    let first = ints.iter().position(|&i| !i).unwrap_or(0);
    let width = if first == 0 { width } else { float_width(model, first).unwrap_or(1) };
    Ok((kept, width))
}

/// The declared last dim of output `i` (the classes, for top-1), if fixed.
fn float_width(model: &ModelProto, i: usize) -> Option<usize> {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
    use onnx_protobuf::type_proto::Value;
    let o = model.graph.as_ref()?.output.get(i)?;
    let Some(Value::TensorType(t)) = o.type_.as_ref()?.value.as_ref() else { return None };
    match t.shape.as_ref()?.dim.last()?.value {
        Some(D::DimValue(v)) if v > 0 => Some(v as usize),
        _ => None,
    }
}

/// [`model_outputs`] before integer outputs are left out.
fn engine_outputs(model: &ModelProto, inputs: &Inputs) -> Result<(Vec<Vec<f32>>, usize)> {
    let tract = match crate::reconstruct::outputs(model, inputs) {
        Ok(o) => return Ok(o),
        Err(e) => e,
    };
    let dir = crate::interrupt::Scratch::new().context("temporary directory")?;
    let path = dir.path().join("model.onnx");
    let bytes = protobuf::Message::write_to_bytes(model).context("serialising the model")?;
    std::fs::write(&path, bytes).context("writing the model for onnxruntime")?;
    let (outs, _) = super::ort::run_one(&path, inputs)
        .map_err(|ort| anyhow::anyhow!("{tract:#}; onnxruntime fallback: {ort:#}"))?;
    let width = outs.first().and_then(|o| o.shape().last().copied()).unwrap_or(1);
    Ok((outs.into_iter().map(|o| o.iter().copied().collect()).collect(), width))
}

/// The dense model's outputs on the guard inputs: the reference every trial is measured against.
fn reference_outputs(dense: &ModelProto, inputs: &Inputs) -> Result<(Vec<Vec<f32>>, usize)> {
    let reference = model_outputs(dense, inputs).context("guard: dense run")?;
    // Without a finite, non-zero reference there is nothing to measure a cut against (NaN
    // outputs on random inputs would otherwise fail every β and keep the model dense).
    if reference.0.iter().flatten().any(|v| !v.is_finite()) {
        bail!("the dense model's outputs on the guard inputs are not finite");
    }
    if reference.0.iter().flatten().all(|&v| v == 0.0) {
        bail!("the dense model's outputs on the guard inputs are all zero");
    }
    Ok(reference)
}

/// Groups tried alone, at most (the ones whose cut saves the most first): the pass costs one
/// pruned copy and one run per group.
pub const MAX_GROUP_TRIALS: usize = 64;

/// One group cut alone, at β₀.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GroupTrial {
    /// Index into the run's group report (with two stages, the first stage's groups, then the second's).
    pub group: usize,
    /// What cutting it alone saves (float parameters).
    pub saves: u64,
    pub rel_l2: f64,
}

/// The per-group pass ([`choose_groups`]): which groups were tried alone, and the subset cut.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GroupPass {
    /// Groups EMP's cut at β₀ shrinks (the pass tries at most [`MAX_GROUP_TRIALS`] of them).
    pub candidates: usize,
    pub trials: Vec<GroupTrial>,
    /// Prefixes of the ranked groups tried together: (how many, relative L2 error, pass).
    pub subsets: Vec<(usize, f64, bool)>,
    /// The groups cut (indices into the stage's group report), in rank order.
    pub cut: Vec<usize>,
    /// The relative L2 error of cutting them together (0 when none is cut).
    pub rel_l2: f64,
}

/// What one per-group trial produced: the pruned copy and the float parameters it saves.
pub struct GroupCut {
    pub model: ModelProto,
    pub saves: u64,
}

/// The per-group pass of the guard, for structural runs whose cut at β₀ fails: each of the
/// `candidates` groups (`(group, size)`: at most [`MAX_GROUP_TRIALS`], the largest first; the
/// size is what orders them, e.g. the units EMP removes) is cut alone at β₀
/// (`prune(&{g})`); the ones whose error alone is within `tol` are ranked by error² per saved
/// parameter (independent perturbations add in squares), and the longest prefix of that ranking
/// whose cut together is measured within `tol` is chosen: first the prefix whose squared errors
/// sum to τ², then bisection. Returns the chosen cut (its pruned copy; `None` when no group fits)
/// and the pass for the report. Deterministic, like [`choose_beta`]; every returned cut was
/// measured to pass.
pub fn choose_groups(
    dense: &ModelProto,
    inputs: &Inputs,
    tol: f64,
    candidates: &[(usize, u64)],
    mut prune: impl FnMut(&BTreeSet<usize>) -> Result<GroupCut>,
) -> Result<(Option<GroupCut>, GroupPass)> {
    let reference = reference_outputs(dense, inputs)?;
    let mut measure = |only: &BTreeSet<usize>| -> Result<(GroupCut, f64)> {
        let p = prune(only)?;
        let out = model_outputs(&p.model, inputs).context("guard: pruned run")?;
        let e = crate::reconstruct::compare(&reference, &out).0.sqrt();
        Ok((p, e))
    };
    let mut order: Vec<(usize, u64)> = candidates.to_vec();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    order.truncate(MAX_GROUP_TRIALS);
    let mut trials = Vec::with_capacity(order.len());
    for &(g, _) in &order {
        let (p, rel_l2) = measure(&BTreeSet::from([g]))?;
        trials.push(GroupTrial { group: g, saves: p.saves, rel_l2 });
    }
    // Finite errors within τ on their own, cheapest error per saved parameter first.
    let mut ranked: Vec<&GroupTrial> =
        trials.iter().filter(|t| t.rel_l2.is_finite() && t.rel_l2 <= tol && t.saves > 0).collect();
    let cost = |t: &GroupTrial| t.rel_l2 * t.rel_l2 / t.saves as f64;
    ranked.sort_by(|a, b| cost(a).total_cmp(&cost(b)).then(a.group.cmp(&b.group)));
    let ranked: Vec<usize> = ranked.iter().map(|t| t.group).collect();
    let mut pass = GroupPass { candidates: candidates.len(), trials, subsets: vec![], cut: vec![], rel_l2: 0.0 };
    if ranked.is_empty() {
        return Ok((None, pass));
    }
    // The prefix of length 1 passed alone; `hi` is the shortest prefix known to fail (or one past
    // the end).
    let (mut lo, mut hi) = (1, ranked.len() + 1);
    let mut best: Option<(GroupCut, f64)> = None;
    let mut sum = 0.0;
    let guess = ranked
        .iter()
        .take_while(|g| {
            let e = pass.trials.iter().find(|t| t.group == **g).map_or(f64::INFINITY, |t| t.rel_l2);
            sum += e * e;
            sum <= tol * tol
        })
        .count()
        .max(1);
    let mut next = Some(guess);
    while let Some(k) = next {
        let only: BTreeSet<usize> = ranked[..k].iter().copied().collect();
        let (p, e) = measure(&only)?;
        let ok = e <= tol;
        pass.subsets.push((k, e, ok));
        if ok {
            lo = k;
            best = Some((p, e));
        } else {
            hi = k;
        }
        next = (hi - lo > 1).then(|| lo + (hi - lo) / 2);
    }
    let (cut, e) = match best {
        Some(b) => b,
        // Every prefix tried together failed; the best group passed alone: cut it alone.
        None => measure(&BTreeSet::from([ranked[0]]))?,
    };
    pass.cut = ranked[..lo].to_vec();
    pass.rel_l2 = e;
    Ok((Some(cut), pass))
}

/// β rounded to 4 decimals, so that the tried values read as typed (1.32, not 1.3199999999999998).
fn on_grid(beta: f64) -> f64 {
    (beta * 1e4).round() / 1e4
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-layer model y = x·W (W 4×3) whose "pruning" at β zeroes the smallest weights.
    fn linear(w: &[f32]) -> ModelProto {
        use crate::model::graph::tensor_value_info;
        use onnx_protobuf::{GraphProto, NodeProto, TensorProto};
        let mut g = GraphProto::new();
        g.input.push(tensor_value_info("x", 1, &[Some(2), Some(4)], ""));
        g.output.push(tensor_value_info("y", 1, &[Some(2), Some(3)], ""));
        let mut t = TensorProto::new();
        t.name = "W".into();
        t.data_type = 1;
        t.dims = vec![4, 3];
        t.float_data = w.to_vec();
        g.initializer.push(t);
        let mut n = NodeProto::new();
        n.op_type = "MatMul".into();
        n.input = vec!["x".into(), "W".into()];
        n.output = vec!["y".into()];
        g.node.push(n);
        crate::model::graph::model_of(g)
    }

    fn inputs() -> Inputs {
        let spec = crate::check::InputSpec { default_batch: 2, ..Default::default() };
        let infos = vec![crate::check::InputInfo {
            name: "x".into(),
            elem_type: 1,
            dims: vec![crate::check::DimSpec::Fixed(2), crate::check::DimSpec::Fixed(4)],
            index_bound: None,
        }];
        crate::check::inputs::prepare_for(&infos, &spec).unwrap()
    }

    /// Prune by keeping the ⌈β·k0⌉ largest |w| (k0 = 4 of 12), a stand-in for EMP's count.
    fn pruner(w: Vec<f32>) -> impl FnMut(f64) -> Result<Pruned<usize>> {
        move |beta| {
            let keep = ((beta * 4.0).ceil() as usize).min(w.len());
            let mut order: Vec<usize> = (0..w.len()).collect();
            order.sort_by(|&a, &b| w[b].abs().total_cmp(&w[a].abs()).then(a.cmp(&b)));
            let mut v = vec![0.0; w.len()];
            for &i in &order[..keep] {
                v[i] = w[i];
            }
            Ok(Pruned { model: linear(&v), extra: keep, kept: keep, candidates: w.len() })
        }
    }

    const W: [f32; 12] = [1.0, -0.9, 0.8, 0.7, -0.6, 0.5, 0.4, -0.3, 0.2, 0.1, -0.05, 0.02];

    #[test]
    fn a_cut_within_tolerance_is_kept_as_is() {
        let dense = linear(&W);
        let (p, r) = choose_beta(&dense, &inputs(), "random", 1.0, 10.0, pruner(W.to_vec())).unwrap();
        assert_eq!(r.trials.len(), 1);
        assert!(!r.raised());
        assert_eq!((r.beta, p.extra), (1.0, 4));
    }

    #[test]
    fn a_cut_over_tolerance_is_backed_off_to_a_passing_beta() {
        let dense = linear(&W);
        let tol = 0.05;
        let (p, r) = choose_beta(&dense, &inputs(), "random", 1.0, tol, pruner(W.to_vec())).unwrap();
        assert!(r.raised());
        assert!(r.beta > 1.0 && !r.kept_dense);
        // The returned model is the trial at the chosen β, and it was measured to pass.
        let chosen = r.trials.iter().find(|t| t.beta == r.beta).unwrap();
        assert!(chosen.pass && chosen.rel_l2 <= tol);
        assert_eq!(p.kept, chosen.kept);
        // Every failing trial kept fewer weights than the chosen one.
        for t in r.trials.iter().filter(|t| !t.pass) {
            assert!(t.kept < chosen.kept, "{t:?} vs {chosen:?}");
        }
        // And the result is reproducible.
        let (_, r2) = choose_beta(&dense, &inputs(), "random", 1.0, tol, pruner(W.to_vec())).unwrap();
        assert_eq!(r, r2);
    }

    /// y = x·W with W 4×6 (column j = output unit j): cutting group j zeroes column j.
    fn columns(w: &[f32], cut: &BTreeSet<usize>) -> ModelProto {
        use crate::model::graph::tensor_value_info;
        let mut m = linear(&W);
        let g = m.graph.as_mut().unwrap();
        g.output[0] = tensor_value_info("y", 1, &[Some(2), Some(6)], "");
        let t = &mut g.initializer[0];
        t.dims = vec![4, 6];
        t.float_data = (0..24).map(|i| if cut.contains(&(i % 6)) { 0.0 } else { w[i] }).collect();
        m
    }

    /// Column scales 1, 0.05, 0.1, 0.02, 0.6, 0.08: zeroing the small ones moves y a little each.
    fn scaled() -> Vec<f32> {
        let scale = [1.0, 0.05, 0.1, 0.02, 0.6, 0.08];
        (0..24).map(|i| scale[i % 6] * (1.0 + 0.1 * (i / 6) as f32) * if i % 2 == 0 { 1.0 } else { -1.0 }).collect()
    }

    fn group_pass(tol: f64) -> (Option<GroupCut>, GroupPass) {
        let w = scaled();
        let candidates: Vec<(usize, u64)> = (0..6).map(|j| (j, 1)).collect();
        choose_groups(&columns(&w, &BTreeSet::new()), &inputs(), tol, &candidates, |only| {
            Ok(GroupCut { model: columns(&w, only), saves: 4 * only.len() as u64 })
        })
        .unwrap()
    }

    #[test]
    fn the_group_pass_cuts_the_groups_that_fit_together_and_was_measured_to_pass() {
        let dense = columns(&scaled(), &BTreeSet::new());
        let reference = reference_outputs(&dense, &inputs()).unwrap();
        for tol in [0.05, 0.1, 0.15, 0.3] {
            let (cut, pass) = group_pass(tol);
            let cut = cut.unwrap();
            assert!(!pass.cut.is_empty() && pass.rel_l2 <= tol, "{pass:?}");
            // The returned copy is the cut reported, and its error is what was measured.
            let out = crate::reconstruct::outputs(&cut.model, &inputs()).unwrap();
            let e = crate::reconstruct::compare(&reference, &out).0.sqrt();
            assert!((e - pass.rel_l2).abs() < 1e-12);
            assert_eq!(cut.saves, 4 * pass.cut.len() as u64);
            // A group over the tolerance alone is never cut; the big columns never are.
            for t in &pass.trials {
                if t.rel_l2 > tol {
                    assert!(!pass.cut.contains(&t.group), "{tol}: {pass:?}");
                }
            }
            assert!(!pass.cut.contains(&0) && !pass.cut.contains(&4));
            // Adding the next-ranked group that fits alone fails together (the prefix is the
            // longest that passes, as bisection found it).
            let within: Vec<usize> = pass.trials.iter().filter(|t| t.rel_l2 <= tol).map(|t| t.group).collect();
            if within.len() > pass.cut.len() {
                let longer = pass.subsets.iter().find(|s| s.0 == pass.cut.len() + 1).unwrap();
                assert!(!longer.2, "{tol}: {pass:?}");
            }
            assert_eq!(group_pass(tol).1, pass);
        }
        // A looser tolerance never cuts fewer groups.
        assert!(group_pass(0.3).1.cut.len() >= group_pass(0.05).1.cut.len());
    }

    #[test]
    fn the_group_pass_cuts_nothing_when_no_group_fits_alone() {
        let (cut, pass) = group_pass(1e-6);
        assert!(cut.is_none() && pass.cut.is_empty() && pass.subsets.is_empty());
        assert_eq!(pass.trials.len(), 6);
    }

    #[test]
    fn costly_models_get_fewer_guard_samples() {
        assert_eq!(guard_rows(0), GUARD_ROWS);
        assert_eq!(guard_rows(300_000), GUARD_ROWS);
        assert_eq!(guard_rows(GUARD_MACS / 32), GUARD_ROWS);
        assert_eq!(guard_rows(GUARD_MACS / 16), 16);
        assert_eq!(guard_rows(300_000_000), 7);
        assert_eq!(guard_rows(4_100_000_000), MIN_GUARD_ROWS);
        assert_eq!(guard_rows(u64::MAX), MIN_GUARD_ROWS);
    }

    #[test]
    fn without_a_finite_nonzero_reference_the_guard_does_not_judge() {
        for (w, why) in [(vec![f32::NAN; 12], "not finite"), (vec![0.0; 12], "all zero")] {
            let e = choose_beta(&linear(&w), &inputs(), "random", 1.0, 0.1, pruner(W.to_vec())).err().unwrap();
            assert!(format!("{e:#}").contains(why), "{e:#}");
        }
    }

    #[test]
    fn a_zero_tolerance_keeps_every_weight() {
        let dense = linear(&W);
        let (p, r) = choose_beta(&dense, &inputs(), "random", 1.0, 0.0, pruner(W.to_vec())).unwrap();
        assert_eq!(p.kept, W.len());
        assert!(r.trials.last().unwrap().pass);
    }
}
