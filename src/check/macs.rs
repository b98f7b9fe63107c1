//! Multiply-accumulate counts of the heavy ops (Conv, ConvTranspose, Gemm, MatMul) at concrete
//! input shapes.
//!
//! Shapes of intermediate values come from tract's inference analysis of the *un-decluttered*
//! model: tract's ONNX parser keeps a map from every ONNX value name to its outlet, so each
//! node's input and output shapes can be read by name. Weight shapes come from the initializers.

use super::inputs::{read_proto, InputFact};
use super::run::{concretize, guarded};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::prelude::InferenceModelExt;

/// MACs per node (keyed by ONNX node name, or its first output when unnamed) and in total.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Macs {
    pub per_node: BTreeMap<String, u64>,
    pub total: u64,
}

fn node_key(n: &pb::NodeProto) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else {
        n.output.first().cloned().unwrap_or_else(|| n.op_type.clone())
    }
}

fn attr_i(n: &pb::NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn prod(v: &[usize]) -> Result<u64> {
    v.iter().try_fold(1u64, |a, &b| a.checked_mul(b as u64)).context("MAC count overflows u64")
}

/// MACs of one node given the shapes of its inputs and first output.
pub fn node_macs(op: &str, n: &pb::NodeProto, ins: &[Option<Vec<usize>>], out: &[usize]) -> Result<u64> {
    let input = |i: usize, what: &str| -> Result<&Vec<usize>> {
        ins.get(i).and_then(|s| s.as_ref()).with_context(|| format!("shape of {what} unknown"))
    };
    match op {
        "Conv" => {
            // N·C_out·spatial_out · (C_in/group)·kernel = prod(out) · prod(W[1..])
            let w = input(1, "weight")?;
            if w.len() < 2 {
                bail!("weight rank {} < 2", w.len());
            }
            prod(out)?.checked_mul(prod(&w[1..])?).context("MAC count overflows u64")
        }
        "ConvTranspose" => {
            // every input element is scattered through C_out/group · kernel weights
            let x = input(0, "input")?;
            let w = input(1, "weight")?;
            if w.len() < 2 {
                bail!("weight rank {} < 2", w.len());
            }
            prod(x)?.checked_mul(prod(&w[1..])?).context("MAC count overflows u64")
        }
        "Gemm" => {
            let a = input(0, "A")?;
            if a.len() != 2 {
                bail!("Gemm input A has rank {}", a.len());
            }
            let k = if attr_i(n, "transA").unwrap_or(0) != 0 { a[0] } else { a[1] };
            prod(out)?.checked_mul(k as u64).context("MAC count overflows u64")
        }
        "MatMul" => {
            let a = input(0, "A")?;
            let k = *a.last().context("MatMul input A is a scalar")?;
            prod(out)?.checked_mul(k as u64).context("MAC count overflows u64")
        }
        _ => Ok(0),
    }
}

const HEAVY: [&str; 4] = ["Conv", "ConvTranspose", "Gemm", "MatMul"];

fn count(path: &Path, facts: &[InputFact], ignore_value_info: bool) -> Result<Macs> {
    let proto = read_proto(path)?;
    let g = proto.graph.as_ref().context("model has no graph")?;
    let init_shapes: HashMap<&str, Vec<usize>> = g
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t.dims.iter().map(|d| (*d).max(0) as usize).collect()))
        .collect();
    let dir = path.parent().and_then(|p| p.to_str());
    let parsed = tract_onnx::onnx()
        .with_ignore_value_info(ignore_value_info)
        .parse(&proto, dir)
        .map_err(|e| anyhow!("parse failed: {e:#}"))?;
    let (mut model, outlets) = (parsed.model, parsed.outlets_by_name);
    concretize(&mut model, facts).context("setting input facts failed")?;
    // Obstinate: keep going past nodes tract cannot analyse; only the shapes we need matter.
    let analysis = model.analyse(true).err().map(|e| format!("{e:#}"));
    let shape_of = |name: &str| -> Option<Vec<usize>> {
        if let Some(s) = init_shapes.get(name) {
            return Some(s.clone());
        }
        let o = outlets.get(name)?;
        let f = model.outlet_fact(*o).ok()?;
        f.shape.as_concrete_finite().ok().flatten().map(|v| v.to_vec())
    };
    let mut per_node = BTreeMap::new();
    let mut total = 0u64;
    for n in &g.node {
        let op = n.op_type.as_str();
        if !HEAVY.contains(&op) || !(n.domain.is_empty() || n.domain == "ai.onnx") {
            continue;
        }
        let key = node_key(n);
        let unknown = |what: &str| {
            let mut m = format!("node '{key}' ({op}): shape of '{what}' unknown");
            if let Some(a) = &analysis {
                m.push_str(&format!(" (tract analysis: {a})"));
            }
            anyhow!(m)
        };
        let out_name = n.output.first().map(|s| s.as_str()).unwrap_or("");
        let out = shape_of(out_name).ok_or_else(|| unknown(out_name))?;
        let ins: Vec<Option<Vec<usize>>> = n.input.iter().map(|i| shape_of(i)).collect();
        let m = node_macs(op, n, &ins, &out).map_err(|e| {
            let missing = n.input.iter().find(|i| shape_of(i).is_none()).cloned();
            match missing {
                Some(i) => unknown(&i),
                None => anyhow!("node '{key}' ({op}): {e:#}"),
            }
        })?;
        total = total.checked_add(m).context("MAC count overflows u64")?;
        per_node.insert(key, m);
    }
    Ok(Macs { per_node, total })
}

/// MACs of `path`'s Conv/ConvTranspose/Gemm/MatMul nodes at the given input shapes. When the
/// shapes cannot be found, retries once ignoring value_info; the error is the first attempt's.
pub fn macs(path: &Path, facts: &[InputFact]) -> Result<Macs> {
    let r = guarded("shape analysis", || count(path, facts, false))
        .or_else(|e| guarded("shape analysis", || count(path, facts, true)).map_err(|_| e));
    r.with_context(|| path.display().to_string())
}
