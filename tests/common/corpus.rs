//! A corpus of broken, hostile and tricky-but-valid ONNX models, built in code from the
//! project's models (`models/*.onnx`) or from hand-made messages and raw bytes.
//!
//! Each [`Case`] is a folder: `model.onnx` plus any files the case needs (external data,
//! symlinks, a named pipe). [`write_case`] lays it out under a parent folder which also holds
//! [`OUTSIDE`], a file that hostile external-data locations point to: nothing may read it.
//!
//! Used by `tests/robustness.rs` (in process) and `examples/make_corpus.rs` (writes the folders,
//! for CLI tests). `Expect::Valid` means a valid ONNX model that must be processed; `tract`
//! says whether running it in tract is also expected to work cheaply.
#![allow(dead_code)]

use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, SparseTensorProto,
    StringStringEntryProto, TensorProto, TypeProto, ValueInfoProto,
};
use std::path::{Path, PathBuf};

/// Name of the model file in each case folder.
pub const MODEL: &str = "model.onnx";
/// Bait file in the parent folder of every case: hostile locations point here.
pub const OUTSIDE: &str = "outside.bin";
/// In an external-data location, replaced by the absolute path of [`OUTSIDE`] when written.
pub const OUTSIDE_ABS: &str = "@@OUTSIDE_ABS@@";

#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    /// A valid model: load, index and every prune run must succeed and yield a good model.
    Valid,
    /// Must be refused with a one-line error containing this text (a file, tensor or node name,
    /// or the reason).
    Error(&'static str),
}

#[derive(Clone, Debug)]
pub enum Extra {
    File(String, Vec<u8>),
    Dir(String),
    /// symlink at `.0` pointing to `.1` (relative targets are relative to the link's folder)
    Symlink(String, String),
    /// a named pipe: opening it for reading blocks until a writer comes
    Fifo(String),
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub category: &'static str,
    pub what: &'static str,
    pub model: Vec<u8>,
    pub extra: Vec<Extra>,
    pub expect: Expect,
    /// For `Valid` cases: tract is expected to run the model cheaply too (the CLI's check).
    pub tract: bool,
}

// ---------------------------------------------------------------------------------------------
// Message builders

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

fn ev(i: i32) -> protobuf::EnumOrUnknown<onnx_protobuf::attribute_proto::AttributeType> {
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

fn ramp(n: usize) -> Vec<f32> {
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

fn gm(m: &mut ModelProto) -> &mut GraphProto {
    m.graph.as_mut().unwrap()
}

fn init<'a>(m: &'a mut ModelProto, name: &str) -> &'a mut TensorProto {
    gm(m).initializer.iter_mut().find(|t| t.name == name).unwrap_or_else(|| panic!("no initializer {name}"))
}

fn node_mut<'a>(m: &'a mut ModelProto, name: &str) -> &'a mut NodeProto {
    gm(m).node.iter_mut().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
}

fn mlp() -> ModelProto {
    model("digits_mlp.onnx")
}

fn cnn() -> ModelProto {
    model("digits_cnn.onnx")
}

fn kv(k: &str, v: &str) -> StringStringEntryProto {
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

fn set_ext(t: &mut TensorProto, key: &str, value: &str) {
    match t.external_data.iter_mut().find(|e| e.key == key) {
        Some(e) => e.value = value.into(),
        None => t.external_data.push(kv(key, value)),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw protobuf bytes

pub fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
pub fn ld(field: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(((field << 3) | 2) as u64, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

pub fn vfield(field: u32, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint((field << 3) as u64, &mut out);
    varint(v, &mut out);
    out
}

fn xorshift(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `If(cond)` nested `depth` levels in `then_branch`; the innermost branch returns the outer
/// value `outer`. Every `else_branch` returns it directly.
fn if_chain(depth: usize, outer: &str, out: &str) -> NodeProto {
    let branch = |tag: &str, inner: Option<NodeProto>| {
        let mut g = GraphProto::new();
        g.name = format!("{out}_{tag}");
        let o = format!("{out}_{tag}_out");
        match inner {
            Some(mut n) => {
                n.output = vec![o.clone()];
                g.node.push(n);
            }
            None => g.node.push(node("Identity", &format!("{out}_{tag}_id"), &[outer], &[&o])),
        }
        g.output.push(vi_any(&o, 1));
        g
    };
    let inner = if depth > 1 { Some(if_chain(depth - 1, outer, &format!("{out}_d{}", depth - 1))) } else { None };
    let mut n = node("If", &format!("{out}_if"), &["cond"], &[out]);
    n.attribute.push(attr_g("then_branch", branch("then", inner)));
    n.attribute.push(attr_g("else_branch", branch("else", None)));
    n
}

fn bool_scalar(name: &str, v: bool) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 9;
    t.raw_data = vec![v as u8];
    t
}

/// A 1-D int64 tensor in raw_data.
fn i64_vec(name: &str, v: &[i64]) -> TensorProto {
    let mut t = i64_scalar(name, 0);
    t.dims = vec![v.len() as i64];
    t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    t
}

fn i64_scalar(name: &str, v: i64) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 7;
    t.raw_data = v.to_le_bytes().to_vec();
    t
}

/// mlp plus an If node nested `depth` levels that returns an outer value as an extra output.
fn mlp_with_if(depth: usize) -> ModelProto {
    let mut m = mlp();
    let g = gm(&mut m);
    g.initializer.push(bool_scalar("cond", true));
    g.node.push(if_chain(depth, "/Relu_1_output_0", "if_out"));
    g.output.push(vi_any("if_out", 1));
    m
}

// ---------------------------------------------------------------------------------------------
// The corpus

fn case(name: &'static str, category: &'static str, what: &'static str, model: Vec<u8>, expect: Expect) -> Case {
    Case { name, category, what, model, extra: vec![], expect, tract: true }
}

fn err(s: &'static str) -> Expect {
    Expect::Error(s)
}

pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    bytes_cases(&mut v);
    tensor_cases(&mut v);
    graph_cases(&mut v);
    attribute_cases(&mut v);
    external_cases(&mut v);
    valid_cases(&mut v);
    v
}

fn bytes_cases(v: &mut Vec<Case>) {
    let b = model_bytes("digits_mlp.onnx");
    let c = "bytes";
    for (name, cut) in [
        ("truncated_1", 1usize),
        ("truncated_16", 16),
        ("truncated_1000", 1000),
        ("truncated_half", b.len() / 2),
        ("truncated_last_byte", b.len() - 1),
    ] {
        v.push(case(name, c, "the mlp's bytes cut short", b[..cut].to_vec(), err("")));
    }
    v.push(case("empty_file", c, "zero bytes", vec![], err("empty")));
    v.push(case("garbage_random", c, "4 KiB of pseudo-random bytes", xorshift(0x9e3779b97f4a7c15, 4096), err("")));
    v.push(case("garbage_zeros", c, "1 KiB of zero bytes (tag 0)", vec![0; 1024], err("protobuf")));
    v.push(case("text_file", c, "a text file", b"ir_version: 8\ngraph { }\n".to_vec(), err("")));
    // ir_version sent as a length-delimited field: kept as an unknown field, ir_version is 0.
    let mut w = ld(1, b"8");
    w.extend_from_slice(&b[2..]);
    v.push(case("wire_type_ir_version_bytes", c, "ir_version with wire type 2", w, err("ir_version")));
    // the graph field (7) as a varint: unknown field, no graph.
    let mut w = vfield(1, 8);
    w.extend(vfield(7, 1));
    v.push(case("wire_type_graph_varint", c, "the graph field as a varint", w, err("no graph")));
    let mut w = vfield(1, 8);
    w.extend_from_slice(&[0x3e, 0x01]); // field 7, wire type 6
    v.push(case("wire_type_6", c, "an undefined wire type", w, err("wire type")));
    // A million nested start-group tags: protobuf 3.4 recursed once per tag (stack overflow).
    let mut w = vfield(1, 8);
    w.extend(std::iter::repeat_n(0x0bu8, 1 << 20));
    v.push(case("nested_groups_1m", c, "a million nested protobuf groups", w, err("group")));
    // A balanced group inside a node of an otherwise fine graph.
    let mut n = enc_node(&node("Relu", "r", &["x"], &["y"]));
    n.extend_from_slice(&[0x53, 0x08, 0x01, 0x54]); // field 10 start group { field 1 = 1 } end
    let g = [ld(1, &n), ld(11, &enc_vi(&vi("x", 1, &[1]))), ld(12, &enc_vi(&vi("y", 1, &[1])))].concat();
    let mut w = vfield(1, 8);
    w.extend(ld(7, &g));
    w.extend(ld(8, &vfield(2, 17)));
    v.push(case("group_in_node", c, "a protobuf group among a node's fields", w, err("group")));
    v.push(case(
        "deep_nesting_over_limit",
        c,
        "If subgraphs nested 40 deep (> protobuf's 100 messages)",
        enc(&mlp_with_if(40)),
        err("nested deeper"),
    ));
    // 4 M empty nodes: 8 MiB of input that would decode to ~1 GiB of NodeProto structs.
    let mut g = Vec::with_capacity(8 << 20);
    for _ in 0..(4 << 20) {
        g.extend_from_slice(&[0x0a, 0x00]);
    }
    let mut w = vfield(1, 8);
    w.extend(ld(7, &g));
    v.push(case("four_million_empty_nodes", c, "8 MiB of empty node messages", w, err("refusing to decode")));
    let mut w = vfield(1, 8);
    w.extend(ld(7, &ld(1, &[0x22, 0xff, 0xff, 0xff, 0xff, 0x0f])));
    // Found by the fuzz smoke test: names with newlines made error messages span lines.
    let mut m = mlp();
    gm(&mut m).name = "main\nFAKE: second line".into();
    let t = init(&mut m, "fc1.bias").clone();
    gm(&mut m).initializer.push(t);
    v.push(case(
        "newline_in_graph_name",
        c,
        "a graph name with a newline (and a duplicate)",
        enc(&m),
        err("control characters"),
    ));
    let mut m = mlp();
    gm(&mut m).name = "\n\u{c}\u{8}".into();
    gm(&mut m).node.clear();
    v.push(case(
        "newline_in_empty_graph_name",
        c,
        "an empty graph whose name has control characters",
        enc(&m),
        err("empty"),
    ));
    let mut m = mlp();
    node_mut(&mut m, "/Relu").output[0] = "r\u{0}".into();
    node_mut(&mut m, "/fc2/Gemm").input[0] = "r\u{0}".into();
    v.push(case("nul_in_value_name", c, "a value name with a NUL", enc(&m), err("control characters")));
    v.push(case("length_past_end", c, "a string whose length runs past the end", w, err("past the end")));
}

fn enc_node(n: &NodeProto) -> Vec<u8> {
    n.write_to_bytes().unwrap()
}

fn enc_vi(x: &ValueInfoProto) -> Vec<u8> {
    x.write_to_bytes().unwrap()
}

fn tensor_cases(v: &mut Vec<Case>) {
    let c = "tensors";
    let with = |f: &dyn Fn(&mut ModelProto)| {
        let mut m = mlp();
        f(&mut m);
        enc(&m)
    };
    v.push(case(
        "raw_data_short",
        c,
        "fc1.weight raw_data 4 bytes short of its dims",
        with(&|m| {
            init(m, "fc1.weight").raw_data.truncate(32768 - 4);
        }),
        err("'fc1.weight'"),
    ));
    v.push(case(
        "raw_data_long",
        c,
        "fc3.bias raw_data longer than its dims",
        with(&|m| {
            init(m, "fc3.bias").raw_data.extend_from_slice(&[0; 8]);
        }),
        err("'fc3.bias'"),
    ));
    v.push(case(
        "dims_2pow40_elements",
        c,
        "fc1.weight dims [2^20, 2^20]",
        with(&|m| {
            init(m, "fc1.weight").dims = vec![1 << 20, 1 << 20];
        }),
        err("too many elements"),
    ));
    v.push(case(
        "dims_2pow62",
        c,
        "fc2.weight dims [2^62]",
        with(&|m| {
            init(m, "fc2.weight").dims = vec![1 << 62];
        }),
        err("too many elements"),
    ));
    v.push(case(
        "dims_overflow_i64",
        c,
        "fc2.weight dims [2^62, 2^62, 16] overflow a u64 product",
        with(&|m| {
            init(m, "fc2.weight").dims = vec![1 << 62, 1 << 62, 16];
        }),
        err("'fc2.weight'"),
    ));
    v.push(case(
        "dims_zero_times_2pow62",
        c,
        "an empty fc1.weight with dims [0, 2^62]",
        with(&|m| {
            let t = init(m, "fc1.weight");
            t.dims = vec![0, 1 << 62];
            t.raw_data.clear();
        }),
        err("too many elements"),
    ));
    v.push(case(
        "dims_negative",
        c,
        "fc1.weight dims [-1, 64]",
        with(&|m| {
            init(m, "fc1.weight").dims = vec![-1, 64];
        }),
        err("negative"),
    ));
    v.push(case(
        "dtype_999",
        c,
        "fc1.weight of data type 999",
        with(&|m| {
            init(m, "fc1.weight").data_type = 999;
        }),
        err("unknown data type 999"),
    ));
    v.push(case(
        "dtype_undefined",
        c,
        "fc3.bias of data type 0",
        with(&|m| {
            init(m, "fc3.bias").data_type = 0;
        }),
        err("'fc3.bias'"),
    ));
    v.push(case(
        "float_data_short",
        c,
        "fc3.weight in float_data, one value missing",
        with(&|m| {
            let t = init(m, "fc3.weight");
            let vals: Vec<f32> =
                t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            t.raw_data.clear();
            t.float_data = vals[..vals.len() - 1].to_vec();
        }),
        err("'fc3.weight'"),
    ));
    v.push(case(
        "no_data",
        c,
        "fc2.bias without any data",
        with(&|m| {
            init(m, "fc2.bias").raw_data.clear();
        }),
        err("'fc2.bias'"),
    ));
    v.push(case(
        "nan_weight",
        c,
        "a NaN in fc2.weight",
        with(&|m| {
            init(m, "fc2.weight").raw_data[20..24].copy_from_slice(&f32::NAN.to_le_bytes());
        }),
        err("'fc2.weight'"),
    ));
    v.push(case(
        "inf_weight",
        c,
        "+Inf in fc1.weight",
        with(&|m| {
            init(m, "fc1.weight").raw_data[0..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
        }),
        err("'fc1.weight'"),
    ));
    let mut w = f32_tensor("W16", &[4, 3], &[]);
    w.data_type = 10;
    w.raw_data = ramp(12).iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
    w.raw_data[6..8].copy_from_slice(&half::f16::NEG_INFINITY.to_le_bytes());
    v.push(case("f16_inf_weight", c, "-Inf in a float16 MatMul weight", enc(&tiny_matmul(w, 4, 3)), err("'W16'")));
    v.push(case(
        "gemm_transb_1d_weight",
        c,
        "Gemm with transB=1 and a 1-D weight",
        with(&|m| {
            init(m, "fc3.weight").dims = vec![640];
        }),
        err("'fc3.weight'"),
    ));
    let mut m = cnn();
    let t = init(&mut m, "stem.0.weight");
    t.data_type = 7;
    t.raw_data = (0..144i64).flat_map(|i| (i - 72).to_le_bytes()).collect();
    v.push(case("conv_weight_int64", c, "Conv weight stored as int64", enc(&m), err("'stem.0.weight'")));
    let mut w = TensorProto::new();
    w.name = "Wstr".into();
    w.data_type = 8;
    w.dims = vec![4, 3];
    w.string_data = (0..12).map(|i| format!("w{i}").into_bytes()).collect();
    let mut m = tiny_matmul(w, 4, 3);
    gm(&mut m).input[0] = vi("x", 1, &[1, 4]);
    gm(&mut m).output[0] = vi("y", 1, &[1, 3]);
    v.push(case("matmul_weight_string", c, "MatMul weight of type string", enc(&m), err("'Wstr'")));
    let mut w = f32_tensor("Wstr2", &[4, 3], &ramp(12));
    w.data_type = 8;
    v.push(case(
        "string_tensor_raw_data",
        c,
        "a string tensor with raw_data instead of strings",
        enc(&tiny_matmul(w, 4, 3)),
        err("'Wstr2'"),
    ));
    v.push(case(
        "data_location_7",
        c,
        "fc1.bias with data_location 7",
        with(&|m| {
            init(m, "fc1.bias").data_location = protobuf::EnumOrUnknown::from_i32(7);
        }),
        err("data_location"),
    ));
    v.push(case(
        "sparse_initializer_no_indices",
        c,
        "a sparse initializer without indices",
        with(&|m| {
            let mut s = SparseTensorProto::new();
            s.values = Some(f32_tensor("sp", &[2], &[1.0, 2.0])).into();
            s.dims = vec![5];
            gm(m).sparse_initializer.push(s);
        }),
        err("sparse"),
    ));
}

fn graph_cases(v: &mut Vec<Case>) {
    let c = "graph";
    let with = |f: &dyn Fn(&mut ModelProto)| {
        let mut m = mlp();
        f(&mut m);
        enc(&m)
    };
    v.push(case("empty_graph", c, "a graph without nodes", with(&|m| gm(m).node.clear()), err("empty")));
    v.push(case("no_graph", c, "a model without a graph", with(&|m| m.graph = None.into()), err("no graph")));
    v.push(case("no_opset_import", c, "no opset_import", with(&|m| m.opset_import.clear()), err("opset_import")));
    v.push(case("no_ir_version", c, "ir_version 0", with(&|m| m.ir_version = 0), err("ir_version")));
    v.push(case(
        "dangling_input",
        c,
        "a node input nothing produces",
        with(&|m| {
            node_mut(m, "/fc2/Gemm").input[0] = "nowhere".into();
        }),
        err("'nowhere'"),
    ));
    v.push(case(
        "missing_graph_input",
        c,
        "the graph input x is not declared",
        with(&|m| gm(m).input.clear()),
        err("'x'"),
    ));
    v.push(case(
        "cycle_two_nodes",
        c,
        "fc1 consumes the Relu that consumes fc1",
        with(&|m| {
            node_mut(m, "/fc1/Gemm").input[0] = "/Relu_output_0".into();
        }),
        err("cycle"),
    ));
    v.push(case(
        "cycle_self",
        c,
        "a Relu that consumes its own output",
        with(&|m| {
            node_mut(m, "/Relu").input[0] = "/Relu_output_0".into();
        }),
        err("cycle"),
    ));
    v.push(case(
        "duplicate_initializer",
        c,
        "two initializers named fc1.weight",
        with(&|m| {
            let t = init(m, "fc1.weight").clone();
            gm(m).initializer.push(t);
        }),
        err("fc1.weight"),
    ));
    v.push(case(
        "initializer_and_node_output",
        c,
        "a node output named like an initializer",
        with(&|m| {
            let n = node_mut(m, "/Relu");
            n.output[0] = "fc2.bias".into();
            node_mut(m, "/fc2/Gemm").input[0] = "fc2.bias".into();
        }),
        err("fc2.bias"),
    ));
    v.push(case(
        "two_producers",
        c,
        "two nodes produce the same value",
        with(&|m| {
            node_mut(m, "/Relu_1").output[0] = "/Relu_output_0".into();
        }),
        err("produced twice"),
    ));
    v.push(case(
        "node_without_op_type",
        c,
        "a node with an empty op_type",
        with(&|m| {
            node_mut(m, "/Relu").op_type.clear();
        }),
        err("op_type"),
    ));
    v.push(case(
        "initializer_without_name",
        c,
        "an unnamed initializer",
        with(&|m| {
            gm(m).initializer.push(f32_tensor("", &[1], &[1.0]));
        }),
        err("no name"),
    ));
    v.push(case(
        "output_not_produced",
        c,
        "a graph output nothing produces",
        with(&|m| {
            gm(m).output[0].name = "ghost".into();
        }),
        err("'ghost'"),
    ));
    v.push(case(
        "subgraph_unknown_outer_name",
        c,
        "an If branch reads a name defined nowhere",
        {
            let mut m = mlp_with_if(2);
            let n = gm(&mut m).node.last_mut().unwrap();
            let g = n.attribute[1].g.as_mut().unwrap();
            g.node[0].input[0] = "ghost_outer".into();
            enc(&m)
        },
        err("'ghost_outer'"),
    ));
    v.push(case(
        "subgraph_cycle",
        c,
        "a cycle inside an If branch",
        {
            let mut m = mlp_with_if(1);
            let n = gm(&mut m).node.last_mut().unwrap();
            let g = n.attribute[0].g.as_mut().unwrap();
            let o = g.output[0].name.clone();
            g.node[0].input[0] = o;
            enc(&m)
        },
        err("cycle"),
    ));
}

fn attribute_cases(v: &mut Vec<Case>) {
    let c = "attributes";
    let with = |f: &dyn Fn(&mut ModelProto)| {
        let mut m = mlp();
        f(&mut m);
        enc(&m)
    };
    let set = |m: &mut ModelProto, node: &str, a: AttributeProto| {
        let n = node_mut(m, node);
        n.attribute.retain(|x| x.name != a.name);
        n.attribute.push(a);
    };
    v.push(case(
        "transb_as_float",
        c,
        "Gemm transB given as a FLOAT 1.0",
        with(&|m| set(m, "/fc1/Gemm", attr_f("transB", 1.0))),
        err("transB"),
    ));
    v.push(case(
        "attr_type_value_mismatch",
        c,
        "transB of type INT holding a float",
        with(&|m| {
            let mut a = attr_i("transB", 0);
            a.f = 1.0;
            set(m, "/fc2/Gemm", a)
        }),
        err("transB"),
    ));
    v.push(case(
        "attr_unknown_type",
        c,
        "an attribute of type 99",
        with(&|m| {
            let mut a = attr_i("alpha", 1);
            a.type_ = ev(99);
            set(m, "/fc3/Gemm", a)
        }),
        err("unknown type 99"),
    ));
    v.push(case(
        "attr_tensor_without_value",
        c,
        "a Constant whose TENSOR attribute is empty",
        with(&|m| {
            let mut n = node("Constant", "k", &[], &["k_out"]);
            let mut a = attr_t("value", f32_tensor("kv", &[1], &[1.0]));
            a.t = None.into();
            n.attribute.push(a);
            gm(m).node.push(n);
        }),
        err("no value"),
    ));
    v.push(case(
        "attr_graph_without_value",
        c,
        "an If whose then_branch is of type GRAPH but empty",
        {
            let mut m = mlp_with_if(1);
            gm(&mut m).node.last_mut().unwrap().attribute[0].g = None.into();
            enc(&m)
        },
        err("then_branch"),
    ));
    v.push(case(
        "attr_duplicate",
        c,
        "transB given twice",
        with(&|m| {
            node_mut(m, "/fc1/Gemm").attribute.push(attr_i("transB", 0));
        }),
        err("given twice"),
    ));
    v.push(case(
        "attr_without_name",
        c,
        "an attribute without a name",
        with(&|m| {
            node_mut(m, "/Relu").attribute.push(attr_i("", 1));
        }),
        err("no name"),
    ));
    v.push(case(
        "attr_untyped",
        c,
        "an attribute with no type in an IR 8 model",
        with(&|m| {
            let mut a = attr_i("alpha", 2);
            a.type_ = ev(0);
            set(m, "/fc1/Gemm", a)
        }),
        err("no type"),
    ));
    v.push(case(
        "constant_value_wrong_kind",
        c,
        "a Constant 'value' of type FLOAT holding a tensor",
        with(&|m| {
            let mut n = node("Constant", "k", &[], &["k_out"]);
            let mut a = attr_t("value", f32_tensor("kv", &[1], &[1.0]));
            a.type_ = ev(1);
            n.attribute.push(a);
            gm(m).node.push(n);
        }),
        err("'value'"),
    ));
}

fn external_cases(v: &mut Vec<Case>) {
    let c = "external data";
    let ext = |f: &dyn Fn(&mut ModelProto, &mut Vec<Extra>)| {
        let mut m = mlp();
        let blob = externalize(&mut m, &[], "weights.bin");
        let mut extra = vec![Extra::File("weights.bin".into(), blob)];
        f(&mut m, &mut extra);
        (enc(&m), extra)
    };
    let mut push = |name, what, (model, extra): (Vec<u8>, Vec<Extra>), expect| {
        v.push(Case { name, category: c, what, model, extra, expect, tract: true });
    };
    push("ext_valid", "every initializer in weights.bin", ext(&|_, _| {}), Expect::Valid);
    push(
        "ext_valid_subfolder",
        "every initializer in data/weights.bin",
        ext(&|m, x| {
            for t in gm(m).initializer.iter_mut() {
                set_ext(t, "location", "data/weights.bin");
            }
            let Extra::File(_, b) = x.pop().unwrap() else { unreachable!() };
            x.push(Extra::Dir("data".into()));
            x.push(Extra::File("data/weights.bin".into(), b));
        }),
        Expect::Valid,
    );
    push(
        "ext_dotdot",
        "a location '../outside.bin'",
        ext(&|m, _| {
            set_ext(init(m, "fc2.weight"), "location", &format!("../{OUTSIDE}"));
            set_ext(init(m, "fc2.weight"), "offset", "0");
        }),
        err("leaves the model's folder"),
    );
    push(
        "ext_dotdot_inner",
        "a location 'data/../../outside.bin'",
        ext(&|m, x| {
            x.push(Extra::Dir("data".into()));
            set_ext(init(m, "fc2.weight"), "location", &format!("data/../../{OUTSIDE}"));
        }),
        err("leaves the model's folder"),
    );
    push(
        "ext_absolute",
        "an absolute location to a file outside",
        ext(&|m, _| {
            set_ext(init(m, "fc1.weight"), "location", OUTSIDE_ABS);
            set_ext(init(m, "fc1.weight"), "offset", "0");
        }),
        err("leaves the model's folder"),
    );
    push(
        "ext_absolute_etc_passwd",
        "the location /etc/passwd",
        ext(&|m, _| {
            set_ext(init(m, "fc1.bias"), "location", "/etc/passwd");
        }),
        err("leaves the model's folder"),
    );
    push(
        "ext_symlink_escape",
        "a symlink in the folder to a file outside",
        ext(&|m, x| {
            x.push(Extra::Symlink("link.bin".into(), format!("../{OUTSIDE}")));
            set_ext(init(m, "fc2.weight"), "location", "link.bin");
            set_ext(init(m, "fc2.weight"), "offset", "0");
        }),
        err("leaves the model's folder"),
    );
    push(
        "ext_symlink_dir_escape",
        "a symlinked folder pointing outside",
        ext(&|m, x| {
            x.push(Extra::Symlink("up".into(), "..".into()));
            set_ext(init(m, "fc2.weight"), "location", &format!("up/{OUTSIDE}"));
            set_ext(init(m, "fc2.weight"), "offset", "0");
        }),
        err("leaves the model's folder"),
    );
    push(
        "ext_missing_file",
        "a location that does not exist",
        ext(&|m, _| {
            set_ext(init(m, "fc3.weight"), "location", "nope.bin");
        }),
        err("'nope.bin'"),
    );
    push(
        "ext_offset_past_end",
        "an offset past the end of the file",
        ext(&|m, _| {
            set_ext(init(m, "fc3.bias"), "offset", "1000000");
        }),
        err("past the end"),
    );
    push(
        "ext_offset_overflow",
        "offset 2^64-1 (offset + length overflows)",
        ext(&|m, _| {
            set_ext(init(m, "fc3.bias"), "offset", "18446744073709551615");
        }),
        err("past the end"),
    );
    push(
        "ext_offset_not_a_number",
        "offset 'abc'",
        ext(&|m, _| {
            set_ext(init(m, "fc1.bias"), "offset", "abc");
        }),
        err("bad external offset"),
    );
    push(
        "ext_offset_negative",
        "offset '-4'",
        ext(&|m, _| {
            set_ext(init(m, "fc1.bias"), "offset", "-4");
        }),
        err("bad external offset"),
    );
    push(
        "ext_length_mismatch",
        "a length that disagrees with the dims",
        ext(&|m, _| {
            set_ext(init(m, "fc1.bias"), "length", "4");
        }),
        err("'fc1.bias'"),
    );
    push(
        "ext_huge_dims",
        "dims of 2^35 float elements (128 GiB) in a 70 KB file",
        ext(&|m, _| {
            let t = init(m, "fc1.weight");
            t.dims = vec![1 << 30, 32];
            t.external_data.retain(|e| e.key != "length");
        }),
        err("past the end"),
    );
    push(
        "ext_fifo",
        "a location that is a named pipe",
        ext(&|m, x| {
            x.push(Extra::Fifo("pipe.bin".into()));
            set_ext(init(m, "fc3.bias"), "location", "pipe.bin");
            set_ext(init(m, "fc3.bias"), "offset", "0");
        }),
        err("not a regular file"),
    );
    push(
        "ext_directory",
        "a location that is a folder",
        ext(&|m, x| {
            x.push(Extra::Dir("data".into()));
            set_ext(init(m, "fc3.bias"), "location", "data");
        }),
        err("not a regular file"),
    );
    // Two 32 KiB weights both read offset 0 of a 32 KiB file: N such tensors would cost N times
    // the file's size in memory.
    push(
        "ext_overlapping_regions",
        "two weights read the same 32 KiB of a 32 KiB file",
        {
            let mut m = mlp();
            let blob = externalize(&mut m, &["fc1.weight"], "weights.bin");
            let t = init(&mut m, "fc2.weight");
            t.raw_data.clear();
            t.data_location = protobuf::EnumOrUnknown::from_i32(1);
            t.external_data = vec![kv("location", "weights.bin"), kv("offset", "0"), kv("length", "32768")];
            (enc(&m), vec![Extra::File("weights.bin".into(), blob)])
        },
        err("overlapping"),
    );
    push(
        "ext_no_location",
        "external data without a location",
        ext(&|m, _| {
            init(m, "fc1.bias").external_data.retain(|e| e.key != "location");
        }),
        err("without a location"),
    );
    push(
        "ext_empty_location",
        "an empty location",
        ext(&|m, _| {
            set_ext(init(m, "fc1.bias"), "location", "");
        }),
        err("empty external data location"),
    );
    push(
        "ext_string_tensor",
        "a string tensor with external data",
        ext(&|m, _| {
            init(m, "fc3.bias").data_type = 8;
        }),
        err("'fc3.bias'"),
    );
}

fn valid_cases(v: &mut Vec<Case>) {
    let c = "valid";
    for f in ["digits_mlp.onnx", "digits_cnn.onnx", "digits_lstm.onnx", "digits_transformer.onnx", "yolo_block.onnx"] {
        let name: &'static str = Box::leak(format!("model_{}", f.trim_end_matches(".onnx")).into_boxed_str());
        v.push(case(name, c, "a project model, unchanged", model_bytes(f), Expect::Valid));
    }
    v.push(case("if_outer_names", c, "an If whose branches read an outer value", enc(&mlp_with_if(1)), Expect::Valid));
    v.push(case(
        "if_nested_8",
        c,
        "If subgraphs nested 8 deep, reading an outer value",
        enc(&mlp_with_if(8)),
        Expect::Valid,
    ));
    // Loop with one iteration whose body reads the outer fc3.bias.
    let mut m = mlp();
    let g = gm(&mut m);
    g.initializer.push(i64_scalar("trip", 1));
    g.initializer.push(bool_scalar("cond", true));
    let mut body = GraphProto::new();
    body.name = "body".into();
    body.input.push(vi("i", 7, &[]));
    body.input.push(vi("c_in", 9, &[]));
    body.output.push(vi("c_out", 9, &[]));
    body.output.push(vi_any("scan_out", 1));
    body.node.push(node("Identity", "body_c", &["c_in"], &["c_out"]));
    body.node.push(node("Identity", "body_s", &["fc3.bias"], &["scan_out"]));
    let mut l = node("Loop", "loop", &["trip", "cond"], &["loop_scan"]);
    l.attribute.push(attr_g("body", body));
    g.node.push(l);
    g.output.push(vi_any("loop_scan", 1));
    v.push(case("loop_outer_names", c, "a Loop whose body reads an outer initializer", enc(&m), Expect::Valid));
    // Constant with a sparse_value, as an extra output.
    let mut m = mlp();
    let mut s = SparseTensorProto::new();
    s.values = Some(f32_tensor("sp_values", &[2], &[1.5, -2.0])).into();
    let mut idx = TensorProto::new();
    idx.name = "sp_indices".into();
    idx.data_type = 7;
    idx.dims = vec![2];
    idx.int64_data = vec![0, 3];
    s.indices = Some(idx).into();
    s.dims = vec![5];
    let mut n = node("Constant", "sparse_const", &[], &["sparse_out"]);
    let mut a = AttributeProto::new();
    a.name = "sparse_value".into();
    a.type_ = ev(11);
    a.sparse_tensor = Some(s).into();
    n.attribute.push(a);
    gm(&mut m).node.push(n);
    gm(&mut m).output.push(vi("sparse_out", 1, &[5]));
    v.push(case("constant_sparse_value", c, "a Constant node with a sparse_value", enc(&m), Expect::Valid));
    // A MatMul weight from a Constant node, in float_data.
    let mut w = f32_tensor("Wc", &[4, 3], &[]);
    w.raw_data.clear();
    w.float_data = ramp(12);
    let mut m = tiny_matmul(f32_tensor("unused_init", &[1], &[0.0]), 4, 3);
    let g = gm(&mut m);
    g.initializer.clear();
    let mut k = node("Constant", "wc", &[], &["Wc"]);
    k.attribute.push(attr_t("value", w));
    g.node.insert(0, k);
    g.node[1].input[1] = "Wc".into();
    v.push(case(
        "constant_weight_float_data",
        c,
        "a MatMul weight from a Constant, in float_data",
        enc(&m),
        Expect::Valid,
    ));
    // float16 weight in int32_data.
    let mut w = f32_tensor("W16", &[4, 3], &[]);
    w.data_type = 10;
    w.raw_data.clear();
    w.int32_data = ramp(12).iter().map(|x| half::f16::from_f32(*x).to_bits() as i32).collect();
    v.push(case(
        "f16_weight_int32_data",
        c,
        "a float16 MatMul weight in int32_data",
        enc(&tiny_matmul(w, 4, 3)),
        Expect::Valid,
    ));
    // An integer MatMul next to a float one: the integer weight is left alone.
    let mut m = tiny_matmul(f32_tensor("Wf", &[4, 3], &ramp(12)), 4, 3);
    let g = gm(&mut m);
    let mut wi = TensorProto::new();
    wi.name = "Wi".into();
    wi.data_type = 7;
    wi.dims = vec![4, 2];
    wi.int64_data = vec![1, -2, 3, 0, 5, 6, -7, 8];
    g.initializer.push(wi);
    g.input.push(vi("xi", 7, &[1, 4]));
    g.output.push(vi("yi", 7, &[1, 2]));
    g.node.push(node("MatMul", "mm_int", &["xi", "Wi"], &["yi"]));
    v.push(case("matmul_int64_weight", c, "an int64 MatMul weight beside a float one", enc(&m), Expect::Valid));
    // A zero-sized Conv weight [2, 0, 3, 3] on an input with no channels.
    let mut g = GraphProto::new();
    g.name = "zero_conv".into();
    g.input.push(vi("x", 1, &[1, 0, 4, 4]));
    g.output.push(vi("y", 1, &[1, 2, 2, 2]));
    g.initializer.push(f32_tensor("Wz", &[2, 0, 3, 3], &[]));
    let mut n = node("Conv", "conv0", &["x", "Wz"], &["y"]);
    n.attribute.push(attr_ints("kernel_shape", &[3, 3]));
    g.node.push(n);
    v.push(case("conv_zero_sized_weight", c, "a Conv weight with dims [2, 0, 3, 3]", enc(&wrap(g)), Expect::Valid));
    // An empty MatMul weight [0, 2^30]: before the fix, unit scope looped 2^30 times over it.
    let mut m = tiny_matmul(f32_tensor("Wk0", &[0, 1 << 30], &[]), 0, 1 << 30);
    gm(&mut m).initializer.push(f32_tensor("Wf", &[4, 3], &ramp(12)));
    gm(&mut m).input.push(vi("x2", 1, &[1, 4]));
    gm(&mut m).output.push(vi("y2", 1, &[1, 3]));
    gm(&mut m).node.push(node("MatMul", "mm2", &["x2", "Wf"], &["y2"]));
    let mut cz = case("matmul_empty_huge_axis", c, "an empty MatMul weight [0, 2^30]", enc(&m), Expect::Valid);
    cz.tract = false; // its output is 4 GiB of zeros
    v.push(cz);
    // One weight shared by 30 000 MatMul nodes (used_by was quadratic in their number).
    let mut g = GraphProto::new();
    g.name = "shared".into();
    g.input.push(vi("x", 1, &[1, 4]));
    g.initializer.push(f32_tensor("Ws", &[4, 3], &ramp(12)));
    for i in 0..30_000 {
        g.node.push(node("MatMul", &format!("mm{i}"), &["x", "Ws"], &[&format!("y{i}")]));
    }
    g.output.push(vi("y0", 1, &[1, 3]));
    let mut cs =
        case("weight_shared_by_30k_nodes", c, "one MatMul weight used by 30 000 nodes", enc(&wrap(g)), Expect::Valid);
    cs.tract = false; // slow to optimise, and a huge report
    v.push(cs);
    // Unknown fields and a newer data type on an unused initializer are kept, not refused.
    let mut m = mlp();
    let mut f8 = TensorProto::new();
    f8.name = "f8_unused".into();
    f8.data_type = 17;
    f8.dims = vec![4];
    f8.raw_data = vec![1, 2, 3, 4];
    gm(&mut m).initializer.push(f8);
    let mut b = enc(&m);
    // Unknown fields of ModelProto: two numbers, so protobuf's hash-map order shows (the fuzz
    // smoke test's encode/decode check first compared bytes and failed on this).
    b.extend(vfield(99, 12345));
    b.extend(ld(98, b"unknown bytes"));
    b.extend(vfield(97, 7));
    let mut cu =
        case("unknown_field_and_float8", c, "an unknown field and an unused float8 initializer", b, Expect::Valid);
    cu.tract = false;
    v.push(cu);
}

// ---------------------------------------------------------------------------------------------
// Writing cases to disk

/// Write `case` into `parent/<case.name>/` and the bait `parent/outside.bin`.
/// Returns the path of the model file.
pub fn write_case(case: &Case, parent: &Path) -> std::io::Result<PathBuf> {
    let dir = parent.join(case.name);
    if dir.symlink_metadata().is_ok() {
        // Start afresh (remove_dir_all does not follow the symlinks some cases contain).
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let outside = parent.join(OUTSIDE);
    if !outside.exists() {
        // 1 MiB of ones: every hostile offset and length in the corpus fits in it.
        std::fs::write(&outside, vec![0x3fu8; 1 << 20])?;
    }
    let mut bytes = case.model.clone();
    if bytes.windows(OUTSIDE_ABS.len()).any(|w| w == OUTSIDE_ABS.as_bytes()) {
        let mut m = ModelProto::parse_from_bytes(&bytes).expect("cases with OUTSIDE_ABS are valid protobuf");
        let abs = std::fs::canonicalize(parent)?.join(OUTSIDE);
        for t in gm(&mut m).initializer.iter_mut() {
            for e in t.external_data.iter_mut() {
                if e.value == OUTSIDE_ABS {
                    e.value = abs.to_string_lossy().into_owned();
                }
            }
        }
        bytes = enc(&m);
    }
    std::fs::write(dir.join(MODEL), bytes)?;
    for x in &case.extra {
        match x {
            Extra::File(p, b) => std::fs::write(dir.join(p), b)?,
            Extra::Dir(p) => std::fs::create_dir_all(dir.join(p))?,
            Extra::Symlink(p, target) => std::os::unix::fs::symlink(target, dir.join(p))?,
            Extra::Fifo(p) => {
                let c = std::ffi::CString::new(dir.join(p).to_string_lossy().into_owned()).unwrap();
                // SAFETY: a valid NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
    }
    Ok(dir.join(MODEL))
}

// ---------------------------------------------------------------------------------------------
// Small valid models: seeds for the fuzzer and the fuzz smoke test (a few hundred bytes each, so
// that mutations reach deep into the pipeline quickly).

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    v.push(("matmul", enc(&tiny_matmul(f32_tensor("W", &[4, 3], &ramp(12)), 4, 3))));
    // Gemm transB=1 with bias, then Relu.
    let mut g = GraphProto::new();
    g.name = "gemm".into();
    g.input.push(vi("x", 1, &[1, 4]));
    g.output.push(vi("y", 1, &[1, 3]));
    g.initializer.push(f32_tensor("B", &[3, 4], &ramp(12)));
    g.initializer.push(f32_tensor("C", &[3], &[0.5, -0.25, 0.0]));
    let mut n = node("Gemm", "gemm", &["x", "B", "C"], &["h"]);
    n.attribute.push(attr_i("transB", 1));
    n.attribute.push(attr_f("alpha", 1.0));
    g.node.push(n);
    g.node.push(node("Relu", "relu", &["h"], &["y"]));
    v.push(("gemm", enc(&wrap(g))));
    // Conv with bias, BatchNormalization.
    let mut g = GraphProto::new();
    g.name = "conv".into();
    g.input.push(vi("x", 1, &[1, 2, 4, 4]));
    g.output.push(vi("y", 1, &[1, 3, 2, 2]));
    g.initializer.push(f32_tensor("Wc", &[3, 2, 3, 3], &ramp(54)));
    g.initializer.push(f32_tensor("bc", &[3], &[0.1, 0.2, 0.3]));
    for (nm, val) in [("s", 1.0f32), ("b", 0.0), ("m", 0.0), ("v", 1.0)] {
        g.initializer.push(f32_tensor(nm, &[3], &[val; 3]));
    }
    let mut n = node("Conv", "conv", &["x", "Wc", "bc"], &["c"]);
    n.attribute.push(attr_ints("kernel_shape", &[3, 3]));
    g.node.push(n);
    g.node.push(node("BatchNormalization", "bn", &["c", "s", "b", "m", "v"], &["y"]));
    v.push(("conv", enc(&wrap(g))));
    // LSTM, hidden 2.
    let mut g = GraphProto::new();
    g.name = "lstm".into();
    g.input.push(vi("x", 1, &[2, 1, 3]));
    g.output.push(vi("y", 1, &[2, 1, 1, 2]));
    g.initializer.push(f32_tensor("Wl", &[1, 8, 3], &ramp(24)));
    g.initializer.push(f32_tensor("Rl", &[1, 8, 2], &ramp(16)));
    g.initializer.push(f32_tensor("Bl", &[1, 16], &ramp(16)));
    let mut n = node("LSTM", "lstm", &["x", "Wl", "Rl", "Bl"], &["y"]);
    n.attribute.push(attr_i("hidden_size", 2));
    g.node.push(n);
    v.push(("lstm", enc(&wrap(g))));
    // A Constant weight in float_data and an If reading an outer name.
    let mut w = f32_tensor("Wk", &[4, 3], &[]);
    w.raw_data.clear();
    w.float_data = ramp(12);
    let mut m = tiny_matmul(f32_tensor("unused", &[1], &[0.0]), 4, 3);
    let g = gm(&mut m);
    g.initializer.clear();
    g.initializer.push(bool_scalar("cond", true));
    let mut k = node("Constant", "k", &[], &["Wk"]);
    k.attribute.push(attr_t("value", w));
    g.node.insert(0, k);
    g.node[1].input[1] = "Wk".into();
    g.node.push(if_chain(2, "y", "if_out"));
    g.output.push(vi_any("if_out", 1));
    v.push(("constant_if", enc(&m)));
    // float16 weight and a Gather embedding.
    let mut w = f32_tensor("W16", &[4, 3], &[]);
    w.data_type = 10;
    w.raw_data = ramp(12).iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
    let mut m = tiny_matmul(w, 4, 3);
    let g = gm(&mut m);
    g.initializer.push(f32_tensor("E", &[5, 4], &ramp(20)));
    g.input.push(vi("ids", 7, &[2]));
    g.output.push(vi("emb", 1, &[2, 4]));
    g.node.push(node("Gather", "gather", &["E", "ids"], &["emb"]));
    v.push(("f16_gather", enc(&m)));
    // Channel shuffle with literal targets, then a chunk with bounds computed from Shape.
    let mut g = GraphProto::new();
    g.name = "shuffle".into();
    g.input.push(vi("x", 1, &[1, 2, 2, 2]));
    g.output.push(vi("y", 1, &[1, 3, 2, 2]));
    g.initializer.push(f32_tensor("Ws", &[8, 2, 1, 1], &ramp(16)));
    g.initializer.push(f32_tensor("Wt", &[3, 4, 1, 1], &ramp(12)));
    g.initializer.push(i64_vec("t5", &[1, 2, 4, 2, 2]));
    g.initializer.push(i64_vec("t4", &[1, 8, 2, 2]));
    g.initializer.push(i64_vec("axis", &[1]));
    g.initializer.push(i64_vec("zero", &[0]));
    for (nm, val) in [("one", 1), ("two", 2)] {
        g.initializer.push(i64_scalar(nm, val));
    }
    g.node.push(node("Conv", "a", &["x", "Ws"], &["a"]));
    g.node.push(node("Reshape", "split", &["a", "t5"], &["r"]));
    let mut t = node("Transpose", "swap", &["r"], &["t"]);
    t.attribute.push(attr_ints("perm", &[0, 2, 1, 3, 4]));
    g.node.push(t);
    g.node.push(node("Reshape", "merge", &["t", "t4"], &["s"]));
    g.node.push(node("Shape", "shape", &["s"], &["sh"]));
    let mut gat = node("Gather", "c", &["sh", "one"], &["c"]);
    gat.attribute.push(attr_i("axis", 0));
    g.node.push(gat);
    g.node.push(node("Add", "c1", &["c", "one"], &["c1"]));
    g.node.push(node("Div", "half", &["c1", "two"], &["h"]));
    g.node.push(node("Mul", "end", &["h", "one"], &["e"]));
    g.node.push(node("Unsqueeze", "ev", &["e", "zero"], &["ev"]));
    g.node.push(node("Slice", "lo", &["s", "zero", "ev", "axis"], &["lo"]));
    g.node.push(node("Conv", "b", &["lo", "Wt"], &["y"]));
    v.push(("shuffle", enc(&wrap(g))));
    // One bias initializer read by two convolutions (as onnxslim deduplicates equal biases).
    let mut g = GraphProto::new();
    g.name = "shared_bias".into();
    g.input.push(vi("x", 1, &[1, 2, 2, 2]));
    g.output.push(vi("y", 1, &[1, 3, 2, 2]));
    g.initializer.push(f32_tensor("Wa", &[4, 2, 1, 1], &ramp(8)));
    g.initializer.push(f32_tensor("Wb", &[4, 4, 1, 1], &ramp(16)));
    g.initializer.push(f32_tensor("Wc", &[3, 4, 1, 1], &ramp(12)));
    g.initializer.push(f32_tensor("sb", &[4], &[0.0; 4]));
    g.node.push(node("Conv", "a", &["x", "Wa", "sb"], &["a"]));
    g.node.push(node("Relu", "ra", &["a"], &["ra"]));
    g.node.push(node("Conv", "b", &["ra", "Wb", "sb"], &["b"]));
    g.node.push(node("Relu", "rb", &["b"], &["rb"]));
    g.node.push(node("Conv", "c", &["rb", "Wc"], &["y"]));
    v.push(("shared_bias", enc(&wrap(g))));
    // A residual stream under LayerNormalization: MatMul → LN → MLP → residual Add → LN → head,
    // and a Reshape of the input whose target reads the stream's width (frozen when it shrinks).
    let mut g = GraphProto::new();
    g.name = "layernorm_stream".into();
    g.input.push(vi("x", 1, &[1, 2, 4]));
    g.output.push(vi("y", 1, &[1, 2, 3]));
    g.output.push(vi("z", 1, &[1, 2, 4]));
    for (nm, dims, n) in [("Wa", [4, 4], 16), ("Wu", [4, 4], 16), ("Wd", [4, 4], 16), ("Wh", [4, 3], 12)] {
        g.initializer.push(f32_tensor(nm, &dims, &ramp(n)));
    }
    for (nm, val) in [("g1", 1.0f32), ("b1", 0.1), ("g2", 0.5), ("b2", -0.1)] {
        g.initializer.push(f32_tensor(nm, &[4], &[val; 4]));
    }
    g.initializer.push(i64_vec("lead", &[1, -1]));
    g.initializer.push(i64_vec("ax0", &[0]));
    g.initializer.push(i64_scalar("two", 2));
    g.node.push(node("MatMul", "a", &["x", "Wa"], &["a"]));
    g.node.push(node("LayerNormalization", "ln1", &["a", "g1", "b1"], &["n1"]));
    g.node.push(node("MatMul", "up", &["n1", "Wu"], &["u"]));
    g.node.push(node("Relu", "act", &["u"], &["ru"]));
    g.node.push(node("MatMul", "down", &["ru", "Wd"], &["d"]));
    g.node.push(node("Add", "res", &["a", "d"], &["s"]));
    g.node.push(node("LayerNormalization", "ln2", &["s", "g2", "b2"], &["n2"]));
    g.node.push(node("MatMul", "head", &["n2", "Wh"], &["y"]));
    g.node.push(node("Shape", "shape", &["s"], &["sh"]));
    g.node.push(node("Gather", "width", &["sh", "two"], &["w"]));
    g.node.push(node("Unsqueeze", "wv", &["w", "ax0"], &["wv"]));
    let mut cat = node("Concat", "target", &["lead", "wv"], &["t"]);
    cat.attribute.push(attr_i("axis", 0));
    g.node.push(cat);
    g.node.push(node("Reshape", "rx", &["x", "t"], &["z"]));
    v.push(("layernorm_stream", enc(&wrap(g))));
    // The same stream with its normalisations spelled out: a LayerNorm as ReduceMean, Sub, Mul,
    // ReduceMean, Add, Sqrt, Div, Mul, Add, and an RMSNorm as Pow, ReduceMean, Add, Sqrt,
    // Reciprocal, Mul, Mul.
    let mut g = GraphProto::new();
    g.name = "norm_spelled".into();
    g.input.push(vi("x", 1, &[1, 2, 4]));
    g.output.push(vi("y", 1, &[1, 2, 3]));
    for (nm, dims, n) in [("Wa", [4, 4], 16), ("Wu", [4, 4], 16), ("Wd", [4, 4], 16), ("Wh", [4, 3], 12)] {
        g.initializer.push(f32_tensor(nm, &dims, &ramp(n)));
    }
    for (nm, val) in [("g1", 1.0f32), ("b1", 0.1), ("g2", 0.5)] {
        g.initializer.push(f32_tensor(nm, &[4], &[val; 4]));
    }
    for (nm, val) in [("eps", 1e-5f32), ("two", 2.0)] {
        g.initializer.push(f32_tensor(nm, &[], &[val]));
    }
    let mean = |name: &str, x: &str, y: &str| {
        let mut n = node("ReduceMean", name, &[x], &[y]);
        n.attribute.push(attr_ints("axes", &[-1]));
        n
    };
    g.node.push(node("MatMul", "a", &["x", "Wa"], &["a"]));
    g.node.push(mean("mu", "a", "mu"));
    g.node.push(node("Sub", "centre", &["a", "mu"], &["c"]));
    g.node.push(node("Mul", "sq", &["c", "c"], &["c2"]));
    g.node.push(mean("var", "c2", "var"));
    g.node.push(node("Add", "ve", &["var", "eps"], &["ve"]));
    g.node.push(node("Sqrt", "sd", &["ve"], &["sd"]));
    g.node.push(node("Div", "norm", &["c", "sd"], &["nrm"]));
    g.node.push(node("Mul", "scale", &["nrm", "g1"], &["sc"]));
    g.node.push(node("Add", "shift", &["sc", "b1"], &["n1"]));
    g.node.push(node("MatMul", "up", &["n1", "Wu"], &["u"]));
    g.node.push(node("Relu", "act", &["u"], &["ru"]));
    g.node.push(node("MatMul", "down", &["ru", "Wd"], &["d"]));
    g.node.push(node("Add", "res", &["a", "d"], &["s"]));
    g.node.push(node("Pow", "pow", &["s", "two"], &["s2"]));
    g.node.push(mean("ms", "s2", "ms"));
    g.node.push(node("Add", "mse", &["ms", "eps"], &["mse"]));
    g.node.push(node("Sqrt", "rms", &["mse"], &["rms"]));
    g.node.push(node("Reciprocal", "inv", &["rms"], &["inv"]));
    g.node.push(node("Mul", "rnorm", &["s", "inv"], &["rn"]));
    g.node.push(node("Mul", "rscale", &["rn", "g2"], &["n2"]));
    g.node.push(node("MatMul", "head", &["n2", "Wh"], &["y"]));
    v.push(("norm_spelled", enc(&wrap(g))));
    // onnxruntime's fused encoder: EmbedLayerNormalization (the stream's source) → MatMul, Relu,
    // MatMul → SkipLayerNormalization → head.
    let mut g = GraphProto::new();
    g.name = "ms_embed".into();
    g.input.push(vi("x", 7, &[1, 3]));
    g.output.push(vi("y", 1, &[1, 3, 3]));
    for (nm, dims, n) in [("word", [5, 4], 20), ("pos", [4, 4], 16), ("Wu", [4, 4], 16), ("Wd", [4, 4], 16)] {
        g.initializer.push(f32_tensor(nm, &dims, &ramp(n)));
    }
    g.initializer.push(f32_tensor("Wh", &[4, 3], &ramp(12)));
    for (nm, val) in [("g1", 1.0f32), ("b1", 0.1), ("g2", 0.5), ("b2", -0.1)] {
        g.initializer.push(f32_tensor(nm, &[4], &[val; 4]));
    }
    let mut cast = node("Cast", "ids", &["x"], &["ids"]);
    cast.attribute.push(attr_i("to", 6));
    g.node.push(cast);
    let mut e = node("EmbedLayerNormalization", "embed", &["ids", "", "word", "pos", "", "g1", "b1"], &["a", "mi"]);
    e.domain = "com.microsoft".into();
    g.node.push(e);
    g.node.push(node("MatMul", "up", &["a", "Wu"], &["u"]));
    g.node.push(node("Relu", "act", &["u"], &["ru"]));
    g.node.push(node("MatMul", "down", &["ru", "Wd"], &["d"]));
    let mut sk = node("SkipLayerNormalization", "skipln", &["d", "a", "g2", "b2"], &["n2"]);
    sk.domain = "com.microsoft".into();
    g.node.push(sk);
    g.node.push(node("MatMul", "head", &["n2", "Wh"], &["y"]));
    v.push(("ms_embed", enc(&wrap(g))));
    // A tensor with (unresolvable) external data: parse accepts it, pruning must refuse cleanly.
    let mut m = tiny_matmul(f32_tensor("We", &[4, 3], &ramp(12)), 4, 3);
    externalize(&mut m, &["We"], "w.bin");
    v.push(("external", enc(&m)));
    v
}
