//! Reconstruction from calibration data, end to end through the CLI: a known answer, lower error
//! on trained models, exact masked-equivalence after the refit, and safe defaults.

mod common;

use common::corpus::{enc, f32_tensor, node, wrap};
use ndarray::Array2;
use onnx_protobuf::{GraphProto, ValueInfoProto};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_onnx-emp"))
}

/// Run the CLI in the repository root; returns the JSON report.
fn run(model: &Path, out: &Path, args: &[&str]) -> Value {
    let rep = out.with_extension("json");
    let o = bin()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg(model)
        .arg(out)
        .args(args)
        .args(["--no-latency", "--quiet", "--report"])
        .arg(&rep)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap()
}

/// The trained BERT's calibration, test and label files.
const BERT_DATA: [&str; 6] = [
    "--calibration",
    "models/digits_calib_ids.npz",
    "--inputs",
    "models/digits_test_ids.npz",
    "--labels",
    "models/digits_test_y.npy",
];

/// Channels at β = 0.8 with the Fashion-MNIST calibration, test and label files.
const FMNIST_CHANNELS_08: [&str; 10] = [
    "--structured",
    "channels",
    "--beta",
    "0.8",
    "--calibration",
    "models/fmnist_calib_x.npy",
    "--inputs",
    "models/fmnist_test_x.npy",
    "--labels",
    "models/fmnist_test_y.npy",
];

/// The fraction of MACs per inference the run removed (verification's counts).
fn macs_cut(r: &Value) -> f64 {
    let v = &r["verification"];
    1.0 - v["macs_pruned"].as_f64().unwrap() / v["macs_dense"].as_f64().unwrap()
}

/// Test accuracy lost (fraction; negative when the pruned model did better).
fn accuracy_loss(r: &Value) -> f64 {
    let v = &r["verification"];
    v["accuracy_dense"].as_f64().unwrap() - v["accuracy_pruned"].as_f64().unwrap()
}

fn root(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn vi(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    let mut tt = onnx_protobuf::type_proto::Tensor::new();
    tt.elem_type = 1;
    let mut sh = onnx_protobuf::TensorShapeProto::new();
    for &d in dims {
        let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
        if d < 0 {
            dim.set_dim_param("N".into());
        } else {
            dim.set_dim_value(d);
        }
        sh.dim.push(dim);
    }
    tt.shape = Some(sh).into();
    let mut t = onnx_protobuf::TypeProto::new();
    t.set_tensor_type(tt);
    v.type_ = Some(t).into();
    v
}

fn save(g: GraphProto, path: &Path) {
    std::fs::write(path, enc(&wrap(g))).unwrap();
}

fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut s = seed | 1;
    Array2::from_shape_fn((rows, cols), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

fn rel_l2(r: &Value) -> f64 {
    r["verification"]["outputs"][0]["rel_l2_err"].as_f64().unwrap()
}

/// The known-answer graph's interface and weights: x [N, 3], y [N, 2], W1 [3, 4] whose hidden unit
/// 3 is 0.3·(h0 + h1) (small: EMP removes it), W2 [4, 2]. The caller adds the nodes.
fn known(name: &str) -> GraphProto {
    let mut g = GraphProto::new();
    g.name = name.into();
    g.input.push(vi("x", &[-1, 3]));
    g.output.push(vi("y", &[-1, 2]));
    let w1: Vec<f32> = vec![4., 0., 0., 1.2, 0., 4., 0., 1.2, 0., 0., 4., 0.];
    g.initializer.push(f32_tensor("W1", &[3, 4], &w1));
    g.initializer.push(f32_tensor("W2", &[4, 2], &[1., 2., 3., -1., 0.5, 1., 2., 2.]));
    g
}

/// Calibration (200 rows, `seed`) and test (100 rows, `seed + 1`) inputs for [`known`] in `dir`.
fn known_data(dir: &Path, seed: u64) -> (PathBuf, PathBuf) {
    let (cal, test) = (dir.join("cal.npy"), dir.join("test.npy"));
    ndarray_npy::write_npy(&cal, &random(200, 3, seed)).unwrap();
    ndarray_npy::write_npy(&test, &random(100, 3, seed + 1)).unwrap();
    (cal, test)
}

/// EMP's channel cut exactly as it is (β = 1, no rounding, no floor), verified on `test`.
fn exact(test: &Path) -> Vec<&str> {
    let args = ["--structured", "channels", "--beta", "1", "--round-to", "1", "--include", "narrow", "--inputs"];
    args.into_iter().chain([test.to_str().unwrap()]).collect()
}

/// x → MatMul W1 (4 hidden units, the last = 0.3·(h0 + h1)) → MatMul W2 → y. EMP removes the
/// small unit 3; since it is a linear combination of kept units, refitting W2 on calibration
/// data recovers the dense function exactly (up to the ridge term).
#[test]
fn refit_recovers_a_unit_that_is_a_combination_of_kept_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = known("known");
    g.node.push(node("MatMul", "mm1", &["x", "W1"], &["h"]));
    g.node.push(node("MatMul", "mm2", &["h", "W2"], &["y"]));
    let model = dir.path().join("known.onnx");
    save(g, &model);
    let (cal, test) = known_data(dir.path(), 1);
    let common = exact(&test);
    let plain = run(&model, &dir.path().join("a.onnx"), &common);
    assert_eq!(plain["groups"][0]["kept"], 3, "{}", plain["groups"]);
    let cal_s = cal.to_str().unwrap();
    let fit = run(&model, &dir.path().join("b.onnx"), &[&common[..], &["--calibration", cal_s]].concat());
    let (e0, e1) = (rel_l2(&plain), rel_l2(&fit));
    assert!(e0 > 0.05, "without reconstruction the unit's loss shows: {e0}");
    assert!(e1 < 1e-3, "refit must recover the dense output: {e1}");
    let layer = &fit["reconstruction"]["layers"][0];
    assert_eq!(layer["method"], "ridge", "{layer}");
    assert!(layer["err_after"].as_f64().unwrap() < 1e-6 * layer["err_before"].as_f64().unwrap().max(1e-30) + 1e-6);
    // masked == pruned still holds exactly with the refit weights
    assert_eq!(fit["equivalence"][0]["pass"], true, "{}", fit["equivalence"]);
    // --no-reconstruct with the same calibration gives the plain result
    let off =
        run(&model, &dir.path().join("c.onnx"), &[&common[..], &["--calibration", cal_s, "--no-reconstruct"]].concat());
    assert!(off["reconstruction"].is_null());
    assert_eq!(rel_l2(&off), e0);
}

/// One weight applied twice, as CBAM's channel-gate MLP is (to the average- and the max-pooled
/// channels): x → W1 → h and x² → W1 → h', each → W2, summed. Hidden unit 3 of W1 is
/// 0.3·(h0 + h1) in both uses, so refitting the shared W2 on both uses' rows at once recovers
/// the dense output; before, a weight read by two nodes was not refitted at all.
#[test]
fn a_weight_used_by_two_nodes_is_refitted_on_both_uses() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = known("shared");
    g.initializer.push(f32_tensor("B2", &[2], &[0.25, -0.5]));
    g.node.push(node("Mul", "square", &["x", "x"], &["x2"]));
    g.node.push(node("MatMul", "mm1a", &["x", "W1"], &["h"]));
    g.node.push(node("MatMul", "mm1b", &["x2", "W1"], &["h2"]));
    g.node.push(node("MatMul", "mm2a", &["h", "W2"], &["ya"]));
    g.node.push(node("Add", "bias_a", &["ya", "B2"], &["ya_b"]));
    g.node.push(node("MatMul", "mm2b", &["h2", "W2"], &["yb"]));
    g.node.push(node("Add", "bias_b", &["yb", "B2"], &["yb_b"]));
    g.node.push(node("Add", "sum", &["ya_b", "yb_b"], &["y"]));
    let model = dir.path().join("shared.onnx");
    save(g, &model);
    let (cal, test) = known_data(dir.path(), 3);
    let common = exact(&test);
    let plain = run(&model, &dir.path().join("a.onnx"), &common);
    assert_eq!(plain["groups"][0]["kept"], 3, "{}", plain["groups"]);
    let fit =
        run(&model, &dir.path().join("b.onnx"), &[&common[..], &["--calibration", cal.to_str().unwrap()]].concat());
    let (e0, e1) = (rel_l2(&plain), rel_l2(&fit));
    assert!(e0 > 0.05, "without reconstruction the unit's loss shows: {e0}");
    assert!(e1 < 1e-3, "the joint refit must recover the dense output: {e1}");
    let layers = fit["reconstruction"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one site for the shared W2: {layers:?}");
    assert_eq!(layers[0]["weight"], "W2");
    assert_eq!(layers[0]["method"], "ridge", "{}", layers[0]);
    assert_eq!(layers[0]["layer"], "MatMul mm2a (weight shared with 1 more node)");
    assert_eq!(fit["equivalence"][0]["pass"], true, "{}", fit["equivalence"]);
    // Per weight, OBS updates each shared weight once, on the sum of its uses' H.
    let w = run(
        &model,
        &dir.path().join("w.onnx"),
        &[
            "--beta",
            "1",
            "--include",
            "small",
            "--calibration",
            cal.to_str().unwrap(),
            "--inputs",
            test.to_str().unwrap(),
        ],
    );
    let layers = w["reconstruction"]["layers"].as_array().unwrap();
    assert!(!layers.is_empty(), "{}", w["reconstruction"]);
    for l in layers {
        assert!(l["layer"].as_str().unwrap().ends_with("(weight shared with 1 more node)"), "{l}");
        assert_ne!(l["method"], "skipped", "{l}");
    }
}

/// On trained models, reconstruction lowers the output error on the held-out test split in all
/// modes it runs in, and structural rewrites stay exactly equivalent to their masked models.
#[test]
fn reconstruction_lowers_error_on_trained_models() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str, &[&str]); 6] = [
        ("digits_cnn", "x1x8x8", "weights", &[]),
        ("digits_lstm", "x8x8", "weights", &[]),
        ("yolo_block", "x1x8x8", "weights", &[]),
        (
            "digits_cnn",
            "x1x8x8",
            "channels",
            &["--structured", "channels", "--round-to", "1", "--include", "narrow,stem"],
        ),
        (
            "yolo_block",
            "x1x8x8",
            "channels",
            &["--structured", "channels", "--round-to", "1", "--include", "narrow,stem"],
        ),
        ("digits_transformer", "x8x8", "heads", &["--structured", "heads"]),
    ];
    for (m, x, what, extra) in cases {
        let model = root(&format!("models/{m}.onnx"));
        let test = format!("models/digits_test_{x}.npy");
        let cal = format!("models/digits_calib_{x}.npy");
        // EMP's cut as is in both runs (the guard would raise β of the run without calibration).
        let base = [&["--inputs", test.as_str(), "--labels", "models/digits_test_y.npy", "--guard", "off"][..], extra]
            .concat();
        let plain = run(&model, &dir.path().join(format!("{m}-{what}-a.onnx")), &base);
        let fit = run(
            &model,
            &dir.path().join(format!("{m}-{what}-b.onnx")),
            &[&base[..], &["--calibration", &cal]].concat(),
        );
        let (e0, e1) = (rel_l2(&plain), rel_l2(&fit));
        assert!(e1 < 0.8 * e0, "{m} {what}: rel L2 {e0} → {e1}");
        let acc = |r: &Value| r["verification"]["accuracy_pruned"].as_f64().unwrap();
        assert!(acc(&fit) >= acc(&plain), "{m} {what}: accuracy {} → {}", acc(&plain), acc(&fit));
        let layers = fit["reconstruction"]["layers"].as_array().unwrap();
        assert!(layers.iter().any(|l| l["method"] != "unchanged" && l["method"] != "skipped"), "{m} {what}");
        for l in layers.iter().filter(|l| l["method"] != "skipped") {
            assert!(l["err_after"].as_f64().unwrap() <= l["err_before"].as_f64().unwrap(), "{l}");
        }
        assert_eq!(fit["params"], plain["params"], "{m} {what}: reconstruction must not change the structure");
        for e in fit["equivalence"].as_array().unwrap() {
            assert_eq!(e["pass"], true, "{m} {what}: {e}");
        }
        assert!(fit["calibration"].as_str().unwrap().contains("256 rows"));
        if what == "weights" {
            // Solved on 4/5 of the samples, checked end to end on the other fifth.
            let e = &fit["reconstruction"]["end_to_end"];
            assert_eq!(fit["reconstruction"]["samples"], 205, "{m}");
            assert_eq!(e["samples"], 51, "{m}");
            assert_eq!(e["kept"], true, "{m}: {e}");
            assert!(e["err_with"].as_f64().unwrap() < e["err_without"].as_f64().unwrap(), "{m}: {e}");
        } else if layers.iter().any(|l| l["method"] != "unchanged" && l["method"] != "skipped") {
            // Structural: checked end to end on the every-fifth samples the refit held apart.
            let e = &fit["reconstruction"]["end_to_end"];
            assert_eq!(e["samples"], 51, "{m} {what}: {e}");
            let (with, without) = (e["err_with"].as_f64().unwrap(), e["err_without"].as_f64().unwrap());
            assert_eq!(e["kept"], with <= without, "{m} {what}: {e}");
        }
        if m == "digits_lstm" {
            // W and R of the LSTM are updated together (gate pre-activations are linear in [x; h]).
            assert!(layers.iter().any(|l| l["layer"].as_str().unwrap().starts_with("LSTM") && l["method"] == "obs"));
            // The classifier after it is fitted to the dense logits, which absorbs the LSTM's
            // remaining error (SparseGPT's update alone left this model 1.7 points down).
            let dense = fit["verification"]["accuracy_dense"].as_f64().unwrap();
            assert!(acc(&fit) >= dense - 0.01, "{m}: {dense} → {}", acc(&fit));
        }
        if what == "weights" && m == "yolo_block" {
            // Layers after the first see damaged inputs: there the fit to the dense outputs wins.
            assert!(layers.iter().any(|l| l["method"].as_str().unwrap().starts_with("obs-dense")), "{layers:?}");
            // Small layers are solved exactly per row, not by SparseGPT's sequential scheme
            // (which left this 43 %-sparse block 1.1 points down; exact: 0.3).
            assert!(layers.iter().all(|l| l["solver"] == "exact"), "{layers:?}");
            let dense = fit["verification"]["accuracy_dense"].as_f64().unwrap();
            assert!(acc(&fit) >= dense - 0.01, "{m}: {dense} → {}", acc(&fit));
        }
    }
}

/// The default command, without calibration, does not collapse a MobileNetV2-style network
/// (global EMP over raw |w| took this model to chance: its depthwise filters starve the rest).
#[test]
fn default_run_keeps_a_mobilenet_usable() {
    let dir = tempfile::tempdir().unwrap();
    let m = root("models/fmnist_mobilenet.onnx");
    let args = ["--inputs", "models/fmnist_test_x.npy", "--labels", "models/fmnist_test_y.npy"];
    let r = run(&m, &dir.path().join("d.onnx"), &args);
    let v = &r["verification"];
    let (a, b) = (v["accuracy_dense"].as_f64().unwrap(), v["accuracy_pruned"].as_f64().unwrap());
    assert!(b >= a - 0.03, "default run: accuracy {a} → {b}");
    assert_eq!(r["scope"], "normalized");
    // the depthwise filters (9 inputs per output unit) are left dense and said so
    let kept = r["weights"]["small_filters_kept"].as_array().unwrap();
    assert!(kept.len() >= 5, "{kept:?}");
    let sp = 1.0 - r["weights"]["kept_elems"].as_f64().unwrap() / r["weights"]["candidates_elems"].as_f64().unwrap();
    assert!(sp > 0.2, "sparsity {sp}");
    // The paper's global protocol on raw |w| is still there, and wrecks this model as measured;
    // the fidelity guard of a default run catches it and backs off.
    let global = [&args[..], &["--scope", "global", "--include", "small"]].concat();
    let g = run(&m, &dir.path().join("g.onnx"), &[&global[..], &["--guard", "off"]].concat());
    assert!(g["verification"]["accuracy_pruned"].as_f64().unwrap() < a - 0.2);
    let g = run(&m, &dir.path().join("gg.onnx"), &global);
    assert!(g["beta"].as_f64().unwrap() > 1.0, "{}", g["guard"]);
    assert!(g["verification"]["accuracy_pruned"].as_f64().unwrap() >= a - 0.03, "{}", g["verification"]);
}

/// A trained ShuffleNet V2 (channel split and channel shuffle, `models/make_trained.py`): EMP's
/// channel cut at β = 1 without calibration costs it ~15 points, so the default run's fidelity
/// guard raises β; with calibration EMP's cut at β = 0.8 is exact against its masked model and,
/// reconstructed, keeps the model within 2 points.
#[test]
fn trained_shufflenet_structured_default_is_guarded_and_calibrated_cut_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = root("models/fmnist_shufflenet.onnx");
    let args =
        ["--structured", "channels", "--inputs", "models/fmnist_test_x.npy", "--labels", "models/fmnist_test_y.npy"];
    let off = run(&m, &dir.path().join("off.onnx"), &[&args[..], &["--guard", "off"]].concat());
    assert!(
        accuracy_loss(&off) > 0.1,
        "EMP's unguarded channel cut is expected to cost > 10 points: {}",
        accuracy_loss(&off)
    );
    let g = run(&m, &dir.path().join("g.onnx"), &args);
    let trials = g["guard"]["trials"].as_array().unwrap_or_else(|| panic!("no guard: {}", g["notes"]));
    assert_eq!(trials[0]["beta"], 1.0);
    assert_eq!(trials[0]["pass"], false);
    assert!(g["beta"] == g["guard"]["beta"]);
    assert!(accuracy_loss(&g) <= 0.03, "guarded default lost {:.1} points", 100.0 * accuracy_loss(&g));
    assert!(g["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().starts_with("fidelity guard: EMP's cut")));
    // No β search cut passed on this net; cut one at a time, some of EMP's group cuts fit the
    // tolerance together: those are cut at β = 1, the others kept whole, and the rewrite is exact.
    assert_eq!(g["guard"]["by_group"], true, "{}", g["guard"]);
    assert_eq!(g["beta"], 1.0);
    let pass = &g["guard"]["groups"];
    let cut: Vec<usize> = pass["cut"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert!(!cut.is_empty() && pass["rel_l2"].as_f64().unwrap() <= g["guard"]["tolerance"].as_f64().unwrap());
    let groups = g["groups"].as_array().unwrap();
    for (i, x) in groups.iter().enumerate() {
        let whole = x["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().starts_with("kept whole by the fidelity guard"));
        assert!(!(whole && cut.contains(&i)), "group {i} both cut and kept whole");
        if !cut.contains(&i) {
            assert_eq!(x["kept"], x["n"], "group {i} is not in the guard's cut: {x}");
        }
    }
    assert!(cut.iter().all(|&i| groups[i]["kept"].as_u64() < groups[i]["n"].as_u64()));
    assert_eq!(g["equivalence"][0]["pass"], true, "{}", g["equivalence"]);
    let v = &g["verification"];
    assert!(v["macs_pruned"].as_f64() < v["macs_dense"].as_f64());
    let c = run(
        &m,
        &dir.path().join("c.onnx"),
        &[&args[..], &["--beta", "0.8", "--calibration", "models/fmnist_calib_x.npy"]].concat(),
    );
    assert!(c["guard"].is_null());
    assert_eq!(c["equivalence"][0]["pass"], true, "{}", c["equivalence"]);
    let cut = macs_cut(&c);
    assert!(cut > 0.15, "MACs cut {cut}");
    assert!(accuracy_loss(&c) <= 0.02, "β 0.8 + reconstruction lost {:.1} points", 100.0 * accuracy_loss(&c));
}

/// Attention blocks inside trained CNNs (models/make_trained.py: CBAM, coordinate attention,
/// PoolFormer's GroupNorm(1, C) streams): β = 0.8 with calibration cuts at least 30 % of the
/// MACs within 1.5 points of dense, exactly against the masked model, and every layer it
/// refits is refitted, CBAM's channel-gate MLP (one weight on the average- and the max-pooled
/// channels) on both its uses.
#[test]
fn trained_attention_nets_prune_a_third_of_their_macs_and_keep_their_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["fmnist_cbam", "fmnist_coordatt", "fmnist_poolformer"] {
        let m = root(&format!("models/{name}.onnx"));
        let r = run(&m, &dir.path().join(format!("{name}.onnx")), &FMNIST_CHANNELS_08);
        assert_eq!(r["equivalence"][0]["pass"], true, "{name}: {}", r["equivalence"]);
        assert!(macs_cut(&r) >= 0.30, "{name}: MACs cut {}", macs_cut(&r));
        assert!(accuracy_loss(&r) <= 0.015, "{name}: lost {:.1} points", 100.0 * accuracy_loss(&r));
        let layers = r["reconstruction"]["layers"].as_array().unwrap();
        assert!(layers.iter().all(|l| l["method"] != "skipped"), "{name}: {layers:?}");
        let shared =
            layers.iter().filter(|l| l["layer"].as_str().unwrap().ends_with("(weight shared with 1 more node)"));
        assert_eq!(shared.count(), if name == "fmnist_cbam" { 2 } else { 0 }, "{name}: {layers:?}");
    }
}

/// A run that cuts nothing (EMP's β = 1 cut of the trained ResNet rounds back to every group's
/// width under `--round-to auto`) writes the input's own bytes: re-serialising would reorder the
/// top-level fields torch wrote (opset_import last), equal as protobuf but not as bytes.
#[test]
fn a_structured_run_that_cuts_nothing_writes_the_input_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let m = root("models/fmnist_resnet.onnx");
    let out = dir.path().join("r.onnx");
    let r = run(&m, &out, &["--structured", "channels"]);
    let groups = r["groups"].as_array().unwrap();
    assert!(groups.iter().all(|x| x["kept"] == x["n"]), "{}", r["groups"]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&m).unwrap());
}

/// A quantized (QDQ) trained model prunes and is reconstructed like its float one: the refit
/// reads each int8 weight dequantized and writes it back requantized (new per-channel scales,
/// the int32 bias following them), pruned == masked exactly, and the stem floor sees the stem
/// through the input's Quantize/DequantizeLinear (`models/make_qdq.py`: the trained MobileNetV2,
/// quantized by onnxruntime).
#[test]
fn a_quantized_trained_model_prunes_and_reconstructs() {
    let dir = tempfile::tempdir().unwrap();
    let m = root("models/fmnist_mobilenet_qdq.onnx");
    let r = run(&m, &dir.path().join("q.onnx"), &FMNIST_CHANNELS_08);
    assert_eq!(r["equivalence"][0]["pass"], true, "{}", r["equivalence"]);
    let layers = r["reconstruction"]["layers"].as_array().unwrap();
    let updated = layers.iter().filter(|l| l["method"] != "unchanged" && l["method"] != "skipped").count();
    assert!(updated >= 10, "{updated} layers refitted: {layers:#?}");
    assert!(layers.iter().all(|l| l["method"] != "skipped"), "{layers:#?}");
    // Every refitted layer says its int8 weight was written back on new scales.
    for l in layers.iter().filter(|l| l["method"] != "unchanged") {
        assert_eq!(l["note"], "int8 weight requantized on new scales", "{l}");
    }
    let stem = &r["groups"][0];
    assert_eq!(stem["kept"], stem["n"], "the stem floor must hold through Q/DQ: {stem}");
    assert!(stem["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("(stem)")), "{stem}");
    let (cut, loss) = (macs_cut(&r), accuracy_loss(&r));
    assert!(cut > 0.15, "MACs cut {cut}");
    assert!(loss <= 0.015, "the reconstructed QDQ cut lost {:.1} points", 100.0 * loss);
}

fn ort_available() -> bool {
    let ok = Command::new("python3").args(["-c", "import numpy, onnxruntime"]).status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: python3 with numpy and onnxruntime is not available");
    }
    ok
}

/// A trained BERT as onnxruntime's transformer optimizer ships it (`models/make_trained_bert.py`:
/// digits read as 65 tokens; EmbedLayerNormalization, Attention, SkipLayerNormalization,
/// BiasGelu, all run by onnxruntime since tract cannot): the residual stream cut (64 → 48) and
/// its consumers refitted from calibration token ids, the packed Q/K/V projections of both
/// Attention ops among them (their projection is internal to the op: targets computed from the
/// dense inputs and weights). Before, those two were skipped and the cut lost 2.8 points (92.2 %).
#[test]
fn a_trained_onnxruntime_bert_prunes_and_reconstructs() {
    if !ort_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        &root("models/digits_bert_ms.onnx"),
        &dir.path().join("b.onnx"),
        &[&["--structured", "channels", "--beta", "0.8"][..], &BERT_DATA].concat(),
    );
    let e = &r["equivalence"][0];
    assert_eq!((&e["pass"], &e["engine"]), (&true.into(), &"onnxruntime".into()), "{e}");
    let layers = r["reconstruction"]["layers"].as_array().unwrap();
    assert!(layers.iter().all(|l| l["method"] != "skipped"), "{layers:#?}");
    let qkv: Vec<&Value> =
        layers.iter().filter(|l| l["layer"].as_str().unwrap_or("").starts_with("Attention ")).collect();
    assert_eq!(qkv.len(), 2, "{layers:#?}");
    for l in qkv {
        assert!(l["err_after"].as_f64().unwrap() < 0.25 * l["err_before"].as_f64().unwrap(), "{l}");
    }
    let (cut, loss) = (macs_cut(&r), accuracy_loss(&r));
    assert!(cut > 0.3, "MACs cut {cut}");
    assert!(loss <= 0.005, "the reconstructed BERT lost {:.1} points", 100.0 * loss);
    let e = &r["reconstruction"]["end_to_end"];
    assert!(e["kept"] == true && e["err_with"].as_f64().unwrap() < e["err_without"].as_f64().unwrap(), "{e}");
}

/// A default run with calibration is held to the fidelity guard's tolerance: the trained BERT's
/// heads and residual stream at β = 1, reconstructed, are 0.23 from dense on the held-out
/// calibration samples (its heads cut alone: 0.19 there and 2.2 points on the test split), so
/// the run prunes again with the guard judging the cut on the calibration rows (it keeps the
/// heads whole and cuts the stream) and reconstructs that: no point lost, MACs still cut. Before,
/// the reconstructed cut was written with a warning.
#[test]
fn a_calibrated_default_run_far_from_dense_is_held_to_the_guard() {
    if !ort_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        &root("models/digits_bert_ms.onnx"),
        &dir.path().join("h.onnx"),
        &[&["--structured", "heads,channels"][..], &BERT_DATA].concat(),
    );
    let notes: Vec<&str> = r["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    let held =
        notes.iter().find(|n| n.starts_with("held to the fidelity guard")).unwrap_or_else(|| panic!("{notes:#?}"));
    assert!(held.contains("--beta 1 writes EMP's reconstructed cut"), "{held}");
    assert!(!notes.iter().any(|n| n.starts_with("WARNING")), "{notes:#?}");
    let g = &r["guard"];
    assert_eq!(g["trials"][0]["pass"], false, "{g}");
    assert!(r["groups"].as_array().unwrap().iter().filter(|x| x["kind"] == "heads").all(|x| x["kept"] == x["n"]));
    assert!(r["equivalence"].as_array().unwrap().iter().all(|e| e["pass"] == true), "{}", r["equivalence"]);
    let (cut, loss) = (macs_cut(&r), accuracy_loss(&r));
    assert!(cut > 0.03, "MACs cut {cut}");
    assert!(loss <= 0.0, "the held run lost {:.1} points", 100.0 * loss);
    // Two stages: the written model is measured against the dense input too.
    let w = &r["reconstruction"]["whole_run"];
    assert!(w["err"].as_f64().unwrap().sqrt() <= 0.1 && w["samples"].as_u64() > Some(1), "{w}");
}

/// A held per-weight run looks between EMP's β and the guard's for a larger cut that
/// reconstruction brings within the tolerance: the trained LSTM at β = 1, reconstructed, is 0.103
/// from dense on the held-out calibration rows (tolerance 0.1); the guard's β (1.35, plain cut
/// 0.091) keeps 19 % sparsity, reconstructed cuts between it and 1 keep more, within 0.1, at no
/// more than a point.
#[test]
fn a_held_run_keeps_the_largest_reconstructed_cut_within_the_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--calibration",
        "models/digits_calib_x8x8.npy",
        "--inputs",
        "models/digits_test_x8x8.npy",
        "--labels",
        "models/digits_test_y.npy",
    ];
    let r = run(&root("models/digits_lstm.onnx"), &dir.path().join("l.onnx"), &args);
    let notes: Vec<&str> = r["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    let held =
        notes.iter().find(|n| n.starts_with("held to the fidelity guard")).unwrap_or_else(|| panic!("{notes:#?}"));
    assert!(held.contains("reconstructed cuts between"), "{held}");
    let (beta, guard_beta) = (r["beta"].as_f64().unwrap(), r["guard"]["beta"].as_f64().unwrap());
    assert!(1.0 < beta && beta < guard_beta, "β {beta}, the guard's {guard_beta}");
    let w = &r["weights"];
    let sparsity = 1.0 - w["kept_elems"].as_f64().unwrap() / w["candidates_elems"].as_f64().unwrap();
    assert!(sparsity > 0.2, "sparsity {sparsity}");
    let loss = accuracy_loss(&r);
    assert!(loss <= 0.01, "the held run lost {:.1} points", 100.0 * loss);
}

/// A half-precision export (onnxconverter-common's float16, inputs and outputs kept float32;
/// `models/make_fp16.py`) reconstructs like its float32 original: the calibration runs use a
/// float32 copy (tract's x86 half matmuls are a scalar fallback, and a float16 Fashion-MNIST
/// ResNet had not finished reconstructing after 14 minutes), the weights written stay float16,
/// and the accuracy reached is the original's within a sample or two.
#[test]
fn a_half_precision_model_reconstructs_in_float32_and_stays_half() {
    use protobuf::Message;
    let dir = tempfile::tempdir().unwrap();
    let data = [
        "--calibration",
        "models/digits_calib_x1x8x8.npy",
        "--inputs",
        "models/digits_test_x1x8x8.npy",
        "--labels",
        "models/digits_test_y.npy",
    ];
    for (mode, extra) in
        [("weights", &[][..]), ("channels", &["--structured", "channels", "--beta", "0.8", "--round-to", "1"][..])]
    {
        let args: Vec<&str> = data.iter().chain(extra).copied().collect();
        let half_out = dir.path().join(format!("{mode}_half.onnx"));
        let half = run(&root("models/digits_cnn_fp16.onnx"), &half_out, &args);
        let full = run(&root("models/digits_cnn.onnx"), &dir.path().join(format!("{mode}.onnx")), &args);
        let layers = half["reconstruction"]["layers"].as_array().unwrap();
        assert!(layers.iter().any(|l| l["method"] != "unchanged" && l["method"] != "skipped"), "{mode}: {layers:#?}");
        assert!(layers.iter().all(|l| l["method"] != "skipped"), "{mode}: {layers:#?}");
        assert!(half["notes"].to_string().contains("float32 copy"), "{mode}: {}", half["notes"]);
        assert!(!full["notes"].to_string().contains("float32 copy"), "{mode}: {}", full["notes"]);
        let (h, f) = (accuracy_loss(&half), accuracy_loss(&full));
        assert!((h - f).abs() <= 0.006, "{mode}: half loses {h}, float32 {f}");
        let m = onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(&half_out).unwrap()).unwrap();
        let g = m.graph.as_ref().unwrap();
        assert!(g.initializer.iter().filter(|t| t.dims.len() > 1).all(|t| t.data_type == 10), "{mode}: not float16");
    }
}
