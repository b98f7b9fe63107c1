//! Channels, stage 3: the rewrite. Given the analysis (what is coupled) and the plan (which unit
//! classes go), produce the pruned model (every coupled tensor sliced, integer operands, `group`,
//! `hidden_size`, Split sizes, Gather indices and value_info fixed) or the masked model (same
//! shapes, removed producers zeroed). Both receive the same compensation: a removed unit's
//! constant folded into the consumer's bias (`folds`). Contract: pruned and masked compute the
//! same function (proven afterwards by masked-equivalence).

use super::*;
use crate::model::hollow::{clone_hollow, Hollow, Keep};
use std::collections::HashMap;

mod carrier;
mod norm;
pub(super) use carrier::carriers;
use carrier::{apply_carry, Carry};
use norm::mask_normalisation;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Pruned,
    Masked,
}

/// Where the compensation of one consumer goes.
struct Fold {
    node: usize,
    /// Delta per consumer output, already divided by Gemm's beta.
    delta: Vec<f64>,
    /// Positions of the consumer weight's input axis whose constant was folded.
    folded: Vec<usize>,
    weight: String,
    axis: usize,
    /// The removed dead units a kept one carries exactly (their constants left out of `delta`).
    carry: Option<Carry>,
}

/// Bias deltas from removed units' constants, computed on the dense weights.
fn folds(ctx: &Ctx, an: &Analysis, plan: &Plan) -> Result<Vec<Fold>> {
    let mut out = vec![];
    for c in &an.consumers {
        let hits: Vec<(usize, f64)> = c
            .units
            .iter()
            .enumerate()
            .filter_map(|(p, u)| match c.val(p) {
                // A through class's unit is not 0 at the masked model's border even where its
                // constant is 0: its input slice is zeroed there too.
                Val::Const(k)
                    if !plan.keeps(an, *u)
                        && (k != 0.0 || u.is_some_and(|u| an.through_classes.contains(&an.find(u)))) =>
                {
                    Some((p, k))
                }
                _ => None,
            })
            .collect();
        if hits.is_empty() {
            continue;
        }
        if let Err(e) = &c.fold {
            bail!("internal: a removed unit emits a constant into {e}");
        }
        let dims = ctx.dims(&c.weight).unwrap_or_default().to_vec();
        if dims.len() < 2 {
            bail!("weight '{}': dims {dims:?} of a consumer", c.weight);
        }
        let folded: Vec<usize> = hits.iter().map(|h| h.0).collect();
        // Dead units a kept one carries need no bias delta.
        let carry = carriers(ctx, an, plan, c, &hits);
        let hits: Vec<(usize, f64)> = match &carry {
            Some(k) => hits.into_iter().filter(|h| !k.from.iter().any(|f| f.0 == h.0)).collect(),
            None => hits,
        };
        let pos: Vec<usize> = hits.iter().map(|h| h.0).collect();
        let nh = hits.len();
        let (delta, axis) = match c.kind {
            ConsumerKind::Conv { .. } => {
                // Σ over each kernel of w[o, p, ·], per (o, hit).
                let o = dims[0];
                let sums = hit_values(ctx, &c.weight, o, dims[1], dims[2..].iter().product(), &pos, true)?;
                let mut d = vec![0.0; o];
                for (oi, dv) in d.iter_mut().enumerate() {
                    for (h, &(_, kv)) in hits.iter().enumerate() {
                        *dv += kv * sums[oi * nh + h];
                    }
                }
                (d, 1)
            }
            ConsumerKind::Gemm { trans_b, alpha, beta } => {
                let (n, kk) = if trans_b { (dims[0], dims[1]) } else { (dims[1], dims[0]) };
                // w[oi, p] (transB) or w[p, oi], per (oi, hit).
                let wv = if trans_b {
                    hit_values(ctx, &c.weight, n, kk, 1, &pos, true)?
                } else {
                    crate::reconstruct::linalg::transpose(&hit_values(ctx, &c.weight, 1, kk, n, &pos, false)?, nh, n)
                };
                let mut d = vec![0.0; n];
                for (oi, dv) in d.iter_mut().enumerate() {
                    for (h, &(_, kv)) in hits.iter().enumerate() {
                        *dv += alpha * kv * wv[oi * nh + h] / beta;
                    }
                }
                (d, if trans_b { 1 } else { 0 })
            }
            ConsumerKind::MatMul { .. } => {
                let n = dims[1];
                let wv = crate::reconstruct::linalg::transpose(
                    &hit_values(ctx, &c.weight, 1, dims[0], n, &pos, false)?,
                    nh,
                    n,
                );
                let mut d = vec![0.0; n];
                for (oi, dv) in d.iter_mut().enumerate() {
                    for (h, &(_, kv)) in hits.iter().enumerate() {
                        *dv += kv * wv[oi * nh + h];
                    }
                }
                (d, 0)
            }
        };
        // Outputs the consumer's own group removes need no compensation (and must stay untouched
        // in the masked model, where their producers are zeroed).
        let mut delta = delta;
        if let Some(src) = an.sources.get(&c.node) {
            for (o, u) in src.iter().enumerate() {
                if !plan.keeps(an, *u) {
                    delta[o] = 0.0;
                }
            }
        }
        out.push(Fold { node: c.node, delta, folded, weight: c.weight.clone(), axis, carry });
    }
    Ok(out)
}

/// The values of weight `name`, viewed as [a, b, c], at the positions `pos` of axis b, read
/// without an f64 copy of the weight (a quantized one is dequantized whole, as [`dense`] does).
/// `sum`: out[a·|pos| + h] = Σ_c w[a, pos[h], c], summed in order from `Iterator::sum`'s start
/// (as `w[..].iter().sum()` would); else (a = 1) out[h·c + j] = w[pos[h], j].
fn hit_values(ctx: &Ctx, name: &str, a: usize, b: usize, c: usize, pos: &[usize], sum: bool) -> Result<Vec<f64>> {
    let nh = pos.len();
    let mut slot = vec![usize::MAX; b];
    for (h, &p) in pos.iter().enumerate() {
        *slot.get_mut(p).with_context(|| format!("weight '{name}': position {p} of {b}"))? = h;
    }
    let zero: f64 = std::iter::empty::<f64>().sum();
    let mut out = vec![zero; if sum { a * nh } else { nh * c }];
    let n = a * b * c;
    let mut i = 0usize;
    let mut visit = |v: f64| {
        if i < n {
            let (ai, bi, ci) = (i / (b * c), (i / c) % b, i % c);
            let h = slot[bi];
            if h != usize::MAX {
                if sum {
                    out[ai * nh + h] += v;
                } else {
                    out[h * c + ci] = v;
                }
            }
        }
        i += 1;
    };
    if ctx.consts.get(name).is_some_and(|k| k.dq.is_some()) {
        dense(ctx, name)?.0.into_iter().for_each(&mut visit);
    } else {
        let t = ctx.base_tensor(name).with_context(|| format!("weight '{name}' not found"))?;
        tensor::for_each_f64(t, &mut visit).with_context(|| format!("weight '{name}'"))?;
    }
    if i != n {
        bail!("weight '{name}': {i} values for dims {a}×{b}×{c}");
    }
    Ok(out)
}

/// The working copy of the graph with a name → tensor map that survives materialisation.
struct Work<'a> {
    g: GraphProto,
    /// The input graph, and which of the copy's initializers are still shells without data.
    src: &'a GraphProto,
    hollow: Hollow,
    refs: BTreeMap<String, WeightRef>,
    names: BTreeSet<String>,
    remove_nodes: BTreeSet<usize>,
    /// New nodes to insert right after a node index.
    insert_after: BTreeMap<usize, Vec<NodeProto>>,
    /// The kept positions of each keep mask seen, shared by the shells sliced with it.
    keeps: HashMap<Vec<bool>, Keep>,
}

impl Work<'_> {
    /// A tensor of the copy to change (its data first, if it was left out of the copy).
    fn tensor(&mut self, name: &str) -> Result<&mut TensorProto> {
        let r = *self.refs.get(name).with_context(|| format!("tensor '{name}' not found"))?;
        self.hollow.fill_one(&mut self.g, self.src, name)?;
        graph::weight_mut(&mut self.g, r).with_context(|| format!("tensor '{name}' not found"))
    }

    /// Slice a tensor of the copy along `axis` to the positions kept in `keep_pos`. A tensor
    /// still hollow is sliced on its shell only: its data is sliced when it comes back.
    fn slice(&mut self, name: &str, axis: usize, keep_pos: &[bool]) -> Result<()> {
        if let Some(WeightRef::Init(i)) = self.refs.get(name) {
            if self.hollow.contains(name) {
                let dims = &self.g.initializer[*i].dims;
                if dims.get(axis) != Some(&(keep_pos.len() as i64)) {
                    bail!("tensor '{name}': axis {axis} of {dims:?} does not have {} positions", keep_pos.len());
                }
                let keep = match self.keeps.get(keep_pos) {
                    Some(k) => k.clone(),
                    None => {
                        let k: Keep = (0..keep_pos.len()).filter(|&p| keep_pos[p]).collect();
                        self.keeps.insert(keep_pos.to_vec(), k.clone());
                        k
                    }
                };
                if self.hollow.slice_later(&mut self.g, name, axis, keep)? {
                    return Ok(());
                }
            }
        }
        slice_positions(self.tensor(name)?, axis, keep_pos)
    }

    fn fresh(&mut self, base: &str) -> String {
        let mut k = 0;
        loop {
            let n = if k == 0 { format!("{base}_emp") } else { format!("{base}_emp{k}") };
            if self.names.insert(n.clone()) {
                return n;
            }
            k += 1;
        }
    }

    fn add_initializer(&mut self, t: TensorProto) {
        self.names.insert(t.name.clone());
        self.refs.insert(t.name.clone(), WeightRef::Init(self.g.initializer.len()));
        self.g.initializer.push(t);
    }
}

fn new_float(dtype: i32, name: &str, dims: &[i64], vals: &[f64]) -> Result<TensorProto> {
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.data_type = dtype;
    t.dims = dims.to_vec();
    let es = tensor::elem_size(dtype).context("bias dtype")?;
    t.raw_data = vec![0; vals.len() * es];
    tensor::write_f64(&mut t, vals)?;
    Ok(t)
}

/// Keep mask over the elements of a tensor: position along `axis` kept.
fn element_mask(dims: &[usize], axis: usize, keep_pos: &[bool]) -> Vec<bool> {
    let inner: usize = dims[axis + 1..].iter().product();
    let n: usize = dims.iter().product();
    (0..n).map(|i| keep_pos[(i / inner) % dims[axis]]).collect()
}

fn zero_positions(t: &mut TensorProto, axis: usize, keep_pos: &[bool]) -> Result<()> {
    let dims = tensor::shape(t)?;
    if dims.get(axis) != Some(&keep_pos.len()) {
        bail!("tensor '{}': axis {axis} of {:?} does not have {} positions", tensor::tname(t), dims, keep_pos.len());
    }
    let zero: Vec<bool> = element_mask(&dims, axis, keep_pos).into_iter().map(|k| !k).collect();
    tensor::zero_where(t, &zero)
}

fn slice_positions(t: &mut TensorProto, axis: usize, keep_pos: &[bool]) -> Result<()> {
    let dims = tensor::shape(t)?;
    if dims.get(axis) != Some(&keep_pos.len()) {
        bail!("tensor '{}': axis {axis} of {:?} does not have {} positions", tensor::tname(t), dims, keep_pos.len());
    }
    let keep: Vec<usize> = (0..keep_pos.len()).filter(|&p| keep_pos[p]).collect();
    tensor::slice_axis(t, axis, &keep)
}

/// The rewritten model, with the big initializers it leaves unchanged still hollow (see
/// [`crate::model::hollow`]): the caller fills them from `model`, by copy or by move.
pub(super) fn rewrite(
    model: &ModelProto,
    ctx: &Ctx,
    an: &Analysis,
    plan: &Plan,
    mode: Mode,
) -> Result<(ModelProto, Hollow)> {
    let folds = folds(ctx, an, plan)?;
    let keep_of = |units: &[Option<Unit>]| -> Vec<bool> { units.iter().map(|u| plan.keeps(an, *u)).collect() };
    // Which constants change in this mode.
    let mut changed: BTreeSet<String> = BTreeSet::new();
    for s in an.slices.values() {
        let keep = keep_of(&s.units);
        if keep.contains(&false) && (mode == Mode::Pruned || masked_keep(an, s, &keep).is_some()) {
            changed.insert(s.weight.clone());
        }
    }
    for f in &folds {
        if mode == Mode::Masked || f.carry.is_some() {
            changed.insert(f.weight.clone());
        }
        if let Some(b) = bias_name(ctx, an, f.node) {
            changed.insert(b);
        }
    }
    // Even the tensors that change are filled one at a time, when the rewrite reaches them.
    let (mut m, hollow) = clone_hollow(model, crate::model::hollow::big);
    let g = m.graph.take().context("model has no graph")?;
    let mut names: BTreeSet<String> = ctx.ix.weights.keys().cloned().collect();
    for n in &g.node {
        names.extend(n.output.iter().cloned());
        names.insert(n.name.clone());
    }
    names.extend(g.input.iter().map(|v| v.name.clone()));
    let mut w = Work {
        refs: ctx.ix.weights.clone(),
        g,
        src: ctx.g,
        hollow,
        names,
        remove_nodes: BTreeSet::new(),
        insert_after: BTreeMap::new(),
        keeps: HashMap::new(),
    };
    materialize(ctx, an, &mut w, &changed)?;

    // 1. compensation (before any slicing/zeroing: deltas index dense outputs)
    for f in &folds {
        apply_fold(ctx, an, plan, &mut w, f, mode)?;
    }
    // 2. slices
    for s in an.slices.values() {
        let keep = keep_of(&s.units);
        if !keep.contains(&false) {
            continue;
        }
        if let Some(c) = ctx.consts.get(&s.weight).filter(|c| c.dq.is_some()) {
            slice_quantized(an, &mut w, c, s, &keep, mode)?;
            continue;
        }
        match mode {
            Mode::Pruned => w.slice(&s.weight, s.axis, &keep)?,
            Mode::Masked => {
                if let Some(k) = masked_keep(an, s, &keep) {
                    zero_positions(w.tensor(&s.weight)?, s.axis, &k)?
                }
            }
        }
    }
    // 3. integer edits (pruned only: the masked model keeps every shape); in the masked model,
    // normalisations over a pruned axis restricted to the kept positions.
    if mode == Mode::Pruned {
        apply_edits(ctx, an, plan, &mut w)?;
        fix_value_info(an, plan, &mut w);
    } else {
        for e in &an.edits {
            mask_normalisation(ctx, an, plan, &mut w, e)?;
        }
    }
    // 4. node removals / insertions (last: they shift node indices)
    let old = std::mem::take(&mut w.g.node);
    for (i, n) in old.into_iter().enumerate() {
        if !w.remove_nodes.contains(&i) {
            w.g.node.push(n);
        }
        if let Some(extra) = w.insert_after.remove(&i) {
            w.g.node.extend(extra);
        }
    }
    // 5. what the edits orphaned (a computed Slice bound replaced by a constant leaves its
    // Shape → … → Mul chain unread): dropped with its value_info.
    if mode == Mode::Pruned {
        crate::model::graph::drop_orphans(ctx.g, &mut w.g);
    }
    m.graph = Some(w.g).into();
    Ok((m, w.hollow))
}

/// The existing bias constant a fold writes to, if any.
fn bias_name(ctx: &Ctx, an: &Analysis, node: usize) -> Option<String> {
    let n = &ctx.g.node[node];
    let c = an.consumers.iter().find(|c| c.node == node)?;
    match c.kind {
        ConsumerKind::MatMul { bias: Some((ai, slot)) } => ctx.g.node[ai].input.get(slot).cloned(),
        ConsumerKind::MatMul { bias: None } => None,
        _ => n.input.get(2).filter(|s| !s.is_empty()).cloned(),
    }
}

/// Give aliases (Identity / Reshape / Unsqueeze of a constant) that change, or whose source
/// changes, their own initializer, so the change does not leak to other users of the source;
/// except the `Identity` aliases of a weight whose layers are cut as one
/// ([`Analysis::shared_aliases`]), which go on reading it.
fn materialize(ctx: &Ctx, an: &Analysis, w: &mut Work, changed: &BTreeSet<String>) -> Result<()> {
    for (name, c) in &ctx.consts {
        let Some(ni) = c.alias_node else { continue };
        if an.shared_aliases.contains(name) {
            continue;
        }
        let hit = changed.contains(name) || changed.contains(&c.base) || c.chain.iter().any(|x| changed.contains(x));
        if !hit {
            continue;
        }
        let base = ctx.ix.weight(ctx.g, &c.base).with_context(|| format!("constant '{}' not found", c.base))?;
        let mut t = base.clone();
        t.name = name.clone();
        t.dims = c.dims.iter().map(|&d| d as i64).collect();
        w.add_initializer(t);
        w.remove_nodes.insert(ni);
    }
    Ok(())
}

fn apply_fold(ctx: &Ctx, an: &Analysis, plan: &Plan, w: &mut Work, f: &Fold, mode: Mode) -> Result<()> {
    let node = &ctx.g.node[f.node];
    let c = an.consumers.iter().find(|c| c.node == f.node).context("consumer")?;
    let wdtype = ctx.base_tensor(&f.weight).map(|t| t.data_type).unwrap_or(dt::FLOAT);
    if let Some(carry) = &f.carry {
        apply_carry(an, plan, w, &f.weight, f.node, carry)?;
    }
    if mode == Mode::Masked {
        // The folded constant now comes from the bias: stop it flowing through the weight.
        let n = ctx.dims(&f.weight).and_then(|d| d.get(f.axis)).copied().context("consumer weight dims")?;
        let mut keep = vec![true; n];
        for &p in &f.folded {
            if let Some(k) = keep.get_mut(p) {
                *k = false;
            }
        }
        zero_positions(w.tensor(&f.weight)?, f.axis, &keep)?;
    }
    let existing = bias_name(ctx, an, f.node);
    if let Some(b) = existing {
        let t = w.tensor(&b)?;
        let mut v = tensor::read_f64(t).with_context(|| format!("bias '{b}'"))?;
        if v.len() != f.delta.len() {
            bail!("bias '{b}' has {} values, expected {}", v.len(), f.delta.len());
        }
        v.iter_mut().zip(&f.delta).for_each(|(a, d)| *a += d);
        return tensor::write_f64(t, &v);
    }
    if f.delta.iter().all(|&d| d == 0.0) {
        // Every constant was carried (or is 0): no bias to create.
        return Ok(());
    }
    // No bias yet: create one. Its outputs belong to the consumer's own group, so the rewrite
    // slices (pruned) or zeroes (masked) it with that group's units.
    let out_units = an.sources.get(&f.node).cloned().unwrap_or_else(|| vec![None; f.delta.len()].into());
    let keep: Vec<bool> = out_units.iter().map(|u| plan.keeps(an, *u)).collect();
    let name = w.fresh(&format!("{}_bias", node.output.first().map(|s| s.as_str()).unwrap_or("bias")));
    let mut t = new_float(wdtype, &name, &[f.delta.len() as i64], &f.delta)?;
    match mode {
        Mode::Pruned => slice_positions(&mut t, 0, &keep)?,
        Mode::Masked => zero_positions(&mut t, 0, &keep)?,
    }
    w.add_initializer(t);
    match c.kind {
        ConsumerKind::MatMul { .. } => {
            // y = MatMul(..) becomes y' = MatMul(..); y = Add(y', bias).
            let y = node.output.first().context("MatMul without output")?.clone();
            let y2 = w.fresh(&y);
            let mut add = NodeProto::new();
            add.op_type = "Add".into();
            add.name = w.fresh(&format!("{}_bias", node_label(node)));
            add.input = vec![y2.clone(), name];
            add.output = vec![y];
            let mm = w.g.node.get_mut(f.node).context("node")?;
            mm.output[0] = y2;
            w.insert_after.entry(f.node).or_default().push(add);
        }
        _ => {
            let n = w.g.node.get_mut(f.node).context("node")?;
            while n.input.len() < 3 {
                n.input.push(String::new());
            }
            n.input[2] = name;
        }
    }
    Ok(())
}

/// A quantized weight (DequantizeLinear of an integer initializer): the integers are sliced (or
/// zeroed: zero points are 0, so that is an exact 0), and a per-channel scale and zero point on
/// the sliced axis with them.
fn slice_quantized(
    an: &Analysis,
    w: &mut Work,
    c: &groups::ConstInfo,
    s: &groups::WeightSlice,
    keep: &[bool],
    mode: Mode,
) -> Result<()> {
    let dq = c.dq.as_ref().context("quantized view")?;
    match mode {
        Mode::Pruned => {
            slice_positions(w.tensor(&c.base)?, s.axis, keep)?;
            if dq.axis == Some(s.axis) {
                slice_positions(w.tensor(&dq.scale)?, 0, keep)?;
                if let Some(z) = &dq.zp {
                    slice_positions(w.tensor(z)?, 0, keep)?;
                }
            }
        }
        Mode::Masked => {
            if let Some(k) = masked_keep(an, s, keep) {
                zero_positions(w.tensor(&c.base)?, s.axis, &k)?
            }
        }
    }
    Ok(())
}

/// The positions of slice `s` the masked model keeps (`keep`: the pruned model's), or None when
/// it zeroes none: producer weights and biases lose the removed positions, except the biases of
/// dead rows ([`groups::Analysis::fold_rows`]), which their consumers fold, and the weights and
/// biases of the depthwise rows that carry a dead unit's constant
/// ([`groups::Analysis::through_rows`]). Other slices are whole in the masked model.
fn masked_keep(an: &Analysis, s: &groups::WeightSlice, keep: &[bool]) -> Option<Vec<bool>> {
    let through = |p: usize| s.users.iter().any(|&(ni, _)| an.through_rows.contains(&(ni, p)));
    let k: Vec<bool> = if s.roles.contains(&Role::Producer) || s.roles.contains(&Role::ProducerBias) {
        keep.iter().enumerate().map(|(p, &k)| k || through(p)).collect()
    } else if s.roles.contains(&Role::Bias) {
        let dead = |p: usize| s.users.iter().any(|&(ni, _)| an.fold_rows.contains(&(ni, p)));
        keep.iter().enumerate().map(|(p, &k)| k || dead(p) || through(p)).collect()
    } else {
        return None;
    };
    k.contains(&false).then_some(k)
}

fn kept_count(an: &Analysis, plan: &Plan, units: &[Option<Unit>]) -> i64 {
    units.iter().filter(|u| plan.keeps(an, **u)).count() as i64
}

/// Write new values into an int constant input of a node; a private copy when it is shared.
fn write_int_input(ctx: &Ctx, w: &mut Work, node: usize, slot: usize, vals: &[i64], dims: &[i64]) -> Result<()> {
    let name = w.g.node[node].input.get(slot).cloned().context("missing input")?;
    let shared = ctx.ix.consumers_of(&name).len() != 1
        || ctx.consts.get(&name).is_none_or(|c| c.alias_node.is_some())
        || !w.refs.contains_key(&name);
    if !shared {
        let t = w.tensor(&name)?;
        return tensor::write_i64(t, vals, dims);
    }
    let base = ctx.base_tensor(&name).with_context(|| format!("constant '{name}' not found"))?;
    let mut t = base.clone();
    t.name = w.fresh(&name);
    let new = t.name.clone();
    tensor::write_i64(&mut t, vals, dims)?;
    w.add_initializer(t);
    w.g.node[node].input[slot] = new;
    Ok(())
}

fn apply_edits(ctx: &Ctx, an: &Analysis, plan: &Plan, w: &mut Work) -> Result<()> {
    // Group entry edits per target so one constant is rewritten once.
    let mut per: BTreeMap<String, (IntTarget, Vec<(usize, i64)>)> = BTreeMap::new();
    for e in &an.edits {
        match e {
            Edit::Count { target, index, units } => {
                let key = format!("{target:?}");
                per.entry(key)
                    .or_insert_with(|| (target.clone(), vec![]))
                    .1
                    .push((*index, kept_count(an, plan, units)));
            }
            Edit::Split { node, axis: _, parts } => {
                let sizes: Vec<i64> = parts.iter().map(|p| kept_count(an, plan, p)).collect();
                let old: Vec<i64> = parts.iter().map(|p| p.len() as i64).collect();
                if sizes != old {
                    set_split(ctx, w, *node, &sizes)?;
                }
            }
            Edit::Select { node, axis, units, idx, slice } => {
                select(ctx, an, plan, w, *node, *axis, units, idx, *slice)?
            }
            // The pruned normalisations have their parameters sliced and average the kept units.
            Edit::Norm { .. }
            | Edit::Mean { .. }
            | Edit::Mask { .. }
            | Edit::Extreme { .. }
            | Edit::SpanNorm { .. } => {}
            Edit::Freeze { node, slot, value, int32, units } => {
                if kept_count(an, plan, units) != units.len() as i64 {
                    feed_constant(w, *node, *slot, *value, *int32)?;
                }
            }
            Edit::ZeroState { node, slot, units } => {
                if kept_count(an, plan, units) != units.len() as i64 {
                    if let Some(i) = w.g.node[*node].input.get_mut(*slot) {
                        i.clear();
                    }
                }
            }
            Edit::Bound { node, slot, before, all } => {
                if kept_count(an, plan, all) != all.len() as i64 {
                    feed_constant(w, *node, *slot, kept_count(an, plan, before), false)?;
                }
            }
        }
    }
    for (_, (target, entries)) in per {
        match target {
            IntTarget::AttrInt(node, name) => {
                if let Some(&(_, v)) = entries.first() {
                    set_attr_i(&mut w.g.node[node], &name, v);
                }
            }
            IntTarget::AttrInts(node, name) => {
                let n = &mut w.g.node[node];
                if let Some(a) = n.attribute.iter_mut().find(|a| a.name == name) {
                    for (i, v) in entries {
                        if let Some(x) = a.ints.get_mut(i) {
                            *x = v;
                        }
                    }
                }
            }
            IntTarget::Input(node, slot) => {
                let name = ctx.g.node[node].input.get(slot).cloned().unwrap_or_default();
                let mut vals =
                    ctx.const_ints(&name).with_context(|| format!("constant '{name}' is not an integer tensor"))?;
                let before = vals.clone();
                for (i, v) in entries {
                    if let Some(x) = vals.get_mut(i) {
                        *x = v;
                    }
                }
                if vals != before {
                    let dims: Vec<i64> = ctx.base_tensor(&name).map(|t| t.dims.clone()).unwrap_or_default();
                    write_int_input(ctx, w, node, slot, &vals, &dims)?;
                }
            }
        }
    }
    Ok(())
}

/// Feed input `slot` of `node` a new one-element integer constant (int64, or int32).
fn feed_constant(w: &mut Work, node: usize, slot: usize, value: i64, int32: bool) -> Result<()> {
    let base = w.g.node[node].input.get(slot).cloned().unwrap_or_default();
    let name = w.fresh(&base);
    let mut t = tensor::new_i64(&name, &[1], &[value]);
    if int32 {
        t.int64_data.clear();
        t.data_type = dt::INT32;
        t.int32_data = vec![i32::try_from(value)?];
    }
    w.add_initializer(t);
    w.g.node[node].input[slot] = name;
    Ok(())
}

/// Gather / stepped Slice on the channel axis: keep the selected positions whose unit is kept,
/// renumbered in the pruned input. A stepped Slice becomes a Gather (kept positions are no longer
/// evenly spaced); nothing changes when no selected or earlier position is removed.
#[allow(clippy::too_many_arguments)]
fn select(
    ctx: &Ctx,
    an: &Analysis,
    plan: &Plan,
    w: &mut Work,
    node: usize,
    axis: usize,
    units: &[Option<Unit>],
    idx: &[usize],
    slice: bool,
) -> Result<()> {
    let keep: Vec<bool> = units.iter().map(|u| plan.keeps(an, *u)).collect();
    let mut newpos = vec![0i64; keep.len()];
    let mut k = 0;
    for (p, &kp) in keep.iter().enumerate() {
        newpos[p] = k;
        k += kp as i64;
    }
    let new: Vec<i64> = idx.iter().filter(|&&p| keep[p]).map(|&p| newpos[p]).collect();
    let old: Vec<i64> = idx.iter().map(|&p| p as i64).collect();
    if new == old {
        return Ok(());
    }
    if !slice {
        return write_int_input(ctx, w, node, 1, &new, &[new.len() as i64]);
    }
    let n = &ctx.g.node[node];
    let name = w.fresh(&format!("{}_indices", node_label(n)));
    w.add_initializer(tensor::new_i64(&name, &[new.len() as i64], &new));
    let data = n.input.first().cloned().context("Slice without data input")?;
    let g = &mut w.g.node[node];
    g.op_type = "Gather".into();
    g.input = vec![data, name];
    g.attribute.clear();
    set_attr_i(g, "axis", axis as i64);
    Ok(())
}

fn set_split(ctx: &Ctx, w: &mut Work, node: usize, sizes: &[i64]) -> Result<()> {
    let n = &ctx.g.node[node];
    if graph::attr(n, "split").is_some() {
        graph::set_attr_ints(&mut w.g.node[node], "split", sizes);
        return Ok(());
    }
    if n.input.get(1).is_some_and(|s| !s.is_empty()) {
        return write_int_input(ctx, w, node, 1, sizes, &[sizes.len() as i64]);
    }
    // Equal split (no sizes given): sizes must now be explicit.
    if ctx.opset < 13 {
        graph::set_attr_ints(&mut w.g.node[node], "split", sizes);
        return Ok(());
    }
    let name = w.fresh(&format!("{}_split", node_label(n)));
    w.add_initializer(tensor::new_i64(&name, &[sizes.len() as i64], sizes));
    let nm = &mut w.g.node[node];
    nm.attribute.retain(|a| a.name != "num_outputs");
    while nm.input.len() < 2 {
        nm.input.push(String::new());
    }
    nm.input[1] = name;
    Ok(())
}

/// Fix the channel dim of value_info entries of changed tensors (drop the entry when unsure), and
/// the shapes of value_info entries that describe weights (dynamo exports have them).
fn fix_value_info(an: &Analysis, plan: &Plan, w: &mut Work) {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
    use onnx_protobuf::type_proto::Value as T;
    let mut weight_dims: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for v in &w.g.value_info {
        // A shared Identity alias has its weight's shape.
        let name = an.consts.get(&v.name).filter(|_| an.shared_aliases.contains(&v.name)).map_or(&v.name, |c| &c.base);
        if let Some(r) = w.refs.get(name) {
            if let Some(t) = graph::weight(&w.g, *r) {
                weight_dims.insert(v.name.clone(), t.dims.clone());
            }
        }
    }
    w.g.value_info.retain_mut(|v| {
        if let Some(dims) = weight_dims.get(&v.name) {
            let Some(T::TensorType(tt)) = v.type_.as_mut().and_then(|t| t.value.as_mut()) else { return false };
            let Some(shape) = tt.shape.as_mut() else { return true };
            if shape.dim.len() != dims.len() {
                return false;
            }
            for (d, &n) in shape.dim.iter_mut().zip(dims) {
                d.value = Some(D::DimValue(n));
            }
            return true;
        }
        let Some(t) = an.tracks.get(&v.name) else { return true };
        let kept = kept_count(an, plan, &t.units);
        if kept == t.units.len() as i64 {
            return true;
        }
        let Some(T::TensorType(tt)) = v.type_.as_mut().and_then(|t| t.value.as_mut()) else { return false };
        let Some(shape) = tt.shape.as_mut() else { return true };
        if shape.dim.len() != t.rank {
            return false;
        }
        match shape.dim[t.axis].value.as_mut() {
            Some(D::DimValue(d)) if *d == t.units.len() as i64 => {
                *d = kept;
                true
            }
            _ => false,
        }
    });
}
