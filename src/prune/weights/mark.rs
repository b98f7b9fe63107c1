//! Marking: keep bits from the threshold, with the sums the report needs (retained mass, kept and
//! total scores) and the nonzero counts the parameter counts need, in one pass per work item.
//!
//! [`MarkAcc`] is one item's marking, fed its elements in order (in consecutive ranges or in one
//! go: the same bits and bit-identical sums, since the same values go to the same lanes in
//! element order).

use super::*;

/// Keep bits of every work item given the threshold, and (with `sums = (m, totals)`) the item's
/// block totals of kept |s| / m (m: the moment divisor) and of the unscaled scores (`totals`
/// when an earlier pass summed them, else summed here). Items run in parallel: when only some
/// keys equal to the threshold are kept, each item gets its share in order (`budgets`, see
/// [`tie_budgets`]). `count[p]`: count part p's nonzero elements too (see
/// `View::counts_nonzero`).
pub(super) fn mark_items(
    parts: &[View],
    items: &[(usize, usize, usize)],
    (th, budgets): (&Threshold, &[usize]),
    sums: Option<(f64, Option<&[f64]>)>,
    count: &[bool],
) -> Vec<Marked> {
    items
        .par_iter()
        .zip(budgets)
        .enumerate()
        .map(|(i, (&(p, lo, hi), &t))| {
            let given = sums.and_then(|s| s.1).map(|totals| totals[i]);
            let mut acc = MarkAcc::new(th.key, t, sums.map(|s| s.0), given.is_none());
            let mut words = new_mask(hi - lo, false);
            if count.get(p).copied().unwrap_or(false) {
                vectorized!(acc.feed::<true>(parts[p], lo, hi, &mut words))
            } else {
                vectorized!(acc.feed::<false>(parts[p], lo, hi, &mut words))
            };
            acc.into_marked(words, given)
        })
        .collect()
}

/// How many keys equal to the threshold each item keeps: all when every such key is kept, else
/// the first `th.ties` in item order (counted in one more pass unless the selection counted them).
pub(super) fn tie_budgets(parts: &[View], items: &[(usize, usize, usize)], th: &Threshold) -> Vec<usize> {
    let (thr, ties) = (th.key, th.ties);
    if ties >= th.eq {
        return vec![usize::MAX; items.len()];
    }
    let counts: Vec<usize> = if let Some(c) = &th.eq_per_item {
        c.clone()
    } else {
        items
            .par_iter()
            .map(|&(p, lo, hi)| {
                let mut c = 0usize;
                parts[p].blocks(lo, hi, |_, b| c += b.iter().filter(|&&x| key(x) == thr).count());
                c
            })
            .collect()
    };
    let mut left = ties;
    counts
        .iter()
        .map(|&c| {
            let t = c.min(left);
            left -= t;
            t
        })
        .collect()
}

/// Each part's keep bits from `mark_items`' results (items of a part are consecutive and start at
/// multiples of 64).
pub(super) fn part_masks(n_parts: usize, items: &[(usize, usize, usize)], marked: Vec<Marked>) -> Vec<Vec<u64>> {
    let mut masks: Vec<Vec<u64>> = vec![Vec::new(); n_parts];
    for (&(p, _, _), Marked { words, .. }) in items.iter().zip(marked) {
        if masks[p].is_empty() {
            masks[p] = words;
        } else {
            masks[p].extend_from_slice(&words);
        }
    }
    masks
}

/// One work item's keep bits, and with a global `m`: its block totals of kept |s| / m, and of the
/// unscaled scores, all and kept (the tensor report's sums, accounted here so that zeroing
/// needs no second decoding pass).
pub(super) struct Marked {
    pub(super) words: Vec<u64>,
    pub(super) retained: f64,
    pub(super) total: f64,
    pub(super) kept_mass: f64,
    /// Nonzero elements (stored, kept), when counted.
    pub(super) nonzero: (u64, u64),
}

/// One work item's marking in progress: keys above the threshold are kept, and of the keys equal
/// to it the first `t` (`t` left of the item's tie budget). With `m`: the block totals of kept
/// |s| / m, of kept unscaled scores and (with `total`) of all unscaled scores (else left at −0.0:
/// the caller has it from an earlier pass). Fed with `COUNT` (the view decodes the weights
/// themselves, see `View::counts_nonzero`): the nonzero elements, stored and kept.
pub(super) struct MarkAcc {
    thr: f64,
    t: usize,
    m: Option<f64>,
    total: bool,
    lanes: [emp::Lanes; 3],
    nonzero: (u64, u64),
}

impl MarkAcc {
    pub(super) fn new(thr: u64, t: usize, m: Option<f64>, total: bool) -> Self {
        MarkAcc { thr: f64::from_bits(thr), t, m, total, lanes: [emp::Lanes::default(); 3], nonzero: (0, 0) }
    }

    /// Mark `v[lo..hi]`, the item's next elements (`hi - lo` a multiple of 8 unless they are its
    /// last): keep bits into `words` (bit 0 of `words[0]` = element `lo`).
    #[inline(always)]
    pub(super) fn feed<const COUNT: bool>(&mut self, v: View, lo: usize, hi: usize, words: &mut [u64]) {
        let thr_v = self.thr;
        let mut keep = [0u64; BLOCK];
        // The ranked scores |s|·scale of the block, for the sums.
        let mut rk = [0f64; BLOCK];
        // The unscaled scores are decoded; the ranked ones are them times the scale, exactly as
        // `View::fill` computes them.
        let raw = View { scale: 1.0, ..v };
        let scale = v.scale;
        let ranked = |x: f64| if scale != 1.0 { x * scale } else { x };
        // Blocks start at multiples of BLOCK, so at whole mask words.
        let (mut buf, mut s) = ([0f64; BLOCK], raw.stream(lo, hi));
        while let Some((i0, r)) = s.decode_next(&mut buf) {
            let k = r.len();
            let (keep, rk) = (&mut keep[..k], &mut rk[..k]);
            if self.t == usize::MAX {
                // Every key equal to the threshold is kept.
                for ((q, y), &x) in keep.iter_mut().zip(rk.iter_mut()).zip(r) {
                    let x = ranked(x).abs();
                    *y = x;
                    *q = 0u64.wrapping_sub((x >= thr_v) as u64);
                }
            } else {
                let mut any_eq = false;
                for ((q, y), &x) in keep.iter_mut().zip(rk.iter_mut()).zip(r) {
                    let x = ranked(x).abs();
                    *y = x;
                    *q = 0u64.wrapping_sub((x > thr_v) as u64);
                    any_eq |= x == thr_v;
                }
                if any_eq && self.t > 0 {
                    // Ties at the threshold: the first ones in order are kept.
                    for (q, &x) in keep.iter_mut().zip(rk.iter()) {
                        if self.t > 0 && x == thr_v {
                            *q = !0;
                            self.t -= 1;
                        }
                    }
                }
            }
            pack_keep::<COUNT>(keep, r, &mut words[(i0 - lo) / 64..], &mut self.nonzero);
            if let Some(m) = self.m {
                if m == 1.0 {
                    // x / 1 == x exactly: no division.
                    mark_sums(r, rk, keep, |y| y, self.total, &mut self.lanes);
                } else {
                    mark_sums(r, rk, keep, |y| y / m, self.total, &mut self.lanes);
                }
            }
        }
    }

    /// The item's result (`given`: its total from an earlier pass).
    pub(super) fn into_marked(self, words: Vec<u64>, given: Option<f64>) -> Marked {
        let total = match given {
            Some(t) => t,
            None if self.total => self.lanes[2].total(),
            None => -0.0,
        };
        Marked {
            words,
            retained: self.lanes[0].total(),
            total,
            kept_mass: self.lanes[1].total(),
            nonzero: self.nonzero,
        }
    }
}

/// A block's keep flags (all ones or all zeros per element) packed into `words` (64 per word),
/// and with `COUNT` the nonzero elements of `r`, stored and kept, added to `nonzero`.
#[inline(always)]
pub(super) fn pack_keep<const COUNT: bool>(keep: &[u64], r: &[f64], words: &mut [u64], nonzero: &mut (u64, u64)) {
    for (w, c) in words.iter_mut().zip(keep.chunks(64)) {
        *w = pack_signs(c);
    }
    if COUNT {
        let (mut nz, mut nz_kept) = (0u64, 0u64);
        for (&q, &x) in keep.iter().zip(r) {
            let z = (x != 0.0) as u64;
            nz += z;
            nz_kept += z & q;
        }
        nonzero.0 += nz;
        nonzero.1 += nz_kept;
    }
}

/// One block's sums for [`MarkAcc::feed`], in one loop: lanes 0 += kept `moment(rk)` (rk: the
/// ranked scores), lanes 1 +=
/// kept r, lanes 2 += r (when `total`); the blocked sums' lanes, element i in lane i mod 8.
#[inline(always)]
fn mark_sums(
    r: &[f64],
    rk: &[f64],
    keep: &[u64],
    moment: impl Fn(f64) -> f64,
    total: bool,
    lanes: &mut [emp::Lanes; 3],
) {
    let k = r.len();
    let body = k - k % 8;
    for ((c, y), s) in r[..body].chunks_exact(8).zip(rk[..body].chunks_exact(8)).zip(keep[..body].chunks_exact(8)) {
        let (mut a, mut b) = ([0f64; 8], [0f64; 8]);
        for l in 0..8 {
            a[l] = select_bits(s[l], moment(y[l]));
            b[l] = select_bits(s[l], c[l]);
        }
        lanes[0].add8(&a);
        lanes[1].add8(&b);
        if total {
            lanes[2].add8(c.try_into().expect("8 lanes"));
        }
    }
    for ((&x, &y), &sel) in r[body..].iter().zip(&rk[body..]).zip(&keep[body..]) {
        lanes[0].add(&[select_bits(sel, moment(y))]);
        lanes[1].add(&[select_bits(sel, x)]);
        if total {
            lanes[2].add(&[x]);
        }
    }
}

/// `x` if `keep`, else −0.0, without a branch: x + (−0.0) == x exactly, so adding this is the
/// same sum as adding the kept values only.
#[inline(always)]
pub(super) fn select(keep: bool, x: f64) -> f64 {
    select_bits(0u64.wrapping_sub(keep as u64), x)
}

/// [`select`] with the keep flag as a word of all ones or all zeros.
#[inline(always)]
pub(super) fn select_bits(sel: u64, x: f64) -> f64 {
    f64::from_bits((x.to_bits() & sel) | (!sel & (1u64 << 63)))
}
