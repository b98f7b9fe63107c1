//! onnxruntime beside tract: latency in both, reconstruction and the guard in onnxruntime when
//! tract cannot run the model, and what is said when neither engine (or its Python) can.
use super::*;

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
