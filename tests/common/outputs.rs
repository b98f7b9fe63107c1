//! Test models built from others or by a Python script: shared by tests/check.rs and tests/cli.rs.

use onnx_protobuf::{AttributeProto, ModelProto, NodeProto};
use std::path::Path;

/// Adds output "cls": the ArgMax over axis 1 of the model's first output, int64, declared as
/// that output without its class axis.
pub fn add_argmax_output(m: &mut ModelProto) {
    let g = m.graph.as_mut().unwrap();
    let mut n = NodeProto::new();
    n.op_type = "ArgMax".into();
    n.input.push(g.output[0].name.clone());
    n.output.push("cls".into());
    for (name, v) in [("axis", 1), ("keepdims", 0)] {
        let mut a = AttributeProto::new();
        a.name = name.into();
        a.i = v;
        a.type_ = onnx_protobuf::attribute_proto::AttributeType::INT.into();
        n.attribute.push(a);
    }
    g.node.push(n);
    let mut cls = g.output[0].clone();
    cls.name = "cls".into();
    if let Some(onnx_protobuf::type_proto::Value::TensorType(t)) = cls.type_.as_mut().unwrap().value.as_mut() {
        t.elem_type = onnx_emp::model::tensor::dt::INT64;
        t.shape.as_mut().unwrap().dim.truncate(1);
    }
    g.output.push(cls);
}

/// Runs `script` with python3 and `args` (paths); false, with a note, when python3 with what the
/// script imports (onnx, numpy) is not available.
pub fn python_script(script: &str, args: &[&Path]) -> bool {
    let ok = std::process::Command::new("python3").arg("-c").arg(script).args(args).status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: python3 with onnx is not available");
    }
    ok
}
