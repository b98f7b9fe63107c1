//! Visiting every tensor of a model: initializers, sparse initializers, Constant values and other
//! attribute tensors, subgraphs, function bodies, training graphs.
//!
//! Contract: every visitor sees each tensor once, and [`all_tensors_mut`] lists them in the order
//! [`for_each_tensor_mut`] visits them (the external-data plan relies on that order). Nothing is
//! changed here beyond what the caller's closure does.

use onnx_protobuf::{GraphProto, ModelProto, NodeProto, TensorProto};

/// Visit every tensor of a graph, recursively (initializers, Constant values, attribute tensors,
/// sparse tensors, subgraphs).
pub fn for_each_graph_tensor_mut(g: &mut GraphProto, f: &mut dyn FnMut(&mut TensorProto)) {
    for t in g.initializer.iter_mut() {
        f(t);
    }
    for st in g.sparse_initializer.iter_mut() {
        if let Some(v) = st.values.as_mut() {
            f(v);
        }
        if let Some(i) = st.indices.as_mut() {
            f(i);
        }
    }
    for n in g.node.iter_mut() {
        for_each_node_tensor_mut(n, f);
    }
}

fn for_each_node_tensor_mut(n: &mut NodeProto, f: &mut dyn FnMut(&mut TensorProto)) {
    for a in n.attribute.iter_mut() {
        if let Some(t) = a.t.as_mut() {
            f(t);
        }
        for t in a.tensors.iter_mut() {
            f(t);
        }
        for st in a.sparse_tensor.as_mut().into_iter().chain(a.sparse_tensors.iter_mut()) {
            if let Some(v) = st.values.as_mut() {
                f(v);
            }
            if let Some(i) = st.indices.as_mut() {
                f(i);
            }
        }
        if let Some(sg) = a.g.as_mut() {
            for_each_graph_tensor_mut(sg, f);
        }
        for sg in a.graphs.iter_mut() {
            for_each_graph_tensor_mut(sg, f);
        }
    }
}

/// Read-only visit of every tensor of a graph, recursively.
pub fn for_each_graph_tensor(g: &GraphProto, f: &mut dyn FnMut(&TensorProto)) {
    g.initializer.iter().for_each(&mut *f);
    for n in &g.node {
        for a in &n.attribute {
            if let Some(t) = a.t.as_ref() {
                f(t);
            }
            a.tensors.iter().for_each(&mut *f);
            if let Some(sg) = a.g.as_ref() {
                for_each_graph_tensor(sg, f);
            }
            for sg in &a.graphs {
                for_each_graph_tensor(sg, f);
            }
        }
    }
}

/// Visit every tensor of a model: main graph, function bodies, training graphs.
pub fn for_each_tensor_mut(m: &mut ModelProto, f: &mut dyn FnMut(&mut TensorProto)) {
    if let Some(g) = m.graph.as_mut() {
        for_each_graph_tensor_mut(g, f);
    }
    for fun in m.functions.iter_mut() {
        for n in fun.node.iter_mut() {
            for_each_node_tensor_mut(n, f);
        }
    }
    for ti in m.training_info.iter_mut() {
        if let Some(g) = ti.initialization.as_mut() {
            for_each_graph_tensor_mut(g, f);
        }
        if let Some(g) = ti.algorithm.as_mut() {
            for_each_graph_tensor_mut(g, f);
        }
    }
}

/// Every tensor of a model, mutably, in the order [`for_each_tensor_mut`] visits them: main
/// graph (initializers, sparse initializers, attribute tensors and sparse tensors, subgraphs),
/// function bodies, training graphs.
pub(super) fn all_tensors_mut(m: &mut ModelProto) -> Vec<&mut TensorProto> {
    fn sparse<'a>(st: &'a mut onnx_protobuf::SparseTensorProto, out: &mut Vec<&'a mut TensorProto>) {
        let onnx_protobuf::SparseTensorProto { values, indices, .. } = st;
        out.extend(values.as_mut());
        out.extend(indices.as_mut());
    }
    fn node<'a>(n: &'a mut NodeProto, out: &mut Vec<&'a mut TensorProto>) {
        for a in n.attribute.iter_mut() {
            let onnx_protobuf::AttributeProto { t, tensors, sparse_tensor, sparse_tensors, g, graphs, .. } = a;
            out.extend(t.as_mut());
            out.extend(tensors.iter_mut());
            for st in sparse_tensor.as_mut().into_iter().chain(sparse_tensors.iter_mut()) {
                sparse(st, out);
            }
            if let Some(sg) = g.as_mut() {
                graph(sg, out);
            }
            for sg in graphs.iter_mut() {
                graph(sg, out);
            }
        }
    }
    fn graph<'a>(g: &'a mut GraphProto, out: &mut Vec<&'a mut TensorProto>) {
        let GraphProto { initializer, sparse_initializer, node: nodes, .. } = g;
        out.extend(initializer.iter_mut());
        for st in sparse_initializer.iter_mut() {
            sparse(st, out);
        }
        for n in nodes.iter_mut() {
            node(n, out);
        }
    }
    let mut out = Vec::new();
    let ModelProto { graph: g, functions, training_info, .. } = m;
    if let Some(g) = g.as_mut() {
        graph(g, &mut out);
    }
    for fun in functions.iter_mut() {
        for n in fun.node.iter_mut() {
            node(n, &mut out);
        }
    }
    for ti in training_info.iter_mut() {
        let onnx_protobuf::TrainingInfoProto { initialization, algorithm, .. } = ti;
        if let Some(g) = initialization.as_mut() {
            graph(g, &mut out);
        }
        if let Some(g) = algorithm.as_mut() {
            graph(g, &mut out);
        }
    }
    out
}
