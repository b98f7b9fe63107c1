//! The raw passes' kernels for f32 weights with AVX2: compares on the stored f32 values, eight
//! per instruction, without decoding them to f64 first (issue 13).
//!
//! Contract: for an f32 view (`Src::F32`, scale 1), [`window_mark_f32`] returns exactly what
//! `window_mark_item` returns and [`mark_item_f32`] exactly what `raw_mark_item` returns (the
//! same counts, the same gathered keys and positions in the same order, the same keep bits,
//! bit-identical sums).
//! Why this holds:
//! - Every f32 is exactly an f64, so |x| > b (b an f64 bound) ⟺ |x| > [`f32_floor`](b), the
//!   largest f32 ≤ b, and |x| ≥ b ⟺ |x| ≥ [`f32_ceil`](b), the smallest f32 ≥ b: the f32
//!   compares decide exactly what the f64 compares decided. NaN compares false in both (and the
//!   mean pass has already rejected NaN/Inf).
//! - The kept mass is summed in the blocked sums' lanes (element i of the item in lane i mod 8,
//!   in element order), each element converted to f64 exactly and a dropped one added as −0.0,
//!   as `select_bits` does: the same additions in the same order.
//!
//! Used when the CPU has AVX2 (the caller checks); the portable passes are the reference, and the
//! tests compare both on random data.

use super::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The largest f32 ≤ `b` (b ≥ 0 or +∞; f32::MAX for a finite b above it).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn f32_floor(b: f64) -> f32 {
    let c = b as f32;
    if f64::from(c) > b {
        c.next_down()
    } else {
        c
    }
}

/// The smallest f32 ≥ `b` (b ≥ 0; +∞ above f32::MAX).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn f32_ceil(b: f64) -> f32 {
    let c = b as f32;
    if f64::from(c) < b {
        c.next_up()
    } else {
        c
    }
}

/// The f32 bytes of `v` when the kernels apply: an f32 view as stored (scale 1) on a CPU with
/// AVX2.
fn kernel_bytes<'a>(v: &View<'a>) -> Option<&'a [u8]> {
    #[cfg(target_arch = "x86_64")]
    if let Src::F32(b) = v.src {
        if v.scale == 1.0 && std::arch::is_x86_feature_detected!("avx2") {
            return Some(b);
        }
    }
    let _ = v;
    None
}

/// `window_mark_item::<COUNT>(v, a, b, w)` by [`window_mark_f32`] when it applies (see
/// [`kernel_bytes`]).
pub(super) fn window_mark_fast<const COUNT: bool>(
    v: View,
    a: usize,
    b: usize,
    w: Window,
    hint: usize,
) -> Option<Speculated> {
    let bytes = kernel_bytes(&v)?;
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `kernel_bytes` checked that the CPU has AVX2.
        Some(unsafe { window_mark_f32::<COUNT>(bytes, a, b, w, hint) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (bytes, a, b, w, hint);
        None
    }
}

/// `raw_mark_item::<COUNT>(v, ...)` by [`mark_item_f32`] when it applies (see [`kernel_bytes`]).
pub(super) fn mark_item_fast<const COUNT: bool>(
    v: View,
    lo: usize,
    hi: usize,
    bounds: (f64, f64),
    t: usize,
    words: &mut [u64],
) -> Option<(f64, (u64, u64))> {
    let bytes = kernel_bytes(&v)?;
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `kernel_bytes` checked that the CPU has AVX2.
        Some(unsafe { mark_item_f32::<COUNT>(bytes, lo, hi, bounds, t, words) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (bytes, lo, hi, bounds, t, words);
        None
    }
}

/// The f32 values of little-endian f32 bytes `lo..hi` (element indices).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn floats(b: &[u8], lo: usize, hi: usize) -> impl Iterator<Item = f32> + '_ {
    b[lo * 4..hi * 4].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// |f32| at element `j` of little-endian f32 bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn float_at(b: &[u8], j: usize) -> f32 {
    f32::from_le_bytes([b[j * 4], b[j * 4 + 1], b[j * 4 + 2], b[j * 4 + 3]]).abs()
}

/// Eight f32 loaded from `b` at element `i` (little-endian bytes, any alignment).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load8(b: &[u8], i: usize) -> __m256 {
    debug_assert!((i + 8) * 4 <= b.len());
    _mm256_loadu_ps(b.as_ptr().add(i * 4).cast())
}

/// |x| of eight f32.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn abs8(x: __m256) -> __m256 {
    _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff)))
}

/// `window_mark_item` over elements `a..b` of f32 bytes `bytes`, with the window `w` in raw
/// values.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn window_mark_f32<const COUNT: bool>(
    bytes: &[u8],
    a: usize,
    b: usize,
    w: Window,
    hint: usize,
) -> Speculated {
    let hi64 = if w.hi == u64::MAX { f64::INFINITY } else { f64::from_bits(w.hi) };
    let lo64 = f64::from_bits(w.lo);
    let (lo, hi) = (f32_ceil(lo64), f32_floor(hi64));
    let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let zero = _mm256_setzero_ps();
    let mut sp = Speculated::new(b - a, hint);
    // Whole words in registers, the last partial word element by element.
    let body_end = a + (b - a) / 64 * 64;
    // The lanes of the kept mass (0..4, 4..8), in registers until the body is done.
    let (mut acc0, mut acc1) = (_mm256_set1_pd(-0.0), _mm256_set1_pd(-0.0));
    let mut i0 = a;
    let mut stopped = false;
    // Blocks of BLOCK elements from `a`, as `window_mark_item` decodes them (it stops between
    // blocks once more than `cap` keys are gathered).
    while i0 < b {
        if sp.g.1.len() > w.cap {
            stopped = true;
            break;
        }
        let end = (i0 + BLOCK).min(body_end);
        let mut i = i0;
        while i + 64 <= end {
            let (mut keep, mut m, mut nz) = (0u64, 0u64, 0u64);
            for q in 0..8 {
                let x = abs8(load8(bytes, i + 8 * q));
                let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(x, vhi);
                let inw = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(x, vlo), _mm256_cmp_ps::<_CMP_LE_OQ>(x, vhi));
                keep |= (_mm256_movemask_ps(gt) as u32 as u64) << (8 * q);
                m |= (_mm256_movemask_ps(inw) as u32 as u64) << (8 * q);
                if COUNT {
                    nz |= (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NEQ_UQ>(x, zero)) as u32 as u64) << (8 * q);
                }
                // Kept |w| as f64, +0.0 for the others.
                let k = _mm256_and_ps(x, gt);
                acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(k)));
                acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(k)));
            }
            sp.words[(i - a) / 64] = keep;
            sp.g.0 += keep.count_ones() as usize;
            if COUNT {
                sp.nonzero.0 += u64::from(nz.count_ones());
                sp.nonzero.1 += u64::from((nz & keep).count_ones());
            }
            while m != 0 {
                let j = i + m.trailing_zeros() as usize;
                sp.pos.push((j - a) as u32);
                sp.g.1.push(key(f64::from(float_at(bytes, j))));
                m &= m - 1;
            }
            i += 64;
        }
        i0 = (i0 + BLOCK).min(b);
    }
    let mut y = [0f64; 8];
    _mm256_storeu_pd(y.as_mut_ptr(), acc0);
    _mm256_storeu_pd(y.as_mut_ptr().add(4), acc1);
    sp.mass.add8(&y);
    if !stopped {
        // The last partial word, element by element.
        for (j, x) in (body_end..b).zip(floats(bytes, body_end, b)) {
            let x = f64::from(x.abs());
            let k = x > hi64;
            if k {
                sp.words[(j - a) / 64] |= 1 << ((j - a) % 64);
                sp.g.0 += 1;
            }
            if x >= lo64 && x <= hi64 {
                sp.pos.push((j - a) as u32);
                sp.g.1.push(key(x));
            }
            if COUNT && x != 0.0 {
                sp.nonzero.0 += 1;
                sp.nonzero.1 += k as u64;
            }
            sp.mass.add(&[if k { x } else { 0.0 }]);
        }
    }
    sp
}

/// Eight keep flags (bits of `bits`, element 0 in bit 0) as two f64 masks of four lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn masks4x2(bits: u64) -> (__m256d, __m256d) {
    let sel = _mm256_set_epi64x(8, 4, 2, 1);
    let lo = _mm256_and_si256(_mm256_set1_epi64x((bits & 0xf) as i64), sel);
    let hi = _mm256_and_si256(_mm256_set1_epi64x(((bits >> 4) & 0xf) as i64), sel);
    (_mm256_castsi256_pd(_mm256_cmpeq_epi64(lo, sel)), _mm256_castsi256_pd(_mm256_cmpeq_epi64(hi, sel)))
}

/// `raw_mark_item` over elements `lo..hi` of f32 bytes `bytes`: keep bits into `words`,
/// (Σ kept |w| blocked, nonzero counts when `COUNT`).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn mark_item_f32<const COUNT: bool>(
    bytes: &[u8],
    lo: usize,
    hi: usize,
    (gt, ge): (f64, f64),
    mut t: usize,
    words: &mut [u64],
) -> (f64, (u64, u64)) {
    let (gt32, ge32) = (f32_floor(gt), f32_ceil(ge));
    let (vgt, vge) = (_mm256_set1_ps(gt32), _mm256_set1_ps(ge32));
    let zero = _mm256_setzero_ps();
    let neg0 = _mm256_set1_pd(-0.0);
    let all_ties = t == usize::MAX;
    let mut lanes = emp::Lanes::default();
    let mut nonzero = (0u64, 0u64);
    let mut i = lo;
    let mut wi = 0;
    while i + 64 <= hi {
        let (mut keep, mut tie, mut nz) = (0u64, 0u64, 0u64);
        for q in 0..8 {
            let x = abs8(load8(bytes, i + 8 * q));
            let k = if all_ties {
                _mm256_cmp_ps::<_CMP_GE_OQ>(x, vge)
            } else {
                let eq = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(x, vge), _mm256_cmp_ps::<_CMP_LE_OQ>(x, vgt));
                tie |= (_mm256_movemask_ps(eq) as u32 as u64) << (8 * q);
                _mm256_cmp_ps::<_CMP_GT_OQ>(x, vgt)
            };
            keep |= (_mm256_movemask_ps(k) as u32 as u64) << (8 * q);
            if COUNT {
                nz |= (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NEQ_UQ>(x, zero)) as u32 as u64) << (8 * q);
            }
        }
        // Ties at the threshold: the first ones in order are kept.
        while tie != 0 && t > 0 {
            keep |= tie & tie.wrapping_neg();
            tie &= tie - 1;
            t -= 1;
        }
        words[wi] = keep;
        if COUNT {
            nonzero.0 += u64::from(nz.count_ones());
            nonzero.1 += u64::from((nz & keep).count_ones());
        }
        for q in 0..8 {
            let x = abs8(load8(bytes, i + 8 * q));
            let (m0, m1) = masks4x2(keep >> (8 * q));
            let a = _mm256_blendv_pd(neg0, _mm256_cvtps_pd(_mm256_castps256_ps128(x)), m0);
            let b = _mm256_blendv_pd(neg0, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x)), m1);
            let mut y = [0f64; 8];
            _mm256_storeu_pd(y.as_mut_ptr(), a);
            _mm256_storeu_pd(y.as_mut_ptr().add(4), b);
            lanes.add8(&y);
        }
        i += 64;
        wi += 1;
    }
    // The last partial word, element by element, as `raw_mark_item` decides it.
    for (j, x) in (i..hi).zip(floats(bytes, i, hi)) {
        let x = f64::from(x.abs());
        let mut k = if all_ties { x >= ge } else { x > gt };
        if !all_ties && t > 0 && x >= ge && x <= gt {
            k = true;
            t -= 1;
        }
        if k {
            words[wi] |= 1 << (j - i);
        }
        if COUNT && x != 0.0 {
            nonzero.0 += 1;
            nonzero.1 += k as u64;
        }
        lanes.add(&[select(k, x)]);
    }
    (lanes.total(), nonzero)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Weights with many exact ties (a few repeated values), zeros, subnormals and spread values.
    fn weights() -> impl Strategy<Value = Vec<f32>> {
        let v = prop_oneof![
            2 => Just(0.0f32),
            1 => Just(-0.0f32),
            4 => prop::sample::select(vec![0.5f32, -0.5, 1.0, 0.25, -1.0, 0.75]),
            4 => -2.0f32..2.0,
            1 => -1e-40f32..1e-40,
        ];
        prop::collection::vec(v, 0..2600)
    }

    fn bytes_of(w: &[f32]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// A bound near the data: one of its |values|, or that value's f64 neighbours (bounds
    /// between two f32), or 0 / +∞.
    fn bound(w: &[f32], pick: usize, nudge: u8) -> f64 {
        let base = if w.is_empty() { 0.5 } else { f64::from(w[pick % w.len()].abs()) };
        match nudge % 5 {
            0 => base,
            1 => base.next_up(),
            2 => base.next_down().max(0.0),
            3 => 0.0,
            _ => f64::INFINITY,
        }
    }

    #[test]
    fn f32_bounds_decide_as_f64_bounds() {
        for b in [0.0, 1e-50, 1e-45, 0.1, 0.5, 1.0 / 3.0, 3.4e38, 3.5e38, 1e300, f64::INFINITY] {
            let (fl, ce) = (f32_floor(b), f32_ceil(b));
            assert!(f64::from(fl) <= b && f64::from(ce) >= b, "{b}");
            assert!(fl == f32::INFINITY || f64::from(fl.next_up()) > b, "{b}");
            assert!(ce == 0.0 || f64::from(ce.next_down()) < b, "{b}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The window pass that marks as it goes, settled at a threshold inside its window, keeps
        /// what the marking pass keeps (bits and nonzero counts; the kept mass within rounding).
        #[test]
        fn settled_window_marks_as_the_marking_pass(
            w in weights(),
            (pick_t, pick_lo, nudge_lo, nudge_hi) in (any::<usize>(), any::<usize>(), any::<u8>(), any::<u8>()),
            budget in prop_oneof![Just(usize::MAX), 0usize..100],
            start in 0usize..3,
        ) {
            let bytes = bytes_of(&w);
            let n = w.len();
            let lo = (start * 64).min(n);
            let v = View { src: Src::F32(&bytes), scale: 1.0 };
            // A threshold at a value of the data (ties) and a window around it.
            let t = bound(&w, pick_t, 0);
            let wl = bound(&w, pick_lo, nudge_lo).min(t);
            let wh = match nudge_hi % 3 { 0 => t, 1 => t.next_up(), _ => f64::INFINITY };
            let hi_key = if wh == f64::INFINITY { u64::MAX } else { wh.to_bits() };
            let win = Window { lo: wl.to_bits(), hi: hi_key, cap: usize::MAX, share: 0.0 };
            for count in [false, true] {
                let mut words = new_mask(n - lo, false);
                let (sp, m) = if count {
                    (window_mark_item::<true>(v, lo, n, win, 0), raw_mark_item::<true>(v, lo, n, (t, t), budget, &mut words))
                } else {
                    (window_mark_item::<false>(v, lo, n, win, 0), raw_mark_item::<false>(v, lo, n, (t, t), budget, &mut words))
                };
                let settled = settle(sp, 1.0, (t.to_bits(), budget), 0.0, count);
                prop_assert_eq!(&settled.words, &words);
                prop_assert_eq!(settled.nonzero, m.1);
                prop_assert!((settled.kept_mass - m.0).abs() <= 1e-12 * m.0.abs(), "{} vs {}", settled.kept_mass, m.0);
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[test]
        fn kernels_match_the_portable_passes(
            w in weights(),
            (pick_lo, pick_hi, nudge_lo, nudge_hi) in (any::<usize>(), any::<usize>(), any::<u8>(), any::<u8>()),
            cap in prop_oneof![Just(usize::MAX), 0usize..200],
            t in prop_oneof![Just(usize::MAX), 0usize..100],
            start in 0usize..3,
        ) {
            if !std::arch::is_x86_feature_detected!("avx2") {
                eprintln!("no AVX2: the kernels are not used on this CPU");
                return Ok(());
            }
            let bytes = bytes_of(&w);
            let n = w.len();
            // Items start at a multiple of 64 in a tensor (work items are whole sum blocks).
            let lo = (start * 64).min(n);
            let v = View { src: Src::F32(&bytes), scale: 1.0 };
            let (a, b) = (bound(&w, pick_lo, nudge_lo), bound(&w, pick_hi, nudge_hi));
            let (blo, bhi) = if a <= b { (a, b) } else { (b, a) };
            let hi_key = if bhi == f64::INFINITY { u64::MAX } else { bhi.to_bits() };
            let win = Window { lo: blo.to_bits(), hi: hi_key, cap, share: 0.0 };
            for count in [false, true] {
                let (f, s) = if count {
                    (window_mark_fast::<true>(v, lo, n, win, 0).expect("AVX2 and f32"), window_mark_item::<true>(v, lo, n, win, 0))
                } else {
                    (window_mark_fast::<false>(v, lo, n, win, 0).expect("AVX2 and f32"), window_mark_item::<false>(v, lo, n, win, 0))
                };
                prop_assert_eq!((&f.g, &f.pos, &f.words, f.nonzero), (&s.g, &s.pos, &s.words, s.nonzero));
                prop_assert_eq!(f.mass.total().to_bits(), s.mass.total().to_bits());
            }
            // Marking: keep > gt, ties ge..=gt (the first t of them, or all).
            let (gt, ge) = (bhi.min(f64::MAX), blo);
            for count in [false, true] {
                let mut wf = new_mask(n - lo, false);
                let mut ws = new_mask(n - lo, false);
                let (f, s) = if count {
                    (mark_item_fast::<true>(v, lo, n, (gt, ge), t, &mut wf).unwrap(),
                     raw_mark_item::<true>(v, lo, n, (gt, ge), t, &mut ws))
                } else {
                    (mark_item_fast::<false>(v, lo, n, (gt, ge), t, &mut wf).unwrap(),
                     raw_mark_item::<false>(v, lo, n, (gt, ge), t, &mut ws))
                };
                prop_assert_eq!(&wf, &ws);
                prop_assert_eq!(f.0.to_bits(), s.0.to_bits());
                prop_assert_eq!(f.1, s.1);
            }
        }
    }
}
