//! What blocks a group or fails a run: inputs of unknown rank, computed reduce axes, unknown ops
//! and subgraph captures, non-finite weights, and a wrong rewrite caught by the checks.
use super::*;

/// A MatMul whose input has no known rank (the output of an op of another domain, of a function
/// of the model) is a group in the table, blocked with the reason; it used to be absent.
#[test]
fn a_matmul_on_an_input_of_unknown_rank_is_listed_blocked() {
    let x2: [i64; 2] = [3, 4];
    let mut custom = nd("Foo", "foo", &["x"], &["r1"], vec![]);
    custom.domain = "my.domain".into();
    let mut m = mk_model(
        vec![
            custom,
            nd("MatMul", "mm1", &["r1", "w1"], &["h"], vec![]),
            nd("Relu", "r", &["h"], &["rh"], vec![]),
            nd("MatMul", "mm2", &["rh", "w2"], &["y"], vec![]),
        ],
        vec![w("w1", &[4, 8], &ones(4), 1), w("w2", &[8, 2], &ones(8), 2)],
        &x2,
        &["y"],
    );
    m.graph.as_mut().unwrap().input = vec![vi("x", Some(&x2))];
    let r = prune_channels(&m, &no_floor()).unwrap();
    let g = group(&r, "mm1");
    let why = g.blocked.as_deref().unwrap_or("");
    assert!(why.contains("the rank of its input 'r1' is unknown"), "{g:?}");
    assert_eq!(g.kept, g.n);
    // scikit-learn's Scaler keeps its input's shape: the MLP after it is followed.
    let gr = m.graph.as_mut().unwrap();
    gr.node[0].op_type = "Scaler".into();
    gr.node[0].domain = "ai.onnx.ml".into();
    let r = prune_channels(&m, &no_floor()).unwrap();
    assert_eq!(group(&r, "mm1").blocked, None, "{:?}", group(&r, "mm1"));
}

/// Opset 18 moved ReduceMean's axes to an input; an unoptimised dynamo export computes it as
/// `Reshape(Constant [2, 3], Constant value_ints [-1])`. That is a constant: the mean is over H
/// and W and the channels prune (it was blocked as "reduces every axis"). Axes that really are
/// computed block with that reason.
/// A group joined with an untracked tensor (here a channel-padded copy of the input) is kept
/// whole, but the Add's output still says how many channels it has: a Concat beside it (a UNet's
/// upsampled stream and its skip) no longer blocks the other input's group for an unknown size.
#[test]
fn a_group_joined_with_an_untracked_tensor_still_gives_its_width() {
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Pad", "P", &["x", "pads"], &["z"], vec![]),
            nd("Add", "add", &["a", "z"], &["s"], vec![]),
            nd("Conv", "B", &["x", "wb"], &["b"], vec![]),
            nd("Concat", "cat", &["s", "b"], &["c"], vec![attr_i("axis", 1)]),
            nd("Conv", "C", &["c", "wc"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[4, 3, 1, 1], &ones(4), 1),
            tensor::new_i64("pads", &[8], &[0, 0, 0, 0, 0, 1, 0, 0]),
            w("wb", &[4, 3, 1, 1], &[1., 0.01, 1., 0.02], 2),
            w("wc", &[2, 8, 1, 1], &ones(2), 3),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &no_floor());
    let a = group(&o.result, "A");
    assert!(a.blocked.as_deref().is_some_and(|b| b.contains("joined with untracked tensor 'z'")), "{a:?}");
    let b = group(&o.result, "B");
    assert!(b.blocked.is_none() && b.kept == 2, "{b:?}");
    assert_eq!(weight(&o.result.pruned, "wc").dims, vec![2, 6, 1, 1]);
}

#[test]
fn reduce_axes_from_a_reshaped_constant_are_read() {
    let model = |axes_node: NodeProto| {
        let mut m = mk_model(
            vec![
                nd("Conv", "A", &["x", "wa", "ba"], &["a"], vec![]),
                nd("Relu", "r", &["a"], &["ra"], vec![]),
                const_node("axes_raw", tensor::new_i64("axes_raw_t", &[2], &[2, 3])),
                axes_node,
                nd("Reshape", "reshape_axes", &["axes_raw", "minus_one"], &["axes"], vec![]),
                nd("ReduceMean", "mean", &["ra", "axes"], &["m"], vec![attr_i("keepdims", 0)]),
                nd("Gemm", "B", &["m", "wb", "bb"], &["y"], vec![attr_i("transB", 1)]),
            ],
            vec![
                w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 0.01, 1., 1.], 1),
                tensor::new_f32("ba", &[6], &[0.1; 6]),
                w("wb", &[2, 6], &ones(2), 2),
                tensor::new_f32("bb", &[2], &[0.0; 2]),
            ],
            &X4,
            &["y"],
        );
        m.opset_import[0].version = 18;
        m.graph.as_mut().unwrap().output = vec![vi("y", Some(&[1, 2]))];
        m
    };
    let minus_one = nd("Constant", "c_minus_one", &[], &["minus_one"], vec![attr_ints("value_ints", &[-1])]);
    let o = prove_x(&model(minus_one), &X4, &no_floor());
    let g = group(&o.result, "A");
    assert_eq!((g.blocked.as_deref(), g.kept), (None, 4), "{g:?}");
    // The same shape read from the input: not a constant, and said so.
    let computed = nd("Shape", "s", &["x"], &["minus_one"], vec![attr_i("start", 0), attr_i("end", 1)]);
    let r = prune_channels(&model(computed), &no_floor()).unwrap();
    let why = group(&r, "A").blocked.clone().unwrap_or_default();
    assert!(why.contains("its axes are computed, not a constant"), "{why}");
}

#[test]
fn unknown_ops_and_subgraph_captures_are_barriers() {
    let m = mk_model(
        vec![nd("Conv", "A", &["x", "wa"], &["a"], vec![]), nd("Relu", "r", &["a"], &["ra"], vec![]), {
            let mut n = nd("Foo", "foo", &["ra"], &["y"], vec![]);
            n.domain = "com.example".into();
            n
        }],
        vec![w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 1., 0.01], 1)],
        &X4,
        &["y"],
    );
    let r = prune_channels(&m, &no_floor()).unwrap();
    assert_eq!(r.groups[0].blocked.as_deref(), Some("blocked by com.example:Foo node 'foo'"));
    assert_eq!(params(&r.pruned), params(&m));

    // an If branch reads 'ra' from the outer scope
    let mut branch = GraphProto::new();
    branch.name = "then".into();
    branch.node = vec![nd("Identity", "id", &["ra"], &["t"], vec![])];
    branch.output = vec![vi("t", None)];
    let mut cond = TensorProto::new();
    cond.name = "cond".into();
    cond.data_type = 9;
    cond.dims = vec![];
    cond.raw_data = vec![1];
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd(
                "If",
                "if",
                &["cond"],
                &["y"],
                vec![attr_g("then_branch", branch.clone()), attr_g("else_branch", branch)],
            ),
        ],
        vec![w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 1., 0.01], 1), cond],
        &X4,
        &["y"],
    );
    let r = prune_channels(&m, &no_floor()).unwrap();
    assert!(r.groups[0].blocked.as_deref().unwrap().contains("'ra' is read inside a subgraph"), "{:?}", r.groups);
}

#[test]
fn non_finite_weights_are_an_error_naming_the_tensor() {
    let mut wa = w("wa", &[4, 3, 1, 1], &ones(4), 1);
    let mut v = tensor::read_f32(&wa).unwrap();
    v[5] = f32::NAN;
    wa = tensor::new_f32("wa", &[4, 3, 1, 1], &v);
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Conv", "B", &["ra", "wb"], &["y"], vec![]),
        ],
        vec![wa, w("wb", &[2, 4, 1, 1], &ones(2), 2)],
        &X4,
        &["y"],
    );
    let e = prune_channels(&m, &no_floor()).err().expect("NaN must be an error");
    assert!(format!("{e:#}").contains("'wa'"), "{e:#}");
    assert!(prune_channels(&m, &StructOptions { beta: 0.0, ..no_floor() }).is_err());
}

#[test]
fn the_checks_catch_a_wrong_rewrite() {
    let (dense, npys, inputs) = digits("digits_mlp.onnx", "digits_test_x64.npy");
    let mut r = prune_channels(&dense, &no_floor()).unwrap();
    // swap two input columns of fc2: a classic index-mapping bug
    let g = r.pruned.graph.as_mut().unwrap();
    let t = g.initializer.iter_mut().find(|t| t.name == "fc2.weight").unwrap();
    let (o, i) = (t.dims[0] as usize, t.dims[1] as usize);
    let mut v = tensor::read_f32(t).unwrap();
    for row in 0..o {
        v.swap(row * i, row * i + 1);
    }
    *t = tensor::new_f32("fc2.weight", &[o as i64, i as i64], &v);
    let s = save_all(&dense, &r);
    assert!(tract_check(&s, &inputs).unwrap() > 1e-3);
    let script = root().join("tests/helpers/onnx_check.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(&s.pruned).arg(&s.masked).arg("--input").arg(format!("x={}", npys[0].1.display()));
    if let Ok(out) = cmd.output() {
        if out.status.code() != Some(77) {
            assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
        }
    }
}
