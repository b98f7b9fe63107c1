//! Cases: tricky but valid models, which must be processed (the project's models, subgraphs,
//! unusual encodings, a weight shared by many nodes).
use super::*;

pub(super) fn valid_cases(v: &mut Vec<Case>) {
    let c = "valid";
    for f in ["digits_mlp.onnx", "digits_cnn.onnx", "digits_lstm.onnx", "digits_transformer.onnx", "yolo_block.onnx"] {
        let name: &'static str = Box::leak(format!("model_{}", f.trim_end_matches(".onnx")).into_boxed_str());
        v.push(case(name, c, "a project model, unchanged", model_bytes(f), Expect::Valid));
    }
    // Models pruned elsewhere with masks: dead units (zero rows emitting their bias) everywhere,
    // some kept to align and carrying the removed ones' constants into padded convolutions.
    v.push(case(
        "masked_digits_cnn",
        c,
        "digits_cnn with 30 % of every Conv's rows zeroed",
        masked("digits_cnn.onnx"),
        Expect::Valid,
    ));
    v.push(case(
        "masked_yolo_block",
        c,
        "yolo_block with 30 % of every Conv's rows zeroed",
        masked("yolo_block.onnx"),
        Expect::Valid,
    ));
    // GroupNorm as TorchScript spells it (Reshape → InstanceNormalization → Reshape to Shape(x))
    // and as the opset-21 op: whole groups go.
    v.push(case(
        "zoo_groupnorm",
        c,
        "a GroupNorm CNN, TorchScript's Reshape → InstanceNormalization → Reshape",
        model_bytes("zoo/zoo_groupnorm.onnx"),
        Expect::Valid,
    ));
    v.push(case(
        "zoo_groupnorm_op",
        c,
        "a GroupNorm CNN, opset 21's GroupNormalization",
        model_bytes("zoo/zoo_groupnorm_op.onnx"),
        Expect::Valid,
    ));
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

/// A project model with the weakest 30 % of the output rows of every Conv (initializer weights
/// stored raw, float32) zeroed and its biases kept: what torch's `ln_structured` leaves.
fn masked(file: &str) -> Vec<u8> {
    let mut m = model(file);
    let g = gm(&mut m);
    let convs: Vec<String> =
        g.node.iter().filter(|n| n.op_type == "Conv").filter_map(|n| n.input.get(1).cloned()).collect();
    for t in g.initializer.iter_mut().filter(|t| convs.contains(&t.name) && t.data_type == 1 && !t.raw_data.is_empty())
    {
        let rows = t.dims[0].max(1) as usize;
        let mut v: Vec<f32> =
            t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let per = v.len() / rows;
        let mut norms: Vec<(f32, usize)> =
            (0..rows).map(|r| (v[r * per..(r + 1) * per].iter().map(|x| x * x).sum(), r)).collect();
        norms.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for &(_, r) in norms.iter().take(rows * 3 / 10) {
            v[r * per..(r + 1) * per].iter_mut().for_each(|x| *x = 0.0);
        }
        t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    }
    enc(&m)
}
