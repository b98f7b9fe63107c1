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
//! Files: this one finds and floods blocks; `matmul/plan.rs` computes the shape operands for a new
//! head count.

use super::layout::{self, Factor};
use super::shapeval::{clamp_range, Eval};
use super::{Block, Ctx, Edit, Projection, WeightUse};
use crate::model::graph::{attr_i, attr_ints, node_label};
use crate::model::tensor::dt;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap};

mod plan;
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
fn find_projection(ctx: &Ctx, start: &str) -> Result<Found> {
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

/// ONNX `Attention` (opset 23) in SDPA's 4-D form: Q/K/V are [B, heads, S, D] tensors made from
/// the projections by Reshape + Transpose (no head-count attribute). The op takes the place of
/// the scores and A·V MatMuls; the rest is the MatMul path (heads on axis 1).
pub fn analyse_onnx_4d(ctx: &Ctx, ni: usize) -> Result<Block> {
    let n = &ctx.g.node[ni];
    if !arity_ok(n) || n.input.len() < 3 || n.input[..3].iter().any(|s| s.is_empty()) {
        bail!("malformed Attention");
    }
    if ctx.probes.is_some() {
        let (q, k) = (ctx.shape(0, &n.input[0])?, ctx.shape(0, &n.input[1])?);
        if q.len() == 4 && k.len() == 4 && q[1] != k[1] {
            return analyse_4d_gqa(ctx, ni, q[1], k[1]);
        }
    }
    analyse_qkv(ctx, ni, [&n.input[0], &n.input[1], &n.input[2]], "ONNX Attention (4-D)")
}

/// Grouped-query attention in the 4-D form: query head i reads K/V head i / (hq / hkv). Query
/// heads are dropped evenly from every KV group (the kept ones of a group stay contiguous, so the
/// mapping holds after the rewrite); K and V are kept whole. Only the Q path is followed.
fn analyse_4d_gqa(ctx: &Ctx, ni: usize, hq: usize, hkv: usize) -> Result<Block> {
    let n = &ctx.g.node[ni];
    if hkv == 0 || hq % hkv != 0 {
        bail!("{hq} query heads do not split over {hkv} K/V heads");
    }
    if hq / hkv < 2 {
        bail!("one query head per K/V head: nothing to prune");
    }
    let fq = find_projection(ctx, &n.input[0]).context("Q operand")?;
    let fk = find_projection(ctx, &n.input[1]).context("K operand")?;
    let fv = find_projection(ctx, &n.input[2]).context("V operand")?;
    if fq.node == fk.node || fk.node == fv.node || fq.node == fv.node {
        bail!("Q, K and V share a projection");
    }
    let d = *ctx.shape(0, &n.input[0])?.last().context("scalar Q")?;
    let dv = *ctx.shape(0, &n.input[2])?.last().context("scalar V")?;
    if fq.width != hq * d || fk.width != hkv * d || fv.width != hkv * dv {
        bail!("Q/K/V widths {}/{}/{} do not split into {hq}/{hkv}/{hkv} heads", fq.width, fk.width, fv.width);
    }
    let flood = Flood::run_with(ctx, std::slice::from_ref(&fq), hq, d, dv, false, true)?;
    let proj = |f: &Found, heads: usize, head_dim: usize, prune: bool| Projection {
        weight: f.weight,
        bias: f.bias,
        parts: 1,
        heads,
        head_dim,
        prune,
    };
    let mut nodes = flood.info.nodes.clone();
    nodes.insert(fq.node);
    if let Some(b) = fq.bias {
        nodes.insert(b.node);
    }
    let out = flood.out.context("output projection not found")?;
    nodes.insert(out.node);
    let block = Block {
        id: node_label(n),
        kind: "ONNX Attention (4-D)",
        members: nodes.iter().map(|&i| node_label(&ctx.g.node[i])).collect(),
        heads: hq,
        kv_heads: hkv,
        head_dim: d,
        v_head_dim: dv,
        projs: vec![proj(&fq, hq, d, true), proj(&fk, hkv, d, false), proj(&fv, hkv, dv, false)],
        v_proj: (2, 0),
        out,
        path: Some(flood.info),
        attrs: vec![],
        fused_bias: None,
        notes: vec![format!(
            "grouped-query attention ({hq} query heads, {hkv} KV heads): query heads are dropped evenly from every KV group; K and V are kept whole"
        )],
    };
    let (_, notes) = plan(ctx, &block, hq - hkv).context("the reshape targets cannot follow a new head count")?;
    let mut all = block.notes.clone();
    all.extend(notes);
    Ok(Block { notes: all, ..block })
}

fn analyse_qkv(ctx: &Ctx, id_node: usize, qkv: [&String; 3], kind: &'static str) -> Result<Block> {
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

struct Flood {
    info: PathInfo,
    tracked: HashMap<String, Track>,
    score: Option<usize>,
    av: Option<usize>,
    out: Option<WeightUse>,
    /// Sources of Q, K, V as seen at the MatMuls.
    roles: [Option<Src>; 3],
    /// Grouped-query 4-D Attention: only Q is tracked; K and V are kept whole.
    gqa: bool,
}

impl Flood {
    fn run(ctx: &Ctx, found: &[Found], h: usize, d: usize, dv: usize, fused: bool) -> Result<Flood> {
        Self::run_with(ctx, found, h, d, dv, fused, false)
    }

    fn run_with(ctx: &Ctx, found: &[Found], h: usize, d: usize, dv: usize, fused: bool, gqa: bool) -> Result<Flood> {
        let mut fl = Flood {
            info: PathInfo { heads: h, ..Default::default() },
            tracked: HashMap::new(),
            score: None,
            av: None,
            out: None,
            roles: [None; 3],
            gqa,
        };
        let mut first = usize::MAX;
        let mut processed = BTreeSet::new();
        for (i, f) in found.iter().enumerate() {
            let shape = ctx.shape(0, &f.seed)?;
            let axis = shape.len().checked_sub(1).context("scalar projection output")?;
            let inner = if i == 2 { dv } else { d };
            let part = fused.then_some(Factor { axis, inner: h * d, count: 3 });
            fl.track(
                ctx,
                &f.seed,
                Track { head: Factor { axis, inner, count: h }, part, src: Src::Proj { proj: i, part: None } },
            )?;
            let last = f.bias.map(|b| b.node).unwrap_or(f.node);
            first = first.min(last + 1);
        }
        for ni in first..ctx.g.node.len() {
            let n = &ctx.g.node[ni];
            if !n.input.iter().any(|i| fl.tracked.contains_key(i)) {
                continue;
            }
            fl.step(ctx, ni).with_context(|| format!("{} '{}'", n.op_type, node_label(n)))?;
            processed.insert(ni);
            if !matches!(n.op_type.as_str(), "Shape") {
                fl.info.nodes.insert(ni);
            }
        }
        // Every reader of an attention tensor must have been interpreted (a graph that is not
        // in topological order could hide one).
        for name in fl.tracked.keys() {
            if let Some(&(c, _)) = ctx.ix.consumers_of(name).iter().find(|(c, _)| !processed.contains(c)) {
                bail!(
                    "'{name}' is read by '{}', which was not analysed (graph not topologically sorted?)",
                    node_label(&ctx.g.node[c])
                );
            }
        }
        if fl.score.is_none() || fl.av.is_none() || fl.out.is_none() {
            bail!("the path from the projections does not close (scores, A·V and output projection)");
        }
        let srcs: BTreeSet<String> = fl.roles.iter().map(|r| format!("{r:?}")).collect();
        if srcs.len() != 3 {
            bail!("Q, K and V do not come from three distinct projections or parts");
        }
        Ok(fl)
    }

    fn track(&mut self, ctx: &Ctx, name: &str, t: Track) -> Result<()> {
        if ctx.ix.outputs.contains(name) {
            bail!("attention tensor '{name}' is a graph output");
        }
        if ctx.ix.captured.contains(name) {
            bail!("attention tensor '{name}' is used inside a subgraph");
        }
        for p in 0..2 {
            let s = ctx.shape(p, name)?;
            if !layout::fits(s, t.head) || t.part.is_some_and(|f| !layout::fits(s, f)) {
                bail!("'{name}': shape {s:?} does not hold the heads as expected");
            }
        }
        self.info.head_axis.insert(name.to_string(), t.head.axis);
        self.tracked.insert(name.to_string(), t);
        Ok(())
    }

    /// Apply a per-probe rule and demand the same answer for both probe sizes.
    fn both<T: PartialEq + std::fmt::Debug>(f: impl Fn(usize) -> Result<T>) -> Result<T> {
        let a = f(0)?;
        let b = f(1)?;
        if a != b {
            bail!("the head layout depends on the input size ({a:?} vs {b:?})");
        }
        Ok(a)
    }

    fn step(&mut self, ctx: &Ctx, ni: usize) -> Result<()> {
        let n = &ctx.g.node[ni];
        if !is_default(n) || !arity_ok(n) {
            bail!("unsupported or malformed op on the attention path");
        }
        let tin: Vec<(usize, Track)> =
            n.input.iter().enumerate().filter_map(|(s, i)| self.tracked.get(i).map(|t| (s, *t))).collect();
        let op = n.op_type.as_str();
        match op {
            "Shape" => return Ok(()),
            "Reshape" | "Squeeze" | "Unsqueeze" | "Flatten" | "Identity" | "Dropout" => {
                self.only_data_input(&tin, op)?;
                if op == "Dropout"
                    && n.output.iter().skip(1).any(|o| !o.is_empty() && !ctx.ix.consumers_of(o).is_empty())
                {
                    bail!("Dropout mask is used");
                }
                let t = tin[0].1;
                let mapped = Self::both(|p| {
                    let (i, o) = (ctx.shape(p, &n.input[0])?, ctx.shape(p, &n.output[0])?);
                    let head = layout::map_flat(i, o, t.head).context("heads split over two axes")?;
                    let part = match t.part {
                        Some(f) => Some(layout::map_flat(i, o, f).context("Q/K/V parts split over two axes")?),
                        None => None,
                    };
                    Ok((head, part))
                })?;
                if op == "Reshape" {
                    self.info.reshapes.push(ni);
                } else {
                    self.fixed(ctx, ni, &[0]);
                }
                self.track(ctx, &n.output[0], Track { head: mapped.0, part: mapped.1, ..t })?;
            }
            "Transpose" => {
                self.only_data_input(&tin, op)?;
                let t = tin[0].1;
                let rank = ctx.shape(0, &n.input[0])?.len();
                let perm: Vec<usize> = match attr_ints(&ctx.g.node[ni], "perm") {
                    Some(p) => p.iter().map(|&x| x as usize).collect(),
                    None => (0..rank).rev().collect(),
                };
                let head = layout::map_perm(&perm, t.head).context("bad perm")?;
                let part = match t.part {
                    Some(f) => Some(layout::map_perm(&perm, f).context("bad perm")?),
                    None => None,
                };
                self.track(ctx, &n.output[0], Track { head, part, ..t })?;
            }
            "MatMul" | "Gemm" if tin.len() == 1 && tin[0].0 == 0 => self.output_projection(ctx, ni, tin[0].1)?,
            "MatMul" if tin.len() == 2 => self.attention_matmul(ctx, ni, tin[0].1, tin[1].1)?,
            "Attention" => self.onnx_attention(ctx, ni, &tin)?,
            "Gather" => self.gather_part(ctx, ni, &tin)?,
            "Split" => self.split_parts(ctx, ni, &tin)?,
            "Slice" => self.slice_part(ctx, ni, &tin)?,
            "Add" | "Sub" | "Mul" | "Div" | "Where" | "IsNaN" | "Cast" | "Softmax" | "LogSoftmax" | "Max" | "Min"
            | "Pow" | "Sqrt" | "Exp" | "Neg" | "Abs" | "Relu" | "Tanh" | "Sigmoid" | "Erf" => {
                self.elementwise(ctx, ni, &tin)?
            }
            _ => bail!("unsupported op on the attention path"),
        }
        Ok(())
    }

    fn only_data_input(&self, tin: &[(usize, Track)], op: &str) -> Result<()> {
        if tin.len() != 1 || tin[0].0 != 0 {
            bail!("{op} with an attention tensor as a shape operand");
        }
        Ok(())
    }

    /// Operands of a path node that must be the same after the rewrite (all but `skip`).
    fn fixed(&mut self, ctx: &Ctx, ni: usize, skip: &[usize]) {
        for (s, i) in ctx.g.node[ni].input.iter().enumerate() {
            if !i.is_empty() && !skip.contains(&s) && !self.tracked.contains_key(i) && !ctx.is_const(i) {
                self.info.fixed_operands.push((ni, s));
            }
        }
    }

    fn elementwise(&mut self, ctx: &Ctx, ni: usize, tin: &[(usize, Track)]) -> Result<()> {
        let n = &ctx.g.node[ni];
        let src = tin[0].1.src;
        if tin.iter().any(|(_, t)| t.src != src) {
            bail!("mixes tensors of different origins");
        }
        let out = &n.output[0];
        let mapped = Self::both(|p| {
            let os = ctx.shape(p, out)?;
            let mut res: Option<(Factor, Option<Factor>)> = None;
            for (s, inp) in n.input.iter().enumerate() {
                if inp.is_empty() {
                    continue;
                }
                let is = ctx.shape(p, inp)?;
                let off = os.len().checked_sub(is.len()).context("operand of higher rank than the result")?;
                if let Some((_, t)) = tin.iter().find(|(ts, _)| *ts == s) {
                    let sh = |f: Factor| Factor { axis: f.axis + off, ..f };
                    let m = (sh(t.head), t.part.map(sh));
                    if is[t.head.axis] != os[m.0.axis] || res.is_some_and(|r| r != m) {
                        bail!("attention operands with different head layouts");
                    }
                    res = Some(m);
                }
            }
            let (head, part) = res.context("no attention operand")?;
            for (s, inp) in n.input.iter().enumerate() {
                if inp.is_empty() || tin.iter().any(|(ts, _)| *ts == s) {
                    continue;
                }
                let is = ctx.shape(p, inp)?;
                let off = os.len() - is.len().min(os.len());
                for f in std::iter::once(head).chain(part) {
                    if f.axis >= off && is.get(f.axis - off).is_some_and(|&dim| dim != 1) {
                        bail!("operand '{inp}' varies along the head axis (per-head mask or scale)");
                    }
                }
            }
            Ok((head, part))
        })?;
        if matches!(n.op_type.as_str(), "Softmax" | "LogSoftmax") {
            let rank = ctx.shape(0, out)?.len() as i64;
            let default = if ctx.opset < 13 { 1 } else { -1 };
            let ax = attr_i(n, "axis").unwrap_or(default);
            let ax = if ax < 0 { ax + rank } else { ax };
            if ctx.opset < 13 && ax != rank - 1 {
                bail!("Softmax (opset < 13) over several axes");
            }
            if ax as usize == mapped.0.axis || mapped.1.is_some_and(|f| f.axis as i64 == ax) {
                bail!("Softmax across heads");
            }
        }
        self.fixed(ctx, ni, &[]);
        self.track(ctx, out, Track { head: mapped.0, part: mapped.1, src })
    }

    fn attention_matmul(&mut self, ctx: &Ctx, ni: usize, a: Track, b: Track) -> Result<()> {
        let n = &ctx.g.node[ni];
        if a.part.is_some() || b.part.is_some() {
            bail!("MatMul of a fused Q/K/V tensor");
        }
        let head = Self::both(|p| {
            let (sa, sb, so) = (ctx.shape(p, &n.input[0])?, ctx.shape(p, &n.input[1])?, ctx.shape(p, &n.output[0])?);
            if sa.len() < 2 || sb.len() < 2 || a.head.axis + 2 >= sa.len() || b.head.axis + 2 >= sb.len() {
                bail!("heads on a matrix axis of a MatMul");
            }
            let ha = Factor { axis: a.head.axis + so.len() - sa.len(), ..a.head };
            let hb = Factor { axis: b.head.axis + so.len() - sb.len(), ..b.head };
            if ha != hb || sa[a.head.axis] != sb[b.head.axis] {
                bail!("MatMul operands pair different heads");
            }
            Ok(ha)
        })?;
        let src = match (a.src, b.src) {
            (Src::Proj { .. }, Src::Proj { .. }) if self.score.is_none() => {
                self.score = Some(ni);
                self.roles[0] = Some(a.src);
                self.roles[1] = Some(b.src);
                Src::Scores
            }
            (Src::Scores, Src::Proj { .. }) if self.av.is_none() => {
                self.av = Some(ni);
                self.roles[2] = Some(b.src);
                Src::Context
            }
            _ => bail!("unexpected MatMul of attention tensors"),
        };
        self.track(ctx, &n.output[0], Track { head, part: None, src })
    }

    /// ONNX Attention with 4-D Q, K, V (slots 0–2) carrying the heads on axis 1: scores and A·V
    /// in one op. Only the plain form: no past/present state, no per-head mask, no qk output.
    fn onnx_attention(&mut self, ctx: &Ctx, ni: usize, tin: &[(usize, Track)]) -> Result<()> {
        let n = &ctx.g.node[ni];
        if ["q_num_heads", "kv_num_heads"].iter().any(|a| attr_i(n, a).is_some()) {
            bail!("3-D Attention on the MatMul path");
        }
        let slots: Vec<usize> = tin.iter().map(|(s, _)| *s).collect();
        let want: &[usize] = if self.gqa { &[0] } else { &[0, 1, 2] };
        if slots != want || self.score.is_some() {
            bail!("Attention whose Q, K and V are not the three projections");
        }
        let present = |s: usize| n.input.get(s).is_some_and(|i| !i.is_empty());
        let used = |s: usize| {
            n.output
                .get(s)
                .is_some_and(|o| !o.is_empty() && (!ctx.ix.consumers_of(o).is_empty() || ctx.ix.outputs.contains(o)))
        };
        if present(4) || present(5) || (1..4).any(used) || n.input.len() > 6 {
            bail!("past/present key-value state or the qk output is used (per-head shapes)");
        }
        for (_, t) in tin {
            if t.part.is_some() || t.head.axis != 1 || t.head.inner != 1 {
                bail!("Q/K/V do not hold the heads on axis 1");
            }
        }
        let head = tin[0].1.head;
        if tin.iter().any(|(_, t)| t.head != head) {
            bail!("Q, K and V have different head counts (grouped-query 4-D Attention is not supported)");
        }
        if present(3) {
            Self::both(|p| {
                let m = ctx.shape(p, &n.input[3])?;
                if m.len() >= 3 && m[m.len() - 3] != 1 {
                    bail!("attention mask '{}' varies per head", n.input[3]);
                }
                Ok(())
            })?;
            self.fixed(ctx, ni, &[0, 1, 2]);
        }
        self.score = Some(ni);
        self.av = Some(ni);
        self.roles = if self.gqa {
            // K and V are kept whole: they stand for projections 1 and 2 of the block.
            [Some(tin[0].1.src), Some(Src::Proj { proj: 1, part: None }), Some(Src::Proj { proj: 2, part: None })]
        } else {
            [Some(tin[0].1.src), Some(tin[1].1.src), Some(tin[2].1.src)]
        };
        self.track(ctx, &n.output[0], Track { head, part: None, src: Src::Context })
    }

    fn output_projection(&mut self, ctx: &Ctx, ni: usize, t: Track) -> Result<()> {
        let n = &ctx.g.node[ni];
        if t.src != Src::Context || self.out.is_some() {
            bail!("projection of an attention tensor that is not the attention output");
        }
        let f = projection_at(ctx, ni, &n.output[0])?.context("output projection without a constant weight")?;
        let rows_axis = 1 - f.weight.axis;
        Self::both(|p| {
            let s = ctx.shape(p, &n.input[0])?;
            if t.head.axis + 1 != s.len() || t.head.inner * t.head.count != s[t.head.axis] {
                bail!("the output projection input does not hold the heads as [.., H·D]");
            }
            Ok(())
        })?;
        self.out = Some(WeightUse { node: ni, slot: f.weight.slot, axis: rows_axis });
        Ok(())
    }

    /// Gather with a constant index on the part axis of a fused tensor selects Q, K or V.
    fn gather_part(&mut self, ctx: &Ctx, ni: usize, tin: &[(usize, Track)]) -> Result<()> {
        let n = &ctx.g.node[ni];
        self.only_data_input(tin, "Gather")?;
        let t = tin[0].1;
        let pf = t.part.context("Gather on an attention tensor (not a Q/K/V selection)")?;
        let ax = norm_axis(attr_i(n, "axis").unwrap_or(0), ctx.shape(0, &n.input[0])?.len())?;
        let idx = ctx.const_ints(&n.input[1]).context("Gather with a computed index")?;
        let ishape = ctx.shape(0, &n.input[1])?.to_vec();
        if ax != pf.axis || pf.inner != 1 || ctx.shape(0, &n.input[0])?[ax] != 3 || idx.len() != 1 || ax == t.head.axis
        {
            bail!("Gather that is not a Q/K/V selection");
        }
        let part = (if idx[0] < 0 { idx[0] + 3 } else { idx[0] }) as usize;
        if part > 2 {
            bail!("Q/K/V index {} out of range", idx[0]);
        }
        let mut head = t.head;
        if ishape.is_empty() && head.axis > ax {
            head.axis -= 1;
        }
        let Src::Proj { proj, .. } = t.src else { bail!("Gather of a non-projection tensor") };
        self.track(ctx, &n.output[0], Track { head, part: None, src: Src::Proj { proj, part: Some(part) } })
    }

    /// Split of a fused tensor into its three parts.
    fn split_parts(&mut self, ctx: &Ctx, ni: usize, tin: &[(usize, Track)]) -> Result<()> {
        let n = &ctx.g.node[ni];
        self.only_data_input(tin, "Split")?;
        let t = tin[0].1;
        let pf = t.part.context("Split of an attention tensor (not a Q/K/V split)")?;
        let shape = ctx.shape(0, &n.input[0])?.to_vec();
        let ax = norm_axis(attr_i(n, "axis").unwrap_or(0), shape.len())?;
        if ax != pf.axis || shape[ax] != 3 * pf.inner || n.output.len() != 3 {
            bail!("Split that is not a Q/K/V split");
        }
        for p in 0..2 {
            for o in &n.output {
                if ctx.shape(p, o)?.get(ax).copied() != ctx.shape(p, &n.input[0])?.get(ax).map(|d| d / 3) {
                    bail!("Split pieces are not the three parts");
                }
            }
        }
        let Src::Proj { proj, .. } = t.src else { bail!("Split of a non-projection tensor") };
        self.info.splits.push((ni, ax));
        for (k, o) in n.output.iter().enumerate() {
            if !o.is_empty() {
                self.track(ctx, o, Track { head: t.head, part: None, src: Src::Proj { proj, part: Some(k) } })?;
            }
        }
        Ok(())
    }

    /// Slice of one part of a fused tensor.
    fn slice_part(&mut self, ctx: &Ctx, ni: usize, tin: &[(usize, Track)]) -> Result<()> {
        let n = &ctx.g.node[ni];
        self.only_data_input(tin, "Slice")?;
        let t = tin[0].1;
        let pf = t.part.context("Slice of an attention tensor (not a Q/K/V selection)")?;
        if ctx.opset < 10 {
            bail!("Slice before opset 10");
        }
        let shape = ctx.shape(0, &n.input[0])?.to_vec();
        let starts = ctx.const_ints(&n.input[1]).context("Slice with computed starts")?;
        let ends = ctx.const_ints(n.input.get(2).context("Slice without ends")?).context("Slice with computed ends")?;
        let axes = match n.input.get(3).filter(|s| !s.is_empty()) {
            Some(a) => ctx.const_ints(a).context("Slice with computed axes")?,
            None => vec![0],
        };
        if let Some(st) = n.input.get(4).filter(|s| !s.is_empty()) {
            if ctx.const_ints(st).context("Slice with computed steps")? != [1] {
                bail!("Slice with a step");
            }
        }
        if starts.len() != 1 || ends.len() != 1 || axes.len() != 1 {
            bail!("Slice over several axes");
        }
        let ax = norm_axis(axes[0], shape.len())?;
        let (s, e) = clamp_range(starts[0], ends[0], shape[ax]);
        if ax != pf.axis || shape[ax] != 3 * pf.inner || s % pf.inner != 0 || e != s + pf.inner {
            bail!("Slice that is not a Q/K/V selection");
        }
        let Src::Proj { proj, .. } = t.src else { bail!("Slice of a non-projection tensor") };
        let part = s / pf.inner;
        self.info.slices.push((ni, ax, part));
        self.track(ctx, &n.output[0], Track { head: t.head, part: None, src: Src::Proj { proj, part: Some(part) } })
    }
}
