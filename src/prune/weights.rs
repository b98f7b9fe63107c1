//! Per-weight EMP: zero the lowest-magnitude weights of each group, in place, in the weight's
//! original dtype and encoding.
//!
//! Scopes: `unit` = each output unit's incoming weights (a Conv filter, a Gemm/MatMul column of
//! B along the output axis, an LSTM gate row), `layer` = each tensor, `global` = all candidate
//! weights together, `normalized` = all candidates together after dividing each tensor's scores
//! by their mean (so a layer whose weights are small as a whole is not starved).
//!
//! Files: `candidates` (the per-op table of weights and output units, which weights are
//! candidates), `view` (scores decoded block by block), `select` (streaming EMP: scans, moments,
//! sampled threshold with radix select as fallback, per-unit selection), `window` (the sampled
//! threshold), `raw` (the normalized scope compared on raw weights), `mark` (keep bits and their
//! sums), `zero` (accounting and zeroing in place); this file holds the options, the report types and the driver
//! (`prune_weights`, `prune_weights_mapped` for data left in mapped files).

use crate::emp;
use crate::model::graph::{self, node_label, GraphIndex, WeightRef};
use crate::model::mapped::{ExtKey, MappedData, Mask, Masks};
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

/// The CLI's defaults: EMP at β = 1 over the normalized scope, criterion |w|, nothing extra
/// included.
impl Default for WeightOptions {
    fn default() -> Self {
        WeightOptions {
            beta: 1.0,
            scope: Scope::Normalized,
            include: Include::default(),
            scores: Default::default(),
            fixed_ratio: None,
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

mod candidates;
mod mark;
mod raw;
mod raw_simd;
mod select;
mod view;
mod window;
mod zero;

use candidates::*;
pub use candidates::{candidate_names, foreign_weights, shared_with_other_readers, small_filters};
use mark::*;
use raw::*;
use raw_simd::*;
use select::*;
use view::*;
use window::*;
use zero::*;

/// Run per-weight EMP on the model in place. On error the model is left unchanged.
pub fn prune_weights(model: &mut ModelProto, opts: &WeightOptions) -> Result<WeightsReport> {
    prune_weights_mapped(model, opts, None).map(|(r, _)| r)
}

/// [`prune_weights`] on a model loaded with `io::load_mapped`: a candidate whose data is still in
/// `mapped` is scored from there and not zeroed; its keep bits are returned instead, for
/// `io::save_mapped` (and `graph::param_counts`) to apply. Decisions and report are those
/// of [`prune_weights`] on the same model read into memory.
pub fn prune_weights_mapped(
    model: &mut ModelProto,
    opts: &WeightOptions,
    mapped: Option<&MappedData>,
) -> Result<(WeightsReport, Masks)> {
    emp::check_beta(opts.beta).map_err(|e| anyhow::anyhow!("{e}"))?;
    let g = model.graph.as_mut().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    let cands = find_candidates(g, &ix, &opts.include)?;
    if cands.is_empty() {
        let inputs = crate::model::weight_inputs::count(model);
        if inputs > 0 {
            bail!(
                "no prunable weights found: the model's {inputs} weight(s) are graph inputs too, so run-time inputs \
                 (--weight-inputs input); the default, --weight-inputs constant, prunes them as weights"
            );
        }
        let g = model.graph.as_mut().context("model has no graph")?;
        let small = small_filters_in(g, &opts.include)?.len();
        if small > 0 {
            bail!("no prunable weights found: the model's {small} weight(s) have output units with fewer than {SMALL_FAN_IN} inputs, left dense by default (--include small prunes them)");
        }
        let shared = shared_with_other_readers(model, &opts.include)?;
        if !shared.is_empty() {
            let list: Vec<String> = shared.iter().map(|(n, why)| format!("'{n}' {why}")).collect();
            bail!(
                "no prunable weights found: the model's {} weight(s) are read by something besides a prunable layer \
                 too, and zeroing them would change that reader as well: {}",
                shared.len(),
                list.join("; ")
            );
        }
        let g = model.graph.as_mut().context("model has no graph")?;
        let quantized = g.node.iter().filter(|n| crate::model::qdq::dequantizes_constant(n, &ix)).count();
        if quantized > 0 {
            bail!(
                "no prunable weights found: the model's weights are quantized ({quantized} DequantizeLinear of constant \
                 tensors) and per-weight mode zeroes float weights only; --structured channels prunes quantized (QDQ) \
                 models, and with --calibration reconstructs them"
            );
        }
        bail!("no prunable weights found (Conv, ConvTranspose, Gemm, MatMul, LSTM/GRU/RNN or Attention with constant float weights)");
    }
    let mut ts = tensors_mut(g, &cands)?;
    // Where each candidate's data is when it was left in a mapped file.
    let raws: Vec<Option<(ExtKey, &[u8])>> = match mapped {
        None => vec![None; ts.len()],
        Some(m) => ts
            .iter()
            .map(|t| match m.locate(t) {
                Some(k) => m.bytes(k).map(|b| Some((k, b))).with_context(|| format!("weight '{}'", tname(t))),
                None => Ok(None),
            })
            .collect::<Result<_>>()?,
    };
    let progress = crate::progress::Work::new(cands.len() as u64);
    let w = Weights { cands: &cands, raws: &raws };
    let (reports, global) = match opts.scope {
        Scope::Global => prune_global(w, &mut ts, opts, None, &progress)?,
        Scope::Normalized => {
            let mut norm = mean_scales(w, &ts, opts);
            prune_global(w, &mut ts, opts, Some(&mut norm), &progress)?
        }
        scope => (prune_groups(w, &mut ts, opts, scope, &progress)?, None),
    };
    let (reports, masks): (Vec<TensorReport>, Vec<Deferred>) = reports.into_iter().unzip();
    let candidates_elems = reports.iter().map(|r| r.n).sum();
    let kept_elems = reports.iter().map(|r| r.kept).sum();
    let report = WeightsReport { tensors: reports, small_filters_kept: vec![], global, candidates_elems, kept_elems };
    Ok((report, masks.into_iter().flatten().collect()))
}

/// The candidates and, for those left in a mapped file, where and what their bytes are.
#[derive(Clone, Copy)]
struct Weights<'a> {
    cands: &'a [Candidate],
    raws: &'a [Option<(ExtKey, &'a [u8])>],
}

impl<'a> Weights<'a> {
    fn raw(&self, i: usize) -> Option<&'a [u8]> {
        self.raws[i].map(|r| r.1)
    }
}

/// A mapped tensor's keep bits, to apply when it is written.
type Deferred = Option<(ExtKey, Mask)>;

/// A tensor's report and, for a mapped tensor, its keep bits (None: nothing zeroed).
type Pruned = (TensorReport, Deferred);

/// Scope unit or layer: tensors in parallel. First every tensor is checked and its keep bits
/// decided (read only), then, once all succeeded, tensors are accounted and zeroed.
fn prune_groups(
    w: Weights,
    ts: &mut [&mut TensorProto],
    opts: &WeightOptions,
    scope: Scope,
    progress: &crate::progress::Work,
) -> Result<Vec<Pruned>> {
    let cands = w.cands;
    type Decided = (Vec<u64>, usize, f64, usize);
    // As before: every tensor's scores are checked before a bad --ratio is reported.
    let bad_ratio = opts.fixed_ratio.filter(|r| !(r.is_finite() && (0.0..1.0).contains(r)));
    let decided: Vec<Result<Option<Decided>>> = cands
        .par_iter()
        .zip(ts.par_iter())
        .enumerate()
        .map(|(i, (c, t))| {
            let v = make_view(c, t, w.raw(i), opts)?;
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
        .enumerate()
        .map(|(i, ((c, t), (mask, groups, ne, zero_groups)))| {
            let acc = account_and_zero(c, t, w.raw(i), opts, &mask)?;
            let n = make_view(c, t, w.raw(i), opts)?.n();
            progress.inc(1);
            Ok((
                report(c, t, n, groups, ne, zero_groups, acc),
                w.raws[i].map(|r| (r.0, Mask { bits: mask, nonzero: None })),
            ))
        })
        .collect()
}

/// Scope global: one EMP over all candidates, in passes over the weights, each in parallel over
/// work items: (1) maxima, finiteness, the blocked sums and a sample of the keys; (2) the
/// threshold: keys above the sample's bracket counted, keys inside it gathered (radix passes
/// instead when the bracket misses); (3) keep bits and retained mass (plus a counting pass when
/// only some keys equal to the threshold are kept); (4) each tensor accounted and zeroed, or its
/// keep bits returned when its data is mapped. For magnitudes whose moments need no rescaling,
/// (2) also marks the keys above the bracket and (3) is only the gathered keys' (see
/// [`raw::raw_window_mark`]). Scope normalized (`norm`: the mean pass's results): for magnitudes
/// the mean pass gives the exact cut and (1) is not run: that one window pass on the raw weights
/// finds the threshold and marks (see [`raw`]); with a score override the mean pass has the sample
/// before (1), so (1) gathers the bracket and (2) is not a pass of its own (see [`window`]).
fn prune_global(
    w: Weights,
    ts: &mut [&mut TensorProto],
    opts: &WeightOptions,
    norm: Option<&mut Norm>,
    progress: &crate::progress::Work,
) -> Result<(Vec<Pruned>, Option<GlobalDecision>)> {
    let cands = w.cands;
    // The mean pass's sample (unscaled), taken out so that it is freed once scaled.
    let (samples, norm) = match norm {
        Some(nm) => (std::mem::take(&mut nm.pre.samples), Some(&*nm)),
        None => (Vec::new(), None),
    };
    let scale = |i: usize| norm.map_or(1.0, |s| s.scales[i]);
    // Errors in candidate order, as before: a tensor that cannot be read, or a NaN/Inf score.
    let mut views = Vec::with_capacity(cands.len());
    let mut view_err = None;
    for (i, (c, t)) in cands.iter().zip(ts.iter()).enumerate() {
        match make_view(c, t, w.raw(i), opts) {
            Ok(v) => views.push(View { scale: scale(i), ..v }),
            Err(e) => {
                view_err = Some(e);
                break;
            }
        }
    }
    let n: usize = views.iter().map(|v| v.n()).sum();
    let items = chunks(&views);
    // The mean pass's work items are these when every candidate was readable.
    let pre = norm.filter(|nm| view_err.is_none() && nm.pre.totals.len() == items.len());
    // Mapped weights in their own encoding are counted by the marking (parameter counts).
    let count: Vec<bool> = views.iter().zip(w.raws).map(|(v, r)| r.is_some() && v.counts_nonzero()).collect();
    // The normalized scope in raw space (see [`raw`]) when it applies: no scan, light passes.
    let fast = match pre {
        Some(nm) => raw_plan(nm, &views, &items, n, opts).map_err(|(i, b)| non_finite_error(&cands[i], b))?,
        None => None,
    };
    if let Some(plan) = fast {
        let scales: Vec<f64> = views.iter().map(|v| v.scale).collect();
        let sample = Presums::sample(samples, &items, &scales);
        let totals = &pre.expect("planned from the mean pass").pre.totals;
        // The window pass marks as it goes; when it misses, radix select and a marking pass.
        let marked = if plan.gd.kept >= n {
            None
        } else {
            raw_window_mark(&views, &items, sample, plan.gd.kept, totals, &count)
        };
        #[cfg(test)]
        if marked.is_some() {
            raw::RAW_WINDOW_HITS[0].fetch_add(1, Ordering::Relaxed);
        }
        let marked = marked.unwrap_or_else(|| {
            let th = if plan.gd.kept >= n {
                Threshold { key: 0, ties: usize::MAX, eq: 0, eq_per_item: None }
            } else {
                radix_threshold(&views, &items, plan.gd.kept)
            };
            let budgets = tie_budgets(&views, &items, &th);
            raw_mark_items(&views, &items, (&th, &budgets), totals, &count)
        });
        let cut = gather_marked(cands.len(), &items, marked, &count);
        // Retained mass Σ_p c_p · K_p (K_p: tensor p's kept |w|), folded in tensor order.
        let retained = views.iter().zip(&cut.sums).fold(-0.0f64, |r, (v, s)| r + v.scale * s.1);
        let gd = with_retained(plan.gd, retained, plan.s1);
        drop(views);
        return global_reports(w, ts, opts, progress, (plan.per, cut), gd);
    }
    // With the sample in hand, the scan gathers the bracket of the estimated cut.
    let early = pre.and_then(|nm| early_window(nm, samples, &items, n, opts));
    let (mut sc, gathered) = match early {
        Some((sample, win)) => {
            let (sc, g) = scan_gather(&views, &items, win);
            (Scan { sample, ..sc }, Some((g, win)))
        }
        None => (scan(&views, &items), None),
    };
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
        moments_global(&views, &items, &sc, m)
    };
    let all_kept = Threshold { key: 0, ties: usize::MAX, eq: 0, eq_per_item: None };
    let (gd, th, fused) = if m == 0.0 {
        (GlobalDecision { n, n_eff: n as f64, kept: n, s_eff: 1.0 }, all_kept, None)
    } else {
        let (ne, kept) = global_kept(n, s1, s2, opts);
        // Scope global on magnitudes whose sums need no rescaling: the raw scope's window pass,
        // which marks as it goes (see [`raw`]; every scale is 1, the item totals are the scan's).
        let plain = norm.is_none()
            && emp::moment_scale(m) == 1.0
            && views.iter().all(|v| v.scale == 1.0 && !matches!(v.src, Src::Scores(_)));
        let fused = if plain && kept < n {
            let totals: Vec<f64> = sc.sums.iter().map(|t| t[0]).collect();
            raw_window_mark(&views, &items, std::mem::take(&mut sc.sample), kept, &totals, &count)
        } else {
            None
        };
        #[cfg(test)]
        if fused.is_some() {
            raw::RAW_WINDOW_HITS[1].fetch_add(1, Ordering::Relaxed);
        }
        let th = if kept >= n || fused.is_some() {
            all_kept
        } else {
            let early = gathered.as_ref().and_then(|(g, win)| window_select(g, kept, *win));
            #[cfg(test)]
            if early.is_some() {
                EARLY_HITS.fetch_add(1, Ordering::Relaxed);
            }
            early.unwrap_or_else(|| threshold(&views, &items, &sc, kept))
        };
        (GlobalDecision { n, n_eff: ne, kept, s_eff: 1.0 }, th, fused)
    };
    drop((sc, gathered));
    // Each item's block total of the unscaled scores as given (signed for a score override):
    // already summed by `mean_scales` in the normalized scope (the same items when every
    // candidate was readable; otherwise the run stopped above), summed by the marking otherwise.
    let totals = pre.map(|nm| nm.pre.totals.as_slice());
    // Keep bits and sums of every item in parallel, then each tensor zeroed in parallel.
    let (cut, retained) = if m == 0.0 {
        let none = Marks {
            masks: vec![None; cands.len()],
            sums: vec![(-0.0, -0.0); cands.len()],
            nonzero: vec![None; cands.len()],
        };
        (none, 0.0)
    } else if let Some(marked) = fused {
        // Moments unscaled and every scale 1: the retained mass is the kept |s|.
        let retained = marked.iter().fold(-0.0f64, |r, k| r + k.kept_mass);
        (gather_marked(cands.len(), &items, marked, &count), retained)
    } else {
        let budgets = tie_budgets(&views, &items, &th);
        let msum = (emp::moment_scale(m), totals);
        let marked = mark_items(&views, &items, (&th, &budgets), Some(msum), &count);
        let retained = marked.iter().fold(-0.0f64, |r, k| r + k.retained);
        (gather_marked(cands.len(), &items, marked, &count), retained)
    };
    drop(views);
    // All zero (m = 0) is all kept too.
    let gd = with_retained(gd, retained, s1);
    global_reports(w, ts, opts, progress, (per, cut), gd)
}

/// The decision with its retained fraction (`retained` of `s1`); all kept: 1, as decided.
fn with_retained(gd: GlobalDecision, retained: f64, s1: f64) -> GlobalDecision {
    if gd.kept >= gd.n {
        gd
    } else {
        GlobalDecision { s_eff: (retained / s1).min(1.0), ..gd }
    }
}

/// Every tensor's keep bits (None: kept whole), and its sums (Σ s, Σ kept s) and nonzero counts.
struct Marks {
    masks: Vec<Option<Vec<u64>>>,
    sums: Vec<(f64, f64)>,
    nonzero: Vec<Option<(u64, u64)>>,
}

/// [`Marks`] from the items' marking.
fn gather_marked(n_parts: usize, items: &[(usize, usize, usize)], marked: Vec<Marked>, count: &[bool]) -> Marks {
    let mut sums = vec![(-0.0f64, -0.0f64); n_parts];
    let mut nonzero: Vec<Option<(u64, u64)>> = count.iter().map(|&c| c.then_some((0, 0))).collect();
    for (&(p, _, _), k) in items.iter().zip(&marked) {
        sums[p].0 += k.total;
        sums[p].1 += k.kept_mass;
        if let Some(nz) = &mut nonzero[p] {
            nz.0 += k.nonzero.0;
            nz.1 += k.nonzero.1;
        }
    }
    Marks { masks: part_masks(n_parts, items, marked).into_iter().map(Some).collect(), sums, nonzero }
}

/// The global cut's tail: each tensor accounted and zeroed (or its keep bits returned when its
/// data is mapped) in parallel, with its report (`per`: its moments for its own N_eff).
fn global_reports(
    w: Weights,
    ts: &mut [&mut TensorProto],
    opts: &WeightOptions,
    progress: &crate::progress::Work,
    (per, cut): (PartSums, Marks),
    gd: GlobalDecision,
) -> Result<(Vec<Pruned>, Option<GlobalDecision>)> {
    let cands = w.cands;
    let Marks { masks, sums, nonzero } = cut;
    let reports: Vec<Result<Pruned>> = cands
        .par_iter()
        .zip(ts.par_iter_mut())
        .zip(masks.into_par_iter().zip(per.par_iter().zip(sums.par_iter())))
        .enumerate()
        .map(|(i, ((c, t), (mask, (&(t1, t2), &(total, kept_mass)))))| {
            let nonzero = nonzero[i];
            let t: &mut TensorProto = t;
            let raw = w.raw(i);
            let nt = make_view(c, t, raw, opts)?.n();
            let n_eff = emp::n_eff_from_moments(nt, t1, t2).unwrap_or(nt as f64);
            let mut deferred = None;
            let acc = match mask {
                // all kept: nothing to zero; Σ kept s = Σ s
                None => make_view(c, t, raw, opts).map(account_only)?,
                Some(mask) => {
                    let acc = (zero::mask_count(&mask, nt), total, kept_mass);
                    match w.raws[i] {
                        Some((key, _)) => deferred = Some((key, Mask { bits: mask, nonzero })),
                        None => zero_masked(t, &mask, 0, nt).with_context(|| format!("zeroing '{}'", tname(t)))?,
                    }
                    acc
                }
            };
            progress.inc(1);
            Ok((report(c, t, nt, 1, n_eff, 0, acc), deferred))
        })
        .collect();
    let reports = reports.into_iter().collect::<Result<Vec<_>>>()?;
    Ok((reports, Some(gd)))
}

/// The normalized scope's first pass: per candidate 1 / mean score (see `norm_scale`), and the
/// pass's per-item results (see [`window::Presums`]: block totals, which the marking pass reports
/// as each tensor's Σ s, and the sample that places the threshold's window).
struct Norm {
    scales: Vec<f64>,
    /// Per readable candidate: its Σ s (the item totals folded in order), whose mean gave its scale.
    sums: Vec<f64>,
    pre: Presums,
}

/// [`Norm`] in one parallel pass (work items of `chunks` over the readable candidates). A tensor
/// that cannot be read or holds NaN/Inf gets scale 1 here; `prune_global` reports the error.
fn mean_scales(w: Weights, ts: &[&mut TensorProto], opts: &WeightOptions) -> Norm {
    let views: Vec<Option<View>> =
        w.cands.iter().zip(ts.iter()).enumerate().map(|(i, (c, t))| make_view(c, t, w.raw(i), opts).ok()).collect();
    let readable: Vec<View> = views.iter().flatten().copied().collect();
    let items = chunks(&readable);
    let pre = presums(&readable, &items);
    let mut sums = vec![-0.0f64; readable.len()];
    for (&(p, _, _), b) in items.iter().zip(&pre.totals) {
        sums[p] += b;
    }
    let mut it = sums.iter();
    let scales =
        views.iter().map(|v| v.map_or(1.0, |v| norm_scale(*it.next().expect("one sum per view"), v.n()))).collect();
    Norm { scales, sums, pre }
}

/// The normalized scope's sample of the scaled keys and the window that holds the kept-th key
/// of the cut its estimated moments give, give or take a few ranks (None: no estimate, or the
/// window would be too wide).
fn early_window(
    nm: &Norm,
    samples: Vec<Vec<f64>>,
    items: &[(usize, usize, usize)],
    n: usize,
    opts: &WeightOptions,
) -> Option<(Vec<u64>, Window)> {
    let (s1, s2) = nm.pre.moments_estimate(items, &nm.scales);
    emp::n_eff_from_moments(n, s1, s2)?;
    let (_, kept) = global_kept(n, s1, s2, opts);
    let mut sample = Presums::sample(samples, items, &nm.scales);
    // The estimate is within a few ranks of the exact cut: its sums differ from the blocked sums
    // in their last bits (relative 1e-13 at most on N_eff; the slack allows 1e-6).
    let slack = if opts.fixed_ratio.is_some() { 0 } else { 4 + kept / (1 << 20) };
    let win = window_bounds(n, &mut sample, kept.saturating_sub(slack).max(1), (kept + slack).min(n))?;
    Some((sample, win))
}

/// Cuts whose threshold came from the early window (tests check that they exercise it).
#[cfg(test)]
static EARLY_HITS: AtomicUsize = AtomicUsize::new(0);

/// (N_eff, kept) of the global cut over `n` scores with moments `s1`, `s2`.
fn global_kept(n: usize, s1: f64, s2: f64, opts: &WeightOptions) -> (f64, usize) {
    let ne = emp::n_eff_from_moments(n, s1, s2).unwrap_or(n as f64);
    let kept = match opts.fixed_ratio {
        Some(r) => (n - ((r * n as f64).round() as usize).min(n)).max(1),
        None => emp::keep_count(n, ne, opts.beta),
    };
    (ne, kept)
}

/// (kept, Σ s, Σ kept s) of a tensor kept whole (blocked sums).
fn account_only(v: View) -> (usize, f64, f64) {
    let items = chunks(std::slice::from_ref(&v));
    let total = block_sums(&[v], &items).iter().fold(-0.0f64, |s, b| s + b);
    (v.n(), total, total)
}

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests;
