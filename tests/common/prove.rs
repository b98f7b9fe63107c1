//! Proving a structural rewrite: save dense / pruned / masked, run pruned and masked on the same
//! inputs in onnxruntime (tests/helpers/onnx_check.py: onnx.checker full check, strict shape
//! inference, optimisations off) and in tract, and require ≤ 1e-4 relative difference.
#![allow(dead_code)]

use onnx_emp::model::graph::{self, GraphIndex};
use onnx_emp::model::io;
use onnx_emp::prune::channels::prune_channels;
use onnx_emp::prune::{StructOptions, StructuralResult};
use onnx_protobuf::ModelProto;
use std::path::{Path, PathBuf};
use std::process::Command;
use tract_onnx::prelude::*;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn load(path: &Path) -> ModelProto {
    io::load(path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display())).proto
}

pub const TOL: f64 = 1e-4;

pub fn params(m: &ModelProto) -> u64 {
    let g = m.graph.as_ref().unwrap();
    let ix = GraphIndex::build(g).unwrap();
    graph::float_params(g, &ix).0
}

/// A model input for both checkers: f32 data or i64 data, with its shape.
#[derive(Clone)]
pub enum Input {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<usize>, Vec<i64>),
}

impl Input {
    pub fn tensor(&self) -> Tensor {
        match self {
            Input::F32(s, d) => Tensor::from_shape(s, d).unwrap(),
            Input::I64(s, d) => Tensor::from_shape(s, d).unwrap(),
        }
    }
}

pub fn npy(path: &Path) -> Input {
    let a: ndarray::ArrayD<f32> = ndarray_npy::read_npy(path).unwrap();
    Input::F32(a.shape().to_vec(), a.iter().copied().collect())
}

/// Deterministic N(0,1)-ish values (sum of uniforms), no extra crates.
pub fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n).map(|_| ((0..4).map(|_| next()).sum::<f64>() - 2.0) as f32 * 1.7).collect()
}

pub struct Saved {
    pub _dir: tempfile::TempDir,
    pub dense: PathBuf,
    pub pruned: PathBuf,
    pub masked: PathBuf,
}

pub fn save_all(dense: &ModelProto, r: &StructuralResult) -> Saved {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let opts = io::SaveOptions::default();
    io::save(dense.clone(), &p("dense.onnx"), &opts).unwrap();
    io::save(r.pruned.clone(), &p("pruned.onnx"), &opts).unwrap();
    io::save(r.masked().clone(), &p("masked.onnx"), &opts).unwrap();
    Saved { dense: p("dense.onnx"), pruned: p("pruned.onnx"), masked: p("masked.onnx"), _dir: dir }
}

/// onnx.checker + strict shape inference + onnxruntime (optimisations off): max relative error
/// between pruned and masked. `None` when python3/onnx/onnxruntime are not available.
pub fn ort_check(s: &Saved, inputs: &[(String, PathBuf)]) -> Option<f64> {
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
            panic!(
                "onnx_check failed for {} (copied to {}): {}{}",
                s.pruned.display(),
                keep.display(),
                text,
                String::from_utf8_lossy(&out.stderr)
            )
        }
    }
}

pub fn tract_run(path: &Path, inputs: &[Input]) -> TractResult<Vec<Tensor>> {
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
pub fn rel_err(a: &[Tensor], b: &[Tensor]) -> f64 {
    let mut worst = 0.0f64;
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.shape(), y.shape(), "output shapes differ");
        let (Ok(x), Ok(y)) = (x.cast_to::<f32>(), y.cast_to::<f32>()) else { continue };
        let (x, y): (Vec<f32>, Vec<f32>) = (
            x.to_plain_array_view::<f32>().unwrap().iter().copied().collect(),
            y.to_plain_array_view::<f32>().unwrap().iter().copied().collect(),
        );
        let m = y.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)).max(1e-6);
        let d = x.iter().zip(&y).fold(0.0f64, |d, (p, q)| d.max((*p as f64 - *q as f64).abs()));
        worst = worst.max(d / m);
    }
    worst
}

/// Pruned vs masked in tract. `None` (with a message) when tract cannot run the dense model.
pub fn tract_check(s: &Saved, inputs: &[Input]) -> Option<f64> {
    let p = match tract_run(&s.pruned, inputs) {
        Ok(p) => p,
        Err(e) => {
            // A failure is ours only if tract can run the dense model.
            if let Err(d) = tract_run(&s.dense, inputs) {
                eprintln!("skipping tract check: tract cannot run the dense model ({d})");
                return None;
            }
            panic!("tract on pruned: {e:?}");
        }
    };
    let m = tract_run(&s.masked, inputs).unwrap_or_else(|e| panic!("tract on masked: {e:?}"));
    Some(rel_err(&p, &m))
}

pub struct Outcome {
    pub result: StructuralResult,
    pub params: (u64, u64),
    pub ort: Option<f64>,
    pub tract: Option<f64>,
    pub saved: Saved,
}

/// Prune, save, prove (pruned == masked in onnxruntime and tract).
pub fn prune_and_prove(
    dense: &ModelProto,
    opts: &StructOptions,
    npys: &[(String, PathBuf)],
    inputs: &[Input],
) -> Outcome {
    let result = prune_channels(dense, opts).unwrap_or_else(|e| panic!("prune_channels: {e:#}"));
    prove(dense, result, npys, inputs)
}

/// Save and prove a structural result (pruned == masked in onnxruntime and tract).
pub fn prove(dense: &ModelProto, result: StructuralResult, npys: &[(String, PathBuf)], inputs: &[Input]) -> Outcome {
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
