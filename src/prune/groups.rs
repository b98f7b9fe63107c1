//! Dependency analysis for structural pruning: which (tensor, axis) positions must lose the same
//! indices.
//!
//! Model: every *source* (the output axis of a Conv / ConvTranspose / Gemm / MatMul with a constant
//! weight) creates one fresh **unit** per output position and one **layer**. Ops carry units from
//! inputs to outputs following the rule table ([`super::rules`]); a tracked tensor-axis is a list
//! of units, one per position (`None` = a position no group owns, e.g. a concatenated graph
//! input; Flatten repeats a unit H·W times). Positions that must be removed together are merged
//! with a union-find over units (residual Add, SE Mul, shared weights, grouped convs); merging two
//! units of different layers merges the layers. One layer class = one **group** for EMP; its
//! units are the union-find classes of its units.
//!
//! Alongside the units each tracked axis carries, per position, the constant a *removed* unit
//! emits there in the masked model (producer weights and biases zeroed): 0 right after a
//! producer, then BN shift, bias, act(0)... ([`Val`]). That constant is what the rewrite must fold
//! into the consumer's bias.

use super::rules::{self, Kind, PoolKind, ReduceKind};
use crate::model::graph::{attr, attr_f, attr_i, attr_ints, attr_s, is_const, node_label, GraphIndex};
use crate::model::tensor;
use anyhow::{bail, Result};
use onnx_protobuf::{GraphProto, NodeProto, TensorProto, ValueInfoProto};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

pub type Unit = usize;

/// The constant a removed unit emits at one position of a tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Val {
    Const(f64),
    /// Not a single known constant (spatially varying, or an op we cannot evaluate).
    Varying,
}

/// A tensor whose `axis` carries units.
#[derive(Clone, Debug)]
pub struct Track {
    pub axis: usize,
    pub rank: usize,
    pub units: Vec<Option<Unit>>,
    pub vals: Vec<Val>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Output-channel slice of a Conv/Gemm/MatMul weight: scored, zeroed in the masked model.
    Producer,
    /// Producer bias: zeroed in the masked model, not scored.
    ProducerBias,
    /// Per-channel parameter (BN, PReLU slope, per-channel constant): sliced only.
    Param,
    /// Input-channel slice of a consuming weight: sliced; compensation reads it.
    Consumer,
}

/// A constant sliced along one axis: position p survives iff `units[p]` is None or kept.
#[derive(Clone, Debug)]
pub struct WeightSlice {
    /// The name the nodes use (may be an alias such as `Identity(initializer)`).
    pub weight: String,
    pub axis: usize,
    pub units: Vec<Option<Unit>>,
    pub roles: BTreeSet<Role>,
    /// (node, input slot) of every use that registered this slice.
    pub users: BTreeSet<(usize, usize)>,
}

#[derive(Clone, Debug)]
pub enum ConsumerKind {
    /// Conv: Σ over the kernel folds into the bias (group 1: exactly without padding, in the
    /// interior with zero padding; grouped and transposed: not folded).
    Conv {
        padded: bool,
    },
    Gemm {
        trans_b: bool,
        alpha: f64,
        beta: f64,
    },
    /// MatMul with a constant [K, N] weight; `bias` = the Add constant right after it, if any.
    MatMul {
        bias: Option<(usize, usize)>,
    },
}

/// A node that contracts a tracked axis: removed units' constants must be folded here.
#[derive(Clone, Debug)]
pub struct Consumer {
    pub node: usize,
    pub kind: ConsumerKind,
    /// The consuming weight and the positions of its input axis.
    pub weight: String,
    pub units: Vec<Option<Unit>>,
    pub vals: Vec<Val>,
    /// Why a non-zero constant cannot be folded here (then such units are kept).
    pub fold: std::result::Result<(), String>,
}

/// Where an integer that depends on a kept count lives.
#[derive(Clone, Debug, PartialEq)]
pub enum IntTarget {
    /// An int attribute (`group`).
    AttrInt(usize, String),
    /// One entry of an ints attribute (opset < 10 Slice starts/ends).
    AttrInts(usize, String),
    /// One entry of a constant int input (node, slot).
    Input(usize, usize),
}

#[derive(Clone, Debug)]
pub enum Edit {
    /// Set entry `index` of `target` to the kept count of `units`.
    Count { target: IntTarget, index: usize, units: Vec<Option<Unit>> },
    /// Rewrite the sizes of a Split on the tracked axis.
    Split { node: usize, axis: usize, parts: Vec<Vec<Option<Unit>>> },
}

/// A constant tensor, possibly seen through shape-only nodes (Identity, Reshape, Unsqueeze...).
#[derive(Clone, Debug)]
pub struct ConstInfo {
    /// Initializer or Constant-node output that holds the data.
    pub base: String,
    pub dims: Vec<usize>,
    /// The shape-only node producing this name (None for the base itself).
    pub alias_node: Option<usize>,
    /// Names between the base and this one (aliases of aliases).
    pub chain: Vec<String>,
}

/// Everything the analysis found.
#[derive(Default)]
pub struct Analysis {
    parent: Vec<usize>,
    layer_of: Vec<usize>,
    layer_parent: Vec<usize>,
    /// Node index of the source of each layer.
    pub layer_source: Vec<usize>,
    pub tracks: BTreeMap<String, Track>,
    pub slices: BTreeMap<(String, usize), WeightSlice>,
    pub consumers: Vec<Consumer>,
    pub edits: Vec<Edit>,
    /// Source node → its output units (for biases the rewrite creates).
    pub sources: BTreeMap<usize, Vec<Option<Unit>>>,
    pub blocks: Vec<(Unit, String)>,
    /// Node → units whose tensors it touches (for the group's member list).
    pub touched: BTreeMap<usize, BTreeSet<Unit>>,
    pub consts: BTreeMap<String, ConstInfo>,
}

impl Analysis {
    pub fn n_units(&self) -> usize {
        self.parent.len()
    }

    pub fn find(&self, mut u: Unit) -> Unit {
        while self.parent[u] != u {
            u = self.parent[u];
        }
        u
    }

    fn find_mut(&mut self, u: Unit) -> Unit {
        let r = self.find(u);
        let mut x = u;
        while self.parent[x] != r {
            let next = self.parent[x];
            self.parent[x] = r;
            x = next;
        }
        r
    }

    fn find_layer(&self, mut l: usize) -> usize {
        while self.layer_parent[l] != l {
            l = self.layer_parent[l];
        }
        l
    }

    /// The group (layer class) of a unit.
    pub fn group_of(&self, u: Unit) -> usize {
        self.find_layer(self.layer_of[self.find(u)])
    }

    /// The group of a layer (layers are numbered in creation order).
    pub fn layer_group(&self, layer: usize) -> usize {
        self.find_layer(layer)
    }

    fn union(&mut self, a: Unit, b: Unit) {
        let (ra, rb) = (self.find_mut(a), self.find_mut(b));
        if ra == rb {
            return;
        }
        // The lower id stays the root: classes are then named by their first unit.
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        self.parent[hi] = lo;
        let (la, lb) = (self.find_layer(self.layer_of[lo]), self.find_layer(self.layer_of[hi]));
        if la != lb {
            let (l, h) = if la < lb { (la, lb) } else { (lb, la) };
            self.layer_parent[h] = l;
        }
        // layer_of is read at the root only.
        self.layer_of[lo] = self.find_layer(self.layer_of[lo]);
    }
}

fn inp(n: &NodeProto, i: usize) -> Option<&str> {
    n.input.get(i).map(|s| s.as_str()).filter(|s| !s.is_empty())
}

fn norm_axis(a: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    (0..r).contains(&v).then_some(v as usize)
}

/// Opset of the default domain.
pub fn default_opset(opsets: &[onnx_protobuf::OperatorSetIdProto]) -> i64 {
    opsets.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version).unwrap_or(1)
}

/// Nodes in a topological order (stable: lowest index first among ready nodes).
pub fn topo_order(g: &GraphProto, ix: &GraphIndex) -> Result<Vec<usize>> {
    let n = g.node.len();
    let mut indeg = vec![0usize; n];
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (ni, node) in g.node.iter().enumerate() {
        for i in node.input.iter().filter(|s| !s.is_empty()) {
            if let Some(&p) = ix.producer.get(i) {
                if p != ni {
                    indeg[ni] += 1;
                    succ[p].push(ni);
                }
            }
        }
    }
    let mut heap: BinaryHeap<Reverse<usize>> = (0..n).filter(|&i| indeg[i] == 0).map(Reverse).collect();
    let mut out = Vec::with_capacity(n);
    while let Some(Reverse(i)) = heap.pop() {
        out.push(i);
        for &s in &succ[i] {
            indeg[s] -= 1;
            if indeg[s] == 0 {
                heap.push(Reverse(s));
            }
        }
    }
    if out.len() != n {
        bail!("the graph has a cycle (or a node consumes its own output)");
    }
    Ok(out)
}

/// Static dims from graph inputs, outputs and value_info (None = dynamic or unknown).
pub fn declared_shapes(g: &GraphProto) -> HashMap<String, Vec<Option<usize>>> {
    let mut m = HashMap::new();
    for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
        if let Some(s) = value_dims(v) {
            m.insert(v.name.clone(), s);
        }
    }
    m
}

pub fn value_dims(v: &ValueInfoProto) -> Option<Vec<Option<usize>>> {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
    use onnx_protobuf::type_proto::Value as T;
    let Some(T::TensorType(t)) = v.type_.as_ref().and_then(|t| t.value.as_ref()) else { return None };
    let s = t.shape.as_ref()?;
    Some(
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(D::DimValue(x)) if *x >= 0 => Some(*x as usize),
                _ => None,
            })
            .collect(),
    )
}

/// Read-only facts about the graph the rules need.
pub struct Ctx<'a> {
    pub g: &'a GraphProto,
    pub ix: &'a GraphIndex,
    pub opset: i64,
    pub order: Vec<usize>,
    pub consts: BTreeMap<String, ConstInfo>,
    pub ranks: HashMap<String, usize>,
    pub shapes: HashMap<String, Vec<Option<usize>>>,
}

impl<'a> Ctx<'a> {
    pub fn new(g: &'a GraphProto, ix: &'a GraphIndex, opset: i64) -> Result<Self> {
        let order = topo_order(g, ix)?;
        let shapes = declared_shapes(g);
        let mut ctx = Ctx { g, ix, opset, order, consts: BTreeMap::new(), ranks: HashMap::new(), shapes };
        ctx.find_consts();
        ctx.infer_ranks();
        Ok(ctx)
    }

    pub fn base_tensor(&self, name: &str) -> Option<&'a TensorProto> {
        let c = self.consts.get(name)?;
        self.ix.weight(self.g, &c.base)
    }

    /// Values of a constant as f64 (float or integer data).
    pub fn const_vals(&self, name: &str) -> Option<Vec<f64>> {
        let t = self.base_tensor(name)?;
        if tensor::is_float(t.data_type) {
            tensor::read_f64(t).ok()
        } else {
            tensor::read_i64(t).ok().map(|v| v.into_iter().map(|x| x as f64).collect())
        }
    }

    pub fn const_ints(&self, name: &str) -> Option<Vec<i64>> {
        let t = self.base_tensor(name)?;
        if tensor::is_float(t.data_type) {
            return None;
        }
        tensor::read_i64(t).ok()
    }

    pub fn dims(&self, name: &str) -> Option<&[usize]> {
        self.consts.get(name).map(|c| c.dims.as_slice())
    }

    pub fn scalar(&self, name: &str) -> Option<f64> {
        let d = self.dims(name)?;
        if d.iter().product::<usize>() != 1 {
            return None;
        }
        self.const_vals(name)?.first().copied()
    }

    fn is_output(&self, name: &str) -> bool {
        self.ix.outputs.contains(name)
    }

    /// Constants: initializers and Constant nodes (not graph inputs), plus names computed from
    /// them by shape-only nodes, resolved to the tensor that holds the data.
    fn find_consts(&mut self) {
        for (name, r) in &self.ix.weights {
            if self.ix.inputs.contains(name) {
                continue;
            }
            if let Some(t) = crate::model::graph::weight(self.g, *r) {
                if let Ok(d) = tensor::shape(t) {
                    self.consts.insert(
                        name.clone(),
                        ConstInfo { base: name.clone(), dims: d, alias_node: None, chain: vec![] },
                    );
                }
            }
        }
        for &ni in &self.order.clone() {
            let n = &self.g.node[ni];
            if n.output.len() != 1
                || n.output[0].is_empty()
                || self.is_output(&n.output[0])
                || self.consts.contains_key(&n.output[0])
            {
                continue;
            }
            let Some(src) = inp(n, 0).and_then(|s| self.consts.get(s)).cloned() else { continue };
            let dims = match n.op_type.as_str() {
                "Identity" if n.domain.is_empty() => Some(src.dims.clone()),
                "Reshape" if n.domain.is_empty() => inp(n, 1).and_then(|s| self.const_ints(s)).and_then(|t| {
                    let allowzero = attr_i(n, "allowzero").unwrap_or(0) != 0;
                    reshape_dims(&src.dims, &t, allowzero)
                }),
                "Unsqueeze" if n.domain.is_empty() => self.axes_of(n).and_then(|ax| unsqueeze_dims(&src.dims, &ax)),
                _ => None,
            };
            if let Some(dims) = dims {
                let mut chain = src.chain.clone();
                if src.alias_node.is_some() {
                    chain.push(inp(n, 0).unwrap_or_default().to_string());
                }
                self.consts.insert(
                    n.output[0].clone(),
                    ConstInfo { base: src.base.clone(), dims, alias_node: Some(ni), chain },
                );
            }
        }
    }

    /// `axes` of Squeeze/Unsqueeze/Reduce: attribute (older opsets) or constant input 1.
    pub fn axes_of(&self, n: &NodeProto) -> Option<Vec<i64>> {
        if let Some(a) = attr_ints(n, "axes") {
            return Some(a.to_vec());
        }
        inp(n, 1).and_then(|s| self.const_ints(s))
    }

    pub fn rank(&self, name: &str) -> Option<usize> {
        if let Some(c) = self.consts.get(name) {
            return Some(c.dims.len());
        }
        self.ranks.get(name).copied()
    }

    /// Light rank inference: enough to place a channel axis under broadcasting and
    /// negative axes. Unknown stays unknown (then the rules block).
    fn infer_ranks(&mut self) {
        for (k, v) in &self.shapes {
            self.ranks.insert(k.clone(), v.len());
        }
        let mut lens: HashMap<String, usize> = HashMap::new(); // lengths of 1-D int vectors
        for &ni in &self.order.clone() {
            let n = &self.g.node[ni];
            let r0 = inp(n, 0).and_then(|s| self.rank(s));
            let out: Option<usize> = match n.op_type.as_str() {
                "Constant" => n.output.first().and_then(|o| self.consts.get(o)).map(|c| c.dims.len()),
                "Gemm" | "Flatten" => Some(2),
                "Shape" => {
                    if let (Some(r), Some(o)) = (r0, n.output.first()) {
                        let s = norm_bound(attr_i(n, "start").unwrap_or(0), r);
                        let e = norm_bound(attr_i(n, "end").unwrap_or(r as i64), r);
                        lens.insert(o.clone(), e.saturating_sub(s));
                    }
                    Some(1)
                }
                "Size" => Some(0),
                "Range" | "NonZero" => Some(if n.op_type == "Range" { 1 } else { 2 }),
                "MatMul" => {
                    let r1 = inp(n, 1).and_then(|s| self.rank(s));
                    match (r0, r1) {
                        (Some(1), Some(b)) => Some(b.saturating_sub(1)),
                        (Some(a), Some(1)) => Some(a - 1),
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    }
                }
                "Reshape" => {
                    inp(n, 1).and_then(|s| self.dims(s).map(|d| d.iter().product()).or_else(|| lens.get(s).copied()))
                }
                "ConstantOfShape" | "Expand" => {
                    let s = inp(n, if n.op_type == "Expand" { 1 } else { 0 });
                    let l = s.and_then(|s| self.dims(s).map(|d| d.iter().product()).or_else(|| lens.get(s).copied()));
                    if n.op_type == "Expand" {
                        l.zip(r0).map(|(a, b)| a.max(b))
                    } else {
                        l
                    }
                }
                "Squeeze" => self.axes_of(n).zip(r0).map(|(a, r)| r.saturating_sub(a.len())),
                "Unsqueeze" => {
                    let a = self.axes_of(n);
                    if let (Some(a), Some(o)) = (&a, n.output.first()) {
                        if r0 == Some(0) && a.len() == 1 {
                            lens.insert(o.clone(), 1);
                        }
                    }
                    a.zip(r0).map(|(a, r)| r + a.len())
                }
                "Gather" => inp(n, 1).and_then(|s| self.rank(s)).zip(r0).map(|(q, r)| (r + q).saturating_sub(1)),
                "Concat" => {
                    if let Some(o) = n.output.first() {
                        let parts: Option<Vec<usize>> = n
                            .input
                            .iter()
                            .map(|s| {
                                self.dims(s).filter(|d| d.len() == 1).map(|d| d[0]).or_else(|| lens.get(s).copied())
                            })
                            .collect();
                        if let Some(p) = parts {
                            lens.insert(o.clone(), p.iter().sum());
                        }
                    }
                    n.input.iter().find_map(|s| self.rank(s))
                }
                op if op.starts_with("Reduce") || op == "ArgMax" || op == "ArgMin" => {
                    let keep = attr_i(n, "keepdims").unwrap_or(1) != 0;
                    if keep {
                        r0
                    } else if op.starts_with("Arg") {
                        r0.map(|r| r.saturating_sub(1))
                    } else {
                        match self.axes_of(n) {
                            Some(a) if !a.is_empty() => r0.map(|r| r.saturating_sub(a.len())),
                            _ => Some(0),
                        }
                    }
                }
                "Cast" => {
                    if let (Some(i), Some(o)) = (inp(n, 0), n.output.first()) {
                        if let Some(&l) = lens.get(i) {
                            lens.insert(o.clone(), l);
                        }
                    }
                    r0
                }
                op if is_elementwise_op(op) => {
                    let rs: Option<Vec<usize>> =
                        n.input.iter().filter(|s| !s.is_empty()).map(|s| self.rank(s)).collect();
                    rs.and_then(|v| v.into_iter().max())
                }
                "Split"
                | "Slice"
                | "Transpose"
                | "Softmax"
                | "LogSoftmax"
                | "LayerNormalization"
                | "Conv"
                | "ConvTranspose"
                | "BatchNormalization"
                | "InstanceNormalization"
                | "MaxPool"
                | "AveragePool"
                | "GlobalAveragePool"
                | "GlobalMaxPool"
                | "LpPool"
                | "GlobalLpPool"
                | "Pad"
                | "Resize"
                | "Upsample"
                | "Tile"
                | "Dropout"
                | "GatherElements"
                | "CumSum"
                | "LRN"
                | "Einsum"
                | "Trilu"
                | "IsNaN"
                | "IsInf"
                | "Not" => r0,
                _ => {
                    if rules::lookup(n).is_some_and(|k| matches!(k, Kind::Unary(_))) {
                        r0
                    } else {
                        None
                    }
                }
            };
            // Element-wise ops on shape vectors keep their length (Where/Equal/Mul on [k] vectors).
            if out == Some(1) && n.output.len() == 1 && is_elementwise_op(&n.op_type) {
                let len_of =
                    |s: &str| self.dims(s).map(|d| d.iter().product::<usize>()).or_else(|| lens.get(s).copied());
                if let Some(l) = n.input.iter().filter(|s| !s.is_empty()).filter_map(|s| len_of(s)).max() {
                    lens.insert(n.output[0].clone(), l);
                }
            }
            if let Some(r) = out {
                for (k, o) in n.output.iter().enumerate() {
                    if o.is_empty() || self.ranks.contains_key(o) {
                        continue;
                    }
                    // Secondary outputs of these ops have other ranks; only output 0 is known.
                    if k > 0 && !matches!(n.op_type.as_str(), "Split") {
                        continue;
                    }
                    self.ranks.insert(o.clone(), r);
                }
            }
        }
    }
}

/// Broadcasting element-wise ops (for rank inference only).
fn is_elementwise_op(op: &str) -> bool {
    matches!(
        op,
        "Where"
            | "Add"
            | "Sub"
            | "Mul"
            | "Div"
            | "Pow"
            | "Max"
            | "Min"
            | "Sum"
            | "Mean"
            | "Equal"
            | "Less"
            | "Greater"
            | "LessOrEqual"
            | "GreaterOrEqual"
            | "And"
            | "Or"
            | "Xor"
            | "Mod"
            | "PRelu"
            | "BitShift"
    )
}

fn norm_bound(v: i64, r: usize) -> usize {
    let r = r as i64;
    (if v < 0 { v + r } else { v }).clamp(0, r) as usize
}

/// Output dims of a Reshape of known input dims (None when ill-formed).
pub fn reshape_dims(input: &[usize], target: &[i64], allowzero: bool) -> Option<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            0 if !allowzero => out.push(*input.get(i)?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            t if t >= 0 => out.push(t as usize),
            _ => return None,
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return None;
        }
        out[i] = total / known;
    }
    (out.iter().product::<usize>() == total).then_some(out)
}

fn unsqueeze_dims(input: &[usize], axes: &[i64]) -> Option<Vec<usize>> {
    let r = input.len() + axes.len();
    let mut ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, r)).collect::<Option<_>>()?;
    ax.sort_unstable();
    ax.dedup();
    if ax.len() != axes.len() {
        return None;
    }
    let mut it = input.iter();
    (0..r).map(|i| if ax.contains(&i) { Some(1) } else { it.next().copied() }).collect::<Option<Vec<_>>>()
}

/// One element of a shape vector (the int64 tensors that Shape → Gather → Concat chains build
/// for Reshape targets), followed symbolically.
/// Where a literal of a shape vector is stored: (node, input slot, index).
type LitAt = Option<(usize, usize, usize)>;

#[derive(Clone, Debug, PartialEq)]
enum Sym {
    /// A literal, with where it is stored when the rewrite can edit it.
    Lit(i64, LitAt),
    /// Dimension `axis` of tensor `name` (read by a Shape node).
    Dim(String, usize),
}

/// Run the analysis on the top-level graph.
pub fn analyze(ctx: &Ctx) -> Analysis {
    let mut a = Analyzer { ctx, st: Analysis::default(), shape_vecs: BTreeMap::new() };
    a.st.consts = ctx.consts.clone();
    for &ni in &ctx.order {
        a.node(ni);
    }
    a.finish();
    a.st
}

struct Analyzer<'c, 'a> {
    ctx: &'c Ctx<'a>,
    st: Analysis,
    /// Shape vectors by value name.
    shape_vecs: BTreeMap<String, Vec<Sym>>,
}

/// What happened at one node, for the blocked reason.
fn barrier_reason(n: &NodeProto) -> String {
    let op = if n.domain.is_empty() || n.domain == "ai.onnx" {
        n.op_type.clone()
    } else {
        format!("{}:{}", n.domain, n.op_type)
    };
    format!("blocked by {op} node '{}'", node_label(n))
}

impl<'c, 'a> Analyzer<'c, 'a> {
    fn track(&self, name: &str) -> Option<Track> {
        self.st.tracks.get(name).cloned()
    }

    fn is_const(&self, name: &str) -> bool {
        self.ctx.consts.contains_key(name)
    }

    fn block(&mut self, units: &[Option<Unit>], reason: &str) {
        // One record per class is enough; keep the first reason in graph order.
        let mut seen = BTreeSet::new();
        for u in units.iter().flatten() {
            let r = self.st.find(*u);
            if seen.insert(r) {
                self.st.blocks.push((*u, reason.to_string()));
            }
        }
    }

    fn block_inputs(&mut self, n: &NodeProto, reason: &str) {
        for i in n.input.iter().filter(|s| !s.is_empty()) {
            if let Some(t) = self.track(i) {
                self.block(&t.units, reason);
            }
        }
    }

    fn touch(&mut self, ni: usize, units: &[Option<Unit>]) {
        let e = self.st.touched.entry(ni).or_default();
        e.extend(units.iter().flatten().copied());
    }

    fn emit(&mut self, ni: usize, name: &str, t: Track) {
        if name.is_empty() {
            return;
        }
        self.touch(ni, &t.units);
        self.st.tracks.insert(name.to_string(), t);
    }

    fn new_layer(&mut self, ni: usize, n: usize) -> Vec<Option<Unit>> {
        let layer = self.st.layer_parent.len();
        self.st.layer_parent.push(layer);
        self.st.layer_source.push(ni);
        let start = self.st.parent.len();
        for u in start..start + n {
            self.st.parent.push(u);
            self.st.layer_of.push(layer);
        }
        (start..start + n).map(Some).collect()
    }

    /// Two positions that must be removed together.
    fn join(&mut self, a: Option<Unit>, b: Option<Unit>, reason: &str) {
        match (a, b) {
            (Some(x), Some(y)) => self.st.union(x, y),
            (Some(x), None) | (None, Some(x)) => self.block(&[Some(x)], reason),
            (None, None) => {}
        }
    }

    fn slice(&mut self, weight: &str, axis: usize, units: &[Option<Unit>], user: (usize, usize), role: Role) {
        let key = (weight.to_string(), axis);
        if let Some(s) = self.st.slices.get(&key).cloned() {
            if s.units.len() != units.len() {
                let r = format!("weight '{weight}' is used with different sizes");
                self.block(&s.units, &r);
                self.block(units, &r);
                return;
            }
            let r = format!("shared weight '{weight}' is also used by an untracked tensor");
            for (a, b) in s.units.iter().zip(units) {
                self.join(*a, *b, &r);
            }
        }
        let e = self.st.slices.entry(key).or_insert_with(|| WeightSlice {
            weight: weight.to_string(),
            axis,
            units: units.to_vec(),
            roles: BTreeSet::new(),
            users: BTreeSet::new(),
        });
        e.roles.insert(role);
        e.users.insert(user);
        self.touch(user.0, units);
    }

    fn node(&mut self, ni: usize) {
        let n = &self.ctx.g.node[ni];
        if is_const(n)
            || self
                .st
                .consts
                .get(n.output.first().map(|s| s.as_str()).unwrap_or(""))
                .is_some_and(|c| c.alias_node == Some(ni))
        {
            return;
        }
        if self.shape_plumbing(ni, n) {
            return;
        }
        let Some(kind) = rules::lookup(n) else {
            self.block_inputs(n, &barrier_reason(n));
            return;
        };
        // Tracked tensors may only enter the data slots the rule knows about.
        let data_slots: &[usize] = match kind {
            Kind::Broadcast(_) | Kind::Concat => &[],
            _ => &[0],
        };
        if !data_slots.is_empty() {
            for (slot, i) in n.input.iter().enumerate() {
                if !data_slots.contains(&slot) && !i.is_empty() {
                    if let Some(t) = self.track(i) {
                        let r = format!("{} (channel tensor used as a parameter)", barrier_reason(n));
                        self.block(&t.units, &r);
                    }
                }
            }
        }
        let x = inp(n, 0).and_then(|s| self.track(s));
        match kind {
            Kind::Unary(f) => self.unary(ni, n, x, f),
            Kind::Broadcast(f) => self.broadcast(ni, n, f),
            Kind::Conv => self.conv(ni, n, x),
            Kind::ConvTranspose => self.conv_transpose(ni, n, x),
            Kind::Gemm => self.gemm(ni, n, x),
            Kind::MatMul => self.matmul(ni, n, x),
            Kind::BatchNorm => self.batch_norm(ni, n, x),
            Kind::InstanceNorm => self.instance_norm(ni, n, x),
            Kind::Pool(p) => self.pool(ni, n, x, p),
            Kind::Reduce(r) => self.reduce(ni, n, x, r),
            Kind::Concat => self.concat(ni, n),
            Kind::Split => self.split(ni, n, x),
            Kind::Slice => self.slice_op(ni, n, x),
            Kind::Pad => self.pad(ni, n, x),
            Kind::Resize => self.resize(ni, n, x),
            Kind::Flatten => self.flatten(ni, n, x),
            Kind::Reshape => self.reshape(ni, n, x),
            Kind::Squeeze => self.squeeze(ni, n, x),
            Kind::Unsqueeze => self.unsqueeze(ni, n, x),
            Kind::Transpose => self.transpose(ni, n, x),
            Kind::Gather => self.gather(ni, n, x),
            Kind::AlongAxis => self.along_axis(ni, n, x),
            Kind::LayerNorm => self.layer_norm(ni, n, x),
            Kind::Shape => self.shape(n, x),
        }
    }

    /// Block `x` when any output other than the first is used.
    fn extra_outputs_unused(&mut self, n: &NodeProto, x: &Track) -> bool {
        for o in n.output.iter().skip(1).filter(|s| !s.is_empty()) {
            if !self.ctx.ix.consumers_of(o).is_empty() || self.ctx.is_output(o) {
                let r = format!("{} (secondary output '{o}' is used)", barrier_reason(n));
                self.block(&x.units, &r);
                return false;
            }
        }
        true
    }

    fn pass(&mut self, ni: usize, n: &NodeProto, x: &Track, vals: Vec<Val>) {
        let t = Track { vals, ..x.clone() };
        if let Some(o) = n.output.first() {
            self.emit(ni, o, t);
        }
    }

    fn unary(&mut self, ni: usize, n: &NodeProto, x: Option<Track>, f: rules::UnaryFn) {
        let Some(x) = x else { return };
        let mut scalars = vec![None; n.input.len()];
        for (slot, i) in n.input.iter().enumerate().skip(1) {
            if i.is_empty() {
                continue;
            }
            if !self.is_const(i) {
                let r = format!("{} (parameter '{i}' is not a constant)", barrier_reason(n));
                self.block(&x.units, &r);
                return;
            }
            scalars[slot] = self.ctx.scalar(i);
        }
        if !self.extra_outputs_unused(n, &x) {
            return;
        }
        let vals = x.vals.iter().map(|v| map_val(*v, |k| f(n, &scalars, k))).collect();
        self.pass(ni, n, &x, vals);
    }

    fn broadcast(&mut self, ni: usize, n: &NodeProto, f: rules::BinaryFn) {
        let ins: Vec<(usize, &str)> =
            n.input.iter().enumerate().filter(|(_, s)| !s.is_empty()).map(|(i, s)| (i, s.as_str())).collect();
        let tracked: Vec<(usize, Track)> = ins.iter().filter_map(|(i, s)| self.track(s).map(|t| (*i, t))).collect();
        if tracked.is_empty() {
            return;
        }
        let all_units: Vec<Option<Unit>> = tracked.iter().flat_map(|(_, t)| t.units.clone()).collect();
        let ranks: Option<Vec<usize>> =
            ins.iter().map(|(_, s)| self.track(s).map(|t| t.rank).or_else(|| self.ctx.rank(s))).collect();
        let Some(out_rank) = ranks.and_then(|r| r.into_iter().max()) else {
            let r = format!("{} (rank of an input unknown)", barrier_reason(n));
            self.block(&all_units, &r);
            return;
        };
        let axis = tracked[0].1.axis + out_rank - tracked[0].1.rank;
        let c = tracked[0].1.units.len();
        if tracked.iter().any(|(_, t)| t.axis + out_rank - t.rank != axis || t.units.len() != c) {
            let r = format!("{} (inputs carry channels on different axes)", barrier_reason(n));
            self.block(&all_units, &r);
            return;
        }
        let units = tracked[0].1.units.clone();
        let join_reason = format!("{} (joined with an untracked channel)", barrier_reason(n));
        for (_, t) in &tracked[1..] {
            for (a, b) in units.iter().zip(&t.units) {
                self.join(*a, *b, &join_reason);
            }
        }
        // Per input, per position: the constant a removed unit sees.
        let mut per_input: Vec<Vec<Val>> = Vec::new();
        for (slot, s) in &ins {
            if let Some(t) = self.track(s) {
                per_input.push(t.vals);
                continue;
            }
            let r = self.ctx.rank(s).unwrap_or(0);
            let off = out_rank - r;
            if let Some(d) = self.ctx.dims(s).map(|d| d.to_vec()) {
                let numel: usize = d.iter().product();
                if axis >= off && d[axis - off] == c && c != 1 {
                    self.slice(s, axis - off, &units, (ni, *slot), Role::Param);
                    let per_channel = d.iter().enumerate().all(|(i, &k)| i == axis - off || k == 1);
                    let vals = match self.ctx.const_vals(s) {
                        Some(v) if per_channel => v.into_iter().map(Val::Const).collect(),
                        _ => vec![Val::Varying; c],
                    };
                    per_input.push(vals);
                } else if axis < off || d[axis - off] == 1 {
                    let v = if numel == 1 {
                        self.ctx.scalar(s).map(Val::Const).unwrap_or(Val::Varying)
                    } else {
                        Val::Varying
                    };
                    per_input.push(vec![v; c]);
                } else {
                    let r = format!(
                        "{} (constant '{s}' has {} entries on the channel axis, not {c})",
                        barrier_reason(n),
                        d[axis - off]
                    );
                    self.block(&units, &r);
                    return;
                }
            } else {
                // An untracked activation: fine only when it broadcasts along the channel axis.
                let dim = self.ctx.shapes.get(*s).and_then(|d| {
                    if axis >= off {
                        d.get(axis - off).copied().flatten()
                    } else {
                        Some(1)
                    }
                });
                if axis >= off && dim != Some(1) {
                    let r = format!("{} (joined with untracked tensor '{s}')", barrier_reason(n));
                    self.block(&units, &r);
                    return;
                }
                per_input.push(vec![Val::Varying; c]);
            }
        }
        let is_mul = n.op_type == "Mul";
        let vals = (0..c)
            .map(|p| {
                let mut acc = per_input[0][p];
                for vs in &per_input[1..] {
                    acc = match (acc, vs[p]) {
                        (Val::Const(a), Val::Const(b)) => f(a, b).map(Val::Const).unwrap_or(Val::Varying),
                        // 0 · anything finite = 0 (the other side is an activation or weight).
                        (Val::Const(z), _) | (_, Val::Const(z)) if is_mul && z == 0.0 => Val::Const(0.0),
                        _ => Val::Varying,
                    };
                }
                acc
            })
            .collect();
        let t = Track { axis, rank: out_rank, units, vals };
        if let Some(o) = n.output.first() {
            self.emit(ni, o, t);
        }
    }

    /// A bias input that a compensation may write to: absent (will be created) or a constant
    /// used only here.
    fn bias_writable(&self, n: &NodeProto, slot: usize) -> std::result::Result<(), String> {
        match inp(n, slot) {
            None => Ok(()),
            Some(b) if self.is_const(b) && self.ctx.ix.consumers_of(b).len() == 1 => Ok(()),
            Some(b) => Err(format!("bias '{b}' of '{}' is shared or not a constant", node_label(n))),
        }
    }

    fn conv(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let label = node_label(n);
        let (Some(w), b) = (inp(n, 1), inp(n, 2)) else { return };
        let wd = self.ctx.dims(w).map(|d| d.to_vec());
        let consts_ok = wd.as_ref().is_some_and(|d| d.len() >= 3)
            && b.is_none_or(|b| self.ctx.dims(b).is_some_and(|d| d.len() == 1));
        if !consts_ok {
            if let Some(x) = &x {
                self.block(&x.units, &format!("{} (weights are not constant)", barrier_reason(n)));
            }
            return;
        }
        let wd = wd.unwrap_or_default();
        let group = attr_i(n, "group").unwrap_or(1).max(1) as usize;
        let (cout, cin_g) = (wd[0], wd[1]);
        let cin = cin_g * group;
        // Depthwise: one input channel per group. With Cin = 1 and group = 1 it is a plain conv.
        let depthwise = group > 1 && cin_g == 1 && cout % group == 0;
        if let Some(x) = &x {
            if x.axis != 1 || x.units.len() != cin || x.rank != wd.len() {
                self.block(&x.units, &format!("{} (channel axis does not match the weight)", barrier_reason(n)));
            } else if depthwise {
                // Output o = c·m + j reads input c only: input and output channels are coupled.
                let m = cout / group;
                let units: Vec<Option<Unit>> = x.units.iter().flat_map(|u| std::iter::repeat_n(*u, m)).collect();
                self.slice(w, 0, &units, (ni, 1), Role::Producer);
                if let Some(b) = b {
                    self.slice(b, 0, &units, (ni, 2), Role::ProducerBias);
                }
                self.st.edits.push(Edit::Count {
                    target: IntTarget::AttrInt(ni, "group".into()),
                    index: 0,
                    units: x.units.clone(),
                });
                self.st.sources.insert(ni, units.clone());
                let t = Track { axis: 1, rank: x.rank, vals: vec![Val::Const(0.0); units.len()], units };
                self.emit(ni, &n.output[0], t);
                return;
            } else if group == 1 {
                self.slice(w, 1, &x.units, (ni, 1), Role::Consumer);
                // A zero-padded Conv sees a removed unit's constant only in the interior: the
                // fold is exact there and the border difference is pruning error, measured by
                // fidelity like any other. The masked model zeroes the consumer's input slice, so
                // pruned == masked still holds exactly.
                let pads_zero = attr_ints(n, "pads").is_none_or(|p| p.iter().all(|&v| v == 0));
                let auto = attr_s(n, "auto_pad").unwrap_or_default();
                let padded = !(pads_zero && (auto.is_empty() || auto == "NOTSET" || auto == "VALID"));
                let fold = self.bias_writable(n, 2);
                self.st.consumers.push(Consumer {
                    node: ni,
                    kind: ConsumerKind::Conv { padded },
                    weight: w.to_string(),
                    units: x.units.clone(),
                    vals: x.vals.clone(),
                    fold,
                });
            } else {
                // Grouped: keep-sets uniform across groups, so position i of every group is one unit.
                let r = format!("{} (grouped conv with an untracked channel)", barrier_reason(n));
                for p in cin_g..cin {
                    self.join(x.units[p], x.units[p % cin_g], &r);
                }
                let local = x.units[..cin_g].to_vec();
                self.slice(w, 1, &local, (ni, 1), Role::Consumer);
                let fold = Err(format!("grouped Conv '{label}'"));
                self.st.consumers.push(Consumer {
                    node: ni,
                    kind: ConsumerKind::Conv { padded: false },
                    weight: w.to_string(),
                    units: x.units.clone(),
                    vals: x.vals.clone(),
                    fold,
                });
            }
        }
        if depthwise {
            return; // untracked input: output channels cannot shrink alone
        }
        let units = self.new_layer(ni, cout);
        let og = cout / group;
        for o in og..cout {
            self.join(units[o], units[o % og], "");
        }
        self.slice(w, 0, &units, (ni, 1), Role::Producer);
        if let Some(b) = b {
            self.slice(b, 0, &units, (ni, 2), Role::ProducerBias);
        }
        self.st.sources.insert(ni, units.clone());
        let t = Track { axis: 1, rank: wd.len(), vals: vec![Val::Const(0.0); cout], units };
        self.emit(ni, &n.output[0], t);
    }

    fn conv_transpose(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let label = node_label(n);
        let (Some(w), b) = (inp(n, 1), inp(n, 2)) else { return };
        let group = attr_i(n, "group").unwrap_or(1);
        let wd = self.ctx.dims(w).map(|d| d.to_vec()).filter(|d| d.len() >= 3);
        let Some(wd) = wd.filter(|_| group == 1 && b.is_none_or(|b| self.is_const(b))) else {
            if let Some(x) = &x {
                self.block(&x.units, &format!("{} (grouped or non-constant ConvTranspose)", barrier_reason(n)));
            }
            return;
        };
        if let Some(x) = &x {
            if x.axis != 1 || x.units.len() != wd[0] {
                self.block(&x.units, &format!("{} (channel axis does not match the weight)", barrier_reason(n)));
            } else {
                self.slice(w, 0, &x.units, (ni, 1), Role::Consumer);
                let fold = Err(format!("ConvTranspose '{label}' (overlapping kernels)"));
                self.st.consumers.push(Consumer {
                    node: ni,
                    kind: ConsumerKind::Conv { padded: false },
                    weight: w.to_string(),
                    units: x.units.clone(),
                    vals: x.vals.clone(),
                    fold,
                });
            }
        }
        let units = self.new_layer(ni, wd[1]);
        self.slice(w, 1, &units, (ni, 1), Role::Producer);
        if let Some(b) = b {
            self.slice(b, 0, &units, (ni, 2), Role::ProducerBias);
        }
        self.st.sources.insert(ni, units.clone());
        let t = Track { axis: 1, rank: wd.len(), vals: vec![Val::Const(0.0); wd[1]], units };
        self.emit(ni, &n.output[0], t);
    }

    fn gemm(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let (Some(bw), c) = (inp(n, 1), inp(n, 2)) else { return };
        let bd = self.ctx.dims(bw).map(|d| d.to_vec()).filter(|d| d.len() == 2);
        let Some(bd) = bd.filter(|_| c.is_none_or(|c| self.is_const(c))) else {
            if let Some(x) = &x {
                self.block(&x.units, &format!("{} (weights are not constant)", barrier_reason(n)));
            }
            return;
        };
        let trans_a = attr_i(n, "transA").unwrap_or(0) != 0;
        let trans_b = attr_i(n, "transB").unwrap_or(0) != 0;
        let alpha = attr_f(n, "alpha").unwrap_or(1.0) as f64;
        let beta = attr_f(n, "beta").unwrap_or(1.0) as f64;
        let (k, nout) = if trans_b { (bd[1], bd[0]) } else { (bd[0], bd[1]) };
        if let Some(x) = &x {
            let want = if trans_a { 0 } else { 1 };
            if x.axis != want || x.units.len() != k {
                self.block(&x.units, &format!("{} (tracked axis is not the contracted one)", barrier_reason(n)));
            } else {
                self.slice(bw, if trans_b { 1 } else { 0 }, &x.units, (ni, 1), Role::Consumer);
                let bias_shape_ok = c.is_none_or(|c| {
                    self.ctx.dims(c).is_some_and(|d| d.last() == Some(&nout) && d.iter().rev().skip(1).all(|&v| v == 1))
                });
                let fold = if beta == 0.0 || !bias_shape_ok {
                    Err(format!("Gemm '{}' (beta = 0 or a bias that is not per-output)", node_label(n)))
                } else {
                    self.bias_writable(n, 2)
                };
                self.st.consumers.push(Consumer {
                    node: ni,
                    kind: ConsumerKind::Gemm { trans_b, alpha, beta },
                    weight: bw.to_string(),
                    units: x.units.clone(),
                    vals: x.vals.clone(),
                    fold,
                });
            }
        }
        // Output units; a scalar bias still emits beta·c from a removed unit.
        let mut vals = vec![Val::Const(0.0); nout];
        let units = self.new_layer(ni, nout);
        self.slice(bw, if trans_b { 0 } else { 1 }, &units, (ni, 1), Role::Producer);
        if let Some(c) = c {
            let cd = self.ctx.dims(c).map(|d| d.to_vec()).unwrap_or_default();
            if cd.last() == Some(&nout) && nout != 1 {
                // [N] or [M, N]: sliced with the outputs, zeroed in the masked model.
                self.slice(c, cd.len() - 1, &units, (ni, 2), Role::ProducerBias);
            } else if cd.iter().product::<usize>() == 1 {
                vals = vec![self.ctx.scalar(c).map(|v| Val::Const(beta * v)).unwrap_or(Val::Varying); nout];
            } else {
                vals = vec![Val::Varying; nout];
            }
        }
        self.st.sources.insert(ni, units.clone());
        self.emit(ni, &n.output[0], Track { axis: 1, rank: 2, units, vals });
    }

    /// The constant Add right after a MatMul that acts as its bias: (node, slot of the constant).
    fn matmul_bias(&self, n: &NodeProto, nout: usize, out_rank: usize) -> Option<(usize, usize)> {
        let y = n.output.first()?;
        let cons = self.ctx.ix.consumers_of(y);
        if cons.len() != 1 || self.ctx.is_output(y) {
            return None;
        }
        let (ci, slot) = cons[0];
        let a = &self.ctx.g.node[ci];
        if a.op_type != "Add" || a.input.len() != 2 || !a.domain.is_empty() {
            return None;
        }
        let other = 1 - slot;
        let b = &a.input[other];
        let d = self.ctx.dims(b)?;
        let ok = d.last() == Some(&nout) && d.len() <= out_rank && d.iter().rev().skip(1).all(|&v| v == 1);
        (ok && self.ctx.ix.consumers_of(b).len() == 1).then_some((ci, other))
    }

    fn matmul(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(wn) = inp(n, 1) else { return };
        let wd = self.ctx.dims(wn).map(|d| d.to_vec()).filter(|d| d.len() == 2);
        if let Some(t) = inp(n, 1).and_then(|s| self.track(s)) {
            self.block(&t.units, &format!("{} (right operand is an activation)", barrier_reason(n)));
        }
        let Some(wd) = wd else {
            if let Some(x) = &x {
                self.block(&x.units, &format!("{} (right operand is not a constant matrix)", barrier_reason(n)));
            }
            return;
        };
        let (k, nout) = (wd[0], wd[1]);
        let ra = x.as_ref().map(|t| t.rank).or_else(|| inp(n, 0).and_then(|s| self.ctx.rank(s)));
        let Some(ra) = ra.filter(|&r| r >= 1) else { return };
        let out_rank = ra.max(1);
        let bias = self.matmul_bias(n, nout, out_rank);
        if let Some(x) = &x {
            if x.axis + 1 != x.rank || x.units.len() != k {
                self.block(&x.units, &format!("{} (tracked axis is not the contracted one)", barrier_reason(n)));
            } else {
                self.slice(wn, 0, &x.units, (ni, 1), Role::Consumer);
                self.st.consumers.push(Consumer {
                    node: ni,
                    kind: ConsumerKind::MatMul { bias },
                    weight: wn.to_string(),
                    units: x.units.clone(),
                    vals: x.vals.clone(),
                    fold: Ok(()),
                });
            }
        }
        let units = self.new_layer(ni, nout);
        self.slice(wn, 1, &units, (ni, 1), Role::Producer);
        self.st.sources.insert(ni, units.clone());
        let t = Track { axis: out_rank - 1, rank: out_rank, vals: vec![Val::Const(0.0); nout], units };
        self.emit(ni, &n.output[0], t);
    }

    /// Per-channel constant inputs `slots` of a normalisation: all constant, dims [C].
    fn channel_params(&mut self, ni: usize, n: &NodeProto, x: &Track, slots: &[usize]) -> Option<Vec<Vec<f64>>> {
        let c = x.units.len();
        let mut out = Vec::new();
        for &s in slots {
            let name = inp(n, s).filter(|p| self.ctx.dims(p) == Some(&[c][..]));
            let vals = name.and_then(|p| self.ctx.const_vals(p));
            let (Some(name), Some(vals)) = (name, vals) else {
                self.block(&x.units, &format!("{} (parameters are not constant [C] vectors)", barrier_reason(n)));
                return None;
            };
            self.slice(name, 0, &x.units, (ni, s), Role::Param);
            out.push(vals);
        }
        Some(out)
    }

    fn batch_norm(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        if x.axis != 1 {
            self.block(&x.units, &format!("{} (channel axis is not 1)", barrier_reason(n)));
            return;
        }
        if !self.extra_outputs_unused(n, &x) {
            return;
        }
        let Some(p) = self.channel_params(ni, n, &x, &[1, 2, 3, 4]) else { return };
        let eps = attr_f(n, "epsilon").unwrap_or(1e-5) as f64;
        let vals = x
            .vals
            .iter()
            .enumerate()
            .map(|(c, v)| map_val(*v, |k| Some((k - p[2][c]) / (p[3][c] + eps).sqrt() * p[0][c] + p[1][c])))
            .collect();
        self.pass(ni, n, &x, vals);
    }

    fn instance_norm(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        if x.axis != 1 {
            self.block(&x.units, &format!("{} (channel axis is not 1)", barrier_reason(n)));
            return;
        }
        let Some(p) = self.channel_params(ni, n, &x, &[1, 2]) else { return };
        // A constant channel normalises to 0, then gets its shift B.
        let vals = (0..x.units.len()).map(|c| Val::Const(p[1][c])).collect();
        self.pass(ni, n, &x, vals);
    }

    fn pool(&mut self, ni: usize, n: &NodeProto, x: Option<Track>, kind: PoolKind) {
        let Some(x) = x else { return };
        if x.axis != 1 {
            self.block(&x.units, &format!("{} (channel axis is not 1)", barrier_reason(n)));
            return;
        }
        if !self.extra_outputs_unused(n, &x) {
            return;
        }
        let pads = attr_ints(n, "pads").is_some_and(|p| p.iter().any(|&v| v != 0))
            || attr_s(n, "auto_pad").is_some_and(|s| s.starts_with("SAME"));
        let include_pad = attr_i(n, "count_include_pad").unwrap_or(0) != 0;
        let keeps = match kind {
            PoolKind::Max | PoolKind::GlobalMax | PoolKind::GlobalAverage => true,
            PoolKind::Average => !(pads && include_pad),
            PoolKind::Lp => false,
        };
        let vals = x.vals.iter().map(|v| if keeps { *v } else { zero_only(*v) }).collect();
        self.pass(ni, n, &x, vals);
    }

    fn reduce(&mut self, ni: usize, n: &NodeProto, x: Option<Track>, kind: ReduceKind) {
        let Some(x) = x else { return };
        let axes = self.ctx.axes_of(n).unwrap_or_default();
        if axes.is_empty() {
            if attr_i(n, "noop_with_empty_axes").unwrap_or(0) != 0 {
                self.pass(ni, n, &x, x.vals.clone());
            } else {
                self.block(&x.units, &format!("{} (reduces every axis)", barrier_reason(n)));
            }
            return;
        }
        let Some(axes) = axes.iter().map(|&a| norm_axis(a, x.rank)).collect::<Option<Vec<_>>>() else {
            self.block(&x.units, &format!("{} (bad axes)", barrier_reason(n)));
            return;
        };
        if axes.contains(&x.axis) {
            self.block(&x.units, &format!("{} (reduces the channel axis)", barrier_reason(n)));
            return;
        }
        let keep = attr_i(n, "keepdims").unwrap_or(1) != 0;
        let mut ax: Vec<usize> = axes.clone();
        ax.sort_unstable();
        ax.dedup();
        let (axis, rank) = if keep {
            (x.axis, x.rank)
        } else {
            (x.axis - ax.iter().filter(|&&a| a < x.axis).count(), x.rank - ax.len())
        };
        let vals = x
            .vals
            .iter()
            .map(|v| match kind {
                ReduceKind::KeepsConstant => *v,
                ReduceKind::ZeroOnly => zero_only(*v),
                ReduceKind::Unknown => Val::Varying,
            })
            .collect();
        let t = Track { axis, rank, units: x.units.clone(), vals };
        self.emit(ni, &n.output[0], t);
    }

    fn concat(&mut self, ni: usize, n: &NodeProto) {
        let ins: Vec<&str> = n.input.iter().map(|s| s.as_str()).collect();
        let tracked: Vec<Track> = ins.iter().filter_map(|s| self.track(s)).collect();
        let Some(first) = tracked.first().cloned() else { return };
        let all: Vec<Option<Unit>> = tracked.iter().flat_map(|t| t.units.clone()).collect();
        let Some(axis) = attr_i(n, "axis").and_then(|a| norm_axis(a, first.rank)) else {
            self.block(&all, &format!("{} (bad axis)", barrier_reason(n)));
            return;
        };
        if tracked.iter().any(|t| t.axis != first.axis || t.rank != first.rank) {
            self.block(&all, &format!("{} (inputs carry channels on different axes)", barrier_reason(n)));
            return;
        }
        if axis == first.axis {
            // Offsets: the output axis is the inputs' positions one after another.
            let mut units = Vec::new();
            let mut vals = Vec::new();
            for s in &ins {
                if let Some(t) = self.track(s) {
                    units.extend(t.units);
                    vals.extend(t.vals);
                    continue;
                }
                let len = self
                    .ctx
                    .dims(s)
                    .map(|d| d.to_vec())
                    .or_else(|| self.ctx.shapes.get(*s).map(|d| d.iter().map(|v| v.unwrap_or(0)).collect()));
                match len.and_then(|d| d.get(axis).copied()).filter(|&l| l > 0) {
                    Some(l) => {
                        units.extend(std::iter::repeat_n(None, l));
                        vals.extend(std::iter::repeat_n(Val::Varying, l));
                    }
                    None => {
                        self.block(
                            &all,
                            &format!("{} (size of input '{s}' on the channel axis unknown)", barrier_reason(n)),
                        );
                        return;
                    }
                }
            }
            let t = Track { axis, rank: first.rank, units, vals };
            self.emit(ni, &n.output[0], t);
            return;
        }
        // Concatenating along another axis: the channel positions of all inputs are the same.
        let c = first.units.len();
        let r = format!("{} (joined with an untracked channel)", barrier_reason(n));
        let mut vals = first.vals.clone();
        for (slot, s) in ins.iter().enumerate() {
            if let Some(t) = self.track(s) {
                if t.units.len() != c {
                    self.block(&all, &format!("{} (channel sizes differ)", barrier_reason(n)));
                    return;
                }
                for (p, (a, b)) in first.units.iter().zip(&t.units).enumerate() {
                    self.join(*a, *b, &r);
                    if vals[p] != t.vals[p] {
                        vals[p] = Val::Varying;
                    }
                }
            } else if self.ctx.dims(s).is_some_and(|d| d.len() == first.rank && d[first.axis] == c) {
                // e.g. a class token concatenated to the sequence: a per-channel constant.
                self.slice(s, first.axis, &first.units, (ni, slot), Role::Param);
                vals = vec![Val::Varying; c];
            } else {
                self.block(&all, &format!("{} (input '{s}' cannot shrink with the channels)", barrier_reason(n)));
                return;
            }
        }
        let t = Track { vals, ..first };
        self.emit(ni, &n.output[0], t);
    }

    fn split(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let Some(axis) = norm_axis(attr_i(n, "axis").unwrap_or(0), x.rank) else {
            self.block(&x.units, &format!("{} (bad axis)", barrier_reason(n)));
            return;
        };
        if axis != x.axis {
            for o in n.output.iter().filter(|s| !s.is_empty()) {
                self.emit(ni, o, x.clone());
            }
            return;
        }
        let c = x.units.len();
        let k = n.output.len();
        let sizes: Option<Vec<usize>> = if let Some(s) = attr_ints(n, "split") {
            Some(s.iter().map(|&v| v.max(0) as usize).collect())
        } else if let Some(s) = inp(n, 1) {
            self.ctx.const_ints(s).map(|v| v.iter().map(|&v| v.max(0) as usize).collect())
        } else if k > 0 {
            let chunk = c.div_ceil(k);
            Some((0..k).map(|i| chunk.min(c.saturating_sub(i * chunk))).collect())
        } else {
            None
        };
        let Some(sizes) = sizes.filter(|s| s.len() == k && s.iter().sum::<usize>() == c) else {
            self.block(&x.units, &format!("{} (split sizes unknown or inconsistent)", barrier_reason(n)));
            return;
        };
        let mut parts = Vec::new();
        let mut at = 0;
        for (o, &len) in n.output.iter().zip(&sizes) {
            let t = Track {
                axis,
                rank: x.rank,
                units: x.units[at..at + len].to_vec(),
                vals: x.vals[at..at + len].to_vec(),
            };
            parts.push(t.units.clone());
            if !o.is_empty() {
                self.emit(ni, o, t);
            }
            at += len;
        }
        self.st.edits.push(Edit::Split { node: ni, axis, parts });
    }

    fn slice_op(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let from_attrs = self.ctx.opset < 10 || attr(n, "starts").is_some();
        let get = |slot: usize, name: &str| -> Option<Option<Vec<i64>>> {
            if from_attrs {
                Some(attr_ints(n, name).map(|v| v.to_vec()))
            } else {
                match inp(n, slot) {
                    None => Some(None),
                    Some(s) => self.ctx.const_ints(s).map(Some),
                }
            }
        };
        let (Some(Some(starts)), Some(Some(ends)), Some(axes), Some(steps)) =
            (get(1, "starts"), get(2, "ends"), get(3, "axes"), get(4, "steps"))
        else {
            self.block(&x.units, &format!("{} (bounds are not constant)", barrier_reason(n)));
            return;
        };
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let mut out = x.clone();
        for (i, &a) in axes.iter().enumerate() {
            if norm_axis(a, x.rank) != Some(x.axis) {
                continue;
            }
            let step = steps.as_ref().and_then(|s| s.get(i)).copied().unwrap_or(1);
            let c = x.units.len() as i64;
            let clampi = |v: i64| (if v < 0 { v + c } else { v }).clamp(0, c) as usize;
            let (Some(&s0), Some(&e0)) = (starts.get(i), ends.get(i)) else { return };
            let (s, e) = (clampi(s0), clampi(e0));
            if step != 1 || e <= s {
                self.block(&x.units, &format!("{} (stepped or empty slice of the channel axis)", barrier_reason(n)));
                return;
            }
            let (ts, te) = if from_attrs {
                (IntTarget::AttrInts(ni, "starts".into()), IntTarget::AttrInts(ni, "ends".into()))
            } else {
                (IntTarget::Input(ni, 1), IntTarget::Input(ni, 2))
            };
            self.st.edits.push(Edit::Count { target: ts, index: i, units: x.units[..s].to_vec() });
            self.st.edits.push(Edit::Count { target: te, index: i, units: x.units[..e].to_vec() });
            self.touch(ni, &x.units);
            out.units = x.units[s..e].to_vec();
            out.vals = x.vals[s..e].to_vec();
        }
        self.emit(ni, &n.output[0], out);
    }

    fn pad(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let pads = attr_ints(n, "pads").map(|v| v.to_vec()).or_else(|| inp(n, 1).and_then(|s| self.ctx.const_ints(s)));
        let axes: Option<Vec<usize>> = match inp(n, 3) {
            None => Some((0..x.rank).collect()),
            Some(s) => self.ctx.const_ints(s).and_then(|v| v.iter().map(|&a| norm_axis(a, x.rank)).collect()),
        };
        let (Some(pads), Some(axes)) = (pads, axes) else {
            self.block(&x.units, &format!("{} (pads are not constant)", barrier_reason(n)));
            return;
        };
        let k = axes.len();
        let touches = axes
            .iter()
            .enumerate()
            .any(|(i, &a)| a == x.axis && (pads.get(i) != Some(&0) || pads.get(i + k) != Some(&0)));
        if touches || pads.len() != 2 * k {
            self.block(&x.units, &format!("{} (pads the channel axis)", barrier_reason(n)));
            return;
        }
        let mode = attr_s(n, "mode").unwrap_or_else(|| "constant".into());
        let value = if self.ctx.opset < 11 {
            attr_f(n, "value").unwrap_or(0.0) as f64
        } else {
            inp(n, 2).and_then(|s| self.ctx.scalar(s)).unwrap_or(0.0)
        };
        let any_pad = pads.iter().any(|&p| p != 0);
        let vals = x
            .vals
            .iter()
            .map(|v| match v {
                Val::Const(k) if mode == "constant" && any_pad && *k != value => Val::Varying,
                v => *v,
            })
            .collect();
        self.pass(ni, n, &x, vals);
    }

    fn resize(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let (scales_slot, sizes_slot) =
            if n.op_type == "Upsample" || self.ctx.opset < 11 { (1, None) } else { (2, Some(3)) };
        let axes: Vec<usize> = match attr_ints(n, "axes") {
            Some(a) => a.iter().filter_map(|&v| norm_axis(v, x.rank)).collect(),
            None => (0..x.rank).collect(),
        };
        let Some(idx) = axes.iter().position(|&a| a == x.axis) else {
            self.pass(ni, n, &x, x.vals.clone());
            return;
        };
        let scales = attr(n, "scales")
            .map(|a| a.floats.iter().map(|&v| v as f64).collect::<Vec<_>>())
            .or_else(|| inp(n, scales_slot).and_then(|s| self.ctx.const_vals(s)));
        let sizes_name = sizes_slot.and_then(|s| inp(n, s));
        let ok = if let Some(sz) = sizes_name {
            let v = self.ctx.const_ints(sz);
            if v.as_ref().and_then(|v| v.get(idx)) == Some(&(x.units.len() as i64)) {
                self.st.edits.push(Edit::Count { target: IntTarget::Input(ni, 3), index: idx, units: x.units.clone() });
                true
            } else {
                false
            }
        } else {
            scales.as_ref().and_then(|s| s.get(idx)) == Some(&1.0)
        };
        if !ok {
            self.block(
                &x.units,
                &format!("{} (resizes the channel axis or sizes are not constant)", barrier_reason(n)),
            );
            return;
        }
        // Cubic overshoots, crop-and-resize extrapolates: a constant stays one only if it is 0.
        let cubic = attr_s(n, "mode").is_some_and(|m| m == "cubic");
        let crop = attr_s(n, "coordinate_transformation_mode").is_some_and(|m| m == "tf_crop_and_resize");
        let vals = x.vals.iter().map(|v| if cubic || crop { zero_only(*v) } else { *v }).collect();
        self.pass(ni, n, &x, vals);
    }

    /// In-features of the Gemm/MatMul that reads `name` (through unary ops), for Flatten.
    fn features_downstream(&self, name: &str, depth: usize) -> Option<usize> {
        if depth > 16 || self.ctx.is_output(name) {
            return None;
        }
        let mut found = None;
        for &(ci, slot) in self.ctx.ix.consumers_of(name) {
            let c = &self.ctx.g.node[ci];
            let d = |s: usize| inp(c, s).and_then(|w| self.ctx.dims(w)).filter(|d| d.len() == 2).map(|d| d.to_vec());
            let k = match (c.op_type.as_str(), slot, rules::lookup(c)) {
                ("Gemm", 0, _) if attr_i(c, "transA").unwrap_or(0) == 0 => {
                    d(1).map(|d| if attr_i(c, "transB").unwrap_or(0) != 0 { d[1] } else { d[0] })
                }
                ("MatMul", 0, _) => d(1).map(|d| d[0]),
                (_, 0, Some(Kind::Unary(_))) => c.output.first().and_then(|o| self.features_downstream(o, depth + 1)),
                _ => None,
            }?;
            if found.is_some_and(|f| f != k) {
                return None;
            }
            found = Some(k);
        }
        found
    }

    /// Channel c of `x` becomes features c·inner … (c+1)·inner − 1 of `out` (axis `x.axis`).
    fn merge_trailing(&mut self, ni: usize, n: &NodeProto, x: &Track, explicit: Option<usize>) -> Option<Track> {
        let c = x.units.len();
        let declared = inp(n, 0)
            .and_then(|s| self.ctx.shapes.get(s))
            .filter(|d| d.len() == x.rank)
            .and_then(|d| d[x.axis + 1..].iter().copied().product::<Option<usize>>());
        let last = (x.axis + 1 == x.rank).then_some(c);
        let total =
            explicit.or(last).or_else(|| declared.map(|i| i * c)).or_else(|| self.features_downstream(&n.output[0], 0));
        let inner = total.filter(|&f| c > 0 && f % c == 0 && f > 0).map(|f| f / c);
        let Some(inner) = inner else {
            self.block(
                &x.units,
                &format!("{} (cannot tell how many features each channel becomes)", barrier_reason(n)),
            );
            return None;
        };
        let units: Vec<Option<Unit>> = x.units.iter().flat_map(|u| std::iter::repeat_n(*u, inner)).collect();
        let vals: Vec<Val> = x.vals.iter().flat_map(|v| std::iter::repeat_n(*v, inner)).collect();
        self.touch(ni, &x.units);
        Some(Track { axis: x.axis, rank: x.axis + 1, units, vals })
    }

    fn flatten(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let axis = norm_axis(attr_i(n, "axis").unwrap_or(1), x.rank + 1).filter(|&a| a <= x.rank);
        if axis != Some(x.axis) || x.axis == 0 {
            self.block(&x.units, &format!("{} (the channel axis is not the first flattened axis)", barrier_reason(n)));
            return;
        }
        if let Some(mut t) = self.merge_trailing(ni, n, &x, None) {
            t.axis = 1;
            t.rank = 2;
            self.emit(ni, &n.output[0], t);
        }
    }

    fn reshape(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let Some(tname) = inp(n, 1) else { return };
        // The target as symbols: a constant (editable in place) or a followed shape vector.
        let target: Option<Vec<Sym>> = match self.ctx.const_ints(tname) {
            Some(v) => Some(v.iter().enumerate().map(|(i, &v)| Sym::Lit(v, Some((ni, 1, i)))).collect()),
            None => self.shape_vecs.get(tname).cloned(),
        };
        let Some(target) = target else {
            self.block(&x.units, &format!("{} (target shape is not known)", barrier_reason(n)));
            return;
        };
        let allowzero = attr_i(n, "allowzero").unwrap_or(0) != 0;
        let t = x.axis;
        let c = x.units.len() as i64;
        let me = inp(n, 0).unwrap_or_default();
        let declared = self.ctx.shapes.get(me).filter(|d| d.len() == x.rank).cloned();
        // Which input dim each target entry copies (0, or a Shape-read dim of the input).
        let copies = |i: usize| -> Option<usize> {
            match target.get(i)? {
                Sym::Lit(0, _) if !allowzero => Some(i),
                Sym::Dim(name, j) if name == me => Some(*j),
                _ => None,
            }
        };
        let lit = |i: usize| -> Option<(i64, LitAt)> {
            match target.get(i)? {
                Sym::Lit(v, p) => Some((*v, *p)),
                _ => None,
            }
        };
        let lead_ok = |i: usize| {
            copies(i) == Some(i)
                || lit(i).is_some_and(|(v, _)| {
                    declared.as_ref().and_then(|d| d.get(i).copied().flatten()).is_some_and(|d| d as i64 == v)
                })
        };
        let lead = (0..t).all(lead_ok);
        let mut safe_channel = None; // target entry that reads our channel count and adapts by itself
        let mut done = false;
        // (a) the channel axis itself survives: [.., C, anything].
        if lead && target.len() > t {
            if copies(t) == Some(t) {
                safe_channel = Some(t);
                done = true;
            } else if let Some((v, p)) = lit(t).filter(|(v, _)| *v == c) {
                let _ = v;
                done = self.count_edit(&x, n, p, x.units.clone());
            }
            if done {
                let out = Track { rank: target.len(), ..x.clone() };
                self.emit(ni, &n.output[0], out);
            }
        }
        // (b) flatten-like: [.., F] or [.., -1] merging the channel axis and all after it;
        // also [-1, F] for a channel axis 1.
        let lead_b = lead || (t == 1 && lit(0).is_some_and(|(v, _)| v == -1) && lit(1).is_some_and(|(v, _)| v > 0));
        if !done && target.len() == t + 1 && lead_b {
            if let Some((v, p)) = lit(t).filter(|(v, _)| *v == -1 || *v > 0) {
                let explicit = (v > 0).then_some(v as usize);
                if let Some(out) = self.merge_trailing(ni, n, &x, explicit) {
                    done = explicit.is_none() || self.count_edit(&x, n, p, out.units.clone());
                    if done {
                        self.emit(ni, &n.output[0], out);
                    }
                } else {
                    return; // merge_trailing blocked with its reason
                }
            }
        }
        if !done {
            self.block(&x.units, &format!("{} (reshape moves the channel axis)", barrier_reason(n)));
        }
        // Channel counts read from other tensors (or ours at another place) cannot adapt.
        for (i, e) in target.iter().enumerate() {
            if let Sym::Dim(name, j) = e {
                let ours = name == me && safe_channel == Some(i) && done;
                if let Some(tr) = self.track(name).filter(|tr| tr.axis == *j && !ours) {
                    self.block(
                        &tr.units,
                        &format!("{} (target reads the channel count of '{name}')", barrier_reason(n)),
                    );
                }
            }
        }
    }

    /// Register the rewrite of a literal that equals a kept count; false (and block) when the
    /// literal cannot be edited.
    fn count_edit(&mut self, x: &Track, n: &NodeProto, at: LitAt, units: Vec<Option<Unit>>) -> bool {
        match at {
            Some((node, slot, index)) => {
                self.st.edits.push(Edit::Count { target: IntTarget::Input(node, slot), index, units });
                self.touch(node, &x.units);
                true
            }
            None => {
                self.block(
                    &x.units,
                    &format!("{} (a channel count in its target cannot be rewritten)", barrier_reason(n)),
                );
                false
            }
        }
    }

    /// Follow shape vectors: Shape → Gather / Slice / Unsqueeze / Squeeze / Cast / Concat. A
    /// vector element that is a channel count may only end in a Reshape target that adapts; any
    /// other reader blocks the channel's group. Returns true when the node was handled here.
    fn shape_plumbing(&mut self, ni: usize, n: &NodeProto) -> bool {
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return false;
        }
        let out = match n.output.first() {
            Some(o) if !o.is_empty() => o.clone(),
            _ => return false,
        };
        if n.op_type == "Shape" {
            let Some(x) = inp(n, 0) else { return false };
            let Some(r) = self.track(x).map(|t| t.rank).or_else(|| self.ctx.rank(x)) else { return false };
            let s = norm_bound(attr_i(n, "start").unwrap_or(0), r);
            let e = norm_bound(attr_i(n, "end").unwrap_or(r as i64), r);
            self.shape_vecs.insert(out, (s..e).map(|i| Sym::Dim(x.to_string(), i)).collect());
            return true;
        }
        // Small integer constants cast for a shape (Paddle: Cast(fill_constant)).
        if n.op_type == "Cast" {
            if let Some(c) = inp(n, 0).filter(|c| self.ctx.dims(c).is_some_and(|d| d.len() <= 1)) {
                let int_src = self
                    .ctx
                    .base_tensor(c)
                    .is_some_and(|t| matches!(t.data_type, tensor::dt::INT64 | tensor::dt::INT32));
                if let (true, Some(v)) = (int_src, self.ctx.const_ints(c)) {
                    self.shape_vecs
                        .insert(out, v.iter().enumerate().map(|(k, &v)| Sym::Lit(v, Some((ni, 0, k)))).collect());
                    return true;
                }
            }
        }
        let vec_in: Vec<Vec<Sym>> = n.input.iter().filter_map(|i| self.shape_vecs.get(i).cloned()).collect();
        if vec_in.is_empty() {
            return false;
        }
        // A Reshape target is checked by the Reshape rule (it knows which counts adapt).
        let target_only = n.op_type == "Reshape" && inp(n, 0).is_none_or(|d| !self.shape_vecs.contains_key(d));
        if target_only && inp(n, 0).is_some_and(|d| self.st.tracks.contains_key(d)) {
            return false;
        }
        let first = inp(n, 0).and_then(|i| self.shape_vecs.get(i)).cloned();
        let result: Option<Vec<Sym>> = match n.op_type.as_str() {
            "Unsqueeze" | "Squeeze" | "Cast" | "Identity" => first,
            "Gather" if attr_i(n, "axis").unwrap_or(0) == 0 => first
                .zip(inp(n, 1).and_then(|i| self.ctx.const_ints(i)))
                .and_then(|(v, idx)| idx.iter().map(|&k| norm_axis(k, v.len()).map(|k| v[k].clone())).collect()),
            "Slice" => first.and_then(|v| {
                let g = |slot| inp(n, slot).and_then(|i| self.ctx.const_ints(i));
                let (st, en) = (g(1)?, g(2)?);
                let axes_ok = inp(n, 3).is_none_or(|_| g(3).is_some_and(|a| a == [0]));
                let step_ok = inp(n, 4).is_none_or(|_| g(4).is_some_and(|a| a == [1]));
                let l = v.len();
                let (s0, e0) = (
                    norm_bound((*st.first()?).clamp(-(l as i64), l as i64), l),
                    norm_bound((*en.first()?).clamp(-(l as i64), l as i64), l),
                );
                (axes_ok && step_ok && s0 <= e0).then(|| v[s0..e0].to_vec())
            }),
            "Concat" if attr_i(n, "axis").is_some_and(|a| a == 0 || a == -1) => {
                let mut v = vec![];
                let mut ok = true;
                for (slot, i) in n.input.iter().enumerate() {
                    if let Some(sv) = self.shape_vecs.get(i) {
                        v.extend(sv.iter().cloned());
                    } else if let Some(c) =
                        self.ctx.const_ints(i).filter(|_| self.ctx.dims(i).is_some_and(|d| d.len() == 1))
                    {
                        v.extend(c.iter().enumerate().map(|(k, &x)| Sym::Lit(x, Some((ni, slot, k)))));
                    } else {
                        ok = false;
                    }
                }
                ok.then_some(v)
            }
            _ => None,
        };
        match result {
            Some(v) => {
                self.shape_vecs.insert(out, v);
                true
            }
            None => {
                // Any other reader: no channel count may pass.
                for v in &vec_in {
                    self.block_channel_dims(v, &format!("{} (reads the channel count)", barrier_reason(n)));
                }
                false
            }
        }
    }

    fn block_channel_dims(&mut self, v: &[Sym], reason: &str) {
        for e in v {
            if let Sym::Dim(name, j) = e {
                if let Some(t) = self.track(name).filter(|t| t.axis == *j) {
                    self.block(&t.units, reason);
                }
            }
        }
    }

    fn squeeze(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let axes =
            self.ctx.axes_of(n).and_then(|a| a.iter().map(|&v| norm_axis(v, x.rank)).collect::<Option<BTreeSet<_>>>());
        match axes {
            Some(ax) if !ax.is_empty() && !ax.contains(&x.axis) => {
                let axis = x.axis - ax.iter().filter(|&&a| a < x.axis).count();
                let t = Track { axis, rank: x.rank - ax.len(), ..x.clone() };
                self.emit(ni, &n.output[0], t);
            }
            _ => self
                .block(&x.units, &format!("{} (squeezed axes unknown or include the channel axis)", barrier_reason(n))),
        }
    }

    fn unsqueeze(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let Some(axes) = self.ctx.axes_of(n) else {
            self.block(&x.units, &format!("{} (axes unknown)", barrier_reason(n)));
            return;
        };
        let r = x.rank + axes.len();
        let Some(ax) = axes.iter().map(|&a| norm_axis(a, r)).collect::<Option<BTreeSet<_>>>() else { return };
        // The channel axis lands on the x.axis-th position that is not inserted.
        let axis = (0..r).filter(|i| !ax.contains(i)).nth(x.axis);
        if let Some(axis) = axis {
            let t = Track { axis, rank: r, ..x.clone() };
            self.emit(ni, &n.output[0], t);
        }
    }

    fn transpose(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let perm: Vec<i64> =
            attr_ints(n, "perm").map(|p| p.to_vec()).unwrap_or_else(|| (0..x.rank as i64).rev().collect());
        match perm.iter().position(|&p| p == x.axis as i64).filter(|_| perm.len() == x.rank) {
            Some(axis) => {
                let t = Track { axis, ..x.clone() };
                self.emit(ni, &n.output[0], t);
            }
            None => self.block(&x.units, &format!("{} (bad perm)", barrier_reason(n))),
        }
    }

    fn gather(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let axis = norm_axis(attr_i(n, "axis").unwrap_or(0), x.rank);
        let q = inp(n, 1).and_then(|s| self.ctx.rank(s));
        match (axis, q) {
            (Some(a), Some(q)) if a != x.axis => {
                let axis = if x.axis < a { x.axis } else { x.axis + q - 1 };
                let t = Track { axis, rank: x.rank + q - 1, ..x.clone() };
                self.emit(ni, &n.output[0], t);
            }
            _ => self.block(&x.units, &format!("{} (gathers along the channel axis)", barrier_reason(n))),
        }
    }

    fn along_axis(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let default = if self.ctx.opset >= 13 { -1 } else { 1 };
        let axis = norm_axis(attr_i(n, "axis").unwrap_or(default), x.rank);
        // Before opset 13 the op works on the 2-D coercion [prod(<axis), prod(>=axis)].
        let hit = match axis {
            Some(a) if self.ctx.opset >= 13 => a == x.axis,
            Some(a) => x.axis >= a,
            None => true,
        };
        if hit {
            self.block(&x.units, &format!("{} (normalises along the channel axis)", barrier_reason(n)));
            return;
        }
        self.pass(ni, n, &x, vec![Val::Varying; x.units.len()]);
    }

    fn layer_norm(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let axis = norm_axis(attr_i(n, "axis").unwrap_or(-1), x.rank);
        if axis.is_none_or(|a| x.axis >= a) {
            self.block(&x.units, &format!("{} (normalises over the channel axis)", barrier_reason(n)));
            return;
        }
        if self.extra_outputs_unused(n, &x) {
            self.pass(ni, n, &x, vec![Val::Varying; x.units.len()]);
        }
    }

    /// Reached only when the Shape could not be followed (unknown rank).
    fn shape(&mut self, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let s = norm_bound(attr_i(n, "start").unwrap_or(0), x.rank);
        let e = norm_bound(attr_i(n, "end").unwrap_or(x.rank as i64), x.rank);
        if (s..e).contains(&x.axis) {
            self.block(&x.units, &format!("{} (reads the channel count)", barrier_reason(n)));
        }
    }

    /// Boundaries: graph outputs, subgraph captures, weights also used in ways nobody rewrites.
    fn finish(&mut self) {
        let ix = self.ctx.ix;
        let tracks: Vec<(String, Track)> = self.st.tracks.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (name, t) in &tracks {
            if ix.outputs.contains(name) {
                self.block(&t.units, &format!("reaches graph output '{name}'"));
            }
            if ix.captured.contains(name) {
                self.block(&t.units, &format!("'{name}' is read inside a subgraph"));
            }
        }
        let vecs: Vec<(String, Vec<Sym>)> = self
            .shape_vecs
            .iter()
            .filter(|(k, _)| ix.outputs.contains(*k) || ix.captured.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, v) in vecs {
            self.block_channel_dims(&v, &format!("the channel count reaches '{name}' (graph output or subgraph)"));
        }
        // Every use of a sliced weight must slice it along the same axis (a Conv that uses the
        // weight only as a producer would otherwise see its input channels shrink).
        let slices: Vec<WeightSlice> = self.st.slices.values().cloned().collect();
        for s in &slices {
            // Shape-only aliases of the weight (Identity, Reshape of a constant) get their own copy
            // when the weight changes (see the rewrite), so they are not foreign uses.
            let is_alias = |ni: usize| {
                self.ctx.g.node[ni]
                    .output
                    .first()
                    .and_then(|o| self.ctx.consts.get(o))
                    .is_some_and(|c| c.alias_node == Some(ni))
            };
            let other = ix.consumers_of(&s.weight).iter().find(|u| !s.users.contains(u) && !is_alias(u.0)).copied();
            if let Some((ni, _)) = other {
                let n = &self.ctx.g.node[ni];
                let r = format!(
                    "weight '{}' is also used by {} node '{}', which this group does not rewrite",
                    s.weight,
                    n.op_type,
                    node_label(n)
                );
                self.block(&s.units, &r);
            } else if ix.captured.contains(&s.weight) || ix.outputs.contains(&s.weight) {
                self.block(&s.units, &format!("weight '{}' is read inside a subgraph or is a graph output", s.weight));
            }
        }
    }
}

fn map_val(v: Val, f: impl Fn(f64) -> Option<f64>) -> Val {
    match v {
        Val::Const(k) => f(k).filter(|r| r.is_finite()).map(Val::Const).unwrap_or(Val::Varying),
        Val::Varying => Val::Varying,
    }
}

fn zero_only(v: Val) -> Val {
    match v {
        Val::Const(0.0) => v,
        _ => Val::Varying,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_dims_rules() {
        assert_eq!(reshape_dims(&[22], &[1, -1, 1, 1], false), Some(vec![1, 22, 1, 1]));
        assert_eq!(reshape_dims(&[2, 3], &[0, 3], false), Some(vec![2, 3]));
        assert_eq!(reshape_dims(&[2, 3], &[4, -1], false), None);
        assert_eq!(unsqueeze_dims(&[3], &[0, -1]), Some(vec![1, 3, 1]));
    }
}
