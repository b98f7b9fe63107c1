//! Message builders: tensors, value infos, nodes, attributes and models around a graph, the
//! project's models to start from, and external data.
use super::*;

pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
}

pub fn model_bytes(file: &str) -> Vec<u8> {
    std::fs::read(models_dir().join(file)).unwrap_or_else(|e| panic!("models/{file}: {e}"))
}

pub fn model(file: &str) -> ModelProto {
    ModelProto::parse_from_bytes(&model_bytes(file)).unwrap()
}

pub fn enc(m: &ModelProto) -> Vec<u8> {
    m.write_to_bytes().unwrap()
}

pub(super) fn ev(i: i32) -> protobuf::EnumOrUnknown<onnx_protobuf::attribute_proto::AttributeType> {
    protobuf::EnumOrUnknown::from_i32(i)
}

pub fn f32_tensor(name: &str, dims: &[i64], vals: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 1;
    t.dims = dims.to_vec();
    t.raw_data = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    t
}

pub(super) fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919 % 97) as f32 - 48.0) / 50.0).collect()
}

pub fn tensor_type(elem: i32, dims: &[i64]) -> TypeProto {
    let mut tt = onnx_protobuf::type_proto::Tensor::new();
    tt.elem_type = elem;
    if !dims.is_empty() || elem != 0 {
        let mut sh = onnx_protobuf::TensorShapeProto::new();
        for &d in dims {
            let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
            dim.value = Some(onnx_protobuf::tensor_shape_proto::dimension::Value::DimValue(d));
            sh.dim.push(dim);
        }
        tt.shape = Some(sh).into();
    }
    let mut t = TypeProto::new();
    t.value = Some(onnx_protobuf::type_proto::Value::TensorType(tt));
    t
}

pub fn vi(name: &str, elem: i32, dims: &[i64]) -> ValueInfoProto {
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(tensor_type(elem, dims)).into();
    v
}

/// A value info without a shape (subgraph outputs).
pub fn vi_any(name: &str, elem: i32) -> ValueInfoProto {
    let mut tt = onnx_protobuf::type_proto::Tensor::new();
    tt.elem_type = elem;
    let mut t = TypeProto::new();
    t.value = Some(onnx_protobuf::type_proto::Value::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(t).into();
    v
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n
}

pub fn attr_i(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = ev(2);
    a.i = v;
    a
}

pub fn attr_f(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = ev(1);
    a.f = v;
    a
}

pub fn attr_t(name: &str, t: TensorProto) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = ev(4);
    a.t = Some(t).into();
    a
}

pub fn attr_g(name: &str, g: GraphProto) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = ev(5);
    a.g = Some(g).into();
    a
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = ev(7);
    a.ints = v.to_vec();
    a
}

/// A model around one graph: IR 8, default opset 17.
pub fn wrap(g: GraphProto) -> ModelProto {
    let mut m = ModelProto::new();
    m.ir_version = 8;
    m.producer_name = "onnx-emp corpus".into();
    let mut o = OperatorSetIdProto::new();
    o.version = 17;
    m.opset_import.push(o);
    m.graph = Some(g).into();
    m
}

/// x [1, k] → MatMul(W [k, n]) → y [1, n]
pub fn tiny_matmul(w: TensorProto, k: i64, n: i64) -> ModelProto {
    let mut g = GraphProto::new();
    g.name = "tiny".into();
    g.input.push(vi("x", w.data_type, &[1, k]));
    g.output.push(vi("y", w.data_type, &[1, n]));
    g.node.push(node("MatMul", "mm", &["x", &w.name], &["y"]));
    g.initializer.push(w);
    wrap(g)
}

pub(super) fn gm(m: &mut ModelProto) -> &mut GraphProto {
    m.graph.as_mut().unwrap()
}

pub(super) fn init<'a>(m: &'a mut ModelProto, name: &str) -> &'a mut TensorProto {
    gm(m).initializer.iter_mut().find(|t| t.name == name).unwrap_or_else(|| panic!("no initializer {name}"))
}

pub(super) fn node_mut<'a>(m: &'a mut ModelProto, name: &str) -> &'a mut NodeProto {
    gm(m).node.iter_mut().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
}

pub(super) fn mlp() -> ModelProto {
    model("digits_mlp.onnx")
}

pub(super) fn cnn() -> ModelProto {
    model("digits_cnn.onnx")
}

pub(super) fn kv(k: &str, v: &str) -> StringStringEntryProto {
    let mut e = StringStringEntryProto::new();
    e.key = k.into();
    e.value = v.into();
    e
}

/// Move the raw data of the named initializers into one blob; each gets external_data
/// (location, offset, length). Returns the blob.
pub fn externalize(m: &mut ModelProto, names: &[&str], location: &str) -> Vec<u8> {
    let mut blob = Vec::new();
    for t in gm(m).initializer.iter_mut() {
        if !names.is_empty() && !names.contains(&t.name.as_str()) {
            continue;
        }
        let off = blob.len();
        let data = std::mem::take(&mut t.raw_data);
        blob.extend_from_slice(&data);
        t.data_location = protobuf::EnumOrUnknown::from_i32(1);
        t.external_data =
            vec![kv("location", location), kv("offset", &off.to_string()), kv("length", &data.len().to_string())];
    }
    blob
}

pub(super) fn set_ext(t: &mut TensorProto, key: &str, value: &str) {
    match t.external_data.iter_mut().find(|e| e.key == key) {
        Some(e) => e.value = value.into(),
        None => t.external_data.push(kv(key, value)),
    }
}
