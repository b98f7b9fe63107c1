//! Run a model on the calibration inputs with chosen intermediate values exposed as outputs,
//! chunk by chunk (≤ 512 rows, as verification does). Only one chunk of those values is alive
//! at a time; callers keep what they sample from it.

use crate::check::{self, Inputs};
use crate::model::io::{self, SaveOptions};
use anyhow::{Context, Result};
use ndarray::ArrayD;
use onnx_protobuf::{ModelProto, ValueInfoProto};
use std::collections::BTreeSet;

/// Run `model` on `inputs`; `f(first_row, values)` gets each chunk's arrays for `values`, in
/// that order.
pub fn run_exposing(
    model: &ModelProto,
    inputs: &Inputs,
    values: &[String],
    mut f: impl FnMut(usize, &[ArrayD<f32>]) -> Result<()>,
) -> Result<()> {
    expose(model, inputs, values, false, |row0, v| {
        let v: Vec<ArrayD<f32>> = v.into_iter().map(|a| a.expect("strict values are all present")).collect();
        f(row0, &v)
    })
}

/// As [`run_exposing`], but a value that is not f32 with the samples on axis 0 comes as None
/// (in every chunk where it is not) instead of failing the run.
pub fn run_exposing_f32_rows(
    model: &ModelProto,
    inputs: &Inputs,
    values: &[String],
    f: impl FnMut(usize, Vec<Option<ArrayD<f32>>>) -> Result<()>,
) -> Result<()> {
    expose(model, inputs, values, true, f)
}

fn expose(
    model: &ModelProto,
    inputs: &Inputs,
    values: &[String],
    lenient: bool,
    mut f: impl FnMut(usize, Vec<Option<ArrayD<f32>>>) -> Result<()>,
) -> Result<()> {
    let mut m = model.clone();
    // Half-precision models run as float32 copies: tract's x86 half matmuls are a scalar
    // fallback (`model::promote`).
    let promoted;
    let inputs = if crate::model::promote::promote(&mut m)? {
        promoted = crate::model::promote::promote_inputs(inputs);
        &promoted
    } else {
        inputs
    };
    // Whether axis 0 holds a sequence is read from the declared outputs, which go: it stays
    // with the model (the rows then run together, never in chunks).
    if !m.metadata_props.iter().any(|p| p.key == check::run::SEQUENCE_KEY) {
        let sequence = m.graph.as_ref().is_some_and(crate::model::graph::axis0_is_sequence);
        let mut p = onnx_protobuf::StringStringEntryProto::new();
        p.key = check::run::SEQUENCE_KEY.into();
        p.value = if sequence { "1" } else { "0" }.into();
        m.metadata_props.push(p);
    }
    let g = m.graph.as_mut().context("model has no graph")?;
    // Only the requested values are outputs: tract then computes just the prefix of the graph
    // they depend on (a layer early in the graph costs a fraction of a full run).
    let old: Vec<ValueInfoProto> = std::mem::take(&mut g.output);
    for v in values {
        if g.output.iter().any(|o| &o.name == v) {
            continue;
        }
        let vi = old.iter().find(|o| &o.name == v).cloned().unwrap_or_else(|| {
            let mut vi = ValueInfoProto::new();
            vi.name = v.clone();
            vi
        });
        g.output.push(vi);
    }
    let dir = crate::interrupt::Scratch::new().context("reconstruction scratch folder")?;
    let path = dir.path().join("reconstruct.onnx");
    let mut ext = BTreeSet::new();
    io::for_each_tensor_mut(&mut m, &mut |t| {
        if t.raw_data.len() >= 1 << 20 {
            ext.insert(t.name.clone());
        }
    });
    io::save(m, &path, &SaveOptions { external: ext })?;
    // Chunks of about [`check::run::CHUNK_BYTES`] of input, at least one per core. A value whose
    // axis 0 is not the batch (an LSTM's sequence-first X) cannot be cut into chunks: then run it
    // whole.
    let cores = check::run::cores();
    let facts = inputs.facts();
    let mut row = 0usize;
    if inputs.rows() > 1 {
        if let Ok(r) = check::run::load_runnable_chunked(&path, &facts, check::run::chunk_rows(&facts, cores)) {
            // Only a run that failed in tract is tried whole: an error of `f` (a boundary too
            // big to keep, found at the first chunk) is the caller's answer.
            let by_f = std::cell::Cell::new(false);
            let res =
                pass(&r, inputs, values, lenient, &mut row, &mut |row0, v| f(row0, v).inspect_err(|_| by_f.set(true)));
            if res.is_ok() || row > 0 || r.chunking.is_none() || by_f.get() {
                return res;
            }
        }
    }
    match check::load_runnable(&path, &facts) {
        Ok(r) => pass(&r, inputs, values, lenient, &mut row, &mut f),
        // onnxruntime's fused ops (an optimised transformer): the values from onnxruntime.
        Err(tract) => in_onnxruntime(&path, inputs, values, lenient, &mut f).map_err(|ort| {
            anyhow::anyhow!("tract could not compile the model: {tract:#}; onnxruntime fallback: {ort:#}")
        }),
    }
}

/// [`expose`] in onnxruntime (through the worker of [`check::ort`]), chunk by chunk as tract's
/// pass goes: the same values, f32, the samples on axis 0 (lenient: others come as None).
fn in_onnxruntime(
    path: &std::path::Path,
    inputs: &Inputs,
    values: &[String],
    lenient: bool,
    f: &mut impl FnMut(usize, Vec<Option<ArrayD<f32>>>) -> Result<()>,
) -> Result<()> {
    let rows = inputs.rows().max(1);
    let chunk = check::run::chunk_rows(&inputs.facts(), 1);
    let mut lo = 0;
    while lo < rows {
        let hi = (lo + chunk).min(rows);
        let part = if inputs.rows() > 1 { inputs.sample_range(lo, hi) } else { inputs.clone() };
        let (outs, names, dtypes) = check::ort::run_typed(path, &part)?;
        let mut picked = Vec::with_capacity(values.len());
        for v in values {
            let i = names.iter().position(|o| o == v).with_context(|| format!("value '{v}' is not observable"))?;
            let usable = dtypes.get(i).is_some_and(|d| d == "float32") && outs[i].shape().first() == Some(&(hi - lo));
            picked.push((usable || !lenient).then(|| outs[i].clone()));
        }
        f(lo, picked)?;
        lo = hi;
    }
    Ok(())
}

fn pass(
    r: &check::Runnable,
    inputs: &Inputs,
    values: &[String],
    lenient: bool,
    row: &mut usize,
    f: &mut impl FnMut(usize, Vec<Option<ArrayD<f32>>>) -> Result<()>,
) -> Result<()> {
    let idx: Vec<usize> = values
        .iter()
        .map(|v| r.output_names.iter().position(|o| o == v).with_context(|| format!("value '{v}' is not observable")))
        .collect::<Result<_>>()?;
    let mut each = |outs: Vec<Option<ArrayD<f32>>>| {
        let picked: Vec<Option<ArrayD<f32>>> =
            idx.iter().map(|&i| outs[i].as_ref().map(|a| a.as_standard_layout().into_owned())).collect();
        // The chunk's rows, from the calibration inputs (a value need not have them on axis 0).
        let n = if lenient {
            r.chunking.as_ref().map_or(inputs.rows(), |c| (c.rows - *row).min(c.chunk))
        } else {
            picked.first().and_then(|a| a.as_ref()).map(|a| a.shape().first().copied().unwrap_or(1)).unwrap_or(0)
        };
        f(*row, picked)?;
        *row += n;
        Ok(())
    };
    if lenient {
        check::run::run_each_f32_rows(r, inputs, each)
    } else {
        check::run::run_each(r, inputs, |outs| each(outs.into_iter().map(Some).collect()))
    }
}
