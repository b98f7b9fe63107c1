//! Channels, the floors that keep narrow layers sane (issue 11 item 3): the narrow floor (half of
//! every group, at least 8 units), the stem (a Conv reading the model input, kept whole unless it
//! writes a LayerNorm-normalised residual stream) and, in depthwise networks, the bottlenecks
//! between depthwise groups (decided in `collect_groups`, noted here). Each binds with a note;
//! `--include` lifts them ([`crate::prune::Floor`]). The floors keep live units: a group's dead
//! units ([`kept_whole`], [`floored`]) go whatever the floor, as far as alignment allows.

use super::*;

/// `kept` raised to the narrow floor ([`crate::prune::Floor`]), with a note when the floor binds.
/// The floor counts the group's `live` units only: a dead unit costs nothing to remove, so the
/// floor never keeps one.
pub(super) fn floored(g: &Group, live: usize, kept: usize, opts: &StructOptions, notes: &mut Vec<String>) -> usize {
    let n = g.classes.len();
    let full = g.min_keep(opts);
    let min = full.min(live.max(1));
    if kept >= min {
        return kept;
    }
    let dead = if min < full { format!(", less its {} dead unit(s)", n - live) } else { String::new() };
    notes.push(format!(
        "kept {min} instead of {kept}: floor of half the width and at least {} {}{dead} (--include narrow lifts it)",
        crate::prune::NARROW_MIN.min(n * g.width.max(1)),
        if g.width > 1 { "channels" } else { "units" }
    ));
    min
}

/// The reason the bottleneck floor keeps a group whole ([`crate::prune::Floor::bottleneck`]).
pub(super) fn bottleneck_note(kept: usize, by: &str) -> String {
    format!(
        "a bottleneck between depthwise groups (cutting it cuts 1×1-conv MACs on both sides \
         that buy little time); {by} would keep {kept} (--include bottleneck prunes it)"
    )
}

/// The keep set of a group a floor (stem, bottleneck) keeps whole for `why`: every live unit. Its
/// dead units ([`Analysis::dead_classes`]: a channel a model pruned elsewhere with masks left
/// zeroed, whose output is a constant the consumers fold) are removed, as far as the group's
/// alignment allows: the live count is rounded up onto dead units, never down onto live ones.
/// Their removal is exact but at the border of a zero-padded consumer (pruning error, measured
/// by fidelity, as for any folded constant). The note says which.
pub(super) fn kept_whole(
    g: &Group,
    an: &Analysis,
    opts: &StructOptions,
    why: &str,
    notes: &mut Vec<String>,
) -> BTreeSet<usize> {
    let n = g.classes.len();
    let dead = g.dead(an);
    let live: BTreeSet<usize> = (0..n).filter(|i| !dead.contains(i)).collect();
    if dead.is_empty() || live.is_empty() {
        notes.push(format!("kept whole: {why}"));
        return (0..n).collect();
    }
    let keep = fill(g, &live, live.len(), live.len(), |n| g.align_n(n, opts));
    if keep.len() == n {
        notes.push(format!(
            "kept whole: {why}; its {} dead unit(s) too: without them the width rounds back to {n} (--round-to {})",
            dead.len(),
            opts.round_to
        ));
    } else {
        notes.push(format!("kept {} of {n}, every live unit: {why}; only dead units removed", keep.len()));
    }
    keep
}

/// Ops between the model input and a stem that do not mix channels (normalisation, layout, the
/// input's Quantize/DequantizeLinear in a QDQ model), whose other operands must be constants.
const STEM_PATH_OPS: &[&str] = &["Add", "BatchNormalization", "Div", "Mul", "Sub"];

/// Ops on that path whose other operands are parameters (pads, slice bounds, shapes, scales),
/// constant or computed: they do not mix channels either way (`F.pad(x)[..., 1:-1, 1:-1]`
/// exports a Pad with computed pads, then a Slice, and hid the stem from the floor).
const STEM_PATH_DATA_OPS: &[&str] = &[
    "Cast",
    "DequantizeLinear",
    "Flatten",
    "Identity",
    "Pad",
    "QuantizeLinear",
    "Reshape",
    "Slice",
    "Squeeze",
    "Transpose",
    "Unsqueeze",
];

/// A group whose producer is a Conv reading a graph input (possibly through `STEM_PATH_OPS`
/// whose other operands are constants, and `STEM_PATH_DATA_OPS`), unless a LayerNormalization normalises over its units:
/// then the Conv is a patch embedding writing a residual stream (ViT's d_model, ConvNeXt's first
/// stage), where the cut is the model's width, not a narrow stem's (on the trained fmnist_vit,
/// cutting that stream to 48 of 64 with reconstruction kept 84.1 %, as dense).
pub(super) fn is_stem(ctx: &Ctx, g: &Group) -> bool {
    !g.normalised
        && g.sources.iter().any(|&s| {
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
                let op = pn.op_type.as_str();
                if STEM_PATH_DATA_OPS.contains(&op) {
                    match pn.input.first().filter(|i| !i.is_empty()) {
                        Some(x) => name = x,
                        None => return false,
                    }
                    continue;
                }
                let live: Vec<&String> =
                    pn.input.iter().filter(|i| !i.is_empty() && !ctx.consts.contains_key(i.as_str())).collect();
                if live.len() != 1 || !STEM_PATH_OPS.contains(&op) {
                    return false;
                }
                name = live[0];
            }
            false
        })
}
