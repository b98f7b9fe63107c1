//! Calibration: run the model on real inputs and collect streaming per-feature statistics of
//! chosen intermediate values, for data-driven criteria (Wanda, activation scores).
//!
//! A scratch copy of the model exposes the values as graph outputs
//! ([`crate::reconstruct::capture::run_exposing`]); tract runs it chunk by chunk (≤ 512 rows) and
//! only running sums are kept, so memory is bounded by one chunk's
//! activations, not by the calibration set.

use crate::check::{self, InputSpec, Inputs};
use crate::model::graph::{attr_i, GraphIndex};
use crate::model::tensor;
use anyhow::{bail, Context, Result};
use ndarray::{ArrayD, Axis};
use onnx_protobuf::ModelProto;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Per-feature running sums of one value along one axis (all other axes are positions).
#[derive(Clone, Debug, Default, Serialize)]
pub struct FeatureStats {
    /// Axis of the features (normalized, non-negative).
    pub axis: usize,
    pub sum_sq: Vec<f64>,
    pub sum_abs: Vec<f64>,
    /// Positions seen per feature.
    pub count: u64,
}

impl FeatureStats {
    /// ‖x_j‖₂ over all calibration positions.
    pub fn l2(&self) -> Vec<f64> {
        self.sum_sq.iter().map(|s| s.sqrt()).collect()
    }
    /// mean |x_j| over all calibration positions.
    pub fn mean_abs(&self) -> Vec<f64> {
        let c = self.count.max(1) as f64;
        self.sum_abs.iter().map(|s| s / c).collect()
    }

    fn add(&mut self, a: &ArrayD<f32>, axis: usize) -> Result<()> {
        if axis >= a.ndim() {
            bail!("feature axis {axis} out of range for shape {:?}", a.shape());
        }
        let n = a.shape()[axis];
        if self.sum_sq.is_empty() {
            self.axis = axis;
            self.sum_sq = vec![0.0; n];
            self.sum_abs = vec![0.0; n];
        } else if self.sum_sq.len() != n {
            bail!("feature count changed between chunks ({} vs {n})", self.sum_sq.len());
        }
        for (j, lane) in a.axis_iter(Axis(axis)).enumerate() {
            let (mut s2, mut s1) = (0.0f64, 0.0f64);
            for &v in lane.iter() {
                let v = v as f64;
                s2 += v * v;
                s1 += v.abs();
            }
            self.sum_sq[j] += s2;
            self.sum_abs[j] += s1;
        }
        self.count += (a.len() / n.max(1)) as u64;
        Ok(())
    }
}

/// What to collect: value name → feature axis (negative = from the end).
pub type Requests = BTreeMap<String, i64>;

#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Calibration rows (samples along axis 0 of the inputs).
    pub rows: usize,
    pub values: BTreeMap<String, FeatureStats>,
}

/// Load calibration inputs for `model_path` (same rules as verification inputs).
pub fn load_inputs(model_path: &Path, spec: &InputSpec) -> Result<Inputs> {
    let inputs = check::prepare_inputs(model_path, spec).context("calibration inputs")?;
    let generated: Vec<&str> = inputs
        .inputs
        .iter()
        .filter(|i| matches!(i.source, check::inputs::InputSource::Generated))
        .map(|i| i.name.as_str())
        .collect();
    if !generated.is_empty() {
        anyhow::bail!(
            "calibration inputs: no data for input(s) {} in the given files: calibration never uses generated \
             values; give every input (an .npz with one array per input name, or NAME.npy files)",
            generated.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(inputs)
}

/// Run `model` (whose file lives at `model_path`, for external data) on `inputs` and collect
/// per-feature statistics of the requested values.
pub fn collect(model: &ModelProto, inputs: &Inputs, req: &Requests) -> Result<Stats> {
    if req.is_empty() {
        return Ok(Stats::default());
    }
    let names: Vec<String> = req.keys().cloned().collect();
    let mut stats = Stats { rows: inputs.rows(), values: BTreeMap::new() };
    crate::reconstruct::capture::run_exposing(model, inputs, &names, |_, arrays| {
        for (name, a) in names.iter().zip(arrays) {
            let ax = req[name];
            let axis = if ax < 0 { a.ndim() as i64 + ax } else { ax };
            if axis < 0 {
                bail!("value '{name}': feature axis {ax} out of range for shape {:?}", a.shape());
            }
            stats
                .values
                .entry(name.clone())
                .or_default()
                .add(a, axis as usize)
                .with_context(|| format!("value '{name}'"))?;
        }
        Ok(())
    })
    .context("calibration run")?;
    Ok(stats)
}

/// Where Wanda needs activations: for each weight, its input value and the weight axis that
/// indexes input features, and the activation axis of those features.
struct WandaSite {
    weight: String,
    value: String,
    /// activation feature axis (negative = from the end)
    act_axis: i64,
    /// how a weight element maps to an input feature
    map: FeatureMap,
}

enum FeatureMap {
    /// feature = index along this weight axis
    Axis(usize),
    /// Conv: weight [O, C/g, k...]; feature = (o / (O/g))·(C/g) + c
    Conv { group: usize },
}

fn wanda_sites(model: &ModelProto) -> Result<Vec<WandaSite>> {
    let g = model.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for n in &g.node {
        let (slot, value, act_axis, map) = match n.op_type.as_str() {
            "MatMul" if n.input.len() == 2 && ix.is_constant(&n.input[1]) => {
                let rank = ix.weight(g, &n.input[1]).map(|t| t.dims.len()).unwrap_or(0);
                if rank < 2 {
                    continue;
                }
                (1, n.input[0].clone(), -1, FeatureMap::Axis(rank - 2))
            }
            "Gemm" if n.input.len() >= 2 && ix.is_constant(&n.input[1]) => {
                let ta = attr_i(n, "transA").unwrap_or(0) != 0;
                let tb = attr_i(n, "transB").unwrap_or(0) != 0;
                (1, n.input[0].clone(), if ta { 0 } else { 1 }, FeatureMap::Axis(if tb { 1 } else { 0 }))
            }
            "Conv" if n.input.len() >= 2 && ix.is_constant(&n.input[1]) => {
                let group = attr_i(n, "group").unwrap_or(1).max(1) as usize;
                (1, n.input[0].clone(), 1, FeatureMap::Conv { group })
            }
            "LSTM" | "GRU" | "RNN" if n.input.len() >= 2 && ix.is_constant(&n.input[1]) => {
                (1, n.input[0].clone(), -1, FeatureMap::Axis(2))
            }
            _ => continue,
        };
        let w = n.input[slot].clone();
        if ix.inputs.contains(&value) && ix.weights.contains_key(&value) {
            continue;
        }
        if seen.insert(w.clone()) {
            out.push(WandaSite { weight: w, value, act_axis, map });
        }
    }
    Ok(out)
}

/// Wanda scores |w_ij|·‖x_j‖₂ for every weight whose input activations can be observed.
/// Returns (scores by weight name, notes for weights that fall back to |w|).
pub fn wanda_scores(model: &ModelProto, inputs: &Inputs) -> Result<(BTreeMap<String, Vec<f64>>, Stats)> {
    let sites = wanda_sites(model)?;
    let mut req = Requests::new();
    for s in &sites {
        req.insert(s.value.clone(), s.act_axis);
    }
    let stats = collect(model, inputs, &req)?;
    let g = model.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    let mut scores = BTreeMap::new();
    for s in &sites {
        let Some(fs) = stats.values.get(&s.value) else { continue };
        let norms = fs.l2();
        let Some(t) = ix.weight(g, &s.weight) else { continue };
        let w = tensor::read_f64(t).with_context(|| format!("weight '{}'", s.weight))?;
        let shape = tensor::shape(t)?;
        let sc = match s.map {
            FeatureMap::Axis(a) => {
                if a >= shape.len() || shape[a] != norms.len() {
                    bail!(
                        "weight '{}' {:?}: {} input features observed on '{}'",
                        s.weight,
                        shape,
                        norms.len(),
                        s.value
                    );
                }
                let inner: usize = shape[a + 1..].iter().product();
                let dim = shape[a];
                w.iter().enumerate().map(|(i, v)| v.abs() * norms[(i / inner) % dim]).collect()
            }
            FeatureMap::Conv { group } => {
                if shape.len() < 2 || shape[0] % group != 0 || shape[1] * group != norms.len() {
                    bail!(
                        "conv weight '{}' {:?} (group {group}) vs {} input channels on '{}'",
                        s.weight,
                        shape,
                        norms.len(),
                        s.value
                    );
                }
                let per_o: usize = shape[1..].iter().product();
                let inner: usize = shape[2..].iter().product();
                let o_per_g = shape[0] / group;
                w.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let o = i / per_o;
                        let c = (i % per_o) / inner;
                        v.abs() * norms[(o / o_per_g) * shape[1] + c]
                    })
                    .collect()
            }
        };
        scores.insert(s.weight.clone(), sc);
    }
    Ok((scores, stats))
}
