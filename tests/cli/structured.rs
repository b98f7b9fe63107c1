//! Structural modes (`--structured channels|heads`) through the CLI: `diff` snapshots, exact
//! masked equivalence, float16 inputs, deterministic reports, `plan`, `--no-verify`.
use super::*;

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
    insta::with_settings!({snapshot_path => "../../snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!(format!("cli_{}_{model}", mode.replace(',', "_")), text);
    });
    report
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
