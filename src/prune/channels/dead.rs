//! Channels, stage 1 (after the dependency analysis): dead units. A producer row (one output of
//! a Conv / ConvTranspose / Gemm / MatMul) whose weights are all zero, or nearly so ([`DEAD_REL`]), emits its
//! bias (then BN shift, act(·)...) whatever the input. Zeroing that bias with the weights, as the
//! masked model does for every other removed unit, would change the model by that constant;
//! folding it into the consumers' biases instead, as for a MatMul's bias Add, removes the unit
//! without changing anything the proof or fidelity can see (in the interior of a zero-padded
//! Conv's input).
//!
//! Deadness is decided per row, not per unit class: in a MobileNet block the expansion row and
//! the depthwise filter of a channel are one class, and an all-zero depthwise filter makes the
//! channel's output a constant even though its expansion row is live. A class is **dead** when
//! every consumer reads a constant from it in the dense model: the analysis runs once more in its
//! dense view ([`groups::DeadRows::dense`]), where live rows emit a varying value, and the classes
//! whose consumers all still see constants are the ones whose last producers are dead.
//!
//! Contract: [`analysis`] returns the analysis with `fold_rows` holding the dead rows whose bias
//! the masked model keeps (every consumer can fold it), `dead_pins` the classes kept because a
//! dead row's bias cannot be folded (with the reason), `dead_classes` the dead classes (the
//! channels stage scores them 0: removing them costs nothing), and `producer_sq` the Σ w² per
//! position of every producer slice (the L2 scores reuse them). Live rows keep the masked model's
//! other rule (bias zeroed with the weights, the unit emits 0): for a live unit the bias is not its
//! output's mean (torch folds BatchNorm into it: `β − γ·μ/σ`), and on the trained Fashion-MNIST
//! CNNs folding it cost up to 12 points where zeroing it did not. With calibration data,
//! reconstruction compensates live units with their measured means instead.

use super::*;
use groups::DeadRows;

/// A producer row is dead when its L2 norm is at most this fraction of its weight's RMS row norm:
/// its output varies by at most about 1 % of a typical row's, so it is its bias up to that. A
/// BatchNorm whose scale γ training drove to near zero (network slimming's L1 on γ leaves
/// 1e-3…1e-2) makes such rows once folded into the Conv; zeroing their bias (β) cost 0.28
/// relative L2 on a row at 5e-3 where folding it cost 4e-5.
pub(super) const DEAD_REL: f64 = 1e-2;

/// The dependency analysis of `ctx`, with the dead rows found and their biases folded (see the
/// module doc). Runs [`groups::analyze`] once when no row is dead (most trained models), else
/// three or four times: a row's constant reaches only its own class's consumers, so a class
/// whose constant turns out not to be foldable is analysed again with its rows live, and nothing
/// else changes.
pub(super) fn analysis(ctx: &Ctx) -> Result<Analysis> {
    let mut first = groups::analyze(ctx, &DeadRows::default());
    let mut sums = BTreeMap::new();
    for (key, s) in first.slices.iter().filter(|(_, s)| s.roles.contains(&Role::Producer)) {
        sums.insert(key.clone(), position_sums(ctx, &s.weight, s.axis, |x| x * x)?);
    }
    let rows = dead_rows(ctx, &first, &sums);
    if rows.is_empty() {
        first.producer_sq = sums;
        return Ok(first);
    }
    let emitters = std::mem::take(&mut first.bias_emitters);
    drop(first);
    let mut dense = groups::analyze(ctx, &DeadRows { fold: rows.clone(), through: BTreeSet::new(), dense: true });
    let dead = constant_classes(&dense);
    let mut through = std::mem::take(&mut dense.through_rows);
    drop(dense);

    let mut fold = rows;
    let second = groups::analyze(ctx, &DeadRows { fold: fold.clone(), through: through.clone(), dense: false });
    let pinned = pins(ctx, &second);
    // Dead rows whose bias cannot be folded (and the depthwise rows that carry a dead constant
    // into such a reader): removing their class would drop it (a ConvTranspose or a padded
    // AveragePool reads it, or an SE gate turns it into an activation), so the class stays, as a
    // live unit's unfoldable BN shift does.
    let mut kept: BTreeMap<Unit, String> = BTreeMap::new();
    let mut unpin = |r: &(usize, usize), emits: bool| {
        let why = emits.then(|| class_of(&second, *r)).flatten().and_then(|c| Some((c, pinned.get(&c)?)));
        match why {
            Some((c, why)) => {
                kept.entry(c).or_insert_with(|| why.clone());
                false
            }
            None => true,
        }
    };
    fold.retain(|r| unpin(r, emitters.contains(r)));
    through.retain(|r| unpin(r, true));
    let mut an = if kept.is_empty() {
        second
    } else {
        drop(second);
        groups::analyze(ctx, &DeadRows { fold, through, dense: false })
    };
    an.producer_sq = sums;
    for (u, why) in kept {
        let root = an.find(u);
        an.dead_pins
            .entry(root)
            .or_insert_with(|| format!("it is dead (near-zero weights) and its bias cannot be folded: {why}"));
    }
    let pinned = pins(ctx, &an);
    an.dead_classes = dead.into_iter().map(|u| an.find(u)).filter(|c| !pinned.contains_key(c)).collect();
    Ok(an)
}

/// The dead rows (producer node, output position): every weight row of the node's producer slice
/// that writes the position's class is dead ([`DEAD_REL`] of the slice's RMS row norm). Only
/// Conv, ConvTranspose, Gemm and MatMul rows: a dead row of theirs emits its bias, where a
/// recurrent cell's hidden state still evolves over time.
fn dead_rows(ctx: &Ctx, an: &Analysis, sums: &BTreeMap<(String, usize), Vec<f64>>) -> BTreeSet<(usize, usize)> {
    let mut out = BTreeSet::new();
    for (key, s) in an.slices.iter().filter(|(_, s)| s.roles.contains(&Role::Producer)) {
        let Some(sq) = sums.get(key).filter(|sq| sq.len() == s.units.len()) else { continue };
        let rms2 = sq.iter().sum::<f64>() / sq.len().max(1) as f64;
        // Per class: are all this slice's rows that write it dead?
        let mut all_dead: BTreeMap<Unit, bool> = BTreeMap::new();
        for (p, u) in s.units.iter().enumerate() {
            if let Some(u) = u {
                *all_dead.entry(an.find(*u)).or_insert(true) &= sq[p] <= DEAD_REL * DEAD_REL * rms2;
            }
        }
        if !all_dead.values().any(|&d| d) {
            continue;
        }
        for &(ni, slot) in &s.users {
            let op = ctx.g.node[ni].op_type.as_str();
            if slot != 1 || !matches!(op, "Conv" | "ConvTranspose" | "Gemm" | "MatMul") {
                continue;
            }
            let Some(units) = an.sources.get(&ni) else { continue };
            for (o, u) in units.iter().enumerate() {
                if u.is_some_and(|u| all_dead.get(&an.find(u)) == Some(&true)) {
                    out.insert((ni, o));
                }
            }
        }
    }
    out
}

/// The class (root) a producer row writes.
fn class_of(an: &Analysis, (ni, o): (usize, usize)) -> Option<Unit> {
    let u = an.sources.get(&ni)?.get(o).copied().flatten()?;
    Some(an.find(u))
}

/// In a dense-view analysis, the classes (roots) every consumer reads a constant from, at every
/// position.
fn constant_classes(dense: &Analysis) -> BTreeSet<Unit> {
    let mut all_const: BTreeMap<Unit, bool> = BTreeMap::new();
    for c in &dense.consumers {
        for (p, u) in c.units.iter().enumerate() {
            if let Some(u) = u {
                *all_const.entry(dense.find(*u)).or_insert(true) &= matches!(c.val(p), Val::Const(_));
            }
        }
    }
    all_const.into_iter().filter(|&(_, k)| k).map(|(u, _)| u).collect()
}
