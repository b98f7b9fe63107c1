//! How large a generated integer input may be: a model input that indexes a table (token ids
//! into an embedding through `Gather`, or onnxruntime's `EmbedLayerNormalization`) must stay
//! below the table's row count, or the engine refuses the run ("input index out of range").
//! Contract: the bound of an input is the smallest row count of any constant table it reaches
//! through shape-only and cast ops; no bound when it reaches none (then the name-based default
//! of [`super::inputs`] stands).

use std::collections::{BTreeMap, HashMap};
use tract_onnx::pb;

/// Ops an index passes through unchanged in value.
const CARRY: [&str; 8] = ["Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Transpose"];

/// Per graph input (by name): the exclusive upper bound its values must respect as indices.
pub fn index_bounds(g: &pb::GraphProto) -> BTreeMap<String, u64> {
    let mut dims: HashMap<&str, &[i64]> = g.initializer.iter().map(|t| (t.name.as_str(), t.dims.as_slice())).collect();
    for n in g.node.iter().filter(|n| n.op_type == "Constant") {
        if let (Some(o), Some(t)) =
            (n.output.first(), n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()))
        {
            dims.insert(o.as_str(), t.dims.as_slice());
        }
    }
    let mut readers: HashMap<&str, Vec<(&pb::NodeProto, usize)>> = HashMap::new();
    for n in &g.node {
        for (slot, i) in n.input.iter().enumerate().filter(|(_, i)| !i.is_empty()) {
            readers.entry(i.as_str()).or_default().push((n, slot));
        }
    }
    let rows = |table: Option<&String>, axis: i64| -> Option<u64> {
        let d = dims.get(table?.as_str())?;
        let axis = if axis < 0 { axis + d.len() as i64 } else { axis };
        d.get(usize::try_from(axis).ok()?).and_then(|&r| u64::try_from(r).ok()).filter(|&r| r > 0)
    };
    let mut out = BTreeMap::new();
    for input in &g.input {
        if dims.contains_key(input.name.as_str()) {
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
