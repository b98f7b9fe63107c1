//! Constant biases shared by several layers, for the channel analysis.
//!
//! Exporters and simplifiers deduplicate equal constants: onnxslim (Ultralytics' default export)
//! makes every layer whose folded bias is all zeros read one initializer. Read directly, a shared
//! tensor ties its readers' channels together (slicing it must suit them all), and a
//! random-weight YOLOv8n collapsed into one group of 191 nodes. torch.onnx writes the same
//! sharing as one `Identity` per reader, which the analysis already treats as each reader's own
//! constant (and the rewrite gives its own initializer when it changes).
//!
//! Contract: [`split`] returns a copy of the model in which each reader of a shared 1-D float
//! constant read only as a Conv / ConvTranspose / Gemm bias, the bias Add after a MatMul, a
//! BatchNormalization / InstanceNormalization / LayerNormalization / RMSNorm parameter, or the
//! parameters and biases of onnxruntime's fused ops, reads it through its own new `Identity` (None when there is none: the model is used as is). [`rejoin`] undoes that
//! on a rewritten model: an inserted `Identity` still there is removed and its reader reads the shared constant again; one the
//! rewrite replaced by an initializer of its own (its reader's channels changed) stays so. What no
//! rewrite touched comes out as it went in.

use crate::model::graph::{GraphIndex, WeightRef};
use anyhow::Result;
use onnx_protobuf::{ModelProto, NodeProto};
use std::collections::{BTreeMap, HashSet};

/// Inserted alias output → the shared constant it reads.
pub type Aliases = BTreeMap<String, String>;

fn private_slot(g: &onnx_protobuf::GraphProto, ix: &GraphIndex, n: &NodeProto, slot: usize) -> bool {
    let std = |n: &NodeProto| n.domain.is_empty() || n.domain == "ai.onnx";
    if n.domain == "com.microsoft" {
        // onnxruntime's fused ops: Skip/EmbedLayerNormalization's gamma, beta (and bias), a fused
        // activation's bias, Attention's packed QKV bias.
        return match n.op_type.as_str() {
            "SkipLayerNormalization" => (2..=4).contains(&slot),
            "SkipSimplifiedLayerNormalization" => slot == 2,
            "EmbedLayerNormalization" => (5..=6).contains(&slot),
            "BiasGelu" | "FastGelu" => slot == 1,
            "Attention" => slot == 2,
            _ => false,
        };
    }
    std(n)
        && match n.op_type.as_str() {
            "Conv" | "ConvTranspose" | "Gemm" => slot == 2,
            "BatchNormalization" => (1..=4).contains(&slot),
            "InstanceNormalization"
            | "GroupNormalization"
            | "LayerNormalization"
            | "RMSNormalization"
            | "SimplifiedLayerNormalization" => (1..=2).contains(&slot),
            // A MatMul's bias, added after it (how exporters write a Linear on a sequence).
            "Add" if n.input.len() == 2 && slot < 2 => {
                ix.producer.get(&n.input[1 - slot]).is_some_and(|&p| g.node[p].op_type == "MatMul" && std(&g.node[p]))
            }
            _ => false,
        }
}

/// The model with each reader of a shared bias-like constant given its own `Identity`, or None.
pub fn split(model: &ModelProto) -> Result<Option<(ModelProto, Aliases)>> {
    let Some(g) = model.graph.as_ref() else { return Ok(None) };
    let ix = GraphIndex::build(g)?;
    let mut shared: Vec<&str> = vec![];
    for (name, _) in ix.weights.iter() {
        let users = ix.consumers_of(name);
        let Some(t) = ix.weight(g, name) else { continue };
        if users.len() < 2
            || !matches!(ix.weights.get(name), Some(WeightRef::Init(_)))
            || ix.inputs.contains(name)
            || ix.outputs.contains(name)
            || ix.captured.contains(name)
            || t.dims.len() != 1
            || !crate::model::tensor::is_float(t.data_type)
            || !users.iter().all(|&(ni, slot)| private_slot(g, &ix, &g.node[ni], slot))
        {
            continue;
        }
        shared.push(name);
    }
    if shared.is_empty() {
        return Ok(None);
    }
    let mut taken: HashSet<String> = g.node.iter().flat_map(|n| n.output.iter().cloned()).collect();
    taken.extend(ix.weights.keys().cloned());
    taken.extend(g.input.iter().map(|v| v.name.clone()));
    let mut m = model.clone();
    let mg = m.graph.as_mut().expect("graph");
    let mut aliases = Aliases::new();
    let mut front = vec![];
    for name in shared {
        for (k, &(ni, slot)) in ix.consumers_of(name).iter().enumerate() {
            let mut alias = format!("{name}_{k}");
            while taken.contains(&alias) {
                alias.push('_');
            }
            taken.insert(alias.clone());
            let mut id = NodeProto::new();
            id.op_type = "Identity".into();
            id.name = alias.clone();
            id.input = vec![name.to_string()];
            id.output = vec![alias.clone()];
            front.push(id);
            mg.node[ni].input[slot] = alias.clone();
            aliases.insert(alias, name.to_string());
        }
    }
    // At the front: constants' aliases depend on nothing, and node indices shift uniformly.
    front.append(&mut mg.node);
    mg.node = front;
    Ok(Some((m, aliases)))
}

/// Undo [`split`] where the rewrite left an inserted alias as it was, and give readers whose own
/// copies came out identical one copy.
pub fn rejoin(m: &mut ModelProto, aliases: &Aliases) {
    let Some(g) = m.graph.as_mut() else { return };
    let mut back: BTreeMap<&str, &str> = BTreeMap::new();
    g.node.retain(|n| {
        let inserted = n.op_type == "Identity"
            && n.output.len() == 1
            && aliases.get(&n.output[0]).is_some_and(|src| n.input.first() == Some(src));
        if inserted {
            let (k, v) = aliases.get_key_value(&n.output[0]).expect("alias");
            back.insert(k, v);
        }
        !inserted
    });
    // Readers the rewrite gave identical copies of one shared constant (the layers of one stream,
    // keeping the same units) read one copy again: untying must not multiply parameters. Only
    // copies holding their data compare (a hollow one's data is elsewhere).
    let mut canon: BTreeMap<String, String> = BTreeMap::new();
    type Copy<'a> = (&'a str, Vec<i64>, i32, Vec<u8>, Vec<u32>); // source, dims, type, data
    let mut seen: BTreeMap<Copy, String> = BTreeMap::new();
    for t in &g.initializer {
        let Some(src) = aliases.get(&t.name) else { continue };
        if t.raw_data.is_empty() && t.float_data.is_empty() {
            continue;
        }
        let key = (
            src.as_str(),
            t.dims.clone(),
            t.data_type,
            t.raw_data.clone(),
            t.float_data.iter().map(|v| v.to_bits()).collect(),
        );
        match seen.get(&key) {
            Some(first) => {
                canon.insert(t.name.clone(), first.clone());
            }
            None => {
                seen.insert(key, t.name.clone());
            }
        }
    }
    g.initializer.retain(|t| !canon.contains_key(&t.name));
    for n in g.node.iter_mut() {
        for i in n.input.iter_mut() {
            if let Some(src) = back.get(i.as_str()) {
                *i = src.to_string();
            } else if let Some(c) = canon.get(i.as_str()) {
                *i = c.clone();
            }
        }
    }
}

/// Elements of the float initializers and Constant tensors, from their dims (a hollow tensor,
/// whose data is elsewhere, counts as it will be).
pub fn elements(m: &ModelProto) -> u64 {
    let Some(g) = m.graph.as_ref() else { return 0 };
    use crate::model::tensor;
    let count = |t: &onnx_protobuf::TensorProto| {
        if tensor::is_float(t.data_type) {
            tensor::numel(t).unwrap_or(0) as u64
        } else {
            0
        }
    };
    let consts =
        g.node.iter().filter(|n| n.op_type == "Constant").flat_map(|n| &n.attribute).filter_map(|a| a.t.as_ref());
    g.initializer.iter().map(count).sum::<u64>() + consts.map(count).sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tensor;
    use onnx_protobuf::GraphProto;

    use crate::model::graph::node_of as node;

    fn model() -> ModelProto {
        let mut g = GraphProto::new();
        g.initializer.push(tensor::new_f32("w1", &[4, 3, 1, 1], &[0.5; 12]));
        g.initializer.push(tensor::new_f32("w2", &[4, 4, 1, 1], &[0.5; 16]));
        g.initializer.push(tensor::new_f32("b", &[4], &[0.0; 4]));
        g.node.push(node("Conv", &["x", "w1", "b"], "h"));
        g.node.push(node("Conv", &["h", "w2", "b"], "y"));
        let mut m = ModelProto::new();
        m.graph = Some(g).into();
        m
    }

    #[test]
    fn each_reader_of_a_shared_bias_gets_an_alias_and_untouched_ones_rejoin() {
        let m = model();
        let (mut s, aliases) = split(&m).unwrap().expect("a shared bias");
        let g = s.graph.as_ref().unwrap();
        assert_eq!(g.node.iter().filter(|n| n.op_type == "Identity").count(), 2);
        assert_eq!((g.node[2].input[2].as_str(), g.node[3].input[2].as_str()), ("b_0", "b_1"));
        assert_eq!(aliases.values().collect::<Vec<_>>(), ["b", "b"]);
        // A rewrite that gave the first reader its own initializer: only the second rejoins.
        let g = s.graph.as_mut().unwrap();
        g.node.remove(0);
        g.initializer.push(tensor::new_f32("b_0", &[3], &[0.0; 3]));
        rejoin(&mut s, &aliases);
        let g = s.graph.as_ref().unwrap();
        assert_eq!(g.node.len(), 2);
        assert_eq!((g.node[0].input[2].as_str(), g.node[1].input[2].as_str()), ("b_0", "b"));
        // Nothing rewritten: the model as it was.
        let (mut s, aliases) = split(&m).unwrap().unwrap();
        rejoin(&mut s, &aliases);
        assert_eq!(s, m);
    }

    #[test]
    fn readers_given_identical_copies_share_one() {
        let m = model();
        let (mut s, aliases) = split(&m).unwrap().unwrap();
        // Both readers' channels changed the same way: two equal copies, one kept.
        let g = s.graph.as_mut().unwrap();
        g.node.drain(0..2);
        g.initializer.push(tensor::new_f32("b_0", &[3], &[0.5; 3]));
        g.initializer.push(tensor::new_f32("b_1", &[3], &[0.5; 3]));
        rejoin(&mut s, &aliases);
        let g = s.graph.as_ref().unwrap();
        assert_eq!((g.node[0].input[2].as_str(), g.node[1].input[2].as_str()), ("b_0", "b_0"));
        assert!(g.initializer.iter().all(|t| t.name != "b_1"));
        // Different copies stay apart.
        let (mut s, aliases) = split(&m).unwrap().unwrap();
        let g = s.graph.as_mut().unwrap();
        g.node.drain(0..2);
        g.initializer.push(tensor::new_f32("b_0", &[3], &[0.5; 3]));
        g.initializer.push(tensor::new_f32("b_1", &[3], &[0.25; 3]));
        rejoin(&mut s, &aliases);
        let g = s.graph.as_ref().unwrap();
        assert_eq!((g.node[0].input[2].as_str(), g.node[1].input[2].as_str()), ("b_0", "b_1"));
    }

    #[test]
    fn a_weight_shared_as_a_weight_is_left_tied() {
        let mut m = model();
        let g = m.graph.as_mut().unwrap();
        g.node[1].input[1] = "w1".into();
        g.node[1].input[2] = String::new();
        assert!(split(&m).unwrap().is_none());
    }
}
