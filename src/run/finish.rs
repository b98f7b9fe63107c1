//! The parts of a run around the pass that only read what it made: the notes on what the input
//! holds that the pass leaves alone, the proofs of the structural stages, verification of the
//! staged output, the checks that refuse to publish it (masked-equivalence failed, or no engine
//! could prove the rewrite), and sparse storage. Contract: nothing here changes the pruned model;
//! each function returns notes for the report or an error that stops the run before anything is
//! published.

use super::*;
use crate::check::{Verification, VerifyOptions};
use crate::report::Equivalence;
use std::collections::BTreeSet;

/// Notes on what the input holds that the pass leaves as it is: layers quantized in operator
/// form (an error when they are all the model has), weights read as run-time inputs, weights in
/// If/Loop/Scan bodies, sparse initializers read dense.
pub(super) fn input_notes(o: &RunOptions, proto: &ModelProto, densified: usize) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    if let Some(g) = proto.graph.as_ref() {
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
    if let Some(n) =
        (o.weight_inputs == WeightInputs::Input).then(|| crate::model::weight_inputs::count(proto)).filter(|&n| n > 0)
    {
        notes.push(format!(
            "{n} weight(s) are graph inputs too, treated as run-time inputs (--weight-inputs input): nothing that \
             reads them is pruned"
        ));
    }
    if let Some((k, p)) = proto.graph.as_ref().map(graph::subgraph_params).filter(|(k, _)| *k > 0) {
        notes.push(format!(
            "{k} weight tensor(s) inside If/Loop/Scan bodies ({} parameters) are left as they are (and their MACs not counted): onnx-emp \
             prunes the main graph",
            p.n
        ));
    }
    if densified > 0 && o.sparse_initializers {
        notes.push(format!("{densified} sparse initializer(s) read as dense tensors"));
    }
    Ok(notes)
}

/// The note on layers reconstruction could not refit because of how their weights are
/// quantized, if any.
pub(super) fn unrefitted_note(r: &crate::reconstruct::ReconReport) -> Option<String> {
    let quantized = r
        .layers
        .iter()
        .filter(|l| {
            l.method == "skipped" && l.note.as_deref().is_some_and(|n| n.contains(crate::reconstruct::site::QUANTIZED))
        })
        .count();
    (quantized > 0).then(|| {
        format!(
            "reconstruction did not refit {quantized} of {} layer(s): their weights are quantized in a way \
             it cannot write back (see each layer's reason), so nothing repaired their inputs' cut. For a \
             refitted cut, prune the float model with --calibration, then quantize the pruned model",
            r.layers.len()
        )
    })
}

/// The structural stages' proofs.
pub(super) struct Proofs {
    pub equivalence: Vec<Equivalence>,
    /// False when a proof failed.
    pub exact: bool,
    /// The (masked, pruned) files written for the proofs, to remove after verification.
    pub paths: Vec<(PathBuf, PathBuf)>,
}

/// Prove each structural stage: its masked model (and its pruned model, when it is not the
/// output `staged`) written to `staging` and run against each other. Without verification each
/// stage is reported unproven, not exact.
pub(super) fn prove_stages(
    o: &RunOptions,
    stages: Vec<(String, Option<ModelProto>, Option<ModelProto>)>,
    staging: &Path,
    staged: &Path,
    save_opts: &SaveOptions,
) -> Result<Proofs> {
    let mut equivalence = Vec::new();
    let mut exact = true;
    let mut paths: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (i, (name, masked, stage_pruned)) in stages.into_iter().enumerate() {
        if !o.verify {
            // No tract runs at all: the rewrite is reported unproven, not exact.
            equivalence.push(unproven(&name));
            continue;
        }
        let mp = staging.join(format!("masked-{i}.onnx"));
        if let Some(masked) = masked {
            io::save(masked, &mp, save_opts)?;
        }
        let pp = match stage_pruned {
            Some(m) => {
                let pp = staging.join(format!("pruned-{i}.onnx"));
                io::save(m, &pp, save_opts)?;
                pp
            }
            None => staged.to_path_buf(),
        };
        paths.push((mp.clone(), pp.clone()));
        let e = prove(&name, &mp, &pp, &o.verify_opts);
        if e.pass == Some(false) {
            exact = false;
        }
        equivalence.push(e);
    }
    Ok(Proofs { equivalence, exact, paths })
}

/// Verification of the staged output against `dense`, its latency figures moved to `timing`,
/// and the staging path replaced by the final one in what it says (reports stay identical).
pub(super) fn verify_output(
    o: &RunOptions,
    dense: &Path,
    staged: &Path,
    vo: &VerifyOptions,
    states: &BTreeSet<String>,
    timing: &mut Timing,
) -> Verification {
    let mut v = check::verify(dense, staged, vo);
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
    v
}

/// Why nothing could be measured, when the model did not run: an op neither engine runs, or the
/// sizes made up for its free dims (an image's 224 × 224 for a classifier that needs 8 × 8).
/// `notes`: the run's notes so far (the guard's failure to run the model is one).
pub(super) fn unrun_notes(v: &Verification, notes: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let assumed = v.assumed_sizes();
    let failed = v.status != "ok" || notes.iter().any(|n| n.starts_with("fidelity guard could not run the model"));
    let unsupported = v.reason.as_deref().and_then(crate::check::unsupported_op);
    if let (true, Some(op)) = (failed, &unsupported) {
        out.push(format!(
            "neither tract nor onnxruntime runs the model's op {op}: nothing about the pruned model could be measured"
        ));
    }
    if failed && !assumed.is_empty() && unsupported.is_none() {
        out.push(format!(
            "the model did not run at the sizes assumed for its free dims ({}): give the sizes it takes with \
             --dim NAME=VALUE, or real samples with --inputs",
            assumed.join(", ")
        ));
    }
    out
}

/// Refuse to publish a rewrite whose masked-equivalence failed (unless `--allow-mismatch`) or
/// that neither engine could prove (unless `--allow-unproven`; `--no-verify` asks for no proof,
/// and a model left as it was, `untouched`, needs none). Returns the notes of what was allowed.
pub(super) fn refuse_unproven(
    o: &RunOptions,
    equivalence: &[Equivalence],
    exact: bool,
    untouched: bool,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
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
    Ok(notes)
}

/// With `--sparse-initializers`: the staged output stored with sparse initializers where that
/// is smaller (its bytes, what was stored, and the note that says so). Without it, the
/// initializers the input stored sparse (`input_sparse`, pruned and verified dense) are stored
/// sparse again, as they came (its bytes and the note; no `Sparsified`). None when neither.
pub(super) fn sparse_storage(
    o: &RunOptions,
    staged: &Path,
    save_opts: &SaveOptions,
    input_sparse: &[String],
    timing: &mut Timing,
) -> Result<Option<(u64, Option<crate::model::sparse::Sparsified>, String)>> {
    if !o.sparse_initializers {
        if input_sparse.is_empty() {
            return Ok(None);
        }
        let t = Instant::now();
        let mut l = io::load(staged)?;
        let n = crate::model::sparse::restore_sparse(&mut l.proto, input_sparse);
        let bytes = io::save(l.proto, staged, save_opts)?;
        timing.save_ms += ms(t);
        let rest = input_sparse.len() - n;
        let note = format!(
            "{} sparse initializer(s) read as dense tensors (tract cannot read them), pruned and verified dense, \
             and written sparse again as the input stored them{}",
            input_sparse.len(),
            if rest > 0 {
                format!("; {rest} written dense (the rewrite replaced them with new tensors)")
            } else {
                String::new()
            }
        );
        return Ok(Some((bytes, None, note)));
    }
    let t = Instant::now();
    let (bytes, s) = store_sparse(staged, save_opts)?;
    timing.save_ms += ms(t);
    let unstorable =
        [(s.constants_with_zeros, "stored as Constant nodes"), (s.inputs_with_zeros, "listed as graph inputs too")]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, how)| format!("{n} {how}"))
            .collect::<Vec<_>>();
    let note = if s.tensors == 0 && !unstorable.is_empty() {
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
    };
    Ok(Some((bytes, Some(s), note)))
}
