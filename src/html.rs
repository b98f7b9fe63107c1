//! `--html FILE`: the report as one self-contained page (inline CSS and SVG; no script, font,
//! image or link to anything outside the file), so it opens offline and in CI artifacts.
//!
//! Sections: the run (model, mode, flags), before/after figures (params, MACs, file size,
//! fidelity, accuracy, latency, masked-equivalence), per group N / N_eff / kept as bars (named
//! exactly as in the JSON report, blocked groups greyed with their reason), heads as a grid
//! (block × head, kept or removed), per-tensor sparsity for per-weight runs, reconstruction per
//! layer, and the notes. Everything is rendered from [`Report`]: the page shows nothing the
//! JSON report does not hold.

use crate::report::Report;
use std::fmt::Write;

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse}td,th{padding:2px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#777}.warn{color:#b00;font-weight:bold}\
svg text{font:12px system-ui,sans-serif}.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}";

const KEPT: &str = "#2e7d32";
const REMOVED: &str = "#e57373";
const DENSE: &str = "#e0e0e0";
const NEFF: &str = "#1565c0";
const BLOCKED: &str = "#bdbdbd";

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn row(s: &mut String, cells: &[String]) {
    s.push_str("<tr>");
    for (i, c) in cells.iter().enumerate() {
        let _ = write!(s, "{}{c}</td>", if i == 0 { "<td>" } else { "<td class=\"n\">" });
    }
    s.push_str("</tr>\n");
}

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let title = format!("onnx-emp report: {}", r.input.path);
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n",
        esc(&title)
    );
    let _ = writeln!(s, "<h1>{}</h1>", esc(&title));
    let _ = writeln!(
        s,
        "<p>{} &middot; {} &rarr; {} &middot; mode <b>{}</b> &middot; scope {} &middot; &beta; {} &middot; criterion {}{}{}</p>",
        esc(&r.tool),
        esc(&r.input.path),
        esc(&r.output.path),
        esc(&r.mode),
        esc(&r.scope),
        r.beta,
        esc(&r.criterion),
        r.calibration.as_ref().map(|c| format!(" &middot; calibration {}", esc(c))).unwrap_or_default(),
        if r.plan { " &middot; <b>plan only</b> (no model written, nothing verified)" } else { "" }
    );
    summary(&mut s, r);
    groups(&mut s, r);
    heads(&mut s, r);
    weights(&mut s, r);
    guard(&mut s, r);
    reconstruction(&mut s, r);
    if !r.notes.is_empty() {
        s.push_str("<h2>Notes</h2><ul>\n");
        for n in &r.notes {
            let cls = if n.starts_with("WARNING") { " class=\"warn\"" } else { "" };
            let _ = writeln!(s, "<li{cls}>{}</li>", esc(n));
        }
        s.push_str("</ul>\n");
    }
    s.push_str("</body></html>\n");
    s
}

fn summary(s: &mut String, r: &Report) {
    s.push_str("<h2>Before and after</h2><table>\n<tr><th></th><th>dense</th><th>pruned</th><th>change</th></tr>\n");
    let ch = |a: f64, b: f64| if a > 0.0 { format!("{:+.1} %", (b / a - 1.0) * 100.0) } else { String::new() };
    let p = &r.params;
    row(s, &["parameters".into(), p.before.to_string(), p.after.to_string(), ch(p.before as f64, p.after as f64)]);
    row(
        s,
        &[
            "non-zero parameters".into(),
            p.nonzero_before.to_string(),
            p.nonzero_after.to_string(),
            ch(p.nonzero_before as f64, p.nonzero_after as f64),
        ],
    );
    if let (Some(a), Some(b)) = (r.macs_before, r.macs_after) {
        row(s, &["MACs per inference".into(), a.to_string(), b.to_string(), ch(a as f64, b as f64)]);
    }
    if !r.plan {
        let (a, b) = (r.input.bytes, r.output.bytes);
        row(s, &["file size (bytes)".into(), a.to_string(), b.to_string(), ch(a as f64, b as f64)]);
    }
    if let Some(v) = &r.verification {
        if let (Some(a), Some(b)) = (v.accuracy_dense, v.accuracy_pruned) {
            let name = match &v.accuracy_output {
                Some(o) if v.outputs.len() > 1 => format!("accuracy ({})", esc(o)),
                _ => "accuracy".into(),
            };
            row(s, &[name, pct(a), pct(b), format!("{:+.1} points", (b - a) * 100.0)]);
        }
    }
    let t = &r.timing;
    if let (Some(a), Some(b)) = (&t.latency_dense, &t.latency_pruned) {
        row(
            s,
            &[
                format!("latency (tract, 1 thread, {} sample(s) per run, median)", a.samples),
                format!("{:.3} ms", a.median_ms),
                format!("{:.3} ms", b.median_ms),
                ch(a.median_ms, b.median_ms),
            ],
        );
        for h in &t.hotspots {
            row(
                s,
                &[
                    format!(
                        "slowest node (tract): {} ({}), {:.0} % of the dense time",
                        esc(&h.node),
                        esc(&h.op),
                        h.share * 100.0
                    ),
                    format!("{:.3} ms", h.dense_ms),
                    h.pruned_ms.map_or("removed".into(), |p| format!("{p:.3} ms")),
                    h.pruned_ms.map_or(String::new(), |p| ch(h.dense_ms, p)),
                ],
            );
        }
    }
    if let Some(o) = &t.latency_onnxruntime {
        row(
            s,
            &[
                format!("latency (onnxruntime {}, default optimisations, 1 thread, median)", esc(&o.version)),
                format!("{:.3} ms", o.dense.median_ms),
                format!("{:.3} ms", o.pruned.median_ms),
                ch(o.dense.median_ms, o.pruned.median_ms),
            ],
        );
    }
    s.push_str("</table>\n");
    if let Some(v) = &r.verification {
        if v.is_ok() {
            let _ = writeln!(s, "<h2>Fidelity (pruned against dense)</h2><p>On {}.</p>", esc(&v.samples));
            s.push_str("<table>\n<tr><th>output</th><th>shape</th><th>max |&Delta;|</th><th>rel L2</th><th>cosine</th><th>top-1 agreement</th></tr>\n");
            for o in &v.outputs {
                row(
                    s,
                    &[
                        esc(&o.name),
                        format!("{:?}", o.shape),
                        format!("{:.3e}", o.max_abs_err),
                        format!("{:.3e}", o.rel_l2_err),
                        format!("{:.6}", o.cosine),
                        match o.top1_agreement {
                            Some(t) if o.integer => format!("{} of elements equal (integer output)", pct(t)),
                            t => t.map(pct).unwrap_or_default(),
                        },
                    ],
                );
            }
            s.push_str("</table>\n");
        } else {
            let _ = writeln!(s, "<p>Verification skipped: {}</p>", esc(v.reason.as_deref().unwrap_or("")));
        }
    }
    for e in &r.equivalence {
        let verdict = match e.pass {
            Some(true) => "PASS".to_string(),
            Some(false) => "<span class=\"warn\">FAILED</span>".to_string(),
            None => format!("skipped: {}", esc(e.reason.as_deref().unwrap_or(""))),
        };
        let _ = writeln!(
            s,
            "<p>Masked-equivalence ({}): max |&Delta;| {:.3e}, rel L2 {:.3e} (tolerance {:.0e}) {verdict}</p>",
            esc(&e.stage),
            e.max_abs_err,
            e.max_rel_l2_err,
            e.tolerance
        );
    }
}

/// One bar per group: grey = N, green = kept, blue tick = N_eff (all on the group's own scale).
fn groups(s: &mut String, r: &Report) {
    if r.groups.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "<h2>Groups ({} of {} pruned)</h2><p class=\"legend\"><span style=\"background:{DENSE}\"></span>N (units)<span style=\"background:{KEPT}\"></span>kept<span style=\"background:{NEFF}\"></span>N_eff<span style=\"background:{BLOCKED}\"></span>blocked</p>",
        r.groups.iter().filter(|g| g.blocked.is_none() && g.kept < g.n).count(),
        r.groups.len()
    );
    let (label_w, bar_w, h) = (330.0, 420.0, 22.0);
    let height = h * r.groups.len() as f64 + 6.0;
    let _ = writeln!(
        s,
        "<svg width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"groups\">",
        label_w + bar_w + 300.0
    );
    for (i, g) in r.groups.iter().enumerate() {
        let y = i as f64 * h + 3.0;
        let short: String = if g.id.chars().count() > 48 {
            format!("…{}", g.id.chars().rev().take(47).collect::<Vec<_>>().into_iter().rev().collect::<String>())
        } else {
            g.id.clone()
        };
        let _ = write!(s, "<g><title>{}</title><text x=\"0\" y=\"{}\">{}</text>", esc(&g.id), y + 14.0, esc(&short));
        let n = g.n.max(1) as f64;
        match &g.blocked {
            Some(why) => {
                let _ = write!(
                    s,
                    "<rect x=\"{label_w}\" y=\"{y}\" width=\"{bar_w}\" height=\"{}\" fill=\"{BLOCKED}\"/><text x=\"{}\" y=\"{}\" class=\"muted\">blocked: {}</text>",
                    h - 6.0,
                    label_w + 6.0,
                    y + 13.0,
                    esc(&truncate(why, 90))
                );
            }
            None => {
                let kw = bar_w * g.kept as f64 / n;
                let nx = label_w + bar_w * (g.n_eff / n).min(1.0);
                let _ = write!(
                    s,
                    "<rect x=\"{label_w}\" y=\"{y}\" width=\"{bar_w}\" height=\"{}\" fill=\"{DENSE}\"/><rect x=\"{label_w}\" y=\"{y}\" width=\"{kw:.1}\" height=\"{}\" fill=\"{KEPT}\"/><rect x=\"{:.1}\" y=\"{}\" width=\"2\" height=\"{}\" fill=\"{NEFF}\"/>",
                    h - 6.0,
                    h - 6.0,
                    nx - 1.0,
                    y - 2.0,
                    h - 2.0
                );
            }
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\">{} {}: N {} &middot; N_eff {:.1} &middot; kept {}</text></g>",
            label_w + bar_w + 8.0,
            y + 14.0,
            esc(&g.kind),
            if g.blocked.is_some() { "(blocked)" } else { "" },
            g.n,
            g.n_eff,
            g.kept
        );
    }
    s.push_str("</svg>\n<table>\n<tr><th>group</th><th>kind</th><th>N</th><th>N_eff</th><th>kept</th><th>status and notes</th></tr>\n");
    for g in &r.groups {
        let mut status = match &g.blocked {
            Some(why) => format!("<span class=\"muted\">blocked: {}</span>", esc(why)),
            None => String::new(),
        };
        for n in &g.notes {
            let _ = write!(status, "<div class=\"muted\">{}</div>", esc(n));
        }
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.2}</td><td class=\"n\">{}</td><td>{status}</td></tr>",
            esc(&g.id),
            esc(&g.kind),
            g.n,
            g.n_eff,
            g.kept
        );
    }
    s.push_str("</table>\n");
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// Heads as a grid: one row per attention block, one square per head.
fn heads(s: &mut String, r: &Report) {
    let blocks: Vec<_> = r.groups.iter().filter(|g| g.kind == "heads" && g.n > 0).collect();
    if blocks.is_empty() {
        return;
    }
    let cols = blocks.iter().map(|g| g.n).max().unwrap_or(1);
    let (label_w, cell, h) = (330.0, 18.0, 22.0);
    let _ = writeln!(
        s,
        "<h2>Heads</h2><p class=\"legend\"><span style=\"background:{KEPT}\"></span>kept<span style=\"background:{REMOVED}\"></span>removed<span style=\"background:{BLOCKED}\"></span>blocked</p>\n<svg width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"heads\">",
        label_w + cell * cols as f64 + 20.0,
        h * blocks.len() as f64 + 6.0
    );
    for (i, g) in blocks.iter().enumerate() {
        let y = i as f64 * h + 3.0;
        let _ = write!(
            s,
            "<g><title>{}</title><text x=\"0\" y=\"{}\">{}</text>",
            esc(&g.id),
            y + 14.0,
            esc(&truncate(&g.id, 48))
        );
        for k in 0..g.n {
            let fill = if g.blocked.is_some() {
                BLOCKED
            } else if g.removed.contains(&k) {
                REMOVED
            } else {
                KEPT
            };
            let state = if g.removed.contains(&k) { "removed" } else { "kept" };
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{y}\" width=\"{}\" height=\"{}\" fill=\"{fill}\"><title>head {k}: {state}</title></rect>",
                label_w + cell * k as f64,
                cell - 3.0,
                cell - 3.0
            );
        }
        s.push_str("</g>\n");
    }
    s.push_str("</svg>\n");
}

/// Per-tensor sparsity of a per-weight run.
fn weights(s: &mut String, r: &Report) {
    let Some(w) = &r.weights else { return };
    let total = 1.0 - w.kept_elems as f64 / (w.candidates_elems.max(1)) as f64;
    let _ = writeln!(
        s,
        "<h2>Per-layer sparsity ({} of {} weights zeroed, {})</h2>",
        w.candidates_elems - w.kept_elems,
        w.candidates_elems,
        pct(total)
    );
    let (label_w, bar_w, h) = (330.0, 420.0, 22.0);
    let _ = writeln!(
        s,
        "<svg width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"sparsity\">",
        label_w + bar_w + 260.0,
        h * w.tensors.len() as f64 + 6.0
    );
    for (i, t) in w.tensors.iter().enumerate() {
        let y = i as f64 * h + 3.0;
        let zw = bar_w * t.sparsity;
        let _ = writeln!(
            s,
            "<g><title>{}</title><text x=\"0\" y=\"{}\">{}</text><rect x=\"{label_w}\" y=\"{y}\" width=\"{bar_w}\" height=\"{}\" fill=\"{KEPT}\"/><rect x=\"{label_w}\" y=\"{y}\" width=\"{zw:.1}\" height=\"{}\" fill=\"{REMOVED}\"/><text x=\"{}\" y=\"{}\">{} zeroed of {} (N_eff {:.1})</text></g>",
            esc(&t.name),
            y + 14.0,
            esc(&truncate(&t.name, 48)),
            h - 6.0,
            h - 6.0,
            label_w + bar_w + 8.0,
            y + 14.0,
            pct(t.sparsity),
            t.n,
            t.n_eff
        );
    }
    s.push_str("</svg>\n");
    if !w.small_filters_kept.is_empty() {
        let names: Vec<String> = w.small_filters_kept.iter().map(|n| esc(n)).collect();
        let _ = writeln!(
            s,
            "<p class=\"muted\">Left dense (output units with fewer than 32 inputs; --include small prunes them): {}</p>",
            names.join(", ")
        );
    }
}

fn guard(s: &mut String, r: &Report) {
    let Some(g) = &r.guard else { return };
    let _ = writeln!(
        s,
        "<h2>Fidelity guard (worst output's relative L2 &le; {} on {})</h2><table>\n<tr><th>&beta;</th><th>{} kept</th><th>relative L2</th><th></th></tr>",
        g.tolerance,
        esc(&g.inputs),
        if r.mode == "weights" { "weights" } else { "units" }
    );
    for t in &g.trials {
        let verdict = match (t.pass, t.beta == g.beta && !g.by_group) {
            (true, true) => "<b>written</b>",
            (true, false) => "within",
            (false, _) => "over",
        };
        let _ = writeln!(
            s,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.4}</td><td>{verdict}</td></tr>",
            t.beta, t.kept, t.rel_l2
        );
    }
    s.push_str("</table>\n");
    let Some(p) = &g.groups else { return };
    let beta0 = g.trials.first().map_or(g.beta, |t| t.beta);
    let _ = writeln!(
        s,
        "<p>One group at a time, at &beta; {beta0}: {}</p><table>\n<tr><th>group</th><th>params saved alone</th><th>relative L2 alone</th><th></th></tr>",
        if g.by_group {
            format!("the {} groups marked <b>cut</b> are cut as EMP says, the others kept whole", p.cut.len())
        } else {
            "the &beta; search's cut saved more, so this pass was not taken".to_string()
        }
    );
    for t in &p.trials {
        let id = r.groups.get(t.group).map_or_else(|| t.group.to_string(), |gr| gr.id.clone());
        let verdict = match (p.cut.contains(&t.group) && g.by_group, t.rel_l2 <= g.tolerance) {
            (true, _) => "<b>cut</b>",
            (false, true) => "within alone",
            (false, false) => "over",
        };
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.4}</td><td>{verdict}</td></tr>",
            esc(&id),
            t.saves,
            t.rel_l2
        );
    }
    s.push_str("</table>\n");
    for (k, e, pass) in &p.subsets {
        let _ = writeln!(
            s,
            "<p>the first {k} together: relative L2 {e:.4} ({})</p>",
            if *pass { "within" } else { "over" }
        );
    }
}

fn reconstruction(s: &mut String, r: &Report) {
    let Some(rec) = &r.reconstruction else { return };
    let _ = writeln!(
        s,
        "<h2>Reconstruction ({} calibration samples)</h2><table>\n<tr><th>layer</th><th>method</th><th>rows</th><th>rel L2 before</th><th>rel L2 after</th><th>note</th></tr>",
        rec.samples
    );
    for l in &rec.layers {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.3e}</td><td class=\"n\">{:.3e}</td><td class=\"muted\">{}</td></tr>",
            esc(&l.layer),
            esc(&match &l.solver {
                Some(solver) => format!("{} ({solver})", l.method),
                None => l.method.clone(),
            }),
            l.rows,
            l.err_before.sqrt(),
            l.err_after.sqrt(),
            esc(l.note.as_deref().unwrap_or(""))
        );
    }
    s.push_str("</table>\n");
    if let Some(e) = &rec.end_to_end {
        let _ = writeln!(
            s,
            "<p>End to end on {} held-out calibration samples: rel L2 {:.3e} without, {:.3e} with reconstruction: <b>{}</b></p>",
            e.samples,
            e.err_without.sqrt(),
            e.err_with.sqrt(),
            if e.kept { "kept" } else { "reverted" }
        );
    }
    if let Some(w) = &rec.whole_run {
        let _ = writeln!(
            s,
            "<p>End to end, both stages against the dense input, on {} held-out calibration samples: rel L2 {:.3e}</p>",
            w.samples,
            w.err.sqrt()
        );
    }
}
