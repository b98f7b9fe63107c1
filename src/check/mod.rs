//! Verification: run the dense and the pruned model on the same inputs with tract and report how
//! far apart they are (per-output errors, top-1 agreement, accuracy on labels), plus latency and
//! MACs.
//!
//! Nothing here panics or claims success it did not check: when tract cannot run a model, the
//! result is `status: "skipped"` with the reason.

pub mod fidelity;
pub mod inputs;
pub mod latency;
pub mod macs;
pub mod run;

pub use fidelity::{accuracy, compare, load_labels, OutputFidelity};
pub use inputs::{model_inputs, prepare_inputs, DimSpec, InputData, InputFact, InputInfo, InputSpec, Inputs};
pub use latency::{latency, LatencyStats};
pub use macs::{macs, Macs};
pub use run::{load_runnable, run, Runnable};

use anyhow::{bail, Context, Result};
use fidelity::finite_opt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    pub inputs: InputSpec,
    /// Integer class labels (`.npy`) for the first output's argmax.
    pub labels: Option<PathBuf>,
    pub latency: bool,
}

/// Warm-up runs before timing.
pub const LATENCY_WARMUP: usize = 2;
/// Most timed runs (fewer when the 1 s budget is spent first).
pub const LATENCY_MAX_RUNS: usize = 200;

#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    /// "ok" or "skipped".
    pub status: String,
    /// Why it was skipped (stage and model).
    pub reason: Option<String>,
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    pub outputs: Vec<OutputFidelity>,
    #[serde(serialize_with = "finite_opt")]
    pub accuracy_dense: Option<f64>,
    #[serde(serialize_with = "finite_opt")]
    pub accuracy_pruned: Option<f64>,
    pub latency_dense: Option<LatencyStats>,
    pub latency_pruned: Option<LatencyStats>,
    pub macs_dense: Option<u64>,
    pub macs_pruned: Option<u64>,
    /// Assumed dims, fallbacks taken, and why an optional measurement (accuracy, latency, MACs)
    /// is missing ("MACs unavailable: …").
    pub notes: Vec<String>,
}

impl Verification {
    fn skipped(reason: String, input_shapes: BTreeMap<String, Vec<usize>>, notes: Vec<String>) -> Self {
        Verification {
            status: "skipped".into(),
            reason: Some(reason),
            input_shapes,
            outputs: vec![],
            accuracy_dense: None,
            accuracy_pruned: None,
            latency_dense: None,
            latency_pruned: None,
            macs_dense: None,
            macs_pruned: None,
            notes,
        }
    }

    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

/// Both models must take the same inputs (names, element types); returns the input data.
fn shared_inputs(a: &Path, b: &Path, spec: &InputSpec) -> Result<Inputs> {
    let inputs = prepare_inputs(a, spec).context("preparing inputs")?;
    let bi = model_inputs(b).context("reading inputs")?;
    for i in &bi {
        let Some(x) = inputs.get(&i.name) else {
            bail!("{}: input '{}' is not an input of {}", b.display(), i.name, a.display());
        };
        if x.data.elem_type() != i.elem_type {
            bail!(
                "{}: input '{}' is {} but {} in {}",
                b.display(),
                i.name,
                crate::model::tensor::dtype_name(i.elem_type),
                crate::model::tensor::dtype_name(x.data.elem_type()),
                a.display()
            );
        }
    }
    if bi.len() != inputs.inputs.len() {
        let names: Vec<&str> = bi.iter().map(|i| i.name.as_str()).collect();
        bail!("{}: inputs ({}) differ from {}", b.display(), names.join(", "), a.display());
    }
    Ok(inputs)
}

fn compile(which: &str, path: &Path, inputs: &Inputs) -> Result<Runnable> {
    load_runnable(path, &inputs.facts()).with_context(|| format!("{which} model {}", path.display()))
}

fn outputs(which: &str, r: &Runnable, inputs: &Inputs) -> Result<Vec<ndarray::ArrayD<f32>>> {
    run(r, inputs).with_context(|| format!("{which} model"))
}

/// Run `dense` and `pruned` on the same inputs and compare. Never panics: any failure to prepare,
/// compile or run gives `status: "skipped"` and a one-line reason naming the stage and model.
pub fn verify(dense: &Path, pruned: &Path, opts: &VerifyOptions) -> Verification {
    let mut notes = vec![];
    let inputs = match shared_inputs(dense, pruned, &opts.inputs) {
        Ok(i) => i,
        Err(e) => return Verification::skipped(format!("{e:#}"), BTreeMap::new(), notes),
    };
    let shapes = inputs.shapes();
    notes.extend(inputs.assumed.iter().map(|a| format!("assumed {a}")));
    let skip = |e: anyhow::Error, notes: Vec<String>| Verification::skipped(format!("{e:#}"), shapes.clone(), notes);
    let rd = match compile("dense", dense, &inputs) {
        Ok(r) => r,
        Err(e) => return skip(e, notes),
    };
    let rp = match compile("pruned", pruned, &inputs) {
        Ok(r) => r,
        Err(e) => return skip(e, notes),
    };
    for (which, r) in [("dense", &rd), ("pruned", &rp)] {
        notes.extend(r.notes.iter().map(|n| format!("{which}: {n}")));
    }
    let od = match outputs("dense", &rd, &inputs) {
        Ok(o) => o,
        Err(e) => return skip(e, notes),
    };
    let op = match outputs("pruned", &rp, &inputs) {
        Ok(o) => o,
        Err(e) => return skip(e, notes),
    };
    let fid = compare(&od, &op, &rd.output_names);

    let (mut acc_d, mut acc_p) = (None, None);
    if let Some(lp) = &opts.labels {
        let first = rd.output_names.first().cloned().unwrap_or_default();
        match load_labels(lp) {
            Err(e) => notes.push(format!("accuracy unavailable: {e:#}")),
            Ok(labels) => {
                for (which, outs, slot) in [("dense", &od, &mut acc_d), ("pruned", &op, &mut acc_p)] {
                    match outs.first().context("model has no output").and_then(|o| accuracy(o, &labels)) {
                        Ok(a) => *slot = Some(a),
                        Err(e) => notes.push(format!("accuracy unavailable ({which}, output '{first}'): {e:#}")),
                    }
                }
            }
        }
    }

    let (mut lat_d, mut lat_p) = (None, None);
    if opts.latency {
        for (which, r, slot) in [("dense", &rd, &mut lat_d), ("pruned", &rp, &mut lat_p)] {
            match latency(r, &inputs, LATENCY_WARMUP, LATENCY_MAX_RUNS) {
                Ok(l) => *slot = Some(l),
                Err(e) => notes.push(format!("latency unavailable ({which}): {e:#}")),
            }
        }
    }

    let facts = inputs.facts();
    let (mut macs_d, mut macs_p) = (None, None);
    for (which, p, slot) in [("dense", dense, &mut macs_d), ("pruned", pruned, &mut macs_p)] {
        match macs(p, &facts) {
            Ok(m) => *slot = Some(m.total),
            Err(e) => notes.push(format!("MACs unavailable ({which}): {e:#}")),
        }
    }

    Verification {
        status: "ok".into(),
        reason: None,
        input_shapes: shapes,
        outputs: fid,
        accuracy_dense: acc_d,
        accuracy_pruned: acc_p,
        latency_dense: lat_d,
        latency_pruned: lat_p,
        macs_dense: macs_d,
        macs_pruned: macs_p,
        notes,
    }
}

/// Run `a` and `b` on the same inputs (prepared from `a`) and compare `b` against `a`. Used for
/// masked-equivalence: `a` = dense model with the pruned units zeroed, `b` = pruned model.
pub fn equivalence(a: &Path, b: &Path, opts: &VerifyOptions) -> Result<Vec<OutputFidelity>> {
    let inputs = shared_inputs(a, b, &opts.inputs)?;
    let ra = compile("reference", a, &inputs)?;
    let rb = compile("other", b, &inputs)?;
    let oa = outputs("reference", &ra, &inputs)?;
    let ob = outputs("other", &rb, &inputs)?;
    Ok(compare(&oa, &ob, &ra.output_names))
}
