//! Dependency analysis, Reshape and the shape vectors that compute its targets: the rule for a
//! Reshape of a tracked tensor (which target entries keep the channel axis in place, refactor
//! the dims around it, merge it, or move it), the Shape → Gather / Slice / arithmetic → Concat
//! plumbing followed symbolically ([`Sym`]), the literal channel counts the rewrite edits
//! ([`Edit::Count`]), and the computed counts it freezes ([`Edit::Freeze`]) where a Reshape the
//! cut leaves whole reads a pruned width.

use super::*;

impl Analyzer<'_, '_> {
    pub(super) fn reshape(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        // A shuffle's Transpose swaps the two axes the channel axis is split into; any other
        // Reshape → Transpose → Reshape (attention's [L·N, E] → [L, N, E] → …) follows the
        // general rules below.
        if let Some((back, perm)) = self.channel_shuffle(n).filter(|(_, p)| super::shuffle::swaps(p, x.axis, x.rank)) {
            self.shuffle_split(ni, n, x, back, &perm);
            return;
        }
        if let Some(split) = self.shuffles.remove(&ni) {
            self.shuffle_merge(ni, n, x, split);
            return;
        }
        if let Some(split) = self.group_norms.remove(&ni) {
            self.group_norm_merge(ni, n, x, split);
            return;
        }
        if let Some(at) = self.group_norm_split_of(n) {
            self.group_norm_split(ni, n, x, at);
            return;
        }
        if inp(n, 1).is_none() {
            return;
        }
        let Some(target) = self.target(ni, n) else {
            self.block(&x.units, &format!("{} (target shape is not known)", barrier_reason(n)));
            return;
        };
        let allowzero = attr_i(n, "allowzero").unwrap_or(0) != 0;
        let t = x.axis;
        let c = x.units.len() as i64;
        let me = inp(n, 0).unwrap_or_default();
        let declared = self.ctx.shapes.get(me).filter(|d| d.len() == x.rank).cloned();
        // Which input dim each target entry copies (0, or a Shape-read dim of the input; at
        // place 0, dim 0 of a tensor with the same batch: `n = x.shape[0]` read off the model
        // input for a reshape of its convolution's output).
        let batch0 = match target.first() {
            Some(Sym::Dim(name, 0)) if name != me => self.same_batch(name, me),
            _ => false,
        };
        // A lead entry (before the channel axis) may also read a dim of another tensor that is
        // known to be of the same size (`groups/sizes.rs`): the cut changes neither.
        let same_lead: Vec<bool> = (target.iter().enumerate())
            .map(|(i, e)| i < t && matches!(e, Sym::Dim(name, j) if self.same_size(name, *j, me, i)))
            .collect();
        let copies = |i: usize| -> Option<usize> {
            match target.get(i)? {
                Sym::Lit(0, _) if !allowzero => Some(i),
                Sym::Dim(name, j) if name == me => Some(*j),
                Sym::Dim(_, 0) if i == 0 && batch0 => Some(0),
                Sym::Dim(..) if same_lead[i] => Some(i),
                _ => None,
            }
        };
        let lit = |i: usize| -> Option<(i64, LitAt)> {
            match target.get(i)? {
                Sym::Lit(v, p) => Some((*v, *p)),
                _ => None,
            }
        };
        // A literal leading entry equal to the input's dim there: declared, or for the batch the
        // one carried from the model input (a fixed-shape export's `[1, C, H·W]` patch reshape).
        // A -1 among the lead entries (the only one) is inferred as the input's dim there when
        // the entries after the channel axis are literals whose product is that of the input's
        // dims after it (declared): the other lead entries keep their dims and the channel entry
        // is the kept count, so the count left for the -1 does not change with the cut (the
        // dynamo exporter's `[-1, C, H·W]`).
        let minus_ones = target.iter().filter(|e| matches!(e, Sym::Lit(-1, _))).count();
        let trail_in: Option<i64> = declared
            .as_ref()
            .and_then(|d| d.get(t + 1..).map(|r| r.iter().map(|x| x.map(|v| v as i64)).product::<Option<i64>>()))
            .flatten();
        let trail_out: Option<i64> =
            (t + 1..target.len()).map(|i| lit(i).map(|(v, _)| v).filter(|&v| v > 0)).product::<Option<i64>>();
        let minus_lead = minus_ones == 1 && trail_in.is_some() && trail_in == trail_out;
        let lead_ok = |i: usize| {
            copies(i) == Some(i)
                || (minus_lead && lit(i).is_some_and(|(v, _)| v == -1))
                || lit(i).is_some_and(|(v, _)| {
                    let dim = declared.as_ref().and_then(|d| d.get(i).copied().flatten());
                    dim.or_else(|| if i == 0 { self.ctx.dim0(me) } else { None }).is_some_and(|d| d as i64 == v)
                })
        };
        let lead = (0..t).all(lead_ok);
        // The target entry that reads our channel count and adapts by itself.
        let mut safe_channel = None;
        // A tensor whose channel count the channel entry reads (not ours): its units are tied to
        // ours position by position, so both keep the same count.
        let mut tied: Option<String> = None;
        let mut done = false;
        // (a) the channel axis itself survives: [.., C, anything].
        if lead && target.len() > t {
            if copies(t) == Some(t) {
                safe_channel = Some(t);
                done = true;
            } else if let Some((v, p)) = lit(t).filter(|(v, _)| *v == c) {
                let _ = v;
                done = self.count_edit(&x, n, p, x.units.clone());
            } else if let Some((name, units)) = self.width_source(&target[t], me, x.units.len()) {
                // `b, c, h, w = x.shape; y.reshape(b, c, h, w)`: the count read off another tracked
                // tensor of the same width (a residual input the result is added to, as in
                // attention inside a CNN). Ours must be removed with its units.
                let reason = format!("{} (target reads the channel count of '{name}')", barrier_reason(n));
                for (a, b) in units.iter().zip(x.units.iter()) {
                    self.join(*a, *b, &reason);
                }
                safe_channel = Some(t);
                tied = Some(name);
                done = true;
            }
            if done {
                let out = Track { rank: target.len(), ..x.clone() };
                self.emit(ni, &n.output[0], out);
            }
        }
        // (b) flatten-like: [.., F] or [.., -1] merging the channel axis and all after it;
        // also [-1, F] for a channel axis 1.
        let lead_b = lead || (t == 1 && lit(0).is_some_and(|(v, _)| v == -1) && lit(1).is_some_and(|(v, _)| v > 0));
        if !done && target.len() == t + 1 && lead_b {
            if let Some((v, p)) = lit(t).filter(|(v, _)| *v == -1 || *v > 0) {
                let explicit = (v > 0).then_some(v as usize);
                if let Some(out) = self.merge_trailing(ni, n, &x, explicit) {
                    done = explicit.is_none() || self.count_edit(&x, n, p, out.units.clone());
                    if done {
                        self.emit(ni, &n.output[0], out);
                    }
                } else {
                    return; // merge_trailing blocked with its reason
                }
            }
        }
        // (c) the last axis (the channels) merged with the one before it: [.., D, C] → [.., D·C]
        // (a bidirectional LSTM's directions and hidden units). Channel c of slice d becomes
        // feature d·C + c, so the units repeat D times.
        if !done && t + 1 == x.rank && t >= 1 && target.len() == t && (0..t - 1).all(|i| copies(i) == Some(i)) {
            let d = self
                .dims_hint
                .get(me)
                .and_then(|h| h.get(t - 1).copied().flatten())
                .or_else(|| declared.as_ref().and_then(|dd| dd[t - 1]));
            if let (Some(d), Some((v, p))) = (d, lit(t - 1)) {
                if v == -1 || v == (d as i64) * c {
                    let units: Units = (0..d).flat_map(|_| x.units.iter().copied()).collect();
                    let vals: Vec<Val> = (0..d).flat_map(|_| x.vals.iter().copied()).collect();
                    done = v == -1 || self.count_edit(&x, n, p, units.clone());
                    if done {
                        self.touch(ni, &x.units);
                        self.emit(ni, &n.output[0], Track { axis: t - 1, rank: t, units, vals: vals.into() });
                    }
                }
            }
        }
        // (d) the channel axis last on both sides, the leading dims refactored around it
        // ([B·S, C] ↔ [B, S, C], as exporters write a Linear on a sequence): row-major order
        // keeps the innermost index, so channel k stays channel k whatever the leading entries
        // are, as long as none of them reads a channel count or copies the channel axis.
        if !done && t + 1 == x.rank && target.len() >= 2 {
            let last = target.len() - 1;
            let lead_free = (0..last).all(|i| match &target[i] {
                Sym::Lit(0, _) => allowzero || i < t,
                Sym::Lit(v, _) => *v >= -1,
                Sym::Dim(name, j) => !(name == me && *j == t) && self.track(name).is_none_or(|tr| tr.axis != *j),
                Sym::Expr(name, j, _) => !(name == me && *j == t) && self.track(name).is_none_or(|tr| tr.axis != *j),
                Sym::Other => true,
            });
            if lead_free {
                if copies(last) == Some(t) {
                    safe_channel = Some(last);
                    done = true;
                } else if let Some((_, p)) = lit(last).filter(|(v, _)| *v == c) {
                    done = self.count_edit(&x, n, p, x.units.clone());
                }
                if done {
                    self.emit(ni, &n.output[0], Track { axis: last, rank: target.len(), ..x.clone() });
                }
            }
        }
        if !done {
            // GroupNorm as exporters write it: Reshape to [N, groups, …], a normalisation over
            // each group, Reshape back. Its groups tie channels together: said by name.
            let group_norm = n.output.first().is_some_and(|o| {
                self.ctx.ix.consumers_of(o).iter().any(|&(ci, _)| {
                    matches!(self.ctx.g.node[ci].op_type.as_str(), "InstanceNormalization" | "ReduceMean")
                })
            });
            let why = if group_norm {
                "reshape moves the channel axis: a GroupNormalization, whose channel groups are not pruned"
            } else {
                "reshape moves the channel axis"
            };
            self.block(&x.units, &format!("{} ({why})", barrier_reason(n)));
            // Our channels now stay whole, so the target must keep its values: channel counts of
            // other tensors in it are fed their original values when that can be done.
            let reads_ours = target.iter().any(|e| e.dim_expr().is_some_and(|(nm, j, _)| nm == me && j == t));
            if !reads_ours && inp(n, 1).is_some_and(|tg| self.freeze_counts(tg, Some(me))) {
                return;
            }
        }
        // Channel counts read from other tensors (or ours at another place) cannot adapt.
        for (i, e) in target.iter().enumerate() {
            if let Some((name, j, l)) = e.dim_expr() {
                let ours = (name == me || tied.as_deref() == Some(name))
                    && safe_channel == Some(i)
                    && done
                    && l == super::shuffle::Lin::ID;
                if let Some(tr) = self.track(name).filter(|tr| tr.axis == j && !ours) {
                    self.block(
                        &tr.units,
                        &format!("{} (target reads the channel count of '{name}')", barrier_reason(n)),
                    );
                }
            }
        }
    }

    /// A target entry that copies the channel count of another tracked tensor of `width`
    /// channels (`Shape(other)[axis]`, its channel axis): that tensor's name and units.
    pub(super) fn width_source(&self, e: &Sym, me: &str, width: usize) -> Option<(String, Units)> {
        let Sym::Dim(name, j) = e else { return None };
        let tr = self.track(name).filter(|tr| name != me && tr.axis == *j && tr.units.len() == width)?;
        Some((name.clone(), tr.units.clone()))
    }

    /// ShuffleNet's channel shuffle: this Reshape's only reader is a Transpose whose only reader
    /// is a Reshape back (the channel axis split into [groups, C/groups], swapped, merged), with
    /// per-tensor Quantize/DequantizeLinear pairs allowed between them (QDQ models).
    /// Returns the Reshape back's index and the Transpose's perm.
    fn channel_shuffle(&self, n: &NodeProto) -> Option<(usize, Vec<i64>)> {
        // The only reader of `name` that is an `op`, past the per-tensor Quantize/DequantizeLinear
        // pairs a QDQ model puts between the shuffle's three nodes.
        let only = |name: &str, op: &str| -> Option<usize> {
            let mut name = name.to_string();
            for _ in 0..=4 {
                let [(c, 0)] = self.ctx.ix.consumers_of(&name) else { return None };
                let cn = &self.ctx.g.node[*c];
                if cn.op_type == op {
                    return Some(*c);
                }
                let per_tensor =
                    inp(cn, 1).and_then(|s| self.ctx.dims(s)).is_some_and(|d| d.iter().product::<usize>() == 1);
                if !(matches!(cn.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear") && per_tensor) {
                    return None;
                }
                name = cn.output.first()?.clone();
            }
            None
        };
        let t = n.output.first().and_then(|o| only(o, "Transpose"))?;
        let back = self.ctx.g.node[t].output.first().and_then(|o| only(o, "Reshape"))?;
        let ranks = self.ctx.rank(&n.output[0]).zip(inp(n, 0).and_then(|i| self.ctx.rank(i)));
        let perm = attr_ints(&self.ctx.g.node[t], "perm").map(|p| p.to_vec()).unwrap_or_default();
        ranks.is_some_and(|(o, i)| o == i + 1).then_some((back, perm))
    }

    /// Register the rewrite of a literal that equals a kept count; false (and block) when the
    /// literal cannot be edited.
    pub(super) fn count_edit(&mut self, x: &Track, n: &NodeProto, at: LitAt, units: Units) -> bool {
        match at {
            Some((node, slot, index)) => {
                self.st.edits.push(Edit::Count { target: IntTarget::Input(node, slot), index, units });
                self.touch(node, &x.units);
                true
            }
            None => {
                self.block(
                    &x.units,
                    &format!("{} (a channel count in its target cannot be rewritten)", barrier_reason(n)),
                );
                false
            }
        }
    }

    /// Follow shape vectors: Shape → Gather / Slice / Unsqueeze / Squeeze / Cast / Concat. A
    /// vector element that is a channel count may only end in a Reshape target that adapts; any
    /// other reader blocks the channel's group. Returns true when the node was handled here.
    pub(super) fn shape_plumbing(&mut self, ni: usize, n: &NodeProto) -> bool {
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return false;
        }
        let out = match n.output.first() {
            Some(o) if !o.is_empty() => o.clone(),
            _ => return false,
        };
        if n.op_type == "Shape" {
            let Some(x) = inp(n, 0) else { return false };
            let Some(r) = self.track(x).map(|t| t.rank).or_else(|| self.rank(x)) else { return false };
            let s = norm_bound(attr_i(n, "start").unwrap_or(0), r);
            let e = norm_bound(attr_i(n, "end").unwrap_or(r as i64), r);
            self.shape_vecs.insert(out, (s..e).map(|i| Sym::Dim(x.to_string(), i)).collect());
            return true;
        }
        // Small integer constants cast for a shape (Paddle: Cast(fill_constant)).
        if n.op_type == "Cast" {
            if let Some(c) = inp(n, 0).filter(|c| self.ctx.dims(c).is_some_and(|d| d.len() <= 1)) {
                let int_src = self
                    .ctx
                    .base_tensor(c)
                    .is_some_and(|t| matches!(t.data_type, tensor::dt::INT64 | tensor::dt::INT32));
                if let (true, Some(v)) = (int_src, self.ctx.const_ints(c)) {
                    self.shape_vecs
                        .insert(out, v.iter().enumerate().map(|(k, &v)| Sym::Lit(v, Some((ni, 0, k)))).collect());
                    return true;
                }
            }
        }
        let vec_in: Vec<Vec<Sym>> = n.input.iter().filter_map(|i| self.shape_vecs.get(i).cloned()).collect();
        if vec_in.is_empty() {
            return false;
        }
        // A Reshape target is checked by the Reshape rule (it knows which counts adapt).
        let target_only = n.op_type == "Reshape" && inp(n, 0).is_none_or(|d| !self.shape_vecs.contains_key(d));
        if target_only && inp(n, 0).is_some_and(|d| self.st.tracks.contains_key(d)) {
            return false;
        }
        // The shape of an Expand of a tracked tensor is checked by the Expand rule.
        if n.op_type == "Expand" && inp(n, 0).is_some_and(|d| self.st.tracks.contains_key(d)) {
            return false;
        }
        // A Slice of a tracked tensor with computed bounds is checked by the Slice rule.
        if n.op_type == "Slice" && inp(n, 0).is_some_and(|d| self.st.tracks.contains_key(d)) {
            return false;
        }
        let first = inp(n, 0).and_then(|i| self.shape_vecs.get(i)).cloned();
        let result: Option<Vec<Sym>> = match n.op_type.as_str() {
            "Add" | "Sub" | "Mul" | "Div" => self.shape_arith(n).or_else(|| self.opaque_arith(n)),
            "Unsqueeze" | "Squeeze" | "Cast" | "Identity" => first,
            "Gather" if attr_i(n, "axis").unwrap_or(0) == 0 => first
                .zip(inp(n, 1).and_then(|i| self.ctx.const_ints(i)))
                .and_then(|(v, idx)| idx.iter().map(|&k| norm_axis(k, v.len()).map(|k| v[k].clone())).collect()),
            "Slice" => first.and_then(|v| {
                let g = |slot| inp(n, slot).and_then(|i| self.ctx.int_vals(i));
                let (st, en) = (g(1)?, g(2)?);
                let axes_ok = inp(n, 3).is_none_or(|_| g(3).is_some_and(|a| a == [0]));
                let step_ok = inp(n, 4).is_none_or(|_| g(4).is_some_and(|a| a == [1]));
                let l = v.len();
                let (s0, e0) = (
                    norm_bound((*st.first()?).clamp(-(l as i64), l as i64), l),
                    norm_bound((*en.first()?).clamp(-(l as i64), l as i64), l),
                );
                (axes_ok && step_ok && s0 <= e0).then(|| v[s0..e0].to_vec())
            }),
            "Concat" if attr_i(n, "axis").is_some_and(|a| a == 0 || a == -1) => {
                let mut v = vec![];
                let mut ok = true;
                for (slot, i) in n.input.iter().enumerate() {
                    if let Some(sv) = self.shape_vecs.get(i) {
                        v.extend(sv.iter().cloned());
                    } else if let Some(c) =
                        self.ctx.const_ints(i).filter(|_| self.ctx.dims(i).is_some_and(|d| d.len() == 1))
                    {
                        v.extend(c.iter().enumerate().map(|(k, &x)| Sym::Lit(x, Some((ni, slot, k)))));
                    } else {
                        ok = false;
                    }
                }
                ok.then_some(v)
            }
            _ => None,
        };
        match result {
            Some(v) => {
                self.shape_vecs.insert(out, v);
                true
            }
            None => {
                if n.op_type == "Reshape" && self.freeze_target(n) {
                    return true;
                }
                // Any other reader: no channel count may pass.
                for v in &vec_in {
                    self.block_channel_dims(v, &format!("{} (reads the channel count)", barrier_reason(n)));
                }
                false
            }
        }
    }

    /// Whether `a` and `b` have the same dim 0 (the batch): both reached from one graph input
    /// through ops that keep axis 0 in place (the chain [`Ctx::infer_batch`] follows).
    pub(super) fn same_batch(&self, a: &str, b: &str) -> bool {
        let root = |name: &str| -> Option<String> {
            let mut cur = name.to_string();
            for _ in 0..100_000 {
                let Some(&p) = self.ctx.ix.producer.get(&cur) else {
                    return self.ctx.ix.inputs.contains(&cur).then_some(cur);
                };
                let pn = &self.ctx.g.node[p];
                if !keeps_batch_of_input(pn) {
                    return None;
                }
                cur = inp(pn, 0)?.to_string();
            }
            None
        };
        matches!((root(a), root(b)), (Some(x), Some(y)) if x == y)
    }

    /// A Reshape of a tensor no group changes whose target reads channel counts of tracked
    /// tensors (`b, s, d = x.shape` … `a.reshape(b, s, d)`): its element count does not change, so
    /// the target must keep its original values ([`Self::freeze_counts`]). False when the target
    /// cannot be frozen.
    fn freeze_target(&mut self, n: &NodeProto) -> bool {
        let (Some(data), Some(target)) = (inp(n, 0), inp(n, 1)) else { return false };
        if self.st.tracks.contains_key(data) || self.shape_vecs.contains_key(data) {
            return false;
        }
        self.freeze_counts(target, None)
    }

    /// Make every channel count (of a tracked tensor other than `skip`) in the shape vector
    /// `target` keep its original value: each must enter it as a one-element input of a Concat
    /// (axis 0) that builds it, possibly nested in other such Concats, through Casts / Identities,
    /// every value on the way read only there; the rewrite feeds that input its original value
    /// ([`Edit::Freeze`]). Registers nothing and returns false when one cannot be frozen.
    fn freeze_counts(&mut self, target: &str, skip: Option<&str>) -> bool {
        let mut edits = vec![];
        if !self.collect_freezes(target, skip, &mut edits, 0) {
            return false;
        }
        for (concat, slot, value, int32, units) in edits {
            self.touch(concat, &units);
            self.st.edits.push(Edit::Freeze { node: concat, slot, value, int32, units });
        }
        true
    }

    #[allow(clippy::type_complexity)]
    fn collect_freezes(
        &self,
        target: &str,
        skip: Option<&str>,
        out: &mut Vec<(usize, usize, i64, bool, Units)>,
        depth: usize,
    ) -> bool {
        let ix = self.ctx.ix;
        let only_here = |v: &str| ix.consumers_of(v).len() == 1 && !self.ctx.is_output(v);
        let counts = |v: &[Sym]| -> Vec<(usize, super::shuffle::Lin, Units)> {
            v.iter()
                .enumerate()
                .filter_map(|(k, e)| {
                    let (name, j, lin) = e.dim_expr()?;
                    if Some(name) == skip {
                        return None;
                    }
                    let t = self.st.tracks.get(name).filter(|t| t.axis == j)?;
                    Some((k, lin, t.units.clone()))
                })
                .collect()
        };
        let Some(v) = self.shape_vecs.get(target) else { return false };
        if counts(v).is_empty() {
            return true;
        }
        if depth > 16 {
            return false;
        }
        let mut cur = target.to_string();
        let concat = loop {
            let Some(&p) = ix.producer.get(&cur) else { return false };
            if !only_here(&cur) {
                return false;
            }
            let pn = &self.ctx.g.node[p];
            match pn.op_type.as_str() {
                "Cast" | "Identity" => match inp(pn, 0) {
                    Some(i) => cur = i.to_string(),
                    None => return false,
                },
                "Concat" if attr_i(pn, "axis").is_some_and(|a| a == 0 || a == -1) => break p,
                _ => return false,
            }
        };
        for (slot, i) in self.ctx.g.node[concat].input.iter().enumerate() {
            let Some(sv) = self.shape_vecs.get(i) else { continue };
            let c = counts(sv);
            if c.is_empty() {
                continue;
            }
            if sv.len() != 1 {
                if !self.collect_freezes(i, skip, out, depth + 1) {
                    return false;
                }
                continue;
            }
            let (_, lin, units) = &c[0];
            match (lin.eval(units.len() as i64), self.int_width(i)) {
                (Some(value), Some(int32)) => out.push((concat, slot, value, int32, units.clone())),
                _ => return false,
            }
        }
        true
    }

    /// Whether a shape-vector value is int32 (Some(true)) or int64 (Some(false)): the last Cast
    /// on its way back to the Shape that read it decides; None when unknown.
    fn int_width(&self, name: &str) -> Option<bool> {
        let mut cur = name.to_string();
        for _ in 0..64 {
            let n = &self.ctx.g.node[*self.ctx.ix.producer.get(&cur)?];
            match n.op_type.as_str() {
                "Shape" => return Some(false),
                "Cast" => {
                    return match attr_i(n, "to")? as i32 {
                        tensor::dt::INT64 => Some(false),
                        tensor::dt::INT32 => Some(true),
                        _ => None,
                    }
                }
                _ => cur = n.input.iter().find(|i| self.shape_vecs.contains_key(i.as_str()))?.clone(),
            }
        }
        None
    }

    pub(super) fn block_channel_dims(&mut self, v: &[Sym], reason: &str) {
        for e in v {
            if let Some((name, j, _)) = e.dim_expr() {
                if let Some(t) = self.track(name).filter(|t| t.axis == j) {
                    self.block(&t.units, reason);
                }
            }
        }
    }
}
