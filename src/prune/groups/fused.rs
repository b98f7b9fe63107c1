//! Dependency analysis, onnxruntime's fused transformer ops (domain `com.microsoft`, as its
//! transformer optimizer writes them): SkipLayerNormalization and SkipSimplifiedLayerNormalization
//! (a residual Add joined with its LayerNorm / RMSNorm), the packed-QKV Attention (a consumer of
//! the residual stream) and EmbedLayerNormalization (the embedding lookups, their sum and the
//! first LayerNorm: the stream's source). The fused activations (BiasGelu, FastGelu, ...) are
//! element-wise (`elementwise.rs`). Each method is the analysis of one op; `groups.rs` dispatches.

use super::*;

impl Analyzer<'_, '_> {
    /// onnxruntime's SkipLayerNormalization(input, skip, gamma, beta?, bias?): input and skip (the
    /// residual) carry the same units on the last axis and are joined; gamma, beta and bias are
    /// sliced with them; the normalisation is over exactly those units, as for LayerNormalization.
    /// SkipSimplifiedLayerNormalization(input, skip, gamma) is its RMSNorm. Their optional outputs
    /// (mean, inverse std, the sum) must be unused.
    pub(super) fn skip_layer_norm(&mut self, ni: usize, n: &NodeProto) {
        let (a, b) = (inp(n, 0).and_then(|s| self.track(s)), inp(n, 1).and_then(|s| self.track(s)));
        let all: Vec<Option<Unit>> = a.iter().chain(b.iter()).flat_map(|t| t.units.iter().copied()).collect();
        let (Some(a), Some(b)) = (a, b) else {
            if !all.is_empty() {
                self.block(&all, &format!("{} (input or skip is not a channel tensor)", barrier_reason(n)));
            }
            return;
        };
        let d = a.units.len();
        if a.axis + 1 != a.rank || b.axis + 1 != b.rank || b.units.len() != d || a.rank != b.rank {
            self.block(
                &all,
                &format!("{} (input and skip differ or are not normalised on their last axis)", barrier_reason(n)),
            );
            return;
        }
        let joined = Track { units: all.clone().into(), ..a.clone() };
        if !self.extra_outputs_unused(n, &joined) {
            return;
        }
        // SkipSimplifiedLayerNormalization: gamma only (its bias, input 3, is a barrier).
        let simplified = n.op_type == "SkipSimplifiedLayerNormalization";
        if simplified && inp(n, 3).is_some() {
            let r = format!("{} (a bias input, which onnxruntime versions apply differently)", barrier_reason(n));
            self.block(&all, &r);
            return;
        }
        let slots: &[usize] = if simplified { &[2] } else { &[2, 3, 4] };
        let params: Vec<(usize, &str)> = slots.iter().filter_map(|&s| inp(n, s).map(|p| (s, p))).collect();
        let ok = params.first().is_some_and(|(s, _)| *s == 2) && params.iter().all(|(_, p)| self.const_float(p, &[d]));
        if !ok {
            let r = format!("{} (gamma, beta and bias are not constant float [C] vectors)", barrier_reason(n));
            self.block(&all, &r);
            return;
        }
        let r = format!("{} (joined with an untracked channel)", barrier_reason(n));
        for (x, y) in a.units.iter().zip(b.units.iter()) {
            self.join(*x, *y, &r);
        }
        for (s, p) in params {
            self.slice(p, 0, &a.units, (ni, s), Role::Param);
        }
        self.st.edits.push(Edit::Norm { node: ni, units: a.units.clone() });
        // In the masked model a removed position leaves the normalisation as 0.
        self.pass(ni, n, &a, vec![Val::Const(0.0); d].into());
    }

    /// onnxruntime's Attention(input, weights [d, 3·hidden], bias?, …): a consumer of the input's
    /// last axis, as a MatMul is; a removed unit's constant folds into the packed bias (input 2),
    /// which must be there and read by this node only. Its output (the heads, merged) is not a
    /// channel tensor here; only output 0 may be used.
    pub(super) fn ms_attention(&mut self, ni: usize, n: &NodeProto, x: Option<Track>) {
        let Some(x) = x else { return };
        let w = inp(n, 1).filter(|w| self.is_const(w));
        let wd = w.and_then(|w| self.ctx.dims(w)).map(|d| d.to_vec()).filter(|d| d.len() == 2);
        let (Some(w), Some(wd)) = (w, wd) else {
            self.block(&x.units, &format!("{} (weights are not a constant matrix)", barrier_reason(n)));
            return;
        };
        if x.axis + 1 != x.rank || x.units.len() != wd[0] {
            self.block(&x.units, &format!("{} (tracked axis is not the contracted one)", barrier_reason(n)));
            return;
        }
        if !self.extra_outputs_unused(n, &x) {
            return;
        }
        let bias_ok = inp(n, 2).is_some_and(|b| {
            self.is_const(b) && self.ctx.dims(b) == Some(&[wd[1]][..]) && self.ctx.ix.consumers_of(b).len() == 1
        });
        self.slice(w, 0, &x.units, (ni, 1), Role::Consumer);
        self.st.consumers.push(Consumer {
            node: ni,
            kind: ConsumerKind::MatMul { bias: bias_ok.then_some((ni, 2)) },
            weight: w.to_string(),
            units: x.units.clone(),
            vals: x.vals.clone(),
            fold: if bias_ok { Ok(()) } else { Err(format!("Attention '{}' (no bias of its own)", node_label(n))) },
        });
    }

    /// onnxruntime's EmbedLayerNormalization(input_ids, segment_ids?, word_embedding [V, d],
    /// position_embedding [P, d], segment_embedding? [T, d], gamma [d], beta [d], mask?,
    /// position_ids?) → (output, mask_index?, embedding_sum?), both [B, S, d]: a transformer's
    /// embeddings summed and normalised, the residual stream's source. Its d units are a new
    /// layer: the tables' columns are sliced as an embedding's are (scored, zeroed in the masked
    /// model), gamma and beta with them; the pruned model normalises the kept columns' sum, the
    /// masked one the same sum over the kept units (`Edit::Norm`, from the op's embedding_sum).
    /// The sum, when read, carries the units too (a removed one is 0 in the masked model).
    pub(super) fn embed_layer_norm(&mut self, ni: usize, n: &NodeProto) {
        let Some(d) = inp(n, 2).and_then(|t| self.ctx.dims(t)).filter(|d| d.len() == 2).map(|d| d[1]) else {
            return;
        };
        let tables: Vec<(usize, &str)> = [2, 3, 4].into_iter().filter_map(|s| inp(n, s).map(|t| (s, t))).collect();
        let ok = tables
            .iter()
            .all(|(_, t)| self.ctx.dims(t).is_some_and(|td| td.len() == 2 && td[1] == d && self.const_float(t, td)))
            && [5, 6].into_iter().all(|s| inp(n, s).is_some_and(|p| self.const_float(p, &[d])));
        let units = self.new_layer(ni, d);
        if !ok {
            let r = format!("{} (tables, gamma and beta are not constant float tensors)", barrier_reason(n));
            self.block(&units, &r);
        } else {
            for (s, t) in tables {
                self.slice(t, 1, &units, (ni, s), Role::Producer);
            }
            for s in [5, 6] {
                if let Some(p) = inp(n, s) {
                    self.slice(p, 0, &units, (ni, s), Role::Param);
                }
            }
            self.st.sources.insert(ni, units.clone());
            self.st.edits.push(Edit::Norm { node: ni, units: units.clone() });
        }
        let vals = self.producer_out(ni, vec![Val::Const(0.0); d].into());
        for o in [0, 2].into_iter().filter_map(|i| n.output.get(i)).filter(|o| !o.is_empty()) {
            self.emit(ni, o, Track { axis: 2, rank: 3, units: units.clone(), vals: vals.clone() });
        }
    }
}
