//! DequantizeLinear of a constant that a rewrite may write: the one predicate the structural
//! analysis (slicing a quantized weight with its scales) and reconstruction (refitting it and
//! writing it back requantized) share.
//!
//! Contract: [`symmetric_dq`] accepts a standard-domain `DequantizeLinear` whose integer input,
//! scale and zero point (if any) are constants that are not graph inputs (so not overridable),
//! each read by this node only and not a graph output; the zero points all 0 and shaped as the
//! scale (symmetric quantization); the scale one value or one per slice along `axis`; no blocked
//! quantization. Anything else is refused with the reason, never guessed at.

use super::graph::{attr_i, GraphIndex};
use super::tensor::{self, dt};
use onnx_protobuf::{GraphProto, NodeProto};

/// The parts of a writable DequantizeLinear.
#[derive(Clone, Debug, PartialEq)]
pub struct DqParts<'a> {
    /// The integer initializer (input 0).
    pub int: &'a str,
    /// Its scale (input 1).
    pub scale: &'a str,
    /// Its zero point (input 2), all zeros.
    pub zero_point: Option<&'a str>,
    /// The integer tensor's dims.
    pub dims: Vec<usize>,
    /// The axis the scale runs along (normalised), None for one scale for the whole tensor.
    pub axis: Option<usize>,
}

fn input(n: &NodeProto, i: usize) -> Option<&str> {
    n.input.get(i).map(|s| s.as_str()).filter(|s| !s.is_empty())
}

/// `n` as a writable DequantizeLinear of a constant, or why it is not one.
pub fn symmetric_dq<'a>(g: &GraphProto, ix: &GraphIndex, n: &'a NodeProto) -> Result<DqParts<'a>, String> {
    if n.op_type != "DequantizeLinear" || !(n.domain.is_empty() || n.domain == "ai.onnx") {
        return Err(format!("{} is not a DequantizeLinear", n.op_type));
    }
    if attr_i(n, "block_size").is_some_and(|b| b != 0) {
        return Err("blocked quantization".into());
    }
    let int = input(n, 0).ok_or("DequantizeLinear without input")?;
    let scale = input(n, 1).ok_or("DequantizeLinear without scale")?;
    let zero_point = input(n, 2);
    let constant =
        |t: &str| ix.weight(g, t).filter(|_| !ix.inputs.contains(t)).ok_or_else(|| format!("'{t}' is not a constant"));
    let it = constant(int)?;
    if !matches!(it.data_type, dt::INT8 | dt::UINT8 | dt::INT16 | dt::UINT16 | dt::INT32) {
        return Err(format!("{} integers", tensor::dtype_name(it.data_type)));
    }
    let dims = tensor::shape(it).map_err(|e| e.to_string())?;
    let sd = tensor::shape(constant(scale)?).map_err(|e| e.to_string())?;
    let axis = if sd.iter().product::<usize>() == 1 {
        None
    } else {
        let r = dims.len() as i64;
        let a = attr_i(n, "axis").unwrap_or(1);
        let a = if a < 0 { a + r } else { a };
        if !(0..r).contains(&a) || sd != [dims[a as usize]] {
            return Err(format!("scale of shape {sd:?} for axis {a} of {dims:?}"));
        }
        Some(a as usize)
    };
    if let Some(z) = zero_point {
        let zt = constant(z)?;
        let zeros = tensor::read_i64(zt).map_err(|e| e.to_string())?.iter().all(|&v| v == 0);
        if !zeros || tensor::shape(zt).map_err(|e| e.to_string())? != sd {
            return Err("asymmetric quantization (non-zero zero points)".into());
        }
    }
    for t in [Some(int), Some(scale), zero_point].into_iter().flatten() {
        if ix.consumers_of(t).len() != 1 || ix.outputs.contains(t) {
            return Err(format!("'{t}' is shared"));
        }
    }
    Ok(DqParts { int, scale, zero_point, dims, axis })
}
