//! What the user's own `--inputs` refute, seen in verification: a default run's fidelity guard
//! that passed a cut on random inputs ([`refuted_on_inputs`]), or calibration data that does not
//! behave like those inputs ([`calibration_refuted`]). [`super::run`] then does the run again
//! (judging on the inputs, or without the calibration data) and writes that in its place.
//!
//! Contract: pure functions of the run's options and what verification and the first run's
//! stages measured; they read no file and run no model.

use super::warnings::WARN_ACCURACY_DROP;
use super::{CriterionArg, RunOptions};
use crate::check;
use crate::report::Report;

/// The user's inputs refuted the guard above this multiple of its tolerance.
pub(super) const REFUTED: f64 = 1.1;

/// A calibrated run is refuted by the user's `--inputs` when its outputs there are further from
/// dense than this multiple of the guard's tolerance…
const CALIBRATION_REFUTED: f64 = 1.5;
/// …and than this multiple of what the held-out calibration samples showed: the data the cut was
/// chosen and fitted on does not behave like the user's (pixels scaled to [0, 1] for a model
/// that standardises them took fmnist_mobilenet from 89.5 to 51.2 %, 0.035 on held-out
/// calibration samples, 0.82 on the test images). A cut that is simply far from dense on both
/// (an explicit small β) is not this.
const CALIBRATION_SPREAD: f64 = 3.0;

/// What the user's inputs showed of a calibrated run that the calibration samples did not:
/// (the note, whether the run may be done again without the calibration data).
pub(super) struct Refuted {
    pub note: String,
    pub redo: bool,
}

/// A run with `--calibration` whose outputs on the user's `--inputs` are far off dense while
/// the held-out calibration samples (or the guard's calibration rows) showed them close: None
/// when there is nothing to say.
pub(super) fn calibration_refuted(
    o: &RunOptions,
    v: &check::Verification,
    recon: Option<&crate::reconstruct::ReconReport>,
    guard: Option<&check::guard::GuardReport>,
) -> Option<Refuted> {
    if o.calibration.is_none() || o.guard_on_inputs || o.plan || !o.real_inputs() || !v.is_ok() {
        return None;
    }
    let worst = worst_float_output(v)?;
    // What the calibration samples said of the model written.
    let (said, on) = match (recon.and_then(|r| r.end_to_end.as_ref()), guard) {
        (Some(e), _) => (
            (if e.kept { e.err_with } else { e.err_without }).sqrt(),
            format!("{} held-out calibration samples", e.samples),
        ),
        (_, Some(g)) if g.inputs.contains("calibration") => {
            (g.trials.iter().rev().find(|t| t.beta == g.beta)?.rel_l2, g.inputs.clone())
        }
        _ => return None,
    };
    let tol = o.guard.unwrap_or(crate::check::guard::DEFAULT_TOLERANCE);
    if worst.rel_l2_err <= CALIBRATION_REFUTED * tol || worst.rel_l2_err <= CALIBRATION_SPREAD * said {
        return None;
    }
    let default = o.default_guard().is_some();
    let needs = matches!(o.criterion, Some(CriterionArg::Wanda | CriterionArg::Activation));
    let found = format!(
        "on your --inputs the model fitted and judged on the --calibration data moves output '{}' by {:.3} \
         (relative L2), against {said:.3} on {on}: the calibration data does not behave like your inputs (one of \
         them prepared another way?)",
        worst.name, worst.rel_l2_err
    );
    let note = if default && !needs {
        format!(
            "WARNING: {found}. The model written is the default run without it, its fidelity guard judging on your \
             --inputs samples (verification's figures are on samples that include the ones it judged on); prepare both as \
             the model's inputs are prepared and run again to reconstruct"
        )
    } else {
        format!("WARNING: {found}. Prepare both as the model's inputs are prepared, or run without --calibration")
    };
    Some(Refuted { note, redo: default && !needs })
}

/// Why the first run's guard is to judge again on the user's inputs (the report's note), or None.
pub(super) fn refuted_on_inputs(o: &RunOptions, r: &Report) -> Option<String> {
    let g = r.guard.as_ref()?;
    let v = r.verification.as_ref().filter(|v| v.is_ok())?;
    if o.guard_on_inputs || o.plan || !o.real_inputs() || !g.inputs.contains("random") || g.kept_dense {
        return None;
    }
    let worst = worst_float_output(v);
    let fell = match (v.accuracy_dense, v.accuracy_pruned) {
        (Some(a), Some(b)) if a - b > WARN_ACCURACY_DROP => Some(a - b),
        _ => None,
    };
    // The guard judges relative L2: an accuracy fall at an error within the tolerance would be
    // passed again on the user's samples (said by the accuracy WARNING instead).
    let over = worst.filter(|w| w.rel_l2_err > REFUTED * g.tolerance);
    over?;
    let how = match (over, fell) {
        (Some(w), Some(d)) => format!(
            "moved output '{}' by {:.3} (relative L2) and the accuracy fell {:.1} points",
            w.name,
            w.rel_l2_err,
            d * 100.0
        ),
        (Some(w), None) => format!("moved output '{}' by {:.3} (relative L2)", w.name, w.rel_l2_err),
        (None, Some(d)) => format!("the accuracy fell {:.1} points", d * 100.0),
        (None, None) => return None,
    };
    Some(format!(
        "the fidelity guard first judged on {} and passed β {} (tolerance {}), but on your --inputs that cut {how}: \
         it judged again on your --inputs samples, and the model written is that second cut (verification's figures \
         are on samples that include the ones it judged on; --calibration with separate real samples keeps them apart)",
        g.inputs, g.beta, g.tolerance
    ))
}

/// The float output verification found furthest from dense (relative L2), among those it measured.
fn worst_float_output(v: &check::Verification) -> Option<&check::OutputFidelity> {
    v.outputs
        .iter()
        .filter(|f| f.error.is_none() && !f.integer && f.rel_l2_err.is_finite())
        .max_by(|a, b| a.rel_l2_err.total_cmp(&b.rel_l2_err))
}
