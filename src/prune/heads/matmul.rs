//! Attention written out with MatMul/Softmax (PyTorch legacy and dynamo exports, tf2onnx):
//! find each block, follow the head index from the Q/K/V projections to the output projection,
//! and plan the rewrite of every shape operand that depends on the head count.
//!
//! A block is found from a Softmax whose input comes from a MatMul of two computed tensors
//! (scores) and whose output feeds a MatMul as left operand (attention · V). From there the
//! Q, K and V operands are followed back through data-order ops to constant-weight
//! projections. Then a forward "flood" from the projection outputs tracks, on every tensor up
//! to the output projection, which axis holds the heads (see `layout`). Every consumer of a
//! tracked tensor must be understood, or the block is blocked. ONNX `Attention` in the 4-D form
//! takes the place of the two attention MatMuls on the same path.
//!
//! Files: this one finds blocks and their projections; `matmul/flood.rs` follows the head axis;
//! `matmul/onnx4d.rs` analyses ONNX `Attention` in the
//! 4-D form; `matmul/plan.rs` computes the shape operands for a new
//! head count.

use super::layout::{self, Factor};
use super::shapeval::{clamp_range, Eval};
use super::{Block, Ctx, Edit, Projection, WeightUse};
use crate::model::graph::{attr_i, attr_ints, node_label};
use crate::model::tensor::dt;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap};

mod flood;
mod onnx4d;
use flood::Flood;
mod plan;
pub use onnx4d::analyse_onnx_4d;
pub use plan::plan;

/// Where a tracked tensor comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    /// Output of projection `proj` (index into the block's projections); `part` once a single
    /// part of a fused Q/K/V projection has been selected.
    Proj {
        proj: usize,
        part: Option<usize>,
    },
    Scores,
    Context,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Track {
    head: Factor,
    /// The Q/K/V digit of a fused projection output, until one part is selected.
    part: Option<Factor>,
    src: Src,
}

/// What the flood learned about one block.
#[derive(Clone, Debug, Default)]
pub struct PathInfo {
    /// Tracked tensor → axis holding the heads.
    pub head_axis: HashMap<String, usize>,
    /// Head count seen by the path (H).
    pub heads: usize,
    /// Reshape nodes on the path.
    reshapes: Vec<usize>,
    /// Split nodes cutting a fused tensor into parts: (node, axis).
    splits: Vec<(usize, usize)>,
    /// Slice nodes selecting part `p` on `axis`: (node, axis, part).
    slices: Vec<(usize, usize, usize)>,
    /// Untracked, non-constant operands of path nodes that must not change: (node, slot).
    fixed_operands: Vec<(usize, usize)>,
    /// Nodes on the path (their outputs change shape) and the output projection.
    pub nodes: BTreeSet<usize>,
}

fn is_default(n: &onnx_protobuf::NodeProto) -> bool {
    n.domain.is_empty() || n.domain == "ai.onnx"
}

/// Does `n` have the inputs and outputs that the rules below index? (A malformed node is
/// never interpreted: no panics on bad input.)
pub(crate) fn arity_ok(n: &onnx_protobuf::NodeProto) -> bool {
    let has = |i: usize| n.input.get(i).is_some_and(|s| !s.is_empty());
    let min_in = match n.op_type.as_str() {
        "MatMul" | "Gemm" | "Add" | "Sub" | "Mul" | "Div" | "Gather" | "Max" | "Min" | "Pow" => 2,
        "Where" | "Slice" => 3,
        "Reshape" => 2,
        _ => 1,
    };
    (0..min_in).all(has) && n.output.first().is_some_and(|o| !o.is_empty())
}

/// Normalise a possibly negative axis.
fn norm_axis(ax: i64, rank: usize) -> Result<usize> {
    let a = if ax < 0 { ax + rank as i64 } else { ax };
    if a < 0 || a >= rank as i64 {
        bail!("axis {ax} out of range for rank {rank}");
    }
    Ok(a as usize)
}

/// Candidate blocks: one per Softmax that sits between a scores MatMul and an A·V MatMul.
pub fn find(ctx: &Ctx) -> Vec<(String, Vec<String>, Result<Block>)> {
    let mut out = Vec::new();
    for (si, n) in ctx.g.node.iter().enumerate() {
        if !is_default(n) || !(n.op_type == "Softmax" || n.op_type == "LogSoftmax") {
            continue;
        }
        let (score, av) = match locate(ctx, si) {
            Located::No => continue,
            Located::Ambiguous(av, why) => {
                let members = vec![node_label(n), node_label(&ctx.g.node[av])];
                out.push((node_label(&ctx.g.node[av]), members, Err(anyhow::anyhow!("{why}"))));
                continue;
            }
            Located::Yes(score, av) => (score, av),
        };
        let id = node_label(&ctx.g.node[score]);
        let r = analyse(ctx, score, si, av);
        let members = match &r {
            Ok(b) => b.members.clone(),
            Err(_) => vec![node_label(&ctx.g.node[score]), node_label(n), node_label(&ctx.g.node[av])],
        };
        out.push((id, members, r));
    }
    out
}

enum Located {
    /// Not attention (e.g. a classifier's Softmax).
    No,
    /// A Softmax feeding an A·V MatMul whose scores cannot be pinned down.
    Ambiguous(usize, String),
    /// (scores MatMul, A·V MatMul)
    Yes(usize, usize),
}

/// Scores MatMul upstream of the Softmax (through mask/scale element-wise ops) and the A·V
/// MatMul downstream of it.
fn locate(ctx: &Ctx, si: usize) -> Located {
    let Some(av) = locate_av(ctx, si) else { return Located::No };
    match locate_scores(ctx, si).unwrap_or_default().as_slice() {
        // A softmax of something that is not q·kᵀ (e.g. pooling with a learned query).
        [] => Located::No,
        [s] => Located::Yes(*s, av),
        many => {
            Located::Ambiguous(av, format!("{} candidate scores MatMuls (q·kᵀ) upstream of the softmax", many.len()))
        }
    }
}

fn locate_scores(ctx: &Ctx, si: usize) -> Option<Vec<usize>> {
    let sm = &ctx.g.node[si];
    let mut scores = BTreeSet::new();
    let mut stack = vec![(sm.input.first()?.clone(), 0usize)];
    while let Some((v, d)) = stack.pop() {
        let Some(&p) = ctx.ix.producer.get(&v) else { continue };
        let pn = &ctx.g.node[p];
        if !is_default(pn) || !arity_ok(pn) {
            continue;
        }
        match pn.op_type.as_str() {
            "MatMul" if pn.input.iter().all(|i| !ctx.is_const(i)) => {
                scores.insert(p);
            }
            "Add" | "Sub" | "Mul" | "Div" | "Where" | "Cast" | "Identity" if d < 4 => {
                for i in &pn.input {
                    if !i.is_empty() && !ctx.is_const(i) {
                        stack.push((i.clone(), d + 1));
                    }
                }
            }
            _ => {}
        }
    }
    Some(scores.into_iter().collect())
}

fn locate_av(ctx: &Ctx, si: usize) -> Option<usize> {
    let sm = &ctx.g.node[si];
    let mut avs = BTreeSet::new();
    let mut stack = vec![(sm.output.first()?.clone(), 0usize)];
    while let Some((v, d)) = stack.pop() {
        for &(c, slot) in ctx.ix.consumers_of(&v) {
            let cn = &ctx.g.node[c];
            if !is_default(cn) || !arity_ok(cn) {
                continue;
            }
            match cn.op_type.as_str() {
                "MatMul" if slot == 0 && !ctx.is_const(&cn.input[1]) => {
                    avs.insert(c);
                }
                "Where" | "Cast" | "Identity" | "Dropout" | "IsNaN" if d < 3 => {
                    if let Some(o) = cn.output.first() {
                        stack.push((o.clone(), d + 1));
                    }
                }
                _ => {}
            }
        }
    }
    if avs.len() == 1 {
        avs.first().copied()
    } else {
        None
    }
}

/// A projection found upstream of a Q/K/V operand.
#[derive(Clone, Debug)]
pub(crate) struct Found {
    pub node: usize,
    pub weight: WeightUse,
    pub bias: Option<WeightUse>,
    /// Its output after the bias: where the flood starts.
    pub seed: String,
    pub width: usize,
}

/// Walk back from an attention operand to the constant-weight projection producing it.
pub(super) fn find_projection(ctx: &Ctx, start: &str) -> Result<Found> {
    let mut v = start.to_string();
    for _ in 0..32 {
        let &p = ctx.ix.producer.get(&v).with_context(|| format!("'{v}' is not computed by a projection"))?;
        let n = &ctx.g.node[p];
        if !is_default(n) || !arity_ok(n) {
            bail!("{} '{}' between the projection and the attention", n.op_type, node_label(n));
        }
        if let Some(f) = projection_at(ctx, p, &v)? {
            return Ok(f);
        }
        if n.op_type == "Add" {
            if let Some(f) = biased_projection(ctx, p)? {
                return Ok(f);
            }
        }
        v = match n.op_type.as_str() {
            "Reshape" | "Transpose" | "Squeeze" | "Unsqueeze" | "Flatten" | "Identity" | "Cast" | "Gather"
            | "Split" | "Slice" | "Dropout" => n.input[0].clone(),
            "Mul" | "Div" => scaled_operand(ctx, p)?,
            op => bail!("{op} '{}' between the projection and the attention", node_label(n)),
        };
    }
    bail!("no projection found within 32 nodes of '{start}'")
}

/// For Mul/Div by a scalar: the operand carrying the data.
fn scaled_operand(ctx: &Ctx, p: usize) -> Result<String> {
    let n = &ctx.g.node[p];
    let out = ctx.shape(0, &n.output[0])?;
    let numel = |s: &[usize]| s.iter().product::<usize>();
    let a = ctx.shape(0, &n.input[0])?;
    let b = ctx.shape(0, n.input.get(1).context("Mul/Div with one input")?)?;
    if a == out && numel(b) == 1 {
        Ok(n.input[0].clone())
    } else if n.op_type == "Mul" && b == out && numel(a) == 1 {
        Ok(n.input[1].clone())
    } else {
        bail!("{} '{}' is not a scaling by a scalar", n.op_type, node_label(n))
    }
}

/// `p` is MatMul/Gemm with a constant weight, producing `v`.
pub(crate) fn projection_at(ctx: &Ctx, p: usize, v: &str) -> Result<Option<Found>> {
    let n = &ctx.g.node[p];
    if !is_default(n) || !arity_ok(n) {
        return Ok(None);
    }
    let (w_slot, axis) = match n.op_type.as_str() {
        "MatMul" => (1, 1),
        "Gemm" => {
            if attr_i(n, "transA").unwrap_or(0) != 0 {
                bail!("Gemm '{}' with transA", node_label(n));
            }
            (1, if attr_i(n, "transB").unwrap_or(0) != 0 { 0 } else { 1 })
        }
        _ => return Ok(None),
    };
    let Some(w) = n.input.get(w_slot).filter(|w| ctx.is_const(w)) else { return Ok(None) };
    if ctx.is_const(&n.input[0]) {
        return Ok(None);
    }
    let ws = ctx.const_shape(w)?;
    if ws.len() != 2 {
        bail!("projection '{}' has a {}-D weight", node_label(n), ws.len());
    }
    let bias = if n.op_type == "Gemm" && n.input.get(2).is_some_and(|b| !b.is_empty()) {
        if !ctx.is_const(&n.input[2]) {
            bail!("Gemm '{}' with a computed bias", node_label(n));
        }
        Some(WeightUse { node: p, slot: 2, axis: 0 })
    } else {
        None
    };
    Ok(Some(Found {
        node: p,
        weight: WeightUse { node: p, slot: w_slot, axis },
        bias,
        seed: v.to_string(),
        width: ws[axis],
    }))
}

/// `p` is Add(bias, MatMul(x, W)) in either operand order.
pub(crate) fn biased_projection(ctx: &Ctx, p: usize) -> Result<Option<Found>> {
    let n = &ctx.g.node[p];
    if n.input.len() != 2 || !arity_ok(n) {
        return Ok(None);
    }
    for (bs, ms) in [(0usize, 1usize), (1, 0)] {
        if !ctx.is_const(&n.input[bs]) {
            continue;
        }
        let Some(&mp) = ctx.ix.producer.get(&n.input[ms]) else { continue };
        let Some(mut f) = projection_at(ctx, mp, &n.input[ms])? else { continue };
        if f.bias.is_some() {
            continue;
        }
        if ctx.ix.consumers_of(&n.input[ms]).len() != 1 || ctx.ix.outputs.contains(&n.input[ms]) {
            bail!("projection output '{}' is used elsewhere too", n.input[ms]);
        }
        f.bias = Some(WeightUse { node: p, slot: bs, axis: 0 });
        f.seed = n.output[0].clone();
        return Ok(Some(f));
    }
    Ok(None)
}

fn analyse(ctx: &Ctx, score: usize, _softmax: usize, av: usize) -> Result<Block> {
    let (sn, an) = (&ctx.g.node[score], &ctx.g.node[av]);
    analyse_qkv(ctx, score, [&sn.input[0], &sn.input[1], &an.input[1]], "MatMul attention")
}

pub(super) fn analyse_qkv(ctx: &Ctx, id_node: usize, qkv: [&String; 3], kind: &'static str) -> Result<Block> {
    if ctx.probes.is_none() {
        bail!("shape analysis unavailable: {}", ctx.probe_error.as_deref().unwrap_or("unknown reason"));
    }
    let sn = &ctx.g.node[id_node];
    let fq = find_projection(ctx, qkv[0]).context("Q operand")?;
    let fk = find_projection(ctx, qkv[1]).context("K operand")?;
    let fv = find_projection(ctx, qkv[2]).context("V operand")?;
    let d = *ctx.shape(0, qkv[0])?.last().context("scalar Q")?;
    let dv = *ctx.shape(0, qkv[2])?.last().context("scalar V")?;
    let fused = fq.node == fk.node && fk.node == fv.node;
    let mut found = vec![fq.clone()];
    if !fused {
        if fq.node == fk.node || fk.node == fv.node || fq.node == fv.node {
            bail!("two of Q, K, V share a projection but not all three");
        }
        found.push(fk.clone());
        found.push(fv.clone());
    }
    let parts = if fused { 3 } else { 1 };
    let hd = fq.width / parts;
    if d == 0 || fq.width % parts != 0 || hd % d != 0 {
        bail!("projection width {} is not a multiple of head size {d}", fq.width);
    }
    let h = hd / d;
    if !fused && (fk.width != hd || fv.width % dv.max(1) != 0 || fv.width / dv.max(1) != h) {
        bail!("Q/K/V widths {}/{}/{} do not give the same head count", fq.width, fk.width, fv.width);
    }
    if fused && dv != d {
        bail!("fused projection with different Q and V head sizes");
    }
    if h < 2 {
        bail!("{h} head: nothing to prune");
    }
    let flood = Flood::run(ctx, &found, h, d, dv, fused)?;
    let v_proj = match flood.roles[2] {
        Some(Src::Proj { proj, part }) => (proj, part.unwrap_or(0)),
        _ => bail!("V not identified"),
    };
    let projs = found
        .iter()
        .map(|f| Projection {
            weight: f.weight,
            bias: f.bias,
            parts,
            heads: h,
            head_dim: if fused || f.node != fv.node { d } else { dv },
            prune: true,
        })
        .collect();
    let mut nodes = flood.info.nodes.clone();
    for f in &found {
        nodes.insert(f.node);
        if let Some(b) = f.bias {
            nodes.insert(b.node);
        }
    }
    let out = flood.out.context("output projection not found")?;
    nodes.insert(out.node);
    let members = nodes.iter().map(|&i| node_label(&ctx.g.node[i])).collect();
    let block = Block {
        id: node_label(sn),
        kind,
        members,
        heads: h,
        kv_heads: h,
        head_dim: d,
        v_head_dim: dv,
        projs,
        v_proj,
        out,
        path: Some(flood.info),
        attrs: vec![],
        fused_bias: None,
        notes: vec![],
    };
    // Make sure the shape operands can follow a smaller head count before offering the block.
    let (_, notes) = plan(ctx, &block, h - 1).context("the reshape targets cannot follow a new head count")?;
    Ok(Block { notes, ..block })
}
