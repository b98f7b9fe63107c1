//! Masked-equivalence in onnxruntime, for the models tract 0.23 cannot run (onnxruntime's own
//! com.microsoft ops: fused `Attention`, `EmbedLayerNormalization`, …): the inputs tract would
//! have been given are written as `.npy`, both models run in onnxruntime through `python3`
//! (or `$ONNX_EMP_PYTHON`; optimisations off, the embedded `ort_run.py`), and their outputs are compared by the same
//! measure ([`compare`]). The verification (dense against pruned: errors, cosine, top-1,
//! accuracy) falls back to it the same way, without latency. Contract: `Ok` only when onnxruntime
//! ran both models on those inputs; otherwise an error saying why (no python3, no onnxruntime, a
//! model it refuses), never a pass.

use super::fidelity::{compare, OutputFidelity};
use super::inputs::{InputData, InputSpec, Inputs};
use super::latency::{LatencyOptions, LatencyStats};
use serde::Serialize;
use super::{shared_inputs, EQUIVALENCE_ROWS};
use anyhow::{bail, Context, Result};
use ndarray::ArrayD;
use std::path::Path;
use std::process::Command;

const SCRIPT: &str = include_str!("ort_run.py");

/// The Python that runs onnxruntime: `$ONNX_EMP_PYTHON` (a virtual environment's interpreter,
/// say), else `python3` on the PATH.
pub fn python() -> std::ffi::OsString {
    std::env::var_os("ONNX_EMP_PYTHON").filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into())
}

fn write_npy(path: &Path, data: &InputData) -> Result<()> {
    use ndarray_npy::write_npy;
    match data {
        InputData::F32(a) => write_npy(path, a),
        InputData::F64(a) => write_npy(path, a),
        InputData::I64(a) => write_npy(path, a),
        InputData::I32(a) => write_npy(path, a),
        InputData::I8(a) => write_npy(path, a),
        InputData::U8(a) => write_npy(path, a),
        InputData::Bool(a) => write_npy(path, a),
        // (npy files of float16 are not written here: the values go as float32, exactly, and
        // the script casts a float input to the type the model declares)
        InputData::F16(a) => write_npy(path, &a.mapv(f32::from)),
    }
    .with_context(|| format!("writing {}", path.display()))
}

/// Run `a` and `b` in onnxruntime on the inputs prepared from `a` (the first
/// [`EQUIVALENCE_ROWS`] samples) and compare `b` against `a`.
pub fn equivalence(a: &Path, b: &Path, spec: &InputSpec) -> Result<Vec<OutputFidelity>> {
    let all = shared_inputs(a, b, spec)?;
    let inputs = all.head(EQUIVALENCE_ROWS).unwrap_or(all);
    let (oa, ob, names) = run_pair(a, b, &inputs)?;
    Ok(compare(&oa, &ob, &names))
}

/// The outputs of `a` and `b` (as f32) in onnxruntime on `inputs`, and `a`'s output names.
pub type Pair = (Vec<ArrayD<f32>>, Vec<ArrayD<f32>>, Vec<String>);

/// Run `a` and `b` in onnxruntime on `inputs`.
pub fn run_pair(a: &Path, b: &Path, inputs: &Inputs) -> Result<Pair> {
    run(a, Some(b), inputs)
}

/// The outputs of the model at `path` in onnxruntime on `inputs` (as f32), with their names.
pub fn run_one(path: &Path, inputs: &Inputs) -> Result<(Vec<ArrayD<f32>>, Vec<String>)> {
    let (o, _, names) = run(path, None, inputs)?;
    Ok((o, names))
}

/// Latency of `a` and `b` in onnxruntime as a deployment runs them: its default optimisation
/// level, 1 thread, CPU; interleaved as tract's timing is ([`super::latency::latency_interleaved`]),
/// after one warm-up run each.
pub fn latency_pair(a: &Path, b: &Path, inputs: &Inputs, opts: LatencyOptions) -> Result<OrtLatency> {
    let budget = opts.budget.unwrap_or(super::latency::DEFAULT_BUDGET).as_secs_f64();
    let pre = ["--time".to_string(), format!("{budget}"), format!("{}", opts.runs.unwrap_or(0))];
    let (v, _dir) = invoke(&pre, a, Some(b), inputs)?;
    let stats = |k: usize| -> Result<LatencyStats> {
        let l = &v["latency"][k];
        let f = |key: &str| l[key].as_f64().with_context(|| format!("onnxruntime timing: no {key}"));
        Ok(LatencyStats {
            median_ms: f("median_ms")?,
            min_ms: f("min_ms")?,
            runs: f("runs")? as usize,
            samples: inputs.rows(),
        })
    };
    Ok(OrtLatency {
        version: v["version"].as_str().unwrap_or("?").to_string(),
        dense: stats(0)?,
        pruned: stats(1)?,
    })
}

/// Latency in onnxruntime (default optimisation level, 1 thread) of the dense and pruned models.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OrtLatency {
    /// onnxruntime's version.
    pub version: String,
    pub dense: LatencyStats,
    pub pruned: LatencyStats,
}

fn run(a: &Path, b: Option<&Path>, inputs: &Inputs) -> Result<Pair> {
    let (v, dir) = invoke(&[], a, b, inputs)?;
    let names: Vec<String> = v["outputs"]
        .as_array()
        .context("onnxruntime script output")?
        .iter()
        .filter_map(|n| n.as_str().map(String::from))
        .collect();
    let read = |tag: &str| -> Result<Vec<ArrayD<f32>>> {
        (0..names.len())
            .map(|i| {
                let p = dir.path().join(format!("{tag}_{i}.npy"));
                ndarray_npy::read_npy(&p).with_context(|| format!("reading {}", p.display()))
            })
            .collect()
    };
    let ob = if b.is_some() { read("b")? } else { vec![] };
    Ok((read("a")?, ob, names))
}

/// Run the embedded script on `a` (and `b`) with the inputs written as `.npy`: its JSON line, and
/// the folder holding what it wrote.
fn invoke(pre: &[String], a: &Path, b: Option<&Path>, inputs: &Inputs) -> Result<(serde_json::Value, tempfile::TempDir)> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    let script = dir.path().join("ort_run.py");
    std::fs::write(&script, SCRIPT).context("writing the onnxruntime script")?;
    let python = python();
    let mut cmd = Command::new(&python);
    cmd.arg(&script).args(pre).arg(a).arg(b.map_or_else(|| "-".into(), |b| b.as_os_str().to_owned())).arg(dir.path());
    for (k, i) in inputs.inputs.iter().enumerate() {
        let p = dir.path().join(format!("input{k}.npy"));
        write_npy(&p, &i.data)?;
        cmd.arg(format!("{}={}", i.name, p.display()));
    }
    let out = cmd.output().with_context(|| format!("{} is not runnable", python.to_string_lossy()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        Some(0) => {}
        Some(77) => bail!("onnxruntime is not available ({})", stdout.trim()),
        _ => {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
            bail!("onnxruntime failed: {last}");
        }
    }
    let v: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).context("onnxruntime script output")?;
    Ok((v, dir))
}
