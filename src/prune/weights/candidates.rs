//! What a prunable weight and an output unit are, per op (the one table), and which weights of a
//! model are candidates (`Include`, small units left dense).

use super::*;
use std::collections::HashMap;

/// A candidate weight: where it is, and along which axis its output units lie.
#[derive(Clone, Debug)]
pub(super) struct Candidate {
    pub(super) name: String,
    pub(super) wref: WeightRef,
    /// axis of output units, None = whole tensor is one unit
    pub(super) unit_axis: Option<usize>,
    pub(super) role: String,
    pub(super) used_by: Vec<String>,
}

/// Which input slots of an op are prunable weights, their role and unit axis (given the rank).
/// The one place that says what "a weight" and "an output unit" are per op.
pub(super) fn weight_slots(n: &NodeProto, inc: &Include) -> Vec<(usize, &'static str, UnitAxis)> {
    let dom_ok = n.domain.is_empty() || n.domain == "ai.onnx";
    let ms = n.domain == "com.microsoft";
    match (n.op_type.as_str(), dom_ok, ms) {
        ("Conv", true, _) => {
            let mut v = vec![(1, "weight", UnitAxis::Fixed(0))];
            if inc.bias {
                v.push((2, "bias", UnitAxis::Whole));
            }
            v
        }
        // ConvTranspose W = [C_in, C_out/group, k...]: an output unit is a slice of axis 1.
        ("ConvTranspose", true, _) => {
            let mut v = vec![(1, "weight", UnitAxis::Fixed(1))];
            if inc.bias {
                v.push((2, "bias", UnitAxis::Whole));
            }
            v
        }
        ("Gemm", true, _) => {
            let tb = int_attr(n, "transB").ok().flatten().unwrap_or(0) != 0;
            let ta = int_attr(n, "transA").ok().flatten().unwrap_or(0) != 0;
            let mut v = vec![
                (1, "weight", UnitAxis::Fixed(if tb { 0 } else { 1 })),
                (0, "weight", UnitAxis::Fixed(if ta { 1 } else { 0 })),
            ];
            if inc.bias {
                v.push((2, "bias", UnitAxis::Whole));
            }
            v
        }
        // MatMul: a constant B [.., K, N] has output units along its last axis; a constant
        // A [.., M, K] along its second-to-last.
        // A 1-D B [K] has no output axis: it is one unit.
        ("MatMul", true, _) => vec![(1, "weight", UnitAxis::LastOfMatrix), (0, "weight", UnitAxis::SecondLast)],
        // W [dirs, G·H, in], R [dirs, G·H, H]: a unit is one gate row.
        ("LSTM" | "GRU" | "RNN", true, _) => {
            let mut v = vec![(1, "weight", UnitAxis::Fixed(1)), (2, "recurrence", UnitAxis::Fixed(1))];
            if inc.bias {
                v.push((3, "bias", UnitAxis::Whole));
            }
            v
        }
        // com.microsoft Attention: weights [hidden, 3·hidden], bias [3·hidden].
        ("Attention", _, true) => {
            let mut v = vec![(1, "qkv-weight", UnitAxis::Last)];
            if inc.bias {
                v.push((2, "bias", UnitAxis::Whole));
            }
            v
        }
        (
            "BatchNormalization"
            | "InstanceNormalization"
            | "LayerNormalization"
            | "GroupNormalization"
            | "SkipLayerNormalization"
            | "SimplifiedLayerNormalization",
            _,
            _,
        ) if inc.norm => (1..n.input.len()).map(|i| (i, "norm", UnitAxis::Whole)).collect(),
        ("Gather", true, _) if inc.embedding => vec![(0, "embedding", UnitAxis::Fixed(0))],
        // onnxruntime's fused embeddings: word, position and segment tables (rows are units),
        // then gamma and beta.
        ("EmbedLayerNormalization", _, true) => {
            let mut v = vec![];
            if inc.embedding {
                v.extend([2, 3, 4].map(|i| (i, "embedding", UnitAxis::Fixed(0))));
            }
            if inc.norm {
                v.extend([5, 6].map(|i| (i, "norm", UnitAxis::Whole)));
            }
            v
        }
        ("Add", true, _) if inc.bias => vec![(0, "bias", UnitAxis::Whole), (1, "bias", UnitAxis::Whole)],
        _ => vec![],
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum UnitAxis {
    Whole,
    Fixed(usize),
    Last,
    /// The last axis of a tensor of rank 2 or more.
    LastOfMatrix,
    SecondLast,
}

impl UnitAxis {
    fn resolve(self, rank: usize) -> Option<usize> {
        match self {
            UnitAxis::Whole => None,
            UnitAxis::Fixed(a) if a < rank => Some(a),
            UnitAxis::Fixed(_) => None,
            UnitAxis::Last if rank >= 1 => Some(rank - 1),
            UnitAxis::LastOfMatrix if rank >= 2 => Some(rank - 1),
            UnitAxis::SecondLast if rank >= 2 => Some(rank - 2),
            _ => None,
        }
    }
}

/// An int attribute, or an error when the attribute exists with another type (a FLOAT
/// `transB = 1.0` must not silently read as 0).
pub(super) fn int_attr(n: &NodeProto, name: &str) -> Result<Option<i64>> {
    match graph::attr(n, name) {
        None => Ok(None),
        Some(a) if a.type_.value() == 2 || (a.type_.value() == 0 && a.f == 0.0) => Ok(Some(a.i)),
        Some(a) => bail!(
            "node '{}' ({}): attribute '{name}' must be an INT, found attribute type {}",
            node_label(n),
            n.op_type,
            a.type_.value()
        ),
    }
}

/// Is a weight of this op and dtype a candidate? `Ok(false)`: legitimately not a float weight
/// (an integer MatMul, a quantized embedding), skip it. `Err`: the model is invalid.
pub(super) fn check_weight(n: &NodeProto, role: &str, name: &str, t: &onnx_protobuf::TensorProto) -> Result<bool> {
    let main = matches!(role, "weight" | "recurrence" | "qkv-weight");
    let what = || format!("node '{}' ({}): {role} '{name}'", node_label(n), n.op_type);
    if main {
        let rank = t.dims.len();
        let ok = match n.op_type.as_str() {
            "Conv" | "ConvTranspose" => rank >= 3,
            "Gemm" | "Attention" => rank == 2,
            "LSTM" | "GRU" | "RNN" => rank == 3,
            _ => rank >= 1,
        };
        if !ok {
            bail!("{} has dims {:?}: rank {rank} is not valid for {}", what(), t.dims, n.op_type);
        }
    }
    if tensor::is_float(t.data_type) {
        return Ok(true);
    }
    let integer = matches!(
        t.data_type,
        tensor::dt::INT8
            | tensor::dt::UINT8
            | tensor::dt::INT16
            | tensor::dt::UINT16
            | tensor::dt::INT32
            | tensor::dt::UINT32
            | tensor::dt::INT64
            | tensor::dt::UINT64
    );
    let ints_ok = matches!(n.op_type.as_str(), "Gemm" | "MatMul");
    if main && !(integer && ints_ok) {
        bail!(
            "{} has type {} ({}): {} needs a float weight",
            what(),
            tensor::dtype_name(t.data_type),
            t.data_type,
            n.op_type
        );
    }
    Ok(false)
}

pub(super) fn find_candidates(g: &GraphProto, ix: &GraphIndex, inc: &Include) -> Result<Vec<Candidate>> {
    let mut out: Vec<Candidate> = Vec::new();
    let mut pos: BTreeMap<String, usize> = BTreeMap::new();
    // (candidate, label) pairs already recorded: a weight shared by many nodes stays linear.
    let mut seen: HashSet<(usize, String)> = HashSet::new();
    let mut read_elsewhere: HashMap<String, bool> = HashMap::new();
    for n in &g.node {
        if n.op_type == "Gemm" {
            int_attr(n, "transA")?;
            int_attr(n, "transB")?;
        }
        for (slot, role, ua) in weight_slots(n, inc) {
            let Some(name) = n.input.get(slot).filter(|s| !s.is_empty()) else { continue };
            // A weight read through Identity / Cast / Transpose (torch's shared parameters,
            // mixed-precision storage, converters' layouts) is the stored tensor, its unit axis
            // mapped back through the permutations.
            let view = view_of(g, ix, name);
            let (name, perm) = match &view {
                Some((base, perm)) => (base, Some(perm)),
                None => (name, None),
            };
            // A Add "bias" must be a constant vector feeding an Add after a MatMul/Gemm/Conv.
            if !ix.is_constant(name) {
                continue;
            }
            let Some(&wref) = ix.weights.get(name) else { continue };
            let Some(t) = graph::weight(g, wref) else { continue };
            if !check_weight(n, role, name, t)? {
                continue;
            }
            // Once per tensor: a weight shared by 30 000 nodes was quadratic.
            let elsewhere =
                *read_elsewhere.entry(name.clone()).or_insert_with(|| other_reader(g, ix, inc, name).is_some());
            if elsewhere {
                continue;
            }
            let rank = t.dims.len();
            let axis = ua.resolve(rank).map(|a| perm.map_or(a, |p| p[a]));
            if is_small_filter(role, t, axis) && !inc.small {
                continue;
            }
            let label = format!("{} {}", n.op_type, node_label(n));
            match pos.get(name) {
                Some(&i) => {
                    let c = &mut out[i];
                    if seen.insert((i, label.clone())) {
                        c.used_by.push(label);
                    }
                    // Consumers disagree on what a unit is: score the tensor as one group.
                    if c.unit_axis != axis {
                        c.unit_axis = None;
                    }
                }
                None => {
                    pos.insert(name.clone(), out.len());
                    seen.insert((out.len(), label.clone()));
                    out.push(Candidate {
                        name: name.clone(),
                        wref,
                        unit_axis: axis,
                        role: role.to_string(),
                        used_by: vec![label],
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The stored constant a weight slot reads through `Identity`, float-to-float `Cast` and
/// `Transpose` nodes (at least one), and for each axis of what the slot reads, the axis of the
/// stored tensor it is (the element positions match one to one, so zeroing the stored tensor
/// zeroes what the slot reads). None when `name` is not such a view.
pub(super) fn view_of(g: &GraphProto, ix: &GraphIndex, name: &str) -> Option<(String, Vec<usize>)> {
    // The nodes from the slot back to the stored tensor (each keeps its input's rank).
    let mut chain: Vec<&NodeProto> = vec![];
    let mut cur = name;
    while !ix.weights.contains_key(cur) {
        if chain.len() == 8 {
            return None;
        }
        let n = &g.node[*ix.producer.get(cur)?];
        chain.push(n);
        cur = n.input.first()?.as_str();
    }
    let rank = graph::weight(g, *ix.weights.get(cur)?)?.dims.len();
    let mut map: Vec<usize> = (0..rank).collect();
    for n in &chain {
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return None;
        }
        match n.op_type.as_str() {
            "Identity" => {}
            "Cast" => {
                let from = ix.weights.get(&n.input[0]).and_then(|&r| graph::weight(g, r)).map(|t| t.data_type);
                if !tensor::is_float(graph::attr_i(n, "to")? as i32) || from.is_some_and(|f| !tensor::is_float(f)) {
                    return None;
                }
            }
            "Transpose" => {
                let p: Vec<usize> = match graph::attr_ints(n, "perm") {
                    Some(p) => {
                        p.iter().map(|&a| usize::try_from(a).ok().filter(|&a| a < rank)).collect::<Option<_>>()?
                    }
                    None => (0..rank).rev().collect(),
                };
                if p.len() != rank {
                    return None;
                }
                for a in map.iter_mut() {
                    *a = p[*a];
                }
            }
            _ => return None,
        }
    }
    (!chain.is_empty()).then(|| (cur.to_string(), map))
}

/// Why a weight a weight slot reads is not a candidate: something else reads its values too (a
/// tied embedding table's Gather when embeddings are not pruned, an Add that uses it as data, a
/// node inside an If/Loop/Scan body, a graph output). Zeroing it would change that reader as
/// well, which is not the layer's pruning (a tied LM head zeroed the embedding rows with it).
/// Readers of its shape only (Shape, Size) do not count, and an `Identity` (torch.onnx's spelling
/// of one constant shared by several layers) counts by its own readers.
pub(super) fn other_reader(g: &GraphProto, ix: &GraphIndex, inc: &Include, name: &str) -> Option<String> {
    other_reader_at(g, ix, inc, name, 0)
}

fn other_reader_at(g: &GraphProto, ix: &GraphIndex, inc: &Include, name: &str, depth: usize) -> Option<String> {
    if ix.captured.contains(name) {
        return Some("is read inside an If/Loop/Scan body".into());
    }
    if ix.outputs.contains(name) {
        return Some("is a graph output".into());
    }
    ix.consumers_of(name).iter().find_map(|&(ni, slot)| {
        let n = &g.node[ni];
        let std = n.domain.is_empty() || n.domain == "ai.onnx";
        if std && matches!(n.op_type.as_str(), "Identity" | "Cast" | "Transpose") && depth < 8 {
            return n.output.first().and_then(|o| other_reader_at(g, ix, inc, o, depth + 1));
        }
        let shape_only = std && matches!(n.op_type.as_str(), "Shape" | "Size");
        let covered = weight_slots(n, inc).iter().any(|(s, _, _)| *s == slot);
        (!shape_only && !covered).then(|| {
            let hint = if n.op_type == "Gather" && !inc.embedding { " (--include embedding covers it)" } else { "" };
            format!("is also read by {} '{}' (input {slot}){hint}", n.op_type, node_label(n))
        })
    })
}

/// Float weights (rank 2 or more) that are no candidate because ops of another domain read them
/// (onnxruntime's offline-optimised `com.microsoft:FusedConv` / `FusedGemm`, a function of the
/// model): per such op, "domain:op" and how many weights. They were left dense without a word.
pub fn foreign_weights(model: &ModelProto, inc: &Include) -> Result<Vec<(String, usize)>> {
    let g = model.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    let candidates: HashSet<String> = find_candidates(g, &ix, inc)?.into_iter().map(|c| c.name).collect();
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for t in &g.initializer {
        if candidates.contains(&t.name) || t.dims.len() < 2 || !tensor::is_float(t.data_type) {
            continue;
        }
        let standard = |n: &NodeProto| n.domain.is_empty() || n.domain == "ai.onnx";
        let attention = |n: &NodeProto| {
            n.domain == "com.microsoft" && matches!(n.op_type.as_str(), "Attention" | "MultiHeadAttention")
        };
        let foreign =
            ix.consumers_of(&t.name).iter().map(|&(ni, _)| &g.node[ni]).find(|n| !standard(n) && !attention(n));
        if let Some(n) = foreign {
            *out.entry(format!("{}:{}", n.domain, n.op_type)).or_default() += 1;
        }
    }
    Ok(out.into_iter().collect())
}

/// Weights a weight slot reads that are left dense because something else reads them too
/// ([`other_reader`]): (name, why), in graph order.
pub fn shared_with_other_readers(model: &ModelProto, inc: &Include) -> Result<Vec<(String, String)>> {
    let g = model.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    let mut out: Vec<(String, String)> = vec![];
    let mut checked: HashSet<&str> = HashSet::new();
    for n in &g.node {
        for (slot, _, _) in weight_slots(n, inc) {
            let Some(name) = n.input.get(slot).filter(|s| !s.is_empty() && ix.is_constant(s)) else { continue };
            if !checked.insert(name.as_str()) {
                continue;
            }
            if let Some(why) = other_reader(g, &ix, inc, name) {
                out.push((name.clone(), why));
            }
        }
    }
    Ok(out)
}

/// A weight whose output units have fewer than `SMALL_FAN_IN` inputs each: a depthwise 3×3 or
/// 1–3-channel stem filter, an LSTM gate row on 8 features, a 1×1 conv on 16 channels.
pub(super) fn is_small_filter(role: &str, t: &TensorProto, axis: Option<usize>) -> bool {
    let Some(a) = axis else { return false };
    if !matches!(role, "weight" | "recurrence") || t.dims.len() < 2 || a >= t.dims.len() || t.dims[a] <= 0 {
        return false;
    }
    let fan_in = t.dims.iter().product::<i64>() / t.dims[a];
    fan_in > 0 && fan_in < SMALL_FAN_IN as i64
}

/// Weights left dense because their output units have few inputs (see `Include::small`), in
/// graph order.
pub fn small_filters(model: &ModelProto, inc: &Include) -> Result<Vec<String>> {
    small_filters_in(model.graph.as_ref().context("model has no graph")?, inc)
}

pub(super) fn small_filters_in(g: &GraphProto, inc: &Include) -> Result<Vec<String>> {
    if inc.small {
        return Ok(vec![]);
    }
    let ix = GraphIndex::build(g)?;
    let mut out: Vec<String> = vec![];
    for n in &g.node {
        for (slot, role, ua) in weight_slots(n, inc) {
            let Some(name) = n.input.get(slot).filter(|s| !s.is_empty()) else { continue };
            let Some(t) = ix.weight(g, name) else { continue };
            if is_small_filter(role, t, ua.resolve(t.dims.len())) && !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    Ok(out)
}

/// Names of the candidate weights of a model, in graph order.
pub fn candidate_names(model: &ModelProto, inc: &Include) -> Result<Vec<String>> {
    let g = model.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    Ok(find_candidates(g, &ix, inc)?.into_iter().map(|c| c.name).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::graph::node_of as node;

    /// A graph reading the 8 × 8 weight `W` with `nodes` (plus `extra` initializers).
    fn graph(nodes: Vec<NodeProto>, outputs: &[&str]) -> GraphProto {
        let mut g = GraphProto::new();
        g.initializer.push(tensor::new_f32("W", &[8, 8], &[0.5; 64]));
        g.node = nodes;
        for o in outputs {
            let mut v = onnx_protobuf::ValueInfoProto::new();
            v.name = o.to_string();
            g.output.push(v);
        }
        g
    }

    fn names(g: &GraphProto, inc: &Include) -> Vec<String> {
        find_candidates(g, &GraphIndex::build(g).unwrap(), inc).unwrap().into_iter().map(|c| c.name).collect()
    }

    /// A weight that something besides a prunable layer reads (a tied embedding's Gather, an
    /// Add that uses it as data, a graph output, a node in an If body) is not a candidate:
    /// zeroing it changed that reader too. Two layers sharing it, an Identity between, or a
    /// Shape of it are fine.
    #[test]
    fn a_weight_read_by_anything_but_weight_slots_is_left_dense() {
        // (8 inputs per unit: small filters, which Include::default leaves dense.)
        let inc = Include { small: true, ..Include::default() };
        let mut gemm = node("Gemm", &["h", "W"], "y");
        let mut tb = onnx_protobuf::AttributeProto::new();
        tb.name = "transB".into();
        tb.i = 1;
        tb.type_ = onnx_protobuf::attribute_proto::AttributeType::INT.into();
        gemm.attribute.push(tb);
        let tied = graph(vec![node("Gather", &["W", "ids"], "h"), gemm.clone()], &["y"]);
        assert!(names(&tied, &inc).is_empty());
        let why = other_reader(&tied, &GraphIndex::build(&tied).unwrap(), &inc, "W").unwrap();
        assert!(why.contains("Gather") && why.contains("--include embedding"), "{why}");
        // Pruning embeddings, both readers are weight slots.
        assert_eq!(names(&tied, &Include { embedding: true, ..inc.clone() }), ["W"]);

        let as_data = graph(vec![node("MatMul", &["x", "W"], "h"), node("Add", &["h", "W"], "y")], &["y"]);
        assert!(names(&as_data, &inc).is_empty());
        let output = graph(vec![node("MatMul", &["x", "W"], "y")], &["y", "W"]);
        assert!(names(&output, &inc).is_empty());
        assert_eq!(names(&graph(vec![node("MatMul", &["x", "W"], "y")], &["y"]), &inc), ["W"]);
        let mut body = GraphProto::new();
        body.node.push(node("MatMul", &["x", "W"], "t"));
        let mut iff = node("If", &["c"], "z");
        let mut a = onnx_protobuf::AttributeProto::new();
        a.name = "then_branch".into();
        a.g = Some(body).into();
        iff.attribute.push(a);
        let captured = graph(vec![node("MatMul", &["x", "W"], "y"), iff], &["y", "z"]);
        assert!(names(&captured, &inc).is_empty());

        let shared = graph(
            vec![
                node("MatMul", &["x", "W"], "h"),
                node("Identity", &["W"], "W2"),
                node("MatMul", &["h", "W2"], "y"),
                node("Shape", &["W"], "s"),
            ],
            &["y", "s"],
        );
        assert_eq!(names(&shared, &inc), ["W"]);
    }

    /// A weight only an op of another domain reads (onnxruntime's FusedConv) is no candidate,
    /// and is named, per op, for the report's note.
    #[test]
    fn weights_of_foreign_ops_are_counted_per_op() {
        let mut fused = node("FusedConv", &["x", "W"], "y");
        fused.domain = "com.microsoft".into();
        let g = graph(vec![fused], &["y"]);
        let mut m = ModelProto::new();
        m.graph = Some(g).into();
        let inc = Include::default();
        assert!(candidate_names(&m, &inc).unwrap().is_empty());
        assert_eq!(foreign_weights(&m, &inc).unwrap(), vec![("com.microsoft:FusedConv".to_string(), 1)]);
        let g = graph(vec![node("MatMul", &["x", "W"], "y")], &["y"]);
        m.graph = Some(g).into();
        assert!(foreign_weights(&m, &inc).unwrap().is_empty());
    }
}
