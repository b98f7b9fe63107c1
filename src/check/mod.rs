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
pub use latency::{latency, LatencyOptions, LatencyStats};
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
    /// Latency budget and run count (see [`latency::latency`]).
    pub latency_opts: LatencyOptions,
}

/// Masked-equivalence runs on at most this many samples: it checks that two models compute the
/// same function to float precision, which a few samples show as well as a thousand.
pub const EQUIVALENCE_ROWS: usize = 16;
/// Without labels, fidelity (errors, cosine, top-1 agreement) uses at most this many samples;
/// with labels every sample counts towards accuracy.
pub const FIDELITY_ROWS: usize = 256;

/// Run `a` and `b` at once on two threads (the machine's cores are otherwise idle: tract runs
/// one inference on one core).
fn both<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    std::thread::scope(|s| {
        let hb = s.spawn(b);
        let ra = a();
        let rb = match hb.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        };
        (ra, rb)
    })
}

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
    let all = match shared_inputs(dense, pruned, &opts.inputs) {
        Ok(i) => i,
        Err(e) => return Verification::skipped(format!("{e:#}"), BTreeMap::new(), notes),
    };
    notes.extend(all.assumed.iter().map(|a| format!("assumed {a}")));
    let inputs = match (&opts.labels, all.head(FIDELITY_ROWS)) {
        (None, Some(h)) => {
            notes.push(format!(
                "fidelity on the first {FIDELITY_ROWS} of {} samples (enough for its statistics; with --labels every sample is used)",
                all.rows()
            ));
            h
        }
        _ => all,
    };
    let shapes = inputs.shapes();
    let skip = |e: anyhow::Error, notes: Vec<String>| Verification::skipped(format!("{e:#}"), shapes.clone(), notes);
    let (rd, rp) = both(|| compile("dense", dense, &inputs), || compile("pruned", pruned, &inputs));
    let (rd, rp) = match (rd, rp) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return skip(e, notes),
    };
    for (which, r) in [("dense", &rd), ("pruned", &rp)] {
        notes.extend(r.notes.iter().map(|n| format!("{which}: {n}")));
    }
    let (od, op) = both(|| outputs("dense", &rd, &inputs), || outputs("pruned", &rp, &inputs));
    let (od, op) = match (od, op) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return skip(e, notes),
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
        // Latency is what one deployed inference costs: time one sample, not the whole
        // verification batch (a model whose axis 0 is not a free batch axis is timed as is).
        let one = inputs.head(1).and_then(|one| {
            match both(|| compile("dense", dense, &one), || compile("pruned", pruned, &one)) {
                (Ok(a), Ok(b)) => Some((one, a, b)),
                _ => None,
            }
        });
        let (li, ld, lp) = match &one {
            Some((i, a, b)) => (i, a, b),
            None => (&inputs, &rd, &rp),
        };
        if one.is_some() {
            notes.push("latency on one sample (batch 1)".to_string());
        }
        // Interleaved (dense, pruned, dense, ...): noise hits both alike.
        match latency::latency_interleaved(&[ld, lp], li, opts.latency_opts) {
            Ok(mut v) => {
                lat_p = v.pop();
                lat_d = v.pop();
            }
            Err(e) => notes.push(format!("latency unavailable: {e:#}")),
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
    let all = shared_inputs(a, b, &opts.inputs)?;
    if let Some(few) = all.head(EQUIVALENCE_ROWS) {
        // A model whose axis 0 is not a free batch axis cannot take fewer rows: use them all.
        if let Ok(r) = equivalence_on(a, b, &few) {
            return Ok(r);
        }
    }
    equivalence_on(a, b, &all)
}

fn equivalence_on(a: &Path, b: &Path, inputs: &Inputs) -> Result<Vec<OutputFidelity>> {
    let (ra, rb) = both(|| compile("reference", a, inputs), || compile("other", b, inputs));
    let (ra, rb) = (ra?, rb?);
    let (oa, ob) = both(|| outputs("reference", &ra, inputs), || outputs("other", &rb, inputs));
    Ok(compare(&oa?, &ob?, &ra.output_names))
}
