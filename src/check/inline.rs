//! The model's local functions inlined into its graph, for counting MACs: tract ignores
//! `ModelProto.functions`, so a node that calls one (torch's `export_modules_as_functions`
//! blocks) is an unknown op to it, and the Conv and MatMul nodes in the function's body were not
//! counted (1 280 MACs reported for a 3.77 M-MAC model).
//!
//! Contract: [`inline_functions`] returns None when no node of the main graph calls a function
//! of the model; else the model with every such call replaced by the function's body, recursively
//! (a function calling another; a cycle stops at depth 16 and leaves the call): the body's
//! inputs and outputs renamed to the call's, its other values prefixed with the call's first
//! output name (unique in the graph) and the function's name, attributes that refer to the call's (`ref_attr_name`) resolved
//! from them and dropped when the call does not set them (the op's default then applies).
//! Nodes inside If / Loop / Scan bodies are not searched. The result is for analysis only: it
//! is never written.

use std::collections::HashMap;
use tract_onnx::pb;

/// Calls nested deeper than this are left as they are.
const MAX_DEPTH: usize = 16;

/// See the module doc.
pub fn inline_functions(m: &pb::ModelProto) -> Option<pb::ModelProto> {
    let funcs: HashMap<(&str, &str), &pb::FunctionProto> =
        m.functions.iter().map(|f| ((f.domain.as_deref().unwrap_or(""), f.name.as_deref().unwrap_or("")), f)).collect();
    let g = m.graph.as_ref()?;
    let calls = |n: &pb::NodeProto| funcs.contains_key(&(n.domain.as_str(), n.op_type.as_str()));
    if !g.node.iter().any(calls) {
        return None;
    }
    let mut nodes = Vec::with_capacity(g.node.len());
    for n in &g.node {
        expand(n, &funcs, 0, &mut nodes);
    }
    let mut out = m.clone();
    if let Some(g) = out.graph.as_mut() {
        g.node = nodes;
    }
    for f in &m.functions {
        for o in &f.opset_import {
            if !out.opset_import.iter().any(|x| x.domain == o.domain) {
                out.opset_import.push(o.clone());
            }
        }
    }
    Some(out)
}

/// `n`, or the body of the function it calls with its values renamed, appended to `out`.
fn expand(
    n: &pb::NodeProto,
    funcs: &HashMap<(&str, &str), &pb::FunctionProto>,
    depth: usize,
    out: &mut Vec<pb::NodeProto>,
) {
    let Some(f) = funcs.get(&(n.domain.as_str(), n.op_type.as_str())).filter(|_| depth < MAX_DEPTH) else {
        out.push(n.clone());
        return;
    };
    let first = n.output.iter().find(|o| !o.is_empty()).map(String::as_str).unwrap_or(&n.name);
    let prefix = format!("{first}/{}/", n.op_type);
    let mut names: HashMap<&str, String> = HashMap::new();
    for (i, formal) in f.input.iter().enumerate() {
        names.insert(formal, n.input.get(i).cloned().unwrap_or_default());
    }
    for (i, formal) in f.output.iter().enumerate() {
        names.insert(formal, n.output.get(i).cloned().unwrap_or_default());
    }
    let rename = |v: &str, names: &HashMap<&str, String>| -> String {
        if v.is_empty() {
            return String::new();
        }
        names.get(v).cloned().unwrap_or_else(|| format!("{prefix}{v}"))
    };
    for b in &f.node {
        let mut c = b.clone();
        c.input = b.input.iter().map(|v| rename(v, &names)).collect();
        c.output = b.output.iter().map(|v| rename(v, &names)).collect();
        c.name = format!("{}{}", prefix, if b.name.is_empty() { &b.op_type } else { &b.name });
        c.attribute = b
            .attribute
            .iter()
            .filter_map(|a| {
                if a.ref_attr_name.is_empty() {
                    return Some(a.clone());
                }
                let mut v = n.attribute.iter().find(|x| x.name == a.ref_attr_name)?.clone();
                v.name = a.name.clone();
                Some(v)
            })
            .collect();
        expand(&c, funcs, depth + 1, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, domain: &str, ins: &[&str], outs: &[&str]) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            domain: domain.into(),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: outs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// A call of `local:Block(x, w) -> y` whose body is Conv(x, w) -> t; Relu(t) -> y, with the
    /// Conv's `group` referring to the call's `g`, itself calling `local:Inner` once.
    #[test]
    fn a_call_becomes_its_body_with_the_values_renamed() {
        let mut conv = node("Conv", "", &["x", "w"], &["t"]);
        conv.attribute.push(pb::AttributeProto {
            name: "group".into(),
            ref_attr_name: "g".into(),
            ..Default::default()
        });
        conv.attribute.push(pb::AttributeProto {
            name: "strides_unset".into(),
            ref_attr_name: "missing".into(),
            ..Default::default()
        });
        let block = pb::FunctionProto {
            name: Some("Block".into()),
            domain: Some("local".into()),
            input: vec!["x".into(), "w".into()],
            output: vec!["y".into()],
            node: vec![conv, node("Inner", "local", &["t"], &["y"])],
            ..Default::default()
        };
        let inner = pb::FunctionProto {
            name: Some("Inner".into()),
            domain: Some("local".into()),
            input: vec!["a".into()],
            output: vec!["b".into()],
            node: vec![node("Relu", "", &["a"], &["b"])],
            ..Default::default()
        };
        let mut call = node("Block", "local", &["in", "W"], &["out"]);
        call.attribute.push(pb::AttributeProto { name: "g".into(), i: 2, ..Default::default() });
        let m = pb::ModelProto {
            graph: Some(pb::GraphProto { node: vec![call, node("Relu", "", &["out"], &["z"])], ..Default::default() }),
            functions: vec![block, inner],
            ..Default::default()
        };
        let out = inline_functions(&m).unwrap();
        let g = out.graph.unwrap();
        fn strs(s: &[String]) -> Vec<&str> {
            s.iter().map(String::as_str).collect()
        }
        let ops: Vec<(&str, Vec<&str>, Vec<&str>)> =
            g.node.iter().map(|n| (n.op_type.as_str(), strs(&n.input), strs(&n.output))).collect();
        assert_eq!(
            ops,
            vec![
                ("Conv", vec!["in", "W"], vec!["out/Block/t"]),
                ("Relu", vec!["out/Block/t"], vec!["out"]),
                ("Relu", vec!["out"], vec!["z"]),
            ]
        );
        let attrs: Vec<(&str, i64)> = g.node[0].attribute.iter().map(|a| (a.name.as_str(), a.i)).collect();
        assert_eq!(attrs, vec![("group", 2)]);
        assert!(inline_functions(&pb::ModelProto { graph: g.clone().into(), ..Default::default() }).is_none());
    }
}
