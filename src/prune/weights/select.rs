//! Streaming selection: parallel scans, fixed-order moments, radix threshold, keep bits, per-unit
//! EMP. Bit-identical to the in-memory reference whatever the number of threads.

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

/// First streaming pass over a group made of `parts`: per-part max key and first NaN/Inf,
/// OR of all keys, level-1 histogram.
pub(super) struct Scan {
    pub(super) max: Vec<u64>,
    pub(super) bad: Vec<Option<(usize, f64)>>,
    pub(super) or: u64,
    pub(super) hist: Vec<u64>,
}

pub(super) fn scan(parts: &[View], items: &[(usize, usize, usize)]) -> Scan {
    let init = || Scan { max: vec![0; parts.len()], bad: vec![None; parts.len()], or: 0, hist: vec![0; 1 << 16] };
    let accs = par_accumulate(items.len(), init, |a, ci| {
        let (p, lo, hi) = items[ci];
        let (mut mx, mut or) = (a.max[p], a.or);
        let mut bad = None;
        parts[p].blocks(lo, hi, |i0, b| {
            if bad.is_none() && !b.iter().all(|x| x.is_finite()) {
                let j = b.iter().position(|x| !x.is_finite()).unwrap();
                bad = Some((i0 + j, b[j]));
            }
            for &v in b {
                let k = key(v);
                mx = mx.max(k);
                or |= k;
                a.hist[(k >> TOP_SHIFT) as usize & 0xFFFF] += 1;
            }
        });
        a.max[p] = mx;
        a.or = or;
        if let Some(b) = bad {
            if a.bad[p].is_none_or(|o| b.0 < o.0) {
                a.bad[p] = Some(b);
            }
        }
    });
    let mut out = init();
    for a in accs {
        for p in 0..parts.len() {
            out.max[p] = out.max[p].max(a.max[p]);
            if let Some(b) = a.bad[p] {
                if out.bad[p].is_none_or(|o| b.0 < o.0) {
                    out.bad[p] = Some(b);
                }
            }
        }
        out.or |= a.or;
        for (h, x) in out.hist.iter_mut().zip(&a.hist) {
            *h += x;
        }
    }
    out
}

/// Σ a and Σ a² of a = |s| / m over `parts` in order, as one sequential sum (m > 0).
pub(super) fn moments_seq(parts: &[View], m: f64) -> (f64, f64) {
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut a = [0f64; BLOCK];
    for v in parts {
        v.blocks(0, v.n(), |_, b| {
            let a = &mut a[..b.len()];
            for (x, &y) in a.iter_mut().zip(b) {
                *x = y.abs() / m;
            }
            let (mut r1, mut r2) = (s1, s2);
            for &x in a.iter() {
                r1 += x;
                r2 += x * x;
            }
            (s1, s2) = (r1, r2);
        });
    }
    (s1, s2)
}

/// Per part: (Σ a, Σ a²).
pub(super) type PartSums = Vec<(f64, f64)>;

/// The global moments (scaled by the global max `m`, one sequential sum over all parts) and, per
/// part, its own moments (scaled by its own max) — each sum in the previous version's order. The global sums and the per-part sums run side by side on two threads.
pub(super) fn moments_global(parts: &[View], m: f64, part_max: &[u64]) -> ((f64, f64), PartSums) {
    rayon::join(
        || moments_seq(parts, m),
        || {
            parts
                .par_iter()
                .zip(part_max)
                .map(|(v, &mt)| {
                    let mt = f64::from_bits(mt);
                    let (mut t1, mut t2) = (0.0f64, 0.0f64);
                    let mut a = [0f64; BLOCK];
                    v.blocks(0, v.n(), |_, b| {
                        let a = &mut a[..b.len()];
                        for (x, &y) in a.iter_mut().zip(b) {
                            *x = y.abs() / mt;
                        }
                        // Locals: accumulators captured by the closure would live in memory.
                        let (mut q1, mut q2) = (t1, t2);
                        for &x in a.iter() {
                            q1 += x;
                            q2 += x * x;
                        }
                        (t1, t2) = (q1, q2);
                    });
                    // A part whose max is 0 has no moments (t1, t2 are NaN here: not used).
                    if mt == 0.0 {
                        (0.0, 0.0)
                    } else {
                        (t1, t2)
                    }
                })
                .collect()
        },
    )
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

/// Radix select over the keys of `parts`: the `kept`-th largest key (1 ≤ kept ≤ N) and how many
/// elements equal to it are kept (the first ones in order: lower index wins).
pub(super) fn threshold(parts: &[View], items: &[(usize, usize, usize)], sc: &Scan, kept: usize) -> (u64, usize) {
    let low = sc.or.trailing_zeros();
    let (mut prefix, mut r) = pick(&sc.hist, kept as u64 - 1);
    let mut shift = TOP_SHIFT;
    while shift > low {
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
        prefix = (prefix << w) | b;
        r = rr;
        shift = next;
    }
    // Every key has zeros below `low`, so the bucket holds only equal keys.
    (prefix << shift, r as usize + 1)
}

/// Keep bits of one part given the threshold; `ties` counts down the equal keys still kept.
/// With `retained` = (sum, m): also Σ (kept |s| / m), in order.
pub(super) fn mark(v: View, thr: u64, ties: &mut usize, mut retained: Option<(&mut f64, f64)>) -> Vec<u64> {
    let n = v.n();
    let mut mask = new_mask(n, false);
    let mut t = *ties;
    let mut a = [0f64; BLOCK];
    let thr_v = f64::from_bits(thr);
    let mut keep = [0u64; BLOCK];
    // Blocks start at multiples of BLOCK, so at whole mask words.
    v.blocks(0, n, |i0, b| {
        let k = b.len();
        let keep = &mut keep[..k];
        let mut any_eq = false;
        for (q, &x) in keep.iter_mut().zip(b) {
            let x = x.abs();
            *q = 0u64.wrapping_sub((x > thr_v) as u64);
            any_eq |= x == thr_v;
        }
        if any_eq && t > 0 {
            // Ties at the threshold: the first ones in order are kept.
            for (q, &x) in keep.iter_mut().zip(b) {
                if t > 0 && x.abs() == thr_v {
                    *q = !0;
                    t -= 1;
                }
            }
        }
        for (wi, c) in keep.chunks(64).enumerate() {
            let mut w = 0u64;
            for (j, &q) in c.iter().enumerate() {
                w |= (q & 1) << j;
            }
            mask[i0 / 64 + wi] = w;
        }
        if let Some((sum, m)) = retained.as_mut() {
            let a = &mut a[..k];
            const NEG0: u64 = 1 << 63;
            // x + (−0.0) == x exactly: adding −0.0 for a pruned element is adding nothing.
            for ((q, &x), &sel) in a.iter_mut().zip(b).zip(keep.iter()) {
                *q = f64::from_bits(((x.abs() / *m).to_bits() & sel) | (NEG0 & !sel));
            }
            let mut r = **sum;
            for &q in a.iter() {
                r += q;
            }
            **sum = r;
        }
    });
    *ties = t;
    mask
}

/// `x` if `keep`, else −0.0, without a branch: x + (−0.0) == x exactly, so adding this is the
/// same sum as adding the kept values only.
#[inline(always)]
pub(super) fn select(keep: bool, x: f64) -> f64 {
    let sel = 0u64.wrapping_sub(keep as u64);
    f64::from_bits((x.to_bits() & sel) | (!sel & (1u64 << 63)))
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
    let m = s.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if m == 0.0 {
        return (0.0, 0.0);
    }
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in s {
        let a = v.abs() / m;
        s1 += a;
        s2 += a * a;
    }
    (s1, s2)
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
    let (s1, s2) = if m == 0.0 { (0.0, 0.0) } else { moments_seq(&parts, m) };
    let (ne, kept, all_zero) = decide(n, s1, s2, opts);
    let mask = if kept >= n {
        new_mask(n, true)
    } else if kept == 0 {
        new_mask(n, false)
    } else {
        let (thr, mut ties) = threshold(&parts, &items, &sc, kept);
        mark(v, thr, &mut ties, None)
    };
    (mask, 1, ne, all_zero as usize)
}
