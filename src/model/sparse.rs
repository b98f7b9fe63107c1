//! `--sparse-initializers`: store pruned weights as ONNX `sparse_initializer` so the file shrinks.
//!
//! Contract: every floating-point initializer of the main graph whose sparse form (values +
//! 1-D linearized INT64 indices, as the ONNX spec allows) takes fewer bytes than its dense
//! `raw_data` moves from `graph.initializer` to `graph.sparse_initializer`, with the same name,
//! type, shape and nonzero values (bit for bit: -0.0 is a stored value, only +0.0 is implicit).
//! Everything else is left as it was. Initializers that are also graph inputs (overridable
//! defaults) stay dense, as do tensors held in typed fields rather than `raw_data`.
//!
//! onnxruntime densifies sparse initializers when it loads a model, so the stored model computes
//! exactly what the dense one does. tract 0.23 does not read `sparse_initializer`: verification
//! runs on the dense-stored model and the report says so.

use super::tensor::{self, dt};
use anyhow::{bail, Result};
use onnx_protobuf::{ModelProto, SparseTensorProto, TensorProto};
use std::collections::HashSet;

/// `sparse_initializer` exists from IR version 6 (ONNX 1.6) on.
pub const MIN_IR_VERSION: i64 = 6;

/// Bytes of protobuf framing a sparse tensor costs beyond its payloads (two tensor messages,
/// names, dims); a conversion must save more than this.
const OVERHEAD: u64 = 64;

/// What the conversion did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Sparsified {
    /// Tensors now stored sparse.
    pub tensors: usize,
    /// Their dense payload (raw_data bytes) before.
    pub dense_bytes: u64,
    /// Their values + indices payload after.
    pub sparse_bytes: u64,
    /// Float weights (2-D or more) with enough zeros that sparse_initializer cannot hold: listed
    /// as graph inputs too, or stored as Constant nodes.
    pub inputs_with_zeros: usize,
    pub constants_with_zeros: usize,
}

/// Whether a dense payload has enough zeros for sparse storage to save bytes.
fn worth_it(raw: &[u8], es: usize) -> bool {
    let dense = raw.len() as u64;
    count_nonzero(raw, es) * (es as u64 + 8) + OVERHEAD < dense
}

/// The nonzero elements of a dense little-endian payload: (linear indices, their bytes).
fn nonzeros(raw: &[u8], es: usize) -> (Vec<i64>, Vec<u8>) {
    let mut idx = Vec::new();
    let mut vals = Vec::new();
    for (i, e) in raw.chunks_exact(es).enumerate() {
        if e.iter().any(|&b| b != 0) {
            idx.push(i as i64);
            vals.extend_from_slice(e);
        }
    }
    (idx, vals)
}

fn count_nonzero(raw: &[u8], es: usize) -> u64 {
    raw.chunks_exact(es).filter(|e| e.iter().any(|&b| b != 0)).count() as u64
}

/// Convert the initializers where sparse storage saves bytes. Refuses models whose IR version
/// has no `sparse_initializer`.
pub fn sparsify_initializers(m: &mut ModelProto) -> Result<Sparsified> {
    if m.ir_version < MIN_IR_VERSION {
        bail!(
            "--sparse-initializers: the model's IR version {} has no sparse_initializer (needs ≥ {MIN_IR_VERSION})",
            m.ir_version
        );
    }
    let mut out = Sparsified::default();
    let Some(g) = m.graph.as_mut() else { return Ok(out) };
    let inputs: HashSet<String> = g.input.iter().map(|v| v.name.clone()).collect();
    let mut keep: Vec<TensorProto> = Vec::with_capacity(g.initializer.len());
    for t in std::mem::take(&mut g.initializer) {
        let es = tensor::elem_size(t.data_type).unwrap_or(0);
        let float = matches!(t.data_type, dt::FLOAT | dt::FLOAT16 | dt::BFLOAT16 | dt::DOUBLE);
        let eligible = float
            && es > 0
            && !inputs.contains(&t.name)
            && !t.raw_data.is_empty()
            && t.raw_data.len() % es == 0
            && tensor::numel(&t).is_ok_and(|n| n * es == t.raw_data.len());
        if !eligible {
            if float && es > 0 && t.dims.len() >= 2 && inputs.contains(&t.name) && worth_it(&t.raw_data, es) {
                out.inputs_with_zeros += 1;
            }
            keep.push(t);
            continue;
        }
        let dense = t.raw_data.len() as u64;
        let nnz = count_nonzero(&t.raw_data, es);
        let sparse = nnz * (es as u64 + 8);
        if sparse + OVERHEAD >= dense {
            keep.push(t);
            continue;
        }
        out.tensors += 1;
        out.dense_bytes += dense;
        out.sparse_bytes += sparse;
        g.sparse_initializer.push(to_sparse(&t, es));
    }
    g.initializer = keep;
    for n in g.node.iter().filter(|n| n.op_type == "Constant" && (n.domain.is_empty() || n.domain == "ai.onnx")) {
        for t in n.attribute.iter().filter(|a| a.name == "value").filter_map(|a| a.t.as_ref()) {
            let es = tensor::elem_size(t.data_type).unwrap_or(0);
            let float = matches!(t.data_type, dt::FLOAT | dt::FLOAT16 | dt::BFLOAT16 | dt::DOUBLE);
            if float && es > 0 && t.dims.len() >= 2 && worth_it(&t.raw_data, es) {
                out.constants_with_zeros += 1;
            }
        }
    }
    Ok(out)
}

/// `t` (dense, in `raw_data`, elements of `es` bytes) as values + 1-D linearized INT64 indices.
fn to_sparse(t: &TensorProto, es: usize) -> SparseTensorProto {
    let (idx, vals) = nonzeros(&t.raw_data, es);
    let mut values = TensorProto::new();
    values.name = t.name.clone();
    values.data_type = t.data_type;
    values.dims = vec![idx.len() as i64];
    values.raw_data = vals;
    values.doc_string = t.doc_string.clone();
    values.metadata_props = t.metadata_props.clone();
    let mut indices = TensorProto::new();
    // Same name as the values: external data placement goes by tensor name.
    indices.name = t.name.clone();
    indices.data_type = dt::INT64;
    indices.dims = vec![idx.len() as i64];
    indices.raw_data = idx.iter().flat_map(|i| i.to_le_bytes()).collect();
    let mut s = SparseTensorProto::new();
    s.dims = t.dims.clone();
    s.values = Some(values).into();
    s.indices = Some(indices).into();
    s
}

/// The names of the main graph's sparse initializers, in order (what [`restore_sparse`] takes).
pub fn sparse_names(m: &ModelProto) -> Vec<String> {
    let Some(g) = m.graph.as_ref() else { return vec![] };
    g.sparse_initializer.iter().filter_map(|s| s.values.as_ref().map(|v| v.name.clone())).collect()
}

/// Store the initializers named `names` sparse again, in that order, whatever their density: a
/// model read with sparse initializers is pruned and verified dense, and is written back as it
/// came (lossless I/O). Only tensors whose data is in `raw_data` (the pass writes it there) and
/// that no graph input lists move. Returns how many did.
pub fn restore_sparse(m: &mut ModelProto, names: &[String]) -> usize {
    let Some(g) = m.graph.as_mut() else { return 0 };
    let inputs: HashSet<&str> = g.input.iter().map(|v| v.name.as_str()).collect();
    let movable = |t: &TensorProto| {
        let es = tensor::elem_size(t.data_type).unwrap_or(0);
        es > 0
            && !t.raw_data.is_empty()
            && tensor::numel(t).is_ok_and(|n| n * es == t.raw_data.len())
            && !inputs.contains(t.name.as_str())
    };
    let wanted: HashSet<&str> = names.iter().map(|s| s.as_str()).collect();
    let (moved, kept): (Vec<TensorProto>, Vec<TensorProto>) =
        std::mem::take(&mut g.initializer).into_iter().partition(|t| wanted.contains(t.name.as_str()) && movable(t));
    g.initializer = kept;
    // In the input's order.
    let mut out: Vec<SparseTensorProto> = Vec::with_capacity(moved.len());
    for name in names {
        if let Some(t) = moved.iter().find(|t| &t.name == name) {
            out.push(to_sparse(t, tensor::elem_size(t.data_type).unwrap_or(1)));
        }
    }
    let n = out.len();
    g.sparse_initializer.extend(out);
    n
}

/// The dense form of every sparse initializer of the main graph (for engines that cannot read
/// them, and for analysis): back into `graph.initializer`, in order. Returns how many there were.
pub fn densify_initializers(m: &mut ModelProto) -> Result<usize> {
    let Some(g) = m.graph.as_mut() else { return Ok(0) };
    let n = g.sparse_initializer.len();
    for s in std::mem::take(&mut g.sparse_initializer) {
        g.initializer.push(densify(&s)?);
    }
    Ok(n)
}

/// A sparse tensor as a dense tensor (1-D linearized or 2-D [nnz, rank] INT64 indices).
pub fn densify(s: &SparseTensorProto) -> Result<TensorProto> {
    let (Some(v), Some(ix)) = (s.values.as_ref(), s.indices.as_ref()) else {
        bail!("sparse tensor without values or indices")
    };
    let es = tensor::elem_size(v.data_type)
        .filter(|_| !v.raw_data.is_empty() || tensor::numel(v).is_ok_and(|n| n == 0))
        .ok_or_else(|| anyhow::anyhow!("sparse tensor '{}': values must be stored in raw_data", v.name))?;
    let mut dense = TensorProto::new();
    dense.name = v.name.clone();
    dense.data_type = v.data_type;
    dense.dims = s.dims.clone();
    dense.doc_string = v.doc_string.clone();
    dense.metadata_props = v.metadata_props.clone();
    let n = tensor::numel(&dense)?;
    let nnz = tensor::numel(v)?;
    if v.raw_data.len() != nnz * es {
        bail!("sparse tensor '{}': {} value bytes for {nnz} values", v.name, v.raw_data.len());
    }
    let idx = tensor::read_i64(ix)?;
    let rank = s.dims.len();
    let linear: Vec<u64> = if ix.dims.len() == 1 && idx.len() == nnz {
        idx.iter().map(|&i| if i < 0 { u64::MAX } else { i as u64 }).collect()
    } else if ix.dims.len() == 2 && rank > 0 && idx.len() == nnz * rank {
        idx.chunks_exact(rank)
            .map(|c| {
                let mut lin = 0u64;
                for (&i, &d) in c.iter().zip(&s.dims) {
                    if i < 0 || i >= d {
                        return u64::MAX;
                    }
                    lin = lin * d as u64 + i as u64;
                }
                lin
            })
            .collect()
    } else {
        bail!("sparse tensor '{}': indices of shape {:?} for {nnz} values of rank {rank}", v.name, ix.dims);
    };
    let mut raw = vec![0u8; n * es];
    for (k, &i) in linear.iter().enumerate() {
        if i >= n as u64 {
            bail!("sparse tensor '{}': index #{k} out of range for shape {:?}", v.name, s.dims);
        }
        let i = i as usize;
        raw[i * es..(i + 1) * es].copy_from_slice(&v.raw_data[k * es..(k + 1) * es]);
    }
    dense.raw_data = raw;
    Ok(dense)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model(vals: &[f32], dims: &[i64]) -> ModelProto {
        let mut m = ModelProto::new();
        m.ir_version = 8;
        let g = m.graph.mut_or_insert_default();
        let mut t = TensorProto::new();
        t.name = "w".into();
        t.data_type = dt::FLOAT;
        t.dims = dims.to_vec();
        t.raw_data = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        g.initializer.push(t);
        m
    }

    proptest! {
        #[test]
        fn sparse_then_dense_is_the_identity(
            vals in proptest::collection::vec(prop_oneof![3 => Just(0.0f32), 1 => -1e3f32..1e3, 1 => Just(-0.0f32)], 1..400)
        ) {
            let dims = [vals.len() as i64];
            let m0 = model(&vals, &dims);
            let mut m = m0.clone();
            let s = sparsify_initializers(&mut m).unwrap();
            let g = m.graph.as_ref().unwrap();
            prop_assert_eq!(s.tensors + g.initializer.len(), 1);
            if s.tensors == 1 {
                prop_assert!(s.sparse_bytes < s.dense_bytes);
            }
            densify_initializers(&mut m).unwrap();
            prop_assert!(m == m0);
        }
    }

    #[test]
    fn a_mostly_zero_weight_is_stored_sparse_and_a_dense_one_is_not() {
        let mut vals = vec![0.0f32; 1000];
        vals[7] = 1.5;
        vals[999] = -2.0;
        let mut m = model(&vals, &[10, 100]);
        let s = sparsify_initializers(&mut m).unwrap();
        assert_eq!(s, Sparsified { tensors: 1, dense_bytes: 4000, sparse_bytes: 24, ..Default::default() });
        let g = m.graph.as_ref().unwrap();
        let st = &g.sparse_initializer[0];
        assert_eq!(st.dims, vec![10, 100]);
        assert_eq!(tensor::read_i64(st.indices.as_ref().unwrap()).unwrap(), vec![7, 999]);
        let mut d = model(&[1.0; 1000], &[1000]);
        assert_eq!(sparsify_initializers(&mut d).unwrap().tensors, 0);
        let mut old = model(&vals, &[1000]);
        old.ir_version = 5;
        assert!(sparsify_initializers(&mut old).unwrap_err().to_string().contains("IR version 5"));
    }

    #[test]
    fn two_d_coordinates_densify_like_linear_indices() {
        let mut s = SparseTensorProto::new();
        s.dims = vec![2, 3];
        let mut v = TensorProto::new();
        v.name = "w".into();
        v.data_type = dt::FLOAT;
        v.dims = vec![2];
        v.raw_data = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut ix = TensorProto::new();
        ix.data_type = dt::INT64;
        ix.dims = vec![2, 2];
        ix.raw_data = [0i64, 1, 1, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
        s.values = Some(v).into();
        s.indices = Some(ix).into();
        let d = densify(&s).unwrap();
        assert_eq!(tensor::read_f32(&d).unwrap(), vec![0.0, 1.0, 0.0, 0.0, 0.0, 2.0]);
    }
}
