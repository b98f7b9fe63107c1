//! Attention-head pruning (`--structured heads`, issue 4).
//!
//! A head h of a block owns columns h·D … (h+1)·D of the Q, K and V projections (within each
//! of the three parts of a fused in-projection), rows h·D … (h+1)·D of the output projection
//! (B = [H·D, out] of a MatMul), and one slot of every "H" in the block's shape plumbing
//! (reshape targets, `num_heads` attributes). Removing heads removes all of that together;
//! head_dim D and the softmax scale never change.
//!
//! Supported forms (see `matmul` and `fused`):
//! - MatMul attention: separate or fused (Split / Slice / Gather) Q/K/V projections (MatMul or
//!   Gemm with a constant weight, optional bias Add), reshapes built from constants, from
//!   Shape→Gather→Concat chains or from runtime sizes, transposes, scale Mul/Div on the scores
//!   or on q/k, mask Add, Softmax, NaN guards, output projection MatMul/Gemm.
//! - com.microsoft `Attention` (packed QKV weight [hidden, 3·hidden], `num_heads`) and
//!   `MultiHeadAttention` (separate Q/K/V projections feeding it), followed by an output
//!   projection MatMul.
//! - ONNX `Attention` (opset 23) with 3-D Q/K/V from projections, including grouped-query
//!   attention: the same number of query heads is dropped from every KV group; K and V keep
//!   all their heads (so a KV cache keeps its shape).
//!
//! Anything else that looks like attention is reported as blocked with the reason, and left
//! unchanged.
//!
//! ## Scores
//! The score of head h is ‖W_O[h]‖ · ‖W_V[h]‖ (L2, or L1 with `Criterion::L1`): the norm of the
//! head's rows of the output projection times the norm of its columns of the V projection.
//! The head adds softmax(q·kᵀ)·(x·W_V[h])·W_O[h] to the block output; the attention weights
//! are a convex combination (rows sum to 1), so the size of that contribution is bounded by
//! ‖x‖·‖W_V[h]‖·‖W_O[h]‖ and scales with each factor: a product, not a sum, because a head
//! with a tiny W_O contributes nothing however large its W_V. Q and K only decide *where* the
//! head looks (they set the temperature of the softmax, not the magnitude of the output), so
//! their norms are left out. With W_V ≡ 1 this is the paper's GPT-2 criterion (norm of the
//! head's slice of the output projection). Biases are not scored (as in the paper); the V bias
//! passes through the softmax as a constant that the output rows scale, so it is covered by
//! ‖W_O[h]‖ as well.
//!
//! ## Exactness
//! The masked model is the dense model with the removed heads' output-projection rows zeroed:
//! that alone makes each removed head's contribution exactly zero, so masked and pruned compute
//! the same function (up to float summation order).

mod fused;
mod layout;
mod matmul;
mod probe;
mod rewrite;
mod shapeval;

pub use probe::{probe, Probe};
use rewrite::{cleanup, commit_all, mask_block, stage_block, verify, Staged};

use super::{Criterion, GroupReport, MaskedOut, StructOptions, StructScope, StructuralResult};
use crate::emp;
use crate::model::graph::{node_label, GraphIndex};
use crate::model::tensor::{self, dt};
use anyhow::{bail, Context, Result};
use onnx_protobuf::{GraphProto, ModelProto, TensorProto};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A constant input of a node: `node.input[slot]`, whose `axis` holds the head units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WeightUse {
    pub node: usize,
    pub slot: usize,
    pub axis: usize,
}

/// A Q, K, V (or fused QKV) projection of a block.
#[derive(Clone, Debug)]
pub(crate) struct Projection {
    /// Weight; `axis` is its output (column) axis.
    pub weight: WeightUse,
    /// Bias; sliced on its last axis.
    pub bias: Option<WeightUse>,
    /// 1, or 3 for a fused Q/K/V projection (parts in order, each `heads·head_dim` wide).
    pub parts: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// False for the K/V projections of grouped-query attention (kept whole).
    pub prune: bool,
}

/// A rewrite of a non-weight operand.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Edit {
    /// Replace `node.input[slot]` by a new int64 (or int32) 1-D constant.
    Input {
        node: usize,
        slot: usize,
        vals: Vec<i64>,
        int32: bool,
    },
    AttrInts {
        node: usize,
        name: &'static str,
        vals: Vec<i64>,
    },
    AttrInt {
        node: usize,
        name: &'static str,
        val: i64,
    },
}

/// How an attribute follows the number of kept heads.
#[derive(Clone, Debug)]
pub(crate) enum AttrRule {
    /// attr = kept query heads
    Heads(usize, &'static str),
    /// attr = kept KV heads
    KvHeads(usize, &'static str),
    /// attr = [kept·D] per part (qkv_hidden_sizes)
    HiddenSizes(usize, &'static str, Vec<usize>),
}

/// One attention block found in the model.
#[derive(Clone, Debug)]
pub(crate) struct Block {
    pub id: String,
    pub kind: &'static str,
    pub members: Vec<String>,
    /// Query heads H.
    pub heads: usize,
    /// K/V heads (= H except for grouped-query attention).
    pub kv_heads: usize,
    pub head_dim: usize,
    pub v_head_dim: usize,
    pub projs: Vec<Projection>,
    /// Which projection (and part) holds V.
    pub v_proj: (usize, usize),
    /// Output projection weight; `axis` is its row (input) axis.
    pub out: WeightUse,
    /// MatMul attention: what the shape plumbing looks like.
    pub path: Option<matmul::PathInfo>,
    pub attrs: Vec<AttrRule>,
    /// A bias of all three parts inside a fused op (MultiHeadAttention input 3).
    pub fused_bias: Option<WeightUse>,
    pub notes: Vec<String>,
}

/// Shared read-only context of the analysis.
pub(crate) struct Ctx<'a> {
    pub g: &'a GraphProto,
    pub ix: &'a GraphIndex,
    pub opset: i64,
    pub probes: Option<[Probe; 2]>,
    pub probe_error: Option<String>,
}

impl Ctx<'_> {
    pub fn shape(&self, p: usize, name: &str) -> Result<&[usize]> {
        let pr = self.probes.as_ref().context("no shape analysis")?;
        pr[p].shapes.get(name).map(|v| v.as_slice()).with_context(|| {
            format!("the shape of '{name}' is unknown to tract's analysis (computed from run-time values?): the head layout cannot be proven")
        })
    }

    /// The constant behind `name`, following Identity nodes.
    pub fn resolve_const(&self, name: &str) -> Option<&TensorProto> {
        let mut v = name;
        for _ in 0..16 {
            if self.ix.is_constant(v) {
                return self.ix.weight(self.g, v);
            }
            let &p = self.ix.producer.get(v)?;
            let n = &self.g.node[p];
            if n.op_type != "Identity" || !(n.domain.is_empty() || n.domain == "ai.onnx") {
                return None;
            }
            v = n.input.first()?;
        }
        None
    }

    pub fn is_const(&self, name: &str) -> bool {
        self.resolve_const(name).is_some()
    }

    pub fn const_shape(&self, name: &str) -> Result<Vec<usize>> {
        tensor::shape(self.resolve_const(name).with_context(|| format!("'{name}' is not a constant"))?)
    }

    pub fn const_ints(&self, name: &str) -> Option<Vec<i64>> {
        let t = self.resolve_const(name)?;
        if tensor::is_float(t.data_type) || tensor::numel(t).ok()? > 4096 {
            return None;
        }
        tensor::read_i64(t).ok()
    }
}

pub(crate) fn default_opset(m: &ModelProto) -> i64 {
    m.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version).unwrap_or(1)
}

/// Attention blocks of a model as the report lists them: one `GroupReport` per block with
/// `n` = H and `kept` = H (nothing decided yet); `blocked` says why a block cannot be pruned.
pub fn discover(model: &ModelProto) -> Result<Vec<GroupReport>> {
    let g = model.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    let ctx = make_ctx(model, g, &ix);
    Ok(find_blocks(&ctx)
        .into_iter()
        .map(|(id, members, r)| match r {
            Ok(b) => {
                let n_eff = head_scores(&ctx, &b, Criterion::L2)
                    .ok()
                    .and_then(|s| emp::n_eff(&s).ok())
                    .unwrap_or(b.heads as f64);
                report(&b, b.heads, n_eff, 1.0, None, b.notes.clone())
            }
            Err(e) => blocked_report(id, members, &e),
        })
        .collect())
}

fn make_ctx<'a>(model: &ModelProto, g: &'a GraphProto, ix: &'a GraphIndex) -> Ctx<'a> {
    let opset = default_opset(model);
    // MatMul attention, and ONNX Attention in the 4-D form (no head-count attribute), follow the
    // heads through shapes.
    let needs_probe = g.node.iter().any(|n| {
        n.op_type == "Softmax"
            || n.op_type == "LogSoftmax"
            || (n.op_type == "Attention"
                && (n.domain.is_empty() || n.domain == "ai.onnx")
                && crate::model::graph::attr_i(n, "q_num_heads").is_none())
    });
    let (probes, probe_error) = if needs_probe {
        match (probe::probe(model, 0), probe::probe(model, 1)) {
            (Ok(a), Ok(b)) => (Some([a, b]), None),
            (Err(e), _) | (_, Err(e)) => (None, Some(format!("{e:#}"))),
        }
    } else {
        (None, None)
    };
    Ctx { g, ix, opset, probes, probe_error }
}

fn find_blocks(ctx: &Ctx) -> Vec<(String, Vec<String>, Result<Block>)> {
    let mut all = matmul::find(ctx);
    all.extend(fused::find(ctx));
    // Two blocks claiming the same node (a projection shared between attention blocks) would
    // be rewritten twice: leave both alone.
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut clash: BTreeMap<String, String> = BTreeMap::new();
    for (id, members, r) in &all {
        if r.is_ok() {
            for m in members {
                if let Some(other) = owner.insert(m.clone(), id.clone()) {
                    clash.insert(id.clone(), format!("node '{m}' belongs to block '{other}' too"));
                    clash.insert(other.clone(), format!("node '{m}' belongs to block '{id}' too"));
                }
            }
        }
    }
    for (id, _, r) in all.iter_mut() {
        if let Some(why) = clash.get(id) {
            *r = Err(anyhow::anyhow!("{why}"));
        }
    }
    // Graph order of the first member keeps the report stable and readable.
    let pos: HashMap<String, usize> = ctx.g.node.iter().enumerate().map(|(i, n)| (node_label(n), i)).collect();
    all.sort_by_key(|(_, m, _)| m.iter().filter_map(|x| pos.get(x)).min().copied().unwrap_or(usize::MAX));
    all
}

fn report(
    b: &Block,
    kept: usize,
    n_eff: f64,
    s_eff: f64,
    blocked: Option<String>,
    mut notes: Vec<String>,
) -> GroupReport {
    let form = format!("{}: {} heads of size {}", b.kind, b.heads, b.head_dim);
    notes.insert(0, if b.kv_heads != b.heads { format!("{form}, {} KV heads", b.kv_heads) } else { form });
    GroupReport {
        id: b.id.clone(),
        kind: "heads".into(),
        members: b.members.clone(),
        n: b.heads,
        n_eff,
        kept,
        s_eff,
        blocked,
        notes,
        removed: vec![],
    }
}

fn blocked_report(id: String, members: Vec<String>, e: &anyhow::Error) -> GroupReport {
    GroupReport {
        id,
        kind: "heads".into(),
        members,
        n: 0,
        n_eff: 0.0,
        kept: 0,
        s_eff: 1.0,
        blocked: Some(format!("{e:#}")),
        notes: vec![],
        removed: vec![],
    }
}

/// Norm of `t` restricted to indices `lo..hi` of `axis` (a 2-D weight or 1-D vector).
fn slab_norm(t: &TensorProto, axis: usize, lo: usize, hi: usize, crit: Criterion) -> Result<f64> {
    let sh = tensor::shape(t)?;
    if axis >= sh.len() || hi > sh[axis] {
        bail!("tensor '{}': slab {lo}..{hi} of axis {axis} outside {:?}", tensor::tname(t), sh);
    }
    let v = tensor::read_f64(t)?;
    let inner: usize = sh[axis + 1..].iter().product();
    let outer: usize = sh[..axis].iter().product();
    let mut acc = 0.0f64;
    for o in 0..outer {
        let base = o * sh[axis] * inner;
        for x in &v[base + lo * inner..base + hi * inner] {
            acc += match crit {
                Criterion::L1 => x.abs(),
                _ => x * x,
            };
        }
    }
    Ok(if crit == Criterion::L1 { acc } else { acc.sqrt() })
}

fn weight_of<'a>(ctx: &'a Ctx, w: WeightUse) -> Result<&'a TensorProto> {
    let name = ctx.g.node.get(w.node).and_then(|n| n.input.get(w.slot)).context("weight slot out of range")?;
    ctx.resolve_const(name).with_context(|| format!("'{name}' is not a constant"))
}

/// The value entering a block's output projection (the heads' context, concatenated on its last
/// axis), for the activation criterion.
fn context_value(ctx: &Ctx, b: &Block) -> Option<String> {
    let n = ctx.g.node.get(b.out.node)?;
    let slot = if b.out.slot == 1 { 0 } else { 1 };
    n.input.get(slot).cloned()
}

/// Values whose calibration statistics the activation criterion needs (last axis).
pub fn activation_requests(model: &ModelProto) -> Result<BTreeMap<String, i64>> {
    let g = model.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    let ctx = make_ctx(model, g, &ix);
    let mut req = BTreeMap::new();
    for (_, _, b) in find_blocks(&ctx) {
        if let Some(v) = b.ok().and_then(|b| context_value(&ctx, &b)) {
            req.insert(v, -1);
        }
    }
    Ok(req)
}

/// Activation criterion: ‖context of head h‖₂ over the calibration set (its slice of the input
/// of the output projection).
fn activation_head_scores(ctx: &Ctx, b: &Block, opts: &StructOptions) -> Result<Vec<f64>> {
    let v = context_value(ctx, b).context("output projection input")?;
    let st = opts.activation(&v)?;
    let d = b.v_head_dim;
    if st.sum_sq.len() != b.heads * d {
        bail!("value '{v}': {} calibrated features for {} heads of size {d}", st.sum_sq.len(), b.heads);
    }
    Ok((0..b.heads).map(|h| st.sum_sq[h * d..(h + 1) * d].iter().sum::<f64>().sqrt()).collect())
}

/// Per query head: ‖W_O rows‖ · ‖W_V columns‖ (see the module doc).
fn head_scores(ctx: &Ctx, b: &Block, crit: Criterion) -> Result<Vec<f64>> {
    let wo = weight_of(ctx, b.out)?;
    let (vp, vpart) = b.v_proj;
    let proj = b.projs.get(vp).context("V projection index")?;
    let wv = weight_of(ctx, proj.weight)?;
    let group = b.heads / b.kv_heads.max(1);
    let (dv, hv) = (proj.head_dim, proj.heads);
    let mut s = Vec::with_capacity(b.heads);
    for h in 0..b.heads {
        let o = slab_norm(wo, b.out.axis, h * b.v_head_dim, (h + 1) * b.v_head_dim, crit)?;
        let kv = if hv == b.heads { h } else { h / group.max(1) };
        let base = vpart * hv * dv + kv * dv;
        let v = slab_norm(wv, proj.weight.axis, base, base + dv, crit)?;
        s.push(o * v);
    }
    Ok(s)
}

/// Prune attention heads with EMP. Blocks that cannot be rewritten with certainty are reported
/// (`GroupReport::blocked`) and left unchanged.
pub fn prune_heads(model: &ModelProto, opts: &StructOptions) -> Result<StructuralResult> {
    prune_heads_to(model, opts, &MaskedOut::Keep)
}

/// [`prune_heads`] with the masked model sent to `masked_out`. With a file (or none), the
/// verified pruned model is dropped, the masked one built and written, and the pruned one
/// committed again (the same edits): peak memory holds the input and one rewrite.
pub fn prune_heads_to(model: &ModelProto, opts: &StructOptions, masked_out: &MaskedOut) -> Result<StructuralResult> {
    super::filled_copying(model, |m| prune_hollow(m, opts, masked_out))
}

/// The pruned model with its unchanged big float initializers still hollow.
///
/// Without reconstruction the run fills them by moving the input's tensors
/// ([`super::filled_moving`]), so the weights are never copied.
pub(crate) fn prune_hollow(
    model: &ModelProto,
    opts: &StructOptions,
    masked_out: &MaskedOut,
) -> Result<(StructuralResult, crate::model::hollow::Hollow)> {
    emp::check_beta(opts.beta).map_err(|e| anyhow::anyhow!("{e}"))?;
    let g = model.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    super::check_struct_widths(g, &ix)?;
    let ctx = make_ctx(model, g, &ix);
    let found = find_blocks(&ctx);
    let mut reports: Vec<Option<GroupReport>> = Vec::new();
    let mut blocks: Vec<(usize, Block, Vec<f64>)> = Vec::new();
    for (id, members, r) in found {
        let scored = r.and_then(|b| {
            let s = match opts.criterion {
                Criterion::Activation => activation_head_scores(&ctx, &b, opts)?,
                c => head_scores(&ctx, &b, c)?,
            };
            emp::moments(&s).map_err(|e| anyhow::anyhow!("block '{}': {e}", b.id))?;
            Ok((b, s))
        });
        match scored {
            Ok((b, s)) => {
                blocks.push((reports.len(), b, s));
                reports.push(None);
            }
            Err(e) => reports.push(Some(blocked_report(id, members, &e))),
        }
    }
    let mut decisions = decide(&blocks, opts)?;
    if let Some(only) = &opts.cut_only {
        for ((slot, b, _), (kept, _, notes)) in blocks.iter().zip(decisions.iter_mut()) {
            if !only.contains(slot) && kept.len() < b.heads {
                notes.push(super::guard_kept_note(kept.len()));
                *kept = (0..b.heads).collect();
            }
        }
    }
    // Stage every block (all checks, new tensors computed from the input model), then commit.
    let mut staged: Vec<(usize, Staged)> = Vec::new();
    for (bi, ((slot, b, scores), (kept, n_eff, notes))) in blocks.iter().zip(decisions).enumerate() {
        let s_eff = kept.iter().map(|&i| scores[i]).sum::<f64>() / scores.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let s_eff = if scores.iter().all(|&x| x == 0.0) { 1.0 } else { s_eff.min(1.0) };
        let mut notes = notes;
        notes.extend(b.notes.iter().cloned());
        if kept.len() == b.heads {
            reports[*slot] = Some(report(b, b.heads, n_eff, s_eff, None, notes));
            continue;
        }
        match stage_block(&ctx, b, &kept) {
            Ok(st) => {
                staged.push((bi, st));
                let mut r = report(b, kept.len(), n_eff, s_eff, None, notes);
                r.removed = (0..b.heads).filter(|h| !kept.contains(h)).collect();
                reports[*slot] = Some(r);
            }
            Err(e) => reports[*slot] = Some(report(b, b.heads, n_eff, s_eff, Some(format!("{e:#}")), notes)),
        }
    }
    // commit_all moves the staged tensors into the model; they are staged again (the same
    // slices of the input) where a second commit needs them.
    let restage = |staged: &mut Vec<(usize, Staged)>| -> Result<()> {
        for (bi, st) in staged.iter_mut() {
            let kept = st.kept.clone();
            *st = stage_block(&ctx, &blocks[*bi].1, &kept)?;
        }
        Ok(())
    };
    let mut pruned = commit_all(model, &mut staged)?;
    if verify(&ctx, &pruned.0, &pruned.1, model, &staged).is_err() {
        // Find the culprit(s): commit block by block, keeping those that verify.
        restage(&mut staged)?;
        let mut good: Vec<(usize, Staged)> = Vec::new();
        for st in staged {
            let mut trial = good.clone();
            trial.push(st.clone());
            let (m, hollow) = commit_all(model, &mut trial.clone())?;
            match verify(&ctx, &m, &hollow, model, &trial) {
                Ok(()) => good = trial,
                Err(e) => {
                    let (slot, b, _) = &blocks[st.0];
                    if let Some(r) = reports[*slot].as_mut() {
                        r.blocked = Some(format!("check of the rewritten shapes failed: {e:#}"));
                        r.kept = b.heads;
                        r.removed.clear();
                    }
                }
            }
        }
        staged = good;
        pruned = commit_all(model, &mut staged)?;
    }
    // A masked model written to a file is built without the pruned one in memory; the pruned
    // one is committed again after.
    let pruned = (!matches!(masked_out, MaskedOut::File(..))).then_some(pruned);
    let masked = if matches!(masked_out, MaskedOut::Drop) {
        None
    } else {
        let mut masked = model.clone();
        for (bi, st) in &staged {
            mask_block(&mut masked, &blocks[*bi].1, &st.kept)?;
        }
        cleanup(model, &mut masked, &BTreeSet::new())?;
        super::place_masked(masked, masked_out)?
    };
    let (mut pruned, hollow) = match pruned {
        Some(p) => p,
        None => {
            restage(&mut staged)?;
            commit_all(model, &mut staged)?
        }
    };
    let stale: BTreeSet<String> = staged.iter().flat_map(|(_, st)| st.stale.iter().cloned()).collect();
    cleanup(model, &mut pruned, &stale)?;
    // Output projections of pruned blocks, for reconstruction. Their weights may be renamed by
    // the rewrite, so they are found by the projection node's output, which does not change.
    let mut refit = staged
        .iter()
        .filter_map(|(bi, st)| {
            let b = &blocks[*bi].1;
            let n = ctx.g.node.get(b.out.node)?;
            let w = ctx.ix.weight(ctx.g, n.input.get(b.out.slot)?)?;
            let rows = *w.dims.get(b.out.axis)? as usize;
            let dv = b.v_head_dim.max(1);
            let in_keep = (0..rows).map(|r| st.kept.contains(&(r / dv))).collect();
            Some(crate::reconstruct::refit::RefitSite {
                weight: n.input[b.out.slot].clone(),
                by_output: n.output.first().cloned(),
                in_keep,
                out_keep: vec![],
            })
        })
        .collect::<Vec<_>>();
    // And every layer after the first pruned block whose weight the rewrite left as it was.
    if let Some(first) = staged.iter().map(|(bi, _)| blocks[*bi].1.out.node).min() {
        let more = unchanged_downstream(ctx.g, first, &pruned, &refit);
        refit.extend(more);
    }
    Ok((StructuralResult { pruned, masked, groups: reports.into_iter().flatten().collect(), refit }, hollow))
}

/// The linear layers after node `first` (Conv, Gemm, MatMul, onnxruntime's Attention) whose
/// weight the rewrite left as it was (same name, same dims in `pruned`): their inputs are no
/// longer the dense ones, so reconstruction refits them too, all inputs and outputs kept.
fn unchanged_downstream(
    g: &onnx_protobuf::GraphProto,
    first: usize,
    pruned: &ModelProto,
    sites: &[crate::reconstruct::refit::RefitSite],
) -> Vec<crate::reconstruct::refit::RefitSite> {
    let dims = |g: &onnx_protobuf::GraphProto| -> std::collections::HashMap<String, Vec<i64>> {
        g.initializer.iter().map(|t| (t.name.clone(), t.dims.clone())).collect()
    };
    let Some(pg) = pruned.graph.as_ref() else { return vec![] };
    let (before, after) = (dims(g), dims(pg));
    g.node
        .iter()
        .skip(first + 1)
        .filter(|n| crate::reconstruct::site::is_linear_node(n))
        .filter_map(|n| n.input.get(1))
        .filter(|w| !sites.iter().any(|s| &s.weight == *w))
        .filter(|w| before.get(*w).is_some_and(|d| after.get(*w) == Some(d)))
        .map(|w| crate::reconstruct::refit::RefitSite {
            weight: w.clone(),
            by_output: None,
            in_keep: vec![],
            out_keep: vec![],
        })
        .collect()
}

/// Kept query heads of a block, the N_eff to report, and notes.
type Kept = (Vec<usize>, f64, Vec<String>);

/// What EMP keeps in each block.
fn decide(blocks: &[(usize, Block, Vec<f64>)], opts: &StructOptions) -> Result<Vec<Kept>> {
    let emp_err = |e: emp::EmpError| anyhow::anyhow!("{e}");
    let mut out = Vec::new();
    match opts.scope {
        StructScope::Layer => {
            for (_, b, s) in blocks {
                let (d, keep) = emp::select(s, opts.beta).map_err(emp_err)?;
                let mut notes = Vec::new();
                if d.all_zero {
                    notes.push("all head scores are zero: kept every head".into());
                }
                out.push((gqa_round(b, s, keep, &mut notes), d.n_eff, notes));
            }
        }
        StructScope::Global => {
            let all: Vec<f64> = blocks.iter().flat_map(|(_, _, s)| s.iter().copied()).collect();
            let (d, keep) = emp::select(&all, opts.beta).map_err(emp_err)?;
            let keep: BTreeSet<usize> = keep.into_iter().collect();
            let mut off = 0;
            for (_, b, s) in blocks {
                let mut notes = vec![format!(
                    "global EMP over {} heads of {} block{}: N_eff = {:.2}, kept {}",
                    d.n,
                    blocks.len(),
                    if blocks.len() == 1 { "" } else { "s" },
                    d.n_eff,
                    d.kept
                )];
                let mut mine: Vec<usize> = (0..s.len()).filter(|i| keep.contains(&(off + i))).collect();
                if mine.is_empty() {
                    mine = emp::top_k(s, 1);
                    notes.push("global EMP would remove every head of this block: kept its best head".into());
                }
                off += s.len();
                let local = emp::n_eff(s).map_err(emp_err)?;
                out.push((gqa_round(b, s, mine, &mut notes), local, notes));
            }
        }
    }
    Ok(out)
}

/// Grouped-query attention: keep the same number of query heads in every KV group (the
/// rounded-up average of what EMP kept), the best ones of each group.
fn gqa_round(b: &Block, s: &[f64], keep: Vec<usize>, notes: &mut Vec<String>) -> Vec<usize> {
    if b.kv_heads == b.heads || b.kv_heads == 0 {
        return keep;
    }
    let group = b.heads / b.kv_heads;
    let per = keep.len().div_ceil(b.kv_heads).clamp(1, group);
    let mut out = Vec::new();
    for k in 0..b.kv_heads {
        let local: Vec<f64> = s[k * group..(k + 1) * group].to_vec();
        out.extend(emp::top_k(&local, per).into_iter().map(|i| k * group + i));
    }
    if out.len() != keep.len() {
        notes.push(format!(
            "grouped-query attention: {} query heads per KV group ({} in all, EMP chose {})",
            per,
            out.len(),
            keep.len()
        ));
    }
    out
}

/// Indices along a head axis: for each part, for each kept head, its `d` units.
fn units(parts: usize, heads: usize, d: usize, kept: &[usize]) -> Vec<usize> {
    let mut v = Vec::with_capacity(parts * kept.len() * d);
    for p in 0..parts {
        for &h in kept {
            let base = (p * heads + h) * d;
            v.extend(base..base + d);
        }
    }
    v
}

/// Float parameter count of a model (for reports and tests).
pub fn param_count(m: &ModelProto) -> u64 {
    let Some(g) = m.graph.as_ref() else { return 0 };
    let Ok(ix) = GraphIndex::build(g) else { return 0 };
    crate::model::graph::float_params(g, &ix).0
}

#[cfg(test)]
thread_local! {
    /// Tests: the shape check of the rewrite fails whenever the scored block of this index is
    /// committed (fault injection for the culprit search in `prune_heads_to`).
    static FAIL_SHAPES_OF: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When the rewritten model's shape check fails, the blocks are committed one by one and the
    /// one that fails is kept whole, with the reason in its report; the others are pruned as
    /// without it, and the result is still exact (pruned == masked in tract).
    #[test]
    fn a_block_that_fails_the_shape_check_is_kept_whole_and_the_others_prune() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dense = crate::model::io::load(&root.join("models/digits_transformer.onnx")).unwrap().proto;
        let opts = StructOptions { beta: 0.5, ..Default::default() };
        let clean = prune_heads(&dense, &opts).unwrap();
        assert_eq!(clean.groups.len(), 2);
        assert!(clean.groups.iter().all(|g| g.kept < g.n && g.blocked.is_none()), "{:#?}", clean.groups);
        FAIL_SHAPES_OF.with(|c| c.set(Some(1)));
        let r = prune_heads_to(&dense, &opts, &MaskedOut::Keep);
        FAIL_SHAPES_OF.with(|c| c.set(None));
        let r = r.unwrap();
        let (g0, g1) = (&r.groups[0], &r.groups[1]);
        assert_eq!((g0.kept, &g0.removed, &g0.blocked), (clean.groups[0].kept, &clean.groups[0].removed, &None));
        let why = g1.blocked.as_deref().unwrap_or_default();
        assert!(why.contains("check of the rewritten shapes failed") && why.contains("injected"), "{why}");
        assert_eq!((g1.kept, g1.removed.len()), (g1.n, 0));
        // Fewer parameters than dense, more than the clean run (block 1 is whole).
        let params = |m: &ModelProto| {
            crate::model::graph::float_params(
                m.graph.as_ref().unwrap(),
                &GraphIndex::build(m.graph.as_ref().unwrap()).unwrap(),
            )
            .0
        };
        assert!(params(&clean.pruned) < params(&r.pruned) && params(&r.pruned) < params(&dense));
        // Exact: the pruned model computes the masked one's function.
        let d = tempfile::tempdir().unwrap();
        let (mp, pp) = (d.path().join("masked.onnx"), d.path().join("pruned.onnx"));
        let so = crate::model::io::SaveOptions::default();
        crate::model::io::save(r.masked.clone().unwrap(), &mp, &so).unwrap();
        crate::model::io::save(r.pruned.clone(), &pp, &so).unwrap();
        let eq = crate::check::equivalence(&mp, &pp, &crate::check::VerifyOptions::default()).unwrap();
        assert!(eq.iter().all(|o| o.max_abs_err <= 1e-5), "{eq:#?}");
    }

    fn block(id: &str, heads: usize, kv_heads: usize) -> Block {
        let w = WeightUse { node: 0, slot: 1, axis: 0 };
        Block {
            id: id.into(),
            kind: "test",
            members: vec![id.into()],
            heads,
            kv_heads,
            head_dim: 2,
            v_head_dim: 2,
            projs: vec![],
            v_proj: (0, 0),
            out: w,
            path: None,
            attrs: vec![],
            fused_bias: None,
            notes: vec![],
        }
    }

    #[test]
    fn global_scope_keeps_one_head_per_block() {
        // Block b's heads are tiny next to a's: global EMP would drop all of them.
        let blocks = vec![
            (0, block("a", 4, 4), vec![10.0, 9.0, 11.0, 10.0]),
            (1, block("b", 4, 4), vec![1e-6, 2e-6, 0.0, 1e-6]),
        ];
        let opts = StructOptions { scope: StructScope::Global, ..Default::default() };
        let d = decide(&blocks, &opts).unwrap();
        assert_eq!(d[0].0, vec![0, 2, 3], "N_eff ≈ 3.98 over the 8 heads: the 3 largest stay");
        assert_eq!(d[1].0, vec![1], "best head of b");
        assert!(d[1].2.iter().any(|n| n.contains("best head")));
        // Layer scope decides per block.
        let d = decide(&blocks, &StructOptions::default()).unwrap();
        assert_eq!(d[0].0.len(), 3);
        assert!(d[1].0.len() < 4);
    }

    #[test]
    fn gqa_keeps_the_same_count_per_group() {
        // 4 query heads in 2 KV groups ({0,1}, {2,3}); EMP keeps 1 → 1 per group.
        let b = block("g", 4, 2);
        let mut notes = vec![];
        assert_eq!(gqa_round(&b, &[1.0, 5.0, 3.0, 2.0], vec![1], &mut notes), vec![1, 2]);
        assert_eq!(gqa_round(&b, &[1.0, 5.0, 3.0, 2.0], vec![0, 1, 2], &mut notes), vec![0, 1, 2, 3]);
        assert_eq!(units(3, 4, 2, &[1, 3]), vec![2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23]);
    }
}
