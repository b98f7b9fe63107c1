//! Channels, stage 1 (after the dependency analysis): dead units. A unit whose producer weights
//! are all zero, or nearly so, emits its producer's bias (through what follows: BN shift,
//! act(·)...) whatever the input. Zeroing that bias with the weights, as the masked model does for
//! every other removed unit, would change the model by that constant; folding it into the
//! consumers' biases instead, as for a MatMul's bias Add, removes the unit without changing
//! anything the proof or fidelity can see (in the interior of a zero-padded Conv's input).
//!
//! Contract: [`analysis`] returns the analysis with `fold_bias` holding the classes every
//! producer of which is dead and whose constant every consumer can fold, and `dead_pins` the dead
//! classes whose constant cannot be folded: those are kept, with the reason. Live units keep the
//! masked model's other rule (bias zeroed with the weights, the unit emits 0): for a live unit the
//! bias is not its output's mean (torch folds BatchNorm into it: `β − γ·μ/σ`), and on the trained
//! Fashion-MNIST CNNs folding it cost up to 12 points where zeroing it did not. With calibration
//! data, reconstruction compensates live units with their measured means instead.

use super::*;

/// A producer row is dead when its L2 norm is at most this fraction of its weight's RMS row norm.
pub(super) const DEAD_REL: f64 = 1e-3;

/// The dependency analysis of `ctx`, with the dead units' biases folded (see the module doc).
/// Runs [`groups::analyze`] once when no unit is dead (most trained models), else two or three
/// times: a unit's constants depend only on its own class's producers, so a class whose constant
/// turns out not to be foldable is analysed again as a live one, and nothing else changes.
pub(super) fn analysis(ctx: &Ctx) -> Result<Analysis> {
    let first = groups::analyze(ctx, &BTreeSet::new());
    if first.bias_emitters.is_empty() {
        return Ok(first);
    }
    let (mut seen, mut live) = (BTreeSet::new(), BTreeSet::new());
    // Per producer slice, Σ w² per position: the L2 scores read them too ([`Analysis::producer_sq`]).
    let mut sums = BTreeMap::new();
    for (key, s) in first.slices.iter().filter(|(_, s)| s.roles.contains(&Role::Producer)) {
        let sq = position_sums(ctx, &s.weight, s.axis, |x| x * x)?;
        let rms2 = sq.iter().sum::<f64>() / sq.len().max(1) as f64;
        for (p, u) in s.units.iter().enumerate() {
            let Some(u) = u else { continue };
            let class = first.find(*u);
            seen.insert(class);
            if sq[p] > DEAD_REL * DEAD_REL * rms2 {
                live.insert(class);
            }
        }
        sums.insert(key.clone(), sq);
    }
    let dead = |u: &Unit| {
        let c = first.find(*u);
        seen.contains(&c) && !live.contains(&c)
    };
    let mut fold: BTreeSet<Unit> = first.bias_emitters.iter().copied().filter(dead).collect();
    if fold.is_empty() {
        let mut first = first;
        first.producer_sq = sums;
        return Ok(first);
    }
    drop(first);
    let mut second = groups::analyze(ctx, &fold);
    let pinned = pins(ctx, &second);
    // Dead classes whose constant cannot be folded: removing them would drop it (a ConvTranspose
    // or a padded AveragePool reads it, or an SE gate turns it into an activation), so they stay,
    // as a live unit's unfoldable BN shift does.
    let mut kept: Vec<(Unit, String)> = vec![];
    fold.retain(|u| match pinned.get(&second.find(*u)) {
        Some(why) => {
            kept.push((*u, why.clone()));
            false
        }
        None => true,
    });
    if kept.is_empty() {
        second.producer_sq = sums;
        return Ok(second);
    }
    drop(second);
    let mut an = groups::analyze(ctx, &fold);
    an.producer_sq = sums;
    for (u, why) in kept {
        let root = an.find(u);
        an.dead_pins
            .entry(root)
            .or_insert_with(|| format!("it is dead (zero weights) and its bias cannot be folded: {why}"));
    }
    Ok(an)
}
