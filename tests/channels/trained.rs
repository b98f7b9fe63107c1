//! The trained models in models/ (diff snapshots, groups kept, alignment, scopes), and real models
//! from ../shared/models (skipped when absent).
use super::*;

fn snapshot(name: &str, dense: &ModelProto, o: &Outcome) {
    let text = format!("{}\ngroups:\n{}\n", graph_diff(dense, &o.result.pruned), summary(&o.result.groups));
    insta::with_settings!({snapshot_path => "../../snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!(name, text);
    });
}

fn run_digits(model: &str, x: &str) -> (ModelProto, Outcome) {
    let (dense, npys, inputs) = digits(model, x);
    let o = prune_and_prove(&dense, &no_floor(), &npys, &inputs);
    snapshot(model.trim_end_matches(".onnx"), &dense, &o);
    let prunable = o.result.groups.iter().filter(|g| g.blocked.is_none()).count();
    eprintln!(
        "{model} | {prunable}/{} | {} → {} | ort {:?} | tract {:?}",
        o.result.groups.len(),
        o.params.0,
        o.params.1,
        o.ort,
        o.tract
    );
    (dense, o)
}

#[test]
fn digits_cnn_bn_residual_depthwise_concat() {
    let (_, o) = run_digits("digits_cnn.onnx", "digits_test_x1x8x8.npy");
    let p = &o.result.pruned;
    // residual: stem, res.b and the depthwise conv are one group
    let stem = group(&o.result, "/stem/stem.0/Conv");
    assert!(
        stem.members.contains(&"/res/b/b.0/Conv".to_string()) && stem.members.contains(&"/dw/dw.0/Conv".to_string())
    );
    assert_eq!(weight(p, "stem.0.weight").dims[0], weight(p, "res.b.0.weight").dims[0]);
    // depthwise: group attribute = channels kept, = pointwise conv's input channels
    let dw = weight(p, "dw.0.weight").dims[0];
    assert_eq!(graph::attr_i(node(p, "/dw/dw.0/Conv"), "group"), Some(dw));
    assert_eq!(weight(p, "pw.0.weight").dims[1], dw);
    // concat offsets: fc in-features = br1 kept + br2 kept
    assert_eq!(weight(p, "fc.weight").dims[1], weight(p, "br1.weight").dims[0] + weight(p, "br2.weight").dims[0]);
    // BN → ReLU → zero-padded 3x3 conv: the removed units' relu(beta') is folded into the next
    // conv's bias (exact in the interior), so they are removed rather than kept.
    let ra = group(&o.result, "/res/a/a.0/Conv");
    assert!(ra.kept < ra.n, "{ra:?}");
    assert!(ra.notes.iter().any(|n| n.contains("exact in the interior")), "{:?}", ra.notes);
    assert!(o.params.1 < o.params.0);
    assert!(group(&o.result, "/fc/Gemm").blocked.as_deref().unwrap().contains("graph output 'logits'"));
}

#[test]
fn digits_cnn_flatten_into_gemm() {
    let (_, o) = run_digits("digits_cnn_flatten.onnx", "digits_test_x1x8x8.npy");
    let p = &o.result.pruned;
    let c2 = weight(p, "c2.0.weight").dims[0];
    assert!(c2 < 16);
    // channel c ↦ features c·16 … c·16+15 after the 4x4 MaxPool + Flatten
    assert_eq!(weight(p, "fc1.weight").dims[1], c2 * 16);
}

#[test]
fn digits_mlp_hidden_units() {
    let (_, o) = run_digits("digits_mlp.onnx", "digits_test_x64.npy");
    let p = &o.result.pruned;
    assert_eq!(weight(p, "fc2.weight").dims[1], weight(p, "fc1.weight").dims[0]);
    assert_eq!(weight(p, "fc3.weight").dims[1], weight(p, "fc2.weight").dims[0]);
    assert!(o.params.1 < o.params.0);
}

#[test]
fn yolo_block_split_concat_silu_resize() {
    let (_, o) = run_digits("yolo_block.onnx", "digits_test_x1x8x8.npy");
    let p = &o.result.pruned;
    // Split sizes (from a Constant node) rewritten: they add up to cv1's kept channels
    let sizes = tensor::read_i64(weight(p, "/c2f/Constant_output_0")).unwrap();
    assert_eq!(sizes.iter().sum::<i64>(), weight(p, "c2f.cv1.conv.weight").dims[0]);
    // Concat[half1, half2, m2] feeds cv2
    assert_eq!(
        weight(p, "c2f.cv2.conv.weight").dims[1],
        weight(p, "c2f.cv1.conv.weight").dims[0] + weight(p, "c2f.m2.conv.weight").dims[0]
    );
    assert_eq!(weight(p, "c2f.m1.conv.weight").dims[1], sizes[1]);
    // Resize passes channels; Concat[up(down), cv2] feeds fuse
    assert_eq!(
        weight(p, "fuse.conv.weight").dims[1],
        weight(p, "down.conv.weight").dims[0] + weight(p, "c2f.cv2.conv.weight").dims[0]
    );
    assert!(o.params.1 < o.params.0);
}

#[test]
fn digits_transformer_ffn_hidden_units_and_residual_stream() {
    let (_, o) = run_digits("digits_transformer.onnx", "digits_test_x8x8.npy");
    let ffn: Vec<&GroupReport> = o.result.groups.iter().filter(|g| g.id.ends_with("ff1/MatMul")).collect();
    assert_eq!(ffn.len(), 2);
    for g in ffn {
        assert!(g.blocked.is_none(), "{g:?}");
        assert!(g.members.iter().any(|m| m.ends_with("/Erf")), "Erf-GELU is inside the group: {:?}", g.members);
    }
    // The residual stream (d_model: the embedding, every LayerNormalization, the attention and
    // FFN output projections, the head's input) is one group, pruned through its LayerNorms
    // (proven above: the masked model normalises over the kept units); the attention's merge
    // `reshape(b, s, d)` reads d from the stream's shape and is fed the original d.
    let stream = group(&o.result, "/embed/MatMul");
    assert!(stream.blocked.is_none() && stream.kept < stream.n, "{}", summary(&o.result.groups));
    let lns = stream.members.iter().filter(|m| m.ends_with("LayerNormalization")).count();
    assert_eq!(lns, 5, "{:?}", stream.members);
    let frozen = o.result.pruned.graph.initializer.iter().filter(|t| t.name.ends_with("_emp") && t.int64_data == [32]);
    assert_eq!(frozen.count(), 2, "one frozen d per attention block");
    // the attention projections are left alone, with a reason (heads mode prunes them)
    let qkv =
        o.result.groups.iter().filter(|g| ["q/", "k/", "v/"].iter().any(|p| g.id.ends_with(&format!("{p}MatMul"))));
    assert!(qkv.clone().count() == 6 && qkv.into_iter().all(|g| g.blocked.is_some()));
}

#[test]
fn digits_lstm_hidden_units() {
    // The LSTM's hidden units are a group (W, R, B rows per gate, R columns, the ConstantOfShape
    // initial state's size); the forced cut removes some and stays exact.
    let (dense, npys, inputs) = digits("digits_lstm.onnx", "digits_test_x8x8.npy");
    let opts = StructOptions { beta: 0.7, ..no_floor() };
    let o = prune_and_prove(&dense, &opts, &npys, &inputs);
    let lstm = o.result.groups.iter().find(|g| g.kind == "hidden" && g.members.iter().any(|m| m.contains("LSTM")));
    let lstm = lstm.unwrap_or_else(|| panic!("no LSTM group in\n{}", summary(&o.result.groups)));
    assert!(lstm.blocked.is_none() && lstm.kept < lstm.n, "{}", summary(&o.result.groups));
    assert!(o.params.1 < o.params.0);
}

/// `--round-to auto` aligns each group for the kernels its units run on: a Gemm's outputs (a
/// matrix-vector product at batch 1, 64 rows per tile in tract) to 64, a sequence MatMul's
/// (blocked kernels) to 8. At β = 0.7, EMP keeps 87 of digits_mlp's 128 and 41 of its 64 units:
/// under 64-alignment both groups stay whole; the transformer's 64-wide FFNs lose 8-multiples.
#[test]
fn auto_alignment_follows_the_kernel() {
    let auto = StructOptions { beta: 0.7, round_to: onnx_emp::prune::RoundTo::Auto, ..no_floor() };
    let (mlp, _, _) = digits("digits_mlp.onnx", "digits_test_x64.npy");
    let r = prune_channels(&mlp, &auto).unwrap();
    let fc: Vec<&GroupReport> = r.groups.iter().filter(|g| g.blocked.is_none() && g.n >= 64).collect();
    assert_eq!(fc.len(), 2, "{}", summary(&r.groups));
    for g in &fc {
        assert_eq!(g.kept, g.n, "{g:?}");
        assert!(g.notes.iter().any(|n| n.contains("a multiple of 64")), "{g:?}");
    }
    // With rounding off the same β does cut them: the alignment, not EMP, kept them whole.
    let off = prune_channels(&mlp, &StructOptions { round_to: onnx_emp::prune::RoundTo::Multiple(1), ..auto.clone() })
        .unwrap();
    assert!(off.groups.iter().filter(|g| g.blocked.is_none() && g.n >= 64).all(|g| g.kept < g.n));
    let (tf, _, _) = digits("digits_transformer.onnx", "digits_test_x8x8.npy");
    let r = prune_channels(&tf, &auto).unwrap();
    let ffn: Vec<&GroupReport> = r.groups.iter().filter(|g| g.id.ends_with("ff1/MatMul")).collect();
    assert_eq!(ffn.len(), 2);
    for g in ffn {
        assert!(g.kept < g.n && g.kept % 8 == 0 && g.kept % 64 != 0, "{g:?}");
    }
    // A conv stream that an SE block's Linear gate also writes (tied through `view(b, c, 1, 1)`)
    // runs on the convolution's kernels: aligned to 16, not to the Gemm's 64 (which kept 43 of its
    // 64 channels rounded up to all 64).
    let se = load(&root().join("models/zoo/zoo_se_view.onnx"));
    let r = prune_channels(
        &se,
        &StructOptions { beta: 0.7, round_to: onnx_emp::prune::RoundTo::Auto, ..Default::default() },
    )
    .unwrap();
    let c2 = r.groups.iter().find(|g| g.id == "/c2/Conv").unwrap();
    assert!(c2.members.iter().any(|m| m == "/se2/fc2/Gemm"), "{c2:?}");
    assert_eq!((c2.kept, c2.n), (48, 64), "{c2:?}");
    assert!(c2.notes.iter().any(|n| n.contains("the nearest multiple of 16")), "{c2:?}");
}

#[test]
fn global_scope_and_rounding() {
    let (dense, npys, inputs) = digits("yolo_block.onnx", "digits_test_x1x8x8.npy");
    let opts = StructOptions {
        scope: StructScope::Global,
        round_to: onnx_emp::prune::RoundTo::Multiple(4),
        beta: 0.9,
        ..no_floor()
    };
    let o = prune_and_prove(&dense, &opts, &npys, &inputs);
    for g in o.result.groups.iter().filter(|g| g.blocked.is_none()) {
        assert!(g.kept >= 1 && (g.kept % 4 == 0 || g.kept == g.n), "{g:?}");
        assert!(g.notes.iter().any(|n| n.contains("global EMP")));
    }
    let o1 = prune_and_prove(
        &dense,
        &StructOptions { criterion: onnx_emp::prune::Criterion::L1, ..no_floor() },
        &npys,
        &inputs,
    );
    assert!(o1.params.1 < o1.params.0);
}

fn shared_models() -> Option<PathBuf> {
    let p = root().join("../shared/models");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("skipping real models: {} is absent", p.display());
        None
    }
}

/// Concrete inputs for a real model: random floats, ids in [0, 2), masks of ones.
fn real_inputs(m: &ModelProto) -> Vec<Input> {
    let g = m.graph.as_ref().unwrap();
    let inits: std::collections::BTreeSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut out = vec![];
    for (k, v) in g.input.iter().filter(|v| !inits.contains(v.name.as_str())).enumerate() {
        let dims = onnx_emp::prune::groups::value_dims(v).unwrap_or_default();
        let shape: Vec<usize> = dims.iter().map(|d| d.unwrap_or(2)).collect();
        let n: usize = shape.iter().product();
        use onnx_protobuf::type_proto::Value as T;
        let elem = match v.type_.as_ref().and_then(|t| t.value.as_ref()) {
            Some(T::TensorType(t)) => t.elem_type,
            _ => 1,
        };
        out.push(if elem == 7 {
            let vals = if v.name.contains("mask") { vec![1; n] } else { (0..n).map(|i| (i % 2) as i64).collect() };
            Input::I64(shape, vals)
        } else {
            Input::F32(shape, randn(n, k as u64 + 1))
        });
    }
    out
}

#[test]
fn real_models() {
    let Some(dir) = shared_models() else { return };
    let mut table = vec!["model | groups prunable/total | params before → after | ort rel | tract rel".to_string()];
    for name in [
        "ppocr_mobilenetv3_cls",
        "mobilenet_v2_random_ts",
        "silero_vad_16k_sequence",
        "tiny_bert_random_ts",
        "tiny_bert_random_dynamo",
        "tiny_vit_random_ts",
        "tiny_vit_random_dynamo",
    ] {
        let p = dir.join(format!("{name}.onnx"));
        if !p.exists() {
            eprintln!("skipping {name}: not found");
            continue;
        }
        let t0 = std::time::Instant::now();
        let dense = load(&p);
        let inputs = real_inputs(&dense);
        let o = prune_and_prove(&dense, &no_floor(), &[], &inputs);
        let prunable = o.result.groups.iter().filter(|g| g.blocked.is_none()).count();
        let changed = o.result.groups.iter().any(|g| g.blocked.is_none() && g.kept < g.n);
        if changed {
            assert!(o.params.1 < o.params.0, "{name}: units removed but params did not shrink");
        }
        eprintln!("== {name} ({:?})\n{}", t0.elapsed(), summary(&o.result.groups));
        table.push(format!(
            "{name} | {prunable}/{} | {} → {} | {:?} | {:?}",
            o.result.groups.len(),
            o.params.0,
            o.params.1,
            o.ort,
            o.tract
        ));
    }
    eprintln!("{}", table.join("\n"));
}
