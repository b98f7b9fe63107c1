//! One pruning run, end to end: load → prune → stage the output → verify → publish.
//!
//! The output is written into a private staging folder beside OUT, verified there, and only
//! then renamed into place, so a failed run never leaves a file behind. Its parts: `pass` (the
//! prune pass: the mode's pruning, guarded or reconstructed, and the hold of a calibrated default
//! run to the guard's tolerance), `guard` (the fidelity guard of default runs), `stages` (one
//! structural stage and its proof), `files` (paths, external data, publishing), `options` (what a
//! run is asked to do), `validate` (the weights checked up front), `samples` (the calibration
//! inputs and the user's verification files, read and checked before anything is pruned, and what
//! verification measures on), `warnings` (what the report says about the outcome), `finish` (the
//! input's notes, the stages' proofs, verification, the refusals and sparse storage around the
//! pass), `plan` (the report of `onnx-emp plan`), `refuted` (what the user's `--inputs` refute:
//! a guard's random-input cut, or calibration data unlike them; the run is then done again).

use crate::check;
use crate::model::graph::{self, GraphIndex};
use crate::model::io::{self, Loaded, SaveOptions};
use crate::model::mapped::{MappedData, Masks};
use crate::progress;
use crate::report::{FileInfo, Params, Report, Timing};
use anyhow::{bail, Context, Result};
use onnx_protobuf::ModelProto;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Relative error above which a structural rewrite is a bug, not a measurement.
pub const EQUIVALENCE_TOLERANCE: f64 = 1e-4;

mod files;
mod finish;
mod guard;
mod options;
mod pass;
mod plan;
mod refuted;
mod samples;
mod stages;
mod validate;
mod warnings;
pub use files::check_side_outputs;
use files::{check_paths, external_names, publish, store_sparse, tensor_names};
pub use options::*;
use plan::{plan_outcome, PlanParts};
use refuted::{calibration_refuted, refuted_on_inputs, Refuted};
pub use samples::MIN_RECONSTRUCTION_ROWS;
use samples::{calibration_inputs, check_calibration, check_given_files, verification_options, MISMATCH};
use stages::{nothing_pruned, prove, unproven, with_activations};
use validate::validate_weights;
use warnings::{calibrated_warning, fidelity_warning, guard_misjudged, slower_warnings, weight_inputs_note};
pub use warnings::{WARN_ACCURACY_DROP, WARN_AGREEMENT, WARN_REL_L2};

pub struct Outcome {
    pub report: Report,
    /// False when masked-equivalence failed (the command must exit 1 unless allowed).
    pub exact: bool,
    /// [`calibration_refuted`]'s note when the run is to be done again without the calibration
    /// data ([`run`] does it).
    redo: Option<String>,
}

fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// Parameter counts of the float weights (see `graph::ParamCounts`); `mapped`: data left in
/// mapped files, counted through `masks` (or, with `count_mapped` false, not at all).
fn params(
    m: &ModelProto,
    mapped: Option<&MappedData>,
    masks: &Masks,
    count_mapped: bool,
) -> Result<graph::ParamCounts> {
    let g = m.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    let mut c = graph::param_counts(g, &ix, mapped.map(|m| (m, masks)), count_mapped);
    // The weights of If/Loop/Scan bodies count too (left as they are).
    let (_, sub) = graph::subgraph_params(g);
    c.n += sub.n;
    c.nonzero += sub.nonzero;
    Ok(c)
}

/// One run ([`run_once`]); when its fidelity guard passed the cut on random inputs and the
/// user's `--inputs` then showed it over the tolerance (the outputs moved more than
/// [`refuted::REFUTED`] × the tolerance), a second
/// run whose guard judges on those inputs, written in its place: the default output must not be
/// worse than the input, and the user's samples have shown that it was (a depthwise CNN lost 2.5
/// points, a DenseNet 3, their guards passing 0.061 and 0.096 on random inputs).
pub fn run(o: &RunOptions) -> Result<Outcome> {
    let first = run_once(o)?;
    if let Some(note) = first.redo {
        let mismatch = first.report.notes.into_iter().filter(|n| n.starts_with(MISMATCH));
        let mut second =
            run_once(&RunOptions { calibration: None, calibration_label: None, guard_on_inputs: true, ..o.clone() })?;
        let notes: Vec<String> = std::iter::once(note).chain(mismatch).collect();
        second.report.notes.splice(0..0, notes);
        return Ok(second);
    }
    let Some(refuted) = refuted_on_inputs(o, &first.report) else { return Ok(first) };
    let mut second = run_once(&RunOptions { guard_on_inputs: true, ..o.clone() })?;
    let same = second.report.guard.as_ref().map(|g| g.beta) == first.report.guard.as_ref().map(|g| g.beta);
    let then = if same { "; the same β passed on them" } else { "" };
    second.report.notes.insert(0, refuted + then);
    Ok(second)
}

fn run_once(o: &RunOptions) -> Result<Outcome> {
    let out_dir = if o.plan {
        if !o.input.is_file() {
            bail!("{}: {}", o.input.display(), crate::model::io::not_a_file(&o.input));
        }
        PathBuf::new()
    } else {
        check_paths(&o.input, &o.output, o.force)?
    };
    // The private staging folder beside OUT: the output and the proofs' masked models go there.
    let staging = if o.plan {
        None
    } else {
        Some(
            tempfile::Builder::new()
                .prefix(".onnx-emp-")
                .tempdir_in(&out_dir)
                .with_context(|| format!("{}: cannot create a file in this folder", out_dir.display()))?,
        )
    };
    // Removed if the command is interrupted (`crate::interrupt`).
    let _staging_registered = staging.as_ref().map(|d| crate::interrupt::Registered::new(d.path()));
    let mut timing = Timing::default();
    let t = Instant::now();
    let stage = progress::Stage::start("load");
    // The plain per-weight pass (no verification, no calibration data, nothing else that runs the
    // model or rewrites its storage) reads and writes external data through read-only mappings:
    // the weights are scored in the page cache and written once, through their keep bits.
    let streamed = o.mode == Mode::Weights
        && !o.verify
        && !o.plan
        && o.calibration.is_none()
        && !o.sparse_initializers
        && matches!(o.criterion, None | Some(CriterionArg::Magnitude));
    let mut loaded = if streamed { io::load_mapped(&o.input)? } else { io::load(&o.input)? };
    if loaded.proto.graph.as_ref().is_some_and(|g| !g.sparse_initializer.is_empty()) {
        // Sparse initializers are densified below, from their data in memory.
        loaded.materialize()?;
    }
    if o.sparse_initializers && loaded.proto.ir_version < crate::model::sparse::MIN_IR_VERSION {
        bail!(
            "{}: --sparse-initializers: IR version {} has no sparse_initializer (needs ≥ {})",
            o.input.display(),
            loaded.proto.ir_version,
            crate::model::sparse::MIN_IR_VERSION
        );
    }
    // Sparse-stored weights (e.g. a model written with --sparse-initializers) are pruned and
    // verified dense: tract cannot read them. The dense copy of the input is what verification
    // compares against.
    let sparse_names = crate::model::sparse::sparse_names(&loaded.proto);
    let densified = crate::model::sparse::densify_initializers(&mut loaded.proto)
        .with_context(|| format!("{}: sparse initializers", o.input.display()))?;
    let dense_input = if densified > 0 && o.verify {
        let dir = tempfile::Builder::new()
            .prefix(".onnx-emp-input-")
            .tempdir_in(if o.plan { std::env::temp_dir() } else { out_dir.clone() })
            .context("cannot create a scratch folder beside the output")?;
        let p = dir.path().join("dense-input.onnx");
        let registered = crate::interrupt::Registered::new(dir.path());
        io::save(loaded.proto.clone(), &p, &SaveOptions { external: loaded.external.clone() })?;
        Some((dir, p, registered))
    } else {
        None
    };
    // Weights listed as graph inputs too are pruned as weights: out of the input list for the
    // pass, declared again (with their pruned shapes) in the written model.
    let weight_inputs = match o.weight_inputs {
        WeightInputs::Constant => crate::model::weight_inputs::detach(&mut loaded.proto),
        WeightInputs::Input => Default::default(),
    };
    drop(stage);
    timing.load_ms = ms(t);
    GraphIndex::build(loaded.proto.graph.as_ref().context("model has no graph")?)
        .with_context(|| format!("{}", o.input.display()))?;

    validate_weights(&loaded.proto, &o.include, o.mode != Mode::Weights)
        .with_context(|| format!("{}", o.input.display()))?;
    let masks = Masks::new();
    let mapped = loaded.mapped.clone();
    // Data left in mapped files is not changed by the pass (its keep bits are applied when it is
    // written): it is counted once, after the pass, with and without its keep bits.
    let before = params(&loaded.proto, mapped.as_deref(), &masks, false)?;
    // The pass works on the loaded model in place (no copy); only tensor names are kept for
    // `external_names`.
    let names_before = if loaded.external.is_empty() { Default::default() } else { tensor_names(&loaded.proto) };
    let t = Instant::now();
    let stage = progress::Stage::start("prune");
    let mut notes = finish::input_notes(o, &loaded.proto, densified)?;
    let mut calibration: Option<String> = None;
    // Calibration data, loaded once: for data-driven criteria and for reconstruction.
    let sequence = loaded.proto.graph.as_ref().is_some_and(crate::model::graph::axis0_is_sequence);
    let states = loaded.proto.graph.as_ref().map(crate::model::graph::recurrent_states).unwrap_or_default();
    let calib = calibration_inputs(o, sequence)?;
    let outputs: Vec<String> =
        loaded.proto.graph.as_ref().map(|g| g.output.iter().map(|v| v.name.clone()).collect()).unwrap_or_default();
    let verify_stats = check_given_files(o, &outputs)?;
    let half = |t: &onnx_protobuf::TensorProto| crate::model::promote::half(t.data_type);
    if calib.is_some() && loaded.proto.graph.as_ref().is_some_and(|g| g.initializer.iter().any(half)) {
        notes.push(
            "half-precision model: the calibration runs (statistics, reconstruction, its checks) use a float32 copy \
             (tract has no x86 half-precision matmul kernels); the weights are written back in their own type"
                .into(),
        );
    }
    let recon_inputs = if o.reconstruct && !o.plan { calib.as_ref().map(|c| &c.0) } else { None };
    if let Some(rows) = recon_inputs.map(|c| c.rows()).filter(|&r| r < MIN_RECONSTRUCTION_ROWS) {
        bail!(
            "--calibration: {rows} sample(s); reconstruction needs at least {MIN_RECONSTRUCTION_ROWS}: a fifth \
             is held out to check it end to end, and a handful fits the layers to noise (one image took a \
             trained CNN from 97.7 % to 11.1 %). Give more, or --no-reconstruct to use them for the criterion only"
        );
    }
    if let Some((c, label)) = &calib {
        calibration = Some(label.clone());
        notes.extend(check_calibration(c, &verify_stats)?);
    }
    let masked_opts = SaveOptions { external: loaded.external.clone() };
    let t_recon = std::cell::Cell::new(0.0f64);
    let cx = pass::PassCtx {
        o,
        calib: calib.as_ref().map(|c| &c.0),
        recon: recon_inputs,
        mapped: mapped.as_deref(),
        staging: staging.as_ref().map(|d| d.path()),
        masked_opts: &masked_opts,
        t_recon: &t_recon,
    };
    // A calibrated default run is held to the guard's tolerance: dense is kept for a second pass.
    let held = pass::held_tolerance(o, recon_inputs.is_some());
    let dense = held.map(|_| loaded.proto.clone());
    let mut p = pass::prune_pass(&cx, std::mem::take(&mut loaded.proto), false, dense.as_ref())?;
    if let (Some(tol), Some(dense)) = (held, dense) {
        p = pass::hold(&cx, p, dense, tol)?;
    } else {
        notes.extend(calibrated_warning(o, p.reconstruction.as_ref()));
    }
    let pass::Pass {
        pruned,
        beta: beta_written,
        notes: pass_notes,
        masks,
        guard: guard_report,
        reconstruction,
        weights: weights_report,
        groups,
        stages,
        scope: scope_name,
        criterion: criterion_name,
    } = p;
    notes.extend(pass_notes);
    drop(stage);
    timing.prune_ms = ms(t);
    timing.reconstruct_ms = t_recon.get();
    let after = params(&pruned, mapped.as_deref(), &masks, true)?;
    let (p_before, nz_before) = (before.n + after.mapped_n, before.nonzero + after.mapped_nonzero_stored);
    let (p_after, nz_after) = (after.n, after.nonzero);
    if o.plan {
        return plan_outcome(
            o,
            &loaded,
            dense_input.as_ref().map(|(_, p, _)| p.as_path()),
            pruned,
            PlanParts {
                params: Params { before: p_before, after: p_after, nonzero_before: nz_before, nonzero_after: nz_after },
                scope: scope_name,
                criterion: criterion_name,
                calibration,
                weights: weights_report,
                groups,
                notes,
                timing,
            },
        );
    }

    // Stage: write into a private folder beside OUT; publish only after verification.
    let t = Instant::now();
    let stage = progress::Stage::start("save");
    let staging = staging.context("no staging folder")?;
    notes.extend(reconstruction.as_ref().and_then(finish::unrefitted_note));
    let fname = o.output.file_name().context("output path has no file name")?;
    let staged = staging.path().join(fname);
    let save_opts = SaveOptions { external: external_names(&loaded, &names_before, &pruned) };
    // Nothing pruned (the guard kept every unit, or EMP's cut rounded back to every width): the
    // output is the input's own bytes. Re-serialising would reorder top-level protobuf fields.
    let untouched = loaded.external.is_empty()
        && mapped.is_none()
        && densified == 0
        && !o.sparse_initializers
        && nothing_pruned(&groups, weights_report.as_ref(), reconstruction.as_ref());
    let mut pruned = pruned;
    if !weight_inputs.is_empty() || pruned.ir_version < 4 {
        let r = crate::model::weight_inputs::restore(&mut pruned, &weight_inputs);
        notes.extend(weight_inputs_note(weight_inputs.len(), &r));
    }
    let out_bytes = if untouched {
        drop(pruned);
        std::fs::copy(&o.input, &staged).with_context(|| format!("{}: copy", staged.display()))?
    } else {
        io::save_mapped(pruned, &staged, &save_opts, mapped.as_deref().map(|m| (m, &masks)))?
    };
    drop(masks);
    drop(stage);
    timing.save_ms = ms(t);

    let t = Instant::now();
    let stage = progress::Stage::start("verify");
    let finish::Proofs { equivalence, exact, paths: stage_paths } =
        finish::prove_stages(o, stages, staging.path(), &staged, &save_opts)?;
    let verification = o.verify.then(|| {
        let dense = dense_input.as_ref().map_or(o.input.as_path(), |(_, p, _)| p.as_path());
        let vo = verification_options(o, dense, calib.as_ref().map(|c| &c.0), sequence, p_before);
        finish::verify_output(o, dense, &staged, &vo, &states, &mut timing)
    });
    drop(stage);
    timing.verify_ms = ms(t);
    for (mp, pp) in stage_paths {
        let _ = std::fs::remove_file(&mp);
        if pp != staged {
            let _ = std::fs::remove_file(pp);
        }
        let _ = std::fs::remove_file(mp.with_extension("onnx.data"));
    }
    let (macs_before, macs_after) =
        verification.as_ref().map(|v| (v.macs_dense, v.macs_pruned)).unwrap_or((None, None));
    notes.extend(verification.as_ref().map(|v| finish::unrun_notes(v, &notes)).unwrap_or_default());
    let real_inputs = o.real_inputs();
    let refuted =
        verification.as_ref().and_then(|v| calibration_refuted(o, v, reconstruction.as_ref(), guard_report.as_ref()));
    let redo = match refuted {
        // Its note names the cause, and what to do about it, of any accuracy fall.
        Some(Refuted { note, redo: false }) => {
            notes.insert(0, note);
            None
        }
        Some(Refuted { note, redo: true }) => Some(note),
        None => {
            if let Some(w) = verification.as_ref().and_then(|v| {
                // Without --inputs, verification measured on the calibration samples (real data too).
                let on = if real_inputs {
                    Some("your inputs")
                } else {
                    calib.is_some().then_some("the calibration samples")
                };
                fidelity_warning(v, on, recon_inputs.is_some(), calib.is_some(), beta_written, o.fixed_ratio)
            }) {
                notes.push(w);
            }
            None
        }
    };
    if let (Some(v), Some(g), false) = (verification.as_ref(), guard_report.as_ref(), untouched) {
        notes.extend(guard_misjudged(v, g, real_inputs));
    }
    if o.mode != Mode::Weights && !untouched {
        notes.extend(slower_warnings(&timing));
    }
    notes.extend(finish::refuse_unproven(o, &equivalence, exact, untouched)?);
    let (out_bytes, sparse) = match finish::sparse_storage(o, &staged, &save_opts, &sparse_names, &mut timing)? {
        Some((bytes, s, note)) => {
            notes.push(note);
            (bytes, s)
        }
        None => (out_bytes, None),
    };
    let report = Report {
        tool: format!("onnx-emp {}", env!("CARGO_PKG_VERSION")),
        plan: false,
        input: FileInfo { path: o.input.display().to_string(), bytes: loaded.bytes_on_disk },
        output: FileInfo { path: o.output.display().to_string(), bytes: out_bytes },
        mode: o.mode.name().into(),
        scope: scope_name,
        // The β written: the guard's when it ran.
        beta: beta_written,
        ratio: o.fixed_ratio,
        guard: guard_report,
        criterion: criterion_name,
        calibration,
        params: Params { before: p_before, after: p_after, nonzero_before: nz_before, nonzero_after: nz_after },
        macs_before,
        macs_after,
        weights: weights_report,
        groups,
        reconstruction,
        sparse_initializers: sparse,
        equivalence,
        verification,
        notes,
        timing,
    };
    // A run [`run`] does again is not published: the input stays as it is when OUT is IN, and a
    // failed second run leaves nothing behind.
    if redo.is_none() && refuted_on_inputs(o, &report).is_none() {
        publish(&staged, &o.output)?;
    }
    Ok(Outcome { report, exact, redo })
}

pub use crate::prune::MAX_STRUCT_WIDTH;

/// Load + re-save without changes (used by round-trip tests and `onnx-emp roundtrip`).
pub fn roundtrip(input: &Path, output: &Path) -> Result<Loaded> {
    let l = io::load(input)?;
    io::save(l.proto.clone(), output, &SaveOptions { external: l.external.clone() })?;
    Ok(l)
}
