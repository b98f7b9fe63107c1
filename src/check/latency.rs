//! Wall-clock latency of a compiled model (single-threaded tract).

use super::fidelity::finite;
use super::inputs::Inputs;
use super::run::{guarded, Runnable};
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
/// the timed region). The model has just run for fidelity, so there is no separate warm-up
/// pass: the first run is discarded as warm-up only when it is cheap (under a tenth of the
/// budget) and the budget allows more. Then timed runs continue until the budget is spent, at
/// least one of them; with `runs` set, exactly that many. A model whose one inference takes
/// 7 s costs one timed run, not seven.
pub fn latency(r: &Runnable, inputs: &Inputs, opts: LatencyOptions) -> Result<LatencyStats> {
    let budget = opts.budget.unwrap_or(DEFAULT_BUDGET);
    guarded("timed runs", || {
        let batches = r.prepare(inputs)?;
        let once = || -> Result<f64> {
            let t = Instant::now();
            for tv in &batches {
                let out = r.run_raw(tv.clone())?;
                std::hint::black_box(out);
            }
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        let start = Instant::now();
        let mut times = Vec::new();
        let first = once()?;
        let warm_up = opts.runs.is_some() || first < budget.as_secs_f64() * 1e3 / 10.0;
        if !warm_up {
            times.push(first);
        }
        loop {
            let enough = match opts.runs {
                Some(n) => times.len() >= n.max(1),
                None => !times.is_empty() && (start.elapsed() >= budget || times.len() >= 10_000),
            };
            if enough {
                break;
            }
            times.push(once()?);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let n = times.len();
        let median = if n % 2 == 1 { times[n / 2] } else { (times[n / 2 - 1] + times[n / 2]) / 2.0 };
        Ok(LatencyStats {
            median_ms: median,
            min_ms: times.first().copied().unwrap_or(f64::NAN),
            runs: n,
            samples: inputs.rows(),
        })
    })
    .with_context(|| r.path.display().to_string())
}
