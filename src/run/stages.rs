//! The structural stages of a run: one stage (heads or channels) on the model, its calibration
//! statistics and reconstruction, where its masked model goes, and its masked-equivalence proof.
//!
//! Contract: a stage consumes the model it prunes when nothing refits it (its unchanged weights
//! move into the pruned model), and a proof is never a false success: a model tract cannot run
//! is reported `skipped`, not passed.

use super::{ms, EQUIVALENCE_TOLERANCE};
use crate::check::{self, VerifyOptions};
use crate::model::io::SaveOptions;
use crate::progress;
use crate::prune::weights;
use crate::prune::{MaskedOut, StructOptions, StructuralResult};
use crate::report::Equivalence;
use anyhow::{Context, Result};
use onnx_protobuf::ModelProto;
use std::path::Path;
use std::time::Instant;

/// Reconstruct one structural stage (consumers of removed units) when calibration is given.
pub(super) fn refit_stage(
    dense: &ModelProto,
    r: &mut StructuralResult,
    inputs: Option<&crate::check::Inputs>,
    report: &mut Option<crate::reconstruct::ReconReport>,
    t: &std::cell::Cell<f64>,
) -> Result<()> {
    let Some(inputs) = inputs else { return Ok(()) };
    let t0 = Instant::now();
    let _stage = progress::Stage::start("reconstruct");
    let masked = r.masked.as_mut().context("the masked model is kept for reconstruction")?;
    // Checked end to end on the held-apart samples (every fifth: the refit judges its candidates
    // there but fits none of them; a sequence's last fifth, which its layers are not fitted on,
    // as one sequence's frames are no independent samples to hold apart every fifth): kept only
    // if the whole model's outputs are closer to the stage's input model with it, as per-weight
    // reconstruction is.
    let rows = inputs.rows();
    let sequence = super::pass::is_sequence(dense);
    let held = super::pass::held_rows(super::Mode::Channels, rows, sequence);
    let without = (held.len() < rows).then(|| (r.pruned.clone(), masked.clone()));
    let fit = if sequence && held.len() < rows { inputs.sample_range(0, rows - held.len()) } else { inputs.clone() };
    let layers =
        crate::reconstruct::refit::refit_all(dense, masked, &mut r.pruned, &r.refit, &fit).context("reconstruction")?;
    let changed = layers.iter().any(|l| l.method != "unchanged" && l.method != "skipped");
    let end_to_end = match without {
        Some((pruned, unrefit)) if changed => {
            let e = crate::reconstruct::end_to_end(dense, &pruned, &r.pruned, &inputs.samples(&held))
                .context("reconstruction, end to end")?;
            if !e.kept {
                r.pruned = pruned;
                *masked = unrefit;
            }
            Some(e)
        }
        _ => None,
    };
    let rep = report.get_or_insert_with(|| crate::reconstruct::ReconReport {
        samples: fit.rows(),
        layers: vec![],
        end_to_end: None,
        whole_run: None,
    });
    rep.layers.extend(layers);
    rep.end_to_end = end_to_end.or(rep.end_to_end.take());
    t.set(t.get() + ms(t0));
    Ok(())
}

/// For the activation criterion: run the model as it is at this stage on the calibration
/// inputs and attach the statistics the stage needs.
pub(super) fn with_activations(
    o: &StructOptions,
    m: &ModelProto,
    inputs: Option<&crate::check::Inputs>,
    what: &str,
) -> Result<StructOptions> {
    let Some(inputs) = inputs else { return Ok(o.clone()) };
    let req = match what {
        "heads" => crate::prune::heads::activation_requests(m)?,
        _ => crate::prune::channels::activation_requests(m)?,
    };
    let stats = crate::calib::collect(m, inputs, &req).with_context(|| format!("calibration for {what}"))?;
    Ok(StructOptions { activations: Some(std::sync::Arc::new(stats.values)), ..o.clone() })
}

/// Where a structural stage's masked model goes: nowhere when nothing proves it (`plan`,
/// `--no-verify`) or refits with it; kept for reconstruction; else to its file for the proof.
pub(super) fn masked_out<'a>(
    plan: bool,
    verify: bool,
    path: Option<&'a Path>,
    reconstruct: bool,
    opts: &'a SaveOptions,
) -> MaskedOut<'a> {
    match path {
        _ if plan || (!verify && !reconstruct) => MaskedOut::Drop,
        Some(p) if !reconstruct => MaskedOut::File(p, opts),
        _ => MaskedOut::Keep,
    }
}

/// One structural stage on `m`, refitted when there are reconstruction inputs. Without them
/// nothing needs `m` afterwards: it is consumed (left empty), its unchanged weights moved into
/// the pruned model instead of copied.
pub(super) fn structural(
    m: &mut ModelProto,
    opts: &StructOptions,
    what: &str,
    masked: &MaskedOut,
    recon: Option<&crate::check::Inputs>,
    report: &mut Option<crate::reconstruct::ReconReport>,
    t: &std::cell::Cell<f64>,
) -> Result<StructuralResult> {
    use crate::prune::{channels, heads};
    if recon.is_none() {
        return crate::prune::filled_moving(std::mem::take(m), |m| match what {
            "heads" => heads::prune_hollow(m, opts, masked),
            _ => channels::prune_hollow(m, opts, masked),
        });
    }
    let mut r = match what {
        "heads" => heads::prune_heads_to(m, opts, masked),
        _ => channels::prune_channels_to(m, opts, masked),
    }?;
    refit_stage(m, &mut r, recon, report, t)?;
    Ok(r)
}

/// Whether a run left every unit and weight as it was: every group kept whole, no weight zeroed,
/// no layer refitted.
pub(super) fn nothing_pruned(
    groups: &[crate::prune::GroupReport],
    weights: Option<&weights::WeightsReport>,
    recon: Option<&crate::reconstruct::ReconReport>,
) -> bool {
    groups.iter().all(|g| g.kept >= g.n)
        && weights.is_none_or(|w| w.kept_elems >= w.candidates_elems)
        && recon.is_none_or(|r| r.layers.iter().all(|l| l.method == "unchanged" || l.method == "skipped"))
}

/// A structural stage whose proof `--no-verify` skipped.
pub(super) fn unproven(stage: &str) -> Equivalence {
    Equivalence {
        stage: stage.into(),
        status: "skipped".into(),
        engine: String::new(),
        reason: Some("--no-verify: masked-equivalence was not run, the rewrite is unproven".into()),
        max_abs_err: 0.0,
        max_rel_l2_err: 0.0,
        outputs: vec![],
        tolerance: EQUIVALENCE_TOLERANCE,
        pass: None,
    }
}

/// Masked-equivalence of one structural stage, never a false success: in tract, or in onnxruntime
/// (through python3) when tract cannot run the models.
pub(super) fn prove(stage: &str, masked: &Path, pruned: &Path, vo: &VerifyOptions) -> Equivalence {
    let mut e = Equivalence {
        stage: stage.into(),
        status: "ok".into(),
        engine: "tract".into(),
        reason: None,
        max_abs_err: 0.0,
        max_rel_l2_err: 0.0,
        outputs: vec![],
        tolerance: EQUIVALENCE_TOLERANCE,
        pass: None,
    };
    let named = |err: anyhow::Error| {
        let (m, p) = (masked.display().to_string(), pruned.display().to_string());
        format!("{err:#}")
            .replace(&format!("reference model {m}"), "masked model")
            .replace(&format!("other model {p}"), "pruned model")
            .replace(&m, "masked model")
            .replace(&p, "pruned model")
    };
    let outcome = check::equivalence(masked, pruned, vo).or_else(|tract| {
        let tract = named(tract);
        match check::ort::equivalence(masked, pruned, &vo.inputs) {
            Ok(outs) => {
                e.engine = "onnxruntime".into();
                e.reason = Some(format!("tract could not run the models ({tract})"));
                Ok(outs)
            }
            Err(ort) => Err(anyhow::anyhow!("{tract}; onnxruntime fallback: {}", named(ort))),
        }
    });
    match outcome {
        Ok(outs) => {
            for f in &outs {
                e.max_abs_err = e.max_abs_err.max(f.max_abs_err);
                e.max_rel_l2_err = e.max_rel_l2_err.max(f.rel_l2_err);
            }
            let finite = outs.iter().all(|f| f.max_abs_err.is_finite() && f.rel_l2_err.is_finite());
            e.pass = Some(finite && !outs.is_empty() && e.max_rel_l2_err <= EQUIVALENCE_TOLERANCE);
            e.outputs = outs;
        }
        Err(err) => {
            // Neither engine could run it: the proof is unavailable, which is not a proof of
            // failure; the report says so and the structural result is not claimed exact.
            e.status = "skipped".into();
            e.engine = String::new();
            e.reason = Some(format!("{err:#}"));
        }
    }
    e
}
