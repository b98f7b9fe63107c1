//! One pruning run, end to end: load → prune → stage the output → verify → publish.
//!
//! The output is written into a private staging folder beside OUT, verified there, and only
//! then renamed into place, so a failed run never leaves a file behind. Its parts: `pass` (the
//! prune pass: the mode's pruning, guarded or reconstructed, and the hold of a calibrated default
//! run to the guard's tolerance), `guard` (the fidelity guard of default runs), `stages` (one
//! structural stage and its proof), `files` (paths, external data, publishing), `options` (what a
//! run is asked to do).

use crate::check;
use crate::model::graph::{self, GraphIndex};
use crate::model::io::{self, Loaded, SaveOptions};
use crate::model::mapped::{MappedData, Masks};
use crate::progress;
use crate::prune::weights::{self, Include};
use crate::report::{FileInfo, Params, Report, Timing};
use anyhow::{bail, Context, Result};
use onnx_protobuf::ModelProto;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Relative error above which a structural rewrite is a bug, not a measurement.
pub const EQUIVALENCE_TOLERANCE: f64 = 1e-4;

mod files;
mod guard;
mod options;
mod pass;
mod stages;
pub use files::check_side_outputs;
use files::{check_paths, external_names, publish, store_sparse, tensor_names};
pub use options::*;
use stages::{nothing_pruned, prove, unproven, with_activations};

pub struct Outcome {
    pub report: Report,
    /// False when masked-equivalence failed (the command must exit 1 unless allowed).
    pub exact: bool,
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
/// [`REFUTED`] × the tolerance), a second
/// run whose guard judges on those inputs, written in its place: the default output must not be
/// worse than the input, and the user's samples have shown that it was (a depthwise CNN lost 2.5
/// points, a DenseNet 3, their guards passing 0.061 and 0.096 on random inputs).
pub fn run(o: &RunOptions) -> Result<Outcome> {
    let first = run_once(o)?;
    let Some(refuted) = refuted_on_inputs(o, &first.report) else { return Ok(first) };
    let mut second = run_once(&RunOptions { guard_on_inputs: true, ..o.clone() })?;
    let same = second.report.guard.as_ref().map(|g| g.beta) == first.report.guard.as_ref().map(|g| g.beta);
    let then = if same { "; the same β passed on them" } else { "" };
    second.report.notes.insert(0, refuted + then);
    Ok(second)
}

/// The user's inputs refuted the guard above this multiple of its tolerance.
const REFUTED: f64 = 1.1;

/// Why the first run's guard is to judge again on the user's inputs (the report's note), or None.
fn refuted_on_inputs(o: &RunOptions, r: &Report) -> Option<String> {
    let real = !o.verify_opts.inputs.files.is_empty() || o.verify_opts.inputs.npz.is_some();
    let g = r.guard.as_ref()?;
    let v = r.verification.as_ref().filter(|v| v.is_ok())?;
    if o.guard_on_inputs || o.plan || !real || !g.inputs.contains("random") || g.kept_dense {
        return None;
    }
    let worst = v
        .outputs
        .iter()
        .filter(|f| f.error.is_none() && !f.integer && f.rel_l2_err.is_finite())
        .max_by(|a, b| a.rel_l2_err.total_cmp(&b.rel_l2_err));
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
    let mut notes = Vec::new();
    if let Some(g) = loaded.proto.graph.as_ref() {
        let ops = crate::model::qdq::operator_quantized(g);
        if !ops.is_empty() {
            use crate::model::qdq::{operator_list, weighted_layers, OPERATOR_QUANTIZED_ADVICE as ADVICE};
            let list = operator_list(&ops);
            if weighted_layers(g, &GraphIndex::build(g)?) == 0 {
                bail!(
                    "{}: nothing to prune: its layers are quantized in operator form ({list}): {ADVICE}",
                    o.input.display()
                );
            }
            let n: usize = ops.iter().map(|(_, n)| n).sum();
            notes.push(format!("{n} layer(s) quantized in operator form ({list}) are left as they are: {ADVICE}"));
        }
    }
    if let Some(n) = (o.weight_inputs == WeightInputs::Input)
        .then(|| crate::model::weight_inputs::count(&loaded.proto))
        .filter(|&n| n > 0)
    {
        notes.push(format!(
            "{n} weight(s) are graph inputs too, treated as run-time inputs (--weight-inputs input): nothing that \
             reads them is pruned"
        ));
    }
    if let Some((k, p)) = loaded.proto.graph.as_ref().map(graph::subgraph_params).filter(|(k, _)| *k > 0) {
        notes.push(format!(
            "{k} weight tensor(s) inside If/Loop/Scan bodies ({} parameters) are left as they are (and their MACs not counted): onnx-emp \
             prunes the main graph",
            p.n
        ));
    }
    if densified > 0 {
        notes.push(format!(
            "{densified} sparse initializer(s) read as dense tensors{}",
            if o.sparse_initializers { "" } else { " (written dense; --sparse-initializers stores them sparse again)" }
        ));
    }
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
    if let Some(r) = &reconstruction {
        let quantized = r
            .layers
            .iter()
            .filter(|l| {
                l.method == "skipped"
                    && l.note.as_deref().is_some_and(|n| n.contains(crate::reconstruct::site::QUANTIZED))
            })
            .count();
        if quantized > 0 {
            notes.push(format!(
                "reconstruction did not refit {quantized} of {} layer(s): their weights are quantized in a way \
                 it cannot write back (see each layer's reason), so nothing repaired their inputs' cut. For a \
                 refitted cut, prune the float model with --calibration, then quantize the pruned model",
                r.layers.len()
            ));
        }
    }
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
    let mut equivalence = Vec::new();
    let mut exact = true;
    let mut stage_paths: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (i, (name, masked, stage_pruned)) in stages.into_iter().enumerate() {
        if !o.verify {
            // No tract runs at all: the rewrite is reported unproven, not exact.
            equivalence.push(unproven(&name));
            continue;
        }
        let mp = staging.path().join(format!("masked-{i}.onnx"));
        if let Some(masked) = masked {
            io::save(masked, &mp, &save_opts)?;
        }
        let pp = match stage_pruned {
            Some(m) => {
                let pp = staging.path().join(format!("pruned-{i}.onnx"));
                io::save(m, &pp, &save_opts)?;
                pp
            }
            None => staged.clone(),
        };
        stage_paths.push((mp.clone(), pp.clone()));
        let e = prove(&name, &mp, &pp, &o.verify_opts);
        if e.pass == Some(false) {
            exact = false;
        }
        equivalence.push(e);
    }
    let verification = if o.verify {
        let dense = dense_input.as_ref().map_or(o.input.as_path(), |(_, p, _)| p.as_path());
        let vo = verification_options(o, dense, calib.as_ref().map(|c| &c.0), sequence, p_before);
        let mut v = check::verify(dense, &staged, &vo);
        // An argmax over a recurrent state's hidden units is no agreement rate.
        for f in v.outputs.iter_mut().filter(|f| states.contains(&f.name)) {
            f.top1_agreement = None;
        }
        // The staging folder has a random name: report the final path so reports are identical.
        let (from, to) = (staged.display().to_string(), o.output.display().to_string());
        v.reason = v.reason.map(|r| r.replace(&from, &to));
        for n in v.notes.iter_mut() {
            *n = n.replace(&from, &to);
        }
        timing.latency_dense = v.latency_dense.take();
        timing.latency_pruned = v.latency_pruned.take();
        timing.hotspots = std::mem::take(&mut v.hotspots);
        timing.latency_onnxruntime = v.latency_onnxruntime.take();
        Some(v)
    } else {
        None
    };
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
    // A model that did not run at the sizes made up for its free dims (an image's 224 × 224
    // for a classifier that needs 8 × 8): the run cut nothing and said only that it failed.
    if let Some(v) = verification.as_ref() {
        let assumed = v.assumed_sizes();
        let failed = v.status != "ok" || notes.iter().any(|n| n.starts_with("fidelity guard could not run the model"));
        let unsupported = v.reason.as_deref().and_then(crate::check::unsupported_op);
        if let (true, Some(op)) = (failed, &unsupported) {
            notes.push(format!(
                "neither tract nor onnxruntime runs the model's op {op}: nothing about the pruned model could be measured"
            ));
        }
        if failed && !assumed.is_empty() && unsupported.is_none() {
            notes.push(format!(
                "the model did not run at the sizes assumed for its free dims ({}): give the sizes it takes with \
                 --dim NAME=VALUE, or real samples with --inputs",
                assumed.join(", ")
            ));
        }
    }
    let real_inputs = !o.verify_opts.inputs.files.is_empty() || o.verify_opts.inputs.npz.is_some();
    if let Some(w) = verification.as_ref().and_then(|v| {
        // Without --inputs, verification measured on the calibration samples (real data too).
        let on = if real_inputs { Some("your inputs") } else { calib.is_some().then_some("the calibration samples") };
        fidelity_warning(v, on, recon_inputs.is_some(), calib.is_some(), beta_written, o.fixed_ratio)
    }) {
        notes.push(w);
    }
    if let (Some(v), Some(g), false) = (verification.as_ref(), guard_report.as_ref(), untouched) {
        notes.extend(guard_misjudged(v, g, real_inputs));
    }
    if o.mode != Mode::Weights && !untouched {
        notes.extend(slower_warnings(&timing));
    }
    if !exact && !o.allow_mismatch {
        let e = equivalence.iter().find(|e| e.pass == Some(false));
        let detail = e
            .map(|e| match &e.reason {
                Some(r) => format!("{} stage: {r}", e.stage),
                None => format!("{} stage: rel error {:.3e} > {:.0e}", e.stage, e.max_rel_l2_err, e.tolerance),
            })
            .unwrap_or_default();
        bail!(
            "{}: masked-equivalence failed ({detail}); no output written (--allow-mismatch writes it anyway)",
            o.input.display()
        );
    }
    if !exact {
        notes.push("masked-equivalence FAILED; output written because of --allow-mismatch".into());
    }
    // A rewrite neither engine could prove is not written unless asked for (`--no-verify` asks
    // for no proof at all; a model left as it was needs none).
    let unrun = equivalence.iter().find(|e| e.status == "skipped" && o.verify);
    if let (Some(e), false) = (unrun, untouched) {
        if !o.allow_unproven {
            let reason = e.reason.as_deref().unwrap_or("no reason given");
            // Advise installing onnxruntime only when it is what was missing.
            let install = if reason.contains("onnxruntime is not available") || reason.contains("is not runnable") {
                "onnxruntime proves what tract cannot run: pip install onnxruntime numpy; "
            } else {
                ""
            };
            bail!(
                "{}: the {} rewrite could not be proven: neither tract nor onnxruntime ran the models ({reason}); \
                 no output written ({install}--allow-unproven writes it anyway)",
                o.input.display(),
                e.stage,
            );
        }
        notes.push(format!(
            "the {} rewrite is UNPROVEN (neither tract nor onnxruntime ran the models); output written because of \
             --allow-unproven",
            e.stage
        ));
    }
    let mut out_bytes = out_bytes;
    let sparse = if o.sparse_initializers {
        let t = Instant::now();
        let (bytes, s) = store_sparse(&staged, &save_opts)?;
        out_bytes = bytes;
        timing.save_ms += ms(t);
        let unstorable =
            [(s.constants_with_zeros, "stored as Constant nodes"), (s.inputs_with_zeros, "listed as graph inputs too")]
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, how)| format!("{n} {how}"))
                .collect::<Vec<_>>();
        notes.push(if s.tensors == 0 && !unstorable.is_empty() {
            format!(
                "sparse initializers: the weights with enough zeros are not initializers ONNX's sparse_initializer \
                 can hold ({}); the model is stored dense",
                unstorable.join(", ")
            )
        } else if s.tensors == 0 {
            "sparse initializers: no weight tensor has enough zeros for sparse storage to save bytes (ONNX \
             requires INT64 indices, so a float32 weight shrinks only above 66.7 % zeros, float16 above 80 %); \
             the model is stored dense"
                .to_string()
        } else {
            format!(
                "sparse initializers: {} weight tensor(s) stored as values + INT64 indices ({} → {} payload \
                 bytes); onnxruntime reads them, tract 0.23 cannot, so verification ran on the same weights \
                 stored dense",
                s.tensors, s.dense_bytes, s.sparse_bytes
            )
        });
        Some(s)
    } else {
        None
    };
    publish(&staged, &o.output)?;
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
    Ok(Outcome { report, exact })
}

/// What happened to the weights that were graph inputs too (see `model::weight_inputs`).
fn weight_inputs_note(n: usize, r: &crate::model::weight_inputs::Restored) -> Option<String> {
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
fn guard_misjudged(v: &crate::check::Verification, g: &crate::check::guard::GuardReport, real: bool) -> Option<String> {
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

/// Verification's options: without `--inputs`, it measures on the calibration samples when there
/// are some (the data the cut was chosen and fitted on, said in the report), else on as many
/// seeded random samples as the guard judges on, other ones ([`guard::random_inputs`]): one random sample
/// made a "top-1 agreement 0.00 %" that said nothing. `params`: the dense model's, the cost of a
/// sample when tract cannot count its MACs.
fn verification_options(
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
fn fidelity_warning(
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
fn slower_warnings(t: &Timing) -> Vec<String> {
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

/// What a plan reports (the decision), gathered by [`run`].
struct PlanParts {
    params: Params,
    scope: String,
    criterion: String,
    calibration: Option<String>,
    weights: Option<crate::prune::weights::WeightsReport>,
    groups: Vec<crate::prune::GroupReport>,
    notes: Vec<String>,
    timing: Timing,
}

/// A default run (β not given) with reconstruction is held to the guard's tolerance
/// ([`pass::hold`]) when verification is on; with `--no-verify` (no guard can run), the report
/// warns when the result is further from dense than that on the held-out calibration samples.
fn calibrated_warning(o: &RunOptions, r: Option<&crate::reconstruct::ReconReport>) -> Option<String> {
    let tol = o.guard.filter(|_| !o.beta_given && o.fixed_ratio.is_none())?;
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

/// The report of `onnx-emp plan`: the decision and the expected params and MACs (counted by
/// tract's shape analysis on a scratch copy, no inference; skipped with `--no-verify`).
/// `dense`: the input stored dense (its sparse initializers read), when it had any.
fn plan_outcome(
    o: &RunOptions,
    loaded: &Loaded,
    dense: Option<&Path>,
    pruned: ModelProto,
    mut p: PlanParts,
) -> Result<Outcome> {
    let (mut macs_before, mut macs_after) = (None, None);
    if o.verify {
        let t = Instant::now();
        let dir = crate::interrupt::Scratch::new().context("plan scratch folder")?;
        let scratch = dir.path().join("plan.onnx");
        io::save(pruned, &scratch, &SaveOptions { external: loaded.external.clone() })?;
        match crate::check::prepare_inputs(&o.input, &o.verify_opts.inputs) {
            Ok(inputs) => {
                let dense = dense.unwrap_or(&o.input);
                for (which, path, slot) in
                    [("dense", dense, &mut macs_before), ("pruned", scratch.as_path(), &mut macs_after)]
                {
                    match crate::check::macs_per_inference(path, &inputs) {
                        Ok((m, engine)) => {
                            *slot = Some(m.total);
                            if let Some(e) = engine.filter(|_| which == "dense") {
                                p.notes.push(format!(
                                    "MACs counted on the shapes of one run in {e} (tract cannot analyse the model)"
                                ));
                            }
                        }
                        Err(e) => p.notes.push(
                            format!("MACs unavailable ({which}): {e:#}")
                                .replace(&scratch.display().to_string(), "the planned model")
                                .replace(&dense.display().to_string(), &o.input.display().to_string()),
                        ),
                    }
                }
            }
            Err(e) => p.notes.push(format!("MACs unavailable: {e:#}")),
        }
        p.timing.verify_ms = ms(t);
    }
    let report = Report {
        tool: format!("onnx-emp {}", env!("CARGO_PKG_VERSION")),
        plan: true,
        input: FileInfo { path: o.input.display().to_string(), bytes: loaded.bytes_on_disk },
        output: FileInfo { path: "(plan)".into(), bytes: 0 },
        mode: o.mode.name().into(),
        scope: p.scope,
        beta: o.beta,
        ratio: o.fixed_ratio,
        guard: None,
        criterion: p.criterion,
        calibration: p.calibration,
        params: p.params,
        macs_before,
        macs_after,
        weights: p.weights,
        groups: p.groups,
        reconstruction: None,
        sparse_initializers: None,
        equivalence: vec![],
        verification: None,
        notes: p.notes,
        timing: p.timing,
    };
    Ok(Outcome { report, exact: true })
}

/// The calibration inputs and the report's label for them, e.g.
/// "models/digits_calib_x64.npy (256 rows)"; None without `--calibration` (data-driven criteria
/// then refuse to run: they never fall back to the verification inputs or to random data).
/// `sequence`: the model's axis 0 is one sequence ([`crate::model::graph::axis0_is_sequence`]),
/// so that a cap keeps its first rows, in order.
fn calibration_inputs(o: &RunOptions, sequence: bool) -> Result<Option<(crate::check::Inputs, String)>> {
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
fn check_given_files(o: &RunOptions, outputs: &[String]) -> Result<Vec<(String, f64, f64)>> {
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

/// Calibration data that cannot be what the model takes, found before anything is fitted on it:
/// a float input that holds one value in every sample (all-zero data took a trained MobileNet
/// from 89.5 to 9.5 %), or one whose scale is an order of magnitude off the `--inputs` samples'
/// (raw uint8 pixels for a normalised image model: 90.7 → 15.5 %, exit 0). Returns the notes to
/// report (integer data cast to float as it is).
fn check_calibration(c: &crate::check::Inputs, theirs: &[(String, f64, f64)]) -> Result<Vec<String>> {
    let mut notes: Vec<String> =
        c.assumed.iter().filter(|a| a.starts_with("input '")).map(|a| format!("--calibration: {a}")).collect();
    // Without --inputs to compare with, raw 8-bit pixels are still recognisable (a normalised
    // CNN calibrated on them fell from 70.1 to 17.9 %, and verification, on the same samples,
    // reported 98 % agreement).
    if theirs.is_empty() {
        if let Some((name, max)) = c.raw_pixels() {
            notes.push(format!(
                "WARNING: --calibration input '{name}' holds values from 0 to {max} (raw 8-bit pixels?): if \
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
    }
    Ok(notes)
}

pub use crate::prune::MAX_STRUCT_WIDTH;

/// Checks every mode relies on, done once up front: candidate weights have a type and rank their
/// op accepts (and attributes their type), hold no NaN/Inf (a model that computes NaN is refused
/// whatever the mode), and — for structural modes — no axis so wide that per-unit tables could
/// not be allocated.
fn validate_weights(m: &ModelProto, include: &Include, structural: bool) -> Result<()> {
    // Every weight is checked, including those left dense because their units are small.
    let names = weights::candidate_names(m, &Include { small: true, ..include.clone() })?;
    let g = m.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    for name in names {
        let Some(t) = ix.weight(g, &name) else { continue };
        if structural {
            if let Some(d) = t.dims.iter().find(|&&d| d > MAX_STRUCT_WIDTH) {
                bail!("tensor '{name}': dimension {d} is wider than structural pruning supports ({MAX_STRUCT_WIDTH})");
            }
        }
        // Per-weight mode scores every candidate and rejects NaN/Inf there, naming the tensor.
        // Streamed (a copy of the biggest weight would be the structured pass's peak), each value
        // read as `read_f32` reads it.
        if structural && crate::model::tensor::is_float(t.data_type) {
            let (mut i, mut bad) = (0usize, None);
            crate::model::tensor::for_each_f64(t, |x| {
                let x = x as f32;
                if bad.is_none() && !x.is_finite() {
                    bad = Some((i, x));
                }
                i += 1;
            })
            .with_context(|| format!("tensor '{name}'"))?;
            if let Some((i, x)) = bad {
                bail!("tensor '{name}': element {i} is {x} (NaN/Inf weights cannot be pruned)");
            }
        }
    }
    Ok(())
}

/// Load + re-save without changes (used by round-trip tests and `onnx-emp roundtrip`).
pub fn roundtrip(input: &Path, output: &Path) -> Result<Loaded> {
    let l = io::load(input)?;
    io::save(l.proto.clone(), output, &SaveOptions { external: l.external.clone() })?;
    Ok(l)
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
