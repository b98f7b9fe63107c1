//! The CLI end to end on the project's own trained models: reports (insta snapshots of the
//! deterministic part), determinism, exit codes and bad input.
use assert_cmd::Command;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[path = "common/outputs.rs"]
mod outputs;

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
    insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_json_snapshot!(name, v);
    });
}

fn accuracy(r: &Value) -> (f64, f64) {
    let v = &r["verification"];
    assert_eq!(v["status"], "ok", "verification skipped: {}", v["reason"]);
    (v["accuracy_dense"].as_f64().unwrap(), v["accuracy_pruned"].as_f64().unwrap())
}

#[test]
fn weights_default_scope_every_model() {
    for (m, d) in MODELS {
        let r = run(m, d, &[]);
        snapshot(&format!("weights_default_{m}"), &stable(&r.report));
        assert_eq!(r.report["scope"], "normalized");
        let (a, b) = accuracy(&r.report);
        assert!(a > 0.95, "{m}: dense accuracy {a}");
        // The guarded default keeps each within 3 points (see the guard's own test below).
        assert!(b > a - 0.03, "{m}: accuracy {a} → {b}");
        let sp = 1.0
            - r.report["params"]["nonzero_after"].as_f64().unwrap()
                / r.report["params"]["nonzero_before"].as_f64().unwrap();
        assert!(sp > 0.1 && sp < 0.6, "{m}: sparsity {sp}");
        assert!(r.stdout.contains("accuracy"), "{}", r.stdout);
        assert!(r.out.is_file());
    }
}

#[test]
fn weights_layer_and_global_scopes() {
    for scope in ["unit", "layer", "global"] {
        let r = run("digits_mlp", "digits_test_x64", &["--scope", scope]);
        snapshot(&format!("weights_{scope}_digits_mlp"), &stable(&r.report));
        assert_eq!(r.report["scope"], scope);
        let (a, b) = accuracy(&r.report);
        assert!(b > a - 0.1, "{scope}: {a} → {b}");
    }
}

#[test]
fn same_input_same_bytes() {
    let a = run("digits_cnn", "digits_test_x1x8x8", &[]);
    let b = run("digits_cnn", "digits_test_x1x8x8", &[]);
    assert_eq!(std::fs::read(&a.out).unwrap(), std::fs::read(&b.out).unwrap());
    let strip = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("timing");
        v.as_object_mut().unwrap().remove("output");
        serde_json::to_string(&v).unwrap()
    };
    assert_eq!(strip(&a.report), strip(&b.report));
}

#[test]
fn beta_sweeps_monotonically() {
    let mut last = 0.0;
    for beta in ["1.5", "1", "0.75", "0.5"] {
        let r = run("digits_mlp", "digits_test_x64", &["--beta", beta, "--no-verify"]);
        let w = &r.report["weights"];
        let sp = 1.0 - w["kept_elems"].as_f64().unwrap() / w["candidates_elems"].as_f64().unwrap();
        assert!(sp >= last, "β={beta}: sparsity {sp} < {last}");
        last = sp;
    }
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

/// A report that cannot be written (a full disk: `/dev/full`) fails the run, names its flag and
/// leaves no output model behind (the model used to stay, beside exit 1).
#[test]
fn a_report_that_cannot_be_written_leaves_no_output() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let o = out.to_str().unwrap();
    fails(&["models/digits_mlp.onnx", o, "--no-latency", "--report", "/dev/full"], Some(&out), "--report /dev/full", 1);
    fails(&["models/digits_mlp.onnx", o, "--no-latency", "--html", "/dev/full"], Some(&out), "--html /dev/full", 1);
}

#[test]
fn bad_input_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out.onnx");
    let o = out.to_str().unwrap();
    fails(&["models/nope.onnx", o], Some(&out), "models/nope.onnx", 1);
    std::fs::write(d.join("text.onnx"), "this is not a model\n").unwrap();
    fails(&[d.join("text.onnx").to_str().unwrap(), o], Some(&out), "text.onnx", 1);
    let bytes = std::fs::read(Path::new(ROOT).join("models/digits_mlp.onnx")).unwrap();
    std::fs::write(d.join("trunc.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    fails(&[d.join("trunc.onnx").to_str().unwrap(), o], Some(&out), "trunc.onnx", 1);
    std::fs::write(d.join("empty.onnx"), b"").unwrap();
    fails(&[d.join("empty.onnx").to_str().unwrap(), o], Some(&out), "empty", 1);
    // a graph whose nodes are gone (its output produced by nothing: invalid), and a valid graph
    // of no nodes (an output that is its input: nothing to prune)
    let mut m = onnx_emp::model::io::load(&Path::new(ROOT).join("models/digits_mlp.onnx")).unwrap().proto;
    m.graph.as_mut().unwrap().node.clear();
    use onnx_protobuf::Message;
    std::fs::write(d.join("nograph.onnx"), m.write_to_bytes().unwrap()).unwrap();
    fails(&[d.join("nograph.onnx").to_str().unwrap(), o], Some(&out), "is not produced", 1);
    let g = m.graph.as_mut().unwrap();
    g.initializer.clear();
    g.output[0] = g.input[0].clone();
    std::fs::write(d.join("identity.onnx"), m.write_to_bytes().unwrap()).unwrap();
    fails(&[d.join("identity.onnx").to_str().unwrap(), o], Some(&out), "has no nodes: nothing to prune", 1);
    // unwritable output folder: a folder that does not exist, and one under a regular file
    fails(&["models/digits_mlp.onnx", "/nonexistent-dir/out.onnx"], None, "nonexistent-dir", 1);
    let f = d.join("file");
    std::fs::write(&f, "x").unwrap();
    fails(&["models/digits_mlp.onnx", f.join("out.onnx").to_str().unwrap()], None, "file", 1);
    if Path::new("/proc/self").is_dir() {
        // not writable even by root
        fails(&["models/digits_mlp.onnx", "/proc/self/out.onnx", "--no-verify"], None, "/proc/self", 1);
    }
}

/// Per-weight mode on a quantized model says what to do instead, and writes nothing.
#[test]
fn per_weight_on_a_quantized_model_points_to_structured() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    fails(
        &["models/fmnist_mobilenet_qdq.onnx", out.to_str().unwrap(), "--no-verify"],
        Some(&out),
        "--structured channels prunes quantized (QDQ) models",
        1,
    );
}

/// A model quantized in operator form (here dynamically: MatMulInteger on int8 weights) has
/// nothing any mode prunes: every mode says so and what to do instead, and writes nothing.
#[test]
fn an_operator_quantized_model_is_refused_with_what_to_do_instead() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let o = out.to_str().unwrap();
    for mode in [&[][..], &["--structured", "channels"][..], &["--structured", "heads"][..]] {
        let mut args = vec!["models/digits_mlp_dynq.onnx", o, "--no-verify"];
        args.extend_from_slice(mode);
        fails(&args, Some(&out), "quantized in operator form (3 MatMulInteger)", 1);
        fails(&args, Some(&out), "quant_format=QuantFormat.QDQ", 1);
    }
}

#[test]
fn refuses_to_overwrite_input_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.onnx");
    std::fs::copy(Path::new(ROOT).join("models/digits_mlp.onnx"), &m).unwrap();
    let before = std::fs::read(&m).unwrap();
    let ms = m.to_str().unwrap();
    fails(&[ms, ms], None, "--force", 1);
    assert_eq!(std::fs::read(&m).unwrap(), before);
    bin().args([ms, ms, "--force", "--no-verify", "--quiet"]).assert().success();
    assert_ne!(std::fs::read(&m).unwrap(), before);
}

#[test]
fn data_criteria_refuse_to_run_without_calibration() {
    // Verification inputs (or random ones) are never used as calibration: one line, exit 1.
    for args in [
        &["models/digits_mlp.onnx", "--criterion", "wanda", "--inputs", "models/digits_test_x64.npy"][..],
        &["models/digits_cnn.onnx", "--structured", "channels", "--criterion", "activation"][..],
        &["models/digits_transformer.onnx", "--structured", "heads", "--criterion", "activation"][..],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.onnx");
        let a = bin().arg(args[0]).arg(&out).args(&args[1..]).args(["--no-verify"]).assert().code(1);
        let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
        assert!(err.contains("needs calibration data: pass --calibration"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!out.exists());
    }
}

#[test]
fn usage_errors_exit_2() {
    bin().assert().code(2);
    bin().args(["a.onnx"]).assert().code(2);
    bin().args(["models/digits_mlp.onnx", "o.onnx", "--beta", "0"]).assert().code(2);
    bin().args(["models/digits_mlp.onnx", "o.onnx", "--structured", "rows"]).assert().code(2);
    bin().args(["models/digits_mlp.onnx", "o.onnx", "--scope", "rows"]).assert().code(2);
    bin().args(["models/digits_mlp.onnx", "o.onnx", "--criterion", "taylor"]).assert().code(2);
    bin().args(["models/digits_mlp.onnx", "o.onnx", "--round-to", "0"]).assert().code(2);
    // Combinations no model can run are usage errors too (some were exit 1, after loading).
    for combo in [
        &["--structured", "heads", "--ratio", "0.5"][..],
        &["--structured", "channels", "--scope", "global", "--ratio", "0.5"],
        &["--structured", "channels", "--criterion", "wanda"],
        &["--criterion", "l1"],
        &["--structured", "channels", "--scope", "unit"],
        &["--beta", "0.5", "--ratio", "0.5"],
        // A tolerance beside a cut written as asked did nothing (it was accepted in silence).
        &["--beta", "0.9", "--guard", "0.2"],
        &["--ratio", "0.3", "--guard", "0.2"],
    ] {
        bin().args(["models/digits_mlp.onnx", "o.onnx"]).args(combo).assert().code(2);
    }
    // So is a flag that would do nothing in the run (each was accepted in silence).
    for (combo, says) in [
        (&["--round-to", "8"][..], "--round-to has no effect per weight"),
        (&["--structured", "heads", "--round-to", "8"], "--round-to has no effect with --structured heads"),
        (&["--structured", "heads", "--include", "narrow"], "--include narrow has no effect with --structured heads"),
        (&["--include", "small,stem"], "--include stem has no effect per weight"),
        (&["--structured", "channels", "--include", "bias"], "--include bias has no effect with --structured"),
        (&["--no-latency", "--latency-runs", "3"], "--latency-runs has no effect with --no-latency"),
        (&["--latency-runs", "3", "--latency-budget", "1"], "--latency-budget has no effect with --latency-runs"),
        (&["--no-verify", "--latency-in", "tract"], "--latency-in has no effect with --no-verify"),
        (&["--no-reconstruct"], "--no-reconstruct has no effect without --calibration"),
    ] {
        let a = bin().args(["models/digits_mlp.onnx", "o.onnx"]).args(combo).assert().code(2);
        let err = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
        assert!(err.contains(says), "{combo:?}: {err}");
    }
    // Negative values get their own message, not clap's "unexpected argument '-1'".
    for (flag, v) in [("--beta", "-1"), ("--ratio", "-0.1"), ("--latency-budget", "-2")] {
        let a = bin().args(["models/digits_mlp.onnx", "o.onnx", flag, v]).assert().code(2);
        let err = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
        assert!(err.contains(&format!("{flag} {v}")) && !err.contains("unexpected argument"), "{err}");
    }
    bin().args(["models/digits_mlp.onnx", "o.onnx", "--bogus"]).assert().code(2);
    let h = bin().arg("--help").assert().success();
    assert!(String::from_utf8_lossy(&h.get_output().stdout).contains("Examples:"));
}

/// Structured runs through the CLI: exit 0, masked-equivalence passes (or is honestly skipped
/// where tract cannot run the op), and a snapshot of `onnx-emp diff dense pruned`.
fn structured(model: &str, data: Option<&str>, mode: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let rep = dir.path().join("report.json");
    let mut c = bin();
    c.arg(format!("models/{model}.onnx")).arg(&out).args(["--structured", mode, "--no-latency", "--report"]).arg(&rep);
    // These digits models are 8–32 units wide: EMP's cut is a unit or two per group, which
    // alignment (--round-to auto) would undo. Unaligned widths are what these rewrites test, at
    // EMP's cut as is (`--beta 1`: without calibration the fidelity guard would move the default).
    c.args(["--beta", "1"]);
    if mode != "heads" {
        c.args(["--round-to", "1"]);
    }
    if let Some(d) = data {
        c.args(["--inputs", &format!("models/{d}.npy"), "--labels", "models/digits_test_y.npy"]);
    }
    c.assert().success();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    let diff = bin().arg("diff").arg(format!("models/{model}.onnx")).arg(&out).assert().success();
    let text = String::from_utf8_lossy(&diff.get_output().stdout).replace(&out.display().to_string(), "<tmp>/out.onnx");
    insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!(format!("cli_{}_{model}", mode.replace(',', "_")), text);
    });
    report
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

fn assert_exact(r: &Value) {
    for e in r["equivalence"].as_array().unwrap() {
        assert_eq!(e["status"], "ok", "{e}");
        assert_eq!(e["pass"], true, "{e}");
        assert!(e["max_rel_l2_err"].as_f64().unwrap() <= 1e-4);
    }
}

#[test]
fn structured_channels_every_model() {
    for (m, d) in MODELS {
        let r = structured(m, Some(d), "channels");
        assert_exact(&r);
        let p = &r["params"];
        let prunable = r["groups"].as_array().unwrap().iter().filter(|g| g["blocked"].is_null()).count();
        // Every model has a prunable group (the LSTM's hidden units since this release).
        assert!(prunable > 0, "{m}: no prunable group");
        assert!(p["after"].as_u64() < p["before"].as_u64(), "{m}: params not reduced");
        assert!(r["macs_after"].as_u64() < r["macs_before"].as_u64(), "{m}: MACs not reduced");
        let (_, b) = accuracy(&r);
        assert!(b > 0.5, "{m}: accuracy after {b}");
    }
}

#[test]
fn structured_heads_models() {
    let r = structured("digits_transformer", Some("digits_test_x8x8"), "heads");
    assert_exact(&r);
    let heads: Vec<_> = r["groups"].as_array().unwrap().iter().filter(|g| g["kind"] == "heads").collect();
    assert_eq!(heads.len(), 2);
    let r = structured("digits_transformer", Some("digits_test_x8x8"), "heads,channels");
    assert_exact(&r);
    assert_eq!(r["equivalence"].as_array().unwrap().len(), 2);
    // tract cannot run com.microsoft Attention: the proof and the verification run in onnxruntime
    // instead (through python3); without it the rewrite is refused (the next test).
    if !ort_available() {
        return eprintln!("skipped: python3 with numpy and onnxruntime is not available");
    }
    for mode in ["heads", "channels"] {
        let r = structured("bert_ms_attention", None, mode);
        let (e, v) = (&r["equivalence"][0], &r["verification"]);
        assert!(e["reason"].as_str().unwrap().contains("com.microsoft Attention"), "{e}");
        assert_eq!((&e["status"], &e["engine"], &e["pass"]), (&"ok".into(), &"onnxruntime".into(), &true.into()));
        assert!(e["max_rel_l2_err"].as_f64().unwrap() <= 1e-4, "{e}");
        assert_eq!((&v["status"], &v["engine"]), (&"ok".into(), &"onnxruntime".into()));
        assert!(v["outputs"][0]["cosine"].as_f64().is_some() && v["latency_pruned"].is_null(), "{v}");
        assert!(r["params"]["after"].as_u64() < r["params"]["before"].as_u64());
    }
}

/// float16 inputs reach onnxruntime too: mha_ms in float16 (inputs included), whose
/// com.microsoft MultiHeadAttention tract cannot run, has its heads proven there.
#[test]
fn float16_inputs_are_proven_in_onnxruntime() {
    if !ort_available() {
        return eprintln!("skipped: python3 with numpy and onnxruntime is not available");
    }
    let r = report_of("mha_ms_fp16", &["--structured", "heads", "--beta", "0.7", "--no-latency", "-q"]);
    let (e, v) = (&r["equivalence"][0], &r["verification"]);
    assert_eq!((&e["status"], &e["engine"], &e["pass"]), (&"ok".into(), &"onnxruntime".into(), &true.into()), "{e}");
    assert_eq!((&v["status"], &v["engine"]), (&"ok".into(), &"onnxruntime".into()), "{v}");
    assert!(r["params"]["after"].as_u64() < r["params"]["before"].as_u64());
}

/// Latency is timed in tract and in onnxruntime (its default optimisation level, where edge
/// deployments run it), on the same sample, both in the report; without a Python that has
/// onnxruntime a note says why only tract's is there.
#[test]
fn latency_is_timed_in_tract_and_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let (out, rep, page) = (dir.path().join("out.onnx"), dir.path().join("r.json"), dir.path().join("r.html"));
    let run_in = |python: Option<&Path>, extra: &[&str]| {
        let mut c = bin();
        if let Some(p) = python {
            c.env("ONNX_EMP_PYTHON", p);
        }
        let a = c
            .args(["models/yolo_block.onnx"])
            .arg(&out)
            .args(["--structured", "channels", "--beta", "0.8", "--latency-runs", "5", "--report"])
            .arg(&rep)
            .arg("--html")
            .arg(&page)
            .args(extra)
            .assert()
            .success();
        let stdout = String::from_utf8_lossy(&a.get_output().stdout).into_owned();
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
        (stdout, r)
    };
    let run = |python: Option<&Path>| run_in(python, &[]);
    if ort_available() {
        let (stdout, r) = run(None);
        let t = &r["timing"];
        assert_eq!((&t["latency_dense"]["runs"], &t["latency_pruned"]["runs"]), (&5.into(), &5.into()), "{t}");
        let o = &t["latency_onnxruntime"];
        assert_eq!(
            (&o["dense"]["runs"], &o["pruned"]["runs"], &o["dense"]["samples"]),
            (&5.into(), &5.into(), &1.into())
        );
        assert!(o["dense"]["median_ms"].as_f64().is_some_and(|m| m > 0.0) && o["version"].is_string(), "{o}");
        assert!(stdout.contains("default optimisations, 1 thread; median of 5 / 5 runs"), "{stdout}");
        let html = std::fs::read_to_string(&page).unwrap();
        assert!(html.contains("latency (onnxruntime") && html.contains("latency (tract"), "no latency rows");
        // One engine only: --latency-in.
        let (_, r) = run_in(None, &["--latency-in", "onnxruntime"]);
        let t = &r["timing"];
        assert!(t["latency_dense"].is_null() && t["latency_onnxruntime"]["pruned"]["runs"] == 5, "{t}");
        let (_, r) = run_in(None, &["--latency-in", "tract"]);
        let t = &r["timing"];
        assert!(t["latency_onnxruntime"].is_null() && t["latency_dense"]["runs"] == 5, "{t}");
        assert!(!r["verification"]["notes"].to_string().contains("onnxruntime unavailable"), "{r}");
    }
    let (_, r) = run(Some(&dir.path().join("no-such-python")));
    assert!(r["timing"]["latency_onnxruntime"].is_null() && r["timing"]["latency_dense"].is_object());
    let notes = r["verification"]["notes"].to_string();
    assert!(notes.contains("latency in onnxruntime unavailable") && notes.contains("no-such-python"), "{notes}");
}

/// Reconstruction reads its activations from onnxruntime when tract cannot run the model: the
/// optimised BERT with fused embeddings refits its pruned MatMuls from calibration token ids, and
/// the refit lowers each layer's error.
#[test]
fn reconstruction_runs_in_onnxruntime_when_tract_cannot() {
    if !ort_available() {
        return eprintln!("skipped: python3 with numpy and onnxruntime is not available");
    }
    let dir = tempfile::tempdir().unwrap();
    let calib = dir.path().join("calib.npz");
    let mut npz = ndarray_npy::NpzWriter::new(std::fs::File::create(&calib).unwrap());
    let ids = ndarray::Array2::from_shape_fn((64, 16), |(i, j)| ((i * 131 + j * 17) % 1000) as i64);
    npz.add_array("input_ids", &ids).unwrap();
    npz.add_array("attention_mask", &ndarray::Array2::<i64>::ones((64, 16))).unwrap();
    npz.finish().unwrap();
    let c = calib.to_str().unwrap();
    let r = report_of(
        "bert_ms_embed",
        &["--structured", "channels", "--beta", "0.7", "--calibration", c, "--no-latency", "-q"],
    );
    let layers = r["reconstruction"]["layers"].as_array().unwrap();
    // Each layer keeps its weights ("unchanged") or lowers its error; the packed Q/K/V
    // projections of both Attention ops are among those refitted.
    let refit: Vec<&Value> = layers.iter().filter(|l| l["method"] != "unchanged" && l["method"] != "skipped").collect();
    assert!(refit.len() >= 6, "{layers:#?}");
    for l in &refit {
        assert!(l["err_after"].as_f64().unwrap() < l["err_before"].as_f64().unwrap(), "{l}");
    }
    let qkv = refit.iter().filter(|l| l["layer"].as_str().unwrap().starts_with("Attention ")).count();
    assert_eq!(qkv, 2, "{layers:#?}");
    assert!(!r.to_string().contains("could not compile"), "{}", r["reconstruction"]);
    assert_eq!(r["equivalence"][0]["pass"], true);
}

/// A structural rewrite that neither tract (com.microsoft Attention) nor onnxruntime (no Python
/// here: `ONNX_EMP_PYTHON` names one that does not exist) can run is not proven, so it is not
/// written: exit 1, one line saying why and what to do, no output file. `--allow-unproven`
/// writes it, and the report says it is unproven.
#[test]
fn a_rewrite_neither_engine_can_prove_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (out, rep) = (dir.path().join("out.onnx"), dir.path().join("r.json"));
    let run = |extra: &[&str]| {
        let mut c = bin();
        c.env("ONNX_EMP_PYTHON", dir.path().join("no-such-python"))
            .args(["models/bert_ms_attention.onnx"])
            .arg(&out)
            .args(["--structured", "channels", "--beta", "0.7", "--no-latency", "-q", "--report"])
            .arg(&rep)
            .args(extra);
        c.assert()
    };
    let refused = run(&[]).failure().code(1);
    let err = String::from_utf8_lossy(&refused.get_output().stderr).to_string();
    assert!(err.contains("could not be proven") && err.contains("--allow-unproven"), "{err}");
    assert!(err.contains("com.microsoft Attention") && err.contains("no-such-python"), "{err}");
    assert!(!out.exists(), "no output may be written");
    run(&["--allow-unproven"]).success();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert_eq!(r["equivalence"][0]["status"], "skipped");
    assert!(r["notes"].to_string().contains("UNPROVEN"), "{}", r["notes"]);
    assert!(r["params"]["after"].as_u64() < r["params"]["before"].as_u64());
}

/// When the Python that should run onnxruntime dies, what it said last on stderr is in the error
/// (here a stand-in interpreter that fails as a broken onnxruntime install does).
#[cfg(unix)]
#[test]
fn a_dying_onnxruntime_worker_is_quoted_in_the_refusal() {
    let err = refused_with_python(
        "echo 'Traceback (most recent call last):' >&2\necho 'ImportError: libonnxruntime.so.1: cannot open shared object file' >&2\nexit 3",
    );
    assert!(err.contains("onnxruntime exited (exit status: 3)"), "{err}");
    assert!(err.contains("ImportError: libonnxruntime.so.1: cannot open shared object file"), "{err}");
}

/// The stderr of a structural run of a model only onnxruntime can prove, with a stand-in Python
/// (`ONNX_EMP_PYTHON`, a shell script of `body`): refused (exit 1), nothing written.
#[cfg(unix)]
fn refused_with_python(body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let python = dir.path().join("python3");
    std::fs::write(&python, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.path().join("out.onnx");
    let refused = bin()
        .env("ONNX_EMP_PYTHON", &python)
        .args(["models/bert_ms_attention.onnx"])
        .arg(&out)
        .args(["--structured", "channels", "--beta", "0.7", "--no-latency", "-q"])
        .assert()
        .failure()
        .code(1);
    assert!(!out.exists(), "nothing may be written");
    String::from_utf8_lossy(&refused.get_output().stderr).to_string()
}

/// A real Python without numpy (here `python3 -S`: no site-packages) is told apart from a broken
/// worker: the refusal names the missing module. Before, the worker script touched numpy before
/// it checked its imports, and the refusal quoted a NameError from inside it.
#[cfg(unix)]
#[test]
fn a_python_without_numpy_is_named_as_such() {
    if std::process::Command::new("python3").arg("-c").arg("pass").status().map_or(true, |s| !s.success()) {
        return eprintln!("skipped: python3 is not available");
    }
    let err = refused_with_python("exec python3 -S \"$@\"");
    assert!(err.contains("python module missing: numpy"), "{err}");
    assert!(!err.contains("NameError"), "{err}");
}

/// A default run (no β) on a model tract cannot run is still guarded: the guard's runs fall back
/// to onnxruntime. The optimised BERT's heads at β = 1 miss the tolerance (0.103 > 0.1), so the
/// guard raises β until nothing that fails is cut, where before the cut was written unchecked.
#[test]
fn the_guard_runs_in_onnxruntime_when_tract_cannot() {
    if !ort_available() {
        return eprintln!("skipped: python3 with numpy and onnxruntime is not available");
    }
    let r = report_of("bert_ms_attention", &["--structured", "heads", "--no-latency", "-q"]);
    let notes = r["notes"].to_string();
    assert!(!notes.contains("could not run"), "{notes}");
    let trials = r["guard"]["trials"].as_array().unwrap();
    assert!(trials.len() > 1 && !trials[0]["pass"].as_bool().unwrap(), "{trials:?}");
    assert!(trials.iter().all(|t| t["rel_l2"].as_f64().is_some_and(|e| e.is_finite())));
    assert!(r["beta"].as_f64().unwrap() > 1.0);
}

#[test]
fn structured_reports_are_deterministic() {
    let once = |model: &str| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.onnx");
        let rep = dir.path().join("r.json");
        bin()
            .arg(format!("models/{model}.onnx"))
            .arg(&out)
            .args(["--structured", "heads", "--no-latency", "-q", "--report"])
            .arg(&rep)
            .assert()
            .success();
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("timing");
        v.as_object_mut().unwrap().remove("output");
        (std::fs::read(&out).unwrap(), serde_json::to_string(&v).unwrap())
    };
    for m in ["mha_ms", "digits_transformer"] {
        let (a, ra) = once(m);
        let (b, rb) = once(m);
        assert!(a == b, "{m}: output bytes differ");
        assert_eq!(ra, rb, "{m}: reports differ");
        assert!(!ra.contains(".onnx-emp-"), "{m}: staging path leaked into the report");
    }
}

/// `plan` reports the same decision as a run (groups, kept counts, params) and writes nothing.
#[test]
fn plan_is_the_decision_of_a_run_without_an_output() {
    for (mode, model, data) in [
        (&["--structured", "channels", "--beta", "0.8"][..], "yolo_block", "digits_test_x1x8x8"),
        // An explicit β: `plan` does not run the fidelity guard that a default run does.
        (&["--structured", "heads", "--beta", "1"][..], "digits_transformer", "digits_test_x8x8"),
        (&[][..], "digits_mlp", "digits_test_x64"),
        // The heads cut refitted before the channels are scored on its activations (plan
        // scored the unrefitted cut: other kept counts).
        (
            &[
                "--structured",
                "heads,channels",
                "--criterion",
                "activation",
                "--calibration",
                "models/digits_calib_x8x8.npy",
            ][..],
            "digits_transformer",
            "digits_test_x8x8",
        ),
    ] {
        let full = run(model, data, mode);
        let dir = tempfile::tempdir().unwrap();
        let rep = dir.path().join("plan.json");
        let a = bin()
            .args(["plan", &format!("models/{model}.onnx"), "--inputs", &format!("models/{data}.npy")])
            .args(mode)
            .arg("--report")
            .arg(&rep)
            .assert()
            .success();
        let stdout = String::from_utf8_lossy(&a.get_output().stdout).to_string();
        assert!(stdout.contains("plan only"), "{stdout}");
        let p: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
        assert_eq!(p["plan"], true);
        assert_eq!(p["groups"], full.report["groups"], "{model}");
        assert_eq!(p["params"], full.report["params"], "{model}");
        assert_eq!(p["macs_after"], full.report["macs_after"], "{model}");
        assert!(p["verification"].is_null() && p["equivalence"].as_array().unwrap().is_empty());
        // Only the report was written.
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1);
    }
    bin().args(["plan", "models/digits_mlp.onnx", "out.onnx"]).assert().code(2);
}

/// A run that leaves the model clearly worse than the input says so, with what to do.
/// Accuracy points lost (dense − pruned) in a run with labels.
fn loss(r: &Run) -> f64 {
    let v = &r.report["verification"];
    v["accuracy_dense"].as_f64().unwrap() - v["accuracy_pruned"].as_f64().unwrap()
}

fn notes(r: &Run) -> Vec<String> {
    r.report["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect()
}

#[test]
fn the_default_run_keeps_every_trained_model_within_three_points() {
    for (m, d) in MODELS {
        let r = run(m, d, &[]);
        let g = &r.report["guard"];
        let trials = g["trials"].as_array().unwrap_or_else(|| panic!("{m}: no guard in {}", r.report));
        assert_eq!(trials[0]["beta"], 1.0, "{m}");
        // The β written is one the guard measured to pass, and the report says it.
        assert_eq!(r.report["beta"], g["beta"], "{m}");
        let chosen = trials.iter().find(|t| t["beta"] == g["beta"]).unwrap();
        assert_eq!(chosen["pass"], true, "{m}");
        assert!(chosen["rel_l2"].as_f64().unwrap() <= g["tolerance"].as_f64().unwrap(), "{m}");
        assert!(loss(&r) <= 0.03, "{m}: lost {:.1} points at β {}", 100.0 * loss(&r), g["beta"]);
        let raised = trials[0]["pass"] == false;
        assert_eq!(raised, notes(&r).iter().any(|n| n.starts_with("fidelity guard: EMP's cut")), "{m}");
        assert_eq!(raised, r.stdout.contains("✗"), "{m}");
    }
}

/// The guard tries every stage of a structural mode: heads then channels, on the same copy.
#[test]
fn the_guard_covers_both_stages_of_heads_and_channels() {
    let r = run("digits_transformer", "digits_test_x8x8", &["--structured", "heads,channels"]);
    let g = &r.report["guard"];
    let trials = g["trials"].as_array().unwrap_or_else(|| panic!("no guard: {}", r.report["notes"]));
    assert_eq!(trials[0]["beta"], 1.0);
    assert_eq!(r.report["beta"], g["beta"]);
    let chosen = trials.iter().find(|t| t["beta"] == g["beta"]).unwrap();
    assert_eq!(chosen["pass"], true);
    // The units counted are the heads' and the hidden units' together.
    let units: u64 = r.report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["blocked"].is_null())
        .map(|x| x["n"].as_u64().unwrap())
        .sum();
    assert_eq!(g["candidates"].as_u64(), Some(units));
    assert_eq!(r.report["equivalence"].as_array().unwrap().len(), 2);
    assert!(loss(&r) <= 0.03, "lost {:.1} points", 100.0 * loss(&r));

    // Unaligned (--round-to 1), EMP's cut shrinks a head group and three hidden groups and fails
    // (0.26): the per-group pass runs over both stages' groups (indices into the whole report),
    // keeps the head and the stream whole and cuts the two FFN groups, proven in both stages.
    let r = run("digits_transformer", "digits_test_x8x8", &["--structured", "heads,channels", "--round-to", "1"]);
    let (g, groups) = (&r.report["guard"], r.report["groups"].as_array().unwrap());
    assert_eq!(g["by_group"], true, "{g}");
    let cut: Vec<usize> = g["groups"]["cut"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as usize).collect();
    assert!(!cut.is_empty());
    for (i, x) in groups.iter().enumerate() {
        let shrunk = x["kept"].as_u64() < x["n"].as_u64();
        assert_eq!(shrunk, cut.contains(&i), "group {i} {}: cut {cut:?}", x["id"]);
    }
    let tried: Vec<&str> = g["groups"]["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| groups[t["group"].as_u64().unwrap() as usize]["kind"].as_str().unwrap())
        .collect();
    assert!(tried.contains(&"heads") && tried.contains(&"hidden"), "{tried:?}");
    for e in r.report["equivalence"].as_array().unwrap() {
        assert_eq!(e["pass"], true, "{e}");
    }
    assert!(r.report["params"]["after"].as_u64() < r.report["params"]["before"].as_u64());
    assert!(loss(&r) <= 0.03, "lost {:.1} points", 100.0 * loss(&r));
}

#[test]
fn the_guard_moves_only_the_default() {
    let guarded = run("yolo_block", "digits_test_x1x8x8", &[]);
    assert!(guarded.report["beta"].as_f64().unwrap() > 1.0);
    // --guard off, an explicit β and --ratio write EMP's (or the baseline's) cut as asked.
    for extra in [&["--guard", "off"][..], &["--beta", "1"][..], &["--ratio", "0.3"][..]] {
        let r = run("yolo_block", "digits_test_x1x8x8", extra);
        assert!(r.report["guard"].is_null(), "{extra:?}");
        assert_eq!(r.report["beta"], 1.0, "{extra:?}");
    }
    let off = run("yolo_block", "digits_test_x1x8x8", &["--guard", "off"]);
    assert!(loss(&off) > 0.1, "EMP's unguarded cut on the YOLO block is expected to cost > 10 points");
    // With calibration, reconstruction repairs EMP's cut instead: no guard.
    let r = run("yolo_block", "digits_test_x1x8x8", &["--calibration", "models/digits_calib_x1x8x8.npy"]);
    assert!(r.report["guard"].is_null() && r.report["beta"] == 1.0);
    // Without verification the guard cannot run, and the report says so.
    let dir = tempfile::tempdir().unwrap();
    let rep = dir.path().join("r.json");
    bin()
        .args(["models/yolo_block.onnx"])
        .arg(dir.path().join("o.onnx"))
        .args(["--no-verify", "--report"])
        .arg(&rep)
        .assert()
        .success();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert!(r["guard"].is_null());
    assert!(r["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().starts_with("fidelity guard not run")));
    // A tolerance is a number ≥ 0 or off.
    bin().args(["models/yolo_block.onnx", "o.onnx", "--guard", "-1"]).assert().code(2);
}

#[test]
fn a_clearly_worse_output_is_flagged() {
    // The tiny YOLO-style block loses ~22 points at EMP's cut without calibration (unguarded).
    let r = run("yolo_block", "digits_test_x1x8x8", &["--guard", "off"]);
    let notes: Vec<&str> = r.report["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert!(notes.iter().any(|n| n.starts_with("WARNING: accuracy fell") && n.contains("--calibration")), "{notes:?}");
    // With calibration it recovers to within about a point; any warning left only suggests β.
    let r = run("yolo_block", "digits_test_x1x8x8", &["--calibration", "models/digits_calib_x1x8x8.npy"]);
    let notes = r.report["notes"].as_array().unwrap();
    assert!(notes.iter().all(|n| !n.as_str().unwrap().contains("pass --calibration")), "{notes:?}");
    // The MLP loses nothing at the default: no warning.
    let r = run("digits_mlp", "digits_test_x64", &[]);
    let notes = r.report["notes"].as_array().unwrap();
    assert!(notes.iter().all(|n| !n.as_str().unwrap().starts_with("WARNING")), "{notes:?}");
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// `--html` writes one self-contained page for every mode (and for `plan`): every group of the
/// JSON report by its exact name, heads as a grid, per-tensor sparsity, no external resource.
#[test]
fn html_report_is_self_contained_and_complete() {
    let cases: [(&str, &str, &[&str]); 4] = [
        ("digits_cnn", "digits_test_x1x8x8", &[]),
        ("yolo_block", "digits_test_x1x8x8", &["--structured", "channels", "--beta", "0.8"]),
        ("digits_transformer", "digits_test_x8x8", &["--structured", "heads,channels", "--beta", "1"]),
        ("digits_lstm", "digits_test_x8x8", &["--structured", "channels"]),
    ];
    for (model, data, extra) in cases {
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("r.html");
        let r = run(model, data, &[extra, &["--html", page.to_str().unwrap()]].concat());
        let h = std::fs::read_to_string(&page).unwrap();
        assert!(h.starts_with("<!DOCTYPE html>") && h.trim_end().ends_with("</html>"), "{model}");
        for bad in ["http:", "https:", "<script", "<link", "src=", "url(", "@import", "<img", "<iframe"] {
            assert!(!h.to_lowercase().contains(bad), "{model}: external resource marker {bad}");
        }
        for tag in ["svg", "table", "g", "tr", "ul"] {
            let open = h.matches(&format!("<{tag}>")).count() + h.matches(&format!("<{tag} ")).count();
            assert_eq!(open, h.matches(&format!("</{tag}>")).count(), "{model}: <{tag}> not balanced");
        }
        for g in r.report["groups"].as_array().unwrap() {
            let id = html_escape(g["id"].as_str().unwrap());
            assert!(h.contains(&format!("<td>{id}</td>")), "{model}: group {id} missing");
            if let Some(why) = g["blocked"].as_str() {
                assert!(h.contains(&html_escape(why)), "{model}: blocked reason of {id} missing");
            }
        }
        let removed_heads: usize = r.report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["kind"] == "heads")
            .map(|g| g["removed"].as_array().map(|a| a.len()).unwrap_or(0))
            .sum();
        assert_eq!(h.matches(": removed</title>").count(), removed_heads, "{model}");
        if extra.iter().any(|e| e.contains("heads")) {
            assert!(removed_heads > 0 && h.contains("<h2>Heads</h2>"), "{model}");
        }
        if let Some(w) = r.report["weights"].as_object() {
            for t in w["tensors"].as_array().unwrap() {
                assert!(h.contains(&html_escape(t["name"].as_str().unwrap())), "{model}");
            }
            assert!(h.contains("Per-layer sparsity"));
        }
        if let Some(trials) = r.report["guard"]["trials"].as_array() {
            // Default runs (digits_cnn's raised β; digits_lstm's channels passed at β = 1): every
            // trial is a row, one written.
            assert!(!trials.is_empty() && h.contains("Fidelity guard"), "{model}");
            assert_eq!(h.matches("<td>over</td>").count(), trials.iter().filter(|t| t["pass"] == false).count());
            assert_eq!(h.matches("<b>written</b>").count(), 1, "{model}");
        }
        assert!(h.contains("accuracy"), "{model}: fidelity figures missing");
    }
    // plan writes the page too
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("p.html");
    bin().args(["plan", "models/yolo_block.onnx", "--structured", "channels", "--html"]).arg(&page).assert().success();
    assert!(std::fs::read_to_string(&page).unwrap().contains("plan only"));
}

/// `--sparse-initializers`: the file shrinks by what sparse storage saves, the weights read back
/// are exactly the dense run's, and the run is deterministic.
#[test]
fn sparse_initializers_shrink_the_file_and_keep_every_value() {
    use onnx_emp::model::{io, sparse};
    let dense = run("digits_mlp", "digits_test_x64", &["--ratio", "0.9", "--no-verify"]);
    let sp = run("digits_mlp", "digits_test_x64", &["--ratio", "0.9", "--no-verify", "--sparse-initializers"]);
    let again = run("digits_mlp", "digits_test_x64", &["--ratio", "0.9", "--no-verify", "--sparse-initializers"]);
    assert_eq!(std::fs::read(&sp.out).unwrap(), std::fs::read(&again.out).unwrap());
    let s = &sp.report["sparse_initializers"];
    let (tensors, db, sb) =
        (s["tensors"].as_u64().unwrap(), s["dense_bytes"].as_u64().unwrap(), s["sparse_bytes"].as_u64().unwrap());
    assert!(tensors >= 1 && sb < db, "{s}");
    let (d_size, s_size) = (std::fs::metadata(&dense.out).unwrap().len(), std::fs::metadata(&sp.out).unwrap().len());
    assert_eq!(sp.report["output"]["bytes"].as_u64().unwrap(), s_size);
    assert!(d_size - s_size >= db - sb - 64 * tensors, "{d_size} → {s_size} for a payload saving of {}", db - sb);
    let mut back = io::load(&sp.out).unwrap().proto;
    assert_eq!(back.graph.as_ref().unwrap().sparse_initializer.len() as u64, tensors);
    sparse::densify_initializers(&mut back).unwrap();
    let want = io::load(&dense.out).unwrap().proto;
    let by_name = |m: &onnx_protobuf::ModelProto| {
        let mut v: Vec<(String, Vec<u8>)> =
            m.graph.as_ref().unwrap().initializer.iter().map(|t| (t.name.clone(), t.raw_data.clone())).collect();
        v.sort();
        v
    };
    assert_eq!(by_name(&back), by_name(&want));
    // `diff` and `plan` read them dense too (diff said every weight was removed; plan counted
    // no MACs).
    let d = bin().arg("diff").arg(&dense.out).arg(&sp.out).assert().success();
    let d = String::from_utf8_lossy(&d.get_output().stdout).to_string();
    assert!(
        d.contains("stored as sparse initializers, compared dense") && d.contains("no structural differences"),
        "{d}"
    );
    assert!(!d.contains("removed"), "{d}");
    let dp = dense.report["params"]["after"].as_u64().unwrap();
    assert!(d.contains(&format!("params: {dp} → {dp}")), "{d}");
    let dir = tempfile::tempdir().unwrap();
    let rep = dir.path().join("plan.json");
    bin().arg("plan").arg(&sp.out).arg("--report").arg(&rep).assert().success();
    let p: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert!(p["macs_before"].as_u64() > Some(0), "{}", p["notes"]);
    // Without enough zeros nothing is stored sparse, and the report says why.
    let low = run("digits_mlp", "digits_test_x64", &["--no-verify", "--sparse-initializers"]);
    assert_eq!(low.report["sparse_initializers"]["tensors"], 0);
    assert!(low.stdout.contains("stored dense"), "{}", low.stdout);
}

/// `--no-verify` runs no tract at all, the masked proof included: the structural rewrite is the
/// same model as the verified run's, and the report says it is unproven rather than exact.
#[test]
fn no_verify_structural_run_is_reported_unproven() {
    let flags = ["--structured", "channels", "--beta", "0.7", "--round-to", "1", "--include", "narrow"];
    let proven = run("yolo_block", "digits_test_x1x8x8", &flags);
    let mut more = flags.to_vec();
    more.push("--no-verify");
    let unproven = run("yolo_block", "digits_test_x1x8x8", &more);
    assert_eq!(std::fs::read(&proven.out).unwrap(), std::fs::read(&unproven.out).unwrap());
    assert_eq!(proven.report["equivalence"][0]["pass"], true);
    let e = &unproven.report["equivalence"][0];
    assert_eq!(e["status"], "skipped");
    assert!(e["pass"].is_null() && e["reason"].as_str().unwrap().contains("--no-verify"), "{e}");
    assert!(unproven.stdout.contains("unproven"), "{}", unproven.stdout);
    assert!(unproven.report["verification"].is_null());
}

/// A default run the fidelity guard should judge but cannot (here the dense model's outputs on
/// the guard's random inputs are NaN: a Sqrt reads the input, which the verification data keeps
/// non-negative) cuts nothing, in every mode, and says why; an explicit β writes EMP's cut.
#[test]
fn a_default_run_the_guard_cannot_judge_cuts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = onnx_emp::model::io::load(Path::new("models/digits_mlp.onnx")).unwrap().proto;
    let g = m.graph.as_mut().unwrap();
    let x = g.input[0].name.clone();
    for n in g.node.iter_mut() {
        for i in n.input.iter_mut().filter(|i| **i == x) {
            *i = "x_sqrt".into();
        }
    }
    let mut sqrt = onnx_protobuf::NodeProto::new();
    (sqrt.op_type, sqrt.name, sqrt.input, sqrt.output) = ("Sqrt".into(), "sqrt".into(), vec![x], vec!["x_sqrt".into()]);
    g.node.insert(0, sqrt);
    let model = dir.path().join("sqrt_mlp.onnx");
    std::fs::write(&model, protobuf::Message::write_to_bytes(&m).unwrap()).unwrap();
    let (out, rep) = (dir.path().join("out.onnx"), dir.path().join("r.json"));
    let run = |extra: &[&str]| -> Value {
        bin()
            .arg(&model)
            .arg(&out)
            .args(["--inputs", "models/digits_test_x64.npy", "--no-latency", "-q", "--force", "--report"])
            .arg(&rep)
            .args(extra)
            .assert()
            .success();
        serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap()
    };
    for mode in [&[][..], &["--structured", "channels", "--round-to", "1"][..]] {
        let r = run(mode);
        let p = &r["params"];
        assert_eq!(p["nonzero_after"], p["nonzero_before"], "{mode:?}: {p}");
        assert_eq!(p["after"], p["before"], "{mode:?}: {p}");
        let notes = r["notes"].to_string();
        assert!(notes.contains("fidelity guard could not run the model") && notes.contains("nothing is cut"), "{r}");
        assert!(notes.contains("not finite"), "{notes}");
        let beta: Vec<&str> = mode.iter().copied().chain(["--beta", "1"]).collect();
        let r = run(&beta);
        assert!(r["params"]["nonzero_after"].as_u64() < r["params"]["nonzero_before"].as_u64(), "{mode:?}");
    }
}

/// `np.savez_compressed` files (deflate) are read like plain `.npz`, for `--inputs` and
/// `--calibration`: the same accuracy and cut as the `.npy` files they hold. Before, the zip
/// reader had no deflate: calibration failed, and verification was skipped with the model
/// written (exit 0).
#[test]
fn compressed_npz_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let pack = |from: &str, to: &str| {
        let a: ndarray::ArrayD<f32> = ndarray_npy::read_npy(Path::new(ROOT).join("models").join(from)).unwrap();
        let p = dir.path().join(to);
        let mut w = ndarray_npy::NpzWriter::new_compressed(std::fs::File::create(&p).unwrap());
        w.add_array("x", &a).unwrap();
        // Labels saved beside the samples feed no input: ignored, and said so.
        if to == "cal.npz" {
            w.add_array("y", &ndarray::Array1::<i64>::zeros(a.shape()[0])).unwrap();
        }
        w.finish().unwrap();
        p
    };
    let (x, cal) = (pack("digits_test_x64.npy", "x.npz"), pack("digits_calib_x64.npy", "cal.npz"));
    let go = |inputs: &Path, cal: &Path, out: &str| -> Value {
        let rep = dir.path().join(format!("{out}.json"));
        bin()
            .args(["models/digits_mlp.onnx"])
            .arg(dir.path().join(out))
            .arg("--inputs")
            .arg(inputs)
            .arg("--calibration")
            .arg(cal)
            .args(["--labels", "models/digits_test_y.npy", "--no-latency", "-q", "--report"])
            .arg(&rep)
            .assert()
            .success();
        serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap()
    };
    let packed = go(&x, &cal, "packed.onnx");
    let models = Path::new(ROOT).join("models");
    let plain = go(&models.join("digits_test_x64.npy"), &models.join("digits_calib_x64.npy"), "plain.onnx");
    assert_eq!(packed["verification"]["status"], "ok", "{}", packed["verification"]);
    assert_eq!(packed["verification"]["input_shapes"]["x"], serde_json::json!([360, 64]));
    for key in ["accuracy_dense", "accuracy_pruned"] {
        assert!(packed["verification"][key].is_number(), "{key}");
        assert_eq!(packed["verification"][key], plain["verification"][key], "{key}");
    }
    assert!(packed["reconstruction"]["samples"].as_u64() > Some(0));
    let notes = packed["notes"].to_string();
    assert!(notes.contains("whose arrays y feed no input: ignored"), "{notes}");
    assert_eq!(packed["weights"]["kept_elems"], plain["weights"]["kept_elems"]);
    let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
    assert_eq!(read("packed.onnx"), read("plain.onnx"));
}

/// A verification file the user named that cannot be read, or does not fit the model (or labels
/// that do not fit the samples), is an error before anything is pruned (exit 1, nothing written), not a run whose verification is
/// skipped with the pruned model written.
#[test]
fn an_unreadable_or_unfitting_inputs_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    // Two files for one input: a usage error (the second was used silently).
    let a = bin()
        .args(["models/digits_mlp.onnx"])
        .arg(&out)
        .args(["--inputs", "x=models/digits_test_x64.npy", "--inputs", "x=a.npy", "-q"])
        .assert()
        .failure()
        .code(2);
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(err.contains("--inputs x=a.npy: x is given a file twice"), "{err}");
    let missing = dir.path().join("no-such-file.npy");
    let empty = dir.path().join("empty.npy");
    ndarray_npy::write_npy(&empty, &ndarray::Array2::<f32>::zeros((0, 64))).unwrap();
    // NaN or Inf in a user's samples: the run would be fitted or judged on them.
    let nan = dir.path().join("nan.npy");
    let mut a: ndarray::Array2<f32> = ndarray_npy::read_npy(format!("{ROOT}/models/digits_calib_x64.npy")).unwrap();
    a[[7, 3]] = f32::NAN;
    a[[9, 0]] = f32::INFINITY;
    ndarray_npy::write_npy(&nan, &a).unwrap();
    // Calibration that cannot be the model's inputs: one value everywhere, or another scale than
    // the --inputs samples (raw pixels for a normalised model).
    let (zeros, scaled) = (dir.path().join("zeros.npy"), dir.path().join("scaled.npy"));
    ndarray_npy::write_npy(&zeros, &ndarray::Array2::<f32>::zeros((64, 64))).unwrap();
    let mut b: ndarray::Array2<f32> = ndarray_npy::read_npy(format!("{ROOT}/models/digits_calib_x64.npy")).unwrap();
    b.mapv_inplace(|v| v * 255.0);
    ndarray_npy::write_npy(&scaled, &b).unwrap();
    let x = ["--inputs", "models/digits_test_x64.npy"];
    for (flag, file, says, extra) in [
        (
            "--inputs",
            nan.to_str().unwrap(),
            "input 'x': 2 of 256 sample(s) hold NaN or Inf (the first: sample 7)",
            &[][..],
        ),
        ("--calibration", nan.to_str().unwrap(), "input 'x': 2 of 256 sample(s) hold NaN or Inf", &x),
        ("--calibration", zeros.to_str().unwrap(), "every input holds one value everywhere", &x),
        ("--calibration", scaled.to_str().unwrap(), "input 'x' does not look like the --inputs samples", &x),
        ("--inputs", missing.to_str().unwrap(), "cannot read", &[]),
        ("--inputs", empty.to_str().unwrap(), "holds no samples", &[]),
        ("--inputs", "models/digits_test_x8x8.npy", "rank", &[]),
        ("--labels", missing.to_str().unwrap(), "cannot read", &[]),
        ("--labels", "models/digits_test_y.npy", "labels need the samples they label (--inputs)", &[]),
        ("--dim", "sequence=8", "no free dim of that name (free dims: batch)", &[]),
        // 256 calibration labels for the 360 test samples.
        ("--labels", "models/digits_calib_y.npy", "256 labels for 360 input samples", &x),
    ] {
        let a = bin()
            .args(["models/digits_mlp.onnx"])
            .arg(&out)
            .args([flag, file, "--no-latency", "-q"])
            .args(extra)
            .assert()
            .failure()
            .code(1);
        let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
        assert!(err.contains(flag) && err.contains(says), "{flag} {file}: {err}");
        assert!(!out.exists(), "nothing may be written");
    }
}

/// A calibration file larger than `--calibration-rows` is subsampled evenly (the report's label
/// says how many of how many); 0 uses every row. Reconstruction's time grows with the rows while
/// its fidelity stops improving, so the default caps it (512).
#[test]
fn calibration_rows_cap_the_samples_used() {
    let rows = |extra: &[&str]| -> Value {
        let mut args = vec!["--calibration", "models/digits_calib_x64.npy", "--no-verify"];
        args.extend_from_slice(extra);
        report_of("digits_mlp", &args)
    };
    let capped = rows(&["--calibration-rows", "100"]);
    let label = capped["calibration"].as_str().unwrap();
    assert!(label.contains("100 of 256 rows, evenly spaced"), "{label}");
    // Per weight, the refit solves on the first four fifths of the rows it is given.
    assert_eq!(capped["reconstruction"]["samples"], 80);
    let all = rows(&["--calibration-rows", "0"]);
    assert!(all["calibration"].as_str().unwrap().ends_with("(256 rows)"), "{}", all["calibration"]);
    assert_eq!(all["reconstruction"]["samples"], 256 - 256 / 5);
    // The default (512) leaves these 256 rows whole.
    assert_eq!(rows(&[])["calibration"], all["calibration"]);
}

/// `--report` / `--html` never land on a model the run reads or writes (they replaced it with
/// JSON), nor on each other; a FIFO or a device (`--report /dev/stdout`) is written through, not
/// replaced by a regular file, and a symlinked output is written where the link points.
#[test]
fn written_paths_never_replace_models_data_fifos_or_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("in.onnx");
    std::fs::copy(Path::new(ROOT).join("models/digits_mlp.onnx"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let out = d.join("out.onnx");
    // The data files the run reads.
    for f in ["x.npy", "c.npy", "y.npy"] {
        let src = match f {
            "y.npy" => "models/digits_test_y.npy",
            "c.npy" => "models/digits_calib_x64.npy",
            _ => "models/digits_test_x64.npy",
        };
        std::fs::copy(Path::new(ROOT).join(src), d.join(f)).unwrap();
    }
    let data: Vec<Vec<u8>> = ["x.npy", "c.npy", "y.npy"].iter().map(|f| std::fs::read(d.join(f)).unwrap()).collect();
    let run = ["--inputs", "x.npy", "--labels", "y.npy", "--calibration", "c.npy"];
    for (o, args, needle) in [
        ("c.npy", vec![], "c.npy: that is a --calibration file the run reads"),
        ("y.npy", vec![], "y.npy: that is the --labels file the run reads"),
        ("x.npy", vec![], "x.npy: that is a --inputs file the run reads"),
        ("out.onnx", vec!["--report", "x.npy"], "--report x.npy: that is a --inputs file"),
        ("out.onnx", vec!["--html", "y.npy"], "--html y.npy: that is the --labels file"),
        ("out.onnx", vec!["--report", "c.npy"], "--report c.npy: that is a --calibration file"),
        // A report that cannot be written fails before anything runs, not after OUT is written.
        ("out.onnx", vec!["--report", "no/r.json"], "--report no/r.json: folder no does not exist"),
        ("out.onnx", vec!["--html", "."], "--html .: that is a folder"),
    ] {
        let a =
            bin().current_dir(d).args(["in.onnx", o, "--no-latency", "-q"]).args(run).args(&args).assert().failure();
        let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
        assert!(err.contains(needle), "{o} {args:?}: {err}");
    }
    for (f, bytes) in ["x.npy", "c.npy", "y.npy"].iter().zip(&data) {
        assert_eq!(&std::fs::read(d.join(f)).unwrap(), bytes, "{f} was changed");
    }
    assert!(!out.exists());
    for (args, needle) in [
        (vec!["--report", "in.onnx"], "--report in.onnx: that is the input model"),
        (vec!["--html", "out.onnx"], "--html out.onnx: that is the output model"),
        (vec!["--report", "out.onnx.data"], "that is the output model's external data file"),
        (vec!["--report", "r.json", "--html", "r.json"], "--html r.json: that is the --report file"),
    ] {
        let a = bin().current_dir(d).args(["in.onnx", "out.onnx", "--no-latency", "-q"]).args(&args).assert().failure();
        let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let a = bin().current_dir(d).args(["plan", "in.onnx", "--report", "in.onnx"]).assert().failure();
    assert!(String::from_utf8_lossy(&a.get_output().stderr).contains("that is the input model"));
    assert_eq!(std::fs::read(&input).unwrap(), before);
    assert!(!out.exists());
    // A symlinked report and output: written where they point, the links kept.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("real.json", d.join("link.json")).unwrap();
        std::os::unix::fs::symlink("real.onnx", d.join("link.onnx")).unwrap();
        bin()
            .current_dir(d)
            .args(["in.onnx", "link.onnx", "--no-latency", "-q", "--report", "link.json"])
            .assert()
            .success();
        assert!(d.join("link.json").is_symlink() && d.join("link.onnx").is_symlink());
        // A link into another filesystem (tmpfs, where the machine has one): staged beside its
        // target, so the final rename does not cross devices (it failed "cannot write").
        use std::os::unix::fs::MetadataExt;
        let shm = Path::new("/dev/shm");
        if shm.is_dir() && std::fs::metadata(shm).unwrap().dev() != std::fs::metadata(d).unwrap().dev() {
            let far = tempfile::tempdir_in(shm).unwrap();
            std::os::unix::fs::symlink(far.path().join("m.onnx"), d.join("far.onnx")).unwrap();
            bin().current_dir(d).args(["in.onnx", "far.onnx", "--no-latency", "-q"]).assert().success();
            onnx_emp::model::io::load(&far.path().join("m.onnx")).unwrap();
            assert!(d.join("far.onnx").is_symlink());
        }
        assert!(std::fs::read_to_string(d.join("real.json")).unwrap().contains("\"tool\""));
        onnx_emp::model::io::load(&d.join("real.onnx")).unwrap();
        // A FIFO: read by another process while the run writes into it.
        let fifo = d.join("r.fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let reader = std::thread::spawn({
            let fifo = fifo.clone();
            move || std::fs::read_to_string(fifo).unwrap()
        });
        bin()
            .current_dir(d)
            .args(["in.onnx", "out.onnx", "--no-latency", "-q", "--report", "r.fifo"])
            .assert()
            .success();
        assert!(reader.join().unwrap().contains("\"tool\""));
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    }
}

/// A model exported with its batch fixed to 1 is guarded on as many random samples as any other
/// (run one at a time): it was judged on one, so β moved with that one input's noise.
#[test]
fn a_batch_one_model_is_guarded_on_many_samples() {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as Dim;
    let dir = tempfile::tempdir().unwrap();
    let mut l = onnx_emp::model::io::load(&Path::new(ROOT).join("models/digits_mlp.onnx")).unwrap();
    let x = &mut l.proto.graph.as_mut().unwrap().input[0];
    let Some(onnx_protobuf::type_proto::Value::TensorType(t)) = x.type_.as_mut().unwrap().value.as_mut() else {
        panic!()
    };
    t.shape.as_mut().unwrap().dim[0].value = Some(Dim::DimValue(1));
    let fixed = dir.path().join("fixed.onnx");
    onnx_emp::model::io::save(l.proto, &fixed, &Default::default()).unwrap();
    let rep = dir.path().join("r.json");
    let guard = |model: &Path| -> Value {
        bin()
            .arg(model)
            .arg(dir.path().join("o.onnx"))
            .args(["--force", "--no-latency", "-q", "--report"])
            .arg(&rep)
            .assert()
            .success();
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
        r["guard"].clone()
    };
    let (f, free) = (guard(&fixed), guard(&Path::new(ROOT).join("models/digits_mlp.onnx")));
    assert_eq!(f["samples"], 32, "{f}");
    // The same samples as the free-batch model's, one at a time: the same trials (to float
    // rounding: one row per run is summed in another order).
    let (a, b) = (f["trials"].as_array().unwrap(), free["trials"].as_array().unwrap());
    assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(b) {
        assert_eq!((&a["beta"], &a["kept"], &a["pass"]), (&b["beta"], &b["kept"], &b["pass"]));
        assert!((a["rel_l2"].as_f64().unwrap() - b["rel_l2"].as_f64().unwrap()).abs() < 1e-6, "{a} {b}");
    }
}

/// A model with a free height and width that does not run at the assumed 224 × 224 (a classifier
/// that needs 8 × 8): the report says which sizes were assumed and how to give others, and
/// `--dim` makes it run.
#[test]
fn sizes_assumed_for_free_dims_are_named_when_the_model_does_not_run_at_them() {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as Dim;
    let dir = tempfile::tempdir().unwrap();
    let mut l = onnx_emp::model::io::load(&Path::new(ROOT).join("models/digits_cnn_flatten.onnx")).unwrap();
    let x = &mut l.proto.graph.as_mut().unwrap().input[0];
    let Some(onnx_protobuf::type_proto::Value::TensorType(t)) = x.type_.as_mut().unwrap().value.as_mut() else {
        panic!()
    };
    let dims = &mut t.shape.as_mut().unwrap().dim;
    dims[2].value = Some(Dim::DimParam("h".into()));
    dims[3].value = Some(Dim::DimParam("w".into()));
    let free = dir.path().join("free.onnx");
    onnx_emp::model::io::save(l.proto, &free, &Default::default()).unwrap();
    let a = bin().arg(&free).arg(dir.path().join("o.onnx")).arg("--no-latency").assert().success();
    let out = String::from_utf8_lossy(&a.get_output().stdout).to_string();
    assert!(
        out.contains("did not run at the sizes assumed for its free dims (h=224 (default), w=224 (default))")
            && out.contains("--dim NAME=VALUE"),
        "{out}"
    );
    let a = bin()
        .arg(&free)
        .arg(dir.path().join("o.onnx"))
        .args(["--no-latency", "--force", "--dim", "h=8", "--dim", "w=8"])
        .assert()
        .success();
    let out = String::from_utf8_lossy(&a.get_output().stdout).to_string();
    assert!(
        out.contains("verification (tract, 32 random samples (seed 0; not the guard's); inputs x [32, 1, 8, 8])")
            && !out.contains("did not run"),
        "{out}"
    );
}

/// A model with no batch axis (an input [16]): onnxruntime times it on its one sample (it was
/// given a slice [1] of the features and refused, with its reason cut off), and a file of many
/// samples is refused with the reason.
#[test]
fn a_model_without_a_batch_axis_is_timed_and_a_stacked_file_is_explained() {
    if !ort_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (model, x) = (dir.path().join("nobatch.onnx"), dir.path().join("x100.npy"));
    if !outputs::no_batch_axis_model(&model, &x, 16) {
        return;
    }
    let (out, rep) = (dir.path().join("out.onnx"), dir.path().join("r.json"));
    bin().arg(&model).arg(&out).args(["--beta", "1", "--latency-runs", "3", "--report"]).arg(&rep).assert().success();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    let notes = r["notes"].to_string() + &r["verification"]["notes"].to_string();
    assert!(!notes.contains("latency in onnxruntime unavailable"), "{notes}");
    assert_eq!(r["timing"]["latency_onnxruntime"]["pruned"]["runs"], 3, "{}", r["timing"]);
    let a = bin().arg(&model).arg(&out).args(["--force", "--inputs"]).arg(&x).assert().code(1);
    let err = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    assert!(err.contains("[100, 16]") && err.contains("the model has no batch axis"), "{err}");
}

/// A model without a batch axis (`x [16]`) runs one sample: the guard, verification and latency
/// count one (they said "16 random inputs", "16 random samples", "16 sample(s) per run" of one
/// vector of 16 features), and a vector longer than verification's 256 rows is not cut to 256
/// "samples" (its verification was skipped: "Got: 256 Expected: 300"); calibration is refused.
#[test]
fn a_model_without_a_batch_axis_runs_one_sample() {
    let dir = tempfile::tempdir().unwrap();
    for features in [16, 300] {
        let (model, x) = (dir.path().join(format!("nobatch{features}.onnx")), dir.path().join("x.npy"));
        if !outputs::no_batch_axis_model(&model, &x, features) {
            return;
        }
        let (out, rep) = (dir.path().join("out.onnx"), dir.path().join("r.json"));
        let a = bin()
            .arg(&model)
            .arg(&out)
            .args(["--force", "--latency-runs", "2", "--latency-in", "tract", "--report"])
            .arg(&rep)
            .assert()
            .success();
        let stdout = String::from_utf8_lossy(&a.get_output().stdout).into_owned();
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
        assert_eq!((&r["guard"]["inputs"], &r["guard"]["samples"]), (&"1 random input (seed 0)".into(), &1.into()));
        let v = &r["verification"];
        assert_eq!(v["status"], "ok", "{features}: {v}");
        assert!(v["samples"].as_str().unwrap().starts_with("1 random sample (seed 0"), "{}", v["samples"]);
        assert_eq!(r["timing"]["latency_dense"]["samples"], 1, "{}", r["timing"]);
        for wrong in [format!("{features} random"), format!("{features} sample")] {
            assert!(!stdout.contains(&wrong), "{stdout}");
        }
        // One vector of --inputs is one sample too (it read "16 samples from --inputs").
        let one = dir.path().join("one.npy");
        ndarray_npy::write_npy(&one, &ndarray::Array1::<f32>::from_elem(features, 0.5)).unwrap();
        let a = bin().arg(&model).arg(&out).args(["--force", "--no-latency", "--inputs"]).arg(&one).assert().success();
        let stdout = String::from_utf8_lossy(&a.get_output().stdout).into_owned();
        assert!(stdout.contains("verification (tract, 1 sample from --inputs;"), "{stdout}");
        assert!(!stdout.contains(&format!("{features} sample")), "{stdout}");
        // Calibration has nothing to average over: refused (its features were taken for samples,
        // and reconstruction fitted the layers to them).
        let a =
            bin().arg(&model).arg(&out).args(["--force", "--no-latency", "--calibration"]).arg(&one).assert().code(1);
        let err = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
        assert!(err.contains("--calibration: the model has no batch axis"), "{err}");
    }
}

/// The fidelity guard judges float outputs: an integer output beside them (an ArgMax's class ids)
/// is left out, so the guard's figures are the logits' (it scored the class ids by relative L2:
/// class 3 becoming 8 read as 0.226 where the logits moved 0.097).
#[test]
fn the_guard_leaves_an_integer_output_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = onnx_emp::model::io::load(Path::new(ROOT).join("models/digits_mlp.onnx").as_path()).unwrap().proto;
    outputs::add_argmax_output(&mut m);
    let with_argmax = dir.path().join("argmax.onnx");
    onnx_emp::model::io::save(m, &with_argmax, &Default::default()).unwrap();
    let trials = |model: &Path, tag: &str| {
        let (out, rep) = (dir.path().join(format!("{tag}.onnx")), dir.path().join(format!("{tag}.json")));
        bin().arg(model).arg(&out).args(["--no-latency", "--quiet", "--report"]).arg(&rep).assert().success();
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
        r["guard"]["trials"].clone()
    };
    let plain = trials(&Path::new(ROOT).join("models/digits_mlp.onnx"), "plain");
    assert!(plain.as_array().is_some_and(|t| !t.is_empty()), "{plain}");
    assert_eq!(trials(&with_argmax, "argmax_out"), plain);
}
