//! MatMul attention, stage 2: the shape plumbing for a new head count. Given a block whose flood
//! recorded the Reshape / Split / Slice nodes on its path, compute the new integer operands
//! (Reshape targets, split sizes, slice bounds) for `h_new` kept heads, checked at both probe
//! sizes, and refuse when a head-dependent count escapes the path.

use super::*;

/// The operand edits that make the block's path consistent with `h_new` heads, for both probe
/// sizes; an error when a shape operand cannot be made to follow.
#[allow(clippy::needless_range_loop)]
pub fn plan(ctx: &Ctx, b: &Block, h_new: usize) -> Result<(Vec<Edit>, Vec<String>)> {
    let info = b.path.as_ref().context("not a MatMul block")?;
    let probes = ctx.probes.as_ref().context("no shape analysis")?;
    let h = info.heads;
    let mut evals: Vec<[Eval; 2]> = Vec::new();
    for pr in probes.iter() {
        evals.push([
            Eval::new(ctx.g, ctx.ix, &pr.shapes, &info.head_axis, h, h, ctx.opset),
            Eval::new(ctx.g, ctx.ix, &pr.shapes, &info.head_axis, h, h_new, ctx.opset),
        ]);
    }
    // World 0 must reproduce what tract computed: a cross-check of our shape arithmetic.
    let check_w0 = |evals: &mut Vec<[Eval; 2]>, name: &str| -> Result<()> {
        for (p, pr) in probes.iter().enumerate() {
            let v = evals[p][0].eval(name)?;
            if let (Some(t), Ok(ours)) = (pr.ints.get(name), v.ints()) {
                if t.as_slice() != ours {
                    bail!("shape arithmetic disagrees with tract on '{name}': {ours:?} vs {t:?}");
                }
            }
        }
        Ok(())
    };
    let mut edits = Vec::new();
    let mut notes = Vec::new();
    for &ni in &info.reshapes {
        let n = &ctx.g.node[ni];
        let target = n.input.get(1).context("Reshape without a shape")?;
        check_w0(&mut evals, target)?;
        let allowzero = attr_i(n, "allowzero").unwrap_or(0) != 0;
        let mut ok = true;
        let mut req = Vec::new();
        let mut ins = Vec::new();
        let mut cur = Vec::new();
        for p in 0..2 {
            let want = evals[p][1].shape_of(&n.output[0])?;
            let inp = evals[p][1].shape_of(&n.input[0])?;
            let t = evals[p][1].eval(target)?.ints()?.to_vec();
            ok &= resolve(&t, &inp, allowzero).as_deref() == Some(want.as_slice());
            req.push(want);
            ins.push(inp);
            cur.push(t);
        }
        if ok {
            continue;
        }
        // Prefer rewriting only the pieces of a Concat-built target that hold H (a Constant
        // [4] → [3], or a run-time hidden size → the new width); else a new constant target.
        match concat_pieces(ctx, &mut evals, target, &cur, &req, &ins, allowzero) {
            Some(piece_edits) => edits.extend(piece_edits),
            None => {
                let vals = express(&req, &ins, allowzero).with_context(|| format!("Reshape '{}'", node_label(n)))?;
                edits.push(Edit::Input { node: ni, slot: 1, vals, int32: false });
            }
        }
    }
    for &(ni, ax) in &info.splits {
        let n = &ctx.g.node[ni];
        let third = |p: usize, evals: &Vec<[Eval; 2]>| -> Result<i64> {
            Ok((evals[p][1].shape_of(&n.input[0])?[ax] / 3) as i64)
        };
        let want = vec![third(0, &evals)?; 3];
        if third(1, &evals)? != want[0] {
            bail!("Split sizes depend on the input size");
        }
        if let Some(s) = n.input.get(1).filter(|s| !s.is_empty()) {
            let cur = evals[0][1].eval(s)?.ints()?.to_vec();
            if cur != want {
                edits.push(Edit::Input { node: ni, slot: 1, vals: want, int32: false });
            }
        } else if attr_ints(n, "split").is_some() {
            edits.push(Edit::AttrInts { node: ni, name: "split", vals: want });
        }
    }
    for &(ni, ax, part) in &info.slices {
        let n = &ctx.g.node[ni];
        let dim = evals[0][1].shape_of(&n.input[0])?[ax];
        if evals[1][1].shape_of(&n.input[0])?[ax] != dim {
            bail!("Slice bounds depend on the input size");
        }
        let w = (dim / 3) as i64;
        let (s, e) = (w * part as i64, w * (part as i64 + 1));
        let cs = evals[0][1].eval(&n.input[1])?.ints()?.to_vec();
        let ce = evals[0][1].eval(&n.input[2])?.ints()?.to_vec();
        if clamp_range(cs[0], ce[0], dim) != (s as usize, e as usize) {
            // starts, ends, axes and steps share one index type.
            let int32 = n.input.iter().skip(1).filter_map(|i| ctx.resolve_const(i)).any(|t| t.data_type == dt::INT32);
            edits.push(Edit::Input { node: ni, slot: 1, vals: vec![s], int32 });
            edits.push(Edit::Input { node: ni, slot: 2, vals: vec![e], int32 });
        }
    }
    for &(ni, slot) in &info.fixed_operands {
        let name = &ctx.g.node[ni].input[slot];
        let mut evaluated = true;
        for pair in evals.iter_mut() {
            let [e0, e1] = pair;
            match (e0.eval(name), e1.eval(name)) {
                (Ok(a), Ok(b)) if a == b => {}
                (Ok(_), Ok(_)) => {
                    bail!("'{name}' (operand of '{}') changes with the head count", node_label(&ctx.g.node[ni]))
                }
                // Not shape arithmetic (a mask, an input-derived tensor): it cannot depend on
                // the head count unless it reads the shape of an attention tensor.
                (Err(_), _) | (_, Err(_)) => {
                    evaluated = false;
                    if depends_on(ctx, name, &info.head_axis) {
                        bail!("'{name}' depends on an attention tensor's shape in a way we cannot evaluate");
                    }
                }
            }
        }
        if evaluated {
            check_w0(&mut evals, name)?;
            if depends_on(ctx, name, &info.head_axis) {
                notes.push(format!(
                    "'{name}' (operand of '{}') is computed at run time from the attention shapes: checked unchanged with fewer heads",
                    node_label(&ctx.g.node[ni])
                ));
            }
        }
    }
    check_escapes(ctx, info)?;
    Ok((edits, notes))
}

/// Edits of single-element pieces of the Concat producing `target` (read by nothing else)
/// that make it resolve to `req` for both probes; `None` when that is not possible.
#[allow(clippy::too_many_arguments)]
fn concat_pieces(
    ctx: &Ctx,
    evals: &mut [[Eval; 2]],
    target: &str,
    cur: &[Vec<i64>],
    req: &[Vec<usize>],
    ins: &[Vec<usize>],
    allowzero: bool,
) -> Option<Vec<Edit>> {
    let &ci = ctx.ix.producer.get(target)?;
    let c = &ctx.g.node[ci];
    if c.op_type != "Concat"
        || !is_default(c)
        || ctx.ix.consumers_of(target).len() != 1
        || ctx.ix.outputs.contains(target)
    {
        return None;
    }
    // Output position → Concat input slot, from the pieces' lengths.
    let mut slot_of = Vec::new();
    for (k, inp) in c.input.iter().enumerate() {
        let v = evals[0][0].eval(inp).ok()?;
        slot_of.extend(std::iter::repeat_n(k, v.ints().ok()?.len()));
    }
    let rank = cur[0].len();
    if slot_of.len() != rank || cur[1].len() != rank || req[0].len() != rank {
        return None;
    }
    let mut fixed = cur.to_vec();
    let mut edits = Vec::new();
    for i in 0..rank {
        let adapts = cur[0][i] == -1 || (cur[0][i] == 0 && !allowzero);
        if adapts || (0..2).all(|p| cur[p][i] == req[p][i] as i64) {
            continue;
        }
        let k = slot_of[i];
        // Only a one-element piece holding a size that is the same for both probes.
        if req[0][i] != req[1][i] || slot_of.iter().filter(|&&s| s == k).count() != 1 {
            return None;
        }
        fixed[0][i] = req[0][i] as i64;
        fixed[1][i] = req[1][i] as i64;
        edits.push(Edit::Input { node: ci, slot: k, vals: vec![req[0][i] as i64], int32: false });
    }
    let good = (0..2).all(|p| resolve(&fixed[p], &ins[p], allowzero).as_deref() == Some(req[p].as_slice()));
    (good && !edits.is_empty()).then_some(edits)
}

/// Resolve a Reshape target (0 = copy, -1 = infer) against an input shape.
fn resolve(t: &[i64], input: &[usize], allowzero: bool) -> Option<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(t.len());
    let mut infer = None;
    for (i, &v) in t.iter().enumerate() {
        match v {
            0 if !allowzero => out.push(*input.get(i)?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            v if v >= 0 => out.push(v as usize),
            _ => return None,
        }
    }
    if let Some(i) = infer {
        let rest: usize = out.iter().product();
        if rest == 0 || !total.is_multiple_of(rest) {
            return None;
        }
        out[i] = total / rest;
    }
    (out.iter().product::<usize>() == total).then_some(out)
}

/// A constant Reshape target giving `req[p]` from `ins[p]` for both probes: copy (0) a dim
/// that follows the input, a constant where the size is fixed, -1 for at most one other.
#[allow(clippy::needless_range_loop)]
fn express(req: &[Vec<usize>], ins: &[Vec<usize>], allowzero: bool) -> Result<Vec<i64>> {
    let rank = req[0].len();
    if req[1].len() != rank {
        bail!("rank depends on the input size");
    }
    let mut vals = Vec::with_capacity(rank);
    let mut inferred = false;
    for i in 0..rank {
        let copies = !allowzero && (0..2).all(|p| ins[p].get(i) == Some(&req[p][i]));
        if copies && req[0][i] != 0 {
            vals.push(0);
        } else if req[0][i] == req[1][i] {
            vals.push(req[0][i] as i64);
        } else if !inferred {
            inferred = true;
            vals.push(-1);
        } else {
            bail!("two dims follow the input size and cannot be copied: no constant target expresses the new shape");
        }
    }
    for p in 0..2 {
        if resolve(&vals, &ins[p], allowzero).as_deref() != Some(req[p].as_slice()) {
            bail!("the constant target {vals:?} does not give {:?}", req[p]);
        }
    }
    Ok(vals)
}

/// Does `name` (transitively) read the shape of a tracked tensor?
fn depends_on(ctx: &Ctx, name: &str, tracked: &HashMap<String, usize>) -> bool {
    let mut stack = vec![name.to_string()];
    let mut seen = BTreeSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v.clone()) || seen.len() > 4096 {
            continue;
        }
        let Some(&p) = ctx.ix.producer.get(&v) else { continue };
        let n = &ctx.g.node[p];
        if n.op_type == "Shape" && n.input.first().is_some_and(|i| tracked.contains_key(i)) {
            return true;
        }
        stack.extend(n.input.iter().filter(|i| !i.is_empty()).cloned());
    }
    false
}

/// Values computed from the shape of an attention tensor may only feed path nodes (where they
/// were checked) or more shape arithmetic; anything else would see a different value.
fn check_escapes(ctx: &Ctx, info: &PathInfo) -> Result<()> {
    const SHAPE_OPS: &[&str] = &[
        "Gather",
        "Slice",
        "Concat",
        "Unsqueeze",
        "Squeeze",
        "Reshape",
        "Cast",
        "Mul",
        "Div",
        "Add",
        "Sub",
        "Mod",
        "Sqrt",
        "Identity",
        "Neg",
        "Floor",
        "Ceil",
        "Reciprocal",
        "Abs",
        "Max",
        "Min",
        "Pow",
    ];
    let mut stack: Vec<String> = Vec::new();
    for (ni, n) in ctx.g.node.iter().enumerate() {
        if n.op_type == "Shape" && n.input.first().is_some_and(|i| info.head_axis.contains_key(i)) {
            let _ = ni;
            stack.extend(n.output.iter().cloned());
        }
    }
    let mut seen = BTreeSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v.clone()) {
            continue;
        }
        if ctx.ix.outputs.contains(&v) || ctx.ix.captured.contains(&v) {
            bail!("'{v}', computed from an attention tensor's shape, leaves the graph");
        }
        for &(c, _) in ctx.ix.consumers_of(&v) {
            let cn = &ctx.g.node[c];
            if info.nodes.contains(&c) {
                continue;
            }
            if !is_default(cn) || !SHAPE_OPS.contains(&cn.op_type.as_str()) {
                bail!("'{v}', computed from an attention tensor's shape, reaches {} '{}'", cn.op_type, node_label(cn));
            }
            stack.extend(cn.output.iter().filter(|o| !o.is_empty()).cloned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_and_express() {
        assert_eq!(resolve(&[0, 0, -1, 8], &[3, 5, 24], false), Some(vec![3, 5, 3, 8]));
        assert_eq!(resolve(&[0, 0, -1, 8], &[3, 5, 24], true), None);
        let req = vec![vec![65, 9, 32], vec![65, 15, 32]];
        let ins = vec![vec![65, 3, 96], vec![65, 5, 96]];
        assert_eq!(express(&req, &ins, false).unwrap(), vec![0, -1, 32]);
        let req = vec![vec![3, 8, 24], vec![5, 8, 24]];
        let ins = vec![vec![3, 8, 3, 8], vec![5, 8, 3, 8]];
        assert_eq!(express(&req, &ins, false).unwrap(), vec![0, 0, 24]);
        assert_eq!(express(&req, &ins, true).unwrap(), vec![-1, 8, 24]);
    }
}
