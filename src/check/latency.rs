//! Wall-clock latency of a compiled model (single-threaded tract).

use super::fidelity::finite;
use super::inputs::Inputs;
use super::run::{guarded, run_in, Runnable};
use anyhow::{Context, Result};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Timing of repeated runs on the same inputs (all chunks of the inputs per run).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LatencyStats {
    #[serde(serialize_with = "finite")]
    pub median_ms: f64,
    #[serde(serialize_with = "finite")]
    pub min_ms: f64,
    pub runs: usize,
    /// Samples per run (rows of axis 0 of the timed inputs).
    pub samples: usize,
}

/// Default time budget per model: timing stops once it is spent (after at least one run).
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(2);

/// The engines latency is timed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Tract,
    Onnxruntime,
}

/// How long to time a model, and where.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencyOptions {
    /// Stop once this much time has been spent on timed runs (`None` = [`DEFAULT_BUDGET`]).
    pub budget: Option<Duration>,
    /// Exactly this many timed runs, whatever they cost (overrides the budget).
    pub runs: Option<usize>,
    /// Time in this engine only (`None`: tract and, where Python has it, onnxruntime).
    pub only: Option<Engine>,
}

impl LatencyOptions {
    /// Whether latency is timed in `e`.
    pub fn times_in(&self, e: Engine) -> bool {
        self.only.is_none_or(|o| o == e)
    }
}

/// Time repeated runs of `r` on `inputs` (all chunks per run; inputs converted once, outside
/// the timed region). See [`latency_interleaved`].
pub fn latency(r: &Runnable, inputs: &Inputs, opts: LatencyOptions) -> Result<LatencyStats> {
    latency_interleaved(&[r], inputs, opts).map(|mut v| v.remove(0))
}

/// Time several models on the same inputs, one run of each in turn (dense, pruned, dense, ...),
/// so that machine noise (frequency changes, a busy neighbour, cache state) hits all of them
/// alike. Each model keeps one run state across its runs, as a serving loop does (tract's
/// `plan.run` makes a new one per call, every op's scratch state again; measured A/B on
/// MobileNetV2 and ResNet-18 at 224 × 224 and the Fashion-MNIST nets, the two differ by ≤ 2 %).
/// The models have just run for fidelity, so there is no separate warm-up pass: each model's
/// first run is discarded as warm-up only when it is cheap (under a tenth of the
/// budget). Timing stops once every model has spent its budget (at least one timed run each,
/// at most 10 000); with `runs` set, exactly that many per model. A model whose one inference
/// takes 7 s costs one timed run, not seven.
pub fn latency_interleaved(rs: &[&Runnable], inputs: &Inputs, opts: LatencyOptions) -> Result<Vec<LatencyStats>> {
    let budget = opts.budget.unwrap_or(DEFAULT_BUDGET);
    let label = rs.iter().map(|r| r.path.display().to_string()).collect::<Vec<_>>().join(", ");
    guarded("timed runs", || {
        let batches: Vec<_> = rs.iter().map(|r| r.prepare(inputs)).collect::<Result<_>>()?;
        let mut states: Vec<_> = rs.iter().map(|r| r.spawn()).collect::<Result<_>>()?;
        let mut once = |k: usize| -> Result<f64> {
            let t = Instant::now();
            for tv in &batches[k] {
                let out = run_in(&mut states[k], tv.clone())?;
                std::hint::black_box(out);
            }
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        let start = Instant::now();
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); rs.len()];
        for (k, t) in times.iter_mut().enumerate() {
            let first = once(k)?;
            let warm_up = opts.runs.is_some() || first < budget.as_secs_f64() * 1e3 / 10.0;
            if !warm_up {
                t.push(first);
            }
        }
        let total = budget * rs.len() as u32;
        loop {
            let enough = |t: &Vec<f64>| match opts.runs {
                Some(n) => t.len() >= n.max(1),
                None => !t.is_empty() && (start.elapsed() >= total || t.len() >= 10_000),
            };
            if times.iter().all(enough) {
                break;
            }
            for (k, t) in times.iter_mut().enumerate() {
                if !enough(t) {
                    t.push(once(k)?);
                }
            }
        }
        Ok(times
            .into_iter()
            .map(|mut times| {
                times.sort_by(|a, b| a.total_cmp(b));
                let n = times.len();
                let median = if n % 2 == 1 { times[n / 2] } else { (times[n / 2 - 1] + times[n / 2]) / 2.0 };
                LatencyStats {
                    median_ms: median,
                    min_ms: times.first().copied().unwrap_or(f64::NAN),
                    runs: n,
                    samples: inputs.sample_count(),
                }
            })
            .collect())
    })
    .with_context(|| label)
}

/// One ONNX node's share of an inference in tract: where the time goes, and whether the pruning
/// reached it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Hotspot {
    /// The ONNX node (or, for a plan node no ONNX node names, tract's own name).
    pub node: String,
    pub op: String,
    /// Median time per inference in the dense model (summed over the plan nodes tract made of it).
    #[serde(serialize_with = "finite")]
    pub dense_ms: f64,
    /// The same in the pruned model; None when the pruned plan has no node of that name.
    pub pruned_ms: Option<f64>,
    /// `dense_ms` over the dense model's summed node time.
    #[serde(serialize_with = "finite")]
    pub share: f64,
}

/// Hotspots listed: at most this many, each at least [`HOTSPOT_SHARE`] of the dense time.
pub const MAX_HOTSPOTS: usize = 3;
pub const HOTSPOT_SHARE: f64 = 0.05;

/// Per ONNX node time of one inference (median over `runs`), grouped back from tract's plan
/// nodes: a plan node belongs to the ONNX node whose name it is, or starts with followed by '.'
/// (tract names the ops it splits a node into `NAME.suffix`), the longest such name.
pub fn node_profile(r: &Runnable, inputs: &Inputs, runs: usize) -> Result<Vec<(String, String, f64)>> {
    let tv = r.prepare(inputs)?.into_iter().next().context("no input batch")?;
    let times = guarded("profiled runs", || r.node_times(tv, runs))?;
    // (ONNX node, its op, time, the op of its slowest plan node and that node's time)
    let mut by: Vec<(String, String, f64, String, f64)> = Vec::new();
    let mut at = std::collections::HashMap::<String, usize>::new();
    for (name, op, ms) in times {
        let source = std::iter::once(name.len())
            .chain(name.match_indices('.').map(|(i, _)| i).rev())
            .find_map(|i| r.sources.get_key_value(&name[..i]))
            .map(|(k, v)| (k.clone(), v.clone()))
            .unwrap_or_else(|| (name.clone(), op.clone()));
        let k = *at.entry(source.0.clone()).or_insert_with(|| {
            by.push((source.0, source.1, 0.0, String::new(), -1.0));
            by.len() - 1
        });
        by[k].2 += ms;
        if ms > by[k].4 {
            (by[k].3, by[k].4) = (op, ms);
        }
    }
    Ok(by.into_iter().map(|(name, op, ms, plan_op, _)| (name, fused_label(&op, &plan_op), ms)).collect())
}

/// The op as the report names it: tract fuses an activation into the matrix product before it
/// and names the fused node after the activation, whose time is then mostly that product's.
fn fused_label(op: &str, plan_op: &str) -> String {
    let linear = |o: &str| o.contains("MatMul") || o.contains("Conv") || o == "Gemm";
    if !linear(op) && linear(plan_op) {
        format!("{op}, with the layer before it fused in")
    } else {
        op.to_string()
    }
}

/// The dense model's slowest ONNX nodes (at most [`MAX_HOTSPOTS`], each ≥ [`HOTSPOT_SHARE`] of
/// its time) and what they cost in the pruned one.
pub fn hotspots(dense: &[(String, String, f64)], pruned: &[(String, String, f64)]) -> Vec<Hotspot> {
    let total: f64 = dense.iter().map(|d| d.2).sum();
    if total.is_nan() || total <= 0.0 {
        return vec![];
    }
    let mut d: Vec<&(String, String, f64)> = dense.iter().collect();
    d.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    d.into_iter()
        .take(MAX_HOTSPOTS)
        .filter(|x| x.2 / total >= HOTSPOT_SHARE)
        .map(|(node, op, ms)| Hotspot {
            node: node.clone(),
            op: op.clone(),
            dense_ms: *ms,
            pruned_ms: pruned.iter().find(|p| &p.0 == node).map(|p| p.2),
            share: ms / total,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[(&str, f64)]) -> Vec<(String, String, f64)> {
        v.iter().map(|(n, ms)| (n.to_string(), "Op".to_string(), *ms)).collect()
    }

    #[test]
    fn hotspots_are_the_slowest_dense_nodes_with_their_pruned_time() {
        let dense = t(&[("a", 6.0), ("b", 2.5), ("c", 1.0), ("d", 0.3), ("e", 0.2)]);
        let pruned = t(&[("a", 6.0), ("c", 0.5)]);
        let h = hotspots(&dense, &pruned);
        assert_eq!(h.iter().map(|h| h.node.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!((h[0].share, h[0].pruned_ms), (0.6, Some(6.0)));
        assert_eq!(h[1].pruned_ms, None);
        assert_eq!(h[2].pruned_ms, Some(0.5));
        // Nodes under 5 % of the time are not hotspots; no time at all, none.
        let flat = t(&(0..40).map(|_| ("x", 1.0)).collect::<Vec<_>>());
        assert!(hotspots(&flat, &flat).is_empty());
        assert!(hotspots(&t(&[("a", 0.0)]), &[]).is_empty());
    }

    #[test]
    fn an_activation_tract_fused_into_a_matmul_is_named_so() {
        assert_eq!(fused_label("Relu", "OptMatMul"), "Relu, with the layer before it fused in");
        assert_eq!(fused_label("Conv", "OptMatMul"), "Conv");
        assert_eq!(fused_label("Softmax", "Softmax"), "Softmax");
    }
}
