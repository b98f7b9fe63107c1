//! A schema-aware scan of the protobuf wire format of an ONNX model, run before decoding.
//!
//! Why: protobuf 3.4 skips an unknown *group* (wire type 3) by recursing once per nested group
//! with no depth limit, so a few hundred KiB of nested group tags overflow the stack and abort
//! the process (no panic to catch). ONNX uses no groups at all, so the scan refuses them. It also
//! refuses nesting deeper than protobuf's own limit and estimates the memory the decoded message
//! tree will take, so a small file of millions of empty messages cannot make the decoder allocate
//! hundreds of times its size. The scan is iterative, reads each byte once and allocates only
//! its stack of open messages (bounded by [`MAX_DEPTH`]).
//!
//! The table below mirrors the message-typed fields of `onnx.proto` as generated in
//! `onnx-protobuf` 0.2: a length-delimited field is entered only when protobuf would decode it
//! as a message; any other payload (raw_data, strings, packed numbers, unknown fields) is opaque.

use super::presence::{self, Class, Msg, Payload, Record};
use anyhow::{bail, Result};
use onnx_protobuf as pb;
use std::mem::size_of;

/// protobuf's default recursion limit (nested messages); deeper input is refused by it anyway.
pub const MAX_DEPTH: usize = 100;

/// The decoded tree may take at most this many times the file size (plus [`DECODE_SLACK`]).
/// Real models, whose bytes are mostly weights, stay far below (about 1×; graph-only models
/// with many small nodes about 10×).
pub const MAX_AMPLIFICATION: u64 = 32;
pub const DECODE_SLACK: u64 = 256 << 20;

/// The message type of a length-delimited field, or None when protobuf reads it as bytes.
fn child(m: Msg, field: u32) -> Option<Msg> {
    use Msg::*;
    Some(match (m, field) {
        (Model, 7) => Graph,
        (Model, 8) => Opset,
        (Model, 14) => Entry,
        (Model, 20) => Training,
        (Model, 25) => Function,
        (Graph, 1) => Node,
        (Graph, 5) => Tensor,
        (Graph, 15) => Sparse,
        (Graph, 11..=13) => ValueInfo,
        (Graph, 14) => Annotation,
        (Graph, 16) => Entry,
        (Node, 5) => Attribute,
        (Node, 9) => Entry,
        (Attribute, 5 | 10) => Tensor,
        (Attribute, 6 | 11) => Graph,
        (Attribute, 22 | 23) => Sparse,
        (Attribute, 14 | 15) => Type,
        (Tensor, 3) => Segment,
        (Tensor, 13 | 16) => Entry,
        (Sparse, 1 | 2) => Tensor,
        (ValueInfo, 2) => Type,
        (ValueInfo, 4) => Entry,
        (Type, 1) => TypeTensor,
        (Type, 4) => TypeSeq,
        (Type, 5) => TypeMap,
        (Type, 9) => TypeOpt,
        (Type, 8) => TypeSparse,
        (TypeTensor | TypeSparse, 2) => Shape,
        (TypeSeq | TypeOpt, 1) => Type,
        (TypeMap, 2) => Type,
        (Shape, 1) => Dim,
        (Annotation, 2) => Entry,
        (Training, 1 | 2) => Graph,
        (Training, 3 | 4) => Entry,
        (Function, 7) => Node,
        (Function, 11) => Attribute,
        (Function, 9) => Opset,
        (Function, 12) => ValueInfo,
        (Function, 14) => Entry,
        _ => return None,
    })
}

/// In-memory size of one decoded message (the struct itself; its heap parts are counted by field).
fn msg_size(m: Msg) -> u64 {
    use pb::type_proto as tp;
    (match m {
        Msg::Model => size_of::<pb::ModelProto>(),
        Msg::Graph => size_of::<pb::GraphProto>(),
        Msg::Node => size_of::<pb::NodeProto>(),
        Msg::Attribute => size_of::<pb::AttributeProto>(),
        Msg::Tensor => size_of::<pb::TensorProto>(),
        Msg::Sparse => size_of::<pb::SparseTensorProto>(),
        Msg::ValueInfo => size_of::<pb::ValueInfoProto>(),
        Msg::Type => size_of::<pb::TypeProto>(),
        Msg::TypeTensor => size_of::<tp::Tensor>(),
        Msg::TypeSeq => size_of::<tp::Sequence>(),
        Msg::TypeMap => size_of::<tp::Map>(),
        Msg::TypeOpt => size_of::<tp::Optional>(),
        Msg::TypeSparse => size_of::<tp::SparseTensor>(),
        Msg::Shape => size_of::<pb::TensorShapeProto>(),
        Msg::Dim => size_of::<pb::tensor_shape_proto::Dimension>(),
        Msg::Segment => size_of::<pb::tensor_proto::Segment>(),
        Msg::Entry => size_of::<pb::StringStringEntryProto>(),
        Msg::Annotation => size_of::<pb::TensorAnnotation>(),
        Msg::Training => size_of::<pb::TrainingInfoProto>(),
        Msg::Function => size_of::<pb::FunctionProto>(),
        Msg::Opset => size_of::<pb::OperatorSetIdProto>(),
    }) as u64
        // boxed singular fields, allocator rounding
        + 16
}

/// Packed repeated varint fields: one payload byte can decode to an 8-byte element.
fn packed_varints(m: Msg, field: u32) -> bool {
    matches!((m, field), (Msg::Tensor, 1 | 5 | 7 | 11) | (Msg::Sparse, 3) | (Msg::Attribute, 8))
}

/// Where the scan reads from: a byte slice, or a file read once front to back (opaque payloads
/// such as raw_data are skipped, not read).
trait Source {
    /// The byte at `pos` (the position after the previous byte read or skip), None at the end.
    fn byte(&mut self, pos: usize) -> Result<Option<u8>>;
    /// Skip `n` bytes from `pos` (may go past the end; the scan checks positions itself).
    fn skip(&mut self, pos: usize, n: usize) -> Result<()>;
}

impl Source for &[u8] {
    fn byte(&mut self, pos: usize) -> Result<Option<u8>> {
        Ok(self.get(pos).copied())
    }
    fn skip(&mut self, _pos: usize, _n: usize) -> Result<()> {
        Ok(())
    }
}

struct Stream<R>(R, usize);

impl<R: std::io::BufRead + std::io::Seek> Source for Stream<R> {
    fn byte(&mut self, pos: usize) -> Result<Option<u8>> {
        if pos >= self.1 {
            return Ok(None);
        }
        let buf = self.0.fill_buf()?;
        let Some(&b) = buf.first() else { return Ok(None) };
        self.0.consume(1);
        Ok(Some(b))
    }
    fn skip(&mut self, _pos: usize, n: usize) -> Result<()> {
        let buffered = self.0.fill_buf()?.len();
        if n <= buffered {
            self.0.consume(n);
        } else {
            self.0.consume(buffered);
            self.0.seek(std::io::SeekFrom::Current((n - buffered) as i64))?;
        }
        Ok(())
    }
}

fn varint(b: &mut impl Source, pos: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let Some(byte) = b.byte(*pos)? else { bail!("truncated varint at byte {}", *pos) };
        *pos += 1;
        v |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("varint longer than 10 bytes at byte {}", *pos)
}

/// What the scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireStats {
    /// Deepest message nesting (the model itself is depth 1).
    pub depth: usize,
    /// Number of messages.
    pub messages: u64,
    /// Estimated bytes of the decoded message tree.
    pub decoded_bytes: u64,
}

/// Scan a serialized `ModelProto`; error on groups, bad tags, truncation, nesting deeper than
/// [`MAX_DEPTH`] or a decoded size over `MAX_AMPLIFICATION × len + DECODE_SLACK`.
pub fn scan(b: &[u8]) -> Result<WireStats> {
    scan_from(&mut { b }, b.len(), None)
}

/// [`scan`], also returning the scalar fields present with their default value (see `presence`).
pub fn scan_presence(b: &[u8]) -> Result<(WireStats, Vec<Record>)> {
    let mut recs = Vec::new();
    let st = scan_from(&mut { b }, b.len(), Some(&mut recs))?;
    Ok((st, recs))
}

/// [`scan`] of the `len` bytes a reader holds from its current position, read once front to
/// back without keeping them: opaque payloads (raw_data, strings) are skipped with a seek.
pub fn scan_reader<R: std::io::BufRead + std::io::Seek>(r: R, len: u64) -> Result<WireStats> {
    let len = usize::try_from(len).map_err(|_| anyhow::anyhow!("file too large"))?;
    scan_from(&mut Stream(r, len), len, None)
}

/// [`scan_reader`], also returning the scalar fields present with their default value.
pub fn scan_reader_presence<R: std::io::BufRead + std::io::Seek>(r: R, len: u64) -> Result<(WireStats, Vec<Record>)> {
    let len = usize::try_from(len).map_err(|_| anyhow::anyhow!("file too large"))?;
    let mut recs = Vec::new();
    let st = scan_from(&mut Stream(r, len), len, Some(&mut recs))?;
    Ok((st, recs))
}

/// One open message of the scan.
struct Frame {
    msg: Msg,
    end: usize,
    /// (field, index) in its parent (unused for the model).
    at: (u32, u32),
    /// Occurrences so far of each repeated message field (only when recording presence).
    seen: Vec<(u32, u32)>,
    /// Records made so far when this message was opened.
    opened: usize,
    /// Record range of the last occurrence of each singular message field: protobuf (rust-
    /// protobuf) keeps only the last occurrence, so an earlier one's records are dropped.
    single: Vec<(u32, usize, usize)>,
}

fn scan_from(b: &mut impl Source, len: usize, mut recs: Option<&mut Vec<Record>>) -> Result<WireStats> {
    let mut stack: Vec<Frame> =
        vec![Frame { msg: Msg::Model, end: len, at: (0, 0), seen: Vec::new(), opened: 0, single: Vec::new() }];
    let mut pos = 0usize;
    let mut st = WireStats { depth: 1, messages: 1, decoded_bytes: msg_size(Msg::Model) };
    let budget = (len as u64).saturating_mul(MAX_AMPLIFICATION).saturating_add(DECODE_SLACK);
    while let Some(top) = stack.last() {
        let (m, end) = (top.msg, top.end);
        if pos == end {
            let done = stack.pop().expect("open message");
            if let (Some(recs), Some(parent)) = (recs.as_deref_mut(), stack.last_mut()) {
                let field = done.at.0;
                if class(parent.msg, field) != Class::RepeatedMsg {
                    let range = (field, done.opened, recs.len());
                    match parent.single.iter_mut().find(|s| s.0 == field) {
                        Some(prev) => {
                            for r in &mut recs[prev.1..prev.2] {
                                r.field = 0; // dropped below
                            }
                            *prev = range;
                        }
                        None => parent.single.push(range),
                    }
                }
            }
            continue;
        }
        let at = pos;
        let tag = varint(b, &mut pos)?;
        if tag > u32::MAX as u64 || tag >> 3 == 0 {
            bail!("bad protobuf tag {tag} at byte {at}");
        }
        let field = (tag >> 3) as u32;
        let wire = (tag & 7) as u8;
        // A default-valued scalar seen here, if presence is being recorded.
        let mut default: Option<Payload> = None;
        let record = recs.is_some() && class(m, field) == Class::Scalar(wire);
        match wire {
            0 => {
                let v = varint(b, &mut pos)?;
                st.decoded_bytes += 8;
                if record && v == 0 {
                    default = Some(Payload::Varint);
                }
            }
            1 => {
                if record {
                    let mut x = [0u8; 8];
                    for (i, byte) in x.iter_mut().enumerate() {
                        *byte = b.byte(pos + i)?.ok_or_else(|| anyhow::anyhow!("truncated field at byte {at}"))?;
                    }
                    let p = Payload::Fixed64(u64::from_le_bytes(x));
                    default = presence::is_default_payload(p).then_some(p);
                } else {
                    b.skip(pos, 8)?;
                }
                pos += 8;
                st.decoded_bytes += 8;
            }
            5 => {
                if record {
                    let mut x = [0u8; 4];
                    for (i, byte) in x.iter_mut().enumerate() {
                        *byte = b.byte(pos + i)?.ok_or_else(|| anyhow::anyhow!("truncated field at byte {at}"))?;
                    }
                    let p = Payload::Fixed32(u32::from_le_bytes(x));
                    default = presence::is_default_payload(p).then_some(p);
                } else {
                    b.skip(pos, 4)?;
                }
                pos += 4;
                st.decoded_bytes += 8;
            }
            2 => {
                let len = varint(b, &mut pos)?;
                if len > (end - pos.min(end)) as u64 {
                    bail!("field {field} at byte {at}: length {len} runs past the end of its message");
                }
                let len = len as usize;
                if record && len == 0 {
                    default = Some(Payload::Empty);
                }
                match child(m, field) {
                    Some(c) => {
                        if stack.len() >= MAX_DEPTH {
                            bail!("messages nested deeper than {MAX_DEPTH} levels at byte {at}");
                        }
                        let mut idx = 0;
                        if recs.is_some() && class(m, field) == Class::RepeatedMsg {
                            let seen = &mut stack.last_mut().expect("open message").seen;
                            match seen.iter_mut().find(|(f, _)| *f == field) {
                                Some((_, n)) => {
                                    idx = *n;
                                    *n += 1;
                                }
                                None => seen.push((field, 1)),
                            }
                        }
                        let opened = recs.as_ref().map_or(0, |r| r.len());
                        stack.push(Frame {
                            msg: c,
                            end: pos + len,
                            at: (field, idx),
                            seen: Vec::new(),
                            opened,
                            single: Vec::new(),
                        });
                        st.depth = st.depth.max(stack.len());
                        st.messages += 1;
                        st.decoded_bytes += msg_size(c);
                    }
                    None => {
                        let per = if packed_varints(m, field) { 8 } else { 1 };
                        st.decoded_bytes += len as u64 * per + 24;
                        b.skip(pos, len)?;
                        pos += len;
                    }
                }
            }
            3 | 4 => bail!("protobuf group (wire type {}) at byte {at}: ONNX uses no groups", tag & 7),
            w => bail!("bad protobuf wire type {w} at byte {at}"),
        }
        if pos > end {
            bail!("field {field} at byte {at} runs past the end of its message");
        }
        if let (Some(value), Some(recs)) = (default, recs.as_deref_mut()) {
            // The message holding the field: the frame on top, unless a child was just entered.
            let holder = if wire == 2 && child(m, field).is_some() { stack.len() - 1 } else { stack.len() };
            let path = stack[1..holder].iter().map(|f| f.at).collect();
            recs.push(Record { path, field, value });
        }
        if st.decoded_bytes > budget {
            bail!(
                "the decoded model would take more than {} bytes ({}× the file size): refusing to decode",
                budget,
                MAX_AMPLIFICATION
            );
        }
    }
    if let Some(recs) = recs {
        recs.retain(|r| r.field != 0);
    }
    Ok(st)
}

fn class(m: Msg, field: u32) -> Class {
    presence::class(m, field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::{Message, ModelProto};

    #[test]
    fn nested_groups_are_refused_without_recursion() {
        let mut b = vec![0x08, 0x07]; // ir_version 7
        b.extend(std::iter::repeat_n(0x0b, 1 << 20)); // field 1, start group, a million times
        let e = scan(&b).unwrap_err().to_string();
        assert!(e.contains("group"), "{e}");
    }

    #[test]
    fn valid_model_scans() {
        let mut m = ModelProto::new();
        m.ir_version = 8;
        let g = m.graph.mut_or_insert_default();
        g.node.push(Default::default());
        g.node[0].op_type = "Relu".into();
        let b = m.write_to_bytes().unwrap();
        let st = scan(&b).unwrap();
        assert_eq!(st.depth, 3);
        assert_eq!(st.messages, 3);
    }

    #[test]
    fn many_empty_messages_are_refused() {
        let mut g = Vec::new();
        for _ in 0..(8 << 20) {
            g.extend_from_slice(&[0x0a, 0x00]); // empty NodeProto
        }
        let mut b = vec![0x08, 0x07, 0x3a];
        let mut len = g.len();
        while len >= 0x80 {
            b.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        b.push(len as u8);
        b.extend(g);
        let e = scan(&b).unwrap_err().to_string();
        assert!(e.contains("refusing to decode"), "{e}");
    }

    #[test]
    fn reader_scan_agrees_with_slice_scan() {
        let mut m = ModelProto::new();
        m.ir_version = 8;
        let g = m.graph.mut_or_insert_default();
        g.node.push(Default::default());
        g.node[0].op_type = "Relu".into();
        let mut t = onnx_protobuf::TensorProto::new();
        t.raw_data = vec![7u8; 300_000];
        g.initializer.push(t);
        let b = m.write_to_bytes().unwrap();
        let st = scan(&b).unwrap();
        let sr = scan_reader(std::io::BufReader::with_capacity(64, std::io::Cursor::new(&b)), b.len() as u64).unwrap();
        assert_eq!(st, sr);
        for cut in [1, 5, b.len() / 2, b.len() - 1] {
            let e1 = scan(&b[..cut]).map_err(|e| e.to_string());
            let e2 = scan_reader(std::io::Cursor::new(&b[..cut]), cut as u64).map_err(|e| e.to_string());
            assert_eq!(e1, e2);
        }
        let mut grp = vec![0x08, 0x07];
        grp.extend(std::iter::repeat_n(0x0b, 1000));
        assert_eq!(
            scan(&grp).map_err(|e| e.to_string()),
            scan_reader(std::io::Cursor::new(&grp), grp.len() as u64).map_err(|e| e.to_string())
        );
    }
}
