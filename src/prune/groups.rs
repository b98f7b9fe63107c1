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
//! emits there in the masked model (producer weights zeroed, and their biases but for the dead
//! producer rows of [`analyze`]'s [`DeadRows`]): 0, or that bias, right after a producer, then BN
//! shift, bias, act(·)... ([`Val`]). That constant is what the rewrite must fold into the
//! consumer's bias. In the dense view ([`DeadRows::dense`]) a live producer row emits
//! [`Val::Varying`] instead: a constant that reaches a consumer then is one the dense model has
//! too, whatever the input.
//!
//! Files: this one holds the result types, the union-find, the analyzer's core (tracking,
//! blocking, the per-node dispatch) and the final grouping; `ctx` the graph facts the rules
//! read; `elementwise` the element-wise, activation and activation-quantization rules; `nn` the
//! linear and normalisation ops (Conv, Gemm, MatMul, BatchNorm, LayerNorm, pooling, ...); `fused`
//! onnxruntime's fused transformer ops (SkipLayerNormalization, Attention,
//! EmbedLayerNormalization); `rnn`
//! LSTM / GRU / RNN hidden units; `array` the array ops (Concat, Split, Slice, Gather, ...);
//! `reshape` Reshape and the shape vectors that compute its targets; `shuffle` the channel
//! shuffle and the channel-count arithmetic of chunked Slices.

use super::rules::{self, Kind, PoolKind, ReduceKind};
use crate::model::graph::{attr, attr_f, attr_i, attr_ints, attr_s, is_const, node_label, GraphIndex};
use crate::model::tensor;
use anyhow::{bail, Result};
use onnx_protobuf::{GraphProto, NodeProto, TensorProto, ValueInfoProto};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

mod array;
mod ctx;
mod elementwise;
mod fused;
mod nn;
mod reshape;
mod rnn;
mod shuffle;

pub use ctx::*;

pub type Unit = usize;

/// The units of a tracked axis, one per position. Shared: the ops that carry an axis unchanged
/// (element-wise, normalisation, the weights sliced along it) hold the same list, so DenseNet's
/// wide concatenations are stored once, not once per tensor and parameter.
pub type Units = std::sync::Arc<[Option<Unit>]>;

/// The constants of a tracked axis, one per position, shared as [`Units`] are.
pub type Vals = std::sync::Arc<[Val]>;

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
    pub units: Units,
    /// Per position, the constant a removed unit emits here. Read while the analysis runs only:
    /// [`analyze`] empties them when it ends (the [`Consumer`]s keep theirs), so the rewrite that
    /// follows does not hold a copy per tracked tensor.
    pub vals: Vals,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Output-channel slice of a Conv/Gemm/MatMul weight: scored, zeroed in the masked model.
    Producer,
    /// Producer bias whose values cannot be read: zeroed in the masked model, not scored.
    ProducerBias,
    /// Producer bias: zeroed in the masked model (a removed unit emits 0), except at the dead
    /// rows of [`Analysis::fold_rows`], where it is kept, the removed unit emits it and its
    /// consumers fold it. Not scored.
    Bias,
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
    pub units: Units,
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
    pub units: Units,
    /// Per position, the constant a removed unit emits into this node; read it through
    /// [`Consumer::val`]. Empty when every one is 0 (so, after a producer, nothing to fold): the
    /// analysis empties such lists when it ends, which on DenseNet-161 frees one list per dense
    /// layer.
    pub vals: Vals,
    /// Why a non-zero constant cannot be folded here (then such units are kept).
    pub fold: std::result::Result<(), String>,
}

impl Consumer {
    /// The constant a removed unit at position `p` emits into this node.
    pub fn val(&self, p: usize) -> Val {
        self.vals.get(p).copied().unwrap_or(Val::Const(0.0))
    }

    /// Why the unit at position `p` must stay: its value here is not one constant, or is a
    /// non-zero constant this node cannot fold. `label`: this node's label.
    pub fn pin(&self, p: usize, label: impl Fn() -> String) -> Option<String> {
        match (self.val(p), &self.fold) {
            (Val::Varying, _) => Some(format!("its value at '{}' would not be a constant", label())),
            (Val::Const(k), Err(e)) if k != 0.0 => Some(format!("it would emit a constant into {e}")),
            _ => None,
        }
    }
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
    Count { target: IntTarget, index: usize, units: Units },
    /// Rewrite the sizes of a Split on the tracked axis.
    Split { node: usize, axis: usize, parts: Vec<Units> },
    /// Positions `idx` of the tracked axis (`units`) are selected, in this order: a Gather's
    /// constant indices (input 1) are rewritten to the kept ones; a stepped Slice (`slice`) becomes
    /// a Gather with those indices, since the kept positions are no longer evenly spaced.
    Select { node: usize, axis: usize, units: Units, idx: Vec<usize>, slice: bool },
    /// A Slice bound at input `slot` computed in the graph from the sliced axis `all` (a chunk
    /// read from `Shape`): when any unit of `all` is removed, the rewrite feeds the kept count of
    /// `before` as a constant instead (the computed value would follow the new width, not the
    /// kept positions).
    Bound { node: usize, slot: usize, before: Units, all: Units },
    /// A LayerNormalization over the tracked (last) axis: the pruned model normalises over the
    /// kept positions only (its scale and bias are sliced). The masked model replaces the node
    /// with the same normalisation restricted to the kept positions (a mask, and removed
    /// positions emit 0), so that pruned == masked holds; what the removed units contributed to
    /// the mean and variance is pruning error, which fidelity measures.
    Norm { node: usize, units: Units },
    /// A ReduceMean over exactly the tracked axis: a LayerNorm or RMSNorm spelled out in primitive
    /// ops (torch below opset 17, tf2onnx, hand-written RMSNorm modules), or any mean over the
    /// units. The pruned model averages the kept positions; the masked model averages them too (its
    /// input multiplied by the keep mask, the mean by d / kept), so pruned == masked holds and the
    /// change of the statistic is pruning error, as for [`Edit::Norm`]. `trailing`: the number of
    /// axes after the tracked one.
    Mean { node: usize, units: Units, trailing: usize },
    /// A Sub / Mul / Div normalising the tracked units by such a statistic of theirs (`x − mean`,
    /// `x · rsqrt(mean(x²) + ε)`): in the masked model its output is multiplied by the keep mask,
    /// so that removed positions hold 0 (the pruned model has none of them) instead of `−mean` or
    /// a scaled activation, and what follows them is known again.
    Mask { node: usize, units: Units, trailing: usize },
    /// A Reshape target element computed from a channel count (`b, s, d = x.shape`, then
    /// `a.reshape(b, s, d)` on a tensor the pruning leaves whole): the one-element input `slot`
    /// of the Concat that builds the target is fed the original `value` as a constant when any
    /// unit of `units` is removed (the computed one would follow the pruned width).
    /// `int32`: the input is int32 (a Cast before the Concat), else int64.
    Freeze { node: usize, slot: usize, value: i64, int32: bool, units: Units },
    /// A recurrent op's initial state (input `slot`) that is all zeros but computed in the graph
    /// (a Slice of a ConstantOfShape of zeros: torch's export of a stacked LSTM/GRU writes one
    /// per layer): when any unit of `units` is removed, the pruned op reads no state there, which
    /// ONNX defines as zeros; the zeros' now unread chain is dropped.
    ZeroState { node: usize, slot: usize, units: Units },
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
    /// A quantized weight: the output of a DequantizeLinear of the integer `base` (QDQ models).
    pub dq: Option<Dq>,
}

/// DequantizeLinear(base, scale, zero point) of a constant: values (q − zp)·scale. Only
/// symmetric quantization (zero points all 0), so a zeroed integer is an exact 0; `axis` is the
/// per-channel axis (`None`: one scale for the tensor). base, scale and zp are read by this node only.
#[derive(Clone, Debug)]
pub struct Dq {
    pub node: usize,
    pub scale: String,
    pub zp: Option<String>,
    pub axis: Option<usize>,
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
    pub sources: BTreeMap<usize, Units>,
    pub blocks: Vec<(Unit, String)>,
    /// Node → layers of the units whose tensors it touches, for the group's member list
    /// ([`Analysis::members`]). A unit's group is the class of the layer it was created in (a
    /// union merges the layers of the two classes), so a layer per unit is enough, and layers are
    /// far fewer than units.
    touched: BTreeMap<usize, BTreeSet<usize>>,
    pub consts: BTreeMap<String, ConstInfo>,
    /// `Identity` aliases of a weight whose layers' slices were merged into the weight's own
    /// ([`Analyzer::merge_identity_aliases`]): they keep reading the sliced weight.
    pub shared_aliases: BTreeSet<String>,
    /// Dead producer rows (node, output position) whose biases ([`Role::Bias`]) the masked model
    /// keeps: a removed unit emits that bias there and the consumers fold it.
    pub fold_rows: BTreeSet<(usize, usize)>,
    /// Live depthwise rows (node, output position) whose input channel is a dead unit's constant:
    /// found in the dense view, they are the masked view's [`DeadRows::through`] (their weights
    /// and bias stay in the masked model).
    pub through_rows: BTreeSet<(usize, usize)>,
    /// The through rows whose input constant is not 0 (the dense view's): their output is the
    /// constant in the interior only, the zero-padded border differs.
    pub through_inexact: BTreeSet<(usize, usize)>,
    /// Classes (roots) with a through row in the final analysis: the masked model keeps those
    /// rows, so a removed unit of theirs is not 0 at the border even where its constant is, and
    /// the consumers' input slices are zeroed for them in the masked model whatever the constant.
    pub through_classes: BTreeSet<Unit>,
    /// Producer rows (node, output position) with a non-zero bias ([`Analyzer::producer_bias`]).
    pub bias_emitters: BTreeSet<(usize, usize)>,
    /// Classes (roots) kept because a dead row of theirs has a bias that cannot be folded, with
    /// why (set by the channels stage that finds dead units).
    pub dead_pins: BTreeMap<Unit, String>,
    /// Dead classes (roots): every consumer reads a constant from them whatever the input (their
    /// last producer rows are dead), and the consumers fold it. Removing one changes nothing but
    /// the zero-padded borders; the channels stage scores them 0.
    pub dead_classes: BTreeSet<Unit>,
    /// Σ w² per position of producer slices, by slice key, when the channels stage has read them
    /// (its dead-unit test): the L2 scores use them instead of reading the weights again. A
    /// second analysis of the same graph has the same slices.
    pub producer_sq: BTreeMap<(String, usize), Vec<f64>>,
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

    /// The nodes that touch a tensor carrying units of group `g`, in node order.
    pub fn members(&self, g: usize) -> Vec<usize> {
        self.touched.iter().filter(|(_, ls)| ls.iter().any(|&l| self.find_layer(l) == g)).map(|(&ni, _)| ni).collect()
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
    /// That dimension after integer arithmetic by constants (`shuffle::Lin`).
    Expr(String, usize, shuffle::Lin),
    /// A value computed from dims none of which is a channel count (`h / p · w / p`): it does
    /// not change with pruning, but its value is not followed.
    Other,
}

/// Producer rows whose weights are dead (all but zero), by (producer node, output position), and
/// how [`analyze`] sees them.
#[derive(Clone, Debug, Default)]
pub struct DeadRows {
    /// Rows that emit their producer's bias when removed (the masked model keeps it there); every
    /// other removed row emits 0 after its producer.
    pub fold: BTreeSet<(usize, usize)>,
    /// Live depthwise rows whose input is a dead unit's constant: the masked model keeps their
    /// weights and bias, and a removed unit emits what they make of the constant (see
    /// [`Analysis::through_rows`]).
    pub through: BTreeSet<(usize, usize)>,
    /// The dense view: every producer row not in `fold` emits [`Val::Varying`] (its output
    /// depends on the input), so the constants that reach the consumers are the dense model's.
    pub dense: bool,
}

/// Run the analysis on the top-level graph, with the dead rows `dead` (see [`DeadRows`]).
pub fn analyze(ctx: &Ctx, dead: &DeadRows) -> Analysis {
    let mut a = Analyzer {
        ctx,
        dead,
        st: Analysis::default(),
        shape_vecs: BTreeMap::new(),
        dims_hint: BTreeMap::new(),
        shuffles: BTreeMap::new(),
        means: BTreeMap::new(),
    };
    a.st.consts = ctx.consts.clone();
    for &ni in &ctx.order {
        a.node(ni);
    }
    a.finish();
    let none: Vals = Vals::from([]);
    for t in a.st.tracks.values_mut() {
        t.vals = none.clone();
    }
    for c in a.st.consumers.iter_mut() {
        if c.vals.iter().all(|v| *v == Val::Const(0.0)) {
            c.vals = none.clone();
        }
    }
    a.st.fold_rows = dead.fold.clone();
    if !dead.dense {
        a.st.through_rows = dead.through.clone();
    }
    a.st
}

struct Analyzer<'c, 'a> {
    ctx: &'c Ctx<'a>,
    /// Producer rows that emit their bias when removed, and the view ([`analyze`]).
    dead: &'c DeadRows,
    st: Analysis,
    /// Shape vectors by value name.
    shape_vecs: BTreeMap<String, Vec<Sym>>,
    /// Dims the analysis knows of a tracked tensor beyond the declared shapes (an LSTM's
    /// direction axis), carried through Transpose: what a Reshape merging them needs.
    dims_hint: BTreeMap<String, Vec<Option<usize>>>,
    /// Channel shuffles split and not yet merged back, by the index of the Reshape back: the
    /// shuffled tensor's name, its track and the number of groups.
    shuffles: BTreeMap<usize, (String, Track, usize)>,
    /// Statistics of tracked units by name: the output of a ReduceMean over exactly the tracked
    /// axis, keepdims ([`Edit::Mean`]), and what element-wise ops compute from it and scalar
    /// constants (`√(var + ε)`), with the units averaged and the axis and rank of the mean. Each
    /// has size 1 on that axis, so it broadcasts along the units.
    means: BTreeMap<String, (Units, usize, usize)>,
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
        let st = &mut self.st;
        let e = st.touched.entry(ni).or_default();
        // Units of a layer are created together: consecutive positions mostly share one layer.
        let mut last = None;
        for &u in units.iter().flatten() {
            // layer_of[u] is u's first layer or, once u was a class root, a layer merged with it.
            let l = st.layer_of[u];
            if last != Some(l) {
                e.insert(l);
                last = Some(l);
            }
        }
    }

    fn emit(&mut self, ni: usize, name: &str, t: Track) {
        if name.is_empty() {
            return;
        }
        self.touch(ni, &t.units);
        self.st.tracks.insert(name.to_string(), t);
    }

    /// The constants producer `ni`'s removed units emit right after it, `vals` in the masked
    /// view; in the dense view ([`DeadRows::dense`]) a live row's output depends on the input.
    fn producer_out(&self, ni: usize, vals: Vals) -> Vals {
        if !self.dead.dense {
            return vals;
        }
        let dead = |o: usize| self.dead.fold.contains(&(ni, o));
        vals.iter().enumerate().map(|(o, v)| if dead(o) { *v } else { Val::Varying }).collect()
    }

    fn new_layer(&mut self, ni: usize, n: usize) -> Units {
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

    /// Ties `units` position by position to the slice already registered under `key`, if any;
    /// false, with both blocked, when their sizes differ.
    fn tie_to_slice(&mut self, key: &(String, usize), units: &Units) -> bool {
        // Only the units: cloning the whole slice (its users) made a weight shared by n nodes
        // cost O(n²) (30 000 MatMuls on one weight: 4.5 s).
        let Some(prev) = self.st.slices.get(key).map(|s| s.units.clone()) else { return true };
        let weight = &key.0;
        if prev.len() != units.len() {
            let r = format!("weight '{weight}' is used with different sizes");
            self.block(&prev, &r);
            self.block(units, &r);
            return false;
        }
        let r = format!("shared weight '{weight}' is also used by an untracked tensor");
        for (a, b) in prev.iter().zip(units.iter()) {
            self.join(*a, *b, &r);
        }
        true
    }

    fn slice(&mut self, weight: &str, axis: usize, units: &Units, user: (usize, usize), role: Role) {
        let key = (weight.to_string(), axis);
        if !self.tie_to_slice(&key, units) {
            return;
        }
        let e = self.st.slices.entry(key).or_insert_with(|| WeightSlice {
            weight: weight.to_string(),
            axis,
            units: units.clone(),
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
                .is_some_and(|c| c.alias_node == Some(ni) || c.dq.as_ref().is_some_and(|d| d.node == ni))
        {
            return;
        }
        if self.shape_plumbing(ni, n) {
            return;
        }
        // The rules index the first output; a node without one (invalid, but parseable) is a
        // barrier (found by the fuzzer: a ConvTranspose with no outputs).
        if n.output.is_empty() {
            self.block_inputs(n, &format!("{} (no outputs)", barrier_reason(n)));
            return;
        }
        let Some(kind) = rules::lookup(n) else {
            self.block_inputs(n, &barrier_reason(n));
            return;
        };
        // Tracked tensors may only enter the data slots the rule knows about.
        let data_slots: &[usize] = match kind {
            Kind::Broadcast(_) | Kind::Concat => &[],
            Kind::SkipLayerNorm => &[0, 1],
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
        if matches!(kind, Kind::Unary(_) | Kind::Broadcast(_)) {
            self.statistic(n);
        }
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
            Kind::SkipLayerNorm => self.skip_layer_norm(ni, n),
            Kind::MsAttention => self.ms_attention(ni, n, x),
            Kind::EmbedLayerNorm => self.embed_layer_norm(ni, n),
            Kind::Shape => self.shape(n, x),
            Kind::BiasAct(f) => self.bias_act(ni, n, x, f),
            Kind::Recurrent(g) => self.recurrent(ni, n, x, g),
            Kind::Quant(dequant) => self.quant(ni, n, x, dequant),
        }
    }

    /// An element-wise node computing from one statistic of tracked units ([`Analyzer::means`])
    /// and scalar constants only: its output is a statistic of the same units.
    fn statistic(&mut self, n: &NodeProto) {
        let mut stat = None;
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            if let Some(m) = self.means.get(i) {
                if stat.as_ref().is_some_and(|s: &(Units, usize, usize)| s != m) {
                    return;
                }
                stat = Some(m.clone());
            } else if self.ctx.dims(i).is_none_or(|d| d.iter().product::<usize>() != 1) {
                return;
            }
        }
        if let (Some(m), Some(o)) = (stat, n.output.first().filter(|o| !o.is_empty())) {
            self.means.insert(o.clone(), m);
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

    fn pass(&mut self, ni: usize, n: &NodeProto, x: &Track, vals: Vals) {
        // Unchanged constants (an activation with act(0) = 0) share the input's list.
        let vals = if vals == x.vals { x.vals.clone() } else { vals };
        let t = Track { vals, ..x.clone() };
        if let Some(o) = n.output.first() {
            self.emit(ni, o, t);
        }
    }

    /// Boundaries: graph outputs, subgraph captures, weights also used in ways nobody rewrites.
    fn finish(&mut self) {
        let ix = self.ctx.ix;
        // Only the tracks that reach a boundary are copied out (all of them would double the
        // analysis's memory at its peak).
        let edge: Vec<(String, Units)> = self
            .st
            .tracks
            .iter()
            .filter(|(k, _)| ix.outputs.contains(*k) || ix.captured.contains(*k))
            .map(|(k, v)| (k.clone(), v.units.clone()))
            .collect();
        for (name, units) in &edge {
            if ix.outputs.contains(name) {
                self.block(units, &format!("reaches graph output '{name}'"));
            }
            if ix.captured.contains(name) {
                self.block(units, &format!("'{name}' is read inside a subgraph"));
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
        // A quantized consumer weight or bias cannot take a fold (no float values to add to): units
        // emitting a non-zero constant into it are kept.
        for c in self.st.consumers.iter_mut() {
            let n = &self.ctx.g.node[c.node];
            let dq = |s: &str| self.ctx.consts.get(s).is_some_and(|k| k.dq.is_some());
            if c.fold.is_ok() && (dq(&c.weight) || n.input.get(2).is_some_and(|b| dq(b))) {
                c.fold = Err(format!("quantized {} '{}'", n.op_type, node_label(n)));
            }
        }
        self.merge_identity_aliases();
        // Every use of a sliced weight must slice it along the same axis (a Conv that uses the
        // weight only as a producer would otherwise see its input channels shrink).
        // The blocks are collected first (cloning only the blocked slices' units), then recorded
        // in the slices' order.
        let ctx = self.ctx;
        // Shape-only aliases of the weight (Identity, Reshape of a constant) get their own copy
        // when the weight changes (see the rewrite), so they are not foreign uses; the uses of
        // the merged Identity aliases, which keep reading the weight, are its own.
        let is_alias = |ni: usize| {
            ctx.g.node[ni].output.first().and_then(|o| ctx.consts.get(o)).is_some_and(|c| c.alias_node == Some(ni))
        };
        let shared = &self.st.shared_aliases;
        let mut blocked: Vec<(Units, String)> = Vec::new();
        for s in self.st.slices.values() {
            let aliases = shared.iter().filter(|a| ctx.consts.get(*a).is_some_and(|c| c.base == s.weight));
            let names: Vec<&str> = std::iter::once(s.weight.as_str()).chain(aliases.map(|a| a.as_str())).collect();
            let other = names
                .iter()
                .flat_map(|w| ix.consumers_of(w).iter())
                .find(|u| !s.users.contains(u) && !is_alias(u.0))
                .copied();
            if let Some((ni, _)) = other {
                let n = &ctx.g.node[ni];
                let r = format!(
                    "weight '{}' is also used by {} node '{}', which this group does not rewrite",
                    s.weight,
                    n.op_type,
                    node_label(n)
                );
                blocked.push((s.units.clone(), r));
            } else if names.iter().any(|w| ix.captured.contains(*w) || ix.outputs.contains(*w)) {
                let r = format!("weight '{}' is read inside a subgraph or is a graph output", s.weight);
                blocked.push((s.units.clone(), r));
            }
        }
        for (units, r) in &blocked {
            self.block(units, r);
        }
    }
}

impl Analyzer<'_, '_> {
    /// Layers that read one weight through an `Identity` each, as torch.onnx writes a parameter
    /// several modules share (ALBERT's layers), slice it as one weight: their slices of the
    /// aliases merge into the weight's own, so the layers lose the same units and keep sharing
    /// it. (Sliced apart, each alias became a copy of its own: four layers sharing two weights
    /// tripled the params.) Biases and other 1-D parameters stay apart: equal biases an exporter
    /// stored once tie nothing ([`super::unshare`]).
    fn merge_identity_aliases(&mut self) {
        let ctx = self.ctx;
        let weight_roles = |s: &WeightSlice| s.roles.iter().all(|r| matches!(r, Role::Producer | Role::Consumer));
        let keys: Vec<(String, usize)> = self
            .st
            .slices
            .iter()
            .filter(|(_, s)| weight_roles(s))
            .filter(|((w, _), _)| ctx.identity_base(w).is_some_and(|b| ctx.dims(b).is_some_and(|d| d.len() >= 2)))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        let mut renamed: BTreeMap<String, String> = BTreeMap::new();
        for (w, axis) in keys {
            let base = ctx.identity_base(&w).expect("filtered").to_string();
            let s = self.st.slices.remove(&(w.clone(), axis)).expect("listed");
            renamed.insert(w, base.clone());
            self.tie_to_slice(&(base.clone(), axis), &s.units);
            let e = self.st.slices.entry((base.clone(), axis)).or_insert_with(|| WeightSlice {
                weight: base,
                axis,
                units: s.units.clone(),
                roles: BTreeSet::new(),
                users: BTreeSet::new(),
            });
            e.roles.extend(s.roles);
            e.users.extend(s.users);
        }
        // The biases and other 1-D parameters those layers read through aliases of one tensor
        // merge too, when every reader already cuts the same classes (so merging ties nothing).
        let mut params: BTreeMap<(String, usize), Vec<(String, usize)>> = BTreeMap::new();
        for (w, axis) in self.st.slices.keys() {
            if let Some(b) = ctx.identity_base(w).filter(|b| ctx.dims(b).is_some_and(|d| d.len() == 1)) {
                params.entry((b.to_string(), *axis)).or_default().push((w.clone(), *axis));
            }
        }
        for ((base, axis), mut members) in params {
            if self.st.slices.contains_key(&(base.clone(), axis)) {
                members.push((base.clone(), axis));
            }
            let units: Vec<Units> = members.iter().map(|k| self.st.slices[k].units.clone()).collect();
            let same = units.iter().all(|u| {
                u.len() == units[0].len()
                    && u.iter().zip(units[0].iter()).all(|(a, b)| match (a, b) {
                        (Some(a), Some(b)) => self.st.find(*a) == self.st.find(*b),
                        (None, None) => true,
                        _ => false,
                    })
            });
            if members.len() < 2 || !same {
                continue;
            }
            let mut merged = WeightSlice {
                weight: base.clone(),
                axis,
                units: units[0].clone(),
                roles: BTreeSet::new(),
                users: BTreeSet::new(),
            };
            for k in &members {
                let s = self.st.slices.remove(k).expect("member");
                merged.roles.extend(s.roles);
                merged.users.extend(s.users);
                if k.0 != base {
                    renamed.insert(k.0.clone(), base.clone());
                }
            }
            self.st.slices.insert((base, axis), merged);
        }
        for c in self.st.consumers.iter_mut() {
            if let Some(b) = renamed.get(&c.weight) {
                c.weight = b.clone();
            }
        }
        let bases: BTreeSet<&str> = renamed.values().map(|b| b.as_str()).collect();
        self.st.shared_aliases =
            ctx.consts.keys().filter(|k| ctx.identity_base(k).is_some_and(|b| bases.contains(b))).cloned().collect();
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

    #[test]
    fn slice_positions_follow_onnx() {
        use array::slice_positions as sp;
        assert_eq!(sp(1, i64::MAX, 2, 8), vec![1, 3, 5, 7]);
        assert_eq!(sp(0, 8, 3, 8), vec![0, 3, 6]);
        assert_eq!(sp(-1, i64::MIN, -1, 4), vec![3, 2, 1, 0]);
        assert_eq!(sp(6, 1, -2, 8), vec![6, 4, 2]);
        assert_eq!(sp(-100, 100, 4, 6), vec![0, 4]);
        assert_eq!(sp(5, 2, 1, 8), Vec::<usize>::new());
    }
}
