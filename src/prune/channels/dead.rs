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
//! channel's output a constant even though its expansion row is live; a dead expansion row's
//! constant goes on through a live depthwise filter as `v·Σw + b` (a *through* row, exact in the
//! interior). The analysis runs once more in its dense view ([`groups::DeadRows::dense`]), where
//! live rows emit a varying value: the classes whose consumers all still read constants are the
//! ones whose last producers are dead (not those a normalisation over the units reads: it leaves
//! a removed position 0 whatever the input). A dead row's bias is folded only in such a class, or
//! in one whose rows are all dead: elsewhere a live row changes the constant on the way (an SE
//! gate's varying factor) and the live rule applies. A class is **dead**, scored 0, when it is
//! constant without a through row of a non-zero input (whose zero-padded border differs).
//!
//! Contract: [`analysis`] returns the analysis with `fold_rows` holding the dead rows whose bias
//! the masked model keeps (every consumer can fold it), `through_rows` / `through_classes` the
//! depthwise rows the masked model keeps for a dead constant and their classes (whose consumers
//! zero their input slices in the masked model whatever the constant), `dead_pins` the classes kept because a
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
    let (rows, all_dead) = dead_rows(ctx, &first, &sums);
    if rows.is_empty() {
        first.producer_sq = sums;
        return Ok(first);
    }
    let emitters = std::mem::take(&mut first.bias_emitters);
    drop(first);
    // The dense view: which classes every consumer reads a constant from (in the interior).
    let dense = groups::analyze(ctx, &DeadRows { fold: rows.clone(), through: BTreeSet::new(), dense: true });
    let constant = constant_classes(&dense);
    let all_dead: BTreeSet<Unit> = all_dead.into_iter().map(|u| dense.find(u)).collect();
    let in_constant = |r: &(usize, usize)| class_of(&dense, *r).is_some_and(|c| constant.contains(&c));
    // A dead row's constant is the dense model's at the consumers when the class is constant
    // there, or when every row of the class is dead (then a consumer that reads it as a map, a
    // spatial mask's product, pins the class: it is kept). In a class with live rows that reach
    // the consumers, a live row changes it on the way (an SE gate scales it by a live, varying
    // factor: folding it there cost 0.092 where zeroing it cost 0.029): the live rule applies.
    let foldable = |r: &(usize, usize)| in_constant(r) || class_of(&dense, *r).is_some_and(|c| all_dead.contains(&c));
    let mut fold: BTreeSet<(usize, usize)> = rows.iter().copied().filter(foldable).collect();
    let mut through: BTreeSet<(usize, usize)> = dense.through_rows.iter().copied().filter(in_constant).collect();
    // Exactly constant (no zero-padded border between): those score 0.
    let inexact: BTreeSet<Unit> = dense.through_inexact.iter().filter_map(|r| class_of(&dense, *r)).collect();
    let dead: BTreeSet<Unit> = constant.difference(&inexact).copied().collect();
    drop(dense);

    let second = groups::analyze(ctx, &DeadRows { fold: fold.clone(), through: through.clone(), dense: false });
    let mut pinned = pins(ctx, &second);
    // A through row keeps its depthwise row in the masked model, so its unit is not 0 at the
    // border even where its constant is: every consumer must zero its input slice there, which
    // one that cannot fold does not.
    let through_classes: BTreeSet<Unit> = through.iter().filter_map(|r| class_of(&second, *r)).collect();
    for c in second.consumers.iter() {
        let Err(e) = &c.fold else { continue };
        for u in c.units.iter().flatten() {
            let root = second.find(*u);
            if through_classes.contains(&root) {
                pinned.entry(root).or_insert_with(|| format!("it would emit a constant into {e}"));
            }
        }
    }
    // Dead rows whose bias cannot be folded (and the depthwise rows that carry a dead constant
    // into such a reader): removing their class would drop it (a ConvTranspose or a padded
    // AveragePool reads it), so the class stays, as a live unit's unfoldable BN shift does.
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
    an.through_classes = an.through_rows.iter().filter_map(|r| class_of(&an, *r)).collect();
    Ok(an)
}

/// The dead rows (producer node, output position): every weight row of the node's producer slice
/// that writes the position's class is dead ([`DEAD_REL`] of the slice's RMS row norm). Only
/// Conv, ConvTranspose, Gemm and MatMul rows: a dead row of theirs emits its bias, where a
/// recurrent cell's hidden state still evolves over time.
fn dead_rows(
    ctx: &Ctx,
    an: &Analysis,
    sums: &BTreeMap<(String, usize), Vec<f64>>,
) -> (BTreeSet<(usize, usize)>, BTreeSet<Unit>) {
    let mut out = BTreeSet::new();
    // Per class over every producer slice: are all its rows dead?
    let mut every: BTreeMap<Unit, bool> = BTreeMap::new();
    for (key, s) in an.slices.iter().filter(|(_, s)| s.roles.contains(&Role::Producer)) {
        let Some(sq) = sums.get(key).filter(|sq| sq.len() == s.units.len()) else {
            for u in s.units.iter().flatten() {
                every.insert(an.find(*u), false);
            }
            continue;
        };
        let rms2 = sq.iter().sum::<f64>() / sq.len().max(1) as f64;
        // Per class: are all this slice's rows that write it dead?
        let mut all_dead: BTreeMap<Unit, bool> = BTreeMap::new();
        for (p, u) in s.units.iter().enumerate() {
            if let Some(u) = u {
                let dead = sq[p] <= DEAD_REL * DEAD_REL * rms2;
                *all_dead.entry(an.find(*u)).or_insert(true) &= dead;
                *every.entry(an.find(*u)).or_insert(true) &= dead;
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
    (out, every.into_iter().filter(|&(_, d)| d).map(|(u, _)| u).collect())
}

/// The class (root) a producer row writes.
fn class_of(an: &Analysis, (ni, o): (usize, usize)) -> Option<Unit> {
    let u = an.sources.get(&ni)?.get(o).copied().flatten()?;
    Some(an.find(u))
}

/// In a dense-view analysis, the classes (roots) every consumer reads a constant from, at every
/// position. Not those a normalisation or a statistic reads (LayerNorm, RMSNorm, a one-group
/// GroupNorm, a mean, max or min over the units): the masked model takes it over the kept
/// positions whatever the removed ones hold, and the others' values change with it.
fn constant_classes(dense: &Analysis) -> BTreeSet<Unit> {
    let mut all_const: BTreeMap<Unit, bool> = BTreeMap::new();
    for e in &dense.edits {
        let (Edit::Norm { units, .. }
        | Edit::Mean { units, .. }
        | Edit::Mask { units, .. }
        | Edit::Extreme { units, .. }
        | Edit::SpanNorm { units, .. }) = e
        else {
            continue;
        };
        for u in units.iter().flatten() {
            all_const.insert(dense.find(*u), false);
        }
    }
    for c in &dense.consumers {
        for (p, u) in c.units.iter().enumerate() {
            if let Some(u) = u {
                *all_const.entry(dense.find(*u)).or_insert(true) &= matches!(c.val(p), Val::Const(_));
            }
        }
    }
    all_const.into_iter().filter(|&(_, k)| k).map(|(u, _)| u).collect()
}
