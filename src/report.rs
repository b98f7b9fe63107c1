//! The run report: one struct, rendered as a human table (stdout) and as JSON (`--report`).
//!
//! Everything outside `timing` is a deterministic function of the input model and the flags;
//! wall-clock figures (stage times, latency) live only in `timing`.

use crate::check::{Hotspot, LatencyStats, OutputFidelity, Verification};
use crate::prune::weights::WeightsReport;
use crate::prune::GroupReport;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Clone, Debug, Serialize)]
pub struct FileInfo {
    pub path: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct Params {
    /// Float weight elements before.
    pub before: u64,
    /// Float weight elements after (smaller only for structural modes).
    pub after: u64,
    pub nonzero_before: u64,
    pub nonzero_after: u64,
}

/// Masked-equivalence for structural modes: dense-with-removed-units-zeroed vs rewritten model.
#[derive(Clone, Debug, Serialize)]
pub struct Equivalence {
    pub stage: String,
    pub status: String,
    /// The engine that ran the proof: tract, or onnxruntime when tract could not run the models
    /// (`reason` then says why); empty when none did.
    pub engine: String,
    pub reason: Option<String>,
    pub max_abs_err: f64,
    pub max_rel_l2_err: f64,
    pub outputs: Vec<OutputFidelity>,
    pub tolerance: f64,
    /// None when the proof could not run (the reason says why).
    pub pass: Option<bool>,
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct Timing {
    pub load_ms: f64,
    pub prune_ms: f64,
    pub save_ms: f64,
    pub verify_ms: f64,
    /// Part of `prune_ms` spent reconstructing from calibration data.
    pub reconstruct_ms: f64,
    pub latency_dense: Option<LatencyStats>,
    pub latency_pruned: Option<LatencyStats>,
    /// The dense model's slowest ONNX nodes in tract, with their time after pruning.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hotspots: Vec<Hotspot>,
    /// Dense and pruned in onnxruntime (default optimisation level, 1 thread).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_onnxruntime: Option<crate::check::ort::OrtLatency>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tool: String,
    /// `onnx-emp plan`: the decision only (no output, no verification).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub plan: bool,
    pub input: FileInfo,
    pub output: FileInfo,
    pub mode: String,
    pub scope: String,
    /// The β written: the requested one, or the fidelity guard's when it raised it.
    pub beta: f64,
    /// `--ratio`: the fixed fraction each group lost instead of EMP's count (β then has no
    /// effect).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// The fidelity guard of a default per-weight run (None: not run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::check::guard::GuardReport>,
    pub criterion: String,
    pub calibration: Option<String>,
    pub params: Params,
    pub macs_before: Option<u64>,
    pub macs_after: Option<u64>,
    pub weights: Option<WeightsReport>,
    pub groups: Vec<GroupReport>,
    /// What reconstruction from calibration data did, layer by layer (None: not run).
    pub reconstruction: Option<crate::reconstruct::ReconReport>,
    /// `--sparse-initializers`: what was stored sparse (None: not asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparse_initializers: Option<crate::model::sparse::Sparsified>,
    pub equivalence: Vec<Equivalence>,
    pub verification: Option<Verification>,
    pub notes: Vec<String>,
    /// Wall-clock figures: the only part of the report that differs between identical runs.
    pub timing: Timing,
}

impl Report {
    pub fn to_json(&self) -> String {
        match self.to_value() {
            Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
            Err(e) => format!("{{\"error\": \"{e}\"}}\n"),
        }
    }

    /// The deterministic part of the JSON (everything but `timing`).
    pub fn to_json_without_timing(&self) -> String {
        let mut v = self.to_value().unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("timing");
        }
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    }

    /// The report as JSON, where reconstruction's squared errors (`err_*`, ‖y − y_dense‖² /
    /// ‖y_dense‖²) are joined by their square roots (`rel_l2_*`), the relative L2 the text
    /// report prints and every other error of the JSON is (the guard's tolerance is one).
    pub fn to_value(&self) -> serde_json::Result<serde_json::Value> {
        let mut v = serde_json::to_value(self)?;
        let root = |o: &mut serde_json::Map<String, serde_json::Value>, pairs: &[(&str, &str)]| {
            for (from, to) in pairs {
                if let Some(x) = o.get(*from).and_then(|x| x.as_f64()) {
                    o.insert(to.to_string(), serde_json::json!(x.sqrt()));
                }
            }
        };
        if let Some(r) = v.get_mut("reconstruction").and_then(|r| r.as_object_mut()) {
            for l in r.get_mut("layers").and_then(|l| l.as_array_mut()).into_iter().flatten() {
                if let Some(o) = l.as_object_mut() {
                    root(o, &[("err_before", "rel_l2_before"), ("err_after", "rel_l2_after")]);
                }
            }
            if let Some(o) = r.get_mut("end_to_end").and_then(|e| e.as_object_mut()) {
                root(o, &[("err_without", "rel_l2_without"), ("err_with", "rel_l2_with")]);
            }
            if let Some(o) = r.get_mut("whole_run").and_then(|e| e.as_object_mut()) {
                root(o, &[("err", "rel_l2")]);
            }
        }
        Ok(v)
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{} — {} → {}", self.tool, self.input.path, self.output.path);
        let cut = match self.ratio {
            Some(r) => format!("ratio {r} (fixed, instead of EMP)"),
            None => format!("beta {}", self.beta),
        };
        let _ = write!(s, "mode {}  scope {}  {cut}  criterion {}", self.mode, self.scope, self.criterion);
        if let Some(c) = &self.calibration {
            let _ = write!(s, "  calibration {c}");
        }
        s.push('\n');
        if let Some(w) = &self.weights {
            s.push('\n');
            s.push_str(&weights_table(w));
        }
        if let Some(g) = &self.guard {
            let trials: Vec<String> = g
                .trials
                .iter()
                .map(|t| format!("β {:.3} gives {:.3}{}", t.beta, t.rel_l2, if t.pass { "" } else { " ✗" }))
                .collect();
            let _ = writeln!(
                s,
                "fidelity guard (worst output's relative L2 ≤ {} on {}): {}",
                g.tolerance,
                g.inputs,
                trials.join(", ")
            );
            if let Some(p) = &g.groups {
                let within = p.trials.iter().filter(|t| t.rel_l2 <= g.tolerance).count();
                let subsets: Vec<String> = p
                    .subsets
                    .iter()
                    .map(|(k, e, pass)| format!("{k} → {e:.3}{}", if *pass { "" } else { " ✗" }))
                    .collect();
                let _ = writeln!(
                    s,
                    "fidelity guard, one group at a time (β {}): {} of {} groups tried within alone; together: {}; {}",
                    g.trials.first().map_or(g.beta, |t| t.beta),
                    within,
                    p.trials.len(),
                    if subsets.is_empty() { "none tried".to_string() } else { subsets.join(", ") },
                    if g.by_group {
                        format!("{} groups cut, the others kept whole", p.cut.len())
                    } else {
                        "the β search's cut saves more: not taken".to_string()
                    }
                );
            }
        }
        if !self.groups.is_empty() {
            s.push('\n');
            s.push_str(&groups_table(&self.groups));
        }
        if let Some(r) = &self.reconstruction {
            s.push('\n');
            s.push_str(&recon_table(r));
        }
        s.push('\n');
        let p = &self.params;
        let _ = writeln!(
            s,
            "params      {} → {}  (non-zero {} → {}, {:.1} % of weights removed or zeroed)",
            p.before,
            p.after,
            p.nonzero_before,
            p.nonzero_after,
            pct(1.0 - ratio(p.nonzero_after, p.nonzero_before))
        );
        if let (Some(a), Some(b)) = (self.macs_before, self.macs_after) {
            if self.mode == "weights" {
                let _ = writeln!(
                    s,
                    "MACs        {a} → {b} per inference  (zeroed weights still cost MACs on dense kernels)"
                );
            } else {
                let _ = writeln!(s, "MACs        {a} → {b} per inference  ({:.1} % fewer)", pct(1.0 - ratio(b, a)));
            }
        }
        if self.plan {
            s.push_str("plan only: no model written, no reconstruction, no verification\n");
            for n in &self.notes {
                let _ = writeln!(s, "note: {n}");
            }
            let _ = writeln!(
                s,
                "time        load {:.1} ms, prune {:.1} ms, MACs {:.1} ms",
                self.timing.load_ms, self.timing.prune_ms, self.timing.verify_ms
            );
            return s;
        }
        let _ = writeln!(s, "file size   {} → {} bytes", self.input.bytes, self.output.bytes);
        for e in &self.equivalence {
            if e.status == "ok" {
                let engine = match e.engine.as_str() {
                    "tract" | "" => String::new(),
                    other => format!(", in {other}"),
                };
                let _ = writeln!(
                    s,
                    "masked-equivalence ({}{engine}): max |Δ| {:.3e}, rel L2 {:.3e} (tolerance {:.0e}) {}",
                    e.stage,
                    e.max_abs_err,
                    e.max_rel_l2_err,
                    e.tolerance,
                    if e.pass == Some(true) { "PASS" } else { "FAIL" }
                );
            } else {
                let _ =
                    writeln!(s, "masked-equivalence ({}): skipped: {}", e.stage, e.reason.as_deref().unwrap_or("?"));
            }
        }
        match &self.verification {
            None => s.push_str("verification: off (--no-verify)\n"),
            Some(v) if v.status != "ok" => {
                let _ = writeln!(s, "verification: skipped: {}", v.reason.as_deref().unwrap_or("unknown reason"));
            }
            Some(v) => {
                let shapes: Vec<String> = v.input_shapes.iter().map(|(k, d)| format!("{k} {d:?}")).collect();
                // Sizes made up for free dims other than the batch (an image's 224 × 224).
                let assumed = v.assumed_sizes();
                let assumed = if assumed.is_empty() {
                    String::new()
                } else {
                    format!("; assumed {} (--dim sets them)", assumed.join(", "))
                };
                let _ =
                    writeln!(s, "verification ({}, {}; inputs {}{assumed}):", v.engine, v.samples, shapes.join(", "));
                // An input made up beside others read from files: the figures are not all the
                // user's data.
                for n in v.notes.iter().filter_map(|n| n.strip_prefix("assumed ").filter(|n| n.starts_with("input '")))
                {
                    let _ = writeln!(s, "  note: {n}");
                }
                for o in &v.outputs {
                    let _ = write!(
                        s,
                        "  {}: max |Δ| {:.3e}  rel L2 {:.3e}  cosine {:.6}",
                        o.name, o.max_abs_err, o.rel_l2_err, o.cosine
                    );
                    match o.top1_agreement {
                        Some(t) if o.integer => {
                            let _ = write!(s, "  equal {:.2} % (integer output)", pct(t));
                        }
                        Some(t) => {
                            let _ = write!(s, "  top-1 agreement {:.2} %", pct(t));
                        }
                        None => {}
                    }
                    s.push('\n');
                }
                if let (Some(a), Some(b)) = (v.accuracy_dense, v.accuracy_pruned) {
                    let on = match &v.accuracy_output {
                        Some(o) if v.outputs.len() > 1 => format!(" (output '{o}')"),
                        _ => String::new(),
                    };
                    let _ = writeln!(s, "  accuracy{on} {:.2} % → {:.2} %", pct(a), pct(b));
                }
                // What could not be measured, and why (the JSON has every note).
                for n in v.notes.iter().filter(|n| {
                    n.contains("unavailable")
                        || n.contains("failed")
                        || n.starts_with("accuracy is measured")
                        || n.starts_with(crate::check::ON_CALIBRATION)
                }) {
                    let _ = writeln!(s, "  note: {n}");
                }
            }
        }
        if let (Some(a), Some(b)) = (&self.timing.latency_dense, &self.timing.latency_pruned) {
            let _ = writeln!(
                s,
                "latency     {:.3} ms → {:.3} ms (tract, 1 thread, {} sample(s) per run; median of {} / {} runs)",
                a.median_ms, b.median_ms, a.samples, a.runs, b.runs
            );
            let cut = self.verification.as_ref().and_then(|v| match (v.macs_dense, v.macs_pruned) {
                (Some(d), Some(p)) if d > 0 => Some(1.0 - p as f64 / d as f64),
                _ => None,
            });
            // Only a cut worth timing has a latency worth explaining.
            if cut.is_some_and(|c| c >= MIN_EXPLAINED_CUT) {
                hotspot_lines(&mut s, &self.timing.hotspots);
            }
        }
        if let Some(o) = &self.timing.latency_onnxruntime {
            let head = if self.timing.latency_dense.is_some() { "           " } else { "latency    " };
            let _ = writeln!(
                s,
                "{head} {:.3} ms → {:.3} ms (onnxruntime {}, default optimisations, 1 thread; median of {} / {} runs)",
                o.dense.median_ms, o.pruned.median_ms, o.version, o.dense.runs, o.pruned.runs
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        let t = &self.timing;
        let _ = writeln!(
            s,
            "time        load {:.1} ms, prune {:.1} ms (reconstruct {:.1} ms), save {:.1} ms, verify {:.1} ms",
            t.load_ms, t.prune_ms, t.reconstruct_ms, t.save_ms, t.verify_ms
        );
        s
    }
}

/// One line per reconstructed layer: relative L2 calibration error before → after (the JSON's
/// fields are squared; printed here as their square roots, the unit of the verification's rel L2).
fn recon_table(r: &crate::reconstruct::ReconReport) -> String {
    let mut s = String::new();
    let w = r.layers.iter().map(|l| l.layer.chars().count()).max().unwrap_or(5).clamp(5, 40);
    // OBS layers say how they were solved (exact or SparseGPT's sequential approximation).
    let solve_col = r.layers.iter().any(|l| l.solver.is_some());
    let solver = |l: &crate::reconstruct::LayerRecon| {
        if solve_col {
            format!("  {:>10}", l.solver.as_deref().unwrap_or("-"))
        } else {
            String::new()
        }
    };
    let head = if solve_col { format!("  {:>10}", "solver") } else { String::new() };
    let _ = writeln!(
        s,
        "{:<w$}  {:>14}{head}  {:>7}  {:>11}  {:>11}",
        "layer", "method", "rows", "rel L2 bef.", "rel L2 aft."
    );
    let (mut done, mut skipped) = (0, 0);
    for l in &r.layers {
        let name = tail(&l.layer, w);
        if l.method == "skipped" {
            skipped += 1;
            let _ =
                writeln!(s, "{name:<w$}  {:>14}  not reconstructed: {}", "skipped", l.note.as_deref().unwrap_or("?"));
            continue;
        }
        done += (l.method != "unchanged") as usize;
        let _ = writeln!(
            s,
            "{name:<w$}  {:>14}{}  {:>7}  {:>11.3e}  {:>11.3e}",
            l.method,
            solver(l),
            l.rows,
            l.err_before.sqrt(),
            l.err_after.sqrt()
        );
    }
    let requantized =
        r.layers.iter().filter(|l| l.note.as_deref() == Some(crate::reconstruct::quant::REQUANTIZED)).count();
    let requantized =
        if requantized > 0 { format!(" ({requantized} quantized: int8 weights requantized)") } else { String::new() };
    let _ = writeln!(
        s,
        "reconstruction: {} calibration samples, {done} layer(s) updated{requantized}, {skipped} skipped (errors: relative L2 against dense, on calibration rows; per-weight layers: on the held-apart fifth)",
        r.samples
    );
    if let Some(e) = &r.end_to_end {
        let pct = |v: Option<f64>| v.map(|v| format!(", top-1 agreement {:.1} %", v * 100.0)).unwrap_or_default();
        let _ = writeln!(
            s,
            "end to end on {} held-out samples: rel L2 {:.3e}{} without → {:.3e}{} with: {}",
            e.samples,
            e.err_without.sqrt(),
            pct(e.top1_without),
            e.err_with.sqrt(),
            pct(e.top1_with),
            if e.kept {
                "kept"
            } else if e.err_without.sqrt() <= 1e-6 {
                "not needed (the pruned model already matches dense to float precision: its weights are written without reconstruction)"
            } else {
                "REVERTED (the pruned weights are written without reconstruction)"
            }
        );
    }
    if let Some(w) = &r.whole_run {
        let top1 = w.top1.map(|v| format!(", top-1 agreement {:.1} %", v * 100.0)).unwrap_or_default();
        let _ = writeln!(
            s,
            "end to end, both stages against the dense input, on {} held-out samples: rel L2 {:.3e}{top1}",
            w.samples,
            w.err.sqrt()
        );
    }
    s
}

/// The last `w` characters of `s`, with a leading ellipsis when cut (UTF-8 safe).
pub(crate) fn tail(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        return s.to_string();
    }
    let rest: String = s.chars().skip(n - (w - 1)).collect();
    format!("…{rest}")
}

/// Members for the table: all when few, else the first two and the last (JSON has them all).
fn members(m: &[String]) -> String {
    if m.len() <= 4 {
        return m.join(", ");
    }
    format!("{}, {}, …, {} ({} nodes)", m[0], m[1], m[m.len() - 1], m.len())
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

fn pct(x: f64) -> f64 {
    100.0 * x
}

fn weights_table(w: &WeightsReport) -> String {
    let mut s = String::new();
    let name_w = w.tensors.iter().map(|t| t.name.len()).max().unwrap_or(6).clamp(6, 48);
    let _ = writeln!(
        s,
        "{:<name_w$}  {:<18} {:>8} {:>7} {:>10} {:>8} {:>9} {:>6}",
        "tensor", "shape", "N", "groups", "N_eff", "kept", "sparsity", "s_eff"
    );
    for t in &w.tensors {
        let name = tail(&t.name, name_w);
        let _ = writeln!(
            s,
            "{:<name_w$}  {:<18} {:>8} {:>7} {:>10.1} {:>8} {:>8.1}% {:>6.3}",
            name,
            format!("{:?}", t.shape),
            t.n,
            t.groups,
            t.n_eff,
            t.kept,
            pct(t.sparsity),
            t.s_eff
        );
    }
    if let Some(g) = &w.global {
        let _ = writeln!(s, "global EMP: N {}  N_eff {:.1}  kept {}  s_eff {:.3}", g.n, g.n_eff, g.kept, g.s_eff);
    }
    let _ = writeln!(
        s,
        "candidates: {} weights, kept {} ({:.1} % sparsity)",
        w.candidates_elems,
        w.kept_elems,
        pct(1.0 - ratio(w.kept_elems as u64, w.candidates_elems as u64))
    );
    if !w.small_filters_kept.is_empty() {
        let _ = writeln!(
            s,
            "left dense (output units with fewer than {} inputs; --include small prunes them): {}",
            crate::prune::weights::SMALL_FAN_IN,
            w.small_filters_kept.join(", ")
        );
    }
    s
}

fn groups_table(groups: &[GroupReport]) -> String {
    let mut s = String::new();
    let id_w = groups.iter().map(|g| g.id.len()).max().unwrap_or(5).clamp(5, 40);
    let _ = writeln!(
        s,
        "{:<id_w$}  {:<8} {:>5} {:>8} {:>5} {:>6}  members / status",
        "group", "kind", "N", "N_eff", "kept", "s_eff"
    );
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for g in groups {
        let c = counts.entry(g.kind.as_str()).or_default();
        c.1 += 1;
        let status = match &g.blocked {
            Some(r) => format!("not pruned: {r}"),
            None => {
                c.0 += 1;
                members(&g.members)
            }
        };
        let id = tail(&g.id, id_w);
        if g.blocked.is_some() && g.n == 0 {
            // A block that could not be read: its unit count is unknown (the JSON's 0), not zero.
            let _ = writeln!(s, "{:<id_w$}  {:<8} {:>5} {:>8} {:>5} {:>6}  {}", id, g.kind, "?", "?", "?", "", status);
        } else {
            let _ = writeln!(
                s,
                "{:<id_w$}  {:<8} {:>5} {:>8.2} {:>5} {:>6.3}  {}",
                id, g.kind, g.n, g.n_eff, g.kept, g.s_eff, status
            );
        }
        for n in &g.notes {
            let _ = writeln!(s, "{:<id_w$}  note: {n}", "");
        }
    }
    for (k, (p, t)) in counts {
        let _ = writeln!(s, "{k}: {p}/{t} groups prunable");
    }
    s
}

/// The latency line's follow-up, when one node holds [`SLOWEST_SHARE`] of the time: the dense
/// model's slowest nodes, and, when those whose time the pruning did not cut hold [`UNREACHED_SHARE`],
/// that latency cannot follow the MACs cut there.
fn hotspot_lines(s: &mut String, hs: &[Hotspot]) {
    let untouched: f64 =
        hs.iter().filter(|h| h.pruned_ms.is_some_and(|p| p >= 0.9 * h.dense_ms)).map(|h| h.share).sum();
    if hs.first().is_none_or(|h| h.share < SLOWEST_SHARE) && untouched < UNREACHED_SHARE {
        return;
    }
    let parts: Vec<String> = hs
        .iter()
        .map(|h| {
            let after = match h.pruned_ms {
                Some(p) => format!("{:.3} → {p:.3} ms", h.dense_ms),
                None => format!("{:.3} ms → removed", h.dense_ms),
            };
            format!("{} ({}) {:.0} %, {after}", h.node, h.op, h.share * 100.0)
        })
        .collect();
    let _ = writeln!(s, "            slowest nodes (tract, share of the dense time): {}", parts.join("; "));
    if untouched >= UNREACHED_SHARE {
        let _ = writeln!(
            s,
            "            {:.0} % of the dense time is in slowest node(s) whose time the pruning did not cut by 10 % \
             or more: latency cannot fall with the MACs there",
            untouched * 100.0
        );
    }
}

/// A slowest node holding this share of the time is worth a line.
pub const SLOWEST_SHARE: f64 = 0.15;

/// Slowest nodes the pruning left unshrunk, holding this share of the time together, explain a
/// latency that lags the MACs cut.
pub const UNREACHED_SHARE: f64 = 0.2;

/// The MACs cut from which the report says where the time goes (issue 11's latency rule starts
/// at 10 %).
pub const MIN_EXPLAINED_CUT: f64 = 0.10;

#[cfg(test)]
mod tests {
    use super::*;

    fn h(node: &str, share: f64, dense_ms: f64, pruned_ms: Option<f64>) -> Hotspot {
        Hotspot { node: node.into(), op: "Op".into(), dense_ms, pruned_ms, share }
    }

    /// Reconstruction that does not beat an already float-exact cut is "not needed", not
    /// "REVERTED" (1.171e-7 → 1.193e-7 on a residual block read as a failure).
    #[test]
    fn a_reconstruction_an_exact_cut_did_not_need_is_not_called_reverted() {
        use crate::reconstruct::{EndToEnd, ReconReport};
        let line = |without: f64, with: f64| {
            let e = EndToEnd {
                samples: 32,
                err_without: without * without,
                err_with: with * with,
                top1_without: None,
                top1_with: None,
                kept: with <= without,
            };
            let r = ReconReport { samples: 128, layers: vec![], end_to_end: Some(e), whole_run: None };
            super::recon_table(&r).lines().find(|l| l.starts_with("end to end")).unwrap_or_default().to_string()
        };
        assert!(line(1.171e-7, 1.193e-7).ends_with(": not needed (the pruned model already matches dense to float precision: its weights are written without reconstruction)"));
        assert!(line(0.05, 0.06).ends_with(": REVERTED (the pruned weights are written without reconstruction)"));
        assert!(line(0.06, 0.05).ends_with(": kept"));
    }

    #[test]
    fn a_slow_node_the_pruning_left_alone_is_named_as_what_holds_latency_back() {
        let mut s = String::new();
        hotspot_lines(&mut s, &[h("/dfl/Softmax", 0.59, 46.2, Some(46.0)), h("/c", 0.05, 4.0, Some(2.4))]);
        assert!(s.contains("/dfl/Softmax (Op) 59 %, 46.200 → 46.000 ms; /c (Op) 5 %, 4.000 → 2.400 ms"), "{s}");
        assert!(
            s.contains(
                "59 % of the dense time is in slowest node(s) whose time the pruning did not cut by 10 % or more"
            ),
            "{s}"
        );
        // Slow nodes that shrank: named, nothing to explain.
        let mut s = String::new();
        hotspot_lines(&mut s, &[h("/a", 0.30, 3.0, Some(2.0)), h("/b", 0.1, 1.0, None)]);
        assert!(s.contains("/b (Op) 10 %, 1.000 ms → removed") && !s.contains("did not cut"), "{s}");
        // Time spread thin: no lines.
        let mut s = String::new();
        hotspot_lines(&mut s, &[h("/a", 0.09, 1.0, Some(1.0)), h("/b", 0.08, 1.0, Some(1.0))]);
        assert!(s.is_empty(), "{s}");
    }
}
