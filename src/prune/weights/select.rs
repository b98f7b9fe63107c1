//! Streaming selection: parallel scans, fixed-order moments, the threshold (from the scan's sample,
//! radix select as the fallback), keep bits, per-unit EMP. Bit-identical to the in-memory
//! reference whatever the number of threads.

use super::*;

/// Run `f(acc, item)` for items 0..n on all rayon threads, one accumulator per worker, items
/// taken in any order: only for order-independent accumulations (counts, maxima).
pub(super) fn par_accumulate<A: Send>(
    n: usize,
    init: impl Fn() -> A + Sync,
    f: impl Fn(&mut A, usize) + Sync,
) -> Vec<A> {
    let next = AtomicUsize::new(0);
    let workers = rayon::current_num_threads().min(n).max(1);
    (0..workers)
        .into_par_iter()
        .map(|_| {
            let mut a = init();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                f(&mut a, i);
            }
            a
        })
        .collect()
}

/// (part, lo, hi) work items covering `parts` in order.
pub(super) fn chunks(parts: &[View]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for (p, v) in parts.iter().enumerate() {
        let n = v.n();
        let mut lo = 0;
        while lo < n {
            let hi = (lo + CHUNK).min(n);
            out.push((p, lo, hi));
            lo = hi;
        }
    }
    out
}

/// First streaming pass over a group made of `parts`: per-part max key and first NaN/Inf, the
/// block totals of |s| and s², and a sample of the keys (see [`SAMPLE_EVERY`]) for the threshold.
pub(super) struct Scan {
    pub(super) max: Vec<u64>,
    pub(super) bad: Vec<Option<(usize, f64)>>,
    /// Per item: the block totals of |s| and s² (unscaled: valid when `emp::moment_scale` of the
    /// max is 1).
    pub(super) sums: Vec<[f64; 2]>,
    /// One key out of every [`SAMPLE_EVERY`] consecutive elements of each part, at a position
    /// within the run that a hash of the run's index picks (so that a column of a matrix is not
    /// sampled over and over): deterministic, independent of threads.
    pub(super) sample: Vec<u64>,
}

/// Sampling rate of [`Scan::sample`]: one key per this many elements (the sample costs 1/64 of
/// the scores' f64 size; it places the threshold within ~8·√N ranks, see [`window_threshold`]).
pub(super) const SAMPLE_EVERY: usize = 64;

/// The sampled position in run `g` of [`SAMPLE_EVERY`] elements (a multiplicative hash).
#[inline]
pub(super) fn sample_offset(g: usize) -> usize {
    ((g as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SAMPLE_EVERY
}

/// One work item's scan: max key, first NaN/Inf, block totals, sampled keys, and (with a
/// [`Window`]) the count of keys above it and the keys inside it.
type ItemScan = (u64, Option<(usize, f64)>, [f64; 2], Vec<u64>, Gathered);

pub(super) fn scan(parts: &[View], items: &[(usize, usize, usize)]) -> Scan {
    scan_with::<true>(parts, items, None).0
}

/// [`scan`] that also runs [`window_threshold`]'s pass for `w` (one pass instead of two), without
/// the sample (the caller has it from an earlier pass): the scan and each item's window result.
pub(super) fn scan_gather(parts: &[View], items: &[(usize, usize, usize)], w: Window) -> (Scan, Vec<Gathered>) {
    let (sc, g) = scan_with::<false>(parts, items, Some(w));
    (sc, g.expect("gathered"))
}

fn scan_with<const SAMPLE: bool>(
    parts: &[View],
    items: &[(usize, usize, usize)],
    w: Option<Window>,
) -> (Scan, Option<Vec<Gathered>>) {
    let per_item: Vec<ItemScan> =
        items.par_iter().map(|&(p, lo, hi)| vectorized!(scan_item::<SAMPLE>(parts[p], lo, hi, w))).collect();
    let mut out = Scan { max: vec![0; parts.len()], bad: vec![None; parts.len()], sums: vec![], sample: vec![] };
    out.sample.reserve(per_item.iter().map(|x| x.3.len()).sum());
    let mut gathered = Vec::with_capacity(if w.is_some() { items.len() } else { 0 });
    for (&(p, _, _), (mx, bad, sums, sample, g)) in items.iter().zip(per_item) {
        // Non-negative floats order like their bits (a NaN only matters through `bad`).
        out.max[p] = out.max[p].max(mx);
        if let Some(b) = bad {
            if out.bad[p].is_none_or(|o| b.0 < o.0) {
                out.bad[p] = Some(b);
            }
        }
        out.sums.push(sums);
        out.sample.extend(sample);
        if w.is_some() {
            gathered.push(g);
        }
    }
    (out, w.map(|_| gathered))
}

/// [`scan`] of elements `lo..hi` of one part (sampling when `SAMPLE`, gathering `w`).
#[inline(always)]
fn scan_item<const SAMPLE: bool>(v: View, lo: usize, hi: usize, w: Option<Window>) -> ItemScan {
    let mut mx = 0f64;
    let mut bad = None;
    let mut sample = Vec::with_capacity(if SAMPLE { (hi - lo) / SAMPLE_EVERY + 1 } else { 0 });
    let mut gathered: Gathered = (0, Vec::new());
    let (mut l1, mut l2) = (emp::Lanes::default(), emp::Lanes::default());
    let (mut buf, mut s) = ([0f64; BLOCK], v.stream(lo, hi));
    while let Some((i0, b)) = s.decode_next(&mut buf) {
        let k = b.len();
        // |s|, s² and max, lane by lane (so that it vectorises); the lanes are the blocked sums'
        // (a block of the sum starts at lane 0). A NaN or Inf makes Σ|s| NaN or Inf, which is
        // checked per block, so the loop carries no finiteness test of its own.
        let mut mxl = [mx; 8];
        let body = k - k % 8;
        for c in b[..body].chunks_exact(8) {
            let (mut x, mut y) = ([0f64; 8], [0f64; 8]);
            for l in 0..8 {
                let a = c[l].abs();
                mxl[l] = if a > mxl[l] { a } else { mxl[l] };
                x[l] = a;
                y[l] = a * a;
            }
            l1.add8(&x);
            l2.add8(&y);
        }
        for &v in &b[body..k] {
            let a = v.abs();
            mxl[0] = if a > mxl[0] { a } else { mxl[0] };
            l1.add(&[a]);
            l2.add(&[a * a]);
        }
        mx = mxl.iter().fold(mx, |m, &a| if a > m { a } else { m });
        if bad.is_none() && !(l1.partial_finite() && mx.is_finite()) {
            // A NaN/Inf here, or finite scores whose sum overflowed (then no element is bad).
            bad = b.iter().position(|x| !x.is_finite()).map(|j| (i0 + j, b[j]));
        }
        if let Some(w) = w {
            // The block is still in L1: the window pass's work on it costs no memory traffic.
            if gathered.1.len() <= w.cap {
                window_block(b, w, &mut gathered);
            }
        }
        if SAMPLE {
            let mut g = i0 / SAMPLE_EVERY;
            while g * SAMPLE_EVERY < i0 + k {
                let j = g * SAMPLE_EVERY + sample_offset(g);
                if j >= i0 && j < i0 + k {
                    sample.push(key(b[j - i0]));
                }
                g += 1;
            }
        }
    }
    (mx.to_bits(), bad, [l1.total(), l2.total()], sample, gathered)
}

/// The level-1 radix histogram of all keys (digit: bits 47..62) and the OR of all keys, for
/// [`threshold`] when the sample's window missed.
fn hist_scan(parts: &[View], items: &[(usize, usize, usize)]) -> (u64, Vec<u64>) {
    let accs = par_accumulate(
        items.len(),
        || (0u64, vec![0u64; 1 << 16]),
        |(or, hist), ci| {
            let (p, lo, hi) = items[ci];
            parts[p].blocks(lo, hi, |_, b| {
                for &v in b {
                    let k = key(v);
                    *or |= k;
                    hist[(k >> TOP_SHIFT) as usize & 0xFFFF] += 1;
                }
            });
        },
    );
    let (mut or, mut hist) = (0u64, vec![0u64; 1 << 16]);
    for (o, h) in accs {
        or |= o;
        for (x, y) in hist.iter_mut().zip(&h) {
            *x += y;
        }
    }
    (or, hist)
}

/// Per work item (one block of the blocked sum, see `emp::SUM_BLOCK`): the block totals of
/// a = |s| / d and a², and of b = |s| / d_p and b² with d_p = `part_d` of the item's part (zeros
/// when `part_d` is None or d_p is 0). Items run in parallel; the totals come in item order.
pub(super) fn block_moments(
    parts: &[View],
    items: &[(usize, usize, usize)],
    d: f64,
    part_d: Option<&[f64]>,
) -> Vec<[f64; 4]> {
    items
        .par_iter()
        .map(|&(p, lo, hi)| {
            let dp = part_d.map_or(0.0, |pd| pd[p]);
            let mut l = [emp::Lanes::default(); 4];
            let mut q = [[0f64; BLOCK]; 4];
            parts[p].blocks(lo, hi, |_, b| {
                let k = b.len();
                let [q0, q1, q2, q3] = &mut q;
                for (((x, y), &v), (u, w)) in
                    q0[..k].iter_mut().zip(q1[..k].iter_mut()).zip(b).zip(q2[..k].iter_mut().zip(q3[..k].iter_mut()))
                {
                    let a = v.abs() / d;
                    (*x, *y) = (a, a * a);
                    let c = v.abs() / dp;
                    (*u, *w) = (c, c * c);
                }
                let used = if dp > 0.0 { 4 } else { 2 };
                for (lanes, q) in l.iter_mut().zip(q.iter()).take(used) {
                    lanes.add(&q[..k]);
                }
            });
            [l[0].total(), l[1].total(), l[2].total(), l[3].total()]
        })
        .collect()
}

/// Per work item: the block total of the scores as given (not |s|: an override may be negative).
pub(super) fn block_sums(parts: &[View], items: &[(usize, usize, usize)]) -> Vec<f64> {
    items.par_iter().map(|&(p, lo, hi)| vectorized!(sum_item(parts[p], lo, hi))).collect()
}

/// The blocked sum of elements `lo..hi` of one part, as given.
#[inline(always)]
fn sum_item(v: View, lo: usize, hi: usize) -> f64 {
    let mut l = emp::Lanes::default();
    let (mut buf, mut s) = ([0f64; BLOCK], v.stream(lo, hi));
    while let Some((_, b)) = s.decode_next(&mut buf) {
        l.add(b);
    }
    l.total()
}

/// Σ a and Σ a² of a = |s| / d over all of `parts` (one group; blocked sums), from the scan's
/// plain sums when d = 1.
pub(super) fn group_moments(parts: &[View], items: &[(usize, usize, usize)], sc: &Scan, d: f64) -> (f64, f64) {
    let fold = |ts: &mut dyn Iterator<Item = (f64, f64)>| ts.fold((-0.0, -0.0), |(s1, s2), t| (s1 + t.0, s2 + t.1));
    if d == 1.0 {
        return fold(&mut sc.sums.iter().map(|t| (t[0], t[1])));
    }
    fold(&mut block_moments(parts, items, d, None).iter().map(|t| (t[0], t[1])))
}

/// Per part: (Σ a, Σ a²).
pub(super) type PartSums = Vec<(f64, f64)>;

/// The global moments (scores divided by d = `emp::moment_scale` of the global max `m`, one
/// blocked sum over all parts) and, per part, its own moments (divided by the moment scale of
/// its own max). From the scan's plain sums when every divisor is 1, else in one parallel pass.
pub(super) fn moments_global(
    parts: &[View],
    items: &[(usize, usize, usize)],
    sc: &Scan,
    m: f64,
) -> ((f64, f64), PartSums) {
    let d = emp::moment_scale(m);
    let part_d: Vec<f64> =
        sc.max.iter().map(|&mp| if mp == 0 { 0.0 } else { emp::moment_scale(f64::from_bits(mp)) }).collect();
    let blocks: Vec<[f64; 4]> = if d == 1.0 && part_d.iter().all(|&x| x == 1.0 || x == 0.0) {
        sc.sums.iter().map(|t| [t[0], t[1], t[0], t[1]]).collect()
    } else {
        block_moments(parts, items, d, Some(&part_d))
    };
    let mut per: PartSums = vec![(-0.0, -0.0); parts.len()];
    let (mut s1, mut s2) = (-0.0f64, -0.0f64);
    for (&(p, _, _), t) in items.iter().zip(&blocks) {
        s1 += t[0];
        s2 += t[1];
        per[p].0 += t[2];
        per[p].1 += t[3];
    }
    // A part whose max is 0 has no moments.
    for (q, &mp) in per.iter_mut().zip(&sc.max) {
        if mp == 0 {
            *q = (0.0, 0.0);
        }
    }
    ((s1, s2), per)
}

/// The bucket holding rank `r` (0 = largest) and the rank inside it.
pub(super) fn pick(hist: &[u64], mut r: u64) -> (u64, u64) {
    for b in (0..hist.len()).rev() {
        if r < hist[b] {
            return (b as u64, r);
        }
        r -= hist[b];
    }
    unreachable!("rank beyond the histogram")
}

/// A bucket of at most this many keys (or 1/64 of all) is gathered and selected in memory; small
/// in tests, so that the radix levels run too.
pub(super) const GATHER_MIN: usize = if cfg!(test) { 8 } else { 1 << 16 };

/// The threshold of a global cut: the `kept`-th largest key, how many keys equal to it are kept
/// (the first ones in order: lower index wins), how many there are, and (when known) how many
/// there are in each work item.
pub(super) struct Threshold {
    pub(super) key: u64,
    pub(super) ties: usize,
    pub(super) eq: usize,
    pub(super) eq_per_item: Option<Vec<usize>>,
}

/// The `kept`-th largest key of `parts` (1 ≤ kept ≤ N) as a [`Threshold`]: from the scan's
/// sample ([`window_threshold`]: one more pass), or, when the sample's window misses it, by radix
/// select ([`radix_threshold`]: two or more passes). Both give the same threshold.
pub(super) fn threshold(parts: &[View], items: &[(usize, usize, usize)], sc: &Scan, kept: usize) -> Threshold {
    window_threshold(parts, items, &sc.sample, kept).unwrap_or_else(|| radix_threshold(parts, items, kept))
}

/// Radix select over the keys of `parts` for the `kept`-th largest key (1 ≤ kept ≤ N): a pass
/// for the level-1 histogram, then digits narrow the bucket holding it until it holds at most
/// `gather_max(N)` keys; those are then gathered in one pass and selected in memory.
pub(super) fn radix_threshold(parts: &[View], items: &[(usize, usize, usize)], kept: usize) -> Threshold {
    let n: usize = parts.iter().map(|v| v.n()).sum();
    let gather_max = (n / 64).max(GATHER_MIN) as u64;
    let (or, hist) = hist_scan(parts, items);
    let low = or.trailing_zeros();
    let (mut prefix, mut r) = pick(&hist, kept as u64 - 1);
    let mut eq = hist[prefix as usize];
    let mut shift = TOP_SHIFT;
    while shift > low {
        if eq <= gather_max {
            return gather_select(parts, items, prefix, shift, r as usize);
        }
        let w = (shift - low).min(MAX_DIGIT);
        let next = shift - w;
        let dmask = (1u64 << w) - 1;
        let accs = par_accumulate(
            items.len(),
            || vec![0u64; 1 << w],
            |h, ci| {
                let (p, lo, hi) = items[ci];
                parts[p].blocks(lo, hi, |_, b| {
                    for &v in b {
                        let k = key(v);
                        if k >> shift == prefix {
                            h[((k >> next) & dmask) as usize] += 1;
                        }
                    }
                });
            },
        );
        let mut hist = vec![0u64; 1 << w];
        for a in accs {
            for (h, x) in hist.iter_mut().zip(&a) {
                *h += x;
            }
        }
        let (b, rr) = pick(&hist, r);
        eq = hist[b as usize];
        prefix = (prefix << w) | b;
        r = rr;
        shift = next;
    }
    // Every key has zeros below `low`, so the bucket holds only equal keys.
    Threshold { key: prefix << shift, ties: r as usize + 1, eq: eq as usize, eq_per_item: None }
}

/// The keys with `k >> shift == prefix`, gathered per item in parallel; the one of rank `r`
/// among them (0 = largest) is the threshold.
fn gather_select(parts: &[View], items: &[(usize, usize, usize)], prefix: u64, shift: u32, r: usize) -> Threshold {
    let per_item: Vec<Vec<u64>> = items
        .par_iter()
        .map(|&(p, lo, hi)| {
            let mut g = Vec::new();
            parts[p].blocks(lo, hi, |_, b| g.extend(b.iter().map(|&v| key(v)).filter(|k| k >> shift == prefix)));
            g
        })
        .collect();
    let mut all: Vec<u64> = per_item.concat();
    let (above, &mut t, _) = all.select_nth_unstable_by(r, |a, b| b.cmp(a));
    let above = above.iter().filter(|&&k| k > t).count();
    drop(all);
    let eq_per_item: Vec<usize> = per_item.iter().map(|g| g.iter().filter(|&&k| k == t).count()).collect();
    Threshold { key: t, ties: r - above + 1, eq: eq_per_item.iter().sum(), eq_per_item: Some(eq_per_item) }
}

/// (n_eff, kept, all_zero) of one group, exactly as `emp::select` / `emp::select_ratio` decide.
pub(super) fn decide(n: usize, s1: f64, s2: f64, opts: &WeightOptions) -> (f64, usize, bool) {
    let ne = emp::n_eff_from_moments(n, s1, s2);
    match opts.fixed_ratio {
        Some(r) => (ne.unwrap_or(n as f64), (n - ((r * n as f64).round() as usize).min(n)).max(1.min(n)), s1 == 0.0),
        None => match ne {
            None => (n as f64, n, true),
            Some(ne) => (ne, emp::keep_count(n, ne, opts.beta), false),
        },
    }
}

/// `emp::moments_scaled` of an in-memory group.
pub(super) fn moments_buf(s: &[f64]) -> (f64, f64) {
    emp::moments_scaled(s).unwrap_or((f64::NAN, f64::NAN))
}

/// Per-unit EMP (or one group for the whole tensor) → keep bits, groups, Σ N_eff, all-zero groups.
/// The bool is false when a score was NaN/Inf (the result is then meaningless).
pub(super) fn unit_mask(
    v: View,
    shape: &[usize],
    axis: Option<usize>,
    opts: &WeightOptions,
) -> ((Vec<u64>, usize, f64, usize), bool) {
    let n = v.n();
    let (outer, dim, inner) = match axis {
        // An empty tensor is one (empty) group: no loop over a huge empty axis.
        Some(a) if n > 0 => (shape[..a].iter().product(), shape[a], shape[a + 1..].iter().product()),
        _ if n > BUFFER_GROUP_MAX => {
            return match first_non_finite(v, 0, n) {
                None => (stream_group(v, opts), true),
                Some(_) => ((Vec::new(), 0, 0.0, 0), false),
            }
        }
        _ => (1, 1, n),
    };
    let mut finite = true;
    let mut mask = new_mask(n, false);
    let len: usize = outer * inner;
    let ub = (UNIT_BLOCK / len.max(1)).clamp(1, dim);
    let mut buf = vec![0f64; ub * len];
    let mut run = vec![0f64; if outer > 1 { ub * inner } else { 0 }];
    let mut sel: Vec<u64> = Vec::with_capacity(len);
    let (mut ne, mut groups, mut zero_groups) = (0.0f64, 0usize, 0usize);
    let mut u0 = 0;
    while u0 < dim {
        let nb = ub.min(dim - u0);
        // Gather units u0..u0+nb: unit b's elements, in unit order, at buf[b·len..].
        if outer == 1 {
            v.fill(u0 * inner, &mut buf[..nb * inner]);
        } else {
            for o in 0..outer {
                let run = &mut run[..nb * inner];
                v.fill((o * dim + u0) * inner, run);
                if inner == 1 {
                    for (b, &x) in run.iter().enumerate() {
                        buf[b * len + o] = x;
                    }
                } else {
                    for (b, r) in run.chunks_exact(inner).enumerate() {
                        buf[b * len + o * inner..b * len + (o + 1) * inner].copy_from_slice(r);
                    }
                }
            }
        }
        let gathered = &buf[..nb * len];
        if !gathered.iter().all(|x| x.is_finite()) {
            finite = false;
            break;
        }
        for b in 0..nb {
            let u = u0 + b;
            let us = &buf[b * len..(b + 1) * len];
            let (s1, s2) = moments_buf(us);
            let (d_ne, kept, all_zero) = decide(len, s1, s2, opts);
            ne += d_ne;
            groups += 1;
            zero_groups += all_zero as usize;
            // Keep the `kept` largest |s|, ties: lower index in the unit wins (= emp::top_k).
            let (thr, mut ties) = if kept >= len {
                (0, usize::MAX)
            } else if kept == 0 {
                (u64::MAX, 0)
            } else {
                sel.clear();
                sel.extend(us.iter().map(|&x| key(x)));
                let idx = len - kept;
                let (_, t, rest) = sel.select_nth_unstable(idx);
                let t = *t;
                let above = rest.iter().filter(|&&k| k > t).count();
                (t, kept - above)
            };
            let mut j = 0;
            for o in 0..outer {
                let base = (o * dim + u) * inner;
                for i in 0..inner {
                    let k = key(us[j]);
                    j += 1;
                    if k > thr
                        || (k == thr && ties > 0 && {
                            ties -= 1;
                            true
                        })
                    {
                        set_bit(&mut mask, base + i);
                    }
                }
            }
        }
        u0 += nb;
    }
    ((mask, groups, ne, zero_groups), finite)
}

/// One EMP group over a whole (large) tensor, streaming: (keep bits, 1, N_eff, all_zero).
pub(super) fn stream_group(v: View, opts: &WeightOptions) -> (Vec<u64>, usize, f64, usize) {
    let parts = [v];
    let n = v.n();
    let items = chunks(&parts);
    let sc = scan(&parts, &items);
    let m = f64::from_bits(sc.max[0]);
    let (s1, s2) = if m == 0.0 { (0.0, 0.0) } else { group_moments(&parts, &items, &sc, emp::moment_scale(m)) };
    let (ne, kept, all_zero) = decide(n, s1, s2, opts);
    let mask = if kept >= n {
        new_mask(n, true)
    } else if kept == 0 {
        new_mask(n, false)
    } else {
        let th = threshold(&parts, &items, &sc, kept);
        let budgets = tie_budgets(&parts, &items, &th);
        let marked = mark_items(&parts, &items, (&th, &budgets), None, &[]);
        part_masks(1, &items, marked).pop().expect("one part")
    };
    (mask, 1, ne, all_zero as usize)
}
