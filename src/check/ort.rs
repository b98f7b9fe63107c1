//! onnxruntime, for what tract 0.23 cannot run (onnxruntime's own com.microsoft ops: fused
//! `Attention`, `EmbedLayerNormalization`, …) and for latency as onnxruntime deployments see it.
//! The inputs tract would have been given are written as `.npy` and the models run in
//! onnxruntime through the embedded `ort_run.py`, served by one Python process per run
//! (`python3`, or `$ONNX_EMP_PYTHON`; started on first use): masked-equivalence and the
//! verification (optimisations off, outputs compared by the same measure as tract's,
//! [`compare`]), the guard's trials and reconstruction's activations ([`run_one`],
//! [`run_typed`]), and latency (the default optimisation level, 1 thread: [`latency_pair`]).
//! Contract: `Ok` only when onnxruntime ran the models on those inputs; otherwise an error saying
//! why (no Python, no onnxruntime, a model it refuses, the worker gone), never a pass.

use super::fidelity::{compare, OutputFidelity};
use super::inputs::{InputData, InputSpec, Inputs};
use super::latency::{LatencyOptions, LatencyStats};
use super::{shared_inputs, EQUIVALENCE_ROWS};
use anyhow::{bail, Context, Result};
use ndarray::ArrayD;
use serde::Serialize;
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
    let all = shared_inputs(a, b, spec, None)?;
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

/// As [`run_pair`], with which of `a`'s outputs are integers or booleans before the cast to f32
/// (class ids, indices: compared by equality, as tract's are).
pub fn run_pair_ints(a: &Path, b: &Path, inputs: &Inputs) -> Result<(Pair, Vec<bool>)> {
    let (v, oa, ob, names) = run_json(a, Some(b), inputs)?;
    let ints = (0..names.len())
        .map(|i| v["dtypes"][i].as_str().is_some_and(|d| d.starts_with("int") || d.starts_with("uint") || d == "bool"))
        .collect();
    Ok(((oa, ob, names), ints))
}

/// The outputs of the model at `path` in onnxruntime on `inputs` (as f32), with their names.
pub fn run_one(path: &Path, inputs: &Inputs) -> Result<(Vec<ArrayD<f32>>, Vec<String>)> {
    let (o, names, _) = run_typed(path, inputs)?;
    Ok((o, names))
}

/// Outputs (as f32), their names, and their element types before the cast (numpy's names).
pub type Typed = (Vec<ArrayD<f32>>, Vec<String>, Vec<String>);

/// As [`run_one`], with each output's element type before the cast to f32 (numpy's name:
/// "float32", "int64", "bool", ...).
pub fn run_typed(path: &Path, inputs: &Inputs) -> Result<Typed> {
    let (v, o, _, names) = run_json(path, None, inputs)?;
    let dtypes = v["dtypes"].as_array().map(|a| a.iter().map(|d| d.as_str().unwrap_or("").to_string()).collect());
    Ok((o, names, dtypes.unwrap_or_default()))
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
            samples: inputs.sample_count(),
        })
    };
    Ok(OrtLatency { version: v["version"].as_str().unwrap_or("?").to_string(), dense: stats(0)?, pruned: stats(1)? })
}

/// The shape of every value one run of `path` on `inputs` computes in onnxruntime (optimisations
/// off), by name: the model is written to a temporary folder with every node output made a graph
/// output (external data inlined), run once, and only the shapes come back.
pub fn value_shapes(path: &Path, inputs: &Inputs) -> Result<std::collections::HashMap<String, Vec<usize>>> {
    let mut probe = crate::model::io::load(path)?.proto;
    let g = probe.graph.as_mut().context("model has no graph")?;
    let mut seen: std::collections::HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    let extra: Vec<String> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter())
        .filter(|o| !o.is_empty() && seen.insert((*o).clone()))
        .cloned()
        .collect();
    for name in extra {
        let mut vi = onnx_protobuf::ValueInfoProto::new();
        vi.name = name;
        g.output.push(vi);
    }
    let dir = crate::interrupt::Scratch::new().context("temporary directory")?;
    let file = dir.path().join("shapes.onnx");
    crate::model::io::save(probe, &file, &Default::default())?;
    let (v, _dir) = invoke(&["--shapes".to_string()], &file, None, inputs)?;
    let shapes = v["shapes"].as_object().context("onnxruntime script output: no shapes")?;
    Ok(shapes
        .iter()
        .filter_map(|(k, d)| {
            let dims: Option<Vec<usize>> = d.as_array()?.iter().map(|x| x.as_u64().map(|x| x as usize)).collect();
            Some((k.clone(), dims?))
        })
        .collect())
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
    run_json(a, b, inputs).map(|(_, oa, ob, names)| (oa, ob, names))
}

/// The script's answer, `a`'s and `b`'s outputs (f32) and their names.
type Answer = (serde_json::Value, Vec<ArrayD<f32>>, Vec<ArrayD<f32>>, Vec<String>);

fn run_json(a: &Path, b: Option<&Path>, inputs: &Inputs) -> Result<Answer> {
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
    let oa = read("a")?;
    Ok((v, oa, ob, names))
}

/// Run the embedded script on `a` (and `b`) with the inputs written as `.npy`: its JSON answer,
/// and the folder holding what it wrote.
fn invoke(
    pre: &[String],
    a: &Path,
    b: Option<&Path>,
    inputs: &Inputs,
) -> Result<(serde_json::Value, crate::interrupt::Scratch)> {
    let dir = crate::interrupt::Scratch::new().context("temporary directory")?;
    let mut argv: Vec<String> = pre.to_vec();
    argv.push(a.display().to_string());
    argv.push(b.map_or_else(|| "-".into(), |b| b.display().to_string()));
    argv.push(dir.path().display().to_string());
    for (k, i) in inputs.inputs.iter().enumerate() {
        let p = dir.path().join(format!("input{k}.npy"));
        write_npy(&p, &i.data)?;
        argv.push(format!("{}={}", i.name, p.display()));
    }
    Ok((ask(&argv)?, dir))
}

/// The script serving requests (`ort_run.py --serve`): one Python process for the whole run, so
/// that the guard's dozens of trials pay for Python and onnxruntime's import once.
struct Worker {
    python: std::ffi::OsString,
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// Holds the script and its stderr log.
    dir: crate::interrupt::Scratch,
    /// Killed if the command is interrupted.
    _registered: crate::interrupt::RegisteredChild,
}

static WORKER: std::sync::Mutex<Option<Worker>> = std::sync::Mutex::new(None);

impl Drop for Worker {
    /// The process ends and its folder (script, log) goes: a static is never dropped, so
    /// [`shutdown`] drops it at the end of each command.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// End the onnxruntime worker, if one was started, and remove its files (every run that timed
/// latency in onnxruntime left a `/tmp/.tmpXXXX` folder behind).
pub fn shutdown() {
    let w = WORKER.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(w);
}

const MARK: &str = "@@onnx-emp ";

impl Worker {
    fn spawn(python: std::ffi::OsString) -> Result<Worker> {
        use std::process::Stdio;
        let dir = crate::interrupt::Scratch::new().context("temporary directory")?;
        let script = dir.path().join("ort_run.py");
        std::fs::write(&script, SCRIPT).context("writing the onnxruntime script")?;
        // onnxruntime's own messages (warnings, a crash's last words) go to a file: its tail is
        // what an "exited" error quotes.
        let log = std::fs::File::create(dir.path().join("stderr.log")).context("onnxruntime log file")?;
        let mut child = Command::new(&python)
            .arg(&script)
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("{} is not runnable", python.to_string_lossy()))?;
        let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(i), Some(o)) => (i, std::io::BufReader::new(o)),
            _ => bail!("no pipe to {}", python.to_string_lossy()),
        };
        let _registered = crate::interrupt::RegisteredChild::new(child.id());
        let mut w = Worker { python, child, stdin, stdout, dir, _registered };
        let first = w.answer()?;
        if let Some(why) = first["skipped"].as_str() {
            bail!("onnxruntime is not available ({why})");
        }
        if first["ready"].is_null() {
            bail!("onnxruntime script did not start: {first}");
        }
        Ok(w)
    }

    /// The next answer line (other output, if a library prints any, is skipped).
    fn answer(&mut self) -> Result<serde_json::Value> {
        use std::io::BufRead;
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line).context("reading from onnxruntime")? == 0 {
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                match self.log_tail() {
                    Some(t) => bail!("onnxruntime exited ({status}): {t}"),
                    None => bail!("onnxruntime exited ({status})"),
                }
            }
            if let Some(json) = line.trim_end().strip_prefix(MARK) {
                return serde_json::from_str(json).context("onnxruntime script output");
            }
        }
    }

    /// The last lines the worker wrote to stderr (at most 3, 400 characters), if any.
    fn log_tail(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.path().join("stderr.log")).ok()?;
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let tail = crate::report::tail(&lines[lines.len().saturating_sub(3)..].join(" | "), 400);
        (!tail.is_empty()).then_some(tail)
    }

    fn ask(&mut self, argv: &[String]) -> Result<serde_json::Value> {
        use std::io::Write;
        let line = serde_json::to_string(argv)?;
        writeln!(self.stdin, "{line}").and_then(|_| self.stdin.flush()).context("writing to onnxruntime")?;
        self.answer()
    }
}

/// One request to the worker (started on first use, restarted if it died or the interpreter
/// changed).
fn ask(argv: &[String]) -> Result<serde_json::Value> {
    let mut slot = WORKER.lock().unwrap_or_else(|e| e.into_inner());
    let python = python();
    if slot.as_ref().is_some_and(|w| w.python != python) {
        *slot = None;
    }
    let w = match slot.as_mut() {
        Some(w) => w,
        None => slot.insert(Worker::spawn(python)?),
    };
    match w.ask(argv) {
        Ok(v) => match v.get("ok") {
            Some(ok) => Ok(ok.clone()),
            None => bail!("onnxruntime failed: {}", v["error"].as_str().unwrap_or("no message")),
        },
        Err(e) => {
            // A dead or confused worker is not asked again (dropping it ends it).
            slot.take();
            Err(e)
        }
    }
}
