//! Field presence that the proto3-generated ONNX types would lose.
//!
//! ONNX is specified in proto2 (`onnx.proto`): a scalar field written with its default value
//! (`domain: ""` on a node, `i: 0` on an INT attribute) is *present*, and `onnx.load` sees it.
//! The `onnx-protobuf` types are generated from the proto3 variant, which has no presence for
//! scalars: decoding keeps the value, encoding drops it. A model saved unchanged would then
//! differ from its input under proto2 equality (`onnx.load(a) == onnx.load(b)` in Python).
//!
//! Contract:
//! - the wire pre-scan ([`super::wire`]) records every singular, non-oneof scalar field that is
//!   present with its default value, as ([`Path`] to its message, field number, payload);
//! - [`attach`] (after decoding) stores each record as an *unknown field* of the decoded message,
//!   where the encoder writes it back verbatim, unless the decoded field is not at its default
//!   (a later occurrence of the field won, as protobuf's last-one-wins rule says);
//! - [`settle`] (before encoding) drops every such record whose field the rewrite has since set to
//!   a non-default value, so a stale `raw_data: ""` or `i: 0` can never override a new value.
//!
//! Genuinely unknown fields (numbers the schema does not know, or a known number with a wire type
//! that does not match its declaration) are never touched: protobuf keeps them as before.

use onnx_protobuf as pb;
use pb::type_proto as tp;
use protobuf::{Message, UnknownFields};
use std::collections::HashMap;

/// The ONNX message types, as the wire scan tracks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Msg {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    Sparse,
    ValueInfo,
    Type,
    TypeTensor,
    TypeSeq,
    TypeMap,
    TypeOpt,
    TypeSparse,
    Shape,
    Dim,
    Segment,
    Entry,
    Annotation,
    Training,
    Function,
    Opset,
}

/// The singular scalar fields (outside oneofs) of each message, with the wire type their
/// declaration expects, as in `onnx.proto` (the Dimension's dim_value/dim_param are a oneof and
/// keep their presence).
fn scalars(m: Msg) -> &'static [(u32, u8)] {
    const VARINT: u8 = 0;
    const F32: u8 = 5;
    const LEN: u8 = 2;
    match m {
        Msg::Model => &[(1, VARINT), (2, LEN), (3, LEN), (4, LEN), (5, VARINT), (6, LEN)],
        Msg::Graph => &[(2, LEN), (10, LEN)],
        Msg::Node => &[(3, LEN), (4, LEN), (6, LEN), (7, LEN), (8, LEN)],
        Msg::Attribute => &[(1, LEN), (2, F32), (3, VARINT), (4, LEN), (13, LEN), (20, VARINT), (21, LEN)],
        Msg::Tensor => &[(2, VARINT), (8, LEN), (9, LEN), (12, LEN), (14, VARINT)],
        Msg::ValueInfo => &[(1, LEN), (3, LEN)],
        Msg::Type => &[(6, LEN)],
        Msg::TypeTensor | Msg::TypeSparse | Msg::TypeMap => &[(1, VARINT)],
        Msg::Dim => &[(3, LEN)],
        Msg::Segment => &[(1, VARINT), (2, VARINT)],
        Msg::Entry => &[(1, LEN), (2, LEN)],
        Msg::Annotation => &[(1, LEN)],
        Msg::Function => &[(1, LEN), (8, LEN), (10, LEN), (13, LEN)],
        Msg::Opset => &[(1, LEN), (2, VARINT)],
        Msg::Sparse | Msg::TypeSeq | Msg::TypeOpt | Msg::Shape | Msg::Training => &[],
    }
}

/// The repeated message fields of each message (the others that `wire::child` enters are
/// singular: protobuf merges their occurrences into one message).
fn repeated_msgs(m: Msg) -> &'static [u32] {
    match m {
        Msg::Model => &[8, 14, 20, 25],
        Msg::Graph => &[1, 5, 11, 12, 13, 14, 15, 16],
        Msg::Node => &[5, 9],
        Msg::Attribute => &[10, 11, 15, 23],
        Msg::Tensor => &[13, 16],
        Msg::ValueInfo => &[4],
        Msg::Shape => &[1],
        Msg::Annotation => &[2],
        Msg::Training => &[3, 4],
        Msg::Function => &[7, 9, 11, 12, 14],
        _ => &[],
    }
}

/// How a field of a message is decoded, as far as presence is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A singular scalar outside any oneof, with the wire type its declaration expects: proto3
    /// decoding loses its presence when it holds the default.
    Scalar(u8),
    /// A repeated message field: occurrences are separate elements.
    RepeatedMsg,
    /// Anything else (singular message fields merge, oneofs keep presence, repeated scalars).
    Other,
}

/// The class of field `field` of message `m` (unknown numbers are [`Class::Other`]).
pub fn class(m: Msg, field: u32) -> Class {
    if let Some(&(_, w)) = scalars(m).iter().find(|(f, _)| *f == field) {
        Class::Scalar(w)
    } else if repeated_msgs(m).contains(&field) {
        Class::RepeatedMsg
    } else {
        Class::Other
    }
}

/// Where a message sits: (field number, index among that field's occurrences) from the model
/// down. Singular message fields always have index 0 (protobuf merges their occurrences).
pub type Path = Box<[(u32, u32)]>;

/// A scalar field that was present with its default value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub path: Path,
    pub field: u32,
    pub value: Payload,
}

/// The payload as read (so -0.0 stays -0.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    Varint,
    Fixed32(u32),
    Fixed64(u64),
    Empty,
}

/// Whether a scalar payload holds the value proto3 treats as default (and drops on encoding).
pub fn is_default_payload(p: Payload) -> bool {
    match p {
        Payload::Varint | Payload::Empty => true,
        Payload::Fixed32(b) => f32::from_bits(b) == 0.0,
        Payload::Fixed64(b) => f64::from_bits(b) == 0.0,
    }
}

/// A mutable reference to any ONNX message, for walking the decoded tree.
enum Ref<'a> {
    Model(&'a mut pb::ModelProto),
    Graph(&'a mut pb::GraphProto),
    Node(&'a mut pb::NodeProto),
    Attribute(&'a mut pb::AttributeProto),
    Tensor(&'a mut pb::TensorProto),
    Sparse(&'a mut pb::SparseTensorProto),
    ValueInfo(&'a mut pb::ValueInfoProto),
    Type(&'a mut pb::TypeProto),
    TypeTensor(&'a mut tp::Tensor),
    TypeSeq(&'a mut tp::Sequence),
    TypeMap(&'a mut tp::Map),
    TypeOpt(&'a mut tp::Optional),
    TypeSparse(&'a mut tp::SparseTensor),
    Shape(&'a mut pb::TensorShapeProto),
    Annotation(&'a mut pb::TensorAnnotation),
    Training(&'a mut pb::TrainingInfoProto),
    Function(&'a mut pb::FunctionProto),
    Dim(&'a mut pb::tensor_shape_proto::Dimension),
    Segment(&'a mut pb::tensor_proto::Segment),
    Entry(&'a mut pb::StringStringEntryProto),
    Opset(&'a mut pb::OperatorSetIdProto),
}

type Kids<'a> = Vec<(u32, Ref<'a>)>;

fn rep<'a, T>(out: &mut Kids<'a>, field: u32, v: &'a mut [T], f: fn(&'a mut T) -> Ref<'a>) {
    out.extend(v.iter_mut().map(|x| (field, f(x))));
}

fn one<'a, T: protobuf::Message>(
    out: &mut Kids<'a>,
    field: u32,
    v: &'a mut protobuf::MessageField<T>,
    f: fn(&'a mut T) -> Ref<'a>,
) {
    if let Some(x) = v.as_mut() {
        out.push((field, f(x)));
    }
}

impl<'a> Ref<'a> {
    /// The message's unknown fields.
    fn unknown(&mut self) -> &mut UnknownFields {
        match self {
            Ref::Model(m) => m.mut_unknown_fields(),
            Ref::Graph(m) => m.mut_unknown_fields(),
            Ref::Node(m) => m.mut_unknown_fields(),
            Ref::Attribute(m) => m.mut_unknown_fields(),
            Ref::Tensor(m) => m.mut_unknown_fields(),
            Ref::Sparse(m) => m.mut_unknown_fields(),
            Ref::ValueInfo(m) => m.mut_unknown_fields(),
            Ref::Type(m) => m.mut_unknown_fields(),
            Ref::TypeTensor(m) => m.mut_unknown_fields(),
            Ref::TypeSeq(m) => m.mut_unknown_fields(),
            Ref::TypeMap(m) => m.mut_unknown_fields(),
            Ref::TypeOpt(m) => m.mut_unknown_fields(),
            Ref::TypeSparse(m) => m.mut_unknown_fields(),
            Ref::Shape(m) => m.mut_unknown_fields(),
            Ref::Annotation(m) => m.mut_unknown_fields(),
            Ref::Training(m) => m.mut_unknown_fields(),
            Ref::Function(m) => m.mut_unknown_fields(),
            Ref::Dim(m) => m.mut_unknown_fields(),
            Ref::Segment(m) => m.mut_unknown_fields(),
            Ref::Entry(m) => m.mut_unknown_fields(),
            Ref::Opset(m) => m.mut_unknown_fields(),
        }
    }

    fn msg(&self) -> Msg {
        match self {
            Ref::Model(_) => Msg::Model,
            Ref::Graph(_) => Msg::Graph,
            Ref::Node(_) => Msg::Node,
            Ref::Attribute(_) => Msg::Attribute,
            Ref::Tensor(_) => Msg::Tensor,
            Ref::Sparse(_) => Msg::Sparse,
            Ref::ValueInfo(_) => Msg::ValueInfo,
            Ref::Type(_) => Msg::Type,
            Ref::TypeTensor(_) => Msg::TypeTensor,
            Ref::TypeSeq(_) => Msg::TypeSeq,
            Ref::TypeMap(_) => Msg::TypeMap,
            Ref::TypeOpt(_) => Msg::TypeOpt,
            Ref::TypeSparse(_) => Msg::TypeSparse,
            Ref::Shape(_) => Msg::Shape,
            Ref::Annotation(_) => Msg::Annotation,
            Ref::Training(_) => Msg::Training,
            Ref::Function(_) => Msg::Function,
            Ref::Dim(_) => Msg::Dim,
            Ref::Segment(_) => Msg::Segment,
            Ref::Entry(_) => Msg::Entry,
            Ref::Opset(_) => Msg::Opset,
        }
    }

    /// Whether scalar field `field` (one of [`scalars`]) holds the value proto3 does not encode.
    fn is_default(&self, field: u32) -> bool {
        let e = |s: &String| s.is_empty();
        match (self, field) {
            (Ref::Model(m), 1) => m.ir_version == 0,
            (Ref::Model(m), 2) => e(&m.producer_name),
            (Ref::Model(m), 3) => e(&m.producer_version),
            (Ref::Model(m), 4) => e(&m.domain),
            (Ref::Model(m), 5) => m.model_version == 0,
            (Ref::Model(m), 6) => e(&m.doc_string),
            (Ref::Graph(g), 2) => e(&g.name),
            (Ref::Graph(g), 10) => e(&g.doc_string),
            (Ref::Node(n), 3) => e(&n.name),
            (Ref::Node(n), 4) => e(&n.op_type),
            (Ref::Node(n), 6) => e(&n.doc_string),
            (Ref::Node(n), 7) => e(&n.domain),
            (Ref::Node(n), 8) => e(&n.overload),
            (Ref::Attribute(a), 1) => e(&a.name),
            (Ref::Attribute(a), 2) => a.f == 0.0,
            (Ref::Attribute(a), 3) => a.i == 0,
            (Ref::Attribute(a), 4) => a.s.is_empty(),
            (Ref::Attribute(a), 13) => e(&a.doc_string),
            (Ref::Attribute(a), 20) => a.type_.value() == 0,
            (Ref::Attribute(a), 21) => e(&a.ref_attr_name),
            (Ref::Tensor(t), 2) => t.data_type == 0,
            (Ref::Tensor(t), 8) => e(&t.name),
            (Ref::Tensor(t), 9) => t.raw_data.is_empty(),
            (Ref::Tensor(t), 12) => e(&t.doc_string),
            (Ref::Tensor(t), 14) => t.data_location.value() == 0,
            (Ref::ValueInfo(v), 1) => e(&v.name),
            (Ref::ValueInfo(v), 3) => e(&v.doc_string),
            (Ref::Type(t), 6) => e(&t.denotation),
            (Ref::TypeTensor(t), 1) => t.elem_type == 0,
            (Ref::TypeSparse(t), 1) => t.elem_type == 0,
            (Ref::TypeMap(t), 1) => t.key_type == 0,
            (Ref::Dim(d), 3) => e(&d.denotation),
            (Ref::Segment(s), 1) => s.begin == 0,
            (Ref::Segment(s), 2) => s.end == 0,
            (Ref::Entry(x), 1) => e(&x.key),
            (Ref::Entry(x), 2) => e(&x.value),
            (Ref::Annotation(a), 1) => e(&a.tensor_name),
            (Ref::Function(f), 1) => e(&f.name),
            (Ref::Function(f), 8) => e(&f.doc_string),
            (Ref::Function(f), 10) => e(&f.domain),
            (Ref::Function(f), 13) => e(&f.overload),
            (Ref::Opset(o), 1) => e(&o.domain),
            (Ref::Opset(o), 2) => o.version == 0,
            // Not a scalar of this message: never treated as a record.
            _ => false,
        }
    }

    /// Its child messages with their field numbers, in field order (the field numbers mirror
    /// `wire::child`).
    fn kids(self) -> Kids<'a> {
        let mut k = Vec::new();
        match self {
            Ref::Model(m) => {
                let pb::ModelProto { graph, opset_import, metadata_props, training_info, functions, .. } = m;
                one(&mut k, 7, graph, Ref::Graph);
                rep(&mut k, 8, opset_import, Ref::Opset);
                rep(&mut k, 14, metadata_props, Ref::Entry);
                rep(&mut k, 20, training_info, Ref::Training);
                rep(&mut k, 25, functions, Ref::Function);
            }
            Ref::Graph(g) => {
                let pb::GraphProto {
                    node,
                    initializer,
                    sparse_initializer,
                    input,
                    output,
                    value_info,
                    quantization_annotation,
                    metadata_props,
                    ..
                } = g;
                rep(&mut k, 1, node, Ref::Node);
                rep(&mut k, 5, initializer, Ref::Tensor);
                rep(&mut k, 11, input, Ref::ValueInfo);
                rep(&mut k, 12, output, Ref::ValueInfo);
                rep(&mut k, 13, value_info, Ref::ValueInfo);
                rep(&mut k, 14, quantization_annotation, Ref::Annotation);
                rep(&mut k, 15, sparse_initializer, Ref::Sparse);
                rep(&mut k, 16, metadata_props, Ref::Entry);
            }
            Ref::Node(n) => {
                let pb::NodeProto { attribute, metadata_props, .. } = n;
                rep(&mut k, 5, attribute, Ref::Attribute);
                rep(&mut k, 9, metadata_props, Ref::Entry);
            }
            Ref::Attribute(a) => {
                let pb::AttributeProto {
                    t, g, tensors, graphs, tp, type_protos, sparse_tensor, sparse_tensors, ..
                } = a;
                one(&mut k, 5, t, Ref::Tensor);
                one(&mut k, 6, g, Ref::Graph);
                rep(&mut k, 10, tensors, Ref::Tensor);
                rep(&mut k, 11, graphs, Ref::Graph);
                one(&mut k, 14, tp, Ref::Type);
                rep(&mut k, 15, type_protos, Ref::Type);
                one(&mut k, 22, sparse_tensor, Ref::Sparse);
                rep(&mut k, 23, sparse_tensors, Ref::Sparse);
            }
            Ref::Tensor(t) => {
                let pb::TensorProto { segment, external_data, metadata_props, .. } = t;
                one(&mut k, 3, segment, Ref::Segment);
                rep(&mut k, 13, external_data, Ref::Entry);
                rep(&mut k, 16, metadata_props, Ref::Entry);
            }
            Ref::Sparse(s) => {
                let pb::SparseTensorProto { values, indices, .. } = s;
                one(&mut k, 1, values, Ref::Tensor);
                one(&mut k, 2, indices, Ref::Tensor);
            }
            Ref::ValueInfo(v) => {
                let pb::ValueInfoProto { type_, metadata_props, .. } = v;
                one(&mut k, 2, type_, Ref::Type);
                rep(&mut k, 4, metadata_props, Ref::Entry);
            }
            Ref::Type(t) => match t.value.as_mut() {
                Some(tp::Value::TensorType(x)) => k.push((1, Ref::TypeTensor(x))),
                Some(tp::Value::SequenceType(x)) => k.push((4, Ref::TypeSeq(x))),
                Some(tp::Value::MapType(x)) => k.push((5, Ref::TypeMap(x))),
                Some(tp::Value::SparseTensorType(x)) => k.push((8, Ref::TypeSparse(x))),
                Some(tp::Value::OptionalType(x)) => k.push((9, Ref::TypeOpt(x))),
                _ => {}
            },
            Ref::TypeTensor(t) => one(&mut k, 2, &mut t.shape, Ref::Shape),
            Ref::TypeSparse(t) => one(&mut k, 2, &mut t.shape, Ref::Shape),
            Ref::TypeSeq(t) => one(&mut k, 1, &mut t.elem_type, Ref::Type),
            Ref::TypeOpt(t) => one(&mut k, 1, &mut t.elem_type, Ref::Type),
            Ref::TypeMap(t) => one(&mut k, 2, &mut t.value_type, Ref::Type),
            Ref::Shape(s) => rep(&mut k, 1, &mut s.dim, Ref::Dim),
            Ref::Annotation(a) => rep(&mut k, 2, &mut a.quant_parameter_tensor_names, Ref::Entry),
            Ref::Training(t) => {
                let pb::TrainingInfoProto { initialization, algorithm, initialization_binding, update_binding, .. } = t;
                one(&mut k, 1, initialization, Ref::Graph);
                one(&mut k, 2, algorithm, Ref::Graph);
                rep(&mut k, 3, initialization_binding, Ref::Entry);
                rep(&mut k, 4, update_binding, Ref::Entry);
            }
            Ref::Function(f) => {
                let pb::FunctionProto { node, opset_import, attribute_proto, value_info, metadata_props, .. } = f;
                rep(&mut k, 7, node, Ref::Node);
                rep(&mut k, 9, opset_import, Ref::Opset);
                rep(&mut k, 11, attribute_proto, Ref::Attribute);
                rep(&mut k, 12, value_info, Ref::ValueInfo);
                rep(&mut k, 14, metadata_props, Ref::Entry);
            }
            Ref::Dim(_) | Ref::Segment(_) | Ref::Entry(_) | Ref::Opset(_) => {}
        }
        k
    }
}

/// Whether an unknown field `number` with wire type `wire` of `n` is one of our records (a
/// declared scalar of the message with its declared wire type): Some(whether `n`'s decoded
/// value of the field is the default), None for a genuinely unknown field.
fn record_applies(n: &Ref, number: u32, wire: u8) -> Option<bool> {
    (class(n.msg(), number) == Class::Scalar(wire)).then(|| n.is_default(number))
}

fn add(u: &mut UnknownFields, field: u32, p: Payload) {
    match p {
        Payload::Varint => u.add_varint(field, 0),
        Payload::Fixed32(b) => u.add_fixed32(field, b),
        Payload::Fixed64(b) => u.add_fixed64(field, b),
        Payload::Empty => u.add_length_delimited(field, Vec::new()),
    }
}

fn owned(v: protobuf::UnknownValueRef) -> protobuf::UnknownValue {
    use protobuf::{UnknownValue as V, UnknownValueRef as R};
    match v {
        R::Fixed32(x) => V::Fixed32(x),
        R::Fixed64(x) => V::Fixed64(x),
        R::Varint(x) => V::Varint(x),
        R::LengthDelimited(b) => V::LengthDelimited(b.to_vec()),
    }
}

fn wire_of_payload(p: Payload) -> u8 {
    match p {
        Payload::Varint => 0,
        Payload::Fixed32(_) => 5,
        Payload::Fixed64(_) => 1,
        Payload::Empty => 2,
    }
}

/// Store the records of the wire scan as unknown fields of the decoded messages they belong to.
/// Records are sorted by path first, so the tree is walked once. A record whose message cannot be
/// found (an overridden oneof) or whose field decoded to a non-default value is dropped.
pub fn attach(model: &mut pb::ModelProto, mut records: Vec<Record>) {
    if records.is_empty() {
        return;
    }
    records.sort_by(|a, b| a.path.cmp(&b.path));
    fn walk(mut node: Ref<'_>, recs: &[Record], depth: usize) {
        let here = recs.iter().take_while(|r| r.path.len() == depth).count();
        for r in &recs[..here] {
            if record_applies(&node, r.field, wire_of_payload(r.value)) == Some(true) {
                add(node.unknown(), r.field, r.value);
            }
        }
        let rest = &recs[here..];
        if rest.is_empty() {
            return;
        }
        // Children by (field, index among that field's occurrences).
        let mut seen: HashMap<u32, u32> = HashMap::new();
        let mut by_key: HashMap<(u32, u32), Ref<'_>> = HashMap::new();
        for (field, kid) in node.kids() {
            let c = seen.entry(field).or_insert(0);
            by_key.insert((field, *c), kid);
            *c += 1;
        }
        let mut i = 0;
        while i < rest.len() {
            let key = rest[i].path[depth];
            let n = rest[i..].iter().take_while(|r| r.path[depth] == key).count();
            if let Some(kid) = by_key.remove(&key) {
                walk(kid, &rest[i..i + n], depth + 1);
            }
            i += n;
        }
    }
    walk(Ref::Model(model), &records, 0);
}

/// Before encoding: drop each recorded default whose field now holds a non-default value (the
/// rewrite set it), so the stale record cannot override it on decoding.
pub fn settle(model: &mut pb::ModelProto) {
    fn walk(mut node: Ref<'_>) {
        let u = node.unknown();
        if u.iter().next().is_some() {
            let all: Vec<(u32, protobuf::UnknownValue)> = u.iter().map(|(n, v)| (n, owned(v))).collect();
            let total = all.len();
            let keep: Vec<(u32, protobuf::UnknownValue)> = all
                .into_iter()
                .filter(|(n, v)| record_applies(&node, *n, v.wire_type() as u8) != Some(false))
                .collect();
            if keep.len() != total {
                let u = node.unknown();
                u.clear();
                for (n, v) in keep {
                    u.add_value(n, v);
                }
            }
        }
        for (_, kid) in node.kids() {
            walk(kid);
        }
    }
    walk(Ref::Model(model));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{io, wire};

    fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, ((field as u64) << 3) | wire as u64);
    }
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn msg(out: &mut Vec<u8>, field: u32, body: &[u8]) {
        tag(out, field, 2);
        varint(out, body.len() as u64);
        out.extend_from_slice(body);
    }
    fn string(out: &mut Vec<u8>, field: u32, s: &str) {
        msg(out, field, s.as_bytes());
    }

    /// A node `op` with explicit defaults: domain "", and an INT attribute `axis` with i: 0 and a
    /// FLOAT attribute with f: -0.0.
    fn node(op: &str, input: &str, output: &str, sub: Option<&[u8]>) -> Vec<u8> {
        let mut n = Vec::new();
        string(&mut n, 1, input);
        string(&mut n, 2, output);
        string(&mut n, 4, op);
        string(&mut n, 7, ""); // domain: ""
        let mut a = Vec::new();
        string(&mut a, 1, "axis");
        tag(&mut a, 3, 0);
        varint(&mut a, 0); // i: 0
        tag(&mut a, 20, 0);
        varint(&mut a, 2); // type: INT
        msg(&mut n, 5, &a);
        let mut f = Vec::new();
        string(&mut f, 1, "alpha");
        tag(&mut f, 2, 5);
        f.extend_from_slice(&(-0.0f32).to_bits().to_le_bytes()); // f: -0.0
        tag(&mut f, 20, 0);
        varint(&mut f, 1);
        msg(&mut n, 5, &f);
        if let Some(g) = sub {
            let mut a = Vec::new();
            string(&mut a, 1, "body");
            msg(&mut a, 6, g);
            tag(&mut a, 20, 0);
            varint(&mut a, 5);
            msg(&mut n, 5, &a);
        }
        n
    }

    fn model() -> Vec<u8> {
        model_with(None)
    }

    /// [`model`], its first node's domain written a second time as `domain2`.
    fn model_with(domain2: Option<&str>) -> Vec<u8> {
        let mut sub = Vec::new();
        msg(&mut sub, 1, &node("Identity", "y", "s", None));
        string(&mut sub, 2, "sub");
        string(&mut sub, 10, ""); // doc_string: ""
        let mut g = Vec::new();
        let mut first = node("Relu", "w", "y", None);
        if let Some(d) = domain2 {
            string(&mut first, 7, d);
        }
        msg(&mut g, 1, &first);
        msg(&mut g, 1, &node("Loop", "y", "z", Some(&sub)));
        string(&mut g, 2, "g");
        let mut t = Vec::new(); // initializer w: float [1], raw_data then explicit empty doc_string
        tag(&mut t, 1, 0);
        varint(&mut t, 1);
        tag(&mut t, 2, 0);
        varint(&mut t, 1);
        string(&mut t, 8, "w");
        msg(&mut t, 9, &1.0f32.to_le_bytes());
        string(&mut t, 12, "");
        msg(&mut g, 5, &t);
        let mut m = Vec::new();
        tag(&mut m, 1, 0);
        varint(&mut m, 8);
        string(&mut m, 2, ""); // producer_name: ""
        msg(&mut m, 7, &g);
        let mut o = Vec::new();
        string(&mut o, 1, "");
        tag(&mut o, 2, 0);
        varint(&mut o, 13);
        msg(&mut m, 8, &o);
        m
    }

    fn sorted(mut r: Vec<Record>) -> Vec<Record> {
        r.sort_by(|a, b| (&a.path, a.field).cmp(&(&b.path, b.field)));
        r
    }

    #[test]
    fn explicit_defaults_survive_a_round_trip() {
        let bytes = model();
        let (_, before) = wire::scan_presence(&bytes).unwrap();
        // model producer_name; opset domain; 2 top nodes × (domain, i, f); sub doc_string;
        // sub node (domain, i, f); tensor doc_string.
        assert_eq!(before.len(), 1 + 1 + 6 + 1 + 3 + 1, "{before:?}");
        assert!(before.iter().any(|r| r.value == Payload::Fixed32((-0.0f32).to_bits())));
        let mut m = io::parse(&bytes).unwrap();
        settle(&mut m);
        let out = m.write_to_bytes().unwrap();
        let (_, after) = wire::scan_presence(&out).unwrap();
        assert_eq!(sorted(before), sorted(after));
        assert!(io::parse(&out).unwrap() == m);
    }

    #[test]
    fn a_value_set_by_the_rewrite_wins_over_its_recorded_default() {
        let mut m = io::parse(&model()).unwrap();
        let g = m.graph.as_mut().unwrap();
        g.node[0].attribute[0].i = 3;
        g.node[0].domain = "ai.onnx".into();
        g.node[1].attribute[0].f = 0.5;
        g.initializer[0].doc_string = "w".into();
        settle(&mut m);
        let out = m.write_to_bytes().unwrap();
        // Decoded by protobuf itself (last occurrence wins): the new values, not the stale defaults.
        let back = <pb::ModelProto as Message>::parse_from_bytes(&out).unwrap();
        let g = back.graph.as_ref().unwrap();
        assert_eq!(g.node[0].attribute[0].i, 3);
        assert_eq!(g.node[0].domain, "ai.onnx");
        assert_eq!(g.node[1].attribute[0].f, 0.5);
        assert_eq!(g.initializer[0].doc_string, "w");
        // The untouched defaults are still present.
        let (_, after) = wire::scan_presence(&out).unwrap();
        assert_eq!(after.len(), 13 - 3);
    }

    #[test]
    fn a_later_non_default_occurrence_is_not_recorded_as_present_default() {
        // domain "" then domain "x" on one node: protobuf keeps "x", and no empty domain is added.
        let bytes = model_with(Some("x"));
        let p = io::parse(&bytes).unwrap();
        assert_eq!(p.graph.as_ref().unwrap().node[0].domain, "x");
        let out = p.write_to_bytes().unwrap();
        let back = <pb::ModelProto as Message>::parse_from_bytes(&out).unwrap();
        assert_eq!(back.graph.as_ref().unwrap().node[0].domain, "x");
        assert_eq!(wire::scan_presence(&out).unwrap().1.len(), 13 - 1);
    }

    #[test]
    fn a_replaced_singular_message_takes_its_records_with_it() {
        // A second `graph` field: rust-protobuf keeps only the last occurrence, so the first
        // graph's records must not land on the second graph's messages.
        let mut bytes = model();
        let mut n = Vec::new();
        string(&mut n, 1, "w");
        string(&mut n, 2, "y");
        string(&mut n, 4, "Relu");
        let mut g = Vec::new();
        msg(&mut g, 1, &n);
        let mut t = Vec::new();
        tag(&mut t, 1, 0);
        varint(&mut t, 1);
        tag(&mut t, 2, 0);
        varint(&mut t, 1);
        string(&mut t, 8, "w");
        msg(&mut t, 9, &1.0f32.to_le_bytes());
        msg(&mut g, 5, &t);
        msg(&mut bytes, 7, &g);
        let (_, recs) = wire::scan_presence(&bytes).unwrap();
        assert!(recs.iter().all(|r| r.path.is_empty() || r.path[0] != (7, 0)), "{recs:?}");
        let p = io::parse(&bytes).unwrap();
        let out = p.write_to_bytes().unwrap();
        assert_eq!(wire::scan_presence(&out).unwrap().1.len(), 2); // producer_name, opset domain
    }

    #[test]
    fn genuinely_unknown_fields_are_left_alone() {
        let mut bytes = model();
        tag(&mut bytes, 99, 0); // unknown field 99 on the model
        varint(&mut bytes, 0);
        let mut m = io::parse(&bytes).unwrap();
        m.producer_name = "me".into();
        settle(&mut m);
        assert!(m.unknown_fields().iter().any(|(n, _)| n == 99));
        assert!(!m.unknown_fields().iter().any(|(n, _)| n == 2));
    }
}
