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
}

/// At least this many timed runs (unless `runs` asks for fewer).
pub const MIN_RUNS: usize = 5;
/// Stop timing once this much time has been spent (after `MIN_RUNS`).
pub const BUDGET: Duration = Duration::from_secs(1);

/// `warmup` untimed runs, then timed runs until `runs` runs or [`BUDGET`] is spent (at least
/// `min(MIN_RUNS, runs)`). Inputs are converted once, outside the timed region.
pub fn latency(r: &Runnable, inputs: &Inputs, warmup: usize, runs: usize) -> Result<LatencyStats> {
    let runs = runs.max(1);
    guarded("timed runs", || {
        let batches = r.prepare(inputs)?;
        let once = || -> Result<()> {
            for tv in &batches {
                let out = r.run_raw(tv.clone())?;
                std::hint::black_box(out);
            }
            Ok(())
        };
        for _ in 0..warmup {
            once()?;
        }
        let mut times = Vec::with_capacity(runs.min(1024));
        let start = Instant::now();
        while times.len() < runs {
            let t = Instant::now();
            once()?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            if times.len() >= MIN_RUNS.min(runs) && start.elapsed() > BUDGET {
                break;
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let n = times.len();
        let median = if n % 2 == 1 { times[n / 2] } else { (times[n / 2 - 1] + times[n / 2]) / 2.0 };
        Ok(LatencyStats { median_ms: median, min_ms: times.first().copied().unwrap_or(f64::NAN), runs: n })
    })
    .with_context(|| r.path.display().to_string())
}
