//! Channels, stage 2 (report): one [`GroupReport`] per group from the plan: kept count, s_eff,
//! and the notes that say why units were kept, which constants were folded or carried, and
//! which dead units alignment kept. Contract: reads the analysis and the plan, changes nothing.

use super::*;

pub(super) fn report(
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
    let dead = g.classes.iter().filter(|c| an.dead_classes.contains(c) && plan.removed.contains(c)).count();
    if g.blocked.is_empty() && dead > 0 {
        notes.push(format!(
            "{dead} removed unit(s) are dead (weights under 1 % of their layer's RMS row norm): their output \
             is, up to that, a constant whatever the input, folded into the consumers"
        ));
    }
    let members = an.members(g.id);
    if g.blocked.is_empty() && g.width > 1 {
        // Say what ties them: a GroupNorm group, or channels one elementwise op joins (an STFT's
        // real and imaginary halves, split by a Slice and summed as squares).
        let gn = members
            .iter()
            .any(|&ni| matches!(ctx.g.node[ni].op_type.as_str(), "GroupNormalization" | "InstanceNormalization"));
        let why = if gn { "a GroupNorm group" } else { "an elementwise op joins channels of the same layer" };
        notes.push(format!(
            "a unit is {} channels that go together ({why}): N and kept count units, {} channels kept of {}",
            g.width,
            kept_idx.len() * g.width,
            n * g.width
        ));
    }
    let step = g.align(opts).step;
    let dead_kept = kept_idx.iter().filter(|&&i| an.dead_classes.contains(&g.classes[i])).count();
    if g.blocked.is_empty() && dead_kept > 0 && step > 1 && kept_idx.len() < n && kept_idx.len().is_multiple_of(step) {
        notes.push(format!(
            "{dead_kept} kept unit(s) are dead: kept to reach {}, a multiple of {step} (--round-to 1 removes them)",
            kept_idx.len()
        ));
    }
    if g.blocked.is_empty() && step > 1 && !kept_idx.len().is_multiple_of(step) && kept_idx.len() != n {
        notes.push(format!("kept count {} is not a multiple of {step} (pinned units)", kept_idx.len()));
    }
    for c in &an.consumers {
        let hits: Vec<(usize, f64)> = (c.units.iter().enumerate())
            .filter(|(_, u)| u.is_some_and(|u| an.group_of(u) == g.id && plan.removed.contains(&an.find(u))))
            .filter_map(|(p, _)| match c.val(p) {
                Val::Const(k) if k != 0.0 => Some((p, k)),
                _ => None,
            })
            .collect();
        let carried = super::rewrite::carriers(ctx, an, plan, c, &hits).map_or(0, |k| k.from.len());
        if carried > 0 {
            notes.push(format!(
                "constants of {carried} removed dead unit(s) carried by a kept dead unit into '{}' (exact, at the \
                 zero-padded border too)",
                node_label(&ctx.g.node[c.node])
            ));
        }
        if hits.len() > carried {
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
    if g.blocked.is_empty() && g.normalised && kept_idx.len() < n {
        notes.push(
            "a normalisation (LayerNorm, RMSNorm, a one-group GroupNorm, or one spelled out) reads \
             these units: the pruned model normalises over the kept ones, so their statistics change \
             (pruning error, measured by fidelity; the masked model normalises the same way)"
                .to_string(),
        );
    }
    if g.blocked.is_empty() && g.pooled && kept_idx.len() < n {
        notes.push(
            "a mean, max or min over the units (a pooled attention map) reads them: the pruned model takes \
             it over the kept ones, so it changes (pruning error, measured by fidelity; the masked model \
             takes it the same way)"
                .to_string(),
        );
    }
    let hidden = g
        .sources
        .iter()
        .all(|&s| matches!(ctx.g.node[s].op_type.as_str(), "MatMul" | "Gemm" | "LSTM" | "GRU" | "RNN" | "Gather"));
    // A one-unit group kept only because it broadcasts along a wider tensor's channels (CBAM's
    // attention map) loses nothing to that: EMP keeps its one unit anyway.
    let broadcast = |b: &String| b.ends_with(crate::prune::groups::ONE_CHANNEL_BROADCAST);
    let reasons: &[String] = if n == 1 && g.blocked.iter().all(broadcast) { &[] } else { &g.blocked };
    if reasons.len() < g.blocked.len() {
        notes.push("one channel, broadcast along a wider tensor's channels: nothing to cut".to_string());
    }
    let blocked = match reasons.len() {
        0 => None,
        1..=3 => Some(reasons.join("; ")),
        k => Some(format!("{}; and {} more", reasons[..3].join("; "), k - 3)),
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
