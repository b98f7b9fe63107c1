//! ONNX `Attention` (opset 23) in SDPA's 4-D form, grouped-query attention included: the op
//! takes the place of the scores and A·V MatMuls of the MatMul path, heads on axis 1.

use super::*;

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
    if hkv == 0 || !hq.is_multiple_of(hkv) {
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
