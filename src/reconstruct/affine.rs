//! Grouped (depthwise) convolutions: a per-output-channel scale and shift, y ≈ a·y′ + b, fitted
//! so that the pruned model's channel matches the dense one on calibration data. This is the
//! BatchNorm-statistics correction of OBC, done on a Conv whose BatchNorm was folded into it:
//! after upstream channels are removed, a depthwise channel's statistics shift, and its few
//! weights cannot be refitted usefully one by one.
//!
//! Written as W′[o] = a·W[o], b′[o] = a·b[o] + b, in the masked and the pruned model; kept per
//! channel only where it lowers the held-apart error.

use super::boundary::{run_from, Boundary};
use super::refit::RefitSite;
use super::site::{self, Site};
use super::{row_seed, LayerRecon, POSITIONS_PER_SAMPLE};
use crate::check::Inputs;
use anyhow::{bail, Context, Result};
use onnx_protobuf::ModelProto;

/// Per channel, per split (fit, held-apart): n, Σx, Σy, Σx², Σxy, Σy² with x = masked output,
/// y = dense output.
#[derive(Clone, Copy, Default)]
struct Sums([f64; 6]);

impl Sums {
    fn add(&mut self, x: f64, y: f64) {
        let s = &mut self.0;
        s[0] += 1.0;
        s[1] += x;
        s[2] += y;
        s[3] += x * x;
        s[4] += x * y;
        s[5] += y * y;
    }
    /// Σ (y − a x − b)².
    fn sse(&self, a: f64, b: f64) -> f64 {
        let [n, sx, sy, sxx, sxy, syy] = self.0;
        (syy - 2.0 * a * sxy - 2.0 * b * sy + a * a * sxx + 2.0 * a * b * sx + n * b * b).max(0.0)
    }
    /// Least-squares (a, b), or the identity when x does not vary.
    // `!(var > …)` on purpose: a NaN variance takes the shift-only path too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    fn fit(&self) -> (f64, f64) {
        let [n, sx, sy, sxx, sxy, _] = self.0;
        if n < 2.0 {
            return (1.0, 0.0);
        }
        let var = sxx - sx * sx / n;
        if !(var > 1e-12 * sxx.max(1e-300)) {
            return (1.0, (sy - sx) / n);
        }
        let a = (sxy - sx * sy / n) / var;
        (a, (sy - a * sx) / n)
    }
}

/// Fit and write layer `k`'s scale and shift. `from`: the dense and masked boundaries at this
/// layer ([`Boundary`]), to run from instead of the calibration inputs (should those runs fail,
/// from the inputs). Also says whether the runs started from `from`.
#[allow(clippy::too_many_arguments)] // the three models, the two sites and the refit site of one layer
pub(crate) fn affine_one(
    k: usize,
    dense: &ModelProto,
    masked: &mut ModelProto,
    pruned: &mut ModelProto,
    r: &RefitSite,
    s: &Site,
    sp: &Site,
    calib: &Inputs,
    from: Option<&(Boundary, Boundary)>,
) -> Result<(LayerRecon, bool)> {
    let outs = r.kept_outputs(s.out)?;
    if sp.out != outs.len() {
        bail!("pruned layer has {} outputs, expected {}", sp.out, outs.len());
    }
    let capture = |m: &ModelProto, from: Option<&Boundary>| -> Result<Vec<Vec<f32>>> {
        // per kept channel, the sampled values in row order
        let mut v: Vec<Vec<f32>> = vec![vec![]; outs.len()];
        run_from(from, m, calib, std::slice::from_ref(&s.output), |row0, a| {
            let y = &a[0];
            let Some([h, w]) = site::spatial(y.shape()) else { bail!("{}: output is not 3-D or 4-D", s.label) };
            let (c, hw) = (y.shape()[1], h * w);
            let flat = y.as_slice().context("layout")?;
            for n in 0..y.shape()[0] {
                let pos = site::sample(hw, POSITIONS_PER_SAMPLE, row_seed(k, row0 + n));
                for (j, &o) in outs.iter().enumerate() {
                    for &p in &pos {
                        v[j].push(flat[(n * c + o) * hw + p]);
                    }
                }
            }
            Ok(())
        })?;
        Ok(v)
    };
    let both = |b: Option<&(Boundary, Boundary)>| -> Result<_> {
        Ok((
            capture(dense, b.map(|b| &b.0)).context("dense run")?,
            capture(masked, b.map(|b| &b.1)).context("masked run")?,
        ))
    };
    let ((yd, ym), used) = match from.map(|b| both(Some(b))) {
        Some(Ok(y)) => (y, true),
        _ => (both(None)?, false),
    };
    // Rows per sample are fixed for a layer: split by sample index, every fifth held apart.
    let per = yd.first().map_or(0, |v| v.len()) / calib.rows().max(1);
    let mut ab = vec![(1.0, 0.0); outs.len()];
    let (mut before, mut after, mut total) = (0.0, 0.0, 0.0);
    let mut changed = 0;
    for j in 0..outs.len() {
        let (mut fit, mut val) = (Sums::default(), Sums::default());
        for (i, (&x, &y)) in ym[j].iter().zip(&yd[j]).enumerate() {
            if per > 0 && (i / per) % 5 == 4 {
                val.add(x as f64, y as f64)
            } else {
                fit.add(x as f64, y as f64)
            }
        }
        let (a, b) = fit.fit();
        let (e0, e1) = (val.sse(1.0, 0.0), val.sse(a, b));
        total += val.0[5];
        before += e0;
        if a.is_finite() && b.is_finite() && e1 < e0 {
            ab[j] = (a, b);
            after += e1;
            changed += 1;
        } else {
            after += e0;
        }
    }
    let denom = total.max(f64::MIN_POSITIVE);
    let mut rep = LayerRecon {
        layer: s.label.clone(),
        weight: r.weight.clone(),
        method: "affine".into(),
        rows: yd.first().map_or(0, |v| v.len()),
        err_before: before / denom,
        err_after: after / denom,
        solver: None,
        note: None,
    };
    if changed == 0 {
        rep.method = "unchanged".into();
        return Ok((rep, used));
    }
    if s.bias.is_none() || sp.bias.is_none() {
        rep.method = "unchanged".into();
        rep.err_after = rep.err_before;
        rep.note = Some("no bias to carry the shift".into());
        return Ok((rep, used));
    }
    for (m, st, full) in [(masked, s, true), (pruned, sp, false)] {
        let g = m.graph.as_mut().context("model has no graph")?;
        let mut w = site::read_rows(g, st)?;
        let mut b = site::read_bias(g, st)?;
        for (j, &o) in outs.iter().enumerate() {
            let row = if full { o } else { j };
            let (a, sh) = ab[j];
            w[row * st.p..(row + 1) * st.p].iter_mut().for_each(|v| *v *= a);
            b[row] = a * b[row] + sh;
        }
        site::write_rows(g, st, &w)?;
        site::write_bias(g, st, &b)?;
    }
    if s.quant.is_some() {
        rep.note = Some(super::quant::REQUANTIZED.into());
    }
    Ok((rep, used))
}
