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

/// How long to time a model.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencyOptions {
    /// Stop once this much time has been spent on timed runs (`None` = [`DEFAULT_BUDGET`]).
    pub budget: Option<Duration>,
    /// Exactly this many timed runs, whatever they cost (overrides the budget).
    pub runs: Option<usize>,
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
                    samples: inputs.rows(),
                }
            })
            .collect())
    })
    .with_context(|| label)
}
