//! Small hand-built models for the structural tests: nodes, attributes, value_info, seeded
//! weights, and the prove-and-compare calls on them.
#![allow(dead_code)]

use super::prove::*;
use onnx_emp::model::tensor;
use onnx_emp::prune::StructOptions;
use onnx_protobuf::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
};

pub fn attr_i(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = protobuf::EnumOrUnknown::from_i32(2);
    a.i = v;
    a
}

pub fn attr_f(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = protobuf::EnumOrUnknown::from_i32(1);
    a.f = v;
    a
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = protobuf::EnumOrUnknown::from_i32(7);
    a.ints = v.to_vec();
    a
}

pub fn attr_g(name: &str, g: GraphProto) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = protobuf::EnumOrUnknown::from_i32(5);
    a.g = Some(g).into();
    a
}

pub fn nd(op: &str, name: &str, ins: &[&str], outs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name.into();
    n.input = ins.iter().map(|s| s.to_string()).collect();
    n.output = outs.iter().map(|s| s.to_string()).collect();
    n.attribute = attrs;
    n
}

/// A float value_info of the given rank, every dim unknown.
pub fn vi_rank(name: &str, rank: usize) -> ValueInfoProto {
    let mut v = vi(name, Some(&vec![0; rank]));
    use onnx_protobuf::type_proto::Value as T;
    if let Some(T::TensorType(t)) = v.type_.as_mut().and_then(|t| t.value.as_mut()) {
        t.shape.as_mut().unwrap().dim.iter_mut().for_each(|d| d.value = None);
    }
    v
}

pub fn set_out_rank(m: &mut ModelProto, rank: usize) {
    let g = m.graph.as_mut().unwrap();
    g.output = g.output.iter().map(|o| vi_rank(&o.name, rank)).collect();
}

/// A float tensor value_info; `dims` None = no shape.
pub fn vi(name: &str, dims: Option<&[i64]>) -> ValueInfoProto {
    use onnx_protobuf::tensor_shape_proto::{dimension::Value as D, Dimension};
    use onnx_protobuf::type_proto::{Tensor as TT, Value as T};
    let mut tt = TT::new();
    tt.elem_type = 1;
    if let Some(d) = dims {
        let mut s = onnx_protobuf::TensorShapeProto::new();
        for &v in d {
            let mut dim = Dimension::new();
            dim.value = Some(D::DimValue(v));
            s.dim.push(dim);
        }
        tt.shape = Some(s).into();
    }
    let mut tp = onnx_protobuf::TypeProto::new();
    tp.value = Some(T::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(tp).into();
    v
}

pub fn mk_model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>, x: &[i64], outputs: &[&str]) -> ModelProto {
    let mut g = GraphProto::new();
    g.name = "test".into();
    g.node = nodes;
    g.initializer = inits;
    g.input = vec![vi("x", Some(x))];
    g.output = outputs.iter().map(|o| vi_rank(o, x.len())).collect();
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut op = OperatorSetIdProto::new();
    op.version = 17;
    m.opset_import = vec![op];
    m.graph = Some(g).into();
    m
}

/// Weight [out, rest...]: output row c = scale[c] · (1 + 0.2·noise), so channel norms follow
/// `scale` closely while every entry differs (index mistakes change the function).
pub fn w(name: &str, dims: &[i64], scale: &[f32], seed: u64) -> TensorProto {
    let n: usize = dims.iter().product::<i64>() as usize;
    let per = n / dims[0] as usize;
    let r = randn(n, seed);
    let v: Vec<f32> = (0..n).map(|i| scale[i / per] * (1.0 + 0.2 * r[i])).collect();
    tensor::new_f32(name, dims, &v)
}

pub fn ones(k: usize) -> Vec<f32> {
    vec![1.0; k]
}

pub fn x_input(x: &[i64]) -> Vec<Input> {
    let n: usize = x.iter().product::<i64>() as usize;
    vec![Input::F32(x.iter().map(|&d| d as usize).collect(), randn(n, 99))]
}

pub fn prove_x(m: &ModelProto, x: &[i64], opts: &StructOptions) -> Outcome {
    prune_and_prove(m, opts, &[], &x_input(x))
}

/// Relative difference dense vs pruned (how much compensation matters).
pub fn dense_vs_pruned(o: &Outcome, x: &[i64]) -> f64 {
    let inp = x_input(x);
    rel_err(&tract_run(&o.saved.pruned, &inp).unwrap(), &tract_run(&o.saved.dense, &inp).unwrap())
}
