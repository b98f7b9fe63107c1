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
//! Files: this one holds the analyzer's core (tracking, blocking, the per-node dispatch) and the
//! final grouping; `types` the result types and the union-find; `ctx` the graph facts the rules
//! read; `elementwise` the element-wise, activation and activation-quantization rules; `nn` the
//! linear and normalisation ops (Conv, Gemm, MatMul, BatchNorm, LayerNorm, pooling, ...);
//! `group_norm` GroupNormalization and its decomposed form; `fused`
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
mod group_norm;
mod nn;
mod reshape;
mod rnn;
mod shuffle;
mod sizes;
mod types;

pub use ctx::*;
pub use elementwise::ONE_CHANNEL_BROADCAST;
pub use types::*;

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
    let mut a = Analyzer::new(ctx, dead);
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
    /// Decomposed GroupNorms split and not yet reshaped back, by the index of the Reshape back:
    /// the input's name, its track, the channels per group and the InstanceNormalization's index
    /// (`groups/group_norm.rs`).
    group_norms: BTreeMap<usize, (String, Track, usize, usize)>,
    /// Statistics of tracked units by name: the output of a ReduceMean, ReduceMax or ReduceMin
    /// over exactly the tracked axis, keepdims ([`Edit::Mean`], [`Edit::Extreme`]), and what
    /// element-wise ops compute from it and scalar constants (`√(var + ε)`), with the units
    /// averaged and the axis and rank of the mean. Each has size 1 on that axis, so it broadcasts
    /// along the units.
    means: BTreeMap<String, (Units, usize, usize)>,
    /// Symbolic sizes of values' dims (`groups/sizes.rs`).
    sizes: BTreeMap<String, Vec<Option<sizes::Size>>>,
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
    fn new(ctx: &'c Ctx<'a>, dead: &'c DeadRows) -> Self {
        Analyzer {
            ctx,
            dead,
            st: Analysis::default(),
            shape_vecs: BTreeMap::new(),
            dims_hint: BTreeMap::new(),
            shuffles: BTreeMap::new(),
            group_norms: BTreeMap::new(),
            means: BTreeMap::new(),
            sizes: BTreeMap::new(),
        }
    }

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
        self.infer_sizes(n);
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
            Kind::GroupNorm => self.group_norm(ni, n, x),
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
            Kind::Expand => self.expand(ni, n, x),
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
