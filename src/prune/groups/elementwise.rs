//! Dependency analysis, element-wise ops: unary activations (the constant a removed unit emits
//! through them), activation Quantize/DequantizeLinear pairs, onnxruntime's fused bias
//! activations, and broadcasting binary ops (residual Add, SE Mul, per-channel constants).

use super::*;

/// The end of the reason a one-channel tracked tensor broadcast along a wider one is kept for
/// (the report shows such a one-unit group as kept, not blocked: EMP keeps one unit anyway).
pub const ONE_CHANNEL_BROADCAST: &str = "(one channel, broadcast along a wider tensor's)";

impl Analyzer<'_, '_> {
    pub(super) fn unary(&mut self, ni: usize, n: &NodeProto, x: Option<Track>, f: rules::UnaryFn) {
        let Some(x) = x else { return };
        let mut scalars = vec![None; n.input.len()];
        for (slot, i) in n.input.iter().enumerate().skip(1) {
            if i.is_empty() {
                continue;
            }
            if !self.is_const(i) {
                let r = format!("{} (parameter '{i}' is not a constant)", barrier_reason(n));
                self.block(&x.units, &r);
                return;
            }
            scalars[slot] = self.ctx.scalar(i);
        }
        if !self.extra_outputs_unused(n, &x) {
            return;
        }
        let vals = x.vals.iter().map(|v| map_val(*v, |k| f(n, &scalars, k))).collect();
        self.pass(ni, n, &x, vals);
    }

    /// Quantize / dequantize an activation: per-tensor scale and zero point only (a per-channel
    /// one on the tracked axis would have to be sliced; not supported yet, so a barrier).
    pub(super) fn quant(&mut self, ni: usize, n: &NodeProto, x: Option<Track>, dequant: bool) {
        let Some(x) = x else { return };
        let scalar = |slot: usize| inp(n, slot).map(|s| self.ctx.scalar(s));
        let (Some(Some(scale)), zp) = (scalar(1), scalar(2)) else {
            self.block(&x.units, &format!("{} (scale is not one constant for the tensor)", barrier_reason(n)));
            return;
        };
        let Some(zp) = zp.unwrap_or(Some(0.0)) else {
            self.block(&x.units, &format!("{} (zero point is not one constant)", barrier_reason(n)));
            return;
        };
        // The integer range: the zero point's type (uint8 when absent).
        let zt = inp(n, 2).and_then(|z| self.ctx.base_tensor(z)).map(|t| t.data_type).unwrap_or(tensor::dt::UINT8);
        let (lo, hi) = match zt {
            tensor::dt::INT8 => (-128.0, 127.0),
            tensor::dt::UINT8 => (0.0, 255.0),
            tensor::dt::INT16 => (-32768.0, 32767.0),
            tensor::dt::UINT16 => (0.0, 65535.0),
            _ => {
                self.block(&x.units, &format!("{} (unsupported integer type)", barrier_reason(n)));
                return;
            }
        };
        if scale == 0.0 || !self.extra_outputs_unused(n, &x) {
            self.block(&x.units, &format!("{} (zero scale or extra outputs)", barrier_reason(n)));
            return;
        }
        let f = |v: f64| {
            if dequant {
                Some((v - zp) * scale)
            } else {
                Some(((v / scale).round_ties_even() + zp).clamp(lo, hi))
            }
        };
        let vals = x.vals.iter().map(|v| map_val(*v, f)).collect();
        self.pass(ni, n, &x, vals);
    }

    /// act(x + bias): the optional bias (input 1) is a constant vector on the last axis, sliced
    /// with the channels when the channels are that axis.
    pub(super) fn bias_act(&mut self, ni: usize, n: &NodeProto, x: Option<Track>, f: rules::BiasActFn) {
        let Some(x) = x else { return };
        if n.input.iter().skip(2).any(|s| !s.is_empty()) || !self.extra_outputs_unused(n, &x) {
            self.block(&x.units, &format!("{} (extra inputs or outputs)", barrier_reason(n)));
            return;
        }
        let c = x.units.len();
        let bias = match inp(n, 1) {
            None => vec![0.0; c],
            Some(b) => {
                let d = self.ctx.dims(b).map(|d| d.to_vec());
                let vals = self.ctx.const_vals(b);
                match (d, vals) {
                    (Some(d), Some(v)) if d == [c] && x.axis + 1 == x.rank => {
                        self.slice(b, 0, &x.units, (ni, 1), Role::Param);
                        v
                    }
                    (Some(d), Some(v)) if d.iter().product::<usize>() == 1 && x.axis + 1 != x.rank => vec![v[0]; c],
                    _ => {
                        let r = format!("{} (bias is not a constant on the channel axis)", barrier_reason(n));
                        self.block(&x.units, &r);
                        return;
                    }
                }
            }
        };
        let vals = x.vals.iter().zip(&bias).map(|(v, b)| map_val(*v, |k| Some(f(n, k + b)))).collect();
        self.pass(ni, n, &x, vals);
    }

    pub(super) fn broadcast(&mut self, ni: usize, n: &NodeProto, f: rules::BinaryFn) {
        let ins: Vec<(usize, &str)> =
            n.input.iter().enumerate().filter(|(_, s)| !s.is_empty()).map(|(i, s)| (i, s.as_str())).collect();
        let mut tracked: Vec<(usize, Track)> = ins.iter().filter_map(|(i, s)| self.track(s).map(|t| (*i, t))).collect();
        if tracked.is_empty() {
            return;
        }
        // A tracked input one channel wide beside a wider one broadcasts along its channels (CBAM's
        // spatial attention map times the features): it is kept (one unit is never cut) and taken
        // as any untracked activation that broadcasts.
        let mut narrow: BTreeSet<usize> = BTreeSet::new();
        if tracked.iter().any(|(_, t)| t.units.len() > 1) {
            let wide_axis: Vec<usize> =
                (tracked.iter()).filter(|(_, t)| t.units.len() > 1).map(|(_, t)| t.rank - t.axis).collect();
            for (slot, t) in &tracked {
                if t.units.len() == 1 && wide_axis.iter().all(|&k| k == t.rank - t.axis) {
                    let r = format!("{} {ONE_CHANNEL_BROADCAST}", barrier_reason(n));
                    self.block(&t.units, &r);
                    narrow.insert(*slot);
                }
            }
            tracked.retain(|(slot, _)| !narrow.contains(slot));
        }
        let all_units: Vec<Option<Unit>> = tracked.iter().flat_map(|(_, t)| t.units.iter().copied()).collect();
        let ranks: Option<Vec<usize>> =
            ins.iter().map(|(_, s)| self.track(s).map(|t| t.rank).or_else(|| self.rank(s))).collect();
        let Some(out_rank) = ranks.and_then(|r| r.into_iter().max()) else {
            let r = format!("{} (rank of an input unknown)", barrier_reason(n));
            self.block(&all_units, &r);
            return;
        };
        let axis = tracked[0].1.axis + out_rank - tracked[0].1.rank;
        let c = tracked[0].1.units.len();
        if tracked.iter().any(|(_, t)| t.axis + out_rank - t.rank != axis || t.units.len() != c) {
            let r = format!("{} (inputs carry channels on different axes)", barrier_reason(n));
            self.block(&all_units, &r);
            return;
        }
        let units = tracked[0].1.units.clone();
        let join_reason = format!("{} (joined with an untracked channel)", barrier_reason(n));
        for (_, t) in &tracked[1..] {
            for (a, b) in units.iter().zip(t.units.iter()) {
                self.join(*a, *b, &join_reason);
            }
        }
        // Per input, per position: the constant a removed unit sees.
        let mut per_input: Vec<Vals> = Vec::new();
        for (slot, s) in &ins {
            if narrow.contains(slot) {
                per_input.push(vec![Val::Varying; c].into());
                continue;
            }
            if let Some(t) = self.track(s) {
                per_input.push(t.vals);
                continue;
            }
            let r = self.rank(s).unwrap_or(0);
            let off = out_rank - r;
            if let Some(d) = self.ctx.dims(s).map(|d| d.to_vec()) {
                let numel: usize = d.iter().product();
                if axis >= off && d[axis - off] == c && c != 1 {
                    self.slice(s, axis - off, &units, (ni, *slot), Role::Param);
                    let per_channel = d.iter().enumerate().all(|(i, &k)| i == axis - off || k == 1);
                    let vals = match self.ctx.const_vals(s) {
                        Some(v) if per_channel => v.into_iter().map(Val::Const).collect(),
                        _ => vec![Val::Varying; c].into(),
                    };
                    per_input.push(vals);
                } else if axis < off || d[axis - off] == 1 {
                    let v = if numel == 1 {
                        self.ctx.scalar(s).map(Val::Const).unwrap_or(Val::Varying)
                    } else {
                        Val::Varying
                    };
                    per_input.push(vec![v; c].into());
                } else {
                    let r = format!(
                        "{} (constant '{s}' has {} entries on the channel axis, not {c})",
                        barrier_reason(n),
                        d[axis - off]
                    );
                    self.block(&units, &r);
                    return;
                }
            } else if self.means.get(*s).is_some_and(|m| m.1 == axis && m.2 == out_rank) {
                // A statistic of tracked units (a normalisation's mean or √(var + ε)): size 1 on
                // the axis.
                per_input.push(vec![Val::Varying; c].into());
            } else {
                // An untracked activation: fine only when it broadcasts along the channel axis.
                let dim = self.ctx.shapes.get(*s).and_then(|d| {
                    if axis >= off {
                        d.get(axis - off).copied().flatten()
                    } else {
                        Some(1)
                    }
                });
                if axis >= off && dim != Some(1) {
                    let r = format!("{} (joined with untracked tensor '{s}')", barrier_reason(n));
                    self.block(&units, &r);
                    // The output still has the tracked side's channels (more than one: the
                    // other side has as many or broadcasts), now kept whole: what follows
                    // knows their count (a Concat beside them, a UNet's skip).
                    if c > 1 {
                        if let Some(o) = n.output.first() {
                            let t = Track { axis, rank: out_rank, units, vals: vec![Val::Varying; c].into() };
                            self.emit(ni, o, t);
                        }
                    }
                    return;
                }
                per_input.push(vec![Val::Varying; c].into());
            }
        }
        let is_mul = n.op_type == "Mul";
        // Division by a normalisation's statistic (√(var + ε), never 0 with ε > 0).
        let by_stat = n.op_type == "Div" && ins.len() == 2 && self.means.contains_key(ins[1].1);
        let mut vals: Vals = (0..c)
            .map(|p| {
                let mut acc = per_input[0][p];
                for vs in &per_input[1..] {
                    acc = match (acc, vs[p]) {
                        (Val::Const(a), Val::Const(b)) => f(a, b).map(Val::Const).unwrap_or(Val::Varying),
                        // 0 · anything finite = 0 (the other side is an activation or weight).
                        (Val::Const(z), _) | (_, Val::Const(z)) if is_mul && z == 0.0 => Val::Const(0.0),
                        // 0 / a statistic = 0; were the divisor 0 there (ε = 0 and a constant
                        // row), the masked model would hold NaN and fail its proof.
                        (Val::Const(z), _) if by_stat && z == 0.0 => Val::Const(0.0),
                        _ => Val::Varying,
                    };
                }
                acc
            })
            .collect();
        // `x − mean(x)`, `x · rsqrt(mean(x²) + ε)`, `x / √(…)`: the units normalised by a
        // statistic of theirs. Removed positions would hold `−mean`, or what a residual stream
        // carries there (learned positions) scaled, in the masked model; there they are masked to 0
        // ([`Edit::Mask`]), as the pruned model has none of them.
        let of_units = |a: &str, b: &str| {
            self.track(a).is_some_and(|t| t.units == units) && self.means.get(b).is_some_and(|m| m.0 == units)
        };
        let normalised = ins.len() == 2
            && match n.op_type.as_str() {
                "Sub" | "Div" => of_units(ins[0].1, ins[1].1),
                "Mul" => of_units(ins[0].1, ins[1].1) || of_units(ins[1].1, ins[0].1),
                _ => false,
            };
        if normalised && vals.iter().any(|v| *v != Val::Const(0.0)) {
            let trailing = out_rank - 1 - axis;
            self.st.edits.push(Edit::Mask { node: ni, units: units.clone(), trailing });
            vals = vec![Val::Const(0.0); c].into();
        }
        let t = Track { axis, rank: out_rank, units, vals };
        if let Some(o) = n.output.first() {
            self.emit(ni, o, t);
        }
    }
}
