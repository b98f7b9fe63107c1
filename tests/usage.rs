//! Usage errors (exit 2) for flags that would do nothing in the run, and for malformed lists:
//! each was accepted in silence, or refused with a misleading message, before.
use assert_cmd::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn bin() -> Command {
    let mut c = Command::cargo_bin("onnx-emp").unwrap();
    c.current_dir(ROOT);
    c
}

/// Runs `args` and returns stderr, asserting exit code 2.
fn refused(args: &[&str]) -> String {
    let a = bin().args(args).assert().code(2);
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

const MLP: &str = "models/digits_mlp.onnx";
const CALIB: &str = "models/digits_calib_x64.npy";

#[test]
fn calibration_rows_without_calibration_is_a_usage_error() {
    let err = refused(&[MLP, "o.onnx", "--calibration-rows", "100"]);
    assert!(err.contains("--calibration-rows has no effect without --calibration"), "{err}");
    // With calibration it is taken (tests/cli/files.rs `calibration_rows_cap_the_samples_used`).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.onnx");
    bin()
        .arg(MLP)
        .arg(&out)
        .args(["--calibration", CALIB, "--calibration-rows", "100", "--no-verify", "-q"])
        .assert()
        .success();
}

#[test]
fn allow_mismatch_with_no_verify_is_a_usage_error() {
    let err = refused(&[MLP, "o.onnx", "--structured", "channels", "--no-verify", "--allow-mismatch"]);
    assert!(err.contains("--allow-mismatch has no effect with --no-verify"), "{err}");
}

/// An explicit tolerance with --no-verify (or on `plan`) did nothing: the guard judges on a
/// verification run. The default guard, `--guard off`, and a tolerance that bounds the warning of
/// a reconstructed run without verification keep working.
#[test]
fn a_guard_tolerance_without_verification_is_a_usage_error() {
    let err = refused(&[MLP, "o.onnx", "--guard", "0.2", "--no-verify"]);
    assert!(err.contains("--guard 0.2 has no effect with --no-verify"), "{err}");
    let err = refused(&[MLP, "o.onnx", "--guard", "0.2", "--no-verify", "--calibration", CALIB, "--no-reconstruct"]);
    assert!(err.contains("--guard 0.2 has no effect with --no-verify"), "{err}");
    let err = refused(&["plan", MLP, "--guard", "0.2"]);
    assert!(err.contains("--guard 0.2 has no effect with plan"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.onnx");
    let ok = |extra: &[&str]| {
        let a = bin().arg(MLP).arg(&out).args(["--force", "--no-verify"]).args(extra).assert().success();
        String::from_utf8_lossy(&a.get_output().stdout).into_owned()
    };
    assert!(ok(&[]).contains("fidelity guard not run (--no-verify)"));
    ok(&["--guard", "off"]);
    // Reconstructed without verification: the tolerance is the one the warning compares with.
    let tight = ok(&["--guard", "0.0001", "--calibration", CALIB]);
    assert!(tight.contains("over the fidelity guard's tolerance 0.0001"), "{tight}");
    assert!(!ok(&["--guard", "0.9", "--calibration", CALIB]).contains("WARNING: after reconstruction"));
}

/// `plan` times nothing: its latency flags are refused like the main command's with --no-latency
/// (`plan --latency-runs 3` was accepted, `plan --no-latency --latency-runs 3` refused).
#[test]
fn latency_flags_on_plan_are_a_usage_error() {
    for (flag, args) in [
        ("--latency-runs", &["--latency-runs", "3"][..]),
        ("--latency-budget", &["--latency-budget", "0.5"]),
        ("--latency-in", &["--latency-in", "tract"]),
        ("--no-latency", &["--no-latency"]),
        ("--no-latency", &["--no-latency", "--latency-runs", "3"]),
    ] {
        let err = refused(&[&["plan", MLP][..], args].concat());
        assert!(err.contains(&format!("{flag} has no effect with plan: plan times nothing")), "{args:?}: {err}");
    }
    bin().args(["plan", MLP, "--no-verify", "-q"]).assert().success();
}

#[test]
fn an_empty_include_item_is_a_usage_error_that_names_it() {
    for given in ["bias,", ",bias", "bias,,norm", ""] {
        let err = refused(&[MLP, "o.onnx", &format!("--include={given}")]);
        assert!(
            err.contains(&format!("--include '{given}': an empty item"))
                && err.contains("bias, norm, embedding, small, narrow, stem, bottleneck")
                && !err.contains("a value is required"),
            "{given}: {err}"
        );
    }
    let err = refused(&[MLP, "o.onnx", "--include", "bias,bogus"]);
    assert!(err.contains("--include bogus: expected one of bias, norm"), "{err}");
    // Items are still taken one per comma, and the flag repeats.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.onnx");
    bin()
        .arg(MLP)
        .arg(&out)
        .args(["--include", "bias,small", "--include", "norm", "--no-verify", "-q"])
        .assert()
        .success();
}

/// The proof's and verification's flags where none runs: per weight (nothing is removed, so no
/// masked model is proven), on `plan` (it stops after the decision), and `--labels` on `plan`
/// (it measures nothing; with `--no-verify` it is taken, as `--inputs` is, so that a script can
/// pass its data files to every run).
#[test]
fn proof_and_accuracy_flags_where_nothing_is_proven_or_measured_are_usage_errors() {
    for flag in ["--allow-mismatch", "--allow-unproven"] {
        let err = refused(&[MLP, "o.onnx", flag]);
        assert!(err.contains(&format!("{flag} has no effect per weight")), "{err}");
        let err = refused(&["plan", MLP, "--structured", "channels", flag]);
        assert!(err.contains(&format!("{flag} has no effect with plan")), "{err}");
    }
    let err = refused(&["plan", MLP, "--labels", "models/digits_test_y.npy"]);
    assert!(err.contains("--labels has no effect with plan"), "{err}");
    // Where they do something they are taken.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.onnx");
    bin()
        .arg(MLP)
        .arg(&out)
        .args(["--structured", "channels", "--allow-mismatch", "--allow-unproven", "--no-latency", "-q"])
        .args(["--inputs", "models/digits_test_x64.npy", "--labels", "models/digits_test_y.npy"])
        .assert()
        .success();
}
