//! Rewrites per op on small hand-built models: Concat offsets, Split sizes, Slice bounds, depthwise
//! multipliers, Reshape into Gemm, Sigmoid halves, Constant-node weights, LSTM inputs, shape
//! chains, an op zoo, a full Gemm bias.
use super::*;

#[test]
fn concat_offsets_select_the_right_columns() {
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Relu", "ra", &["a"], &["a2"], vec![]),
            nd("Conv", "B", &["x", "wb"], &["b"], vec![]),
            nd("Relu", "rb", &["b"], &["b2"], vec![]),
            nd("Concat", "cat", &["a2", "b2"], &["c"], vec![attr_i("axis", 1)]),
            nd("Conv", "C", &["c", "wc", "bc"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 0.01, 1.], 1),
            w("wb", &[5, 3, 1, 1], &[0.01, 1., 1., 1., 1.], 2),
            w("wc", &[2, 11, 1, 1], &ones(2), 3),
            tensor::new_f32("bc", &[2], &[0.1, -0.2]),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &StructOptions { beta: 1.05, ..no_floor() });
    let dense_c = tensor::read_f32(weight(&m, "wc")).unwrap();
    let pruned_c = tensor::read_f32(weight(&o.result.pruned, "wc")).unwrap();
    // A keeps 0,2,3,5; B keeps 1,2,3,4 → columns 0,2,3,5 and 6+1..6+4 of C
    let cols = [0usize, 2, 3, 5, 7, 8, 9, 10];
    let expect: Vec<f32> =
        (0..2).flat_map(|o| cols.iter().map(move |&c| (o, c))).map(|(o, c)| dense_c[o * 11 + c]).collect();
    assert_eq!(pruned_c, expect);
}

#[test]
fn split_sizes_and_equal_split_become_explicit() {
    let mk = |sizes: Option<&str>| {
        let mut split_in = vec!["h"];
        if let Some(s) = sizes {
            split_in.push(s);
        }
        let mut inits = vec![
            w("w0", &[8, 3, 1, 1], &[1., 0.01, 0.01, 1., 1., 1., 0.01, 1.], 1),
            w("wl", &[2, 4, 3, 3], &ones(2), 2),
            w("wr", &[2, 4, 1, 1], &ones(2), 3),
        ];
        if sizes.is_some() {
            let mut t = TensorProto::new();
            t.name = "sizes".into();
            t.data_type = 7;
            t.dims = vec![2];
            t.int64_data = vec![4, 4];
            inits.push(t);
        }
        mk_model(
            vec![
                nd("Conv", "head", &["x", "w0"], &["h0"], vec![]),
                nd("Sigmoid", "sig", &["h0"], &["s"], vec![]),
                nd("Mul", "silu", &["h0", "s"], &["h"], vec![]),
                nd("Split", "split", &split_in, &["l", "r"], vec![attr_i("axis", 1)]),
                nd("Conv", "L", &["l", "wl"], &["lo"], vec![attr_ints("pads", &[1, 1, 1, 1])]),
                nd("Conv", "R", &["r", "wr"], &["ro"], vec![]),
                nd("Add", "add", &["lo", "ro"], &["y"], vec![]),
            ],
            inits,
            &X4,
            &["y"],
        )
    };
    for sizes in [Some("sizes"), None] {
        let m = mk(sizes);
        let o = prove_x(&m, &X4, &no_floor());
        let p = &o.result.pruned;
        let split = node(p, "split");
        let s = tensor::read_i64(weight(p, &split.input[1])).unwrap();
        assert_eq!(s, vec![2, 3], "removed channels 1, 2 | 6 → parts of 2 and 3");
        assert_eq!(weight(p, "wl").dims[1], 2);
        assert_eq!(weight(p, "wr").dims[1], 3);
    }
}

#[test]
fn slice_bounds_on_the_channel_axis() {
    let mut starts = TensorProto::new();
    starts.name = "starts".into();
    starts.data_type = 7;
    starts.dims = vec![1];
    starts.int64_data = vec![2];
    let mut ends = starts.clone();
    ends.name = "ends".into();
    ends.int64_data = vec![7];
    let mut axes = starts.clone();
    axes.name = "axes".into();
    axes.int64_data = vec![1];
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Slice", "slice", &["a", "starts", "ends", "axes"], &["s"], vec![]),
            nd("Conv", "B", &["s", "wb"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[8, 3, 1, 1], &[0.01, 1., 1., 1., 0.01, 1., 1., 1.], 1),
            w("wb", &[2, 5, 1, 1], &ones(2), 2),
            starts,
            ends,
            axes,
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &no_floor());
    let p = &o.result.pruned;
    assert_eq!(weight(p, "wa").dims[0], 6);
    assert_eq!(tensor::read_i64(weight(p, "starts")).unwrap(), vec![1]);
    assert_eq!(tensor::read_i64(weight(p, "ends")).unwrap(), vec![5]);
    assert_eq!(weight(p, "wb").dims[1], 4);
}

/// An STFT's magnitude: a Conv writes real and imaginary halves, Slices split them, and squares
/// summed elementwise join channel i with channel i + C/2. The pair is one unit; the report says
/// what ties it (it said "a GroupNorm group" for any width, silero VAD's STFT among them).
#[test]
fn channel_pairs_an_elementwise_op_joins_are_one_unit() {
    let bounds = |name: &str, v: i64| tensor::new_i64(name, &[1], &[v]);
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Slice", "re", &["a", "s0", "s4", "ax"], &["r"], vec![]),
            nd("Slice", "im", &["a", "s4", "s8", "ax"], &["i"], vec![]),
            nd("Mul", "r2", &["r", "r"], &["rr"], vec![]),
            nd("Mul", "i2", &["i", "i"], &["ii"], vec![]),
            nd("Add", "mag", &["rr", "ii"], &["p"], vec![]),
            nd("Conv", "B", &["p", "wb"], &["y"], vec![]),
        ],
        vec![
            // Pair k is channels k and k + 4: pair 1 is weak in both halves.
            w("wa", &[8, 3, 1, 1], &[1., 0.01, 1., 1., 1., 0.01, 1., 1.], 1),
            w("wb", &[2, 4, 1, 1], &ones(2), 2),
            bounds("s0", 0),
            bounds("s4", 4),
            bounds("s8", 8),
            bounds("ax", 1),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &no_floor());
    let p = &o.result.pruned;
    assert_eq!(weight(p, "wa").dims[0], 6);
    assert_eq!(weight(p, "wb").dims[1], 3);
    for (slice, slot) in [("re", 2), ("im", 1)] {
        let bound = &node(p, slice).input[slot];
        assert_eq!(tensor::read_i64(weight(p, bound)).unwrap(), vec![3], "{slice}");
    }
    let a = group(&o.result, "A");
    assert_eq!((a.kept, a.n), (3, 4), "{a:?}");
    let note = a.notes.iter().find(|n| n.contains("go together")).expect("the unit note");
    assert!(note.contains("2 channels that go together (an elementwise op joins"), "{note}");
    assert!(note.contains("6 channels kept of 8"), "{note}");
}

/// `n, c, h, w = a.shape; b.reshape(n, c, h, w)`: the target reads every dim off another tensor.
/// The lead dims are of the same size as the reshaped tensor's (`groups/sizes.rs`), and the channel
/// count is `a`'s, so `a`'s units and `b`'s are tied: one group, both cut alike. Before, the
/// Reshape blocked both ("reshape moves the channel axis", "target reads the channel count").
#[test]
fn a_reshape_to_another_tensors_shape_ties_the_two_widths() {
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Relu", "ra", &["a"], &["a2"], vec![]),
            nd("Conv", "B", &["x", "wb"], &["b"], vec![]),
            nd("Transpose", "t", &["b"], &["bt"], vec![attr_ints("perm", &[0, 1, 3, 2])]),
            nd("Shape", "shape", &["a2"], &["sa"], vec![]),
            nd("Reshape", "back", &["bt", "sa"], &["r"], vec![]),
            nd("Concat", "cat", &["a2", "r"], &["c"], vec![attr_i("axis", 1)]),
            nd("Conv", "C", &["c", "wc"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 1., 1.], 1),
            w("wb", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 1., 1.], 2),
            w("wc", &[2, 12, 1, 1], &ones(2), 3),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &StructOptions { beta: 1.05, ..no_floor() });
    let a = group(&o.result, "A");
    assert!(a.blocked.is_none(), "{a:?}");
    assert!(a.members.iter().any(|m| m == "B"), "one group: {a:?}");
    let p = &o.result.pruned;
    let (ka, kb) = (weight(p, "wa").dims[0], weight(p, "wb").dims[0]);
    assert!(ka < 6 && ka == kb, "a keeps {ka}, b keeps {kb}");
    assert_eq!(weight(p, "wc").dims[1], 2 * ka);
}

/// An SE-style gate broadcast by Expand to a literal shape: the shape's channel entry is the
/// channel count, edited to the kept count (before, Expand was a barrier).
#[test]
fn expand_to_a_literal_shape_edits_its_channel_count() {
    let shape = tensor::new_i64("shape", &[4], &[1, 6, 5, 5]);
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("GlobalAveragePool", "pool", &["a"], &["p"], vec![]),
            nd("Sigmoid", "gate", &["p"], &["g"], vec![]),
            nd("Expand", "ex", &["g", "shape"], &["e"], vec![]),
            nd("Mul", "se", &["a", "e"], &["s"], vec![]),
            nd("Conv", "C", &["s", "wc"], &["y"], vec![]),
        ],
        vec![w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 0.01, 1.], 1), w("wc", &[2, 6, 1, 1], &ones(2), 2), shape],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &no_floor());
    let p = &o.result.pruned;
    assert_eq!(weight(p, "wa").dims[0], 4);
    let s = &node(p, "ex").input[1];
    assert_eq!(tensor::read_i64(weight(p, s)).unwrap(), vec![1, 4, 5, 5]);
}

/// CBAM's spatial gate: the channels' max and min per pixel (ReduceMax kept, ReduceMin dropping
/// the axis then Unsqueeze), a conv to one map, the features times its sigmoid. The max and min
/// are taken over the kept channels (the masked model fills removed ones with the type's lowest /
/// highest value), and the one-channel map broadcasts along the pruned features (before, both
/// blocked the group).
#[test]
fn channel_max_and_min_and_a_one_channel_map_prune() {
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("ReduceMax", "max", &["a"], &["mx"], vec![attr_ints("axes", &[1])]),
            nd("ReduceMin", "min", &["a"], &["mn"], vec![attr_ints("axes", &[1]), attr_i("keepdims", 0)]),
            nd("Unsqueeze", "un", &["mn", "ax"], &["mn1"], vec![]),
            nd("Concat", "cat", &["mx", "mn1"], &["c"], vec![attr_i("axis", 1)]),
            nd("Conv", "S", &["c", "ws"], &["s"], vec![attr_ints("pads", &[1, 1, 1, 1])]),
            nd("Sigmoid", "att", &["s"], &["g"], vec![]),
            nd("Mul", "gate", &["g", "a"], &["ga"], vec![]),
            nd("Conv", "C", &["ga", "wc"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 0.01, 1.], 1),
            w("ws", &[1, 2, 3, 3], &ones(1), 2),
            w("wc", &[2, 6, 1, 1], &ones(2), 3),
            tensor::new_i64("ax", &[1], &[1]),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &no_floor());
    let p = &o.result.pruned;
    assert_eq!(weight(p, "wa").dims[0], 4, "{}", summary(&o.result.groups));
    assert_eq!(weight(p, "wc").dims[1], 4);
    // The map's one channel is kept; the 2-channel concat of the statistics is untouched.
    assert_eq!(weight(p, "ws").dims, vec![1, 2, 3, 3]);
    let s = group(&o.result, "S");
    assert!(s.blocked.is_none() && s.notes.iter().any(|n| n.starts_with("one channel, broadcast")), "{s:?}");
}

/// A Slice of another axis whose bounds are computed (CoordAttention splits its pooled rows and
/// columns at `h`, read off Shape): the channels pass whole. A bound read off the channel count
/// keeps that group whole instead (the slice would change with the cut).
#[test]
fn a_slice_of_another_axis_with_computed_bounds_passes_the_channels() {
    let mk = |dim: i64| {
        mk_model(
            vec![
                nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
                nd("Shape", "shape", &["a"], &["sh"], vec![]),
                nd("Gather", "dim", &["sh", "which"], &["h"], vec![attr_i("axis", 0)]),
                nd("Unsqueeze", "un", &["h", "zero"], &["h1"], vec![]),
                nd("Slice", "rows", &["a", "zero", "h1", "two"], &["s"], vec![]),
                nd("Conv", "C", &["s", "wc"], &["y"], vec![]),
            ],
            vec![
                w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 0.01, 1.], 1),
                w("wc", &[2, 6, 1, 1], &ones(2), 2),
                tensor::new_i64("which", &[], &[dim]),
                tensor::new_i64("zero", &[1], &[0]),
                tensor::new_i64("two", &[1], &[2]),
            ],
            &X4,
            &["y"],
        )
    };
    let o = prove_x(&mk(2), &X4, &no_floor());
    assert_eq!(weight(&o.result.pruned, "wa").dims[0], 4, "{}", summary(&o.result.groups));
    let r = prune_channels(&mk(1), &no_floor()).unwrap();
    let a = group(&r, "A");
    assert!(a.blocked.as_deref().is_some_and(|b| b.contains("computed from the channel count")), "{a:?}");
}

#[test]
fn depthwise_with_multiplier_and_single_channel_convs() {
    let x: [i64; 4] = [1, 1, 6, 6];
    let m = mk_model(
        vec![
            // weight [4,1,3,3] with group 1 on a 1-channel input: a plain conv, not depthwise
            nd("Conv", "A", &["x", "wa"], &["a"], vec![attr_ints("pads", &[1, 1, 1, 1])]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            // depthwise, channel multiplier 2: output 2c, 2c+1 read input c
            nd("Conv", "DW", &["ra", "wd", "bd"], &["d"], vec![attr_i("group", 4), attr_ints("pads", &[1, 1, 1, 1])]),
            nd("Relu", "r2", &["d"], &["rd"], vec![]),
            // one output channel
            nd("Conv", "C", &["rd", "wc"], &["c"], vec![]),
            nd("Relu", "r3", &["c"], &["rc"], vec![]),
            nd("Conv", "E", &["rc", "we"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[4, 1, 3, 3], &[1., 1., 0.01, 1.], 1),
            w("wd", &[8, 1, 3, 3], &ones(8), 2),
            tensor::new_f32("bd", &[8], &[0.; 8]),
            w("wc", &[1, 8, 1, 1], &ones(1), 3),
            w("we", &[3, 1, 1, 1], &ones(3), 4),
        ],
        &x,
        &["y"],
    );
    let o = prove_x(&m, &x, &no_floor());
    let p = &o.result.pruned;
    let g = group(&o.result, "A");
    assert!(g.members.contains(&"DW".to_string()), "depthwise couples its input and output: {g:?}");
    assert_eq!(weight(p, "wa").dims, vec![3, 1, 3, 3]);
    assert_eq!(weight(p, "wd").dims, vec![6, 1, 3, 3]);
    assert_eq!(graph::attr_i(node(p, "DW"), "group"), Some(3));
    assert_eq!(weight(p, "wc").dims, vec![1, 6, 1, 1]);
    assert_eq!(group(&o.result, "C").n, 1);
}

#[test]
fn reshape_into_gemm_rewrites_the_target() {
    let x: [i64; 4] = [2, 3, 4, 4];
    let mut target = TensorProto::new();
    target.name = "target".into();
    target.data_type = 7;
    target.dims = vec![2];
    target.int64_data = vec![-1, 64];
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Reshape", "flat", &["ra", "target"], &["f"], vec![]),
            nd("Gemm", "fc", &["f", "wf", "bf"], &["y"], vec![attr_i("transB", 1)]),
        ],
        vec![
            w("wa", &[4, 3, 1, 1], &[1., 0.01, 1., 1.], 1),
            w("wf", &[3, 64], &ones(3), 2),
            tensor::new_f32("bf", &[3], &[0.; 3]),
            target,
        ],
        &x,
        &["y"],
    );
    let mut m = m;
    set_out_rank(&mut m, 2);
    let o = prove_x(&m, &x, &no_floor());
    let p = &o.result.pruned;
    assert_eq!(tensor::read_i64(weight(p, "target")).unwrap(), vec![-1, 48]);
    assert_eq!(weight(p, "wf").dims, vec![3, 48]);
}

/// `[-1, C, H·W]` and back to `[-1, C, H, W]` (the dynamo exporter's literal targets around an
/// attention over the pixels, batch -1): the -1 is the batch whatever the cut, because the
/// entries after the channel axis hold as many elements as the input's dims after it (declared),
/// so the channel literals are edited and the group prunes. `[-1, C, 2·H·W]` would move half the
/// batch into the channel axis' neighbour: refused.
#[test]
fn a_minus_one_batch_in_a_literal_target_is_the_batch() {
    let x: [i64; 4] = [2, 3, 4, 4];
    let model = |flat: i64| {
        let t = |name: &str, v: &[i64]| tensor::new_i64(name, &[v.len() as i64], v);
        let mut m = mk_model(
            vec![
                nd("Conv", "A", &["x", "wa", "ba"], &["a"], vec![]),
                nd("Reshape", "flat", &["a", "t3"], &["f"], vec![]),
                nd("Relu", "r", &["f"], &["rf"], vec![]),
                nd("Reshape", "back", &["rf", "t4"], &["b"], vec![]),
                nd("Conv", "C", &["b", "wc"], &["y"], vec![]),
            ],
            vec![
                w("wa", &[8, 3, 1, 1], &[1., 0.01, 1., 1., 0.02, 1., 1., 1.], 1),
                tensor::new_f32("ba", &[8], &[0.1; 8]),
                w("wc", &[2, 8, 1, 1], &ones(2), 2),
                t("t3", &[-1, 8, flat]),
                t("t4", &[-1, 8, 4, 4]),
            ],
            &x,
            &["y"],
        );
        // The shapes as dynamo declares them: a symbolic batch.
        for (name, dims) in [("a", &[0, 8, 4, 4][..]), ("rf", &[0, 8, flat][..])] {
            let mut v = vi(name, Some(dims));
            use onnx_protobuf::type_proto::Value as T;
            if let Some(T::TensorType(tt)) = v.type_.as_mut().and_then(|t| t.value.as_mut()) {
                tt.shape.as_mut().unwrap().dim[0].value = None;
            }
            m.graph.as_mut().unwrap().value_info.push(v);
        }
        m
    };
    let o = prove_x(&model(16), &x, &no_floor());
    let a = group(&o.result, "A");
    assert!(a.blocked.is_none() && a.kept == 6, "{a:?}");
    let p = &o.result.pruned;
    assert_eq!(tensor::read_i64(weight(p, "t3")).unwrap(), vec![-1, 6, 16]);
    assert_eq!(tensor::read_i64(weight(p, "t4")).unwrap(), vec![-1, 6, 4, 4]);
    let r = prune_channels(&model(32), &no_floor()).unwrap();
    let a = r.groups.iter().find(|g| g.id == "A").unwrap();
    assert!(a.blocked.as_deref().is_some_and(|b| b.contains("'flat'")), "{a:?}");
}

#[test]
fn sigmoid_and_hardsigmoid_half_is_compensated() {
    let x2: [i64; 2] = [3, 4];
    let m = {
        let mut m = mk_model(
            vec![
                nd("Gemm", "A", &["x", "wa", "ba"], &["a"], vec![attr_i("transB", 1)]),
                nd("Sigmoid", "sig", &["a"], &["s"], vec![]),
                nd("Gemm", "B", &["s", "wb", "bb"], &["y"], vec![attr_i("transB", 1)]),
            ],
            vec![
                w("wa", &[6, 4], &[1., 1., 0.01, 1., 1., 0.01], 1),
                tensor::new_f32("ba", &[6], &[0.1, 0.0, 0.0, -0.1, 0.2, 0.0]),
                w("wb", &[3, 6], &ones(3), 2),
                tensor::new_f32("bb", &[3], &[0.0; 3]),
            ],
            &x2,
            &["y"],
        );
        m.graph.as_mut().unwrap().input = vec![vi("x", Some(&x2))];
        m
    };
    let o = prove_x(&m, &x2, &no_floor());
    let g = group(&o.result, "A");
    assert_eq!(g.kept, 4);
    assert!(g.notes.iter().any(|n| n.contains("bias of 'B'")), "{:?}", g.notes);
    assert!(dense_vs_pruned(&o, &x2) < 0.05);

    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("HardSigmoid", "hs", &["a"], &["h"], vec![attr_f("alpha", 0.2), attr_f("beta", 0.5)]),
            nd("Conv", "B", &["h", "wb", "bb"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &[1., 1., 0.01, 1., 1., 0.01], 1),
            w("wb", &[2, 6, 1, 1], &ones(2), 2),
            tensor::new_f32("bb", &[2], &[0.3, -0.3]),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &no_floor());
    assert!(group(&o.result, "A").notes.iter().any(|n| n.contains("bias of 'B'")));
    assert_ne!(tensor::read_f32(weight(&o.result.pruned, "bb")).unwrap(), vec![0.3, -0.3], "0.5 · ΣW folded in");
    assert!(dense_vs_pruned(&o, &X4) < 0.05);
}

#[test]
fn constant_node_weights_and_reshaped_bias() {
    // Paddle style: weights in Constant nodes, the bias Reshape'd to [1, C, 1, 1] and Added
    let mut shape = TensorProto::new();
    shape.data_type = 7;
    shape.dims = vec![4];
    shape.int64_data = vec![1, -1, 1, 1];
    let m = mk_model(
        vec![
            const_node("wa", w("", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 1., 0.01], 1)),
            const_node("ba", tensor::new_f32("", &[6], &[0.5, 0.4, 0.3, 0.2, 0.1, 0.6])),
            const_node("shape", shape),
            const_node("wb", w("", &[2, 6, 1, 1], &ones(2), 2)),
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Reshape", "rb", &["ba", "shape"], &["ba4"], vec![]),
            nd("Add", "add", &["a", "ba4"], &["ab"], vec![]),
            nd("Relu", "r", &["ab"], &["ra"], vec![]),
            nd("Conv", "B", &["ra", "wb"], &["y"], vec![]),
        ],
        vec![],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &no_floor());
    let p = &o.result.pruned;
    assert_eq!(weight(p, "wa").dims, vec![4, 3, 1, 1]);
    assert!(
        p.graph.as_ref().unwrap().node.iter().any(|n| n.op_type == "Constant" && n.output[0] == "wa"),
        "edited in place"
    );
    assert_eq!(weight(p, "ba4").dims, vec![1, 4, 1, 1], "the reshaped bias got its own sliced copy");
    assert!(
        group(&o.result, "A").notes.iter().any(|n| n.contains("bias of 'B'")),
        "relu(bias) of removed channels folded"
    );
    assert!(dense_vs_pruned(&o, &X4) < 0.05);
}

#[test]
fn lstm_input_units_prune_when_they_emit_zeros() {
    let x: [i64; 3] = [3, 1, 4];
    let m = mk_model(
        vec![
            nd("MatMul", "proj", &["x", "wp"], &["p"], vec![]),
            nd("Relu", "r", &["p"], &["rp"], vec![]),
            nd("LSTM", "lstm", &["rp", "W", "R"], &["y"], vec![attr_i("hidden_size", 5)]),
        ],
        vec![w("wp", &[4, 6], &[1., 1., 1., 0.01], 1), w("W", &[1, 20, 6], &[1.], 2), w("R", &[1, 20, 5], &[1.], 3)],
        &x,
        &["y"],
    );
    let mut m = m;
    set_out_rank(&mut m, 4);
    let o = prove_x(&m, &x, &no_floor());
    // Relu(0) = 0 enters the LSTM's input: exact, no fold needed.
    assert_eq!(group(&o.result, "proj").blocked, None, "{}", summary(&o.result.groups));
    assert_eq!(group(&o.result, "lstm").blocked.as_deref(), Some("reaches graph output 'y'"));
}

#[test]
fn reshape_target_built_from_shape_chain() {
    // torch: x.view(x.size(0), -1) → Shape → Gather(0) → Unsqueeze → Concat([N], [-1]) → Reshape
    let x: [i64; 4] = [2, 3, 4, 4];
    let int = |name: &str, dims: &[i64], v: &[i64]| {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = 7;
        t.dims = dims.to_vec();
        t.int64_data = v.to_vec();
        t
    };
    let mut m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Shape", "shape", &["ra"], &["s"], vec![]),
            nd("Gather", "g0", &["s", "zero"], &["n"], vec![attr_i("axis", 0)]),
            nd("Unsqueeze", "un", &["n", "axes0"], &["n1"], vec![]),
            nd("Concat", "cat", &["n1", "minus1"], &["target"], vec![attr_i("axis", 0)]),
            nd("Reshape", "flat", &["ra", "target"], &["f"], vec![]),
            nd("Gemm", "fc", &["f", "wf", "bf"], &["y"], vec![attr_i("transB", 1)]),
        ],
        vec![
            w("wa", &[4, 3, 1, 1], &[1., 0.01, 1., 1.], 1),
            int("zero", &[], &[0]),
            int("axes0", &[1], &[0]),
            int("minus1", &[1], &[-1]),
            w("wf", &[3, 64], &ones(3), 2),
            tensor::new_f32("bf", &[3], &[0.; 3]),
        ],
        &x,
        &["y"],
    );
    set_out_rank(&mut m, 2);
    let o = prove_x(&m, &x, &no_floor());
    assert!(group(&o.result, "A").blocked.is_none(), "{}", summary(&o.result.groups));
    assert_eq!(weight(&o.result.pruned, "wf").dims, vec![3, 48]);

    // the same chain reading the channel count (index 1) into something else blocks the group
    let mut m2 = m.clone();
    let g = m2.graph.as_mut().unwrap();
    g.initializer.retain(|t| t.name != "zero");
    g.initializer.push(int("zero", &[], &[1]));
    let r = prune_channels(&m2, &no_floor()).unwrap();
    assert!(r.groups[0].blocked.as_deref().unwrap().contains("channel count"), "{:?}", r.groups[0]);
}

#[test]
fn op_zoo_prelu_pad_pool_instancenorm_resize_convtranspose_reduce() {
    let x: [i64; 4] = [1, 3, 8, 8];
    let int = |name: &str, v: &[i64]| {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = 7;
        t.dims = vec![v.len() as i64];
        t.int64_data = v.to_vec();
        t
    };
    let mut m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa", "ba"], &["a"], vec![]),
            nd("PRelu", "prelu", &["a", "slope"], &["p"], vec![]),
            nd("Pad", "pad", &["p", "pads"], &["pd"], vec![]),
            nd(
                "MaxPool",
                "pool",
                &["pd"],
                &["mp"],
                vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])],
            ),
            nd("InstanceNormalization", "in", &["mp", "in_s", "in_b"], &["i"], vec![]),
            nd("Resize", "up", &["i", "", "scales"], &["u"], vec![]),
            nd("Clip", "clip", &["u", "lo", "hi"], &["c"], vec![]),
            nd("ConvTranspose", "B", &["c", "wb", "bb"], &["b"], vec![attr_ints("strides", &[2, 2])]),
            nd("LeakyRelu", "lrelu", &["b"], &["lb"], vec![attr_f("alpha", 0.1)]),
            nd("ReduceMean", "mean", &["lb"], &["m"], vec![attr_ints("axes", &[2, 3]), attr_i("keepdims", 1)]),
            nd("Flatten", "flat", &["m"], &["f"], vec![]),
            nd("Gemm", "fc", &["f", "wf", "bf"], &["y"], vec![attr_i("transB", 1)]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 0.01, 1.], 1),
            tensor::new_f32("ba", &[6], &[0.1, 0.2, -0.1, 0.0, 0.3, 0.1]),
            tensor::new_f32("slope", &[6, 1, 1], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
            int("pads", &[0, 0, 1, 1, 0, 0, 1, 1]),
            tensor::new_f32("in_s", &[6], &[1.0, 0.5, 2.0, 1.0, 1.5, 1.0]),
            tensor::new_f32("in_b", &[6], &[0.2, 0.0, -0.2, 0.1, 0.0, 0.3]),
            tensor::new_f32("scales", &[4], &[1.0, 1.0, 2.0, 2.0]),
            tensor::new_f32("lo", &[], &[-1.0]),
            tensor::new_f32("hi", &[], &[1.0]),
            w("wb", &[6, 4, 2, 2], &ones(6), 2),
            tensor::new_f32("bb", &[4], &[0.1, -0.1, 0.2, 0.0]),
            w("wf", &[3, 4], &ones(3), 3),
            tensor::new_f32("bf", &[3], &[0.; 3]),
        ],
        &x,
        &["y"],
    );
    set_out_rank(&mut m, 2);
    let o = prove_x(&m, &x, &no_floor());
    let p = &o.result.pruned;
    let a = group(&o.result, "A");
    assert!(a.blocked.is_none() && a.kept == 4, "{a:?}");
    for (name, dims) in [("slope", vec![4, 1, 1]), ("in_s", vec![4]), ("in_b", vec![4])] {
        assert_eq!(weight(p, name).dims, dims, "{name}");
    }
    assert_eq!(weight(p, "wb").dims[0], 4, "ConvTranspose input channels follow A");
    assert_eq!(weight(p, "wf").dims[1], weight(p, "wb").dims[1], "Gemm in-features follow the ConvTranspose outputs");
}

#[test]
fn gemm_with_a_full_bias_matrix() {
    let x2: [i64; 2] = [2, 4];
    let m = mk_model(
        vec![
            nd("Gemm", "A", &["x", "wa", "ca"], &["a"], vec![attr_i("transB", 1)]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Gemm", "B", &["ra", "wb"], &["y"], vec![attr_i("transB", 1)]),
        ],
        vec![
            w("wa", &[6, 4], &[1., 0.01, 1., 1., 1., 0.01], 1),
            w("ca", &[2, 6], &ones(2), 3),
            w("wb", &[3, 6], &ones(3), 2),
        ],
        &x2,
        &["y"],
    );
    let o = prove_x(&m, &x2, &no_floor());
    assert_eq!(weight(&o.result.pruned, "ca").dims, vec![2, 4]);
    assert_eq!(weight(&o.result.pruned, "wb").dims, vec![3, 4]);
}
