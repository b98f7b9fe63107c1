//! Head pruning, rewrite stage: turn EMP's kept heads into the pruned model (sliced weights,
//! attribute and Reshape-constant edits, committed all at once on a copy), check it with tract's
//! shape analysis, and build the masked model (the removed heads' output-projection rows zeroed).
//! Contract: the input model is never modified; a block whose staged rewrite fails the check is
//! left dense by the caller.

use super::*;
use crate::model::hollow::{big, clone_hollow, Hollow};

/// Everything one block's rewrite needs, computed (and checked) before the model is touched.
#[derive(Clone, Debug)]
pub(super) struct Staged {
    pub(super) kept: Vec<usize>,
    /// New constants for node inputs.
    pub(super) tensors: Vec<(WeightUse, NewTensor)>,
    pub(super) edits: Vec<Edit>,
    /// Values whose shape changes (their value_info is dropped).
    pub(super) stale: Vec<String>,
    /// Tracked tensors of a MatMul block → head axis, and H, for the shape check.
    pub(super) path: Option<(HashMap<String, usize>, usize)>,
}

/// A staged constant: its data, or (for a big float weight of the input, which tract's shape
/// check reads only as dims) a shell with the new dims and the slice that makes it from the
/// input's initializer `src`, done when the pruned model is filled.
#[derive(Clone, Debug)]
pub(super) enum NewTensor {
    Data(TensorProto),
    Slice { shell: TensorProto, src: usize, axis: usize, keep: Vec<usize> },
}

/// The model with every staged block committed. Its big float initializers are shells (see
/// [`crate::model::hollow`]): the input's own are never changed (a sliced weight is a new
/// initializer, the old one is dropped by [`cleanup`]), and a big sliced weight is a shell too,
/// derived from the input's tensor. tract's shape check reads only their dims (they become inputs
/// of its light copy), and the caller fills them from `model` at the end. The staged tensors are
/// moved into the model (`staged` keeps everything else).
pub(super) fn commit_all(model: &ModelProto, staged: &mut [(usize, Staged)]) -> Result<(ModelProto, Hollow)> {
    let (mut m, mut hollow) = clone_hollow(model, |t| big(t) && probe::light_input(t));
    let g = m.graph.as_mut().context("no graph")?;
    let mut names = NameGen::new(g);
    for (_, st) in staged.iter_mut() {
        for (w, nt) in std::mem::take(&mut st.tensors) {
            let t = match nt {
                NewTensor::Data(mut t) => {
                    t.name = names.fresh(&t.name);
                    t
                }
                NewTensor::Slice { mut shell, src, axis, keep } => {
                    shell.name = names.fresh(&shell.name);
                    hollow.derive(shell.name.clone(), src, vec![(axis, keep.into())]);
                    shell
                }
            };
            let n = g.node.get_mut(w.node).context("node index")?;
            *n.input.get_mut(w.slot).context("input slot")? = t.name.clone();
            g.initializer.push(t);
        }
        for e in &st.edits {
            apply_edit(g, &mut names, e)?;
        }
    }
    Ok((m, hollow))
}

/// Plan one block: new weights (sliced copies), operand and attribute edits.
pub(super) fn stage_block(ctx: &Ctx, b: &Block, kept: &[usize]) -> Result<Staged> {
    let h_new = kept.len();
    let kv_new = if b.kv_heads == b.heads { h_new } else { b.kv_heads };
    let mut edits = match &b.path {
        Some(_) => matmul::plan(ctx, b, h_new)?.0,
        None => Vec::new(),
    };
    for a in &b.attrs {
        edits.push(match a {
            AttrRule::Heads(node, name) => Edit::AttrInt { node: *node, name, val: h_new as i64 },
            AttrRule::KvHeads(node, name) => Edit::AttrInt { node: *node, name, val: kv_new as i64 },
            AttrRule::HiddenSizes(node, name, ds) => {
                Edit::AttrInts { node: *node, name, vals: ds.iter().map(|&d| (d * h_new) as i64).collect() }
            }
        });
    }
    let mut tensors = Vec::new();
    // `spec`: from the weight's dims, the (axis, kept positions) to slice, or none.
    type Spec<'s> = &'s dyn Fn(&[usize]) -> Result<Option<(usize, Vec<usize>)>>;
    let mut sliced = |w: WeightUse, spec: Spec| -> Result<()> {
        let src = weight_of(ctx, w)?;
        let name = if src.name.is_empty() { ctx.g.node[w.node].input[w.slot].clone() } else { src.name.clone() };
        let dims = tensor::shape(src).with_context(|| format!("rewriting '{name}'"))?;
        let cut = spec(&dims).with_context(|| format!("rewriting '{name}'"))?;
        if let Some((axis, keep)) = &cut {
            let mut shell = TensorProto::new();
            shell.name = name.clone();
            shell.data_type = src.data_type;
            shell.dims = src.dims.clone();
            let fits = *axis < dims.len() && keep.iter().all(|&k| k < dims[*axis]);
            if fits {
                shell.dims[*axis] = keep.len() as i64;
            }
            let at = ctx.g.initializer.iter().position(|t| std::ptr::eq(t, src));
            if let (true, Some(at)) = (fits && big(src) && probe::light_input(src) && probe::light_input(&shell), at) {
                let (axis, keep) = cut.clone().unwrap_or_default();
                tensors.push((w, NewTensor::Slice { shell, src: at, axis, keep }));
                return Ok(());
            }
        }
        let mut t = src.clone();
        t.name = name.clone();
        if let Some((axis, keep)) = cut {
            tensor::slice_axis(&mut t, axis, &keep).with_context(|| format!("rewriting '{name}'"))?;
        }
        tensors.push((w, NewTensor::Data(t)));
        Ok(())
    };
    for p in b.projs.iter().filter(|p| p.prune) {
        let cols = units(p.parts, p.heads, p.head_dim, kept);
        let n_all = p.parts * p.heads * p.head_dim;
        sliced(p.weight, &|_| Ok(Some((p.weight.axis, cols.clone()))))?;
        if let Some(bw) = p.bias {
            sliced(bw, &|sh| match sh.last() {
                Some(&n) if n == n_all => Ok(Some((sh.len() - 1, cols.clone()))),
                Some(1) | None => Ok(None),
                Some(&n) => bail!("bias of {n} values for {n_all} outputs"),
            })?;
        }
    }
    if let Some(fb) = b.fused_bias {
        let cols = units(3, b.heads, b.head_dim, kept);
        sliced(fb, &|_| Ok(Some((0, cols.clone()))))?;
    }
    let rows = units(1, b.heads, b.v_head_dim, kept);
    sliced(b.out, &|_| Ok(Some((b.out.axis, rows.clone()))))?;
    // Projection outputs, the attention output and the tracked path change shape.
    let g = ctx.g;
    let mut stale: Vec<String> = b.path.as_ref().map(|p| p.head_axis.keys().cloned().collect()).unwrap_or_default();
    for p in b.projs.iter().filter(|p| p.prune) {
        for w in std::iter::once(p.weight).chain(p.bias) {
            stale.extend(g.node[w.node].output.iter().cloned());
        }
    }
    stale.extend(g.node[b.out.node].input.first().cloned());
    let path = b.path.as_ref().map(|p| (p.head_axis.clone(), p.heads));
    Ok(Staged { kept: kept.to_vec(), tensors, edits, stale, path })
}

/// Check the committed model with tract (MatMul blocks only: fused ops have no shape plumbing).
/// `m` is [`commit_all`]'s model, `hollow` its shells, `input` what they are filled from.
pub(super) fn verify(
    ctx: &Ctx,
    m: &ModelProto,
    hollow: &Hollow,
    input: &ModelProto,
    staged: &[(usize, Staged)],
) -> Result<()> {
    #[cfg(test)]
    if let Some(b) = super::FAIL_SHAPES_OF.with(|c| c.get()) {
        if staged.iter().any(|(bi, _)| *bi == b) {
            bail!("injected failure: block {b} is committed");
        }
    }
    let checks: Vec<(&HashMap<String, usize>, usize, usize)> =
        staged.iter().filter_map(|(_, st)| st.path.as_ref().map(|(p, h)| (p, *h, st.kept.len()))).collect();
    if checks.is_empty() || ctx.probes.is_none() {
        return Ok(());
    }
    verify_shapes(ctx, m, &|| hollow.filled_copy(m, input), &checks)
}

/// tract's analysis of the rewritten model must give the expected shapes: the attention
/// tensors with H' heads, every graph output unchanged.
/// `full`: `m` with every weight's data, for the analysis tract cannot do on the light copy.
pub(super) fn verify_shapes(
    ctx: &Ctx,
    m: &ModelProto,
    full: &dyn Fn() -> Result<ModelProto>,
    checks: &[(&HashMap<String, usize>, usize, usize)],
) -> Result<()> {
    let probes = ctx.probes.as_ref().context("no probes")?;
    let g = m.graph.as_ref().context("no graph")?;
    for (p, before) in probes.iter().enumerate() {
        let after = probe::probe_or(m, p, full)?;
        for o in &g.output {
            if before.shapes.get(&o.name) != after.shapes.get(&o.name) {
                bail!(
                    "graph output '{}' changes shape: {:?} → {:?}",
                    o.name,
                    before.shapes.get(&o.name),
                    after.shapes.get(&o.name)
                );
            }
        }
        for (head_axis, h, h_new) in checks {
            for (name, &axis) in head_axis.iter() {
                let mut want = before.shapes.get(name).cloned().context("shape unknown")?;
                want[axis] = want[axis] / h * h_new;
                if after.shapes.get(name) != Some(&want) {
                    bail!("'{name}' has shape {:?}, expected {want:?}", after.shapes.get(name));
                }
            }
        }
    }
    Ok(())
}

/// The dense model with the removed heads' output-projection rows zeroed.
pub(super) fn mask_block(m: &mut ModelProto, b: &Block, kept: &[usize]) -> Result<()> {
    let removed: Vec<usize> = (0..b.heads).filter(|h| !kept.contains(h)).collect();
    let rows = units(1, b.heads, b.v_head_dim, &removed);
    let g = m.graph.as_mut().context("no graph")?;
    let mut names = NameGen::new(g);
    replace_const(g, &mut names, b.out, |t| {
        let sh = tensor::shape(t)?;
        let inner: usize = sh[b.out.axis + 1..].iter().product();
        let outer: usize = sh[..b.out.axis].iter().product();
        let dim = sh[b.out.axis];
        let mut mask = vec![false; outer * dim * inner];
        for o in 0..outer {
            for &r in &rows {
                let base = (o * dim + r) * inner;
                mask[base..base + inner].fill(true);
            }
        }
        tensor::zero_where(t, &mask)
    })
}

/// Fresh, unique tensor names.
pub(super) struct NameGen {
    used: BTreeSet<String>,
}

impl NameGen {
    fn new(g: &GraphProto) -> Self {
        let mut used: BTreeSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
        used.extend(g.node.iter().flat_map(|n| n.output.iter().cloned()));
        used.extend(g.input.iter().map(|v| v.name.clone()));
        NameGen { used }
    }
    fn fresh(&mut self, base: &str) -> String {
        let mut i = 0;
        loop {
            let n = if i == 0 { format!("{base}.heads") } else { format!("{base}.heads{i}") };
            if self.used.insert(n.clone()) {
                return n;
            }
            i += 1;
        }
    }
}

/// The constant tensor feeding `name`, following Identity nodes (by name lookups, since the
/// graph is being edited).
pub(super) fn find_const(g: &GraphProto, name: &str) -> Option<TensorProto> {
    let mut v = name.to_string();
    for _ in 0..16 {
        if g.input.iter().any(|i| i.name == v) {
            return None;
        }
        if let Some(t) = g.initializer.iter().find(|t| t.name == v) {
            return Some(t.clone());
        }
        let n = g.node.iter().find(|n| n.output.contains(&v))?;
        match n.op_type.as_str() {
            "Constant" => return crate::model::graph::attr(n, "value").and_then(|a| a.t.as_ref()).cloned(),
            "Identity" => v = n.input.first()?.clone(),
            _ => return None,
        }
    }
    None
}

/// Give `w.node` a new initializer holding `f(copy of its constant)`. The original stays for
/// its other users and is dropped by `cleanup` when nothing else reads it.
pub(super) fn replace_const(
    g: &mut GraphProto,
    names: &mut NameGen,
    w: WeightUse,
    f: impl FnOnce(&mut TensorProto) -> Result<()>,
) -> Result<()> {
    let old = g.node.get(w.node).and_then(|n| n.input.get(w.slot)).cloned().context("input slot out of range")?;
    let mut t = find_const(g, &old).with_context(|| format!("'{old}' is not a constant"))?;
    f(&mut t).with_context(|| format!("rewriting '{old}'"))?;
    let base = if t.name.is_empty() { old.clone() } else { t.name.clone() };
    t.name = names.fresh(&base);
    let name = t.name.clone();
    g.initializer.push(t);
    g.node[w.node].input[w.slot] = name;
    Ok(())
}

pub(super) fn apply_edit(g: &mut GraphProto, names: &mut NameGen, e: &Edit) -> Result<()> {
    use crate::model::graph::{set_attr_i, set_attr_ints};
    match e {
        Edit::Input { node, slot, vals, int32 } => {
            let n = g.node.get(*node).context("node index")?;
            let base = format!("{}.in{}", node_label(n), slot);
            let mut t = TensorProto::new();
            t.name = names.fresh(&base);
            t.dims = vec![vals.len() as i64];
            if *int32 {
                t.data_type = dt::INT32;
                t.raw_data = vals.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect();
            } else {
                t.data_type = dt::INT64;
                t.raw_data = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            }
            let name = t.name.clone();
            g.initializer.push(t);
            let n = g.node.get_mut(*node).context("node index")?;
            *n.input.get_mut(*slot).context("input slot")? = name;
        }
        Edit::AttrInts { node, name, vals } => set_attr_ints(g.node.get_mut(*node).context("node index")?, name, vals),
        Edit::AttrInt { node, name, val } => set_attr_i(g.node.get_mut(*node).context("node index")?, name, *val),
    }
    Ok(())
}

/// Drop what our rewiring orphaned (old weights, old shape plumbing), never what was already
/// unused in the input model; drop value_info of values that no longer exist or changed.
pub(super) fn cleanup(orig: &ModelProto, m: &mut ModelProto, stale: &BTreeSet<String>) -> Result<()> {
    let og = orig.graph.as_ref().context("no graph")?;
    let g = m.graph.as_mut().context("no graph")?;
    crate::model::graph::drop_orphans(og, g);
    let mut live: BTreeSet<String> = g.node.iter().flat_map(|n| n.output.iter().cloned()).collect();
    live.extend(g.initializer.iter().map(|t| t.name.clone()));
    live.extend(g.input.iter().map(|t| t.name.clone()));
    g.value_info.retain(|v| live.contains(&v.name) && !stale.contains(&v.name));
    Ok(())
}
