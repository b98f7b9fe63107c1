//! Dependency analysis, GroupNorm: `GroupNormalization` (opset 18: scale and bias per group;
//! opset 21: per channel) and the form exporters write for it, `Reshape [N, G, -1]` →
//! `InstanceNormalization` (scale and bias per group) → `Reshape` back to the input's shape (torch
//! below opset 21, both exporters), then the affine `Mul` and `Add` per channel.
//!
//! A group's statistics are computed over its own channels only, so removing **whole groups**
//! leaves every kept channel's output exactly as it was: the C/G channels of a group become one
//! unit (union), `num_groups` (or the first Reshape's G) becomes the kept count of groups, the
//! per-group parameters are sliced by group and the per-channel ones by channel. The channels per
//! group stay C/G, so a literal `C/G·H·W` in the first Reshape's target needs no edit; the Reshape
//! back's channel count adapts when it is read from `Shape(x)` and is edited when literal.
//!
//! With **one group** (`GroupNorm(1, C)`, a LayerNorm over the channels and the spatial axes:
//! PoolFormer, ConvNeXt ports) single channels go: the statistics are taken over the kept ones
//! in the pruned model, and the masked model is given the same normalisation ([`Edit::SpanNorm`];
//! what the removed channels contributed is pruning error, as for a LayerNorm). The spelled-out
//! form must then reshape to `[N, 1, -1]`: a literal `C·H·W` would change with the cut.
//!
//! A removed group whose channels all emit constants (the masked model's zeros, a dead unit's
//! bias) emits per channel `scale·(c_i − m)/√(v + ε) + bias` (m, v: the mean and variance of the
//! group's constants), which the consumers fold as any other constant.

use super::*;

impl Analyzer<'_, '_> {
    /// `GroupNormalization` on a tracked channel axis 1.
    pub(super) fn group_norm(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        if x.axis != 1 {
            self.block(&x.units, &format!("{} (channel axis is not 1)", barrier_reason(n)));
            return;
        }
        let c = x.units.len();
        let g = attr_i(n, "num_groups").unwrap_or(0);
        let Some(k) = usize::try_from(g).ok().filter(|&g| g > 0 && c > 0 && c.is_multiple_of(g)).map(|g| c / g) else {
            self.block(&x.units, &format!("{} (num_groups {g} does not divide {c} channels)", barrier_reason(n)));
            return;
        };
        if g == 1 && c > 1 {
            self.group_norm_one(ni, n, x);
            return;
        }
        let first = self.join_groups(n, &x, k);
        // Per channel (opset 21), or per group (opset 18; the same when every group is one channel).
        let mut params = Vec::new();
        for slot in [1, 2] {
            let name = inp(n, slot);
            let dims = name.and_then(|p| self.ctx.dims(p));
            let units = if dims == Some(&[c][..]) {
                &x.units
            } else if dims == Some(&[c / k][..]) {
                &first
            } else {
                self.block(
                    &x.units,
                    &format!("{} (scale and bias are not [C] or [groups] vectors)", barrier_reason(n)),
                );
                return;
            };
            let (Some(name), Some(vals)) = (name, name.and_then(|p| self.ctx.const_vals(p))) else {
                self.block(&x.units, &format!("{} (scale and bias are not constants)", barrier_reason(n)));
                return;
            };
            self.slice(name, 0, units, (ni, slot), Role::Param);
            // Per channel from here on.
            params.push(if vals.len() == c { vals } else { (0..c).map(|i| vals[i / k]).collect() });
        }
        self.st.edits.push(Edit::Count { target: IntTarget::AttrInt(ni, "num_groups".into()), index: 0, units: first });
        let eps = attr_f(n, "epsilon").unwrap_or(1e-5) as f64;
        let vals = group_vals(&x.vals, k, &params[0], &params[1], eps);
        self.pass(ni, n, &x, vals);
    }

    /// `GroupNormalization` with one group: its scale and bias, per channel (sliced) or one
    /// value (opset 18's per-group form), and [`Edit::SpanNorm`].
    fn group_norm_one(&mut self, ni: usize, n: &NodeProto, x: Track) {
        let c = x.units.len();
        if x.rank < 3 {
            self.block(&x.units, &format!("{} (one group and no spatial axis)", barrier_reason(n)));
            return;
        }
        let mut per_channel = Vec::new();
        for slot in [1, 2] {
            let vals = inp(n, slot).filter(|p| self.const_float(p, &[c]) || self.const_float(p, &[1]));
            let Some((name, vals)) = vals.and_then(|p| Some((p, self.ctx.const_vals(p)?))) else {
                let r = format!("{} (scale and bias are not constant float [C] or [1] vectors)", barrier_reason(n));
                self.block(&x.units, &r);
                return;
            };
            if vals.len() == c {
                self.slice(name, 0, &x.units, (ni, slot), Role::Param);
                per_channel.push(vals);
            } else {
                per_channel.push(vec![vals[0]; c]);
            }
        }
        let eps = attr_f(n, "epsilon").unwrap_or(1e-5) as f64;
        let (bias, scale) = (per_channel.pop().unwrap_or_default(), per_channel.pop().unwrap_or_default());
        let units = x.units.clone();
        self.st.edits.push(Edit::SpanNorm { from: ni, node: ni, units, trailing: x.rank - 2, scale, bias, eps });
        // In the masked model a removed channel leaves the normalisation as 0.
        self.pass(ni, n, &x, vec![Val::Const(0.0); c].into());
    }

    /// Join the `k` channels of each group into one unit; returns the first channel's unit of
    /// each group (what a per-group parameter or a group count follows).
    fn join_groups(&mut self, n: &NodeProto, x: &Track, k: usize) -> Units {
        let reason =
            format!("{} (a position no group owns shares a GroupNorm group with pruned ones)", barrier_reason(n));
        for start in (0..x.units.len()).step_by(k) {
            for i in 1..k {
                self.join(x.units[start], x.units[start + i], &reason);
            }
        }
        x.units.iter().step_by(k).copied().collect()
    }

    /// The decomposed GroupNorm at its first Reshape: this Reshape's only reader is an
    /// InstanceNormalization whose only reader is a Reshape (the one back). Returns the
    /// InstanceNormalization's and the Reshape back's indices.
    pub(super) fn group_norm_split_of(&self, n: &NodeProto) -> Option<(usize, usize)> {
        let only = |name: &str, op: &str| -> Option<usize> {
            let [(c, 0)] = self.ctx.ix.consumers_of(name) else { return None };
            let cn = &self.ctx.g.node[*c];
            (cn.op_type == op && cn.domain.is_empty() && !self.ctx.is_output(name)).then_some(*c)
        };
        let inorm = n.output.first().and_then(|o| only(o, "InstanceNormalization"))?;
        let back = self.ctx.g.node[inorm].output.first().and_then(|o| only(o, "Reshape"))?;
        (self.ctx.rank(&n.output[0]) == Some(3)).then_some((inorm, back))
    }

    /// The first Reshape of a decomposed GroupNorm: `[N, C, …]` → `[N, G, C/G·…]`.
    pub(super) fn group_norm_split(&mut self, ni: usize, n: &NodeProto, x: Track, (inorm, back): (usize, usize)) {
        let out_of = |why: &str| format!("{} (GroupNorm: {why})", barrier_reason(n));
        let c = x.units.len();
        let me = inp(n, 0).unwrap_or_default().to_string();
        let allowzero = attr_i(n, "allowzero").unwrap_or(0) != 0;
        let target = self.target(ni, n).filter(|t| t.len() == 3 && x.axis == 1 && x.rank >= 3);
        let groups = match target.as_ref().map(|t| &t[1]) {
            Some(Sym::Lit(g, at)) if *g >= 1 && c > 0 && c.is_multiple_of(*g as usize) => Some((*g as usize, *at)),
            _ => None,
        };
        let (Some(t), Some((g, at))) = (target, groups) else {
            self.block(&x.units, &out_of("target not [N, groups, -1] with groups dividing the channels"));
            return;
        };
        // The lead entry keeps the batch; the last merges C/G with the spatial dims, which the
        // cut leaves as they are (whole groups go), so any value the input allowed stays right.
        let tail_ok = match &t[2] {
            Sym::Lit(v, _) => *v == -1 || *v > 0,
            Sym::Dim(nm, k) => *nm == me && *k != 1,
            Sym::Expr(..) => false,
            Sym::Other => true,
        };
        if !(self.entry_ok(&t[0], &me, 1, Some(0), allowzero) && tail_ok) {
            self.block(&x.units, &out_of("target not [N, groups, -1]"));
            return;
        }
        let k = c / g;
        if g == 1 && c > 1 {
            // One group: single channels go, so the merged tail changes with the cut.
            if !matches!(t[2], Sym::Lit(-1, _)) {
                self.block(&x.units, &out_of("one group, and the target's last entry is not -1"));
                return;
            }
            // The [N, 1, ·] tensor carries no unit; the Reshape back takes the channels again.
            self.touch(ni, &x.units);
            self.touch(inorm, &x.units);
            self.emit(
                ni,
                &n.output[0],
                Track { axis: 1, rank: 3, units: vec![None].into(), vals: vec![Val::Varying].into() },
            );
            self.group_norms.insert(back, (me, x, k, inorm));
            return;
        }
        let first = self.join_groups(n, &x, k);
        if !self.count_edit(&x, n, at, first.clone()) {
            return;
        }
        // The normalised [N, G, ·] tensor: one position per group. What a removed group emits
        // is known only per channel, at the Reshape back.
        let vals: Vals = vec![Val::Varying; g].into();
        self.touch(ni, &x.units);
        self.touch(inorm, &x.units);
        self.emit(ni, &n.output[0], Track { axis: 1, rank: 3, units: first, vals });
        self.group_norms.insert(back, (me, x, k, inorm));
    }

    /// The Reshape back of a decomposed GroupNorm: `[N, G, ·]` → the input's shape.
    pub(super) fn group_norm_merge(
        &mut self,
        ni: usize,
        n: &NodeProto,
        y: Track,
        split: (String, Track, usize, usize),
    ) {
        let (src, x, k, inorm) = split;
        let out_of = |why: &str| format!("{} (GroupNorm: {why})", barrier_reason(n));
        let c = x.units.len();
        let allowzero = attr_i(n, "allowzero").unwrap_or(0) != 0;
        let Some(t) = self.target(ni, n).filter(|t| t.len() == x.rank && y.axis == 1 && y.rank == 3) else {
            self.block(&x.units, &out_of("not reshaped back to the input's rank"));
            return;
        };
        let count = match &t[1] {
            Sym::Dim(nm, 1) if *nm == src => Some(None),
            Sym::Lit(v, at) if *v == c as i64 => Some(Some(*at)),
            _ => None,
        };
        let others = (0..t.len()).filter(|&j| j != 1).all(|j| {
            let lead = (j == 0).then_some(0);
            self.entry_ok(&t[j], &src, 1, lead, allowzero)
        });
        let Some(count) = count.filter(|_| others) else {
            self.block(&x.units, &out_of("not reshaped back to the input's shape"));
            return;
        };
        if let Some(at) = count {
            if !self.count_edit(&x, n, at, x.units.clone()) {
                return;
            }
        }
        // The InstanceNormalization's per-group scale and bias (sliced by its own rule).
        let node = &self.ctx.g.node[inorm];
        let p = |slot| inp(node, slot).and_then(|s| self.ctx.const_vals(s)).filter(|v| v.len() == c / k);
        if k == c && c > 1 {
            // One group: the masked model normalises over the kept channels.
            let split = node.input.first().and_then(|i| self.ctx.ix.producer.get(i.as_str()).copied());
            let (Some(s), Some(b), Some(split)) = (p(1), p(2), split) else {
                self.block(&x.units, &out_of("one group, and its scale and bias are not constants"));
                return;
            };
            let eps = attr_f(node, "epsilon").unwrap_or(1e-5) as f64;
            let (scale, bias) = (vec![s[0]; c], vec![b[0]; c]);
            let units = x.units.clone();
            self.st.edits.push(Edit::SpanNorm { from: split, node: ni, units, trailing: x.rank - 2, scale, bias, eps });
            self.touch(ni, &y.units);
            self.emit(
                ni,
                &n.output[0],
                Track { axis: 1, rank: x.rank, units: x.units, vals: vec![Val::Const(0.0); c].into() },
            );
            return;
        }
        let vals = match (p(1), p(2)) {
            (Some(s), Some(b)) => {
                let per_channel = |v: &[f64]| (0..c).map(|i| v[i / k]).collect::<Vec<f64>>();
                let eps = attr_f(node, "epsilon").unwrap_or(1e-5) as f64;
                group_vals(&x.vals, k, &per_channel(&s), &per_channel(&b), eps)
            }
            _ => vec![Val::Varying; c].into(),
        };
        self.touch(ni, &y.units);
        self.emit(ni, &n.output[0], Track { axis: 1, rank: x.rank, units: x.units.clone(), vals });
    }
}

/// What each channel of a GroupNorm emits when its group's channels emit the constants `vals`
/// (groups of `k` channels; `scale`, `bias` per channel): the group's mean and variance are those
/// of its constants (each channel has as many positions), so a group whose channels are all
/// constant emits per channel `scale·(c_i − m)/√(v + ε) + bias`; any other group varies.
pub(super) fn group_vals(vals: &[Val], k: usize, scale: &[f64], bias: &[f64], eps: f64) -> Vals {
    let mut out = Vec::with_capacity(vals.len());
    for (gi, grp) in vals.chunks(k).enumerate() {
        let cs: Option<Vec<f64>> = grp.iter().map(|v| if let Val::Const(c) = v { Some(*c) } else { None }).collect();
        let Some(cs) = cs else {
            out.extend(std::iter::repeat_n(Val::Varying, grp.len()));
            continue;
        };
        let m = cs.iter().sum::<f64>() / cs.len() as f64;
        let v = cs.iter().map(|c| (c - m) * (c - m)).sum::<f64>() / cs.len() as f64;
        for (i, c) in cs.iter().enumerate() {
            let ch = gi * k + i;
            let y = scale[ch] * (c - m) / (v + eps).sqrt() + bias[ch];
            out.push(if y.is_finite() { Val::Const(y) } else { Val::Varying });
        }
    }
    out.into()
}
