//! One prune pass of a run (contract): the mode's pruning of one model — per weight, or the
//! structural stages in order — behind the fidelity guard when the run is one it guards, then
//! reconstructed from calibration data when given. It decides and rewrites; it proves nothing
//! (the stages' masked models go to the staging folder, or stay in memory, for `run` to prove).
//!
//! [`run`](super::run) makes one pass, or two when a default run with `--calibration` (β not
//! given, verification on) is still further from dense than the guard's tolerance after
//! reconstruction: the second pass is guarded (its β chosen on the calibration rows) and
//! reconstructed again ([`held_out_error`] says how far a pass is).

use super::guard::{guarded_prune, guarded_structural, Recon};
use super::stages::{masked_out, structural, with_activations};
use super::{arg_name, ms, CriterionArg, Mode, RunOptions, ScopeArg, DEFAULT_WANDA_SCOPE, DEFAULT_WEIGHT_SCOPE};
use crate::check::guard::GuardReport;
use crate::check::Inputs;
use crate::model::io::SaveOptions;
use crate::model::mapped::{MappedData, Masks};
use crate::progress;
use crate::prune::weights::{self, Scope, WeightOptions, WeightsReport};
use crate::prune::{Criterion, GroupReport, MaskedOut, StructOptions, StructScope};
use crate::reconstruct::ReconReport;
use anyhow::{bail, Context, Result};
use onnx_protobuf::ModelProto;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a pass reads besides its model.
#[derive(Clone, Copy)]
pub(super) struct PassCtx<'a> {
    pub o: &'a RunOptions,
    /// Calibration data (criteria, the guard's rows).
    pub calib: Option<&'a Inputs>,
    /// Calibration data when the run reconstructs.
    pub recon: Option<&'a Inputs>,
    pub mapped: Option<&'a MappedData>,
    /// The staging folder (not in a plan): masked models a stage is done with go there. `None`
    /// keeps them in memory (a held run's trial passes, so that a trial that is not taken does
    /// not overwrite the files of the pass that is).
    pub staging: Option<&'a Path>,
    pub masked_opts: &'a SaveOptions,
    /// Time spent reconstructing, accumulated over passes.
    pub t_recon: &'a Cell<f64>,
}

impl PassCtx<'_> {
    fn masked_path(&self, i: usize) -> Option<PathBuf> {
        self.staging.map(|d| d.join(format!("masked-{i}.onnx")))
    }
}

/// What a pass did: the pruned model and everything the report says about it.
pub(super) struct Pass {
    pub pruned: ModelProto,
    /// The β written (the guard's when it chose one).
    pub beta: f64,
    pub notes: Vec<String>,
    /// Keep bits of tensors left in mapped files.
    pub masks: Masks,
    pub guard: Option<GuardReport>,
    pub reconstruction: Option<ReconReport>,
    pub weights: Option<WeightsReport>,
    pub groups: Vec<GroupReport>,
    /// (stage, masked, pruned) to prove, in order. The last stage's pruned model is the output
    /// itself (None): it is proved from the staged output file, not from a second copy. A masked
    /// model is written to the staging folder as soon as reconstruction no longer needs it (None
    /// here), so that it does not share memory with the pruned one.
    pub stages: Vec<(String, Option<ModelProto>, Option<ModelProto>)>,
    pub scope: String,
    pub criterion: String,
}

/// Prune `m0` as `cx.o` asks. `guard_recon`: the guard judges the cut even though the run
/// reconstructs (the second pass of a held calibrated default run). `given_dense`: a copy of
/// `m0` the caller keeps anyway (a held run's), which per-weight reconstruction then reads
/// instead of copying `m0` again.
pub(super) fn prune_pass(
    cx: &PassCtx,
    mut m0: ModelProto,
    guard_recon: bool,
    given_dense: Option<&ModelProto>,
) -> Result<Pass> {
    let o = cx.o;
    let reconstructing = cx.recon.is_some();
    let recon_guard = match (reconstructing, guard_recon) {
        (false, _) => Recon::Off,
        (true, false) => Recon::Aside,
        (true, true) => Recon::Held,
    };
    let need_calib = |what: &str| -> Result<&Inputs> {
        match cx.calib {
            Some(i) => Ok(i),
            None => bail!(
                "{what} needs calibration data: pass --calibration with real inputs (.npy, .npz or a folder of \
                 NAME.npy); verification or random inputs are never used as calibration"
            ),
        }
    };
    let mut notes = Vec::new();
    let mut masks = Masks::new();
    let mut reconstruction: Option<ReconReport> = None;
    let guard_report: Option<GuardReport>;
    let (scope_name, criterion_name);
    let mut weights_report = None;
    let mut groups = Vec::new();
    let mut stages: Vec<(String, Option<ModelProto>, Option<ModelProto>)> = Vec::new();
    let pruned: ModelProto = match o.mode {
        Mode::Weights => {
            let crit = o.criterion.unwrap_or(CriterionArg::Magnitude);
            let scope = match o.scope {
                None if crit == CriterionArg::Wanda => DEFAULT_WANDA_SCOPE,
                None => DEFAULT_WEIGHT_SCOPE,
                Some(ScopeArg::Unit) => Scope::Unit,
                Some(ScopeArg::Layer) => Scope::Layer,
                Some(ScopeArg::Global) => Scope::Global,
                Some(ScopeArg::Normalized) => Scope::Normalized,
            };
            let scores = match crit {
                CriterionArg::Magnitude => BTreeMap::new(),
                CriterionArg::Wanda => {
                    let inputs = need_calib("--criterion wanda")?;
                    let (scores, _) = crate::calib::wanda_scores(&m0, inputs)
                        .with_context(|| format!("{}: wanda", o.input.display()))?;
                    let all = weights::candidate_names(&m0, &o.include)?;
                    let missing: Vec<&String> = all.iter().filter(|n| !scores.contains_key(*n)).collect();
                    if !missing.is_empty() {
                        notes.push(format!(
                            "wanda: no observable input activations for {} weight(s), scored by |w|: {}",
                            missing.len(),
                            missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ));
                    }
                    scores
                }
                c => bail!("--criterion {}: per-weight mode supports magnitude (default) or wanda", arg_name(&c)),
            };
            let crit = arg_name(&crit);
            scope_name = arg_name(&scope);
            criterion_name = crit;
            let mut m = std::mem::take(&mut m0);
            // Reconstruction's targets: the copy a held run keeps, or one made here.
            let own;
            let dense = match (cx.recon, given_dense) {
                (None, _) => None,
                (Some(_), Some(d)) => Some(d),
                (Some(_), None) => {
                    own = m.clone();
                    Some(&own)
                }
            };
            if let Some(r) = o.fixed_ratio {
                notes.push(format!("baseline run: fixed ratio {r} per group instead of EMP (--ratio)"));
            }
            let wopts =
                WeightOptions { beta: o.beta, scope, include: o.include.clone(), scores, fixed_ratio: o.fixed_ratio };
            let small = weights::small_filters(&m, &o.include)?;
            let shared = weights::shared_with_other_readers(&m, &o.include)?;
            if !shared.is_empty() {
                let list: Vec<String> = shared.iter().map(|(n, why)| format!("'{n}' {why}")).collect();
                notes.push(format!(
                    "left dense: {} weight(s) that something besides a prunable layer reads too (zeroing them would \
                     change that reader as well): {}",
                    shared.len(),
                    list.join("; ")
                ));
            }
            let foreign = weights::foreign_weights(&m, &o.include)?;
            if !foreign.is_empty() {
                let list: Vec<String> = foreign.iter().map(|(op, k)| format!("{op} ({k})")).collect();
                notes.push(format!(
                    "left dense: weights read by ops this tool does not prune: {} (onnxruntime's offline-optimised \
                     fused ops, or functions of the model; prune the model before onnxruntime optimises it)",
                    list.join(", ")
                ));
            }
            let (pruned_m, guarded) = guarded_prune(o, m, &wopts, cx.calib, recon_guard, cx.mapped)
                .with_context(|| format!("{}", o.input.display()))?;
            m = pruned_m;
            masks = guarded.masks;
            notes.extend(guarded.note);
            guard_report = guarded.guard;
            let mut r = guarded.weights;
            r.small_filters_kept = small;
            // An --include that found nothing to add (a BatchNorm folded away, no Gather table).
            let inc = &o.include;
            for (on, role, what) in [
                (inc.bias, "bias", "biases"),
                (inc.norm, "norm", "normalisation parameters (a BatchNorm folded into its convolution has none)"),
                (inc.embedding, "embedding", "embedding tables (a Gather of a constant table)"),
            ] {
                if on && !r.tensors.iter().any(|t| t.role == role) {
                    notes.push(format!("--include {role} matched nothing: the model has no {what} to prune"));
                }
            }
            if let (Some(inputs), Some(dense)) = (cx.recon, dense) {
                let tr = Instant::now();
                let pruned_names: Vec<String> =
                    r.tensors.iter().filter(|t| t.kept < t.n).map(|t| t.name.clone()).collect();
                let _stage = progress::Stage::start("reconstruct");
                let without = m.clone();
                // Solved on the first 4/5 of the samples, checked end to end on the rest (so an
                // update that only fits the calibration rows is caught), when there are ≥ 10.
                let rows = inputs.rows();
                let split = if rows >= 10 { rows - rows / 5 } else { rows };
                let (fit, check) = if split < rows {
                    (inputs.sample_range(0, split), Some(inputs.sample_range(split, rows)))
                } else {
                    (inputs.clone(), None)
                };
                let layers = crate::reconstruct::obs::obs_all(dense, &mut m, &pruned_names, &fit)
                    .with_context(|| format!("{}: reconstruction", o.input.display()))?;
                let end_to_end = if let (true, Some(check)) =
                    (layers.iter().any(|l| l.method != "unchanged" && l.method != "skipped"), &check)
                {
                    match crate::reconstruct::end_to_end(dense, &without, &m, check) {
                        Ok(e) => {
                            if !e.kept {
                                notes.push(format!(
                                    "reconstruction reverted: on the held-out fifth of the calibration data the \
                                     model's outputs were further from dense with it (rel L2 {:.3e}) than without \
                                     ({:.3e})",
                                    e.err_with.sqrt(),
                                    e.err_without.sqrt()
                                ));
                                m = without;
                            }
                            Some(e)
                        }
                        Err(e) => {
                            notes.push(format!("reconstruction not checked end to end: {e:#}"));
                            None
                        }
                    }
                } else {
                    None
                };
                reconstruction =
                    Some(crate::reconstruct::ReconReport { samples: fit.rows(), layers, end_to_end, whole_run: None });
                cx.t_recon.set(ms(tr));
            }
            weights_report = Some(r);
            m
        }
        mode => {
            let default_scope = if mode == Mode::Channels { StructScope::Layer } else { StructScope::Global };
            let scope = match o.scope {
                None => default_scope,
                Some(ScopeArg::Layer) => StructScope::Layer,
                Some(ScopeArg::Global) => StructScope::Global,
                Some(s) => bail!("--scope {}: structured modes take layer or global", arg_name(&s)),
            };
            let crit = o.criterion.unwrap_or(if mode == Mode::Heads { CriterionArg::Weight } else { CriterionArg::L2 });
            let criterion = match crit {
                CriterionArg::L2 | CriterionArg::Weight => Criterion::L2,
                CriterionArg::L1 => Criterion::L1,
                CriterionArg::Activation => Criterion::Activation,
                c => bail!(
                    "--criterion {}: structured modes support l2 (default; 'weight' for heads), l1 or activation",
                    arg_name(&c)
                ),
            };
            let calib_inputs =
                if criterion == Criterion::Activation { Some(need_calib("--criterion activation")?) } else { None };
            // The default's name as the README gives it: `weight` for heads (the L2 norm of each
            // head's weights), `l2` for channels.
            let crit = match (o.criterion, mode) {
                (None, Mode::Heads) => "weight".to_string(),
                (None, Mode::HeadsChannels) => "weight (heads), l2 (channels)".to_string(),
                (None, _) => "l2".to_string(),
                (Some(_), _) => arg_name(&crit),
            };
            scope_name = format!("{scope:?}").to_lowercase();
            criterion_name = crit;
            if o.fixed_ratio.is_some() && (mode != Mode::Channels || scope != StructScope::Layer) {
                bail!("--ratio applies to per-weight mode and to --structured channels at layer scope");
            }
            if let Some(r) = o.fixed_ratio {
                notes.push(format!("baseline run: fixed ratio {r} per group instead of EMP (--ratio)"));
            }
            let mut sopts = StructOptions {
                beta: o.beta,
                scope,
                criterion,
                round_to: o.round_to,
                activations: None,
                fixed_ratio: o.fixed_ratio,
                floor: o.floor,
                cut_only: None,
            };
            // Hidden units are ranked per group (the FFN width of a block is one group).
            let channel_scope =
                if mode == Mode::HeadsChannels && o.scope.is_none() { StructScope::Layer } else { scope };
            let calib_rows = cx.calib;
            let choice = guarded_structural(o, &m0, mode, &sopts, channel_scope, calib_inputs, calib_rows, recon_guard)
                .with_context(|| format!("{}", o.input.display()))?;
            sopts.beta = choice.beta;
            sopts.cut_only = choice.cut_only;
            guard_report = choice.report;
            notes.extend(choice.note);
            let mut current = std::mem::take(&mut m0);
            let mut first_stage_groups = 0;
            // Two refitted stages: the dense input's outputs on the held-out rows, to measure the
            // written model against (each stage's own check compares it with its input).
            let whole = match cx.recon.filter(|_| mode == Mode::HeadsChannels) {
                Some(inputs) => {
                    let held = inputs.samples(&held_rows(mode, inputs.rows(), is_sequence(&current)));
                    let reference = crate::reconstruct::outputs(&current, &held).context("dense outputs")?;
                    Some((held, reference))
                }
                None => None,
            };
            if matches!(mode, Mode::Heads | Mode::HeadsChannels) {
                let sopts = with_activations(&sopts, &current, calib_inputs, "heads")?;
                let path = cx.masked_path(stages.len());
                // A plan of heads,channels refits the heads cut as the run would (its report
                // dropped): the channels stage is decided on the refitted model, whose
                // activations (and so the channels' kept counts) are not the unrefitted one's.
                let plan_refit = (o.plan && mode == Mode::HeadsChannels && o.reconstruct)
                    .then_some(cx.calib)
                    .flatten()
                    .filter(|c| c.rows() >= super::MIN_RECONSTRUCTION_ROWS);
                let mut plan_report = None;
                let (recon, report) = match plan_refit {
                    Some(inputs) => (Some(inputs), &mut plan_report),
                    None => (cx.recon, &mut reconstruction),
                };
                let out =
                    masked_out(o.plan && recon.is_none(), o.verify, path.as_deref(), recon.is_some(), cx.masked_opts);
                let r = structural(&mut current, &sopts, "heads", &out, recon, report, cx.t_recon)?;
                first_stage_groups = r.groups.len();
                if r.groups.is_empty() {
                    notes.push(
                        "no attention heads found (heads are those of a Q·Kᵀ → Softmax → ·V block, decomposed or fused): \
                         nothing to prune in heads mode; --structured channels prunes channels and hidden units"
                            .into(),
                    );
                }
                groups.extend(r.groups);
                let last = mode == Mode::Heads;
                // Reconstruction is done with it: the masked model goes to its file now.
                let masked = match (r.masked, &path) {
                    (Some(m), Some(p)) => crate::prune::place_masked(m, &MaskedOut::File(p, cx.masked_opts))?,
                    (m, _) => m,
                };
                stages.push(("heads".into(), masked, (!last && o.verify).then(|| r.pruned.clone())));
                current = r.pruned;
            }
            if matches!(mode, Mode::Channels | Mode::HeadsChannels) {
                let cut_only = crate::prune::second_stage_cut(&sopts.cut_only, first_stage_groups);
                let copts = StructOptions { scope: channel_scope, cut_only, ..sopts.clone() };
                let copts = with_activations(&copts, &current, calib_inputs, "channels")?;
                let path = cx.masked_path(stages.len());
                let out = masked_out(o.plan, o.verify, path.as_deref(), reconstructing, cx.masked_opts);
                let r = structural(&mut current, &copts, "channels", &out, cx.recon, &mut reconstruction, cx.t_recon)?;
                groups.extend(r.groups);
                stages.push(("channels".into(), r.masked, None));
                current = r.pruned;
            }
            if let (Some((held, reference)), Some(rep)) = (whole, reconstruction.as_mut()) {
                let out = crate::reconstruct::outputs(&current, &held).context("whole run, end to end")?;
                let (err, top1) = crate::reconstruct::compare(&reference, &out);
                rep.whole_run = Some(crate::reconstruct::WholeRun { samples: held.rows(), err, top1 });
            }
            current
        }
    };

    Ok(Pass {
        beta: guard_report.as_ref().map_or(o.beta, |g| g.beta),
        pruned,
        notes,
        masks,
        guard: guard_report,
        reconstruction,
        weights: weights_report,
        groups,
        stages,
        scope: scope_name,
        criterion: criterion_name,
    })
}

/// The guard's tolerance when a run is held to it after reconstruction: a default run (β not
/// given, no `--ratio`) with `--calibration`, verified (the guard runs the model), `--guard` on.
pub(super) fn held_tolerance(o: &RunOptions, reconstructing: bool) -> Option<f64> {
    o.default_guard().filter(|_| reconstructing && o.verify && !o.plan)
}

/// The calibration rows no refit of `mode` solves on: per weight the last fifth, structural
/// every fifth (the refit only judges its candidates there); every row when there are too few
/// to hold any apart. A model whose axis 0 is one `sequence` (a streaming model's frames,
/// [`crate::model::graph::axis0_is_sequence`]) is checked on the last fifth in every mode: every
/// fifth frame is not an input it could be given, and in structural modes its layers are then
/// fitted on the frames before it ([`super::stages::refit_stage`]).
pub(super) fn held_rows(mode: Mode, rows: usize, sequence: bool) -> Vec<usize> {
    let held: Vec<usize> = if sequence || mode == Mode::Weights {
        (rows - rows / 5..rows).filter(|_| rows >= 10).collect()
    } else {
        (0..rows).filter(|&i| crate::reconstruct::refit::is_val(i)).collect()
    };
    if held.len() >= 2 {
        held
    } else {
        (0..rows).collect()
    }
}

/// Is `m`'s axis 0 one sequence ([`crate::model::graph::axis0_is_sequence`])?
pub(super) fn is_sequence(m: &ModelProto) -> bool {
    m.graph.as_ref().is_some_and(crate::model::graph::axis0_is_sequence)
}

/// How far a pass's output model is from dense on the held-out calibration rows: the relative
/// L2 error of the worst float output against `reference` (the dense model's outputs there).
fn distance(p: &Pass, held: &Inputs, reference: &(Vec<Vec<f32>>, usize)) -> Result<f64> {
    if super::stages::nothing_pruned(&p.groups, p.weights.as_ref(), p.reconstruction.as_ref()) {
        return Ok(0.0);
    }
    let out = crate::reconstruct::outputs(&p.pruned, held)?;
    Ok(crate::reconstruct::compare(reference, &out).0.sqrt())
}

/// The distance to dense a pass measured on the held-out rows itself: both stages' whole run, or
/// the end-to-end check of its one refitted stage (or of per-weight reconstruction) — the
/// reconstructed model's, or the unreconstructed one's when the refit was reverted.
fn measured(p: &Pass) -> Option<f64> {
    let r = p.reconstruction.as_ref()?;
    if let Some(w) = &r.whole_run {
        return Some(w.err.sqrt());
    }
    let e = r.end_to_end.as_ref().filter(|_| p.stages.len() <= 1)?;
    Some(if e.kept { e.err_with } else { e.err_without }.sqrt())
}

/// What a pass keeps: its float parameters (structural), or its weights left non-zero of those
/// the per-weight pass could zero.
fn size(p: &Pass) -> u64 {
    match &p.weights {
        Some(w) => w.kept_elems as u64,
        None => crate::prune::heads::param_count(&p.pruned),
    }
}

/// Which units a pass cut: every group's kept count, and the weights kept per weight.
fn cut_of(p: &Pass) -> (Vec<usize>, Option<usize>) {
    (p.groups.iter().map(|g| g.kept).collect(), p.weights.as_ref().map(|w| w.kept_elems))
}

/// Reconstructed trials a hold makes between EMP's β₀ (too far from dense even reconstructed)
/// and the guard's β (within the tolerance before reconstruction), bisecting: the smallest β
/// that reconstruction brings within the tolerance is written. A β whose plain prune cuts what β₀
/// or the β written cuts is settled without reconstructing and not counted.
pub const HOLD_BISECTIONS: usize = 2;

/// Hold a calibrated default run to the guard's tolerance `tol`: when `first` (EMP's cut at
/// β₀, reconstructed) is further than `tol` from `dense` on the held-out calibration rows, the
/// run is pruned again from `dense` with the guard judging the cut (on the calibration rows) and
/// reconstructed; when the guard chose a β, [`HOLD_BISECTIONS`] reconstructed cuts between β₀
/// and it look for a larger cut that reconstruction brings within `tol`. The report says so, and
/// warns if even the guard's cut is over.
pub(super) fn hold(cx: &PassCtx, first: Pass, dense: ModelProto, tol: f64) -> Result<Pass> {
    let o = cx.o;
    let inputs = cx.recon.context("a held run reconstructs")?;
    let held = inputs.samples(&held_rows(o.mode, inputs.rows(), is_sequence(&dense)));
    // The pass measured itself on these rows when it could (the end-to-end check of its only
    // stage, or both stages' whole run): then nothing runs unless the hold steps in.
    let checked = || -> Result<_> {
        let mut reference = None;
        let err = match measured(&first) {
            Some(e) => e,
            None => distance(&first, &held, reference.insert(crate::reconstruct::outputs(&dense, &held)?))?,
        };
        Ok((reference, err))
    };
    let (reference, err) = match checked() {
        Ok(c) => c,
        Err(e) => {
            let mut first = first;
            first.notes.push(format!(
                "the reconstructed cut could not be checked against the fidelity guard's tolerance ({e:#}): EMP's \
                 cut at β {} is written as reconstructed",
                o.beta
            ));
            return Ok(first);
        }
    };
    if err <= tol {
        return Ok(first);
    }
    let reference = match reference {
        Some(r) => r,
        None => crate::reconstruct::outputs(&dense, &held)?,
    };
    let cut0 = cut_of(&first);
    drop(first);
    let mut chosen = prune_pass(cx, dense.clone(), true, None)?;
    let err2 = distance(&chosen, &held, &reference)?;
    let guard = chosen.guard.clone();
    let by_group = guard.as_ref().and_then(|g| g.groups.as_ref().filter(|_| g.by_group));
    let what = match by_group {
        _ if super::stages::nothing_pruned(&chosen.groups, chosen.weights.as_ref(), None) => "nothing cut".to_string(),
        Some(p) => {
            format!("β {}, only the {} of {} groups that fit the tolerance", chosen.beta, p.cut.len(), p.candidates)
        }
        None => format!("β {:.3}", chosen.beta),
    };
    // Bisect between β₀ and the β the guard's search found (when it cut groups one at a time
    // instead, the smallest β its search passed), reconstructing each cut; a cut within the
    // tolerance is taken when it keeps fewer weights than the one chosen so far.
    let mut tried = vec![];
    let mut took = false;
    let guard_beta = guard.as_ref().filter(|g| !g.kept_dense).and_then(|g| {
        if g.by_group {
            g.trials.iter().filter(|t| t.pass).map(|t| t.beta).min_by(f64::total_cmp)
        } else {
            Some(g.beta)
        }
    });
    if let Some(b) = guard_beta.filter(|&b| err2 <= tol && b < crate::check::guard::MAX_BETA) {
        let (mut lo, mut hi) = (o.beta, b);
        let mut runs = 0;
        // Each step halves [lo, hi] on a 1e-4 grid: it ends long before this bound.
        for _ in 0..32 {
            if runs == HOLD_BISECTIONS {
                break;
            }
            let mid = (0.5 * (lo + hi) * 1e4).round() / 1e4;
            if mid <= lo || mid >= hi {
                break;
            }
            // A cut already measured (β₀'s, or the one written) is not reconstructed again: the
            // plain prune at mid says which cut it is.
            let fixed = RunOptions { beta: mid, beta_given: true, ..o.clone() };
            let plain =
                prune_pass(&PassCtx { o: &fixed, recon: None, staging: None, ..*cx }, dense.clone(), false, None)?;
            let cut = cut_of(&plain);
            drop(plain);
            if cut == cut0 {
                lo = mid;
                continue;
            }
            if cut == cut_of(&chosen) {
                hi = mid;
                continue;
            }
            let trial_cx = PassCtx { o: &fixed, staging: None, ..*cx };
            let mut trial = prune_pass(&trial_cx, dense.clone(), false, None)?;
            runs += 1;
            let e = distance(&trial, &held, &reference)?;
            tried.push(format!("β {mid} {e:.3}{}", if e <= tol { " ✓" } else { " ✗" }));
            if e <= tol {
                hi = mid;
                if size(&trial) < size(&chosen) {
                    trial.guard = guard.clone();
                    chosen = trial;
                    took = true;
                }
            } else {
                lo = mid;
            }
        }
    }
    drop(dense);
    let between = if tried.is_empty() {
        String::new()
    } else {
        let written = if took { format!("β {} written", chosen.beta) } else { "the guard's cut written".into() };
        format!("; reconstructed cuts between: {}; {written}", tried.join(", "))
    };
    chosen.notes.insert(
        0,
        format!(
            "held to the fidelity guard: EMP's cut at β {}, reconstructed, left the outputs {err:.3} from dense \
             (relative L2 on {} held-out calibration samples), over the tolerance {tol}; the run pruned again with \
             the guard judging the cut ({what}), reconstructed: {err2:.3}{between}. --beta {} writes EMP's \
             reconstructed cut as is",
            o.beta,
            held.rows(),
            o.beta
        ),
    );
    if err2 > tol {
        chosen.notes.push(format!(
            "WARNING: after reconstruction the outputs are {err2:.3} from dense (relative L2 on {} held-out \
             calibration samples), over the fidelity guard's tolerance {tol}: keep more with --beta above 1",
            held.rows()
        ));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows a hold measures on are the ones no refit of the mode solved on.
    #[test]
    fn held_rows_are_the_ones_reconstruction_did_not_fit() {
        assert_eq!(held_rows(Mode::Weights, 20, false), (16..20).collect::<Vec<_>>());
        let s = held_rows(Mode::Channels, 20, false);
        assert!(s.len() >= 2 && s.iter().all(|&i| crate::reconstruct::refit::is_val(i)), "{s:?}");
        assert_eq!(held_rows(Mode::Heads, 20, false), s);
        // Too few to hold any apart: every row.
        assert_eq!(held_rows(Mode::Weights, 6, false), (0..6).collect::<Vec<_>>());
        assert_eq!(held_rows(Mode::Channels, 3, false), (0..3).collect::<Vec<_>>());
        // One sequence: its last fifth, in order, in every mode.
        for mode in [Mode::Weights, Mode::Channels, Mode::Heads] {
            assert_eq!(held_rows(mode, 20, true), (16..20).collect::<Vec<_>>());
            assert_eq!(held_rows(mode, 6, true), (0..6).collect::<Vec<_>>());
        }
    }
}
