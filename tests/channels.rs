//! `--structured channels`: dependency analysis, EMP, rewrite. Every rewrite is proven by running
//! the pruned and the masked model on the same inputs (onnxruntime via tests/helpers/onnx_check.py
//! when python3 + onnx are available, and tract) and requiring ≤ 1e-4 relative difference.

use onnx_emp::diff::graph_diff;
use onnx_emp::model::graph::{self, GraphIndex};
use onnx_emp::model::tensor;
use onnx_emp::prune::channels::prune_channels;
use onnx_emp::prune::{Floor, GroupReport, StructOptions, StructScope, StructuralResult};

/// These tests prove rewrites on small widths: the narrow/stem floors would keep most groups
/// whole, so they are lifted (the floors have their own tests).
fn no_floor() -> StructOptions {
    StructOptions { floor: Floor::OFF, ..Default::default() }
}
use onnx_protobuf::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use std::path::PathBuf;
use std::process::Command;

#[path = "common/prove.rs"]
mod prove;
use prove::*;
#[path = "common/build.rs"]
mod build;
use build::*;

fn summary(groups: &[GroupReport]) -> String {
    groups
        .iter()
        .map(|g| {
            let state = match &g.blocked {
                Some(b) => format!("blocked: {b}"),
                None => format!("kept {}/{}", g.kept, g.n),
            };
            format!("{} [{}] n_eff={:.2} {state} {:?}", g.id, g.kind, g.n_eff, g.notes)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// models/ (trained, committed)

fn digits(model: &str, x: &str) -> (ModelProto, Vec<(String, PathBuf)>, Vec<Input>) {
    let dir = root().join("models");
    let p = dir.join(x);
    (load(&dir.join(model)), vec![("x".into(), p.clone())], vec![npy(&p)])
}

fn snapshot(name: &str, dense: &ModelProto, o: &Outcome) {
    let text = format!("{}\ngroups:\n{}\n", graph_diff(dense, &o.result.pruned), summary(&o.result.groups));
    insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!(name, text);
    });
}

/// Look up a weight (initializer or Constant) of a model by name.
fn weight<'a>(m: &'a ModelProto, name: &str) -> &'a TensorProto {
    let g = m.graph.as_ref().unwrap();
    let ix = GraphIndex::build(g).unwrap();
    ix.weight(g, name).unwrap_or_else(|| panic!("weight '{name}' not found"))
}

fn node<'a>(m: &'a ModelProto, name: &str) -> &'a NodeProto {
    m.graph.as_ref().unwrap().node.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("node '{name}' not found"))
}

fn group<'a>(r: &'a StructuralResult, id: &str) -> &'a GroupReport {
    r.groups.iter().find(|g| g.id == id).unwrap_or_else(|| panic!("no group '{id}' in\n{}", summary(&r.groups)))
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

// ---------------------------------------------------------------------------------------------
// Real models from ../shared/models (skipped when absent)

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

// ---------------------------------------------------------------------------------------------
// Hard cases of docs/structural.md on small hand-built models

const X4: [i64; 4] = [1, 3, 5, 5];

#[test]
fn residual_chain_reaching_output_is_not_pruned() {
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Conv", "B", &["ra", "wb"], &["b"], vec![]),
            nd("Add", "add", &["b", "ra"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 0.01, 1.], 1),
            w("wb", &[6, 6, 1, 1], &[1., 0.01, 1., 1., 0.01, 1.], 2),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &no_floor());
    let g = group(&o.result, "A");
    assert_eq!(g.members, vec!["A", "r", "B", "add"]);
    assert!(g.blocked.as_deref().unwrap().contains("graph output 'y'"), "{g:?}");
    assert_eq!(o.params.0, o.params.1);
}

/// A bias tensor two convolutions read (onnxslim deduplicates equal biases: a random-weight
/// YOLOv8n's zero biases made its whole backbone one group) does not tie their channels: each
/// group prunes its own, each reader gets its own sliced copy, and the shared tensor, read by no
/// one after, is gone.
#[test]
fn a_bias_shared_by_two_layers_does_not_tie_their_channels() {
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa", "b"], &["a"], vec![]),
            nd("Relu", "ra", &["a"], &["a2"], vec![]),
            nd("Conv", "B", &["a2", "wb", "b"], &["bo"], vec![]),
            nd("Relu", "rb", &["bo"], &["b2"], vec![]),
            nd("Conv", "C", &["b2", "wc"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 1., 1.], 1),
            w("wb", &[6, 6, 1, 1], &[1., 1., 1., 0.01, 1., 0.02], 2),
            w("wc", &[2, 6, 1, 1], &[1., 1.], 3),
            tensor::new_f32("b", &[6], &[0.1, -0.2, 0.3, 0.05, -0.1, 0.2]),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &StructOptions { round_to: onnx_emp::prune::RoundTo::Multiple(1), ..no_floor() });
    let (a, b) = (group(&o.result, "A"), group(&o.result, "B"));
    assert_eq!(
        (a.members.clone(), b.members.clone()),
        (vec!["A".into(), "ra".into(), "B".into()], vec!["B".into(), "rb".into(), "C".into()])
    );
    // Each group drops its own weak channels (EMP may take one more of the near-equal rest).
    assert!(a.removed.contains(&1), "{a:?}");
    assert!(b.removed.contains(&3) && b.removed.contains(&5) && !b.removed.contains(&1), "{b:?}");
    assert_ne!(a.removed, b.removed);
    let p = &o.result.pruned;
    let g = p.graph.as_ref().unwrap();
    assert!(g.node.iter().all(|n| n.op_type != "Identity"), "no alias left");
    let bias = |n: &str| g.node.iter().find(|x| x.name == n).unwrap().input[2].clone();
    let (ba, bb) = (bias("A"), bias("B"));
    assert_ne!(ba, bb);
    assert_eq!(
        (weight(p, &ba).dims.clone(), weight(p, &bb).dims.clone()),
        (vec![(6 - a.removed.len()) as i64], vec![(6 - b.removed.len()) as i64])
    );
    assert!(g.initializer.iter().all(|t| t.name != "b"), "the shared bias nobody reads is dropped");
    assert!(o.params.1 < o.params.0);
}

/// Layers that read one weight through an `Identity` each (torch.onnx's way of writing a module
/// applied several times, as ALBERT's layers are) are cut as one: they lose the same channels and
/// keep sharing the weight and its bias. Cut apart, each alias became a copy and the params grew
/// (33 664 → 99 968 on a four-layer MLP).
#[test]
fn layers_sharing_a_weight_through_identity_are_cut_as_one_and_keep_sharing_it() {
    let mut nodes = vec![];
    let mut x = "x".to_string();
    for l in 0..3 {
        for (a, src) in [("wa", "wa"), ("b", "b"), ("wb", "wb")] {
            nodes.push(nd("Identity", &format!("{a}{l}"), &[src], &[&format!("{a}{l}")], vec![]));
        }
        let (h, r, y) = (format!("h{l}"), format!("r{l}"), format!("y{l}"));
        nodes.push(nd("Conv", &format!("A{l}"), &[&x, &format!("wa{l}"), &format!("b{l}")], &[&h], vec![]));
        nodes.push(nd("Relu", &format!("ra{l}"), &[&h], &[&r], vec![]));
        nodes.push(nd("Conv", &format!("B{l}"), &[&r, &format!("wb{l}")], &[&y], vec![]));
        x = y;
    }
    let m = mk_model(
        nodes,
        vec![
            w("wa", &[8, 3, 1, 1], &[1., 0.01, 1., 1., 0.02, 1., 1., 1.], 1),
            w("wb", &[3, 8, 1, 1], &[1., 1., 1.], 2),
            tensor::new_f32("b", &[8], &[0.1, -0.2, 0.3, 0.05, -0.1, 0.2, 0.0, 0.1]),
        ],
        &X4,
        &[&x],
    );
    let o = prove_x(&m, &X4, &StructOptions { round_to: onnx_emp::prune::RoundTo::Multiple(1), ..no_floor() });
    let a = group(&o.result, "A0");
    assert!(a.members.iter().any(|n| n == "B2"), "one group over the three layers: {}", summary(&o.result.groups));
    assert!(a.removed.contains(&1) && a.removed.contains(&4), "{a:?}");
    let p = &o.result.pruned;
    let g = p.graph.as_ref().unwrap();
    let kept = (8 - a.removed.len()) as i64;
    let dims = |n: &str| weight(p, n).dims.clone();
    assert_eq!((dims("wa"), dims("b"), dims("wb")), (vec![kept, 3, 1, 1], vec![kept], vec![3, kept, 1, 1]));
    assert_eq!(g.initializer.len(), 3, "no copies: {:?}", g.initializer.iter().map(|t| &t.name).collect::<Vec<_>>());
    assert_eq!(g.node.iter().filter(|n| n.op_type == "Identity").count(), 9, "the aliases stay");
    assert!(o.params.1 < o.params.0);
}

/// A cut whose copies and compensating biases would outweigh what it removes is not made:
/// parameters never grow (a 1-unit cut of a layer applied four times, whose removed unit's
/// relu(bias) is folded into a new bias of each second layer).
#[test]
fn a_cut_that_would_add_parameters_is_not_made() {
    let mut nodes = vec![];
    let mut x = "x".to_string();
    for l in 0..4 {
        nodes.push(nd("Identity", &format!("wa{l}"), &["wa"], &[&format!("wa{l}")], vec![]));
        nodes.push(nd("Identity", &format!("wb{l}"), &["wb"], &[&format!("wb{l}")], vec![]));
        let (h, hb, r, y) = (format!("h{l}"), format!("hb{l}"), format!("r{l}"), format!("y{l}"));
        nodes.push(nd("MatMul", &format!("A{l}"), &[&x, &format!("wa{l}")], &[&h], vec![]));
        nodes.push(nd("Add", &format!("ba{l}"), &[&h, &format!("b{l}")], &[&hb], vec![]));
        nodes.push(nd("Relu", &format!("ra{l}"), &[&hb], &[&r], vec![]));
        nodes.push(nd("MatMul", &format!("B{l}"), &[&r, &format!("wb{l}")], &[&y], vec![]));
        x = y;
    }
    // wa [4, 8]: hidden unit 1 is weak, the others near-equal; wb [8, 4].
    let va: Vec<f32> = (0..32).map(|i| if i % 8 == 1 { 0.01 } else { 1.0 + 0.05 * (i % 3) as f32 }).collect();
    let vb: Vec<f32> = (0..32).map(|i| 0.5 + 0.05 * (i % 4) as f32).collect();
    let mut inits = vec![tensor::new_f32("wa", &[4, 8], &va), tensor::new_f32("wb", &[8, 4], &vb)];
    // Own biases, non-zero: a removed unit emits relu(b), folded into a new bias of each B.
    inits.extend((0..4).map(|l| tensor::new_f32(&format!("b{l}"), &[8], &[0.5; 8])));
    let m = mk_model(nodes, inits, &[2, 4], &[&x]);
    let o = prove_x(&m, &[2, 4], &StructOptions { round_to: onnx_emp::prune::RoundTo::Multiple(1), ..no_floor() });
    let a = group(&o.result, "A0");
    assert_eq!(a.kept, a.n, "{}", summary(&o.result.groups));
    assert!(a.notes.iter().any(|n| n.contains("more parameters than the input has")), "{:?}", a.notes);
    assert_eq!(o.params.1, o.params.0);
}

/// Untying a shared bias gives each changed reader a copy; when those copies beside the shared
/// tensor (still read by an unchanged reader) would outweigh what the cut removes, the layers stay
/// tied instead: parameters never grow.
#[test]
fn a_shared_bias_stays_tied_when_untying_it_would_add_parameters() {
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa", "sb"], &["a"], vec![]),
            nd("Relu", "ra", &["a"], &["a2"], vec![]),
            nd("Conv", "C", &["a2", "wc"], &["y"], vec![]),
            nd("Conv", "B", &["x", "wb", "sb"], &["y2"], vec![]),
        ],
        vec![
            // A cut of r of A's 16 channels removes 4·r weights and would add a copy of 16 − r
            // biases beside the 16 B still reads: more, for any r ≤ 3 (EMP cuts 1 or 2 here).
            w("wa", &[16, 3, 1, 1], &[1., 0.01, 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1.], 1),
            w("wc", &[1, 16, 1, 1], &[1.], 2),
            w("wb", &[16, 3, 1, 1], &[1.; 16], 3),
            tensor::new_f32("sb", &[16], &[0.1; 16]),
        ],
        &X4,
        &["y", "y2"],
    );
    let o = prove_x(&m, &X4, &StructOptions { round_to: onnx_emp::prune::RoundTo::Multiple(1), ..no_floor() });
    let a = group(&o.result, "A");
    assert!(a.members.contains(&"B".to_string()) && a.blocked.is_some(), "tied to B, which reaches an output: {a:?}");
    assert_eq!(o.params.0, o.params.1);
    let g = o.result.pruned.graph.as_ref().unwrap();
    assert!(g.node.iter().all(|n| n.op_type != "Identity" && n.input.iter().all(|i| i != "sb_0")));
}

#[test]
fn concat_offsets_select_the_right_columns() {
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Relu", "ra", &["a"], &["a2"], vec![]),
            nd("Conv", "B", &["x", "wb"], &["b"], vec![]),
            nd("Relu", "rb", &["b"], &["b2"], vec![]),
            nd("Concat", "cat", &["a2", "b2"], &["c"], vec![attr_i("axis", 1)]),
            nd("Conv", "C", &["c", "wc", "bc"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 0.01, 1.], 1),
            w("wb", &[5, 3, 1, 1], &[0.01, 1., 1., 1., 1.], 2),
            w("wc", &[2, 11, 1, 1], &ones(2), 3),
            tensor::new_f32("bc", &[2], &[0.1, -0.2]),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &StructOptions { beta: 1.05, ..no_floor() });
    let dense_c = tensor::read_f32(weight(&m, "wc")).unwrap();
    let pruned_c = tensor::read_f32(weight(&o.result.pruned, "wc")).unwrap();
    // A keeps 0,2,3,5; B keeps 1,2,3,4 → columns 0,2,3,5 and 6+1..6+4 of C
    let cols = [0usize, 2, 3, 5, 7, 8, 9, 10];
    let expect: Vec<f32> =
        (0..2).flat_map(|o| cols.iter().map(move |&c| (o, c))).map(|(o, c)| dense_c[o * 11 + c]).collect();
    assert_eq!(pruned_c, expect);
}

#[test]
fn split_sizes_and_equal_split_become_explicit() {
    let mk = |sizes: Option<&str>| {
        let mut split_in = vec!["h"];
        if let Some(s) = sizes {
            split_in.push(s);
        }
        let mut inits = vec![
            w("w0", &[8, 3, 1, 1], &[1., 0.01, 0.01, 1., 1., 1., 0.01, 1.], 1),
            w("wl", &[2, 4, 3, 3], &ones(2), 2),
            w("wr", &[2, 4, 1, 1], &ones(2), 3),
        ];
        if sizes.is_some() {
            let mut t = TensorProto::new();
            t.name = "sizes".into();
            t.data_type = 7;
            t.dims = vec![2];
            t.int64_data = vec![4, 4];
            inits.push(t);
        }
        mk_model(
            vec![
                nd("Conv", "head", &["x", "w0"], &["h0"], vec![]),
                nd("Sigmoid", "sig", &["h0"], &["s"], vec![]),
                nd("Mul", "silu", &["h0", "s"], &["h"], vec![]),
                nd("Split", "split", &split_in, &["l", "r"], vec![attr_i("axis", 1)]),
                nd("Conv", "L", &["l", "wl"], &["lo"], vec![attr_ints("pads", &[1, 1, 1, 1])]),
                nd("Conv", "R", &["r", "wr"], &["ro"], vec![]),
                nd("Add", "add", &["lo", "ro"], &["y"], vec![]),
            ],
            inits,
            &X4,
            &["y"],
        )
    };
    for sizes in [Some("sizes"), None] {
        let m = mk(sizes);
        let o = prove_x(&m, &X4, &no_floor());
        let p = &o.result.pruned;
        let split = node(p, "split");
        let s = tensor::read_i64(weight(p, &split.input[1])).unwrap();
        assert_eq!(s, vec![2, 3], "removed channels 1, 2 | 6 → parts of 2 and 3");
        assert_eq!(weight(p, "wl").dims[1], 2);
        assert_eq!(weight(p, "wr").dims[1], 3);
    }
}

#[test]
fn slice_bounds_on_the_channel_axis() {
    let mut starts = TensorProto::new();
    starts.name = "starts".into();
    starts.data_type = 7;
    starts.dims = vec![1];
    starts.int64_data = vec![2];
    let mut ends = starts.clone();
    ends.name = "ends".into();
    ends.int64_data = vec![7];
    let mut axes = starts.clone();
    axes.name = "axes".into();
    axes.int64_data = vec![1];
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Slice", "slice", &["a", "starts", "ends", "axes"], &["s"], vec![]),
            nd("Conv", "B", &["s", "wb"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[8, 3, 1, 1], &[0.01, 1., 1., 1., 0.01, 1., 1., 1.], 1),
            w("wb", &[2, 5, 1, 1], &ones(2), 2),
            starts,
            ends,
            axes,
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &no_floor());
    let p = &o.result.pruned;
    assert_eq!(weight(p, "wa").dims[0], 6);
    assert_eq!(tensor::read_i64(weight(p, "starts")).unwrap(), vec![1]);
    assert_eq!(tensor::read_i64(weight(p, "ends")).unwrap(), vec![5]);
    assert_eq!(weight(p, "wb").dims[1], 4);
}

#[test]
fn depthwise_with_multiplier_and_single_channel_convs() {
    let x: [i64; 4] = [1, 1, 6, 6];
    let m = mk_model(
        vec![
            // weight [4,1,3,3] with group 1 on a 1-channel input: a plain conv, not depthwise
            nd("Conv", "A", &["x", "wa"], &["a"], vec![attr_ints("pads", &[1, 1, 1, 1])]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            // depthwise, channel multiplier 2: output 2c, 2c+1 read input c
            nd("Conv", "DW", &["ra", "wd", "bd"], &["d"], vec![attr_i("group", 4), attr_ints("pads", &[1, 1, 1, 1])]),
            nd("Relu", "r2", &["d"], &["rd"], vec![]),
            // one output channel
            nd("Conv", "C", &["rd", "wc"], &["c"], vec![]),
            nd("Relu", "r3", &["c"], &["rc"], vec![]),
            nd("Conv", "E", &["rc", "we"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[4, 1, 3, 3], &[1., 1., 0.01, 1.], 1),
            w("wd", &[8, 1, 3, 3], &ones(8), 2),
            tensor::new_f32("bd", &[8], &[0.; 8]),
            w("wc", &[1, 8, 1, 1], &ones(1), 3),
            w("we", &[3, 1, 1, 1], &ones(3), 4),
        ],
        &x,
        &["y"],
    );
    let o = prove_x(&m, &x, &no_floor());
    let p = &o.result.pruned;
    let g = group(&o.result, "A");
    assert!(g.members.contains(&"DW".to_string()), "depthwise couples its input and output: {g:?}");
    assert_eq!(weight(p, "wa").dims, vec![3, 1, 3, 3]);
    assert_eq!(weight(p, "wd").dims, vec![6, 1, 3, 3]);
    assert_eq!(graph::attr_i(node(p, "DW"), "group"), Some(3));
    assert_eq!(weight(p, "wc").dims, vec![1, 6, 1, 1]);
    assert_eq!(group(&o.result, "C").n, 1);
}

#[test]
fn reshape_into_gemm_rewrites_the_target() {
    let x: [i64; 4] = [2, 3, 4, 4];
    let mut target = TensorProto::new();
    target.name = "target".into();
    target.data_type = 7;
    target.dims = vec![2];
    target.int64_data = vec![-1, 64];
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Reshape", "flat", &["ra", "target"], &["f"], vec![]),
            nd("Gemm", "fc", &["f", "wf", "bf"], &["y"], vec![attr_i("transB", 1)]),
        ],
        vec![
            w("wa", &[4, 3, 1, 1], &[1., 0.01, 1., 1.], 1),
            w("wf", &[3, 64], &ones(3), 2),
            tensor::new_f32("bf", &[3], &[0.; 3]),
            target,
        ],
        &x,
        &["y"],
    );
    let mut m = m;
    set_out_rank(&mut m, 2);
    let o = prove_x(&m, &x, &no_floor());
    let p = &o.result.pruned;
    assert_eq!(tensor::read_i64(weight(p, "target")).unwrap(), vec![-1, 48]);
    assert_eq!(weight(p, "wf").dims, vec![3, 48]);
}

/// x → Conv A (no bias) → BN (large positive shift) → Relu → consumer C.
fn bn_model(consumer_pads: bool) -> ModelProto {
    let c = 6;
    let pads = if consumer_pads { vec![attr_ints("pads", &[1, 1, 1, 1])] } else { vec![] };
    let kc = if consumer_pads { 3 } else { 1 };
    mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("BatchNormalization", "bn", &["a", "g", "b", "mu", "var"], &["n"], vec![attr_f("epsilon", 1e-5)]),
            nd("Relu", "r", &["n"], &["rn"], vec![]),
            nd("Conv", "C", &["rn", "wc"], &["y"], pads),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 0.01, 1., 1.], 1),
            tensor::new_f32("g", &[c], &[1.0, 2.0, 0.5, 1.5, 1.0, 1.0]),
            tensor::new_f32("b", &[c], &[0.5, 0.8, -0.3, 0.6, 0.2, 0.1]),
            tensor::new_f32("mu", &[c], &[0.1, -0.2, 0.0, 0.3, 0.0, 0.1]),
            tensor::new_f32("var", &[c], &[1.0, 0.5, 2.0, 1.0, 1.0, 1.0]),
            w("wc", &[2, 6, kc, kc], &ones(2), 2),
        ],
        &X4,
        &["y"],
    )
}

#[test]
fn bn_shift_of_removed_channels_is_folded_into_the_next_bias() {
    let m = bn_model(false);
    let o = prove_x(&m, &X4, &no_floor());
    let g = group(&o.result, "A");
    assert_eq!(g.kept, 4);
    assert!(g.notes.iter().any(|n| n.contains("folded into the bias of 'C'")), "{:?}", g.notes);
    let c = node(&o.result.pruned, "C");
    assert_eq!(c.input.len(), 3, "a bias was created for C");
    // The removed channels had tiny weights: with the constant folded, the pruned model stays
    // close to the dense one (without it the error would be ~ relu(beta') · ΣW).
    let d = dense_vs_pruned(&o, &X4);
    assert!(d < 0.05, "dense vs pruned {d}");
}

#[test]
fn bn_shift_into_a_zero_padded_conv_is_folded_in_the_interior() {
    let m = bn_model(true);
    let o = prove_x(&m, &X4, &no_floor());
    let g = group(&o.result, "A");
    // Channels 1 and 3 emit relu(beta') > 0 into a zero-padded conv: folded into C's bias (exact
    // in the interior, the border difference is pruning error), so they are removed, and the
    // masked model (checked by `prove`) computes exactly what the pruned one does.
    assert_eq!(g.kept, 4);
    assert!(g.notes.iter().any(|n| n.contains("folded into the bias of 'C' (exact in the interior")), "{:?}", g.notes);
    let d = dense_vs_pruned(&o, &X4);
    assert!(d < 0.5, "dense vs pruned {d}");
}

/// Dead units (producer rows of zeros) emit their bias whatever the input: it is folded into the
/// consumer's bias, whether the exporter wrote it into the Conv / Gemm or as an Add, so removing
/// them changes nothing. Live units' biases are zeroed with their weights, as before; a dead unit
/// whose bias cannot be folded (here: multiplied by a spatial map) is kept.
/// x → Conv E (expansion, 6 × 3 × 1 × 1, rows scaled by `we`, bias `be`) → Relu → depthwise
/// Conv D (6 × 1 × 3 × 3, rows scaled by `wd`, bias `bd`, zero-padded by 1 when `padded`) → Relu
/// → Conv P (projection to 2) → y: a MobileNet block for the dead-row tests.
fn depthwise_block(we: &[f32], be: &[f32], wd: &[f32], bd: &[f32], padded: bool) -> ModelProto {
    let mut dw = vec![attr_i("group", 6)];
    if padded {
        dw.push(attr_ints("pads", &[1, 1, 1, 1]));
    }
    mk_model(
        vec![
            nd("Conv", "E", &["x", "we", "be"], &["e"], vec![]),
            nd("Relu", "re", &["e"], &["r"], vec![]),
            nd("Conv", "D", &["r", "wd", "bd"], &["d"], dw),
            nd("Relu", "rd", &["d"], &["rr"], vec![]),
            nd("Conv", "P", &["rr", "wp", "bp"], &["y"], vec![]),
        ],
        vec![
            w("we", &[6, 3, 1, 1], we, 1),
            tensor::new_f32("be", &[6], be),
            w("wd", &[6, 1, 3, 3], wd, 2),
            tensor::new_f32("bd", &[6], bd),
            w("wp", &[2, 6, 1, 1], &ones(2), 3),
            tensor::new_f32("bp", &[2], &[0.3, -0.3]),
        ],
        &X4,
        &["y"],
    )
}

/// MobileNet block: live expansion rows, then a depthwise filter that is all zero for channels
/// 1 and 4: those channels emit relu(bias) whatever the input. Deadness is per row, not per
/// class: the classes score 0, go first, and the depthwise bias is folded into the projection.
/// Then dead expansion rows into live depthwise filters.
#[test]
fn dead_rows_inside_a_depthwise_block_are_removed_exactly() {
    let opts = StructOptions { beta: 1.2, ..no_floor() };
    let m = depthwise_block(
        &ones(6),
        &[0.1, 0.2, 0.1, -0.1, 0.3, 0.2],
        &[1., 0., 1., 1., 0., 1.],
        &[0.1, 0.8, -0.2, 0.4, 0.6, 0.05],
        true,
    );
    let o = prove_x(&m, &X4, &opts);
    let g = group(&o.result, "E");
    assert_eq!(g.removed, vec![1, 4], "{g:?}");
    assert!(g.notes.iter().any(|n| n.contains("2 removed unit(s) are dead")), "{:?}", g.notes);
    assert!(g.notes.iter().any(|n| n.contains("folded into the bias of 'P'")), "{:?}", g.notes);
    let d = dense_vs_pruned(&o, &X4);
    assert!(d < 1e-5, "dense vs pruned {d} (dropping relu(0.8), relu(0.6) gave ~0.1)");

    // The other way round: dead expansion rows 1 and 4 (bias kept: relu(0.5), relu(0.7)) into
    // live, weaker depthwise filters (unpadded, so exact everywhere): those channels output
    // v·Σw + b whatever the input. The masked model keeps those depthwise rows and P folds the
    // constant; dropping it cost 0.076.
    let opts = StructOptions { beta: 1.0, ..no_floor() };
    let m = depthwise_block(
        &[1., 0., 1., 1., 0., 1.],
        &[0.1, 0.5, 0.1, -0.1, 0.7, 0.2],
        &[1., 0.3, 1., 1., 0.3, 1.],
        &[0.1, 0.2, -0.2, 0.4, -0.1, 0.05],
        false,
    );
    let o = prove_x(&m, &X4, &opts);
    let g = group(&o.result, "E");
    assert_eq!(g.removed, vec![1, 4], "{g:?}");
    let d = dense_vs_pruned(&o, &X4);
    assert!(d < 1e-5, "dense vs pruned {d}");
}

/// Found by a helper: a dead expansion row's constant through a live depthwise filter that the
/// activation turns into 0 in the interior but not at the zero-padded corners. The masked model
/// keeps that depthwise row, so the consumer's input slice must be zeroed there even though the
/// constant is 0 (masked-equivalence failed, 3e-3, and the default run wrote nothing).
/// And: dead rows under a LayerNormalization do not make the layer's live units "dead" (every
/// unit's score was zeroed: "all scores are zero", kept whole; or 13 live units cut as dead).
#[test]
fn dead_rows_behind_a_zeroing_activation_or_a_layer_norm_are_not_misread() {
    // Channel 1: Σw ≈ −1.8, so relu(1·Σw + 1) is 0 inside and > 0 at the corners.
    let m = depthwise_block(
        &[1., 0., 1., 1., 1., 1.],
        &[0.1, 1.0, 0.1, -0.1, 0.3, 0.2],
        &[1., -0.2, 1., 1., 1., 1.],
        &[0.1, 1.0, -0.2, 0.4, 0.3, 0.05],
        true,
    );
    let o = prove_x(&m, &X4, &StructOptions { beta: 1.0, ..no_floor() });
    assert_eq!(group(&o.result, "E").removed, vec![1], "{:?}", group(&o.result, "E"));

    let x3: [i64; 3] = [1, 4, 8];
    let mut cols = vec![1f32; 16];
    cols[3] = 0.0;
    cols[9] = 0.0;
    let w1: Vec<f32> = {
        let t = w("t", &[16, 8], &cols, 4);
        let v = tensor::read_f32(&t).unwrap();
        (0..8 * 16).map(|i| v[(i % 16) * 8 + i / 16]).collect()
    };
    let ln = mk_model(
        vec![
            nd("MatMul", "A", &["x", "w1"], &["a"], vec![]),
            nd("Add", "ab", &["a", "b1"], &["h"], vec![]),
            nd("LayerNormalization", "ln", &["h", "g", "bt"], &["n"], vec![attr_i("axis", -1)]),
            nd("MatMul", "B", &["n", "w2"], &["y"], vec![]),
        ],
        vec![
            tensor::new_f32("w1", &[8, 16], &w1),
            tensor::new_f32("b1", &[16], &(0..16).map(|i| 0.1 * i as f32 - 0.5).collect::<Vec<_>>()),
            tensor::new_f32("g", &[16], &[1.0; 16]),
            tensor::new_f32("bt", &[16], &[0.0; 16]),
            w("w2", &[16, 4], &ones(16), 5),
        ],
        &x3,
        &["y"],
    );
    let o = prove_x(&ln, &x3, &StructOptions { beta: 1.0, ..no_floor() });
    let g = group(&o.result, "A");
    assert!(!g.notes.iter().any(|n| n.contains("all scores are zero") || n.contains("are dead")), "{g:?}");
    assert!(g.kept < 16 && g.removed.contains(&3) && g.removed.contains(&9), "{g:?}");
}

#[test]
fn dead_units_are_removed_with_their_bias_folded() {
    // β 1.2: the four live rows' norms vary ±20 %, so N_eff is a little under 4.
    let opts = StructOptions { beta: 1.2, ..no_floor() };
    let ba = tensor::new_f32("ba", &[6], &[0.1, 0.7, -0.2, 0.4, 0.3, 0.05]);
    let dead_rows = [1., 0., 1., 0., 1., 1.];
    let conv = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa", "ba"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Conv", "C", &["ra", "wc", "bc"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &dead_rows, 1),
            ba.clone(),
            w("wc", &[2, 6, 1, 1], &ones(2), 2),
            tensor::new_f32("bc", &[2], &[0.3, -0.3]),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&conv, &X4, &opts);
    let g = group(&o.result, "A");
    assert_eq!(g.kept, 4);
    assert!(g.notes.iter().any(|n| n.contains("folded into the bias of 'C'")), "{:?}", g.notes);
    assert_eq!(tensor::read_f32(weight(&o.result.pruned, "ba")).unwrap(), vec![0.1, -0.2, 0.3, 0.05]);
    let d = dense_vs_pruned(&o, &X4);
    assert!(d < 1e-5, "dense vs pruned {d} (zeroing relu(0.7), relu(0.4) gave ~0.2)");

    let x2: [i64; 2] = [3, 4];
    let mut gemm = mk_model(
        vec![
            nd("Gemm", "A", &["x", "wa", "ba"], &["a"], vec![attr_i("transB", 1)]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Gemm", "B", &["ra", "wb", "bb"], &["y"], vec![attr_i("transB", 1)]),
        ],
        vec![
            w("wa", &[6, 4], &dead_rows, 1),
            ba.clone(),
            w("wb", &[3, 6], &ones(3), 2),
            tensor::new_f32("bb", &[3], &[0.0; 3]),
        ],
        &x2,
        &["y"],
    );
    gemm.graph.as_mut().unwrap().input = vec![vi("x", Some(&x2))];
    let o = prove_x(&gemm, &x2, &opts);
    assert_eq!(group(&o.result, "A").kept, 4);
    let d = dense_vs_pruned(&o, &x2);
    assert!(d < 1e-5, "dense vs pruned {d}");

    // A spatial mask turns the dead units' constant into a map: not foldable, so they are kept
    // (removing them would drop it: 0.2 relative L2), with the reason.
    let gated = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa", "ba"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Mul", "gm", &["ra", "gate"], &["ga"], vec![]),
            nd("Conv", "C", &["ga", "wc", "bc"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &dead_rows, 1),
            ba,
            w("gate", &[1, 1, 5, 5], &[1.0], 3),
            w("wc", &[2, 6, 1, 1], &ones(2), 2),
            tensor::new_f32("bc", &[2], &[0.3, -0.3]),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&gated, &X4, &opts);
    let g = group(&o.result, "A");
    assert_eq!(g.kept, 6, "{g:?}");
    assert!(
        g.notes
            .iter()
            .any(|n| n.contains("2 unit(s) kept because it is dead (near-zero weights) and its bias cannot be folded")),
        "{:?}",
        g.notes
    );
}

/// A MatMul whose input has no known rank (the output of an op of another domain, of a function
/// of the model) is a group in the table, blocked with the reason; it used to be absent.
#[test]
fn a_matmul_on_an_input_of_unknown_rank_is_listed_blocked() {
    let x2: [i64; 2] = [3, 4];
    let mut custom = nd("Foo", "foo", &["x"], &["r1"], vec![]);
    custom.domain = "my.domain".into();
    let mut m = mk_model(
        vec![
            custom,
            nd("MatMul", "mm1", &["r1", "w1"], &["h"], vec![]),
            nd("Relu", "r", &["h"], &["rh"], vec![]),
            nd("MatMul", "mm2", &["rh", "w2"], &["y"], vec![]),
        ],
        vec![w("w1", &[4, 8], &ones(4), 1), w("w2", &[8, 2], &ones(8), 2)],
        &x2,
        &["y"],
    );
    m.graph.as_mut().unwrap().input = vec![vi("x", Some(&x2))];
    let r = prune_channels(&m, &no_floor()).unwrap();
    let g = group(&r, "mm1");
    let why = g.blocked.as_deref().unwrap_or("");
    assert!(why.contains("the rank of its input 'r1' is unknown"), "{g:?}");
    assert_eq!(g.kept, g.n);
    // scikit-learn's Scaler keeps its input's shape: the MLP after it is followed.
    let gr = m.graph.as_mut().unwrap();
    gr.node[0].op_type = "Scaler".into();
    gr.node[0].domain = "ai.onnx.ml".into();
    let r = prune_channels(&m, &no_floor()).unwrap();
    assert_eq!(group(&r, "mm1").blocked, None, "{:?}", group(&r, "mm1"));
}

/// Opset 18 moved ReduceMean's axes to an input; an unoptimised dynamo export computes it as
/// `Reshape(Constant [2, 3], Constant value_ints [-1])`. That is a constant: the mean is over H
/// and W and the channels prune (it was blocked as "reduces every axis"). Axes that really are
/// computed block with that reason.
#[test]
fn reduce_axes_from_a_reshaped_constant_are_read() {
    let model = |axes_node: NodeProto| {
        let mut m = mk_model(
            vec![
                nd("Conv", "A", &["x", "wa", "ba"], &["a"], vec![]),
                nd("Relu", "r", &["a"], &["ra"], vec![]),
                const_node("axes_raw", tensor::new_i64("axes_raw_t", &[2], &[2, 3])),
                axes_node,
                nd("Reshape", "reshape_axes", &["axes_raw", "minus_one"], &["axes"], vec![]),
                nd("ReduceMean", "mean", &["ra", "axes"], &["m"], vec![attr_i("keepdims", 0)]),
                nd("Gemm", "B", &["m", "wb", "bb"], &["y"], vec![attr_i("transB", 1)]),
            ],
            vec![
                w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 0.01, 1., 1.], 1),
                tensor::new_f32("ba", &[6], &[0.1; 6]),
                w("wb", &[2, 6], &ones(2), 2),
                tensor::new_f32("bb", &[2], &[0.0; 2]),
            ],
            &X4,
            &["y"],
        );
        m.opset_import[0].version = 18;
        m.graph.as_mut().unwrap().output = vec![vi("y", Some(&[1, 2]))];
        m
    };
    let minus_one = nd("Constant", "c_minus_one", &[], &["minus_one"], vec![attr_ints("value_ints", &[-1])]);
    let o = prove_x(&model(minus_one), &X4, &no_floor());
    let g = group(&o.result, "A");
    assert_eq!((g.blocked.as_deref(), g.kept), (None, 4), "{g:?}");
    // The same shape read from the input: not a constant, and said so.
    let computed = nd("Shape", "s", &["x"], &["minus_one"], vec![attr_i("start", 0), attr_i("end", 1)]);
    let r = prune_channels(&model(computed), &no_floor()).unwrap();
    let why = group(&r, "A").blocked.clone().unwrap_or_default();
    assert!(why.contains("its axes are computed, not a constant"), "{why}");
}

#[test]
fn sigmoid_and_hardsigmoid_half_is_compensated() {
    let x2: [i64; 2] = [3, 4];
    let m = {
        let mut m = mk_model(
            vec![
                nd("Gemm", "A", &["x", "wa", "ba"], &["a"], vec![attr_i("transB", 1)]),
                nd("Sigmoid", "sig", &["a"], &["s"], vec![]),
                nd("Gemm", "B", &["s", "wb", "bb"], &["y"], vec![attr_i("transB", 1)]),
            ],
            vec![
                w("wa", &[6, 4], &[1., 1., 0.01, 1., 1., 0.01], 1),
                tensor::new_f32("ba", &[6], &[0.1, 0.0, 0.0, -0.1, 0.2, 0.0]),
                w("wb", &[3, 6], &ones(3), 2),
                tensor::new_f32("bb", &[3], &[0.0; 3]),
            ],
            &x2,
            &["y"],
        );
        m.graph.as_mut().unwrap().input = vec![vi("x", Some(&x2))];
        m
    };
    let o = prove_x(&m, &x2, &no_floor());
    let g = group(&o.result, "A");
    assert_eq!(g.kept, 4);
    assert!(g.notes.iter().any(|n| n.contains("bias of 'B'")), "{:?}", g.notes);
    assert!(dense_vs_pruned(&o, &x2) < 0.05);

    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("HardSigmoid", "hs", &["a"], &["h"], vec![attr_f("alpha", 0.2), attr_f("beta", 0.5)]),
            nd("Conv", "B", &["h", "wb", "bb"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &[1., 1., 0.01, 1., 1., 0.01], 1),
            w("wb", &[2, 6, 1, 1], &ones(2), 2),
            tensor::new_f32("bb", &[2], &[0.3, -0.3]),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &no_floor());
    assert!(group(&o.result, "A").notes.iter().any(|n| n.contains("bias of 'B'")));
    assert_ne!(tensor::read_f32(weight(&o.result.pruned, "bb")).unwrap(), vec![0.3, -0.3], "0.5 · ΣW folded in");
    assert!(dense_vs_pruned(&o, &X4) < 0.05);
}

#[test]
fn shared_initializers() {
    // (one bias initializer used by two convs: a_bias_shared_by_two_layers_does_not_tie_their_channels)

    // one weight used by a conv on the graph input and by a conv on a pruned tensor: slicing its
    // input axis would break the first conv, so the group is blocked
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "w"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Conv", "B", &["ra", "w"], &["y"], vec![]),
        ],
        vec![w("w", &[3, 3, 1, 1], &[1., 0.01, 1.], 1)],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &no_floor());
    let g = group(&o.result, "A");
    assert!(g.blocked.as_deref().unwrap().contains("weight 'w' is also used by Conv node 'A'"), "{g:?}");
    assert_eq!(o.params.0, o.params.1);
}

fn const_node(out: &str, t: TensorProto) -> NodeProto {
    let mut a = AttributeProto::new();
    a.name = "value".into();
    a.type_ = protobuf::EnumOrUnknown::from_i32(4);
    a.t = Some(t).into();
    nd("Constant", &format!("const_{out}"), &[], &[out], vec![a])
}

#[test]
fn constant_node_weights_and_reshaped_bias() {
    // Paddle style: weights in Constant nodes, the bias Reshape'd to [1, C, 1, 1] and Added
    let mut shape = TensorProto::new();
    shape.data_type = 7;
    shape.dims = vec![4];
    shape.int64_data = vec![1, -1, 1, 1];
    let m = mk_model(
        vec![
            const_node("wa", w("", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 1., 0.01], 1)),
            const_node("ba", tensor::new_f32("", &[6], &[0.5, 0.4, 0.3, 0.2, 0.1, 0.6])),
            const_node("shape", shape),
            const_node("wb", w("", &[2, 6, 1, 1], &ones(2), 2)),
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Reshape", "rb", &["ba", "shape"], &["ba4"], vec![]),
            nd("Add", "add", &["a", "ba4"], &["ab"], vec![]),
            nd("Relu", "r", &["ab"], &["ra"], vec![]),
            nd("Conv", "B", &["ra", "wb"], &["y"], vec![]),
        ],
        vec![],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &no_floor());
    let p = &o.result.pruned;
    assert_eq!(weight(p, "wa").dims, vec![4, 3, 1, 1]);
    assert!(
        p.graph.as_ref().unwrap().node.iter().any(|n| n.op_type == "Constant" && n.output[0] == "wa"),
        "edited in place"
    );
    assert_eq!(weight(p, "ba4").dims, vec![1, 4, 1, 1], "the reshaped bias got its own sliced copy");
    assert!(
        group(&o.result, "A").notes.iter().any(|n| n.contains("bias of 'B'")),
        "relu(bias) of removed channels folded"
    );
    assert!(dense_vs_pruned(&o, &X4) < 0.05);
}

#[test]
fn unknown_ops_and_subgraph_captures_are_barriers() {
    let m = mk_model(
        vec![nd("Conv", "A", &["x", "wa"], &["a"], vec![]), nd("Relu", "r", &["a"], &["ra"], vec![]), {
            let mut n = nd("Foo", "foo", &["ra"], &["y"], vec![]);
            n.domain = "com.example".into();
            n
        }],
        vec![w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 1., 0.01], 1)],
        &X4,
        &["y"],
    );
    let r = prune_channels(&m, &no_floor()).unwrap();
    assert_eq!(r.groups[0].blocked.as_deref(), Some("blocked by com.example:Foo node 'foo'"));
    assert_eq!(params(&r.pruned), params(&m));

    // an If branch reads 'ra' from the outer scope
    let mut branch = GraphProto::new();
    branch.name = "then".into();
    branch.node = vec![nd("Identity", "id", &["ra"], &["t"], vec![])];
    branch.output = vec![vi("t", None)];
    let mut cond = TensorProto::new();
    cond.name = "cond".into();
    cond.data_type = 9;
    cond.dims = vec![];
    cond.raw_data = vec![1];
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd(
                "If",
                "if",
                &["cond"],
                &["y"],
                vec![attr_g("then_branch", branch.clone()), attr_g("else_branch", branch)],
            ),
        ],
        vec![w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 1., 0.01], 1), cond],
        &X4,
        &["y"],
    );
    let r = prune_channels(&m, &no_floor()).unwrap();
    assert!(r.groups[0].blocked.as_deref().unwrap().contains("'ra' is read inside a subgraph"), "{:?}", r.groups);
}

#[test]
fn lstm_input_units_prune_when_they_emit_zeros() {
    let x: [i64; 3] = [3, 1, 4];
    let m = mk_model(
        vec![
            nd("MatMul", "proj", &["x", "wp"], &["p"], vec![]),
            nd("Relu", "r", &["p"], &["rp"], vec![]),
            nd("LSTM", "lstm", &["rp", "W", "R"], &["y"], vec![attr_i("hidden_size", 5)]),
        ],
        vec![w("wp", &[4, 6], &[1., 1., 1., 0.01], 1), w("W", &[1, 20, 6], &[1.], 2), w("R", &[1, 20, 5], &[1.], 3)],
        &x,
        &["y"],
    );
    let mut m = m;
    set_out_rank(&mut m, 4);
    let o = prove_x(&m, &x, &no_floor());
    // Relu(0) = 0 enters the LSTM's input: exact, no fold needed.
    assert_eq!(group(&o.result, "proj").blocked, None, "{}", summary(&o.result.groups));
    assert_eq!(group(&o.result, "lstm").blocked.as_deref(), Some("reaches graph output 'y'"));
}

#[test]
fn non_finite_weights_are_an_error_naming_the_tensor() {
    let mut wa = w("wa", &[4, 3, 1, 1], &ones(4), 1);
    let mut v = tensor::read_f32(&wa).unwrap();
    v[5] = f32::NAN;
    wa = tensor::new_f32("wa", &[4, 3, 1, 1], &v);
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Conv", "B", &["ra", "wb"], &["y"], vec![]),
        ],
        vec![wa, w("wb", &[2, 4, 1, 1], &ones(2), 2)],
        &X4,
        &["y"],
    );
    let e = prune_channels(&m, &no_floor()).err().expect("NaN must be an error");
    assert!(format!("{e:#}").contains("'wa'"), "{e:#}");
    assert!(prune_channels(&m, &StructOptions { beta: 0.0, ..no_floor() }).is_err());
}

#[test]
fn reshape_target_built_from_shape_chain() {
    // torch: x.view(x.size(0), -1) → Shape → Gather(0) → Unsqueeze → Concat([N], [-1]) → Reshape
    let x: [i64; 4] = [2, 3, 4, 4];
    let int = |name: &str, dims: &[i64], v: &[i64]| {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = 7;
        t.dims = dims.to_vec();
        t.int64_data = v.to_vec();
        t
    };
    let mut m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Shape", "shape", &["ra"], &["s"], vec![]),
            nd("Gather", "g0", &["s", "zero"], &["n"], vec![attr_i("axis", 0)]),
            nd("Unsqueeze", "un", &["n", "axes0"], &["n1"], vec![]),
            nd("Concat", "cat", &["n1", "minus1"], &["target"], vec![attr_i("axis", 0)]),
            nd("Reshape", "flat", &["ra", "target"], &["f"], vec![]),
            nd("Gemm", "fc", &["f", "wf", "bf"], &["y"], vec![attr_i("transB", 1)]),
        ],
        vec![
            w("wa", &[4, 3, 1, 1], &[1., 0.01, 1., 1.], 1),
            int("zero", &[], &[0]),
            int("axes0", &[1], &[0]),
            int("minus1", &[1], &[-1]),
            w("wf", &[3, 64], &ones(3), 2),
            tensor::new_f32("bf", &[3], &[0.; 3]),
        ],
        &x,
        &["y"],
    );
    set_out_rank(&mut m, 2);
    let o = prove_x(&m, &x, &no_floor());
    assert!(group(&o.result, "A").blocked.is_none(), "{}", summary(&o.result.groups));
    assert_eq!(weight(&o.result.pruned, "wf").dims, vec![3, 48]);

    // the same chain reading the channel count (index 1) into something else blocks the group
    let mut m2 = m.clone();
    let g = m2.graph.as_mut().unwrap();
    g.initializer.retain(|t| t.name != "zero");
    g.initializer.push(int("zero", &[], &[1]));
    let r = prune_channels(&m2, &no_floor()).unwrap();
    assert!(r.groups[0].blocked.as_deref().unwrap().contains("channel count"), "{:?}", r.groups[0]);
}

#[test]
fn op_zoo_prelu_pad_pool_instancenorm_resize_convtranspose_reduce() {
    let x: [i64; 4] = [1, 3, 8, 8];
    let int = |name: &str, v: &[i64]| {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = 7;
        t.dims = vec![v.len() as i64];
        t.int64_data = v.to_vec();
        t
    };
    let mut m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa", "ba"], &["a"], vec![]),
            nd("PRelu", "prelu", &["a", "slope"], &["p"], vec![]),
            nd("Pad", "pad", &["p", "pads"], &["pd"], vec![]),
            nd(
                "MaxPool",
                "pool",
                &["pd"],
                &["mp"],
                vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])],
            ),
            nd("InstanceNormalization", "in", &["mp", "in_s", "in_b"], &["i"], vec![]),
            nd("Resize", "up", &["i", "", "scales"], &["u"], vec![]),
            nd("Clip", "clip", &["u", "lo", "hi"], &["c"], vec![]),
            nd("ConvTranspose", "B", &["c", "wb", "bb"], &["b"], vec![attr_ints("strides", &[2, 2])]),
            nd("LeakyRelu", "lrelu", &["b"], &["lb"], vec![attr_f("alpha", 0.1)]),
            nd("ReduceMean", "mean", &["lb"], &["m"], vec![attr_ints("axes", &[2, 3]), attr_i("keepdims", 1)]),
            nd("Flatten", "flat", &["m"], &["f"], vec![]),
            nd("Gemm", "fc", &["f", "wf", "bf"], &["y"], vec![attr_i("transB", 1)]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 0.01, 1.], 1),
            tensor::new_f32("ba", &[6], &[0.1, 0.2, -0.1, 0.0, 0.3, 0.1]),
            tensor::new_f32("slope", &[6, 1, 1], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
            int("pads", &[0, 0, 1, 1, 0, 0, 1, 1]),
            tensor::new_f32("in_s", &[6], &[1.0, 0.5, 2.0, 1.0, 1.5, 1.0]),
            tensor::new_f32("in_b", &[6], &[0.2, 0.0, -0.2, 0.1, 0.0, 0.3]),
            tensor::new_f32("scales", &[4], &[1.0, 1.0, 2.0, 2.0]),
            tensor::new_f32("lo", &[], &[-1.0]),
            tensor::new_f32("hi", &[], &[1.0]),
            w("wb", &[6, 4, 2, 2], &ones(6), 2),
            tensor::new_f32("bb", &[4], &[0.1, -0.1, 0.2, 0.0]),
            w("wf", &[3, 4], &ones(3), 3),
            tensor::new_f32("bf", &[3], &[0.; 3]),
        ],
        &x,
        &["y"],
    );
    set_out_rank(&mut m, 2);
    let o = prove_x(&m, &x, &no_floor());
    let p = &o.result.pruned;
    let a = group(&o.result, "A");
    assert!(a.blocked.is_none() && a.kept == 4, "{a:?}");
    for (name, dims) in [("slope", vec![4, 1, 1]), ("in_s", vec![4]), ("in_b", vec![4])] {
        assert_eq!(weight(p, name).dims, dims, "{name}");
    }
    assert_eq!(weight(p, "wb").dims[0], 4, "ConvTranspose input channels follow A");
    assert_eq!(weight(p, "wf").dims[1], weight(p, "wb").dims[1], "Gemm in-features follow the ConvTranspose outputs");
}

#[test]
fn gemm_with_a_full_bias_matrix() {
    let x2: [i64; 2] = [2, 4];
    let m = mk_model(
        vec![
            nd("Gemm", "A", &["x", "wa", "ca"], &["a"], vec![attr_i("transB", 1)]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Gemm", "B", &["ra", "wb"], &["y"], vec![attr_i("transB", 1)]),
        ],
        vec![
            w("wa", &[6, 4], &[1., 0.01, 1., 1., 1., 0.01], 1),
            w("ca", &[2, 6], &ones(2), 3),
            w("wb", &[3, 6], &ones(3), 2),
        ],
        &x2,
        &["y"],
    );
    let o = prove_x(&m, &x2, &no_floor());
    assert_eq!(weight(&o.result.pruned, "ca").dims, vec![2, 4]);
    assert_eq!(weight(&o.result.pruned, "wb").dims, vec![3, 4]);
}

#[test]
fn the_checks_catch_a_wrong_rewrite() {
    let (dense, npys, inputs) = digits("digits_mlp.onnx", "digits_test_x64.npy");
    let mut r = prune_channels(&dense, &no_floor()).unwrap();
    // swap two input columns of fc2: a classic index-mapping bug
    let g = r.pruned.graph.as_mut().unwrap();
    let t = g.initializer.iter_mut().find(|t| t.name == "fc2.weight").unwrap();
    let (o, i) = (t.dims[0] as usize, t.dims[1] as usize);
    let mut v = tensor::read_f32(t).unwrap();
    for row in 0..o {
        v.swap(row * i, row * i + 1);
    }
    *t = tensor::new_f32("fc2.weight", &[o as i64, i as i64], &v);
    let s = save_all(&dense, &r);
    assert!(tract_check(&s, &inputs).unwrap() > 1e-3);
    let script = root().join("tests/helpers/onnx_check.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(&s.pruned).arg(&s.masked).arg("--input").arg(format!("x={}", npys[0].1.display()));
    if let Ok(out) = cmd.output() {
        if out.status.code() != Some(77) {
            assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
        }
    }
}

/// The floors (on by default): a Conv reading the model input is kept whole, every other group
/// keeps half its width and at least 8 units; both are stated in the notes and lifted by
/// `Floor::OFF` (`--include narrow,stem`).
#[test]
fn floors_keep_the_stem_and_half_of_narrow_groups() {
    let (dense, npys, inputs) = digits("yolo_block.onnx", "digits_test_x1x8x8.npy");
    let low = StructOptions { beta: 0.3, round_to: onnx_emp::prune::RoundTo::Multiple(1), ..Default::default() };
    let on = prune_and_prove(&dense, &low, &npys, &inputs);
    let groups = |o: &Outcome| o.result.groups.iter().filter(|g| g.blocked.is_none()).cloned().collect::<Vec<_>>();
    let stem = |g: &GroupReport| g.notes.iter().any(|n| n.contains("reads the model input"));
    assert_eq!(groups(&on).iter().filter(|g| stem(g)).count(), 1, "{}", summary(&on.result.groups));
    for g in groups(&on) {
        if stem(&g) {
            assert_eq!(g.kept, g.n, "{g:?}");
        } else {
            assert!(g.kept >= g.n.min(8).max(g.n.div_ceil(2)), "{g:?}");
        }
    }
    assert!(groups(&on).iter().any(|g| g.notes.iter().any(|n| n.contains("floor of half the width"))));
    let off = prune_and_prove(&dense, &StructOptions { floor: Floor::OFF, ..low }, &npys, &inputs);
    assert!(groups(&off).iter().all(|g| !stem(g) && g.notes.iter().all(|n| !n.contains("floor"))));
    assert!(groups(&off).iter().any(|g| g.kept < g.n.min(8).max(g.n.div_ceil(2))), "{}", summary(&off.result.groups));
    assert!(off.params.1 < on.params.1);
}

/// The stem floor follows the input through ops whose other operands are parameters, computed
/// or not: `F.pad(x)[..., 1:-1, 1:-1]` exports a Pad whose pads a Concat computes, then a Slice,
/// and the first Conv behind them was cut as if it were no stem (32 → 16 on a trained VGG).
#[test]
fn the_stem_floor_sees_through_a_computed_pad_and_a_slice() {
    let m = mk_model(
        vec![
            nd("Concat", "pads", &["p1", "p2"], &["pads"], vec![attr_i("axis", 0)]),
            nd("Pad", "pad", &["x", "pads"], &["xp"], vec![]),
            nd("Slice", "crop", &["xp", "st", "en", "ax"], &["xc"], vec![]),
            nd("Conv", "A", &["xc", "wa"], &["a"], vec![]),
            nd("Relu", "ra", &["a"], &["a2"], vec![]),
            nd("Conv", "C", &["a2", "wc"], &["y"], vec![]),
        ],
        vec![
            tensor::new_i64("p1", &[4], &[0, 0, 1, 1]),
            tensor::new_i64("p2", &[4], &[0, 0, 1, 1]),
            tensor::new_i64("st", &[2], &[1, 1]),
            tensor::new_i64("en", &[2], &[-1, -1]),
            tensor::new_i64("ax", &[2], &[2, 3]),
            w("wa", &[16, 3, 1, 1], &[1., 0.01, 1., 1., 0.02, 1., 1., 1., 1., 1., 1., 1., 1., 1., 0.01, 1.], 1),
            w("wc", &[2, 16, 1, 1], &[1., 1.], 2),
        ],
        &X4,
        &["y"],
    );
    let floor = Floor { narrow: false, ..Floor::ON };
    let opts =
        StructOptions { beta: 0.7, round_to: onnx_emp::prune::RoundTo::Multiple(1), floor, ..Default::default() };
    let on = prove_x(&m, &X4, &opts);
    let a = group(&on.result, "A");
    assert_eq!(a.kept, a.n, "{}", summary(&on.result.groups));
    assert!(a.notes.iter().any(|n| n.contains("reads the model input")), "{:?}", a.notes);
    let off = prove_x(&m, &X4, &StructOptions { floor: Floor::OFF, ..opts });
    assert!(group(&off.result, "A").kept < 16, "{}", summary(&off.result.groups));
}

/// The bottleneck floor (on by default): in a network whose prunable groups include depthwise
/// convolutions, a group no depthwise Conv carries that a 1×1 conv connects to a depthwise group
/// (MobileNetV2's narrow block outputs) is kept whole and says so; `Floor { bottleneck: false, .. }`
/// (`--include bottleneck`) prunes it. A group no depthwise group touches (the last 1×1 conv,
/// which reads a bottleneck and feeds the classifier) is cut as before, in both scopes; a network
/// without depthwise convolutions is not affected.
#[test]
fn bottleneck_floor_keeps_the_narrow_streams_of_a_depthwise_net() {
    let dense = load(&root().join("models/fmnist_mobilenet.onnx"));
    let opts = StructOptions { beta: 0.8, round_to: onnx_emp::prune::RoundTo::Multiple(1), ..Default::default() };
    let on = prune_channels(&dense, &opts).unwrap();
    let off =
        prune_channels(&dense, &StructOptions { floor: Floor { bottleneck: false, ..Floor::ON }, ..opts.clone() })
            .unwrap();
    let held = |g: &GroupReport| g.notes.iter().any(|n| n.contains("--include bottleneck"));
    let dw = |g: &GroupReport| {
        g.members.iter().any(|m| {
            let n = node(&dense, m);
            n.op_type == "Conv" && graph::attr_i(n, "group").unwrap_or(1) > 1
        })
    };
    let prunable: Vec<&GroupReport> = on.groups.iter().filter(|g| g.blocked.is_none()).collect();
    // the block outputs: 16, 24, 32, 64, 96 wide, each between two depthwise groups
    let streams: Vec<usize> = prunable.iter().filter(|g| held(g)).map(|g| g.n).collect();
    assert_eq!(streams, [16, 24, 32, 64, 96], "{}", summary(&on.groups));
    for g in prunable.iter().filter(|g| held(g)) {
        assert!(!dw(g) && g.kept == g.n, "{g:?}");
    }
    // the depthwise groups are still cut, and so is the last 1x1 conv (320 wide, no depthwise
    // neighbour)
    assert!(prunable.iter().any(|g| dw(g) && g.kept < g.n), "{}", summary(&on.groups));
    let head = group(&on, "/features/features.10/features.10.0/Conv");
    assert!(!held(head) && head.kept < head.n, "{head:?}");
    // lifted: the streams are cut
    assert!(off.groups.iter().all(|g| !held(g)), "{}", summary(&off.groups));
    assert!(off.groups.iter().any(|g| g.blocked.is_none() && !dw(g) && g.n == 64 && g.kept < g.n));
    let params =
        |m: &ModelProto| m.graph.as_ref().unwrap().initializer.iter().map(|t| tensor::numel(t).unwrap()).sum::<usize>();
    assert!(params(&off.pruned) < params(&on.pruned) && params(&on.pruned) < params(&dense));
    // global scope: the same groups are held
    let global = prune_channels(&dense, &StructOptions { scope: StructScope::Global, ..opts.clone() }).unwrap();
    let held_global: Vec<usize> = global.groups.iter().filter(|g| held(g) && g.kept == g.n).map(|g| g.n).collect();
    assert_eq!(held_global, streams, "{}", summary(&global.groups));
    // no depthwise Conv in a ResNet: nothing is held
    let resnet = load(&root().join("models/fmnist_resnet.onnx"));
    let r = prune_channels(&resnet, &opts).unwrap();
    assert!(r.groups.iter().all(|g| !held(g)), "{}", summary(&r.groups));
    assert!(r.groups.iter().any(|g| g.kept < g.n), "{}", summary(&r.groups));
}

/// The bottleneck floor holds groups no wider than a depthwise group they connect to (MobileNet's
/// narrow streams, above), not an expansion beside one: ConvNeXt's block (a depthwise conv on the
/// stream, then a 4× wider MLP back to the stream) keeps its MLP prunable; with the MLP as narrow
/// as the stream, the floor holds it.
#[test]
fn bottleneck_floor_spares_an_expansion_beside_a_depthwise_stream() {
    let x: [i64; 4] = [1, 4, 6, 6];
    let block = |hidden: i64| {
        let scale = |k: i64| (0..k).map(|i| 1.0 + 0.1 * i as f32).collect::<Vec<f32>>();
        let mut m = mk_model(
            vec![
                nd("Conv", "stem", &["x", "wp"], &["p"], vec![]),
                nd("Relu", "pact", &["p"], &["rp"], vec![]),
                nd("Conv", "in", &["rp", "ws"], &["s"], vec![]),
                nd(
                    "Conv",
                    "dw",
                    &["s", "wd"],
                    &["d"],
                    vec![attr_i("group", 16), attr_ints("kernel_shape", &[3, 3]), attr_ints("pads", &[1, 1, 1, 1])],
                ),
                nd("Conv", "up", &["d", "wu"], &["u"], vec![]),
                nd("Relu", "act", &["u"], &["ru"], vec![]),
                nd("Conv", "down", &["ru", "wn"], &["n"], vec![]),
                nd("Add", "res", &["s", "n"], &["r"], vec![]),
                nd("Conv", "head", &["r", "wh"], &["y"], vec![]),
            ],
            vec![
                w("wp", &[8, 4, 1, 1], &scale(8), 6),
                w("ws", &[16, 8, 1, 1], &scale(16), 1),
                w("wd", &[16, 1, 3, 3], &scale(16), 2),
                w("wu", &[hidden, 16, 1, 1], &scale(hidden), 3),
                w("wn", &[16, hidden, 1, 1], &scale(16), 4),
                w("wh", &[3, 16, 1, 1], &ones(3), 5),
            ],
            &x,
            &["y"],
        );
        set_out_rank(&mut m, 4);
        m
    };
    let opts = StructOptions { beta: 0.7, round_to: onnx_emp::prune::RoundTo::Multiple(1), ..Default::default() };
    let held = |g: &GroupReport| g.notes.iter().any(|n| n.contains("--include bottleneck"));
    let wide = prove_x(&block(64), &x, &opts);
    let up = group(&wide.result, "up");
    assert!(!held(up) && up.kept < up.n, "{}", summary(&wide.result.groups));
    let narrow = prove_x(&block(16), &x, &opts);
    let up = group(&narrow.result, "up");
    assert!(held(up) && up.kept == up.n, "{}", summary(&narrow.result.groups));
}

/// `--round-to auto`: groups of 32 or more channels (a multiple of 16) keep the multiple of 16
/// nearest to EMP's count, which may be below it; narrower groups round up to 8; an explicit
/// `--round-to 16` always rounds up.
#[test]
fn auto_aligns_wide_groups_to_the_nearest_16() {
    use onnx_emp::prune::RoundTo;
    let dense = load(&root().join("models/fmnist_resnet.onnx"));
    for scope in [StructScope::Layer, StructScope::Global] {
        let opts = |round_to| StructOptions { beta: 0.8, scope, round_to, ..Default::default() };
        let raw = prune_channels(&dense, &opts(RoundTo::Multiple(1))).unwrap();
        let auto = prune_channels(&dense, &opts(RoundTo::Auto)).unwrap();
        let up16 = prune_channels(&dense, &opts(RoundTo::Multiple(16))).unwrap();
        let mut rounded_down = 0;
        for ((r, a), u) in raw.groups.iter().zip(&auto.groups).zip(&up16.groups) {
            assert_eq!((&r.id, r.n), (&a.id, a.n));
            if r.blocked.is_some() || r.kind != "channels" {
                continue;
            }
            assert!(u.kept >= r.kept && (u.kept % 16 == 0 || u.kept == u.n), "{u:?} vs {r:?}");
            if a.n >= 32 && a.n % 16 == 0 {
                assert!(a.kept % 16 == 0 && a.kept.abs_diff(r.kept) <= 8, "{a:?} vs {r:?}");
                rounded_down += usize::from(a.kept < r.kept);
            } else {
                assert!(a.kept >= r.kept && (a.kept % 8 == 0 || a.kept == a.n), "{a:?} vs {r:?}");
            }
        }
        // EMP keeps 100-101 of the 128-wide groups: 96, not 104 or 112
        assert!(rounded_down > 0, "{scope:?}: {}", summary(&auto.groups));
        let kept = |p: &StructuralResult| p.groups.iter().map(|g| g.kept).sum::<usize>();
        assert!(kept(&auto) < kept(&up16), "{scope:?}");
    }
}
