//! How large a generated integer input may be: a model input that indexes a table (token ids
//! into an embedding through `Gather`, or onnxruntime's `EmbedLayerNormalization`) must stay
//! below the table's row count, or the engine refuses the run ("input index out of range"); one
//! that is one-hot encoded by comparing it with a constant (`Equal` against `arange(depth)`, as
//! jax2tf and tf2onnx export `one_hot`: Magika's byte values) must reach the constant's values,
//! or every generated row encodes to zeros or to the same few classes.
//! Contract: the bound of an input is the smallest of the row counts of the constant tables and
//! one past the largest value of the integer constants it compares equal with, reached through
//! shape-only and cast ops; no bound when it reaches none (then the name-based default of
//! [`super::inputs`] stands).

use std::collections::{BTreeMap, HashMap};
use tract_onnx::pb;

/// Ops an index passes through unchanged in value.
const CARRY: [&str; 8] = ["Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Transpose"];

/// Per graph input (by name): the exclusive upper bound its values must respect as indices.
pub fn index_bounds(g: &pb::GraphProto) -> BTreeMap<String, u64> {
    let mut consts: HashMap<&str, &pb::TensorProto> = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    for n in g.node.iter().filter(|n| n.op_type == "Constant") {
        if let (Some(o), Some(t)) =
            (n.output.first(), n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()))
        {
            consts.insert(o.as_str(), t);
        }
    }
    let mut readers: HashMap<&str, Vec<(&pb::NodeProto, usize)>> = HashMap::new();
    for n in &g.node {
        for (slot, i) in n.input.iter().enumerate().filter(|(_, i)| !i.is_empty()) {
            readers.entry(i.as_str()).or_default().push((n, slot));
        }
    }
    let rows = |table: Option<&String>, axis: i64| -> Option<u64> {
        let d = &consts.get(table?.as_str())?.dims;
        let axis = if axis < 0 { axis + d.len() as i64 } else { axis };
        d.get(usize::try_from(axis).ok()?).and_then(|&r| u64::try_from(r).ok()).filter(|&r| r > 0)
    };
    let mut out = BTreeMap::new();
    for input in &g.input {
        if consts.contains_key(input.name.as_str()) {
            continue;
        }
        let mut bound: Option<u64> = None;
        let (mut stack, mut seen) = (vec![input.name.as_str()], std::collections::HashSet::new());
        while let Some(v) = stack.pop() {
            if !seen.insert(v) {
                continue;
            }
            for &(n, slot) in readers.get(v).map(|r| r.as_slice()).unwrap_or(&[]) {
                let b = match (n.domain.as_str(), n.op_type.as_str(), slot) {
                    ("" | "ai.onnx", "Gather", 1) => {
                        let axis = n.attribute.iter().find(|a| a.name == "axis").map_or(0, |a| a.i);
                        rows(n.input.first(), axis)
                    }
                    // EmbedLayerNormalization(input_ids, segment_ids, word, position, segment,
                    // gamma, beta, mask, position_ids).
                    ("com.microsoft", "EmbedLayerNormalization", 0) => rows(n.input.get(2), 0),
                    ("com.microsoft", "EmbedLayerNormalization", 1) => rows(n.input.get(4), 0),
                    ("com.microsoft", "EmbedLayerNormalization", 8) => rows(n.input.get(3), 0),
                    // A one-hot encoding: the values it can match.
                    ("" | "ai.onnx", "Equal", s @ (0 | 1)) => n
                        .input
                        .get(1 - s)
                        .and_then(|c| consts.get(c.as_str()))
                        .and_then(|t| int_max(t))
                        .and_then(|m| u64::try_from(m).ok())
                        .map(|m| m + 1),
                    ("" | "ai.onnx", op, 0) if CARRY.contains(&op) => {
                        stack.extend(n.output.iter().map(String::as_str).filter(|o| !o.is_empty()));
                        None
                    }
                    _ => None,
                };
                if let Some(b) = b {
                    bound = Some(bound.map_or(b, |x| x.min(b)));
                }
            }
        }
        if let Some(b) = bound {
            out.insert(input.name.clone(), b);
        }
    }
    out
}

/// The largest value of an integer tensor stored in the model (raw little-endian data or the
/// typed fields); `None` for other types, an empty tensor, or data that does not decode.
fn int_max(t: &pb::TensorProto) -> Option<i64> {
    use pb::tensor_proto::DataType as D;
    let width = match D::try_from(t.data_type).ok()? {
        D::Int8 | D::Uint8 => 1,
        D::Int16 | D::Uint16 => 2,
        D::Int32 => 4,
        D::Int64 => 8,
        _ => return None,
    };
    let signed = !matches!(D::try_from(t.data_type).ok()?, D::Uint8 | D::Uint16);
    if t.raw_data.is_empty() {
        return match width {
            8 => t.int64_data.iter().copied().max(),
            _ => t.int32_data.iter().map(|&v| v as i64).max(),
        };
    }
    let chunks = t.raw_data.chunks_exact(width);
    if !chunks.remainder().is_empty() {
        return None;
    }
    chunks
        .map(|c| {
            let mut b = [0u8; 8];
            b[..width].copy_from_slice(c);
            let v = i64::from_le_bytes(b);
            if signed && width < 8 {
                let shift = 64 - 8 * width as u32;
                (v << shift) >> shift
            } else {
                v
            }
        })
        .max()
}
