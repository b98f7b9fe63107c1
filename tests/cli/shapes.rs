//! Models whose dims are free or missing: sizes assumed for free height and width, models
//! without a batch axis.
use super::*;

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
