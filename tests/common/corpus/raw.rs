//! Raw protobuf bytes (varints, fields, noise) and the small tensors and nested `If` chains the
//! cases are made of.
use super::*;

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

pub(super) fn xorshift(seed: u64, n: usize) -> Vec<u8> {
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
pub(super) fn if_chain(depth: usize, outer: &str, out: &str) -> NodeProto {
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

pub(super) fn bool_scalar(name: &str, v: bool) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 9;
    t.raw_data = vec![v as u8];
    t
}

/// A 1-D int64 tensor in raw_data.
pub(super) fn i64_vec(name: &str, v: &[i64]) -> TensorProto {
    let mut t = i64_scalar(name, 0);
    t.dims = vec![v.len() as i64];
    t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    t
}

pub(super) fn i64_scalar(name: &str, v: i64) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 7;
    t.raw_data = v.to_le_bytes().to_vec();
    t
}

/// mlp plus an If node nested `depth` levels that returns an outer value as an extra output.
pub(super) fn mlp_with_if(depth: usize) -> ModelProto {
    let mut m = mlp();
    let g = gm(&mut m);
    g.initializer.push(bool_scalar("cond", true));
    g.node.push(if_chain(depth, "/Relu_1_output_0", "if_out"));
    g.output.push(vi_any("if_out", 1));
    m
}
