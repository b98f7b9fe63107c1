//! Checks that a decoded model is well-formed enough to analyse and to write back: every tensor's
//! data agrees with its dims and type, names are unique and defined, the graph has no cycle,
//! attributes hold the value their type says. Each error is one line naming the tensor, node or
//! value at fault.
//!
//! Deliberately not checked here: operator semantics (input counts, shapes, attribute ranges) —
//! the passes check what they rely on, and tract checks the rest when it runs the model.

use super::graph::node_label;
use super::tensor::{self, dt, tname};
use anyhow::{bail, Context, Result};
use onnx_protobuf::{AttributeProto, GraphProto, ModelProto, NodeProto, SparseTensorProto, TensorProto};
use std::collections::{HashMap, HashSet};

/// Deepest nesting of subgraphs we analyse (protobuf's limit of 100 nested messages allows 33).
pub const MAX_GRAPH_DEPTH: usize = 40;

/// Highest `TensorProto.DataType` value defined by ONNX (INT2 = 26, ONNX 1.19).
pub const MAX_KNOWN_DTYPE: i32 = 26;

/// Is this tensor's data stored outside the model file (not yet read)?
pub fn is_external(t: &TensorProto) -> bool {
    t.data_location.value() == 1 || !t.external_data.is_empty()
}

/// A name that error messages can quote on one line: no control characters (newlines, NULs).
/// Real models never have them; a hostile one would otherwise forge extra lines of output.
pub fn check_name(s: &str, what: &str) -> Result<()> {
    if s.chars().any(char::is_control) {
        bail!("{what} {s:?} contains control characters");
    }
    Ok(())
}

/// Check one tensor: dims, data type, data location and (unless its data is still external)
/// that the amount of data matches the dims.
pub fn check_tensor(t: &TensorProto) -> Result<()> {
    check_name(&t.name, "tensor name")?;
    for e in &t.external_data {
        check_name(&e.key, "external data key")?;
        check_name(&e.value, "external data value")?;
    }
    let name = tname(t);
    tensor::shape(t)?;
    let loc = t.data_location.value();
    if loc != 0 && loc != 1 {
        bail!("tensor '{name}': unknown data_location {loc}");
    }
    if t.data_type <= 0 || t.data_type > MAX_KNOWN_DTYPE {
        bail!("tensor '{name}': unknown data type {}", t.data_type);
    }
    if is_external(t) {
        if !t.external_data.iter().any(|e| e.key == "location") {
            bail!("tensor '{name}': external data without a location");
        }
        return Ok(());
    }
    // Full length checks for the types we read and write; dims only for the others
    // (complex, 8/4/2-bit types), which we never touch.
    if t.data_type == dt::STRING || tensor::elem_size(t.data_type).is_some() {
        tensor::storage(t)?;
    }
    Ok(())
}

fn check_sparse(s: &SparseTensorProto, what: &str) -> Result<()> {
    let (Some(v), Some(i)) = (s.values.as_ref(), s.indices.as_ref()) else {
        bail!("{what}: sparse tensor without values or indices");
    };
    check_tensor(v)?;
    check_tensor(i)?;
    let mut n: u64 = 1;
    for &d in &s.dims {
        if d < 0 {
            bail!("{what}: sparse tensor '{}' has negative dimension {d}", tname(v));
        }
        if d > 0 {
            n = n.checked_mul(d as u64).filter(|&n| n <= tensor::MAX_ELEMS).with_context(|| {
                format!("{what}: sparse tensor '{}' dims {:?} describe too many elements", tname(v), s.dims)
            })?;
        }
    }
    Ok(())
}

/// Every tensor of the model, recursively (read-only twin of `io::for_each_tensor_mut`).
pub fn for_each_tensor(m: &ModelProto, f: &mut dyn FnMut(&TensorProto) -> Result<()>) -> Result<()> {
    fn attrs(n: &NodeProto, f: &mut dyn FnMut(&TensorProto) -> Result<()>, depth: usize) -> Result<()> {
        for a in &n.attribute {
            if let Some(t) = a.t.as_ref() {
                f(t)?;
            }
            for t in &a.tensors {
                f(t)?;
            }
            for s in a.sparse_tensor.as_ref().into_iter().chain(&a.sparse_tensors) {
                for t in s.values.as_ref().into_iter().chain(s.indices.as_ref()) {
                    f(t)?;
                }
            }
            for g in a.g.as_ref().into_iter().chain(&a.graphs) {
                graph(g, f, depth + 1)?;
            }
        }
        Ok(())
    }
    fn graph(g: &GraphProto, f: &mut dyn FnMut(&TensorProto) -> Result<()>, depth: usize) -> Result<()> {
        if depth > MAX_GRAPH_DEPTH {
            bail!("subgraphs nested deeper than {MAX_GRAPH_DEPTH} levels (graph '{}')", g.name);
        }
        for t in &g.initializer {
            f(t)?;
        }
        for s in &g.sparse_initializer {
            for t in s.values.as_ref().into_iter().chain(s.indices.as_ref()) {
                f(t)?;
            }
        }
        for n in &g.node {
            attrs(n, f, depth)?;
        }
        Ok(())
    }
    if let Some(g) = m.graph.as_ref() {
        graph(g, f, 0)?;
    }
    for ti in &m.training_info {
        for g in ti.initialization.as_ref().into_iter().chain(ti.algorithm.as_ref()) {
            graph(g, f, 0)?;
        }
    }
    for fun in &m.functions {
        for n in &fun.node {
            attrs(n, f, 0)?;
        }
    }
    Ok(())
}

/// Check a whole model: opset imports, every tensor (external ones: dims and type only), and the
/// main graph with its subgraphs (names, references, cycles, attributes).
pub fn validate(m: &ModelProto) -> Result<()> {
    if m.opset_import.is_empty() {
        bail!("model has no opset_import (which ONNX operator set does it use?)");
    }
    for o in &m.opset_import {
        if o.version <= 0 && (o.domain.is_empty() || o.domain == "ai.onnx") {
            bail!("opset_import for the default domain has version {}", o.version);
        }
    }
    let Some(g) = m.graph.as_ref() else { bail!("model has no graph") };
    // Tensors first: their names are checked before any other message quotes them.
    for_each_tensor(m, &mut |t| check_tensor(t))?;
    check_graph(g, &[], 0, m.ir_version)?;
    for s in &g.sparse_initializer {
        check_sparse(s, &format!("graph '{}'", g.name))?;
    }
    Ok(())
}

/// Names a graph defines: inputs, initializers, sparse initializers, node outputs.
fn check_graph(g: &GraphProto, outer: &[&HashSet<&str>], depth: usize, ir: i64) -> Result<()> {
    if depth > MAX_GRAPH_DEPTH {
        bail!("subgraphs nested deeper than {MAX_GRAPH_DEPTH} levels (graph '{}')", g.name);
    }
    check_names(g)?;
    let gname = if g.name.is_empty() { "<unnamed graph>" } else { g.name.as_str() };
    let mut defined: HashSet<&str> = HashSet::new();
    let mut inits: HashSet<&str> = HashSet::new();
    for (i, t) in g.initializer.iter().enumerate() {
        if t.name.is_empty() {
            bail!("graph '{gname}': initializer #{i} has no name");
        }
        if !inits.insert(&t.name) {
            bail!("graph '{gname}': two initializers are named '{}'", t.name);
        }
    }
    for s in &g.sparse_initializer {
        let name = s.values.as_ref().map(|v| v.name.as_str()).unwrap_or("");
        if name.is_empty() {
            bail!("graph '{gname}': sparse initializer without a named values tensor");
        }
        if !inits.insert(name) {
            bail!("graph '{gname}': two initializers are named '{name}'");
        }
    }
    let mut inputs: HashSet<&str> = HashSet::new();
    for v in &g.input {
        if v.name.is_empty() {
            bail!("graph '{gname}': an input has no name");
        }
        if !inputs.insert(&v.name) {
            bail!("graph '{gname}': input '{}' is declared twice", v.name);
        }
    }
    defined.extend(inits.iter().copied());
    defined.extend(inputs.iter().copied());
    // Node outputs: each value is defined once (SSA).
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (ni, n) in g.node.iter().enumerate() {
        if n.op_type.is_empty() {
            bail!("graph '{gname}': node #{ni} ('{}') has no op_type", n.name);
        }
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if defined.contains(o.as_str()) || producer.insert(o, ni).is_some() {
                bail!("value '{o}' is produced twice (node '{}' in graph '{gname}')", node_label(n));
            }
        }
    }
    defined.extend(producer.keys().copied());
    let visible = |name: &str| defined.contains(name) || outer.iter().any(|s| s.contains(name));
    // References: every input names a value of this graph or of an enclosing one.
    for n in &g.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            if !visible(i) {
                bail!(
                    "node '{}' (graph '{gname}'): input '{i}' is not produced by any node, initializer or graph input",
                    node_label(n)
                );
            }
        }
        check_attributes(n, ir)?;
    }
    for v in &g.output {
        if v.name.is_empty() {
            bail!("graph '{gname}': an output has no name");
        }
        if !visible(&v.name) {
            bail!("graph '{gname}': output '{}' is not produced by any node, initializer or input", v.name);
        }
    }
    check_acyclic(g, &producer, gname)?;
    // Subgraphs see this graph's names and the enclosing ones.
    let mut scopes: Vec<&HashSet<&str>> = outer.to_vec();
    scopes.push(&defined);
    for n in &g.node {
        for a in &n.attribute {
            for sg in a.g.as_ref().into_iter().chain(&a.graphs) {
                check_graph(sg, &scopes, depth + 1, ir)
                    .with_context(|| format!("subgraph '{}' of node '{}'", a.name, node_label(n)))?;
            }
        }
    }
    Ok(())
}

/// Every name of one graph (not its subgraphs) that a message may quote.
fn check_names(g: &GraphProto) -> Result<()> {
    check_name(&g.name, "graph name")?;
    for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
        check_name(&v.name, "value name")?;
    }
    for n in &g.node {
        check_name(&n.name, "node name")?;
        check_name(&n.op_type, "op_type")?;
        check_name(&n.domain, "domain")?;
        for s in n.input.iter().chain(&n.output) {
            check_name(s, "value name")?;
        }
        for a in &n.attribute {
            check_name(&a.name, "attribute name")?;
        }
    }
    Ok(())
}

/// Kahn's algorithm over the nodes of one graph (edges from producer to consumer inside it).
/// Nodes need not be sorted, but there must be an order.
fn check_acyclic(g: &GraphProto, producer: &HashMap<&str, usize>, gname: &str) -> Result<()> {
    let n = g.node.len();
    let mut indeg = vec![0usize; n];
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (ci, node) in g.node.iter().enumerate() {
        for i in &node.input {
            if let Some(&pi) = producer.get(i.as_str()) {
                succ[pi].push(ci);
                indeg[ci] += 1;
            }
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut done = 0usize;
    while let Some(i) = ready.pop() {
        done += 1;
        for &c in &succ[i] {
            indeg[c] -= 1;
            if indeg[c] == 0 {
                ready.push(c);
            }
        }
    }
    if done < n {
        let stuck = (0..n).find(|&i| indeg[i] > 0).map(|i| node_label(&g.node[i])).unwrap_or_default();
        bail!("graph '{gname}' has a cycle (through node '{stuck}')");
    }
    Ok(())
}

/// An attribute holds exactly the kind of value its `type` names.
fn check_attributes(n: &NodeProto, ir: i64) -> Result<()> {
    let mut seen: HashSet<&str> = HashSet::new();
    for a in &n.attribute {
        let what = || format!("node '{}': attribute '{}'", node_label(n), a.name);
        if a.name.is_empty() {
            bail!("node '{}': an attribute has no name", node_label(n));
        }
        if !seen.insert(&a.name) {
            bail!("{} is given twice", what());
        }
        if !a.ref_attr_name.is_empty() {
            continue; // a reference to a function attribute: no value of its own
        }
        let ty = a.type_.value();
        let held = held_kinds(a);
        if ty == 0 {
            // IR version 1 had no attribute types; later models must say.
            if ir >= 2 && !held.is_empty() {
                bail!("{} has no type", what());
            }
            if held.len() > 1 {
                bail!("{} holds several values ({})", what(), held.join(", "));
            }
            continue;
        }
        let Some(name) = attr_type_name(ty) else { bail!("{} has unknown type {ty}", what()) };
        if held.iter().any(|h| *h != name) {
            bail!("{} has type {name} but holds {}", what(), held.join(", "));
        }
        let needs_value = matches!(name, "TENSOR" | "GRAPH" | "SPARSE_TENSOR" | "TYPE_PROTO");
        if needs_value && held.is_empty() {
            bail!("{} has type {name} but no value", what());
        }
        if let Some(s) = a.sparse_tensor.as_ref() {
            check_sparse(s, &what())?;
        }
        for s in &a.sparse_tensors {
            check_sparse(s, &what())?;
        }
    }
    Ok(())
}

fn attr_type_name(t: i32) -> Option<&'static str> {
    Some(match t {
        1 => "FLOAT",
        2 => "INT",
        3 => "STRING",
        4 => "TENSOR",
        5 => "GRAPH",
        6 => "FLOATS",
        7 => "INTS",
        8 => "STRINGS",
        9 => "TENSORS",
        10 => "GRAPHS",
        11 => "SPARSE_TENSOR",
        12 => "SPARSE_TENSORS",
        13 => "TYPE_PROTO",
        14 => "TYPE_PROTOS",
        _ => return None,
    })
}

/// Which value fields of an attribute hold something (proto3 cannot tell a zero scalar from an
/// absent one, so a zero `f`/`i` counts as absent).
fn held_kinds(a: &AttributeProto) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut add = |c: bool, k: &'static str| {
        if c {
            v.push(k)
        }
    };
    add(a.f != 0.0 || a.f.is_nan(), "FLOAT");
    add(a.i != 0, "INT");
    add(!a.s.is_empty(), "STRING");
    add(a.t.is_some(), "TENSOR");
    add(a.g.is_some(), "GRAPH");
    add(!a.floats.is_empty(), "FLOATS");
    add(!a.ints.is_empty(), "INTS");
    add(!a.strings.is_empty(), "STRINGS");
    add(!a.tensors.is_empty(), "TENSORS");
    add(!a.graphs.is_empty(), "GRAPHS");
    add(a.sparse_tensor.is_some(), "SPARSE_TENSOR");
    add(!a.sparse_tensors.is_empty(), "SPARSE_TENSORS");
    add(a.tp.is_some(), "TYPE_PROTO");
    add(!a.type_protos.is_empty(), "TYPE_PROTOS");
    v
}
