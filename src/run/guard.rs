//! The per-weight prune of a run, behind the fidelity guard ([`crate::check::guard`]) when the
//! run is a default one: β not given, no `--ratio`, no reconstruction, verification on.

use super::RunOptions;
use crate::check::guard::{self, GuardReport, Pruned};
use crate::check::inputs::prepare_for;
use crate::check::{InputSpec, Inputs};
use crate::model::mapped::{MappedData, Masks};
use crate::prune::weights::{self, WeightOptions, WeightsReport};
use anyhow::Result;
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
    let Some(tol) = o.guard.filter(|_| !o.beta_given && o.fixed_ratio.is_none() && !reconstructing) else {
        return plain(m, None);
    };
    if o.plan || !o.verify || mapped.is_some() {
        let why = if o.plan { "plan" } else { "--no-verify" };
        return plain(
            m,
            Some(format!(
                "fidelity guard not run ({why}): EMP's cut at β {} is {} unchecked; a verified run may keep more",
                o.beta,
                if o.plan { "shown" } else { "written" }
            )),
        );
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
    let label = format!("{} random inputs (seed {})", inputs.rows(), v.seed);
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
    let last = g.trials.iter().find(|t| t.beta == g.beta).map_or(f64::NAN, |t| t.rel_l2);
    format!(
        "fidelity guard: EMP's cut at β {beta0} moved the outputs by {first:.3} (relative L2, {}), over the \
         tolerance {}; β raised to {:.3} ({last:.3}). Pass --calibration with a few hundred real inputs to keep \
         EMP's cut and reconstruct the kept weights, or --guard off for EMP's cut as is",
        g.inputs, g.tolerance, g.beta
    )
}
