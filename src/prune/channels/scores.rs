//! Channels, stage 2 (scores): one score per unit from the producing weights (L2 by default,
//! L1, or calibration activations), read streaming from the tensors. Contract: every unit of a
//! scored tensor gets a finite score, or the run fails naming the tensor and the flat index of
//! the first non-finite value; [`dense`] is the one reader of a constant's values as the nodes
//! see them (a quantized weight dequantized), shared with the rewrite.

use super::*;

/// Sum over every element of `vals` (row-major `dims`) into its index along `axis`.
fn per_position(vals: &[f64], dims: &[usize], axis: usize, f: impl Fn(f64) -> f64) -> Vec<f64> {
    let inner: usize = dims[axis + 1..].iter().product();
    let d = dims[axis];
    let mut out = vec![0.0; d];
    for (i, v) in vals.iter().enumerate() {
        out[(i / inner) % d] += f(*v);
    }
    out
}

/// [`per_position`] of a weight's values as [`dense`] reads them, streamed from the tensor
/// (no f64 copy of it). Errors on a non-finite value, naming it.
pub(super) fn position_sums(ctx: &Ctx, name: &str, axis: usize, f: impl Fn(f64) -> f64) -> Result<Vec<f64>> {
    let non_finite = |i: usize, v: f64| {
        anyhow::anyhow!("weight '{name}' holds a non-finite value ({v}) at flat index {i}: cannot score its units")
    };
    if ctx.consts.get(name).is_some_and(|c| c.dq.is_some()) {
        let (v, dims) = dense(ctx, name)?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(non_finite(i, v[i]));
        }
        return Ok(per_position(&v, &dims, axis, f));
    }
    let t = ctx.base_tensor(name).with_context(|| format!("weight '{name}' not found"))?;
    let dims = ctx.dims(name).unwrap_or_default().to_vec();
    let n: usize = dims.iter().product();
    let (inner, d) = (dims[axis + 1..].iter().product::<usize>(), dims[axis]);
    let mut out = vec![0.0; d];
    let (mut i, mut bad) = (0usize, None);
    tensor::for_each_f64(t, |v| {
        if bad.is_none() && !v.is_finite() {
            bad = Some((i, v));
        }
        if i < n {
            out[(i / inner) % d] += f(v);
        }
        i += 1;
    })
    .with_context(|| format!("weight '{name}'"))?;
    if i != n {
        bail!("weight '{name}': {i} values for dims {dims:?}");
    }
    if let Some((i, v)) = bad {
        return Err(non_finite(i, v));
    }
    Ok(out)
}

/// Dense f64 data of a constant as the nodes see it (dims of the alias, data of the base).
pub(super) fn dense(ctx: &Ctx, name: &str) -> Result<(Vec<f64>, Vec<usize>)> {
    let t = ctx.base_tensor(name).with_context(|| format!("weight '{name}' not found"))?;
    let v = if ctx.consts.get(name).is_some_and(|c| c.dq.is_some()) {
        ctx.const_vals(name).with_context(|| format!("quantized weight '{name}'"))?
    } else {
        tensor::read_f64(t).with_context(|| format!("weight '{name}'"))?
    };
    let dims = ctx.dims(name).unwrap_or_default().to_vec();
    if v.len() != dims.iter().product::<usize>() {
        bail!("weight '{name}': {} values for dims {dims:?}", v.len());
    }
    Ok((v, dims))
}

/// Values whose calibration statistics `Criterion::Activation` needs: the input of every
/// consumer that contracts a tracked axis, with that axis.
pub fn activation_requests(model: &ModelProto) -> Result<BTreeMap<String, i64>> {
    let g = model.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    let ctx = Ctx::new(g, &ix, groups::default_opset(&model.opset_import))?;
    let an = dead::analysis(&ctx)?;
    let mut req = BTreeMap::new();
    for c in &an.consumers {
        if let Some(v) = g.node.get(c.node).and_then(|n| n.input.first()) {
            if let Some(t) = an.tracks.get(v) {
                req.insert(v.clone(), t.axis as i64);
            }
        }
    }
    Ok(req)
}

/// Activation criterion: for each unit, Σ over its consumers of mean|x_p| over the calibration
/// set times ‖W_in[:, p]‖₂ (the unit's outgoing weights) — how much signal the unit actually
/// sends downstream. Units no consumer reads score 0.
pub(super) fn activation_scores(ctx: &Ctx, an: &Analysis, opts: &StructOptions) -> Result<BTreeMap<Unit, f64>> {
    let mut acc: BTreeMap<Unit, f64> = BTreeMap::new();
    for s in an.slices.values().filter(|s| s.roles.contains(&Role::Producer)) {
        for u in s.units.iter().flatten() {
            acc.entry(an.find(*u)).or_default();
        }
    }
    for c in &an.consumers {
        let Some(v) = ctx.g.node.get(c.node).and_then(|n| n.input.first()) else { continue };
        let Some(slice) = an.slices.values().find(|s| s.weight == c.weight && s.roles.contains(&Role::Consumer)) else {
            continue;
        };
        let stats = opts.activation(v)?;
        let mean = stats.mean_abs();
        if mean.len() != c.units.len() {
            bail!(
                "value '{v}': {} calibrated features but {} weight positions in '{}'",
                mean.len(),
                c.units.len(),
                c.weight
            );
        }
        let (w, dims) = dense(ctx, &c.weight)?;
        let norms: Vec<f64> = match grouped_input(ctx, c.node, &dims, slice.axis, c.units.len()) {
            // Input channel p of a grouped Conv is read by its group's filters only, at p % C/g.
            Some(g) => {
                let (og, cg, k) = (dims[0] / g, dims[1], dims[2..].iter().product::<usize>());
                (0..c.units.len())
                    .map(|p| {
                        let grp = p / cg;
                        (grp * og..(grp + 1) * og)
                            .flat_map(|o| w[(o * cg + p % cg) * k..(o * cg + p % cg + 1) * k].iter())
                            .map(|x| x * x)
                            .sum::<f64>()
                            .sqrt()
                    })
                    .collect()
            }
            None => per_position(&w, &dims, slice.axis, |x| x * x).into_iter().map(f64::sqrt).collect(),
        };
        if norms.len() != c.units.len() {
            bail!("weight '{}': {} positions on its input axis, {} expected", c.weight, norms.len(), c.units.len());
        }
        for (p, u) in c.units.iter().enumerate() {
            if let Some(u) = u {
                *acc.entry(an.find(*u)).or_default() += mean[p] * norms[p];
            }
        }
    }
    if let Some((u, v)) = acc.iter().find(|(_, v)| !v.is_finite()) {
        bail!("activation score of unit {u} is {v}");
    }
    Ok(acc)
}

/// The group count of a Conv consumer (node `ni`, weight `dims` read on `axis` 1) whose `units`
/// input channels are `group` times its weight's C/g: None for anything else.
fn grouped_input(ctx: &Ctx, ni: usize, dims: &[usize], axis: usize, units: usize) -> Option<usize> {
    let n = ctx.g.node.get(ni).filter(|n| n.op_type == "Conv")?;
    let g = crate::model::graph::attr_i(n, "group").filter(|&g| g > 1)? as usize;
    (axis == 1 && dims.len() >= 3 && dims[1] * g == units && dims[0].is_multiple_of(g)).then_some(g)
}

pub(super) fn unit_scores(ctx: &Ctx, an: &Analysis, crit: Criterion) -> Result<BTreeMap<Unit, f64>> {
    let mut acc: BTreeMap<Unit, f64> = BTreeMap::new();
    for (key, s) in an.slices.iter().filter(|(_, s)| s.roles.contains(&Role::Producer)) {
        let read;
        let pos: &[f64] = match (crit, an.producer_sq.get(key)) {
            (Criterion::L1, _) => {
                read = position_sums(ctx, &s.weight, s.axis, f64::abs)?;
                &read
            }
            (_, Some(sq)) => sq,
            _ => {
                read = position_sums(ctx, &s.weight, s.axis, |x| x * x)?;
                &read
            }
        };
        for (p, u) in s.units.iter().enumerate() {
            if let Some(u) = u {
                *acc.entry(an.find(*u)).or_default() += pos[p];
            }
        }
    }
    if crit == Criterion::L2 {
        acc.values_mut().for_each(|v| *v = v.sqrt());
    }
    for (u, v) in &acc {
        if !v.is_finite() {
            bail!("unit score overflow for unit {u} (weights too large to score)");
        }
    }
    Ok(acc)
}
