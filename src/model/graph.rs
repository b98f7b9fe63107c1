//! A read-only index over the top-level graph: who produces and who consumes each value, and
//! which values are weights (initializers or `Constant` node outputs).

use super::tensor;
use anyhow::{bail, Result};
use onnx_protobuf::{AttributeProto, GraphProto, NodeProto, TensorProto};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Where a constant tensor lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WeightRef {
    /// Index into `graph.initializer`.
    Init(usize),
    /// Index of a `Constant` node whose `value` attribute holds the tensor.
    Const(usize),
}

#[derive(Debug, Default, Clone)]
pub struct GraphIndex {
    /// value name → producing node index
    pub producer: HashMap<String, usize>,
    /// value name → (node index, input slot) of every consumer, in node order
    pub consumers: HashMap<String, Vec<(usize, usize)>>,
    /// constant tensors by name
    pub weights: BTreeMap<String, WeightRef>,
    pub inputs: BTreeSet<String>,
    pub outputs: BTreeSet<String>,
    /// names referenced from inside If/Loop/Scan subgraphs (outer-scope captures)
    pub captured: BTreeSet<String>,
}

impl GraphIndex {
    pub fn build(g: &GraphProto) -> Result<Self> {
        let mut ix = GraphIndex::default();
        for (i, t) in g.initializer.iter().enumerate() {
            if ix.weights.insert(t.name.clone(), WeightRef::Init(i)).is_some() {
                bail!("duplicate initializer '{}'", t.name);
            }
        }
        for v in &g.input {
            ix.inputs.insert(v.name.clone());
        }
        for v in &g.output {
            ix.outputs.insert(v.name.clone());
        }
        for (ni, n) in g.node.iter().enumerate() {
            for (slot, name) in n.input.iter().enumerate() {
                if !name.is_empty() {
                    ix.consumers.entry(name.clone()).or_default().push((ni, slot));
                }
            }
            for o in &n.output {
                if o.is_empty() {
                    continue;
                }
                if ix.producer.insert(o.clone(), ni).is_some() || ix.weights.contains_key(o) && !is_const(n) {
                    bail!("value '{o}' is produced twice (node '{}')", node_label(n));
                }
            }
            if is_const(n)
                && n.output.len() == 1
                && attr(n, "value").and_then(|a| a.t.as_ref()).is_some()
                && ix.weights.insert(n.output[0].clone(), WeightRef::Const(ni)).is_some()
            {
                bail!("value '{}' is both an initializer and a Constant output", n.output[0]);
            }
            for a in &n.attribute {
                if let Some(sg) = a.g.as_ref() {
                    collect_refs(sg, &mut ix.captured);
                }
                for sg in &a.graphs {
                    collect_refs(sg, &mut ix.captured);
                }
            }
        }
        Ok(ix)
    }

    pub fn weight<'a>(&self, g: &'a GraphProto, name: &str) -> Option<&'a TensorProto> {
        self.weights.get(name).and_then(|r| weight(g, *r))
    }

    /// A weight that is a graph input too can be overridden at run time: not a constant.
    pub fn is_constant(&self, name: &str) -> bool {
        self.weights.contains_key(name) && !self.inputs.contains(name)
    }

    pub fn consumers_of(&self, name: &str) -> &[(usize, usize)] {
        self.consumers.get(name).map(|v| v.as_slice()).unwrap_or(&[])
    }
}

fn collect_refs(g: &GraphProto, out: &mut BTreeSet<String>) {
    for n in &g.node {
        for i in &n.input {
            out.insert(i.clone());
        }
        for a in &n.attribute {
            if let Some(sg) = a.g.as_ref() {
                collect_refs(sg, out);
            }
            for sg in &a.graphs {
                collect_refs(sg, out);
            }
        }
    }
}

pub fn weight(g: &GraphProto, r: WeightRef) -> Option<&TensorProto> {
    match r {
        WeightRef::Init(i) => g.initializer.get(i),
        WeightRef::Const(n) => g.node.get(n).and_then(|n| attr(n, "value")).and_then(|a| a.t.as_ref()),
    }
}

pub fn weight_mut(g: &mut GraphProto, r: WeightRef) -> Option<&mut TensorProto> {
    match r {
        WeightRef::Init(i) => g.initializer.get_mut(i),
        WeightRef::Const(n) => g
            .node
            .get_mut(n)
            .and_then(|n| n.attribute.iter_mut().find(|a| a.name == "value"))
            .and_then(|a| a.t.as_mut()),
    }
}

pub fn is_const(n: &NodeProto) -> bool {
    n.op_type == "Constant" && (n.domain.is_empty() || n.domain == "ai.onnx")
}

/// A tensor value's type for a graph input: `name`, element type, and dims (`None`: a free
/// dimension named `param`).
pub fn tensor_value_info(
    name: &str,
    elem_type: i32,
    dims: &[Option<i64>],
    param: &str,
) -> onnx_protobuf::ValueInfoProto {
    use onnx_protobuf::{tensor_shape_proto::Dimension, type_proto, TensorShapeProto, TypeProto, ValueInfoProto};
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = Dimension::new();
        match d {
            Some(v) => dim.set_dim_value(*v),
            None => dim.set_dim_param(param.to_string()),
        }
        shape.dim.push(dim);
    }
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = elem_type;
    tt.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.set_tensor_type(tt);
    let mut vi = ValueInfoProto::new();
    vi.name = name.to_string();
    vi.type_ = Some(ty).into();
    vi
}

/// A model holding `g` with `model`'s IR version, opsets, functions and domain (a derived graph
/// for tract: light copies, cut segments).
pub fn model_around(model: &onnx_protobuf::ModelProto, g: GraphProto) -> onnx_protobuf::ModelProto {
    let mut m = onnx_protobuf::ModelProto::new();
    m.ir_version = model.ir_version;
    m.opset_import = model.opset_import.clone();
    m.functions = model.functions.clone();
    m.domain = model.domain.clone();
    m.graph = Some(g).into();
    m
}

/// Does axis 0 of `g` hold a sequence rather than samples? Its first input (not an initializer)
/// has a free axis 0 and an output declares a fixed one: a streaming model whose input is
/// [time, features] and whose recurrent state outputs are [1, …] (Silero VAD). Its rows must
/// run together and in order: never cut into chunks (its state would restart at each), never
/// subsampled. `crate::check::run` applies the same rule ([`crate::check::run::sequence_rule`])
/// to tract's protobuf binding.
pub fn axis0_is_sequence(g: &GraphProto) -> bool {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
    use onnx_protobuf::type_proto::Value;
    // Some(true): axis 0 is declared with a fixed size; None: no declared axis 0.
    let fixed = |vi: &onnx_protobuf::ValueInfoProto| -> Option<bool> {
        let Some(Value::TensorType(t)) = vi.type_.as_ref().and_then(|t| t.value.as_ref()) else { return None };
        let d = t.shape.as_ref()?.dim.first()?;
        Some(matches!(d.value, Some(D::DimValue(v)) if v > 0))
    };
    let inits: BTreeSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let first = g.input.iter().find(|i| !inits.contains(i.name.as_str())).and_then(fixed);
    crate::check::run::sequence_rule(first, g.output.iter().map(fixed))
}

/// Graph outputs that are a recurrent node's final states (LSTM/GRU/RNN `Y_h`, `Y_c`, directly
/// or through Squeeze / Unsqueeze / Reshape / Transpose / Identity): an argmax over their hidden
/// units is no class, so they get no top-1 agreement rate.
pub fn recurrent_states(g: &GraphProto) -> BTreeSet<String> {
    let mut producer: HashMap<&str, &NodeProto> = HashMap::new();
    for n in &g.node {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            producer.insert(o, n);
        }
    }
    let is_state = |name: &str| {
        let mut v = name;
        for _ in 0..8 {
            let Some(n) = producer.get(v) else { return false };
            let std = n.domain.is_empty() || n.domain == "ai.onnx";
            match n.op_type.as_str() {
                "LSTM" | "GRU" | "RNN" if std => return n.output.iter().position(|o| o == v).is_some_and(|i| i >= 1),
                "Squeeze" | "Unsqueeze" | "Reshape" | "Transpose" | "Identity" if std => match n.input.first() {
                    Some(i) => v = i,
                    None => return false,
                },
                _ => return false,
            }
        }
        false
    };
    g.output.iter().filter(|o| is_state(&o.name)).map(|o| o.name.clone()).collect()
}

/// A default-domain node reading `ins` and writing `out` (for tests that build small graphs).
#[cfg(test)]
pub(crate) fn node_of(op: &str, ins: &[&str], out: &str) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.input = ins.iter().map(|s| s.to_string()).collect();
    n.output = vec![out.into()];
    n
}

/// A model of IR 8 and default-domain opset 17 around `g` (for tests that build small graphs).
#[cfg(test)]
pub(crate) fn model_of(g: GraphProto) -> onnx_protobuf::ModelProto {
    let mut m = onnx_protobuf::ModelProto::new();
    m.ir_version = 8;
    let mut op = onnx_protobuf::OperatorSetIdProto::new();
    op.version = 17;
    m.opset_import.push(op);
    m.graph = Some(g).into();
    m
}

pub fn node_label(n: &NodeProto) -> String {
    if n.name.is_empty() {
        format!("{}:{}", n.op_type, n.output.first().map(|s| s.as_str()).unwrap_or("?"))
    } else {
        n.name.clone()
    }
}

pub fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

pub fn attr_i(n: &NodeProto, name: &str) -> Option<i64> {
    attr(n, name).map(|a| a.i)
}

pub fn attr_f(n: &NodeProto, name: &str) -> Option<f32> {
    attr(n, name).map(|a| a.f)
}

pub fn attr_ints<'a>(n: &'a NodeProto, name: &str) -> Option<&'a [i64]> {
    attr(n, name).map(|a| a.ints.as_slice())
}

pub fn attr_s(n: &NodeProto, name: &str) -> Option<String> {
    attr(n, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

/// Set an int attribute (adds it when missing).
pub fn set_attr_i(n: &mut NodeProto, name: &str, v: i64) {
    if let Some(a) = n.attribute.iter_mut().find(|a| a.name == name) {
        a.i = v;
    } else {
        let mut a = AttributeProto::new();
        a.name = name.into();
        a.type_ = protobuf::EnumOrUnknown::from_i32(2);
        a.i = v;
        n.attribute.push(a);
    }
}

pub fn set_attr_ints(n: &mut NodeProto, name: &str, v: &[i64]) {
    if let Some(a) = n.attribute.iter_mut().find(|a| a.name == name) {
        a.ints = v.to_vec();
    } else {
        let mut a = AttributeProto::new();
        a.name = name.into();
        a.type_ = protobuf::EnumOrUnknown::from_i32(7);
        a.ints = v.to_vec();
        n.attribute.push(a);
    }
}

/// Total element count of float weights (for parameter counts).
pub fn float_params(g: &GraphProto, ix: &GraphIndex) -> (u64, u64) {
    float_params_mapped(g, ix, None)
}

/// [`float_params`] of a model loaded with `io::load_mapped`: a weight whose data is still in a
/// mapped file is counted there, through its keep bits in `masks` when it has some.
pub fn float_params_mapped(
    g: &GraphProto,
    ix: &GraphIndex,
    mapped: Option<(&crate::model::mapped::MappedData, &crate::model::mapped::Masks)>,
) -> (u64, u64) {
    let c = param_counts(g, ix, mapped, true);
    (c.n, c.nonzero)
}

/// Parameter counts of a model loaded with `io::load_mapped`, split so that the data left in
/// mapped files is read once: before pruning, count the tensors in memory (`count_mapped` false);
/// after, count everything (`count_mapped` true), the mapped tensors both through and without
/// their keep bits in one pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamCounts {
    /// Elements of the float (and quantized) weights.
    pub n: u64,
    /// Their nonzero elements (a mapped tensor's through its keep bits).
    pub nonzero: u64,
    /// Elements of the weights whose data is in mapped files.
    pub mapped_n: u64,
    /// Their nonzero elements as stored (keep bits ignored).
    pub mapped_nonzero_stored: u64,
}

/// See [`ParamCounts`]; `count_mapped` false skips the tensors whose data is in mapped files.
pub fn param_counts(
    g: &GraphProto,
    ix: &GraphIndex,
    mapped: Option<(&crate::model::mapped::MappedData, &crate::model::mapped::Masks)>,
    count_mapped: bool,
) -> ParamCounts {
    use rayon::prelude::*;
    // Quantized weights (QDQ models) are parameters too: integer data read by a DequantizeLinear.
    let quantized: std::collections::BTreeSet<&str> = g
        .node
        .iter()
        .filter(|n| n.op_type == "DequantizeLinear" && n.domain.is_empty())
        .filter_map(|n| n.input.first().map(|s| s.as_str()))
        .collect();
    let ws: Vec<(&String, &TensorProto)> = ix
        .weights
        .iter()
        .filter_map(|(k, r)| weight(g, *r).map(|t| (k, t)))
        .filter(|(k, t)| tensor::is_float(t.data_type) || quantized.contains(k.as_str()))
        .collect();
    let one = |n: u64, nz: u64| ParamCounts { n, nonzero: nz, mapped_n: 0, mapped_nonzero_stored: 0 };
    let in_map =
        |n: u64, nz: u64, stored: u64| ParamCounts { n, nonzero: nz, mapped_n: n, mapped_nonzero_stored: stored };
    ws.par_iter()
        .filter_map(|(_, t)| {
            if let Some((m, masks)) = mapped {
                if let Some(key) = m.locate(t) {
                    if !count_mapped {
                        return None;
                    }
                    let b = m.tensor_bytes(t)?.ok()?;
                    if tensor::is_float(t.data_type) {
                        let n = tensor::numel(t).ok()?;
                        if let Some((stored, kept)) = masks.get(&key).and_then(|m| m.nonzero) {
                            // Counted by the pass that made the keep bits.
                            return Some(in_map(n as u64, kept, stored));
                        }
                        let mask = masks.get(&key).map(|v| v.bits.as_slice());
                        if mask.is_some_and(|m| m.len() * 64 < n) {
                            return None;
                        }
                        let (stored, kept) = tensor::count_nonzero_raw(t.data_type, b, mask);
                        return Some(in_map(n as u64, kept, stored));
                    }
                    // Quantized weights: counted from a copy read like the in-memory tensor.
                    let mut c = (*t).clone();
                    c.raw_data = b.to_vec();
                    c.external_data.clear();
                    c.data_location = protobuf::EnumOrUnknown::from_i32(0);
                    return tensor::read_i64(&c).ok().map(|v| {
                        let nz = v.iter().filter(|&&x| x != 0).count() as u64;
                        in_map(v.len() as u64, nz, nz)
                    });
                }
            }
            if tensor::is_float(t.data_type) {
                tensor::count_nonzero_f32(t).ok().map(|(n, nz)| one(n, nz))
            } else {
                tensor::read_i64(t).ok().map(|v| one(v.len() as u64, v.iter().filter(|&&x| x != 0).count() as u64))
            }
        })
        .reduce(ParamCounts::default, |a, b| ParamCounts {
            n: a.n + b.n,
            nonzero: a.nonzero + b.nonzero,
            mapped_n: a.mapped_n + b.mapped_n,
            mapped_nonzero_stored: a.mapped_nonzero_stored + b.mapped_nonzero_stored,
        })
}

/// The float weights inside the If/Loop/Scan bodies of `g` (initializers and `Constant` values,
/// at any depth): how many tensors, and their [`ParamCounts`] (in memory; never pruned: the
/// passes rewrite the main graph only).
pub fn subgraph_params(g: &GraphProto) -> (usize, ParamCounts) {
    fn add(t: &TensorProto, acc: &mut (usize, ParamCounts)) {
        let counted = tensor::count_nonzero_f32(t).or_else(|_| tensor::numel(t).map(|n| (n as u64, n as u64)));
        if let Ok((n, nz)) = counted {
            acc.0 += 1;
            acc.1.n += n;
            acc.1.nonzero += nz;
        }
    }
    fn walk(g: &GraphProto, top: bool, acc: &mut (usize, ParamCounts)) {
        if !top {
            for t in g.initializer.iter().filter(|t| tensor::is_float(t.data_type)) {
                add(t, acc);
            }
        }
        for n in &g.node {
            if !top && is_const(n) {
                if let Some(t) = attr(n, "value").and_then(|a| a.t.as_ref()).filter(|t| tensor::is_float(t.data_type)) {
                    add(t, acc);
                }
            }
            for a in &n.attribute {
                for sg in a.g.as_ref().into_iter().chain(&a.graphs) {
                    walk(sg, false, acc);
                }
            }
        }
    }
    let mut acc = (0, ParamCounts::default());
    walk(g, true, &mut acc);
    acc
}

/// Values read by nodes, graph outputs and subgraphs.
pub fn used_values(g: &GraphProto) -> BTreeSet<String> {
    let mut used: BTreeSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    for n in &g.node {
        used.extend(n.input.iter().filter(|i| !i.is_empty()).cloned());
    }
    if let Ok(ix) = GraphIndex::build(g) {
        used.extend(ix.captured);
    }
    used
}

/// Drop the nodes and initializers of `g` that a rewrite of `before` orphaned: values `before`
/// read that nothing in `g` reads any more, repeatedly (a dead chain goes whole), with the
/// value_info of what they produced. What was already unused in `before` stays, as does every
/// node with an output still read.
pub fn drop_orphans(before: &GraphProto, g: &mut GraphProto) {
    let used_before = used_values(before);
    let mut gone: BTreeSet<String> = BTreeSet::new();
    loop {
        let used = used_values(g);
        let dead = |o: &String| used_before.contains(o) && !used.contains(o);
        let n = g.node.len() + g.initializer.len();
        g.node.retain(|n| {
            let orphan = !n.output.is_empty() && n.output.iter().all(|o| o.is_empty() || dead(o));
            if orphan {
                gone.extend(n.output.iter().cloned());
            }
            !orphan
        });
        g.initializer.retain(|t| !dead(&t.name));
        if g.node.len() + g.initializer.len() == n {
            break;
        }
    }
    if !gone.is_empty() {
        g.value_info.retain(|v| !gone.contains(&v.name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = tensor::dt::FLOAT;
        t.dims = dims.to_vec();
        t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        t
    }

    #[test]
    fn subgraph_weights_are_counted_at_any_depth_and_the_main_graphs_are_not() {
        let mut inner = GraphProto::new();
        inner.initializer.push(f32_tensor("w2", &[2, 2], &[1.0, 0.0, 2.0, 3.0]));
        let mut c = NodeProto::new();
        c.op_type = "Constant".into();
        c.output.push("k".into());
        let mut a = AttributeProto::new();
        a.name = "value".into();
        a.t = Some(f32_tensor("", &[3], &[0.0, 0.0, 5.0])).into();
        c.attribute.push(a);
        inner.node.push(c);
        // A Loop inside the If's then-branch.
        let mut then_g = GraphProto::new();
        then_g.initializer.push(f32_tensor("w1", &[2], &[1.0, 1.0]));
        let mut lp = NodeProto::new();
        lp.op_type = "Loop".into();
        let mut body = AttributeProto::new();
        body.name = "body".into();
        body.g = Some(inner).into();
        lp.attribute.push(body);
        then_g.node.push(lp);
        let mut g = GraphProto::new();
        g.initializer.push(f32_tensor("top", &[4], &[1.0; 4]));
        let mut iff = NodeProto::new();
        iff.op_type = "If".into();
        let mut then_a = AttributeProto::new();
        then_a.name = "then_branch".into();
        then_a.g = Some(then_g).into();
        iff.attribute.push(then_a);
        g.node.push(iff);
        let (k, p) = subgraph_params(&g);
        assert_eq!((k, p.n, p.nonzero), (3, 2 + 4 + 3, 2 + 3 + 1));
    }
}
