//! Per-node time of a model in tract (optimised, 1 thread), to see where a pruned model's
//! latency goes: `cargo run --release --example tract_profile -- MODEL.onnx [RUNS] [BATCH]`.
//! Input: seeded uniform values in the model's declared shape (dynamic dims = BATCH). Prints the
//! median time per node over RUNS (default 2000) runs, slowest first, and the total.
use std::time::Instant;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{eval, SimpleState};
use tract_onnx::tract_hir::infer::Factoid;

fn main() -> TractResult<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 2 {
        eprintln!("usage: tract_profile MODEL.onnx [RUNS] [BATCH]");
        std::process::exit(2);
    }
    let runs: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let batch: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut m = tract_onnx::onnx().model_for_path(&a[1])?;
    let fact = m.input_fact(0)?.clone();
    let shape: Vec<usize> = fact
        .shape
        .dims()
        .map(|d| d.concretize().and_then(|d| d.to_i64().ok()).map(|d| d as usize).unwrap_or(batch))
        .collect();
    m.set_input_fact(0, f32::fact(&shape).into())?;
    let plan = m.into_optimized()?.into_runnable()?;
    let n: usize = shape.iter().product();
    let mut seed = 1u64;
    let x: Vec<f32> = (0..n)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    let input: TValue = tract_ndarray::ArrayD::from_shape_vec(shape.clone(), x)?.into_tensor().into();
    let model = plan.model();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); model.nodes.len()];
    let mut totals = Vec::new();
    let mut state = SimpleState::new(&plan)?;
    for r in 0..runs + 10 {
        let t0 = Instant::now();
        state.run_plan_with_eval(tvec!(input.clone()), |ctx, st, node, inputs| {
            let t = Instant::now();
            let out = eval(ctx, st, node, inputs);
            if r >= 10 {
                times[node.id].push(t.elapsed().as_secs_f64() * 1e6);
            }
            out
        })?;
        if r >= 10 {
            totals.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            0.0
        } else {
            v[v.len() / 2]
        }
    };
    let mut rows: Vec<(f64, String)> = times
        .iter_mut()
        .enumerate()
        .map(|(i, t)| (med(t), format!("{} ({})", model.nodes[i].name, model.nodes[i].op().name())))
        .filter(|(t, _)| *t > 0.0)
        .collect();
    let sum: f64 = rows.iter().map(|r| r.0).sum();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (t, name) in &rows {
        println!("{t:9.2} µs  {name}");
    }
    println!("{sum:9.2} µs  sum of node medians; {:.2} µs median run ({} nodes)", med(&mut totals), rows.len());
    Ok(())
}
