//! `--structured channels` through normalisations in every spelling: LayerNormalization (in
//! tests/channels/ and the zoo), ONNX's RMSNormalization and onnxruntime's
//! SimplifiedLayerNormalization, and both spelled out in primitive ops (a ReduceMean over the units,
//! the Sub, Mul or Div that normalises them by it). Each rewrite is proven (pruned == masked in
//! tract, and in onnxruntime with the checker where it knows the ops).

use onnx_emp::model::tensor;
use onnx_emp::prune::channels::prune_channels;
use onnx_emp::prune::{Floor, RoundTo, StructOptions, StructuralResult};
use onnx_protobuf::ModelProto;

#[path = "common/prove.rs"]
mod prove;
use prove::*;
#[path = "common/build.rs"]
mod build;
use build::*;

fn kept(r: &StructuralResult) -> Vec<(String, usize, usize, bool)> {
    r.groups.iter().map(|g| (g.id.clone(), g.kept, g.n, g.blocked.is_some())).collect()
}

/// The trained digits transformer (97.5 %) and the same model with its five LayerNormalizations
/// spelled out as torch.onnx below opset 17 writes them (`models/decompose_norms.py`): the same
/// groups keep the same units, the residual stream through ten ReduceMeans, and both rewrites are
/// proven.
#[test]
fn a_trained_layernorm_spelled_out_prunes_as_the_op_does() {
    let dir = root().join("models");
    let x = dir.join("digits_test_x8x8.npy");
    let (npys, inputs) = (vec![("x".to_string(), x.clone())], vec![npy(&x)]);
    let opts = StructOptions { beta: 0.8, round_to: RoundTo::Multiple(1), ..Default::default() };
    let op = prune_and_prove(&load(&dir.join("digits_transformer.onnx")), &opts, &npys, &inputs);
    let spelled = prune_and_prove(&load(&dir.join("digits_transformer_decomposed.onnx")), &opts, &npys, &inputs);
    assert_eq!(kept(&op.result), kept(&spelled.result));
    let stream = spelled.result.groups.iter().find(|g| g.id == "/embed/MatMul").unwrap();
    assert!(stream.blocked.is_none() && stream.kept < stream.n, "{stream:?}");
    let means = stream.members.iter().filter(|m| m.contains("LayerNormalization/ReduceMean")).count();
    assert_eq!(means, 10, "{:?}", stream.members);
    assert!(stream.notes.iter().any(|n| n.contains("normalisation")), "{:?}", stream.notes);
    // (the spelled-out model has two more scalars per LayerNorm: the exponent and ε)
    assert_eq!(op.params.0 - op.params.1, spelled.params.0 - spelled.params.1);
}

/// onnxruntime's SimplifiedLayerNormalization (its transformer optimizer's RMSNorm, in the ONNX
/// domain) prunes as RMSNormalization does: the zoo's RMSNorm model with its second norm renamed.
/// The checker does not know the op, so the proof is tract's.
#[test]
fn simplified_layer_normalization_prunes_as_rms_normalization() {
    let mut m = load(&root().join("models/zoo/zoo_rmsnorm_ops.onnx"));
    let g = m.graph.as_mut().unwrap();
    let n = g.node.iter_mut().find(|n| n.name == "rms2").unwrap();
    n.op_type = "SimplifiedLayerNormalization".into();
    let opts = StructOptions { beta: 0.7, floor: Floor::OFF, round_to: RoundTo::Multiple(1), ..Default::default() };
    let r = prune_channels(&m, &opts).unwrap();
    let stream = r.groups.iter().find(|g| g.id == "h0.matmul").unwrap();
    assert!(stream.blocked.is_none() && stream.kept < stream.n, "{stream:?}");
    assert!(stream.members.iter().any(|m| m == "rms2"), "{:?}", stream.members);
    let diff = onnx_emp::diff::graph_diff(&m, &r.pruned);
    insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("zoo_rmsnorm_ops_simplified", diff);
    });
    let s = save_all(&m, &r);
    let x = vec![Input::F32(vec![2, 6, 12], randn(2 * 6 * 12, 5))];
    let err = tract_check(&s, &x).expect("tract runs SimplifiedLayerNormalization");
    assert!(err <= TOL, "masked vs pruned {err:e}");
}

/// A Conv's channels centred by their own mean or offset by their max (`a − mean_c(a)`,
/// `a − max_c(a)`, a ReduceMean / ReduceMax over exactly the channel axis) prune, proven; a mean
/// over the channels and the spatial axes together still blocks.
#[test]
fn a_mean_or_max_over_the_units_prunes_a_mean_over_more_axes_blocks() {
    let x: [i64; 4] = [1, 3, 6, 6];
    let model = |op: &str, axes: &[i64]| -> ModelProto {
        let mut m = mk_model(
            vec![
                nd("Conv", "A", &["x", "wa", "ba"], &["a"], vec![]),
                nd(op, "stat", &["a"], &["m"], vec![attr_ints("axes", axes), attr_i("keepdims", 1)]),
                nd("Sub", "centre", &["a", "m"], &["c"], vec![]),
                nd("Relu", "relu", &["c"], &["r"], vec![]),
                nd("Conv", "B", &["r", "wb", "bb"], &["y"], vec![]),
            ],
            vec![
                w("wa", &[8, 3, 1, 1], &[1., 0.01, 1., 1., 0.02, 1., 0.5, 1.], 1),
                tensor::new_f32("ba", &[8], &[0.1, 0.2, -0.1, 0.0, 0.3, 0.1, 0.0, -0.2]),
                w("wb", &[4, 8, 1, 1], &ones(4), 2),
                tensor::new_f32("bb", &[4], &[0.1, -0.1, 0.2, 0.0]),
            ],
            &x,
            &["y"],
        );
        let g = m.graph.as_mut().unwrap();
        g.value_info.push(vi("m", Some(&[1, 1, 6, 6])));
        m
    };
    let opts = StructOptions { beta: 0.7, floor: Floor::OFF, round_to: RoundTo::Multiple(1), ..Default::default() };
    for op in ["ReduceMean", "ReduceMax"] {
        let o = prove_x(&model(op, &[1]), &x, &opts);
        let a = o.result.groups.iter().find(|g| g.id == "A").unwrap();
        assert!(a.blocked.is_none() && a.kept < a.n, "{op}: {a:?}");
    }
    let r = prune_channels(&model("ReduceMean", &[1, 2, 3]), &opts).unwrap();
    let a = r.groups.iter().find(|g| g.id == "A").unwrap();
    let why = a.blocked.as_deref().unwrap_or_default();
    assert!(why.contains("blocked by ReduceMean node 'stat'"), "{a:?}");
}

/// onnxruntime's transformer-optimised BERT (`models/bert_ms_attention.onnx`: com.microsoft
/// Attention, SkipLayerNormalization, BiasGelu; LayerNorm parameters and biases deduplicated
/// between layers): the residual stream prunes through every SkipLayerNormalization and both
/// fused Attentions (whose packed QKV weight rows are sliced). tract cannot run com.microsoft
/// Attention, so the proof is onnxruntime's (pruned == masked, with the checker).
#[test]
fn an_onnxruntime_optimised_bert_prunes_its_residual_stream() {
    let p = root().join("models/bert_ms_attention.onnx");
    let dense = load(&p);
    let opts = StructOptions { beta: 0.7, round_to: RoundTo::Multiple(1), floor: Floor::OFF, ..Default::default() };
    let r = prune_channels(&dense, &opts).unwrap();
    let stream = r.groups.iter().find(|g| g.members.iter().any(|m| m == "SkipLayerNorm_AddBias_0")).unwrap();
    assert!(stream.blocked.is_none() && stream.kept < stream.n, "{stream:?}");
    for m in ["SkipLayerNorm_AddBias_3", "/m/bert/encoder/layer.1/attention/Attention", "/m/bert/pooler/dense/Gemm"] {
        assert!(stream.members.iter().any(|x| x == m), "{m} not in {:?}", stream.members);
    }
    let ffn = r.groups.iter().filter(|g| g.id.ends_with("intermediate/dense/MatMul"));
    assert!(ffn.clone().count() == 2 && ffn.into_iter().all(|g| g.blocked.is_none() && g.kept < g.n));
    assert!(params(&r.pruned) < params(&dense));
    if let Some(e) = ort_masked(&r) {
        eprintln!("bert_ms_attention stream {}/{}: onnxruntime masked vs pruned {e:.2e}", stream.kept, stream.n);
        assert!(e <= TOL, "masked vs pruned {e:e}");
    }
}

/// Pruned vs masked in onnxruntime, with the checker (`tests/helpers/ort_masked.py`); None when
/// python3, onnx or onnxruntime is missing.
fn ort_masked(r: &StructuralResult) -> Option<f64> {
    let dir = tempfile::tempdir().unwrap();
    let (mp, pp) = (dir.path().join("masked.onnx"), dir.path().join("pruned.onnx"));
    let save = onnx_emp::model::io::SaveOptions::default();
    onnx_emp::model::io::save(r.masked().clone(), &mp, &save).unwrap();
    onnx_emp::model::io::save(r.pruned.clone(), &pp, &save).unwrap();
    let helper = root().join("tests/helpers/ort_masked.py");
    let out = match std::process::Command::new("python3").arg(&helper).arg(&mp).arg(&pp).output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipped: cannot run python3 ({e})");
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(77) {
        eprintln!("skipped: {stdout}");
        return None;
    }
    assert!(out.status.success(), "ort check failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    v["max_rel_masked_vs_pruned"].as_f64()
}

/// onnxruntime's SkipSimplifiedLayerNormalization (RMSNorm of input + skip, as its optimizer
/// writes for LLaMA-style models) carries the stream too: the optimised BERT with its
/// SkipLayerNormalizations turned into that op (gamma only). With a bias input it is a barrier.
#[test]
fn skip_simplified_layer_normalization_carries_the_stream() {
    let mut m = load(&root().join("models/bert_ms_attention.onnx"));
    let g = m.graph.as_mut().unwrap();
    for n in g.node.iter_mut().filter(|n| n.op_type == "SkipLayerNormalization") {
        n.op_type = "SkipSimplifiedLayerNormalization".into();
        n.input.truncate(3);
    }
    let opts = StructOptions { beta: 0.7, round_to: RoundTo::Multiple(1), floor: Floor::OFF, ..Default::default() };
    let r = prune_channels(&m, &opts).unwrap();
    let stream = r.groups.iter().find(|g| g.members.iter().any(|m| m == "SkipLayerNorm_AddBias_3")).unwrap();
    assert!(stream.blocked.is_none() && stream.kept < stream.n, "{stream:?}");
    if let Some(e) = ort_masked(&r) {
        assert!(e <= TOL, "masked vs pruned {e:e}");
    }
    // with a bias input: blocked, with the reason
    let g = m.graph.as_mut().unwrap();
    let n = g.node.iter_mut().find(|n| n.name == "SkipLayerNorm_AddBias_1").unwrap();
    n.input.push("m.bert.embeddings.LayerNorm.bias".into());
    let r = prune_channels(&m, &opts).unwrap();
    let stream = r.groups.iter().find(|g| g.id.contains("embeddings")).unwrap();
    assert!(stream.blocked.as_deref().is_some_and(|b| b.contains("bias input")), "{stream:?}");
}

/// A SkipLayerNormalization whose sum output (input + skip) is read keeps the stream whole, both
/// sides of it: the masked model could not restrict that sum to the kept units.
#[test]
fn a_skip_layer_norm_with_its_sum_read_blocks_the_stream() {
    let mut m = load(&root().join("models/bert_ms_attention.onnx"));
    let g = m.graph.as_mut().unwrap();
    let n = g.node.iter_mut().find(|n| n.name == "SkipLayerNorm_AddBias_0").unwrap();
    n.output.extend(["".to_string(), "".to_string(), "sum0".to_string()]);
    let mut out = g.output[0].clone();
    out.name = "sum0".into();
    g.output.push(out);
    let opts = StructOptions { beta: 0.7, round_to: RoundTo::Multiple(1), floor: Floor::OFF, ..Default::default() };
    let r = prune_channels(&m, &opts).unwrap();
    // the skip side: the stream from the embeddings
    let stream = r.groups.iter().find(|g| g.id.contains("embeddings")).expect("the embeddings' group");
    assert!(stream.blocked.as_deref().is_some_and(|b| b.contains("secondary output")), "{stream:?}");
    let o = r.groups.iter().find(|g| g.id.ends_with("layer.0/attention/output/dense/MatMul"));
    let o = o.expect("the attention output projection, the SkipLayerNormalization's input, is a group");
    assert!(o.blocked.as_deref().is_some_and(|b| b.contains("secondary output")), "{o:?}");
}

/// onnxruntime's EmbedLayerNormalization (word and position tables summed and normalised in one
/// op, as its optimizer fuses a BERT's embeddings: `models/bert_ms_embed.onnx`, the optimised BERT
/// with its embeddings fused) is the residual stream's source: its tables' columns, gamma and
/// beta are sliced, the stream prunes through it to the pooler, and the rewrite is proven in
/// onnxruntime (the masked model normalises the op's embedding_sum over the kept units).
#[test]
fn embed_layer_normalization_is_the_streams_source() {
    let dense = load(&root().join("models/bert_ms_embed.onnx"));
    let opts = StructOptions { beta: 0.7, round_to: RoundTo::Multiple(1), floor: Floor::OFF, ..Default::default() };
    let r = prune_channels(&dense, &opts).unwrap();
    let stream = r.groups.iter().find(|g| g.id == "EmbedLayerNormalization_0").expect("the stream starts at the op");
    assert!(stream.blocked.is_none() && stream.kept < stream.n, "{stream:?}");
    for m in ["SkipLayerNorm_AddBias_3", "/m/bert/encoder/layer.0/attention/Attention", "/m/bert/pooler/dense/Gemm"] {
        assert!(stream.members.iter().any(|x| x == m), "{m} not in {:?}", stream.members);
    }
    let g = r.pruned.graph.as_ref().unwrap();
    let eln = g.node.iter().find(|n| n.op_type == "EmbedLayerNormalization").unwrap();
    for slot in [2, 3, 5, 6] {
        let t = g.initializer.iter().find(|t| t.name == eln.input[slot]).unwrap();
        assert_eq!(t.dims.last().copied(), Some(stream.kept as i64), "{}", t.name);
    }
    assert!(params(&r.pruned) < params(&dense));
    let diff = onnx_emp::diff::graph_diff(&dense, &r.pruned);
    insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("bert_ms_embed_channels", diff);
    });
    if let Some(e) = ort_masked(&r) {
        eprintln!("bert_ms_embed stream {}/{}: onnxruntime masked vs pruned {e:.2e}", stream.kept, stream.n);
        assert!(e <= TOL, "masked vs pruned {e:e}");
    }

    // Its embedding_sum output read too (added to its normalised output before the first
    // block): that sum carries the same units, 0 where removed in the masked model.
    let mut m = dense.clone();
    let g = m.graph.as_mut().unwrap();
    let n = g.node.iter_mut().find(|n| n.op_type == "EmbedLayerNormalization").unwrap();
    n.output.push("embedding_sum".into());
    let y = n.output[0].clone();
    for n in g.node.iter_mut().filter(|n| n.op_type == "SkipLayerNormalization" || n.op_type == "Attention") {
        for i in n.input.iter_mut().filter(|i| **i == y) {
            *i = "with_sum".into();
        }
    }
    g.node.insert(2, nd("Add", "add_sum", &[&y, "embedding_sum"], &["with_sum"], vec![]));
    let r = prune_channels(&m, &opts).unwrap();
    let stream = r.groups.iter().find(|g| g.id == "EmbedLayerNormalization_0").unwrap();
    assert!(stream.blocked.is_none() && stream.kept < stream.n, "{stream:?}");
    if let Some(e) = ort_masked(&r) {
        assert!(e <= TOL, "with embedding_sum read: masked vs pruned {e:e}");
    }

    // A table that is not a constant (a graph input) keeps the stream whole, saying why.
    let mut m = dense.clone();
    let g = m.graph.as_mut().unwrap();
    let i = g.initializer.iter().position(|t| t.name.contains("position_plus_token_type")).unwrap();
    let t = g.initializer.remove(i);
    g.input.push(vi(&t.name, Some(&t.dims)));
    let r = prune_channels(&m, &opts).unwrap();
    let stream = r.groups.iter().find(|g| g.id == "EmbedLayerNormalization_0").unwrap();
    assert!(stream.blocked.as_deref().is_some_and(|b| b.contains("not constant float")), "{stream:?}");
}

/// onnxruntime's fused normalisations default to ε = 1e-12 (ONNX's to 1e-5); the masked model
/// must use the op's own default when the attribute is absent. Embeddings scaled to 1e-4 make
/// their variance (~1e-9) far below 1e-5, so the wrong default would fail the proof.
#[test]
fn a_fused_normalisation_without_epsilon_uses_onnxruntimes_default() {
    let mut m = load(&root().join("models/bert_ms_embed.onnx"));
    let g = m.graph.as_mut().unwrap();
    let n = g.node.iter_mut().find(|n| n.op_type == "EmbedLayerNormalization").unwrap();
    n.attribute.retain(|a| a.name != "epsilon");
    let tables = [n.input[2].clone(), n.input[3].clone()];
    for t in g.initializer.iter_mut().filter(|t| tables.contains(&t.name)) {
        let v: Vec<f64> = tensor::read_f64(t).unwrap().iter().map(|x| x * 1e-4).collect();
        tensor::write_f64(t, &v).unwrap();
    }
    let opts = StructOptions { beta: 0.7, round_to: RoundTo::Multiple(1), floor: Floor::OFF, ..Default::default() };
    let r = prune_channels(&m, &opts).unwrap();
    let stream = r.groups.iter().find(|g| g.id == "EmbedLayerNormalization_0").unwrap();
    assert!(stream.blocked.is_none() && stream.kept < stream.n, "{stream:?}");
    if let Some(e) = ort_masked(&r) {
        assert!(e <= TOL, "masked vs pruned {e:e}");
    }
}

fn zoo_x() -> Vec<prove::Input> {
    vec![prove::Input::F32(vec![2, 3, 32, 32], randn(2 * 3 * 32 * 32, 7))]
}

/// Per group: units kept, units, blocked.
fn counts(r: &StructuralResult) -> Vec<(usize, usize, bool)> {
    r.groups.iter().map(|g| (g.kept, g.n, g.blocked.is_some())).collect()
}

fn ints_attr(n: &onnx_protobuf::NodeProto, name: &str) -> i64 {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i).unwrap()
}

/// GroupNorm as the dynamo exporter writes it at opset 21 (GroupNormalization, scale and bias per
/// channel) and as TorchScript writes it (Reshape [0, G, -1] → InstanceNormalization with per-group
/// scale and bias → Reshape to Shape(x) → Mul → Add; dynamo at opset 18 likewise, with literal
/// targets): whole groups go, the same ones in every spelling, so
/// every kept channel is normalised over the same channels as before and pruned == masked is
/// exact. `num_groups`, the first Reshape's G and the per-group parameters follow the kept groups.
#[test]
fn group_norm_removes_whole_groups_in_both_spellings() {
    let opts = StructOptions { beta: 0.7, floor: Floor::OFF, round_to: RoundTo::Multiple(1), ..Default::default() };
    let op = prune_and_prove(&load(&root().join("models/zoo/zoo_groupnorm_op.onnx")), &opts, &[], &zoo_x());
    let spelled = prune_and_prove(&load(&root().join("models/zoo/zoo_groupnorm.onnx")), &opts, &[], &zoo_x());
    // c1 + c2 (residual; GroupNorm(8, 32) and (4, 32): units of 8 channels), c3 (GroupNorm(8, 64)),
    // the classifier (a graph output)
    assert_eq!(counts(&op.result), vec![(2, 4, false), (5, 8, false), (10, 10, true)]);
    assert_eq!(counts(&op.result), counts(&spelled.result));
    // The dynamo exporter's opset-18 spelling: literal targets shared between equal group counts.
    let dynamo = prune_and_prove(&load(&root().join("models/zoo/zoo_groupnorm_dynamo.onnx")), &opts, &[], &zoo_x());
    assert_eq!(counts(&op.result), counts(&dynamo.result));
    let g = op.result.pruned.graph.as_ref().unwrap();
    let gn: Vec<i64> =
        g.node.iter().filter(|n| n.op_type == "GroupNormalization").map(|n| ints_attr(n, "num_groups")).collect();
    // 16 of 32 channels in groups of 4 and of 8; 40 of 64 in groups of 8
    assert_eq!(gn, vec![4, 2, 5]);
    let scale_len = |n: &onnx_protobuf::NodeProto| -> usize {
        g.initializer.iter().find(|t| t.name == n.input[1]).map(|t| t.dims.iter().product::<i64>() as usize).unwrap()
    };
    let per_channel: Vec<usize> = g.node.iter().filter(|n| n.op_type == "GroupNormalization").map(scale_len).collect();
    assert_eq!(per_channel, vec![16, 16, 40]);
    // The spelled-out form: InstanceNormalization's per-group scale has the kept groups' count.
    let s = spelled.result.pruned.graph.as_ref().unwrap();
    let inorm: Vec<usize> = s
        .node
        .iter()
        .filter(|n| n.op_type == "InstanceNormalization")
        .map(|n| {
            let c = s.node.iter().find(|c| c.output.first() == Some(&n.input[1])).expect("a Constant scale");
            c.attribute[0].t.dims.iter().product::<i64>() as usize
        })
        .collect();
    assert_eq!(inorm, vec![4, 2, 5]);
    for o in [&op, &spelled] {
        assert!(
            o.result.groups[0].notes.iter().any(|n| n.contains("a unit is 8 channels")),
            "{:?}",
            o.result.groups[0]
        );
    }
}

/// Alignment and the narrow floor count a GroupNorm's channels, not its groups: 64 channels in
/// 8 groups of 8 align to 16 channels (2 groups), where aligning 8 units to 8 would keep all.
#[test]
fn group_norm_alignment_and_floor_count_channels() {
    let dense = load(&root().join("models/zoo/zoo_groupnorm_op.onnx"));
    let floor = Floor { stem: false, ..StructOptions::default().floor };
    let opts = StructOptions { beta: 0.7, floor, round_to: RoundTo::Auto, ..Default::default() };
    let r = prune_channels(&dense, &opts).unwrap();
    let c3 = r.groups.iter().find(|g| g.id == "node_conv2d_2").unwrap();
    assert_eq!((c3.kept, c3.n), (6, 8), "{c3:?}");
    assert!(c3.notes.iter().any(|n| n.contains("the nearest multiple of 2 units, 16 channels")), "{c3:?}");
    assert!(c3.notes.iter().any(|n| n.contains("8 channels that go together (a GroupNorm group)")), "{c3:?}");
    let low = prune_channels(&dense, &StructOptions { beta: 0.5, ..opts }).unwrap();
    let c3 = low.groups.iter().find(|g| g.id == "node_conv2d_2").unwrap();
    assert_eq!(c3.kept, 4, "{c3:?}");
    assert!(c3.notes.iter().any(|n| n.contains("floor of half the width and at least 8 channels")), "{c3:?}");
}

/// A dead row before an InstanceNormalization emits its bias, which the norm makes its shift B:
/// a constant the consumer folds, so the unit is dead. The live units stay live: in the analysis's
/// dense view a varying channel normalises to a varying one (it was taken for the constant B,
/// which made every unit dead and scored 0).
#[test]
fn instance_norm_keeps_live_units_live_beside_a_dead_one() {
    let rows = [1.0, 0.0, 1.1, 0.9, 1.2, 1.05];
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa", "ba"], &["a"], vec![]),
            nd("InstanceNormalization", "in", &["a", "s", "b"], &["n"], vec![]),
            nd("Relu", "r", &["n"], &["rn"], vec![]),
            nd("Conv", "C", &["rn", "wc", "bc"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 3, 3], &rows, 1),
            tensor::new_f32("ba", &[6], &[0.1, 0.7, -0.2, 0.4, 0.3, 0.9]),
            tensor::new_f32("s", &[6], &[1.0, 1.2, 0.8, 1.1, 0.9, 1.0]),
            tensor::new_f32("b", &[6], &[0.2, 0.5, -0.1, 0.3, 0.0, 0.1]),
            w("wc", &[2, 6, 1, 1], &ones(2), 2),
            tensor::new_f32("bc", &[2], &[0.3, -0.3]),
        ],
        &[1, 3, 6, 6],
        &["y"],
    );
    let opts = StructOptions { beta: 1.0, floor: Floor::OFF, round_to: RoundTo::Multiple(1), ..Default::default() };
    let o = prove_x(&m, &[1, 3, 6, 6], &opts);
    let g = o.result.groups.iter().find(|g| g.id == "A").unwrap();
    assert!(!g.notes.iter().any(|n| n.contains("all scores are zero")), "{g:?}");
    assert!(g.notes.iter().any(|n| n.contains("1 removed unit(s) are dead")), "{g:?}");
    assert!(g.kept >= 4, "{g:?}");
}

/// GroupNorm with one group (PoolFormer's GroupNorm(1, C): a LayerNorm over the channels and the
/// spatial axes), as the opset-21 op and spelled out by TorchScript: single channels go, the same
/// ones in both spellings, proven (the masked model normalises over the kept channels), and
/// `num_groups` stays 1. A spelled-out form whose first Reshape merges a literal `C·H·W` (which
/// would change with the cut) keeps its stream whole, saying why.
#[test]
fn group_norm_with_one_group_removes_single_channels() {
    let opts = StructOptions { beta: 0.7, floor: Floor::OFF, round_to: RoundTo::Multiple(1), ..Default::default() };
    let op = prune_and_prove(&load(&root().join("models/zoo/zoo_poolformer_op.onnx")), &opts, &[], &zoo_x());
    let spelled = prune_and_prove(&load(&root().join("models/zoo/zoo_poolformer.onnx")), &opts, &[], &zoo_x());
    // the two streams (32 and 64 single channels) and the MLPs' hidden channels, the classifier
    let c = counts(&op.result);
    assert_eq!((c[0].1, c[2].1), (32, 64), "{c:?}");
    assert!(c[0].0 < 32 && c[2].0 < 64 && !c[0].2 && !c[2].2, "{c:?}");
    assert_eq!(c, counts(&spelled.result));
    let g = op.result.pruned.graph.as_ref().unwrap();
    let gn: Vec<i64> =
        g.node.iter().filter(|n| n.op_type == "GroupNormalization").map(|n| ints_attr(n, "num_groups")).collect();
    assert_eq!(gn, vec![1; 5]);

    let mut m = load(&root().join("models/zoo/zoo_poolformer.onnx"));
    let g = m.graph.as_mut().unwrap();
    let k = g.node.iter().position(|n| n.name == "/n1/Constant").unwrap();
    g.node[k].attribute[0].t = Some(tensor::new_i64("", &[3], &[0, 1, 32 * 8 * 8])).into();
    let r = prune_channels(&m, &opts).unwrap();
    let stream = r.groups.iter().find(|g| g.id == "/stem/Conv").unwrap();
    let why = stream.blocked.as_deref().unwrap_or_default();
    assert!(why.contains("one group, and the target's last entry is not -1"), "{stream:?}");
}
