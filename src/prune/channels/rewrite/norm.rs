//! Channels, stage 3 (masked model): normalisations over a pruned axis, restricted to the kept
//! positions. The pruned model normalises over the units it keeps (a LayerNormalization or
//! RMSNormalization over a narrower axis, a one-group GroupNorm over fewer channels, a ReduceMean,
//! ReduceMax or ReduceMin over fewer positions); the masked model keeps every shape, so each such
//! statistic is rewritten here to take the kept positions only, with opset-independent ops. Contract: after these rewrites the masked model computes what
//! the pruned one does whatever the removed positions hold (finite values), so masked-equivalence
//! proves the pruned model; the change of the statistics themselves is pruning error, measured
//! by fidelity.

use super::*;

/// The masked rewrite of one edit, if it is a normalisation ([`Edit::Norm`], [`Edit::SpanNorm`],
/// [`Edit::Mean`], [`Edit::Mask`]) or an extreme ([`Edit::Extreme`]) over units some of which are
/// removed; other edits are left alone.
pub(super) fn mask_normalisation(ctx: &Ctx, an: &Analysis, plan: &Plan, w: &mut Work, e: &Edit) -> Result<()> {
    if let Edit::Extreme { node, units, trailing, max } = e {
        let keep: Vec<bool> = units.iter().map(|u| plan.keeps(an, *u)).collect();
        return if keep.contains(&false) { mask_extreme(ctx, w, *node, &keep, *trailing, *max) } else { Ok(()) };
    }
    if let Edit::SpanNorm { from, node, units, trailing, scale, bias, eps } = e {
        let keep: Vec<bool> = units.iter().map(|u| plan.keeps(an, *u)).collect();
        let span = Span { from: *from, node: *node, trailing: *trailing, scale, bias, eps: *eps };
        return if keep.contains(&false) { mask_span_norm(ctx, w, &span, &keep) } else { Ok(()) };
    }
    let (node, units, trailing) = match e {
        Edit::Norm { node, units } => (*node, units, None),
        Edit::Mean { node, units, trailing } | Edit::Mask { node, units, trailing } => (*node, units, Some(*trailing)),
        _ => return Ok(()),
    };
    let keep: Vec<bool> = units.iter().map(|u| plan.keeps(an, *u)).collect();
    if !keep.contains(&false) {
        return Ok(());
    }
    match (e, trailing) {
        (Edit::Norm { .. }, _) => mask_norm(ctx, w, node, &keep),
        (Edit::Mean { .. }, Some(t)) => mask_mean(ctx, w, node, &keep, t),
        (_, Some(t)) => mask_output(ctx, w, node, &keep, t),
        _ => Ok(()),
    }
}

/// The float type of value `name`: declared, or that of the first float constant met walking
/// back through its producers (a MatMul's weight, a bias), FLOAT when none is found (a wrong guess
/// makes the masked model fail to type, so the rewrite is refused, never written unproven).
fn float_type(ctx: &Ctx, name: &str) -> i32 {
    let declared = |n: &str| {
        ctx.g.input.iter().chain(&ctx.g.value_info).chain(&ctx.g.output).find(|v| v.name == n).and_then(|v| {
            let t = v.type_.as_ref()?;
            match &t.value {
                Some(onnx_protobuf::type_proto::Value::TensorType(tt)) if tt.elem_type != 0 => Some(tt.elem_type),
                _ => None,
            }
        })
    };
    let float = |dtype: i32| matches!(dtype, dt::FLOAT | dt::DOUBLE | dt::FLOAT16 | dt::BFLOAT16);
    let mut name = name.to_string();
    for _ in 0..64 {
        if let Some(t) = declared(&name).filter(|&t| float(t)) {
            return t;
        }
        let Some(&p) = ctx.ix.producer.get(name.as_str()) else { break };
        let n = &ctx.g.node[p];
        let mut next = None;
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            match ctx.base_tensor(i) {
                Some(t) if float(t.data_type) => return t.data_type,
                Some(_) => {}
                None => next = next.or(Some(i.clone())),
            }
        }
        match next {
            Some(i) => name = i,
            None => break,
        }
    }
    dt::FLOAT
}

/// A [d, 1, …, 1] constant (`trailing` ones) of `vals` named after `label` and `what`.
fn column(w: &mut Work, dtype: i32, label: &str, what: &str, vals: &[f64], trailing: usize) -> Result<String> {
    let name = w.fresh(&format!("{label}_{what}"));
    let mut dims = vec![vals.len() as i64];
    dims.extend(std::iter::repeat_n(1, trailing));
    w.add_initializer(new_float(dtype, &name, &dims, vals)?);
    Ok(name)
}

fn new_node(w: &mut Work, label: &str, op: &str, inputs: Vec<String>, out: Option<String>) -> NodeProto {
    let o = out.unwrap_or_else(|| w.fresh(&format!("{label}_{}", op.to_lowercase())));
    let mut p = NodeProto::new();
    p.op_type = op.into();
    p.name = w.fresh(&format!("{label}_masked_{}", op.to_lowercase()));
    p.input = inputs;
    p.output = vec![o];
    p
}

fn mask_of(keep: &[bool]) -> Vec<f64> {
    keep.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect()
}

/// ReduceMean over the pruned axis ([`Edit::Mean`]): `mean(X · mask) · d / kept`, the mean of the
/// kept positions, with the node's own axes and keepdims.
fn mask_mean(ctx: &Ctx, w: &mut Work, node: usize, keep: &[bool], trailing: usize) -> Result<()> {
    let n = &ctx.g.node[node];
    let label = node_label(n);
    let x = n.input.first().cloned().context("ReduceMean without input")?;
    let y = n.output.first().cloned().context("ReduceMean without output")?;
    let kept = keep.iter().filter(|&&k| k).count();
    if kept == 0 {
        bail!("internal: ReduceMean '{label}' keeps no position");
    }
    let dtype = float_type(ctx, &x);
    let c_mask = column(w, dtype, &label, "mask", &mask_of(keep), trailing)?;
    let c_scale = column(w, dtype, &label, "mean_scale", &[keep.len() as f64 / kept as f64], 0)?;
    let xm = new_node(w, &label, "Mul", vec![x, c_mask], None);
    let mut red = n.clone();
    red.input[0] = xm.output[0].clone();
    red.output[0] = w.fresh(&format!("{label}_kept_sum"));
    let sc = new_node(w, &label, "Mul", vec![red.output[0].clone(), c_scale], Some(y));
    w.remove_nodes.insert(node);
    w.insert_after.entry(node).or_default().extend([xm, red, sc]);
    Ok(())
}

/// ReduceMax / ReduceMin over the pruned axis ([`Edit::Extreme`]): its input's removed positions
/// become the lowest (highest) finite value of the type, `X · mask + (1 − mask) · lowest`, so the
/// extreme is taken over the kept positions whatever the removed ones hold.
fn mask_extreme(ctx: &Ctx, w: &mut Work, node: usize, keep: &[bool], trailing: usize, max: bool) -> Result<()> {
    let n = &ctx.g.node[node];
    let label = node_label(n);
    let x = n.input.first().cloned().context("ReduceMax without input")?;
    if !keep.contains(&true) {
        bail!("internal: '{label}' keeps no position");
    }
    let dtype = float_type(ctx, &x);
    let lowest = match dtype {
        dt::DOUBLE => f64::MIN,
        dt::FLOAT16 => -65504.0,
        dt::BFLOAT16 => -3.3895313892515355e38,
        _ => f64::from(f32::MIN),
    };
    let fill: Vec<f64> = keep
        .iter()
        .map(|&k| {
            if k {
                0.0
            } else if max {
                lowest
            } else {
                -lowest
            }
        })
        .collect();
    let c_mask = column(w, dtype, &label, "mask", &mask_of(keep), trailing)?;
    let c_fill = column(w, dtype, &label, "fill", &fill, trailing)?;
    let xm = new_node(w, &label, "Mul", vec![x, c_mask], None);
    let xf = new_node(w, &label, "Add", vec![xm.output[0].clone(), c_fill], None);
    let mut red = n.clone();
    red.input[0] = xf.output[0].clone();
    w.remove_nodes.insert(node);
    w.insert_after.entry(node).or_default().extend([xm, xf, red]);
    Ok(())
}

/// An [`Edit::SpanNorm`]'s fields.
struct Span<'a> {
    from: usize,
    node: usize,
    trailing: usize,
    scale: &'a [f64],
    bias: &'a [f64],
    eps: f64,
}

/// The masked model's GroupNorm with one group ([`Edit::SpanNorm`]): the same normalisation over
/// the kept channels and the spatial axes, in place of its (last) node, with opset-independent ops:
/// `mean = Conv(GlobalAveragePool(X·mask), w)` (w: the [1, C, 1, …] weights mask / kept, so the
/// mean of the kept channels' spatial means), `c = (X − mean)·mask`, `var` the same of `c·c`,
/// `Y = c / √(var + ε) · scale + bias·mask` per channel; removed positions of Y are exactly 0.
fn mask_span_norm(ctx: &Ctx, w: &mut Work, span: &Span, keep: &[bool]) -> Result<()> {
    let (first, last) = (span.from, span.node);
    let label = node_label(&ctx.g.node[last]);
    let x = ctx.g.node[first].input.first().cloned().context("GroupNorm without input")?;
    let y = ctx.g.node[last].output.first().cloned().context("GroupNorm without output")?;
    let kept = keep.iter().filter(|&&k| k).count();
    if kept == 0 || span.trailing == 0 {
        bail!("internal: GroupNorm '{label}' keeps no channel or has no spatial axis");
    }
    let dtype = float_type(ctx, &x);
    let mask = mask_of(keep);
    let c_mask = column(w, dtype, &label, "mask", &mask, span.trailing)?;
    let c_scale = column(w, dtype, &label, "scale", span.scale, span.trailing)?;
    let masked_bias: Vec<f64> = span.bias.iter().zip(&mask).map(|(b, m)| b * m).collect();
    let c_bias = column(w, dtype, &label, "masked_bias", &masked_bias, span.trailing)?;
    let c_eps = column(w, dtype, &label, "epsilon", &[span.eps], 0)?;
    let c_w = w.fresh(&format!("{label}_mean_weights"));
    let mut dims = vec![1, keep.len() as i64];
    dims.extend(std::iter::repeat_n(1, span.trailing));
    let weights: Vec<f64> = mask.iter().map(|m| m / kept as f64).collect();
    w.add_initializer(new_float(dtype, &c_w, &dims, &weights)?);
    let mut nodes = vec![];
    let mut op = |w: &mut Work, op: &str, inputs: Vec<String>, out: Option<String>| -> String {
        let p = new_node(w, &label, op, inputs, out);
        let o = p.output[0].clone();
        nodes.push(p);
        o
    };
    let xm = op(w, "Mul", vec![x.clone(), c_mask.clone()], None);
    let pooled = op(w, "GlobalAveragePool", vec![xm], None);
    let mean = op(w, "Conv", vec![pooled, c_w.clone()], None);
    let diff = op(w, "Sub", vec![x, mean], None);
    let cen = op(w, "Mul", vec![diff, c_mask], None);
    let sq = op(w, "Mul", vec![cen.clone(), cen.clone()], None);
    let pooled = op(w, "GlobalAveragePool", vec![sq], None);
    let var = op(w, "Conv", vec![pooled, c_w], None);
    let ve = op(w, "Add", vec![var, c_eps], None);
    let sd = op(w, "Sqrt", vec![ve], None);
    let nrm = op(w, "Div", vec![cen, sd], None);
    let sc = op(w, "Mul", vec![nrm, c_scale], None);
    op(w, "Add", vec![sc, c_bias], Some(y));
    // Only the last node goes: the spelled-out form's Reshape and InstanceNormalization stay,
    // unread, so that the masked model still produces every value the input does.
    w.remove_nodes.insert(last);
    w.insert_after.entry(last).or_default().extend(nodes);
    Ok(())
}

/// The output of a Sub centring the units by their mean ([`Edit::Mask`]), multiplied by the keep
/// mask: removed positions hold 0.
fn mask_output(ctx: &Ctx, w: &mut Work, node: usize, keep: &[bool], trailing: usize) -> Result<()> {
    let n = &ctx.g.node[node];
    let label = node_label(n);
    let y = n.output.first().cloned().context("node without output")?;
    let dtype = float_type(ctx, &y);
    let c_mask = column(w, dtype, &label, "mask", &mask_of(keep), trailing)?;
    let mut own = n.clone();
    own.output[0] = w.fresh(&format!("{label}_unmasked"));
    let m = new_node(w, &label, "Mul", vec![own.output[0].clone(), c_mask], Some(y));
    w.remove_nodes.insert(node);
    w.insert_after.entry(node).or_default().extend([own, m]);
    Ok(())
}

/// The masked model's LayerNormalization over a pruned last axis: the same normalisation over the
/// kept positions only, written with opset-independent ops so that the masked model computes what
/// the pruned one does (its LayerNormalization over the kept units) whatever the removed
/// positions hold:
/// `mean = X·w`, `c = (X − mean)·mask`, `var = (c·c)·w`, `Y = c / √(var + ε) · scale + bias·mask`,
/// with `w` the [d, 1] column mask / kept and the removed positions of Y exactly 0. An RMS
/// normalisation (`RMSNormalization`, onnxruntime's `SimplifiedLayerNormalization`) does not
/// centre: `c = X·mask`. onnxruntime's SkipLayerNormalization normalises `X = input + skip (+
/// bias)` with gamma and beta (inputs 2 and 3), SkipSimplifiedLayerNormalization `input + skip`
/// with gamma (RMS), EmbedLayerNormalization its embedding_sum output (the tables' sum, from the
/// same node) with gamma and beta (inputs 5 and 6).
fn mask_norm(ctx: &Ctx, w: &mut Work, node: usize, keep: &[bool]) -> Result<()> {
    let n = &ctx.g.node[node];
    let label = node_label(n);
    let arg = |i: usize| n.input.get(i).cloned().filter(|s| !s.is_empty());
    let skip = matches!(n.op_type.as_str(), "SkipLayerNormalization" | "SkipSimplifiedLayerNormalization");
    let embed = n.op_type == "EmbedLayerNormalization";
    let x = arg(0).with_context(|| format!("{} without input", n.op_type))?;
    let (scale, bias) = match n.op_type.as_str() {
        "SkipLayerNormalization" => (arg(2), arg(3)),
        "SkipSimplifiedLayerNormalization" => (arg(2), None),
        "EmbedLayerNormalization" => (arg(5), arg(6)),
        _ => (arg(1), arg(2)),
    };
    let scale = scale.context("normalisation without scale")?;
    let y = n.output.first().cloned().context("normalisation without output")?;
    let dtype = ctx.base_tensor(&scale).map(|t| t.data_type).context("normalisation scale")?;
    let eps = graph::attr_f(n, "epsilon").map_or(default_epsilon(n), f64::from);
    let d = keep.len();
    let kept = keep.iter().filter(|&&k| k).count();
    if kept == 0 {
        bail!("internal: normalisation '{label}' keeps no position");
    }
    let mask = mask_of(keep);
    let mean_w: Vec<f64> = mask.iter().map(|m| m / kept as f64).collect();
    let constant = |w: &mut Work, what: &str, dims: &[i64], vals: &[f64]| -> Result<String> {
        let name = w.fresh(&format!("{label}_{what}"));
        w.add_initializer(new_float(dtype, &name, dims, vals)?);
        Ok(name)
    };
    let c_w = constant(w, "mean_weights", &[d as i64, 1], &mean_w)?;
    let c_mask = constant(w, "mask", &[d as i64], &mask)?;
    let c_eps = constant(w, "epsilon", &[], &[eps])?;
    let c_bias = match &bias {
        Some(b) => {
            let v = ctx.const_vals(b).with_context(|| format!("normalisation bias '{b}'"))?;
            let masked: Vec<f64> = v.iter().zip(&mask).map(|(b, m)| b * m).collect();
            Some(constant(w, "masked_bias", &[d as i64], &masked)?)
        }
        None => None,
    };
    let mut nodes = vec![];
    let x = if embed {
        // The op itself sums the (masked) tables into its embedding_sum output; its own
        // normalised output is left unread.
        let mut own = n.clone();
        own.output.resize(3, String::new());
        own.output[0] = w.fresh(&format!("{label}_unmasked"));
        if own.output[2].is_empty() {
            own.output[2] = w.fresh(&format!("{label}_embedding_sum"));
        }
        let sum = own.output[2].clone();
        nodes.push(own);
        sum
    } else {
        if n.output.iter().skip(1).any(|o| !o.is_empty()) {
            // Its secondary outputs (a LayerNormalization's Mean and InvStdDev; unread, or the
            // analysis would have blocked the group) are still produced by the node itself, so
            // the masked model keeps every value the input has; its normalised output is left
            // unread (found by the fuzz smoke test: "the masked model no longer produces").
            let mut own = n.clone();
            own.output[0] = w.fresh(&format!("{label}_unmasked"));
            nodes.push(own);
        }
        x
    };
    let mut op = |w: &mut Work, op: &str, inputs: Vec<String>, out: Option<String>| -> String {
        let p = new_node(w, &label, op, inputs, out);
        let o = p.output[0].clone();
        nodes.push(p);
        o
    };
    let x = if skip {
        let sum = op(w, "Add", vec![x, arg(1).context("skip normalisation without skip")?], None);
        match arg(4).filter(|_| n.op_type == "SkipLayerNormalization") {
            Some(b) => op(w, "Add", vec![sum, b], None),
            None => sum,
        }
    } else {
        x
    };
    let rms = matches!(
        n.op_type.as_str(),
        "RMSNormalization" | "SimplifiedLayerNormalization" | "SkipSimplifiedLayerNormalization"
    );
    let cen = if rms {
        op(w, "Mul", vec![x, c_mask], None)
    } else {
        let mean = op(w, "MatMul", vec![x.clone(), c_w.clone()], None);
        let diff = op(w, "Sub", vec![x, mean], None);
        op(w, "Mul", vec![diff, c_mask], None)
    };
    let sq = op(w, "Mul", vec![cen.clone(), cen.clone()], None);
    let var = op(w, "MatMul", vec![sq, c_w], None);
    let ve = op(w, "Add", vec![var, c_eps], None);
    let sd = op(w, "Sqrt", vec![ve], None);
    let nrm = op(w, "Div", vec![cen, sd], None);
    match c_bias {
        Some(b) => {
            let sc = op(w, "Mul", vec![nrm, scale], None);
            op(w, "Add", vec![sc, b], Some(y));
        }
        None => {
            op(w, "Mul", vec![nrm, scale], Some(y));
        }
    }
    w.remove_nodes.insert(node);
    w.insert_after.entry(node).or_default().extend(nodes);
    Ok(())
}

/// The epsilon a normalisation uses when it has no attribute: onnxruntime's contrib ops
/// (SkipLayerNormalization, SkipSimplifiedLayerNormalization, EmbedLayerNormalization) default to
/// 1e-12, ONNX's LayerNormalization and RMSNormalization (and onnxruntime's
/// SimplifiedLayerNormalization) to 1e-5.
fn default_epsilon(n: &NodeProto) -> f64 {
    if n.domain == "com.microsoft" {
        1e-12
    } else {
        1e-5
    }
}
