//! The normalized scope in raw space: two light passes after the mean pass instead of two
//! passes that scale every score (issue 13).
//!
//! The normalized scope ranks a = |w|·c_p (c_p = 1 / the mean |w| of tensor p). Rounding is
//! monotone, so for every threshold t on the ranked scores there is a raw bound x_p(t) with
//! fl(|w|·c_p) ≤ t ⟺ |w| ≤ x_p(t) ([`raw_le`]): comparisons run on the decoded weights, and only
//! the few gathered keys are scaled. The moments come from the mean pass's per-tensor sums, so no
//! pass scales or squares anything:
//!
//! - Σ a = Σ_p c_p · S1_p and Σ a² = Σ_p (c_p · c_p) · S2_p, folded in tensor order, with S1_p, S2_p
//!   the blocked sums of |w| and w² of tensor p (`presums`); a tensor's N_eff is
//!   N_eff(S1_p, S2_p) (scale-free);
//! - the retained mass is Σ_p c_p · K_p, K_p the blocked sum of the kept |w| of tensor p.
//!
//! Contract: the same quantities as the scaled definition, summed in another order, so N_eff and
//! s_eff differ from it in their last bits (and the kept count only when β·N_eff falls that close
//! to an integer); decisions are then exact: the threshold is the kept-th largest ranked key and
//! ties go to the lower index, as everywhere. Used when every candidate is read as magnitudes (no
//! score override) and no moment needs rescaling (maxima within 1e±100); otherwise the scaled
//! passes run (`prune_global`). The in-memory reference implements the same definitions.

use super::*;

/// The largest x ≥ 0 with fl(x·c) ≤ t (x·c taken as `View::fill` takes it: no product when c is
/// 1), for t ≥ 0 and c > 0 finite; +∞ when t is.
pub(super) fn raw_le(t: f64, c: f64) -> f64 {
    if c == 1.0 || t == f64::INFINITY {
        return t;
    }
    let h = |x: f64| x * c;
    let mut x = t / c;
    if !x.is_finite() {
        x = f64::MAX;
    }
    // t / c is within an ulp or two of the answer: step to it.
    while x > 0.0 && h(x) > t {
        x = x.next_down();
    }
    while x < f64::MAX && h(x.next_up()) <= t {
        x = x.next_up();
    }
    x.max(0.0)
}

/// The smallest x ≥ 0 with fl(x·c) ≥ t (t ≥ 0): just above the largest x with fl(x·c) < t.
pub(super) fn raw_ge(t: f64, c: f64) -> f64 {
    if t <= 0.0 {
        0.0
    } else {
        raw_le(t.next_down(), c).next_up()
    }
}

/// The normalized moments (Σ a, Σ a²) from the per-tensor sums, or None when a tensor's sums
/// are not finite.
pub(super) fn norm_moments(scales: &[f64], s1: &[f64], s2: &[f64]) -> Option<(f64, f64)> {
    let (mut a, mut b) = (-0.0f64, -0.0f64);
    for ((&c, &x), &y) in scales.iter().zip(s1).zip(s2) {
        a += c * x;
        b += (c * c) * y;
    }
    (a.is_finite() && b.is_finite()).then_some((a, b))
}

/// The normalized cut from the mean pass alone: the decision (s_eff still 1), Σ a, and each
/// tensor's moments (S1_p, S2_p; zero for an all-zero tensor).
pub(super) struct Plan {
    pub(super) gd: GlobalDecision,
    pub(super) s1: f64,
    pub(super) per: PartSums,
}

/// [`Plan`] when the raw-space passes apply (see the module doc), None otherwise; the first
/// NaN/Inf (candidate, (index, value)) as an error.
pub(super) fn raw_plan(
    nm: &Norm,
    parts: &[View],
    items: &[(usize, usize, usize)],
    n: usize,
    opts: &WeightOptions,
) -> std::result::Result<Option<Plan>, (usize, (usize, f64))> {
    let np = parts.len();
    // S1_p is the mean pass's per-tensor sum (every candidate readable: one sum per part).
    let s1p = &nm.sums;
    let (mut s2p, mut maxp) = (vec![-0.0f64; np], vec![0u64; np]);
    let mut bad: Vec<Option<(usize, f64)>> = vec![None; np];
    for (i, &(p, _, _)) in items.iter().enumerate() {
        s2p[p] += nm.pre.squares[i];
        maxp[p] = maxp[p].max(nm.pre.max[i]);
        if bad[p].is_none() {
            // Items of a part come in order: the first one found is the first in the tensor.
            bad[p] = nm.pre.bad[i];
        }
    }
    if let Some((p, b)) = bad.iter().enumerate().find_map(|(p, b)| b.map(|b| (p, b))) {
        return Err((p, b));
    }
    if parts.iter().any(|v| matches!(v.src, Src::Scores(_))) {
        return Ok(None);
    }
    let mut m = 0f64;
    for (v, &mp) in parts.iter().zip(&maxp) {
        let mp = f64::from_bits(mp);
        if mp != 0.0 && emp::moment_scale(mp) != 1.0 {
            return Ok(None);
        }
        // The ranked max, as `View::fill` ranks (rounding is monotone).
        m = m.max(if v.scale != 1.0 { mp * v.scale } else { mp });
    }
    if m == 0.0 || emp::moment_scale(m) != 1.0 {
        return Ok(None);
    }
    let scales: Vec<f64> = parts.iter().map(|v| v.scale).collect();
    let Some((s1, s2)) = norm_moments(&scales, s1p, &s2p) else { return Ok(None) };
    let per =
        maxp.iter().zip(s1p.iter().zip(s2p)).map(|(&mp, (&a, b))| if mp == 0 { (0.0, 0.0) } else { (a, b) }).collect();
    let (ne, kept) = global_kept(n, s1, s2, opts);
    Ok(Some(Plan { gd: GlobalDecision { n, n_eff: ne, kept, s_eff: 1.0 }, s1, per }))
}

/// The `kept`-th largest ranked key from the mean pass's sample: one pass over the raw weights
/// counts the keys above the sample's window and gathers those inside it (scaled), the threshold
/// is selected in memory. None when the window misses.
pub(super) fn raw_window_threshold(
    parts: &[View],
    items: &[(usize, usize, usize)],
    sample: &mut [u64],
    kept: usize,
) -> Option<Threshold> {
    let n: usize = parts.iter().map(|v| v.n()).sum();
    let w = window_bounds(n, sample, kept, kept)?;
    // Per part, the window in raw values (inclusive on both ends, as the window is).
    let hi = if w.hi == u64::MAX { f64::INFINITY } else { f64::from_bits(w.hi) };
    let lo = f64::from_bits(w.lo);
    let raw: Vec<Window> = parts
        .iter()
        .map(|v| Window { lo: raw_ge(lo, v.scale).to_bits(), hi: raw_le(hi, v.scale).to_bits(), cap: w.cap })
        .collect();
    let per_item: Vec<Gathered> = items
        .par_iter()
        .map(|&(p, a, b)| {
            let v = parts[p];
            let rv = View { scale: 1.0, ..v };
            let mut g =
                window_item_fast(rv, a, b, raw[p]).unwrap_or_else(|| vectorized!(window_item(rv, a, b, raw[p])));
            // The gathered keys, ranked as `View::fill` ranks them.
            if v.scale != 1.0 {
                for k in g.1.iter_mut() {
                    *k = key(f64::from_bits(*k) * v.scale);
                }
            }
            g
        })
        .collect();
    let th = window_select(&per_item, kept, w);
    #[cfg(test)]
    if th.is_some() {
        RAW_WINDOW_HITS.fetch_add(1, Ordering::Relaxed);
    }
    th
}

/// Cuts whose threshold came from the raw window (tests check that they exercise it).
#[cfg(test)]
pub(super) static RAW_WINDOW_HITS: AtomicUsize = AtomicUsize::new(0);

/// Keep bits of every item for the ranked threshold `th`, compared in raw values: per item its
/// words, the blocked sum of its kept |w| (`kept_mass`; `retained` is left to the caller:
/// Σ_p c_p · K_p), its total from the mean pass, and the nonzero counts where `count[p]`.
pub(super) fn raw_mark_items(
    parts: &[View],
    items: &[(usize, usize, usize)],
    (th, budgets): (&Threshold, &[usize]),
    totals: &[f64],
    count: &[bool],
) -> Vec<Marked> {
    let t = f64::from_bits(th.key);
    // Per part: keys above t are |w| > gt; keys equal to t are ge ≤ |w| ≤ gt.
    let bounds: Vec<(f64, f64)> = parts.iter().map(|v| (raw_le(t, v.scale), raw_ge(t, v.scale))).collect();
    items
        .par_iter()
        .zip(budgets)
        .enumerate()
        .map(|(i, (&(p, lo, hi), &budget))| {
            let v = View { scale: 1.0, ..parts[p] };
            let mut words = new_mask(hi - lo, false);
            let counted = count.get(p).copied().unwrap_or(false);
            let (kept_mass, nonzero) = if counted {
                mark_item_fast::<true>(v, lo, hi, bounds[p], budget, &mut words)
                    .unwrap_or_else(|| vectorized!(raw_mark_item::<true>(v, lo, hi, bounds[p], budget, &mut words)))
            } else {
                mark_item_fast::<false>(v, lo, hi, bounds[p], budget, &mut words)
                    .unwrap_or_else(|| vectorized!(raw_mark_item::<false>(v, lo, hi, bounds[p], budget, &mut words)))
            };
            Marked { words, retained: -0.0, total: totals[i], kept_mass, nonzero }
        })
        .collect()
}

/// One item's [`raw_mark_items`]: keep bits into `words`, (Σ kept |w| blocked, nonzero counts).
#[inline(always)]
pub(super) fn raw_mark_item<const COUNT: bool>(
    v: View,
    lo: usize,
    hi: usize,
    (gt, ge): (f64, f64),
    mut t: usize,
    words: &mut [u64],
) -> (f64, (u64, u64)) {
    let mut lanes = emp::Lanes::default();
    let mut nonzero = (0u64, 0u64);
    let mut keep = [0u64; BLOCK];
    let (mut buf, mut s) = ([0f64; BLOCK], v.stream(lo, hi));
    while let Some((i0, r)) = s.decode_next(&mut buf) {
        let k = r.len();
        let keep = &mut keep[..k];
        if t == usize::MAX {
            // Every key equal to the threshold is kept.
            for (q, &x) in keep.iter_mut().zip(r) {
                *q = 0u64.wrapping_sub((x >= ge) as u64);
            }
        } else {
            let mut any_eq = false;
            for (q, &x) in keep.iter_mut().zip(r) {
                *q = 0u64.wrapping_sub((x > gt) as u64);
                any_eq |= x >= ge && x <= gt;
            }
            if any_eq && t > 0 {
                // Ties at the threshold: the first ones in order are kept.
                for (q, &x) in keep.iter_mut().zip(r.iter()) {
                    if t > 0 && x >= ge && x <= gt {
                        *q = !0;
                        t -= 1;
                    }
                }
            }
        }
        pack_keep::<COUNT>(keep, r, &mut words[(i0 - lo) / 64..], &mut nonzero);
        let body = k - k % 8;
        for (c, sel) in r[..body].chunks_exact(8).zip(keep[..body].chunks_exact(8)) {
            let mut a = [0f64; 8];
            for l in 0..8 {
                a[l] = select_bits(sel[l], c[l]);
            }
            lanes.add8(&a);
        }
        for (&x, &sel) in r[body..].iter().zip(&keep[body..]) {
            lanes.add(&[select_bits(sel, x)]);
        }
    }
    (lanes.total(), nonzero)
}
