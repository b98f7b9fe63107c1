//! `--structured channels`: dependency analysis, EMP, rewrite. Every rewrite is proven by running
//! the pruned and the masked model on the same inputs (onnxruntime via tests/helpers/onnx_check.py
//! when python3 + onnx are available, and tract) and requiring ≤ 1e-4 relative difference.

use onnx_emp::diff::graph_diff;
use onnx_emp::model::graph::{self, GraphIndex};
use onnx_emp::model::{io, tensor};
use onnx_emp::prune::channels::prune_channels;
use onnx_emp::prune::{GroupReport, StructOptions, StructScope, StructuralResult};
use onnx_protobuf::{AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto};
use std::path::{Path, PathBuf};
use std::process::Command;
use tract_onnx::prelude::*;

const TOL: f64 = 1e-4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(path: &Path) -> ModelProto {
    io::load(path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display())).proto
}

fn params(m: &ModelProto) -> u64 {
    let g = m.graph.as_ref().unwrap();
    let ix = GraphIndex::build(g).unwrap();
    graph::float_params(g, &ix).0
}

/// A model input for both checkers: f32 data or i64 data, with its shape.
#[derive(Clone)]
enum Input {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<usize>, Vec<i64>),
}

impl Input {
    fn tensor(&self) -> Tensor {
        match self {
            Input::F32(s, d) => Tensor::from_shape(s, d).unwrap(),
            Input::I64(s, d) => Tensor::from_shape(s, d).unwrap(),
        }
    }
}

fn npy(path: &Path) -> Input {
    let a: ndarray::ArrayD<f32> = ndarray_npy::read_npy(path).unwrap();
    Input::F32(a.shape().to_vec(), a.iter().copied().collect())
}

/// Deterministic N(0,1)-ish values (sum of uniforms), no extra crates.
fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n).map(|_| ((0..4).map(|_| next()).sum::<f64>() - 2.0) as f32 * 1.7).collect()
}

struct Saved {
    _dir: tempfile::TempDir,
    dense: PathBuf,
    pruned: PathBuf,
    masked: PathBuf,
}

fn save_all(dense: &ModelProto, r: &StructuralResult) -> Saved {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let opts = io::SaveOptions::default();
    io::save(dense.clone(), &p("dense.onnx"), &opts).unwrap();
    io::save(r.pruned.clone(), &p("pruned.onnx"), &opts).unwrap();
    io::save(r.masked.clone(), &p("masked.onnx"), &opts).unwrap();
    Saved { dense: p("dense.onnx"), pruned: p("pruned.onnx"), masked: p("masked.onnx"), _dir: dir }
}

/// onnx.checker + strict shape inference + onnxruntime (optimisations off): max relative error
/// between pruned and masked. `None` when python3/onnx/onnxruntime are not available.
fn ort_check(s: &Saved, inputs: &[(String, PathBuf)]) -> Option<f64> {
    let script = root().join("tests/helpers/onnx_check.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(&s.pruned).arg(&s.masked);
    for (n, p) in inputs {
        cmd.arg("--input").arg(format!("{n}={}", p.display()));
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipping onnxruntime cross-check: python3 not runnable ({e})");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    match out.status.code() {
        Some(77) => {
            eprintln!("skipping onnxruntime cross-check: {}", text.trim());
            None
        }
        Some(0) => {
            let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
            v["rel"].as_f64()
        }
        _ => {
            let keep = std::env::temp_dir().join("channels_failed");
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(&s.pruned, keep.join("pruned.onnx"));
            let _ = std::fs::copy(&s.masked, keep.join("masked.onnx"));
            panic!("onnx_check failed for {} (copied to {}): {}{}", s.pruned.display(), keep.display(), text, String::from_utf8_lossy(&out.stderr))
        }
    }
}

fn tract_run(path: &Path, inputs: &[Input]) -> TractResult<Vec<Tensor>> {
    let mut model = tract_onnx::onnx().model_for_path(path)?;
    for (i, x) in inputs.iter().enumerate() {
        let t = x.tensor();
        model = model.with_input_fact(i, InferenceFact::dt_shape(t.datum_type(), t.shape()))?;
    }
    let plan = model.into_optimized()?.into_runnable()?;
    let out = plan.run(inputs.iter().map(|x| x.tensor().into()).collect())?;
    Ok(out.into_iter().map(|v| v.into_tensor()).collect())
}

/// Max over outputs of max|a − b| / max(max|b|, 1e-6).
fn rel_err(a: &[Tensor], b: &[Tensor]) -> f64 {
    let mut worst = 0.0f64;
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.shape(), y.shape(), "output shapes differ");
        let (Ok(x), Ok(y)) = (x.cast_to::<f32>(), y.cast_to::<f32>()) else { continue };
        let (x, y): (Vec<f32>, Vec<f32>) = (x.to_plain_array_view::<f32>().unwrap().iter().copied().collect(), y.to_plain_array_view::<f32>().unwrap().iter().copied().collect());
        let m = y.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)).max(1e-6);
        let d = x.iter().zip(&y).fold(0.0f64, |d, (p, q)| d.max((*p as f64 - *q as f64).abs()));
        worst = worst.max(d / m);
    }
    worst
}

/// Pruned vs masked in tract. `None` (with a message) when tract cannot run the dense model.
fn tract_check(s: &Saved, inputs: &[Input]) -> Option<f64> {
    if let Err(e) = tract_run(&s.dense, inputs) {
        eprintln!("skipping tract check: tract cannot run the dense model ({e})");
        return None;
    }
    let p = tract_run(&s.pruned, inputs).unwrap_or_else(|e| panic!("tract on pruned: {e:?}"));
    let m = tract_run(&s.masked, inputs).unwrap_or_else(|e| panic!("tract on masked: {e:?}"));
    Some(rel_err(&p, &m))
}

struct Outcome {
    result: StructuralResult,
    params: (u64, u64),
    ort: Option<f64>,
    tract: Option<f64>,
    saved: Saved,
}

/// Prune, save, prove (pruned == masked in onnxruntime and tract).
fn prune_and_prove(dense: &ModelProto, opts: &StructOptions, npys: &[(String, PathBuf)], inputs: &[Input]) -> Outcome {
    let result = prune_channels(dense, opts).unwrap_or_else(|e| panic!("prune_channels: {e:#}"));
    let saved = save_all(dense, &result);
    let ort = ort_check(&saved, npys);
    let tract = tract_check(&saved, inputs);
    for (what, v) in [("onnxruntime", ort), ("tract", tract)] {
        if let Some(v) = v {
            assert!(v <= TOL, "{what}: masked vs pruned relative error {v:e} > {TOL:e}");
        }
    }
    let params = (params(dense), params(&result.pruned));
    Outcome { result, params, ort, tract, saved }
}

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
    let o = prune_and_prove(&dense, &StructOptions::default(), &npys, &inputs);
    snapshot(model.trim_end_matches(".onnx"), &dense, &o);
    (dense, o)
}

#[test]
fn digits_cnn_bn_residual_depthwise_concat() {
    let (_, o) = run_digits("digits_cnn.onnx", "digits_test_x1x8x8.npy");
    let p = &o.result.pruned;
    // residual: stem, res.b and the depthwise conv are one group
    let stem = group(&o.result, "/stem/stem.0/Conv");
    assert!(stem.members.contains(&"/res/b/b.0/Conv".to_string()) && stem.members.contains(&"/dw/dw.0/Conv".to_string()));
    assert_eq!(weight(p, "stem.0.weight").dims[0], weight(p, "res.b.0.weight").dims[0]);
    // depthwise: group attribute = channels kept, = pointwise conv's input channels
    let dw = weight(p, "dw.0.weight").dims[0];
    assert_eq!(graph::attr_i(node(p, "/dw/dw.0/Conv"), "group"), Some(dw));
    assert_eq!(weight(p, "pw.0.weight").dims[1], dw);
    // concat offsets: fc in-features = br1 kept + br2 kept
    assert_eq!(weight(p, "fc.weight").dims[1], weight(p, "br1.weight").dims[0] + weight(p, "br2.weight").dims[0]);
    // BN → ReLU → zero-padded 3x3 conv: units whose relu(beta') ≠ 0 cannot be folded, they stay
    assert!(stem.notes.iter().any(|n| n.contains("zero-padded Conv")), "{:?}", stem.notes);
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
    assert_eq!(weight(p, "c2f.cv2.conv.weight").dims[1], weight(p, "c2f.cv1.conv.weight").dims[0] + weight(p, "c2f.m2.conv.weight").dims[0]);
    assert_eq!(weight(p, "c2f.m1.conv.weight").dims[1], sizes[1]);
    // Resize passes channels; Concat[up(down), cv2] feeds fuse
    assert_eq!(weight(p, "fuse.conv.weight").dims[1], weight(p, "down.conv.weight").dims[0] + weight(p, "c2f.cv2.conv.weight").dims[0]);
    assert!(o.params.1 < o.params.0);
}

#[test]
fn digits_transformer_ffn_hidden_units() {
    let (_, o) = run_digits("digits_transformer.onnx", "digits_test_x8x8.npy");
    let ffn: Vec<&GroupReport> = o.result.groups.iter().filter(|g| g.id.ends_with("ff1/MatMul")).collect();
    assert_eq!(ffn.len(), 2);
    for g in ffn {
        assert!(g.blocked.is_none(), "{g:?}");
        assert!(g.members.iter().any(|m| m.ends_with("/Erf")), "Erf-GELU is inside the group: {:?}", g.members);
    }
    // the residual stream and the attention projections are left alone, with a reason
    assert!(o.result.groups.iter().filter(|g| !g.id.ends_with("ff1/MatMul")).all(|g| g.blocked.is_some()));
}

#[test]
fn digits_lstm_is_a_barrier() {
    let (dense, npys, inputs) = digits("digits_lstm.onnx", "digits_test_x8x8.npy");
    let o = prune_and_prove(&dense, &StructOptions::default(), &npys, &inputs);
    assert!(o.result.groups.iter().all(|g| g.blocked.is_some()), "{}", summary(&o.result.groups));
    assert_eq!(o.params.0, o.params.1);
}

#[test]
fn global_scope_and_rounding() {
    let (dense, npys, inputs) = digits("yolo_block.onnx", "digits_test_x1x8x8.npy");
    let opts = StructOptions { scope: StructScope::Global, round_to: 4, beta: 0.9, ..Default::default() };
    let o = prune_and_prove(&dense, &opts, &npys, &inputs);
    for g in o.result.groups.iter().filter(|g| g.blocked.is_none()) {
        assert!(g.kept >= 1 && (g.kept % 4 == 0 || g.kept == g.n), "{g:?}");
        assert!(g.notes.iter().any(|n| n.contains("global EMP")));
    }
    let o1 = prune_and_prove(&dense, &StructOptions { criterion: onnx_emp::prune::Criterion::L1, ..Default::default() }, &npys, &inputs);
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
        let o = prune_and_prove(&dense, &StructOptions::default(), &[], &inputs);
        let prunable = o.result.groups.iter().filter(|g| g.blocked.is_none()).count();
        let changed = o.result.groups.iter().any(|g| g.blocked.is_none() && g.kept < g.n);
        if changed {
            assert!(o.params.1 < o.params.0, "{name}: units removed but params did not shrink");
        }
        eprintln!("== {name} ({:?})\n{}", t0.elapsed(), summary(&o.result.groups));
        table.push(format!("{name} | {prunable}/{} | {} → {} | {:?} | {:?}", o.result.groups.len(), o.params.0, o.params.1, o.ort, o.tract));
    }
    eprintln!("{}", table.join("\n"));
}
