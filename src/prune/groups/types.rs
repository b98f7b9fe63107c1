//! The dependency analysis's result types: units and their constants per tracked axis
//! ([`Track`], [`Val`]), the weight slices and consumers the rewrite edits ([`WeightSlice`],
//! [`Consumer`]), the integer and normalisation edits ([`Edit`]), the constants' views
//! ([`ConstInfo`], [`Dq`]), and [`Analysis`] with the union-find over units and layers.
//! Contract: an [`Analysis`] is complete when [`super::analyze`] returns it; only the union-find
//! (the analyzer, while it runs) changes it.

use super::*;

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
    /// A GroupNorm with one group (a LayerNorm over the channels and every axis after them:
    /// PoolFormer's and ConvNeXt ports' `GroupNorm(1, C)`), as the op (`from` = `node` = it) or
    /// spelled out (`from`: the Reshape to [N, 1, -1], then InstanceNormalization, `node`: the
    /// Reshape back). The pruned model normalises over the kept channels (its per-channel
    /// parameters sliced); the masked model replaces `node` with the same normalisation
    /// restricted to the kept channels, from `from`'s input to `node`'s output: `scale` and `bias`
    /// per channel, `eps`, `trailing` the axes after the channels; removed positions emit 0.
    SpanNorm { from: usize, node: usize, units: Units, trailing: usize, scale: Vec<f64>, bias: Vec<f64>, eps: f64 },
    /// A ReduceMean over exactly the tracked axis: a LayerNorm or RMSNorm spelled out in primitive
    /// ops (torch below opset 17, tf2onnx, hand-written RMSNorm modules), or any mean over the
    /// units. The pruned model averages the kept positions; the masked model averages them too (its
    /// input multiplied by the keep mask, the mean by d / kept), so pruned == masked holds and the
    /// change of the statistic is pruning error, as for [`Edit::Norm`]. `trailing`: the number of
    /// axes after the tracked one.
    Mean { node: usize, units: Units, trailing: usize },
    /// A ReduceMax (`max`) or ReduceMin over exactly the tracked axis (CBAM's channel max): the
    /// pruned model takes it over the kept positions; the masked model too, its input's removed
    /// positions replaced by the lowest (highest) finite value of the type.
    Extreme { node: usize, units: Units, trailing: usize, max: bool },
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
    pub(super) parent: Vec<usize>,
    pub(super) layer_of: Vec<usize>,
    pub(super) layer_parent: Vec<usize>,
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
    pub(super) touched: BTreeMap<usize, BTreeSet<usize>>,
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

    pub(super) fn find_mut(&mut self, u: Unit) -> Unit {
        let r = self.find(u);
        let mut x = u;
        while self.parent[x] != r {
            let next = self.parent[x];
            self.parent[x] = r;
            x = next;
        }
        r
    }

    pub(super) fn find_layer(&self, mut l: usize) -> usize {
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

    pub(super) fn union(&mut self, a: Unit, b: Unit) {
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
