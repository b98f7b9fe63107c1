//! A float32 copy of a float16/bfloat16 model, for running it on calibration data in tract.
//!
//! Why: tract 0.23 has no half-precision matmul kernels on x86; it runs them with a generic
//! scalar kernel that converts every element, and reconstructing a float16 Fashion-MNIST ResNet
//! from 256 calibration samples ran for over 14 minutes (its float32 original: about 5 s). The
//! statistics reconstruction needs (activations, Gram matrices, outputs to compare) do not need
//! half-precision arithmetic: computed in float32 they differ from the half-precision run by its
//! rounding only, and the weights written back keep the model's own type.
//!
//! Contract: [`promote`] rewrites, in place, every float16/bfloat16 initializer, constant
//! (`Constant`, `ConstantOfShape`, any tensor attribute, in subgraphs too), `Cast`/`CastLike`
//! target and declared value type to float32; values are converted exactly (every half-precision
//! value is a float32). It returns whether anything changed. Inputs declared half-precision then
//! take float32 data ([`promote_inputs`]). What is not a half-precision float is left as it was.

use super::tensor::{dt, read_f32};
use crate::check::inputs::{InputData, Inputs};
use anyhow::Result;
use onnx_protobuf::{attribute_proto::AttributeType, GraphProto, ModelProto, TensorProto, TypeProto};

/// A half-precision float type (float16, bfloat16).
pub fn half(t: i32) -> bool {
    t == dt::FLOAT16 || t == dt::BFLOAT16
}

fn tensor(t: &mut TensorProto) -> Result<bool> {
    if !half(t.data_type) {
        return Ok(false);
    }
    let v = read_f32(t)?;
    t.data_type = dt::FLOAT;
    t.int32_data.clear();
    t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    Ok(true)
}

fn type_proto(tp: &mut TypeProto) -> bool {
    use onnx_protobuf::type_proto::Value;
    match tp.value.as_mut() {
        Some(Value::TensorType(t)) if half(t.elem_type) => {
            t.elem_type = dt::FLOAT;
            true
        }
        Some(Value::SequenceType(s)) => s.elem_type.as_mut().is_some_and(type_proto),
        Some(Value::OptionalType(o)) => o.elem_type.as_mut().is_some_and(type_proto),
        _ => false,
    }
}

fn graph(g: &mut GraphProto) -> Result<bool> {
    let mut changed = false;
    for t in g.initializer.iter_mut() {
        changed |= tensor(t)?;
    }
    for v in g.input.iter_mut().chain(g.output.iter_mut()).chain(g.value_info.iter_mut()) {
        if let Some(tp) = v.type_.as_mut() {
            changed |= type_proto(tp);
        }
    }
    for n in g.node.iter_mut() {
        for a in n.attribute.iter_mut() {
            if a.name == "to" && n.op_type == "Cast" && half(a.i as i32) {
                a.i = dt::FLOAT as i64;
                changed = true;
            }
            if let Some(t) = a.t.as_mut() {
                changed |= tensor(t)?;
            }
            for t in a.tensors.iter_mut() {
                changed |= tensor(t)?;
            }
            if let Some(sub) = a.g.as_mut() {
                changed |= graph(sub)?;
            }
            for sub in a.graphs.iter_mut() {
                changed |= graph(sub)?;
            }
            // A `dtype` attribute naming a half type (RandomNormal, EyeLike, ...).
            if a.name == "dtype" && a.type_.enum_value() == Ok(AttributeType::INT) && half(a.i as i32) {
                a.i = dt::FLOAT as i64;
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// Rewrite `m`'s half-precision floats to float32 (see the module doc); true when any changed.
pub fn promote(m: &mut ModelProto) -> Result<bool> {
    match m.graph.as_mut() {
        Some(g) => graph(g),
        None => Ok(false),
    }
}

/// `inputs` with float16 data as float32 (exact), for a model [`promote`] changed.
pub fn promote_inputs(inputs: &Inputs) -> Inputs {
    let mut out = inputs.clone();
    for i in out.inputs.iter_mut() {
        if let InputData::F16(a) = &*i.data {
            i.data = InputData::F32(a.mapv(|v| v.to_f32())).into();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Half values become the same float32 values, in raw and int32 storage; other tensors and
    /// casts to other types are left alone.
    #[test]
    fn half_tensors_and_casts_become_float32_exactly() {
        let vals = [1.5f32, -0.25, 65504.0, 0.0];
        let h = |x: f32| half::f16::from_f32(x);
        let mut m = ModelProto::new();
        let mut g = GraphProto::new();
        let mut raw = TensorProto::new();
        raw.name = "raw".into();
        raw.data_type = dt::FLOAT16;
        raw.dims = vec![4];
        raw.raw_data = vals.iter().flat_map(|&x| h(x).to_le_bytes()).collect();
        let mut i32s = raw.clone();
        i32s.name = "i32".into();
        i32s.raw_data.clear();
        i32s.int32_data = vals.iter().map(|&x| h(x).to_bits() as i32).collect();
        let mut ints = TensorProto::new();
        ints.name = "ints".into();
        ints.data_type = dt::INT64;
        ints.raw_data = 7i64.to_le_bytes().to_vec();
        g.initializer = vec![raw, i32s, ints.clone()];
        let cast = |to: i32| {
            let mut n = onnx_protobuf::NodeProto::new();
            n.op_type = "Cast".into();
            let mut a = onnx_protobuf::AttributeProto::new();
            a.name = "to".into();
            a.i = to as i64;
            a.type_ = AttributeType::INT.into();
            n.attribute.push(a);
            n
        };
        g.node = vec![cast(dt::FLOAT16), cast(dt::INT64)];
        m.graph = Some(g).into();
        assert!(promote(&mut m).unwrap());
        let g = m.graph.as_ref().unwrap();
        for t in &g.initializer[..2] {
            assert_eq!(t.data_type, dt::FLOAT);
            assert_eq!(read_f32(t).unwrap(), vals);
        }
        assert_eq!(g.initializer[2], ints);
        assert_eq!(g.node[0].attribute[0].i, dt::FLOAT as i64);
        assert_eq!(g.node[1].attribute[0].i, dt::INT64 as i64);
        // Nothing half left: a second pass changes nothing.
        assert!(!promote(&mut m).unwrap());
    }
}
