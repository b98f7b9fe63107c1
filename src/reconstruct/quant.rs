//! Quantized (QDQ) layers in reconstruction: a Conv / Gemm / MatMul whose weight is
//! `DequantizeLinear(W_q, s)` of an int8 initializer with zero points 0 (onnxruntime's
//! `quantize_static` writes weights so), and whose bias, if any, is a float constant or
//! `DequantizeLinear(b_q, s_b)` of an int32 one.
//!
//! Contract: the refit reads such a weight dequantized (W = W_q · s, per output unit or per
//! tensor) and writes it back quantized the way the quantizer does, symmetric int8: each output
//! unit's (or the tensor's) scale becomes max|W| / 127 and W_q = round(W / s) clamped to int8.
//! An int32 bias keeps its float value: its scale follows the weight's (s_b' = s_b · s' / s, the
//! quantizer's s_b = s_x · s), its integers are rounded again. Only tensors that nothing else
//! reads are written (checked when the site is found), so the masked and the pruned model, each
//! written with the same values, stay equal.

use crate::model::graph::GraphIndex;
use crate::model::qdq::{symmetric_dq, DqParts};
use crate::model::tensor::{self, dt};
use anyhow::{bail, Context, Result};
use onnx_protobuf::GraphProto;

/// The note of a refitted layer whose weight was written back quantized.
pub const REQUANTIZED: &str = "int8 weight requantized on new scales";

/// A quantized weight (and bias) of one site.
#[derive(Clone, Debug, PartialEq)]
pub struct Quant {
    /// The int8 weight initializer (DequantizeLinear input 0).
    pub int: String,
    /// Its scale initializer: one value, or one per output unit along `axis`.
    pub scale: String,
    /// The weight tensor's output-unit axis.
    pub axis: usize,
    /// An int32 bias: its initializer and its scale initializer (one per output unit, or one).
    pub bias: Option<(String, String)>,
}

/// `name` is the output of a DequantizeLinear that can be written
/// ([`crate::model::qdq::symmetric_dq`]) and that only one node reads, or why it cannot be written.
fn dq_parts<'a>(g: &'a GraphProto, ix: &GraphIndex, name: &str) -> Option<std::result::Result<DqParts<'a>, String>> {
    let &p = ix.producer.get(name)?;
    let n = &g.node[p];
    if n.op_type != "DequantizeLinear" || !(n.domain.is_empty() || n.domain == "ai.onnx") {
        return None;
    }
    let parts = symmetric_dq(g, ix, n).and_then(|parts| {
        if ix.consumers_of(name).len() != 1 {
            return Err("the dequantized tensor is shared".into());
        }
        Ok(parts)
    });
    Some(parts)
}

/// The quantized weight behind `weight` and the int tensor's dims: None when `weight` is not a
/// DequantizeLinear output, Err when it is one that reconstruction cannot write.
pub fn weight(
    g: &GraphProto,
    ix: &GraphIndex,
    weight: &str,
) -> Option<std::result::Result<(Quant, Vec<usize>), String>> {
    let r = dq_parts(g, ix, weight)?.and_then(|p| {
        let t = ix.weight(g, p.int).ok_or("not a constant")?;
        if t.data_type != dt::INT8 {
            return Err(format!("{} weights (int8 only)", tensor::dtype_name(t.data_type)));
        }
        let q = Quant { int: p.int.into(), scale: p.scale.into(), axis: p.axis.unwrap_or(0), bias: None };
        Ok((q, p.dims))
    });
    Some(r.map_err(|e| format!("quantized weight: {e}")))
}

/// A bias `name` of `len` values that is `DequantizeLinear(int32, scale)`: its initializer and
/// scale, when the scale has one value per weight scale value (so that it can follow them).
pub fn bias(g: &GraphProto, ix: &GraphIndex, name: &str, len: usize, q: &Quant) -> Option<(String, String)> {
    let DqParts { int, scale, .. } = dq_parts(g, ix, name)?.ok()?;
    let t = ix.weight(g, int)?;
    let ws = tensor::numel(ix.weight(g, &q.scale)?).ok()?;
    let bs = tensor::numel(ix.weight(g, scale)?).ok()?;
    (t.data_type == dt::INT32 && tensor::shape(t).ok()? == vec![len] && bs == ws).then(|| (int.into(), scale.into()))
}

/// Output unit of each element of a tensor of `dims` along `axis`.
fn unit_of(dims: &[usize], axis: usize) -> impl Fn(usize) -> usize {
    let inner: usize = dims[axis + 1..].iter().product();
    let dim = dims[axis].max(1);
    move |i| (i / inner.max(1)) % dim
}

fn floats(g: &GraphProto, ix: &GraphIndex, name: &str) -> Result<Vec<f64>> {
    tensor::read_f64(ix.weight(g, name).with_context(|| format!("'{name}'"))?)
}

/// The weight dequantized, in the int tensor's own element order.
pub fn read(g: &GraphProto, q: &Quant) -> Result<Vec<f64>> {
    let ix = GraphIndex::build(g)?;
    let t = ix.weight(g, &q.int).with_context(|| format!("weight '{}'", q.int))?;
    let dims = tensor::shape(t)?;
    let ints = tensor::read_i64(t)?;
    let s = floats(g, &ix, &q.scale)?;
    let unit = unit_of(&dims, q.axis);
    Ok(ints.iter().enumerate().map(|(i, &v)| v as f64 * s[if s.len() == 1 { 0 } else { unit(i) }]).collect())
}

/// The int32 bias dequantized.
pub fn read_bias(g: &GraphProto, (int, scale): &(String, String)) -> Result<Vec<f64>> {
    let ix = GraphIndex::build(g)?;
    let b = tensor::read_i64(ix.weight(g, int).with_context(|| format!("bias '{int}'"))?)?;
    let s = floats(g, &ix, scale)?;
    Ok(b.iter().enumerate().map(|(o, &v)| v as f64 * s[if s.len() == 1 { 0 } else { o }]).collect())
}

// Writes change tensors in place, never names or positions: one index serves every write.
fn write_ints(g: &mut GraphProto, ix: &GraphIndex, name: &str, vals: &[i64]) -> Result<()> {
    let r = *ix.weights.get(name).with_context(|| format!("'{name}'"))?;
    let t = crate::model::graph::weight_mut(g, r).context("tensor vanished")?;
    let dims = t.dims.clone();
    tensor::write_i64(t, vals, &dims)
}

fn write_floats(g: &mut GraphProto, ix: &GraphIndex, name: &str, vals: &[f64]) -> Result<()> {
    let r = *ix.weights.get(name).with_context(|| format!("'{name}'"))?;
    let t = crate::model::graph::weight_mut(g, r).context("tensor vanished")?;
    tensor::write_f64(t, vals)
}

/// Quantize `w` (float values in the int tensor's element order) into the weight: new scales
/// (max|W| / 127 per unit, or per tensor; an all-zero unit keeps its scale), new integers, and
/// the int32 bias re-expressed on the new scales.
pub fn write(g: &mut GraphProto, q: &Quant, w: &[f64]) -> Result<()> {
    let ix = GraphIndex::build(g)?;
    let dims = tensor::shape(ix.weight(g, &q.int).context("weight vanished")?)?;
    let old = floats(g, &ix, &q.scale)?;
    let bias = q.bias.as_ref().map(|b| read_bias(g, b)).transpose()?;
    let unit = unit_of(&dims, q.axis);
    let at = |i: usize| if old.len() == 1 { 0 } else { unit(i) };
    let mut max = vec![0.0f64; old.len()];
    for (i, v) in w.iter().enumerate() {
        if !v.is_finite() {
            bail!("weight '{}': a refitted value is not finite", q.int);
        }
        max[at(i)] = max[at(i)].max(v.abs());
    }
    let new: Vec<f64> = max.iter().zip(&old).map(|(&m, &o)| if m > 0.0 { m / 127.0 } else { o }).collect();
    // An all-zero unit on a zero scale stays all zero (0 / 0 would not be a number).
    let quantize = |v: f64, s: f64| if s > 0.0 { (v / s).round().clamp(-128.0, 127.0) as i64 } else { 0 };
    let ints: Vec<i64> = w.iter().enumerate().map(|(i, v)| quantize(*v, new[at(i)])).collect();
    write_ints(g, &ix, &q.int, &ints)?;
    write_floats(g, &ix, &q.scale, &new)?;
    if let (Some((bint, bscale)), Some(b)) = (&q.bias, bias) {
        let bs = floats(g, &ix, bscale)?;
        // A zero (or non-finite) old scale has no ratio to follow: that unit keeps its bias scale.
        let bs: Vec<f64> = bs
            .iter()
            .zip(new.iter().zip(&old))
            .map(|(s, (n, o))| if *o > 0.0 && o.is_finite() { s * n / o } else { *s })
            .collect();
        write_floats(g, &ix, bscale, &bs)?;
        write_bias_on(g, &ix, &(bint.clone(), bscale.clone()), &b)?;
    }
    Ok(())
}

/// Quantize a float bias into the int32 bias on its current scales.
pub fn write_bias(g: &mut GraphProto, bias: &(String, String), vals: &[f64]) -> Result<()> {
    let ix = GraphIndex::build(g)?;
    write_bias_on(g, &ix, bias, vals)
}

fn write_bias_on(g: &mut GraphProto, ix: &GraphIndex, (int, scale): &(String, String), vals: &[f64]) -> Result<()> {
    let s = floats(g, ix, scale)?;
    let ints: Vec<i64> = vals
        .iter()
        .enumerate()
        .map(|(o, v)| {
            let s = s[if s.len() == 1 { 0 } else { o }];
            if s > 0.0 {
                (v / s).round().clamp(i32::MIN as f64, i32::MAX as f64) as i64
            } else {
                0
            }
        })
        .collect();
    write_ints(g, ix, int, &ints)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::tensor_value_info;
    use onnx_protobuf::{NodeProto, TensorProto};

    fn init(name: &str, data_type: i32, dims: &[i64], raw: Vec<u8>) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = data_type;
        t.dims = dims.to_vec();
        t.raw_data = raw;
        t
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.into()];
        n
    }

    /// y = Conv(x, DQ(W_q [2,1,1,2], s [2]), DQ(b_q [2], s_b [2])).
    fn conv() -> GraphProto {
        let mut g = GraphProto::new();
        g.input.push(tensor_value_info("x", 1, &[Some(1), Some(1), Some(1), Some(2)], ""));
        g.output.push(tensor_value_info("y", 1, &[Some(1), Some(2), Some(1), Some(1)], ""));
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        g.initializer.push(init(
            "wq",
            dt::INT8,
            &[2, 1, 1, 2],
            [127i8, -64, 10, -127].iter().map(|&v| v as u8).collect(),
        ));
        g.initializer.push(init("ws", dt::FLOAT, &[2], f32s(&[0.01, 0.02])));
        g.initializer.push(init("bq", dt::INT32, &[2], [1000i32, -500].iter().flat_map(|v| v.to_le_bytes()).collect()));
        g.initializer.push(init("bs", dt::FLOAT, &[2], f32s(&[0.001, 0.002])));
        let mut dq = node("DequantizeLinear", &["wq", "ws"], "w");
        let mut axis = onnx_protobuf::AttributeProto::new();
        axis.name = "axis".into();
        axis.type_ = onnx_protobuf::attribute_proto::AttributeType::INT.into();
        axis.i = 0;
        dq.attribute.push(axis.clone());
        g.node.push(dq);
        // The quantizer writes a per-channel bias with axis 0 (axis 1 would not exist in 1-D).
        let mut bdq = node("DequantizeLinear", &["bq", "bs"], "b");
        bdq.attribute.push(axis);
        g.node.push(bdq);
        g.node.push(node("Conv", &["x", "w", "b"], "y"));
        g
    }

    fn found(g: &GraphProto) -> Quant {
        let ix = GraphIndex::build(g).unwrap();
        let (mut q, dims) = weight(g, &ix, "w").unwrap().unwrap();
        assert_eq!((dims, q.axis), (vec![2, 1, 1, 2], 0));
        q.bias = bias(g, &ix, "b", 2, &q);
        assert_eq!(q.bias, Some(("bq".into(), "bs".into())));
        q
    }

    #[test]
    fn a_quantized_weight_reads_dequantized_and_writes_back_on_new_scales() {
        let mut g = conv();
        let q = found(&g);
        let w = read(&g, &q).unwrap();
        let want = [1.27, -0.64, 0.2, -2.54];
        assert!(w.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{w:?}");
        let b = read_bias(&g, q.bias.as_ref().unwrap()).unwrap();
        assert!((b[0] - 1.0).abs() < 1e-6 && (b[1] + 1.0).abs() < 1e-6, "{b:?}");
        // Refit values: unit 0 grows (its scale must too), unit 1 shrinks.
        let new = [2.54, -1.0, 0.5, -0.25];
        write(&mut g, &q, &new).unwrap();
        let back = read(&g, &q).unwrap();
        for (a, b) in back.iter().zip(new) {
            // Symmetric int8: within half a step of the unit's new scale (max|W| / 127).
            assert!((a - b).abs() <= 0.5 * 2.54 / 127.0 + 1e-9, "{back:?} vs {new:?}");
        }
        let ix = GraphIndex::build(&g).unwrap();
        let s = tensor::read_f64(ix.weight(&g, "ws").unwrap()).unwrap();
        assert!((s[0] - 2.54 / 127.0).abs() < 1e-7 && (s[1] - 0.5 / 127.0).abs() < 1e-7, "{s:?}");
        // The int32 bias keeps its value; its scale followed the weight's.
        let b2 = read_bias(&g, q.bias.as_ref().unwrap()).unwrap();
        assert!((b2[0] - 1.0).abs() < 1e-4 && (b2[1] + 1.0).abs() < 1e-4, "{b2:?}");
        let bs = tensor::read_f64(ix.weight(&g, "bs").unwrap()).unwrap();
        assert!((bs[0] - 0.001 * s[0] / 0.01).abs() < 1e-9 && (bs[1] - 0.002 * s[1] / 0.02).abs() < 1e-9, "{bs:?}");
        // Integers stay int8 and the encoding raw.
        let t = ix.weight(&g, "wq").unwrap();
        assert_eq!((t.data_type, t.raw_data.len()), (dt::INT8, 4));
        assert!(tensor::read_i64(t).unwrap().iter().any(|&v| v == 127 || v == -127));
        write_bias(&mut g, q.bias.as_ref().unwrap(), &[0.5, 0.25]).unwrap();
        let b3 = read_bias(&g, q.bias.as_ref().unwrap()).unwrap();
        assert!((b3[0] - 0.5).abs() < 1e-4 && (b3[1] - 0.25).abs() < 1e-4, "{b3:?}");
    }

    /// Degenerate scales (0) never make a NaN or an infinity: the unit's integers stay 0 and its
    /// bias scale is kept.
    #[test]
    fn a_zero_scale_writes_zeros_not_nans() {
        let mut g = conv();
        let ix = GraphIndex::build(&g).unwrap();
        let r = *ix.weights.get("ws").unwrap();
        let t = crate::model::graph::weight_mut(&mut g, r).unwrap();
        tensor::write_f64(t, &[0.0, 0.02]).unwrap();
        let q = found(&g);
        write(&mut g, &q, &[0.0, 0.0, 0.5, -0.25]).unwrap();
        let ix = GraphIndex::build(&g).unwrap();
        let ints = tensor::read_i64(ix.weight(&g, "wq").unwrap()).unwrap();
        assert_eq!(&ints[..2], &[0, 0]);
        let bs = tensor::read_f64(ix.weight(&g, "bs").unwrap()).unwrap();
        assert!(bs.iter().all(|v| v.is_finite()) && (bs[0] - 0.001).abs() < 1e-9, "{bs:?}");
        let back = read(&g, &q).unwrap();
        assert!(back.iter().all(|v| v.is_finite()), "{back:?}");
    }

    #[test]
    fn shared_or_asymmetric_quantized_tensors_are_refused_with_a_reason() {
        // A scale another node reads too.
        let mut g = conv();
        g.node.push(node("Identity", &["ws"], "ws2"));
        let ix = GraphIndex::build(&g).unwrap();
        assert!(weight(&g, &ix, "w").unwrap().unwrap_err().contains("shared"));
        // Non-zero zero points.
        let mut g = conv();
        g.initializer.push(init("zp", dt::INT8, &[2], vec![0, 3]));
        g.node[0].input.push("zp".into());
        let ix = GraphIndex::build(&g).unwrap();
        assert!(weight(&g, &ix, "w").unwrap().unwrap_err().contains("asymmetric"));
        // Per-channel scales along an axis that is not the weight's (the default axis 1 here).
        let mut g = conv();
        g.node[0].attribute.clear();
        let ix = GraphIndex::build(&g).unwrap();
        assert!(weight(&g, &ix, "w").unwrap().unwrap_err().contains("scale of shape"));
        // Not a DequantizeLinear output: not a quantized weight at all.
        let g = conv();
        let ix = GraphIndex::build(&g).unwrap();
        assert!(weight(&g, &ix, "x").is_none());
    }
}
