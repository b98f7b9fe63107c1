//! Cases: broken graphs (missing parts, dangling or duplicated names, cycles, subgraphs).
use super::*;

pub(super) fn graph_cases(v: &mut Vec<Case>) {
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
