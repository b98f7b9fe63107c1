//! Applying a decision: per-tensor accounting and zeroing in the tensor's own encoding, reports.

use super::*;

/// Per-tensor blocked sums (see `emp::SUM_BLOCK`): (kept, Σ s, Σ kept s); the pruned elements
/// are zeroed in the same sweep (block by block, while they are in cache).
/// A mapped tensor (`mapped`: its bytes) is only accounted: its keep bits are applied when it is
/// written.
pub(super) fn account_and_zero(
    c: &Candidate,
    t: &mut TensorProto,
    mapped: Option<&[u8]>,
    opts: &WeightOptions,
    mask: &[u64],
) -> Result<(usize, f64, f64)> {
    const SWEEP: usize = 1 << 16;
    let (mut total, mut kept_mass) = (sum_zero(), sum_zero());
    let n = make_view(c, t, mapped, opts)?.n();
    let kept = mask_count(mask, n);
    let mut sel = [0f64; BLOCK];
    let mut blo = 0;
    while blo < n {
        let bhi = (blo + emp::SUM_BLOCK).min(n);
        let (mut tot, mut km) = (emp::Lanes::default(), emp::Lanes::default());
        let mut lo = blo;
        while lo < bhi {
            let hi = (lo + SWEEP).min(bhi);
            make_view(c, t, mapped, opts)?.blocks(lo, hi, |i0, b| {
                let words = &mask[i0 / 64..];
                let sel = &mut sel[..b.len()];
                for (j, (q, &x)) in sel.iter_mut().zip(b).enumerate() {
                    *q = select(words[j / 64] >> (j % 64) & 1 != 0, x);
                }
                tot.add(b);
                km.add(sel);
            });
            if mapped.is_none() {
                zero_masked(t, mask, lo, hi).with_context(|| format!("zeroing '{}'", tname(t)))?;
            }
            lo = hi;
        }
        total += tot.total();
        kept_mass += km.total();
        blo = bhi;
    }
    Ok((kept, total, kept_mass))
}

/// Set bits among the first `n`.
pub(super) fn mask_count(mask: &[u64], n: usize) -> usize {
    let full = n / 64;
    let mut c: usize = mask[..full].iter().map(|w| w.count_ones() as usize).sum();
    if !n.is_multiple_of(64) {
        c += (mask[full] & ((1u64 << (n % 64)) - 1)).count_ones() as usize;
    }
    c
}

/// Zero the elements `lo..hi` (`lo` a multiple of 64) whose keep bit is clear, in place, keeping
/// the tensor's encoding.
pub(super) fn zero_masked(t: &mut TensorProto, mask: &[u64], lo: usize, hi: usize) -> Result<()> {
    fn zero<T: Copy>(v: &mut [T], z: T, mask: &[u64]) {
        for (c, &w) in v.chunks_mut(64).zip(mask) {
            if w == !0 {
                continue;
            }
            for (j, x) in c.iter_mut().enumerate() {
                if w >> j & 1 == 0 {
                    *x = z;
                }
            }
        }
    }
    debug_assert!(lo.is_multiple_of(64));
    let mask = &mask[lo / 64..];
    match tensor::storage(t)? {
        Storage::Raw(4) => {
            for (c, &w) in t.raw_data[lo * 4..hi * 4].chunks_mut(256).zip(mask) {
                if w == !0 {
                    continue;
                }
                for (j, x) in c.chunks_exact_mut(4).enumerate() {
                    let sel = 0u32.wrapping_sub((w >> j) as u32 & 1);
                    let v = u32::from_le_bytes([x[0], x[1], x[2], x[3]]) & sel;
                    x.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        Storage::Raw(es) => {
            for (i, c) in t.raw_data[lo * es..hi * es].chunks_exact_mut(es).enumerate() {
                if !bit(mask, i) {
                    c.fill(0);
                }
            }
        }
        Storage::Float => zero(&mut t.float_data[lo..hi], 0.0, mask),
        Storage::Double => zero(&mut t.double_data[lo..hi], 0.0, mask),
        Storage::Int32 => zero(&mut t.int32_data[lo..hi], 0, mask),
        Storage::Int64 => zero(&mut t.int64_data[lo..hi], 0, mask),
        Storage::Uint64 => zero(&mut t.uint64_data[lo..hi], 0, mask),
        Storage::String => bail!("tensor '{}': cannot zero a string tensor", tname(t)),
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn report(
    c: &Candidate,
    t: &TensorProto,
    n: usize,
    groups: usize,
    n_eff: f64,
    all_zero_groups: usize,
    acc: (usize, f64, f64),
) -> TensorReport {
    let (kept, total, kept_mass) = acc;
    TensorReport {
        name: c.name.clone(),
        used_by: c.used_by.clone(),
        role: c.role.clone(),
        dtype: tensor::dtype_name(t.data_type).to_string(),
        shape: t.dims.iter().map(|&d| d as usize).collect(),
        groups,
        n,
        n_eff,
        kept,
        sparsity: if n == 0 { 0.0 } else { 1.0 - kept as f64 / n as f64 },
        s_eff: if total > 0.0 { kept_mass / total } else { 1.0 },
        all_zero_groups,
    }
}

/// Mutable references to the candidate tensors, in candidate order.
pub(super) fn tensors_mut<'g>(g: &'g mut GraphProto, cands: &[Candidate]) -> Result<Vec<&'g mut TensorProto>> {
    let GraphProto { initializer, node, .. } = g;
    let mut init: Vec<Option<&mut TensorProto>> = initializer.iter_mut().map(Some).collect();
    let mut consts: Vec<Option<&mut TensorProto>> = node
        .iter_mut()
        .map(|n| n.attribute.iter_mut().find(|a| a.name == "value").and_then(|a| a.t.as_mut()))
        .collect();
    cands
        .iter()
        .map(|c| {
            let slot = match c.wref {
                WeightRef::Init(i) => init.get_mut(i),
                WeightRef::Const(n) => consts.get_mut(n),
            };
            slot.and_then(Option::take).with_context(|| format!("weight '{}' vanished", c.name))
        })
        .collect()
}
