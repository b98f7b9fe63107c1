//! Units whose output is a constant: BatchNorm shifts and dead rows' biases folded into the next
//! layer, in plain and MobileNet-style depthwise blocks.
use super::*;

/// x → Conv A (no bias) → BN (large positive shift) → Relu → consumer C.
fn bn_model(consumer_pads: bool) -> ModelProto {
    let c = 6;
    let pads = if consumer_pads { vec![attr_ints("pads", &[1, 1, 1, 1])] } else { vec![] };
    let kc = if consumer_pads { 3 } else { 1 };
    mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("BatchNormalization", "bn", &["a", "g", "b", "mu", "var"], &["n"], vec![attr_f("epsilon", 1e-5)]),
            nd("Relu", "r", &["n"], &["rn"], vec![]),
            nd("Conv", "C", &["rn", "wc"], &["y"], pads),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 0.01, 1., 1.], 1),
            tensor::new_f32("g", &[c], &[1.0, 2.0, 0.5, 1.5, 1.0, 1.0]),
            tensor::new_f32("b", &[c], &[0.5, 0.8, -0.3, 0.6, 0.2, 0.1]),
            tensor::new_f32("mu", &[c], &[0.1, -0.2, 0.0, 0.3, 0.0, 0.1]),
            tensor::new_f32("var", &[c], &[1.0, 0.5, 2.0, 1.0, 1.0, 1.0]),
            w("wc", &[2, 6, kc, kc], &ones(2), 2),
        ],
        &X4,
        &["y"],
    )
}

#[test]
fn bn_shift_of_removed_channels_is_folded_into_the_next_bias() {
    let m = bn_model(false);
    let o = prove_x(&m, &X4, &no_floor());
    let g = group(&o.result, "A");
    assert_eq!(g.kept, 4);
    assert!(g.notes.iter().any(|n| n.contains("folded into the bias of 'C'")), "{:?}", g.notes);
    let c = node(&o.result.pruned, "C");
    assert_eq!(c.input.len(), 3, "a bias was created for C");
    // The removed channels had tiny weights: with the constant folded, the pruned model stays
    // close to the dense one (without it the error would be ~ relu(beta') · ΣW).
    let d = dense_vs_pruned(&o, &X4);
    assert!(d < 0.05, "dense vs pruned {d}");
}

#[test]
fn bn_shift_into_a_zero_padded_conv_is_folded_in_the_interior() {
    let m = bn_model(true);
    let o = prove_x(&m, &X4, &no_floor());
    let g = group(&o.result, "A");
    // Channels 1 and 3 emit relu(beta') > 0 into a zero-padded conv: folded into C's bias (exact
    // in the interior, the border difference is pruning error), so they are removed, and the
    // masked model (checked by `prove`) computes exactly what the pruned one does.
    assert_eq!(g.kept, 4);
    assert!(g.notes.iter().any(|n| n.contains("folded into the bias of 'C' (exact in the interior")), "{:?}", g.notes);
    let d = dense_vs_pruned(&o, &X4);
    assert!(d < 0.5, "dense vs pruned {d}");
}

/// Dead units (producer rows of zeros) emit their bias whatever the input: it is folded into the
/// consumer's bias, whether the exporter wrote it into the Conv / Gemm or as an Add, so removing
/// them changes nothing. Live units' biases are zeroed with their weights, as before; a dead unit
/// whose bias cannot be folded (here: multiplied by a spatial map) is kept.
/// x → Conv E (expansion, 6 × 3 × 1 × 1, rows scaled by `we`, bias `be`) → Relu → depthwise
/// Conv D (6 × 1 × 3 × 3, rows scaled by `wd`, bias `bd`, zero-padded by 1 when `padded`) → Relu
/// → Conv P (projection to 2) → y: a MobileNet block for the dead-row tests.
fn depthwise_block(we: &[f32], be: &[f32], wd: &[f32], bd: &[f32], padded: bool) -> ModelProto {
    let mut dw = vec![attr_i("group", 6)];
    if padded {
        dw.push(attr_ints("pads", &[1, 1, 1, 1]));
    }
    mk_model(
        vec![
            nd("Conv", "E", &["x", "we", "be"], &["e"], vec![]),
            nd("Relu", "re", &["e"], &["r"], vec![]),
            nd("Conv", "D", &["r", "wd", "bd"], &["d"], dw),
            nd("Relu", "rd", &["d"], &["rr"], vec![]),
            nd("Conv", "P", &["rr", "wp", "bp"], &["y"], vec![]),
        ],
        vec![
            w("we", &[6, 3, 1, 1], we, 1),
            tensor::new_f32("be", &[6], be),
            w("wd", &[6, 1, 3, 3], wd, 2),
            tensor::new_f32("bd", &[6], bd),
            w("wp", &[2, 6, 1, 1], &ones(2), 3),
            tensor::new_f32("bp", &[2], &[0.3, -0.3]),
        ],
        &X4,
        &["y"],
    )
}

/// MobileNet block: live expansion rows, then a depthwise filter that is all zero for channels
/// 1 and 4: those channels emit relu(bias) whatever the input. Deadness is per row, not per
/// class: the classes score 0, go first, and the depthwise bias is folded into the projection.
/// Then dead expansion rows into live depthwise filters.
#[test]
fn dead_rows_inside_a_depthwise_block_are_removed_exactly() {
    let opts = StructOptions { beta: 1.2, ..no_floor() };
    let m = depthwise_block(
        &ones(6),
        &[0.1, 0.2, 0.1, -0.1, 0.3, 0.2],
        &[1., 0., 1., 1., 0., 1.],
        &[0.1, 0.8, -0.2, 0.4, 0.6, 0.05],
        true,
    );
    let o = prove_x(&m, &X4, &opts);
    let g = group(&o.result, "E");
    assert_eq!(g.removed, vec![1, 4], "{g:?}");
    assert!(g.notes.iter().any(|n| n.contains("2 removed unit(s) are dead")), "{:?}", g.notes);
    assert!(g.notes.iter().any(|n| n.contains("folded into the bias of 'P'")), "{:?}", g.notes);
    let d = dense_vs_pruned(&o, &X4);
    assert!(d < 1e-5, "dense vs pruned {d} (dropping relu(0.8), relu(0.6) gave ~0.1)");

    // The other way round: dead expansion rows 1 and 4 (bias kept: relu(0.5), relu(0.7)) into
    // live, weaker depthwise filters (unpadded, so exact everywhere): those channels output
    // v·Σw + b whatever the input. The masked model keeps those depthwise rows and P folds the
    // constant; dropping it cost 0.076.
    let opts = StructOptions { beta: 1.0, ..no_floor() };
    let m = depthwise_block(
        &[1., 0., 1., 1., 0., 1.],
        &[0.1, 0.5, 0.1, -0.1, 0.7, 0.2],
        &[1., 0.3, 1., 1., 0.3, 1.],
        &[0.1, 0.2, -0.2, 0.4, -0.1, 0.05],
        false,
    );
    let o = prove_x(&m, &X4, &opts);
    let g = group(&o.result, "E");
    assert_eq!(g.removed, vec![1, 4], "{g:?}");
    let d = dense_vs_pruned(&o, &X4);
    assert!(d < 1e-5, "dense vs pruned {d}");
}

/// Found by a helper: a dead expansion row's constant through a live depthwise filter that the
/// activation turns into 0 in the interior but not at the zero-padded corners. The masked model
/// keeps that depthwise row, so the consumer's input slice must be zeroed there even though the
/// constant is 0 (masked-equivalence failed, 3e-3, and the default run wrote nothing).
/// And: dead rows under a LayerNormalization do not make the layer's live units "dead" (every
/// unit's score was zeroed: "all scores are zero", kept whole; or 13 live units cut as dead).
#[test]
fn dead_rows_behind_a_zeroing_activation_or_a_layer_norm_are_not_misread() {
    // Channel 1: Σw ≈ −1.8, so relu(1·Σw + 1) is 0 inside and > 0 at the corners.
    let m = depthwise_block(
        &[1., 0., 1., 1., 1., 1.],
        &[0.1, 1.0, 0.1, -0.1, 0.3, 0.2],
        &[1., -0.2, 1., 1., 1., 1.],
        &[0.1, 1.0, -0.2, 0.4, 0.3, 0.05],
        true,
    );
    let o = prove_x(&m, &X4, &StructOptions { beta: 1.0, ..no_floor() });
    assert_eq!(group(&o.result, "E").removed, vec![1], "{:?}", group(&o.result, "E"));

    let x3: [i64; 3] = [1, 4, 8];
    let mut cols = vec![1f32; 16];
    cols[3] = 0.0;
    cols[9] = 0.0;
    let w1: Vec<f32> = {
        let t = w("t", &[16, 8], &cols, 4);
        let v = tensor::read_f32(&t).unwrap();
        (0..8 * 16).map(|i| v[(i % 16) * 8 + i / 16]).collect()
    };
    let ln = mk_model(
        vec![
            nd("MatMul", "A", &["x", "w1"], &["a"], vec![]),
            nd("Add", "ab", &["a", "b1"], &["h"], vec![]),
            nd("LayerNormalization", "ln", &["h", "g", "bt"], &["n"], vec![attr_i("axis", -1)]),
            nd("MatMul", "B", &["n", "w2"], &["y"], vec![]),
        ],
        vec![
            tensor::new_f32("w1", &[8, 16], &w1),
            tensor::new_f32("b1", &[16], &(0..16).map(|i| 0.1 * i as f32 - 0.5).collect::<Vec<_>>()),
            tensor::new_f32("g", &[16], &[1.0; 16]),
            tensor::new_f32("bt", &[16], &[0.0; 16]),
            w("w2", &[16, 4], &ones(16), 5),
        ],
        &x3,
        &["y"],
    );
    let o = prove_x(&ln, &x3, &StructOptions { beta: 1.0, ..no_floor() });
    let g = group(&o.result, "A");
    assert!(!g.notes.iter().any(|n| n.contains("all scores are zero") || n.contains("are dead")), "{g:?}");
    assert!(g.kept < 16 && g.removed.contains(&3) && g.removed.contains(&9), "{g:?}");
}

#[test]
fn dead_units_are_removed_with_their_bias_folded() {
    // β 1.2: the four live rows' norms vary ±20 %, so N_eff is a little under 4.
    let opts = StructOptions { beta: 1.2, ..no_floor() };
    let ba = tensor::new_f32("ba", &[6], &[0.1, 0.7, -0.2, 0.4, 0.3, 0.05]);
    let dead_rows = [1., 0., 1., 0., 1., 1.];
    let conv = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa", "ba"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Conv", "C", &["ra", "wc", "bc"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &dead_rows, 1),
            ba.clone(),
            w("wc", &[2, 6, 1, 1], &ones(2), 2),
            tensor::new_f32("bc", &[2], &[0.3, -0.3]),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&conv, &X4, &opts);
    let g = group(&o.result, "A");
    assert_eq!(g.kept, 4);
    assert!(g.notes.iter().any(|n| n.contains("folded into the bias of 'C'")), "{:?}", g.notes);
    assert_eq!(tensor::read_f32(weight(&o.result.pruned, "ba")).unwrap(), vec![0.1, -0.2, 0.3, 0.05]);
    let d = dense_vs_pruned(&o, &X4);
    assert!(d < 1e-5, "dense vs pruned {d} (zeroing relu(0.7), relu(0.4) gave ~0.2)");

    let x2: [i64; 2] = [3, 4];
    let mut gemm = mk_model(
        vec![
            nd("Gemm", "A", &["x", "wa", "ba"], &["a"], vec![attr_i("transB", 1)]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Gemm", "B", &["ra", "wb", "bb"], &["y"], vec![attr_i("transB", 1)]),
        ],
        vec![
            w("wa", &[6, 4], &dead_rows, 1),
            ba.clone(),
            w("wb", &[3, 6], &ones(3), 2),
            tensor::new_f32("bb", &[3], &[0.0; 3]),
        ],
        &x2,
        &["y"],
    );
    gemm.graph.as_mut().unwrap().input = vec![vi("x", Some(&x2))];
    let o = prove_x(&gemm, &x2, &opts);
    assert_eq!(group(&o.result, "A").kept, 4);
    let d = dense_vs_pruned(&o, &x2);
    assert!(d < 1e-5, "dense vs pruned {d}");

    // A spatial mask turns the dead units' constant into a map: not foldable, so they are kept
    // (removing them would drop it: 0.2 relative L2), with the reason.
    let gated = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa", "ba"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Mul", "gm", &["ra", "gate"], &["ga"], vec![]),
            nd("Conv", "C", &["ga", "wc", "bc"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &dead_rows, 1),
            ba,
            w("gate", &[1, 1, 5, 5], &[1.0], 3),
            w("wc", &[2, 6, 1, 1], &ones(2), 2),
            tensor::new_f32("bc", &[2], &[0.3, -0.3]),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&gated, &X4, &opts);
    let g = group(&o.result, "A");
    assert_eq!(g.kept, 6, "{g:?}");
    assert!(
        g.notes
            .iter()
            .any(|n| n.contains("2 unit(s) kept because it is dead (near-zero weights) and its bias cannot be folded")),
        "{:?}",
        g.notes
    );
}

/// x → Conv A (6 × 3 × 1 × 1, rows scaled by `rows`, bias `ba`) → Relu → Conv C (2 × 6 × 3 × 3,
/// zero-padded by 1, bias `bc` when `bias`) → y: dead rows of A read by a padded consumer.
fn dead_into_padded(rows: &[f32], ba: &[f32], bias: bool) -> ModelProto {
    let c_in: Vec<&str> = if bias { vec!["ra", "wc", "bc"] } else { vec!["ra", "wc"] };
    let mut inits =
        vec![w("wa", &[6, 3, 1, 1], rows, 1), tensor::new_f32("ba", &[6], ba), w("wc", &[2, 6, 3, 3], &ones(2), 2)];
    if bias {
        inits.push(tensor::new_f32("bc", &[2], &[0.3, -0.3]));
    }
    mk_model(
        vec![
            nd("Conv", "A", &["x", "wa", "ba"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Conv", "C", &c_in, &["y"], vec![attr_ints("pads", &[1, 1, 1, 1])]),
        ],
        inits,
        &X4,
        &["y"],
    )
}

/// Dead units read by a zero-padded Conv: the bias fold is exact in the interior only, but a
/// dead unit the cut keeps (here: rounded up onto it) emits its constant over the same support,
/// padding included, so the removed ones' kernel slices, scaled by c_j / c_k, are added to its
/// slice and the removal is exact everywhere, with no bias created. Without a kept dead unit
/// (`--round-to 1`) the fold is exact in the interior only, as before.
#[test]
fn a_kept_dead_unit_carries_the_removed_ones_exactly_at_a_padded_border() {
    let model = |bias: bool| dead_into_padded(&[1., 0., 1., 0., 1., 0.], &[0.1, 0.7, -0.2, 0.4, 0.3, 0.9], bias);
    // β 1.2: the three live rows' norms vary, so N_eff is a little under 3.
    let four = StructOptions { beta: 1.2, round_to: onnx_emp::prune::RoundTo::Multiple(4), ..no_floor() };
    for bias in [true, false] {
        let o = prove_x(&model(bias), &X4, &four);
        let g = group(&o.result, "A");
        // three live rows, rounded up to 4 onto one dead unit; two dead units removed
        assert_eq!((g.kept, g.removed.len()), (4, 2), "{g:?}");
        assert!(
            g.notes.iter().any(|n| n.contains("2 removed dead unit(s) carried by a kept dead unit into 'C'")),
            "{g:?}"
        );
        assert!(!g.notes.iter().any(|n| n.contains("folded into the bias of 'C'")), "{g:?}");
        let d = dense_vs_pruned(&o, &X4);
        assert!(d < 1e-6, "dense vs pruned {d} with bias {bias}");
        // no parameter added: C's bias is the one it had, or none
        assert_eq!(node(&o.result.pruned, "C").input.len(), if bias { 3 } else { 2 });
    }
    let one = StructOptions { round_to: onnx_emp::prune::RoundTo::Multiple(1), ..four };
    let o = prove_x(&model(true), &X4, &one);
    assert_eq!(group(&o.result, "A").kept, 3);
    let d = dense_vs_pruned(&o, &X4);
    assert!(d > 1e-3 && d < 0.5, "dense vs pruned {d}: the border differs without a carrier");
}

/// At a large β (the fidelity guard raises it) EMP's count reaches the dead units, which score
/// 0, and the nearest multiple of 16 was the whole width: the group stayed dense. The kept count
/// is capped at every live unit rounded up onto dead ones, so the dead units go whatever β, and
/// the report says so; the result is exact (no padding here).
#[test]
fn dead_units_go_at_any_beta() {
    let rows: Vec<f32> = (0..48).map(|i| if i % 5 < 2 { 1.0 + 0.01 * i as f32 } else { 0.0 }).collect();
    let live = rows.iter().filter(|&&r| r > 0.0).count();
    assert_eq!(live, 20);
    let bias: Vec<f32> = (0..48).map(|i| 0.1 + 0.02 * i as f32).collect();
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa", "ba"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Conv", "C", &["ra", "wc", "bc"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[48, 3, 1, 1], &rows, 1),
            tensor::new_f32("ba", &[48], &bias),
            w("wc", &[2, 48, 1, 1], &ones(2), 2),
            tensor::new_f32("bc", &[2], &[0.3, -0.3]),
        ],
        &X4,
        &["y"],
    );
    for beta in [5.0, 50.0] {
        let auto = onnx_emp::prune::RoundTo::Auto;
        let o = prove_x(&m, &X4, &StructOptions { beta, round_to: auto, ..no_floor() });
        let g = group(&o.result, "A");
        assert_eq!(g.kept, 32, "β {beta}: {g:?}");
        assert!(g.notes.iter().any(|n| n.contains("went past the 20 live unit(s) into the 28 dead one(s)")), "{g:?}");
        let d = dense_vs_pruned(&o, &X4);
        assert!(d < 1e-5, "dense vs pruned {d}");
    }
}

/// Two zero-padded Convs reading the dead units through one shared weight: carrying into it
/// would carry into both (twice for one tensor), so neither carries; the bias folds stay, exact
/// in the interior.
#[test]
fn a_shared_consumer_weight_carries_nothing() {
    let x: [i64; 4] = [1, 3, 12, 12];
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa", "ba"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Conv", "C1", &["ra", "wc", "bc1"], &["y1"], vec![attr_ints("pads", &[1, 1, 1, 1])]),
            nd("Conv", "C2", &["ra", "wc", "bc2"], &["y2"], vec![attr_ints("pads", &[1, 1, 1, 1])]),
            nd("Add", "s", &["y1", "y2"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &[1., 0., 1., 0., 1., 0.], 1),
            tensor::new_f32("ba", &[6], &[0.1, 0.7, -0.2, 0.4, 0.3, 0.9]),
            w("wc", &[2, 6, 3, 3], &ones(2), 2),
            tensor::new_f32("bc1", &[2], &[0.3, -0.3]),
            tensor::new_f32("bc2", &[2], &[0.1, 0.2]),
        ],
        &x,
        &["y"],
    );
    let opts = StructOptions { beta: 1.2, round_to: onnx_emp::prune::RoundTo::Multiple(4), ..no_floor() };
    let o = prove_x(&m, &x, &opts);
    let g = group(&o.result, "A");
    assert_eq!((g.kept, g.removed.len()), (4, 2), "{g:?}");
    assert!(!g.notes.iter().any(|n| n.contains("carried")), "{g:?}");
    assert!(g.notes.iter().any(|n| n.contains("folded into the bias of 'C1'")), "{g:?}");
    let d = dense_vs_pruned(&o, &x);
    assert!(d > 1e-4 && d < 0.3, "dense vs pruned {d}: the border only");
}

/// The fidelity guard's keep-everything β keeps dead units too: removing them alone can move the
/// outputs (their constants at a zero-padded border: 0.165 relative L2 on this 5 × 5 map), and
/// the guard's "kept dense" must be the dense model.
#[test]
fn the_guards_keep_all_beta_keeps_dead_units() {
    let m = dead_into_padded(&[1., 0., 1., 0., 1., 0.], &[0.1, 0.7, -0.2, 0.4, 0.3, 0.9], true);
    for round_to in [onnx_emp::prune::RoundTo::Multiple(1), onnx_emp::prune::RoundTo::Auto] {
        let big = StructOptions { beta: 1e6, round_to, ..no_floor() };
        let g = group(&prune_channels(&m, &big).unwrap(), "A").clone();
        assert!(g.kept < 6, "β 1e6 still removes the dead units: {g:?}");
        let all = StructOptions { beta: onnx_emp::prune::KEEP_ALL_BETA, round_to, ..no_floor() };
        let r = prune_channels(&m, &all).unwrap();
        let g = group(&r, "A");
        assert_eq!((g.kept, g.removed.len()), (6, 0), "{g:?}");
        assert!(g.notes.is_empty(), "{g:?}");
    }
}

/// A dead row is one under 1 % of its layer's RMS row norm, not always 0. A carrier whose rows
/// are not exactly 0 has a small varying part that the carry scales by c_j / c_k, so it carries
/// only constants no larger than its own; a larger one keeps the bias fold.
#[test]
fn a_nearly_dead_carrier_carries_only_smaller_constants() {
    // rows 1, 3, 5 nearly dead (scored 0); rounding up keeps the first, whose constant (0.95) is
    // larger than row 3's (0.7) and smaller than row 5's (1.2)
    let m = dead_into_padded(&[1., 1e-4, 1., 3e-4, 1., 0.5e-4], &[0.1, 0.95, -0.2, 0.7, 0.3, 1.2], true);
    let opts = StructOptions { beta: 1.2, round_to: onnx_emp::prune::RoundTo::Multiple(4), ..no_floor() };
    let o = prove_x(&m, &X4, &opts);
    let g = group(&o.result, "A");
    assert_eq!(g.removed, vec![3, 5], "{g:?}");
    assert!(g.notes.iter().any(|n| n.contains("1 removed dead unit(s) carried by a kept dead unit into 'C'")), "{g:?}");
    assert!(g.notes.iter().any(|n| n.contains("folded into the bias of 'C'")), "{g:?}");
}
