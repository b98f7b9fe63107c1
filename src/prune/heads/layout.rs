//! Where the head index lives in a tensor, and how it moves through reshapes and transposes.
//!
//! Along axis `axis` of a tensor, index i decomposes as i = (o·count + h)·inner + r with h the
//! head (or, for a fused Q/K/V tensor, the part), r ∈ [0, inner) and o ∈ [0, outer). A reshape
//! does not move data in memory, so the head index is a digit of the flat offset with stride
//! `inner · stride(axis)`; finding the output axis that holds that digit is exact arithmetic on
//! the concrete shapes, whatever the reshape (split, merge into the batch, ...).

/// The head (or part) digit of an axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Factor {
    pub axis: usize,
    pub inner: usize,
    pub count: usize,
}

pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1].saturating_mul(shape[i + 1]);
    }
    s
}

/// Is `f` a valid digit of axis `f.axis` of `shape`?
pub fn fits(shape: &[usize], f: Factor) -> bool {
    let block = f.inner.saturating_mul(f.count);
    f.axis < shape.len() && block > 0 && shape[f.axis].is_multiple_of(block)
}

/// The same digit after a data-order-preserving reshape from `ins` to `outs`; `None` when the
/// heads end up spread over two axes or misaligned.
pub fn map_flat(ins: &[usize], outs: &[usize], f: Factor) -> Option<Factor> {
    if !fits(ins, f) || ins.iter().product::<usize>() != outs.iter().product::<usize>() {
        return None;
    }
    let unit = f.inner * strides(ins)[f.axis];
    let span = unit * f.count;
    let so = strides(outs);
    for b in 0..outs.len() {
        if outs[b] > 1 && so[b] <= unit && unit < so[b] * outs[b] {
            if !unit.is_multiple_of(so[b]) || !(so[b] * outs[b]).is_multiple_of(span) {
                return None;
            }
            return Some(Factor { axis: b, inner: unit / so[b], count: f.count });
        }
    }
    None
}

/// The digit after `Transpose(perm)`.
pub fn map_perm(perm: &[usize], f: Factor) -> Option<Factor> {
    perm.iter().position(|&p| p == f.axis).map(|axis| Factor { axis, ..f })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_merge() {
        // [B, S, H·D] → [B, S, H, D]: the head digit moves to its own axis.
        let f = Factor { axis: 2, inner: 8, count: 4 };
        assert_eq!(map_flat(&[3, 5, 32], &[3, 5, 4, 8], f), Some(Factor { axis: 2, inner: 1, count: 4 }));
        // [S, B, H·D] → [S, B·H, D]: heads merged into the batch axis, innermost.
        assert_eq!(
            map_flat(&[65, 3, 128], &[65, 12, 32], Factor { axis: 2, inner: 32, count: 4 }),
            Some(Factor { axis: 1, inner: 1, count: 4 })
        );
        // [B, H, S, D] → [B, H·S·D]: the heads are the outer digit of the merged axis.
        assert_eq!(
            map_flat(&[3, 4, 5, 8], &[3, 160], Factor { axis: 1, inner: 1, count: 4 }),
            Some(Factor { axis: 1, inner: 40, count: 4 })
        );
        // Splitting H·D = 32 as [2, 16] cuts the heads in two axes.
        assert_eq!(map_flat(&[3, 32], &[3, 2, 16], Factor { axis: 1, inner: 8, count: 4 }), None);
        // Fused [.., 3·H·D] → [.., 3, H·D]: the part digit gets its own axis.
        let part = Factor { axis: 1, inner: 128, count: 3 };
        assert_eq!(map_flat(&[7, 384], &[7, 3, 128], part), Some(Factor { axis: 1, inner: 1, count: 3 }));
        assert_eq!(
            map_flat(&[7, 384], &[7, 3, 128], Factor { axis: 1, inner: 32, count: 4 }),
            Some(Factor { axis: 2, inner: 32, count: 4 })
        );
    }
}
