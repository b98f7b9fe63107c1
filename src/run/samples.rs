//! The data a run works on, read and checked before anything is pruned: the calibration inputs
//! (capped to `--calibration-rows`, evenly spaced or a sequence's first rows), the user's
//! verification files (`--inputs`, `--labels`), calibration data that cannot be what the model
//! takes, and the samples verification measures on when no `--inputs` are given.
//!
//! Contract: a calibration file, or (when verification is on) an `--inputs` or `--labels` file,
//! that does not exist or does not fit the model's inputs or samples, and calibration data unlike
//! the model's inputs, is an error before the pass, never a run whose verification or calibration
//! is quietly skipped. Without `--calibration` there are no calibration inputs: nothing falls back
//! to the verification inputs or to random data.

use super::{guard, RunOptions};
use anyhow::{bail, Context, Result};

/// Verification's options: without `--inputs`, it measures on the calibration samples when there
/// are some (the data the cut was chosen and fitted on, said in the report), else on as many
/// seeded random samples as the guard judges on, other ones ([`guard::random_inputs`]): one random sample
/// made a "top-1 agreement 0.00 %" that said nothing. `params`: the dense model's, the cost of a
/// sample when tract cannot count its MACs.
pub(super) fn verification_options(
    o: &RunOptions,
    dense: &std::path::Path,
    calib: Option<&crate::check::Inputs>,
    sequence: bool,
    params: u64,
) -> crate::check::VerifyOptions {
    let spec = &o.verify_opts.inputs;
    let samples = if !spec.files.is_empty() || spec.npz.is_some() {
        None
    } else if let Some(c) = calib {
        Some((c.clone(), crate::check::Samples::Calibration))
    } else {
        let cost = |one: &crate::check::Inputs| Ok(guard::macs_per_sample(dense, one).unwrap_or(params));
        // When they cannot be made, verification prepares its inputs itself and says why it failed.
        guard::random_inputs(o, sequence, 0, cost)
            .ok()
            .map(|(i, _)| (i, crate::check::Samples::Random { seed: spec.seed }))
    };
    crate::check::VerifyOptions { samples, ..o.verify_opts.clone() }
}

/// The fewest calibration samples reconstruction runs on: with fewer no fifth can be held out
/// to check it end to end.
pub const MIN_RECONSTRUCTION_ROWS: usize = 10;

/// The calibration inputs and the report's label for them, e.g.
/// "models/digits_calib_x64.npy (256 rows)"; None without `--calibration` (data-driven criteria
/// then refuse to run: they never fall back to the verification inputs or to random data).
/// `sequence`: the model's axis 0 is one sequence ([`crate::model::graph::axis0_is_sequence`]),
/// so that a cap keeps its first rows, in order.
pub(super) fn calibration_inputs(o: &RunOptions, sequence: bool) -> Result<Option<(crate::check::Inputs, String)>> {
    let Some(spec) = &o.calibration else { return Ok(None) };
    let label = o.calibration_label.clone().unwrap_or_else(|| "calibration".into());
    let cap = o.calibration_rows;
    // Evenly spaced, so that a file sorted by class is still sampled across its classes (a
    // sequence: its first rows); read so from the files (only those rows of a `.npy` are
    // copied), or picked here otherwise.
    let spec = crate::check::InputSpec { max_rows: cap, first_rows: sequence, ..spec.clone() };
    let inputs = crate::calib::load_inputs(&o.input, &spec)?;
    if let Some(i) = inputs.inputs.first().filter(|i| i.sample_axis == crate::check::inputs::NO_SAMPLE_AXIS) {
        // Its features would be taken for samples: 16 "rows" of one vector passed the count
        // check and reconstruction fitted the layers to them.
        bail!(
            "--calibration: the model has no batch axis (its input '{}' is one vector {:?}), so each run takes one \
             sample and calibration (statistics, reconstruction) has nothing to average over; re-export the model \
             with a batch axis ([N, ...]) to calibrate it",
            i.name,
            i.data.shape()
        );
    }
    inputs.check_finite("--calibration")?;
    let rows = inputs.file_rows.unwrap_or(inputs.rows());
    if cap == 0 || rows <= cap {
        return Ok(Some((inputs, format!("{label} ({rows} rows)"))));
    }
    let inputs = match (inputs.rows() > cap, sequence) {
        (false, _) => inputs,
        (true, true) => inputs.sample_range(0, cap),
        (true, false) => inputs.samples(&crate::check::inputs::evenly_spaced(rows, cap)),
    };
    let how = if sequence { "the first, in order: axis 0 is one sequence" } else { "evenly spaced" };
    Ok(Some((inputs, format!("{label} ({cap} of {rows} rows, {how}: --calibration-rows {cap}; 0 uses all)"))))
}

/// The verification files the user named (`--inputs`, `--labels`) are read, and the inputs
/// checked against the model's declared inputs, before anything is pruned: a typo in a path or a
/// file that does not fit the model is an error, not a run whose verification is skipped (its
/// model written unverified, exit 0), and so is a count of labels that is no multiple of the
/// samples. Whether the labels fit the outputs' rows is known only after a run: a mismatch there
/// is reported with the accuracy.
/// Returns the float inputs' statistics of the user's files (for [`check_calibration`]; the
/// samples themselves are read again by verification, not held through the pass). `outputs`:
/// the model's output names.
pub(super) fn check_given_files(o: &RunOptions, outputs: &[String]) -> Result<Vec<(String, f64, f64)>> {
    if !o.verify {
        return Ok(vec![]);
    }
    let spec = &o.verify_opts.inputs;
    let given = !spec.files.is_empty() || spec.npz.is_some();
    // Reading the files checks `--dim` too; without them it is checked on the model's inputs.
    let read = if given {
        let inputs = crate::check::prepare_inputs(&o.input, spec).context("--inputs")?;
        inputs.check_finite("--inputs")?;
        Some(inputs)
    } else {
        if !spec.dims.is_empty() {
            crate::check::inputs::check_dims(&crate::check::model_inputs(&o.input)?, &spec.dims)?;
        }
        None
    };
    if let Some(name) = o.verify_opts.labels_output.as_ref().filter(|n| !outputs.contains(n)) {
        bail!("--labels {name}=…: the model has no output '{name}' (outputs: {})", outputs.join(", "));
    }
    if let Some(labels) = &o.verify_opts.labels {
        let n = crate::check::load_labels(labels).context("--labels")?.len();
        if !given {
            bail!(
                "--labels {}: labels need the samples they label (--inputs); without them verification runs \
                 on random data",
                labels.display()
            );
        }
        // One label per sample, or per position of each (a token classifier's [N, L] labels):
        // a count no multiple of the samples cannot fit the outputs' rows.
        if let Some(rows) = read.as_ref().map(|i| i.rows()).filter(|&r| r > 0 && n % r != 0) {
            bail!(
                "--labels {}: {n} labels for {rows} input samples (--inputs): one per sample (or per position of each) is needed",
                labels.display()
            );
        }
    }
    Ok(read.map(|i| i.float_stats()).unwrap_or_default())
}

/// How the warnings on calibration data that may not be prepared as the model's inputs begin
/// (carried into the report of a run done again without it).
pub(super) const MISMATCH: &str = "WARNING: --calibration input";

/// Calibration data that cannot be what the model takes, found before anything is fitted on it:
/// a float input that holds one value in every sample (all-zero data took a trained MobileNet
/// from 89.5 to 9.5 %), or one whose scale is an order of magnitude off the `--inputs` samples'
/// (raw uint8 pixels for a normalised image model: 90.7 → 15.5 %, exit 0). Closer but still
/// unlike them (twice the spread, or a mean shifted by the larger std) is a WARNING; what it cost,
/// the user's inputs then show ([`super::calibration_refuted`]). Returns the notes to report
/// (integer data cast to float as it is).
pub(super) fn check_calibration(c: &crate::check::Inputs, theirs: &[(String, f64, f64)]) -> Result<Vec<String>> {
    let mut notes: Vec<String> =
        c.assumed.iter().filter(|a| a.starts_with("input '")).map(|a| format!("--calibration: {a}")).collect();
    // Without --inputs to compare with, raw 8-bit pixels are still recognisable (a normalised
    // CNN calibrated on them fell from 70.1 to 17.9 %, and verification, on the same samples,
    // reported 98 % agreement).
    if theirs.is_empty() {
        if let Some((name, max)) = c.raw_pixels() {
            notes.push(format!(
                "{MISMATCH} '{name}' holds values from 0 to {max} (raw 8-bit pixels?): if \
                 the model expects normalised inputs, the cut is chosen and fitted on the wrong data, and verification \
                 on those samples cannot tell; give --inputs (real samples, prepared as the model expects) and the \
                 two are compared before anything is pruned"
            ));
        }
    }
    let stats = c.float_stats();
    // Every input the same everywhere (a float mask of ones beside token ids that vary is fine).
    if c.rows() > 1 && c.all_constant() {
        let (name, value, _) = stats.first().cloned().unwrap_or_default();
        bail!(
            "--calibration: every input holds one value everywhere (input '{name}': {value}): nothing to fit or \
             score on"
        );
    }
    for (name, mean, std) in stats {
        let Some((_, vm, vs)) = theirs.iter().find(|(n, _, _)| *n == name) else { continue };
        if std == 0.0 || *vs == 0.0 {
            continue;
        }
        let (ratio, shift) = (std / vs, (mean - vm).abs() / std.max(*vs));
        if !(0.1..=10.0).contains(&ratio) || shift > 3.0 {
            bail!(
                "--calibration: input '{name}' does not look like the --inputs samples: mean {mean:.3}, std {std:.3} \
                 against {vm:.3}, {vs:.3} (another scale or preprocessing, e.g. raw 0–255 pixels for a \
                 normalised model?); both must be the model's real inputs, prepared the same way"
            );
        }
        // Closer, but still not the same preparation: pixels scaled to [0, 1] for a model that
        // standardises them (std 0.35 against 1.0) cost a trained CNN 3 points (66.8 against
        // 69.95 %). Real splits of one dataset agree far better (Fashion-MNIST's calibration and
        // test splits: std 0.99 against 1.00; eight test samples: 0.96).
        if !(0.5..=2.0).contains(&ratio) || shift > 1.0 {
            notes.push(format!(
                "{MISMATCH} '{name}' looks prepared unlike the --inputs samples: mean {mean:.3}, std {std:.3} against \
                 {vm:.3}, {vs:.3} (scaled or normalised another way?)"
            ));
        }
    }
    Ok(notes)
}
