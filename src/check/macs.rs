//! Multiply-accumulate counts of the heavy ops at concrete input shapes: Conv, ConvTranspose,
//! Gemm, MatMul, LSTM, GRU, RNN (the gate products of every step) and ONNX's Attention, and
//! onnxruntime's com.microsoft Attention,
//! MultiHeadAttention, FusedMatMul, FusedConv and FusedGemm (an attention counts its score and context products, and
//! the packed projection of onnxruntime's Attention; element-wise ops, normalisations and pools
//! count nothing).
//!
//! Shapes of intermediate values come from tract's inference analysis of the *un-decluttered*
//! model: tract's ONNX parser keeps a map from every ONNX value name to its outlet, so each
//! node's input and output shapes can be read by name. Where tract cannot analyse the model
//! (onnxruntime's fused ops), from one run in onnxruntime with every value made an output
//! ([`super::ort::value_shapes`]). Weight shapes come from the initializers. [`macs_per_inference`]
//! counts one inference: the first sample of the inputs, as latency is timed.

use super::inputs::{read_proto, InputFact, Inputs};
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
        "MatMul" | "FusedMatMul" => {
            // FusedMatMul (com.microsoft): transA takes A's second-to-last axis as the inner one.
            let a = input(0, "A")?;
            let k = if op == "FusedMatMul" && attr_i(n, "transA").unwrap_or(0) != 0 {
                *a.iter().rev().nth(1).context("FusedMatMul input A of rank < 2")?
            } else {
                *a.last().context("MatMul input A is a scalar")?
            };
            prod(out)?.checked_mul(k as u64).context("MAC count overflows u64")
        }
        "Attention" if n.domain == "com.microsoft" => {
            // input [B, S, H_in] · weights [H_in, D_q + D_k + D_v], then per head the scores
            // (each query row against L keys: D_q per pair) and the context (each output element
            // sums L values). L = S, plus the past's length when a past state is given.
            let x = input(0, "input")?;
            let w = input(1, "weights")?;
            if x.len() != 3 || w.len() != 2 {
                bail!("Attention input of rank {} or weights of rank {}", x.len(), w.len());
            }
            let dq = match n.attribute.iter().find(|a| a.name == "qkv_hidden_sizes") {
                Some(a) if a.ints.len() == 3 => a.ints[0].max(0) as usize,
                _ => w[1] / 3,
            };
            let past = match ins.get(4).and_then(|s| s.as_ref()) {
                Some(p) if p.len() == 5 => p[3],
                _ => 0,
            };
            let l = (x[1] + past) as u64;
            let proj = prod(x)?.checked_mul(w[1] as u64);
            let scores = prod(&[x[0], x[1], dq])?.checked_mul(l);
            let context = prod(out)?.checked_mul(l);
            proj.zip(scores)
                .zip(context)
                .and_then(|((a, b), c)| a.checked_add(b)?.checked_add(c))
                .context("MAC count overflows u64")
        }
        "Attention" | "MultiHeadAttention" => {
            // ONNX Attention (Q, K, V as [B, H, S, d] or [B, S, H·d]) and com.microsoft
            // MultiHeadAttention (query [B, S, D], key [B, L, D] or [B, H, L, d]): scores
            // prod(Q) · L, context prod(out) · L, L the keys' length (plus a past key's).
            let q = input(0, "query")?;
            let k = input(1, "key")?;
            let seq = |t: &Vec<usize>| match t.len() {
                4 => Ok(t[2]),
                3 => Ok(t[1]),
                r => Err(anyhow!("{op} key of rank {r}")),
            };
            let past = match (op, ins.get(4).and_then(|s| s.as_ref())) {
                ("Attention", Some(p)) if p.len() == 4 => p[2],
                _ => 0,
            };
            let l = (seq(k)? + past) as u64;
            let scores = prod(q)?.checked_mul(l);
            let context = prod(out)?.checked_mul(l);
            scores.zip(context).and_then(|(a, b)| a.checked_add(b)).context("MAC count overflows u64")
        }
        "LSTM" | "GRU" | "RNN" => {
            // Every step's gate products W x_t and R h_{t−1}, for every direction:
            // T·B · dirs·G·H · (I + H), X [T, B, I] (or [B, T, I]), W [dirs, G·H, I], R [.., .., H].
            let (x, w, r) = (input(0, "X")?, input(1, "W")?, input(2, "R")?);
            if x.len() != 3 || w.len() != 3 || r.len() != 3 {
                bail!("{op} X, W or R is not 3-D");
            }
            let per_step = prod(&w[..2])?.checked_mul((w[2] + r[2]) as u64);
            per_step.and_then(|m| m.checked_mul(prod(&x[..2]).ok()?)).context("MAC count overflows u64")
        }
        _ => Ok(0),
    }
}

/// The output shape of an ONNX Attention from its query and value shapes (tract 0.23 does not
/// infer it): [B, H_q, S, d_v] for 4-D inputs, [B, S, q_num_heads · d_v] for 3-D ones.
fn attention_output(n: &pb::NodeProto, ins: &[Option<Vec<usize>>]) -> Option<Vec<usize>> {
    if n.op_type != "Attention" || !(n.domain.is_empty() || n.domain == "ai.onnx") {
        return None;
    }
    let (q, v) = (ins.first()?.as_ref()?, ins.get(2)?.as_ref()?);
    match (q.len(), v.len()) {
        (4, 4) => Some(vec![q[0], q[1], q[2], v[3]]),
        (3, 3) => {
            let (qh, kvh) = (attr_i(n, "q_num_heads")?, attr_i(n, "kv_num_heads")?);
            let (qh, kvh) = (usize::try_from(qh).ok()?, usize::try_from(kvh).ok().filter(|&k| k > 0)?);
            Some(vec![q[0], q[1], qh * (v[2] / kvh)])
        }
        _ => None,
    }
}

/// Whether `node_macs` counts this node.
fn heavy(n: &pb::NodeProto) -> bool {
    match n.domain.as_str() {
        "" | "ai.onnx" => matches!(
            n.op_type.as_str(),
            "Conv" | "ConvTranspose" | "Gemm" | "MatMul" | "Attention" | "LSTM" | "GRU" | "RNN"
        ),
        "com.microsoft" => {
            matches!(n.op_type.as_str(), "Attention" | "MultiHeadAttention" | "FusedMatMul" | "FusedConv" | "FusedGemm")
        }
        _ => false,
    }
}

fn count(path: &Path, facts: &[InputFact], ignore_value_info: bool) -> Result<Macs> {
    let proto = read_proto(path)?;
    // tract ignores the model's functions: their bodies are counted inlined.
    let proto = super::inline::inline_functions(&proto).unwrap_or(proto);
    let g = proto.graph.as_ref().context("model has no graph")?;
    let dir = path.parent().and_then(|p| p.to_str());
    let parsed = tract_onnx::onnx()
        .with_ignore_value_info(ignore_value_info)
        .parse(&proto, dir)
        .map_err(|e| anyhow!("parse failed: {e:#}"))?;
    let (mut model, outlets) = (parsed.model, parsed.outlets_by_name);
    concretize(&mut model, facts).context("setting input facts failed")?;
    // Obstinate: keep going past nodes tract cannot analyse; only the shapes we need matter.
    let analysis = model.analyse(true).err().map(|e| format!("tract analysis: {e:#}"));
    let shape_of = |name: &str| -> Option<Vec<usize>> {
        let o = outlets.get(name)?;
        let f = model.outlet_fact(*o).ok()?;
        f.shape.as_concrete_finite().ok().flatten().map(|v| v.to_vec())
    };
    count_with(g, &shape_of, analysis.as_deref())
}

/// The count over `g`'s heavy nodes, with intermediate shapes from `shape_of` (initializers'
/// from their dims); `why` says where unknown shapes come from.
fn count_with(g: &pb::GraphProto, shape_of: &dyn Fn(&str) -> Option<Vec<usize>>, why: Option<&str>) -> Result<Macs> {
    let init_shapes: HashMap<&str, Vec<usize>> = g
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t.dims.iter().map(|d| (*d).max(0) as usize).collect()))
        .collect();
    let shape_of = |name: &str| init_shapes.get(name).cloned().or_else(|| shape_of(name));
    let mut per_node = BTreeMap::new();
    let mut total = 0u64;
    for n in g.node.iter().filter(|n| heavy(n)) {
        // onnxruntime's offline-optimised FusedConv / FusedGemm: a Conv / Gemm with its
        // activation fused, same operands and attributes.
        let op = match (n.domain.as_str(), n.op_type.as_str()) {
            ("com.microsoft", "FusedConv") => "Conv",
            ("com.microsoft", "FusedGemm") => "Gemm",
            (_, op) => op,
        };
        let key = node_key(n);
        let unknown = |what: &str| {
            let mut m = format!("node '{key}' ({op}): shape of '{what}' unknown");
            if let Some(a) = why {
                m.push_str(&format!(" ({a})"));
            }
            anyhow!(m)
        };
        let out_name = n.output.first().map(|s| s.as_str()).unwrap_or("");
        let ins: Vec<Option<Vec<usize>>> =
            n.input.iter().map(|i| if i.is_empty() { None } else { shape_of(i) }).collect();
        // A recurrent layer's count needs no output shape (its Y may be left out).
        let recurrent = matches!(op, "LSTM" | "GRU" | "RNN");
        let out = shape_of(out_name)
            .or_else(|| attention_output(n, &ins))
            .or_else(|| recurrent.then(Vec::new))
            .ok_or_else(|| unknown(out_name))?;
        let m = node_macs(op, n, &ins, &out).map_err(|e| {
            let missing = n.input.iter().find(|i| !i.is_empty() && shape_of(i).is_none()).cloned();
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

/// MACs of one inference of `path`: counted at the first sample of `inputs` (what latency times),
/// or at all of them when the model's axis 0 is not a free batch axis. Where tract cannot count
/// them, from onnxruntime's shapes of one run (the second element says so).
pub fn macs_per_inference(path: &Path, inputs: &Inputs) -> Result<(Macs, Option<&'static str>)> {
    let one = inputs.head(1);
    let tract = match &one {
        Some(one) => macs(path, &one.facts()).or_else(|e| macs(path, &inputs.facts()).map_err(|_| e)),
        None => macs(path, &inputs.facts()),
    };
    let tract_err = match tract {
        Ok(m) => return Ok((m, None)),
        Err(e) => e,
    };
    let run = one.as_ref().unwrap_or(inputs);
    let from_ort = guarded("shape analysis", || {
        let mut shapes = super::ort::value_shapes(path, run)?;
        shapes.extend(run.shapes());
        let proto = read_proto(path)?;
        let g = proto.graph.as_ref().context("model has no graph")?;
        count_with(g, &|name: &str| shapes.get(name).cloned(), Some("onnxruntime's run"))
    });
    match from_ort {
        Ok(m) => Ok((m, Some("onnxruntime"))),
        Err(ort) => Err(anyhow!("{tract_err:#}; onnxruntime's shapes: {ort:#}")),
    }
}
