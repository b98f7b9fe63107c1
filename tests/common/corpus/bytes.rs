//! Cases: bytes that are not a usable model (empty, garbage, wrong wire types, deep nesting, huge
//! counts, control characters in names, lengths past the end).
use super::*;

pub(super) fn bytes_cases(v: &mut Vec<Case>) {
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

pub(super) fn enc_node(n: &NodeProto) -> Vec<u8> {
    n.write_to_bytes().unwrap()
}

pub(super) fn enc_vi(x: &ValueInfoProto) -> Vec<u8> {
    x.write_to_bytes().unwrap()
}
