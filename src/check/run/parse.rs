//! What tract is given to parse: the ONNX protobuf (external data beside it), ops it is known
//! not to run (refused up front with a reason instead of a panic), and boolean `attn_mask`
//! inputs of ONNX `Attention`, which tract would add as 0/1 and are rewritten into the spec's
//! additive form first.

use super::concretize;
use super::InputFact;
use crate::model::tensor::dt;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::prelude::{DatumType, InferenceModel, InferenceModelExt};
use tract_onnx::tract_hir::infer::Factoid;

fn model_dir(path: &Path) -> Option<&str> {
    path.parent().and_then(|p| p.to_str())
}

/// Parse an ONNX protobuf with tract (external data resolved relative to `path`'s folder).
pub(crate) fn parse_proto(
    path: &Path,
    proto: &pb::ModelProto,
    ignore_value_info: bool,
) -> Result<(InferenceModel, HashMap<String, tract_onnx::prelude::OutletId>)> {
    let r = tract_onnx::onnx()
        .with_ignore_value_info(ignore_value_info)
        .parse(proto, model_dir(path))
        .map_err(|e| anyhow!("parse failed: {e:#}"))?;
    if !r.unresolved_inputs.is_empty() {
        bail!("parse failed: values used but never defined: {}", r.unresolved_inputs.join(", "));
    }
    Ok((r.model, r.outlets_by_name))
}

/// ONNX `Attention` nodes (default domain) with an `attn_mask` input: (node index, mask name).
fn attention_masks(proto: &pb::ModelProto) -> Vec<(usize, String)> {
    let Some(g) = proto.graph.as_ref() else { return vec![] };
    g.node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type == "Attention" && (n.domain.is_empty() || n.domain == "ai.onnx"))
        .filter_map(|(i, n)| n.input.get(3).filter(|m| !m.is_empty()).map(|m| (i, m.clone())))
        .collect()
}

fn scalar(name: String, data_type: DatumType, v: f32) -> Result<pb::TensorProto> {
    let (code, raw) = match data_type {
        DatumType::F32 => (dt::FLOAT, v.to_le_bytes().to_vec()),
        DatumType::F16 => (dt::FLOAT16, half::f16::from_f32(v).to_le_bytes().to_vec()),
        DatumType::F64 => (dt::DOUBLE, (v as f64).to_le_bytes().to_vec()),
        other => bail!("attention with {other:?} inputs"),
    };
    Ok(pb::TensorProto { name, data_type: code, raw_data: raw, ..Default::default() })
}

/// tract treats a boolean `attn_mask` of ONNX `Attention` as an additive 0/1 mask, which gives
/// silently wrong results when the mask has zeros. Rewrite each boolean mask `m` into the
/// additive form the ONNX spec defines, `Where(m, 0, -inf)`, in the query's float type.
/// Returns the rewritten proto (None when nothing needed rewriting) and notes.
pub(super) fn fix_bool_attention_masks(
    path: &Path,
    proto: &pb::ModelProto,
    facts: &[InputFact],
    ignore_value_info: bool,
) -> Result<Option<(pb::ModelProto, Vec<String>)>> {
    let masks = attention_masks(proto);
    if masks.is_empty() {
        return Ok(None);
    }
    let (mut probe, outlets) = parse_proto(path, proto, ignore_value_info)?;
    concretize(&mut probe, facts)?;
    let analysis = probe.analyse(true).err();
    let g = proto.graph.as_ref().context("model has no graph")?;
    let dtype_of = |name: &str| -> Option<DatumType> {
        let o = outlets.get(name)?;
        probe.outlet_fact(*o).ok()?.datum_type.concretize()
    };
    let mut out = proto.clone();
    let mut notes = vec![];
    for (k, (ni, mask)) in masks.iter().enumerate() {
        let node = &g.node[*ni];
        let label = if node.name.is_empty() {
            format!("Attention:{}", node.output.first().cloned().unwrap_or_default())
        } else {
            node.name.clone()
        };
        let Some(mdt) = dtype_of(mask) else {
            let why = analysis.as_ref().map(|e| format!(" ({e:#})")).unwrap_or_default();
            bail!("Attention node '{label}': cannot tell the type of attn_mask '{mask}'; tract mishandles boolean masks, so the model is not verified{why}");
        };
        if mdt != DatumType::Bool {
            continue;
        }
        let q = node.input.first().map(|s| s.as_str()).unwrap_or("");
        let qdt = dtype_of(q).with_context(|| format!("Attention node '{label}': type of query '{q}' unknown"))?;
        let base = format!("{mask}__emp_additive_{k}");
        let og = out.graph.as_mut().context("model has no graph")?;
        og.initializer.push(scalar(format!("{base}_zero"), qdt, 0.0)?);
        og.initializer.push(scalar(format!("{base}_neginf"), qdt, f32::NEG_INFINITY)?);
        let where_node = pb::NodeProto {
            name: format!("{base}_where"),
            op_type: "Where".into(),
            input: vec![mask.clone(), format!("{base}_zero"), format!("{base}_neginf")],
            output: vec![base.clone()],
            ..Default::default()
        };
        // `masks` is in node order; each earlier insertion moved this node down by one.
        let at = ni + notes.len();
        og.node[at].input[3] = base.clone();
        og.node.insert(at, where_node);
        notes.push(format!("boolean attn_mask '{mask}' of Attention node '{label}' rewritten as Where(mask, 0, -inf) (tract would add it as 0/1)"));
    }
    if notes.is_empty() {
        return Ok(None);
    }
    Ok(Some((out, notes)))
}

/// Ops tract 0.23 is known not to run (or to misparse: it ignores the domain and takes
/// com.microsoft `Attention` for ONNX `Attention`, then panics). Refused up front with a clear
/// reason rather than a panic message.
const TRACT_UNSUPPORTED: &[(&str, &str)] = &[
    ("com.microsoft", "Attention"),
    ("com.microsoft", "MultiHeadAttention"),
    ("com.microsoft", "EmbedLayerNormalization"),
    ("com.microsoft", "DynamicQuantizeLSTM"),
];

/// Domains whose ops tract may run by their name: the standard ones and onnxruntime's.
const TRACT_DOMAINS: &[&str] = &["", "ai.onnx", "ai.onnx.ml", "com.microsoft"];

pub(super) fn known_unsupported(proto: &tract_onnx::pb::ModelProto) -> Option<String> {
    let g = proto.graph.as_ref()?;
    let known = g.node.iter().find_map(|n| {
        TRACT_UNSUPPORTED
            .iter()
            .find(|(d, o)| n.domain == *d && n.op_type == *o)
            .map(|(d, o)| format!("tract 0.23 cannot run {d} {o} (node '{}'; a known gap)", n.name))
    });
    // tract finds an op by its name alone: a node of another domain, such as a function of the
    // model named like a standard op (`custom:Relu` whose body is Relu(-x)), would run as the
    // standard op, and every figure would be another model's.
    known.or_else(|| {
        let local = |n: &pb::NodeProto| {
            proto
                .functions
                .iter()
                .any(|f| f.domain.as_deref() == Some(&n.domain) && f.name.as_deref() == Some(&n.op_type))
        };
        let n = g.node.iter().find(|n| !TRACT_DOMAINS.contains(&n.domain.as_str()) || local(n))?;
        let what = if local(n) { "a function of the model" } else { "an op of that domain" };
        Some(format!(
            "tract reads ops by name only and would run node '{}' ({}:{}, {what}) as the standard {}",
            n.name, n.domain, n.op_type, n.op_type
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(domain: &str, op: &str) -> pb::NodeProto {
        pb::NodeProto { name: "n".into(), domain: domain.into(), op_type: op.into(), ..Default::default() }
    }

    #[test]
    fn a_node_tract_would_read_as_another_op_is_refused() {
        let model = |n: pb::NodeProto, functions: Vec<pb::FunctionProto>| pb::ModelProto {
            graph: Some(pb::GraphProto { node: vec![n], ..Default::default() }),
            functions,
            ..Default::default()
        };
        assert_eq!(known_unsupported(&model(node("", "Relu"), vec![])), None);
        assert_eq!(known_unsupported(&model(node("com.microsoft", "FusedConv"), vec![])), None);
        let why = known_unsupported(&model(node("custom", "Relu"), vec![])).unwrap();
        assert!(why.contains("custom:Relu, an op of that domain"), "{why}");
        // A function of the model shadowing a standard op, even in a domain tract knows.
        let f =
            pb::FunctionProto { name: Some("Relu".into()), domain: Some("ai.onnx.ml".into()), ..Default::default() };
        let why = known_unsupported(&model(node("ai.onnx.ml", "Relu"), vec![f])).unwrap();
        assert!(why.contains("a function of the model"), "{why}");
    }
}
