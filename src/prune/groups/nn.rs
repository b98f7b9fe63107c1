//! Dependency analysis, linear and normalisation ops: Conv, ConvTranspose, Gemm, MatMul (with
//! its bias Add), BatchNormalization, InstanceNormalization, LayerNormalization, pooling and
//! reductions. Each method is the analysis of one op family; `groups.rs` dispatches to it.

use super::*;

impl Analyzer<'_, '_> {
    /// A bias input that a compensation may write to: absent (will be created) or a constant
    /// used only here.
    pub(super) fn bias_writable(&self, n: &NodeProto, slot: usize) -> std::result::Result<(), String> {
        match inp(n, slot) {
            None => Ok(()),
            Some(b) if self.is_const(b) && self.ctx.ix.consumers_of(b).len() == 1 => Ok(()),
            Some(b) => Err(format!("bias '{b}' of '{}' is shared or not a constant", node_label(n))),
        }
    }

    /// A producer's bias `b`, one entry per output position `units` along `axis` (leading axes of
    /// size 1), times `scale` (Gemm's beta): sliced with the outputs, and the constants removed
    /// units emit. Zeroed with the weights in the masked model, so a removed unit emits 0, except
    /// at the dead rows of [`DeadRows::fold`] (see [`crate::prune::channels`]): their bias is
    /// kept ([`Role::Bias`]), they emit it and the consumers fold it, as after a MatMul's bias Add
    /// or a BatchNormalization. A bias whose values cannot be read is zeroed with the weights
    /// ([`Role::ProducerBias`]).
    pub(super) fn producer_bias(&mut self, ni: usize, b: &str, axis: usize, units: &Units, scale: f64) -> Vals {
        let n = units.len();
        let per_output =
            self.ctx.dims(b).is_some_and(|d| d.len() == axis + 1 && d[axis] == n && d[..axis].iter().all(|&k| k == 1));
        let vals = self.ctx.const_vals(b).filter(|v| per_output && v.len() == n);
        let Some(vals) = vals else {
            self.slice(b, axis, units, (ni, 2), Role::ProducerBias);
            return vec![Val::Const(0.0); n].into();
        };
        self.slice(b, axis, units, (ni, 2), Role::Bias);
        units
            .iter()
            .zip(vals)
            .enumerate()
            .map(|(o, (u, v))| match u {
                Some(_) if v != 0.0 => {
                    self.st.bias_emitters.insert((ni, o));
                    if self.dead.fold.contains(&(ni, o)) {
                        map_val(Val::Const(v), |k| Some(scale * k))
                    } else {
                        Val::Const(0.0)
                    }
                }
                _ => Val::Const(0.0),
            })
            .collect()
    }

    pub(super) fn conv(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let label = node_label(n);
        let (Some(w), b) = (inp(n, 1), inp(n, 2)) else { return };
        let wd = self.ctx.dims(w).map(|d| d.to_vec());
        let consts_ok = wd.as_ref().is_some_and(|d| d.len() >= 3)
            && b.is_none_or(|b| self.ctx.dims(b).is_some_and(|d| d.len() == 1));
        if !consts_ok {
            if let Some(x) = &x {
                self.block(&x.units, &format!("{} (weights are not constant)", barrier_reason(n)));
            }
            return;
        }
        let wd = wd.unwrap_or_default();
        let group = attr_i(n, "group").unwrap_or(1).max(1);
        let (cout, cin_g) = (wd[0], wd[1]);
        // ONNX requires group to divide the output channels; anything else cannot run, and is a
        // barrier here rather than a division by zero (found by the fuzzer: group = 2^63 - 1).
        if cout == 0 || group as u64 > cout as u64 || cout % group as usize != 0 {
            if let Some(x) = &x {
                self.block(
                    &x.units,
                    &format!("{} (group {group} does not divide {cout} output channels)", barrier_reason(n)),
                );
            }
            return;
        }
        let group = group as usize;
        let cin = cin_g * group;
        // Depthwise: one input channel per group. With Cin = 1 and group = 1 it is a plain conv.
        let depthwise = group > 1 && cin_g == 1 && cout % group == 0;
        if let Some(x) = &x {
            if x.axis != 1 || x.units.len() != cin || x.rank != wd.len() {
                self.block(&x.units, &format!("{} (channel axis does not match the weight)", barrier_reason(n)));
            } else if depthwise {
                // Output o = c·m + j reads input c only: input and output channels are coupled.
                let m = cout / group;
                let units: Units = if m == 1 {
                    x.units.clone()
                } else {
                    x.units.iter().flat_map(|u| std::iter::repeat_n(*u, m)).collect()
                };
                self.depthwise(ni, n, x, (w, &units), b, m);
                return;
            } else if group == 1 {
                self.slice(w, 1, &x.units, (ni, 1), Role::Consumer);
                // A zero-padded Conv sees a removed unit's constant only in the interior: the
                // fold is exact there and the border difference is pruning error, measured by
                // fidelity like any other. The masked model zeroes the consumer's input slice, so
                // pruned == masked still holds exactly.
                let pads_zero = attr_ints(n, "pads").is_none_or(|p| p.iter().all(|&v| v == 0));
                let auto = attr_s(n, "auto_pad").unwrap_or_default();
                let padded = !(pads_zero && (auto.is_empty() || auto == "NOTSET" || auto == "VALID"));
                let fold = self.bias_writable(n, 2);
                self.st.consumers.push(Consumer {
                    node: ni,
                    kind: ConsumerKind::Conv { padded },
                    weight: w.to_string(),
                    units: x.units.clone(),
                    vals: x.vals.clone(),
                    fold,
                });
            } else {
                // Grouped: keep-sets uniform across groups, so position i of every group is one unit.
                let r = format!("{} (grouped conv with an untracked channel)", barrier_reason(n));
                for p in cin_g..cin {
                    self.join(x.units[p], x.units[p % cin_g], &r);
                }
                let local = Units::from(&x.units[..cin_g]);
                self.slice(w, 1, &local, (ni, 1), Role::Consumer);
                let fold = Err(format!("grouped Conv '{label}'"));
                self.st.consumers.push(Consumer {
                    node: ni,
                    kind: ConsumerKind::Conv { padded: false },
                    weight: w.to_string(),
                    units: x.units.clone(),
                    vals: x.vals.clone(),
                    fold,
                });
            }
        }
        if depthwise {
            return; // untracked input: output channels cannot shrink alone
        }
        let units = self.new_layer(ni, cout);
        let og = cout / group;
        for o in og..cout {
            self.join(units[o], units[o % og], "");
        }
        self.slice(w, 0, &units, (ni, 1), Role::Producer);
        let vals = match b {
            Some(b) => self.producer_bias(ni, b, 0, &units, 1.0),
            None => vec![Val::Const(0.0); cout].into(),
        };
        let vals = self.producer_out(ni, vals);
        self.st.sources.insert(ni, units.clone());
        let t = Track { axis: 1, rank: wd.len(), vals, units };
        self.emit(ni, &n.output[0], t);
    }

    /// ConvTranspose: weight [Cin, Cout/group, k...]. Group i maps inputs [i·Cin/g, (i+1)·Cin/g)
    /// to outputs [i·Cout/g, (i+1)·Cout/g): keep-sets are uniform across groups (position j of every
    /// group is one unit) on both sides, so `group` stays; with one input channel per group the
    /// op is depthwise-like and its input and output channels are coupled (`group` shrinks).
    /// A depthwise(-like) Conv / ConvTranspose: output o = c·m + j reads input channel c only, so
    /// input and output channels are one unit. The weight's axis 0 carries `wu.1` (per output for
    /// Conv, per input for ConvTranspose); `group` follows the kept input channels.
    fn depthwise(&mut self, ni: usize, n: &NodeProto, x: &Track, wu: (&str, &Units), b: Option<&str>, m: usize) {
        let units: Units =
            if m == 1 { x.units.clone() } else { x.units.iter().flat_map(|u| std::iter::repeat_n(*u, m)).collect() };
        self.slice(wu.0, 0, wu.1, (ni, 1), Role::Producer);
        let vals = match b {
            Some(b) => self.producer_bias(ni, b, 0, &units, 1.0),
            None => vec![Val::Const(0.0); units.len()].into(),
        };
        let vals = self.producer_out(ni, vals);
        let vals = if n.op_type == "Conv" { self.through_dead_input(ni, x, wu.0, b, m, vals) } else { vals };
        self.st.edits.push(Edit::Count {
            target: IntTarget::AttrInt(ni, "group".into()),
            index: 0,
            units: x.units.clone(),
        });
        self.st.sources.insert(ni, units.clone());
        let t = Track { axis: 1, rank: x.rank, vals, units };
        self.emit(ni, &n.output[0], t);
    }

    /// A live depthwise row whose input channel is a dead unit's constant `v` (a dead expansion
    /// row before a live depthwise filter) outputs `v·Σw + b` in the interior, whatever the input
    /// (everywhere when `v` is 0). The dense view records such rows ([`Analysis::through_rows`];
    /// those with `v ≠ 0`, exact in the interior only, also in [`Analysis::through_inexact`]) and
    /// emits that constant; in the masked view the rows of [`DeadRows::through`] keep their
    /// weights and bias in the masked model and a removed unit emits the constant there, for the
    /// consumers to fold (the border of the depthwise's zero padding is pruning error). Conv
    /// only: a strided ConvTranspose's interior varies with the output's phase.
    fn through_dead_input(&mut self, ni: usize, x: &Track, w: &str, b: Option<&str>, m: usize, vals: Vals) -> Vals {
        let n = vals.len();
        let input = |o: usize| match x.vals.get(o / m.max(1)) {
            Some(&Val::Const(c)) => Some(c),
            _ => None,
        };
        let rows: Vec<usize> = if self.dead.dense {
            (0..n).filter(|&o| !self.dead.fold.contains(&(ni, o)) && input(o).is_some()).collect()
        } else {
            (0..n).filter(|&o| self.dead.through.contains(&(ni, o))).collect()
        };
        if rows.is_empty() {
            return vals;
        }
        let sums = self.ctx.const_vals(w).filter(|v| !v.is_empty() && v.len() % n == 0).map(|v| {
            let k = v.len() / n;
            v.chunks(k).map(|r| r.iter().sum::<f64>()).collect::<Vec<f64>>()
        });
        let bias = match b {
            Some(b) => self.ctx.const_vals(b).filter(|v| v.len() == n),
            None => Some(vec![0.0; n]),
        };
        let mut out = vals.to_vec();
        for o in rows {
            out[o] = match (&sums, &bias, input(o)) {
                (Some(s), Some(b), Some(c)) => map_val(Val::Const(c), |c| Some(c * s[o] + b[o])),
                _ => Val::Varying,
            };
            if self.dead.dense && out[o] != Val::Varying {
                self.st.through_rows.insert((ni, o));
                if input(o) != Some(0.0) {
                    self.st.through_inexact.insert((ni, o));
                }
            }
        }
        out.into()
    }

    pub(super) fn conv_transpose(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let label = node_label(n);
        let (Some(w), b) = (inp(n, 1), inp(n, 2)) else { return };
        let group = attr_i(n, "group").unwrap_or(1);
        let wd = self.ctx.dims(w).map(|d| d.to_vec()).filter(|d| d.len() >= 3);
        let ok = |wd: &Vec<usize>| {
            group >= 1
                && (group as u64) <= wd[0] as u64
                && wd[0].is_multiple_of(group as usize)
                && b.is_none_or(|b| self.is_const(b) && self.ctx.dims(b).is_some_and(|d| d.len() == 1))
        };
        let Some(wd) = wd.filter(ok) else {
            if let Some(x) = &x {
                self.block(&x.units, &format!("{} (non-constant weights or bad group)", barrier_reason(n)));
            }
            return;
        };
        let group = group as usize;
        let (cin, og) = (wd[0], wd[1]);
        let cin_g = cin / group;
        let cout = og * group;
        if let Some(x) = &x {
            if x.axis != 1 || x.units.len() != cin || x.rank != wd.len() {
                self.block(&x.units, &format!("{} (channel axis does not match the weight)", barrier_reason(n)));
            } else if group > 1 && cin_g == 1 {
                // Output o = c·m + j reads input c only (weight axis 0 is the input channel).
                self.depthwise(ni, n, x, (w, &x.units), b, og);
                return;
            } else {
                let r = format!("{} (grouped ConvTranspose with an untracked channel)", barrier_reason(n));
                for p in cin_g..cin {
                    self.join(x.units[p], x.units[p % cin_g], &r);
                }
                self.slice(w, 0, &x.units, (ni, 1), Role::Consumer);
                let fold = Err(format!("ConvTranspose '{label}' (overlapping kernels)"));
                self.st.consumers.push(Consumer {
                    node: ni,
                    kind: ConsumerKind::Conv { padded: false },
                    weight: w.to_string(),
                    units: x.units.clone(),
                    vals: x.vals.clone(),
                    fold,
                });
            }
        } else if group > 1 && cin_g == 1 {
            return; // untracked depthwise-like input: output channels cannot shrink alone
        }
        let units = self.new_layer(ni, cout);
        for o in og..cout {
            self.join(units[o], units[o % og], "");
        }
        self.slice(w, 1, &Units::from(&units[..og]), (ni, 1), Role::Producer);
        let vals = match b {
            Some(b) => self.producer_bias(ni, b, 0, &units, 1.0),
            None => vec![Val::Const(0.0); cout].into(),
        };
        let vals = self.producer_out(ni, vals);
        self.st.sources.insert(ni, units.clone());
        let t = Track { axis: 1, rank: wd.len(), vals, units };
        self.emit(ni, &n.output[0], t);
    }

    pub(super) fn gemm(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let (Some(bw), c) = (inp(n, 1), inp(n, 2)) else { return };
        let bd = self.ctx.dims(bw).map(|d| d.to_vec()).filter(|d| d.len() == 2);
        let Some(bd) = bd.filter(|_| c.is_none_or(|c| self.is_const(c))) else {
            if let Some(x) = &x {
                self.block(&x.units, &format!("{} (weights are not constant)", barrier_reason(n)));
            }
            return;
        };
        let trans_a = attr_i(n, "transA").unwrap_or(0) != 0;
        let trans_b = attr_i(n, "transB").unwrap_or(0) != 0;
        let alpha = attr_f(n, "alpha").unwrap_or(1.0) as f64;
        let beta = attr_f(n, "beta").unwrap_or(1.0) as f64;
        let (k, nout) = if trans_b { (bd[1], bd[0]) } else { (bd[0], bd[1]) };
        if let Some(x) = &x {
            let want = if trans_a { 0 } else { 1 };
            if x.axis != want || x.units.len() != k {
                self.block(&x.units, &format!("{} (tracked axis is not the contracted one)", barrier_reason(n)));
            } else {
                self.slice(bw, if trans_b { 1 } else { 0 }, &x.units, (ni, 1), Role::Consumer);
                let bias_shape_ok = c.is_none_or(|c| {
                    self.ctx.dims(c).is_some_and(|d| d.last() == Some(&nout) && d.iter().rev().skip(1).all(|&v| v == 1))
                });
                let fold = if beta == 0.0 || !bias_shape_ok {
                    Err(format!("Gemm '{}' (beta = 0 or a bias that is not per-output)", node_label(n)))
                } else {
                    self.bias_writable(n, 2)
                };
                self.st.consumers.push(Consumer {
                    node: ni,
                    kind: ConsumerKind::Gemm { trans_b, alpha, beta },
                    weight: bw.to_string(),
                    units: x.units.clone(),
                    vals: x.vals.clone(),
                    fold,
                });
            }
        }
        // Output units; a removed unit emits beta·c.
        let mut vals: Vals = vec![Val::Const(0.0); nout].into();
        let units = self.new_layer(ni, nout);
        self.slice(bw, if trans_b { 0 } else { 1 }, &units, (ni, 1), Role::Producer);
        if let Some(c) = c {
            let cd = self.ctx.dims(c).map(|d| d.to_vec()).unwrap_or_default();
            if cd.last() == Some(&nout) && nout != 1 {
                // [N] or [1, N]: folded downstream; [M, N]: zeroed with the weights.
                vals = self.producer_bias(ni, c, cd.len() - 1, &units, beta);
            } else if cd.iter().product::<usize>() == 1 {
                vals = vec![self.ctx.scalar(c).map(|v| Val::Const(beta * v)).unwrap_or(Val::Varying); nout].into();
            } else {
                vals = vec![Val::Varying; nout].into();
            }
        }
        self.st.sources.insert(ni, units.clone());
        let vals = self.producer_out(ni, vals);
        self.emit(ni, &n.output[0], Track { axis: 1, rank: 2, units, vals });
    }

    /// The constant Add right after a MatMul that acts as its bias: (node, slot of the constant).
    pub(super) fn matmul_bias(&self, n: &NodeProto, nout: usize, out_rank: usize) -> Option<(usize, usize)> {
        let y = n.output.first()?;
        let cons = self.ctx.ix.consumers_of(y);
        if cons.len() != 1 || self.ctx.is_output(y) {
            return None;
        }
        let (ci, slot) = cons[0];
        let a = &self.ctx.g.node[ci];
        // onnxruntime's SkipLayerNormalization adds input + skip + bias (input 4) before normalising:
        // its bias is the MatMul's bias.
        let skip_ln = matches!(a.op_type.as_str(), "SkipLayerNormalization" | "SkipSimplifiedLayerNormalization");
        if a.domain == "com.microsoft" && skip_ln && slot <= 1 {
            let b = inp(a, 4)?;
            let ok = self.ctx.dims(b) == Some(&[nout][..]) && self.ctx.ix.consumers_of(b).len() == 1;
            return (ok && self.is_const(b)).then_some((ci, 4));
        }
        if a.op_type != "Add" || a.input.len() != 2 || !a.domain.is_empty() {
            return None;
        }
        let other = 1 - slot;
        let b = &a.input[other];
        let d = self.ctx.dims(b)?;
        let ok = d.last() == Some(&nout) && d.len() <= out_rank && d.iter().rev().skip(1).all(|&v| v == 1);
        (ok && self.ctx.ix.consumers_of(b).len() == 1).then_some((ci, other))
    }

    pub(super) fn matmul(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(wn) = inp(n, 1) else { return };
        let wd = self.ctx.dims(wn).map(|d| d.to_vec()).filter(|d| d.len() == 2);
        if let Some(t) = inp(n, 1).and_then(|s| self.track(s)) {
            self.block(&t.units, &format!("{} (right operand is an activation)", barrier_reason(n)));
        }
        let Some(wd) = wd else {
            if let Some(x) = &x {
                self.block(&x.units, &format!("{} (right operand is not a constant matrix)", barrier_reason(n)));
            }
            return;
        };
        let (k, nout) = (wd[0], wd[1]);
        let ra = x.as_ref().map(|t| t.rank).or_else(|| inp(n, 0).and_then(|s| self.rank(s)));
        let Some(ra) = ra.filter(|&r| r >= 1) else {
            // Its outputs are still a layer: in the table, blocked with the reason, not absent.
            let units = self.new_layer(ni, nout);
            let r = format!(
                "{} (the rank of its input '{}' is unknown: a value_info with its shape lets the analysis follow it)",
                barrier_reason(n),
                inp(n, 0).unwrap_or("")
            );
            self.block(&units, &r);
            self.slice(wn, 1, &units, (ni, 1), Role::Producer);
            self.st.sources.insert(ni, units);
            return;
        };
        let out_rank = ra.max(1);
        let bias = self.matmul_bias(n, nout, out_rank);
        if let Some(x) = &x {
            if x.axis + 1 != x.rank || x.units.len() != k {
                self.block(&x.units, &format!("{} (tracked axis is not the contracted one)", barrier_reason(n)));
            } else {
                self.slice(wn, 0, &x.units, (ni, 1), Role::Consumer);
                self.st.consumers.push(Consumer {
                    node: ni,
                    kind: ConsumerKind::MatMul { bias },
                    weight: wn.to_string(),
                    units: x.units.clone(),
                    vals: x.vals.clone(),
                    fold: Ok(()),
                });
            }
        }
        let units = self.new_layer(ni, nout);
        self.slice(wn, 1, &units, (ni, 1), Role::Producer);
        self.st.sources.insert(ni, units.clone());
        let vals = self.producer_out(ni, vec![Val::Const(0.0); nout].into());
        let t = Track { axis: out_rank - 1, rank: out_rank, vals, units };
        self.emit(ni, &n.output[0], t);
    }

    /// Per-channel constant inputs `slots` of a normalisation: all constant, dims [C].
    pub(super) fn channel_params(
        &mut self,
        ni: usize,
        n: &NodeProto,
        x: &Track,
        slots: &[usize],
    ) -> Option<Vec<Vec<f64>>> {
        let c = x.units.len();
        let mut out = Vec::new();
        for &s in slots {
            let name = inp(n, s).filter(|p| self.ctx.dims(p) == Some(&[c][..]));
            let vals = name.and_then(|p| self.ctx.const_vals(p));
            let (Some(name), Some(vals)) = (name, vals) else {
                self.block(&x.units, &format!("{} (parameters are not constant [C] vectors)", barrier_reason(n)));
                return None;
            };
            self.slice(name, 0, &x.units, (ni, s), Role::Param);
            out.push(vals);
        }
        Some(out)
    }

    pub(super) fn batch_norm(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        if x.axis != 1 {
            self.block(&x.units, &format!("{} (channel axis is not 1)", barrier_reason(n)));
            return;
        }
        if !self.extra_outputs_unused(n, &x) {
            return;
        }
        let Some(p) = self.channel_params(ni, n, &x, &[1, 2, 3, 4]) else { return };
        let eps = attr_f(n, "epsilon").unwrap_or(1e-5) as f64;
        let vals = x
            .vals
            .iter()
            .enumerate()
            .map(|(c, v)| map_val(*v, |k| Some((k - p[2][c]) / (p[3][c] + eps).sqrt() * p[0][c] + p[1][c])))
            .collect();
        self.pass(ni, n, &x, vals);
    }

    pub(super) fn instance_norm(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        if x.axis != 1 {
            self.block(&x.units, &format!("{} (channel axis is not 1)", barrier_reason(n)));
            return;
        }
        let Some(p) = self.channel_params(ni, n, &x, &[1, 2]) else { return };
        // A constant channel normalises to 0, then gets its shift B; a varying one stays varying
        // (in the dense view a live unit must not look constant).
        let vals = x.vals.iter().enumerate().map(|(c, v)| map_val(*v, |_| Some(p[1][c]))).collect();
        self.pass(ni, n, &x, vals);
    }

    pub(super) fn pool(&mut self, ni: usize, n: &NodeProto, x: Option<Track>, kind: PoolKind) {
        let Some(x) = x else { return };
        if x.axis != 1 {
            self.block(&x.units, &format!("{} (channel axis is not 1)", barrier_reason(n)));
            return;
        }
        if !self.extra_outputs_unused(n, &x) {
            return;
        }
        let pads = attr_ints(n, "pads").is_some_and(|p| p.iter().any(|&v| v != 0))
            || attr_s(n, "auto_pad").is_some_and(|s| s.starts_with("SAME"));
        let include_pad = attr_i(n, "count_include_pad").unwrap_or(0) != 0;
        let keeps = match kind {
            PoolKind::Max | PoolKind::GlobalMax | PoolKind::GlobalAverage => true,
            PoolKind::Average => !(pads && include_pad),
            PoolKind::Lp => false,
        };
        let vals = x.vals.iter().map(|v| if keeps { *v } else { zero_only(*v) }).collect();
        self.pass(ni, n, &x, vals);
    }

    pub(super) fn reduce(&mut self, ni: usize, n: &NodeProto, x: Option<Track>, kind: ReduceKind) {
        let Some(x) = x else { return };
        let Some(axes) = self.ctx.axes_of(n).or_else(|| inp(n, 1).is_none().then(Vec::new)) else {
            self.block(&x.units, &format!("{} (its axes are computed, not a constant)", barrier_reason(n)));
            return;
        };
        if axes.is_empty() {
            if attr_i(n, "noop_with_empty_axes").unwrap_or(0) != 0 {
                self.pass(ni, n, &x, x.vals.clone());
            } else {
                self.block(&x.units, &format!("{} (reduces every axis)", barrier_reason(n)));
            }
            return;
        }
        let Some(axes) = axes.iter().map(|&a| norm_axis(a, x.rank)).collect::<Option<Vec<_>>>() else {
            self.block(&x.units, &format!("{} (bad axes)", barrier_reason(n)));
            return;
        };
        let op = n.op_type.as_str();
        if axes.iter().all(|&a| a == x.axis)
            && matches!(op, "ReduceMean" | "ReduceMax" | "ReduceMin")
            && n.domain.is_empty()
        {
            // A mean, max or min over exactly the units: a statistic of theirs, taken over the kept
            // ones once pruned (see [`Edit::Mean`], [`Edit::Extreme`]). Its output carries no unit;
            // a Sub that centres the units by it is masked.
            let keep = attr_i(n, "keepdims").unwrap_or(1) != 0;
            if let Some(y) = n.output.first().filter(|y| !y.is_empty() && keep) {
                self.means.insert(y.clone(), (x.units.clone(), x.axis, x.rank));
            }
            let (trailing, units) = (x.rank - 1 - x.axis, x.units.clone());
            self.touch(ni, &x.units);
            self.st.edits.push(match op {
                "ReduceMean" => Edit::Mean { node: ni, units, trailing },
                _ => Edit::Extreme { node: ni, units, trailing, max: op == "ReduceMax" },
            });
            return;
        }
        if axes.contains(&x.axis) {
            self.block(&x.units, &format!("{} (reduces the channel axis)", barrier_reason(n)));
            return;
        }
        let keep = attr_i(n, "keepdims").unwrap_or(1) != 0;
        let mut ax: Vec<usize> = axes.clone();
        ax.sort_unstable();
        ax.dedup();
        let (axis, rank) = if keep {
            (x.axis, x.rank)
        } else {
            (x.axis - ax.iter().filter(|&&a| a < x.axis).count(), x.rank - ax.len())
        };
        let vals = x
            .vals
            .iter()
            .map(|v| match kind {
                ReduceKind::KeepsConstant => *v,
                ReduceKind::ZeroOnly => zero_only(*v),
                ReduceKind::Unknown => Val::Varying,
            })
            .collect();
        let t = Track { axis, rank, units: x.units.clone(), vals };
        self.emit(ni, &n.output[0], t);
    }

    pub(super) fn layer_norm(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let axis = norm_axis(attr_i(n, "axis").unwrap_or(-1), x.rank);
        let Some(axis) = axis else {
            self.block(&x.units, &format!("{} (axis out of range)", barrier_reason(n)));
            return;
        };
        if !self.extra_outputs_unused(n, &x) {
            return;
        }
        if x.axis < axis {
            self.pass(ni, n, &x, vec![Val::Varying; x.units.len()].into());
            return;
        }
        if x.axis != axis || x.axis + 1 != x.rank {
            let r = format!("{} (normalises over the channel axis and others)", barrier_reason(n));
            self.block(&x.units, &r);
            return;
        }
        // Normalised over exactly the tracked axis (the transformer's hidden size, ConvNeXt's
        // channels after their permute): the pruned model normalises over the kept units, and
        // the masked model is given the same normalisation (see [`Edit::Norm`]).
        let d = x.units.len();
        let params: Vec<(usize, &str)> = [1, 2].into_iter().filter_map(|s| inp(n, s).map(|p| (s, p))).collect();
        let ok = params.first().is_some_and(|(s, _)| *s == 1) && params.iter().all(|(_, p)| self.const_float(p, &[d]));
        if !ok {
            let r = format!("{} (scale and bias are not constant float [C] vectors)", barrier_reason(n));
            self.block(&x.units, &r);
            return;
        }
        for (s, p) in params {
            self.slice(p, 0, &x.units, (ni, s), Role::Param);
        }
        self.st.edits.push(Edit::Norm { node: ni, units: x.units.clone() });
        // In the masked model a removed position leaves the normalisation as 0.
        self.pass(ni, n, &x, vec![Val::Const(0.0); d].into());
    }

    /// A constant float (or double) tensor of these dims, not a dequantized one: what a
    /// normalisation's parameters and an embedding table must be to be sliced.
    pub(super) fn const_float(&self, p: &str, dims: &[usize]) -> bool {
        self.ctx.dims(p) == Some(dims)
            && self.ctx.base_tensor(p).is_some_and(|t| matches!(t.data_type, tensor::dt::FLOAT | tensor::dt::DOUBLE))
            && self.ctx.consts.get(p).is_none_or(|c| c.dq.is_none())
            && self.is_const(p)
    }
}
