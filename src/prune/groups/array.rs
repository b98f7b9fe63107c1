//! Dependency analysis, array ops: Concat, Split, Slice, Pad, Resize, Flatten, Squeeze, Unsqueeze,
//! Transpose, Gather and other ops along an axis, Shape (Reshape and its targets: `reshape.rs`).

use super::*;

impl Analyzer<'_, '_> {
    pub(super) fn concat(&mut self, ni: usize, n: &NodeProto) {
        let ins: Vec<&str> = n.input.iter().map(|s| s.as_str()).collect();
        let tracked: Vec<Track> = ins.iter().filter_map(|s| self.track(s)).collect();
        let Some(first) = tracked.first().cloned() else { return };
        let all: Vec<Option<Unit>> = tracked.iter().flat_map(|t| t.units.iter().copied()).collect();
        let Some(axis) = attr_i(n, "axis").and_then(|a| norm_axis(a, first.rank)) else {
            self.block(&all, &format!("{} (bad axis)", barrier_reason(n)));
            return;
        };
        if tracked.iter().any(|t| t.axis != first.axis || t.rank != first.rank) {
            self.block(&all, &format!("{} (inputs carry channels on different axes)", barrier_reason(n)));
            return;
        }
        if axis == first.axis {
            // Offsets: the output axis is the inputs' positions one after another.
            let mut units = Vec::new();
            let mut vals = Vec::new();
            for s in &ins {
                if let Some(t) = self.track(s) {
                    units.extend(t.units.iter().copied());
                    vals.extend(t.vals.iter().copied());
                    continue;
                }
                let len = self
                    .ctx
                    .dims(s)
                    .map(|d| d.to_vec())
                    .or_else(|| self.ctx.shapes.get(*s).map(|d| d.iter().map(|v| v.unwrap_or(0)).collect()));
                match len.and_then(|d| d.get(axis).copied()).filter(|&l| l > 0) {
                    Some(l) => {
                        units.extend(std::iter::repeat_n(None, l));
                        vals.extend(std::iter::repeat_n(Val::Varying, l));
                    }
                    None => {
                        self.block(
                            &all,
                            &format!("{} (size of input '{s}' on the channel axis unknown)", barrier_reason(n)),
                        );
                        return;
                    }
                }
            }
            let t = Track { axis, rank: first.rank, units: units.into(), vals: vals.into() };
            self.emit(ni, &n.output[0], t);
            return;
        }
        // Concatenating along another axis: the channel positions of all inputs are the same.
        let c = first.units.len();
        let r = format!("{} (joined with an untracked channel)", barrier_reason(n));
        let mut vals: Vec<Val> = first.vals.to_vec();
        for (slot, s) in ins.iter().enumerate() {
            if let Some(t) = self.track(s) {
                if t.units.len() != c {
                    self.block(&all, &format!("{} (channel sizes differ)", barrier_reason(n)));
                    return;
                }
                for (p, (a, b)) in first.units.iter().zip(t.units.iter()).enumerate() {
                    self.join(*a, *b, &r);
                    if vals[p] != t.vals[p] {
                        vals[p] = Val::Varying;
                    }
                }
            } else if self.ctx.dims(s).is_some_and(|d| d.len() == first.rank && d[first.axis] == c) {
                // e.g. a class token concatenated to the sequence: a per-channel constant.
                self.slice(s, first.axis, &first.units, (ni, slot), Role::Param);
                vals = vec![Val::Varying; c];
            } else if let Some(e) = self.expanded_const(s, &first) {
                // The class token expanded to the batch first (`cls.expand(n, -1, -1)`).
                let k = &self.ctx.g.node[e];
                let data = inp(k, 0).unwrap_or_default().to_string();
                let axis = first.axis - (first.rank - self.ctx.dims(&data).map_or(0, |d| d.len()));
                self.slice(&data, axis, &first.units, (e, 0), Role::Param);
                self.emit(e, s, Track { vals: vec![Val::Varying; c].into(), ..first.clone() });
                vals = vec![Val::Varying; c];
            } else {
                self.block(&all, &format!("{} (input '{s}' cannot shrink with the channels)", barrier_reason(n)));
                return;
            }
        }
        let t = Track { vals: vals.into(), ..first };
        self.emit(ni, &n.output[0], t);
    }

    /// `s` = Expand(constant, shape), read only here, whose constant holds the channel axis of
    /// `like` at full width and whose shape does not widen that axis (1 there: a constant, or a
    /// computed shape, which carries no channel count or the analysis would have blocked its
    /// reader): the node index of the Expand.
    fn expanded_const(&self, s: &str, like: &Track) -> Option<usize> {
        let &e = self.ctx.ix.producer.get(s)?;
        let k = &self.ctx.g.node[e];
        if k.op_type != "Expand" || self.ctx.ix.consumers_of(s).len() != 1 || self.ctx.is_output(s) {
            return None;
        }
        let (data, shape) = (inp(k, 0)?, inp(k, 1)?);
        let d = self.ctx.dims(data)?;
        if !self.is_const(data) || d.len() > like.rank || like.axis + d.len() < like.rank {
            return None;
        }
        let at = like.axis + d.len() - like.rank;
        if d[at] != like.units.len() || self.ctx.rank(s) != Some(like.rank) {
            return None;
        }
        let widens = match (self.ctx.const_ints(shape), self.shape_vecs.get(shape)) {
            (Some(v), _) => v.len() + like.axis < like.rank || v[v.len() + like.axis - like.rank] != 1,
            (None, Some(v)) => {
                v.len() + like.axis < like.rank
                    || !matches!(v[v.len() + like.axis - like.rank], Sym::Lit(1, _) | Sym::Other)
            }
            (None, None) => false,
        };
        (!widens).then_some(e)
    }

    /// Expand of a tracked tensor (`y.expand_as(x)` after an SE block's `view(b, c, 1, 1)`): the
    /// shape broadcasts the other dims and, aligned on the last axis, its entry on the channel axis
    /// must keep the count: 1, the channel count itself (a literal, edited), or a count read off
    /// this tensor or off another tracked tensor of the same width (whose units are then tied to
    /// ours). No other entry may read a channel count.
    pub(super) fn expand(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let me = inp(n, 0).unwrap_or_default().to_string();
        let Some(v) = self.target(ni, n) else {
            self.block(&x.units, &format!("{} (shape is not known)", barrier_reason(n)));
            return;
        };
        let c = x.units.len();
        let r = v.len().max(x.rank);
        let t = x.axis + r - x.rank;
        let at = t.checked_sub(r - v.len());
        let reason = |name: &str| format!("{} (shape reads the channel count of '{name}')", barrier_reason(n));
        let ok = match at.map(|i| &v[i]) {
            None | Some(Sym::Lit(1, _)) => true,
            Some(Sym::Dim(name, j)) if *name == me && *j == x.axis => true,
            Some(Sym::Lit(k, p)) if *k == c as i64 => self.count_edit(&x, n, *p, x.units.clone()),
            Some(e @ Sym::Dim(..)) => match self.width_source(e, &me, c) {
                Some((name, units)) => {
                    let why = reason(&name);
                    for (a, b) in units.iter().zip(x.units.iter()) {
                        self.join(*a, *b, &why);
                    }
                    true
                }
                None => false,
            },
            Some(_) => false,
        };
        if !ok {
            let why = "its entry on the channel axis is not 1 or the channel count";
            self.block(&x.units, &format!("{} ({why})", barrier_reason(n)));
            return;
        }
        for (_, e) in v.iter().enumerate().filter(|(i, _)| Some(*i) != at) {
            if let Some((name, j, _)) = e.dim_expr() {
                if let Some(tr) = self.track(name).filter(|tr| tr.axis == j) {
                    self.block(&tr.units, &reason(name));
                }
            }
        }
        let out = Track { axis: t, rank: r, ..x };
        self.emit(ni, &n.output[0], out);
    }

    pub(super) fn split(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let Some(axis) = norm_axis(attr_i(n, "axis").unwrap_or(0), x.rank) else {
            self.block(&x.units, &format!("{} (bad axis)", barrier_reason(n)));
            return;
        };
        if axis != x.axis {
            for o in n.output.iter().filter(|s| !s.is_empty()) {
                self.emit(ni, o, x.clone());
            }
            return;
        }
        let c = x.units.len();
        let k = n.output.len();
        let sizes: Option<Vec<usize>> = if let Some(s) = attr_ints(n, "split") {
            Some(s.iter().map(|&v| v.max(0) as usize).collect())
        } else if let Some(s) = inp(n, 1) {
            self.ctx.const_ints(s).map(|v| v.iter().map(|&v| v.max(0) as usize).collect())
        } else if k > 0 {
            let chunk = c.div_ceil(k);
            Some((0..k).map(|i| chunk.min(c.saturating_sub(i * chunk))).collect())
        } else {
            None
        };
        let Some(sizes) = sizes.filter(|s| s.len() == k && s.iter().sum::<usize>() == c) else {
            self.block(&x.units, &format!("{} (split sizes unknown or inconsistent)", barrier_reason(n)));
            return;
        };
        let mut parts = Vec::new();
        let mut at = 0;
        for (o, &len) in n.output.iter().zip(&sizes) {
            let t =
                Track { axis, rank: x.rank, units: x.units[at..at + len].into(), vals: x.vals[at..at + len].into() };
            parts.push(t.units.clone());
            if !o.is_empty() {
                self.emit(ni, o, t);
            }
            at += len;
        }
        self.st.edits.push(Edit::Split { node: ni, axis, parts });
    }

    pub(super) fn slice_op(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let from_attrs = self.ctx.opset < 10 || attr(n, "starts").is_some();
        // Bounds computed from this tensor's own channel count (a chunk): evaluated here, made
        // to adapt below.
        let data = inp(n, 0).unwrap_or_default();
        let own = |slot: usize| (!from_attrs).then(|| self.own_count_bound(n, slot, data, x.axis)).flatten();
        let computed = [own(1), own(2)];
        let get = |slot: usize, name: &str| -> Option<Option<Vec<i64>>> {
            if from_attrs {
                Some(attr_ints(n, name).map(|v| v.to_vec()))
            } else {
                match inp(n, slot) {
                    None => Some(None),
                    Some(s) => self.ctx.const_ints(s).map(Some).or_else(|| {
                        // slots 1 and 2 (starts, ends) may be computed; the others must be constant
                        let l = (1..=2).contains(&slot).then(|| computed[slot - 1]).flatten()?;
                        Some(Some(vec![l.eval(x.units.len() as i64)?]))
                    }),
                }
            }
        };
        let (Some(Some(starts)), Some(Some(ends)), Some(axes), Some(steps)) =
            (get(1, "starts"), get(2, "ends"), get(3, "axes"), get(4, "steps"))
        else {
            // Computed bounds on other axes only (constant axes without the channel axis:
            // CoordAttention's split of the pooled rows and columns, `[h, w]` read off Shape):
            // the channels pass whole. A bound that reads a channel count keeps that count's
            // group whole, as any other reader of it does.
            let other_axes = (!from_attrs)
                .then(|| get(3, "axes").flatten())
                .flatten()
                .map(|a| a.iter().map(|&a| norm_axis(a, x.rank)).collect::<Option<Vec<_>>>())
                .is_some_and(|a| a.is_some_and(|a| !a.is_empty() && !a.contains(&x.axis)));
            if other_axes && get(4, "steps").is_some() {
                let r = format!("{} (its bounds read the channel count)", barrier_reason(n));
                for slot in [1, 2] {
                    if let Some(v) = inp(n, slot).and_then(|i| self.shape_vecs.get(i)).cloned() {
                        self.block_channel_dims(&v, &r);
                    }
                }
                self.emit(ni, &n.output[0], x);
                return;
            }
            let r = format!("{} (bounds are not constant)", barrier_reason(n));
            self.block(&x.units, &r);
            for slot in 1..n.input.len() {
                if let Some(v) = inp(n, slot).and_then(|i| self.shape_vecs.get(i)).cloned() {
                    self.block_channel_dims(&v, &r);
                }
            }
            return;
        };
        if computed.iter().any(|c| c.is_some()) {
            let axis_ok = match axes.as_deref() {
                Some([a]) => norm_axis(*a, x.rank) == Some(x.axis),
                None => x.axis == 0,
                _ => false,
            };
            let step_ok = steps.as_deref().is_none_or(|s| s == [1]);
            if starts.len() != 1 || !axis_ok || !step_ok {
                let r = format!("{} (bounds computed from the channel count slice another way)", barrier_reason(n));
                self.block(&x.units, &r);
                return;
            }
        }
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let mut out = x.clone();
        for (i, &a) in axes.iter().enumerate() {
            if norm_axis(a, x.rank) != Some(x.axis) {
                continue;
            }
            let step = steps.as_ref().and_then(|s| s.get(i)).copied().unwrap_or(1);
            let c = x.units.len() as i64;
            let clampi = |v: i64| (if v < 0 { v + c } else { v }).clamp(0, c) as usize;
            let (Some(&s0), Some(&e0)) = (starts.get(i), ends.get(i)) else { return };
            let (s, e) = (clampi(s0), clampi(e0));
            if step != 1 {
                // Stepped (or reversed): the kept positions are not evenly spaced any more, so the
                // pruned model selects them with a Gather. Only a Slice of the channel axis alone.
                let idx = slice_positions(s0, e0, step, x.units.len());
                if idx.is_empty() || axes.len() != 1 {
                    let r = format!("{} (empty slice, or a stepped slice of several axes)", barrier_reason(n));
                    self.block(&x.units, &r);
                    return;
                }
                self.select(ni, n, &x, idx, true);
                return;
            }
            if e <= s {
                self.block(&x.units, &format!("{} (empty slice of the channel axis)", barrier_reason(n)));
                return;
            }
            let (ts, te) = if from_attrs {
                (IntTarget::AttrInts(ni, "starts".into()), IntTarget::AttrInts(ni, "ends".into()))
            } else {
                (IntTarget::Input(ni, 1), IntTarget::Input(ni, 2))
            };
            // A bound computed from this tensor's channel count is fed as a constant when it
            // changes (the count of kept positions before it, like a literal bound).
            for (slot, (bound, target, at)) in [(computed[0], ts, s), (computed[1], te, e)].into_iter().enumerate() {
                let before: Units = x.units[..at].into();
                self.st.edits.push(match bound {
                    Some(_) => Edit::Bound { node: ni, slot: slot + 1, before, all: x.units.clone() },
                    None => Edit::Count { target, index: i, units: before },
                });
            }
            self.touch(ni, &x.units);
            out.units = x.units[s..e].into();
            out.vals = x.vals[s..e].into();
        }
        self.emit(ni, &n.output[0], out);
    }

    /// Positions `idx` of the channel axis, in order, become the output's channel axis (a Gather
    /// with constant indices, or a stepped Slice).
    fn select(&mut self, ni: usize, n: &NodeProto, x: &Track, idx: Vec<usize>, slice: bool) {
        let units: Vec<Option<Unit>> = idx.iter().map(|&p| x.units[p]).collect();
        let vals: Vec<Val> = idx.iter().map(|&p| x.vals[p]).collect();
        self.st.edits.push(Edit::Select { node: ni, axis: x.axis, units: x.units.clone(), idx, slice });
        self.touch(ni, &x.units);
        self.emit(ni, &n.output[0], Track { units: units.into(), vals: vals.into(), ..x.clone() });
    }

    pub(super) fn pad(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let pads = attr_ints(n, "pads").map(|v| v.to_vec()).or_else(|| inp(n, 1).and_then(|s| self.ctx.const_ints(s)));
        let axes: Option<Vec<usize>> = match inp(n, 3) {
            None => Some((0..x.rank).collect()),
            Some(s) => self.ctx.const_ints(s).and_then(|v| v.iter().map(|&a| norm_axis(a, x.rank)).collect()),
        };
        let (Some(pads), Some(axes)) = (pads, axes) else {
            self.block(&x.units, &format!("{} (pads are not constant)", barrier_reason(n)));
            return;
        };
        let k = axes.len();
        let touches = axes
            .iter()
            .enumerate()
            .any(|(i, &a)| a == x.axis && (pads.get(i) != Some(&0) || pads.get(i + k) != Some(&0)));
        if touches || pads.len() != 2 * k {
            self.block(&x.units, &format!("{} (pads the channel axis)", barrier_reason(n)));
            return;
        }
        let mode = attr_s(n, "mode").unwrap_or_else(|| "constant".into());
        let value = if self.ctx.opset < 11 {
            attr_f(n, "value").unwrap_or(0.0) as f64
        } else {
            inp(n, 2).and_then(|s| self.ctx.scalar(s)).unwrap_or(0.0)
        };
        let any_pad = pads.iter().any(|&p| p != 0);
        let vals = x
            .vals
            .iter()
            .map(|v| match v {
                Val::Const(k) if mode == "constant" && any_pad && *k != value => Val::Varying,
                v => *v,
            })
            .collect();
        self.pass(ni, n, &x, vals);
    }

    pub(super) fn resize(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let (scales_slot, sizes_slot) =
            if n.op_type == "Upsample" || self.ctx.opset < 11 { (1, None) } else { (2, Some(3)) };
        let axes: Vec<usize> = match attr_ints(n, "axes") {
            Some(a) => a.iter().filter_map(|&v| norm_axis(v, x.rank)).collect(),
            None => (0..x.rank).collect(),
        };
        let Some(idx) = axes.iter().position(|&a| a == x.axis) else {
            self.pass(ni, n, &x, x.vals.clone());
            return;
        };
        let scales = attr(n, "scales")
            .map(|a| a.floats.iter().map(|&v| v as f64).collect::<Vec<_>>())
            .or_else(|| inp(n, scales_slot).and_then(|s| self.ctx.folded_vals(s)));
        let sizes_name = sizes_slot.and_then(|s| inp(n, s));
        let ok = if let Some(sz) = sizes_name {
            let v = self.ctx.const_ints(sz);
            if v.as_ref().and_then(|v| v.get(idx)) == Some(&(x.units.len() as i64)) {
                self.st.edits.push(Edit::Count { target: IntTarget::Input(ni, 3), index: idx, units: x.units.clone() });
                true
            } else {
                false
            }
        } else {
            scales.as_ref().and_then(|s| s.get(idx)) == Some(&1.0)
        };
        if !ok {
            self.block(
                &x.units,
                &format!("{} (resizes the channel axis or sizes are not constant)", barrier_reason(n)),
            );
            return;
        }
        // Cubic overshoots, crop-and-resize extrapolates: a constant stays one only if it is 0.
        let cubic = attr_s(n, "mode").is_some_and(|m| m == "cubic");
        let crop = attr_s(n, "coordinate_transformation_mode").is_some_and(|m| m == "tf_crop_and_resize");
        let vals = x.vals.iter().map(|v| if cubic || crop { zero_only(*v) } else { *v }).collect();
        self.pass(ni, n, &x, vals);
    }

    /// In-features of the Gemm/MatMul that reads `name` (through unary ops and activation
    /// Quantize/DequantizeLinear), for Flatten.
    pub(super) fn features_downstream(&self, name: &str, depth: usize) -> Option<usize> {
        if depth > 16 || self.ctx.is_output(name) {
            return None;
        }
        let mut found = None;
        for &(ci, slot) in self.ctx.ix.consumers_of(name) {
            let c = &self.ctx.g.node[ci];
            let d = |s: usize| inp(c, s).and_then(|w| self.ctx.dims(w)).filter(|d| d.len() == 2).map(|d| d.to_vec());
            let k = match (c.op_type.as_str(), slot, rules::lookup(c)) {
                ("Gemm", 0, _) if attr_i(c, "transA").unwrap_or(0) == 0 => {
                    d(1).map(|d| if attr_i(c, "transB").unwrap_or(0) != 0 { d[1] } else { d[0] })
                }
                ("MatMul", 0, _) => d(1).map(|d| d[0]),
                // Unary ops and the QuantizeLinear/DequantizeLinear pairs of a QDQ model keep the shape.
                (_, 0, Some(Kind::Unary(_) | Kind::Quant(_))) => {
                    c.output.first().and_then(|o| self.features_downstream(o, depth + 1))
                }
                _ => None,
            }?;
            if found.is_some_and(|f| f != k) {
                return None;
            }
            found = Some(k);
        }
        found
    }

    /// Channel c of `x` becomes features c·inner … (c+1)·inner − 1 of `out` (axis `x.axis`).
    pub(super) fn merge_trailing(
        &mut self,
        ni: usize,
        n: &NodeProto,
        x: &Track,
        explicit: Option<usize>,
    ) -> Option<Track> {
        let c = x.units.len();
        let declared = inp(n, 0)
            .and_then(|s| self.ctx.shapes.get(s))
            .filter(|d| d.len() == x.rank)
            .and_then(|d| d[x.axis + 1..].iter().copied().product::<Option<usize>>());
        let last = (x.axis + 1 == x.rank).then_some(c);
        let total =
            explicit.or(last).or_else(|| declared.map(|i| i * c)).or_else(|| self.features_downstream(&n.output[0], 0));
        let inner = total.filter(|&f| c > 0 && f % c == 0 && f > 0).map(|f| f / c);
        let Some(inner) = inner else {
            self.block(
                &x.units,
                &format!("{} (cannot tell how many features each channel becomes)", barrier_reason(n)),
            );
            return None;
        };
        let units: Vec<Option<Unit>> = x.units.iter().flat_map(|u| std::iter::repeat_n(*u, inner)).collect();
        let vals: Vec<Val> = x.vals.iter().flat_map(|v| std::iter::repeat_n(*v, inner)).collect();
        self.touch(ni, &x.units);
        Some(Track { axis: x.axis, rank: x.axis + 1, units: units.into(), vals: vals.into() })
    }

    pub(super) fn flatten(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let axis = norm_axis(attr_i(n, "axis").unwrap_or(1), x.rank + 1).filter(|&a| a <= x.rank);
        if axis != Some(x.axis) || x.axis == 0 {
            self.block(&x.units, &format!("{} (the channel axis is not the first flattened axis)", barrier_reason(n)));
            return;
        }
        if let Some(mut t) = self.merge_trailing(ni, n, &x, None) {
            t.axis = 1;
            t.rank = 2;
            self.emit(ni, &n.output[0], t);
        }
    }

    pub(super) fn squeeze(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let axes =
            self.ctx.axes_of(n).and_then(|a| a.iter().map(|&v| norm_axis(v, x.rank)).collect::<Option<BTreeSet<_>>>());
        match axes {
            Some(ax) if !ax.is_empty() && !ax.contains(&x.axis) => {
                let axis = x.axis - ax.iter().filter(|&&a| a < x.axis).count();
                let t = Track { axis, rank: x.rank - ax.len(), ..x.clone() };
                self.emit(ni, &n.output[0], t);
            }
            _ => self
                .block(&x.units, &format!("{} (squeezed axes unknown or include the channel axis)", barrier_reason(n))),
        }
    }

    pub(super) fn unsqueeze(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let Some(axes) = self.ctx.axes_of(n) else {
            self.block(&x.units, &format!("{} (axes unknown)", barrier_reason(n)));
            return;
        };
        let r = x.rank + axes.len();
        let Some(ax) = axes.iter().map(|&a| norm_axis(a, r)).collect::<Option<BTreeSet<_>>>() else { return };
        // The channel axis lands on the x.axis-th position that is not inserted.
        let axis = (0..r).filter(|i| !ax.contains(i)).nth(x.axis);
        if let Some(axis) = axis {
            let t = Track { axis, rank: r, ..x.clone() };
            self.emit(ni, &n.output[0], t);
        }
    }

    pub(super) fn transpose(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let perm: Vec<i64> =
            attr_ints(n, "perm").map(|p| p.to_vec()).unwrap_or_else(|| (0..x.rank as i64).rev().collect());
        match perm.iter().position(|&p| p == x.axis as i64).filter(|_| perm.len() == x.rank) {
            Some(axis) => {
                let t = Track { axis, ..x.clone() };
                self.emit(ni, &n.output[0], t);
                let hint = inp(n, 0).and_then(|i| self.dims_hint.get(i)).cloned();
                if let Some(h) = hint.filter(|h| h.len() == perm.len()) {
                    let out: Option<Vec<Option<usize>>> =
                        perm.iter().map(|&p| usize::try_from(p).ok().and_then(|p| h.get(p).copied())).collect();
                    if let Some(out) = out {
                        self.dims_hint.insert(n.output[0].clone(), out);
                    }
                }
            }
            None => self.block(&x.units, &format!("{} (bad perm)", barrier_reason(n))),
        }
    }

    pub(super) fn gather(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else {
            self.embedding(ni, n);
            return;
        };
        let axis = norm_axis(attr_i(n, "axis").unwrap_or(0), x.rank);
        let q = inp(n, 1).and_then(|s| self.ctx.rank(s));
        match (axis, q) {
            (Some(a), Some(q)) if a != x.axis => {
                let axis = if x.axis < a { x.axis } else { x.axis + q - 1 };
                let t = Track { axis, rank: x.rank + q - 1, ..x.clone() };
                self.emit(ni, &n.output[0], t);
            }
            (Some(_), Some(1)) => {
                // Constant 1-D indices on the channel axis: output position p is input position
                // idx[p]; the rewrite keeps the kept ones and renumbers them.
                let c = x.units.len() as i64;
                let idx: Option<Vec<usize>> = inp(n, 1).and_then(|s| self.ctx.const_ints(s)).and_then(|v| {
                    v.iter().map(|&i| (-c..c).contains(&i).then_some(if i < 0 { i + c } else { i } as usize)).collect()
                });
                match idx.filter(|i| !i.is_empty()) {
                    Some(idx) => self.select(ni, n, &x, idx, false),
                    None => self.block(
                        &x.units,
                        &format!(
                            "{} (indices on the channel axis are not constant or out of range)",
                            barrier_reason(n)
                        ),
                    ),
                }
            }
            _ => self.block(&x.units, &format!("{} (gathers a single channel)", barrier_reason(n))),
        }
    }

    /// Gather(table [V, D], ids) on axis 0 of a constant table: an embedding lookup. Its D
    /// columns are units (a removed one emits 0: the column is zeroed in the masked model).
    fn embedding(&mut self, ni: usize, n: &NodeProto) {
        let (Some(t), Some(ids)) = (inp(n, 0), inp(n, 1)) else { return };
        let d = self.ctx.dims(t).map(|d| d.to_vec());
        let q = self.ctx.rank(ids);
        let axis0 = attr_i(n, "axis").unwrap_or(0) == 0;
        let float = self.ctx.base_tensor(t).is_some_and(|b| tensor::is_float(b.data_type));
        let (Some(d), Some(q)) = (d, q) else { return };
        if d.len() != 2
            || !axis0
            || !float
            || self.ctx.consts.get(t).is_some_and(|c| c.dq.is_some())
            || self.is_const(ids)
        {
            return;
        }
        let units = self.new_layer(ni, d[1]);
        self.slice(t, 1, &units, (ni, 0), Role::Producer);
        self.st.sources.insert(ni, units.clone());
        let vals = self.producer_out(ni, vec![Val::Const(0.0); d[1]].into());
        self.emit(ni, &n.output[0], Track { axis: q, rank: q + 1, units, vals });
    }

    pub(super) fn along_axis(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let default = if self.ctx.opset >= 13 { -1 } else { 1 };
        let axis = norm_axis(attr_i(n, "axis").unwrap_or(default), x.rank);
        // Before opset 13 the op works on the 2-D coercion [prod(<axis), prod(>=axis)].
        let hit = match axis {
            Some(a) if self.ctx.opset >= 13 => a == x.axis,
            Some(a) => x.axis >= a,
            None => true,
        };
        if hit {
            self.block(&x.units, &format!("{} (normalises along the channel axis)", barrier_reason(n)));
            return;
        }
        self.pass(ni, n, &x, vec![Val::Varying; x.units.len()].into());
    }

    /// Reached only when the Shape could not be followed (unknown rank).
    pub(super) fn shape(&mut self, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let s = norm_bound(attr_i(n, "start").unwrap_or(0), x.rank);
        let e = norm_bound(attr_i(n, "end").unwrap_or(x.rank as i64), x.rank);
        if (s..e).contains(&x.axis) {
            self.block(&x.units, &format!("{} (reads the channel count)", barrier_reason(n)));
        }
    }
}

/// The positions an ONNX Slice with (start, end, step ≠ 0) selects on an axis of `dim`.
pub(super) fn slice_positions(start: i64, end: i64, step: i64, dim: usize) -> Vec<usize> {
    let d = dim as i64;
    let fix = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
    let (s, e) = (fix(start), fix(end));
    let mut out = vec![];
    if step > 0 {
        let (mut p, e) = (s.clamp(0, d), e.clamp(0, d));
        while p < e {
            out.push(p as usize);
            p = p.saturating_add(step);
        }
    } else if step < 0 {
        let (mut p, e) = (s.clamp(0, d - 1), e.clamp(-1, d - 1));
        while p > e {
            out.push(p as usize);
            p = p.saturating_add(step);
        }
    }
    out
}
