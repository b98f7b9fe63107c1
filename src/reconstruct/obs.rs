//! Per-weight mode: the OBS / SparseGPT update of every pruned layer with EMP's mask.
//!
//! For each pruned weight, in graph order: collect H = Σ z zᵀ of the layer's inputs in the
//! current model (earlier layers already updated), per Conv group; start from the dense
//! weights, zero what EMP zeroed and move the error onto the kept weights of the same row
//! ([`super::obs_factor::obs_update`]). The mask, and so the sparsity, is exactly EMP's.
//! LSTM / RNN weights go to [`super::recurrent`] (W and R of one node together).

use super::boundary::Boundary;
use super::obs_factor::{obs_update, Solver};
use super::refit::sample_positions;
use super::site::{self, Layout};
use super::{LayerRecon, OBS_DAMP};
use crate::check::Inputs;
use anyhow::{Context, Result};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use onnx_protobuf::ModelProto;

#[allow(clippy::large_enum_variant)]
enum Layer {
    Linear(std::result::Result<site::Site, String>),
    /// An LSTM / RNN node: W and R are updated together.
    Recurrent(usize),
}

impl Layer {
    fn input(&self) -> Option<&str> {
        match self {
            Layer::Linear(Ok(s)) => Some(&s.input),
            _ => None,
        }
    }
}

/// Update every weight of `weights` that `model` has pruned (zeros where `dense` has none).
pub fn obs_all(
    dense: &ModelProto,
    model: &mut ModelProto,
    weights: &[String],
    calib: &Inputs,
) -> Result<Vec<LayerRecon>> {
    let blockwise = weight_elems(dense) >= BLOCKWISE_MIN_WEIGHTS;
    obs_all_with(dense, model, weights, calib, blockwise, true).map(|r| r.0)
}

/// [`obs_all`] with the block-wise choice given, and (block-wise) with or without the boundary
/// cache. Also returns how many windows ran from a cached boundary.
pub(crate) fn obs_all_with(
    dense: &ModelProto,
    model: &mut ModelProto,
    weights: &[String],
    calib: &Inputs,
    blockwise: bool,
    use_boundary: bool,
) -> Result<(Vec<LayerRecon>, usize)> {
    let mut seen = std::collections::BTreeSet::new();
    let mut order: Vec<(usize, String, Layer)> = vec![];
    for w in weights {
        if let Some(ni) = super::recurrent::recurrent_user(model, w) {
            if seen.insert(ni) {
                order.push((ni, w.clone(), Layer::Recurrent(ni)));
            }
            continue;
        }
        let s = site::find_shared(model, w);
        order.push((s.as_ref().map(|s| s.node).unwrap_or(usize::MAX), w.clone(), Layer::Linear(s)));
    }
    order.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let progress = crate::progress::Work::new(order.len() as u64);
    let window = if blockwise { window_inputs(&order.iter().map(|o| &o.2).collect::<Vec<_>>()) } else { 1 };
    // Each window (or layer) runs from the activations cached at its first layer (see
    // [`Boundary`]); without one (not cacheable, or after a failure) from the model's inputs.
    let mut boundary = use_boundary.then(|| Boundary::start(calib));
    // Layer by layer, the dense model's boundary at the last layer whose targets were computed.
    let mut dense_at = (use_boundary && window == 1).then(|| Boundary::start(calib));
    let mut from_boundary = 0usize;
    let mut out = vec![];
    let mut shared: Option<Shared> = None;
    let mut cache: std::collections::BTreeMap<usize, super::target::Targets> = Default::default();
    let mut order: std::collections::VecDeque<(usize, String, Layer)> = order.into_iter().collect();
    let mut k = 0usize;
    while let Some((_, w, layer)) = order.pop_front() {
        let rep = match layer {
            Layer::Linear(Err(why)) => Some(LayerRecon::skipped(&w, &w, why)),
            Layer::Linear(Ok(s)) if window > 1 => {
                // This site and the Linear sites after it, up to `window` distinct inputs: one
                // calibration pass for all of them.
                let mut sites = vec![(k, w, s)];
                let mut inputs: Vec<String> = vec![sites[0].2.input.clone()];
                while let Some((_, _, Layer::Linear(Ok(next)))) = order.front() {
                    if !inputs.contains(&next.input) {
                        if inputs.len() == window {
                            break;
                        }
                        inputs.push(next.input.clone());
                    }
                    let Some((_, w, Layer::Linear(Ok(s)))) = order.pop_front() else { unreachable!() };
                    k += 1;
                    sites.push((k, w, s));
                }
                let n = sites.len() as u64;
                let (reps, cached) = obs_window(dense, model, &sites, calib, boundary.as_ref());
                from_boundary += cached as usize;
                out.extend(reps.into_iter().flatten());
                progress.inc(n);
                k += 1;
                shared = None;
                boundary = next_boundary(boundary.take(), use_boundary, model, calib, &order);
                continue;
            }
            // A weight several nodes apply: plain OBS (SparseGPT) on the sum of its uses' H.
            Layer::Linear(Ok(s)) if !s.also.is_empty() => {
                obs_layer(k, dense, model, &s, calib, &mut shared, boundary.as_ref())
                    .unwrap_or_else(|e| Some(LayerRecon::skipped(&s.label, &w, format!("{e:#}"))))
            }
            // Layer by layer: OBS aimed at the dense outputs; plain OBS (SparseGPT) when the
            // layer's targets do not fit in memory or its runs fail.
            Layer::Linear(Ok(s)) => match super::target::obs_to_dense(
                k,
                dense,
                model,
                &s,
                calib,
                prefetched(&mut cache, k, &s, &order, dense, calib, &mut dense_at),
                boundary.as_ref(),
            ) {
                Ok(r) => {
                    shared = None;
                    r
                }
                Err(_) => match obs_layer(k, dense, model, &s, calib, &mut shared, boundary.as_ref()) {
                    Ok(r) => r,
                    Err(e) => Some(LayerRecon::skipped(&s.label, &w, format!("{e:#}"))),
                },
            },
            Layer::Recurrent(ni) => match super::recurrent::obs_recurrent(k, dense, model, ni, calib) {
                Ok(r) => r,
                Err(e) => {
                    let label = model
                        .graph
                        .as_ref()
                        .map(|g| format!("{} {}", g.node[ni].op_type, crate::model::graph::node_label(&g.node[ni])))
                        .unwrap_or_default();
                    Some(LayerRecon::skipped(&label, &w, format!("{e:#}")))
                }
            },
        };
        out.extend(rep);
        progress.inc(1);
        k += 1;
        boundary = next_boundary(boundary.take(), use_boundary, model, calib, &order);
    }
    Ok((out, from_boundary))
}

/// The boundary moved to the next layer of `order`, through the segment just updated; taken from
/// the calibration inputs when `boundary` was lost. None when the next layer is recurrent (it
/// runs from the inputs, and the layers after it must see it updated) or there is none, or when
/// a boundary cannot be taken there.
fn next_boundary(
    boundary: Option<Boundary>,
    use_boundary: bool,
    model: &ModelProto,
    calib: &Inputs,
    order: &std::collections::VecDeque<(usize, String, Layer)>,
) -> Option<Boundary> {
    if !use_boundary {
        return None;
    }
    // Layers that are skipped leave the model as it is: the boundary can move past them.
    let next = order.iter().find_map(|(_, _, l)| match l {
        Layer::Linear(Err(_)) => None,
        Layer::Linear(Ok(s)) => Some(Some(s.node)),
        Layer::Recurrent(_) => Some(None),
    })??;
    boundary.unwrap_or_else(|| Boundary::start(calib)).advance(model, next).ok()
}

/// The dense targets of layer `k` (site `s`, the next to reconstruct; `order` the ones after it,
/// numbered k + 1, k + 2, …). On a miss, one dense pass computes them for `s` and the following
/// linear layers while their targets fit in [`super::target::MAX_TARGET_ELEMS`] together; None
/// when that pass fails (the layer then runs its own). The pass runs from `dense_at`, the dense
/// model's boundary, moved to `s` first (taken again from the inputs if it was lost; without one,
/// from the inputs).
fn prefetched(
    cache: &mut std::collections::BTreeMap<usize, super::target::Targets>,
    k: usize,
    s: &site::Site,
    order: &std::collections::VecDeque<(usize, String, Layer)>,
    dense: &ModelProto,
    calib: &Inputs,
    dense_at: &mut Option<Boundary>,
) -> Option<super::target::Targets> {
    if let Some(t) = cache.remove(&k) {
        return Some(t);
    }
    let mut budget = super::target::MAX_TARGET_ELEMS.checked_sub(super::target::target_bound(s, calib))?;
    let mut sites: Vec<(usize, &site::Site)> = vec![(k, s)];
    for (i, (_, _, l)) in order.iter().enumerate() {
        let Layer::Linear(Ok(next)) = l else { break };
        if !next.also.is_empty() {
            break;
        }
        let need = super::target::target_bound(next, calib);
        if need > budget {
            break;
        }
        budget -= need;
        sites.push((k + 1 + i, next));
    }
    if let Some(b) = dense_at.take() {
        let cut = dense.graph.as_ref().and_then(|g| g.node.iter().position(|n| n.output.contains(&s.output)));
        *dense_at = Some(cut.and_then(|c| b.advance(dense, c).ok()).unwrap_or_else(|| Boundary::start(calib)));
    }
    let mut all = match dense_at.as_ref().map(|b| super::target::dense_targets(dense, calib, &sites, Some(b))) {
        Some(Ok(t)) => t,
        _ => super::target::dense_targets(dense, calib, &sites, None).ok()?,
    }
    .into_iter();
    let first = all.next();
    for ((kk, _), t) in sites[1..].iter().zip(all) {
        cache.insert(*kk, t);
    }
    first
}

/// Models with at least this many float weight elements (16 MB of float32) are reconstructed
/// block-wise, as SparseGPT does per transformer block: one calibration pass collects the
/// inputs of several consecutive layers at once, computed with those layers' dense weights on
/// the output of the already-reconstructed layers before them, starting from the activations
/// cached at the window's first layer ([`Boundary`]). Smaller models go strictly layer by layer
/// (each layer sees every earlier layer reconstructed), each layer's pass also from the boundary
/// cached at it.
pub const BLOCKWISE_MIN_WEIGHTS: u64 = 4 << 20;

pub(crate) fn weight_elems(m: &ModelProto) -> u64 {
    let mut n = 0u64;
    if let Some(g) = m.graph.as_ref() {
        for t in &g.initializer {
            if crate::model::tensor::is_float(t.data_type) {
                n += t.dims.iter().map(|&d| d.max(0) as u64).product::<u64>();
            }
        }
    }
    n
}

/// Distinct layer inputs per calibration pass in block-wise mode: ⌈√(distinct inputs)⌉, so a
/// model of L layers costs about √L passes over a growing prefix instead of L (a 4-block
/// encoder: 16 distinct inputs, one pass per block).
fn window_inputs(layers: &[&Layer]) -> usize {
    let mut seen = std::collections::BTreeSet::new();
    for l in layers {
        if let Some(i) = l.input() {
            seen.insert(i.to_string());
        }
    }
    ((seen.len() as f64).sqrt().ceil() as usize).max(1)
}

/// H per group of a layer, from its inputs in `model` at sampled positions.
fn hessians(
    k: usize,
    model: &ModelProto,
    s: &site::Site,
    calib: &Inputs,
    from: Option<&Boundary>,
) -> Result<(Vec<Mat<f64>>, usize)> {
    let mut v = match from.map(|b| hessians_multi(model, &[(k, s)], calib, Some(b))) {
        Some(Ok(v)) => v,
        _ => hessians_multi(model, &[(k, s)], calib, None)?,
    };
    Ok(v.pop().expect("one site"))
}

/// [`hessians`] of several layers from one calibration pass. Layers that read the same value
/// with the same layout share one H (computed with the first one's position sample). A weight
/// several nodes apply ([`site::Site::also`]) gets the sum of its uses' H, each use's summed
/// apart first so that the sums do not depend on how the calibration runs are chunked.
fn hessians_multi(
    model: &ModelProto,
    sites: &[(usize, &site::Site)],
    calib: &Inputs,
    from: Option<&Boundary>,
) -> Result<Vec<(Vec<Mat<f64>>, usize)>> {
    // The distinct (input, layout, p) keys and, per site, its key.
    let mut keys: Vec<(usize, &site::Site)> = vec![];
    let mut key_of = vec![];
    for &(k, s) in sites {
        let same = |(_, t): &(usize, &site::Site)| {
            t.input == s.input && t.also == s.also && t.layout == s.layout && t.p == s.p
        };
        match keys.iter().position(same) {
            Some(i) => key_of.push(i),
            None => {
                key_of.push(keys.len());
                keys.push((k, s));
            }
        }
    }
    let mut values: Vec<String> = vec![];
    for (x, _) in keys.iter().flat_map(|(_, s)| s.uses()) {
        if !values.contains(x) {
            values.push(x.clone());
        }
    }
    // Per key, per use, per group.
    let mut acc: Vec<Vec<Vec<super::linalg::Gram32>>> = keys
        .iter()
        .map(|(_, s)| {
            s.uses().map(|_| (0..site::groups(s)).map(|_| super::linalg::Gram32::new(s.p)).collect()).collect()
        })
        .collect();
    let label = keys.iter().map(|(_, s)| s.label.as_str()).collect::<Vec<_>>().join(", ");
    let each = |row0: usize, v: &[ndarray::ArrayD<f32>]| -> Result<()> {
        for ((k, s), per_use) in keys.iter().zip(acc.iter_mut()) {
            for ((xn, _), hs) in s.uses().zip(per_use.iter_mut()) {
                let x = &v[values.iter().position(|n| n == xn).expect("exposed")];
                let (npos, hw) = sample_positions(s, x.shape())?;
                for (g, h) in hs.iter_mut().enumerate() {
                    site::each_input_row(s, x, *k, row0, g, (npos, super::POSITIONS_PER_SAMPLE), hw, |_, z| {
                        h.add_row(z);
                        Ok(())
                    })?;
                }
            }
        }
        Ok(())
    };
    super::boundary::run_from(from, model, calib, &values, each)
        .with_context(|| format!("{label}: calibration run"))?;
    let mut done: Vec<Option<(Vec<Mat<f64>>, usize)>> = acc
        .into_iter()
        .map(|per_use| {
            let mut sum: Option<(Vec<Mat<f64>>, usize)> = None;
            for hs in per_use {
                let rows = hs.first().map_or(0, |h| h.rows());
                let hs: Vec<Mat<f64>> = hs.into_iter().map(|h| h.finish()).collect();
                sum = Some(match sum {
                    None => (hs, rows),
                    Some((mut acc, n)) => {
                        acc.iter_mut().zip(&hs).for_each(|(a, h)| *a += h);
                        (acc, n + rows)
                    }
                });
            }
            sum
        })
        .collect();
    // Sites sharing a key share its H (cloned for all but the last).
    let uses: Vec<usize> = (0..done.len()).map(|i| key_of.iter().filter(|&&k| k == i).count()).collect();
    let mut seen = vec![0usize; done.len()];
    Ok(key_of
        .into_iter()
        .map(|i| {
            seen[i] += 1;
            if seen[i] == uses[i] {
                done[i].take().expect("H of the key")
            } else {
                done[i].clone().expect("H of the key")
            }
        })
        .collect())
}

/// Block-wise: H of every site of the window from one pass over `model` with the window's
/// weights dense, then the OBS update of each. A site whose update fails is reported skipped.
/// Also says whether H came from a run from `from` (the cached boundary at the window's first
/// layer; when that run fails, the window runs from the model's inputs).
fn obs_window(
    dense: &ModelProto,
    model: &mut ModelProto,
    sites: &[(usize, String, site::Site)],
    calib: &Inputs,
    from: Option<&Boundary>,
) -> (Vec<Option<LayerRecon>>, bool) {
    let skipped = |s: &site::Site, w: &str, e: anyhow::Error| Some(LayerRecon::skipped(&s.label, w, format!("{e:#}")));
    // (site, dense rows, current rows, keep), or the reason it is not updated.
    let mut prepared = vec![];
    let mut capture = model.clone();
    for (_, w, s) in sites {
        let r = prepare(dense, model, s).and_then(|p| {
            if let Some(p) = &p {
                site::write_rows(capture.graph.as_mut().context("model has no graph")?, s, &p.w_dense)?;
            }
            Ok(p)
        });
        prepared.push(r.map_err(|e| skipped(s, w, e)));
    }
    let todo: Vec<(usize, &site::Site)> =
        sites.iter().zip(&prepared).filter(|(_, p)| matches!(p, Ok(Some(_)))).map(|((k, _, s), _)| (*k, s)).collect();
    let cached = from.map(|b| hessians_multi(&capture, &todo, calib, Some(b)));
    let used_cache = matches!(cached, Some(Ok(_)));
    let hs = match cached {
        Some(Ok(h)) => Ok(h),
        _ => hessians_multi(&capture, &todo, calib, None),
    };
    let mut hs = match hs {
        Ok(h) => h.into_iter(),
        Err(e) => {
            let msg = format!("{e:#}");
            let reps = sites
                .iter()
                .zip(prepared)
                .map(|((_, w, s), p)| match p {
                    Ok(Some(_)) => Some(LayerRecon::skipped(&s.label, w, msg.clone())),
                    Ok(None) => None,
                    Err(r) => r,
                })
                .collect();
            return (reps, false);
        }
    };
    drop(capture);
    let reps = sites
        .iter()
        .zip(prepared)
        .map(|((_, w, s), p)| match p {
            Ok(Some(Prepared { w_dense, w_cur, keep })) => {
                let (h, rows) = hs.next().expect("one H per prepared site");
                update(model, s, w_dense, w_cur, keep, &h, rows).unwrap_or_else(|e| skipped(s, w, e))
            }
            Ok(None) => None,
            Err(r) => r,
        })
        .collect();
    (reps, used_cache)
}

/// Σ_o Δ_o H Δ_oᵀ for each of three weight changes Δ (row-major, `n` rows of p): the squared
/// output error of each on inputs with second moment H. One multithreaded f32 product H·[Δ₁;Δ₂;Δ₃]ᵀ
/// (H was accumulated in f32; these errors decide and report, they feed no weight), then
/// Σ Δ ⊙ (H·Δᵀ)ᵀ in f64 in a fixed order (deterministic). A naive loop over H was 70 % of a
/// 100 MB model's reconstruction time, three f64 products 20 %.
pub(crate) fn quads(ds: [&[f64]; 3], p: usize, n: usize, h: &Mat<f64>) -> [f64; 3] {
    if n == 0 || p == 0 {
        return [0.0; 3];
    }
    let h32 = Mat::<f32>::from_fn(p, p, |i, j| h[(i, j)] as f32);
    let stacked = Mat::<f32>::from_fn(3 * n, p, |r, j| ds[r / n][(r % n) * p + j] as f32);
    // H·Dᵀ (p × 3n, column-major): column r is contiguous.
    let mut hd = Mat::<f32>::zeros(p, 3 * n);
    matmul(hd.as_mut(), Accum::Replace, h32.as_ref(), stacked.transpose(), 1.0, Par::rayon(0));
    let mut e = [0.0f64; 3];
    for (k, d) in ds.iter().enumerate() {
        for o in 0..n {
            let col = hd.col(k * n + o);
            let r = &d[o * p..(o + 1) * p];
            e[k] += r.iter().enumerate().map(|(j, v)| v * col[j] as f64).sum::<f64>();
        }
    }
    e
}

/// H of the last Gemm/MatMul layer, reused by the next one that reads the same value with the
/// same width (Q, K and V projections of one attention block): the layers in between are
/// downstream of that value (graph order), so their updates cannot change it.
pub(crate) struct Shared {
    input: String,
    p: usize,
    hs: Vec<Mat<f64>>,
    rows: usize,
}

/// A pruned layer's dense and current rows, and which weights EMP kept.
struct Prepared {
    w_dense: Vec<f64>,
    w_cur: Vec<f64>,
    keep: Vec<bool>,
}

/// The rows of site `s` in `dense` and `model`; None when nothing of it was pruned.
fn prepare(dense: &ModelProto, model: &ModelProto, s: &site::Site) -> Result<Option<Prepared>> {
    let w_dense = site::read_rows(dense.graph.as_ref().context("model has no graph")?, s).context("dense weight")?;
    let w_cur = site::read_rows(model.graph.as_ref().context("model has no graph")?, s)?;
    if w_dense.len() != w_cur.len() {
        anyhow::bail!("dense and pruned weights differ in size");
    }
    let keep: Vec<bool> = w_cur.iter().map(|v| *v != 0.0).collect();
    if keep.iter().all(|k| *k) {
        return Ok(None);
    }
    if let Layout::Conv2d { group, .. } = s.layout {
        if !s.out.is_multiple_of(group) {
            anyhow::bail!("{} outputs do not split into {group} groups", s.out);
        }
    }
    Ok(Some(Prepared { w_dense, w_cur, keep }))
}

pub(crate) fn obs_layer(
    k: usize,
    dense: &ModelProto,
    model: &mut ModelProto,
    s: &site::Site,
    calib: &Inputs,
    shared: &mut Option<Shared>,
    from: Option<&Boundary>,
) -> Result<Option<LayerRecon>> {
    let Some(Prepared { w_dense, w_cur, keep }) = prepare(dense, model, s)? else { return Ok(None) };
    // Consecutive layers reading the same value share H (not a shared weight's: its H sums uses).
    let row_input =
        matches!(s.layout, Layout::Gemm { .. } | Layout::MatMul | Layout::Recurrent { .. }) && s.also.is_empty();
    let cached = shared.take().filter(|c| row_input && c.input == s.input && c.p == s.p);
    let (hs, rows) = match cached {
        Some(c) => (c.hs, c.rows),
        None => hessians(k, model, s, calib, from)?,
    };
    let result = update(model, s, w_dense, w_cur, keep, &hs, rows);
    if row_input {
        *shared = Some(Shared { input: s.input.clone(), p: s.p, hs, rows });
    }
    result
}

fn update(
    model: &mut ModelProto,
    s: &site::Site,
    w_dense: Vec<f64>,
    w_cur: Vec<f64>,
    keep: Vec<bool>,
    hs: &[Mat<f64>],
    rows: usize,
) -> Result<Option<LayerRecon>> {
    let groups = hs.len();
    let og = s.out / groups;
    let mut w_new = w_dense.clone();
    let (mut before, mut after, mut total) = (0.0, 0.0, 0.0);
    let mut solvers = vec![];
    for (g, h) in hs.iter().enumerate() {
        let (lo, hi) = (g * og * s.p, (g + 1) * og * s.p);
        solvers.extend(obs_update(&mut w_new[lo..hi], og, s.p, &keep[lo..hi], h.as_ref(), OBS_DAMP));
        let d0: Vec<f64> = (lo..hi).map(|i| w_dense[i] - w_cur[i]).collect();
        let d1: Vec<f64> = (lo..hi).map(|i| w_dense[i] - w_new[i]).collect();
        let [b, a, t] = quads([&d0, &d1, &w_dense[lo..hi]], s.p, og, h);
        (before, after, total) = (before + b, after + a, total + t);
    }
    let rep = LayerRecon::obs(s.label.clone(), s.weight.clone(), rows, [before, after, total], Solver::name(solvers));
    if rep.method != "obs" {
        return Ok(Some(rep));
    }
    let gm = model.graph.as_mut().context("model has no graph")?;
    site::write_rows(gm, s, &w_new)?;
    Ok(Some(rep))
}
