//! Axis-0 chunking: a file of many rows runs in chunks of the compiled batch (a free batch
//! axis: about [`CHUNK_BYTES`] of input, every core busy), or one row per run when the model
//! fixes its batch to 1 or is [`convolutional`]; the last chunk is padded by repeating its last
//! row, and the padding is removed from the outputs ([`super::run_each`]). Runs of one row go
//! in blocks ([`block_runs`]), each core running its block on one run state.

use super::super::inputs::{InputFact, MAX_CHUNK};
use anyhow::Result;
use std::collections::BTreeSet;
use tract_onnx::prelude::{InferenceModel, TDim};
use tract_onnx::tract_hir::infer::GenericFactoid;

/// Axis-0 chunking of large inputs.
#[derive(Clone, Debug)]
pub struct Chunking {
    /// Rows of the full inputs.
    pub rows: usize,
    /// Rows per run (the compiled batch size); the last chunk is padded by repeating its last row.
    pub chunk: usize,
    /// Per input (in `Runnable::input_names` order): is it split along axis 0?
    pub batched: Vec<bool>,
}

/// Decide axis-0 chunking from the parsed model's declared input shapes: rows in chunks when
/// axis 0 is free, the rows are many and hold samples (not a `sequence`:
/// [`axis0_is_sequence`]), one row per run when the model fixes axis 0 to 1 and
/// more rows are given (exports with a batch of 1: dynamo, TF).
pub(super) fn plan_chunking(
    model: &InferenceModel,
    names: &[String],
    facts: &[InputFact],
    max_chunk: usize,
    sequence: bool,
) -> Result<Option<Chunking>> {
    let mut batched = vec![];
    let mut rows = None;
    let mut axis0_syms = BTreeSet::new();
    let mut other_syms = BTreeSet::new();
    let mut fixed_one = false;
    for (i, n) in names.iter().enumerate() {
        let fact = model.input_fact(i)?;
        let dims: Vec<&GenericFactoid<TDim>> = fact.shape.dims().collect();
        // A missing fact is reported by `concretize` with the input's name.
        let Some(f) = facts.iter().find(|f| &f.name == n) else { return Ok(None) };
        let free0 = !f.shape.is_empty() && !matches!(dims.first(), Some(GenericFactoid::Only(TDim::Val(_))));
        // A batch fixed to 1 with more rows given: one row per run.
        let one =
            f.shape.first().is_some_and(|&n| n > 1) && matches!(dims.first(), Some(GenericFactoid::Only(TDim::Val(1))));
        fixed_one |= one;
        let free0 = free0 || one;
        for (axis, d) in dims.iter().enumerate() {
            if let GenericFactoid::Only(t) = d {
                for s in t.symbols() {
                    if axis == 0 && free0 {
                        axis0_syms.insert(s.to_string());
                    } else {
                        other_syms.insert(s.to_string());
                    }
                }
            }
        }
        if free0 {
            match rows {
                None => rows = Some(f.shape[0]),
                Some(r) if r != f.shape[0] => return Ok(None),
                _ => {}
            }
        }
        batched.push(free0);
    }
    let Some(rows) = rows else { return Ok(None) };
    if fixed_one {
        return Ok(Some(Chunking { rows, chunk: 1, batched }));
    }
    if rows <= max_chunk || axis0_syms.iter().any(|s| other_syms.contains(s)) || sequence {
        return Ok(None);
    }
    let n_chunks = rows.div_ceil(max_chunk);
    Ok(Some(Chunking { rows, chunk: rows.div_ceil(n_chunks), batched }))
}

/// Does axis 0 hold a sequence rather than samples? The rule of
/// [`crate::model::graph::axis0_is_sequence`] (the first input's axis 0 free, an output's
/// fixed: a streaming model's state), on tract's protobuf binding: such rows run together, never
/// in chunks, which would restart the state at each (or fail: the state has no rows to join).
/// Read from the ONNX graph (tract does not keep declared output shapes); a model whose outputs
/// were replaced to expose values (reconstruction's passes) carries the answer of the model it
/// came from in its metadata under [`SEQUENCE_KEY`].
pub(crate) fn axis0_is_sequence(proto: &tract_onnx::pb::ModelProto) -> bool {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value as D;
    use tract_onnx::pb::type_proto::Value;
    if let Some(p) = proto.metadata_props.iter().find(|p| p.key == SEQUENCE_KEY) {
        return p.value == "1";
    }
    let Some(g) = proto.graph.as_ref() else { return false };
    let fixed = |vi: &tract_onnx::pb::ValueInfoProto| -> Option<bool> {
        let Some(Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else { return None };
        let d = t.shape.as_ref()?.dim.first()?;
        Some(matches!(d.value, Some(D::DimValue(v)) if v > 0))
    };
    let inits: BTreeSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let first = g.input.iter().find(|i| !inits.contains(i.name.as_str())).and_then(fixed);
    sequence_rule(first, g.output.iter().map(fixed))
}

/// [`axis0_is_sequence`]'s rule on whether axis 0 is declared with a fixed size (`Some(true)`),
/// free (`Some(false)`) or not at all (`None`), for the first input and each output, for either
/// protobuf binding.
pub fn sequence_rule(first_input: Option<bool>, outputs: impl IntoIterator<Item = Option<bool>>) -> bool {
    first_input == Some(false) && outputs.into_iter().any(|o| o == Some(true))
}

/// Metadata key of [`axis0_is_sequence`]'s answer ("1" or "0") in a model whose outputs were
/// replaced.
pub const SEQUENCE_KEY: &str = "onnx-emp.axis0_is_sequence";

/// Does the graph hold more convolutions than matrix products? tract runs such a model faster
/// one row at a time: at batch 1 its NCHW convolutions run directly (bias fused), in a batch it
/// moves axes around each of them. Per row on fmnist_mobilenet: 1.19 ms at batch 1, 1.66 ms at
/// 7, 2.06 ms at 64 (fmnist_resnet 0.82 / 1.25 / 1.30 ms, digits_cnn 0.09 / 0.13 / 0.17 ms);
/// matrix-product models are the other way round (digits_transformer 0.117 / 0.075 / 0.058 ms,
/// fmnist_vit, one patch convolution, 1.11 / 0.91 / 0.90 ms). Decided from the graph alone, so
/// that a model always runs alike (tract's sums differ in the last bit between a batch of one
/// and a larger one). Only when axis 0 holds the samples ([`samples_on_axis0`]): a streaming
/// model whose axis 0 is time must see its frames together. A part of a model cut out to run
/// from cached values (reconstruction's boundaries) carries the whole model's answer in its
/// metadata under [`ONE_ROW_KEY`], so that every pass of one reconstruction runs alike.
pub(crate) fn convolutional(proto: &tract_onnx::pb::ModelProto) -> bool {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value as D;
    use tract_onnx::pb::type_proto::Value;
    if let Some(p) = proto.metadata_props.iter().find(|p| p.key == ONE_ROW_KEY) {
        return p.value == "1";
    }
    let Some(g) = proto.graph.as_ref() else { return false };
    let axis0 = |vi: &tract_onnx::pb::ValueInfoProto| -> Option<Option<String>> {
        let Some(Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else { return None };
        Some(match &t.shape.as_ref()?.dim.first()?.value {
            Some(D::DimValue(v)) if *v > 0 => None,
            Some(D::DimParam(p)) => Some(p.clone()),
            _ => Some(String::new()),
        })
    };
    let inits: BTreeSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let first = g.input.iter().find(|i| !inits.contains(i.name.as_str())).and_then(axis0);
    one_row_rule(g.node.iter().map(|n| n.op_type.as_str()), first, g.output.iter().map(axis0))
}

/// [`convolutional`]'s rule on a graph's op types and the axis 0 of its first input and of its
/// outputs (as [`samples_on_axis0`] takes them), for either protobuf binding.
pub fn one_row_rule<'a>(
    ops: impl IntoIterator<Item = &'a str>,
    first_input: Option<Option<String>>,
    outputs: impl IntoIterator<Item = Option<Option<String>>>,
) -> bool {
    convolutional_ops(ops) && samples_on_axis0(first_input, outputs)
}

/// Does axis 0 hold the samples? The first model input's axis 0 is free (`Some(Some(name))`,
/// the name empty when the export left it unnamed), and every graph output whose shape is
/// declared (`Some`) has that same free axis 0, at least one of them: not so for a voice
/// activity detector whose input is [time, features] and whose LSTM state outputs are [1, …].
pub fn samples_on_axis0(
    first_input: Option<Option<String>>,
    outputs: impl IntoIterator<Item = Option<Option<String>>>,
) -> bool {
    let Some(Some(batch)) = first_input else { return false };
    let mut any = false;
    for o in outputs.into_iter().flatten() {
        if o.as_deref() != Some(batch.as_str()) {
            return false;
        }
        any = true;
    }
    any
}

/// Metadata key of [`convolutional`]'s answer ("1" or "0") in a model cut out of a larger one.
pub const ONE_ROW_KEY: &str = "onnx-emp.one_row_per_run";

/// [`convolutional`] of a graph of these op types.
pub fn convolutional_ops<'a>(ops: impl IntoIterator<Item = &'a str>) -> bool {
    let (mut conv, mut mm) = (0usize, 0usize);
    for op in ops {
        match op {
            "Conv" | "ConvTranspose" | "ConvInteger" | "QLinearConv" | "NhwcConv" | "FusedConv" => conv += 1,
            "MatMul" | "Gemm" | "MatMulInteger" | "QLinearMatMul" | "FusedMatMul" | "Attention"
            | "MultiHeadAttention" | "Einsum" | "LSTM" | "GRU" | "RNN" => mm += 1,
            _ => {}
        }
    }
    conv > mm
}

/// Runs of one chunk each core makes in a row on one run state: with chunks of one row, as many
/// as make about [`CHUNK_BYTES`] of input (at most 64); with larger chunks, one.
pub fn block_runs(facts: &[InputFact], chunk: usize) -> usize {
    if chunk > 1 {
        return 1;
    }
    (CHUNK_BYTES / row_bytes(facts).max(1)).clamp(1, 64)
}

/// Input bytes of one sample (every input with the first one's rows on axis 0).
fn row_bytes(facts: &[InputFact]) -> usize {
    let rows = facts.first().and_then(|f| f.shape.first().copied()).unwrap_or(1).max(1);
    facts
        .iter()
        .filter(|f| f.shape.first() == Some(&rows))
        .map(|f| crate::model::tensor::elem_size(f.elem_type).unwrap_or(4) * f.shape[1..].iter().product::<usize>())
        .sum()
}

/// Input bytes per chunk of reconstruction's calibration passes. tract's time per sample grows
/// with the chunk once its activations leave the cache: on the 113 MB encoder (196 KB per
/// sample) a chunk of 8 samples ran at 90 ms per sample, one of 103 at 150 ms.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Cores to run chunks on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(1)
}

/// Rows per chunk for inputs `facts` (samples on axis 0 of the first): about [`CHUNK_BYTES`] of
/// input, at most ⌈rows / cores⌉ (every core busy) and [`MAX_CHUNK`], balanced so that the last
/// chunk is not mostly padding. Results do not depend on it: tract computes each sample alike in
/// any batch.
pub fn chunk_rows(facts: &[InputFact], cores: usize) -> usize {
    let rows = facts.first().and_then(|f| f.shape.first().copied()).unwrap_or(1).max(1);
    let chunk = (CHUNK_BYTES / row_bytes(facts).max(1)).clamp(1, MAX_CHUNK).min(rows.div_ceil(cores.max(1)));
    rows.div_ceil(rows.div_ceil(chunk))
}
