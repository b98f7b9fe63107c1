//! The forward flood of a MatMul attention block: from the projection outputs, track on every
//! tensor up to the output projection which axis holds the heads (see `layout`); every consumer
//! of a tracked tensor must be understood, or the block is blocked.

use super::*;

pub(super) struct Flood {
    pub(super) info: PathInfo,
    pub(super) tracked: HashMap<String, Track>,
    pub(super) score: Option<usize>,
    pub(super) av: Option<usize>,
    pub(super) out: Option<WeightUse>,
    /// Sources of Q, K, V as seen at the MatMuls.
    pub(super) roles: [Option<Src>; 3],
    /// Grouped-query 4-D Attention: only Q is tracked; K and V are kept whole.
    pub(super) gqa: bool,
}

impl Flood {
    pub(super) fn run(ctx: &Ctx, found: &[Found], h: usize, d: usize, dv: usize, fused: bool) -> Result<Flood> {
        Self::run_with(ctx, found, h, d, dv, fused, false)
    }

    pub(super) fn run_with(
        ctx: &Ctx,
        found: &[Found],
        h: usize,
        d: usize,
        dv: usize,
        fused: bool,
        gqa: bool,
    ) -> Result<Flood> {
        let mut fl = Flood {
            info: PathInfo { heads: h, ..Default::default() },
            tracked: HashMap::new(),
            score: None,
            av: None,
            out: None,
            roles: [None; 3],
            gqa,
        };
        let mut first = usize::MAX;
        let mut processed = BTreeSet::new();
        for (i, f) in found.iter().enumerate() {
            let shape = ctx.shape(0, &f.seed)?;
            let axis = shape.len().checked_sub(1).context("scalar projection output")?;
            let inner = if i == 2 { dv } else { d };
            let part = fused.then_some(Factor { axis, inner: h * d, count: 3 });
            fl.track(
                ctx,
                &f.seed,
                Track { head: Factor { axis, inner, count: h }, part, src: Src::Proj { proj: i, part: None } },
            )?;
            let last = f.bias.map(|b| b.node).unwrap_or(f.node);
            first = first.min(last + 1);
        }
        for ni in first..ctx.g.node.len() {
            let n = &ctx.g.node[ni];
            if !n.input.iter().any(|i| fl.tracked.contains_key(i)) {
                continue;
            }
            fl.step(ctx, ni).with_context(|| format!("{} '{}'", n.op_type, node_label(n)))?;
            processed.insert(ni);
            if !matches!(n.op_type.as_str(), "Shape") {
                fl.info.nodes.insert(ni);
            }
        }
        // Every reader of an attention tensor must have been interpreted (a graph that is not
        // in topological order could hide one).
        for name in fl.tracked.keys() {
            if let Some(&(c, _)) = ctx.ix.consumers_of(name).iter().find(|(c, _)| !processed.contains(c)) {
                bail!(
                    "'{name}' is read by '{}', which was not analysed (graph not topologically sorted?)",
                    node_label(&ctx.g.node[c])
                );
            }
        }
        if fl.score.is_none() || fl.av.is_none() || fl.out.is_none() {
            bail!("the path from the projections does not close (scores, A·V and output projection)");
        }
        let srcs: BTreeSet<String> = fl.roles.iter().map(|r| format!("{r:?}")).collect();
        if srcs.len() != 3 {
            bail!("Q, K and V do not come from three distinct projections or parts");
        }
        Ok(fl)
    }

    fn track(&mut self, ctx: &Ctx, name: &str, t: Track) -> Result<()> {
        if ctx.ix.outputs.contains(name) {
            bail!("attention tensor '{name}' is a graph output");
        }
        if ctx.ix.captured.contains(name) {
            bail!("attention tensor '{name}' is used inside a subgraph");
        }
        for p in 0..2 {
            let s = ctx.shape(p, name)?;
            if !layout::fits(s, t.head) || t.part.is_some_and(|f| !layout::fits(s, f)) {
                bail!("'{name}': shape {s:?} does not hold the heads as expected");
            }
        }
        self.info.head_axis.insert(name.to_string(), t.head.axis);
        self.tracked.insert(name.to_string(), t);
        Ok(())
    }

    /// Apply a per-probe rule and demand the same answer for both probe sizes.
    fn both<T: PartialEq + std::fmt::Debug>(f: impl Fn(usize) -> Result<T>) -> Result<T> {
        let a = f(0)?;
        let b = f(1)?;
        if a != b {
            bail!("the head layout depends on the input size ({a:?} vs {b:?})");
        }
        Ok(a)
    }

    fn step(&mut self, ctx: &Ctx, ni: usize) -> Result<()> {
        let n = &ctx.g.node[ni];
        if !is_default(n) || !arity_ok(n) {
            bail!("unsupported or malformed op on the attention path");
        }
        let tin: Vec<(usize, Track)> =
            n.input.iter().enumerate().filter_map(|(s, i)| self.tracked.get(i).map(|t| (s, *t))).collect();
        let op = n.op_type.as_str();
        match op {
            "Shape" => return Ok(()),
            "Reshape" | "Squeeze" | "Unsqueeze" | "Flatten" | "Identity" | "Dropout" => {
                self.only_data_input(&tin, op)?;
                if op == "Dropout"
                    && n.output.iter().skip(1).any(|o| !o.is_empty() && !ctx.ix.consumers_of(o).is_empty())
                {
                    bail!("Dropout mask is used");
                }
                let t = tin[0].1;
                let mapped = Self::both(|p| {
                    let (i, o) = (ctx.shape(p, &n.input[0])?, ctx.shape(p, &n.output[0])?);
                    let head = layout::map_flat(i, o, t.head).context("heads split over two axes")?;
                    let part = match t.part {
                        Some(f) => Some(layout::map_flat(i, o, f).context("Q/K/V parts split over two axes")?),
                        None => None,
                    };
                    Ok((head, part))
                })?;
                if op == "Reshape" {
                    self.info.reshapes.push(ni);
                } else {
                    self.fixed(ctx, ni, &[0]);
                }
                self.track(ctx, &n.output[0], Track { head: mapped.0, part: mapped.1, ..t })?;
            }
            "Transpose" => {
                self.only_data_input(&tin, op)?;
                let t = tin[0].1;
                let rank = ctx.shape(0, &n.input[0])?.len();
                let perm: Vec<usize> = match attr_ints(&ctx.g.node[ni], "perm") {
                    Some(p) => p.iter().map(|&x| x as usize).collect(),
                    None => (0..rank).rev().collect(),
                };
                let head = layout::map_perm(&perm, t.head).context("bad perm")?;
                let part = match t.part {
                    Some(f) => Some(layout::map_perm(&perm, f).context("bad perm")?),
                    None => None,
                };
                self.track(ctx, &n.output[0], Track { head, part, ..t })?;
            }
            "MatMul" | "Gemm" if tin.len() == 1 && tin[0].0 == 0 => self.output_projection(ctx, ni, tin[0].1)?,
            "MatMul" if tin.len() == 2 => self.attention_matmul(ctx, ni, tin[0].1, tin[1].1)?,
            "Attention" => self.onnx_attention(ctx, ni, &tin)?,
            "Gather" => self.gather_part(ctx, ni, &tin)?,
            "Split" => self.split_parts(ctx, ni, &tin)?,
            "Slice" => self.slice_part(ctx, ni, &tin)?,
            "Add" | "Sub" | "Mul" | "Div" | "Where" | "IsNaN" | "Cast" | "Softmax" | "LogSoftmax" | "Max" | "Min"
            | "Pow" | "Sqrt" | "Exp" | "Neg" | "Abs" | "Relu" | "Tanh" | "Sigmoid" | "Erf" => {
                self.elementwise(ctx, ni, &tin)?
            }
            _ => bail!("unsupported op on the attention path"),
        }
        Ok(())
    }

    fn only_data_input(&self, tin: &[(usize, Track)], op: &str) -> Result<()> {
        if tin.len() != 1 || tin[0].0 != 0 {
            bail!("{op} with an attention tensor as a shape operand");
        }
        Ok(())
    }

    /// Operands of a path node that must be the same after the rewrite (all but `skip`).
    fn fixed(&mut self, ctx: &Ctx, ni: usize, skip: &[usize]) {
        for (s, i) in ctx.g.node[ni].input.iter().enumerate() {
            if !i.is_empty() && !skip.contains(&s) && !self.tracked.contains_key(i) && !ctx.is_const(i) {
                self.info.fixed_operands.push((ni, s));
            }
        }
    }

    fn elementwise(&mut self, ctx: &Ctx, ni: usize, tin: &[(usize, Track)]) -> Result<()> {
        let n = &ctx.g.node[ni];
        let src = tin[0].1.src;
        if tin.iter().any(|(_, t)| t.src != src) {
            bail!("mixes tensors of different origins");
        }
        let out = &n.output[0];
        let mapped = Self::both(|p| {
            let os = ctx.shape(p, out)?;
            let mut res: Option<(Factor, Option<Factor>)> = None;
            for (s, inp) in n.input.iter().enumerate() {
                if inp.is_empty() {
                    continue;
                }
                let is = ctx.shape(p, inp)?;
                let off = os.len().checked_sub(is.len()).context("operand of higher rank than the result")?;
                if let Some((_, t)) = tin.iter().find(|(ts, _)| *ts == s) {
                    let sh = |f: Factor| Factor { axis: f.axis + off, ..f };
                    let m = (sh(t.head), t.part.map(sh));
                    if is[t.head.axis] != os[m.0.axis] || res.is_some_and(|r| r != m) {
                        bail!("attention operands with different head layouts");
                    }
                    res = Some(m);
                }
            }
            let (head, part) = res.context("no attention operand")?;
            for (s, inp) in n.input.iter().enumerate() {
                if inp.is_empty() || tin.iter().any(|(ts, _)| *ts == s) {
                    continue;
                }
                let is = ctx.shape(p, inp)?;
                let off = os.len() - is.len().min(os.len());
                for f in std::iter::once(head).chain(part) {
                    if f.axis >= off && is.get(f.axis - off).is_some_and(|&dim| dim != 1) {
                        bail!("operand '{inp}' varies along the head axis (per-head mask or scale)");
                    }
                }
            }
            Ok((head, part))
        })?;
        if matches!(n.op_type.as_str(), "Softmax" | "LogSoftmax") {
            let rank = ctx.shape(0, out)?.len() as i64;
            let default = if ctx.opset < 13 { 1 } else { -1 };
            let ax = attr_i(n, "axis").unwrap_or(default);
            let ax = if ax < 0 { ax + rank } else { ax };
            if ctx.opset < 13 && ax != rank - 1 {
                bail!("Softmax (opset < 13) over several axes");
            }
            if ax as usize == mapped.0.axis || mapped.1.is_some_and(|f| f.axis as i64 == ax) {
                bail!("Softmax across heads");
            }
        }
        self.fixed(ctx, ni, &[]);
        self.track(ctx, out, Track { head: mapped.0, part: mapped.1, src })
    }

    fn attention_matmul(&mut self, ctx: &Ctx, ni: usize, a: Track, b: Track) -> Result<()> {
        let n = &ctx.g.node[ni];
        if a.part.is_some() || b.part.is_some() {
            bail!("MatMul of a fused Q/K/V tensor");
        }
        let head = Self::both(|p| {
            let (sa, sb, so) = (ctx.shape(p, &n.input[0])?, ctx.shape(p, &n.input[1])?, ctx.shape(p, &n.output[0])?);
            if sa.len() < 2 || sb.len() < 2 || a.head.axis + 2 >= sa.len() || b.head.axis + 2 >= sb.len() {
                bail!("heads on a matrix axis of a MatMul");
            }
            let ha = Factor { axis: a.head.axis + so.len() - sa.len(), ..a.head };
            let hb = Factor { axis: b.head.axis + so.len() - sb.len(), ..b.head };
            if ha != hb || sa[a.head.axis] != sb[b.head.axis] {
                bail!("MatMul operands pair different heads");
            }
            Ok(ha)
        })?;
        let src = match (a.src, b.src) {
            (Src::Proj { .. }, Src::Proj { .. }) if self.score.is_none() => {
                self.score = Some(ni);
                self.roles[0] = Some(a.src);
                self.roles[1] = Some(b.src);
                Src::Scores
            }
            (Src::Scores, Src::Proj { .. }) if self.av.is_none() => {
                self.av = Some(ni);
                self.roles[2] = Some(b.src);
                Src::Context
            }
            _ => bail!("unexpected MatMul of attention tensors"),
        };
        self.track(ctx, &n.output[0], Track { head, part: None, src })
    }

    /// ONNX Attention with 4-D Q, K, V (slots 0–2) carrying the heads on axis 1: scores and A·V
    /// in one op. Only the plain form: no past/present state, no per-head mask, no qk output.
    fn onnx_attention(&mut self, ctx: &Ctx, ni: usize, tin: &[(usize, Track)]) -> Result<()> {
        let n = &ctx.g.node[ni];
        if ["q_num_heads", "kv_num_heads"].iter().any(|a| attr_i(n, a).is_some()) {
            bail!("3-D Attention on the MatMul path");
        }
        let slots: Vec<usize> = tin.iter().map(|(s, _)| *s).collect();
        let want: &[usize] = if self.gqa { &[0] } else { &[0, 1, 2] };
        if slots != want || self.score.is_some() {
            bail!("Attention whose Q, K and V are not the three projections");
        }
        let present = |s: usize| n.input.get(s).is_some_and(|i| !i.is_empty());
        let used = |s: usize| {
            n.output
                .get(s)
                .is_some_and(|o| !o.is_empty() && (!ctx.ix.consumers_of(o).is_empty() || ctx.ix.outputs.contains(o)))
        };
        if present(4) || present(5) || (1..4).any(used) || n.input.len() > 6 {
            bail!("past/present key-value state or the qk output is used (per-head shapes)");
        }
        for (_, t) in tin {
            if t.part.is_some() || t.head.axis != 1 || t.head.inner != 1 {
                bail!("Q/K/V do not hold the heads on axis 1");
            }
        }
        let head = tin[0].1.head;
        if tin.iter().any(|(_, t)| t.head != head) {
            bail!("Q, K and V have different head counts (grouped-query 4-D Attention is not supported)");
        }
        if present(3) {
            Self::both(|p| {
                let m = ctx.shape(p, &n.input[3])?;
                if m.len() >= 3 && m[m.len() - 3] != 1 {
                    bail!("attention mask '{}' varies per head", n.input[3]);
                }
                Ok(())
            })?;
            self.fixed(ctx, ni, &[0, 1, 2]);
        }
        self.score = Some(ni);
        self.av = Some(ni);
        self.roles = if self.gqa {
            // K and V are kept whole: they stand for projections 1 and 2 of the block.
            [Some(tin[0].1.src), Some(Src::Proj { proj: 1, part: None }), Some(Src::Proj { proj: 2, part: None })]
        } else {
            [Some(tin[0].1.src), Some(tin[1].1.src), Some(tin[2].1.src)]
        };
        self.track(ctx, &n.output[0], Track { head, part: None, src: Src::Context })
    }

    fn output_projection(&mut self, ctx: &Ctx, ni: usize, t: Track) -> Result<()> {
        let n = &ctx.g.node[ni];
        if t.src != Src::Context || self.out.is_some() {
            bail!("projection of an attention tensor that is not the attention output");
        }
        let f = projection_at(ctx, ni, &n.output[0])?.context("output projection without a constant weight")?;
        let rows_axis = 1 - f.weight.axis;
        Self::both(|p| {
            let s = ctx.shape(p, &n.input[0])?;
            if t.head.axis + 1 != s.len() || t.head.inner * t.head.count != s[t.head.axis] {
                bail!("the output projection input does not hold the heads as [.., H·D]");
            }
            Ok(())
        })?;
        self.out = Some(WeightUse { node: ni, slot: f.weight.slot, axis: rows_axis });
        Ok(())
    }

    /// Gather with a constant index on the part axis of a fused tensor selects Q, K or V.
    fn gather_part(&mut self, ctx: &Ctx, ni: usize, tin: &[(usize, Track)]) -> Result<()> {
        let n = &ctx.g.node[ni];
        self.only_data_input(tin, "Gather")?;
        let t = tin[0].1;
        let pf = t.part.context("Gather on an attention tensor (not a Q/K/V selection)")?;
        let ax = norm_axis(attr_i(n, "axis").unwrap_or(0), ctx.shape(0, &n.input[0])?.len())?;
        let idx = ctx.const_ints(&n.input[1]).context("Gather with a computed index")?;
        let ishape = ctx.shape(0, &n.input[1])?.to_vec();
        if ax != pf.axis || pf.inner != 1 || ctx.shape(0, &n.input[0])?[ax] != 3 || idx.len() != 1 || ax == t.head.axis
        {
            bail!("Gather that is not a Q/K/V selection");
        }
        let part = (if idx[0] < 0 { idx[0] + 3 } else { idx[0] }) as usize;
        if part > 2 {
            bail!("Q/K/V index {} out of range", idx[0]);
        }
        let mut head = t.head;
        if ishape.is_empty() && head.axis > ax {
            head.axis -= 1;
        }
        let Src::Proj { proj, .. } = t.src else { bail!("Gather of a non-projection tensor") };
        self.track(ctx, &n.output[0], Track { head, part: None, src: Src::Proj { proj, part: Some(part) } })
    }

    /// Split of a fused tensor into its three parts.
    fn split_parts(&mut self, ctx: &Ctx, ni: usize, tin: &[(usize, Track)]) -> Result<()> {
        let n = &ctx.g.node[ni];
        self.only_data_input(tin, "Split")?;
        let t = tin[0].1;
        let pf = t.part.context("Split of an attention tensor (not a Q/K/V split)")?;
        let shape = ctx.shape(0, &n.input[0])?.to_vec();
        let ax = norm_axis(attr_i(n, "axis").unwrap_or(0), shape.len())?;
        if ax != pf.axis || shape[ax] != 3 * pf.inner || n.output.len() != 3 {
            bail!("Split that is not a Q/K/V split");
        }
        for p in 0..2 {
            for o in &n.output {
                if ctx.shape(p, o)?.get(ax).copied() != ctx.shape(p, &n.input[0])?.get(ax).map(|d| d / 3) {
                    bail!("Split pieces are not the three parts");
                }
            }
        }
        let Src::Proj { proj, .. } = t.src else { bail!("Split of a non-projection tensor") };
        self.info.splits.push((ni, ax));
        for (k, o) in n.output.iter().enumerate() {
            if !o.is_empty() {
                self.track(ctx, o, Track { head: t.head, part: None, src: Src::Proj { proj, part: Some(k) } })?;
            }
        }
        Ok(())
    }

    /// Slice of one part of a fused tensor.
    fn slice_part(&mut self, ctx: &Ctx, ni: usize, tin: &[(usize, Track)]) -> Result<()> {
        let n = &ctx.g.node[ni];
        self.only_data_input(tin, "Slice")?;
        let t = tin[0].1;
        let pf = t.part.context("Slice of an attention tensor (not a Q/K/V selection)")?;
        if ctx.opset < 10 {
            bail!("Slice before opset 10");
        }
        let shape = ctx.shape(0, &n.input[0])?.to_vec();
        let starts = ctx.const_ints(&n.input[1]).context("Slice with computed starts")?;
        let ends = ctx.const_ints(n.input.get(2).context("Slice without ends")?).context("Slice with computed ends")?;
        let axes = match n.input.get(3).filter(|s| !s.is_empty()) {
            Some(a) => ctx.const_ints(a).context("Slice with computed axes")?,
            None => vec![0],
        };
        if let Some(st) = n.input.get(4).filter(|s| !s.is_empty()) {
            if ctx.const_ints(st).context("Slice with computed steps")? != [1] {
                bail!("Slice with a step");
            }
        }
        if starts.len() != 1 || ends.len() != 1 || axes.len() != 1 {
            bail!("Slice over several axes");
        }
        let ax = norm_axis(axes[0], shape.len())?;
        let (s, e) = clamp_range(starts[0], ends[0], shape[ax]);
        if ax != pf.axis || shape[ax] != 3 * pf.inner || s % pf.inner != 0 || e != s + pf.inner {
            bail!("Slice that is not a Q/K/V selection");
        }
        let Src::Proj { proj, .. } = t.src else { bail!("Slice of a non-projection tensor") };
        let part = s / pf.inner;
        self.info.slices.push((ni, ax, part));
        self.track(ctx, &n.output[0], Track { head: t.head, part: None, src: Src::Proj { proj, part: Some(part) } })
    }
}
