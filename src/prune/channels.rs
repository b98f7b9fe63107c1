//! `--structured channels`: remove whole conv channels / hidden units with EMP.
//!
//! Pipeline: dependency analysis ([`super::groups`], rules in [`super::rules`]) → one score per
//! unit → EMP per group (or globally) → rewrite of the pruned model and of the masked model.
//!
//! **Scores.** A unit's score aggregates the *producing* weights only: the output-channel slices
//! of every Conv / ConvTranspose / Gemm / MatMul weight that writes the unit (all producers of a
//! residual chain, the depthwise filter of the channel, ...), L2 norm by default, L1 with
//! [`Criterion::L1`]. Biases and norm parameters are not scored (as in the EMP paper). Consumer
//! input slices are left out on purpose: a unit read by several consumers (Concat fan-out,
//! residual stream) would be counted once per reader, and consumers belong to other layers with
//! other weight scales.
//!
//! **Global scope.** Each prunable group's scores are divided by the group's mean score before one
//! EMP runs over all units: a group of equally important units sits at 1.0 whatever its layer's
//! weight scale, so a layer with small weights is not starved just for being small. Every group
//! still keeps at least one unit.
//!
//! **Constants of removed units.** In the masked model a removed unit's producer weights and
//! biases are zeroed; downstream it may still emit a constant (BN shift, a bias Add, sigmoid(0),
//! HardSigmoid(0)...). When the unit's consumer is linear in it and has no padding (Gemm, MatMul,
//! unpadded group-1 Conv), the constant is folded into the consumer's bias (created if missing),
//! in both the pruned and the masked model (where the consumer's input slice is then zeroed, so
//! the constant is not counted twice). When it cannot be folded (grouped Conv, ConvTranspose, a
//! value that is not one constant), the unit is kept and the group's notes say why.

use super::groups::{self, Analysis, ConsumerKind, Ctx, Edit, IntTarget, Role, Unit, Val};
use super::{Criterion, GroupReport, StructOptions, StructScope, StructuralResult};
use crate::emp;
use crate::model::graph::{self, node_label, set_attr_i, GraphIndex, WeightRef};
use crate::model::tensor::{self, dt};
use anyhow::{bail, Context, Result};
use onnx_protobuf::{GraphProto, ModelProto, NodeProto, TensorProto};
use std::collections::{BTreeMap, BTreeSet};

/// Prune conv channels and hidden units of the top-level graph with EMP.
///
/// Returns the pruned model, the masked model (same graph as the input, removed units' producing
/// weights and biases zeroed, the same bias compensation applied: it computes the same function
/// as the pruned model) and one [`GroupReport`] per coupled group, in graph order. Groups that
/// cannot be pruned safely are reported with `blocked` set (the node and op that stopped them)
/// and left untouched. Errors: β not finite or ≤ 0, a NaN/Inf weight in a scored tensor (named),
/// a malformed graph (cycle, duplicate names).
pub fn prune_channels(model: &ModelProto, opts: &StructOptions) -> Result<StructuralResult> {
    emp::check_beta(opts.beta).map_err(|e| anyhow::anyhow!("{e}"))?;
    let g = model.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    super::check_struct_widths(g, &ix)?;
    let opset = groups::default_opset(&model.opset_import);
    let ctx = Ctx::new(g, &ix, opset)?;
    let an = groups::analyze(&ctx);
    let plan = plan(&ctx, &an, opts)?;
    let pruned = rewrite(model, &ctx, &an, &plan, Mode::Pruned)?;
    let masked = rewrite(model, &ctx, &an, &plan, Mode::Masked)?;
    let mut refit = refit_sites(&an, &plan);
    let more = downstream_sites(&ctx, &an, &plan, &refit);
    refit.extend(more);
    Ok(StructuralResult { pruned, masked, groups: plan.reports, refit })
}

/// Every consumer that lost input units, for reconstruction: its weight, kept input positions
/// and kept outputs (empty: its outputs are not a tracked group).
fn refit_sites(an: &Analysis, plan: &Plan) -> Vec<crate::reconstruct::refit::RefitSite> {
    let mut out = vec![];
    for c in &an.consumers {
        if an.consts.get(&c.weight).is_some_and(|k| k.dq.is_some()) {
            continue; // quantized: no float weights to refit
        }
        let in_keep: Vec<bool> = c.units.iter().map(|u| plan.keeps(an, *u)).collect();
        if !in_keep.contains(&false) {
            continue;
        }
        let out_keep =
            an.sources.get(&c.node).map(|us| us.iter().map(|u| plan.keeps(an, *u)).collect()).unwrap_or_default();
        out.push(crate::reconstruct::refit::RefitSite { weight: c.weight.clone(), by_output: None, in_keep, out_keep });
    }
    out
}

/// Every other producing Conv / Gemm / MatMul downstream of a removal: its inputs are not pruned
/// but no longer the dense ones, so its output is re-fitted too (all inputs kept).
fn downstream_sites(
    ctx: &Ctx,
    an: &Analysis,
    plan: &Plan,
    sites: &[crate::reconstruct::refit::RefitSite],
) -> Vec<crate::reconstruct::refit::RefitSite> {
    let first = sites.iter().filter_map(|s| ctx.g.node.iter().position(|n| n.input.get(1) == Some(&s.weight))).min();
    let Some(first) = first else { return vec![] };
    let mut out = vec![];
    for (ni, n) in ctx.g.node.iter().enumerate().skip(first + 1) {
        if !matches!(n.op_type.as_str(), "Conv" | "Gemm" | "MatMul") {
            continue;
        }
        let Some(w) = n.input.get(1).filter(|w| ctx.ix.is_constant(w)) else { continue };
        if sites.iter().any(|s| &s.weight == w) {
            continue;
        }
        let out_keep =
            an.sources.get(&ni).map(|us| us.iter().map(|u| plan.keeps(an, *u)).collect()).unwrap_or_default();
        out.push(crate::reconstruct::refit::RefitSite {
            weight: w.clone(),
            by_output: None,
            in_keep: vec![],
            out_keep,
        });
    }
    out
}

/// The decision: which unit classes go, and the reports.
struct Plan {
    /// Roots of removed unit classes.
    removed: BTreeSet<Unit>,
    reports: Vec<GroupReport>,
}

impl Plan {
    fn keeps(&self, an: &Analysis, u: Option<Unit>) -> bool {
        u.is_none_or(|u| !self.removed.contains(&an.find(u)))
    }
}

struct Group {
    id: usize,
    first_source: usize,
    /// Class roots, ascending (so in the first source's channel order).
    classes: Vec<Unit>,
    sources: BTreeSet<usize>,
    blocked: Vec<String>,
    pins: BTreeMap<Unit, String>,
    scores: Vec<f64>,
    /// Some source is an LSTM / GRU / RNN (hidden units: a wider automatic alignment).
    recurrent: bool,
}

impl Group {
    fn align(&self, opts: &StructOptions) -> usize {
        let max = if self.recurrent { super::AUTO_ALIGN_MAX_RECURRENT } else { super::AUTO_ALIGN_MAX };
        opts.round_to.for_width_max(self.classes.len(), max)
    }
}

/// Sum over every element of `vals` (row-major `dims`) into its index along `axis`.
fn per_position(vals: &[f64], dims: &[usize], axis: usize, f: impl Fn(f64) -> f64) -> Vec<f64> {
    let inner: usize = dims[axis + 1..].iter().product();
    let d = dims[axis];
    let mut out = vec![0.0; d];
    for (i, v) in vals.iter().enumerate() {
        out[(i / inner) % d] += f(*v);
    }
    out
}

/// Dense f64 data of a constant as the nodes see it (dims of the alias, data of the base).
fn dense(ctx: &Ctx, name: &str) -> Result<(Vec<f64>, Vec<usize>)> {
    let t = ctx.base_tensor(name).with_context(|| format!("weight '{name}' not found"))?;
    let v = if ctx.consts.get(name).is_some_and(|c| c.dq.is_some()) {
        ctx.const_vals(name).with_context(|| format!("quantized weight '{name}'"))?
    } else {
        tensor::read_f64(t).with_context(|| format!("weight '{name}'"))?
    };
    let dims = ctx.dims(name).unwrap_or_default().to_vec();
    if v.len() != dims.iter().product::<usize>() {
        bail!("weight '{name}': {} values for dims {dims:?}", v.len());
    }
    Ok((v, dims))
}

/// Values whose calibration statistics `Criterion::Activation` needs: the input of every
/// consumer that contracts a tracked axis, with that axis.
pub fn activation_requests(model: &ModelProto) -> Result<BTreeMap<String, i64>> {
    let g = model.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    let ctx = Ctx::new(g, &ix, groups::default_opset(&model.opset_import))?;
    let an = groups::analyze(&ctx);
    let mut req = BTreeMap::new();
    for c in &an.consumers {
        if let Some(v) = g.node.get(c.node).and_then(|n| n.input.first()) {
            if let Some(t) = an.tracks.get(v) {
                req.insert(v.clone(), t.axis as i64);
            }
        }
    }
    Ok(req)
}

/// Activation criterion: for each unit, Σ over its consumers of mean|x_p| over the calibration
/// set times ‖W_in[:, p]‖₂ (the unit's outgoing weights) — how much signal the unit actually
/// sends downstream. Units no consumer reads score 0.
fn activation_scores(ctx: &Ctx, an: &Analysis, opts: &StructOptions) -> Result<BTreeMap<Unit, f64>> {
    let mut acc: BTreeMap<Unit, f64> = BTreeMap::new();
    for s in an.slices.values().filter(|s| s.roles.contains(&Role::Producer)) {
        for u in s.units.iter().flatten() {
            acc.entry(an.find(*u)).or_default();
        }
    }
    for c in &an.consumers {
        let Some(v) = ctx.g.node.get(c.node).and_then(|n| n.input.first()) else { continue };
        let Some(slice) = an.slices.values().find(|s| s.weight == c.weight && s.roles.contains(&Role::Consumer)) else {
            continue;
        };
        let stats = opts.activation(v)?;
        let mean = stats.mean_abs();
        if mean.len() != c.units.len() {
            bail!(
                "value '{v}': {} calibrated features but {} weight positions in '{}'",
                mean.len(),
                c.units.len(),
                c.weight
            );
        }
        let (w, dims) = dense(ctx, &c.weight)?;
        let norms: Vec<f64> = per_position(&w, &dims, slice.axis, |x| x * x).into_iter().map(f64::sqrt).collect();
        if norms.len() != c.units.len() {
            bail!("weight '{}': {} positions on its input axis, {} expected", c.weight, norms.len(), c.units.len());
        }
        for (p, u) in c.units.iter().enumerate() {
            if let Some(u) = u {
                *acc.entry(an.find(*u)).or_default() += mean[p] * norms[p];
            }
        }
    }
    if let Some((u, v)) = acc.iter().find(|(_, v)| !v.is_finite()) {
        bail!("activation score of unit {u} is {v}");
    }
    Ok(acc)
}

fn unit_scores(ctx: &Ctx, an: &Analysis, crit: Criterion) -> Result<BTreeMap<Unit, f64>> {
    let mut acc: BTreeMap<Unit, f64> = BTreeMap::new();
    for s in an.slices.values().filter(|s| s.roles.contains(&Role::Producer)) {
        let (v, dims) = dense(ctx, &s.weight)?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!(
                "weight '{}' holds a non-finite value ({}) at flat index {i}: cannot score its units",
                s.weight,
                v[i]
            );
        }
        let pos = match crit {
            Criterion::L1 => per_position(&v, &dims, s.axis, f64::abs),
            _ => per_position(&v, &dims, s.axis, |x| x * x),
        };
        for (p, u) in s.units.iter().enumerate() {
            if let Some(u) = u {
                *acc.entry(an.find(*u)).or_default() += pos[p];
            }
        }
    }
    if crit == Criterion::L2 {
        acc.values_mut().for_each(|v| *v = v.sqrt());
    }
    for (u, v) in &acc {
        if !v.is_finite() {
            bail!("unit score overflow for unit {u} (weights too large to score)");
        }
    }
    Ok(acc)
}

/// Units that must stay because the constant they would emit cannot be folded exactly.
fn pins(ctx: &Ctx, an: &Analysis) -> BTreeMap<Unit, String> {
    let mut out = BTreeMap::new();
    for c in &an.consumers {
        let label = node_label(&ctx.g.node[c.node]);
        for (p, u) in c.units.iter().enumerate() {
            let Some(u) = u else { continue };
            let why = match (c.vals[p], &c.fold) {
                (Val::Varying, _) => Some(format!("its value at '{label}' would not be a constant")),
                (Val::Const(k), Err(e)) if k != 0.0 => Some(format!("it would emit a constant into {e}")),
                _ => None,
            };
            if let Some(w) = why {
                out.entry(an.find(*u)).or_insert(w);
            }
        }
    }
    out
}

fn collect_groups(ctx: &Ctx, an: &Analysis, scores: &BTreeMap<Unit, f64>) -> Vec<Group> {
    let mut by_id: BTreeMap<usize, Group> = BTreeMap::new();
    for (layer, &src) in an.layer_source.iter().enumerate() {
        let id = an.layer_group(layer);
        let g = by_id.entry(id).or_insert_with(|| Group {
            id,
            first_source: src,
            classes: vec![],
            sources: BTreeSet::new(),
            blocked: vec![],
            pins: BTreeMap::new(),
            scores: vec![],
            recurrent: false,
        });
        g.recurrent |= matches!(ctx.g.node[src].op_type.as_str(), "LSTM" | "GRU" | "RNN");
        g.first_source = g.first_source.min(src);
        g.sources.insert(src);
    }
    let mut classes: BTreeSet<Unit> = BTreeSet::new();
    for u in 0..an.n_units() {
        classes.insert(an.find(u));
    }
    for &c in &classes {
        if let Some(g) = by_id.get_mut(&an.group_of(c)) {
            g.classes.push(c);
            g.scores.push(scores.get(&c).copied().unwrap_or(0.0));
        }
    }
    for (u, r) in &an.blocks {
        if let Some(g) = by_id.get_mut(&an.group_of(*u)) {
            if !g.blocked.contains(r) {
                g.blocked.push(r.clone());
            }
        }
    }
    for (u, r) in pins(ctx, an) {
        if let Some(g) = by_id.get_mut(&an.group_of(u)) {
            g.pins.insert(u, r);
        }
    }
    let mut v: Vec<Group> = by_id.into_values().filter(|g| !g.classes.is_empty()).collect();
    v.sort_by_key(|g| g.first_source);
    v
}

/// Indices (into the group's classes) in rank order: higher score first, lower index on ties.
fn rank_order(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        scores[b].abs().partial_cmp(&scores[a].abs()).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b))
    });
    idx
}

/// Keep set: `chosen`, plus pinned units, plus the best others until `target` (a multiple of
/// `round_to` when possible).
fn fill(g: &Group, chosen: &BTreeSet<usize>, target: usize, round_to: usize) -> BTreeSet<usize> {
    let n = g.classes.len();
    let mut keep = chosen.clone();
    for (i, c) in g.classes.iter().enumerate() {
        if g.pins.contains_key(c) {
            keep.insert(i);
        }
    }
    let goal = emp::round_up(target.max(keep.len()).max(1), n, round_to.max(1));
    for i in rank_order(&g.scores) {
        if keep.len() >= goal {
            break;
        }
        keep.insert(i);
    }
    keep
}

fn plan(ctx: &Ctx, an: &Analysis, opts: &StructOptions) -> Result<Plan> {
    let mut scores = unit_scores(ctx, an, opts.criterion)?;
    if opts.criterion == Criterion::Activation {
        scores = activation_scores(ctx, an, opts)?;
    }
    let groups = collect_groups(ctx, an, &scores);
    let mut decisions: Vec<(f64, BTreeSet<usize>, Vec<String>)> = Vec::with_capacity(groups.len());
    let emp_err = |e: emp::EmpError| anyhow::anyhow!("{e}");
    for g in &groups {
        let (d, _) = match opts.fixed_ratio {
            // Baseline for comparisons: a fixed fraction of every group, highest scores kept.
            Some(r) => emp::select_ratio(&g.scores, r).map_err(emp_err)?,
            None => emp::select(&g.scores, opts.beta).map_err(emp_err)?,
        };
        let mut notes = vec![];
        if d.all_zero {
            notes.push("all scores are zero: nothing to rank, kept whole".to_string());
        }
        if !g.blocked.is_empty() || d.all_zero || opts.scope == StructScope::Global {
            decisions.push((d.n_eff, (0..g.classes.len()).collect(), notes));
            continue;
        }
        if opts.floor.stem && is_stem(ctx, g) {
            notes.push(format!(
                "kept whole: a Conv that reads the model input (stem); EMP would keep {} (--include stem prunes it)",
                d.kept
            ));
            decisions.push((d.n_eff, (0..g.classes.len()).collect(), notes));
            continue;
        }
        let chosen: BTreeSet<usize> = emp::top_k(&g.scores, d.kept).into_iter().collect();
        let align = g.align(opts);
        let target = floored(g.classes.len(), d.kept, opts, &mut notes);
        let keep = fill(g, &chosen, target, align);
        if align > 1 && keep.len() > target && opts.scope != StructScope::Global {
            notes.push(format!(
                "kept {} rounded up to {} (a multiple of {align}: --round-to {})",
                target,
                keep.len(),
                opts.round_to
            ));
        }
        decisions.push((d.n_eff, keep, notes));
    }
    if opts.scope == StructScope::Global {
        let stems: BTreeSet<usize> =
            (0..groups.len()).filter(|&i| opts.floor.stem && is_stem(ctx, &groups[i])).collect();
        global(&groups, &mut decisions, &stems, opts)?;
    }
    let mut removed: BTreeSet<Unit> = BTreeSet::new();
    for (g, (_, keep, _)) in groups.iter().zip(&decisions) {
        for (i, c) in g.classes.iter().enumerate() {
            if !keep.contains(&i) {
                removed.insert(*c);
            }
        }
    }
    let mut plan = Plan { removed, reports: vec![] };
    keep_one_per_tensor(an, &scores, &mut plan);
    plan.reports = groups
        .iter()
        .zip(decisions)
        .map(|(g, (n_eff, _, notes))| report(ctx, an, &plan, g, n_eff, notes, opts))
        .collect();
    Ok(plan)
}

/// One EMP over all prunable groups, each group's scores divided by its mean.
fn global(
    groups: &[Group],
    decisions: &mut [(f64, BTreeSet<usize>, Vec<String>)],
    stems: &BTreeSet<usize>,
    opts: &StructOptions,
) -> Result<()> {
    let mut all: Vec<f64> = vec![];
    let mut owner: Vec<(usize, usize)> = vec![];
    for (gi, g) in groups.iter().enumerate() {
        let mean = g.scores.iter().sum::<f64>() / g.scores.len().max(1) as f64;
        if !g.blocked.is_empty() || mean == 0.0 {
            continue;
        }
        for (i, s) in g.scores.iter().enumerate() {
            all.push(s / mean);
            owner.push((gi, i));
        }
    }
    if all.is_empty() {
        return Ok(());
    }
    let (d, top) = emp::select(&all, opts.beta).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chosen: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for k in top {
        let (gi, i) = owner[k];
        chosen.entry(gi).or_default().insert(i);
    }
    let gids: BTreeSet<usize> = owner.iter().map(|o| o.0).collect();
    for gi in gids {
        let c = chosen.remove(&gi).unwrap_or_default();
        decisions[gi].2.push(format!(
            "global EMP over {} units of all prunable groups: N_eff = {:.2}, kept {}",
            all.len(),
            d.n_eff,
            d.kept
        ));
        if stems.contains(&gi) {
            decisions[gi].2.push(format!(
                "kept whole: a Conv that reads the model input (stem); global EMP would keep {} (--include stem prunes it)",
                c.len()
            ));
            continue;
        }
        let target = floored(groups[gi].classes.len(), c.len().max(1), opts, &mut decisions[gi].2);
        decisions[gi].1 = fill(&groups[gi], &c, target, groups[gi].align(opts));
    }
    Ok(())
}

/// `kept` raised to the narrow floor ([`super::Floor`]), with a note when the floor binds.
fn floored(n: usize, kept: usize, opts: &StructOptions, notes: &mut Vec<String>) -> usize {
    let min = opts.floor.min_keep(n);
    if kept >= min {
        return kept;
    }
    notes.push(format!(
        "kept {min} instead of {kept}: floor of half the width and at least {} units (--include narrow lifts it)",
        super::NARROW_MIN.min(n)
    ));
    min
}

/// Ops between the model input and a stem that do not mix channels (normalisation, layout).
const STEM_PATH_OPS: &[&str] = &[
    "Add",
    "BatchNormalization",
    "Cast",
    "Div",
    "Flatten",
    "Identity",
    "Mul",
    "Pad",
    "Reshape",
    "Squeeze",
    "Sub",
    "Transpose",
    "Unsqueeze",
];

/// A group whose producer is a Conv reading a graph input (possibly through `STEM_PATH_OPS`
/// whose other operands are constants).
fn is_stem(ctx: &Ctx, g: &Group) -> bool {
    g.sources.iter().any(|&s| {
        let n = &ctx.g.node[s];
        if n.op_type != "Conv" {
            return false;
        }
        let mut name = match n.input.first() {
            Some(i) => i.as_str(),
            None => return false,
        };
        for _ in 0..16 {
            if ctx.consts.contains_key(name) {
                return false;
            }
            if ctx.ix.inputs.contains(name) {
                return true;
            }
            let Some(&p) = ctx.ix.producer.get(name) else { return false };
            let pn = &ctx.g.node[p];
            let live: Vec<&String> =
                pn.input.iter().filter(|i| !i.is_empty() && !ctx.consts.contains_key(i.as_str())).collect();
            if live.len() != 1 || !STEM_PATH_OPS.contains(&pn.op_type.as_str()) {
                return false;
            }
            name = live[0];
        }
        false
    })
}

/// No tensor may lose all its positions (a split part or concat input would become empty).
fn keep_one_per_tensor(an: &Analysis, scores: &BTreeMap<Unit, f64>, plan: &mut Plan) {
    for t in an.tracks.values() {
        if t.units.iter().any(|u| plan.keeps(an, *u)) {
            continue;
        }
        let best = t.units.iter().flatten().map(|u| an.find(*u)).max_by(|a, b| {
            scores
                .get(a)
                .unwrap_or(&0.0)
                .partial_cmp(scores.get(b).unwrap_or(&0.0))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(b.cmp(a))
        });
        if let Some(b) = best {
            plan.removed.remove(&b);
        }
    }
}

fn report(
    ctx: &Ctx,
    an: &Analysis,
    plan: &Plan,
    g: &Group,
    n_eff: f64,
    mut notes: Vec<String>,
    opts: &StructOptions,
) -> GroupReport {
    let n = g.classes.len();
    let kept_idx: Vec<usize> = (0..n).filter(|&i| !plan.removed.contains(&g.classes[i])).collect();
    let total: f64 = g.scores.iter().map(|s| s.abs()).sum();
    let s_eff = if total > 0.0 { kept_idx.iter().map(|&i| g.scores[i].abs()).sum::<f64>() / total } else { 1.0 };
    let pinned: Vec<&String> = g.pins.iter().filter(|(u, _)| !plan.removed.contains(u)).map(|(_, r)| r).collect();
    if g.blocked.is_empty() && !pinned.is_empty() {
        notes.push(format!("{} unit(s) kept because {}", pinned.len(), pinned[0]));
    }
    let align = g.align(opts);
    if g.blocked.is_empty() && align > 1 && !kept_idx.len().is_multiple_of(align) && kept_idx.len() != n {
        notes.push(format!("kept count {} is not a multiple of {align} (pinned units)", kept_idx.len()));
    }
    for c in &an.consumers {
        let folds = c.units.iter().zip(&c.vals).any(|(u, v)| {
            u.is_some_and(|u| an.group_of(u) == g.id && plan.removed.contains(&an.find(u)))
                && matches!(v, Val::Const(k) if *k != 0.0)
        });
        if folds {
            let border = if matches!(c.kind, ConsumerKind::Conv { padded: true }) {
                " (exact in the interior; at the zero-padded border the difference is pruning error)"
            } else {
                ""
            };
            notes.push(format!(
                "constants of removed units folded into the bias of '{}'{border}",
                node_label(&ctx.g.node[c.node])
            ));
        }
    }
    let mut members: BTreeSet<usize> = BTreeSet::new();
    for (ni, us) in &an.touched {
        if us.iter().any(|u| an.group_of(*u) == g.id) {
            members.insert(*ni);
        }
    }
    let hidden = g
        .sources
        .iter()
        .all(|&s| matches!(ctx.g.node[s].op_type.as_str(), "MatMul" | "Gemm" | "LSTM" | "GRU" | "RNN" | "Gather"));
    let blocked = match g.blocked.len() {
        0 => None,
        1..=3 => Some(g.blocked.join("; ")),
        k => Some(format!("{}; and {} more", g.blocked[..3].join("; "), k - 3)),
    };
    let blocked_flag = blocked.is_some();
    GroupReport {
        id: node_label(&ctx.g.node[g.first_source]),
        kind: if hidden { "hidden" } else { "channels" }.to_string(),
        members: members.iter().map(|&i| node_label(&ctx.g.node[i])).collect(),
        n,
        n_eff,
        kept: if blocked.is_some() { n } else { kept_idx.len() },
        s_eff: if blocked.is_some() { 1.0 } else { s_eff },
        blocked,
        notes,
        removed: if blocked_flag { vec![] } else { (0..n).filter(|&i| plan.removed.contains(&g.classes[i])).collect() },
    }
}

// ---------------------------------------------------------------------------------------------
// Rewrite

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pruned,
    Masked,
}

/// Where the compensation of one consumer goes.
struct Fold {
    node: usize,
    /// Delta per consumer output, already divided by Gemm's beta.
    delta: Vec<f64>,
    /// Positions of the consumer weight's input axis whose constant was folded.
    folded: Vec<usize>,
    weight: String,
    axis: usize,
}

/// Bias deltas from removed units' constants, computed on the dense weights.
fn folds(ctx: &Ctx, an: &Analysis, plan: &Plan) -> Result<Vec<Fold>> {
    let mut out = vec![];
    for c in &an.consumers {
        let hits: Vec<(usize, f64)> = c
            .units
            .iter()
            .zip(&c.vals)
            .enumerate()
            .filter_map(|(p, (u, v))| match v {
                Val::Const(k) if *k != 0.0 && !plan.keeps(an, *u) => Some((p, *k)),
                _ => None,
            })
            .collect();
        if hits.is_empty() {
            continue;
        }
        if let Err(e) = &c.fold {
            bail!("internal: a removed unit emits a constant into {e}");
        }
        let (w, dims) = dense(ctx, &c.weight)?;
        let (delta, axis) = match c.kind {
            ConsumerKind::Conv { .. } => {
                let (o, i) = (dims[0], dims[1]);
                let k: usize = dims[2..].iter().product();
                let mut d = vec![0.0; o];
                for (oi, dv) in d.iter_mut().enumerate() {
                    for &(p, kv) in &hits {
                        let s = (oi * i + p) * k;
                        *dv += kv * w[s..s + k].iter().sum::<f64>();
                    }
                }
                (d, 1)
            }
            ConsumerKind::Gemm { trans_b, alpha, beta } => {
                let (n, kk) = if trans_b { (dims[0], dims[1]) } else { (dims[1], dims[0]) };
                let mut d = vec![0.0; n];
                for (oi, dv) in d.iter_mut().enumerate() {
                    for &(p, kv) in &hits {
                        let wv = if trans_b { w[oi * kk + p] } else { w[p * n + oi] };
                        *dv += alpha * kv * wv / beta;
                    }
                }
                (d, if trans_b { 1 } else { 0 })
            }
            ConsumerKind::MatMul { .. } => {
                let n = dims[1];
                let mut d = vec![0.0; n];
                for (oi, dv) in d.iter_mut().enumerate() {
                    for &(p, kv) in &hits {
                        *dv += kv * w[p * n + oi];
                    }
                }
                (d, 0)
            }
        };
        // Outputs the consumer's own group removes need no compensation (and must stay untouched
        // in the masked model, where their producers are zeroed).
        let mut delta = delta;
        if let Some(src) = an.sources.get(&c.node) {
            for (o, u) in src.iter().enumerate() {
                if !plan.keeps(an, *u) {
                    delta[o] = 0.0;
                }
            }
        }
        out.push(Fold {
            node: c.node,
            delta,
            folded: hits.iter().map(|h| h.0).collect(),
            weight: c.weight.clone(),
            axis,
        });
    }
    Ok(out)
}

/// The working copy of the graph with a name → tensor map that survives materialisation.
struct Work {
    g: GraphProto,
    refs: BTreeMap<String, WeightRef>,
    names: BTreeSet<String>,
    remove_nodes: BTreeSet<usize>,
    /// New nodes to insert right after a node index.
    insert_after: BTreeMap<usize, Vec<NodeProto>>,
}

impl Work {
    fn tensor(&mut self, name: &str) -> Result<&mut TensorProto> {
        let r = *self.refs.get(name).with_context(|| format!("tensor '{name}' not found"))?;
        graph::weight_mut(&mut self.g, r).with_context(|| format!("tensor '{name}' not found"))
    }

    fn fresh(&mut self, base: &str) -> String {
        let mut k = 0;
        loop {
            let n = if k == 0 { format!("{base}_emp") } else { format!("{base}_emp{k}") };
            if self.names.insert(n.clone()) {
                return n;
            }
            k += 1;
        }
    }

    fn add_initializer(&mut self, t: TensorProto) {
        self.names.insert(t.name.clone());
        self.refs.insert(t.name.clone(), WeightRef::Init(self.g.initializer.len()));
        self.g.initializer.push(t);
    }
}

fn new_float(dtype: i32, name: &str, dims: &[i64], vals: &[f64]) -> Result<TensorProto> {
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.data_type = dtype;
    t.dims = dims.to_vec();
    let es = tensor::elem_size(dtype).context("bias dtype")?;
    t.raw_data = vec![0; vals.len() * es];
    tensor::write_f64(&mut t, vals)?;
    Ok(t)
}

/// Keep mask over the elements of a tensor: position along `axis` kept.
fn element_mask(dims: &[usize], axis: usize, keep_pos: &[bool]) -> Vec<bool> {
    let inner: usize = dims[axis + 1..].iter().product();
    let n: usize = dims.iter().product();
    (0..n).map(|i| keep_pos[(i / inner) % dims[axis]]).collect()
}

fn zero_positions(t: &mut TensorProto, axis: usize, keep_pos: &[bool]) -> Result<()> {
    let dims = tensor::shape(t)?;
    if dims.get(axis) != Some(&keep_pos.len()) {
        bail!("tensor '{}': axis {axis} of {:?} does not have {} positions", tensor::tname(t), dims, keep_pos.len());
    }
    let zero: Vec<bool> = element_mask(&dims, axis, keep_pos).into_iter().map(|k| !k).collect();
    tensor::zero_where(t, &zero)
}

fn slice_positions(t: &mut TensorProto, axis: usize, keep_pos: &[bool]) -> Result<()> {
    let dims = tensor::shape(t)?;
    if dims.get(axis) != Some(&keep_pos.len()) {
        bail!("tensor '{}': axis {axis} of {:?} does not have {} positions", tensor::tname(t), dims, keep_pos.len());
    }
    let keep: Vec<usize> = (0..keep_pos.len()).filter(|&p| keep_pos[p]).collect();
    tensor::slice_axis(t, axis, &keep)
}

fn rewrite(model: &ModelProto, ctx: &Ctx, an: &Analysis, plan: &Plan, mode: Mode) -> Result<ModelProto> {
    let folds = folds(ctx, an, plan)?;
    let mut m = model.clone();
    let g = m.graph.take().context("model has no graph")?;
    let mut names: BTreeSet<String> = ctx.ix.weights.keys().cloned().collect();
    for n in &g.node {
        names.extend(n.output.iter().cloned());
        names.insert(n.name.clone());
    }
    names.extend(g.input.iter().map(|v| v.name.clone()));
    let mut w =
        Work { refs: ctx.ix.weights.clone(), g, names, remove_nodes: BTreeSet::new(), insert_after: BTreeMap::new() };

    let keep_of = |units: &[Option<Unit>]| -> Vec<bool> { units.iter().map(|u| plan.keeps(an, *u)).collect() };
    // Which constants change in this mode.
    let mut changed: BTreeSet<String> = BTreeSet::new();
    for s in an.slices.values() {
        let zeroed = s.roles.contains(&Role::Producer) || s.roles.contains(&Role::ProducerBias);
        if keep_of(&s.units).contains(&false) && (mode == Mode::Pruned || zeroed) {
            changed.insert(s.weight.clone());
        }
    }
    for f in &folds {
        if mode == Mode::Masked {
            changed.insert(f.weight.clone());
        }
        if let Some(b) = bias_name(ctx, an, f.node) {
            changed.insert(b);
        }
    }
    materialize(ctx, &mut w, &changed)?;

    // 1. compensation (before any slicing/zeroing: deltas index dense outputs)
    for f in &folds {
        apply_fold(ctx, an, plan, &mut w, f, mode)?;
    }
    // 2. slices
    for s in an.slices.values() {
        let keep = keep_of(&s.units);
        if !keep.contains(&false) {
            continue;
        }
        if let Some(c) = ctx.consts.get(&s.weight).filter(|c| c.dq.is_some()) {
            slice_quantized(&mut w, c, s, &keep, mode)?;
            continue;
        }
        match mode {
            Mode::Pruned => slice_positions(w.tensor(&s.weight)?, s.axis, &keep)?,
            Mode::Masked if s.roles.contains(&Role::Producer) || s.roles.contains(&Role::ProducerBias) => {
                zero_positions(w.tensor(&s.weight)?, s.axis, &keep)?
            }
            Mode::Masked => {}
        }
    }
    // 3. integer edits (pruned only: the masked model keeps every shape)
    if mode == Mode::Pruned {
        apply_edits(ctx, an, plan, &mut w)?;
        fix_value_info(an, plan, &mut w);
    }
    // 4. node removals / insertions (last: they shift node indices)
    let old = std::mem::take(&mut w.g.node);
    for (i, n) in old.into_iter().enumerate() {
        if !w.remove_nodes.contains(&i) {
            w.g.node.push(n);
        }
        if let Some(extra) = w.insert_after.remove(&i) {
            w.g.node.extend(extra);
        }
    }
    m.graph = Some(w.g).into();
    Ok(m)
}

/// The existing bias constant a fold writes to, if any.
fn bias_name(ctx: &Ctx, an: &Analysis, node: usize) -> Option<String> {
    let n = &ctx.g.node[node];
    let c = an.consumers.iter().find(|c| c.node == node)?;
    match c.kind {
        ConsumerKind::MatMul { bias: Some((ai, slot)) } => ctx.g.node[ai].input.get(slot).cloned(),
        ConsumerKind::MatMul { bias: None } => None,
        _ => n.input.get(2).filter(|s| !s.is_empty()).cloned(),
    }
}

/// Give aliases (Identity / Reshape / Unsqueeze of a constant) that change, or whose source
/// changes, their own initializer, so the change does not leak to other users of the source.
fn materialize(ctx: &Ctx, w: &mut Work, changed: &BTreeSet<String>) -> Result<()> {
    for (name, c) in &ctx.consts {
        let Some(ni) = c.alias_node else { continue };
        let hit = changed.contains(name) || changed.contains(&c.base) || c.chain.iter().any(|x| changed.contains(x));
        if !hit {
            continue;
        }
        let base = ctx.ix.weight(ctx.g, &c.base).with_context(|| format!("constant '{}' not found", c.base))?;
        let mut t = base.clone();
        t.name = name.clone();
        t.dims = c.dims.iter().map(|&d| d as i64).collect();
        w.add_initializer(t);
        w.remove_nodes.insert(ni);
    }
    Ok(())
}

fn apply_fold(ctx: &Ctx, an: &Analysis, plan: &Plan, w: &mut Work, f: &Fold, mode: Mode) -> Result<()> {
    let node = &ctx.g.node[f.node];
    let c = an.consumers.iter().find(|c| c.node == f.node).context("consumer")?;
    let wdtype = ctx.base_tensor(&f.weight).map(|t| t.data_type).unwrap_or(dt::FLOAT);
    if mode == Mode::Masked {
        // The folded constant now comes from the bias: stop it flowing through the weight.
        let n = ctx.dims(&f.weight).and_then(|d| d.get(f.axis)).copied().context("consumer weight dims")?;
        let mut keep = vec![true; n];
        for &p in &f.folded {
            if let Some(k) = keep.get_mut(p) {
                *k = false;
            }
        }
        zero_positions(w.tensor(&f.weight)?, f.axis, &keep)?;
    }
    let existing = bias_name(ctx, an, f.node);
    if let Some(b) = existing {
        let t = w.tensor(&b)?;
        let mut v = tensor::read_f64(t).with_context(|| format!("bias '{b}'"))?;
        if v.len() != f.delta.len() {
            bail!("bias '{b}' has {} values, expected {}", v.len(), f.delta.len());
        }
        v.iter_mut().zip(&f.delta).for_each(|(a, d)| *a += d);
        return tensor::write_f64(t, &v);
    }
    // No bias yet: create one. Its outputs belong to the consumer's own group, so the rewrite
    // slices (pruned) or zeroes (masked) it with that group's units.
    let out_units = an.sources.get(&f.node).cloned().unwrap_or_else(|| vec![None; f.delta.len()]);
    let keep: Vec<bool> = out_units.iter().map(|u| plan.keeps(an, *u)).collect();
    let name = w.fresh(&format!("{}_bias", node.output.first().map(|s| s.as_str()).unwrap_or("bias")));
    let mut t = new_float(wdtype, &name, &[f.delta.len() as i64], &f.delta)?;
    match mode {
        Mode::Pruned => slice_positions(&mut t, 0, &keep)?,
        Mode::Masked => zero_positions(&mut t, 0, &keep)?,
    }
    w.add_initializer(t);
    match c.kind {
        ConsumerKind::MatMul { .. } => {
            // y = MatMul(..) becomes y' = MatMul(..); y = Add(y', bias).
            let y = node.output.first().context("MatMul without output")?.clone();
            let y2 = w.fresh(&y);
            let mut add = NodeProto::new();
            add.op_type = "Add".into();
            add.name = w.fresh(&format!("{}_bias", node_label(node)));
            add.input = vec![y2.clone(), name];
            add.output = vec![y];
            let mm = w.g.node.get_mut(f.node).context("node")?;
            mm.output[0] = y2;
            w.insert_after.entry(f.node).or_default().push(add);
        }
        _ => {
            let n = w.g.node.get_mut(f.node).context("node")?;
            while n.input.len() < 3 {
                n.input.push(String::new());
            }
            n.input[2] = name;
        }
    }
    Ok(())
}

/// A quantized weight (DequantizeLinear of an integer initializer): the integers are sliced (or
/// zeroed: zero points are 0, so that is an exact 0), and a per-channel scale and zero point on
/// the sliced axis with them.
fn slice_quantized(
    w: &mut Work,
    c: &groups::ConstInfo,
    s: &groups::WeightSlice,
    keep: &[bool],
    mode: Mode,
) -> Result<()> {
    let dq = c.dq.as_ref().context("quantized view")?;
    let zeroed = s.roles.contains(&Role::Producer) || s.roles.contains(&Role::ProducerBias);
    match mode {
        Mode::Pruned => {
            slice_positions(w.tensor(&c.base)?, s.axis, keep)?;
            if dq.axis == Some(s.axis) {
                slice_positions(w.tensor(&dq.scale)?, 0, keep)?;
                if let Some(z) = &dq.zp {
                    slice_positions(w.tensor(z)?, 0, keep)?;
                }
            }
        }
        Mode::Masked if zeroed => zero_positions(w.tensor(&c.base)?, s.axis, keep)?,
        Mode::Masked => {}
    }
    Ok(())
}

fn kept_count(an: &Analysis, plan: &Plan, units: &[Option<Unit>]) -> i64 {
    units.iter().filter(|u| plan.keeps(an, **u)).count() as i64
}

/// Write new values into an int constant input of a node; a private copy when it is shared.
fn write_int_input(ctx: &Ctx, w: &mut Work, node: usize, slot: usize, vals: &[i64], dims: &[i64]) -> Result<()> {
    let name = w.g.node[node].input.get(slot).cloned().context("missing input")?;
    let shared = ctx.ix.consumers_of(&name).len() != 1
        || ctx.consts.get(&name).is_none_or(|c| c.alias_node.is_some())
        || !w.refs.contains_key(&name);
    if !shared {
        let t = w.tensor(&name)?;
        return tensor::write_i64(t, vals, dims);
    }
    let base = ctx.base_tensor(&name).with_context(|| format!("constant '{name}' not found"))?;
    let mut t = base.clone();
    t.name = w.fresh(&name);
    let new = t.name.clone();
    tensor::write_i64(&mut t, vals, dims)?;
    w.add_initializer(t);
    w.g.node[node].input[slot] = new;
    Ok(())
}

fn apply_edits(ctx: &Ctx, an: &Analysis, plan: &Plan, w: &mut Work) -> Result<()> {
    // Group entry edits per target so one constant is rewritten once.
    let mut per: BTreeMap<String, (IntTarget, Vec<(usize, i64)>)> = BTreeMap::new();
    for e in &an.edits {
        match e {
            Edit::Count { target, index, units } => {
                let key = format!("{target:?}");
                per.entry(key)
                    .or_insert_with(|| (target.clone(), vec![]))
                    .1
                    .push((*index, kept_count(an, plan, units)));
            }
            Edit::Split { node, axis: _, parts } => {
                let sizes: Vec<i64> = parts.iter().map(|p| kept_count(an, plan, p)).collect();
                let old: Vec<i64> = parts.iter().map(|p| p.len() as i64).collect();
                if sizes != old {
                    set_split(ctx, w, *node, &sizes)?;
                }
            }
            Edit::Select { node, axis, units, idx, slice } => {
                select(ctx, an, plan, w, *node, *axis, units, idx, *slice)?
            }
        }
    }
    for (_, (target, entries)) in per {
        match target {
            IntTarget::AttrInt(node, name) => {
                if let Some(&(_, v)) = entries.first() {
                    set_attr_i(&mut w.g.node[node], &name, v);
                }
            }
            IntTarget::AttrInts(node, name) => {
                let n = &mut w.g.node[node];
                if let Some(a) = n.attribute.iter_mut().find(|a| a.name == name) {
                    for (i, v) in entries {
                        if let Some(x) = a.ints.get_mut(i) {
                            *x = v;
                        }
                    }
                }
            }
            IntTarget::Input(node, slot) => {
                let name = ctx.g.node[node].input.get(slot).cloned().unwrap_or_default();
                let mut vals =
                    ctx.const_ints(&name).with_context(|| format!("constant '{name}' is not an integer tensor"))?;
                let before = vals.clone();
                for (i, v) in entries {
                    if let Some(x) = vals.get_mut(i) {
                        *x = v;
                    }
                }
                if vals != before {
                    let dims: Vec<i64> = ctx.base_tensor(&name).map(|t| t.dims.clone()).unwrap_or_default();
                    write_int_input(ctx, w, node, slot, &vals, &dims)?;
                }
            }
        }
    }
    Ok(())
}

/// Gather / stepped Slice on the channel axis: keep the selected positions whose unit is kept,
/// renumbered in the pruned input. A stepped Slice becomes a Gather (kept positions are no longer
/// evenly spaced); nothing changes when no selected or earlier position is removed.
#[allow(clippy::too_many_arguments)]
fn select(
    ctx: &Ctx,
    an: &Analysis,
    plan: &Plan,
    w: &mut Work,
    node: usize,
    axis: usize,
    units: &[Option<Unit>],
    idx: &[usize],
    slice: bool,
) -> Result<()> {
    let keep: Vec<bool> = units.iter().map(|u| plan.keeps(an, *u)).collect();
    let mut newpos = vec![0i64; keep.len()];
    let mut k = 0;
    for (p, &kp) in keep.iter().enumerate() {
        newpos[p] = k;
        k += kp as i64;
    }
    let new: Vec<i64> = idx.iter().filter(|&&p| keep[p]).map(|&p| newpos[p]).collect();
    let old: Vec<i64> = idx.iter().map(|&p| p as i64).collect();
    if new == old {
        return Ok(());
    }
    if !slice {
        return write_int_input(ctx, w, node, 1, &new, &[new.len() as i64]);
    }
    let n = &ctx.g.node[node];
    let name = w.fresh(&format!("{}_indices", node_label(n)));
    let mut t = TensorProto::new();
    t.name = name.clone();
    t.data_type = dt::INT64;
    t.dims = vec![new.len() as i64];
    t.int64_data = new;
    w.add_initializer(t);
    let data = n.input.first().cloned().context("Slice without data input")?;
    let g = &mut w.g.node[node];
    g.op_type = "Gather".into();
    g.input = vec![data, name];
    g.attribute.clear();
    set_attr_i(g, "axis", axis as i64);
    Ok(())
}

fn set_split(ctx: &Ctx, w: &mut Work, node: usize, sizes: &[i64]) -> Result<()> {
    let n = &ctx.g.node[node];
    if graph::attr(n, "split").is_some() {
        graph::set_attr_ints(&mut w.g.node[node], "split", sizes);
        return Ok(());
    }
    if n.input.get(1).is_some_and(|s| !s.is_empty()) {
        return write_int_input(ctx, w, node, 1, sizes, &[sizes.len() as i64]);
    }
    // Equal split (no sizes given): sizes must now be explicit.
    if ctx.opset < 13 {
        graph::set_attr_ints(&mut w.g.node[node], "split", sizes);
        return Ok(());
    }
    let name = w.fresh(&format!("{}_split", node_label(n)));
    let mut t = TensorProto::new();
    t.name = name.clone();
    t.data_type = dt::INT64;
    t.dims = vec![sizes.len() as i64];
    t.int64_data = sizes.to_vec();
    w.add_initializer(t);
    let nm = &mut w.g.node[node];
    nm.attribute.retain(|a| a.name != "num_outputs");
    while nm.input.len() < 2 {
        nm.input.push(String::new());
    }
    nm.input[1] = name;
    Ok(())
}

/// Fix the channel dim of value_info entries of changed tensors (drop the entry when unsure), and
/// the shapes of value_info entries that describe weights (dynamo exports have them).
fn fix_value_info(an: &Analysis, plan: &Plan, w: &mut Work) {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
    use onnx_protobuf::type_proto::Value as T;
    let mut weight_dims: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for v in &w.g.value_info {
        if let Some(r) = w.refs.get(&v.name) {
            if let Some(t) = graph::weight(&w.g, *r) {
                weight_dims.insert(v.name.clone(), t.dims.clone());
            }
        }
    }
    w.g.value_info.retain_mut(|v| {
        if let Some(dims) = weight_dims.get(&v.name) {
            let Some(T::TensorType(tt)) = v.type_.as_mut().and_then(|t| t.value.as_mut()) else { return false };
            let Some(shape) = tt.shape.as_mut() else { return true };
            if shape.dim.len() != dims.len() {
                return false;
            }
            for (d, &n) in shape.dim.iter_mut().zip(dims) {
                d.value = Some(D::DimValue(n));
            }
            return true;
        }
        let Some(t) = an.tracks.get(&v.name) else { return true };
        let kept = kept_count(an, plan, &t.units);
        if kept == t.units.len() as i64 {
            return true;
        }
        let Some(T::TensorType(tt)) = v.type_.as_mut().and_then(|t| t.value.as_mut()) else { return false };
        let Some(shape) = tt.shape.as_mut() else { return true };
        if shape.dim.len() != t.rank {
            return false;
        }
        match shape.dim[t.axis].value.as_mut() {
            Some(D::DimValue(d)) if *d == t.units.len() as i64 => {
                *d = kept;
                true
            }
            _ => false,
        }
    });
}
