//! The fidelity guard ([`crate::check::guard`]) of a default run (β not given, no `--ratio`, no
//! reconstruction, verification on): the per-weight prune behind it ([`guarded_prune`]), and
//! the β of the structural stages ([`guarded_structural`]).
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
    reconstructing: bool,
    mapped: Option<&MappedData>,
) -> Result<(ModelProto, Guarded)> {
    let plain = |mut m: ModelProto, note: Option<String>| -> Result<(ModelProto, Guarded)> {
        let (weights, masks) = weights::prune_weights_mapped(&mut m, wopts, mapped)?;
        Ok((m, Guarded { weights, guard: None, note, masks }))
    };
    let Some(tol) = tolerance(o, reconstructing) else {
        return plain(m, None);
    };
    if o.plan || !o.verify || mapped.is_some() {
        return plain(m, Some(not_run(o)));
    }
    let inputs = match guard_inputs(o, &m, calib) {
        Ok(i) => i,
        Err(e) => return plain(m, Some(unjudged(&e))),
    };
    let _stage = crate::progress::Stage::start("guard");
    let chosen = guard::choose_beta(&m, &inputs.0, &inputs.1, o.beta, tol, |beta| {
        let mut copy = m.clone();
        let r = weights::prune_weights(&mut copy, &WeightOptions { beta, ..wopts.clone() })?;
        Ok(Pruned { model: copy, kept: r.kept_elems, candidates: r.candidates_elems, extra: r })
    });
    match chosen {
        Ok((p, report)) => {
            let note = report.raised().then(|| guard_note(&report, o.beta));
            Ok((p.model, Guarded { weights: p.extra, guard: Some(report), note, masks: Masks::new() }))
        }
        Err(e) => plain(m, Some(unjudged(&e))),
    }
}

/// The β of a run's structural stages: `sopts.beta`, or on a default run what the guard chose by
/// pruning copies of `m` (every stage of `mode`, as the run does them, without proofs) and
/// comparing their outputs with dense. `activations`: the calibration inputs of the activation
/// criterion. Returns the β, the guard's report, and the report's note.
#[allow(clippy::too_many_arguments)]
pub(super) fn guarded_structural(
    o: &RunOptions,
    m: &ModelProto,
    mode: Mode,
    sopts: &StructOptions,
    channel_scope: StructScope,
    activations: Option<&Inputs>,
    calib: Option<&Inputs>,
    reconstructing: bool,
) -> Result<(f64, Option<GuardReport>, Option<String>)> {
    let Some(tol) = tolerance(o, reconstructing) else {
        return Ok((sopts.beta, None, None));
    };
    if o.plan || !o.verify {
        return Ok((sopts.beta, None, Some(not_run(o))));
    }
    let inputs = match guard_inputs(o, m, calib) {
        Ok(i) => i,
        Err(e) => return Ok((sopts.beta, None, Some(unjudged(&e)))),
    };
    let _stage = crate::progress::Stage::start("guard");
    let chosen = guard::choose_beta(m, &inputs.0, &inputs.1, sopts.beta, tol, |beta| {
        structural_copy(m, mode, &StructOptions { beta, ..sopts.clone() }, channel_scope, activations)
    });
    match chosen {
        Ok((_, report)) => {
            let note = report.raised().then(|| guard_note(&report, o.beta));
            Ok((report.beta, Some(report), note))
        }
        Err(e) => Ok((sopts.beta, None, Some(unjudged(&e)))),
    }
}

/// `m`'s structural stages at `sopts.beta` on a copy, without reconstruction or masked models:
/// one guard trial. Kept and candidate counts are units of the groups that were prunable.
fn structural_copy(
    m: &ModelProto,
    mode: Mode,
    sopts: &StructOptions,
    channel_scope: StructScope,
    activations: Option<&Inputs>,
) -> Result<Pruned<()>> {
    use crate::prune::{channels, heads};
    let mut current: Option<ModelProto> = None;
    let (mut kept, mut candidates) = (0, 0);
    let mut count = |groups: &[crate::prune::GroupReport]| {
        for g in groups.iter().filter(|g| g.blocked.is_none()) {
            kept += g.kept;
            candidates += g.n;
        }
    };
    if matches!(mode, Mode::Heads | Mode::HeadsChannels) {
        let hopts = super::with_activations(sopts, m, activations, "heads")?;
        let r = heads::prune_heads_to(m, &hopts, &MaskedOut::Drop)?;
        count(&r.groups);
        current = Some(r.pruned);
    }
    if matches!(mode, Mode::Channels | Mode::HeadsChannels) {
        let from = current.as_ref().unwrap_or(m);
        let copts = StructOptions { scope: channel_scope, ..sopts.clone() };
        let copts = super::with_activations(&copts, from, activations, "channels")?;
        let r = channels::prune_channels_to(from, &copts, &MaskedOut::Drop)?;
        count(&r.groups);
        current = Some(r.pruned);
    }
    Ok(Pruned { model: current.context("guard: no structural stage")?, extra: (), kept, candidates })
}

/// The guard's tolerance when this run is one it guards: β not given, no `--ratio`, no
/// reconstruction, `--guard` not off.
fn tolerance(o: &RunOptions, reconstructing: bool) -> Option<f64> {
    o.guard.filter(|_| !o.beta_given && o.fixed_ratio.is_none() && !reconstructing)
}

fn not_run(o: &RunOptions) -> String {
    let why = if o.plan { "plan" } else { "--no-verify" };
    format!(
        "fidelity guard not run ({why}): EMP's cut at β {} is {} unchecked; a verified run may keep more",
        o.beta,
        if o.plan { "shown" } else { "written" }
    )
}

fn unjudged(e: &anyhow::Error) -> String {
    format!("fidelity guard could not run the model ({e:#}); EMP's cut is written unchecked")
}

/// The guard's inputs: calibration rows when given, else seeded random inputs shaped as
/// verification's are (`--dim` applies); [`guard::guard_rows`] samples where the batch axis is
/// free, by the model's MACs per sample (tract's shape analysis; its float weights when that
/// fails), so that each of the guard's runs costs about the same on any model.
fn guard_inputs(o: &RunOptions, m: &ModelProto, calib: Option<&Inputs>) -> Result<(Inputs, String)> {
    let v = &o.verify_opts.inputs;
    let spec = |rows: usize| InputSpec {
        dims: v.dims.clone(),
        seed: v.seed ^ 0x6A09_E667_F3BC_C908,
        default_batch: rows,
        ..InputSpec::default()
    };
    // The model's inputs are read from its file once, for the one-sample shapes and the data.
    let infos = if calib.is_none() { crate::check::model_inputs(&o.input)? } else { vec![] };
    let one = match calib {
        Some(c) => c.head(1).unwrap_or_else(|| c.clone()),
        None => prepare_for(&infos, &spec(1))?,
    };
    let cost = match crate::check::macs(&o.input, &one.facts()) {
        Ok(c) => c.total / one.rows().max(1) as u64,
        Err(_) => super::params(m, None, &Masks::new(), true)?.n,
    };
    let rows = guard::guard_rows(cost);
    if let Some(c) = calib {
        let c = c.head(rows).unwrap_or_else(|| c.clone());
        let label = format!("{} calibration rows", c.rows());
        return Ok((c, label));
    }
    let inputs = prepare_for(&infos, &spec(rows))?;
    let n = inputs.rows();
    let label = format!("{n} random input{} (seed {})", if n == 1 { "" } else { "s" }, v.seed);
    Ok((inputs, label))
}

/// The report's note when the guard raised β.
fn guard_note(g: &GuardReport, beta0: f64) -> String {
    let first = g.trials.first().map_or(f64::NAN, |t| t.rel_l2);
    if g.kept_dense {
        return format!(
            "fidelity guard: EMP's cut moved the outputs by {first:.3} (relative L2, {}) against a tolerance of \
             {}, and no β up to {} kept them within it: nothing was pruned. Pass --calibration with a few hundred \
             real inputs to reconstruct the kept weights instead, or --guard off for EMP's cut",
            g.inputs,
            g.tolerance,
            guard::MAX_BETA
        );
    }
    let last = g.trials.iter().find(|t| t.beta == g.beta);
    if last.is_some_and(|t| t.kept >= g.candidates) {
        return format!(
            "fidelity guard: EMP's cut at β {beta0} moved the outputs by {first:.3} (relative L2, {}), over the \
             tolerance {}, and every smaller cut tried did too: β raised to {:.3}, where nothing is cut (the model \
             is written unpruned). Pass --calibration with a few hundred real inputs to keep EMP's cut and \
             reconstruct the kept weights, or --guard off for EMP's cut as is",
            g.inputs, g.tolerance, g.beta
        );
    }
    let last = last.map_or(f64::NAN, |t| t.rel_l2);
    format!(
        "fidelity guard: EMP's cut at β {beta0} moved the outputs by {first:.3} (relative L2, {}), over the \
         tolerance {}; β raised to {:.3} ({last:.3}). Pass --calibration with a few hundred real inputs to keep \
         EMP's cut and reconstruct the kept weights, or --guard off for EMP's cut as is",
        g.inputs, g.tolerance, g.beta
    )
}
