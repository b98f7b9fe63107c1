//! Channels, the parts of a group that convolutions read or write apart, and the keep set
//! aligned part by part.
//!
//! A group is aligned as a whole (`--round-to auto`), but a convolution may see only a part of
//! it: MixNet's mixed depthwise convolution splits a 144-wide group into three 48-wide parts, one
//! Conv (3×3, 5×5, 7×7) each, and a mixed pointwise convolution writes a group from two Convs
//! through a Concat. onnxruntime runs a Conv in its blocked (NCHWc) kernels only when its channels
//! are a multiple of the block: MixNet-S cut at β = 0.8 kept 112 of 144 (a multiple of 16) as
//! 37 + 38 + 37, and ran 1.08× slower than dense. Each part now keeps EMP's units in it, aligned
//! for its own width as a group of that width would be.
//!
//! Contract: [`parts`] is a pure function of the analysis (the tracked tensors that Conv and
//! ConvTranspose nodes read as data or write); [`fill`] chooses within each part, so a group of
//! one part is chosen exactly as before.

use super::*;

/// Per group (in `groups`' order), the finest partition of its class indices such that every
/// Conv/ConvTranspose's data input and output holds whole parts; `[]` when that is the group, or
/// when a part is narrower than [`crate::prune::AUTO_WIDE_MIN`] and no multiple of the block
/// ([`crate::prune::AUTO_ALIGN_MAX`]): parts that narrow and odd (ShuffleNet's branch units,
/// interleaved by the channel shuffle into parts of 14, 1, 14 and 29) stay aligned as the group.
/// A wider odd part is rounded up to the block, as a group of its width would be (MixNet's four
/// 90-wide parts of 360).
pub(super) fn parts(ctx: &Ctx, an: &Analysis, groups: &[Group]) -> Vec<Vec<BTreeSet<usize>>> {
    let mut at: BTreeMap<Unit, (usize, usize)> = BTreeMap::new();
    for (gi, g) in groups.iter().enumerate() {
        for (i, c) in g.classes.iter().enumerate() {
            at.insert(*c, (gi, i));
        }
    }
    let mut cuts: Vec<BTreeSet<BTreeSet<usize>>> = vec![BTreeSet::new(); groups.len()];
    for n in ctx.g.node.iter().filter(|n| matches!(n.op_type.as_str(), "Conv" | "ConvTranspose")) {
        for name in n.input.first().into_iter().chain(n.output.first()) {
            let Some(t) = an.tracks.get(name) else { continue };
            let mut seen: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
            for u in t.units.iter().flatten() {
                if let Some(&(gi, i)) = at.get(&an.find(*u)) {
                    seen.entry(gi).or_default().insert(i);
                }
            }
            for (gi, s) in seen {
                if s.len() < groups[gi].classes.len() {
                    cuts[gi].insert(s);
                }
            }
        }
    }
    groups
        .iter()
        .zip(cuts)
        .map(|(g, cuts)| {
            let mut parts: Vec<BTreeSet<usize>> = vec![(0..g.classes.len()).collect()];
            for s in &cuts {
                parts = parts
                    .into_iter()
                    .flat_map(|p| {
                        let (a, b): (BTreeSet<usize>, BTreeSet<usize>) = p.iter().partition(|i| s.contains(i));
                        [a, b]
                    })
                    .filter(|p| !p.is_empty())
                    .collect();
            }
            parts.sort_by_key(|p| p.first().copied());
            let w = g.width.max(1);
            let blockable =
                |c: usize| c.is_multiple_of(crate::prune::AUTO_ALIGN_MAX) || c >= crate::prune::AUTO_WIDE_MIN;
            if parts.len() > 1 && parts.iter().all(|p| blockable(p.len() * w)) {
                parts
            } else {
                vec![]
            }
        })
        .collect()
}

/// Keep set of `target` units, aligned by `align(width in classes)` (a multiple of its step when
/// pinned units allow): pinned units, then `chosen` best first, then the best others. Never fewer
/// than `min` (the floors) or the pinned units; rounding up keeps all of `chosen` too, rounding to
/// the nearest multiple below it drops the lowest-ranked chosen units. A group of several
/// [`parts`] is filled part by part: each keeps its share of `target` (its chosen units, scaled
/// when the floor raised the count) and of `min` (in proportion to that share), aligned for the
/// part's width.
pub(super) fn fill(
    g: &Group,
    chosen: &BTreeSet<usize>,
    target: usize,
    min: usize,
    align: impl Fn(usize) -> Align,
) -> BTreeSet<usize> {
    let n = g.classes.len();
    if !parted(g, &align) {
        return fill_in(g, &(0..n).collect(), chosen, target, min, align(n));
    }
    // Each part's share of the count: its chosen units, scaled when the floor raised the count;
    // and of the floor, in proportion to that share (a part EMP left empty keeps one unit, as a
    // tensor must).
    let shares: Vec<(BTreeSet<usize>, usize)> = g
        .parts
        .iter()
        .map(|p| {
            let mine: BTreeSet<usize> = chosen.intersection(p).copied().collect();
            let t = if chosen.is_empty() { 0 } else { (mine.len() * target).div_ceil(chosen.len()).min(p.len()) };
            (mine, t)
        })
        .collect();
    let total: usize = shares.iter().map(|s| s.1).sum();
    let mut keep = BTreeSet::new();
    for (p, (mine, t)) in g.parts.iter().zip(&shares) {
        let m = (min * t).div_ceil(total.max(1));
        keep.extend(fill_in(g, p, mine, *t, m, align(p.len())));
    }
    keep
}

/// Whether [`fill`] aligns `g` part by part: it has [`parts`], and alignment is on
/// (`--round-to 1` leaves every part's step at 1).
pub(super) fn parted(g: &Group, align: impl Fn(usize) -> Align) -> bool {
    !g.parts.is_empty() && g.parts.iter().any(|p| align(p.len()).step > 1)
}

/// [`fill`] within the class indices `within`.
fn fill_in(
    g: &Group,
    within: &BTreeSet<usize>,
    chosen: &BTreeSet<usize>,
    target: usize,
    min: usize,
    align: Align,
) -> BTreeSet<usize> {
    let mut keep: BTreeSet<usize> = within.iter().copied().filter(|&i| g.pins.contains_key(&g.classes[i])).collect();
    // Rounding up keeps every chosen unit beside the pinned ones; to the nearest multiple, the
    // pinned units count towards EMP's number.
    let least = if align.nearest { keep.len() } else { keep.union(chosen).count() };
    let goal = align.apply(target, min.max(least), within.len());
    let ranked: Vec<usize> = rank_order(&g.scores).into_iter().filter(|i| within.contains(i)).collect();
    let order = ranked.iter().filter(|i| chosen.contains(i)).chain(ranked.iter().filter(|i| !chosen.contains(i)));
    for &i in order {
        if keep.len() >= goal {
            break;
        }
        keep.insert(i);
    }
    keep
}
