//! The sampled threshold (as in Floyd and Rivest's SELECT): a sample of the keys brackets the
//! kept-th largest key, one pass counts the keys above the bracket and gathers those inside it,
//! and the threshold is selected among the gathered keys in memory.
//!
//! Two ways to get there, the same threshold either way:
//! - [`window_threshold`]: the scan's sample, then a pass of its own (global scope, one large
//!   tensor of the layer scope);
//! - the normalized scope's first pass ([`presums`]: each tensor's Σ |s| for its mean) also takes
//!   the sample, Σ s², the max and the first NaN/Inf. For weights read as magnitudes those give
//!   the exact cut ([`raw`]), and the window pass runs on the raw weights
//!   ([`raw::raw_window_mark`], which marks the keys above the window in the same pass). With a score override they only estimate the cut, so the
//!   scan gathers the bracket ([`select::scan_gather`]) and the threshold needs no pass of its
//!   own; the exact moments still come from the scan, and when the exact cut falls outside the
//!   bracket, [`window_threshold`] (then radix select) runs as before.
//!
//! Contract: whatever the path, the threshold is the exact `kept`-th largest key (ties counted as
//! the radix select counts them); decisions stay bit-identical to the in-memory reference.

use super::*;

/// Keys above `hi` are counted, keys in `[lo, hi]` gathered (`u64::MAX` / 0: no bound); an item
/// that gathers more than `cap` keys gives up (the window missed).
#[derive(Clone, Copy, Debug)]
pub(super) struct Window {
    pub(super) lo: u64,
    pub(super) hi: u64,
    pub(super) cap: usize,
    /// The sample's share inside the window: about the share of keys a pass gathers.
    pub(super) share: f64,
}

/// One work item's share of a window pass: keys above the window, keys inside it.
pub(super) type Gathered = (usize, Vec<u64>);

/// The window that holds the `kept`-th largest key for any `kept` in `kept_lo..=kept_hi`, with a
/// safe margin (6 standard deviations of the sample rank, plus 8) on either side; None when the
/// sample is too small or the window would hold more than `gather_max` keys. The sample is
/// reordered (selected in place).
pub(super) fn window_bounds(n: usize, sample: &mut [u64], kept_lo: usize, kept_hi: usize) -> Option<Window> {
    let m = sample.len();
    if m < 64 || kept_lo == 0 || kept_hi > n || kept_lo > kept_hi {
        return None;
    }
    let gather_max = (n / 64).max(GATHER_MIN);
    // Expected rank (0 = largest) of the kept-th key in the sample, and the margin around it.
    let rank = |kept: usize| {
        let p = kept as f64 / n as f64;
        let r = (kept - 1) as f64 * m as f64 / n as f64;
        (r, 6.0 * (m as f64 * p * (1.0 - p)).sqrt() + 8.0)
    };
    let ((r_hi, m_hi), (r_lo, m_lo)) = (rank(kept_lo), rank(kept_hi));
    let (hi_rank, lo_rank) = ((r_hi - m_hi).floor(), (r_lo + m_lo).ceil());
    if (lo_rank - hi_rank.max(0.0)) * n as f64 / m as f64 > gather_max as f64 {
        return None;
    }
    let mut rank_key = |rank: usize| *sample.select_nth_unstable_by(rank, |a, b| b.cmp(a)).1;
    let hi = if hi_rank < 0.0 { u64::MAX } else { rank_key(hi_rank as usize) };
    let lo = if lo_rank >= m as f64 { 0 } else { rank_key(lo_rank as usize) };
    let share = ((lo_rank.min(m as f64 - 1.0) - hi_rank.max(0.0) + 1.0) / m as f64).clamp(0.0, 1.0);
    Some(Window { lo, hi, cap: 2 * gather_max, share })
}

/// The `kept`-th largest key of `parts` from `sample`: one pass gathers the window, the threshold
/// is selected in memory. None (the caller falls back to radix select) when the window is too
/// wide or does not contain the kept-th key.
pub(super) fn window_threshold(
    parts: &[View],
    items: &[(usize, usize, usize)],
    sample: &[u64],
    kept: usize,
) -> Option<Threshold> {
    let n: usize = parts.iter().map(|v| v.n()).sum();
    let w = window_bounds(n, &mut sample.to_vec(), kept, kept)?;
    let per_item: Vec<Gathered> =
        items.par_iter().map(|&(p, a, b)| vectorized!(window_item(parts[p], a, b, w))).collect();
    window_select(&per_item, kept, w)
}

/// The threshold from a window pass's results, when they hold the `kept`-th key.
pub(super) fn window_select(per_item: &[Gathered], kept: usize, w: Window) -> Option<Threshold> {
    window_select_by(per_item, kept, w, |_, k| k)
}

/// [`window_select`] when the gathered keys are ranked by `rank(item, key)` (a monotone map per
/// item) as they are read.
pub(super) fn window_select_by<G: std::borrow::Borrow<Gathered>>(
    per_item: &[G],
    kept: usize,
    w: Window,
    rank: impl Fn(usize, u64) -> u64,
) -> Option<Threshold> {
    let per_item: Vec<&Gathered> = per_item.iter().map(|g| g.borrow()).collect();
    if per_item.iter().any(|x| x.1.len() > w.cap) {
        return None;
    }
    let above: usize = per_item.iter().map(|x| x.0).sum();
    let inside: usize = per_item.iter().map(|x| x.1.len()).sum();
    if kept <= above || kept > above + inside {
        return None;
    }
    let r = kept - above - 1;
    let (t, higher) = select_gathered(&per_item, r, w, &rank);
    let eq_per_item: Vec<usize> =
        per_item.iter().enumerate().map(|(i, (_, g))| g.iter().filter(|&&k| rank(i, k) == t).count()).collect();
    Some(Threshold { key: t, ties: r - higher + 1, eq: eq_per_item.iter().sum(), eq_per_item: Some(eq_per_item) })
}

/// The `r`-th largest (0 = largest) of the gathered keys (ranked by `rank`, all inside the window
/// `w`) and how many are larger, without copying them all: a histogram of their high bits below
/// the window's common prefix finds the bucket that holds it, and only that bucket is gathered and
/// selected in memory.
fn select_gathered(per_item: &[&Gathered], r: usize, w: Window, rank: &impl Fn(usize, u64) -> u64) -> (u64, usize) {
    let span = w.hi.saturating_sub(w.lo);
    let shift = (64 - span.leading_zeros()).saturating_sub(16);
    let last = (span >> shift) as usize;
    // Monotone in k (clamped: a key outside the window would still be ordered right).
    let bucket = |k: u64| ((k.saturating_sub(w.lo) >> shift) as usize).min(last);
    let mut hist = vec![0u32; last + 1];
    for (i, (_, g)) in per_item.iter().enumerate() {
        for &k in g.iter() {
            hist[bucket(rank(i, k))] += 1;
        }
    }
    // From the top bucket down: the one holding the r-th largest, and the keys above it.
    let (mut above, mut b) = (0usize, hist.len());
    while b > 0 {
        b -= 1;
        let c = hist[b] as usize;
        if above + c > r {
            break;
        }
        above += c;
    }
    drop(hist);
    let mut keys: Vec<u64> = Vec::new();
    for (i, (_, g)) in per_item.iter().enumerate() {
        keys.extend(g.iter().map(|&k| rank(i, k)).filter(|&k| bucket(k) == b));
    }
    let (higher, &mut t, _) = keys.select_nth_unstable_by(r - above, |a, b| b.cmp(a));
    (t, above + higher.iter().filter(|&&k| k > t).count())
}

/// [`window_threshold`]'s pass over elements `a..b` of one part.
#[inline(always)]
pub(super) fn window_item(v: View, a: usize, b: usize, w: Window) -> Gathered {
    let mut g: Gathered = (0, Vec::new());
    let (mut buf, mut s) = ([0f64; BLOCK], v.stream(a, b));
    while let Some((_, blk)) = s.decode_next(&mut buf) {
        if g.1.len() > w.cap {
            break;
        }
        window_block(blk, w, &mut g);
    }
    g
}

/// One decoded block's share of a window pass: per 64 keys, the count above and the keys inside
/// the window as a bit mask (compares without branches, vectorised), then only the few set bits
/// gathered.
#[inline(always)]
pub(super) fn window_block(blk: &[f64], w: Window, (above, g): &mut Gathered) {
    // Keys order like the values |s| (non-negative floats), so the compares run on the values:
    // packed f64 compares. No upper bound (`hi` = u64::MAX) is +Inf, above which no finite score
    // is; `lo` = 0 is 0.0. A NaN score compares false both ways (the scan reports it as an error).
    let hi = if w.hi == u64::MAX { f64::INFINITY } else { f64::from_bits(w.hi) };
    let lo = f64::from_bits(w.lo);
    for c in blk.chunks(64) {
        let mut lanes = [0u64; 64];
        for (l, &x) in lanes.iter_mut().zip(c) {
            let a = x.abs();
            *above += (a > hi) as usize;
            *l = 0u64.wrapping_sub((a >= lo && a <= hi) as u64);
        }
        let mut m = pack_signs(&lanes[..c.len()]);
        while m != 0 {
            g.push(key(c[m.trailing_zeros() as usize]));
            m &= m - 1;
        }
    }
}

/// The normalized scope's first pass, per work item: the blocked total of the scores as given
/// (the tensor's Σ |s| for its mean, and the report's Σ s), an estimate of Σ s² (a plain lane sum,
/// only to place the window), and the sampled scores (unscaled; [`Presums::window`] scales them
/// as the scan would have).
pub(super) struct Presums {
    pub(super) totals: Vec<f64>,
    /// Per item: the blocked sum of s² (exact for magnitudes: the normalized scope's moments,
    /// see [`raw`]).
    pub(super) squares: Vec<f64>,
    /// Per item: the max |s| (as key bits) and the first NaN/Inf, as `Scan` has them.
    pub(super) max: Vec<u64>,
    pub(super) bad: Vec<Option<(usize, f64)>>,
    /// Per item, its sampled scores (unscaled); see [`Presums::sample`].
    pub(super) samples: Vec<Vec<f64>>,
}

pub(super) fn presums(parts: &[View], items: &[(usize, usize, usize)]) -> Presums {
    let per: Vec<PresumItem> =
        items.par_iter().map(|&(p, lo, hi)| vectorized!(presum_item(parts[p], lo, hi))).collect();
    let mut out = Presums { totals: vec![], squares: vec![], max: vec![], bad: vec![], samples: vec![] };
    for (t, q, mx, bad, s) in per {
        out.totals.push(t);
        out.squares.push(q);
        out.max.push(mx);
        out.bad.push(bad);
        out.samples.push(s);
    }
    out
}

/// One item's [`presums`]: total, Σ s², max key, first NaN/Inf, sample.
type PresumItem = (f64, f64, u64, Option<(usize, f64)>, Vec<f64>);

/// [`presums`] of elements `lo..hi` of one part; the total is [`select::block_sums`]' exactly.
#[inline(always)]
fn presum_item(v: View, lo: usize, hi: usize) -> PresumItem {
    let mut sample = Vec::with_capacity((hi - lo) / SAMPLE_EVERY + 1);
    let (mut l, mut q) = (emp::Lanes::default(), emp::Lanes::default());
    let (mut mx, mut bad) = (0f64, None);
    let (mut buf, mut s) = ([0f64; BLOCK], v.stream(lo, hi));
    while let Some((i0, b)) = s.decode_next(&mut buf) {
        l.add(b);
        let body = b.len() - b.len() % 8;
        let mut mxl = [mx; 8];
        for c in b[..body].chunks_exact(8) {
            let mut y = [0f64; 8];
            for ((y, &x), m) in y.iter_mut().zip(c).zip(mxl.iter_mut()) {
                *y = x * x;
                let a = x.abs();
                *m = if a > *m { a } else { *m };
            }
            q.add8(&y);
        }
        for &x in &b[body..] {
            q.add(&[x * x]);
            let a = x.abs();
            mxl[0] = if a > mxl[0] { a } else { mxl[0] };
        }
        mx = mxl.iter().fold(mx, |m, &a| if a > m { a } else { m });
        // As the scan checks: a NaN/Inf makes the running sums non-finite (see `select::scan`).
        if bad.is_none() && !(l.partial_finite() && q.partial_finite() && mx.is_finite()) {
            bad = b.iter().position(|x| !x.is_finite()).map(|j| (i0 + j, b[j]));
        }
        let mut g = i0 / SAMPLE_EVERY;
        while g * SAMPLE_EVERY < i0 + b.len() {
            let j = g * SAMPLE_EVERY + sample_offset(g);
            if j >= i0 && j < i0 + b.len() {
                sample.push(b[j - i0]);
            }
            g += 1;
        }
    }
    (l.total(), q.total(), mx.to_bits(), bad, sample)
}

impl Presums {
    /// The scan's sample of the scaled scores (`scales[p]` per part) from [`Presums::samples`]:
    /// the same keys [`select::scan`] would have taken, in the same order.
    pub(super) fn sample(samples: Vec<Vec<f64>>, items: &[(usize, usize, usize)], scales: &[f64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(samples.iter().map(Vec::len).sum());
        for (&(p, _, _), s) in items.iter().zip(samples) {
            let c = scales[p];
            // As `View::fill` scales: no product when the scale is 1.
            out.extend(s.iter().map(|&x| key(if c != 1.0 { x * c } else { x })));
        }
        out
    }

    /// Estimated moments (Σ a, Σ a²) of the scaled scores a = |s|·scale: per part its scale times
    /// its sums (not the blocked sums of the products, so close but not bit-equal).
    pub(super) fn moments_estimate(&self, items: &[(usize, usize, usize)], scales: &[f64]) -> (f64, f64) {
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for ((&(p, _, _), &t), &q) in items.iter().zip(&self.totals).zip(&self.squares) {
            let c = scales[p];
            s1 += c * t.abs();
            s2 += c * c * q;
        }
        (s1, s2)
    }
}
