//! The architecture zoo (`models/zoo`, made by `models/make_zoo.py`): one small random-weight
//! model per hard case of issue 11. Each is pruned at β = 1 and at a forced cut β = 0.7 (floors
//! lifted, no rounding, so that odd widths are exercised) and proven: pruned == masked in tract
//! and onnxruntime (≤ 1e-4, `onnx.checker` full check and strict shape inference on both), params
//! never grow, and the case itself is handled: the op family it is about does not block, and the
//! forced cut removes units. (No case is out of scope since the residual stream under
//! LayerNormalization prunes; `transformer_residual_streams_prune` checks that group, under each
//! spelling of the normalisation.)
//!
//! `cargo test --test zoo -- --nocapture` prints the units each cut keeps, as docs/figures.md
//! (*Architecture zoo*) lists them; the README's zoo table is `python3 scripts/zoo.py`'s.

#[path = "common/prove.rs"]
mod prove;

use onnx_emp::prune::heads::prune_heads;
use onnx_emp::prune::{Floor, RoundTo, StructOptions, StructScope, StructuralResult};
use prove::*;
use std::path::PathBuf;

enum Expect {
    /// Channels: these op names must not appear in any blocked reason, and the forced cut must
    /// remove units.
    Channels(&'static [&'static str]),
    /// Heads: every attention block is prunable, except blocks refused with this reason, and the
    /// forced cut removes heads.
    Heads(&'static str),
}

const ZOO: &[(&str, Expect)] = &[
    ("zoo_attention_4d", Expect::Heads("(no block expected)")),
    ("zoo_db_detector", Expect::Channels(&["Resize", "ConvTranspose", "HardSigmoid", "Concat"])),
    ("zoo_gather_slice", Expect::Channels(&["Gather", "Slice"])),
    ("zoo_grouped_convtranspose", Expect::Channels(&["ConvTranspose"])),
    // GroupNorm spelled out by TorchScript (Reshape → InstanceNormalization → Reshape to
    // Shape(x)) and as the opset-21 op: whole groups go.
    ("zoo_groupnorm", Expect::Channels(&["Reshape", "InstanceNormalization", "Shape"])),
    ("zoo_groupnorm_op", Expect::Channels(&["GroupNormalization"])),
    ("zoo_groupnorm_dynamo", Expect::Channels(&["Reshape", "InstanceNormalization", "Shape"])),
    // GroupNorm conv blocks, self-attention over the tokens whose residual Add joins the conv
    // stream (reshapes with a -1 batch), upsampling and a skip Concat. The in-projection's output
    // stays blocked in channels mode (split into heads: heads mode).
    ("zoo_unet_gn", Expect::Channels(&["GroupNormalization", "Concat", "Resize", "Add", "Transpose"])),
    // The same UNet from TorchScript: GroupNorm as Reshape → InstanceNormalization → Reshape, and
    // the attention's reshape back reads `(n, c, h, w)` off the residual input's Shape (the stream
    // is checked below; the in-projection's head split blocks by Reshape, as above).
    ("zoo_unet_gn_ts", Expect::Channels(&["InstanceNormalization", "Concat", "Resize", "Add", "Transpose", "Shape"])),
    // SENet's squeeze-and-excitation from TorchScript: `view(b, c)`, `view(b, c, 1, 1)` and
    // `expand_as(x)` all read `x`'s Shape (they blocked both conv streams before).
    ("zoo_se_view", Expect::Channels(&["Reshape", "Expand", "Mul", "Shape", "Gemm"])),
    // CBAM (channel gate with `expand_as`, spatial gate on the channels' max and mean per pixel,
    // a one-channel map times the features): both conv streams prune (before, ReduceMax and the
    // map's broadcast blocked them).
    ("zoo_cbam", Expect::Channels(&["ReduceMax", "ReduceMean", "Mul", "Expand", "Concat"])),
    // Coordinate attention: the pooled rows and columns split back at `h` read off Shape (a
    // Slice of the spatial axis with computed bounds blocked its hidden channels before).
    ("zoo_coordatt", Expect::Channels(&["Slice", "Split", "Concat", "Transpose", "Mul"])),
    // PoolFormer: GroupNorm(1, C) on the residual stream, spelled out by TorchScript and as the
    // opset-21 op; single channels go (the streams are checked below).
    ("zoo_poolformer", Expect::Channels(&["Reshape", "InstanceNormalization", "Shape", "AveragePool"])),
    ("zoo_poolformer_op", Expect::Channels(&["GroupNormalization", "AveragePool"])),
    ("zoo_lstm", Expect::Channels(&["LSTM"])),
    ("zoo_gru", Expect::Channels(&["GRU"])),
    ("zoo_bilstm", Expect::Channels(&["LSTM", "Reshape", "Transpose"])),
    // Two layers: torch writes each layer's zero initial state as a Slice of one ConstantOfShape.
    ("zoo_lstm_stacked", Expect::Channels(&["LSTM", "Slice", "ConstantOfShape"])),
    ("zoo_qdq", Expect::Channels(&["QuantizeLinear", "DequantizeLinear", "Conv", "Flatten"])),
    ("zoo_shufflenet", Expect::Channels(&["Reshape", "Transpose", "Slice", "Concat", "Div"])),
    (
        "zoo_shufflenet_qdq",
        Expect::Channels(&["Reshape", "Transpose", "Slice", "Concat", "Div", "QuantizeLinear", "DequantizeLinear"]),
    ),
    // q/k/v stay blocked in channels mode (their outputs are reshaped into heads: heads mode).
    ("zoo_layernorm_transformer", Expect::Channels(&["LayerNormalization", "Concat", "Gather"])),
    ("zoo_ms_fused_ffn", Expect::Channels(&["com.microsoft:BiasGelu", "com.microsoft:FastGelu"])),
    // The same blocks after onnxruntime's EmbedLayerNormalization: the stream from the embeddings.
    (
        "zoo_ms_bert",
        Expect::Channels(&[
            "com.microsoft:EmbedLayerNormalization",
            "com.microsoft:SkipLayerNormalization",
            "com.microsoft:BiasGelu",
        ]),
    ),
    // torchvision's ViT: the fused in-projection stays blocked in channels mode (split into q/k/v
    // and heads); the residual stream must not be blocked by anything.
    ("zoo_vit", Expect::Channels(&["LayerNormalization", "Concat", "Expand", "Add"])),
    ("zoo_patch_reshape", Expect::Channels(&["Reshape", "Shape", "Concat"])),
    // LayerNorm and RMSNorm spelled out in primitive ops (opset 14), and ONNX's RMSNormalization.
    ("zoo_norm_decomposed", Expect::Channels(&["ReduceMean", "Sub", "Pow", "Sqrt", "Div", "Mul"])),
    ("zoo_rmsnorm_ops", Expect::Channels(&["RMSNormalization"])),
    // zoo_vit as a fixed-shape opset-14 export: LayerNorms spelled out, literal Reshape targets
    // (the patch reshape `[1, 32, 16]` is in the stream: `transformer_residual_streams_prune`).
    ("zoo_vit_fixed", Expect::Channels(&["ReduceMean", "Sub", "Div", "Concat", "Expand", "Add"])),
];

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("models/zoo/manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The model's input (seeded) and an .npy copy of it for onnxruntime.
fn input(name: &str, dir: &std::path::Path) -> (Input, PathBuf) {
    let m = manifest();
    let spec = &m[name];
    let shape: Vec<usize> = spec["x"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let n: usize = shape.iter().product();
    let path = dir.join(format!("{name}_x.npy"));
    let x = if spec["dtype"].as_str() == Some("int64") {
        let high = spec["high"].as_i64().unwrap();
        let d: Vec<i64> = (0..n as i64).map(|i| (i * 7 + 3) % high).collect();
        ndarray_npy::write_npy(&path, &ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), d.clone()).unwrap())
            .unwrap();
        Input::I64(shape, d)
    } else {
        let d = randn(n, 7);
        ndarray_npy::write_npy(&path, &ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), d.clone()).unwrap())
            .unwrap();
        Input::F32(shape, d)
    };
    (x, path)
}

fn opts(beta: f64, heads: bool) -> StructOptions {
    StructOptions {
        beta,
        floor: Floor::OFF,
        round_to: RoundTo::Multiple(1),
        scope: if heads { StructScope::Global } else { StructScope::Layer },
        ..Default::default()
    }
}

fn blocked(r: &StructuralResult) -> Vec<String> {
    r.groups.iter().filter_map(|g| g.blocked.as_ref().map(|b| format!("{}: {b}", g.id))).collect()
}

/// One (model, β) case: the table row, or what failed.
fn case(name: &str, expect: &Expect, beta: f64, dir: &std::path::Path) -> String {
    let dense = load(&root().join(format!("models/zoo/{name}.onnx")));
    let (x, npy) = input(name, dir);
    let heads = matches!(expect, Expect::Heads(_));
    let r = if heads {
        prune_heads(&dense, &opts(beta, true)).unwrap_or_else(|e| panic!("{e:#}"))
    } else {
        onnx_emp::prune::channels::prune_channels(&dense, &opts(beta, false)).unwrap_or_else(|e| panic!("{e:#}"))
    };
    let o = prove(&dense, r, &[("x".into(), npy)], std::slice::from_ref(&x));
    let g = &o.result.groups;
    let prunable = g.iter().filter(|g| g.blocked.is_none()).count();
    let kept: usize = g.iter().filter(|g| g.blocked.is_none()).map(|g| g.kept).sum();
    let n: usize = g.iter().filter(|g| g.blocked.is_none()).map(|g| g.n).sum();
    assert!(o.params.1 <= o.params.0, "params grew {} → {}", o.params.0, o.params.1);
    let b = blocked(&o.result);
    match expect {
        Expect::Channels(ops) => {
            for op in *ops {
                let hit: Vec<&String> = b.iter().filter(|r| r.contains(&format!("by {op} node"))).collect();
                assert!(hit.is_empty(), "still blocked by {op}: {hit:#?}");
            }
            assert!(prunable > 0, "nothing prunable: {b:#?}");
        }
        Expect::Heads(why) => {
            assert!(b.iter().all(|r| r.contains(why)), "blocked heads: {b:#?}");
            assert!(prunable > 0, "no attention block prunable: {b:#?}");
        }
    }
    if beta < 1.0 {
        assert!(kept < n, "the forced cut removed nothing ({kept}/{n})");
    }
    if !b.is_empty() {
        eprintln!("{name} β={beta} blocked:\n  {}", b.join("\n  "));
    }
    format!(
        "{name} | {beta} | {prunable}/{} | {kept}/{n} | {} → {} | {:.1e}, {}",
        g.len(),
        o.params.0,
        o.params.1,
        o.tract.unwrap_or(f64::NAN),
        o.ort.map(|v| format!("{v:.1e}")).unwrap_or_else(|| "skipped".into())
    )
}

#[test]
fn zoo_prunes_validly_at_beta_1_and_forced_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut table =
        vec!["model | β | groups prunable/total | units kept/total | params before → after | masked rel (tract, ort)"
            .to_string()];
    let mut failed = vec![];
    for (name, expect) in ZOO {
        for beta in [1.0, 0.7] {
            match std::panic::catch_unwind(|| case(name, expect, beta, dir.path())) {
                Ok(row) => table.push(row),
                Err(e) => {
                    let msg =
                        e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                    failed.push(format!("{name} β={beta}: {}", msg.unwrap_or_default()));
                }
            }
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The residual streams (a transformer's d_model under LayerNormalization, RMSNorm, or either
/// spelled out in primitive ops; a UNet's under GroupNorm; PoolFormer's under GroupNorm(1, C))
/// are one group each, not blocked, and lose units at the forced cut (the
/// proofs are in the test above): every normalisation of the stream is a member.
#[test]
fn transformer_residual_streams_prune() {
    for (name, first, norm, count) in [
        ("zoo_layernorm_transformer", "/emb/Gather", "LayerNormalization", 5),
        ("zoo_vit", "/conv_proj/Conv", "LayerNormalization", 5),
        // Two ReduceMeans per LayerNorm (blocks.0's two and the last), one per RMSNorm (blocks.1's
        // two), and the mean over the tokens, which carries the stream to the classifier.
        ("zoo_norm_decomposed", "/emb/Gather", "ReduceMean", 9),
        ("zoo_rmsnorm_ops", "h0.matmul", "rms", 2),
        ("zoo_vit_fixed", "/conv_proj/Conv", "ReduceMean", 10),
        ("zoo_ms_bert", "embed", "skipln", 2),
        // the UNet's 64-wide stream: the conv block's output, its GroupNorms and the attention's
        // out-projection (a Gemm writing it back through the residual Add)
        ("zoo_unet_gn", "node_conv2d_3", "group_norm", 2),
        ("zoo_unet_gn_ts", "/d2/d2.3/Conv", "InstanceNormalization", 2),
        // PoolFormer's streams under GroupNorm(1, C): each stage's two, and the last norm.
        ("zoo_poolformer", "/stem/Conv", "InstanceNormalization", 2),
        ("zoo_poolformer", "/down/Conv", "InstanceNormalization", 3),
        ("zoo_poolformer_op", "node_conv2d", "group_norm", 2),
        ("zoo_poolformer_op", "node_conv2d_3", "group_norm", 3),
    ] {
        let dense = load(&root().join(format!("models/zoo/{name}.onnx")));
        let r = onnx_emp::prune::channels::prune_channels(&dense, &opts(0.7, false)).unwrap();
        let g = r.groups.iter().find(|g| g.id == first).unwrap_or_else(|| panic!("{name}: no group {first}"));
        assert!(g.blocked.is_none(), "{name}: {:?}", g.blocked);
        assert!(g.kept < g.n, "{name}: the stream kept {}/{}", g.kept, g.n);
        let norms = g.members.iter().filter(|m| m.contains(norm)).count();
        assert_eq!(norms, count, "{name}: {norms} {norm} in the stream: {:?}", g.members);
    }
}
