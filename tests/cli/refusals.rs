//! Exit codes and one-line errors: unwritable reports, bad input, quantized models, overwrites,
//! missing calibration, usage errors, unreadable or unfitting data files.
use super::*;

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

#[test]
fn calibration_prepared_unlike_the_inputs_is_a_warning() {
    // The digits are pixels in [0, 1]; standardised copies are what another pipeline would give
    // (std 1 against 0.38): close enough to fit on, too far to be the same preparation.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let std = dir.path().join("standardised.npy");
    let a: ndarray::Array2<f32> = ndarray_npy::read_npy(format!("{ROOT}/models/digits_calib_x64.npy")).unwrap();
    let (m, s) = (a.mean().unwrap(), a.std(0.0));
    ndarray_npy::write_npy(&std, &a.mapv(|v| (v - m) / s)).unwrap();
    let says = "WARNING: --calibration input 'x' looks prepared unlike the --inputs samples";
    for (calib, warned) in
        [(std.to_str().unwrap().to_string(), true), (format!("{ROOT}/models/digits_calib_x64.npy"), false)]
    {
        let a = bin()
            .args(["models/digits_mlp.onnx"])
            .arg(&out)
            .args(["--calibration", &calib, "--inputs", "models/digits_test_x64.npy", "--no-latency"])
            .assert()
            .success();
        let text = String::from_utf8_lossy(&a.get_output().stdout).to_string();
        assert_eq!(text.contains(says), warned, "{calib}: {text}");
    }
}
