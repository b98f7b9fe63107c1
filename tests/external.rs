//! Models whose weights are stored unusually, through the CLI. Weights in external data files:
//! the pruned output is written with external data, loads again, runs in tract (verification
//! "ok") and is pruned exactly like the same model with embedded weights. Data paths leaving the
//! model's folder, overlapping ranges and ranges past the end of the file are refused. Weights
//! listed as graph inputs too (IR < 4, `keep_initializers_as_inputs`) are pruned as weights.
use assert_cmd::Command;
use onnx_emp::model::io::{self, SaveOptions};
use onnx_protobuf::Message;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const INPUTS: &str = "models/digits_test_x1x8x8.npy";

fn bin() -> Command {
    let mut c = Command::cargo_bin("onnx-emp").unwrap();
    c.current_dir(ROOT);
    c
}

/// models/digits_cnn.onnx re-saved into `dir` with every initializer in `model.onnx.data`.
fn externalized(dir: &Path) -> PathBuf {
    let l = io::load(&Path::new(ROOT).join("models/digits_cnn.onnx")).unwrap();
    let names: BTreeSet<String> = l.proto.graph.as_ref().unwrap().initializer.iter().map(|t| t.name.clone()).collect();
    assert!(names.len() > 4);
    let p = dir.join("model.onnx");
    io::save(l.proto, &p, &SaveOptions { external: names.clone() }).unwrap();
    assert!(dir.join("model.onnx.data").is_file());
    let back = io::load(&p).unwrap();
    assert_eq!(back.external, names);
    p
}

/// Run the CLI, return the JSON report and the output path.
fn prune(model: &Path, out_dir: &Path, extra: &[&str]) -> (Value, PathBuf) {
    let out = out_dir.join("out.onnx");
    let rep = out_dir.join("r.json");
    bin()
        .arg(model)
        .arg(&out)
        .args(["--inputs", INPUTS, "--labels", "models/digits_test_y.npy", "--no-latency", "--quiet", "--report"])
        .arg(&rep)
        .args(extra)
        .assert()
        .success();
    (serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap(), out)
}

/// The report without what legitimately differs between the two storages of one model.
fn comparable(r: &Value) -> Value {
    let mut v = r.clone();
    let o = v.as_object_mut().unwrap();
    for k in ["timing", "verification", "equivalence", "input", "output"] {
        o.remove(k);
    }
    v
}

fn check_external_run(extra: &[&str]) {
    let src = tempfile::tempdir().unwrap();
    let model = externalized(src.path());
    let out_dir = tempfile::tempdir().unwrap();
    let (r, out) = prune(&model, out_dir.path(), extra);
    assert_eq!(r["verification"]["status"], "ok", "verification: {}", r["verification"]["reason"]);
    for e in r["equivalence"].as_array().unwrap() {
        assert_eq!(e["status"], "ok", "equivalence: {e}");
        assert_eq!(e["pass"], true);
    }
    // The output keeps its weights outside, and loads.
    assert!(out_dir.path().join("out.onnx.data").is_file());
    let loaded = io::load(&out).unwrap();
    assert!(!loaded.external.is_empty());
    assert_eq!(r["output"]["bytes"].as_u64().unwrap(), loaded.bytes_on_disk);
    // Nothing of the staging folder is left behind.
    let left: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 3, "{left:?}");
    // Same decisions as with embedded weights.
    let dense_dir = tempfile::tempdir().unwrap();
    let (d, _) = prune(&Path::new(ROOT).join("models/digits_cnn.onnx"), dense_dir.path(), extra);
    assert_eq!(comparable(&r), comparable(&d));
    assert_eq!(r["verification"]["accuracy_pruned"], d["verification"]["accuracy_pruned"]);
}

#[test]
fn weights_mode_with_external_data() {
    check_external_run(&[]);
    check_external_run(&["--scope", "unit"]);
}

#[test]
fn channels_mode_with_external_data() {
    check_external_run(&["--structured", "channels"]);
}

/// The plain per-weight pass (`--no-verify`) reads external data through read-only mappings and
/// writes it through keep bits (`io::load_mapped`, `io::save_mapped`): its output is byte for byte
/// the verified run's (which reads the data into memory and zeroes in place), with the same
/// decisions and parameter counts, for every scope and with only some tensors outside.
#[test]
fn streamed_pass_writes_what_the_in_memory_pass_writes() {
    let src = tempfile::tempdir().unwrap();
    let all = externalized(src.path());
    // A second copy with only every other initializer (and one empty tensor) outside.
    let mut l = io::load(&all).unwrap();
    let g = l.proto.graph.as_mut().unwrap();
    let mut empty = g.initializer[0].clone();
    empty.name = "unused_empty".into();
    empty.dims = vec![0, 3];
    empty.raw_data.clear();
    g.initializer.push(empty);
    let some: BTreeSet<String> = g.initializer.iter().step_by(2).map(|t| t.name.clone()).collect();
    let some_dir = tempfile::tempdir().unwrap();
    let some_model = some_dir.path().join("model.onnx");
    io::save(
        l.proto,
        &some_model,
        &SaveOptions { external: some.union(&["unused_empty".to_string()].into()).cloned().collect() },
    )
    .unwrap();
    for model in [&all, &some_model] {
        for scope in ["normalized", "global", "layer", "unit"] {
            let run = |verify: bool| {
                let d = tempfile::tempdir().unwrap();
                let out = d.path().join("out.onnx");
                let rep = d.path().join("r.json");
                let mut c = bin();
                c.arg(model).arg(&out).args(["--beta", "0.8", "--scope", scope, "--quiet", "--report"]).arg(&rep);
                if verify {
                    c.args(["--inputs", INPUTS, "--no-latency"]);
                } else {
                    c.arg("--no-verify");
                }
                c.assert().success();
                let r: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
                let data = std::fs::read(d.path().join("out.onnx.data")).unwrap();
                (std::fs::read(&out).unwrap(), data, r)
            };
            let (m1, d1, r1) = run(false);
            let (m2, d2, r2) = run(true);
            assert!(m1 == m2 && d1 == d2, "{}, scope {scope}: outputs differ", model.display());
            assert_eq!(r1["params"], r2["params"], "scope {scope}");
            assert_eq!(r1["weights"], r2["weights"], "scope {scope}");
            assert!(r1["params"]["nonzero_after"].as_u64() < r1["params"]["nonzero_before"].as_u64());
        }
    }
}

/// Rewrite the external-data entries of `model` (without resolving them) with `f`.
fn edit_external(model: &Path, f: impl Fn(usize, &mut onnx_protobuf::TensorProto)) {
    let mut m = onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(model).unwrap()).unwrap();
    for (i, t) in m.graph.as_mut().unwrap().initializer.iter_mut().filter(|t| !t.external_data.is_empty()).enumerate() {
        f(i, t);
    }
    std::fs::write(model, m.write_to_bytes().unwrap()).unwrap();
}

fn set(t: &mut onnx_protobuf::TensorProto, key: &str, value: &str) {
    t.external_data.iter_mut().find(|e| e.key == key).unwrap().value = value.to_string();
}

#[test]
fn data_path_leaving_the_folder_is_refused() {
    let top = tempfile::tempdir().unwrap();
    let sub = top.path().join("m");
    std::fs::create_dir(&sub).unwrap();
    let model = externalized(&sub);
    // A perfectly readable data file, but outside the model's folder.
    std::fs::copy(sub.join("model.onnx.data"), top.path().join("outside.data")).unwrap();
    edit_external(&model, |i, t| {
        if i == 0 {
            set(t, "location", "../outside.data");
        }
    });
    let out = tempfile::tempdir().unwrap();
    let a = bin().arg(&model).arg(out.path().join("o.onnx")).arg("--no-verify").assert().code(1);
    let err = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    assert!(err.contains("leaves the model's folder"), "{err}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "nothing written");
    // An absolute path is refused the same way.
    edit_external(&model, |i, t| {
        if i == 0 {
            set(t, "location", &top.path().join("outside.data").display().to_string());
        }
    });
    assert!(format!("{:#}", io::load(&model).unwrap_err()).contains("leaves the model's folder"));
}

#[test]
fn overlapping_or_out_of_bounds_ranges_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = externalized(dir.path());
    let pristine = std::fs::read(&model).unwrap();
    // Two tensors on the same bytes.
    edit_external(&model, |i, t| {
        if i == 1 {
            set(t, "offset", "0");
        }
    });
    let e = format!("{:#}", io::load(&model).unwrap_err());
    assert!(e.contains("overlap"), "{e}");
    // A range past the end of the data file.
    std::fs::write(&model, &pristine).unwrap();
    let len = std::fs::metadata(dir.path().join("model.onnx.data")).unwrap().len();
    edit_external(&model, |i, t| {
        if i == 0 {
            set(t, "offset", &(len - 4).to_string());
        }
    });
    let e = format!("{:#}", io::load(&model).unwrap_err());
    assert!(e.contains("past the end"), "{e}");
    std::fs::write(&model, &pristine).unwrap();
    io::load(&model).unwrap();
}

/// An export renamed to `model_fp32.onnx` whose weights stay in `model.onnx.data`, pruned back to
/// `model.onnx`: the output's data file would be the input's. Refused, the input untouched (it
/// was overwritten: the input then read the pruned weights at the old offsets).
#[test]
fn an_output_whose_data_file_is_the_inputs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = externalized(dir.path());
    let renamed = dir.path().join("model_fp32.onnx");
    std::fs::rename(&p, &renamed).unwrap();
    let data = std::fs::read(dir.path().join("model.onnx.data")).unwrap();
    let a = bin().arg(&renamed).arg(&p).args(["--no-latency", "-q"]).assert().failure().code(1);
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(err.contains("holds the weights of the input") && err.contains("model.onnx.data"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("model.onnx.data")).unwrap(), data);
    assert!(!p.exists());
    // Another output name is fine, and in place with --force too.
    prune(&renamed, dir.path(), &[]);
    bin().arg(&renamed).arg(&renamed).args(["--no-latency", "-q", "--force"]).assert().success();
}

/// models/digits_cnn.onnx with every initializer listed as a graph input too, after the data
/// input (as PyTorch's `keep_initializers_as_inputs=True` writes it).
fn with_weight_inputs(dir: &Path) -> PathBuf {
    let mut l = io::load(&Path::new(ROOT).join("models/digits_cnn.onnx")).unwrap();
    let g = l.proto.graph.as_mut().unwrap();
    assert_eq!(g.input.len(), 1);
    let declared: Vec<_> = g
        .initializer
        .iter()
        .map(|t| {
            onnx_emp::model::graph::tensor_value_info(
                &t.name,
                t.data_type,
                &t.dims.iter().map(|&d| Some(d)).collect::<Vec<_>>(),
                "",
            )
        })
        .collect();
    g.input.extend(declared);
    let p = dir.join("model.onnx");
    io::save(l.proto, &p, &SaveOptions::default()).unwrap();
    p
}

#[test]
fn weights_listed_as_graph_inputs_are_pruned_as_weights() {
    let src = tempfile::tempdir().unwrap();
    let model = with_weight_inputs(src.path());
    for extra in [&["--structured", "channels", "--beta", "0.7"][..], &[][..]] {
        let out_dir = tempfile::tempdir().unwrap();
        let (r, out) = prune(&model, out_dir.path(), extra);
        assert_eq!(r["verification"]["status"], "ok", "{extra:?}: {}", r["verification"]["reason"]);
        let notes = r["notes"].as_array().unwrap();
        assert!(notes.iter().any(|n| n.as_str().unwrap().contains("graph inputs too")), "{extra:?}: {notes:?}");
        // The same decisions as for the model without them.
        let dense_dir = tempfile::tempdir().unwrap();
        let (d, _) = prune(&Path::new(ROOT).join("models/digits_cnn.onnx"), dense_dir.path(), extra);
        let strip = |v: &Value| {
            let mut v = comparable(v);
            v.as_object_mut().unwrap().remove("notes");
            v
        };
        assert_eq!(strip(&r), strip(&d), "{extra:?}");
        assert!(r["params"]["nonzero_after"].as_u64() < r["params"]["nonzero_before"].as_u64(), "{extra:?}");
        // Every weight is still an input, in its place, declared as it now is.
        let m = io::load(&out).unwrap().proto;
        let g = m.graph.as_ref().unwrap();
        let names: Vec<&str> = g.input.iter().map(|v| v.name.as_str()).collect();
        let want: Vec<&str> = std::iter::once("x").chain(g.initializer.iter().map(|t| t.name.as_str())).collect();
        assert_eq!(names, want, "{extra:?}");
        for (v, t) in g.input[1..].iter().zip(&g.initializer) {
            let Some(onnx_protobuf::type_proto::Value::TensorType(tt)) = v.type_.as_ref().unwrap().value.as_ref()
            else {
                panic!("{}: not a tensor", v.name)
            };
            let dims: Vec<i64> = tt.shape.dim.iter().map(|d| d.dim_value()).collect();
            assert_eq!(dims, t.dims, "{extra:?}: '{}' declared {dims:?}, holds {:?}", v.name, t.dims);
        }
    }
    // As run-time inputs, nothing reads a constant weight: per weight says why.
    let out_dir = tempfile::tempdir().unwrap();
    let o = bin()
        .arg(&model)
        .arg(out_dir.path().join("out.onnx"))
        .args(["--weight-inputs", "input", "--no-verify"])
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&o.get_output().stderr).to_string();
    assert!(err.contains("are graph inputs too") && err.contains("--weight-inputs constant"), "{err}");
}
