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

/// Ops that compute on integer weights directly (onnxruntime's QOperator format and dynamic
/// quantization), none of which any rule prunes: a layer in this form stays as it is.
const OPERATOR_QUANTIZED: &[&str] = &[
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    // com.microsoft, as onnxruntime's quantizer writes them
    "QGemm",
    "QAttention",
    "QLSTM",
    "DynamicQuantizeLSTM",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QLinearConvTranspose",
];

/// The layers of `g` quantized in operator form, counted by op type (sorted by name).
pub fn operator_quantized(g: &GraphProto) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for n in &g.node {
        let std_or_ms = n.domain.is_empty() || n.domain == "ai.onnx" || n.domain == "com.microsoft";
        if std_or_ms && OPERATOR_QUANTIZED.contains(&n.op_type.as_str()) {
            *counts.entry(n.op_type.as_str()).or_default() += 1;
        }
    }
    counts.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The count as a list ("1 QGemm, 28 QLinearConv").
pub fn operator_list(ops: &[(String, usize)]) -> String {
    ops.iter().map(|(op, n)| format!("{n} {op}")).collect::<Vec<_>>().join(", ")
}

/// What a user with layers quantized in operator form can do instead.
pub const OPERATOR_QUANTIZED_ADVICE: &str = "they compute on integer weights that onnx-emp does not prune. \
     Prune the float model and quantize the pruned one, or quantize in QDQ format (onnxruntime: \
     quantize_static(..., quant_format=QuantFormat.QDQ)), which --structured channels prunes and reconstructs";

/// `n` dequantizes a constant (a QDQ model's weight, whatever its form).
pub fn dequantizes_constant(n: &NodeProto, ix: &GraphIndex) -> bool {
    n.op_type == "DequantizeLinear" && n.input.first().is_some_and(|i| ix.is_constant(i))
}

/// Conv / ConvTranspose / Gemm / MatMul nodes whose weight (input 1) is a constant or the
/// DequantizeLinear of one: the layers some mode could prune.
pub fn weighted_layers(g: &GraphProto, ix: &GraphIndex) -> usize {
    let constant = |name: &str| {
        ix.is_constant(name) || ix.producer.get(name).is_some_and(|&p| dequantizes_constant(&g.node[p], ix))
    };
    g.node
        .iter()
        .filter(|n| {
            (n.domain.is_empty() || n.domain == "ai.onnx")
                && matches!(n.op_type.as_str(), "Conv" | "ConvTranspose" | "Gemm" | "MatMul")
                && n.input.get(1).is_some_and(|w| constant(w))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::NodeProto;

    fn node(op: &str, domain: &str) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.domain = domain.into();
        n
    }

    #[test]
    fn operator_quantized_layers_are_counted_by_op() {
        let mut g = GraphProto::new();
        for (op, d) in
            [("QLinearConv", ""), ("QLinearConv", ""), ("QGemm", "com.microsoft"), ("Relu", ""), ("QGemm", "x")]
        {
            g.node.push(node(op, d));
        }
        let ops = operator_quantized(&g);
        assert_eq!(ops, vec![("QGemm".to_string(), 1), ("QLinearConv".to_string(), 2)]);
        assert_eq!(operator_list(&ops), "1 QGemm, 2 QLinearConv");
        assert_eq!(weighted_layers(&g, &GraphIndex::build(&g).unwrap()), 0);
    }
}
