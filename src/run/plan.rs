//! The report of `onnx-emp plan`: the decision a run would make (scope, criterion, β, what each
//! group keeps) and the parameters and MACs it expects, without writing a model.
//!
//! Contract: nothing is written beside OUT; the planned model is saved only to a scratch folder
//! (removed on exit or interrupt) for tract's shape analysis of its MACs, and not at all with
//! `--no-verify`. MACs that cannot be counted are a note, not an error.

use super::{ms, Outcome, RunOptions};
use crate::model::io::{self, Loaded, SaveOptions};
use crate::report::{FileInfo, Params, Report, Timing};
use anyhow::{Context, Result};
use onnx_protobuf::ModelProto;
use std::path::Path;
use std::time::Instant;

/// What a plan reports (the decision), gathered by [`run`](super::run).
pub(super) struct PlanParts {
    pub(super) params: Params,
    pub(super) scope: String,
    pub(super) criterion: String,
    pub(super) calibration: Option<String>,
    pub(super) weights: Option<crate::prune::weights::WeightsReport>,
    pub(super) groups: Vec<crate::prune::GroupReport>,
    pub(super) notes: Vec<String>,
    pub(super) timing: Timing,
}

/// The report of `onnx-emp plan`: the decision and the expected params and MACs (counted by
/// tract's shape analysis on a scratch copy, no inference; skipped with `--no-verify`).
/// `dense`: the input stored dense (its sparse initializers read), when it had any.
pub(super) fn plan_outcome(
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
    Ok(Outcome { report, exact: true, redo: None })
}
