//! The previous, all-in-memory implementation of per-weight EMP, kept as the reference the
//! streaming implementation is tested against (same kept sets, bit-identical reports).

use super::*;
use crate::model::tensor::tname;

impl WeightOptions {
    fn select(&self, s: &[f64]) -> std::result::Result<(emp::Decision, Vec<usize>), emp::EmpError> {
        match self.fixed_ratio {
            Some(r) => emp::select_ratio(s, r),
            None => emp::select(s, self.beta),
        }
    }
}

/// Indices of the elements of unit `u` along `axis` (row-major).
pub(super) fn unit_indices(shape: &[usize], axis: usize, u: usize) -> impl Iterator<Item = usize> + '_ {
    let outer: usize = shape[..axis].iter().product();
    let dim = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    (0..outer).flat_map(move |o| {
        let start = (o * dim + u) * inner;
        start..start + inner
    })
}

/// Run per-weight EMP on the model in place.
pub(super) fn prune_weights_reference(model: &mut ModelProto, opts: &WeightOptions) -> Result<WeightsReport> {
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
                    bail!(
                        "tensor '{}': score vector has {} entries for {} weights",
                        c.name,
                        s.len(),
                        tensor::numel(t)?
                    );
                }
                s.clone()
            }
            None => {
                tensor::read_f64(t).with_context(|| format!("weight '{}'", c.name))?.into_iter().map(f64::abs).collect()
            }
        };
        if let Some(i) = s.iter().position(|v| !v.is_finite()) {
            bail!("tensor '{}': score of element {i} is {} (NaN/Inf weights cannot be ranked)", c.name, s[i]);
        }
        scores.push(s);
    }
    let masks: Vec<(Vec<bool>, TensorReport)>;
    let mut global = None;
    match opts.scope {
        Scope::Global | Scope::Normalized => {
            let ranked: Vec<Vec<f64>> = if opts.scope == Scope::Normalized {
                scores
                    .iter()
                    .map(|s| {
                        let k = super::norm_scale(emp::blocked_sum(s.len(), |i| s[i]), s.len());
                        s.iter().map(|x| if k == 1.0 { *x } else { x * k }).collect()
                    })
                    .collect()
            } else {
                scores.clone()
            };
            let no_override = cands.iter().all(|c| !opts.scores.contains_key(&c.name));
            let raw = if opts.scope == Scope::Normalized && no_override {
                normalized_raw(&scores, &ranked, opts)
            } else {
                None
            };
            let (gd, keep_masks, neffs) = match raw {
                Some(r) => r,
                None => {
                    let (gd, keep_masks) = global_select(&ranked, opts.beta, opts.fixed_ratio)?;
                    (gd, keep_masks, ranked.iter().map(|sr| tensor_neff(sr)).collect())
                }
            };
            global = Some(gd);
            masks = cands
                .iter()
                .zip(scores.iter().zip(neffs))
                .zip(keep_masks)
                .map(|((c, (s, ne)), keep)| {
                    // N_eff on the ranked scores, the retained mass on the raw ones (as streamed).
                    let t = graph::weight(g, c.wref).expect("checked above");
                    let r = tensor_report(c, t, s, &keep, 1, ne, 0);
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
    Ok(WeightsReport { tensors: reports, small_filters_kept: vec![], global, candidates_elems, kept_elems })
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
    let total = emp::blocked_sum(s.len(), |i| s[i]);
    let kept_mass = emp::blocked_sum(s.len(), |i| if keep[i] { s[i] } else { -0.0 });
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
pub(super) fn global_select(
    scores: &[Vec<f64>],
    beta: f64,
    ratio: Option<f64>,
) -> Result<(GlobalDecision, Vec<Vec<bool>>)> {
    let n: usize = scores.iter().map(|s| s.len()).sum();
    let m = scores.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    if m == 0.0 {
        let masks = scores.iter().map(|s| vec![true; s.len()]).collect();
        return Ok((GlobalDecision { n, n_eff: n as f64, kept: n, s_eff: 1.0 }, masks));
    }
    let d = emp::moment_scale(m);
    let (mut s1, mut s2) = (-0.0f64, -0.0f64);
    for s in scores {
        s1 = emp::blocked_sum_from(s1, s.len(), |i| s[i].abs() / d);
        s2 = emp::blocked_sum_from(s2, s.len(), |i| (s[i].abs() / d) * (s[i].abs() / d));
    }
    let ne = emp::n_eff_from_moments(n, s1, s2).unwrap_or(n as f64);
    let kept = match ratio {
        Some(r) => (n - ((r * n as f64).round() as usize).min(n)).max(1),
        None => emp::keep_count(n, ne, beta),
    };
    let masks = keep_largest(scores, kept);
    let mut retained = -0.0f64;
    for (s, k) in scores.iter().zip(&masks) {
        retained = emp::blocked_sum_from(retained, s.len(), |i| if k[i] { s[i].abs() / d } else { -0.0 });
    }
    Ok((GlobalDecision { n, n_eff: ne, kept, s_eff: (retained / s1).min(1.0) }, masks))
}

/// The normalized scope in raw space (`raw`'s definitions): moments Σ_p c_p·S1_p and
/// Σ_p (c_p·c_p)·S2_p of the tensors' blocked sums, retained mass Σ_p c_p·K_p, a tensor's N_eff
/// from its own S1_p, S2_p; the cut on the ranked scores. None where the scaled definition
/// applies (a maximum outside 1e±100, or all scores 0). `scores`: |w| per tensor; `ranked`:
/// times c_p.
fn normalized_raw(
    scores: &[Vec<f64>],
    ranked: &[Vec<f64>],
    opts: &WeightOptions,
) -> Option<(GlobalDecision, Vec<Vec<bool>>, Vec<f64>)> {
    let n: usize = scores.iter().map(|s| s.len()).sum();
    let mut m = 0f64;
    for (s, r) in scores.iter().zip(ranked) {
        let mp = s.iter().fold(0f64, |a, &x| a.max(x));
        if mp != 0.0 && emp::moment_scale(mp) != 1.0 {
            return None;
        }
        m = m.max(r.iter().fold(0f64, |a, &x| a.max(x)));
    }
    if m == 0.0 || emp::moment_scale(m) != 1.0 {
        return None;
    }
    let scale = |s: &Vec<f64>| super::norm_scale(emp::blocked_sum(s.len(), |i| s[i]), s.len());
    let sums: Vec<(f64, f64)> = scores
        .iter()
        .map(|s| (emp::blocked_sum(s.len(), |i| s[i]), emp::blocked_sum(s.len(), |i| s[i] * s[i])))
        .collect();
    let (mut s1, mut s2) = (-0.0f64, -0.0f64);
    for (s, &(a, b)) in scores.iter().zip(&sums) {
        let c = scale(s);
        s1 += c * a;
        s2 += (c * c) * b;
    }
    if !(s1.is_finite() && s2.is_finite()) {
        return None;
    }
    let ne = emp::n_eff_from_moments(n, s1, s2).unwrap_or(n as f64);
    let kept = match opts.fixed_ratio {
        Some(r) => (n - ((r * n as f64).round() as usize).min(n)).max(1),
        None => emp::keep_count(n, ne, opts.beta),
    };
    let masks = keep_largest(ranked, kept);
    let mut retained = -0.0f64;
    for (s, k) in scores.iter().zip(&masks) {
        retained += scale(s) * emp::blocked_sum(s.len(), |i| if k[i] { s[i] } else { -0.0 });
    }
    let s_eff = if kept >= n { 1.0 } else { (retained / s1).min(1.0) };
    let neffs = scores
        .iter()
        .zip(&sums)
        .map(|(s, &(a, b))| {
            let zero = s.iter().all(|&x| x == 0.0);
            let (a, b) = if zero { (0.0, 0.0) } else { (a, b) };
            emp::n_eff_from_moments(s.len(), a, b).unwrap_or(s.len() as f64)
        })
        .collect();
    Some((GlobalDecision { n, n_eff: ne, kept, s_eff }, masks, neffs))
}

/// Keep the `kept` largest |s| over all of `scores`; ties at the threshold: lower global index.
fn keep_largest(scores: &[Vec<f64>], kept: usize) -> Vec<Vec<bool>> {
    let n: usize = scores.iter().map(|s| s.len()).sum();
    // Threshold = kept-th largest |s|. Ties at the threshold: lower global index wins.
    let mut all: Vec<f64> = scores.iter().flatten().map(|v| v.abs()).collect();
    let thr = if kept >= n {
        f64::NEG_INFINITY
    } else {
        let (_, t, _) =
            all.select_nth_unstable_by(kept - 1, |a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
        *t
    };
    drop(all);
    let above: usize = scores.iter().flatten().filter(|v| v.abs() > thr).count();
    let mut ties_left = kept.saturating_sub(above);
    let masks: Vec<Vec<bool>> = scores
        .iter()
        .map(|s| {
            s.iter()
                .map(|v| {
                    let a = v.abs();
                    a > thr
                        || (a == thr && ties_left > 0 && {
                            ties_left -= 1;
                            true
                        })
                })
                .collect()
        })
        .collect();
    masks
}
