//! Effective Model Pruning: the pure math (arXiv 2509.25606).
//!
//! For scores s over N units: ω = |s| / Σ|s|, N_eff = 1 / Σω² (inverse Simpson index),
//! keep ν = clamp(⌊β·N_eff⌋, 1, N) highest-scoring units. Everything is computed in f64.
//! No ONNX here: this module only knows about score vectors.

use std::cmp::Ordering;

/// Why a score vector could not be used.
#[derive(Debug, Clone, PartialEq)]
pub enum EmpError {
    /// A score was NaN or infinite; the index of the first one.
    NonFinite { index: usize, value: f64 },
    /// β must be a finite number > 0.
    BadBeta(f64),
}

impl std::fmt::Display for EmpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmpError::NonFinite { index, value } => {
                write!(f, "score {index} is {value} (NaN/Inf scores cannot be ranked)")
            }
            EmpError::BadBeta(b) => write!(f, "beta must be a finite number > 0, got {b}"),
        }
    }
}

impl std::error::Error for EmpError {}

/// The outcome of EMP on one group.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Number of units N.
    pub n: usize,
    /// Effective number N_eff (N for an all-zero group).
    pub n_eff: f64,
    /// Number kept ν.
    pub kept: usize,
    /// Retained mass: Σ of the ν largest ω (1.0 for an all-zero group).
    pub s_eff: f64,
    /// True when every score was zero: nothing to rank, the group is kept whole.
    pub all_zero: bool,
}

/// Elements per summation block. Every EMP sum (moments, retained mass, the per-weight report's
/// sums, in-memory or streamed) is the *blocked sum*: a
/// sequence (one tensor, one unit, one group) is cut into blocks of `SUM_BLOCK` elements from its
/// first element; inside a block, element i is added to lane i mod [`LANES`] in order, and the
/// lanes are combined as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)); the block totals are added in
/// order, starting from −0.0. A sum over several sequences (the global scopes) adds their block
/// totals in sequence order.
///
/// The order is fixed by the data alone, never by the number of threads, so results are
/// deterministic; it lets the adds vectorise and the blocks run in parallel. (The sequential
/// element-order sum it replaced differed in the last bits only.)
pub const SUM_BLOCK: usize = if cfg!(test) { 1 << 12 } else { 1 << 22 };
/// Interleaved accumulators of a block sum.
pub const LANES: usize = 8;

/// The lane accumulators of one block of a blocked sum, fed in element order.
#[derive(Clone, Copy, Debug)]
pub struct Lanes {
    acc: [f64; LANES],
    pos: usize,
}

impl Default for Lanes {
    fn default() -> Self {
        Lanes { acc: [-0.0; LANES], pos: 0 }
    }
}

impl Lanes {
    /// Add the next elements of the block.
    #[inline(always)]
    pub fn add(&mut self, xs: &[f64]) {
        let mut xs = xs;
        while !self.pos.is_multiple_of(LANES) && !xs.is_empty() {
            self.acc[self.pos % LANES] += xs[0];
            self.pos += 1;
            xs = &xs[1..];
        }
        let mut acc = self.acc;
        let body = xs.chunks_exact(LANES);
        let rem = body.remainder();
        for c in body {
            for l in 0..LANES {
                acc[l] += c[l];
            }
        }
        self.acc = acc;
        self.pos += xs.len() - rem.len();
        for &x in rem {
            self.acc[self.pos % LANES] += x;
            self.pos += 1;
        }
    }

    /// Add the next 8 elements when the block so far holds a multiple of 8: the same sums as
    /// [`Lanes::add`] of them, for loops that build their lanes in registers.
    #[inline(always)]
    pub fn add8(&mut self, x: &[f64; LANES]) {
        debug_assert!(self.pos.is_multiple_of(LANES));
        for (a, &x) in self.acc.iter_mut().zip(x) {
            *a += x;
        }
        self.pos += LANES;
    }

    /// Whether every lane's running sum is finite (a NaN or Inf added to it makes it not).
    #[inline(always)]
    pub fn partial_finite(&self) -> bool {
        self.acc.iter().all(|a| a.is_finite())
    }

    /// The block's total.
    #[inline]
    pub fn total(&self) -> f64 {
        let a = &self.acc;
        ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
    }
}

/// The blocked sum of `f(i)` for i in 0..n (see [`SUM_BLOCK`]); `f` sees every index in order.
pub fn blocked_sum(n: usize, f: impl FnMut(usize) -> f64) -> f64 {
    blocked_sum_from(-0.0, n, f)
}

/// [`blocked_sum`] continuing a sum over earlier sequences: their running total is `total`.
pub fn blocked_sum_from(mut total: f64, n: usize, mut f: impl FnMut(usize) -> f64) -> f64 {
    let mut buf = [0f64; 256];
    let mut lo = 0;
    while lo < n {
        let hi = (lo + SUM_BLOCK).min(n);
        let mut lanes = Lanes::default();
        let mut i = lo;
        while i < hi {
            let k = 256.min(hi - i);
            for (j, b) in buf[..k].iter_mut().enumerate() {
                *b = f(i + j);
            }
            lanes.add(&buf[..k]);
            i += k;
        }
        total += lanes.total();
        lo = hi;
    }
    total
}

/// Sum of |s| and sum of s² (blocked sums), rejecting NaN/Inf.
pub fn moments(scores: &[f64]) -> Result<(f64, f64), EmpError> {
    if let Some(index) = scores.iter().position(|v| !v.is_finite()) {
        return Err(EmpError::NonFinite { index, value: scores[index] });
    }
    let s1 = blocked_sum(scores.len(), |i| scores[i].abs());
    let s2 = blocked_sum(scores.len(), |i| scores[i].abs() * scores[i].abs());
    Ok((s1, s2))
}

/// N_eff = (Σ|s|)² / Σs², clamped to [1, N] against rounding. `None` for an all-zero group.
pub fn n_eff_from_moments(n: usize, s1: f64, s2: f64) -> Option<f64> {
    if n == 0 || s1 == 0.0 {
        return None;
    }
    let ne = if s2.is_finite() && s2 > 0.0 { s1 * s1 / s2 } else { return None };
    Some(ne.clamp(1.0, n as f64))
}

/// N_eff of a score vector (N for an all-zero group).
pub fn n_eff(scores: &[f64]) -> Result<f64, EmpError> {
    let (s1, s2) = moments_scaled(scores)?;
    Ok(n_eff_from_moments(scores.len(), s1, s2).unwrap_or(scores.len() as f64))
}

/// The divisor of the scores in [`moments_scaled`] given their max |s| = `m`: 1 (the plain sums)
/// while squares can neither overflow nor lose the largest terms to underflow, else `m`. N_eff
/// is scale-invariant; one pass can compute the plain sums alongside the max.
pub fn moment_scale(m: f64) -> f64 {
    if (1e-100..=1e100).contains(&m) {
        1.0
    } else {
        m
    }
}

/// Σ a and Σ a² of a = |s| / d with d = [`moment_scale`] of the max |s| (blocked sums), so huge
/// or tiny scores neither overflow nor underflow s².
pub fn moments_scaled(scores: &[f64]) -> Result<(f64, f64), EmpError> {
    let mut m = 0.0f64;
    for (index, &v) in scores.iter().enumerate() {
        if !v.is_finite() {
            return Err(EmpError::NonFinite { index, value: v });
        }
        m = m.max(v.abs());
    }
    if m == 0.0 {
        return Ok((0.0, 0.0));
    }
    let d = moment_scale(m);
    let s1 = blocked_sum(scores.len(), |i| scores[i].abs() / d);
    let s2 = blocked_sum(scores.len(), |i| {
        let a = scores[i].abs() / d;
        a * a
    });
    Ok((s1, s2))
}

/// Σ |s_i| / d over the kept indices (blocked sum over all indices, −0.0 for the others).
fn retained(scores: &[f64], keep: &[usize], d: f64) -> f64 {
    let mut mask = vec![false; scores.len()];
    for &i in keep {
        mask[i] = true;
    }
    blocked_sum(scores.len(), |i| if mask[i] { scores[i].abs() / d } else { -0.0 })
}

/// Keep count ν = clamp(⌊β·N_eff⌋, 1, N). For N = 0 returns 0.
pub fn keep_count(n: usize, n_eff: f64, beta: f64) -> usize {
    if n == 0 {
        return 0;
    }
    // The tolerance absorbs f64 rounding (uniform scores must give exactly N, not N − 1).
    let v = (beta * n_eff * (1.0 + 1e-12)).floor();
    if !v.is_finite() || v < 1.0 {
        1
    } else if v >= n as f64 {
        n
    } else {
        v as usize
    }
}

pub fn check_beta(beta: f64) -> Result<(), EmpError> {
    if beta.is_finite() && beta > 0.0 {
        Ok(())
    } else {
        Err(EmpError::BadBeta(beta))
    }
}

/// Ordering used everywhere: higher |score| first, ties broken by lower index.
fn rank_cmp(scores: &[f64], a: usize, b: usize) -> Ordering {
    scores[b].abs().partial_cmp(&scores[a].abs()).unwrap_or(Ordering::Equal).then(a.cmp(&b))
}

/// Indices of the `k` highest-|score| units (ties: lower index wins), sorted ascending.
/// Uses selection, O(N) on average.
pub fn top_k(scores: &[f64], k: usize) -> Vec<usize> {
    let n = scores.len();
    let k = k.min(n);
    let mut idx: Vec<usize> = (0..n).collect();
    if k < n && k > 0 {
        idx.select_nth_unstable_by(k - 1, |&a, &b| rank_cmp(scores, a, b));
    }
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

/// Full EMP on one group: decision plus the sorted kept indices.
pub fn select(scores: &[f64], beta: f64) -> Result<(Decision, Vec<usize>), EmpError> {
    check_beta(beta)?;
    let n = scores.len();
    let (s1, s2) = moments_scaled(scores)?;
    match n_eff_from_moments(n, s1, s2) {
        None => Ok((Decision { n, n_eff: n as f64, kept: n, s_eff: 1.0, all_zero: true }, (0..n).collect())),
        Some(ne) => {
            let kept = keep_count(n, ne, beta);
            let keep = top_k(scores, kept);
            let m = scores.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let s_eff = (retained(scores, &keep, moment_scale(m)) / s1).min(1.0);
            Ok((Decision { n, n_eff: ne, kept, s_eff, all_zero: false }, keep))
        }
    }
}

/// Baseline for comparisons, not EMP: prune a fixed fraction `ratio` of the units
/// (kept = N − round(ratio·N), clamped to [1, N]), highest |score| kept.
pub fn select_ratio(scores: &[f64], ratio: f64) -> Result<(Decision, Vec<usize>), EmpError> {
    if !(ratio.is_finite() && (0.0..1.0).contains(&ratio)) {
        return Err(EmpError::BadBeta(ratio));
    }
    let n = scores.len();
    let (s1, s2) = moments_scaled(scores)?;
    let ne = n_eff_from_moments(n, s1, s2).unwrap_or(n as f64);
    let kept = (n - ((ratio * n as f64).round() as usize).min(n)).max(1.min(n));
    let keep = top_k(scores, kept);
    let m = scores.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let s_eff = if s1 > 0.0 { (retained(scores, &keep, moment_scale(m)) / s1).min(1.0) } else { 1.0 };
    Ok((Decision { n, n_eff: ne, kept, s_eff, all_zero: s1 == 0.0 }, keep))
}

/// Keep count rounded up to a multiple of `m`, never above `n` (for `--round-to`).
pub fn round_up(kept: usize, n: usize, m: usize) -> usize {
    if m <= 1 || kept == 0 {
        return kept.min(n);
    }
    (kept.div_ceil(m) * m).min(n)
}

/// Keep count rounded to the nearest multiple of `m` (ties up), at least `m`, never above `n`
/// (`--round-to auto` on wide layers). When `m` divides `n` the result is within `m / 2` of
/// `kept`.
pub fn round_nearest(kept: usize, n: usize, m: usize) -> usize {
    if m <= 1 || kept == 0 {
        return kept.min(n);
    }
    ((kept + m / 2) / m * m).max(m).min(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_keeps_all() {
        let (d, k) = select(&[2.0; 10], 1.0).unwrap();
        assert_eq!(d.kept, 10);
        assert!((d.n_eff - 10.0).abs() < 1e-9);
        assert_eq!(k, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn single_nonzero_keeps_one() {
        let (d, k) = select(&[0.0, 0.0, -3.0, 0.0], 1.0).unwrap();
        assert_eq!(d.kept, 1);
        assert_eq!(k, vec![2]);
        assert!((d.s_eff - 1.0).abs() < 1e-12);
    }

    #[test]
    fn all_zero_kept_whole() {
        let (d, k) = select(&[0.0; 5], 1.0).unwrap();
        assert!(d.all_zero);
        assert_eq!(d.kept, 5);
        assert_eq!(k.len(), 5);
    }

    #[test]
    fn nan_rejected() {
        assert!(matches!(select(&[1.0, f64::NAN], 1.0), Err(EmpError::NonFinite { index: 1, .. })));
        assert!(select(&[1.0, f64::INFINITY], 1.0).is_err());
        assert!(select(&[1.0], 0.0).is_err());
    }

    #[test]
    fn ties_lower_index_wins() {
        // N_eff of (1,1,1,0) = 3 → keep 3, all ones
        let (_, k) = select(&[1.0, 1.0, 1.0, 0.0], 1.0).unwrap();
        assert_eq!(k, vec![0, 1, 2]);
        // β = 0.5: N_eff 3 → keep 1: lowest index among ties
        let (_, k) = select(&[1.0, 1.0, 1.0, 0.0], 0.5).unwrap();
        assert_eq!(k, vec![0]);
    }

    #[test]
    fn paper_counterexample_to_bound() {
        // emp.md: N=3, ω=(0.515,0.485,0): N_eff≈1.9999, ν=1, s_eff=0.515
        let (d, k) = select(&[0.515, 0.485, 0.0], 1.0).unwrap();
        assert_eq!(d.kept, 1);
        assert_eq!(k, vec![0]);
        assert!((d.s_eff - 0.515).abs() < 1e-12);
    }

    #[test]
    fn round_up_rules() {
        assert_eq!(round_up(5, 64, 8), 8);
        assert_eq!(round_up(60, 62, 8), 62);
        assert_eq!(round_up(16, 64, 8), 16);
        assert_eq!(round_up(3, 64, 1), 3);
        assert_eq!([101, 104, 103, 5, 0, 250, 3].map(|k| round_nearest(k, 256, 16)), [96, 112, 96, 16, 0, 256, 16]);
        assert_eq!(round_nearest(7, 64, 1), 7);
    }

    proptest::proptest! {
        /// Rounding to the nearest multiple of a step that divides the width lands on a multiple,
        /// within half a step of the count, never above the width and never at zero.
        #[test]
        fn round_nearest_stays_within_half_a_step(shift in 0u32..6, blocks in 1usize..40, frac in 0.0f64..1.0) {
            let m = 1usize << shift;
            let n = m * blocks;
            let kept = ((frac * n as f64) as usize).clamp(1, n);
            let r = round_nearest(kept, n, m);
            proptest::prop_assert!(r.is_multiple_of(m) && r >= m && r <= n);
            proptest::prop_assert!(r.abs_diff(kept) <= m / 2 || (kept < m / 2 && r == m));
            proptest::prop_assert!(r <= round_up(kept, n, m) && round_up(kept, n, m) - r <= m);
        }

        /// A block's total does not depend on how its elements are fed to `Lanes` (the
        /// streaming passes feed decode buffers of any length), and it is the plain sum up to
        /// rounding.
        #[test]
        fn lanes_ignore_how_a_block_is_fed(
            xs in proptest::collection::vec(-1e6f64..1e6, 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..6),
        ) {
            let mut whole = Lanes::default();
            whole.add(&xs);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(xs.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Lanes::default();
            let mut lo = 0;
            for c in cuts.into_iter().chain([xs.len()]) {
                pieces.add(&xs[lo..c]);
                lo = c;
            }
            proptest::prop_assert_eq!(whole.total().to_bits(), pieces.total().to_bits());
            let plain: f64 = xs.iter().sum();
            let scale: f64 = xs.iter().map(|x| x.abs()).sum::<f64>().max(1.0);
            proptest::prop_assert!((whole.total() - plain).abs() <= 1e-12 * scale);
            // blocked_sum over one block is that block's total.
            if xs.len() <= SUM_BLOCK {
                proptest::prop_assert_eq!(blocked_sum(xs.len(), |i| xs[i]).to_bits(), whole.total().to_bits());
            }
        }

        /// Several blocks: the block totals are added in order, continuing across sequences.
        #[test]
        fn blocked_sum_adds_block_totals_in_order(n in 0usize..(3 * SUM_BLOCK), k in 0usize..(2 * SUM_BLOCK)) {
            let f = |i: usize| ((i * 2654435761) % 1000) as f64 / 7.0;
            let mut expect = -0.0f64;
            let mut lo = 0;
            while lo < n {
                let hi = (lo + SUM_BLOCK).min(n);
                let mut l = Lanes::default();
                l.add(&(lo..hi).map(f).collect::<Vec<_>>());
                expect += l.total();
                lo = hi;
            }
            proptest::prop_assert_eq!(blocked_sum(n, f).to_bits(), expect.to_bits());
            let a = blocked_sum(n, f);
            let chained = blocked_sum_from(a, k, |i| f(i + 7));
            let mut again = a;
            let mut lo = 0;
            while lo < k {
                let hi = (lo + SUM_BLOCK).min(k);
                let mut l = Lanes::default();
                l.add(&(lo..hi).map(|i| f(i + 7)).collect::<Vec<_>>());
                again += l.total();
                lo = hi;
            }
            proptest::prop_assert_eq!(chained.to_bits(), again.to_bits());
        }
    }

    #[test]
    fn tiny_and_huge_scores_keep_their_n_eff() {
        let base = [3.0, 1.0, 0.5, 0.25, 2.0];
        let ne = n_eff(&base).unwrap();
        for k in [1e-200, 1e-120, 1e-90, 1e90, 1e120, 1e200] {
            let s: Vec<f64> = base.iter().map(|x| x * k).collect();
            assert!((n_eff(&s).unwrap() - ne).abs() < 1e-12 * ne, "scale {k}");
        }
    }

    #[test]
    fn huge_scores_do_not_overflow() {
        let (d, _) = select(&[1e300, 1e300], 1.0).unwrap();
        assert_eq!(d.kept, 2);
    }
}
