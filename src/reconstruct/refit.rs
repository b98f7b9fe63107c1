//! Structural modes: refit each consumer of removed units (channels, hidden units, heads) so its
//! output on calibration data matches the dense model's (He et al. 2017, ThiNet), with the
//! FLAP-style bias compensation as a fall-back.
//!
//! For a consumer y = W z + b whose input features S were removed (K kept) and whose kept
//! outputs are O: the target is the dense model's y on the calibration rows; the inputs are the
//! masked model's z_K (the pruned prefix, already reconstructed up to here). Candidates:
//! - unchanged: the current W_K, b;
//! - bias: b' = b + mean(y − W_K z_K − b) (the removed features' mean contribution, measured);
//! - ridge: [W_K' b'] = argmin ‖y − W_K' z_K − b'‖² + λ‖W_K'‖², λ = δ · mean(diag Z_Kᵀ Z_K),
//!   for each δ of [`super::RIDGE_DELTAS`].
//!
//! Rows are split by sample: every fifth calibration sample is held apart, and the candidate
//! with the lowest held-apart error is kept (so a refit that overfits is not kept).

use super::boundary::{run_from, Boundary};
use super::linalg::{mean_diag, ridge, Normal, Normal32};
use super::site::{self, Layout, Site};
use super::{row_seed, LayerRecon, POSITIONS_PER_SAMPLE, RIDGE_DELTAS};
use crate::check::Inputs;
use anyhow::{bail, Context, Result};
use faer::Mat;
use onnx_protobuf::ModelProto;

/// A layer to refit: its weight, which positions of the weight's input axis (Conv: channels,
/// Gemm/MatMul: features) are kept (empty = all), and which of its outputs are kept (empty = all).
#[derive(Clone, Debug, PartialEq)]
pub struct RefitSite {
    /// The weight's name in the model the analysis saw.
    pub weight: String,
    /// When the rewrite may rename the weight: the output value of the consumer node, which
    /// it does not rename; the weight is then the node's input 1 in each model.
    pub by_output: Option<String>,
    pub in_keep: Vec<bool>,
    pub out_keep: Vec<bool>,
}

impl RefitSite {
    /// Indices of the kept outputs of a layer with `out` outputs (all when `out_keep` is empty).
    pub fn kept_outputs(&self, out: usize) -> Result<Vec<usize>> {
        if self.out_keep.is_empty() {
            return Ok((0..out).collect());
        }
        if self.out_keep.len() != out {
            bail!("{} output positions for a weight with {} outputs", self.out_keep.len(), out);
        }
        Ok((0..out).filter(|&o| self.out_keep[o]).collect())
    }
}

/// Output spatial size of a 2-D Conv for an input of `x_shape` ([N, C, H, W]; 1-D: [N, C, T]
/// as [1, T]).
pub fn conv_out_hw(s: &Site, x_shape: &[usize]) -> Result<[usize; 2]> {
    let Layout::Conv2d { kernel, strides, pads, dilations, .. } = s.layout else { return Ok([1, 1]) };
    let Some(x_hw) = site::spatial(x_shape) else { bail!("{}: input is not 3-D or 4-D", s.label) };
    let mut hw = [0; 2];
    for a in 0..2 {
        let span = dilations[a] * (kernel[a] - 1) + 1;
        let full = x_hw[a] + 2 * pads[a];
        if full < span || strides[a] == 0 {
            bail!("{}: kernel larger than the padded input", s.label);
        }
        hw[a] = (full - span) / strides[a] + 1;
    }
    Ok(hw)
}

/// Positions of one sample of `x` (Conv output pixels, tokens, or 1).
pub fn sample_positions(s: &Site, x_shape: &[usize]) -> Result<(usize, [usize; 2])> {
    match s.layout {
        Layout::Conv2d { .. } => {
            let hw = conv_out_hw(s, x_shape)?;
            Ok((hw[0] * hw[1], hw))
        }
        _ => Ok((site::positions(s, x_shape, &[])?, [1, 1])),
    }
}

/// The site of `r` in `m`: by weight name, or through the node producing `r.by_output`.
fn locate(m: &ModelProto, r: &RefitSite) -> std::result::Result<Site, String> {
    let s = match &r.by_output {
        None => site::find_shared(m, &r.weight)?,
        Some(out) => {
            let g = m.graph.as_ref().ok_or("model has no graph")?;
            let n = g
                .node
                .iter()
                .find(|n| n.output.first() == Some(out))
                .ok_or_else(|| format!("no node produces '{out}'"))?;
            let w = n.input.get(1).filter(|s| !s.is_empty()).ok_or("the node has no weight input")?;
            site::find_shared(m, w)?
        }
    };
    // Its targets are the layer's outputs, bias included: a bias it cannot move is in the way.
    if s.shared_bias {
        return Err("the bias is shared with other layers".into());
    }
    Ok(s)
}

/// Every fifth calibration sample is held apart to judge the candidates (refit and per-weight).
pub(crate) fn is_val(row: usize) -> bool {
    row % 5 == 4
}

/// Refit every site, in the masked model's graph order, writing the kept values into `masked`
/// and `pruned`. `dense` gives the targets. Big models go block-wise (see
/// [`super::obs::BLOCKWISE_MIN_WEIGHTS`]): one dense and one masked calibration pass serve the
/// consecutive linear layers of a window of ⌈√L⌉ distinct inputs; smaller ones layer by layer.
/// Either way each window's passes run from the activations cached at its first layer
/// ([`Boundary`]), so that L layers cost about two passes over the model, not L prefixes.
pub fn refit_all(
    dense: &ModelProto,
    masked: &mut ModelProto,
    pruned: &mut ModelProto,
    sites: &[RefitSite],
    calib: &Inputs,
) -> Result<Vec<LayerRecon>> {
    let blockwise = super::obs::weight_elems(dense) >= super::obs::BLOCKWISE_MIN_WEIGHTS;
    refit_all_with(dense, masked, pruned, sites, calib, blockwise, true).map(|r| r.0)
}

/// [`refit_all`] with the block-wise choice given, and (block-wise) with or without the boundary
/// cache. Also returns how many windows ran from cached boundaries.
pub(crate) fn refit_all_with(
    dense: &ModelProto,
    masked: &mut ModelProto,
    pruned: &mut ModelProto,
    sites: &[RefitSite],
    calib: &Inputs,
    blockwise: bool,
    use_boundary: bool,
) -> Result<(Vec<LayerRecon>, usize)> {
    let mut order: Vec<(usize, &RefitSite, std::result::Result<Site, String>)> = sites
        .iter()
        .map(|r| {
            let s = locate(masked, r);
            (s.as_ref().map(|s| s.node).unwrap_or(usize::MAX), r, s)
        })
        .collect();
    order.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.weight.cmp(&b.1.weight)));
    let window = if blockwise {
        let inputs: std::collections::BTreeSet<&str> =
            order.iter().filter_map(|o| o.2.as_ref().ok().map(|s| s.input.as_str())).collect();
        ((inputs.len() as f64).sqrt().ceil() as usize).max(1)
    } else {
        1
    };
    let progress = crate::progress::Work::new(order.len() as u64);
    let mut out = vec![];
    // Each window's dense and masked runs start from the activations cached at its first layer
    // (see [`Boundary`]) while consecutive windows follow each other; a lost boundary (too big,
    // or a failed run) is taken again from the inputs at the next layer.
    let mut bounds = use_boundary.then(|| (Boundary::start(calib), Boundary::start(calib)));
    let mut from_boundary = 0usize;
    let mut queue: Queue = order.into_iter().enumerate().collect();
    while let Some((k, (_, r, s))) = queue.pop_front() {
        let s = match s {
            Err(why) => {
                out.push(LayerRecon::skipped(&r.weight, &r.weight, why));
                progress.inc(1);
                continue;
            }
            Ok(s) if site::groups(&s) > 1 => {
                let rep = locate(pruned, r)
                    .map_err(|e| anyhow::anyhow!("pruned model: {e}"))
                    .and_then(|sp| {
                        super::affine::affine_one(k, dense, masked, pruned, r, &s, &sp, calib, bounds.as_ref())
                    })
                    .unwrap_or_else(|e| (LayerRecon::skipped(&s.label, &r.weight, format!("{e:#}")), false));
                out.push(rep.0);
                from_boundary += rep.1 as usize;
                progress.inc(1);
                bounds = next_bounds(bounds.take(), use_boundary, dense, masked, calib, &queue);
                continue;
            }
            Ok(s) => s,
        };
        // This linear site and the ones after it, up to `window` distinct inputs.
        let mut batch = vec![(k, r, s)];
        let mut inputs = vec![batch[0].2.input.clone()];
        while let Some((_, (_, _, Ok(next)))) = queue.front() {
            if site::groups(next) > 1 {
                break;
            }
            if !inputs.contains(&next.input) {
                if inputs.len() >= window {
                    break;
                }
                inputs.push(next.input.clone());
            }
            let Some((k, (_, r, Ok(s)))) = queue.pop_front() else { unreachable!() };
            batch.push((k, r, s));
        }
        let n = batch.len() as u64;
        let (reps, used) = refit_batch(dense, masked, pruned, batch, calib, bounds.as_ref());
        out.extend(reps);
        from_boundary += used as usize;
        progress.inc(n);
        bounds = next_bounds(bounds.take(), use_boundary, dense, masked, calib, &queue);
    }
    Ok((out, from_boundary))
}

/// The sites still to refit, in graph order: (k, (node, site, the located site or why not)).
type Queue<'a> = std::collections::VecDeque<(usize, (usize, &'a RefitSite, std::result::Result<Site, String>))>;

/// The dense and masked boundaries moved to the next site of `queue` (the dense one in the dense
/// graph, found by the layer's output), through the segment just refitted; taken from the
/// calibration inputs when `bounds` was lost. None without a next site, or when a boundary
/// cannot be taken there (the next site then runs from the inputs).
fn next_bounds(
    bounds: Option<(Boundary, Boundary)>,
    use_boundary: bool,
    dense: &ModelProto,
    masked: &ModelProto,
    calib: &Inputs,
    queue: &Queue,
) -> Option<(Boundary, Boundary)> {
    if !use_boundary {
        return None;
    }
    let next = queue.iter().find_map(|(_, (_, _, s))| s.as_ref().ok())?;
    let (d, m) = bounds.unwrap_or_else(|| (Boundary::start(calib), Boundary::start(calib)));
    let dense_cut = dense.graph.as_ref()?.node.iter().position(|n| n.output.contains(&next.output))?;
    Some((d.advance(dense, dense_cut).ok()?, m.advance(masked, next.node).ok()?))
}

/// One layer to refit, with what its normal equations need.
struct Job<'a> {
    k: usize,
    r: &'a RefitSite,
    s: Site,
    /// Kept input features (indices into the weight's rows) and kept outputs.
    feat: Vec<usize>,
    outs: Vec<usize>,
    has_bias: bool,
    /// Unknowns per output (kept features + bias) and kept outputs.
    pk: usize,
    q: usize,
}

fn job(k: usize, r: &RefitSite, s: Site) -> Result<std::result::Result<Job<'_>, LayerRecon>> {
    let per_in = match s.layout {
        Layout::Conv2d { kernel, .. } => kernel[0] * kernel[1],
        _ => 1,
    };
    let in_keep = if r.in_keep.is_empty() { vec![true; s.p / per_in.max(1)] } else { r.in_keep.clone() };
    if in_keep.len() * per_in != s.p {
        bail!("{} input positions for a weight with {} inputs", in_keep.len(), s.p);
    }
    let feat: Vec<usize> = (0..s.p).filter(|&f| in_keep[f / per_in]).collect();
    let outs = match s.layout {
        // The kept hidden units of a recurrent layer: the same ones in every gate block of each
        // direction (rows d·G·H + gate·H + unit).
        Layout::Recurrent { dirs, gh } if !r.out_keep.is_empty() && r.out_keep.len() != s.out => {
            let h = r.out_keep.len();
            if gh % h != 0 {
                bail!("{h} hidden units for {gh} gate rows per direction");
            }
            (0..dirs * gh).filter(|&o| r.out_keep[o % gh % h]).collect()
        }
        _ => r.kept_outputs(s.out)?,
    };
    let has_bias = s.bias.is_some();
    let (pk, q) = (feat.len() + has_bias as usize, outs.len());
    if q == 0 {
        return Ok(Err(LayerRecon::skipped(&s.label, &r.weight, "no kept output".into())));
    }
    Ok(Ok(Job { k, r, s, feat, outs, has_bias, pk, q }))
}

/// Refit the linear sites of one window: targets from one dense pass, inputs from one masked pass
/// (the window's layers as they are before their own refit), then each layer's solve.
/// Also says whether the runs started from `from` (the dense and masked boundaries at the
/// window's first layer; if those runs fail, the window runs from the model inputs).
fn refit_batch(
    dense: &ModelProto,
    masked: &mut ModelProto,
    pruned: &mut ModelProto,
    batch: Vec<(usize, &RefitSite, Site)>,
    calib: &Inputs,
    from: Option<&(Boundary, Boundary)>,
) -> (Vec<LayerRecon>, bool) {
    let mut out: Vec<Option<LayerRecon>> = vec![];
    let mut jobs: Vec<(usize, Job)> = vec![];
    for (k, r, s) in batch {
        let label = s.label.clone();
        match job(k, r, s) {
            Ok(Ok(j)) => {
                jobs.push((out.len(), j));
                out.push(None);
            }
            Ok(Err(rep)) => out.push(Some(rep)),
            Err(e) => out.push(Some(LayerRecon::skipped(&label, &r.weight, format!("{e:#}")))),
        }
    }
    let refs: Vec<&Job> = jobs.iter().map(|(_, j)| j).collect();
    let with = |b: Option<&(Boundary, Boundary)>| {
        targets(dense, &refs, calib, b.map(|b| &b.0))
            .and_then(|t| normal_equations(masked, &refs, t, calib, b.map(|b| &b.1)))
    };
    let (normals, used) = match from.map(|b| with(Some(b))) {
        Some(Ok(n)) => (Ok(n), true),
        _ => (with(None), false),
    };
    match normals {
        Err(e) => {
            for (i, j) in &jobs {
                out[*i] = Some(LayerRecon::skipped(&j.s.label, &j.r.weight, format!("{e:#}")));
            }
        }
        Ok(ne) => {
            for ((i, j), (fit, val)) in jobs.iter().zip(ne) {
                let rep = solve(j, fit, val, masked, pruned)
                    .unwrap_or_else(|e| LayerRecon::skipped(&j.s.label, &j.r.weight, format!("{e:#}")));
                out[*i] = Some(rep);
            }
        }
    }
    (out.into_iter().map(|r| r.expect("every site reported")).collect(), used)
}

/// Dense targets of each job at its sampled positions, per use of its weight (one, or a shared
/// weight's several), each in row order with the (row, position) keys: one dense pass for all.
type Targets = Vec<Vec<(Vec<f32>, Vec<(usize, usize)>)>>;

fn targets(dense: &ModelProto, jobs: &[&Job], calib: &Inputs, from: Option<&Boundary>) -> Result<Targets> {
    // What each use reads from the dense run: y, or x when y is internal to the node.
    fn reads(s: &Site) -> Vec<&String> {
        if s.internal {
            vec![&s.input]
        } else {
            s.uses().map(|(_, y)| y).collect()
        }
    }
    let mut values: Vec<String> = vec![];
    for y in jobs.iter().flat_map(|j| reads(&j.s)) {
        if !values.contains(y) {
            values.push(y.clone());
        }
    }
    // Index of each use's value among those exposed.
    let at: Vec<Vec<usize>> = jobs
        .iter()
        .map(|j| reads(&j.s).into_iter().map(|y| values.iter().position(|n| n == y).expect("listed")).collect())
        .collect();
    // The dense weights and biases of internal projections (out × p rows).
    let gd = dense.graph.as_ref().context("model has no graph")?;
    let internal: Vec<Option<(Vec<f64>, Vec<f64>)>> = jobs
        .iter()
        .map(|j| {
            j.s.internal
                .then(|| Ok::<_, anyhow::Error>((site::read_rows(gd, &j.s)?, site::read_bias(gd, &j.s)?)))
                .transpose()
        })
        .collect::<Result<_>>()
        .context("dense weights")?;
    let mut t: Targets = at.iter().map(|a| a.iter().map(|_| (vec![], vec![])).collect()).collect();
    run_from(from, dense, calib, &values, |row0, v| {
        for (((j, per_use), wb), at) in jobs.iter().zip(t.iter_mut()).zip(&internal).zip(&at) {
            let s = &j.s;
            for ((ys, keys), &i) in per_use.iter_mut().zip(at) {
                let y = &v[i];
                if let Some((w, b)) = wb {
                    // y = x W + b at the sampled positions, from the dense input.
                    let (npos, hw) = sample_positions(s, y.shape())?;
                    let mut z = vec![0.0; s.p];
                    for n in 0..y.shape()[0] {
                        for pos in site::sample(npos, POSITIONS_PER_SAMPLE, row_seed(j.k, row0 + n)) {
                            site::input_row(s, y, n, pos, 0, hw, &mut z);
                            ys.extend(j.outs.iter().map(|&o| {
                                let row = &w[o * s.p..(o + 1) * s.p];
                                (row.iter().zip(&z).map(|(a, x)| a * x).sum::<f64>() + b[o]) as f32
                            }));
                            keys.push((row0 + n, pos));
                        }
                    }
                    continue;
                }
                let mut buf = vec![0.0; s.out];
                for n in 0..y.shape()[0] {
                    let npos = match s.layout {
                        Layout::Conv2d { .. } => match site::spatial(y.shape()) {
                            Some([h, w]) => h * w,
                            None => bail!("{}: output is not 3-D or 4-D", s.label),
                        },
                        Layout::Gemm { .. } => 1,
                        Layout::MatMul | Layout::Recurrent { .. } => y.shape()[1..y.ndim() - 1].iter().product(),
                    };
                    for pos in site::sample(npos, POSITIONS_PER_SAMPLE, row_seed(j.k, row0 + n)) {
                        site::output_row(s, y, n, pos, 0, &mut buf);
                        // The values are tract's f32 outputs: storing them as f32 is exact.
                        ys.extend(j.outs.iter().map(|&o| buf[o] as f32));
                        keys.push((row0 + n, pos));
                    }
                }
            }
        }
        Ok(())
    })
    .context("dense run")?;
    Ok(t)
}

/// Sampled rows not yet added to a job's normal equations: z (row-major), y, count.
type Pending = (Vec<f64>, Vec<f64>, usize);

/// Add `p` to the fit (`which` = 0, f32) or held-apart (1, f64) normal equations and empty it.
fn add_pending(ne: &mut (Normal32, Normal), which: usize, p: &mut Pending, j: &Job) {
    let (zs, ys, nr) = std::mem::take(p);
    if nr == 0 {
        return;
    }
    if which == 0 {
        ne.0.add(&zs, &ys, nr);
    } else {
        ne.1.add(faer::MatRef::from_row_major_slice(&zs, nr, j.pk), faer::MatRef::from_row_major_slice(&ys, nr, j.q));
    }
}

/// The fit normal equations of one use with the bias column's sums exact, in f64 (the bias-only
/// candidate is a difference of them).
fn fit_normal(fit: Normal32, j: &Job) -> Normal {
    let (mut fit, sz, sy) = fit.into_normal();
    if j.has_bias {
        let b = j.pk - 1;
        for (f, &v) in sz.iter().enumerate() {
            fit.g[(f, b)] = v;
            fit.g[(b, f)] = v;
        }
        for (o, &v) in sy.iter().enumerate() {
            fit.c[(b, o)] = v;
        }
    }
    fit
}

/// `a` + `b`: the normal equations of both row sets.
fn merge(mut a: Normal, b: &Normal) -> Normal {
    a.g += &b.g;
    a.c += &b.c;
    a.yy += b.yy;
    a.rows += b.rows;
    a
}

/// The masked model's inputs of each job at the same positions → normal equations, split into
/// fit and held-apart rows: one masked pass for all of them. A shared weight's uses are summed
/// (one least-squares problem over all their rows), each use's sums kept apart until the end so
/// that they do not depend on how the calibration runs are chunked.
fn normal_equations(
    masked: &ModelProto,
    jobs: &[&Job],
    t: Targets,
    calib: &Inputs,
    from: Option<&Boundary>,
) -> Result<Vec<(Normal, Normal)>> {
    let mut values: Vec<String> = vec![];
    for (x, _) in jobs.iter().flat_map(|j| j.s.uses()) {
        if !values.contains(x) {
            values.push(x.clone());
        }
    }
    let mut ne: Vec<Vec<(Normal32, Normal)>> = t
        .iter()
        .zip(jobs)
        .map(|(u, j)| u.iter().map(|_| (Normal32::new(j.pk, j.q), Normal::new(j.pk, j.q))).collect())
        .collect();
    // Rows (z, y) waiting to be added, fit and held-apart, per job and use: added in products of
    // `BATCH` rows (a calibration chunk of a few samples gives a few hundred rows; one product per
    // chunk ran at half the speed), whatever the chunks, so the sums do not depend on them.
    const BATCH: usize = super::linalg::Gram32::BATCH;
    let mut pending: Vec<Vec<[Pending; 2]>> =
        t.iter().map(|u| u.iter().map(|_| Default::default()).collect()).collect();
    let mut at: Vec<Vec<usize>> = t.iter().map(|u| vec![0; u.len()]).collect();
    run_from(from, masked, calib, &values, |row0, v| {
        for (i, j) in jobs.iter().enumerate() {
            let s = &j.s;
            let q = j.q;
            let mut z = vec![0.0; s.p];
            for (u, (xn, _)) in s.uses().enumerate() {
                let (ys, keys) = &t[i][u];
                let x = &v[values.iter().position(|n| n == xn).expect("exposed")];
                let (npos, hw) = sample_positions(s, x.shape())?;
                let p = &mut pending[i][u];
                let at = &mut at[i][u];
                for n in 0..x.shape()[0] {
                    let which = is_val(row0 + n) as usize;
                    for pos in site::sample(npos, POSITIONS_PER_SAMPLE, row_seed(j.k, row0 + n)) {
                        if keys.get(*at) != Some(&(row0 + n, pos)) {
                            bail!("{}: dense and masked runs sampled different rows", s.label);
                        }
                        site::input_row(s, x, n, pos, 0, hw, &mut z);
                        let (zs, y, nr) = &mut p[which];
                        zs.extend(j.feat.iter().map(|&f| z[f]));
                        if j.has_bias {
                            zs.push(1.0);
                        }
                        y.extend(ys[*at * q..(*at + 1) * q].iter().map(|&v| v as f64));
                        *nr += 1;
                        *at += 1;
                        if *nr == BATCH {
                            add_pending(&mut ne[i][u], which, &mut p[which], j);
                        }
                    }
                }
            }
        }
        Ok(())
    })
    .context("masked run")?;
    let mut out = vec![];
    for (((uses, pend), j), (t, at)) in ne.into_iter().zip(pending.iter_mut()).zip(jobs).zip(t.iter().zip(&at)) {
        if t.iter().zip(at).any(|((_, keys), &at)| at != keys.len()) {
            bail!("{}: dense and masked runs sampled different rows", j.s.label);
        }
        let mut sum: Option<(Normal, Normal)> = None;
        for (mut n, p) in uses.into_iter().zip(pend.iter_mut()) {
            for (which, side) in p.iter_mut().enumerate() {
                add_pending(&mut n, which, side, j);
            }
            let (fit, val) = (fit_normal(n.0, j), n.1);
            sum = Some(match sum {
                None => (fit, val),
                Some((f, v)) => (merge(f, &fit), merge(v, &val)),
            });
        }
        out.push(sum.context("a site without uses")?);
    }
    Ok(out)
}

/// Choose among unchanged / bias / ridge on the held-apart rows and write the winner.
fn solve(j: &Job, fit: Normal, val: Normal, masked: &mut ModelProto, pruned: &mut ModelProto) -> Result<LayerRecon> {
    let Job { r, s, feat, outs, has_bias, pk, q, .. } = j;
    let (has_bias, pk, q) = (*has_bias, *pk, *q);
    let judge = if val.rows > 0 { &val } else { &fit };

    // 3. Candidates.
    let scale = site::weight_scale(s);
    let g = masked.graph.as_ref().context("model has no graph")?;
    let w = site::read_rows(g, s)?;
    let b = site::read_bias(g, s)?;
    let mut cur = Mat::<f64>::zeros(pk, q);
    for (j, &o) in outs.iter().enumerate() {
        for (f, &fi) in feat.iter().enumerate() {
            cur[(f, j)] = scale * w[o * s.p + fi];
        }
        if has_bias {
            cur[(pk - 1, j)] = b[o];
        }
    }
    let e0 = judge.sse(cur.as_ref());
    let mut best = (e0, "unchanged", cur.clone());
    if has_bias && fit.rows > 0 {
        let mut xb = cur.clone();
        let nf = feat.len();
        for j in 0..q {
            let pred: f64 = (0..nf).map(|f| cur[(f, j)] * fit.g[(f, pk - 1)]).sum();
            xb[(pk - 1, j)] = (fit.c[(pk - 1, j)] - pred) / fit.rows as f64;
        }
        let e = judge.sse(xb.as_ref());
        if e < best.0 {
            best = (e, "bias", xb);
        }
    }
    if fit.rows > 0 && !feat.is_empty() {
        let md = mean_diag(fit.g.as_ref().submatrix(0, 0, feat.len(), feat.len()));
        for delta in RIDGE_DELTAS {
            let mut lambda = vec![delta * md.max(1e-12); pk];
            if has_bias {
                lambda[pk - 1] = 1e-9 * md.max(1e-12);
            }
            if let Some(x) = ridge(fit.g.as_ref(), fit.c.as_ref(), &lambda) {
                let e = judge.sse(x.as_ref());
                if e < best.0 {
                    best = (e, "ridge", x);
                }
            }
        }
    }
    let (e1, method, x) = best;
    let denom = judge.yy.max(f64::MIN_POSITIVE);
    let mut rep = LayerRecon {
        layer: s.label.clone(),
        weight: r.weight.clone(),
        method: method.into(),
        rows: fit.rows + val.rows,
        err_before: e0 / denom,
        err_after: e1 / denom,
        solver: None,
        note: None,
    };
    if method == "unchanged" {
        return Ok(rep);
    }

    // 4. Write the kept values into the masked model (dense shapes) and the pruned one.
    let mut w2 = w;
    let mut b2 = b;
    if s.quant.is_some() {
        // A quantized weight is requantized from each row's largest value, so the masked model's
        // row must hold what the pruned one's does: the removed inputs' columns (multiplied by
        // zeros there, or folded into the bias) are zeroed first.
        let kept: std::collections::BTreeSet<usize> = feat.iter().copied().collect();
        for o in 0..s.out {
            for f in (0..s.p).filter(|f| !kept.contains(f)) {
                w2[o * s.p + f] = 0.0;
            }
        }
    }
    for (j, &o) in outs.iter().enumerate() {
        for (f, &fi) in feat.iter().enumerate() {
            w2[o * s.p + fi] = x[(f, j)] / scale;
        }
        if has_bias {
            b2[o] = x[(pk - 1, j)];
        }
    }
    let sp = locate(pruned, r).map_err(|e| anyhow::anyhow!("pruned model: {e}"))?;
    if sp.out != q || sp.p != feat.len() {
        bail!("pruned weight is {}×{}, expected {}×{}", sp.out, sp.p, q, feat.len());
    }
    let gm = masked.graph.as_mut().context("model has no graph")?;
    site::write_rows(gm, s, &w2)?;
    if has_bias {
        site::write_bias(gm, s, &b2)?;
    }
    let mut wp = vec![0.0; q * feat.len()];
    for j in 0..q {
        for f in 0..feat.len() {
            wp[j * feat.len() + f] = x[(f, j)] / scale;
        }
    }
    let gp = pruned.graph.as_mut().context("model has no graph")?;
    site::write_rows(gp, &sp, &wp)?;
    if has_bias {
        if sp.bias.is_none() {
            bail!("the pruned layer has no bias");
        }
        let bp: Vec<f64> = (0..q).map(|j| x[(pk - 1, j)]).collect();
        site::write_bias(gp, &sp, &bp)?;
    }
    if s.quant.is_some() {
        rep.note = Some(super::quant::REQUANTIZED.into());
    }
    Ok(rep)
}
