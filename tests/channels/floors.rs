//! The floors (stem, narrow, bottleneck) and `--round-to auto` on wide groups.
use super::*;

/// The floors (on by default): a Conv reading the model input is kept whole, every other group
/// keeps half its width and at least 8 units; both are stated in the notes and lifted by
/// `Floor::OFF` (`--include narrow,stem`).
#[test]
fn floors_keep_the_stem_and_half_of_narrow_groups() {
    let (dense, npys, inputs) = digits("yolo_block.onnx", "digits_test_x1x8x8.npy");
    let low = StructOptions { beta: 0.3, round_to: onnx_emp::prune::RoundTo::Multiple(1), ..Default::default() };
    let on = prune_and_prove(&dense, &low, &npys, &inputs);
    let groups = |o: &Outcome| o.result.groups.iter().filter(|g| g.blocked.is_none()).cloned().collect::<Vec<_>>();
    let stem = |g: &GroupReport| g.notes.iter().any(|n| n.contains("reads the model input"));
    assert_eq!(groups(&on).iter().filter(|g| stem(g)).count(), 1, "{}", summary(&on.result.groups));
    for g in groups(&on) {
        if stem(&g) {
            assert_eq!(g.kept, g.n, "{g:?}");
        } else {
            assert!(g.kept >= g.n.min(8).max(g.n.div_ceil(2)), "{g:?}");
        }
    }
    assert!(groups(&on).iter().any(|g| g.notes.iter().any(|n| n.contains("floor of half the width"))));
    let off = prune_and_prove(&dense, &StructOptions { floor: Floor::OFF, ..low }, &npys, &inputs);
    assert!(groups(&off).iter().all(|g| !stem(g) && g.notes.iter().all(|n| !n.contains("floor"))));
    assert!(groups(&off).iter().any(|g| g.kept < g.n.min(8).max(g.n.div_ceil(2))), "{}", summary(&off.result.groups));
    assert!(off.params.1 < on.params.1);
}

/// The stem floor follows the input through ops whose other operands are parameters, computed
/// or not: `F.pad(x)[..., 1:-1, 1:-1]` exports a Pad whose pads a Concat computes, then a Slice,
/// and the first Conv behind them was cut as if it were no stem (32 → 16 on a trained VGG).
#[test]
fn the_stem_floor_sees_through_a_computed_pad_and_a_slice() {
    let m = mk_model(
        vec![
            nd("Concat", "pads", &["p1", "p2"], &["pads"], vec![attr_i("axis", 0)]),
            nd("Pad", "pad", &["x", "pads"], &["xp"], vec![]),
            nd("Slice", "crop", &["xp", "st", "en", "ax"], &["xc"], vec![]),
            nd("Conv", "A", &["xc", "wa"], &["a"], vec![]),
            nd("Relu", "ra", &["a"], &["a2"], vec![]),
            nd("Conv", "C", &["a2", "wc"], &["y"], vec![]),
        ],
        vec![
            tensor::new_i64("p1", &[4], &[0, 0, 1, 1]),
            tensor::new_i64("p2", &[4], &[0, 0, 1, 1]),
            tensor::new_i64("st", &[2], &[1, 1]),
            tensor::new_i64("en", &[2], &[-1, -1]),
            tensor::new_i64("ax", &[2], &[2, 3]),
            w("wa", &[16, 3, 1, 1], &[1., 0.01, 1., 1., 0.02, 1., 1., 1., 1., 1., 1., 1., 1., 1., 0.01, 1.], 1),
            w("wc", &[2, 16, 1, 1], &[1., 1.], 2),
        ],
        &X4,
        &["y"],
    );
    let floor = Floor { narrow: false, ..Floor::ON };
    let opts =
        StructOptions { beta: 0.7, round_to: onnx_emp::prune::RoundTo::Multiple(1), floor, ..Default::default() };
    let on = prove_x(&m, &X4, &opts);
    let a = group(&on.result, "A");
    assert_eq!(a.kept, a.n, "{}", summary(&on.result.groups));
    assert!(a.notes.iter().any(|n| n.contains("reads the model input")), "{:?}", a.notes);
    let off = prove_x(&m, &X4, &StructOptions { floor: Floor::OFF, ..opts });
    assert!(group(&off.result, "A").kept < 16, "{}", summary(&off.result.groups));
}

/// The bottleneck floor (on by default): in a network whose prunable groups include depthwise
/// convolutions, a group no depthwise Conv carries that a 1×1 conv connects to a depthwise group
/// (MobileNetV2's narrow block outputs) is kept whole and says so; `Floor { bottleneck: false, .. }`
/// (`--include bottleneck`) prunes it. A group no depthwise group touches (the last 1×1 conv,
/// which reads a bottleneck and feeds the classifier) is cut as before, in both scopes; a network
/// without depthwise convolutions is not affected.
#[test]
fn bottleneck_floor_keeps_the_narrow_streams_of_a_depthwise_net() {
    let dense = load(&root().join("models/fmnist_mobilenet.onnx"));
    let opts = StructOptions { beta: 0.8, round_to: onnx_emp::prune::RoundTo::Multiple(1), ..Default::default() };
    let on = prune_channels(&dense, &opts).unwrap();
    let off =
        prune_channels(&dense, &StructOptions { floor: Floor { bottleneck: false, ..Floor::ON }, ..opts.clone() })
            .unwrap();
    let held = |g: &GroupReport| g.notes.iter().any(|n| n.contains("--include bottleneck"));
    let dw = |g: &GroupReport| {
        g.members.iter().any(|m| {
            let n = node(&dense, m);
            n.op_type == "Conv" && graph::attr_i(n, "group").unwrap_or(1) > 1
        })
    };
    let prunable: Vec<&GroupReport> = on.groups.iter().filter(|g| g.blocked.is_none()).collect();
    // the block outputs: 16, 24, 32, 64, 96 wide, each between two depthwise groups
    let streams: Vec<usize> = prunable.iter().filter(|g| held(g)).map(|g| g.n).collect();
    assert_eq!(streams, [16, 24, 32, 64, 96], "{}", summary(&on.groups));
    for g in prunable.iter().filter(|g| held(g)) {
        assert!(!dw(g) && g.kept == g.n, "{g:?}");
    }
    // the depthwise groups are still cut, and so is the last 1x1 conv (320 wide, no depthwise
    // neighbour)
    assert!(prunable.iter().any(|g| dw(g) && g.kept < g.n), "{}", summary(&on.groups));
    let head = group(&on, "/features/features.10/features.10.0/Conv");
    assert!(!held(head) && head.kept < head.n, "{head:?}");
    // lifted: the streams are cut
    assert!(off.groups.iter().all(|g| !held(g)), "{}", summary(&off.groups));
    assert!(off.groups.iter().any(|g| g.blocked.is_none() && !dw(g) && g.n == 64 && g.kept < g.n));
    let params =
        |m: &ModelProto| m.graph.as_ref().unwrap().initializer.iter().map(|t| tensor::numel(t).unwrap()).sum::<usize>();
    assert!(params(&off.pruned) < params(&on.pruned) && params(&on.pruned) < params(&dense));
    // global scope: the same groups are held
    let global = prune_channels(&dense, &StructOptions { scope: StructScope::Global, ..opts.clone() }).unwrap();
    let held_global: Vec<usize> = global.groups.iter().filter(|g| held(g) && g.kept == g.n).map(|g| g.n).collect();
    assert_eq!(held_global, streams, "{}", summary(&global.groups));
    // no depthwise Conv in a ResNet: nothing is held
    let resnet = load(&root().join("models/fmnist_resnet.onnx"));
    let r = prune_channels(&resnet, &opts).unwrap();
    assert!(r.groups.iter().all(|g| !held(g)), "{}", summary(&r.groups));
    assert!(r.groups.iter().any(|g| g.kept < g.n), "{}", summary(&r.groups));
}

/// The bottleneck floor holds groups no wider than a depthwise group they connect to (MobileNet's
/// narrow streams, above), not an expansion beside one: ConvNeXt's block (a depthwise conv on the
/// stream, then a 4× wider MLP back to the stream) keeps its MLP prunable; with the MLP as narrow
/// as the stream, the floor holds it.
#[test]
fn bottleneck_floor_spares_an_expansion_beside_a_depthwise_stream() {
    let x: [i64; 4] = [1, 4, 6, 6];
    let block = |hidden: i64| {
        let scale = |k: i64| (0..k).map(|i| 1.0 + 0.1 * i as f32).collect::<Vec<f32>>();
        let mut m = mk_model(
            vec![
                nd("Conv", "stem", &["x", "wp"], &["p"], vec![]),
                nd("Relu", "pact", &["p"], &["rp"], vec![]),
                nd("Conv", "in", &["rp", "ws"], &["s"], vec![]),
                nd(
                    "Conv",
                    "dw",
                    &["s", "wd"],
                    &["d"],
                    vec![attr_i("group", 16), attr_ints("kernel_shape", &[3, 3]), attr_ints("pads", &[1, 1, 1, 1])],
                ),
                nd("Conv", "up", &["d", "wu"], &["u"], vec![]),
                nd("Relu", "act", &["u"], &["ru"], vec![]),
                nd("Conv", "down", &["ru", "wn"], &["n"], vec![]),
                nd("Add", "res", &["s", "n"], &["r"], vec![]),
                nd("Conv", "head", &["r", "wh"], &["y"], vec![]),
            ],
            vec![
                w("wp", &[8, 4, 1, 1], &scale(8), 6),
                w("ws", &[16, 8, 1, 1], &scale(16), 1),
                w("wd", &[16, 1, 3, 3], &scale(16), 2),
                w("wu", &[hidden, 16, 1, 1], &scale(hidden), 3),
                w("wn", &[16, hidden, 1, 1], &scale(16), 4),
                w("wh", &[3, 16, 1, 1], &ones(3), 5),
            ],
            &x,
            &["y"],
        );
        set_out_rank(&mut m, 4);
        m
    };
    let opts = StructOptions { beta: 0.7, round_to: onnx_emp::prune::RoundTo::Multiple(1), ..Default::default() };
    let held = |g: &GroupReport| g.notes.iter().any(|n| n.contains("--include bottleneck"));
    let wide = prove_x(&block(64), &x, &opts);
    let up = group(&wide.result, "up");
    assert!(!held(up) && up.kept < up.n, "{}", summary(&wide.result.groups));
    let narrow = prove_x(&block(16), &x, &opts);
    let up = group(&narrow.result, "up");
    assert!(held(up) && up.kept == up.n, "{}", summary(&narrow.result.groups));
}

/// `--round-to auto`: groups of 32 or more channels (a multiple of 16) keep the multiple of 16
/// nearest to EMP's count, which may be below it; narrower groups round up to 8; an explicit
/// `--round-to 16` always rounds up.
#[test]
fn auto_aligns_wide_groups_to_the_nearest_16() {
    use onnx_emp::prune::RoundTo;
    let dense = load(&root().join("models/fmnist_resnet.onnx"));
    for scope in [StructScope::Layer, StructScope::Global] {
        let opts = |round_to| StructOptions { beta: 0.8, scope, round_to, ..Default::default() };
        let raw = prune_channels(&dense, &opts(RoundTo::Multiple(1))).unwrap();
        let auto = prune_channels(&dense, &opts(RoundTo::Auto)).unwrap();
        let up16 = prune_channels(&dense, &opts(RoundTo::Multiple(16))).unwrap();
        let mut rounded_down = 0;
        for ((r, a), u) in raw.groups.iter().zip(&auto.groups).zip(&up16.groups) {
            assert_eq!((&r.id, r.n), (&a.id, a.n));
            if r.blocked.is_some() || r.kind != "channels" {
                continue;
            }
            assert!(u.kept >= r.kept && (u.kept % 16 == 0 || u.kept == u.n), "{u:?} vs {r:?}");
            if a.n >= 32 && a.n % 16 == 0 {
                assert!(a.kept % 16 == 0 && a.kept.abs_diff(r.kept) <= 8, "{a:?} vs {r:?}");
                rounded_down += usize::from(a.kept < r.kept);
            } else {
                assert!(a.kept >= r.kept && (a.kept % 8 == 0 || a.kept == a.n), "{a:?} vs {r:?}");
            }
        }
        // EMP keeps 100-101 of the 128-wide groups: 96, not 104 or 112
        assert!(rounded_down > 0, "{scope:?}: {}", summary(&auto.groups));
        let kept = |p: &StructuralResult| p.groups.iter().map(|g| g.kept).sum::<usize>();
        assert!(kept(&auto) < kept(&up16), "{scope:?}");
    }
}

/// A model pruned elsewhere with masks (torch's `ln_structured`, BN folded at export): zeroed
/// channels whose output is their bias. The floors hold a stem whole and half of a narrow group,
/// but only their live units: the dead ones cost nothing to remove and go, rounded up to the
/// alignment onto dead units, never down onto live ones, and the notes say so. Before 2026-12-06
/// the floors kept them.
#[test]
fn floors_keep_live_units_and_remove_dead_ones() {
    let mut sa = vec![1.0f32; 16];
    for i in [1, 5, 9, 13] {
        sa[i] = 0.0;
    }
    let mut sb = vec![0.0f32; 16];
    for (i, s) in [(0, 1.0), (3, 0.9), (6, 0.3), (8, 0.2), (11, 0.15), (14, 0.1)] {
        sb[i] = s;
    }
    let bias = |name: &str| tensor::new_f32(name, &[16], &(0..16).map(|i| 0.1 + 0.05 * i as f32).collect::<Vec<_>>());
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa", "ba"], &["a"], vec![]),
            nd("Relu", "ra", &["a"], &["a2"], vec![]),
            nd("Conv", "B", &["a2", "wb", "bb"], &["b"], vec![]),
            nd("Relu", "rb", &["b"], &["b2"], vec![]),
            nd("Conv", "C", &["b2", "wc", "bc"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[16, 3, 1, 1], &sa, 1),
            bias("ba"),
            w("wb", &[16, 16, 1, 1], &sb, 2),
            bias("bb"),
            w("wc", &[2, 16, 1, 1], &ones(2), 3),
            tensor::new_f32("bc", &[2], &[0.1, -0.1]),
        ],
        &X4,
        &["y"],
    );
    let has = |g: &GroupReport, s: &str| g.notes.iter().any(|n| n.contains(s));
    let one = StructOptions { beta: 0.3, round_to: onnx_emp::prune::RoundTo::Multiple(1), ..Default::default() };
    let o = prove_x(&m, &X4, &one);
    let a = group(&o.result, "A");
    assert_eq!((a.kept, a.removed.clone()), (12, vec![1, 5, 9, 13]), "{}", summary(&o.result.groups));
    assert!(has(a, "kept 12 of 16, every live unit: a Conv that reads the model input"), "{:?}", a.notes);
    // EMP keeps 1 or 2 of B's 6 live units; the narrow floor (8) counts live units only.
    let b = group(&o.result, "B");
    assert_eq!(b.kept, 6, "{}", summary(&o.result.groups));
    assert!(has(b, "less its 10 dead unit(s)") && has(b, "10 removed unit(s) are dead"), "{:?}", b.notes);
    let d = dense_vs_pruned(&o, &X4);
    assert!(d < 1e-5, "dense vs pruned {d}: only dead units went, their constants folded");
    // Aligned to 8: A's 12 live units round up to 16 (whole, its dead units with them), B's 6
    // to 8 (two dead units kept, named).
    let eight = StructOptions { round_to: onnx_emp::prune::RoundTo::Multiple(8), ..one };
    let o = prove_x(&m, &X4, &eight);
    let a = group(&o.result, "A");
    assert_eq!(a.kept, 16, "{:?}", a.notes);
    assert!(has(a, "its 4 dead unit(s) too: without them the width rounds back to 16"), "{:?}", a.notes);
    let b = group(&o.result, "B");
    assert_eq!(b.kept, 8, "{:?}", b.notes);
    assert!(has(b, "2 kept unit(s) are dead: kept to reach 8, a multiple of 8"), "{:?}", b.notes);
    let d = dense_vs_pruned(&o, &X4);
    assert!(d < 1e-5, "dense vs pruned {d}");
}

/// A mixed depthwise convolution (MixNet): one 96-wide group split into two 48-wide parts, each
/// run by its own depthwise Conv (3×3, 5×5), joined again by a Concat. `--round-to auto` aligns
/// each part for its own width, not only the group: onnxruntime runs a Conv in its blocked
/// kernels only when its channels are a multiple of the block, and MixNet-S, whose 144-wide
/// group kept 112 as 37 + 38 + 37, ran 1.08× slower than dense there (0.77× with its parts
/// aligned).
#[test]
fn auto_aligns_each_part_a_convolution_reads_apart() {
    use onnx_emp::prune::RoundTo;
    let x = [1, 16, 6, 6];
    // Part L: 30 strong channels of 48; part R: 44 of 48. EMP keeps about 60 of the 74 strong
    // ones, split between the parts about 24 | 36.
    let scale: Vec<f32> =
        (0..96).map(|c| if (c < 48 && c % 8 < 5) || (c >= 48 && c % 12 != 0) { 1.0 } else { 0.05 }).collect();
    let sizes = {
        let mut t = TensorProto::new();
        t.name = "sizes".into();
        t.data_type = 7;
        t.dims = vec![2];
        t.int64_data = vec![48, 48];
        t
    };
    let m = mk_model(
        vec![
            nd("Conv", "pw", &["x", "wp"], &["h"], vec![]),
            nd("Relu", "act", &["h"], &["a"], vec![]),
            nd("Split", "split", &["a", "sizes"], &["l", "r"], vec![attr_i("axis", 1)]),
            nd("Conv", "dw3", &["l", "w3"], &["lo"], vec![attr_i("group", 48), attr_ints("pads", &[1, 1, 1, 1])]),
            nd("Conv", "dw5", &["r", "w5"], &["ro"], vec![attr_i("group", 48), attr_ints("pads", &[2, 2, 2, 2])]),
            nd("Concat", "cat", &["lo", "ro"], &["c"], vec![attr_i("axis", 1)]),
            nd("Conv", "pwl", &["c", "wl"], &["y"], vec![]),
        ],
        vec![
            w("wp", &[96, 16, 1, 1], &scale, 1),
            w("w3", &[48, 1, 3, 3], &scale[..48], 2),
            w("w5", &[48, 1, 5, 5], &scale[48..], 3),
            w("wl", &[16, 96, 1, 1], &ones(16), 4),
            sizes,
        ],
        &x,
        &["y"],
    );
    let parts = |round_to| {
        let floor = Floor { stem: false, ..Floor::ON };
        let o = prove_x(&m, &x, &StructOptions { beta: 0.8, round_to, floor, ..Default::default() });
        let p = &o.result.pruned;
        let g = o.result.groups.iter().find(|g| g.id == "pw").unwrap().clone();
        ((weight(p, "w3").dims[0], weight(p, "w5").dims[0]), g)
    };
    let ((l, r), raw) = parts(RoundTo::Multiple(1));
    assert!(l % 16 != 0 && r % 16 != 0, "EMP's own parts are unaligned: {l} | {r} ({raw:?})");
    let ((l, r), g) = parts(RoundTo::Auto);
    assert!(l % 16 == 0 && r % 16 == 0, "{l} | {r}: {}", summary(std::slice::from_ref(&g)));
    assert_eq!(g.kept as i64, l + r);
    assert!(g.notes.iter().any(|n| n.contains("its 2 parts that convolutions read or write apart")), "{:?}", g.notes);
}
