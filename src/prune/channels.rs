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
//! biases are zeroed (a dead row's bias is kept: `channels/dead.rs`); downstream it may still
//! emit a constant (BN shift, a bias Add, sigmoid(0), HardSigmoid(0)...). When the unit's consumer is linear in it (Gemm, MatMul, group-1 Conv; a
//! zero-padded Conv gets the interior value, the border difference is pruning error), the constant
//! is folded into the consumer's bias (created if missing), in both the pruned and the masked
//! model (where the consumer's input slice is then zeroed, so the constant is not counted twice).
//! A dead unit's constant read by a zero-padded Conv is carried instead by a kept dead unit of the
//! same input, exactly at the border too (`channels/rewrite/carrier.rs`).
//! When it cannot be folded (grouped Conv, ConvTranspose, LSTM input, a quantized consumer, a
//! value that is not one constant), the unit is kept and the group's notes say why.
//!
//! Files: this one is the analysis-to-decision stage (groups, EMP, alignment); `channels/scores.rs`
//! the unit scores; `channels/dead.rs` the dead units whose biases are folded;
//! `channels/floors.rs` the floors (stem, narrow, bottleneck); `channels/report.rs` the group
//! reports and their notes; `channels/rewrite.rs` the rewrite and compensation (`rewrite/carrier.rs`
//! the dead units a kept one carries, `rewrite/norm.rs` the masked normalisations);
//! `channels/sites.rs` the layers reconstruction refits.

use super::groups::{self, Analysis, ConsumerKind, Ctx, Edit, IntTarget, Role, Unit, Val};
use super::{Align, Criterion, GroupReport, MaskedOut, StructOptions, StructScope, StructuralResult};
use crate::emp;
use crate::model::graph::{self, node_label, set_attr_i, GraphIndex, WeightRef};
use crate::model::tensor::{self, dt};
use anyhow::{bail, Context, Result};
use onnx_protobuf::{GraphProto, ModelProto, NodeProto, TensorProto};
use std::collections::{BTreeMap, BTreeSet};

mod dead;
mod floors;
mod parts;
mod report;
mod rewrite;
mod scores;
mod sites;
use floors::{bottleneck_note, floored, is_stem, kept_whole};
use parts::fill;
use report::report;
use rewrite::{rewrite, Mode};
pub use scores::activation_requests;
use scores::{activation_scores, dense, position_sums, unit_scores};
use sites::{downstream_sites, refit_sites};

/// Prune conv channels and hidden units of the top-level graph with EMP.
///
/// Returns the pruned model, the masked model (same graph as the input, removed units' producing
/// weights and biases zeroed, the same bias compensation applied: it computes the same function
/// as the pruned model) and one [`GroupReport`] per coupled group, in graph order. Groups that
/// cannot be pruned safely are reported with `blocked` set (the node and op that stopped them)
/// and left untouched. Errors: β not finite or ≤ 0, a NaN/Inf weight in a scored tensor (named),
/// a malformed graph (cycle, duplicate names).
pub fn prune_channels(model: &ModelProto, opts: &StructOptions) -> Result<StructuralResult> {
    prune_channels_to(model, opts, &MaskedOut::Keep)
}

/// [`prune_channels`] with the masked model sent to `masked_out`: written to a file (or not
/// built) before the pruned model is built, so peak memory holds the input and one rewrite.
pub fn prune_channels_to(model: &ModelProto, opts: &StructOptions, masked_out: &MaskedOut) -> Result<StructuralResult> {
    super::filled_copying(model, |m| prune_hollow(m, opts, masked_out))
}

/// The pruned model with its unchanged big initializers still hollow.
///
/// Without reconstruction the run fills them by moving the input's tensors
/// ([`super::filled_moving`]), so the weights are never copied.
pub(crate) fn prune_hollow(
    model: &ModelProto,
    opts: &StructOptions,
    masked_out: &MaskedOut,
) -> Result<(StructuralResult, crate::model::hollow::Hollow)> {
    emp::check_beta(opts.beta).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Biases shared by several layers (deduplicated by the exporter) are read through one alias
    // per layer, so that they do not tie the layers' channels together; unless the copies that
    // gives the changed layers would leave more parameters than the input had.
    if let Some((split, aliases)) = super::unshare::split(model)? {
        if let Some(r) = prune_with(&split, Some((&aliases, model)), opts, masked_out)? {
            return Ok(r);
        }
    }
    let r = prune_with(model, None, opts, masked_out)?.context("a pass without aliases always returns")?;
    // Params never increase: a cut whose copies (a tensor layers share that each must slice its
    // own way) and compensating biases outweigh what it removes is not made.
    let (before, after) = (super::unshare::elements(model), super::unshare::elements(&r.0.pruned));
    if after <= before || r.0.groups.iter().all(|g| g.kept >= g.n) {
        return Ok(r);
    }
    let whole = StructOptions { cut_only: Some(BTreeSet::new()), ..opts.clone() };
    let (mut r, hollow) =
        prune_with(model, None, &whole, masked_out)?.context("a pass without aliases always returns")?;
    for g in &mut r.groups {
        for note in &mut g.notes {
            if note.starts_with(super::GUARD_KEPT) {
                *note = format!(
                    "kept whole: the cut would leave more parameters than the input has ({before} → {after}: \
                     copies of tensors that layers share, compensating biases)"
                );
            }
        }
    }
    Ok((r, hollow))
}

/// The pass on `model`; with `split` (the aliases of [`super::unshare::split`], the input model)
/// the aliases are rejoined in both outputs, and None is returned when the pruned model would
/// have more parameters than the input.
fn prune_with(
    model: &ModelProto,
    split: Option<(&super::unshare::Aliases, &ModelProto)>,
    opts: &StructOptions,
    masked_out: &MaskedOut,
) -> Result<Option<(StructuralResult, crate::model::hollow::Hollow)>> {
    let rejoin = |m: &mut ModelProto| {
        if let Some((a, _)) = split {
            super::unshare::rejoin(m, a);
        }
    };
    let g = model.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    super::check_struct_widths(g, &ix)?;
    let opset = groups::default_opset(&model.opset_import);
    let ctx = Ctx::new(g, &ix, opset)?;
    let an = dead::analysis(&ctx)?;
    let plan = plan(&ctx, &an, opts)?;
    let masked_model = || -> Result<Option<ModelProto>> {
        match masked_out {
            MaskedOut::Drop => Ok(None),
            out => {
                let (mut m, hollow) = rewrite(model, &ctx, &an, &plan, Mode::Masked)?;
                hollow.fill_cloned(&mut m, model)?;
                rejoin(&mut m);
                super::place_masked(m, out)
            }
        }
    };
    // Without aliases the masked model first (written out before the pruned one is built, for
    // peak memory); with them the pruned one first, to check its parameters before anything is
    // written.
    let masked = if split.is_none() { masked_model()? } else { None };
    let (mut pruned, hollow) = rewrite(model, &ctx, &an, &plan, Mode::Pruned)?;
    rejoin(&mut pruned);
    let masked = match split {
        None => masked,
        Some((_, input)) => {
            if super::unshare::elements(&pruned) > super::unshare::elements(input) {
                return Ok(None);
            }
            masked_model()?
        }
    };
    let mut refit = refit_sites(&an, &plan);
    let more = downstream_sites(&ctx, &an, &plan, &refit);
    refit.extend(more);
    Ok(Some((StructuralResult { pruned, masked, groups: plan.reports, refit }, hollow)))
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
    /// What the sources compute, for the automatic alignment.
    kind: SourceKind,
    /// A depthwise Conv (one input channel per group) carries the group's units.
    depthwise: bool,
    /// A bottleneck between depthwise groups: no depthwise Conv carries the units, a Conv or
    /// MatMul that writes them reads a depthwise group, or one that reads them writes one, and
    /// they are no more than that depthwise group's.
    bottleneck: bool,
    /// A LayerNormalization normalises over the units (the op, or spelled out: a Sub / Mul / Div
    /// by their own statistic): a residual stream (a transformer's d_model, ConvNeXt's stage
    /// width), not a narrow stem.
    normalised: bool,
    /// A mean, max or min over the units reads them, outside any normalisation (CBAM's pooled
    /// map): the pruned model takes it over the kept ones (stated in the report).
    pooled: bool,
    /// Channels of the first source per unit class (a GroupNorm's C/G, whose channels go
    /// together; 1 when the classes differ): alignment and the narrow floor count channels.
    width: usize,
    /// The parts convolutions read or write apart, each aligned on its own ([`parts::parts`];
    /// empty: the group is one part).
    parts: Vec<BTreeSet<usize>>,
}

/// The kernels a group's units run on, in order of their automatic alignment: blocked convolution or
/// matmul kernels (8), recurrent gates (16), a matrix-vector product at batch 1 (64).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SourceKind {
    Blocked,
    Recurrent,
    RowWise,
}

impl SourceKind {
    fn of(ctx: &Ctx, node: usize) -> SourceKind {
        let n = &ctx.g.node[node];
        match n.op_type.as_str() {
            "LSTM" | "GRU" | "RNN" => SourceKind::Recurrent,
            "Gemm" => SourceKind::RowWise,
            "MatMul" if n.input.first().and_then(|x| ctx.ranks.get(x)) == Some(&2) => SourceKind::RowWise,
            _ => SourceKind::Blocked,
        }
    }
}

impl Group {
    /// Indices (into the group's classes) of its dead units ([`Analysis::dead_classes`]).
    fn dead(&self, an: &Analysis) -> BTreeSet<usize> {
        (0..self.classes.len()).filter(|&i| an.dead_classes.contains(&self.classes[i])).collect()
    }

    fn align(&self, opts: &StructOptions) -> Align {
        self.align_n(self.classes.len(), opts)
    }

    /// [`Group::align`] for `n` of its classes (a part of it: [`parts::parts`]).
    fn align_n(&self, n: usize, opts: &StructOptions) -> Align {
        // A LayerNorm-normalised stream is a transformer's: its 2-D Gemms run over flattened
        // tokens ([L·N, E], torchvision's attention projections), not one row at batch 1.
        let kind = if self.normalised && self.kind == SourceKind::RowWise { SourceKind::Blocked } else { self.kind };
        let max = match kind {
            SourceKind::Blocked => super::AUTO_ALIGN_MAX,
            SourceKind::Recurrent => super::AUTO_ALIGN_MAX_RECURRENT,
            SourceKind::RowWise => super::AUTO_ALIGN_MAX_ROWWISE,
        };
        let w = self.width.max(1);
        let a = opts.round_to.align(n * w, max, kind == SourceKind::Blocked);
        // In classes: the fewest whose channels are a multiple of the step.
        Align { step: a.step / gcd(a.step, w), ..a }
    }

    /// Fewest classes the narrow floor keeps (it counts channels: [`Group::width`]).
    fn min_keep(&self, opts: &StructOptions) -> usize {
        let w = self.width.max(1);
        opts.floor.min_keep(self.classes.len() * w).div_ceil(w).clamp(1, self.classes.len().max(1))
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

/// Units that must stay because the constant they would emit cannot be folded exactly.
fn pins(ctx: &Ctx, an: &Analysis) -> BTreeMap<Unit, String> {
    let mut out = BTreeMap::new();
    for c in &an.consumers {
        let label = || node_label(&ctx.g.node[c.node]);
        for (p, u) in c.units.iter().enumerate() {
            let Some(u) = u else { continue };
            if let Some(w) = c.pin(p, label) {
                out.entry(an.find(*u)).or_insert(w);
            }
        }
    }
    for (u, why) in &an.dead_pins {
        out.entry(*u).or_insert_with(|| why.clone());
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
            kind: SourceKind::of(ctx, src),
            depthwise: false,
            bottleneck: false,
            normalised: false,
            pooled: false,
            width: 1,
            parts: vec![],
        });
        // A group is aligned for its widest-tiled source (but see below for convolutions).
        g.kind = g.kind.max(SourceKind::of(ctx, src));
        g.first_source = g.first_source.min(src);
        g.sources.insert(src);
    }
    // A convolution's kernels decide where one writes the group: it runs once per pixel, a fully
    // connected layer tied to its channels (an SE block's gate written back through `view(b, c,
    // 1, 1)`) once per sample.
    let conv = |s: &usize| matches!(ctx.g.node[*s].op_type.as_str(), "Conv" | "ConvTranspose");
    for g in by_id.values_mut() {
        if g.sources.iter().any(conv) {
            g.kind = SourceKind::Blocked;
        }
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
    for g in &mut v {
        let mut per: BTreeMap<Unit, usize> = g.classes.iter().map(|c| (*c, 0)).collect();
        for u in
            an.sources.get(&g.first_source).map(|s| s.iter().flatten().copied().collect::<Vec<_>>()).unwrap_or_default()
        {
            if let Some(k) = per.get_mut(&an.find(u)) {
                *k += 1;
            }
        }
        let w = per.values().next().copied().unwrap_or(1);
        g.width = if w > 1 && per.values().all(|&k| k == w) { w } else { 1 };
    }
    // The groups a depthwise Conv carries (the analysis rewrites such a Conv's `group`
    // attribute), those a LayerNormalization normalises and those a pooled statistic reads.
    let (mut dw, mut normalised, mut pooled): (BTreeSet<usize>, BTreeSet<usize>, BTreeSet<usize>) = Default::default();
    for e in &an.edits {
        let (set, units) = match e {
            Edit::Count { target: IntTarget::AttrInt(ni, a), units, .. }
                if a == "group" && ctx.g.node[*ni].op_type == "Conv" =>
            {
                (&mut dw, units)
            }
            Edit::Norm { units, .. } | Edit::Mask { units, .. } | Edit::SpanNorm { units, .. } => {
                (&mut normalised, units)
            }
            Edit::Mean { units, .. } | Edit::Extreme { units, .. } => (&mut pooled, units),
            _ => continue,
        };
        set.extend(units.iter().flatten().map(|u| an.group_of(*u)));
    }
    for g in &mut v {
        g.depthwise = dw.contains(&g.id);
        g.normalised = normalised.contains(&g.id);
        g.pooled = !g.normalised && pooled.contains(&g.id);
    }
    if !dw.is_empty() {
        // One pass over the consumers (Conv / Gemm / MatMul reading tracked units): a node that
        // writes a depthwise group makes every group it reads a neighbour, and the reverse. A
        // bottleneck is no wider than a depthwise neighbour (MobileNet's 24 between 144-wide
        // depthwise groups, ShuffleNet's equal branches); a group wider than its depthwise
        // neighbours is an expansion (ConvNeXt's 4× MLP beside its depthwise stream), where the
        // MACs and the time are.
        let width: BTreeMap<usize, usize> = v.iter().map(|g| (g.id, g.classes.len())).collect();
        let groups_of = |us: &[Option<Unit>]| us.iter().flatten().map(|u| an.group_of(*u)).collect::<BTreeSet<_>>();
        let mut dw_width: BTreeMap<usize, usize> = BTreeMap::new();
        let mut note = |gs: &BTreeSet<usize>, other: &BTreeSet<usize>| {
            let w = other.iter().filter(|g| dw.contains(g)).filter_map(|g| width.get(g)).max().copied();
            if let Some(w) = w {
                for g in gs {
                    let e = dw_width.entry(*g).or_default();
                    *e = (*e).max(w);
                }
            }
        };
        for c in &an.consumers {
            let read = groups_of(&c.units);
            let written = an.sources.get(&c.node).map(|o| groups_of(o)).unwrap_or_default();
            note(&read, &written);
            note(&written, &read);
        }
        for g in v.iter_mut().filter(|g| !g.depthwise) {
            g.bottleneck = dw_width.get(&g.id).is_some_and(|&w| g.classes.len() <= w);
        }
    }
    v.sort_by_key(|g| g.first_source);
    let parts = parts::parts(ctx, an, &v);
    for (g, p) in v.iter_mut().zip(parts) {
        g.parts = p;
    }
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

fn plan(ctx: &Ctx, an: &Analysis, opts: &StructOptions) -> Result<Plan> {
    let mut scores = unit_scores(ctx, an, opts.criterion)?;
    if opts.criterion == Criterion::Activation {
        scores = activation_scores(ctx, an, opts)?;
    }
    // A dead class sends its consumers a constant they fold: removing it costs nothing, whatever
    // its other rows' norms (a live expansion row before an all-zero depthwise filter) or its
    // output's mean (the constant itself, which the activation criterion would count).
    for c in &an.dead_classes {
        scores.insert(*c, 0.0);
    }
    let groups = collect_groups(ctx, an, &scores);
    let depthwise_net = opts.floor.bottleneck
        && groups.iter().any(|g| g.blocked.is_empty() && g.depthwise && !(opts.floor.stem && is_stem(ctx, g)));
    let mut decisions: Vec<(f64, BTreeSet<usize>, Vec<String>)> = Vec::with_capacity(groups.len());
    let emp_err = |e: emp::EmpError| anyhow::anyhow!("{e}");
    for g in &groups {
        let (d, _) = match opts.fixed_ratio {
            // Baseline for comparisons: a fixed fraction of every group, highest scores kept.
            Some(r) => emp::select_ratio(&g.scores, r).map_err(emp_err)?,
            None => emp::select(&g.scores, opts.beta).map_err(emp_err)?,
        };
        let mut notes = vec![];
        // A blocked group is not scored by the activation criterion (all zero): its block is the
        // reason it is kept, not its scores.
        if d.all_zero && g.blocked.is_empty() {
            notes.push("all scores are zero: nothing to rank, kept whole".to_string());
        }
        if !g.blocked.is_empty() || d.all_zero || opts.scope == StructScope::Global {
            decisions.push((d.n_eff, (0..g.classes.len()).collect(), notes));
            continue;
        }
        if opts.floor.stem && is_stem(ctx, g) {
            let why = format!(
                "a Conv that reads the model input (stem); EMP would keep {} (--include stem prunes it)",
                d.kept
            );
            let keep = kept_whole(g, an, opts, &why, &mut notes);
            decisions.push((d.n_eff, keep, notes));
            continue;
        }
        if depthwise_net && g.bottleneck {
            let keep = kept_whole(g, an, opts, &bottleneck_note(d.kept, "EMP"), &mut notes);
            decisions.push((d.n_eff, keep, notes));
            continue;
        }
        let chosen: BTreeSet<usize> = emp::top_k(&g.scores, d.kept).into_iter().collect();
        let align = g.align(opts);
        let (target, keep) = keep_set(g, an, &chosen, opts, &mut notes);
        if parts::parted(g, |n| g.align_n(n, opts)) && keep.len() != target {
            notes.push(format!(
                "kept {target} rounded to {} (its {} parts that convolutions read or write apart, each aligned for its \
                 own width: --round-to {})",
                keep.len(),
                g.parts.len(),
                opts.round_to
            ));
        } else if align.step > 1 && keep.len() != target {
            let (how, which) = if align.nearest { ("", "the nearest") } else { (" up", "a") };
            let what = if keep.len().is_multiple_of(align.step) && g.width > 1 {
                format!("{which} multiple of {} units, {} channels", align.step, align.step * g.width)
            } else if keep.len().is_multiple_of(align.step) {
                format!("{which} multiple of {}", align.step)
            } else {
                format!("the whole width: the next multiple of {} is wider", align.step)
            };
            notes.push(format!("kept {target} rounded{how} to {} ({what}: --round-to {})", keep.len(), opts.round_to));
        }
        decisions.push((d.n_eff, keep, notes));
    }
    if opts.scope == StructScope::Global {
        let stems: BTreeSet<usize> =
            (0..groups.len()).filter(|&i| opts.floor.stem && is_stem(ctx, &groups[i])).collect();
        let bottlenecks: BTreeSet<usize> =
            (0..groups.len()).filter(|&i| depthwise_net && groups[i].bottleneck).collect();
        global(an, &groups, &mut decisions, &stems, &bottlenecks, opts)?;
    }
    if opts.beta >= super::KEEP_ALL_BETA {
        // The guard's keep-everything: dead units too (the floors' and alignment's notes are moot).
        for (g, (_, keep, notes)) in groups.iter().zip(decisions.iter_mut()) {
            *keep = (0..g.classes.len()).collect();
            notes.clear();
        }
    }
    if let Some(only) = &opts.cut_only {
        for (i, (g, (_, keep, notes))) in groups.iter().zip(decisions.iter_mut()).enumerate() {
            if !only.contains(&i) && keep.len() < g.classes.len() {
                notes.push(super::guard_kept_note(keep.len()));
                *keep = (0..g.classes.len()).collect();
            }
        }
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
    an: &Analysis,
    groups: &[Group],
    decisions: &mut [(f64, BTreeSet<usize>, Vec<String>)],
    stems: &BTreeSet<usize>,
    bottlenecks: &BTreeSet<usize>,
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
        let g = &groups[gi];
        if stems.contains(&gi) {
            let why = format!(
                "a Conv that reads the model input (stem); global EMP would keep {} (--include stem prunes it)",
                c.len()
            );
            decisions[gi].1 = kept_whole(g, an, opts, &why, &mut decisions[gi].2);
            continue;
        }
        if bottlenecks.contains(&gi) && !stems.contains(&gi) {
            decisions[gi].1 = kept_whole(g, an, opts, &bottleneck_note(c.len(), "global EMP"), &mut decisions[gi].2);
            continue;
        }
        decisions[gi].1 = keep_set(g, an, &c, opts, &mut decisions[gi].2).1;
    }
    Ok(())
}

/// The count EMP's `chosen` units make, raised to the narrow floor, and the aligned keep set
/// ([`fill`]) for it. The floor counts live units only, so it never keeps a dead one. When the
/// count is rounded up, dead units that EMP chose (β > 1 reaches them: they score 0) are not
/// kept for that; rounded to the nearest multiple, EMP's count stays what it is (dead units
/// included) so that rounding down never drops a live unit EMP kept, and [`fill`] drops the
/// dead ones first (they rank last).
fn keep_set(
    g: &Group,
    an: &Analysis,
    chosen: &BTreeSet<usize>,
    opts: &StructOptions,
    notes: &mut Vec<String>,
) -> (usize, BTreeSet<usize>) {
    let n = g.classes.len();
    let dead = g.dead(an);
    let align = g.align(opts);
    let chosen: BTreeSet<usize> =
        if align.nearest { chosen.clone() } else { chosen.difference(&dead).copied().collect() };
    let live = n - dead.len();
    let target = floored(g, live, chosen.len().max(1), opts, notes);
    let min = g.min_keep(opts).min(live.max(1));
    let keep = fill(g, &chosen, target, min, |n| g.align_n(n, opts));
    // Never more than every live unit, rounded up onto dead ones: at a large β EMP's count
    // reaches the dead units (they score 0) and the nearest multiple can be the whole width,
    // where removing the dead units alone costs nothing (the fidelity guard's β search ends
    // on that cut, not on the dense group).
    if dead.is_empty() || keep.len() <= live {
        return (target, keep);
    }
    let lives: BTreeSet<usize> = (0..n).filter(|i| !dead.contains(i)).collect();
    let cap = fill(g, &lives, live, min, |n| Align { nearest: false, ..g.align_n(n, opts) });
    if cap.len() < keep.len() {
        notes.push(format!(
            "kept {} instead of {}: EMP's count went past the {live} live unit(s) into the {} dead one(s), which \
             go whatever β{}",
            cap.len(),
            keep.len(),
            dead.len(),
            if cap.len() > live { " (rounded up onto dead ones)" } else { "" }
        ));
        return (cap.len(), cap);
    }
    (target, keep)
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

// ---------------------------------------------------------------------------------------------
// Rewrite
