//! Streaming per-weight EMP against the in-memory reference, thread-count independence, errors.

use super::*;
use proptest::prelude::*;

/// Global selection over plain score vectors (through the streaming code).
fn global_masks(scores: &[Vec<f64>], beta: f64, ratio: Option<f64>) -> (GlobalDecision, Vec<Vec<bool>>) {
    let mut m = model_of(
        scores.iter().map(|s| (s.iter().map(|&x| x as f32).collect(), vec![s.len()], dt::FLOAT, false)).collect(),
    );
    let opts = WeightOptions {
        beta,
        scope: Scope::Global,
        include: Include { small: true, ..Include::default() },
        scores: BTreeMap::new(),
        fixed_ratio: ratio,
    };
    let r = prune_weights(&mut m, &opts).unwrap();
    let g = m.graph.as_ref().unwrap();
    let masks =
        g.initializer.iter().map(|t| tensor::read_f32(t).unwrap().iter().map(|&x| x != 0.0).collect()).collect();
    (r.global.unwrap(), masks)
}

#[test]
fn global_ties_and_counts() {
    let s = vec![vec![1.0, 1.0], vec![1.0, 0.0]];
    let (d, m) = global_masks(&s, 1.0, None);
    assert_eq!(d.kept, 3);
    assert_eq!(m, vec![vec![true, true], vec![true, false]]);
    let (d, m) = global_masks(&s, 0.5, None);
    assert_eq!(d.kept, 1);
    assert_eq!(m, vec![vec![true, false], vec![false, false]]);
}

#[test]
fn unit_indices_cover_axis() {
    let sh = [2, 3, 2];
    let v: Vec<usize> = reference::unit_indices(&sh, 1, 1).collect();
    assert_eq!(v, vec![2, 3, 8, 9]);
}

/// (values, dims, dtype, typed storage instead of raw_data) per weight → a MatMul chain.
type Spec = (Vec<f32>, Vec<usize>, i32, bool);

fn model_of(ws: Vec<Spec>) -> ModelProto {
    use onnx_protobuf::ValueInfoProto;
    let mut g = GraphProto::new();
    let mut vi = ValueInfoProto::new();
    vi.name = "x".into();
    g.input.push(vi);
    for (i, (vals, dims, dtype, typed)) in ws.into_iter().enumerate() {
        let name = format!("w{i}");
        let mut t = tensor::new_f32(&name, &dims.iter().map(|&d| d as i64).collect::<Vec<_>>(), &vals);
        t.data_type = dtype;
        // Double tensors that start with −0.5 or 0.25 are scaled far out of f32's range, so that
        // the moments take `emp::moment_scale`'s divided path too.
        let k = match (dtype, vals.first()) {
            (dt::DOUBLE, Some(-0.5)) => 1e150,
            (dt::DOUBLE, Some(0.25)) => 1e-150,
            _ => 1.0,
        };
        let f64s: Vec<f64> = vals.iter().map(|&v| v as f64 * k).collect();
        t.raw_data.clear();
        t.float_data.clear();
        if !vals.is_empty() {
            // write_f64 keeps the encoding it finds: give it the one we want first
            match (dtype, typed) {
                (dt::FLOAT, true) => t.float_data = vec![0.0; vals.len()],
                (dt::DOUBLE, true) => t.double_data = vec![0.0; vals.len()],
                (dt::FLOAT16 | dt::BFLOAT16, true) => t.int32_data = vec![0; vals.len()],
                _ => t.raw_data = vec![0; vals.len() * tensor::elem_size(dtype).unwrap()],
            }
            tensor::write_f64(&mut t, &f64s).unwrap();
        }
        g.initializer.push(t);
        let mut n = NodeProto::new();
        n.op_type = if dims.len() == 4 { "Conv".into() } else { "MatMul".into() };
        n.name = format!("n{i}");
        n.input = vec!["x".into(), name];
        n.output = vec![format!("y{i}")];
        g.node.push(n);
    }
    let mut m = ModelProto::new();
    m.ir_version = 8;
    m.graph = Some(g).into();
    m
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        3 => Just(0.0f32),
        3 => prop::sample::select(vec![0.5f32, -0.5, 1.0, 0.25, -1.0]),
        6 => -2.0f32..2.0,
        1 => -1e-30f32..1e-30,
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    let dims = prop_oneof![
        (1usize..40).prop_map(|n| vec![n]),
        (1usize..7, 1usize..7).prop_map(|(a, b)| vec![a, b]),
        (1usize..4, 1usize..4, 1usize..5).prop_map(|(a, b, c)| vec![a, b, c]),
        (1usize..4, 1usize..3, 1usize..3, 1usize..3).prop_map(|(a, b, c, d)| vec![a, b, c, d]),
        Just(vec![0usize, 3]),
    ];
    let dtype = prop::sample::select(vec![dt::FLOAT, dt::FLOAT16, dt::BFLOAT16, dt::DOUBLE]);
    (dims, dtype, any::<bool>()).prop_flat_map(|(dims, dtype, typed)| {
        let n: usize = dims.iter().product();
        (prop::collection::vec(value(), n), Just(dims), Just(dtype), Just(typed))
    })
}

fn check_same(
    ws: Vec<Spec>,
    scope: Scope,
    beta: f64,
    ratio: Option<f64>,
    override_first: bool,
) -> std::result::Result<(), TestCaseError> {
    let mut a = model_of(ws);
    let mut scores = BTreeMap::new();
    if override_first {
        let t = &a.graph.as_ref().unwrap().initializer[0];
        let n = tensor::numel(t).unwrap();
        scores.insert("w0".to_string(), (0..n).map(|i| ((i * 7919) % 13) as f64 - 4.0).collect::<Vec<f64>>());
    }
    let mut b = a.clone();
    let opts = WeightOptions {
        beta,
        scope,
        include: Include { small: true, ..Include::default() },
        scores,
        fixed_ratio: ratio,
    };
    let ra = reference::prune_weights_reference(&mut a, &opts);
    let rb = prune_weights(&mut b, &opts);
    match (ra, rb) {
        (Ok(ra), Ok(rb)) => {
            prop_assert_eq!(serde_json::to_string(&ra).unwrap(), serde_json::to_string(&rb).unwrap());
            prop_assert!(a == b, "pruned tensors differ");
        }
        (Err(ea), Err(eb)) => prop_assert_eq!(format!("{ea:#}"), format!("{eb:#}")),
        (ra, rb) => prop_assert!(false, "reference {:?} vs streaming {:?}", ra.map(|_| ()), rb.map(|_| ())),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn streaming_matches_reference(
        ws in prop::collection::vec(spec(), 1..5),
        scope in prop::sample::select(vec![Scope::Unit, Scope::Layer, Scope::Global, Scope::Normalized]),
        beta in prop_oneof![Just(1.0f64), 0.2f64..2.5],
        ratio in prop::option::weighted(0.2, 0.0f64..0.95),
        over in prop::bool::weighted(0.2),
    ) {
        check_same(ws, scope, beta, ratio, over)?;
    }
}

#[test]
fn same_result_with_any_number_of_threads() {
    let mut st = 0x2545F4914F6CDD1Du64;
    let mut rnd = move |k: u64| {
        st ^= st << 13;
        st ^= st >> 7;
        st ^= st << 17;
        ((st >> 40) % k) as f32 / k as f32 - 0.5
    };
    let ws: Vec<Spec> = vec![
        ((0..300 * 200).map(|_| rnd(1000)).collect(), vec![300, 200], dt::FLOAT, false),
        ((0..64 * 3 * 3 * 3).map(|_| rnd(50)).collect(), vec![64, 3, 3, 3], dt::FLOAT16, false),
        ((0..BUFFER_GROUP_MAX + 77).map(|_| rnd(100_000)).collect(), vec![BUFFER_GROUP_MAX + 77], dt::FLOAT, true),
    ];
    for scope in [Scope::Global, Scope::Normalized, Scope::Unit, Scope::Layer] {
        let opts = WeightOptions {
            beta: 0.9,
            scope,
            include: Include { small: true, ..Include::default() },
            scores: BTreeMap::new(),
            fixed_ratio: None,
        };
        let runs: Vec<(String, ModelProto)> = [1, 2, 3]
            .into_iter()
            .map(|k| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(k).build().unwrap();
                let mut m = model_of(ws.clone());
                let r = pool.install(|| prune_weights(&mut m, &opts)).unwrap();
                (serde_json::to_string(&r).unwrap(), m)
            })
            .collect();
        assert!(runs.windows(2).all(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1), "{scope:?}");
    }
}

#[test]
fn large_groups_stream_like_the_reference() {
    // Whole-tensor groups above BUFFER_GROUP_MAX take the streaming path.
    let n = BUFFER_GROUP_MAX + 4099;
    let mut st = 0x9E3779B97F4A7C15u64;
    let mut vals: Vec<f32> = (0..n)
        .map(|_| {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            ((st >> 40) % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    vals[17] = f32::NAN;
    for scope in [Scope::Layer, Scope::Global, Scope::Unit] {
        // a NaN is an error naming the element, and leaves the model unchanged
        let ws = vec![(vals.clone(), vec![n], dt::FLOAT, false)];
        check_same(ws.clone(), scope, 1.0, None, false).unwrap();
        let mut m = model_of(ws);
        let before = m.clone();
        let opts = WeightOptions {
            beta: 1.0,
            scope,
            include: Include { small: true, ..Include::default() },
            scores: BTreeMap::new(),
            fixed_ratio: None,
        };
        assert!(prune_weights(&mut m, &opts).unwrap_err().to_string().contains("element 17 is NaN"));
        assert!(m == before);
    }
    vals[17] = 0.5;
    for scope in [Scope::Layer, Scope::Global, Scope::Normalized] {
        for (beta, ratio) in [(1.0, None), (0.3, None), (1.0, Some(0.5))] {
            let ws = vec![
                (vals.clone(), vec![n], dt::FLOAT, false),
                (vals[..5000].to_vec(), vec![50, 100], dt::FLOAT16, false),
            ];
            check_same(ws, scope, beta, ratio, false).unwrap();
        }
    }
}

/// `n` scores uniform in [-1, 1) from a xorshift generator seeded with `seed`.
fn uniform_scores(seed: u64, n: usize) -> Vec<f64> {
    let mut st = seed;
    (0..n)
        .map(|_| {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            ((st >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0
        })
        .collect()
}

/// The sample-guided threshold is the radix select's, exactly, for every rank tried; on data the
/// strided sample misrepresents (a matrix whose columns differ by orders of magnitude, many ties)
/// it either still matches or declines, and `threshold` then falls back to the radix select.
#[test]
fn window_threshold_is_the_radix_threshold() {
    let n = 300_000;
    let gaussianish = uniform_scores(0x2545F4914F6CDD1D, n);
    let columns: Vec<f64> = (0..n).map(|i| if i % 64 < 2 { 1e6 } else { 1e-3 } * ((i * 7919 % 1000) as f64)).collect();
    let ties: Vec<f64> = (0..n).map(|i| (i % 5) as f64).collect();
    let (mut declined, mut used) = (0, 0);
    for data in [&gaussianish, &columns, &ties] {
        let halves =
            [View { src: Src::F64s(&data[..n / 3]), scale: 1.0 }, View { src: Src::F64s(&data[n / 3..]), scale: 0.7 }];
        let items = chunks(&halves);
        let sc = scan(&halves, &items);
        for kept in [1, 2, 17, n / 10, n / 2, n - n / 3, n - 5, n - 1, n] {
            let want = radix_threshold(&halves, &items, kept);
            match window_threshold(&halves, &items, &sc.sample, kept) {
                Some(got) => {
                    used += 1;
                    assert_eq!((got.key, got.ties, got.eq), (want.key, want.ties, want.eq), "kept {kept}");
                }
                None => declined += 1,
            }
            let got = threshold(&halves, &items, &sc, kept);
            assert_eq!((got.key, got.ties, got.eq), (want.key, want.ties, want.eq), "kept {kept}");
        }
    }
    assert!(used > 10 && declined > 0, "window used {used}, declined {declined}");
}

/// The normalized scope's early window (sample and estimated cut from the mean pass, gathered by
/// the scan) gives the exact threshold: the radix select's, for cuts around the estimate and at
/// fixed ratios; where it misses, `prune_global` falls back (covered by
/// `window_threshold_is_the_radix_threshold`).
#[test]
fn early_window_is_the_radix_threshold() {
    let n = 300_000;
    let uniform = uniform_scores(0x9E3779B97F4A7C15, n);
    // A few large scores among tiny ones: N_eff ≈ 0.2 % of N, a cut the window can bracket at
    // this size (the window of a middling cut is too wide below ~10 M scores, see `window_bounds`).
    let sparse: Vec<f64> =
        (0..n).map(|i| if i % 499 == 3 { 1.0 + (i % 7) as f64 } else { 1e-6 * ((i * 7919) % 1000) as f64 }).collect();
    let (mut early, mut exact) = (0, 0);
    for data in [&uniform, &sparse] {
        let raw =
            [View { src: Src::F64s(&data[..n / 3]), scale: 1.0 }, View { src: Src::F64s(&data[n / 3..]), scale: 1.0 }];
        let items = chunks(&raw);
        let pre = presums(&raw, &items);
        let mut sums = [-0.0f64; 2];
        for (&(p, _, _), t) in items.iter().zip(&pre.totals) {
            sums[p] += t;
        }
        let scales = vec![norm_scale(sums[0], n / 3), norm_scale(sums[1], n - n / 3)];
        let views = [View { scale: scales[0], ..raw[0] }, View { scale: scales[1], ..raw[1] }];
        let mut norm = Norm { scales, sums: sums.to_vec(), pre };
        let samples = std::mem::take(&mut norm.pre.samples);
        for (beta, ratio) in [(1.0, None), (0.5, None), (0.9, None), (1.0, Some(0.9999)), (1.0, Some(1e-5))] {
            let opts = WeightOptions {
                beta,
                scope: Scope::Normalized,
                include: Include::default(),
                scores: BTreeMap::new(),
                fixed_ratio: ratio,
            };
            let Some((mut sample, win)) = early_window(&norm, samples.clone(), &items, n, &opts) else {
                continue;
            };
            // The sample is the scan's (reordered by the window's selection).
            let mut want = scan(&views, &items).sample;
            sample.sort_unstable();
            want.sort_unstable();
            assert_eq!(sample, want);
            let (sc, gathered) = scan_gather(&views, &items, win);
            let m = f64::from_bits(sc.max.iter().copied().max().unwrap());
            let ((s1, s2), _) = moments_global(&views, &items, &sc, m);
            let (_, kept) = global_kept(n, s1, s2, &opts);
            let want = radix_threshold(&views, &items, kept);
            if let Some(got) = window_select(&gathered, kept, win) {
                early += 1;
                assert_eq!((got.key, got.ties, got.eq), (want.key, want.ties, want.eq), "kept {kept}");
            }
            // Every kept count the window was sized for is inside it.
            for k in [kept.saturating_sub(2).max(1), kept + 2] {
                if let Some(got) = window_select(&gathered, k, win) {
                    exact += 1;
                    let want = radix_threshold(&views, &items, k);
                    assert_eq!((got.key, got.ties, got.eq), (want.key, want.ties, want.eq), "kept {k}");
                }
            }
        }
    }
    assert!(early >= 6 && exact >= 8, "early window used {early}, neighbours {exact}");
}

/// Sparse-like magnitudes (see `early_window_is_the_radix_threshold`), both signs: an [n/64, 64]
/// f32 tensor.
fn sparse_like(seed: usize, n: usize) -> Spec {
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let j = i * 2654435761 + seed;
            let x = if j % 499 == 3 { 1.0 + (j % 7) as f32 } else { 1e-6 * (j % 1000) as f32 };
            if j.is_multiple_of(2) {
                x
            } else {
                -x
            }
        })
        .collect();
    (v, vec![n / 64, 64], dt::FLOAT, false)
}

/// Scope global on magnitudes big enough for the sampled window: the window pass that marks as
/// it goes (see `raw`), against the reference (decisions, report, zeroed tensors).
#[test]
fn global_scope_with_the_marking_window_matches_the_reference() {
    let hits = raw::RAW_WINDOW_HITS[1].load(Ordering::Relaxed);
    for beta in [1.0, 0.7] {
        check_same(vec![sparse_like(3, 64 * 2000), sparse_like(5, 64 * 3000)], Scope::Global, beta, None, false)
            .unwrap();
    }
    // (Run alone, this test alone can raise the count.)
    assert!(raw::RAW_WINDOW_HITS[1].load(Ordering::Relaxed) >= hits + 2, "the marking window was not used");
}

/// Normalized scope on tensors big enough for the sampled window, against the reference
/// (decisions, report, zeroed tensors): magnitudes take the raw-space passes (`raw`), a score
/// override the scaled ones with the early window.
#[test]
fn normalized_scope_with_the_sampled_window_matches_the_reference() {
    let big = sparse_like;
    let (raw0, early0) = (raw::RAW_WINDOW_HITS[0].load(Ordering::Relaxed), EARLY_HITS.load(Ordering::Relaxed));
    for beta in [1.0, 0.7] {
        check_same(vec![big(1, 64 * 2000), big(7, 64 * 3000)], Scope::Normalized, beta, None, false).unwrap();
    }
    // (Run alone, this test alone can raise the count.)
    assert!(raw::RAW_WINDOW_HITS[0].load(Ordering::Relaxed) >= raw0 + 2, "the raw window was not used");
    for beta in [1.0, 0.7] {
        check_same(vec![big(1, 64 * 2000), big(7, 64 * 3000)], Scope::Normalized, beta, None, true).unwrap();
    }
    assert!(EARLY_HITS.load(Ordering::Relaxed) >= early0 + 2, "the early window was not used");
}

/// `raw_le` is the largest x with fl(x·c) ≤ t, and returns at once where many x share one
/// product: a weight of 1e20 among small ones (normalized scope, keep-all β) made it step ulp by
/// ulp through the subnormals, and a run hung.
#[test]
fn raw_le_is_exact_and_quick_where_products_round_coarsely() {
    let check = |t: f64, c: f64| {
        let x = raw::raw_le(t, c);
        assert!(x * c <= t, "t {t:e} c {c:e} x {x:e}");
        assert!(x == f64::MAX || x.next_up() * c > t, "t {t:e} c {c:e} x {x:e}");
    };
    for &(t, c) in &[(1e-310, 1e-20), (5e-324, 1e-17), (1e-300, 3.7e-37), (0.5, 0.3), (1e-20, 1e-300), (1e300, 1e-10)] {
        check(t, c);
    }
}

#[test]
fn a_huge_weight_among_small_ones_prunes_at_a_keep_all_beta() {
    let mut v: Vec<f32> = (0..64).map(|i| 0.01 + i as f32 * 1e-3).collect();
    v[5] = 1e20;
    let mut m = model_of(vec![
        (v, vec![8, 8], dt::FLOAT, false),
        ((0..64).map(|i| 0.1 + i as f32 * 1e-3).collect(), vec![8, 8], dt::FLOAT, false),
    ]);
    let opts = WeightOptions {
        beta: 1e12,
        scope: Scope::Normalized,
        include: Include { small: true, ..Include::default() },
        scores: BTreeMap::new(),
        fixed_ratio: None,
    };
    let r = prune_weights(&mut m, &opts).unwrap();
    assert_eq!(r.global.unwrap().kept, 128);
}

/// A weight read through Identity, a float Cast or a Transpose (torch's shared parameters,
/// mixed-precision storage, a converter's layout) is the stored tensor: it is pruned, its units
/// mapped back through the permutation, so that it gets exactly the zeros its plain twin gets
/// (it was "no prunable weights found", exit 1).
#[test]
fn weights_behind_identity_cast_and_transpose_are_pruned_as_stored() {
    let (k, n) = (12usize, 5usize);
    // w [k, n] with output units along axis 1 (MatMul), norms spread so EMP cuts some.
    let w: Vec<f32> = (0..k * n).map(|i| ((i * 7919) % 23) as f32 / 23.0 - 0.4 + (i % n) as f32 * 0.3).collect();
    let opts = WeightOptions {
        beta: 1.0,
        scope: Scope::Layer,
        include: Include { small: true, ..Include::default() },
        scores: BTreeMap::new(),
        fixed_ratio: None,
    };
    let mut plain = model_of(vec![(w.clone(), vec![k, n], dt::FLOAT, false)]);
    prune_weights(&mut plain, &opts).unwrap();
    let expect = tensor::read_f32(&plain.graph.as_ref().unwrap().initializer[0]).unwrap();
    assert!(expect.contains(&0.0) && expect.iter().any(|&v| v != 0.0));
    let wt: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect(); // [n, k]
    for via in ["Identity", "Cast", "Transpose"] {
        let stored = if via == "Transpose" { (wt.clone(), vec![n, k]) } else { (w.clone(), vec![k, n]) };
        let mut m = model_of(vec![(stored.0, stored.1, dt::FLOAT, false)]);
        let g = m.graph.as_mut().unwrap();
        let mut v = NodeProto::new();
        v.op_type = via.into();
        v.name = "view".into();
        v.input = vec!["w0".into()];
        v.output = vec!["w0_view".into()];
        if via == "Cast" {
            crate::model::graph::set_attr_i(&mut v, "to", dt::FLOAT as i64);
        }
        g.node.insert(0, v);
        g.node[1].input[1] = "w0_view".into();
        let r = prune_weights(&mut m, &opts).unwrap();
        assert_eq!(r.tensors.len(), 1, "{via}");
        let got = tensor::read_f32(&m.graph.as_ref().unwrap().initializer[0]).unwrap();
        let got: Vec<f32> =
            if via == "Transpose" { (0..k * n).map(|i| got[(i % n) * k + i / n]).collect() } else { got };
        assert_eq!(got, expect, "{via}");
    }
}
