//! Test models built from others or by a Python script: shared by tests/check.rs and tests/cli/.

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

/// Writes `model`, a model without a batch axis (input `x [features]`, one feature vector: two
/// MatMuls to `y [4]`), and `x`, 100 such vectors stacked (`[100, features]`, which the model
/// cannot take as a batch). False when python3 with onnx is not available.
pub fn no_batch_axis_model(model: &Path, x: &Path, features: usize) -> bool {
    let script = r#"
import sys
import numpy as np
from onnx import TensorProto, helper, numpy_helper, save
f = int(sys.argv[3])
rng = np.random.default_rng(0)
w1 = numpy_helper.from_array(rng.standard_normal((f, 32)).astype(np.float32), "w1")
w2 = numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "w2")
nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])]
g = helper.make_graph(nodes, "nobatch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [f])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w1, w2])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
save(m, sys.argv[1])
np.save(sys.argv[2], rng.standard_normal((100, f)).astype(np.float32))
"#;
    python_script(script, &[model, x, Path::new(&features.to_string())])
}
