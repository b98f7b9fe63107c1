//! Dependency analysis, recurrent ops: LSTM, GRU and RNN hidden units.
//!
//! Hidden unit j of a recurrent op owns, per direction, row j of every gate block of W
//! ([dirs, G·H, in]) and R ([dirs, G·H, H]), the 2·G bias entries j + k·H of B, the peephole
//! entries of P, column j of R (its own recurrent input), and position j of the initial states
//! and of the outputs Y / Y_h / Y_c (axis of H). All directions share `hidden_size`, so unit j
//! is one unit for every direction. G = 4 (LSTM, gates i o f c), 3 (GRU, z r h), 1 (RNN).
//!
//! Why removal is exact: in the masked model unit j's gate rows and biases are zero, so every
//! gate pre-activation of j is 0: an RNN emits tanh(0) = 0; a GRU's candidate is tanh(0) = 0 and
//! h_t = ½·h_{t−1}; an LSTM's cell input is tanh(0) = 0 and c_t = ½·c_{t−1}. With a zero initial
//! state (a constant, zeroed in the masked model, or a ConstantOfShape of zeros whose size
//! literal is rewritten, or zeros computed in the graph, which the pruned op no longer reads:
//! [`Edit::ZeroState`]) unit j's h (and c) stay exactly 0, so R's column j and the consumers of
//! Y see exact zeros. Non-default activations are refused (the argument needs f(0) = ½, g(0) =
//! h(0) = 0).

use super::*;

impl Analyzer<'_, '_> {
    pub(super) fn recurrent(&mut self, ni: usize, n: &NodeProto, x: Option<Track>, gates: usize) {
        let label = node_label(n);
        let reason = |why: &str| format!("{} ({why})", barrier_reason(n));
        let (Some(w), Some(r)) = (inp(n, 1), inp(n, 2)) else { return };
        let (wd, rd) = (self.ctx.dims(w).map(|d| d.to_vec()), self.ctx.dims(r).map(|d| d.to_vec()));
        let h = attr_i(n, "hidden_size").filter(|&h| h > 0).map(|h| h as usize);
        let (Some(wd), Some(rd), Some(h)) = (wd, rd, h) else {
            if let Some(x) = &x {
                self.block(&x.units, &reason("weights are not constant or hidden_size is missing"));
            }
            return;
        };
        let dirs = wd[0];
        let shapes_ok = wd.len() == 3 && rd == [dirs, gates * h, h] && wd[1] == gates * h && (1..=2).contains(&dirs);
        let default_acts = attr(n, "activations").is_none_or(|a| {
            let want: &[&str] = match gates {
                4 => &["Sigmoid", "Tanh", "Tanh"],
                3 => &["Sigmoid", "Tanh"],
                _ => &["Tanh"],
            };
            a.strings.len() == want.len() * dirs
                && a.strings.iter().enumerate().all(|(i, s)| s.as_slice() == want[i % want.len()].as_bytes())
        });
        // The input side: a tracked X is contracted by W's input axis (no bias fold: a removed
        // upstream unit must emit exact zeros into it).
        if let Some(x) = &x {
            if !shapes_ok || x.axis + 1 != x.rank || x.rank != 3 || x.units.len() != wd[2] {
                self.block(&x.units, &reason("tracked axis is not the input features"));
            } else {
                self.slice(w, 2, &x.units, (ni, 1), Role::Consumer);
                self.st.consumers.push(Consumer {
                    node: ni,
                    kind: ConsumerKind::Conv { padded: false },
                    weight: w.to_string(),
                    units: x.units.clone(),
                    vals: x.vals.clone(),
                    fold: Err(format!("{} '{label}' (no bias fold into recurrent gates)", n.op_type)),
                });
            }
        }
        // Only the attribute says H when the shapes disagree: a huge one must not become that
        // many units (2^40 of them ran out of memory; found by the fuzz smoke test).
        if !shapes_ok && h > crate::prune::MAX_STRUCT_WIDTH as usize {
            if let Some(x) = &x {
                self.block(&x.units, &reason("weights do not have the [dirs, gates·H, ·] shapes"));
            }
            return;
        }
        let units = self.new_layer(ni, h);
        let mut why: Option<String> = None;
        if !shapes_ok {
            why = Some("weights do not have the [dirs, gates·H, ·] shapes".into());
        } else if !default_acts {
            why = Some("non-default activations".into());
        }
        let each = |k: usize| -> Units { (0..k).flat_map(|_| units.iter().copied()).collect() };
        if why.is_none() {
            if let Some(b) = inp(n, 3) {
                if self.ctx.dims(b) == Some(&[dirs, 2 * gates * h][..]) {
                    self.slice(b, 1, &each(2 * gates), (ni, 3), Role::ProducerBias);
                } else {
                    why = Some("bias is not a constant [dirs, 2·gates·H]".into());
                }
            }
        }
        if why.is_none() && gates == 4 {
            if let Some(p) = inp(n, 7) {
                if self.ctx.dims(p) == Some(&[dirs, 3 * h][..]) {
                    self.slice(p, 1, &each(3), (ni, 7), Role::Param);
                } else {
                    why = Some("peepholes are not a constant [dirs, 3·H]".into());
                }
            }
        }
        if why.is_none() {
            let states: &[usize] = if gates == 4 { &[5, 6] } else { &[5] };
            for &slot in states {
                if let Some(s) = inp(n, slot) {
                    if let Err(e) = self.initial_state(ni, slot, s, &units) {
                        why = Some(e);
                        break;
                    }
                }
            }
        }
        if let Some(why) = why {
            self.block(&units, &reason(&why));
            return;
        }
        self.slice(w, 1, &each(gates), (ni, 1), Role::Producer);
        self.slice(r, 1, &each(gates), (ni, 2), Role::Producer);
        self.slice(r, 2, &units, (ni, 2), Role::Param);
        self.st.edits.push(Edit::Count {
            target: IntTarget::AttrInt(ni, "hidden_size".into()),
            index: 0,
            units: units.clone(),
        });
        self.st.sources.insert(ni, units.clone());
        let zero = self.producer_out(ni, vec![Val::Const(0.0); h].into());
        for (k, o) in n.output.iter().enumerate() {
            if o.is_empty() {
                continue;
            }
            let (axis, rank) = if k == 0 { (3, 4) } else { (2, 3) };
            self.emit(ni, o, Track { axis, rank, units: units.clone(), vals: zero.clone() });
            if k == 0 {
                // Y: [S, D, B, H] (layout 0) or [B, S, D, H]: the direction axis is known.
                let mut hint = vec![None, None, None, Some(h)];
                hint[if attr_i(n, "layout").unwrap_or(0) == 0 { 1 } else { 2 }] = Some(dirs);
                self.dims_hint.insert(o.clone(), hint);
            }
        }
    }

    /// An initial state [dirs, batch, H] (layout 0) or [batch, dirs, H] (layout 1): a constant is
    /// sliced (and zeroed in the masked model); a ConstantOfShape of zeros built for this op gets
    /// its H literal rewritten.
    fn initial_state(&mut self, ni: usize, slot: usize, s: &str, units: &Units) -> std::result::Result<(), String> {
        let h = units.len();
        if self.is_const(s) {
            let d = self.ctx.dims(s).map(|d| d.to_vec()).unwrap_or_default();
            if d.len() != 3 || d[2] != h {
                return Err(format!("initial state '{s}' is not [·, ·, H]"));
            }
            self.slice(s, 2, units, (ni, slot), Role::ProducerBias);
            return Ok(());
        }
        let p = self.ctx.ix.producer.get(s).copied();
        let Some(pn) = p.map(|p| &self.ctx.g.node[p]).filter(|p| p.op_type == "ConstantOfShape" && p.domain.is_empty())
        else {
            if self.ctx.g.input.iter().any(|i| i.name == s) {
                return Err(format!("initial state '{s}' is a model input: its size is the model's interface"));
            }
            // Zeros computed in the graph (a stacked torch LSTM's per-layer Slice of one
            // ConstantOfShape): the pruned op reads none, which is zeros too.
            if self.computed_zeros(s) && self.private_state(ni, s) {
                self.st.edits.push(Edit::ZeroState { node: ni, slot, units: units.clone() });
                return Ok(());
            }
            // A layer's slice of the states the model takes as an input (a stacked LSTM's h0).
            if let Some(i) = self.sliced_input(s) {
                return Err(format!(
                    "initial state '{s}' is sliced from model input '{i}': its size is the model's interface"
                ));
            }
            return Err(format!("initial state '{s}' is computed"));
        };
        if !zero_fill(pn) || !self.private_state(ni, s) {
            return Err(format!("initial state '{s}' is not a private ConstantOfShape of zeros"));
        }
        let lit = inp(pn, 0).and_then(|v| self.shape_vecs.get(v)).and_then(|v| match v.get(2) {
            Some(Sym::Lit(k, at)) if v.len() == 3 && *k == h as i64 => Some(*at),
            _ => None,
        });
        match lit {
            Some(Some((node, slot, index))) => {
                self.st.edits.push(Edit::Count { target: IntTarget::Input(node, slot), index, units: units.clone() });
                self.touch(node, units);
                Ok(())
            }
            _ => Err(format!("the size of initial state '{s}' cannot be rewritten")),
        }
    }

    /// `s` is read by recurrent op `ni` as an initial state only (slots 5 and 6) and is no graph
    /// output.
    fn private_state(&self, ni: usize, s: &str) -> bool {
        let others = self.ctx.ix.consumers_of(s).iter().any(|&(c, sl)| c != ni || !(5..=6).contains(&sl));
        !others && !self.ctx.is_output(s)
    }

    /// Where `s` is taken from through ops that only move or select its elements (at most 8):
    /// that value's name and the node producing it (None for a graph input or an initializer).
    fn moved_from<'s>(&'s self, s: &'s str) -> (&'s str, Option<&'s NodeProto>) {
        let mut v = s;
        for _ in 0..8 {
            let Some(n) = self.ctx.ix.producer.get(v).map(|&p| &self.ctx.g.node[p]) else { return (v, None) };
            let moves = (n.domain.is_empty() || n.domain == "ai.onnx")
                && matches!(
                    n.op_type.as_str(),
                    "Slice"
                        | "Identity"
                        | "Reshape"
                        | "Unsqueeze"
                        | "Squeeze"
                        | "Expand"
                        | "Transpose"
                        | "Flatten"
                        | "Gather"
                );
            match inp(n, 0).filter(|_| moves) {
                Some(i) => v = i,
                None => return (v, Some(n)),
            }
        }
        (v, self.ctx.ix.producer.get(v).map(|&p| &self.ctx.g.node[p]))
    }

    /// The model input `s` is taken from through ops that only move or select its elements.
    fn sliced_input(&self, s: &str) -> Option<String> {
        let (v, producer) = self.moved_from(s);
        (producer.is_none() && self.ctx.g.input.iter().any(|i| i.name == v)).then(|| v.to_string())
    }

    /// `s` holds zeros whatever the inputs: a ConstantOfShape of zeros seen through ops that only
    /// move or select its elements.
    fn computed_zeros(&self, s: &str) -> bool {
        self.moved_from(s).1.is_some_and(zero_fill)
    }
}

/// A default-domain ConstantOfShape whose value is absent or all zero.
fn zero_fill(n: &NodeProto) -> bool {
    n.op_type == "ConstantOfShape"
        && (n.domain.is_empty() || n.domain == "ai.onnx")
        && attr(n, "value")
            .and_then(|a| a.t.as_ref())
            .is_none_or(|t| tensor::read_f64(t).is_ok_and(|v| v.iter().all(|&x| x == 0.0)))
}
