//! What a prunable weight and an output unit are, per op (the one table), and which weights of a
//! model are candidates (`Include`, small units left dense).

use super::*;

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
    for n in &g.node {
        if n.op_type == "Gemm" {
            int_attr(n, "transA")?;
            int_attr(n, "transB")?;
        }
        for (slot, role, ua) in weight_slots(n, inc) {
            let Some(name) = n.input.get(slot).filter(|s| !s.is_empty()) else { continue };
            // A Add "bias" must be a constant vector feeding an Add after a MatMul/Gemm/Conv.
            if !ix.is_constant(name) {
                continue;
            }
            let Some(&wref) = ix.weights.get(name) else { continue };
            let Some(t) = graph::weight(g, wref) else { continue };
            if !check_weight(n, role, name, t)? {
                continue;
            }
            if is_small_filter(role, t, ua.resolve(t.dims.len())) && !inc.small {
                continue;
            }
            let rank = t.dims.len();
            let axis = ua.resolve(rank);
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
