//! What a run's report says about its outcome, beyond the figures: the weights that were graph
//! inputs too, and the WARNINGs when verification shows the pruned model clearly worse than the
//! input (accuracy fallen, top-1 agreement low, an output far off), when the fidelity guard's
//! random inputs misjudged the user's data, when a structural cut ran slower than dense, or when a
//! `--no-verify` calibrated run ended past the guard's tolerance.
//!
//! Contract: pure functions of the run's options, reports and timings: they read no file, run no
//! model, and decide nothing: each returns the note (None, or none, when there is nothing to say)
//! and the caller adds it to the report. A WARNING names what to do about it.

use super::RunOptions;
use crate::report::Timing;

/// What happened to the weights that were graph inputs too (see `model::weight_inputs`).
pub(super) fn weight_inputs_note(n: usize, r: &crate::model::weight_inputs::Restored) -> Option<String> {
    if n == 0 && r.added.is_empty() {
        return None;
    }
    let mut s = if n > 0 {
        format!(
            "{n} weight(s) are graph inputs too (an IR < 4 or keep_initializers_as_inputs export): treated as weights \
             (--weight-inputs input leaves them alone)"
        )
    } else {
        "IR < 4 model".to_string()
    };
    if !r.reshaped.is_empty() {
        s += &format!(
            "; {} declared with their pruned shapes (a caller that feeds them must feed those)",
            r.reshaped.len()
        );
    }
    if !r.dropped.is_empty() {
        s += &format!("; {} no longer used, no longer inputs ({})", r.dropped.len(), r.dropped.join(", "));
    }
    if !r.added.is_empty() {
        s += &format!("; {} new weight(s) declared as inputs, as IR < 4 requires", r.added.len());
    }
    (n > 0 || !r.added.is_empty()).then_some(s)
}

/// How far past the guard's tolerance the user's samples must put the outputs for
/// [`guard_misjudged`] to speak.
const MISJUDGED: f64 = 1.5;

/// A loud note when the guard passed the cut on random inputs but the user's own samples
/// (`--inputs`) show the outputs moved well past its tolerance: random inputs misjudged the model
/// (yolo_block at `--round-to 1`: 0.092 on random inputs, 0.273 on the test images, 5.8 points
/// lost).
pub(super) fn guard_misjudged(
    v: &crate::check::Verification,
    g: &crate::check::guard::GuardReport,
    real: bool,
) -> Option<String> {
    if !real || !g.inputs.contains("random") || g.kept_dense {
        return None;
    }
    let worst = v
        .outputs
        .iter()
        .filter(|o| o.error.is_none() && o.rel_l2_err.is_finite())
        .max_by(|a, b| a.rel_l2_err.total_cmp(&b.rel_l2_err))?;
    // Past it, not clearly: the spread between two sets of samples may be all it is, but the user
    // reads a tolerance the written model does not meet on their data (Magika: 0.007 on random
    // bytes, 0.115 on 256 real files, 95.3 % agreement), so it is said, quietly.
    // (Within a tenth of it, as the guard's own β search lands, it is the same figure.)
    if worst.rel_l2_err > 1.1 * g.tolerance && worst.rel_l2_err <= MISJUDGED * g.tolerance {
        return Some(format!(
            "on your --inputs the cut moves output '{}' by {:.3} (relative L2), over the tolerance {} the fidelity \
             guard held it to on {}; --calibration with real samples lets the guard judge on them",
            worst.name, worst.rel_l2_err, g.tolerance, g.inputs
        ));
    }
    // Clearly past it: a hair over is the spread between two sets of samples, not a misjudgement.
    (worst.rel_l2_err > MISJUDGED * g.tolerance).then(|| {
        format!(
            "WARNING: the fidelity guard passed this cut (β {}) on {}, within its tolerance {}, but on your --inputs \
             it moves output '{}' by {:.3} (relative L2), over {MISJUDGED}× that: random inputs misjudge this model. Pass --calibration \
             with a few hundred real samples (the guard and reconstruction then work on them), or keep more with \
             --beta above {}",
            g.beta, g.inputs, g.tolerance, worst.name, worst.rel_l2_err, g.beta
        )
    })
}

/// Accuracy may fall by at most this much (fraction) before the report warns.
pub const WARN_ACCURACY_DROP: f64 = 0.01;
/// Top-1 agreement with the dense model below this makes the report warn.
pub const WARN_AGREEMENT: f64 = 0.95;
/// An output with no top-1 agreement rate (a score per frame, a regression, a recurrent state)
/// further than this from dense (relative L2) makes the report warn: half its size.
pub const WARN_REL_L2: f64 = 0.5;

/// A loud note when verification shows the pruned model is clearly worse than the input, with
/// what to do about it. The rule is that the output must not be worse than the input: the tool
/// cannot know that without data, but when the user's inputs or labels show it, it says so.
/// Without labels it is judged on the user's inputs (random inputs are out of distribution:
/// there only an output moved by half its size or more warns): by top-1 agreement on outputs of two rows or more, and by relative L2 on the
/// outputs that have no agreement rate (a streaming VAD's speech probabilities [T]).
/// `on`: what real data verification measured on (None: random inputs); `calibrated`:
/// calibration was given (`reconstructed`: and the kept weights were refitted on it); `ratio`:
/// `--ratio`'s fixed cut, which the advice then names instead of β.
pub(super) fn fidelity_warning(
    v: &crate::check::Verification,
    on: Option<&str>,
    reconstructed: bool,
    calibrated: bool,
    beta: f64,
    ratio: Option<f64>,
) -> Option<String> {
    if !v.is_ok() {
        return None;
    }
    let what = match (v.accuracy_dense, v.accuracy_pruned) {
        (Some(a), Some(b)) if a - b > WARN_ACCURACY_DROP => format!("accuracy fell {:.1} points", (a - b) * 100.0),
        (Some(_), Some(_)) => return None,
        _ if on.is_none() => {
            // Random inputs are out of distribution: only an output moved by half its size or
            // more says something (a channels cut at --beta 0.8 moved digits_cnn's logits 0.975
            // and passed in silence).
            let o = v
                .outputs
                .iter()
                .filter(|o| !o.integer && o.rel_l2_err > WARN_REL_L2)
                .max_by(|a, b| a.rel_l2_err.total_cmp(&b.rel_l2_err))?;
            format!(
                "on random inputs output '{}' moved {:.3} (relative L2) off the dense model's, half its size or \
                 more: the cut may have ruined the model (--inputs with real samples measure it)",
                o.name, o.rel_l2_err
            )
        }
        _ => {
            // An output of one row (a recurrent state [1, 1, 128]) has one argmax: no rate. An
            // integer output's rate is over its elements.
            let rows = |o: &crate::check::OutputFidelity| {
                let rank = if o.integer { o.shape.len() } else { o.shape.len().saturating_sub(1) };
                o.shape[..rank].iter().product::<usize>()
            };
            let rated = |o: &&crate::check::OutputFidelity| rows(o) >= 2 && o.top1_agreement.is_some();
            let worst = v
                .outputs
                .iter()
                .filter(rated)
                .filter_map(|o| o.top1_agreement.map(|t| (t, o.name.as_str(), o.integer)))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            let moved = v
                .outputs
                .iter()
                .filter(|o| !rated(o) && o.rel_l2_err > WARN_REL_L2)
                .max_by(|a, b| a.rel_l2_err.total_cmp(&b.rel_l2_err));
            match moved {
                _ if worst.is_some_and(|w| w.0 < WARN_AGREEMENT) => {
                    let (t, name, integer) = worst.unwrap_or_default();
                    let what = if integer {
                        "the integer output equals the dense model's in"
                    } else {
                        "top-1 agreement with the dense model is"
                    };
                    format!("{what} {:.1} % (output '{name}')", t * 100.0)
                }
                Some(o) => format!(
                    "output '{}' is {:.3} (relative L2) off the dense model's on {}",
                    o.name,
                    o.rel_l2_err,
                    on.unwrap_or_default()
                ),
                None => return None,
            }
        }
    };
    // With --ratio, β has no effect (and is refused beside it): a smaller ratio keeps more.
    let more = match ratio {
        Some(r) => format!("keep more with a --ratio below {r}"),
        None if reconstructed => {
            format!("keep more with --beta above {beta} (e.g. --beta {})", (beta * 1.5 * 100.0).round() / 100.0)
        }
        None => format!("keep more with --beta above {beta}"),
    };
    let fix = if reconstructed {
        more
    } else if calibrated {
        format!("drop --no-reconstruct to reconstruct the kept weights from the calibration samples, or {more}")
    } else {
        format!("pass --calibration with a few hundred real inputs to reconstruct the kept weights, or {more}")
    };
    Some(format!("WARNING: {what}; {fix}"))
}

/// Beyond this ratio (pruned / dense median latency) a structural cut ran slower than dense:
/// more than the few per cent interleaved timing varies by on a quiet machine.
const WARN_SLOWER: f64 = 1.03;

/// A warning per engine in which the pruned model ran slower than the dense one: a smaller model
/// that is slower is not what structural pruning is for, and the report must not bury it.
pub(super) fn slower_warnings(t: &Timing) -> Vec<String> {
    let tract = t.latency_dense.as_ref().zip(t.latency_pruned.as_ref()).map(|(d, p)| ("tract".to_string(), d, p));
    let ort = t.latency_onnxruntime.as_ref().map(|o| (format!("onnxruntime {}", o.version), &o.dense, &o.pruned));
    tract
        .into_iter()
        .chain(ort)
        .filter(|(_, d, p)| d.median_ms > 0.0 && p.median_ms > d.median_ms * WARN_SLOWER)
        .map(|(engine, d, p)| {
            format!(
                "WARNING: the pruned model ran slower than the dense one in {engine} ({:.2}×: {:.3} → {:.3} ms, median \
                 of {} / {} interleaved runs): re-time it with a longer --latency-budget on a quiet machine before \
                 trusting it; timing.hotspots in the JSON report says where tract spends the time",
                p.median_ms / d.median_ms,
                d.median_ms,
                p.median_ms,
                d.runs,
                p.runs
            )
        })
        .collect()
}

/// A default run (β not given) with reconstruction is held to the guard's tolerance
/// ([`pass::hold`](super::pass::hold)) when verification is on; with `--no-verify` (no guard can
/// run), the report warns when the result is further from dense than that on the held-out
/// calibration samples.
pub(super) fn calibrated_warning(o: &RunOptions, r: Option<&crate::reconstruct::ReconReport>) -> Option<String> {
    let tol = o.default_guard()?;
    let e = r?.end_to_end.as_ref()?;
    let err = if e.kept { e.err_with } else { e.err_without }.sqrt();
    (err > tol).then(|| {
        format!(
            "WARNING: after reconstruction the outputs are {err:.3} from dense (relative L2 on {} held-out calibration \
             samples), over the fidelity guard's tolerance {tol} (with --no-verify the guard does not hold the run \
             to it): keep more with --beta above 1",
            e.samples
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{ort::OrtLatency, LatencyStats};

    fn stats(ms: f64) -> LatencyStats {
        LatencyStats { median_ms: ms, min_ms: ms, runs: 9, samples: 1 }
    }

    /// Top-1 agreement warns on outputs of many rows, not on a recurrent state's single row
    /// (Silero VAD's hn [1, 1, 128]: one argmax, 0 or 100 %); an output with no rate warns when
    /// it is more than [`WARN_REL_L2`] off.
    #[test]
    fn a_single_rows_argmax_is_no_agreement_rate() {
        use ndarray::{ArrayD, IxDyn};
        let arr = |shape: &[usize], v: &[f32]| ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap();
        let names = ["y".to_string(), "hn".to_string()];
        let y = arr(&[4, 2], &[1., 0., 0., 1., 1., 0., 0., 1.]);
        // Its argmax moves, but it is 0.4 off (relative L2): no warning.
        let (hn, hn_moved) = (arr(&[1, 1, 3], &[1., 0.8, 0.]), arr(&[1, 1, 3], &[0.8, 1.0, 0.]));
        let v = |outputs| crate::check::Verification {
            status: "ok".into(),
            reason: None,
            engine: "tract".into(),
            outputs,
            ..crate::check::Verification::skipped(String::new(), Default::default(), vec![])
        };
        let same_y = v(crate::check::compare(&[y.clone(), hn.clone()], &[y.clone(), hn_moved.clone()], &names));
        assert_eq!(same_y.outputs[1].top1_agreement, Some(0.0));
        assert_eq!(fidelity_warning(&same_y, Some("your inputs"), false, false, 1.0, None), None);
        let y_moved = arr(&[4, 2], &[0., 1., 0., 1., 0., 1., 0., 1.]);
        let moved = v(crate::check::compare(&[y, hn], &[y_moved, hn_moved], &names));
        let w = fidelity_warning(&moved, Some("your inputs"), false, false, 1.0, None).unwrap();
        assert!(w.contains("top-1 agreement with the dense model is 50.0 % (output 'y')"), "{w}");
        // A state (or a per-frame score) far off: named.
        let (y, hn) = (arr(&[4, 2], &[1., 0., 0., 1., 1., 0., 0., 1.]), arr(&[1, 1, 3], &[1., 0.8, 0.]));
        let far = v(crate::check::compare(&[y.clone(), hn], &[y, arr(&[1, 1, 3], &[0., 0., 1.])], &names));
        let w = fidelity_warning(&far, Some("your inputs"), false, false, 1.0, None).unwrap();
        assert!(w.contains("output 'hn' is 1.") && w.contains("(relative L2) off"), "{w}");
        // On random inputs, only half its size or more: 'hn' 1.x off warns, 0.4 off does not.
        let w = fidelity_warning(&far, None, false, false, 1.0, None).unwrap();
        assert!(w.contains("on random inputs output 'hn' moved 1."), "{w}");
        assert_eq!(fidelity_warning(&same_y, None, false, false, 1.0, None), None);
        // After --ratio (β has no effect beside it), the advice is a smaller ratio.
        let w = fidelity_warning(&far, Some("your inputs"), true, true, 1.0, Some(0.5)).unwrap();
        assert!(w.contains("keep more with a --ratio below 0.5") && !w.contains("--beta"), "{w}");
    }

    #[test]
    fn a_guard_pass_on_random_inputs_that_real_inputs_refute_is_a_warning() {
        use ndarray::{ArrayD, IxDyn};
        let arr = |v: &[f32]| ArrayD::from_shape_vec(IxDyn(&[2, 2]), v.to_vec()).unwrap();
        let v = |b: &[f32]| crate::check::Verification {
            status: "ok".into(),
            outputs: crate::check::compare(&[arr(&[1., 0., 0., 1.])], &[arr(b)], &["logits".to_string()]),
            ..crate::check::Verification::skipped(String::new(), Default::default(), vec![])
        };
        let g = |inputs: &str| crate::check::guard::GuardReport {
            tolerance: 0.1,
            inputs: inputs.into(),
            samples: 32,
            trials: vec![],
            beta: 1.1,
            kept_dense: false,
            candidates: 10,
            groups: None,
            by_group: false,
        };
        let (far, near) = (v(&[1., 0.3, 0., 1.]), v(&[1., 0.05, 0., 1.]));
        let w = guard_misjudged(&far, &g("32 random inputs (seed 0)"), true).unwrap();
        assert!(
            w.contains("on your --inputs it moves output 'logits' by 0.212") && w.contains("--beta above 1.1"),
            "{w}"
        );
        assert_eq!(guard_misjudged(&near, &g("32 random inputs (seed 0)"), true), None);
        // A little over the tolerance: a note, not a WARNING.
        let w = guard_misjudged(&v(&[1., 0.18, 0., 1.]), &g("32 random inputs (seed 0)"), true).unwrap();
        assert!(w.contains("moves output 'logits' by 0.127") && w.contains("over the tolerance 0.1"), "{w}");
        assert!(!w.contains("WARNING"), "{w}");
        // Judged on calibration rows, or no real inputs to refute it: nothing to say.
        assert_eq!(guard_misjudged(&far, &g("32 calibration rows"), true), None);
        assert_eq!(guard_misjudged(&far, &g("32 random inputs (seed 0)"), false), None);
    }

    #[test]
    fn a_cut_slower_than_dense_in_either_engine_is_a_warning() {
        let mut t = Timing { latency_dense: Some(stats(1.0)), latency_pruned: Some(stats(1.02)), ..Default::default() };
        assert!(slower_warnings(&t).is_empty(), "within timing noise");
        t.latency_pruned = Some(stats(1.1));
        let w = slower_warnings(&t);
        assert!(w.len() == 1 && w[0].contains("in tract (1.10×: 1.000 → 1.100 ms"), "{w:?}");
        t.latency_pruned = Some(stats(0.8));
        t.latency_onnxruntime = Some(OrtLatency { version: "1.32.0".into(), dense: stats(2.0), pruned: stats(2.5) });
        let w = slower_warnings(&t);
        assert!(w.len() == 1 && w[0].contains("in onnxruntime 1.32.0 (1.25×"), "{w:?}");
    }
}
