//! The fidelity guard ([`crate::check::guard`]) of a default run (β not given, no `--ratio`, no
//! reconstruction, verification on; or the second pass of a calibrated default run held to its
//! tolerance, [`Recon::Held`]): the per-weight prune behind it ([`guarded_prune`]), and the β of
//! the structural stages ([`guarded_structural`]).
//!
//! Structural modes need it as much as per-weight: without calibration nothing repairs the
//! consumers of removed channels, and EMP's cut at β = 1 took a trained ShuffleNet V2
//! (`models/fmnist_shufflenet.onnx`) from 90.7 % to 75.3 % and a trained MobileNetV2 from 89.5 %
//! to 87.7 %. The relative L2 error of the outputs on seeded random inputs tracks the one on the
//! test split there (0.615 vs 0.659, 0.278 vs 0.276; β = 1.44 on the ShuffleNet: 0.136 vs 0.111
//! at 90.7 %), so the same guard and tolerance serve both.

use super::{Mode, RunOptions};
use crate::check::guard::{self, GuardReport, Pruned};
use crate::check::inputs::prepare_for;
use crate::check::{InputSpec, Inputs};
use crate::model::mapped::{MappedData, Masks};
use crate::prune::weights::{self, WeightOptions, WeightsReport};
use crate::prune::{MaskedOut, StructOptions, StructScope};
use anyhow::{Context, Result};
use onnx_protobuf::ModelProto;
use std::collections::BTreeSet;

pub(super) struct Guarded {
    pub weights: WeightsReport,
    pub guard: Option<GuardReport>,
    /// For the report: why the guard did not run or could not judge when a default run expected
    /// it to, or what it raised β to.
    pub note: Option<String>,
    /// Keep bits of tensors left in mapped files (see `weights::prune_weights_mapped`).
    pub masks: Masks,
}

/// Prune `m` per weight; on a default run, through the guard. `mapped`: the data files of a
/// model loaded with `io::load_mapped` (only without verification, so never with the guard).
pub(super) fn guarded_prune(
    o: &RunOptions,
    m: ModelProto,
    wopts: &WeightOptions,
    calib: Option<&Inputs>,
    recon: Recon,
    mapped: Option<&MappedData>,
) -> Result<(ModelProto, Guarded)> {
    let unguarded = |mut m: ModelProto, wopts: &WeightOptions, note| -> Result<(ModelProto, Guarded)> {
        let (weights, masks) = weights::prune_weights_mapped(&mut m, wopts, mapped)?;
        Ok((m, Guarded { weights, guard: None, note, masks }))
    };
    let plain = |m, note| unguarded(m, wopts, note);
    // The guard should judge this run but cannot: nothing is cut.
    let whole = |m, e: &anyhow::Error| {
        unguarded(m, &WeightOptions { beta: guard::KEEP_ALL_BETA, ..wopts.clone() }, Some(unjudged(e, recon)))
    };
    let Some(tol) = tolerance(o, recon) else {
        return plain(m, None);
    };
    if o.plan || !o.verify || mapped.is_some() {
        return plain(m, Some(not_run(o)));
    }
    let inputs = match guard_inputs(o, &m, calib) {
        Ok(i) => i,
        Err(e) => return whole(m, &e),
    };
    let _stage = crate::progress::Stage::start("guard");
    let chosen = guard::choose_beta(&m, &inputs.0, &inputs.1, o.beta, tol, |beta| {
        let mut copy = m.clone();
        let r = weights::prune_weights(&mut copy, &WeightOptions { beta, ..wopts.clone() })?;
        Ok(Pruned { model: copy, kept: r.kept_elems, candidates: r.candidates_elems, extra: r })
    });
    match chosen {
        Ok((p, report)) => {
            let note =
                report.raised().then(|| guard_note(&report, o.beta, recon == Recon::Held, o.calibration.is_some()));
            Ok((p.model, Guarded { weights: p.extra, guard: Some(report), note, masks: Masks::new() }))
        }
        Err(e) => whole(m, &e),
    }
}

/// The β of a run's structural stages and the groups they may cut: `sopts.beta` and every group,
/// or on a default run what the guard chose by pruning copies of `m` (every stage of `mode`, as
/// the run does them, without proofs) and comparing their outputs with dense. When EMP's cut at
/// β₀ fails, the β search backs it off in every group at once; the per-group pass
/// ([`guard::choose_groups`]; with two stages over both stages' groups) then cuts the groups that
/// fit at β₀ and keeps the rest whole, and the run takes whichever of the two saves more
/// parameters. `activations`: the
/// calibration inputs of the activation criterion. Returns the β, the groups to cut (`None`:
/// every group), the guard's report, and the report's note.
#[allow(clippy::too_many_arguments)]
pub(super) fn guarded_structural(
    o: &RunOptions,
    m: &ModelProto,
    mode: Mode,
    sopts: &StructOptions,
    channel_scope: StructScope,
    activations: Option<&Inputs>,
    calib: Option<&Inputs>,
    recon: Recon,
) -> Result<StructuralChoice> {
    let unguarded = |note| StructuralChoice { beta: sopts.beta, cut_only: None, report: None, note };
    // The guard should judge this run but cannot: nothing is cut.
    let whole = |e: &anyhow::Error| StructuralChoice {
        beta: guard::KEEP_ALL_BETA,
        cut_only: None,
        report: None,
        note: Some(unjudged(e, recon)),
    };
    let Some(tol) = tolerance(o, recon) else {
        return Ok(unguarded(None));
    };
    if o.plan || !o.verify {
        return Ok(unguarded(Some(not_run(o))));
    }
    let inputs = match guard_inputs(o, m, calib) {
        Ok(i) => i,
        Err(e) => return Ok(whole(&e)),
    };
    let _stage = crate::progress::Stage::start("guard");
    let copy = |beta: f64, cut_only: Option<BTreeSet<usize>>| {
        structural_copy(m, mode, &StructOptions { beta, cut_only, ..sopts.clone() }, channel_scope, activations)
    };
    let chosen = guard::choose_beta(m, &inputs.0, &inputs.1, sopts.beta, tol, |beta| copy(beta, None));
    let (best, mut report) = match chosen {
        Ok(c) => c,
        Err(e) => return Ok(whole(&e)),
    };
    let mut cut_only = None;
    if report.raised() {
        let by_group = || -> Result<_> {
            let first = copy(sopts.beta, None)?;
            if first.extra.cut.len() < 2 {
                // One group: the β search has tried it already.
                return Ok(None);
            }
            let dense = crate::prune::heads::param_count(m);
            let pass = guard::choose_groups(m, &inputs.0, tol, &first.extra.cut, |only| {
                let p = copy(sopts.beta, Some(only.clone()))?;
                Ok(guard::GroupCut { saves: dense.saturating_sub(p.extra.params), model: p.model })
            })?;
            Ok(Some((pass, dense)))
        };
        match by_group() {
            Ok(Some(((cut, pass), dense))) => {
                let by_beta = dense.saturating_sub(best.extra.params);
                if cut.is_some_and(|c| c.saves > by_beta) {
                    cut_only = Some(pass.cut.iter().copied().collect());
                    report.by_group = true;
                    report.kept_dense = false;
                    report.beta = sopts.beta;
                }
                report.groups = Some(pass);
            }
            Ok(None) => {}
            Err(e) => {
                let note = format!(
                    "{}; its per-group pass could not run ({e:#})",
                    guard_note(&report, o.beta, recon == Recon::Held, o.calibration.is_some())
                );
                return Ok(StructuralChoice {
                    beta: report.beta,
                    cut_only: None,
                    report: Some(report),
                    note: Some(note),
                });
            }
        }
    }
    let note = report.raised().then(|| {
        guard_note(&report, o.beta, recon == Recon::Held, o.calibration.is_some()) + &group_pass_note(&report)
    });
    Ok(StructuralChoice { beta: report.beta, cut_only, report: Some(report), note })
}

/// What [`guarded_structural`] chose.
pub(super) struct StructuralChoice {
    pub beta: f64,
    /// The groups the run may cut ([`StructOptions::cut_only`]).
    pub cut_only: Option<BTreeSet<usize>>,
    pub report: Option<GuardReport>,
    pub note: Option<String>,
}

/// One guard trial's pruned copy: its float parameters, and the groups its last stage cut (index
/// into that stage's group report, units removed).
struct StructTrial {
    params: u64,
    cut: Vec<(usize, u64)>,
}

/// `m`'s structural stages at `sopts.beta` on a copy, without reconstruction or masked models:
/// one guard trial. Kept and candidate counts are units of the groups that were prunable.
fn structural_copy(
    m: &ModelProto,
    mode: Mode,
    sopts: &StructOptions,
    channel_scope: StructScope,
    activations: Option<&Inputs>,
) -> Result<Pruned<StructTrial>> {
    use crate::prune::{channels, heads};
    let mut current: Option<ModelProto> = None;
    let (mut kept, mut candidates) = (0, 0);
    // The groups cut, as indices into the run's report (both stages' groups, in stage order).
    let mut cut = vec![];
    let mut first = 0;
    let mut count = |groups: &[crate::prune::GroupReport], from: usize| {
        for (i, g) in groups.iter().enumerate().filter(|(_, g)| g.blocked.is_none()) {
            kept += g.kept;
            candidates += g.n;
            if g.kept < g.n {
                cut.push((from + i, (g.n - g.kept) as u64));
            }
        }
    };
    if matches!(mode, Mode::Heads | Mode::HeadsChannels) {
        let hopts = super::with_activations(sopts, m, activations, "heads")?;
        let r = heads::prune_heads_to(m, &hopts, &MaskedOut::Drop)?;
        count(&r.groups, 0);
        first = r.groups.len();
        current = Some(r.pruned);
    }
    if matches!(mode, Mode::Channels | Mode::HeadsChannels) {
        let from = current.as_ref().unwrap_or(m);
        let cut_only = crate::prune::second_stage_cut(&sopts.cut_only, first);
        let copts = StructOptions { scope: channel_scope, cut_only, ..sopts.clone() };
        let copts = super::with_activations(&copts, from, activations, "channels")?;
        let r = channels::prune_channels_to(from, &copts, &MaskedOut::Drop)?;
        count(&r.groups, first);
        current = Some(r.pruned);
    }
    let model = current.context("guard: no structural stage")?;
    let params = heads::param_count(&model);
    Ok(Pruned { model, extra: StructTrial { params, cut }, kept, candidates })
}

/// How reconstruction stands to the guard in one prune pass.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Recon {
    /// None follows: the guard judges a default run's cut.
    Off,
    /// It follows and the guard stands aside: real data repairs the kept weights (the first pass
    /// of a calibrated default run).
    Aside,
    /// It follows and the guard judges the cut first: the second pass of a calibrated default run
    /// whose first pass was further from dense than the tolerance ([`super::pass::hold`]).
    Held,
}

/// The guard's tolerance when this pass is one it guards: β not given, no `--ratio`, no
/// reconstruction (or a held one), `--guard` not off.
fn tolerance(o: &RunOptions, recon: Recon) -> Option<f64> {
    o.default_guard().filter(|_| recon != Recon::Aside)
}

fn not_run(o: &RunOptions) -> String {
    let why = if o.plan { "plan" } else { "--no-verify" };
    format!(
        "fidelity guard not run ({why}): EMP's cut at β {} is {} unchecked; a verified run may keep more",
        o.beta,
        if o.plan { "shown" } else { "written" }
    )
}

/// The note of a default run the guard should judge but cannot: the model is written whole.
fn unjudged(e: &anyhow::Error, recon: Recon) -> String {
    let msg = format!("{e:#}");
    // No engine runs one of its ops: calibration (which runs the model too) cannot help.
    if let Some(op) = crate::check::unsupported_op(&msg) {
        return format!(
            "fidelity guard could not run the model: neither tract nor onnxruntime runs its op {op}: nothing is \
             cut, as a default run writes only a cut the guard has checked; --beta 1 writes EMP's cut unchecked"
        );
    }
    let instead = if recon == Recon::Held {
        "--beta 1 writes EMP's reconstructed cut"
    } else {
        "--beta 1 writes EMP's cut unchecked, --calibration reconstructs it"
    };
    format!(
        "fidelity guard could not run the model ({e:#}): nothing is cut, as a default run writes only a cut \
         the guard has checked; {instead}"
    )
}

/// Mixed into the user's seed for the guard's random inputs.
const GUARD_SEED: u64 = 0x6A09_E667_F3BC_C908;

/// The guard's inputs: calibration rows when given, else [`random_inputs`]. [`guard::guard_rows`]
/// samples where the batch axis is free, by the model's MACs per sample (tract's shape analysis;
/// its float weights when that fails), so that each of the guard's runs costs about the same on
/// any model.
fn guard_inputs(o: &RunOptions, m: &ModelProto, calib: Option<&Inputs>) -> Result<(Inputs, String)> {
    let cost = |one: &Inputs| -> Result<u64> {
        match macs_per_sample(&o.input, one) {
            Some(c) => Ok(c),
            None => Ok(super::params(m, None, &Masks::new(), true)?.n),
        }
    };
    let sequence = m.graph.as_ref().is_some_and(crate::model::graph::axis0_is_sequence);
    if calib.is_none() && o.guard_on_inputs {
        return user_inputs(o, sequence, cost);
    }
    let Some(c) = calib else { return random_inputs(o, sequence, GUARD_SEED, cost) };
    let rows = guard::guard_rows(cost(&c.head(1).unwrap_or_else(|| c.clone()))?);
    let c = c.head(rows).unwrap_or_else(|| c.clone());
    let n = c.sample_count();
    let label = format!("{n} calibration row{}", if n == 1 { "" } else { "s" });
    Ok((c, label))
}

/// [`guard::guard_rows`] of the user's `--inputs` samples, evenly spaced (a sequence: its first
/// rows), for a guard whose cut on random inputs they refuted ([`RunOptions::guard_on_inputs`]).
fn user_inputs(o: &RunOptions, sequence: bool, cost: impl FnOnce(&Inputs) -> Result<u64>) -> Result<(Inputs, String)> {
    let v = &o.verify_opts.inputs;
    let infos = crate::check::model_inputs(&o.input)?;
    let one = prepare_for(&infos, &InputSpec { max_rows: 1, first_rows: true, ..v.clone() })?;
    let rows = guard::guard_rows(cost(&one)?);
    let inputs = prepare_for(&infos, &InputSpec { max_rows: rows, first_rows: sequence, ..v.clone() })?;
    let (n, total) = (inputs.sample_count(), inputs.file_rows.unwrap_or(inputs.sample_count()));
    let label = match (n, total) {
        (1, 1) => "your one --inputs sample".to_string(),
        _ => format!("{n} of your {total} --inputs samples"),
    };
    Ok((inputs, label))
}

/// The MACs of one sample of `one` (tract's shape analysis of the model at `path`; None when it
/// cannot tell).
pub(super) fn macs_per_sample(path: &std::path::Path, one: &Inputs) -> Option<u64> {
    crate::check::macs(path, &one.facts()).ok().map(|c| c.total / one.sample_count().max(1) as u64)
}

/// Seeded random inputs shaped as verification's are (`--dim` applies), [`guard::guard_rows`]
/// samples of them by `cost`, the model's MACs for the one sample it is given. The guard judges
/// on them without calibration, and verification measures on them without `--inputs` or
/// `--calibration` (one random sample made a "top-1 agreement 0.00 %" that said nothing).
/// `sequence`: axis 0 of the model's inputs is one sequence ([`crate::model::graph::axis0_is_sequence`]);
/// `salt` is mixed into the user's seed (verification's samples are not the ones the guard chose
/// β on). Returns the inputs and what they are ("32 random inputs (seed 0)").
pub(super) fn random_inputs(
    o: &RunOptions,
    sequence: bool,
    salt: u64,
    cost: impl FnOnce(&Inputs) -> Result<u64>,
) -> Result<(Inputs, String)> {
    let v = &o.verify_opts.inputs;
    let infos = crate::check::model_inputs(&o.input)?;
    // `--dim` sets every dim but the samples axis, which is the guard's to choose (`--dim
    // batch=1000000` made it run a million random inputs, for minutes).
    let mut dims = v.dims.clone();
    for i in &infos {
        match i.dims.first() {
            Some(crate::check::DimSpec::Symbolic(sym)) => {
                dims.remove(sym);
            }
            Some(crate::check::DimSpec::Unknown) => {
                dims.remove("batch");
            }
            _ => {}
        }
        dims.remove(&format!("{}:0", i.name));
    }
    // The other free dims take the sizes of the user's `--inputs` (their shapes only, read from
    // their first row: the guard does not judge on the test data), so that an image model with a
    // free height and width is not tried on 224 × 224 when its inputs are 8 × 8.
    // The samples' own symbol is not one of them, wherever an input has it (an LSTM state
    // [layers, batch, H] beside x [batch, T, F]: one row read set it to 1, and the guard judged
    // on one sample).
    let samples_sym = match infos.first().and_then(|i| i.dims.first()) {
        Some(crate::check::DimSpec::Symbolic(s)) => Some(s.clone()),
        _ => None,
    };
    if !v.files.is_empty() || v.npz.is_some() {
        if let Ok(given) = prepare_for(&infos, &InputSpec { max_rows: 1, first_rows: true, ..v.clone() }) {
            for i in &infos {
                let Some(x) = given.get(&i.name) else { continue };
                for (axis, d) in i.dims.iter().enumerate().skip(1) {
                    let size = x.data.shape().get(axis).map(|&s| s as i64);
                    let key = match d {
                        crate::check::DimSpec::Symbolic(sym) if Some(sym) == samples_sym.as_ref() => continue,
                        crate::check::DimSpec::Symbolic(sym) => sym.clone(),
                        crate::check::DimSpec::Unknown => format!("{}:{axis}", i.name),
                        _ => continue,
                    };
                    if let Some(size) = size {
                        dims.entry(key).or_insert(size);
                    }
                }
            }
        }
    }
    let spec = |rows: usize| InputSpec {
        dims: dims.clone(),
        seed: v.seed ^ salt,
        default_batch: rows,
        ..InputSpec::default()
    };
    let rows = guard::guard_rows(cost(&prepare_for(&infos, &spec(1))?)?);
    // A model exported with its batch fixed to 1 (dynamo, TF) runs its samples one at a time;
    // it still gets its `rows` samples (it was judged on one).
    let batch_one = |i: &crate::check::InputInfo| i.dims.len() >= 2 && i.dims[0] == crate::check::DimSpec::Fixed(1);
    let batched: Vec<_> = infos.iter().filter(|i| i.dims.len() >= 2).collect();
    let infos = if !batched.is_empty() && batched.iter().all(|i| batch_one(i)) && !sequence {
        let mut infos = infos;
        for i in infos.iter_mut().filter(|i| batch_one(i)) {
            i.dims[0] = crate::check::DimSpec::Fixed(rows as i64);
        }
        infos
    } else {
        infos
    };
    let inputs = prepare_for(&infos, &spec(rows))?;
    let n = inputs.sample_count();
    let label = format!("{n} random input{} (seed {})", if n == 1 { "" } else { "s" }, v.seed);
    Ok((inputs, label))
}

/// What the per-group pass found when the run did not take it (empty when it did not run).
fn group_pass_note(g: &GuardReport) -> String {
    let Some(p) = g.groups.as_ref().filter(|_| !g.by_group) else { return String::new() };
    let alone = p.trials.iter().filter(|t| t.rel_l2 <= g.tolerance).count();
    if p.cut.is_empty() {
        return format!(
            ". Cut one at a time, none of the {} groups EMP shrinks stayed within the tolerance ({} tried)",
            p.candidates,
            p.trials.len()
        );
    }
    format!(
        ". Cut one at a time, {alone} of the {} groups EMP shrinks stayed within the tolerance and {} of them \
         together ({:.3}), but they saved fewer parameters than the β search's cut",
        p.candidates,
        p.cut.len(),
        p.rel_l2
    )
}

/// The report's note when the guard raised β. `held`: reconstruction follows the guard's cut
/// (the second pass of a held calibrated run), so the note does not advise calibration.
/// `calibrated`: calibration data was given (with `--no-reconstruct`, when not held).
fn guard_note(g: &GuardReport, beta0: f64, held: bool, calibrated: bool) -> String {
    let first = g.trials.first().map_or(f64::NAN, |t| t.rel_l2);
    let advice = |plain: &str| {
        if held {
            "The calibration data reconstructs what this cut keeps".to_string()
        } else if calibrated {
            format!("Drop --no-reconstruct to {plain}")
        } else {
            format!("Pass --calibration with a few hundred real inputs to {plain}")
        }
    };
    if let Some(p) = g.groups.as_ref().filter(|_| g.by_group) {
        return format!(
            "fidelity guard: EMP's cut at β {beta0} moved the outputs by {first:.3} (relative L2, {}), over the \
             tolerance {}, and every smaller cut of all groups that the β search tried either did too or saved \
             less; cut one at a time, {} of the {} groups EMP shrinks kept the outputs within it together \
             ({:.3}): those are cut as EMP says, the others kept whole. {}",
            g.inputs,
            g.tolerance,
            p.cut.len(),
            p.candidates,
            p.rel_l2,
            advice("keep EMP's whole cut and reconstruct the kept weights, or --guard off for EMP's cut as is")
        );
    }
    if g.kept_dense {
        return format!(
            "fidelity guard: EMP's cut moved the outputs by {first:.3} (relative L2, {}) against a tolerance of \
             {}, and no β up to {} kept them within it: nothing was pruned. {}",
            g.inputs,
            g.tolerance,
            guard::MAX_BETA,
            advice("reconstruct the kept weights instead, or --guard off for EMP's cut")
        );
    }
    let as_is = "keep EMP's cut and reconstruct the kept weights, or --guard off for EMP's cut as is";
    let last = g.trials.iter().find(|t| t.beta == g.beta);
    if last.is_some_and(|t| t.kept >= g.candidates) {
        return format!(
            "fidelity guard: EMP's cut at β {beta0} moved the outputs by {first:.3} (relative L2, {}), over the \
             tolerance {}, and every smaller cut tried did too: β raised to {:.3}, where nothing is cut (the model \
             is written unpruned). {}",
            g.inputs,
            g.tolerance,
            g.beta,
            advice(as_is)
        );
    }
    let last = last.map_or(f64::NAN, |t| t.rel_l2);
    format!(
        "fidelity guard: EMP's cut at β {beta0} moved the outputs by {first:.3} (relative L2, {}), over the \
         tolerance {}; β raised to {:.3} ({last:.3}). {}",
        g.inputs,
        g.tolerance,
        g.beta,
        advice(as_is)
    )
}
