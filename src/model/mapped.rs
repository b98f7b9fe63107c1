//! External data left in its files: read-only mappings of a model's data files, and keep bits
//! applied to mapped tensors as they are written.
//!
//! Contract: [`super::io::load_mapped`] checks every external range exactly as `load` does, then
//! maps the data files instead of reading them; a tensor stored there keeps its `external_data`
//! reference and an empty `raw_data`, and its bytes are [`MappedData::bytes`]. The per-weight pass
//! reads scores from the mapping and returns keep bits ([`Masks`]) instead of zeroing in place;
//! [`super::io::save_mapped`] writes each mapped tensor from the mapping through a small buffer,
//! clearing the elements whose keep bit is 0. So the weights are read from the page cache without
//! a copy and written once, as `cat` does, and memory holds the keep bits only (1 bit per weight).
//!
//! The mapping is private and read-only. A data file truncated by another process while the run
//! holds it makes reads past its new end fault (SIGBUS), as with any mapped reader; replacing it
//! (write to a new file and rename, as onnx-emp and `onnx.save` do) is safe.

use anyhow::{Context, Result};
use onnx_protobuf::TensorProto;
use std::collections::HashMap;
use std::fs::File;

/// A mapped tensor: (data file index, offset, length in bytes). Non-empty ranges never overlap,
/// so this names one tensor (an empty one at the offset where another starts differs by length).
pub type ExtKey = (usize, u64, u64);

/// Keep bits of mapped tensors, applied when written.
pub type Masks = HashMap<ExtKey, Mask>;

/// One mapped tensor's keep bits (bit i of word i/64 = element i kept) and, when the pass that
/// made them also counted them, its nonzero elements as stored and as kept (the parameter
/// counts, so that they need no pass of their own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub bits: Vec<u64>,
    pub nonzero: Option<(u64, u64)>,
}

/// The data files of a model, mapped read-only.
pub struct MappedData {
    maps: Vec<memmap2::Mmap>,
    /// Every external location as written → index in `maps`.
    by_loc: HashMap<String, usize>,
}

impl std::fmt::Debug for MappedData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedData").field("files", &self.maps.len()).finish()
    }
}

impl MappedData {
    pub(super) fn new(maps: Vec<memmap2::Mmap>, by_loc: HashMap<String, usize>) -> Self {
        MappedData { maps, by_loc }
    }

    /// Map a whole data file read-only (an empty file maps to nothing).
    pub(super) fn map_file(f: &File) -> std::io::Result<memmap2::Mmap> {
        // SAFETY: the mapping is read-only and private; the file was checked to be a regular file
        // inside the model's folder. Another process truncating it while mapped is the documented
        // hazard of the module doc.
        let m = unsafe { memmap2::MmapOptions::new().map(f)? };
        #[cfg(unix)]
        {
            // The pass streams through every byte several times: read ahead aggressively.
            let _ = m.advise(memmap2::Advice::WillNeed);
        }
        Ok(m)
    }

    /// The tensor's place in the mapped files, if its data is there (external, not read).
    pub fn locate(&self, t: &TensorProto) -> Option<ExtKey> {
        if t.data_location.value() != 1 || !t.raw_data.is_empty() {
            return None;
        }
        let loc = super::io::ext_field(t, "location")?;
        let file = *self.by_loc.get(loc)?;
        let offset = super::io::ext_field(t, "offset").map_or(Some(0), |v| v.trim().parse::<u64>().ok())?;
        let len = expected_len(t).ok()? as u64;
        Some((file, offset, len))
    }

    /// The bytes of a mapped tensor (ranges were checked on load).
    pub fn bytes(&self, key: ExtKey) -> Result<&[u8]> {
        let m = self.maps.get(key.0).context("no such data file")?;
        let lo = usize::try_from(key.1).context("offset")?;
        let len = usize::try_from(key.2).context("length")?;
        m.get(lo..lo.checked_add(len).context("range")?).context("external range outside its mapped file")
    }

    /// The bytes of `t` when its data is mapped.
    pub fn tensor_bytes(&self, t: &TensorProto) -> Option<Result<&[u8]>> {
        self.locate(t).map(|key| self.bytes(key))
    }
}

/// Bytes the tensor's dims and dtype need.
pub fn expected_len(t: &TensorProto) -> Result<usize> {
    let n = super::tensor::numel(t)?;
    let es = super::tensor::elem_size(t.data_type).context("unsupported data type in external data")?;
    n.checked_mul(es).context("size overflow")
}

/// Elements per buffer when writing through keep bits: a multiple of 64 (whole mask words); for
/// f32, as large as the savers' write buffer (1 MiB), so that a chunk goes to the file directly
/// instead of being copied into that buffer first.
const WRITE_ELEMS: usize = 1 << 18;

/// Write `bytes` (elements of `es` bytes) to `w`, zeroing the elements whose keep bit is 0. Two
/// buffers in a pipeline: while one chunk is written, the next is copied and masked into the other
/// buffer on another thread (the write is the floor: `cat` moves the bytes no faster).
pub fn write_masked(
    w: &mut (impl std::io::Write + Send),
    bytes: &[u8],
    es: usize,
    mask: &[u64],
) -> std::io::Result<()> {
    if mask.len() * 64 * es < bytes.len() {
        return Err(std::io::Error::other("keep bits shorter than the tensor"));
    }
    let step = WRITE_ELEMS * es;
    let chunks: Vec<&[u8]> = bytes.chunks(step).collect();
    let Some(first) = chunks.first() else { return Ok(()) };
    let words = |ci: usize| &mask[ci * WRITE_ELEMS / 64..];
    let mut cur = vec![0u8; first.len()];
    let mut next = vec![0u8; chunks.get(1).map_or(0, |c| c.len())];
    copy_kept(&mut cur, first, es, words(0));
    for ci in 0..chunks.len() {
        let (written, ()) = rayon::join(
            || w.write_all(&cur),
            || {
                if let Some(c) = chunks.get(ci + 1) {
                    next.resize(c.len(), 0);
                    copy_kept(&mut next, c, es, words(ci + 1));
                }
            },
        );
        written?;
        std::mem::swap(&mut cur, &mut next);
    }
    Ok(())
}

/// Copy `src` into `out` (the same length; elements of `es` bytes, element 0 at bit 0 of
/// `words[0]`), zeros for the elements whose keep bit is 0: one pass, vectorised for f32.
pub fn copy_kept(out: &mut [u8], src: &[u8], es: usize, words: &[u64]) {
    debug_assert_eq!(out.len(), src.len());
    if es != 4 {
        out.copy_from_slice(src);
        return clear_unkept(out, es, words);
    }
    crate::simd::vectorized!({
        for ((o, c), &w) in out.chunks_mut(64 * 4).zip(src.chunks(64 * 4)).zip(words) {
            for (j, (y, x)) in o.chunks_exact_mut(4).zip(c.chunks_exact(4)).enumerate() {
                let sel = 0u32.wrapping_sub((w >> j) as u32 & 1);
                let v = u32::from_ne_bytes([x[0], x[1], x[2], x[3]]) & sel;
                y.copy_from_slice(&v.to_ne_bytes());
            }
        }
    })
}

/// Zero, in `b` (elements of `es` bytes, element 0 at bit 0 of `words[0]`), every element whose
/// keep bit is 0.
pub fn clear_unkept(b: &mut [u8], es: usize, words: &[u64]) {
    for (c, &w) in b.chunks_mut(64 * es).zip(words) {
        if w == !0 {
            continue;
        }
        if es == 4 {
            for (j, x) in c.chunks_exact_mut(4).enumerate() {
                let sel = 0u32.wrapping_sub((w >> j) as u32 & 1);
                let v = u32::from_ne_bytes([x[0], x[1], x[2], x[3]]) & sel;
                x.copy_from_slice(&v.to_ne_bytes());
            }
        } else {
            for (j, x) in c.chunks_exact_mut(es).enumerate() {
                if w >> j & 1 == 0 {
                    x.fill(0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_masked_clears_exactly_the_unkept_elements() {
        for es in [2usize, 4, 8] {
            let n = 5 * WRITE_ELEMS / 2 + 37;
            let bytes: Vec<u8> = (0..n * es).map(|i| (i % 251) as u8 | 1).collect();
            let mask: Vec<u64> = (0..n.div_ceil(64)).map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
            let mut out = Vec::new();
            write_masked(&mut out, &bytes, es, &mask).unwrap();
            assert_eq!(out.len(), bytes.len());
            for i in 0..n {
                let kept = mask[i / 64] >> (i % 64) & 1 == 1;
                let (a, b) = (&bytes[i * es..(i + 1) * es], &out[i * es..(i + 1) * es]);
                if kept {
                    assert_eq!(a, b, "es {es} element {i}");
                } else {
                    assert!(b.iter().all(|&x| x == 0), "es {es} element {i}");
                }
            }
        }
    }
}
