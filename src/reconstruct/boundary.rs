//! Boundary cache of reconstruction (SparseGPT's scheme): the calibration activations at the
//! start of the next window of layers (block-wise) or the next layer (layer by layer) are kept,
//! so that each window runs from them instead of from the model's inputs. A model of L layers
//! then costs about two passes in all (each segment once with its layers dense, to collect H,
//! and once updated, to move the boundary on) instead of one growing prefix per window.
//!
//! Contract:
//! - A boundary at node `cut` holds, for every calibration sample, the f32 values produced before
//!   `cut` (graph order) and read at or after it, computed by the model as it stood when the
//!   boundary was moved there (every layer before `cut` already reconstructed).
//! - [`Boundary::run_exposing`] runs a model from the boundary: the nodes that produce cached
//!   values are removed and the values become graph inputs. Values that cannot be cached (not
//!   f32, or without the samples on axis 0, e.g. shapes) are recomputed from the calibration
//!   inputs, so the result is the model's own whatever is cached.
//! - Memory: at most [`MAX_BOUNDARY_BYTES`] of cached values, known at the first chunk (the
//!   values are allocated whole then); beyond that, or on any error, the caller runs from the
//!   model's inputs, and takes a boundary again from them at its next layer.

use super::capture::{run_exposing, run_exposing_f32_rows};
use crate::check::inputs::{Input, InputData, InputSource};
use crate::check::Inputs;
use crate::model::tensor::dt;
use anyhow::{bail, Context, Result};
use ndarray::{ArrayD, Axis};
use onnx_protobuf::{ModelProto, NodeProto, ValueInfoProto};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Cached values of one boundary, in bytes, at most (512 MiB: a transformer's residual stream and
/// normalised copy for 512 samples of 64 tokens × 768 take 200 MB; a CNN's first layers at
/// 224 × 224 do not fit, but their prefix is short). The channels refit holds a dense and a
/// masked boundary, and a third while one moves: on MobileNetV2 at 224 × 224 with 512 samples,
/// 1.9 GB at the peak and 59 s (1 GiB: 3.0 GB, 53 s; 256 MiB: 1.6 GB, 142 s; no boundary:
/// 1.2 GB, 322 s); 1.3 GB since every boundary shares the calibration arrays ([`Input::data`]).
pub const MAX_BOUNDARY_BYTES: usize = 512 << 20;

/// The values crossing one cut, for every calibration sample.
pub(crate) struct Boundary {
    /// The first node (graph order) that is not replaced by the cache.
    cut: usize,
    /// The calibration inputs (first `base`), then one input per cached value.
    inputs: Inputs,
    base: usize,
}

impl Boundary {
    /// Nothing cached yet: runs start from the calibration inputs.
    pub(crate) fn start(calib: &Inputs) -> Boundary {
        Boundary { cut: 0, inputs: calib.clone(), base: calib.inputs.len() }
    }

    /// Names of the cached values.
    #[cfg(test)]
    pub(crate) fn cached(&self) -> impl Iterator<Item = &str> {
        self.inputs.inputs[self.base..].iter().map(|i| i.name.as_str())
    }

    /// As [`run_exposing`], from this boundary: `model` must compute, before the cut, what the
    /// model the boundary was taken from computed there.
    pub(crate) fn run_exposing(
        &self,
        model: &ModelProto,
        values: &[String],
        f: impl FnMut(usize, &[ArrayD<f32>]) -> Result<()>,
    ) -> Result<()> {
        let sub = self.cut_model(model, values)?;
        run_exposing(&sub, &self.inputs, values, f)
    }

    /// The boundary at node `cut` (≥ this one's) of `model`, from one run of the segment between
    /// (this one's calibration inputs move on to it, uncopied).
    pub(crate) fn advance(self, model: &ModelProto, cut: usize) -> Result<Boundary> {
        if cut < self.cut {
            bail!("boundary cannot move back from node {} to {cut}", self.cut);
        }
        let g = model.graph.as_ref().context("model has no graph")?;
        let crossing = crossing(model, cut)?;
        if crossing.is_empty() {
            let base = self.base;
            return Ok(Boundary { cut, inputs: self.into_base_inputs(), base });
        }
        // Per value: its rows for every sample, filled chunk by chunk (allocated at its first
        // chunk, so the boundary's size is known then: one too big costs one chunk), and how many
        // rows were filled; None once a chunk was not per-sample f32 data.
        type Filling = Option<(ArrayD<f32>, usize)>;
        let rows = self.inputs.rows();
        let mut got: Vec<Option<Filling>> = vec![Some(None); crossing.len()];
        let mut bytes = 0usize;
        run_exposing_f32_rows(&self.cut_model(model, &crossing)?, &self.inputs, &crossing, |row0, vs| {
            for (slot, v) in got.iter_mut().zip(vs) {
                let (Some(state), Some(a)) = (slot.as_mut(), v) else {
                    *slot = None;
                    continue;
                };
                let n = a.shape().first().copied().unwrap_or(0);
                if a.ndim() == 0 || row0 + n > rows {
                    *slot = None;
                    continue;
                }
                let (all, filled) = state.get_or_insert_with(|| {
                    let mut shape = a.shape().to_vec();
                    shape[0] = rows;
                    bytes += shape.iter().product::<usize>() * 4;
                    (ArrayD::zeros(shape), 0)
                });
                if all.shape()[1..] != a.shape()[1..] {
                    *slot = None;
                    continue;
                }
                all.slice_axis_mut(Axis(0), ndarray::Slice::from(row0..row0 + n)).assign(&a);
                *filled += n;
            }
            if bytes > MAX_BOUNDARY_BYTES {
                bail!("the values at the boundary take more than {MAX_BOUNDARY_BYTES} bytes");
            }
            Ok(())
        })?;
        // The calibration inputs move on; the values cached here are dropped.
        let base = self.base;
        let mut inputs = self.into_base_inputs();
        let mut values: BTreeMap<&str, ArrayD<f32>> = BTreeMap::new();
        for (name, slot) in crossing.iter().zip(got) {
            if let Some(Some((a, filled))) = slot {
                if filled == rows {
                    values.insert(name.as_str(), a);
                }
            }
        }
        // A node can be replaced only when every output it has that anything reads is cached.
        let read = read_anywhere(g);
        for n in &g.node[..cut.min(g.node.len())] {
            if n.output.iter().any(|o| !o.is_empty() && read.contains(o.as_str()) && !values.contains_key(o.as_str())) {
                for o in &n.output {
                    values.remove(o.as_str());
                }
            }
        }
        for (name, a) in values {
            inputs.inputs.push(Input {
                name: name.to_string(),
                data: InputData::F32(a).into(),
                source: InputSource::Generated,
                sample_axis: 0,
            });
        }
        Ok(Boundary { cut, inputs, base })
    }

    /// The calibration inputs alone.
    fn into_base_inputs(self) -> Inputs {
        let mut inputs = self.inputs;
        inputs.inputs.truncate(self.base);
        inputs
    }

    /// The part of `model` that computes `values` from the boundary: the nodes they need, with the
    /// cached values as graph inputs (axis 0 free, the rest as cached) and only the weights those
    /// nodes read, so that a short segment of a big model is also cheap to save and compile.
    fn cut_model(&self, model: &ModelProto, values: &[String]) -> Result<ModelProto> {
        let g = model.graph.as_ref().context("model has no graph")?;
        let cached: HashSet<&str> = self.inputs.inputs[self.base..].iter().map(|i| i.name.as_str()).collect();
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(o.as_str(), i);
            }
        }
        let mut need = vec![false; g.node.len()];
        let mut stack: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
        while let Some(v) = stack.pop() {
            if cached.contains(v) {
                continue;
            }
            if let Some(&i) = producer.get(v) {
                if !need[i] {
                    need[i] = true;
                    stack.extend(g.node[i].input.iter().filter(|x| !x.is_empty()).map(|x| x.as_str()));
                    // Subgraphs read outer values by name (`crossing` refuses such graphs; a
                    // model without a boundary may still have them): keep what they could read.
                    if g.node[i].attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty()) {
                        return Ok(model.clone());
                    }
                }
            }
        }
        let mut used: HashSet<&str> = HashSet::new();
        for (n, _) in g.node.iter().zip(&need).filter(|(_, k)| **k) {
            used.extend(n.input.iter().map(|x| x.as_str()));
        }
        let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        let mut lg = onnx_protobuf::GraphProto::new();
        lg.name = g.name.clone();
        lg.node = g.node.iter().zip(&need).filter(|(_, k)| **k).map(|(n, _)| n.clone()).collect();
        lg.initializer = g.initializer.iter().filter(|t| used.contains(t.name.as_str())).cloned().collect();
        lg.sparse_initializer = g
            .sparse_initializer
            .iter()
            .filter(|t| t.values.as_ref().is_some_and(|v| used.contains(v.name.as_str())))
            .cloned()
            .collect();
        // Model inputs stay (the runner is given data for all of them); an IR < 4 model's
        // initializer entries only with their initializer.
        lg.input = g
            .input
            .iter()
            .filter(|i| !inits.contains(i.name.as_str()) || used.contains(i.name.as_str()))
            .cloned()
            .collect();
        lg.input.retain(|i| !cached.contains(i.name.as_str()));
        lg.value_info = g.value_info.iter().filter(|v| !cached.contains(v.name.as_str())).cloned().collect();
        lg.output = g.output.clone();
        for i in &self.inputs.inputs[self.base..] {
            lg.input.push(value_info(&i.name, i.data.shape()));
        }
        let mut cut = crate::model::graph::model_around(model, lg);
        // The part runs one row at a time exactly when the whole model does.
        use crate::check::run::ONE_ROW_KEY;
        let mut p = onnx_protobuf::StringStringEntryProto::new();
        p.key = ONE_ROW_KEY.into();
        p.value = match model.metadata_props.iter().find(|p| p.key == ONE_ROW_KEY) {
            Some(q) => q.value.clone(),
            None => if one_row_per_run(g, &inits) { "1" } else { "0" }.into(),
        };
        cut.metadata_props.push(p);
        Ok(cut)
    }
}

/// [`crate::check::run::one_row_rule`] on `g` (`inits`: its initializer names), as tract's
/// runner decides it on the saved model.
fn one_row_per_run(g: &onnx_protobuf::GraphProto, inits: &HashSet<&str>) -> bool {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
    use onnx_protobuf::type_proto::Value;
    let axis0 = |vi: &ValueInfoProto| -> Option<Option<String>> {
        let Some(Value::TensorType(t)) = vi.type_.as_ref().and_then(|t| t.value.as_ref()) else { return None };
        Some(match &t.shape.as_ref()?.dim.first()?.value {
            Some(D::DimValue(v)) if *v > 0 => None,
            Some(D::DimParam(p)) => Some(p.clone()),
            _ => Some(String::new()),
        })
    };
    let first = g.input.iter().find(|i| !inits.contains(i.name.as_str())).and_then(axis0);
    crate::check::run::one_row_rule(g.node.iter().map(|n| n.op_type.as_str()), first, g.output.iter().map(axis0))
}

/// Run `model` exposing `values` from `from` when given, else from the calibration inputs.
pub(crate) fn run_from(
    from: Option<&Boundary>,
    model: &ModelProto,
    calib: &Inputs,
    values: &[String],
    f: impl FnMut(usize, &[ArrayD<f32>]) -> Result<()>,
) -> Result<()> {
    match from {
        Some(b) => b.run_exposing(model, values, f),
        None => run_exposing(model, calib, values, f),
    }
}

/// A float tensor input named `name` with the shape of `shape` except a free axis 0.
fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    let dims: Vec<Option<i64>> = shape.iter().enumerate().map(|(i, &d)| (i > 0).then_some(d as i64)).collect();
    crate::model::graph::tensor_value_info(name, dt::FLOAT, &dims, "onnx_emp_calibration_rows")
}

/// Every value read by a node input or a graph output.
fn read_anywhere(g: &onnx_protobuf::GraphProto) -> HashSet<&str> {
    let mut read: HashSet<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    for n in &g.node {
        read.extend(n.input.iter().filter(|i| !i.is_empty()).map(|i| i.as_str()));
    }
    read
}

/// The values produced by nodes before `cut` from the model's inputs (not from weights and
/// Constants alone) and read by a node at or after it or by a graph output, in graph order. An
/// error when the graph is not in topological order or has subgraphs (their reads of outer values
/// are not followed here).
///
/// A value computed from weights alone is the same for every sample: were its axis 0 as long as
/// the samples (or a run's chunk) by coincidence, caching it as per-sample rows would cut it into
/// pieces. Such values are recomputed instead.
pub(crate) fn crossing(model: &ModelProto, cut: usize) -> Result<Vec<String>> {
    let g = model.graph.as_ref().context("model has no graph")?;
    let weights: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut from_inputs: HashSet<&str> =
        g.input.iter().map(|i| i.name.as_str()).filter(|n| !weights.contains(n)).collect();
    for n in &g.node {
        if n.input.iter().any(|x| from_inputs.contains(x.as_str())) {
            from_inputs.extend(n.output.iter().filter(|o| !o.is_empty()).map(|o| o.as_str()));
        }
    }
    let mut produced_at: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        if n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty()) {
            bail!("node '{}' has a subgraph", n.name);
        }
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            produced_at.insert(o.as_str(), i);
        }
    }
    let mut read_after: BTreeSet<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    for (i, n) in g.node.iter().enumerate() {
        for x in n.input.iter().filter(|x| !x.is_empty()) {
            if produced_at.get(x.as_str()).is_some_and(|&p| p >= i) {
                bail!("the graph is not in topological order at node '{}'", n.name);
            }
            if i >= cut {
                read_after.insert(x.as_str());
            }
        }
    }
    let is_const = |n: &NodeProto| n.op_type == "Constant" && n.domain.is_empty();
    let mut out = vec![];
    for n in g.node[..cut.min(g.node.len())].iter().filter(|n| !is_const(n)) {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if read_after.contains(o.as_str()) && from_inputs.contains(o.as_str()) {
                out.push(o.clone());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::inputs::InputSpec;
    use crate::prune::weights::{prune_weights, WeightOptions};
    use std::path::Path;

    /// The digits transformer (2 blocks) pruned per weight, its pruned weights and 64 rows of
    /// calibration inputs.
    fn setup() -> (ModelProto, ModelProto, Vec<String>, Inputs) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mp = root.join("models/digits_transformer.onnx");
        let dense = crate::model::io::load(&mp).unwrap().proto;
        let mut pruned = dense.clone();
        let opts = WeightOptions::default();
        let rep = prune_weights(&mut pruned, &opts).unwrap();
        let names = rep.tensors.iter().filter(|t| t.kept < t.n).map(|t| t.name.clone()).collect();
        let mut spec = InputSpec::default();
        spec.files.insert(String::new(), root.join("models/digits_calib_x8x8.npy"));
        let calib = crate::calib::load_inputs(&mp, &spec).unwrap().sample_range(0, 64);
        (dense, pruned, names, calib)
    }

    fn weights(m: &ModelProto, names: &[String]) -> Vec<f64> {
        let g = m.graph.as_ref().unwrap();
        names
            .iter()
            .flat_map(|n| {
                let t = g.initializer.iter().find(|t| &t.name == n).unwrap();
                crate::model::tensor::read_f64(t).unwrap()
            })
            .collect()
    }

    /// Two reconstructions of the same layers agree: the same methods and rows, errors within
    /// 1e-4 of each layer's error before, weights within 1e-4 of their largest (float rounding of
    /// tract's differently cut graphs).
    fn assert_same(ra: &[super::super::LayerRecon], rb: &[super::super::LayerRecon], wa: &[f64], wb: &[f64]) {
        assert_eq!(ra.len(), rb.len());
        for (x, y) in ra.iter().zip(rb) {
            assert_eq!((&x.layer, &x.method, x.rows), (&y.layer, &y.method, y.rows));
            assert!((x.err_after - y.err_after).abs() <= 1e-4 * x.err_before.max(1e-12), "{x:?} vs {y:?}");
        }
        let scale = wa.iter().fold(0f64, |m, v| m.max(v.abs()));
        let diff = wa.iter().zip(wb).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-4 * scale, "max |Δw| {diff} (scale {scale})");
    }

    /// Block-wise reconstruction from cached boundaries gives the layers the same inputs as
    /// running each window's prefix from the model's inputs: the same updated weights (to float
    /// rounding of tract's differently cut graphs), with every window after the first run from
    /// the cache.
    #[test]
    fn windows_from_cached_boundaries_match_prefix_runs() {
        let (dense, pruned, names, calib) = setup();
        let (mut a, mut b) = (pruned.clone(), pruned.clone());
        let (ra, cached_a) = super::super::obs::obs_all_with(&dense, &mut a, &names, &calib, true, false).unwrap();
        let (rb, cached_b) = super::super::obs::obs_all_with(&dense, &mut b, &names, &calib, true, true).unwrap();
        assert_eq!(cached_a, 0);
        assert!(cached_b >= 2, "only {cached_b} window(s) ran from a cached boundary");
        assert!(ra.iter().filter(|l| l.method == "obs").count() >= names.len() / 2, "{ra:?}");
        let (wa, wb, wp) = (weights(&a, &names), weights(&b, &names), weights(&pruned, &names));
        assert_same(&ra, &rb, &wa, &wb);
        let scale = wa.iter().fold(0f64, |m, v| m.max(v.abs()));
        // The updates did change the weights (the comparison is not between two no-ops).
        assert!(wa.iter().zip(&wp).any(|(x, y)| (x - y).abs() > 1e-3 * scale));
    }

    /// A boundary holds what crosses its cut: in a transformer block, the residual stream read
    /// after the cut; values not per-sample f32 are left to be recomputed.
    #[test]
    fn a_boundary_caches_the_values_crossing_its_cut() {
        let (_, pruned, _, calib) = setup();
        let g = pruned.graph.as_ref().unwrap();
        // Cut at the last MatMul: everything before it that is read after it.
        let cut = g.node.iter().rposition(|n| n.op_type == "MatMul").unwrap();
        let cross = crossing(&pruned, cut).unwrap();
        assert!(!cross.is_empty());
        let b = Boundary::start(&calib).advance(&pruned, cut).unwrap();
        let cached: Vec<&str> = b.cached().collect();
        assert!(!cached.is_empty() && cached.iter().all(|c| cross.iter().any(|x| x == c)), "{cached:?} of {cross:?}");
        for i in &b.inputs.inputs[b.base..] {
            assert_eq!(i.data.shape()[0], calib.rows());
        }
        // The model's output from the boundary equals its output from the inputs.
        let out = g.output[0].name.clone();
        let mut from_inputs = vec![];
        run_exposing(&pruned, &calib, std::slice::from_ref(&out), |_, v| {
            from_inputs.extend(v[0].iter().copied());
            Ok(())
        })
        .unwrap();
        let mut from_boundary = vec![];
        b.run_exposing(&pruned, std::slice::from_ref(&out), |_, v| {
            from_boundary.extend(v[0].iter().copied());
            Ok(())
        })
        .unwrap();
        assert_eq!(from_inputs.len(), from_boundary.len());
        let d = from_inputs.iter().zip(&from_boundary).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(d <= 1e-4, "max |Δ| {d}");
    }

    /// The same for the channels refit: the dense and masked runs of every window after the first
    /// start from cached boundaries and give the same refitted weights.
    #[test]
    fn refit_windows_from_cached_boundaries_match_prefix_runs() {
        let (dense, _, _, calib) = setup();
        let opts = crate::prune::StructOptions { beta: 0.8, ..Default::default() };
        let r = crate::prune::channels::prune_channels(&dense, &opts).unwrap();
        assert!(r.refit.len() >= 2, "{} refit sites", r.refit.len());
        let masked = r.masked().clone();
        let run = |cache: bool| {
            let (mut m, mut p) = (masked.clone(), r.pruned.clone());
            let (reps, n) =
                super::super::refit::refit_all_with(&dense, &mut m, &mut p, &r.refit, &calib, true, cache).unwrap();
            (reps, n, m)
        };
        let ((ra, na, ma), (rb, nb, mb)) = (run(false), run(true));
        assert_eq!(na, 0);
        assert!(nb >= 1, "no window ran from a cached boundary");
        assert!(ra.iter().any(|l| l.method == "ridge" || l.method == "bias"), "{ra:?}");
        let names: Vec<String> = r.refit.iter().map(|s| s.weight.clone()).collect();
        assert_same(&ra, &rb, &weights(&ma, &names), &weights(&mb, &names));
    }

    /// Layer by layer (a model too small for windows), each layer's runs also start from the
    /// boundary at it, the depthwise layers' affine fits too, and give what prefix runs give: per
    /// weight on the transformer, channels on the trained MobileNet-style CNN.
    #[test]
    fn layer_by_layer_runs_from_boundaries_match_prefix_runs() {
        let (dense, pruned, names, calib) = setup();
        let (mut a, mut b) = (pruned.clone(), pruned.clone());
        let (ra, na) = super::super::obs::obs_all_with(&dense, &mut a, &names, &calib, false, false).unwrap();
        let (rb, _) = super::super::obs::obs_all_with(&dense, &mut b, &names, &calib, false, true).unwrap();
        assert_eq!(na, 0);
        assert!(ra.iter().filter(|l| l.method.starts_with("obs")).count() >= names.len() / 2, "{ra:?}");
        assert_same(&ra, &rb, &weights(&a, &names), &weights(&b, &names));

        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mp = root.join("models/fmnist_mobilenet.onnx");
        let dense = crate::model::io::load(&mp).unwrap().proto;
        let mut spec = InputSpec::default();
        spec.files.insert(String::new(), root.join("models/fmnist_calib_x.npy"));
        let calib = crate::calib::load_inputs(&mp, &spec).unwrap().sample_range(0, 40);
        let opts = crate::prune::StructOptions { beta: 0.8, ..Default::default() };
        let r = crate::prune::channels::prune_channels(&dense, &opts).unwrap();
        let run = |cache: bool| {
            let (mut m, mut p) = (r.masked().clone(), r.pruned.clone());
            let (reps, n) =
                super::super::refit::refit_all_with(&dense, &mut m, &mut p, &r.refit, &calib, false, cache).unwrap();
            (reps, n, m)
        };
        let ((ra, na, ma), (rb, nb, mb)) = (run(false), run(true));
        assert_eq!(na, 0);
        // Every site after the first ran from a boundary, the affine ones among them.
        assert!(nb + 1 >= ra.len(), "{nb} of {} sites ran from a boundary", ra.len());
        assert!(ra.iter().any(|l| l.method == "affine") && ra.iter().any(|l| l.method == "ridge"), "{ra:?}");
        let names: Vec<String> = r.refit.iter().map(|s| s.weight.clone()).collect();
        assert_same(&ra, &rb, &weights(&ma, &names), &weights(&mb, &names));
    }

    /// A part cut out of a model runs one row at a time exactly when the whole model does: the
    /// MobileNet's Gemm head alone as the convolutional model, the transformer's last MatMul as
    /// the transformer (passes of one reconstruction then run alike in tract).
    #[test]
    fn a_cut_runs_one_row_at_a_time_exactly_when_its_model_does() {
        use crate::check::run::ONE_ROW_KEY;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mp = root.join("models/fmnist_mobilenet.onnx");
        let m = crate::model::io::load(&mp).unwrap().proto;
        let mut spec = InputSpec::default();
        spec.files.insert(String::new(), root.join("models/fmnist_calib_x.npy"));
        let calib = crate::calib::load_inputs(&mp, &spec).unwrap().sample_range(0, 4);
        let (_, transformer, _, tcalib) = setup();
        for (m, calib, op, one) in [(&m, &calib, "Gemm", "1"), (&transformer, &tcalib, "MatMul", "0")] {
            let g = m.graph.as_ref().unwrap();
            let cut = g.node.iter().rposition(|n| n.op_type == op).unwrap();
            let b = Boundary::start(calib).advance(m, cut).unwrap();
            let part = b.cut_model(m, &[g.output[0].name.clone()]).unwrap();
            let pg = part.graph.as_ref().unwrap();
            assert!(pg.node.len() < g.node.len() && pg.node.iter().all(|n| n.op_type != "Conv"), "{op}");
            let v: Vec<&str> =
                part.metadata_props.iter().filter(|p| p.key == ONE_ROW_KEY).map(|p| p.value.as_str()).collect();
            assert_eq!(v, [one], "{op}");
        }
    }

    /// A chunked pass whose callback refuses the first chunk (a boundary too big to keep) stops
    /// there: it is not run again on all the samples at once, the fallback for runs that fail in
    /// tract (which took MobileNetV2's 512 samples at 224 × 224 to 6 GB).
    #[test]
    fn a_callback_error_is_not_retried_unchunked() {
        let (_, pruned, _, calib) = setup();
        let out = pruned.graph.as_ref().unwrap().output[0].name.clone();
        let mut calls = vec![];
        let e = run_exposing(&pruned, &calib, std::slice::from_ref(&out), |row0, v| {
            calls.push((row0, v[0].shape()[0]));
            bail!("too big")
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("too big"), "{e:#}");
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert!(calls[0].1 < calib.rows(), "{calls:?}");
    }

    /// A value computed from weights alone whose axis 0 is as long as the samples (here the
    /// transposed weight, 4 × 3, with 4 samples) is not cached as if it were per-sample rows.
    #[test]
    fn values_from_weights_alone_are_recomputed_not_cached() {
        use crate::model::graph::tensor_value_info;
        use onnx_protobuf::{GraphProto, NodeProto, TensorProto};
        let mut g = GraphProto::new();
        g.input.push(tensor_value_info("x", 1, &[None, Some(4)], "N"));
        g.output.push(tensor_value_info("y", 1, &[None, Some(3)], "N"));
        let mut w = TensorProto::new();
        w.name = "Wt".into();
        w.data_type = 1;
        w.dims = vec![3, 4];
        w.float_data = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
        g.initializer.push(w);
        let node = |op: &str, i: &[&str], o: &str| {
            let mut n = NodeProto::new();
            n.op_type = op.into();
            n.name = o.into();
            n.input = i.iter().map(|s| s.to_string()).collect();
            n.output = vec![o.into()];
            n
        };
        g.node.push(node("Transpose", &["Wt"], "T"));
        g.node.push(node("Relu", &["x"], "r"));
        g.node.push(node("MatMul", &["r", "T"], "y"));
        let m = crate::model::graph::model_of(g);
        assert_eq!(crossing(&m, 2).unwrap(), vec!["r".to_string()]);
        let infos = vec![crate::check::InputInfo {
            name: "x".into(),
            elem_type: 1,
            dims: vec![crate::check::DimSpec::Symbolic("N".into()), crate::check::DimSpec::Fixed(4)],
            index_bound: None,
        }];
        let spec = crate::check::InputSpec { default_batch: 4, ..Default::default() };
        let calib = crate::check::inputs::prepare_for(&infos, &spec).unwrap();
        let b = Boundary::start(&calib).advance(&m, 2).unwrap();
        assert_eq!(b.cached().collect::<Vec<_>>(), vec!["r"]);
        let y = ["y".to_string()];
        let (mut a, mut c) = (vec![], vec![]);
        run_exposing(&m, &calib, &y, |_, v| {
            a.extend(v[0].iter().copied());
            Ok(())
        })
        .unwrap();
        b.run_exposing(&m, &y, |_, v| {
            c.extend(v[0].iter().copied());
            Ok(())
        })
        .unwrap();
        assert_eq!(a.len(), 12);
        assert_eq!(a, c);
    }

    #[test]
    fn unsorted_graphs_and_subgraphs_are_not_cut() {
        let (_, pruned, _, _) = setup();
        assert!(crossing(&pruned, 3).is_ok());
        let mut unsorted = pruned.clone();
        let g = unsorted.graph.as_mut().unwrap();
        let last = g.node.pop().unwrap();
        g.node.insert(0, last);
        assert!(format!("{:#}", crossing(&unsorted, 3).unwrap_err()).contains("topological order"));
        let mut sub = pruned.clone();
        let mut a = onnx_protobuf::AttributeProto::new();
        a.name = "body".into();
        a.g = Some(onnx_protobuf::GraphProto::new()).into();
        sub.graph.as_mut().unwrap().node[1].attribute.push(a);
        assert!(format!("{:#}", crossing(&sub, 3).unwrap_err()).contains("subgraph"));
    }
}
