//! Attention fused into one op: com.microsoft `Attention` (packed QKV weight, as onnxruntime's
//! transformer optimizer writes it), com.microsoft `MultiHeadAttention` and ONNX `Attention`
//! (opset 23) fed by separate projections. The head count is an attribute, so the rewrite is
//! weights + attributes; no shape plumbing is involved.

use super::matmul::{biased_projection, projection_at, Found};
use super::{AttrRule, Block, Ctx, Projection, WeightUse};
use crate::model::graph::{attr, attr_i, attr_ints, node_label};
use anyhow::{bail, Context, Result};

pub fn find(ctx: &Ctx) -> Vec<(String, Vec<String>, Result<Block>)> {
    let mut out = Vec::new();
    for (ni, n) in ctx.g.node.iter().enumerate() {
        let ms = n.domain == "com.microsoft";
        let onnx = n.domain.is_empty() || n.domain == "ai.onnx";
        let r = match n.op_type.as_str() {
            "Attention" if ms => ms_attention(ctx, ni),
            "MultiHeadAttention" if ms => ms_mha(ctx, ni),
            "Attention" if onnx => onnx_attention(ctx, ni),
            _ => continue,
        };
        let members = match &r {
            Ok(b) => b.members.clone(),
            Err(_) => vec![node_label(n)],
        };
        out.push((node_label(n), members, r));
    }
    out
}

fn present(n: &onnx_protobuf::NodeProto, slot: usize) -> bool {
    n.input.get(slot).is_some_and(|s| !s.is_empty())
}

/// Output `slot` of `n` exists and something reads it.
fn used_output(ctx: &Ctx, n: &onnx_protobuf::NodeProto, slot: usize) -> bool {
    n.output
        .get(slot)
        .is_some_and(|o| !o.is_empty() && (!ctx.ix.consumers_of(o).is_empty() || ctx.ix.outputs.contains(o)))
}

/// The output projection reading the attention output: its only consumer, a MatMul/Gemm with a
/// constant [H·Dv, out] weight. Returns the weight with `axis` = its row axis.
fn out_projection(ctx: &Ctx, ni: usize, width: usize) -> Result<WeightUse> {
    let n = &ctx.g.node[ni];
    let y = n.output.first().context("attention without output")?;
    if ctx.ix.outputs.contains(y) {
        bail!("the attention output is a graph output");
    }
    let cons = ctx.ix.consumers_of(y);
    let &[(c, 0)] = cons else { bail!("the attention output is not read by exactly one output projection") };
    if !super::matmul::arity_ok(&ctx.g.node[c]) {
        bail!("malformed output projection");
    }
    let f =
        projection_at(ctx, c, &ctx.g.node[c].output[0])?.context("the attention output is not read by a projection")?;
    let rows = 1 - f.weight.axis;
    let ws = ctx.const_shape(&ctx.g.node[c].input[f.weight.slot])?;
    if ws[rows] != width {
        bail!("output projection has {} input rows for an attention output of width {width}", ws[rows]);
    }
    Ok(WeightUse { axis: rows, ..f.weight })
}

fn positive_attr(n: &onnx_protobuf::NodeProto, name: &str) -> Result<usize> {
    let v = attr_i(n, name).with_context(|| format!("no '{name}' attribute"))?;
    if v <= 0 {
        bail!("'{name}' = {v}");
    }
    Ok(v as usize)
}

/// com.microsoft Attention: input, weights [hidden, 3·hidden], bias [3·hidden], mask_index,
/// past, attention_bias, past_sequence_length; outputs output, present.
fn ms_attention(ctx: &Ctx, ni: usize) -> Result<Block> {
    let n = &ctx.g.node[ni];
    let h = positive_attr(n, "num_heads")?;
    if present(n, 4) || present(n, 5) || used_output(ctx, n, 1) {
        bail!("past/present state or an attention bias (per-head shapes) is used");
    }
    if attr_i(n, "do_rotary").unwrap_or(0) != 0 {
        bail!("rotary embedding inside the op");
    }
    let w = n.input.get(1).filter(|w| ctx.is_const(w)).context("QKV weight is not a constant")?;
    let ws = ctx.const_shape(w)?;
    if ws.len() != 2 {
        bail!("QKV weight of rank {}", ws.len());
    }
    if let Some(sizes) = attr_ints(n, "qkv_hidden_sizes") {
        if sizes.len() != 3 || sizes[0] != sizes[1] || sizes[1] != sizes[2] {
            bail!("qkv_hidden_sizes {sizes:?}: unequal Q/K/V widths are not supported");
        }
    }
    if ws[1] % 3 != 0 || (ws[1] / 3) % h != 0 {
        bail!("QKV width {} is not 3 × a multiple of {h} heads", ws[1]);
    }
    let hidden = ws[1] / 3;
    let d = hidden / h;
    let bias = if present(n, 2) {
        let b = &n.input[2];
        if !ctx.is_const(b) || ctx.const_shape(b)? != [ws[1]] {
            bail!("QKV bias is not a constant of {} values", ws[1]);
        }
        Some(WeightUse { node: ni, slot: 2, axis: 0 })
    } else {
        None
    };
    let out = out_projection(ctx, ni, hidden)?;
    let mut attrs = vec![AttrRule::Heads(ni, "num_heads")];
    if attr(n, "qkv_hidden_sizes").is_some() {
        attrs.push(AttrRule::HiddenSizes(ni, "qkv_hidden_sizes", vec![d, d, d]));
    }
    Ok(Block {
        id: node_label(n),
        kind: "com.microsoft Attention",
        members: vec![node_label(n), node_label(&ctx.g.node[out.node])],
        heads: h,
        kv_heads: h,
        head_dim: d,
        v_head_dim: d,
        projs: vec![Projection {
            weight: WeightUse { node: ni, slot: 1, axis: 1 },
            bias,
            parts: 3,
            heads: h,
            head_dim: d,
            prune: true,
        }],
        v_proj: (0, 2),
        out,
        path: None,
        attrs,
        fused_bias: None,
        notes: vec![],
    })
    .and_then(|b| check_heads(b, h))
}

fn check_heads(b: Block, h: usize) -> Result<Block> {
    if h < 2 {
        bail!("{h} head: nothing to prune");
    }
    Ok(b)
}

/// A projection feeding input `slot` of `ni` directly (MatMul/Gemm, optional bias Add), read
/// by nothing else.
fn direct_projection(ctx: &Ctx, ni: usize, slot: usize, what: &str) -> Result<Found> {
    let v = ctx.g.node[ni].input.get(slot).filter(|s| !s.is_empty()).with_context(|| format!("no {what} input"))?;
    let &p = ctx.ix.producer.get(v).with_context(|| format!("{what} is not computed by a projection"))?;
    let f = match projection_at(ctx, p, v)? {
        Some(f) => Some(f),
        None if ctx.g.node[p].op_type == "Add" => biased_projection(ctx, p)?,
        None => None,
    };
    let f = f.with_context(|| format!("{what} is not computed directly by a constant-weight projection"))?;
    if ctx.ix.consumers_of(v).len() != 1 || ctx.ix.outputs.contains(v) {
        bail!("{what} projection output is used elsewhere too");
    }
    Ok(f)
}

fn proj(f: &Found, heads: usize, head_dim: usize, prune: bool) -> Projection {
    Projection { weight: f.weight, bias: f.bias, parts: 1, heads, head_dim, prune }
}

fn members(ctx: &Ctx, ni: usize, fs: &[&Found], out: WeightUse) -> Vec<String> {
    let mut ids: Vec<usize> = vec![ni, out.node];
    for f in fs {
        ids.push(f.node);
        ids.extend(f.bias.map(|b| b.node));
    }
    ids.sort_unstable();
    ids.dedup();
    ids.iter().map(|&i| node_label(&ctx.g.node[i])).collect()
}

/// com.microsoft MultiHeadAttention with separate query, key, value inputs (3-D).
fn ms_mha(ctx: &Ctx, ni: usize) -> Result<Block> {
    let n = &ctx.g.node[ni];
    let h = positive_attr(n, "num_heads")?;
    if (5..n.input.len()).any(|s| present(n, s)) || used_output(ctx, n, 1) || used_output(ctx, n, 2) {
        bail!("attention bias, past/present key-value or extra inputs are used");
    }
    let fq = direct_projection(ctx, ni, 0, "query")?;
    let fk = direct_projection(ctx, ni, 1, "key")?;
    let fv = direct_projection(ctx, ni, 2, "value")?;
    if fq.width != fk.width || fq.width % h != 0 || fv.width % h != 0 {
        bail!("query/key/value widths {}/{}/{} do not split into {h} heads", fq.width, fk.width, fv.width);
    }
    let (d, dv) = (fq.width / h, fv.width / h);
    let fused_bias = if present(n, 3) {
        let b = &n.input[3];
        if d != dv || !ctx.is_const(b) || ctx.const_shape(b)? != [3 * fq.width] {
            bail!("bias input is not a constant [3·hidden]");
        }
        Some(WeightUse { node: ni, slot: 3, axis: 0 })
    } else {
        None
    };
    let out = out_projection(ctx, ni, fv.width)?;
    check_heads(
        Block {
            id: node_label(n),
            kind: "com.microsoft MultiHeadAttention",
            members: members(ctx, ni, &[&fq, &fk, &fv], out),
            heads: h,
            kv_heads: h,
            head_dim: d,
            v_head_dim: dv,
            projs: vec![proj(&fq, h, d, true), proj(&fk, h, d, true), proj(&fv, h, dv, true)],
            v_proj: (2, 0),
            out,
            path: None,
            attrs: vec![AttrRule::Heads(ni, "num_heads")],
            fused_bias,
            notes: vec![],
        },
        h,
    )
}

/// Rank and head-axis size of an attention mask, when known without running the model.
fn mask_shape(ctx: &Ctx, name: &str) -> Option<Vec<Option<i64>>> {
    if let Some(t) = ctx.resolve_const(name) {
        return Some(t.dims.iter().map(|&d| Some(d)).collect());
    }
    if let Some(pr) = &ctx.probes {
        if let Some(s) = pr[0].shapes.get(name) {
            return Some(s.iter().map(|&d| Some(d as i64)).collect());
        }
    }
    let g = ctx.g;
    let vi = g.input.iter().chain(g.value_info.iter()).find(|v| v.name == name)?;
    let tt = vi.type_.as_ref().filter(|t| t.has_tensor_type())?.tensor_type();
    let sh = tt.shape.as_ref()?;
    Some(sh.dim.iter().map(|d| if d.has_dim_value() { Some(d.dim_value()) } else { None }).collect())
}

/// ONNX Attention (opset 23) with 3-D Q/K/V from projections.
fn onnx_attention(ctx: &Ctx, ni: usize) -> Result<Block> {
    let n = &ctx.g.node[ni];
    if attr_i(n, "q_num_heads").is_none() && attr_i(n, "kv_num_heads").is_none() {
        // 4-D Q/K/V: the heads are axis 1 of tensors reshaped from the projections.
        return super::matmul::analyse_onnx_4d(ctx, ni);
    }
    let hq = positive_attr(n, "q_num_heads")?;
    let hkv = positive_attr(n, "kv_num_heads")?;
    if hq % hkv != 0 {
        bail!("q_num_heads {hq} is not a multiple of kv_num_heads {hkv}");
    }
    let gqa = hkv != hq;
    if used_output(ctx, n, 3) {
        bail!("qk_matmul_output is used (per-head shape)");
    }
    if !gqa && (present(n, 4) || present(n, 5) || used_output(ctx, n, 1) || used_output(ctx, n, 2)) {
        bail!("past/present key-value state would change shape");
    }
    if (6..n.input.len()).any(|s| present(n, s)) {
        bail!("inputs after past_value are not supported");
    }
    if present(n, 3) {
        let m = &n.input[3];
        match mask_shape(ctx, m) {
            Some(s) if s.len() < 3 => {}
            Some(s) if s[s.len() - 3] == Some(1) => {}
            Some(s) => bail!("attention mask '{m}' of shape {s:?} may vary per head"),
            None => bail!("attention mask '{m}' of unknown shape"),
        }
    }
    let fq = direct_projection(ctx, ni, 0, "Q")?;
    let fk = direct_projection(ctx, ni, 1, "K")?;
    let fv = direct_projection(ctx, ni, 2, "V")?;
    if fq.width % hq != 0 || fk.width % hkv != 0 || fv.width % hkv != 0 || fq.width / hq != fk.width / hkv {
        bail!(
            "Q/K/V widths {}/{}/{} do not split into {hq}/{hkv}/{hkv} heads of one size",
            fq.width,
            fk.width,
            fv.width
        );
    }
    let (d, dv) = (fq.width / hq, fv.width / hkv);
    let out = out_projection(ctx, ni, hq * dv)?;
    let mut attrs = vec![AttrRule::Heads(ni, "q_num_heads"), AttrRule::KvHeads(ni, "kv_num_heads")];
    let mut notes = vec![];
    if gqa {
        notes.push(format!(
            "grouped-query attention ({hq} query heads, {hkv} KV heads): query heads are dropped evenly from every KV group; K and V are kept whole"
        ));
        attrs.retain(|a| !matches!(a, AttrRule::KvHeads(..)));
    }
    check_heads(
        Block {
            id: node_label(n),
            kind: "ONNX Attention",
            members: members(ctx, ni, &[&fq, &fk, &fv], out),
            heads: hq,
            kv_heads: hkv,
            head_dim: d,
            v_head_dim: dv,
            projs: vec![proj(&fq, hq, d, true), proj(&fk, hkv, d, !gqa), proj(&fv, hkv, dv, !gqa)],
            v_proj: (2, 0),
            out,
            path: None,
            attrs,
            fused_bias: None,
            notes,
        },
        hq,
    )
}
