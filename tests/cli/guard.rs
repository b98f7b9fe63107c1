//! The fidelity guard on default runs: trained models stay within three points, both stages of a
//! structural mode, only the default moves, worse outputs are flagged, what it cannot judge.
use super::*;

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

/// Calibration data prepared unlike the user's inputs (pixels scaled to [0, 1] for a model that
/// standardises them) passes the scale check with a WARNING, and a default run fitted on it took
/// fmnist_mobilenet from 89.5 to 51.2 %, 0.035 from dense on held-out calibration samples and 0.82
/// on the test images. The user's inputs refute it: the default run is done again without it, its
/// guard judging on them (also when OUT is IN: the first run is never published); a run with
/// `--beta` keeps its cut and names the cause of its fall instead of advising a larger β.
#[test]
fn a_default_run_drops_calibration_the_inputs_refute() {
    let dir = tempfile::tempdir().unwrap();
    let scaled = dir.path().join("scaled.npy");
    let a: ndarray::Array4<f32> = ndarray_npy::read_npy(format!("{ROOT}/models/fmnist_calib_x.npy")).unwrap();
    ndarray_npy::write_npy(&scaled, &a.mapv(|v| v * 0.353 + 0.286)).unwrap();
    let go = |model: &Path, out: &Path, extra: &[&str]| -> Value {
        let rep = dir.path().join("report.json");
        bin()
            .arg(model)
            .arg(out)
            .arg("--calibration")
            .arg(&scaled)
            .args(["--inputs", "models/fmnist_test_x.npy", "--labels", "models/fmnist_test_y.npy", "--no-latency"])
            .arg("--report")
            .arg(&rep)
            .args(extra)
            .assert()
            .success();
        serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap()
    };
    let notes = |r: &Value| -> Vec<String> {
        r["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect()
    };
    let out = dir.path().join("out.onnx");
    let r = go(Path::new("models/fmnist_mobilenet.onnx"), &out, &[]);
    let n = notes(&r);
    assert!(
        n[0].contains("the calibration data does not behave like your inputs")
            && n[0].contains("The model written is the default run without it"),
        "{n:?}"
    );
    assert!(n[1].starts_with("WARNING: --calibration input 'x' looks prepared unlike the --inputs samples"), "{n:?}");
    assert!(r["calibration"].is_null() && r["reconstruction"].is_null(), "{r}");
    assert!(r["guard"]["inputs"].as_str().unwrap().contains("of your 1000 --inputs samples"), "{}", r["guard"]);
    let (dense, pruned) = accuracy(&r);
    assert!(dense - pruned <= 0.01, "{dense} → {pruned}");
    assert!(r["params"]["nonzero_after"].as_u64() < r["params"]["nonzero_before"].as_u64(), "nothing pruned");
    // OUT == IN: the second run reads the input as it was, so it writes what the run above wrote.
    let same = dir.path().join("same.onnx");
    std::fs::copy(format!("{ROOT}/models/fmnist_mobilenet.onnx"), &same).unwrap();
    go(&same, &same, &["--force"]);
    assert!(std::fs::read(&same).unwrap() == std::fs::read(&out).unwrap(), "the first run was published");
    // An explicit β is written as asked, with the calibration it was fitted on, and the warning.
    let r = go(Path::new("models/fmnist_resnet.onnx"), &out, &["--structured", "channels", "--beta", "0.8"]);
    let n = notes(&r);
    assert!(
        n[0].contains("the calibration data does not behave like your inputs")
            && n[0].contains("or run without --calibration"),
        "{n:?}"
    );
    assert!(!r["calibration"].is_null() && !r["reconstruction"].is_null(), "{r}");
    assert!(n.iter().all(|n| !n.contains("keep more with --beta")), "{n:?}");
}
