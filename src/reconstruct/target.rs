//! Per-weight mode, layer by layer: the OBS update aimed at the dense model's outputs.
//!
//! SparseGPT updates a layer so that W′ z ≈ W z on the inputs z that the already-pruned layers
//! before it produce: it stops errors from compounding, but the error those layers made stays.
//! Here the target is the dense model's own output of the layer, y_d = W z_d (z_d: the layer's
//! input in the dense model), as error-correcting GPTQ/OBS variants do:
//! 1. W* = argmin Σ‖W z − y_d‖² + λ‖W‖² (ridge; λ = δ · mean(diag H), δ of [`FIT_DAMPS`]);
//! 2. OBS with EMP's mask from W* on H = Σ z zᵀ. Since Σ‖W′z − y_d‖² = Σ‖(W′ − W*) z‖² + const
//!    for the exact least-squares W*, removing weights from W* by OBS minimises the error to the
//!    dense output, not to the already-damaged one.
//! 3. With a bias, the mean residual over the rows moves into it (FLAP-style compensation).
//!
//! The candidates — left as pruned, OBS from W (SparseGPT), OBS from W*, each with and without
//! the bias shift — are fitted on four fifths of the calibration samples and judged on the
//! fifth held apart (error to y_d); the winner is solved again on all samples. The mask, and so
//! EMP's sparsity, never changes.
//!
//! Memory: one layer's H and Σ z y_dᵀ per group, plus y_d of its sampled rows: at most
//! [`MAX_TARGET_ELEMS`], by sampling fewer positions per sample when there are many samples
//! ([`target_positions`]); a layer over it even at one position per sample is refused, and the
//! caller falls back to plain OBS.

use super::boundary::{run_from, Boundary};
use super::linalg::{mean_diag, ridge, Normal, Normal32};
use super::obs_factor::{ObsFactor, Solver};
use super::refit::{is_val, sample_positions};
use super::site::{self, Site};
use super::{LayerRecon, OBS_DAMP, POSITIONS_PER_SAMPLE};
use crate::check::Inputs;
use anyhow::{bail, Context, Result};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use onnx_protobuf::ModelProto;

/// The most y_d values (sampled rows × outputs) kept for one layer: 128 MB of f64.
pub const MAX_TARGET_ELEMS: usize = 16 << 20;

/// Normal equations of one group with the sums needed for a bias shift.
#[derive(Clone)]
struct Stats {
    n: Normal,
    sz: Vec<f64>,
    sy: Vec<f64>,
}

impl Stats {
    fn new(p: usize, q: usize) -> Self {
        Stats { n: Normal::new(p, q), sz: vec![0.0; p], sy: vec![0.0; q] }
    }

    fn add(&mut self, z: MatRef<'_, f64>, y: MatRef<'_, f64>) {
        self.n.add(z, y);
        for i in 0..z.nrows() {
            for (j, s) in self.sz.iter_mut().enumerate() {
                *s += z[(i, j)];
            }
            for (j, s) in self.sy.iter_mut().enumerate() {
                *s += y[(i, j)];
            }
        }
    }

    fn merged(&self, o: &Stats) -> Stats {
        let mut m = self.clone();
        m.n.g += &o.n.g;
        m.n.c += &o.n.c;
        m.n.yy += o.n.yy;
        m.n.rows += o.n.rows;
        m.sz.iter_mut().zip(&o.sz).for_each(|(a, b)| *a += b);
        m.sy.iter_mut().zip(&o.sy).for_each(|(a, b)| *a += b);
        m
    }

    /// The mean residual ȳ − Xᵀ z̄ of candidate X (p × q): the bias shift.
    fn shift(&self, x: MatRef<'_, f64>) -> Vec<f64> {
        let r = self.n.rows.max(1) as f64;
        (0..x.ncols())
            .map(|o| {
                let xz: f64 = (0..x.nrows()).map(|i| x[(i, o)] * self.sz[i]).sum();
                (self.sy[o] - xz) / r
            })
            .collect()
    }

    /// Σ‖y − Xᵀz − δ‖² = sse(X) − 2 δ·(Σy − XᵀΣz) + rows·‖δ‖².
    fn sse(&self, x: MatRef<'_, f64>, delta: Option<&[f64]>) -> f64 {
        let base = self.n.sse(x);
        let Some(d) = delta else { return base };
        let r = self.n.rows as f64;
        let mut e = base;
        for (o, &dv) in d.iter().enumerate() {
            let xz: f64 = (0..x.nrows()).map(|i| x[(i, o)] * self.sz[i]).sum();
            e += -2.0 * dv * (self.sy[o] - xz) + r * dv * dv;
        }
        e.max(0.0)
    }
}

/// Which start point OBS removes EMP's weights from.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Start {
    /// The layer as pruned (no update).
    Pruned,
    /// The dense weights (SparseGPT).
    Dense,
    /// The least-squares fit to the dense outputs, ridge strength [`FIT_DAMPS`]`[i]`.
    Fit(usize),
}

/// Ridge strengths of the fit, relative to mean(diag H): chosen on the held-apart samples (a
/// classifier solved on a few hundred rows needs more than a convolution on thousands).
pub const FIT_DAMPS: [f64; 3] = [1e-3, 1e-2, 1e-1];

/// The weights of one group for `start`, fitted on `st`, as X = Wᵀ (p × og), with the OBS solver
/// used (none for [`Start::Pruned`]); None if a factorisation failed. `obs`: the OBS factor of
/// `st`'s H (shared by the start points).
#[allow(clippy::too_many_arguments)]
fn solve(
    start: Start,
    st: &Stats,
    obs: Option<&ObsFactor>,
    w_dense: &[f64],
    w_cur: &[f64],
    keep: &[bool],
    og: usize,
    p: usize,
) -> Option<(Mat<f64>, Option<Solver>)> {
    let to_x = |w: &[f64]| Mat::from_fn(p, og, |i, o| w[o * p + i]);
    match start {
        Start::Pruned => Some((to_x(w_cur), None)),
        Start::Dense | Start::Fit(_) => {
            let mut w = match start {
                Start::Dense | Start::Pruned => w_dense.to_vec(),
                Start::Fit(i) => {
                    let mut g = st.n.g.clone();
                    for i in 0..p {
                        if g[(i, i)] == 0.0 {
                            g[(i, i)] = 1.0;
                        }
                    }
                    let lambda = FIT_DAMPS[i] * mean_diag(g.as_ref());
                    let x = ridge(g.as_ref(), st.n.c.as_ref(), &vec![lambda; p])?;
                    let mut w = vec![0.0; og * p];
                    for o in 0..og {
                        for i in 0..p {
                            w[o * p + i] = x[(i, o)];
                        }
                    }
                    w
                }
            };
            let solver = obs?.apply(&mut w, og, keep);
            Some((to_x(&w), Some(solver)))
        }
    }
}

/// The dense model's outputs y_d = W_dense z_d of a layer: per group, the sampled rows in order.
pub(crate) type Targets = Vec<Vec<f64>>;

/// Positions sampled per calibration sample for a layer's y_d and its paired inputs:
/// [`POSITIONS_PER_SAMPLE`], fewer when every sample's targets would not fit in
/// [`MAX_TARGET_ELEMS`] (at least one). Many samples then spread the rows over more images
/// instead of falling back to plain OBS (before: a 384-wide layer at 2 048 samples did).
pub(crate) fn target_positions(s: &Site, calib: &Inputs) -> usize {
    positions_for(calib.rows(), s.out)
}

/// [`target_positions`] of a layer of `out` outputs over `rows` samples.
fn positions_for(rows: usize, out: usize) -> usize {
    (MAX_TARGET_ELEMS / rows.max(1).saturating_mul(out).max(1)).clamp(1, POSITIONS_PER_SAMPLE)
}

/// Upper bound of the y_d values of a layer (every sample, at most [`target_positions`]
/// positions, every output).
pub(crate) fn target_bound(s: &Site, calib: &Inputs) -> usize {
    calib.rows().saturating_mul(target_positions(s, calib)).saturating_mul(s.out)
}

/// y_d of several layers (`(k, site)`: k seeds the position sample) from ONE pass of the dense
/// model: the dense model never changes, so the layers of a window share its run. `from`: the
/// dense model's boundary at the first of them, to run from instead of the calibration inputs.
pub(crate) fn dense_targets(
    dense: &ModelProto,
    calib: &Inputs,
    sites: &[(usize, &Site)],
    from: Option<&Boundary>,
) -> Result<Vec<Targets>> {
    let gd = dense.graph.as_ref().context("model has no graph")?;
    let weights: Vec<Vec<f32>> = sites
        .iter()
        .map(|(_, s)| site::read_rows(gd, s).context("dense weight").map(|w| w.into_iter().map(|v| v as f32).collect()))
        .collect::<Result<_>>()?;
    let mut values: Vec<String> = vec![];
    for (_, s) in sites {
        if !values.contains(&s.input) {
            values.push(s.input.clone());
        }
    }
    let mut out: Vec<Targets> = sites.iter().map(|(_, s)| vec![vec![]; site::groups(s)]).collect();
    let mut held = vec![0usize; sites.len()];
    let label = sites.iter().map(|(_, s)| s.label.as_str()).collect::<Vec<_>>().join(", ");
    // Sampled rows (f32, as the model computes) waiting for their product, per site and group:
    // one product per `BATCH` rows whatever the chunks.
    const BATCH: usize = super::linalg::Gram32::BATCH;
    let mut pending: Vec<Vec<Vec<f32>>> = sites.iter().map(|(_, s)| vec![vec![]; site::groups(s)]).collect();
    let flush = |z32: &mut Vec<f32>, t: &mut Vec<f64>, w: &[f32], og: usize, p: usize| {
        let r = z32.len() / p.max(1);
        if r == 0 {
            return;
        }
        let zm = MatRef::from_row_major_slice(z32, r, p);
        let wg = MatRef::from_row_major_slice(w, og, p);
        let mut y = Mat::<f32>::zeros(r, og);
        matmul(y.as_mut(), Accum::Replace, zm, wg.transpose(), 1.0f32, Par::rayon(0));
        for i in 0..r {
            for o in 0..og {
                t.push(y[(i, o)] as f64);
            }
        }
        z32.clear();
    };
    run_from(from, dense, calib, &values, |row0, v| {
        for ((((k, s), w_dense), (targets, held)), pend) in
            sites.iter().zip(&weights).zip(out.iter_mut().zip(held.iter_mut())).zip(pending.iter_mut())
        {
            let (k, s) = (*k, *s);
            let x = &v[values.iter().position(|n| n == &s.input).expect("exposed")];
            let groups = site::groups(s);
            let (og, p) = (s.out / groups, s.p);
            let (npos, hw) = sample_positions(s, x.shape())?;
            for (g, (t, z32)) in targets.iter_mut().zip(pend.iter_mut()).enumerate() {
                let mut r = 0usize;
                site::each_input_row(s, x, k, row0, g, (npos, target_positions(s, calib)), hw, |_, z| {
                    z32.extend(z.iter().map(|&v| v as f32));
                    r += 1;
                    Ok(())
                })?;
                *held += r * og;
                if *held > MAX_TARGET_ELEMS {
                    bail!(
                        "{}: {} sampled output values, more than the {} kept per layer",
                        s.label,
                        held,
                        MAX_TARGET_ELEMS
                    );
                }
                if z32.len() >= BATCH * p {
                    flush(z32, t, &w_dense[g * og * p..(g + 1) * og * p], og, p);
                }
            }
        }
        Ok(())
    })
    .with_context(|| format!("{label}: dense calibration run"))?;
    for ((((_, s), w_dense), targets), pend) in sites.iter().zip(&weights).zip(out.iter_mut()).zip(pending.iter_mut()) {
        let groups = site::groups(s);
        let (og, p) = (s.out / groups, s.p);
        for (g, (t, z32)) in targets.iter_mut().zip(pend.iter_mut()).enumerate() {
            flush(z32, t, &w_dense[g * og * p..(g + 1) * og * p], og, p);
        }
    }
    Ok(out)
}

/// Calibration statistics of a layer per group: (fit rows, held-apart rows), inputs from
/// `model`, paired row by row with the dense targets.
fn collect(
    k: usize,
    model: &ModelProto,
    s: &Site,
    targets: &Targets,
    calib: &Inputs,
    from: Option<&Boundary>,
) -> Result<Vec<[Stats; 2]>> {
    let groups = site::groups(s);
    let og = s.out / groups;
    let p = s.p;
    let values = [s.input.clone()];
    // Pass 2, the model as reconstructed so far: inputs z, paired row by row with y_d.
    let mut fit: Vec<Normal32> = (0..groups).map(|_| Normal32::new(p, og)).collect();
    let mut held: Vec<Stats> = (0..groups).map(|_| Stats::new(p, og)).collect();
    let mut cursor = vec![0usize; groups];
    // Rows of fit (0) and held-apart (1) samples waiting to be added, per group: added in
    // products of `BATCH` rows whatever the chunks (a model run one sample at a time hands over
    // a few dozen rows per call), so the sums do not depend on them.
    const BATCH: usize = super::linalg::Gram32::BATCH;
    let mut pending: Vec<[(Vec<f64>, Vec<f64>); 2]> = (0..groups).map(|_| Default::default()).collect();
    let flush =
        |g: usize, part: usize, (zs, ys): &mut (Vec<f64>, Vec<f64>), fit: &mut [Normal32], held: &mut [Stats]| {
            let r = zs.len() / p.max(1);
            if part == 0 {
                fit[g].add(zs, ys, r);
            } else {
                held[g].add(MatRef::from_row_major_slice(zs, r, p), MatRef::from_row_major_slice(ys, r, og));
            }
            zs.clear();
            ys.clear();
        };
    run_from(from, model, calib, &values, |row0, v| {
        let x = &v[0];
        let (npos, hw) = sample_positions(s, x.shape())?;
        for g in 0..groups {
            let cur = &mut cursor[g];
            let pend = &mut pending[g];
            site::each_input_row(s, x, k, row0, g, (npos, target_positions(s, calib)), hw, |n, z| {
                let part = is_val(row0 + n) as usize;
                let y = targets[g].get(*cur..*cur + og).context("the dense and pruned runs sampled different rows")?;
                let (zs, ys) = &mut pend[part];
                zs.extend_from_slice(z);
                ys.extend_from_slice(y);
                *cur += og;
                if zs.len() == BATCH * p {
                    flush(g, part, &mut pend[part], &mut fit, &mut held);
                }
                Ok(())
            })?;
        }
        Ok(())
    })
    .with_context(|| format!("{}: calibration run", s.label))?;
    for (g, pend) in pending.iter_mut().enumerate() {
        for (part, side) in pend.iter_mut().enumerate() {
            flush(g, part, side, &mut fit, &mut held);
        }
    }
    if cursor.iter().zip(targets.iter()).any(|(c, t)| *c != t.len()) {
        bail!("{}: the dense and pruned runs sampled different rows", s.label);
    }
    Ok(fit
        .into_iter()
        .zip(held)
        .map(|(f, h)| {
            let (n, sz, sy) = f.into_normal();
            [Stats { n, sz, sy }, h]
        })
        .collect())
}

/// Reconstruct one pruned layer toward the dense outputs. `Ok(None)` when it was not pruned.
/// `targets`: the layer's y_d if already computed (see [`dense_targets`]); `from`: the model's
/// boundary at this layer, to run from instead of the calibration inputs (should that run fail,
/// from the inputs).
pub(crate) fn obs_to_dense(
    k: usize,
    dense: &ModelProto,
    model: &mut ModelProto,
    s: &Site,
    calib: &Inputs,
    targets: Option<Targets>,
    from: Option<&Boundary>,
) -> Result<Option<LayerRecon>> {
    let gd = dense.graph.as_ref().context("model has no graph")?;
    let w_dense = site::read_rows(gd, s).context("dense weight")?;
    let gm = model.graph.as_ref().context("model has no graph")?;
    let w_cur = site::read_rows(gm, s)?;
    if w_dense.len() != w_cur.len() {
        bail!("dense and pruned weights differ in size");
    }
    let keep: Vec<bool> = w_cur.iter().map(|v| *v != 0.0).collect();
    if keep.iter().all(|k| *k) {
        return Ok(None);
    }
    let groups = site::groups(s);
    if !s.out.is_multiple_of(groups) {
        bail!("{} outputs do not split into {groups} groups", s.out);
    }
    let og = s.out / groups;
    let p = s.p;
    let bias_dense = site::read_bias(gd, s)?;
    let bias_cur = site::read_bias(gm, s)?;
    let alpha = site::weight_scale(s);
    // A bias that was itself pruned (--include bias) stays as it is: its offset is part of every
    // candidate's error, and it is not shifted.
    let offset: Option<Vec<f64>> =
        (bias_cur != bias_dense).then(|| bias_cur.iter().zip(&bias_dense).map(|(c, d)| (c - d) / alpha).collect());
    let beta_ok = !matches!(s.layout, site::Layout::Gemm { beta, .. } if beta == 0.0);
    let can_shift = s.bias.is_some() && offset.is_none() && beta_ok && alpha != 0.0;
    let targets = match targets {
        Some(t) => t,
        None => dense_targets(dense, calib, &[(k, s)], None)?.pop().expect("one site"),
    };
    let stats = match from.map(|b| collect(k, model, s, &targets, calib, Some(b))) {
        Some(Ok(st)) => st,
        _ => collect(k, model, s, &targets, calib, None)?,
    };
    let held_rows = stats[0][1].n.rows;
    let fit_rows = stats[0][0].n.rows;
    // Candidates in order of preference on ties: simplest first.
    let starts: Vec<Start> =
        [Start::Pruned, Start::Dense].into_iter().chain((0..FIT_DAMPS.len()).map(Start::Fit)).collect();
    let mut cands: Vec<(Start, bool)> = starts.iter().map(|&s| (s, false)).collect();
    if can_shift {
        cands.extend(starts.iter().map(|&s| (s, true)));
    }
    let slice = |w: &[f64], g: usize| w[g * og * p..(g + 1) * og * p].to_vec();
    // Each start point is solved once per group; with and without the shift judged from it.
    let choose_on = |fit: usize, judge: usize| -> Vec<Option<f64>> {
        let mut errs: Vec<Option<f64>> = vec![Some(0.0); cands.len()];
        let factors: Vec<Option<ObsFactor>> =
            stats.iter().map(|st| ObsFactor::new(st[fit].n.g.as_ref(), OBS_DAMP)).collect();
        for &start in &starts {
            for (g, st) in stats.iter().enumerate() {
                let lo = g * og * p;
                let (wd, wc, kp) = (slice(&w_dense, g), slice(&w_cur, g), &keep[lo..lo + og * p]);
                let x = solve(start, &st[fit], factors[g].as_ref(), &wd, &wc, kp, og, p);
                for (ci, &(cs, shift)) in cands.iter().enumerate() {
                    if cs != start {
                        continue;
                    }
                    errs[ci] = match (&x, errs[ci]) {
                        (Some((x, _)), Some(acc)) => {
                            let d = match (shift, &offset) {
                                (true, _) => Some(st[fit].shift(x.as_ref())),
                                (false, Some(off)) => Some(off[g * og..(g + 1) * og].to_vec()),
                                (false, None) => None,
                            };
                            Some(acc + st[judge].sse(x.as_ref(), d.as_deref()))
                        }
                        _ => None,
                    };
                }
            }
        }
        errs.into_iter().map(|e| e.filter(|e| e.is_finite())).collect()
    };
    // Judge on the held-apart samples (on the fit rows themselves when none are held apart).
    let errs = if held_rows > 0 { choose_on(0, 1) } else { choose_on(0, 0) };
    let judged = if held_rows > 0 { 1 } else { 0 };
    let total: f64 = stats.iter().map(|st| st[judged].n.yy).sum();
    let before = errs[0].context("the pruned layer's error is not finite")?;
    let mut best = 0;
    for (i, e) in errs.iter().enumerate() {
        if let Some(e) = e {
            if *e < errs[best].unwrap_or(f64::INFINITY) {
                best = i;
            }
        }
    }
    let denom = total.max(f64::MIN_POSITIVE);
    let (start, shift) = cands[best];
    let method = match (start, shift) {
        (Start::Pruned, false) => "unchanged",
        (Start::Pruned, true) => "bias",
        (Start::Dense, false) => "obs",
        (Start::Dense, true) => "obs+bias",
        (Start::Fit(_), false) => "obs-dense",
        (Start::Fit(_), true) => "obs-dense+bias",
    };
    let mut rep = LayerRecon {
        layer: s.label.clone(),
        weight: s.weight.clone(),
        method: method.into(),
        rows: fit_rows + held_rows,
        err_before: before / denom,
        err_after: errs[best].unwrap_or(before) / denom,
        solver: None,
        note: (best == 0).then(|| "no update lowered the layer's error on the held-apart samples".into()),
    };
    if best == 0 {
        return Ok(Some(rep));
    }
    // The winner, solved again on every sample.
    let mut w_new = vec![0.0; s.out * p];
    let mut bias = bias_dense.clone();
    let mut solvers = vec![];
    for (g, st) in stats.iter().enumerate() {
        let all = st[0].merged(&st[1]);
        let lo = g * og * p;
        let factor = if start == Start::Pruned { None } else { ObsFactor::new(all.n.g.as_ref(), OBS_DAMP) };
        let (wd, wc, kp) = (slice(&w_dense, g), slice(&w_cur, g), &keep[lo..lo + og * p]);
        let (x, solver) = solve(start, &all, factor.as_ref(), &wd, &wc, kp, og, p)
            .context("the factorisation failed on all samples")?;
        solvers.extend(solver);
        for o in 0..og {
            for i in 0..p {
                w_new[(g * og + o) * p + i] = x[(i, o)];
            }
        }
        if shift {
            for (o, d) in all.shift(x.as_ref()).into_iter().enumerate() {
                bias[g * og + o] += alpha * d;
            }
        }
    }
    rep.solver = Solver::name(solvers);
    let gm = model.graph.as_mut().context("model has no graph")?;
    site::write_rows(gm, s, &w_new)?;
    if shift {
        site::write_bias(gm, s, &bias)?;
    }
    Ok(Some(rep))
}

#[cfg(test)]
mod tests {
    use super::super::linalg::tests::rng;
    use super::*;

    /// Rows z (the pruned model's inputs) and y_d = W z_d, where the dense input z_d = A z + c
    /// differs from z by an affine map (the error of the layers before).
    fn data(rows: usize, p: usize, og: usize, w: &[f64], a: &[f64], c: &[f64], seed: u64) -> Stats {
        let mut r = rng(seed);
        let mut st = Stats::new(p, og);
        let mut zs = vec![];
        let mut ys = vec![];
        for _ in 0..rows {
            let z: Vec<f64> = (0..p).map(|_| r()).collect();
            let zd: Vec<f64> = (0..p).map(|i| (0..p).map(|j| a[i * p + j] * z[j]).sum::<f64>() + c[i]).collect();
            zs.extend_from_slice(&z);
            ys.extend((0..og).map(|o| (0..p).map(|i| w[o * p + i] * zd[i]).sum::<f64>()));
        }
        st.add(MatRef::from_row_major_slice(&zs, rows, p), MatRef::from_row_major_slice(&ys, rows, og));
        st
    }

    #[test]
    fn many_samples_sample_fewer_positions_within_the_target_budget() {
        for rows in [1, 100, 512, 1024, 2048, 4096, 50_000, 1 << 20] {
            for out in [1, 10, 64, 384, 1000, 4096, 30_000] {
                let k = positions_for(rows, out);
                assert!((1..=POSITIONS_PER_SAMPLE).contains(&k), "{rows} × {out}: {k}");
                if rows * out <= MAX_TARGET_ELEMS {
                    // Every sample keeps at least one position, and the targets fit.
                    assert!(rows * k * out <= MAX_TARGET_ELEMS, "{rows} × {k} × {out}");
                }
                if rows * POSITIONS_PER_SAMPLE * out <= MAX_TARGET_ELEMS {
                    assert_eq!(k, POSITIONS_PER_SAMPLE, "{rows} × {out}: nothing to save");
                } else {
                    // As many as fit: one more would not.
                    assert!(k == 1 || rows * (k + 1) * out > MAX_TARGET_ELEMS, "{rows} × {k} × {out}");
                }
            }
        }
        // fmnist_mobilenet's 384-wide layers at 2 048 samples: 21 of 64 positions (they fell
        // back to plain OBS before).
        assert_eq!(positions_for(2048, 384), 21);
    }

    #[test]
    fn sse_with_shift_matches_the_direct_sum() {
        let (p, og) = (5, 3);
        let mut r = rng(7);
        let w: Vec<f64> = (0..og * p).map(|_| r()).collect();
        let a: Vec<f64> = (0..p * p).map(|_| r() * 0.5).collect();
        let c: Vec<f64> = (0..p).map(|_| r()).collect();
        let st = data(40, p, og, &w, &a, &c, 3);
        let x = Mat::from_fn(p, og, |i, o| w[o * p + i] * 0.7);
        let d = st.shift(x.as_ref());
        // Direct: regenerate the same rows.
        let mut r = rng(3);
        let (mut e0, mut e1) = (0.0, 0.0);
        for _ in 0..40 {
            let z: Vec<f64> = (0..p).map(|_| r()).collect();
            let zd: Vec<f64> = (0..p).map(|i| (0..p).map(|j| a[i * p + j] * z[j]).sum::<f64>() + c[i]).collect();
            for o in 0..og {
                let y: f64 = (0..p).map(|i| w[o * p + i] * zd[i]).sum();
                let f: f64 = (0..p).map(|i| x[(i, o)] * z[i]).sum();
                e0 += (y - f).powi(2);
                e1 += (y - f - d[o]).powi(2);
            }
        }
        assert!((st.sse(x.as_ref(), None) - e0).abs() < 1e-9 * e0.max(1.0), "{} vs {e0}", st.sse(x.as_ref(), None));
        assert!((st.sse(x.as_ref(), Some(&d)) - e1).abs() < 1e-9 * e0.max(1.0));
        assert!(e1 < e0, "the mean shift lowers the error");
    }

    /// With an upstream distortion, OBS from the least-squares fit to the dense outputs beats
    /// OBS from the dense weights (SparseGPT) and the layer as pruned on fresh rows, and with the bias shift it removes
    /// the distortion's offset too; with no distortion the fit starts from (about) W itself.
    #[test]
    fn the_fit_start_corrects_upstream_error() {
        let (p, og) = (12, 6);
        let mut r = rng(11);
        let w: Vec<f64> = (0..og * p).map(|_| r()).collect();
        let keep: Vec<bool> = (0..og * p).map(|i| i % 4 != 1).collect();
        let mut w_cur = w.clone();
        w_cur.iter_mut().zip(&keep).for_each(|(v, k)| *v *= *k as u8 as f64);
        let mut a: Vec<f64> = (0..p * p).map(|_| r() * 0.3).collect();
        for i in 0..p {
            a[i * p + i] += 1.0;
        }
        let c: Vec<f64> = (0..p).map(|_| r() * 0.5).collect();
        let fit = data(400, p, og, &w, &a, &c, 5);
        let test = data(200, p, og, &w, &a, &c, 9);
        let err = |start: Start, shift: bool| {
            let f = ObsFactor::new(fit.n.g.as_ref(), OBS_DAMP);
            let x = solve(start, &fit, f.as_ref(), &w, &w_cur, &keep, og, p).unwrap().0;
            let d = shift.then(|| fit.shift(x.as_ref()));
            test.sse(x.as_ref(), d.as_deref())
        };
        let (pruned, dense, fitted, fitted_b) =
            (err(Start::Pruned, false), err(Start::Dense, false), err(Start::Fit(1), false), err(Start::Fit(1), true));
        // SparseGPT's start keeps W z on the distorted inputs, which need not be closer to the
        // dense outputs than the pruned layer; the fit aims at them and beats both.
        assert!(fitted < 0.7 * dense.min(pruned), "{fitted} < {dense}, {pruned}");
        assert!(fitted_b < 0.5 * fitted, "{fitted_b} < {fitted}");
        // The mask is EMP's: the fit never brings a removed weight back.
        let f = ObsFactor::new(fit.n.g.as_ref(), OBS_DAMP);
        let x = solve(Start::Fit(1), &fit, f.as_ref(), &w, &w_cur, &keep, og, p).unwrap().0;
        for o in 0..og {
            for i in 0..p {
                if !keep[o * p + i] {
                    assert_eq!(x[(i, o)], 0.0);
                }
            }
        }
        // No distortion: the fit is W up to the damping, so it matches SparseGPT closely.
        let ident: Vec<f64> = (0..p * p).map(|k| (k / p == k % p) as u8 as f64).collect();
        let clean = data(400, p, og, &w, &ident, &vec![0.0; p], 5);
        let fc = ObsFactor::new(clean.n.g.as_ref(), OBS_DAMP);
        let x_fit = solve(Start::Fit(1), &clean, fc.as_ref(), &w, &w_cur, &keep, og, p).unwrap().0;
        let x_obs = solve(Start::Dense, &clean, fc.as_ref(), &w, &w_cur, &keep, og, p).unwrap().0;
        let diff: f64 =
            (0..p).flat_map(|i| (0..og).map(move |o| (i, o))).map(|(i, o)| (x_fit[(i, o)] - x_obs[(i, o)]).abs()).sum();
        assert!(diff < 0.05 * (og * p) as f64, "{diff}");
    }
}
