//! Score views: one candidate's scores decoded block by block from its bytes (f32/f16/bf16/f64,
//! raw or typed) or from a score override, times an optional scale; keep-bit masks.

use super::*;

// ---------------------------------------------------------------------------------------------
// Streaming implementation.
//
// Nothing holds all scores at once and no tensor is converted to f64 as a whole: every pass
// decodes blocks of `BLOCK` scores from the weight bytes (f32, f16, bf16, f64, raw or typed) or
// from a score override into a small f64 buffer. Every pass runs in parallel over work items of
// `CHUNK` elements. Sums are `emp`'s blocked sums, whose blocks are exactly these items: each item
// sums its elements in 8 lanes and the item totals are added in item order, so every reported
// number is bit-identical to the all-in-memory reference and independent of the number of
// threads. Keys: the bit pattern of |s| as f64 (non-negative IEEE floats order like their bits).
// ---------------------------------------------------------------------------------------------

/// Scores decoded per block.
pub(super) const BLOCK: usize = 1024;
/// Work item of the parallel passes, in elements: one block of the blocked sums (small in tests,
/// to exercise the merging).
pub(super) const CHUNK: usize = emp::SUM_BLOCK;
/// Level-1 radix digit: bits 47..62 of a key (bit 63, the sign, is 0).
pub(super) const TOP_SHIFT: u32 = 47;
/// Later radix digits have at most this many bits: a 2^16-bucket histogram (512 KB per worker)
/// stays in L2 and resolves the 47 bits below the first digit in the same three passes as 2^20
/// buckets did (16 + 16 + 15 vs 20 + 20 + 7), without the 8 MB per worker (issue 13: peak RSS
/// 1.32× → 1.10× the model bytes on the 100 MB benchmark).
pub(super) const MAX_DIGIT: u32 = 16;
/// A group (whole tensor) up to this size is selected in memory; a larger one by streaming.
pub(super) const BUFFER_GROUP_MAX: usize = 1 << 20;
/// Elements gathered per block of units.
pub(super) const UNIT_BLOCK: usize = 1 << 18;

/// Where the scores of one candidate come from, validated against its dims.
#[derive(Clone, Copy)]
pub(super) enum Src<'a> {
    F32(&'a [u8]),
    F16(&'a [u8]),
    Bf16(&'a [u8]),
    F64(&'a [u8]),
    F32s(&'a [f32]),
    F64s(&'a [f64]),
    F16s(&'a [i32]),
    Bf16s(&'a [i32]),
    /// A score override (e.g. Wanda), used as given.
    Scores(&'a [f64]),
}

/// The scores of one candidate: its source times `scale` (1, or the normalisation of
/// `Scope::Normalized`).
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub(super) src: Src<'a>,
    pub(super) scale: f64,
}

impl<'a> View<'a> {
    pub(super) fn n(&self) -> usize {
        match self.src {
            Src::F32(b) => b.len() / 4,
            Src::F16(b) | Src::Bf16(b) => b.len() / 2,
            Src::F64(b) => b.len() / 8,
            Src::F32s(v) => v.len(),
            Src::F64s(v) | Src::Scores(v) => v.len(),
            Src::F16s(v) | Src::Bf16s(v) => v.len(),
        }
    }

    /// Scores `lo .. lo + out.len()` as the all-in-memory version saw them: |w| as f64, or the
    /// override value. Inlined into every pass, so that it is compiled for the pass's [`crate::simd`] level.
    #[inline(always)]
    pub(super) fn fill(&self, lo: usize, out: &mut [f64]) {
        if self.scale == 1.0 {
            self.fill_as::<false>(lo, out)
        } else {
            self.fill_as::<true>(lo, out)
        }
    }

    /// [`View::fill`], times the scale when `SCALED` (one loop: the same products).
    #[inline(always)]
    fn fill_as<const SCALED: bool>(&self, lo: usize, out: &mut [f64]) {
        let n = out.len();
        let s = self.scale;
        let sc = |x: f64| if SCALED { x * s } else { x };
        match self.src {
            Src::F32(b) => {
                for (o, c) in out.iter_mut().zip(b[lo * 4..(lo + n) * 4].chunks_exact(4)) {
                    *o = sc(f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).abs());
                }
            }
            Src::F16(b) => {
                for (o, c) in out.iter_mut().zip(b[lo * 2..(lo + n) * 2].chunks_exact(2)) {
                    *o = sc(f64::from(f16::from_le_bytes([c[0], c[1]]).to_f32()).abs());
                }
            }
            Src::Bf16(b) => {
                for (o, c) in out.iter_mut().zip(b[lo * 2..(lo + n) * 2].chunks_exact(2)) {
                    *o = sc(f64::from(bf16::from_le_bytes([c[0], c[1]]).to_f32()).abs());
                }
            }
            Src::F64(b) => {
                for (o, c) in out.iter_mut().zip(b[lo * 8..(lo + n) * 8].chunks_exact(8)) {
                    *o = sc(f64::from_le_bytes(c.try_into().unwrap()).abs());
                }
            }
            Src::F32s(v) => {
                for (o, &x) in out.iter_mut().zip(&v[lo..lo + n]) {
                    *o = sc(f64::from(x).abs());
                }
            }
            Src::F64s(v) => {
                for (o, &x) in out.iter_mut().zip(&v[lo..lo + n]) {
                    *o = sc(x.abs());
                }
            }
            Src::F16s(v) => {
                for (o, &x) in out.iter_mut().zip(&v[lo..lo + n]) {
                    *o = sc(f64::from(f16::from_bits(x as u16).to_f32()).abs());
                }
            }
            Src::Bf16s(v) => {
                for (o, &x) in out.iter_mut().zip(&v[lo..lo + n]) {
                    *o = sc(f64::from(bf16::from_bits(x as u16).to_f32()).abs());
                }
            }
            Src::Scores(v) => {
                for (o, &x) in out.iter_mut().zip(&v[lo..lo + n]) {
                    *o = sc(x);
                }
            }
        }
    }

    /// Whether the scores are the weights' own magnitudes, nonzero exactly where the stored
    /// element is (f32, f16, bf16 bytes: what `tensor::count_nonzero_raw` counts; not f64, which
    /// it counts as f32, nor a score override).
    pub(super) fn counts_nonzero(&self) -> bool {
        matches!(self.src, Src::F32(_) | Src::F16(_) | Src::Bf16(_))
    }

    /// Call `f(first index, scores)` for consecutive blocks of `lo..hi`.
    #[inline(always)]
    pub(super) fn blocks(&self, lo: usize, hi: usize, mut f: impl FnMut(usize, &[f64])) {
        let mut buf = [0f64; BLOCK];
        let mut s = self.stream(lo, hi);
        while let Some((i0, b)) = s.decode_next(&mut buf) {
            f(i0, b);
        }
    }

    /// The blocks of `lo..hi` one after another, for loops without a closure (see [`Stream`]).
    #[inline(always)]
    pub(super) fn stream(&self, lo: usize, hi: usize) -> Stream<'a> {
        Stream { v: *self, i: lo, hi }
    }
}

/// Consecutive blocks of a view's range decoded into the caller's buffer:
/// `while let Some((first index, scores)) = s.decode_next(&mut buf)`. A pass written this way has
/// no closure to leave un-inlined, so all of it is compiled at its [`crate::simd`] level.
pub(super) struct Stream<'a> {
    v: View<'a>,
    i: usize,
    hi: usize,
}

impl Stream<'_> {
    #[inline(always)]
    pub(super) fn decode_next<'b>(&mut self, buf: &'b mut [f64; BLOCK]) -> Option<(usize, &'b [f64])> {
        if self.i >= self.hi {
            return None;
        }
        let (i0, k) = (self.i, BLOCK.min(self.hi - self.i));
        self.v.fill(i0, &mut buf[..k]);
        self.i += k;
        Some((i0, &buf[..k]))
    }
}

pub(super) use crate::simd::vectorized;

#[inline(always)]
pub(super) fn key(v: f64) -> u64 {
    v.abs().to_bits()
}

/// The value `Iterator::sum` starts from for f64 (−0.0 in current Rust): the per-tensor sums are
/// folded the same way as the all-in-memory version's `iter().sum()`.
pub(super) fn sum_zero() -> f64 {
    std::iter::empty::<f64>().sum()
}

/// Validate one candidate and make its score view. Errors are those of the previous version.
/// `mapped`: the tensor's bytes when its data is still in a mapped file (raw, as stored).
pub(super) fn make_view<'a>(
    c: &Candidate,
    t: &'a TensorProto,
    mapped: Option<&'a [u8]>,
    opts: &'a WeightOptions,
) -> Result<View<'a>> {
    if let Some(s) = opts.scores.get(&c.name) {
        let n = tensor::numel(t)?;
        if s.len() != n {
            bail!("tensor '{}': score vector has {} entries for {} weights", c.name, s.len(), n);
        }
        if mapped.is_none() {
            tensor::storage(t).with_context(|| format!("zeroing '{}'", tname(t)))?;
        }
        return Ok(View { src: Src::Scores(s), scale: 1.0 });
    }
    if let Some(b) = mapped {
        let src = match t.data_type {
            dt::FLOAT => Src::F32(b),
            dt::FLOAT16 => Src::F16(b),
            dt::BFLOAT16 => Src::Bf16(b),
            dt::DOUBLE => Src::F64(b),
            d => bail!("weight '{}': float data of type {} in external data", c.name, tensor::dtype_name(d)),
        };
        return Ok(View { src, scale: 1.0 });
    }
    let st = tensor::storage(t).with_context(|| format!("weight '{}'", c.name))?;
    let src = match (st, t.data_type) {
        (Storage::Raw(_), dt::FLOAT) => Src::F32(&t.raw_data),
        (Storage::Raw(_), dt::FLOAT16) => Src::F16(&t.raw_data),
        (Storage::Raw(_), dt::BFLOAT16) => Src::Bf16(&t.raw_data),
        (Storage::Raw(_), dt::DOUBLE) => Src::F64(&t.raw_data),
        (Storage::Float, _) => Src::F32s(&t.float_data),
        (Storage::Double, _) => Src::F64s(&t.double_data),
        (Storage::Int32, dt::FLOAT16) => Src::F16s(&t.int32_data),
        (Storage::Int32, dt::BFLOAT16) => Src::Bf16s(&t.int32_data),
        (s, d) => bail!("weight '{}': float data of type {} stored as {s:?}", c.name, tensor::dtype_name(d)),
    };
    Ok(View { src, scale: 1.0 })
}

/// The first NaN/Inf score of `v[lo..hi]`, as (index, value).
pub(super) fn first_non_finite(v: View, lo: usize, hi: usize) -> Option<(usize, f64)> {
    let mut bad = None;
    v.blocks(lo, hi, |i0, b| {
        if bad.is_none() && !b.iter().all(|x| x.is_finite()) {
            let j = b.iter().position(|x| !x.is_finite()).unwrap();
            bad = Some((i0 + j, b[j]));
        }
    });
    bad
}

pub(super) fn non_finite_error(c: &Candidate, (i, v): (usize, f64)) -> anyhow::Error {
    anyhow::anyhow!("tensor '{}': score of element {i} is {v} (NaN/Inf weights cannot be ranked)", c.name)
}

/// Bit j = top bit of `lanes[j]` (at most 64 lanes): packs all-ones/all-zeros compare results
/// into a mask word. Four sign bits per instruction with AVX2 (`vmovmskpd` on 256 bits; the check
/// is a cached load, and the AVX2 passes inline the AVX2 body), two with SSE2 (every x86-64).
#[inline(always)]
pub(super) fn pack_signs(lanes: &[u64]) -> u64 {
    debug_assert!(lanes.len() <= 64);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { pack_signs_avx2(lanes) };
        }
        use std::arch::x86_64::{_mm_castsi128_pd, _mm_loadu_si128, _mm_movemask_pd};
        let mut w = 0u64;
        let pairs = lanes.chunks_exact(2);
        let rest = pairs.remainder();
        for (j, p) in pairs.enumerate() {
            // SAFETY: SSE2 is part of x86-64; the load reads the two u64 of `p` (unaligned load).
            let m = unsafe { _mm_movemask_pd(_mm_castsi128_pd(_mm_loadu_si128(p.as_ptr().cast()))) };
            w |= (m as u64) << (2 * j);
        }
        if let Some(&x) = rest.first() {
            w |= (x >> 63) << (lanes.len() - 1);
        }
        w
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        lanes.iter().enumerate().fold(0u64, |w, (j, &x)| w | (x >> 63) << j)
    }
}

/// [`pack_signs`] with AVX2: four lanes per `vmovmskpd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn pack_signs_avx2(lanes: &[u64]) -> u64 {
    use std::arch::x86_64::{_mm256_loadu_pd, _mm256_movemask_pd};
    let mut w = 0u64;
    let quads = lanes.chunks_exact(4);
    let rest = quads.remainder();
    for (j, q) in quads.enumerate() {
        // SAFETY: the load reads the four u64 of `q` (an unaligned load).
        let m = unsafe { _mm256_movemask_pd(_mm256_loadu_pd(q.as_ptr().cast())) };
        w |= (m as u64) << (4 * j);
    }
    let base = lanes.len() - rest.len();
    for (j, &x) in rest.iter().enumerate() {
        w |= (x >> 63) << (base + j);
    }
    w
}

/// Keep bits, one per element.
pub(super) fn new_mask(n: usize, fill: bool) -> Vec<u64> {
    vec![if fill { !0u64 } else { 0 }; n.div_ceil(64)]
}

#[inline]
pub(super) fn bit(mask: &[u64], i: usize) -> bool {
    mask[i >> 6] >> (i & 63) & 1 != 0
}

#[inline]
pub(super) fn set_bit(mask: &mut [u64], i: usize) {
    mask[i >> 6] |= 1 << (i & 63);
}
