//! The CLI end to end on the project's own trained models: reports (insta snapshots of the
//! deterministic part), determinism, exit codes and bad input.
//!
//! One test binary (`cargo test --test cli`), split by concept: per-weight runs ([`weights`]),
//! refusals and bad input ([`refusals`]), structural modes ([`structured`]), onnxruntime as the
//! fallback engine ([`onnxruntime`]), the fidelity guard ([`guard`]), files read and written
//! ([`files`]) and models with free or missing dims ([`shapes`]). The helpers they share are here.
use assert_cmd::Command;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[path = "../common/outputs.rs"]
mod outputs;

mod files;
mod guard;
mod onnxruntime;
mod refusals;
mod shapes;
mod structured;
mod weights;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn bin() -> Command {
    let mut c = Command::cargo_bin("onnx-emp").unwrap();
    c.current_dir(ROOT);
    c
}

/// (model, test inputs) of the trained models in models/.
const MODELS: &[(&str, &str)] = &[
    ("digits_mlp", "digits_test_x64"),
    ("digits_cnn", "digits_test_x1x8x8"),
    ("digits_cnn_flatten", "digits_test_x1x8x8"),
    ("digits_lstm", "digits_test_x8x8"),
    ("digits_transformer", "digits_test_x8x8"),
    ("yolo_block", "digits_test_x1x8x8"),
];

struct Run {
    report: Value,
    out: PathBuf,
    stdout: String,
    _dir: tempfile::TempDir,
}

fn run(model: &str, data: &str, extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let rep = dir.path().join("report.json");
    let a = bin()
        .arg(format!("models/{model}.onnx"))
        .arg(&out)
        .args(["--inputs", &format!("models/{data}.npy"), "--labels", "models/digits_test_y.npy", "--no-latency"])
        .arg("--report")
        .arg(&rep)
        .args(extra)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&a.get_output().stdout).into_owned();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    Run { report, out, stdout, _dir: dir }
}

/// The part of the report that must be identical on every machine: our own math, not tract's
/// floating point (verification numbers are checked with tolerances instead).
fn stable(report: &Value) -> Value {
    let mut v = report.clone();
    let o = v.as_object_mut().unwrap();
    o.remove("timing");
    o.remove("verification");
    o.remove("equivalence");
    o.insert("output".into(), Value::String("<tmp>/out.onnx".into()));
    // The guard's decisions are ours; the errors it measured are tract's floating point.
    if let Some(trials) = o.get_mut("guard").and_then(|g| g.get_mut("trials")).and_then(|t| t.as_array_mut()) {
        for t in trials {
            t.as_object_mut().unwrap().remove("rel_l2");
        }
    }
    v
}

fn snapshot(name: &str, v: &Value) {
    insta::with_settings!({snapshot_path => "../../snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_json_snapshot!(name, v);
    });
}

fn accuracy(r: &Value) -> (f64, f64) {
    let v = &r["verification"];
    assert_eq!(v["status"], "ok", "verification skipped: {}", v["reason"]);
    (v["accuracy_dense"].as_f64().unwrap(), v["accuracy_pruned"].as_f64().unwrap())
}

fn fails(args: &[&str], out: Option<&Path>, needle: &str, code: i32) {
    let a = bin().args(args).assert().code(code);
    let err = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    assert!(err.contains(needle), "stderr {err:?} should contain {needle:?}");
    if code == 1 {
        assert_eq!(err.trim_end().lines().count(), 1, "one-line error expected: {err:?}");
    }
    if let Some(o) = out {
        assert!(!o.exists(), "{} must not exist", o.display());
        let leftovers: Vec<_> =
            std::fs::read_dir(o.parent().unwrap()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert!(
            leftovers
                .iter()
                .all(|n| !n.to_string_lossy().starts_with(".onnx-emp-") && !n.to_string_lossy().starts_with(".tmp")),
            "{leftovers:?}"
        );
    }
}

/// python3 with numpy and onnxruntime: the fallback engine and the second latency.
fn ort_available() -> bool {
    std::process::Command::new("python3").args(["-c", "import numpy, onnxruntime"]).status().is_ok_and(|s| s.success())
}

/// A run of `model` with `args` that must succeed, and its JSON report.
fn report_of(model: &str, args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (out, rep) = (dir.path().join("out.onnx"), dir.path().join("r.json"));
    bin().arg(format!("models/{model}.onnx")).arg(&out).args(args).arg("--report").arg(&rep).assert().success();
    serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap()
}
