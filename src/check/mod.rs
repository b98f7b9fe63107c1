//! Verification: run the dense and the pruned model on the same inputs with tract and report how
//! far apart they are (per-output errors, top-1 agreement, accuracy on labels), plus latency and
//! MACs.
//!
//! Nothing here panics or claims success it did not check: when tract cannot run a model, the
//! result is `status: "skipped"` with the reason.

pub mod bounds;
pub mod fidelity;
pub mod guard;
pub mod inline;
pub mod inputs;
pub mod latency;
pub mod macs;
pub mod ort;
pub mod run;

pub use fidelity::{accuracy, compare, load_labels, OutputFidelity};
pub use inputs::{model_inputs, prepare_inputs, DimSpec, InputData, InputFact, InputInfo, InputSpec, Inputs};
pub use latency::{latency, Engine, Hotspot, LatencyOptions, LatencyStats};
pub use macs::{macs, macs_per_inference, Macs};
pub use run::{load_runnable, run, Runnable};

use anyhow::{bail, Context, Result};
use fidelity::finite_opt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    pub inputs: InputSpec,
    /// Integer class labels (`.npy`) for an output's argmax.
    pub labels: Option<PathBuf>,
    /// The output the labels are for (`--labels NAME=y.npy`); None: the first output they fit.
    pub labels_output: Option<String>,
    pub latency: bool,
    /// Latency budget and run count (see [`latency::latency`]).
    pub latency_opts: LatencyOptions,
    /// Samples to run instead of preparing `inputs` (a run without `--inputs`: its calibration
    /// samples, or random ones), and what they are.
    pub samples: Option<(Inputs, Samples)>,
}

/// The op an engine's error says it does not implement (tract's `Unimplemented(ConstantFill)`,
/// onnxruntime's `ai.onnx:ConstantFill(-1) is not a registered function/op`): a model that no
/// engine runs for that reason is not helped by other sizes or data.
pub fn unsupported_op(msg: &str) -> Option<String> {
    let between = |start: &str, end: char| {
        let at = msg.find(start)? + start.len();
        let rest = &msg[at..];
        let name = &rest[..rest.find(end)?];
        (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then(|| name.to_string())
    };
    between("Unimplemented(", ')').or_else(|| {
        let at = msg.find("is not a registered function/op")?;
        let head = &msg[..at];
        let name = head.rsplit(':').next()?.split('(').next()?.trim();
        (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then(|| name.to_string())
    })
}

/// The note of a verification on the calibration samples (the text report prints it).
pub const ON_CALIBRATION: &str = "the calibration samples chose";

/// What verification's samples are when they are not the user's `--inputs`: the report says so,
/// since the figures then mean something else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Samples {
    /// The calibration samples, which chose and fitted the cut: figures on them are optimistic.
    Calibration,
    /// Seeded random inputs: how far the outputs moved, not how accurate the model is.
    Random { seed: u64 },
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
    /// What ran the models: tract, or onnxruntime when tract could not (then no tract latency).
    pub engine: String,
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    /// What the samples are: "1000 samples from --inputs", "256 calibration samples", "32 random
    /// samples (seed 0)".
    pub samples: String,
    pub outputs: Vec<OutputFidelity>,
    #[serde(serialize_with = "finite_opt")]
    pub accuracy_dense: Option<f64>,
    #[serde(serialize_with = "finite_opt")]
    pub accuracy_pruned: Option<f64>,
    /// The output accuracy was measured on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy_output: Option<String>,
    /// tract's latency (wall clock: the run moves it to the report's timing, so a run's JSON has
    /// it there, not here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_dense: Option<LatencyStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_pruned: Option<LatencyStats>,
    /// The dense model's slowest nodes in tract and their time after pruning (wall clock: the
    /// run moves them to the report's timing).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hotspots: Vec<Hotspot>,
    /// Latency in onnxruntime (default optimisation level, 1 thread), when python3 has it (wall
    /// clock: the run moves it to the report's timing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_onnxruntime: Option<ort::OrtLatency>,
    pub macs_dense: Option<u64>,
    pub macs_pruned: Option<u64>,
    /// Assumed dims, fallbacks taken, and why an optional measurement (accuracy, latency, MACs)
    /// is missing ("MACs unavailable: …").
    pub notes: Vec<String>,
}

impl Verification {
    /// The sizes made up for free dims other than the batch ("h=224 (default)"), from its notes.
    pub fn assumed_sizes(&self) -> Vec<&str> {
        self.notes
            .iter()
            .filter_map(|n| n.strip_prefix("assumed "))
            .filter(|n| !n.starts_with("input '") && !n.starts_with("batch="))
            .collect()
    }

    pub(crate) fn skipped(reason: String, input_shapes: BTreeMap<String, Vec<usize>>, notes: Vec<String>) -> Self {
        Verification {
            status: "skipped".into(),
            reason: Some(reason),
            engine: String::new(),
            input_shapes,
            samples: String::new(),
            outputs: vec![],
            accuracy_dense: None,
            accuracy_pruned: None,
            accuracy_output: None,
            latency_dense: None,
            latency_pruned: None,
            hotspots: vec![],
            latency_onnxruntime: None,
            macs_dense: None,
            macs_pruned: None,
            notes,
        }
    }

    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

/// Both models must take the same inputs (names, element types); returns the input data
/// (`given`, or prepared by `spec`).
fn shared_inputs(a: &Path, b: &Path, spec: &InputSpec, given: Option<&Inputs>) -> Result<Inputs> {
    let inputs = match given {
        Some(i) => i.clone(),
        None => prepare_inputs(a, spec).context("preparing inputs")?,
    };
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
    let all = match shared_inputs(dense, pruned, &opts.inputs, opts.samples.as_ref().map(|s| &s.0)) {
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
    let n = inputs.sample_count();
    let s = if n == 1 { "" } else { "s" };
    let samples = match opts.samples.as_ref().map(|s| s.1) {
        Some(Samples::Calibration) => format!("{n} calibration sample{s}"),
        Some(Samples::Random { seed }) => format!("{n} random sample{s} (seed {seed}; not the guard's)"),
        None if opts.inputs.files.is_empty() && opts.inputs.npz.is_none() => {
            format!("{n} random sample{s} (seed {})", opts.inputs.seed)
        }
        None => format!("{n} sample{s} from --inputs"),
    };
    if opts.samples.as_ref().is_some_and(|s| s.1 == Samples::Calibration) {
        notes.push(format!(
            "{ON_CALIBRATION} and fitted this cut (no --inputs given): figures on them are optimistic; --inputs \
             measures on held-out data"
        ));
    }
    let skip = |e: anyhow::Error, notes: Vec<String>| Verification::skipped(format!("{e:#}"), shapes.clone(), notes);
    // Big models one at a time (see ONE_AT_A_TIME_BYTES); their batch models are not kept.
    let one_at_a_time = model_bytes(dense) + model_bytes(pruned) > ONE_AT_A_TIME_BYTES;
    let run_one =
        |which: &str, p: &Path| compile(which, p, &inputs).and_then(|r| Ok((outputs(which, &r, &inputs)?, r)));
    // (outputs, output names, notes, the compiled model if kept, integer outputs) per model.
    type Ran = (Vec<ndarray::ArrayD<f32>>, Vec<String>, Vec<String>, Option<Runnable>, Vec<bool>);
    let keep = |(o, r): (Vec<ndarray::ArrayD<f32>>, Runnable), kept: bool| -> Ran {
        let (names, notes, ints) = (r.output_names.clone(), r.notes.clone(), r.output_int.clone());
        (o, names, notes, kept.then_some(r), ints)
    };
    let ran: Result<(Ran, Ran)> = if one_at_a_time {
        run_one("dense", dense).and_then(|d| Ok((keep(d, false), keep(run_one("pruned", pruned)?, false))))
    } else {
        match both(|| run_one("dense", dense), || run_one("pruned", pruned)) {
            (Ok(a), Ok(b)) => Ok((keep(a, true), keep(b, true))),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    };
    // tract could not run them: the same inputs in onnxruntime, if python3 has it (no latency).
    let mut engine = "tract";
    let (d, p) = match ran {
        Ok(x) => x,
        Err(tract) => match ort::run_pair_ints(dense, pruned, &inputs) {
            Ok(((od, op, names), ints)) => {
                engine = "onnxruntime";
                notes.push(format!(
                    "tract could not run the models ({tract:#}): fidelity (and latency) from onnxruntime"
                ));
                ((od, names.clone(), vec![], None, ints), (op, names, vec![], None, vec![]))
            }
            Err(ort) => return skip(anyhow::anyhow!("{tract:#}; onnxruntime fallback: {ort:#}"), notes),
        },
    };
    let ((od, names, notes_d, rd, ints), (op, _, notes_p, rp, _)) = (d, p);
    for (which, n) in [("dense", &notes_d), ("pruned", &notes_p)] {
        notes.extend(n.iter().map(|n| format!("{which}: {n}")));
    }
    let mut fid = compare(&od, &op, &names);
    // An integer output (class ids from an ArgMax, indices) agrees where its values are equal:
    // an argmax over its last axis means nothing.
    for (i, f) in fid.iter_mut().enumerate().filter(|(i, f)| ints.get(*i) == Some(&true) && f.error.is_none()) {
        f.integer = true;
        f.top1_agreement = fidelity::equal_fraction(&od[i], &op[i]);
    }

    let (mut acc_d, mut acc_p, mut acc_out) = (None, None, None);
    if let Some(lp) = &opts.labels {
        match load_labels(lp) {
            Err(e) => notes.push(format!("accuracy unavailable: {e:#}")),
            Ok(labels) => match accuracy_output(&names, &od, &labels, opts.labels_output.as_deref(), &ints) {
                Err(e) => notes.push(format!("accuracy unavailable: {e:#}")),
                Ok((i, a, fit)) => {
                    acc_d = Some(a);
                    acc_out = Some(names[i].clone());
                    if fit > 1 {
                        notes.push(format!(
                            "accuracy is measured on output '{}', the first of {fit} outputs the labels fit \
                             (--labels NAME=y.npy names another)",
                            names[i]
                        ));
                    }
                    let int = ints.get(i) == Some(&true);
                    match op
                        .get(i)
                        .context("the pruned model lacks the output")
                        .and_then(|o| accuracy_of(o, &labels, int))
                    {
                        Ok(a) => acc_p = Some(a),
                        Err(e) => notes.push(format!("accuracy unavailable (pruned, output '{}'): {e:#}", names[i])),
                    }
                }
            },
        }
    }

    let (mut lat_d, mut lat_p) = (None, None);
    let mut hotspots = vec![];
    if opts.latency && engine == "tract" && opts.latency_opts.times_in(Engine::Tract) {
        // Latency is what one deployed inference costs: time one sample, not the whole
        // verification batch (a model whose axis 0 is not a free batch axis is timed as is).
        // The batch models are dropped first: tract holding four copies of a big model at once
        // was the peak of a default run.
        let one_row = inputs.head(1);
        let (rd, rp) = if one_row.is_none() { (rd, rp) } else { (None, None) };
        let one =
            one_row.and_then(|one| match both(|| compile("dense", dense, &one), || compile("pruned", pruned, &one)) {
                (Ok(a), Ok(b)) => Some((one, a, b)),
                _ => None,
            });
        let timed = match (one, rd, rp) {
            (Some((i, a, b)), _, _) => {
                notes.push("latency on one sample (batch 1)".to_string());
                Some((i, a, b))
            }
            (None, Some(a), Some(b)) => Some((inputs.clone(), a, b)),
            (None, _, _) => match both(|| compile("dense", dense, &inputs), || compile("pruned", pruned, &inputs)) {
                (Ok(a), Ok(b)) => Some((inputs.clone(), a, b)),
                (Err(e), _) | (_, Err(e)) => {
                    notes.push(format!("latency unavailable: {e:#}"));
                    None
                }
            },
        };
        if let Some((li, ld, lp)) = &timed {
            // Interleaved (dense, pruned, dense, ...): noise hits both alike.
            match latency::latency_interleaved(&[ld, lp], li, opts.latency_opts) {
                Ok(mut v) => {
                    lat_p = v.pop();
                    lat_d = v.pop();
                }
                Err(e) => notes.push(format!("latency unavailable: {e:#}")),
            }
            // Where the dense model's time goes, and whether the pruning reached it: a few
            // profiled runs of each (about 0.3 s of them), after the timed ones.
            if let (Some(d), Some(_)) = (&lat_d, &lat_p) {
                let runs = ((300.0 / d.median_ms.max(1e-3)) as usize).clamp(1, 5);
                match (latency::node_profile(ld, li, runs), latency::node_profile(lp, li, runs)) {
                    (Ok(a), Ok(b)) => hotspots = latency::hotspots(&a, &b),
                    (Err(e), _) | (_, Err(e)) => notes.push(format!("per-node profile unavailable: {e:#}")),
                }
            }
        }
    } else {
        drop((rd, rp));
    }
    // The same sample in onnxruntime, as edge deployments run it (default optimisation level):
    // where python3 has it; a missing onnxruntime is said once, in a note.
    let mut lat_ort = None;
    if opts.latency && opts.latency_opts.times_in(Engine::Onnxruntime) {
        // One sample; a model whose axis 0 is not a sample axis (an input [16] with no batch
        // dim) refuses it and is timed on the inputs as they are, as in tract.
        let one = inputs.head(1);
        let timed = match &one {
            Some(one) => ort::latency_pair(dense, pruned, one, opts.latency_opts)
                .or_else(|_| ort::latency_pair(dense, pruned, &inputs, opts.latency_opts)),
            None => ort::latency_pair(dense, pruned, &inputs, opts.latency_opts),
        };
        match timed {
            Ok(l) => lat_ort = Some(l),
            Err(e) => notes.push(format!("latency in onnxruntime unavailable: {e:#}")),
        }
    }

    let (mut macs_d, mut macs_p) = (None, None);
    let mut from = vec![];
    for (which, p, slot) in [("dense", dense, &mut macs_d), ("pruned", pruned, &mut macs_p)] {
        match macs_per_inference(p, &inputs) {
            Ok((m, engine)) => {
                *slot = Some(m.total);
                from.extend(engine);
            }
            Err(e) => {
                notes.push(format!("MACs unavailable ({which}): {e:#}").replace(&p.display().to_string(), "model"))
            }
        }
    }
    if let Some(e) = from.first() {
        notes.push(format!("MACs counted on the shapes of one run in {e} (tract cannot analyse the model)"));
    }

    Verification {
        status: "ok".into(),
        reason: None,
        engine: engine.into(),
        input_shapes: shapes,
        samples,
        outputs: fid,
        accuracy_dense: acc_d,
        accuracy_pruned: acc_p,
        accuracy_output: acc_out,
        latency_dense: lat_d,
        latency_pruned: lat_p,
        hotspots,
        latency_onnxruntime: lat_ort,
        macs_dense: macs_d,
        macs_pruned: macs_p,
        notes,
    }
}

/// Run `a` and `b` on the same inputs (prepared from `a`) and compare `b` against `a`. Used for
/// masked-equivalence: `a` = dense model with the pruned units zeroed, `b` = pruned model.
pub fn equivalence(a: &Path, b: &Path, opts: &VerifyOptions) -> Result<Vec<OutputFidelity>> {
    let all = shared_inputs(a, b, &opts.inputs, None)?;
    if let Some(few) = all.head(EQUIVALENCE_ROWS) {
        // A model whose axis 0 is not a free batch axis cannot take fewer rows: use them all.
        if let Ok(r) = equivalence_on(a, b, &few) {
            return Ok(r);
        }
    }
    equivalence_on(a, b, &all)
}

/// Models above this many bytes (file plus `<file>.data`) are proved one at a time: tract's
/// copies of two big models side by side doubled the peak memory of a structural run.
pub const ONE_AT_A_TIME_BYTES: u64 = 64 << 20;

fn model_bytes(p: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut data = p.as_os_str().to_owned();
    data.push(".data");
    size(p) + size(Path::new(&data))
}

fn equivalence_on(a: &Path, b: &Path, inputs: &Inputs) -> Result<Vec<OutputFidelity>> {
    if model_bytes(a) + model_bytes(b) > ONE_AT_A_TIME_BYTES {
        let ra = compile("reference", a, inputs)?;
        let oa = outputs("reference", &ra, inputs)?;
        let names = ra.output_names.clone();
        drop(ra);
        let rb = compile("other", b, inputs)?;
        let ob = outputs("other", &rb, inputs)?;
        return Ok(compare(&oa, &ob, &names));
    }
    let (ra, rb) = both(|| compile("reference", a, inputs), || compile("other", b, inputs));
    let (ra, rb) = (ra?, rb?);
    let (oa, ob) = both(|| outputs("reference", &ra, inputs), || outputs("other", &rb, inputs));
    Ok(compare(&oa?, &ob?, &ra.output_names))
}

/// The output accuracy is measured on: the one named, or the first whose argmax the labels fit
/// (an int64 class-id output or a feature map does not); with its dense accuracy and how many
/// outputs the labels fit.
/// [`accuracy`] of output `o`; an integer output holding one class id per label (a
/// classifier's label output: scikit-learn's, whose class ids need not be 0..C−1) is compared
/// with the labels as it is.
fn accuracy_of(o: &ndarray::ArrayD<f32>, labels: &[i64], integer: bool) -> Result<f64> {
    if integer && o.len() == labels.len() && o.ndim() >= 1 && o.shape()[0] == labels.len() {
        let counted = labels.iter().filter(|&&l| l >= 0).count();
        if counted == 0 {
            bail!("accuracy: every label is negative (ignored)");
        }
        let hit = o.iter().zip(labels).filter(|(p, l)| **l >= 0 && **p as i64 == **l).count();
        return Ok(hit as f64 / counted as f64);
    }
    accuracy(o, labels)
}

fn accuracy_output(
    names: &[String],
    outs: &[ndarray::ArrayD<f32>],
    labels: &[i64],
    named: Option<&str>,
    ints: &[bool],
) -> Result<(usize, f64, usize)> {
    let accuracy = |i: usize, o: &ndarray::ArrayD<f32>| accuracy_of(o, labels, ints.get(i) == Some(&true));
    if let Some(n) = named {
        let i = names.iter().position(|x| x == n).with_context(|| {
            format!("--labels {n}=…: the model has no output '{n}' (outputs: {})", names.join(", "))
        })?;
        let a = outs
            .get(i)
            .context("model has no output")
            .and_then(|o| accuracy(i, o))
            .with_context(|| format!("output '{n}'"))?;
        return Ok((i, a, 1));
    }
    let fits: Vec<(usize, f64)> =
        outs.iter().enumerate().filter_map(|(i, o)| accuracy(i, o).ok().map(|a| (i, a))).collect();
    match fits.first() {
        Some(&(i, a)) => Ok((i, a, fits.len())),
        None => {
            let first = names.first().cloned().unwrap_or_default();
            let e = outs.first().context("model has no output").and_then(|o| accuracy(0, o)).err();
            Err(anyhow::anyhow!(
                "output '{first}'{}: {}",
                if names.len() > 1 { " (nor any other output)" } else { "" },
                e.map(|e| format!("{e:#}")).unwrap_or_default()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr2, ArrayD};

    #[test]
    fn an_unimplemented_op_is_named_from_either_engines_error() {
        let tract = r#"type analysis failed: Translating node #60 "/l/ConstantFill" Unimplemented(ConstantFill) ToTypedTranslator"#;
        assert_eq!(unsupported_op(tract).as_deref(), Some("ConstantFill"));
        let ort = "Load model from m.onnx failed:Fatal error: ai.onnx:ConstantFill(-1) is not a registered function/op";
        assert_eq!(unsupported_op(ort).as_deref(), Some("ConstantFill"));
        assert_eq!(unsupported_op("symbol 'batch' would be both 256 and 360"), None);
    }

    #[test]
    fn accuracy_is_measured_on_the_named_or_first_fitting_output() {
        let names: Vec<String> = ["ids", "aux", "logits"].iter().map(|s| s.to_string()).collect();
        // Class ids [3]: no class axis to take an argmax over.
        let ids: ArrayD<f32> = ndarray::arr1(&[0.0f32, 1.0, 1.0]).into_dyn();
        let aux: ArrayD<f32> = arr2(&[[1.0f32, 0.0], [1.0, 0.0], [1.0, 0.0]]).into_dyn();
        let logits: ArrayD<f32> = arr2(&[[1.0f32, 0.0], [0.0, 1.0], [0.0, 1.0]]).into_dyn();
        let outs = vec![ids, aux, logits];
        let labels = [0i64, 1, 1];
        let floats = [false; 3];
        assert_eq!(accuracy_output(&names, &outs, &labels, None, &floats).unwrap(), (1, 1.0 / 3.0, 2));
        assert_eq!(accuracy_output(&names, &outs, &labels, Some("logits"), &floats).unwrap(), (2, 1.0, 1));
        let e = accuracy_output(&names, &outs, &labels, Some("nope"), &floats).unwrap_err().to_string();
        assert!(e.contains("no output 'nope' (outputs: ids, aux, logits)"), "{e}");
        let e = accuracy_output(&names, &outs, &[0, 5, 1], None, &floats).unwrap_err().to_string();
        assert!(e.contains("output 'ids' (nor any other output)"), "{e}");
        // An integer output of class ids is compared as it is, whatever the ids (1, 4, 7).
        let ids: ArrayD<f32> = ndarray::arr1(&[1.0f32, 7.0, 4.0]).into_dyn();
        let outs = vec![ids, outs[1].clone(), outs[2].clone()];
        let ints = [true, false, false];
        assert_eq!(accuracy_output(&names, &outs, &[1, 7, 7], None, &ints).unwrap(), (0, 2.0 / 3.0, 1));
    }
}
