//! The normalized scope in raw space: one light pass after the mean pass instead of two passes
//! that scale every score (issue 13).
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
//! - the retained mass is Σ_p c_p · K_p, K_p the sum of the kept |w| of tensor p (per item: the
//!   blocked sum of the kept |w| when a marking pass of its own marks, see [`raw_mark_items`];
//!   when the window pass marks as it goes, [`raw_window_mark`], the blocked sum of the |w| above
//!   the window, then the kept ones inside it in element order).
//!
//! After the mean pass, one pass usually decides everything: it marks the keys above the sample's
//! window (kept whatever the threshold inside it) and gathers those inside it with their
//! positions; the threshold is selected among them and only they are then decided. When the
//! window misses, radix select finds the threshold and a marking pass marks.
//!
//! Contract: the same quantities as the scaled definition, summed in another order, so N_eff and
//! s_eff differ from it in their last bits (and the kept count only when β·N_eff falls that close
//! to an integer); decisions are then exact: the threshold is the kept-th largest ranked key and
//! ties go to the lower index, as everywhere. Used when every candidate is read as magnitudes (no
//! score override) and no moment needs rescaling (maxima within 1e±100); otherwise the scaled
//! passes run (`prune_global`). The in-memory reference implements the same definitions (its K_p
//! is the marking pass's: the window pass's may differ from it in the last bits).
//!
//! The global scope on magnitudes is this scope with every scale 1: when its moments need no
//! rescaling, it runs [`raw_window_mark`] after its scan too.

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
    // t / c is mostly within an ulp or two of the answer: step to it. Where the products round
    // coarsely (t near the subnormals, c tiny: a 1e20 outlier's scale) many x give one product
    // and stepping could take 2⁵² steps (a run hung): then bisect, x·c being monotone in x and
    // the bits of non-negative floats ordered as their values.
    for _ in 0..64 {
        if x > 0.0 && h(x) > t {
            x = x.next_down();
        } else if x < f64::MAX && h(x.next_up()) <= t {
            x = x.next_up();
        } else {
            return x.max(0.0);
        }
    }
    if h(0.0) > t {
        return 0.0;
    }
    // Invariant: h(lo) ≤ t; hi is past the answer (or MAX, when h(MAX) ≤ t).
    let (mut lo, mut hi) = (0u64, f64::MAX.to_bits());
    if h(f64::MAX) <= t {
        return f64::MAX;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if h(f64::from_bits(mid)) <= t {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    f64::from_bits(lo)
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

/// The cut from the mean pass's sample in one pass over the raw weights, which both finds the
/// threshold and marks: per item it counts and marks the keys above the sample's window (kept
/// whatever the threshold inside it), sums their |w|, and gathers the keys inside the window with
/// their positions; the threshold is selected among the gathered keys in memory, and only those
/// are then decided ([`settle`]). None when the window misses (the caller selects by radix and
/// marks in a pass of its own).
///
/// Each item's kept mass K is the blocked sum of its |w| above the window, then the kept |w|
/// inside it added in element order: deterministic, and within rounding of the blocked sum of all
/// kept |w| that the separate marking pass takes (the report's s_eff may differ in its last bits).
pub(super) fn raw_window_mark(
    parts: &[View],
    items: &[(usize, usize, usize)],
    mut sample: Vec<u64>,
    kept: usize,
    totals: &[f64],
    count: &[bool],
) -> Option<Vec<Marked>> {
    let n: usize = parts.iter().map(|v| v.n()).sum();
    let w = window_bounds(n, &mut sample, kept, kept)?;
    // How many keys an item gathers, about: the sample's share inside the window, plus margin
    // (the gathered keys are reserved once rather than grown by doubling).
    let hint = |len: usize| ((len as f64 * w.share * 1.1) as usize + 64).min(len);
    drop(sample);
    // Per part, the window in raw values (inclusive on both ends, as the window is).
    let hi = if w.hi == u64::MAX { f64::INFINITY } else { f64::from_bits(w.hi) };
    let lo = f64::from_bits(w.lo);
    let raw: Vec<Window> = parts
        .iter()
        .map(|v| Window { lo: raw_ge(lo, v.scale).to_bits(), hi: raw_le(hi, v.scale).to_bits(), ..w })
        .collect();
    let per_item: Vec<Speculated> = items
        .par_iter()
        .map(|&(p, a, b)| {
            let v = View { scale: 1.0, ..parts[p] };
            if count.get(p).copied().unwrap_or(false) {
                window_mark_fast::<true>(v, a, b, raw[p], hint(b - a))
                    .unwrap_or_else(|| vectorized!(window_mark_item::<true>(v, a, b, raw[p], hint(b - a))))
            } else {
                window_mark_fast::<false>(v, a, b, raw[p], hint(b - a))
                    .unwrap_or_else(|| vectorized!(window_mark_item::<false>(v, a, b, raw[p], hint(b - a))))
            }
        })
        .collect();
    // The gathered keys are raw |w|; ranked as `View::fill` ranks them.
    let ranked = |i: usize, k: u64| ranked_key(k, parts[items[i].0].scale);
    let th = window_select_by(&per_item.iter().map(|sp| &sp.g).collect::<Vec<_>>(), kept, w, ranked)?;
    let budgets = tie_budgets(parts, items, &th);
    Some(
        per_item
            .into_par_iter()
            .zip(budgets)
            .enumerate()
            .map(|(i, (sp, budget))| {
                let p = items[i].0;
                let counted = count.get(p).copied().unwrap_or(false);
                settle(sp, parts[p].scale, (th.key, budget), totals[i], counted)
            })
            .collect(),
    )
}

/// The ranked key of a raw key `k` (|w|) of a part scaled by `scale`, as `View::fill` ranks it.
#[inline]
fn ranked_key(k: u64, scale: f64) -> u64 {
    if scale != 1.0 {
        key(f64::from_bits(k) * scale)
    } else {
        k
    }
}

/// One item's share of [`raw_window_mark`]'s pass: the keys above the window counted (`g.0`),
/// marked in `words` and their |w| summed (`mass`: the blocked sums' lanes, element i in lane
/// i mod 8, +0.0 for an element not kept); the keys inside it gathered in element order (`g.1`:
/// |w| as keys; `pos`: their offsets in the item); the nonzero elements (stored, and kept above
/// the window) when counted.
pub(super) struct Speculated {
    pub(super) g: Gathered,
    pub(super) pos: Vec<u32>,
    pub(super) words: Vec<u64>,
    pub(super) mass: emp::Lanes,
    pub(super) nonzero: (u64, u64),
}

impl Speculated {
    /// For an item of `len` elements, room for `hint` gathered keys.
    pub(super) fn new(len: usize, hint: usize) -> Self {
        Speculated {
            g: (0, Vec::with_capacity(hint)),
            pos: Vec::with_capacity(hint),
            words: new_mask(len, false),
            mass: emp::Lanes::default(),
            nonzero: (0, 0),
        }
    }
}

/// An item's keep bits and sums once the threshold `t` (a ranked key; the item's part is scaled
/// by `scale`) is known: of the gathered keys, those ranked above `t` are kept, and of those equal
/// to it the first `budget` (all with `usize::MAX`); their |w| are added to the mass in element
/// order.
pub(super) fn settle(sp: Speculated, scale: f64, (t, mut budget): (u64, usize), total: f64, counted: bool) -> Marked {
    let Speculated { g, pos, mut words, mass, mut nonzero } = sp;
    let mut kept_mass = mass.total();
    for (&p, &r) in pos.iter().zip(&g.1) {
        let k = ranked_key(r, scale);
        let keep = k > t || (k == t && budget > 0);
        if k == t && budget > 0 && budget != usize::MAX {
            budget -= 1;
        }
        if keep {
            words[p as usize / 64] |= 1u64 << (p % 64);
            kept_mass += f64::from_bits(r);
            nonzero.1 += u64::from(counted && r != 0);
        }
    }
    Marked { words, retained: -0.0, total, kept_mass, nonzero }
}

/// [`raw_window_mark`]'s pass over elements `a..b` of one part, with the window `w` in raw values
/// (portable; the reference for [`window_mark_fast`]). Like [`window_item`], it stops between
/// blocks once more than `w.cap` keys are gathered (the window missed).
#[inline(always)]
pub(super) fn window_mark_item<const COUNT: bool>(v: View, a: usize, b: usize, w: Window, hint: usize) -> Speculated {
    let hi = if w.hi == u64::MAX { f64::INFINITY } else { f64::from_bits(w.hi) };
    let lo = f64::from_bits(w.lo);
    let mut sp = Speculated::new(b - a, hint);
    let mut keep = [0u64; BLOCK];
    let (mut buf, mut s) = ([0f64; BLOCK], v.stream(a, b));
    while let Some((i0, r)) = s.decode_next(&mut buf) {
        if sp.g.1.len() > w.cap {
            break;
        }
        let k = r.len();
        let keep = &mut keep[..k];
        // The decoded scores are |w| already.
        for (j, (q, &x)) in keep.iter_mut().zip(r).enumerate() {
            *q = 0u64.wrapping_sub((x > hi) as u64);
            if x >= lo && x <= hi {
                sp.pos.push((i0 - a + j) as u32);
                sp.g.1.push(key(x));
            }
        }
        sp.g.0 += keep.iter().filter(|&&q| q != 0).count();
        pack_keep::<COUNT>(keep, r, &mut sp.words[(i0 - a) / 64..], &mut sp.nonzero);
        // Kept |w|, +0.0 for the others.
        let body = k - k % 8;
        for (c, sel) in r[..body].chunks_exact(8).zip(keep[..body].chunks_exact(8)) {
            let mut y = [0f64; 8];
            for l in 0..8 {
                y[l] = f64::from_bits(c[l].to_bits() & sel[l]);
            }
            sp.mass.add8(&y);
        }
        for (&x, &sel) in r[body..].iter().zip(&keep[body..]) {
            sp.mass.add(&[f64::from_bits(x.to_bits() & sel)]);
        }
    }
    sp
}

/// Cuts marked by the raw window pass, in the normalized scope and in the global one (tests check
/// that they exercise it).
#[cfg(test)]
pub(super) static RAW_WINDOW_HITS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

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
