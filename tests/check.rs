//! Verification with tract on the project's models (and the shared real models when present).

mod common;

use onnx_emp::check::{self, InputSpec, VerifyOptions};
use onnx_emp::model::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models");
    let p = if p.is_dir() { p } else { PathBuf::from("/work/shared/models") };
    if p.is_dir() {
        Some(p)
    } else {
        println!("skipping: shared models folder ../shared/models is absent");
        None
    }
}

fn spec_with_file(name: &str, file: &str) -> InputSpec {
    let mut s = InputSpec::default();
    s.files.insert(name.into(), models().join(file));
    s
}

#[test]
fn mlp_against_itself_with_labels() {
    let m = models().join("digits_mlp.onnx");
    let opts = VerifyOptions {
        inputs: spec_with_file("", "digits_test_x64.npy"),
        labels: Some(models().join("digits_test_y.npy")),
        labels_output: None,
        latency: true,
        latency_opts: Default::default(),
        samples: None,
    };
    let t = Instant::now();
    let v = check::verify(&m, &m, &opts);
    println!("verify mlp (with latency): {:.3} s", t.elapsed().as_secs_f64());
    assert_eq!(v.status, "ok", "{:?}", v.reason);
    assert_eq!(v.input_shapes["x"], vec![360, 64]);
    assert_eq!(v.outputs.len(), 1);
    let o = &v.outputs[0];
    assert_eq!(o.name, "logits");
    assert_eq!(o.shape, vec![360, 10]);
    assert_eq!((o.max_abs_err, o.rel_l2_err, o.cosine, o.top1_agreement), (0.0, 0.0, 1.0, Some(1.0)));
    let acc = v.accuracy_dense.expect("accuracy");
    assert!((acc - 350.0 / 360.0).abs() < 1e-12, "{acc}");
    assert_eq!(v.accuracy_pruned, Some(acc));
    // One inference (the first of the 360 rows, as latency times it): 64·128 + 128·64 + 64·10.
    assert_eq!(v.macs_dense, Some(64 * 128 + 128 * 64 + 64 * 10));
    assert_eq!(v.macs_pruned, v.macs_dense);
    let l = v.latency_dense.as_ref().expect("latency");
    // A fast model fills its time budget with many batch-1 runs.
    assert!(l.runs >= 5 && l.samples == 1 && l.min_ms > 0.0 && l.median_ms >= l.min_ms, "{l:?}");
    assert!(v.notes.iter().any(|n| n.contains("latency on one sample")), "{:?}", v.notes);
    let j = serde_json::to_value(&v).unwrap();
    assert_eq!(j["outputs"][0]["cosine"], serde_json::json!(1.0));
    assert_eq!(j["status"], "ok");

    // Without latency it is quick.
    let t = Instant::now();
    let v2 = check::verify(&m, &m, &VerifyOptions { latency: false, ..opts });
    println!("verify mlp (no latency): {:.3} s", t.elapsed().as_secs_f64());
    assert_eq!(v2.outputs, v.outputs);
}

#[test]
fn mlp_deterministic_seeded_and_chunked() {
    let m = models().join("digits_mlp.onnx");
    let mut spec = InputSpec::default();
    spec.dims.insert("batch".into(), 3);
    let inputs = check::prepare_inputs(&m, &spec).unwrap();
    assert_eq!(inputs.shapes()["x"], vec![3, 64]);
    let r = check::load_runnable(&m, &inputs.facts()).unwrap();
    let a = check::run(&r, &inputs).unwrap();
    let b = check::run(&r, &check::prepare_inputs(&m, &spec).unwrap()).unwrap();
    assert_eq!(a, b);

    // 616 rows (test + calibration sets) run in 2 chunks of 308; rows must match a plain run.
    let x1: ndarray::ArrayD<f32> = ndarray_npy::read_npy(models().join("digits_test_x64.npy")).unwrap();
    let x2: ndarray::ArrayD<f32> = ndarray_npy::read_npy(models().join("digits_calib_x64.npy")).unwrap();
    let big = ndarray::concatenate(ndarray::Axis(0), &[x1.view(), x2.view()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.npy");
    ndarray_npy::write_npy(&p, &big).unwrap();
    let mut spec = InputSpec::default();
    spec.files.insert("x".into(), p);
    let inputs = check::prepare_inputs(&m, &spec).unwrap();
    let r = check::load_runnable(&m, &inputs.facts()).unwrap();
    let c = r.chunking.as_ref().expect("chunked");
    assert_eq!((c.rows, c.chunk), (616, 308));
    let out = check::run(&r, &inputs).unwrap();
    assert_eq!(out[0].shape(), &[616, 10]);
    let small = check::prepare_inputs(&m, &spec_with_file("x", "digits_calib_x64.npy")).unwrap();
    let rs = check::load_runnable(&m, &small.facts()).unwrap();
    let os = check::run(&rs, &small).unwrap();
    let tail = out[0].slice(ndarray::s![360.., ..]);
    let err = tail.iter().zip(os[0].iter()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err < 1e-5, "{err}");
}

#[test]
fn transformer_seeded_batch2() {
    let m = models().join("digits_transformer.onnx");
    let mut opts = VerifyOptions::default();
    opts.inputs.dims.insert("batch".into(), 2);
    opts.inputs.seed = 7;
    let v = check::verify(&m, &m, &opts);
    assert_eq!(v.status, "ok", "{:?}", v.reason);
    assert_eq!(v.input_shapes["x"], vec![2, 8, 8]);
    assert_eq!(v.outputs[0].shape, vec![2, 10]);
    assert_eq!(v.outputs[0].max_abs_err, 0.0);
    // One inference, the first row of the batch (8 tokens, d=32, 4 heads of 8, FFN 64):
    // embedding 8·32·8; per layer q/k/v/out 4·8·32·32, scores 4·8·8·8, context 4·8·8·8, FFN
    // 2·8·64·32; head 10·32.
    let layer = 4 * 8 * 32 * 32 + 2 * (4 * 8 * 8 * 8) + 2 * (8 * 64 * 32);
    assert_eq!(v.macs_dense, Some(8 * 32 * 8 + 2 * layer + 10 * 32), "{:?}", v.notes);
    let eq = check::equivalence(&m, &m, &opts).unwrap();
    assert_eq!(eq, v.outputs);
}

/// A recurrent layer counts its gate products at every step (it counted nothing: digits_lstm was
/// "320 MACs", its classifier alone): T·B · 4H · (I + H) for the LSTM (8 steps of 8 features,
/// 32 hidden units), 10·32 for the classifier.
#[test]
fn lstm_macs_by_hand() {
    let m = models().join("digits_lstm.onnx");
    let facts = vec![check::InputFact { name: "x".into(), elem_type: 1, shape: vec![1, 8, 8] }];
    let macs = check::macs(&m, &facts).unwrap();
    assert_eq!(macs.total, 8 * (4 * 32) * (8 + 32) + 10 * 32, "{:?}", macs.per_node);
    let f3 = vec![check::InputFact { shape: vec![3, 8, 8], ..facts[0].clone() }];
    assert_eq!(check::macs(&m, &f3).unwrap().total, 3 * macs.total);
}

/// A model whose Convs sit in a function of the model (torch's `export_modules_as_functions`):
/// tract ignores `ModelProto.functions`, so the calls were unknown ops and only the Gemm was
/// counted (160 MACs); the bodies are now counted inlined.
#[test]
fn macs_inside_the_models_functions_are_counted() {
    use onnx_protobuf::attribute_proto::AttributeType;
    use onnx_protobuf::type_proto::{Tensor, Value};
    use onnx_protobuf::{
        AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto,
        TypeProto, ValueInfoProto,
    };
    use protobuf::Message;
    let vi = |name: &str, dims: &[i64]| {
        let mut sh = TensorShapeProto::new();
        for &d in dims {
            let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
            dim.set_dim_value(d);
            sh.dim.push(dim);
        }
        let mut tt = Tensor::new();
        tt.elem_type = 1;
        tt.shape = Some(sh).into();
        let mut tp = TypeProto::new();
        tp.value = Some(Value::TensorType(tt));
        let mut v = ValueInfoProto::new();
        v.name = name.into();
        v.type_ = Some(tp).into();
        v
    };
    let node = |op: &str, domain: &str, ins: &[&str], outs: &[&str]| {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.domain = domain.into();
        n.input = ins.iter().map(|s| s.to_string()).collect();
        n.output = outs.iter().map(|s| s.to_string()).collect();
        n
    };
    let opset = |domain: &str, version: i64| {
        let mut o = OperatorSetIdProto::new();
        o.domain = domain.into();
        o.version = version;
        o
    };
    let mut conv = node("Conv", "", &["x", "w"], &["t"]);
    let mut pads = AttributeProto::new();
    pads.name = "pads".into();
    pads.type_ = AttributeType::INTS.into();
    pads.ints = vec![1, 1, 1, 1];
    conv.attribute.push(pads);
    let mut f = FunctionProto::new();
    f.name = "Block".into();
    f.domain = "local".into();
    f.input = vec!["x".into(), "w".into()];
    f.output = vec!["y".into()];
    f.node = vec![conv, node("Relu", "", &["t"], &["y"])];
    f.opset_import = vec![opset("", 17)];
    let mut g = GraphProto::new();
    g.name = "f".into();
    g.node = vec![
        node("Block", "local", &["x", "w1"], &["a"]),
        node("Block", "local", &["a", "w2"], &["b"]),
        node("GlobalAveragePool", "", &["b"], &["p"]),
        node("Flatten", "", &["p"], &["q"]),
        node("Gemm", "", &["q", "wf"], &["y"]),
    ];
    let t = |name: &str, dims: &[i64]| {
        let n = dims.iter().product::<i64>() as usize;
        let v: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
        onnx_emp::model::tensor::new_f32(name, dims, &v)
    };
    g.initializer = vec![t("w1", &[16, 3, 3, 3]), t("w2", &[16, 16, 3, 3]), t("wf", &[16, 10])];
    g.input = vec![vi("x", &[1, 3, 16, 16])];
    g.output = vec![vi("y", &[1, 10])];
    let mut m = ModelProto::new();
    m.ir_version = 8;
    m.opset_import = vec![opset("", 17), opset("local", 1)];
    m.functions = vec![f];
    m.graph = Some(g).into();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("func.onnx");
    std::fs::write(&p, m.write_to_bytes().unwrap()).unwrap();
    let facts = vec![check::InputFact { name: "x".into(), elem_type: 1, shape: vec![1, 3, 16, 16] }];
    let macs = check::macs(&p, &facts).unwrap();
    let conv = |cin: u64| 16 * 16 * 16 * cin * 9;
    assert_eq!(macs.total, conv(3) + conv(16) + 16 * 10, "{:?}", macs.per_node);
}

#[test]
fn cnn_macs_by_hand() {
    let m = models().join("digits_cnn.onnx");
    let facts = vec![check::InputFact { name: "x".into(), elem_type: 1, shape: vec![1, 1, 8, 8] }];
    let macs = check::macs(&m, &facts).unwrap();
    let proto = io::load(&m).unwrap().proto;
    let g = proto.graph.as_ref().unwrap();
    let convs: Vec<_> = g.node.iter().filter(|n| n.op_type == "Conv").collect();
    assert_eq!(convs.len(), 7);
    let stem = convs[0];
    let key = if stem.name.is_empty() { stem.output[0].clone() } else { stem.name.clone() };
    // stem: Conv(1→16, 3×3, pad 1) on 8×8: N·C_out·H·W · C_in·kH·kW
    assert_eq!(macs.per_node[&key], 16 * 8 * 8 * 9);
    // depthwise Conv(16, 3×3, group 16): 16·8·8 · 1·9
    let dw = convs.iter().find(|n| n.attribute.iter().any(|a| a.name == "group" && a.i == 16)).unwrap();
    let key = if dw.name.is_empty() { dw.output[0].clone() } else { dw.name.clone() };
    assert_eq!(macs.per_node[&key], 16 * 8 * 8 * 9);
    assert_eq!(macs.per_node.len(), 8); // 7 Conv + 1 Gemm
    assert_eq!(macs.total, macs.per_node.values().sum::<u64>());
    // batch 4 is 4× batch 1
    let f4 = vec![check::InputFact { shape: vec![4, 1, 8, 8], ..facts[0].clone() }];
    assert_eq!(check::macs(&m, &f4).unwrap().total, 4 * macs.total);
}

#[test]
fn unsupported_op_is_skipped_not_a_panic() {
    // digits_mlp with its first Gemm turned into a com.microsoft Attention node: tract parses it
    // as ONNX Attention (it ignores the domain) and panics or errors.
    let m = models().join("digits_mlp.onnx");
    let mut proto = io::load(&m).unwrap().proto;
    let g = proto.graph.as_mut().unwrap();
    let n = g.node.iter_mut().find(|n| n.op_type == "Gemm").unwrap();
    n.op_type = "Attention".into();
    n.domain = "com.microsoft".into();
    n.attribute.clear();
    let mut a = onnx_protobuf::AttributeProto::new();
    a.name = "num_heads".into();
    a.type_ = protobuf::EnumOrUnknown::from_i32(2);
    a.i = 2;
    n.attribute.push(a);
    let mut op = onnx_protobuf::OperatorSetIdProto::new();
    op.domain = "com.microsoft".into();
    op.version = 1;
    proto.opset_import.push(op);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("attention.onnx");
    io::save(proto, &bad, &Default::default()).unwrap();

    let opts = VerifyOptions { inputs: spec_with_file("", "digits_test_x64.npy"), ..Default::default() };
    let v = check::verify(&m, &bad, &opts);
    println!("reason: {:?}", v.reason);
    assert_eq!(v.status, "skipped");
    let r = v.reason.unwrap();
    assert!(r.contains("pruned model") && r.contains("attention.onnx"), "{r}");
    assert!(!r.contains('\n'), "{r}");
    assert!(v.outputs.is_empty());
    assert!(check::equivalence(&m, &bad, &opts).is_err());
}

#[test]
fn bad_inputs_are_skipped_with_the_input_named() {
    let m = models().join("digits_mlp.onnx");
    // [360, 8, 8] for an input [batch, 64]: rank differs.
    let opts = VerifyOptions { inputs: spec_with_file("", "digits_test_x8x8.npy"), ..Default::default() };
    let v = check::verify(&m, &m, &opts);
    assert_eq!(v.status, "skipped");
    let r = v.reason.unwrap();
    assert!(r.contains("input 'x'") && r.contains("rank"), "{r}");
    // Labels of the wrong length: fidelity still reported, accuracy noted as unavailable.
    let opts = VerifyOptions {
        inputs: spec_with_file("", "digits_test_x64.npy"),
        labels: Some(models().join("digits_calib_y.npy")),
        latency: false,
        ..Default::default()
    };
    let v = check::verify(&m, &m, &opts);
    assert_eq!(v.status, "ok");
    assert_eq!(v.accuracy_dense, None);
    assert!(v.notes.iter().any(|n| n.contains("accuracy unavailable") && n.contains("360")), "{:?}", v.notes);
}

fn tiny_bert(file: &str) {
    let Some(dir) = shared() else { return };
    let m = dir.join(file);
    if !m.is_file() {
        println!("skipping: {} absent", m.display());
        return;
    }
    let mut opts = VerifyOptions::default();
    opts.inputs.dims.insert("batch".into(), 2);
    let t = Instant::now();
    let v = check::verify(&m, &m, &opts);
    println!("verify {file}: {:.3} s, notes {:?}", t.elapsed().as_secs_f64(), v.notes);
    assert_eq!(v.status, "ok", "{:?}", v.reason);
    assert_eq!(v.input_shapes["input_ids"], vec![2, 8]);
    assert_eq!(v.outputs[0].shape, vec![2, 2]);
    assert_eq!(v.outputs[0].max_abs_err, 0.0);
    assert!(v.macs_dense.unwrap_or(0) > 0, "{:?}", v.notes);
}

#[test]
fn tiny_bert_dynamo() {
    tiny_bert("tiny_bert_random_dynamo.onnx");
}

#[test]
fn tiny_bert_torchscript() {
    tiny_bert("tiny_bert_random_ts.onnx");
}

fn value_info(name: &str, elem: i32, dims: &[i64]) -> onnx_protobuf::ValueInfoProto {
    use onnx_protobuf::{tensor_shape_proto, type_proto, TensorShapeProto, TypeProto, ValueInfoProto};
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.value = Some(tensor_shape_proto::dimension::Value::DimValue(*d));
        shape.dim.push(dim);
    }
    let mut t = type_proto::Tensor::new();
    t.elem_type = elem;
    t.shape = protobuf::MessageField::some(shape);
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(t));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = protobuf::MessageField::some(ty);
    v
}

/// Opset-23 `Attention` with a boolean mask: tract alone would add the mask as 0/1; check rewrites
/// it to the additive -inf form, so the result matches attention computed by hand.
#[test]
fn onnx_attention_bool_mask_is_exact() {
    use ndarray::{ArrayD, IxDyn};
    let (h, sq, skv, d) = (2usize, 2usize, 3usize, 4usize);
    let mut g = onnx_protobuf::GraphProto::new();
    g.name = "attn".into();
    let mut n = onnx_protobuf::NodeProto::new();
    n.op_type = "Attention".into();
    n.name = "attn0".into();
    n.input = vec!["q".into(), "k".into(), "v".into(), "mask".into()];
    n.output = vec!["y".into()];
    g.node.push(n);
    g.input.push(value_info("q", 1, &[1, h as i64, sq as i64, d as i64]));
    g.input.push(value_info("k", 1, &[1, h as i64, skv as i64, d as i64]));
    g.input.push(value_info("v", 1, &[1, h as i64, skv as i64, d as i64]));
    g.input.push(value_info("mask", 9, &[sq as i64, skv as i64]));
    g.output.push(value_info("y", 1, &[1, h as i64, sq as i64, d as i64]));
    let mut m = onnx_protobuf::ModelProto::new();
    m.ir_version = 10;
    let mut op = onnx_protobuf::OperatorSetIdProto::new();
    op.version = 23;
    m.opset_import.push(op);
    m.graph = protobuf::MessageField::some(g);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("attn.onnx");
    io::save(m, &path, &Default::default()).unwrap();

    let mask_v = [true, false, true, true, true, false];
    let mask = ArrayD::from_shape_vec(IxDyn(&[sq, skv]), mask_v.to_vec()).unwrap();
    let mask_path = dir.path().join("mask.npy");
    ndarray_npy::write_npy(&mask_path, &mask).unwrap();
    let mut spec = InputSpec::default();
    spec.files.insert("mask".into(), mask_path);
    let inputs = check::prepare_inputs(&path, &spec).unwrap();
    let r = check::load_runnable(&path, &inputs.facts()).unwrap();
    assert!(r.notes.iter().any(|n| n.contains("boolean attn_mask")), "{:?}", r.notes);
    let y = check::run(&r, &inputs).unwrap().remove(0);

    let get = |name: &str| match &*inputs.get(name).unwrap().data {
        check::InputData::F32(a) => a.clone(),
        _ => panic!("{name} not f32"),
    };
    let (q, k, v) = (get("q"), get("k"), get("v"));
    let scale = 1.0 / (d as f32).sqrt();
    let mut worst = 0f32;
    for hh in 0..h {
        for i in 0..sq {
            let mut s: Vec<f32> = (0..skv)
                .map(|j| {
                    if !mask_v[i * skv + j] {
                        return f32::NEG_INFINITY;
                    }
                    (0..d).map(|c| q[[0, hh, i, c]] * k[[0, hh, j, c]]).sum::<f32>() * scale
                })
                .collect();
            let mx = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            s.iter_mut().for_each(|x| *x = (*x - mx).exp());
            let z: f32 = s.iter().sum();
            for c in 0..d {
                let want: f32 = (0..skv).map(|j| s[j] / z * v[[0, hh, j, c]]).sum();
                worst = worst.max((want - y[[0, hh, i, c]]).abs());
            }
        }
    }
    assert!(worst < 1e-5, "max error {worst}");
}

#[test]
fn npz_inputs_and_a_different_model() {
    // Inputs by name from an .npz; the "pruned" model is the MLP with one weight changed, so
    // outputs differ a little and the metrics say so.
    let m = models().join("digits_mlp.onnx");
    let x: ndarray::ArrayD<f64> =
        ndarray_npy::read_npy::<_, ndarray::ArrayD<f32>>(models().join("digits_test_x64.npy"))
            .unwrap()
            .mapv(|v| v as f64);
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("in.npz");
    let mut w = ndarray_npy::NpzWriter::new(std::fs::File::create(&npz).unwrap());
    w.add_array("x", &x).unwrap();
    w.finish().unwrap();

    let mut proto = io::load(&m).unwrap().proto;
    let g = proto.graph.as_mut().unwrap();
    let w0 = g.initializer.iter_mut().find(|t| t.dims.len() == 2).unwrap();
    let mut vals = onnx_emp::model::tensor::read_f32(w0).unwrap();
    vals.iter_mut().take(64).for_each(|v| *v = 0.0);
    onnx_emp::model::tensor::write_f64(w0, &vals.iter().map(|v| *v as f64).collect::<Vec<_>>()).unwrap();
    let other = dir.path().join("other.onnx");
    io::save(proto, &other, &Default::default()).unwrap();

    let opts = VerifyOptions {
        inputs: InputSpec { npz: Some(npz), ..Default::default() },
        labels: Some(models().join("digits_test_y.npy")),
        latency: false,
        ..Default::default()
    };
    let v = check::verify(&m, &other, &opts);
    assert_eq!(v.status, "ok", "{:?}", v.reason);
    assert_eq!(v.input_shapes["x"], vec![360, 64]);
    let o = &v.outputs[0];
    assert!(o.max_abs_err > 0.0 && o.rel_l2_err > 0.0 && o.cosine < 1.0 && o.cosine > 0.5, "{o:?}");
    let t1 = o.top1_agreement.unwrap();
    assert!(t1 > 0.5 && t1 <= 1.0);
    assert!((v.accuracy_dense.unwrap() - 350.0 / 360.0).abs() < 1e-12);
    assert!(v.accuracy_pruned.is_some());
    // Deterministic: the same call gives the same numbers.
    let v2 = check::verify(&m, &other, &opts);
    assert_eq!(v2.outputs, v.outputs);
    assert_eq!(v2.accuracy_pruned, v.accuracy_pruned);
}

fn ort_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import numpy, onnxruntime"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: python3 with numpy and onnxruntime is not available");
    }
    ok
}

/// Generated token ids stay below the rows of the table they index: through a Gather
/// (bert_ms_attention: 1000 words, ids drawn below 100 as for any `*_ids`) or onnxruntime's
/// EmbedLayerNormalization (digits_bert_ms: 20 tokens). Before, ids up to 99 made onnxruntime
/// refuse the trained BERT's guard runs ("input index out of range").
#[test]
fn generated_token_ids_stay_inside_the_vocabulary() {
    let bound = |m: &str| {
        let infos = check::inputs::model_inputs(&models().join(m)).unwrap();
        infos.iter().map(|i| (i.name.clone(), i.index_bound)).collect::<Vec<_>>()
    };
    assert_eq!(
        bound("bert_ms_attention.onnx"),
        vec![("input_ids".into(), Some(1000)), ("attention_mask".into(), None)]
    );
    assert_eq!(bound("digits_bert_ms.onnx"), vec![("input_ids".into(), Some(20)), ("attention_mask".into(), None)]);
    let mut spec = InputSpec::default();
    spec.dims.insert("batch".into(), 16);
    let inputs = check::inputs::prepare_inputs(&models().join("digits_bert_ms.onnx"), &spec).unwrap();
    let ids = match &*inputs.get("input_ids").unwrap().data {
        check::inputs::InputData::I64(a) => a.clone(),
        _ => panic!("input_ids is not int64"),
    };
    assert!(ids.iter().all(|&v| (0..20).contains(&v)) && ids.iter().any(|&v| v >= 10), "{ids:?}");
}

/// An integer input one-hot encoded by comparing it with a constant (`Equal` against
/// `arange(257)`, as jax2tf exports Magika's byte input) is generated over the values the
/// constant holds, 0..=256. Before, the name-based default drew it as 0/1, so every generated
/// file was made of two byte values.
#[test]
fn a_one_hot_input_is_generated_over_the_values_it_encodes() {
    use common::corpus::{f32_tensor, node, vi, wrap};
    let mut depth = onnx_protobuf::TensorProto::new();
    depth.name = "depth".into();
    depth.data_type = 6; // int32
    depth.dims = vec![1, 1, 257];
    depth.raw_data = (0..257i32).flat_map(|v| v.to_le_bytes()).collect();
    let mut shape = onnx_protobuf::TensorProto::new();
    shape.name = "shape".into();
    shape.data_type = 7; // int64
    shape.dims = vec![3];
    shape.int64_data = vec![1, 64, 1];
    let w = f32_tensor("w", &[257, 4], &vec![0.01; 257 * 4]);
    let mut g = onnx_protobuf::GraphProto::new();
    g.name = "one_hot".into();
    g.initializer.extend([depth, shape, w]);
    g.node.push(node("Reshape", "r", &["bytes", "shape"], &["b3"]));
    g.node.push(node("Equal", "eq", &["b3", "depth"], &["hot"]));
    g.node.push(node("Cast", "c", &["hot"], &["hotf"]));
    g.node[2].attribute.push(common::corpus::attr_i("to", 1));
    g.node.push(node("MatMul", "mm", &["hotf", "w"], &["y"]));
    g.input.push(vi("bytes", 6, &[1, 64]));
    g.output.push(vi("y", 1, &[1, 64, 4]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one_hot.onnx");
    std::fs::write(&path, common::corpus::enc(&wrap(g))).unwrap();
    let infos = check::inputs::model_inputs(&path).unwrap();
    assert_eq!(infos[0].index_bound, Some(257), "{infos:?}");
    let inputs = check::inputs::prepare_inputs(&path, &InputSpec::default()).unwrap();
    let v = match &*inputs.get("bytes").unwrap().data {
        check::inputs::InputData::I32(a) => a.clone(),
        _ => panic!("bytes is not int32"),
    };
    assert!(v.iter().all(|&b| (0..257).contains(&b)) && v.iter().any(|&b| b > 1), "{v:?}");
}

/// digits_mlp with its batch axis (input and output) fixed to `b`, written in `dir`.
fn mlp_with_batch(dir: &Path, b: i64) -> PathBuf {
    use protobuf::Message;
    let mut m =
        onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(models().join("digits_mlp.onnx")).unwrap()).unwrap();
    let g = m.graph.as_mut().unwrap();
    for v in g.input.iter_mut().chain(g.output.iter_mut()) {
        let Some(onnx_protobuf::type_proto::Value::TensorType(t)) = v.type_.as_mut().unwrap().value.as_mut() else {
            panic!("not a tensor")
        };
        t.shape.as_mut().unwrap().dim[0].value = Some(onnx_protobuf::tensor_shape_proto::dimension::Value::DimValue(b));
    }
    let path = dir.join(format!("mlp_batch{b}.onnx"));
    std::fs::write(&path, m.write_to_bytes().unwrap()).unwrap();
    path
}

/// A batch fixed above 1 is not split (axis 0 might be a sequence or a channel axis): a file of
/// another row count is refused, and the error says what to pass or how to export instead.
#[test]
fn a_batch_fixed_above_one_refuses_other_row_counts_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let fixed = mlp_with_batch(dir.path(), 4);
    let e = check::inputs::prepare_inputs(&fixed, &spec_with_file("x", "digits_test_x64.npy")).unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("fixes axis 0 to 4") && e.contains("pass exactly 4 rows"), "{e}");
    assert!(e.contains("dynamic_axes={'x': {0: 'batch'}}"), "{e}");
}

/// A model whose export fixes the batch to 1 (dynamo, TF) runs a file of many rows one row at a
/// time, in tract and in onnxruntime: the same accuracy, guard and reconstruction as the same
/// model with a free batch. Before, any file of more than one row was refused ("the model fixes
/// axis 0 to 1"), so such a model could not be verified on a test split or calibrated.
#[test]
fn a_batch_one_export_runs_many_rows_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let fixed = mlp_with_batch(dir.path(), 1);
    let run = |model: &Path, out: &str| -> serde_json::Value {
        let rep = dir.path().join(format!("{out}.json"));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_onnx-emp"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg(model)
            .arg(dir.path().join(out))
            .args(["--calibration", "models/digits_calib_x64.npy", "--inputs", "models/digits_test_x64.npy"])
            .args(["--labels", "models/digits_test_y.npy", "--no-latency", "--quiet", "--report"])
            .arg(&rep)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap()
    };
    let free = run(&models().join("digits_mlp.onnx"), "free.onnx");
    let one = run(&fixed, "one.onnx");
    for key in ["accuracy_dense", "accuracy_pruned", "input_shapes"] {
        assert_eq!(one["verification"][key], free["verification"][key], "{key}");
    }
    assert_eq!(one["weights"]["kept_elems"], free["weights"]["kept_elems"]);
    let layers = |r: &serde_json::Value| r["reconstruction"]["layers"].as_array().unwrap().len();
    assert!(layers(&one) > 0 && layers(&one) == layers(&free));
    assert!(one["reconstruction"]["layers"].as_array().unwrap().iter().all(|l| l["method"] != "skipped"));
    // onnxruntime's worker splits the rows too.
    if ort_available() {
        let inputs = check::inputs::prepare_inputs(&fixed, &spec_with_file("x", "digits_test_x64.npy")).unwrap();
        let (outs, _) = check::ort::run_one(&fixed, &inputs).unwrap();
        assert_eq!(outs[0].shape(), &[inputs.rows(), 10]);
    }
}

/// MACs of models tract cannot analyse come from onnxruntime's shapes of one run: the optimised
/// BERT (com.microsoft Attention, SkipLayerNormalization, ...) counts what its unfused export
/// counts, by hand; ONNX Attention (opset 23; tract infers no shape after it) counts its
/// projections, scores and context, with grouped-query heads.
#[test]
fn macs_of_models_only_onnxruntime_can_analyse() {
    if !ort_available() {
        return;
    }
    let bert = models().join("bert_ms_attention.onnx");
    let inputs = check::inputs::prepare_inputs(&bert, &InputSpec::default()).unwrap();
    assert_eq!(inputs.shapes()["input_ids"], vec![1, 8]);
    let (m, engine) = check::macs_per_inference(&bert, &inputs).unwrap();
    assert_eq!(engine, Some("onnxruntime"));
    // 8 tokens, d = 128, FFN 256, 2 layers: packed q/k/v 3·8·128·128, scores and context
    // 8·8·128 each, output 8·128·128, FFN 2·8·128·256; pooler 128·128 and classifier 128·2 on the
    // first token.
    let layer = 3 * 8 * 128 * 128 + 2 * (8 * 8 * 128) + 8 * 128 * 128 + 2 * 8 * 128 * 256;
    assert_eq!(m.total, 2 * layer + 128 * 128 + 128 * 2, "{:?}", m.per_node);
    let att = models().join("attention_onnx23.onnx");
    let inputs = check::inputs::prepare_inputs(&att, &InputSpec::default()).unwrap();
    assert_eq!(inputs.shapes()["x"], vec![1, 8, 64]);
    let (m, _) = check::macs_per_inference(&att, &inputs).unwrap();
    // Layer 0: four 64 × 64 projections of 8 tokens, 4 heads of 16: scores and context 8·8·64
    // each. Layer 1 (4 query heads, 2 KV heads of 16): q and o 8·64·64, k and v 8·64·32, scores
    // 8·8·64, context 8·8·64.
    let l0 = 4 * 8 * 64 * 64 + 2 * (8 * 8 * 64);
    let l1 = 2 * (8 * 64 * 64) + 2 * (8 * 64 * 32) + 2 * (8 * 8 * 64);
    assert_eq!(m.total, l0 + l1, "{:?}", m.per_node);
    assert_eq!(m.per_node["l1/Attention"], 2 * (8 * 8 * 64));
}

/// The onnxruntime worker (one Python process per run) answers a model it refuses with an error
/// and goes on serving: a garbage file, then the MLP, whose outputs match tract's.
#[test]
fn the_onnxruntime_worker_survives_a_model_it_refuses() {
    if !ort_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"not a model").unwrap();
    let mlp = models().join("digits_mlp.onnx");
    let inputs = check::inputs::prepare_inputs(&mlp, &spec_with_file("x", "digits_test_x64.npy")).unwrap();
    let e = check::ort::run_one(&bad, &inputs).unwrap_err();
    assert!(format!("{e:#}").contains("onnxruntime failed"), "{e:#}");
    let (ort, names) = check::ort::run_one(&mlp, &inputs).unwrap();
    assert_eq!(names.len(), 1);
    let r = check::load_runnable(&mlp, &inputs.facts()).unwrap();
    let tract = check::run(&r, &inputs).unwrap();
    assert_eq!(ort[0].shape(), tract[0].shape());
    let diff = ort[0].iter().zip(tract[0].iter()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "onnxruntime and tract differ by {diff}");
}

/// An integer output (class ids from an ArgMax) is compared by equality: its "agreement" is the
/// fraction of equal elements (here the logits' top-1 agreement, which it is computed from), not
/// an argmax over the ids.
#[test]
fn an_integer_output_agrees_where_its_values_are_equal() {
    let dir = tempfile::tempdir().unwrap();
    let with_argmax = |from: &Path, to: &Path| {
        let mut m = io::load(from).unwrap().proto;
        common::outputs::add_argmax_output(&mut m);
        io::save(m, to, &Default::default()).unwrap();
    };
    let (dense, other) = (dir.path().join("dense.onnx"), dir.path().join("other.onnx"));
    with_argmax(&models().join("digits_mlp.onnx"), &dense);
    // Another model: the same, its weights perturbed so that some predictions move.
    let mut m = io::load(&models().join("digits_mlp.onnx")).unwrap().proto;
    for t in m.graph.as_mut().unwrap().initializer.iter_mut().filter(|t| t.dims.len() == 2) {
        let v: Vec<f64> = onnx_emp::model::tensor::read_f32(t)
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, &x)| if i % 3 == 0 { 0.0 } else { x as f64 })
            .collect();
        onnx_emp::model::tensor::write_f64(t, &v).unwrap();
    }
    let perturbed = dir.path().join("perturbed.onnx");
    io::save(m, &perturbed, &Default::default()).unwrap();
    with_argmax(&perturbed, &other);
    let opts =
        VerifyOptions { inputs: spec_with_file("", "digits_test_x64.npy"), latency: false, ..Default::default() };
    let v = check::verify(&dense, &other, &opts);
    assert_eq!(v.status, "ok", "{:?}", v.reason);
    let (logits, cls) = (&v.outputs[0], &v.outputs[1]);
    assert!(!logits.integer && cls.integer, "{:?}", v.outputs);
    let (t, e) = (logits.top1_agreement.unwrap(), cls.top1_agreement.unwrap());
    assert!(t < 1.0 && (t - e).abs() < 1e-12, "logits agree {t}, ids equal {e}");
}

/// scikit-learn's classifiers (skl2onnx) end in a ZipMap: a sequence of {class: probability} maps,
/// beside an int64 label, or a string one (class names). tract cannot run it; onnxruntime's answer is compared as rows of the
/// maps' values in key order, and the label by equality. Before, the worker's float cast of the
/// maps failed, the run was reported unproven, and the advice was to install onnxruntime.
#[test]
fn a_zipmap_output_is_compared_as_its_values_in_onnxruntime() {
    if !ort_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import sys
import numpy as np
from onnx import TensorProto, helper, save
rng = np.random.default_rng(0)
w = rng.standard_normal((4, 3)).astype(np.float32)
for path, scale in ((sys.argv[1], 1.0), (sys.argv[2], 0.0)):
    wt = w.copy(); wt[:, 2] *= scale
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["z"]),
        helper.make_node("Softmax", ["z"], ["p"], axis=1),
        helper.make_node("ArgMax", ["p"], ["label"], axis=1, keepdims=0),
        helper.make_node("ZipMap", ["p"], ["probability"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]),
        helper.make_node("LabelEncoder", ["label"], ["name"], domain="ai.onnx.ml", keys_int64s=[0, 1, 2],
                         values_strings=["cat", "dog", "eel"], default_string="?"),
    ]
    seq = helper.make_sequence_type_proto(helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    g = helper.make_graph(nodes, "skl", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
                           helper.make_value_info("probability", seq),
                           helper.make_tensor_value_info("name", TensorProto.STRING, ["N"])],
                          [helper.make_tensor("W", TensorProto.FLOAT, [4, 3], wt.flatten().tolist())])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 2)])
    m.ir_version = 8
    save(m, path)
"#;
    let (dense, other) = (dir.path().join("dense.onnx"), dir.path().join("other.onnx"));
    if !common::outputs::python_script(script, &[&dense, &other]) {
        return;
    }
    let mut inputs = InputSpec::default();
    inputs.dims.insert("N".into(), 32);
    let opts = VerifyOptions { latency: false, inputs, ..Default::default() };
    let v = check::verify(&dense, &other, &opts);
    assert_eq!(v.status, "ok", "{:?}", v.reason);
    assert_eq!(v.engine, "onnxruntime");
    let (label, probs, name) = (&v.outputs[0], &v.outputs[1], &v.outputs[2]);
    assert!(label.integer && !probs.integer && name.integer, "{:?}", v.outputs);
    // Class names (strings) compare as the class ids they name.
    assert_eq!(name.top1_agreement, label.top1_agreement, "{:?}", v.outputs);
    assert!(label.top1_agreement.unwrap() < 1.0, "{:?}", v.outputs);
    assert!(probs.rel_l2_err > 0.01 && probs.rel_l2_err < 1.0, "{probs:?}");
    let same = check::verify(&dense, &dense, &opts);
    assert_eq!(same.outputs[1].rel_l2_err, 0.0, "{:?}", same.outputs);
    assert_eq!(same.outputs[0].top1_agreement, Some(1.0));
}
