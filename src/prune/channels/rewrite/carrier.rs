//! Channels, stage 3 (both models): removed dead units' constants carried by a kept dead unit.
//!
//! A dead unit emits one constant `c_j` at every position of its map: its producer row's weights
//! are zero, so it writes its bias everywhere, borders included. A zero-padded Conv reading it
//! sees `c_j` inside the map and 0 in the padding. Folding `Σ_kernel w[·, j, ·]·c_j` into the
//! Conv's bias is exact in the interior only: where the kernel overlaps the padding, the fold adds
//! taps that read 0 (on the 7 × 7 maps of a masked MobileNetV2 that moved random-input outputs by
//! relative L2 1.09 where the test images moved by 0.04).
//!
//! Another dead unit `k` of the same input that the cut keeps emits `c_k` over exactly the same
//! support, so `c_j·m(x) = (c_j / c_k)·c_k·m(x)` at every position, padding included. Adding
//! `w[·, j, ·]·c_j / c_k` to the kept unit's kernel slice `w[·, k, ·]` therefore removes unit `j`
//! exactly, with no new parameter: the kept unit *carries* the removed ones' constants. The
//! alignment often keeps dead units (`--round-to auto` rounds up onto them), and those are free
//! carriers. A dead row is one whose weights are under 1 % of its layer's (`channels/dead.rs`),
//! not always 0: a carrier whose rows are not exactly 0 has a small varying part, which the carry
//! scales by c_j / c_k too, so it carries only constants no larger than its own (the noise added
//! is then no larger than what removing unit j drops anyway); larger ones keep the bias fold.
//!
//! Contract: [`carriers`] picks, for one group-1 zero-padded Conv consumer whose weight no other
//! node reads, the kept exactly-dead position with the largest |constant| and the removed
//! exactly-dead positions it carries (their constants non-zero; through classes, whose border
//! differs, are not exact and keep the bias fold); [`apply_carry`] adds the carried slices to the
//! carrier's, on the consumer's kept outputs, in the dense layout, before any slicing or
//! zeroing. Both models get the same weights, so masked-equivalence still proves the pruned one;
//! the fold's bias delta leaves the carried positions out.

use super::*;

/// The carried positions of one consumer and the kept position that carries them.
pub(crate) struct Carry {
    /// The carrier: a kept position of the consumer weight's input axis.
    pub(crate) to: usize,
    /// (removed position, c_j / c_k): its kernel slice, scaled, is added to the carrier's.
    pub(crate) from: Vec<(usize, f64)>,
}

/// Is unit `u` exactly constant at every position of its map (a dead class whose constant no
/// depthwise row reshapes at a border)?
fn exact(an: &Analysis, u: Option<Unit>) -> bool {
    u.is_some_and(|u| {
        let r = an.find(u);
        an.dead_classes.contains(&r) && !an.through_classes.contains(&r)
    })
}

/// The carry of consumer `c`, if it is a zero-padded group-1 Conv on a float weight, reads a kept
/// exactly-dead unit with a non-zero constant, and removes at least one exactly-dead unit with a
/// non-zero constant (`hits`: the removed positions with their constants).
pub(crate) fn carriers(
    ctx: &Ctx,
    an: &Analysis,
    plan: &Plan,
    c: &groups::Consumer,
    hits: &[(usize, f64)],
) -> Option<Carry> {
    if !matches!(c.kind, ConsumerKind::Conv { padded: true }) || c.fold.is_err() {
        return None;
    }
    if ctx.consts.get(&c.weight).is_some_and(|k| k.dq.is_some()) {
        return None;
    }
    let mut to: Option<(usize, f64)> = None;
    for (p, u) in c.units.iter().enumerate() {
        let Val::Const(k) = c.val(p) else { continue };
        if k == 0.0 || !k.is_finite() || !plan.keeps(an, *u) || !exact(an, *u) {
            continue;
        }
        if to.is_none_or(|(_, best)| k.abs() > best.abs()) {
            to = Some((p, k));
        }
    }
    let (to, kc) = to?;
    let zero = c.units.get(to).copied().flatten().is_some_and(|u| zero_rows(ctx, an, an.find(u)));
    // A weight another node reads too would carry into that node's output as well.
    let readers = ctx.g.node.iter().flat_map(|n| n.input.iter()).filter(|i| **i == c.weight).count();
    if readers != 1 || an.shared_aliases.contains(&c.weight) {
        return None;
    }
    let from: Vec<(usize, f64)> = hits
        .iter()
        .filter(|&&(p, kv)| kv != 0.0 && (zero || kv.abs() <= kc.abs()) && exact(an, c.units.get(p).copied().flatten()))
        .map(|&(p, kv)| (p, kv / kc))
        .collect();
    (!from.is_empty()).then_some(Carry { to, from })
}

/// Are the producer rows (Conv / ConvTranspose / Gemm / MatMul weights) that write class `root`
/// all exactly 0 (its output exactly its constant), as a mask leaves them?
fn zero_rows(ctx: &Ctx, an: &Analysis, root: Unit) -> bool {
    let mut seen = false;
    for (key, s) in an.slices.iter().filter(|(_, s)| s.roles.contains(&Role::Producer)) {
        let weight = s.users.iter().any(|&(ni, slot)| {
            slot == 1 && matches!(ctx.g.node[ni].op_type.as_str(), "Conv" | "ConvTranspose" | "Gemm" | "MatMul")
        });
        if !weight {
            continue;
        }
        let Some(sq) = an.producer_sq.get(key).filter(|sq| sq.len() == s.units.len()) else { return false };
        for (p, u) in s.units.iter().enumerate() {
            if u.is_some_and(|u| an.find(u) == root) {
                seen = true;
                if sq[p] != 0.0 {
                    return false;
                }
            }
        }
    }
    seen
}

/// Add each carried position's kernel slice, scaled, to the carrier's, on the outputs of `node`
/// the plan keeps (the others are sliced away or zeroed with their producer rows). `weight` is
/// [O, C, kernel…], in the dense layout.
pub(super) fn apply_carry(
    an: &Analysis,
    plan: &Plan,
    w: &mut Work,
    weight: &str,
    node: usize,
    carry: &Carry,
) -> Result<()> {
    let t = w.tensor(weight)?;
    let dims = tensor::shape(t)?;
    if dims.len() < 2 {
        bail!("weight '{weight}': dims {dims:?} of a consumer");
    }
    let (o, ch, k) = (dims[0], dims[1], dims[2..].iter().product::<usize>());
    if carry.to >= ch || carry.from.iter().any(|&(p, _)| p >= ch) {
        bail!("weight '{weight}': a carried position out of its {ch} inputs");
    }
    let mut v = tensor::read_f64(t).with_context(|| format!("weight '{weight}'"))?;
    let out_units = an.sources.get(&node);
    for oi in 0..o {
        if out_units.and_then(|s| s.get(oi)).is_some_and(|u| !plan.keeps(an, *u)) {
            continue;
        }
        let row = oi * ch * k;
        for &(p, r) in &carry.from {
            for e in 0..k {
                v[row + carry.to * k + e] += r * v[row + p * k + e];
            }
        }
    }
    tensor::write_f64(t, &v)
}
