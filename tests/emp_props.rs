//! Property tests of the EMP core (pure math).
use onnx_emp::emp;
use proptest::prelude::*;

fn scores() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(prop_oneof![Just(0.0), -1e3f64..1e3, -1e-6f64..1e-6], 1..200)
}

proptest! {
    #[test]
    fn n_eff_between_1_and_n(s in scores()) {
        let ne = emp::n_eff(&s).unwrap();
        prop_assert!(ne >= 1.0 - 1e-12 && ne <= s.len() as f64 + 1e-9, "N_eff {} for N {}", ne, s.len());
    }

    #[test]
    fn keep_count_in_range_and_topk_consistent(s in scores(), beta in 0.05f64..3.0) {
        let (d, keep) = emp::select(&s, beta).unwrap();
        prop_assert!(d.kept >= 1 && d.kept <= s.len());
        prop_assert_eq!(keep.len(), d.kept);
        prop_assert!(keep.windows(2).all(|w| w[0] < w[1]));
        // every kept score ≥ every pruned score
        let min_kept = keep.iter().map(|&i| s[i].abs()).fold(f64::INFINITY, f64::min);
        let max_pruned = (0..s.len()).filter(|i| !keep.contains(i)).map(|i| s[i].abs()).fold(0.0, f64::max);
        prop_assert!(min_kept >= max_pruned);
        prop_assert!(d.s_eff > 0.0 && d.s_eff <= 1.0 + 1e-12);
        if !d.all_zero {
            prop_assert_eq!(d.kept, emp::keep_count(s.len(), d.n_eff, beta));
        }
    }

    #[test]
    fn uniform_scores_keep_all(n in 1usize..500, v in 1e-6f64..1e6) {
        let s = vec![v; n];
        let (d, _) = emp::select(&s, 1.0).unwrap();
        prop_assert_eq!(d.kept, n);
        prop_assert!((d.n_eff - n as f64).abs() < 1e-6 * n as f64);
    }

    #[test]
    fn one_nonzero_keeps_one(n in 1usize..300, at in 0usize..300, v in 1e-6f64..1e6) {
        let at = at % n;
        let mut s = vec![0.0; n];
        s[at] = -v;
        let (d, keep) = emp::select(&s, 1.0).unwrap();
        prop_assert_eq!(d.kept, 1);
        prop_assert_eq!(keep, vec![at]);
        prop_assert!((d.n_eff - 1.0).abs() < 1e-12);
    }

    #[test]
    fn scale_invariant(s in scores(), k in prop_oneof![1e-30f64..1e-10, 1e-3f64..1e3, 1e10f64..1e30]) {
        let scaled: Vec<f64> = s.iter().map(|v| v * k).collect();
        let (a, ka) = emp::select(&s, 1.0).unwrap();
        let (b, kb) = emp::select(&scaled, 1.0).unwrap();
        prop_assert!((a.n_eff - b.n_eff).abs() <= 1e-9 * a.n_eff);
        // the kept count may only differ when β·N_eff sits on an integer boundary
        if (a.n_eff - a.n_eff.round()).abs() > 1e-6 {
            prop_assert_eq!(a.kept, b.kept);
            prop_assert_eq!(ka, kb);
        }
    }

    #[test]
    fn permutation_invariant_count(s in scores(), seed in 0u64..1000) {
        let mut p = s.clone();
        let n = p.len();
        let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        for i in (1..n).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            p.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let (a, _) = emp::select(&s, 1.0).unwrap();
        let (b, _) = emp::select(&p, 1.0).unwrap();
        prop_assert_eq!(a.kept, b.kept);
    }

    #[test]
    fn non_finite_rejected(s in scores(), at in 0usize..200, bad in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)]) {
        let mut s = s;
        let at = at % s.len();
        s[at] = bad;
        let is_err = matches!(emp::select(&s, 1.0), Err(emp::EmpError::NonFinite { index, .. }) if index == at);
        prop_assert!(is_err);
    }
}

/// Deterministic standard normals (Box–Muller over a xorshift generator).
fn gaussians(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed | 1;
    let mut u = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n).map(|_| (-2.0 * u().ln()).sqrt() * (2.0 * std::f64::consts::PI * u()).cos()).collect()
}

#[test]
fn gaussian_magnitudes_give_two_over_pi() {
    for seed in [1u64, 7, 42] {
        let s = gaussians(200_000, seed);
        let ratio = emp::n_eff(&s).unwrap() / s.len() as f64;
        assert!((ratio - 2.0 / std::f64::consts::PI).abs() < 0.005, "N_eff/N = {ratio}");
    }
}

#[test]
fn uniform_magnitudes_give_three_quarters() {
    let s: Vec<f64> = gaussians(200_000, 3).iter().map(|g| 0.5 * (1.0 + libm_erf(g / 2f64.sqrt()))).collect();
    let ratio = emp::n_eff(&s).unwrap() / s.len() as f64;
    assert!((ratio - 0.75).abs() < 0.005, "N_eff/N = {ratio}");
}

/// erf by Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7): enough to map normals to uniforms.
fn libm_erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592)
            * t
            * (-x * x).exp();
    if x >= 0.0 {
        y
    } else {
        -y
    }
}

#[test]
fn keep_count_rules() {
    assert_eq!(emp::keep_count(10, 3.7, 1.0), 3);
    assert_eq!(emp::keep_count(10, 3.7, 0.1), 1);
    assert_eq!(emp::keep_count(10, 9.9, 2.0), 10);
    assert_eq!(emp::keep_count(0, 0.0, 1.0), 0);
}
