//! Where reconstruction refits after a channels cut: every consumer that lost input units, and
//! every producing layer downstream of a removal (its inputs are no longer the dense ones).
//! Contract: names weights as the analysis saw them; reconstruction finds each site's node,
//! bias and quantization in the rewritten model by that name.

use super::{Analysis, Ctx, Plan};
use crate::reconstruct::refit::RefitSite;

/// Every consumer that lost input units, for reconstruction: its weight, kept input positions
/// and kept outputs (empty: its outputs are not a tracked group).
pub(super) fn refit_sites(an: &Analysis, plan: &Plan) -> Vec<RefitSite> {
    let mut out = vec![];
    for c in &an.consumers {
        // Quantized weights (DequantizeLinear of an integer tensor) too: reconstruction refits
        // them dequantized and quantizes the result (`reconstruct::quant`), or says why not.
        let in_keep: Vec<bool> = c.units.iter().map(|u| plan.keeps(an, *u)).collect();
        if !in_keep.contains(&false) {
            continue;
        }
        // A weight several nodes read (CBAM's shared MLP) is one site: the refit fits it to all
        // its uses at once.
        if out.iter().any(|s: &RefitSite| s.weight == c.weight) {
            continue;
        }
        let out_keep =
            an.sources.get(&c.node).map(|us| us.iter().map(|u| plan.keeps(an, *u)).collect()).unwrap_or_default();
        out.push(RefitSite { weight: c.weight.clone(), by_output: None, in_keep, out_keep });
    }
    out
}

/// Every other producing Conv / Gemm / MatMul (or onnxruntime Attention) downstream of a removal: its inputs are not pruned
/// but no longer the dense ones, so its output is re-fitted too (all inputs kept).
pub(super) fn downstream_sites(ctx: &Ctx, an: &Analysis, plan: &Plan, sites: &[RefitSite]) -> Vec<RefitSite> {
    let first = sites.iter().filter_map(|s| ctx.g.node.iter().position(|n| n.input.get(1) == Some(&s.weight))).min();
    let Some(first) = first else { return vec![] };
    let mut out = vec![];
    for (ni, n) in ctx.g.node.iter().enumerate().skip(first + 1) {
        if !crate::reconstruct::site::is_linear_node(n) {
            continue;
        }
        // Float weights, and quantized ones (DequantizeLinear of an integer initializer).
        let quantized = |w: &str| ctx.consts.get(w).is_some_and(|c| c.dq.is_some());
        let Some(w) = n.input.get(1).filter(|w| ctx.ix.is_constant(w) || quantized(w)) else { continue };
        if sites.iter().chain(&out).any(|s| &s.weight == w) {
            continue;
        }
        let out_keep =
            an.sources.get(&ni).map(|us| us.iter().map(|u| plan.keeps(an, *u)).collect()).unwrap_or_default();
        out.push(RefitSite { weight: w.clone(), by_output: None, in_keep: vec![], out_keep });
    }
    out
}
