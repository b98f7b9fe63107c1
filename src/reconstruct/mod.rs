//! Reconstruction from calibration data: after EMP has decided what to remove, re-solve the
//! weights that remain so that each layer's output on real inputs stays close to the dense one.
//! ONNX has no training loop; these are closed-form, layer-local problems.
//!
//! Contract:
//! - Input: the dense model, the pruned model (and, for structural modes, the masked model that
//!   must compute the same function), the calibration inputs, and the layers to reconstruct.
//! - Output: the same models with the kept weights (and biases) of those layers rewritten, in
//!   place, in their dtype and encoding; nothing else changes. Structural modes write the same
//!   values into the masked and the pruned model, so masked-equivalence keeps its meaning.
//! - Layers run in graph order, each on the inputs produced by the already-reconstructed layers
//!   before it (SparseGPT's sequential scheme), so errors do not compound.
//! - Memory: one layer's normal equations (p × p) plus up to 2048 of its sampled rows waiting to
//!   be added (products of that many rows, whatever the chunks of the calibration pass); also the
//!   activations at the current window's (or layer's) boundary, ≤ 512 MiB each: one per-weight,
//!   a dense and a masked one for the channels and heads refit (see [`boundary`]).
//! - Every layer is reported: its calibration error before and after, the method kept, or why
//!   it was not reconstructed.
//!
//! Methods: per-weight mode uses the OBS / SparseGPT update with EMP's mask ([`obs`]), aimed at
//! the dense model's outputs layer by layer ([`target`]);
//! channels and heads refit each consumer of removed units by ridge least squares against the
//! dense output, with bias-only compensation and "leave as is" as fall-backs, keeping whichever
//! has the lowest error on a held-apart fifth of the calibration rows ([`refit`]); grouped
//! (depthwise) convolutions get a per-channel scale and shift instead ([`affine`]).

pub mod affine;
pub mod boundary;
pub mod capture;
pub mod linalg;
pub mod obs;
pub mod obs_factor;
pub mod quant;
pub mod recurrent;
pub mod refit;
pub mod site;
pub mod target;

use serde::Serialize;

/// Calibration positions sampled per sample (Conv output pixels, tokens).
pub const POSITIONS_PER_SAMPLE: usize = 64;
/// Relative damping of H for the OBS update (λ = DAMP · mean(diag H)), as SparseGPT.
pub const OBS_DAMP: f64 = 0.01;
/// Ridge strengths tried by the refit, relative to mean(diag G).
pub const RIDGE_DELTAS: [f64; 4] = [1e-4, 1e-3, 1e-2, 1e-1];

/// What reconstruction did to one layer.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LayerRecon {
    /// "<op> <node name>".
    pub layer: String,
    pub weight: String,
    /// "obs", "obs+bias", "obs-dense", "obs-dense+bias" (per-weight, see [`target`]), "ridge",
    /// "bias", "affine", "unchanged" or "skipped".
    pub method: String,
    /// Calibration rows (samples × sampled positions) the layer was solved on.
    pub rows: usize,
    /// Relative squared output error ‖y − y_dense‖² / ‖y_dense‖² before and after (held-apart
    /// rows for the refit; the layer's own calibration inputs for OBS).
    pub err_before: f64,
    pub err_after: f64,
    /// OBS layers: how the update was solved, "exact" (every row's least-squares optimum) or
    /// "sequential" (SparseGPT's column-by-column approximation, for layers too big to solve
    /// exactly; see [`obs_factor`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solver: Option<String>,
    /// Why the layer was skipped or left unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl LayerRecon {
    /// The verdict of an OBS update with squared errors `before` / `after` and the dense output's
    /// `total`: method "obs" when it lowered the error (the caller then writes the weights),
    /// otherwise "unchanged" with the reason.
    pub(crate) fn obs(
        layer: String,
        weight: String,
        rows: usize,
        [before, after, total]: [f64; 3],
        solver: Option<String>,
    ) -> Self {
        let denom = total.max(f64::MIN_POSITIVE);
        let lowered = after.is_finite() && after < before;
        LayerRecon {
            layer,
            weight,
            method: if lowered { "obs" } else { "unchanged" }.into(),
            rows,
            err_before: before / denom,
            err_after: if lowered { after } else { before } / denom,
            solver: if lowered { solver } else { None },
            note: (!lowered).then(|| "the update did not lower the layer's calibration error".into()),
        }
    }

    pub fn skipped(layer: &str, weight: &str, why: String) -> Self {
        LayerRecon {
            layer: layer.to_string(),
            weight: weight.to_string(),
            method: "skipped".into(),
            rows: 0,
            err_before: f64::NAN,
            err_after: f64::NAN,
            solver: None,
            note: Some(why),
        }
    }
}

/// The reconstruction section of the report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ReconReport {
    /// Calibration samples the layers were fitted on (structural modes: all, or a sequence's
    /// frames before its held-out last fifth; per weight, the first four fifths).
    pub samples: usize,
    pub layers: Vec<LayerRecon>,
    /// The whole model's outputs against dense on held-out calibration samples (not used to
    /// solve: per-weight, the last fifth; structural, every fifth, where the refit only judges
    /// its candidates; a model whose axis 0 is one sequence, the last fifth), without and with the reconstructed weights; the reconstruction is kept
    /// only if it is closer. Structural runs with two stages report the last one's, against that
    /// stage's input (the heads-pruned model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_to_end: Option<EndToEnd>,
    /// Two-stage structural runs (`heads,channels`): the written model against the dense input,
    /// on the same held-out samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whole_run: Option<WholeRun>,
}

/// The written model's outputs against the dense input's on held-out calibration samples.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WholeRun {
    pub samples: usize,
    /// ‖y − y_dense‖² / ‖y_dense‖² over the held-out samples, of the worst float output
    /// ([`compare`]).
    pub err: f64,
    /// Top-1 agreement with dense (the last axis of the first output).
    pub top1: Option<f64>,
}

/// Layer-wise objectives do not guarantee the model as a whole gets closer to dense (LayerNorm,
/// softmax and residual sums sit between the layers), so the result is checked end to end.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EndToEnd {
    /// Held-out calibration samples it was measured on.
    pub samples: usize,
    /// ‖y − y_dense‖² / ‖y_dense‖² over the held-out samples, of the worst float output
    /// ([`compare`]).
    pub err_without: f64,
    pub err_with: f64,
    /// Top-1 agreement with dense (fraction of samples; the last axis of the first output) —
    /// reported, not used for the decision.
    pub top1_without: Option<f64>,
    pub top1_with: Option<f64>,
    /// Whether the reconstructed weights were kept.
    pub kept: bool,
}

/// The model's outputs on `calib`, each concatenated over the samples, and the width of the
/// first one's last axis (the classes, for top-1).
pub(crate) fn outputs(
    model: &onnx_protobuf::ModelProto,
    calib: &crate::check::Inputs,
) -> anyhow::Result<(Vec<Vec<f32>>, usize)> {
    use anyhow::Context;
    let g = model.graph.as_ref().context("model has no graph")?;
    let names: Vec<String> = g.output.iter().map(|o| o.name.clone()).collect();
    let mut out: Vec<Vec<f32>> = vec![vec![]; names.len()];
    let mut width = 0;
    capture::run_exposing(model, calib, &names, |_, v| {
        for (i, a) in v.iter().enumerate() {
            out[i].extend(a.iter().copied());
            if i == 0 {
                width = a.shape().last().copied().unwrap_or(1);
            }
        }
        Ok(())
    })?;
    Ok((out, width))
}

/// Relative squared error of `other` against `dense`: that of the worst output, each against its
/// own energy (an output that is zero in `dense` against all outputs'), so that a small output
/// is not hidden behind a large one (Silero VAD's speech probabilities, ‖y‖ 0.08, beside its LSTM
/// state, ‖c‖ 60: 0.22 off while the outputs together were 0.024 off); and top-1 agreement on
/// the first output.
pub(crate) fn compare(
    (dense, width): &(Vec<Vec<f32>>, usize),
    (other, _): &(Vec<Vec<f32>>, usize),
) -> (f64, Option<f64>) {
    let per: Vec<(f64, f64)> = dense
        .iter()
        .zip(other)
        .map(|(d, o)| {
            d.iter().zip(o).fold((0.0, 0.0), |(num, den), (a, b)| {
                (num + (*a as f64 - *b as f64).powi(2), den + (*a as f64).powi(2))
            })
        })
        .collect();
    let all: f64 = per.iter().map(|p| p.1).sum();
    let worst = per
        .iter()
        .map(
            |&(num, den)| if num == 0.0 { 0.0 } else { num / if den > 0.0 { den } else { all }.max(f64::MIN_POSITIVE) },
        )
        .fold(0.0, f64::max);
    let top1 = dense.first().zip(other.first()).and_then(|(d, o)| {
        let w = *width;
        if w < 2 || d.len() % w != 0 || o.len() != d.len() || d.is_empty() {
            return None;
        }
        let arg = |v: &[f32]| v.iter().enumerate().fold(0, |b, (i, x)| if *x > v[b] { i } else { b });
        let rows = d.len() / w;
        // One row (a per-frame score [T], a state [1, 1, H]) has one argmax: no rate.
        if rows < 2 {
            return None;
        }
        let same = (0..rows).filter(|r| arg(&d[r * w..(r + 1) * w]) == arg(&o[r * w..(r + 1) * w])).count();
        Some(same as f64 / rows as f64)
    });
    (worst, top1)
}

/// Run dense, unreconstructed and reconstructed models on the calibration data and say whether
/// the reconstruction brought the whole model's outputs closer to dense.
pub fn end_to_end(
    dense: &onnx_protobuf::ModelProto,
    without: &onnx_protobuf::ModelProto,
    with: &onnx_protobuf::ModelProto,
    calib: &crate::check::Inputs,
) -> anyhow::Result<EndToEnd> {
    let d = outputs(dense, calib)?;
    let (err_without, top1_without) = compare(&d, &outputs(without, calib)?);
    let (err_with, top1_with) = compare(&d, &outputs(with, calib)?);
    Ok(EndToEnd {
        samples: calib.rows(),
        err_without,
        err_with,
        top1_without,
        top1_with,
        kept: err_with <= err_without,
    })
}

/// Seed of the position sample of one calibration row at one layer.
pub(crate) fn row_seed(layer: usize, row: usize) -> u64 {
    (layer as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (row as u64).wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0x5EED
}

#[cfg(test)]
mod tests {
    /// The worst output counts, each against its own energy: a small output 20 % off is not
    /// hidden behind a large one 1 % off; an output that is zero in dense is judged against all.
    #[test]
    fn the_worst_output_counts_each_against_its_own_energy() {
        let dense = (vec![vec![0.1f32, 0.1], vec![60.0, 60.0]], 2);
        let other = (vec![vec![0.12f32, 0.08], vec![60.6, 59.4]], 2);
        let (e, top1) = super::compare(&dense, &other);
        assert!((e - 0.04).abs() < 1e-6, "{e}");
        // The first output is one row: one argmax, no agreement rate. Two rows have one.
        assert_eq!(top1, None);
        let rows2 = super::compare(&(vec![vec![1.0f32, 0.0, 0.0, 1.0]], 2), &(vec![vec![1.0f32, 0.0, 1.0, 0.0]], 2));
        assert_eq!(rows2.1, Some(0.5));
        // Together they were 0.0001 off: (2·0.02² + 2·0.6²) / (2·0.1² + 2·60²).
        let zero = (vec![vec![0.0f32, 0.0], vec![3.0, 4.0]], 2);
        let moved = (vec![vec![0.5f32, 0.0], vec![3.0, 4.0]], 2);
        assert!((super::compare(&zero, &moved).0 - 0.01).abs() < 1e-9);
        assert_eq!(super::compare(&zero, &zero).0, 0.0);
    }
}
