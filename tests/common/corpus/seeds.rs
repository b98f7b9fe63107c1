//! Small valid models: seeds for the fuzzer and the fuzz smoke test (a few hundred bytes each, so
//! that mutations reach deep into the pipeline quickly).
use super::*;

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
    // GroupNorm both ways: Reshape [0, 2, -1] → InstanceNormalization → Reshape to Shape(a), then
    // opset 21's GroupNormalization (2 groups of 2 channels each).
    let mut g = GraphProto::new();
    g.name = "group_norm".into();
    g.input.push(vi("x", 1, &[1, 2, 3, 3]));
    g.output.push(vi("y", 1, &[1, 3, 3, 3]));
    for (nm, dims, n) in [("Wa", [4, 2, 1, 1], 8), ("Wb", [4, 4, 1, 1], 16), ("Wc", [3, 4, 1, 1], 12)] {
        g.initializer.push(f32_tensor(nm, &dims, &ramp(n)));
    }
    g.initializer.push(i64_vec("t3", &[0, 2, -1]));
    for (nm, n, val) in [("s2", 2, 1.0f32), ("b2", 2, 0.1), ("s4", 4, 0.5), ("b4", 4, -0.2)] {
        g.initializer.push(f32_tensor(nm, &[n], &vec![val; n as usize]));
    }
    g.node.push(node("Conv", "a", &["x", "Wa"], &["a"]));
    g.node.push(node("Reshape", "split", &["a", "t3"], &["r"]));
    g.node.push(node("InstanceNormalization", "in", &["r", "s2", "b2"], &["n"]));
    g.node.push(node("Shape", "shape", &["a"], &["sh"]));
    g.node.push(node("Reshape", "back", &["n", "sh"], &["gn"]));
    g.node.push(node("Conv", "b", &["gn", "Wb"], &["b"]));
    let mut gn = node("GroupNormalization", "gn_op", &["b", "s4", "b4"], &["g"]);
    gn.attribute.push(attr_i("num_groups", 2));
    g.node.push(gn);
    g.node.push(node("Conv", "c", &["g", "Wc"], &["y"]));
    let mut m = wrap(g);
    m.opset_import[0].version = 21;
    v.push(("group_norm", enc(&m)));
    // GroupNorm with one group both ways (PoolFormer's GroupNorm(1, C)): Reshape [0, 1, -1] →
    // InstanceNormalization → Reshape to Shape(a), then opset 21's GroupNormalization.
    let mut g = GraphProto::new();
    g.name = "group_norm_one".into();
    g.input.push(vi("x", 1, &[1, 2, 3, 3]));
    g.output.push(vi("y", 1, &[1, 3, 3, 3]));
    for (nm, dims, n) in [("Wa", [4, 2, 1, 1], 8), ("Wb", [4, 4, 1, 1], 16), ("Wc", [3, 4, 1, 1], 12)] {
        g.initializer.push(f32_tensor(nm, &dims, &ramp(n)));
    }
    g.initializer.push(i64_vec("t3", &[0, 1, -1]));
    for (nm, n, val) in [("s1", 1, 1.0f32), ("b1", 1, 0.1), ("s4", 4, 0.5), ("b4", 4, -0.2)] {
        g.initializer.push(f32_tensor(nm, &[n], &vec![val; n as usize]));
    }
    g.node.push(node("Conv", "a", &["x", "Wa"], &["a"]));
    g.node.push(node("Reshape", "split", &["a", "t3"], &["r"]));
    g.node.push(node("InstanceNormalization", "in", &["r", "s1", "b1"], &["n"]));
    g.node.push(node("Shape", "shape", &["a"], &["sh"]));
    g.node.push(node("Reshape", "back", &["n", "sh"], &["gn"]));
    g.node.push(node("Conv", "b", &["gn", "Wb"], &["b"]));
    let mut gn = node("GroupNormalization", "gn_op", &["b", "s4", "b4"], &["g"]);
    gn.attribute.push(attr_i("num_groups", 1));
    g.node.push(gn);
    g.node.push(node("Conv", "c", &["g", "Wc"], &["y"]));
    let mut m = wrap(g);
    m.opset_import[0].version = 21;
    v.push(("group_norm_one", enc(&m)));
    // Squeeze-and-excitation with every shape read off Shape(a), as TorchScript writes SENet's:
    // Reshape to a's [b, c], a MatMul, Reshape to [b, c, 1, 1], Expand to Shape(a), Mul.
    let mut g = GraphProto::new();
    g.name = "se_shapes".into();
    g.input.push(vi("x", 1, &[1, 2, 3, 3]));
    g.output.push(vi("y", 1, &[1, 3, 3, 3]));
    for (nm, dims, n) in [("Wa", vec![4, 2, 1, 1], 8), ("Wf", vec![4, 4], 16), ("Wc", vec![3, 4, 1, 1], 12)] {
        g.initializer.push(f32_tensor(nm, &dims, &ramp(n)));
    }
    g.initializer.push(i64_vec("st", &[0]));
    g.initializer.push(i64_vec("en", &[2]));
    g.initializer.push(i64_vec("ones", &[1, 1]));
    g.node.push(node("Conv", "a", &["x", "Wa"], &["a"]));
    g.node.push(node("GlobalAveragePool", "pool", &["a"], &["p"]));
    g.node.push(node("Shape", "shape", &["a"], &["sh"]));
    g.node.push(node("Slice", "bc", &["sh", "st", "en"], &["bc"]));
    g.node.push(node("Reshape", "flat", &["p", "bc"], &["f"]));
    g.node.push(node("MatMul", "fc", &["f", "Wf"], &["h"]));
    g.node.push(node("Sigmoid", "gate", &["h"], &["gt"]));
    let mut cat = node("Concat", "t4", &["bc", "ones"], &["t4"]);
    cat.attribute.push(attr_i("axis", 0));
    g.node.push(cat);
    g.node.push(node("Reshape", "up", &["gt", "t4"], &["g4"]));
    g.node.push(node("Expand", "ex", &["g4", "sh"], &["e"]));
    g.node.push(node("Mul", "se", &["a", "e"], &["s"]));
    g.node.push(node("Conv", "c", &["s", "Wc"], &["y"]));
    v.push(("se_shapes", enc(&wrap(g))));
    // CBAM's spatial gate: the channels' max (kept) and min (axis dropped, then Unsqueeze) per
    // pixel, a conv to one map, its sigmoid broadcast along the features.
    let mut g = GraphProto::new();
    g.name = "cbam".into();
    g.input.push(vi("x", 1, &[1, 2, 3, 3]));
    g.output.push(vi("y", 1, &[1, 3, 3, 3]));
    for (nm, dims, n) in [("Wa", vec![4, 2, 1, 1], 8), ("Ws", vec![1, 2, 1, 1], 2), ("Wc", vec![3, 4, 1, 1], 12)] {
        g.initializer.push(f32_tensor(nm, &dims, &ramp(n)));
    }
    g.initializer.push(i64_vec("ax", &[1]));
    g.node.push(node("Conv", "a", &["x", "Wa"], &["a"]));
    let mut mx = node("ReduceMax", "max", &["a"], &["mx"]);
    mx.attribute.push(attr_ints("axes", &[1]));
    g.node.push(mx);
    let mut mn = node("ReduceMin", "min", &["a"], &["mn"]);
    mn.attribute.push(attr_ints("axes", &[1]));
    mn.attribute.push(attr_i("keepdims", 0));
    g.node.push(mn);
    g.node.push(node("Unsqueeze", "un", &["mn", "ax"], &["mn1"]));
    let mut cat = node("Concat", "cat", &["mx", "mn1"], &["st"]);
    cat.attribute.push(attr_i("axis", 1));
    g.node.push(cat);
    g.node.push(node("Conv", "s", &["st", "Ws"], &["m"]));
    g.node.push(node("Sigmoid", "att", &["m"], &["ga"]));
    g.node.push(node("Mul", "gate", &["ga", "a"], &["gx"]));
    g.node.push(node("Conv", "c", &["gx", "Wc"], &["y"]));
    v.push(("cbam", enc(&wrap(g))));
    // A tensor with (unresolvable) external data: parse accepts it, pruning must refuse cleanly.
    let mut m = tiny_matmul(f32_tensor("We", &[4, 3], &ramp(12)), 4, 3);
    externalize(&mut m, &["We"], "w.bin");
    v.push(("external", enc(&m)));
    v
}
