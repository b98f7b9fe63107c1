//! Typed views of ONNX tensors and write-back in the tensor's original encoding.
//!
//! A weight may be stored in `raw_data` (little-endian bytes) or in a typed repeated field
//! (`float_data`, `int32_data` for 16-bit floats and small ints, `int64_data`, `double_data`,
//! `uint64_data`). Every function here keeps whichever encoding the tensor had.

use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use onnx_protobuf::TensorProto;
use rayon::prelude::*;

pub mod dt {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const UINT16: i32 = 4;
    pub const INT16: i32 = 5;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const STRING: i32 = 8;
    pub const BOOL: i32 = 9;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
    pub const UINT32: i32 = 12;
    pub const UINT64: i32 = 13;
    pub const BFLOAT16: i32 = 16;
}

/// Largest element count we accept for one tensor (guards allocations sized by a field).
pub const MAX_ELEMS: u64 = 1 << 36;

pub fn dtype_name(t: i32) -> &'static str {
    match t {
        dt::FLOAT => "float32",
        dt::UINT8 => "uint8",
        dt::INT8 => "int8",
        dt::UINT16 => "uint16",
        dt::INT16 => "int16",
        dt::INT32 => "int32",
        dt::INT64 => "int64",
        dt::STRING => "string",
        dt::BOOL => "bool",
        dt::FLOAT16 => "float16",
        dt::DOUBLE => "float64",
        dt::UINT32 => "uint32",
        dt::UINT64 => "uint64",
        dt::BFLOAT16 => "bfloat16",
        _ => "unsupported",
    }
}

/// Byte size of one element for fixed-size types we understand.
pub fn elem_size(t: i32) -> Option<usize> {
    Some(match t {
        dt::UINT8 | dt::INT8 | dt::BOOL => 1,
        dt::UINT16 | dt::INT16 | dt::FLOAT16 | dt::BFLOAT16 => 2,
        dt::FLOAT | dt::INT32 | dt::UINT32 => 4,
        dt::INT64 | dt::DOUBLE | dt::UINT64 => 8,
        _ => return None,
    })
}

pub fn is_float(t: i32) -> bool {
    matches!(t, dt::FLOAT | dt::FLOAT16 | dt::BFLOAT16 | dt::DOUBLE)
}

pub fn tname(t: &TensorProto) -> &str {
    if t.name.is_empty() {
        "<unnamed tensor>"
    } else {
        &t.name
    }
}

/// Shape as usize, rejecting negative dims and absurd element counts.
///
/// The bound applies to the product of the non-zero dims too, so a zero-sized tensor cannot carry
/// a dimension of 2^62 into loops that run over one axis (`[0, 2^62]` is refused).
pub fn shape(t: &TensorProto) -> Result<Vec<usize>> {
    let mut n: u64 = 1;
    let mut out = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            bail!("tensor '{}': negative dimension {d} in dims {:?}", tname(t), t.dims);
        }
        if d > 0 {
            n = n
                .checked_mul(d as u64)
                .filter(|&n| n <= MAX_ELEMS)
                .with_context(|| format!("tensor '{}': dims {:?} describe too many elements", tname(t), t.dims))?;
        }
        out.push(d as usize);
    }
    Ok(out)
}

pub fn numel(t: &TensorProto) -> Result<usize> {
    Ok(shape(t)?.iter().product())
}

/// Where the elements of a tensor live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    Raw(usize),
    Float,
    Int32,
    Int64,
    Double,
    Uint64,
    String,
}

/// Find and validate the storage of a tensor: its length must match its dims.
pub fn storage(t: &TensorProto) -> Result<Storage> {
    let n = numel(t)?;
    let name = tname(t);
    if t.data_location.value() == 1 || !t.external_data.is_empty() {
        bail!("tensor '{name}': external data was not resolved");
    }
    if t.data_type == dt::STRING {
        if t.string_data.len() != n {
            bail!("tensor '{name}': {} strings for {n} elements", t.string_data.len());
        }
        return Ok(Storage::String);
    }
    let es =
        elem_size(t.data_type).with_context(|| format!("tensor '{name}': unsupported data type {}", t.data_type))?;
    if !t.raw_data.is_empty() || n == 0 {
        if t.raw_data.len() != n * es {
            bail!(
                "tensor '{name}': raw_data has {} bytes but dims {:?} of {} need {}",
                t.raw_data.len(),
                t.dims,
                dtype_name(t.data_type),
                n * es
            );
        }
        return Ok(Storage::Raw(es));
    }
    let (s, len) = match t.data_type {
        dt::FLOAT => (Storage::Float, t.float_data.len()),
        dt::DOUBLE => (Storage::Double, t.double_data.len()),
        dt::INT64 => (Storage::Int64, t.int64_data.len()),
        dt::UINT32 | dt::UINT64 => (Storage::Uint64, t.uint64_data.len()),
        _ => (Storage::Int32, t.int32_data.len()),
    };
    if len != n {
        bail!("tensor '{name}': holds {len} values but dims {:?} need {n}", t.dims);
    }
    Ok(s)
}

/// Read a float tensor (f32, f16, bf16, f64) as f32.
pub fn read_f32(t: &TensorProto) -> Result<Vec<f32>> {
    let name = tname(t);
    if !is_float(t.data_type) {
        bail!("tensor '{name}': expected a float tensor, found {}", dtype_name(t.data_type));
    }
    Ok(match storage(t)? {
        Storage::Raw(_) => match t.data_type {
            dt::FLOAT => t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            dt::FLOAT16 => t.raw_data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            dt::BFLOAT16 => t.raw_data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            _ => t.raw_data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        },
        Storage::Float => t.float_data.clone(),
        Storage::Double => t.double_data.iter().map(|&v| v as f32).collect(),
        Storage::Int32 => match t.data_type {
            dt::FLOAT16 => t.int32_data.iter().map(|&v| f16::from_bits(v as u16).to_f32()).collect(),
            _ => t.int32_data.iter().map(|&v| bf16::from_bits(v as u16).to_f32()).collect(),
        },
        s => bail!("tensor '{name}': float data stored as {s:?}"),
    })
}

/// (elements, non-zero elements) of a float tensor, counted as `read_f32(t)` would see them
/// (f64 values are narrowed to f32 first), without converting the tensor.
pub fn count_nonzero_f32(t: &TensorProto) -> Result<(u64, u64)> {
    let name = tname(t);
    if !is_float(t.data_type) {
        bail!("tensor '{name}': expected a float tensor, found {}", dtype_name(t.data_type));
    }
    let nz = match storage(t)? {
        Storage::Raw(_) => count_nonzero_raw(t.data_type, &t.raw_data, None).0 as usize,
        Storage::Float => t.float_data.iter().filter(|&&v| v != 0.0).count(),
        Storage::Double => t.double_data.iter().filter(|&&v| v as f32 != 0.0).count(),
        Storage::Int32 => t.int32_data.iter().filter(|&&v| (v as u16) << 1 != 0).count(),
        s => bail!("tensor '{name}': float data stored as {s:?}"),
    };
    Ok((numel(t)? as u64, nz as u64))
}

/// Nonzero elements of float data stored raw (f32, f16, bf16, f64 as little-endian bytes), as
/// [`count_nonzero_f32`] counts them (±0 is zero; f64 counts as its f32 value), and in the same
/// pass those of them whose keep bit in `mask` is 1 (bit i of word i/64; without a mask, all):
/// (nonzero, nonzero and kept). In parallel blocks.
pub fn count_nonzero_raw(data_type: i32, bytes: &[u8], mask: Option<&[u64]>) -> (u64, u64) {
    match data_type {
        dt::FLOAT => count_nonzero_es::<4>(
            bytes,
            mask,
            #[inline(always)]
            |c| u32::from_le_bytes(c) << 1 != 0,
        ),
        dt::FLOAT16 | dt::BFLOAT16 => count_nonzero_es::<2>(
            bytes,
            mask,
            #[inline(always)]
            |c| u16::from_le_bytes(c) << 1 != 0,
        ),
        _ => count_nonzero_es::<8>(
            bytes,
            mask,
            #[inline(always)]
            |c| f64::from_le_bytes(c) as f32 != 0.0,
        ),
    }
}

/// [`count_nonzero_raw`] for elements of `N` bytes (a constant, so that the loops vectorise).
fn count_nonzero_es<const N: usize>(
    bytes: &[u8],
    mask: Option<&[u64]>,
    nonzero: impl Fn([u8; N]) -> bool + Sync,
) -> (u64, u64) {
    const BLOCK: usize = 1 << 16;
    let el = |c: &[u8]| -> [u8; N] { c.try_into().expect("N bytes") };
    bytes
        .par_chunks(BLOCK * N)
        .enumerate()
        .map(|(bi, b)| {
            crate::simd::vectorized!(match mask {
                None => {
                    let nz = b.chunks_exact(N).map(|c| nonzero(el(c)) as u64).sum::<u64>();
                    (nz, nz)
                }
                // Per mask word: each element's nonzero flag (0 or 1), and it and-ed with its
                // keep bit.
                Some(m) => {
                    let (mut all, mut kept) = (0u64, 0u64);
                    for (c, &w) in b.chunks(64 * N).zip(&m[bi * BLOCK / 64..]) {
                        for (j, e) in c.chunks_exact(N).enumerate() {
                            let z = nonzero(el(e)) as u64;
                            all += z;
                            kept += z & (w >> j);
                        }
                    }
                    (all, kept)
                }
            })
        })
        .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Read a float tensor as f64 (f64 weights keep their precision).
pub fn read_f64(t: &TensorProto) -> Result<Vec<f64>> {
    if t.data_type == dt::DOUBLE {
        return Ok(match storage(t)? {
            Storage::Raw(_) => t.raw_data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
            _ => t.double_data.clone(),
        });
    }
    let mut out = Vec::with_capacity(numel(t).unwrap_or(0));
    for_each_f64(t, |v| out.push(v))?;
    Ok(out)
}

/// Visit the values of a float tensor in order, as [`read_f64`] returns them (non-f64 values
/// narrowed to f32 first, as [`read_f32`] reads them), without a copy of the tensor.
pub fn for_each_f64(t: &TensorProto, mut f: impl FnMut(f64)) -> Result<()> {
    let name = tname(t);
    if t.data_type == dt::DOUBLE {
        match storage(t)? {
            Storage::Raw(_) => t.raw_data.chunks_exact(8).for_each(|c| f(f64::from_le_bytes(c.try_into().unwrap()))),
            _ => t.double_data.iter().for_each(|&v| f(v)),
        }
        return Ok(());
    }
    if !is_float(t.data_type) {
        bail!("tensor '{name}': expected a float tensor, found {}", dtype_name(t.data_type));
    }
    let mut g = |v: f32| f(f64::from(v));
    match storage(t)? {
        Storage::Raw(_) => match t.data_type {
            dt::FLOAT => t.raw_data.chunks_exact(4).for_each(|c| g(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            dt::FLOAT16 => t.raw_data.chunks_exact(2).for_each(|c| g(f16::from_le_bytes([c[0], c[1]]).to_f32())),
            dt::BFLOAT16 => t.raw_data.chunks_exact(2).for_each(|c| g(bf16::from_le_bytes([c[0], c[1]]).to_f32())),
            _ => t.raw_data.chunks_exact(8).for_each(|c| g(f64::from_le_bytes(c.try_into().unwrap()) as f32)),
        },
        Storage::Float => t.float_data.iter().for_each(|&v| g(v)),
        Storage::Double => t.double_data.iter().for_each(|&v| g(v as f32)),
        Storage::Int32 => match t.data_type {
            dt::FLOAT16 => t.int32_data.iter().for_each(|&v| g(f16::from_bits(v as u16).to_f32())),
            _ => t.int32_data.iter().for_each(|&v| g(bf16::from_bits(v as u16).to_f32())),
        },
        s => bail!("tensor '{name}': float data stored as {s:?}"),
    }
    Ok(())
}

/// Overwrite the values of a float tensor, keeping dtype, dims and encoding.
pub fn write_f64(t: &mut TensorProto, vals: &[f64]) -> Result<()> {
    let n = numel(t)?;
    if vals.len() != n {
        bail!("tensor '{}': writing {} values into {n} elements", tname(t), vals.len());
    }
    let st = storage(t)?;
    match (st, t.data_type) {
        (Storage::Raw(_), dt::FLOAT) => {
            for (c, v) in t.raw_data.chunks_exact_mut(4).zip(vals) {
                c.copy_from_slice(&(*v as f32).to_le_bytes());
            }
        }
        (Storage::Raw(_), dt::FLOAT16) => {
            for (c, v) in t.raw_data.chunks_exact_mut(2).zip(vals) {
                c.copy_from_slice(&f16::from_f64(*v).to_le_bytes());
            }
        }
        (Storage::Raw(_), dt::BFLOAT16) => {
            for (c, v) in t.raw_data.chunks_exact_mut(2).zip(vals) {
                c.copy_from_slice(&bf16::from_f64(*v).to_le_bytes());
            }
        }
        (Storage::Raw(_), dt::DOUBLE) => {
            for (c, v) in t.raw_data.chunks_exact_mut(8).zip(vals) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        (Storage::Float, _) => t.float_data = vals.iter().map(|&v| v as f32).collect(),
        (Storage::Double, _) => t.double_data = vals.to_vec(),
        (Storage::Int32, dt::FLOAT16) => {
            t.int32_data = vals.iter().map(|&v| f16::from_f64(v).to_bits() as i32).collect()
        }
        (Storage::Int32, dt::BFLOAT16) => {
            t.int32_data = vals.iter().map(|&v| bf16::from_f64(v).to_bits() as i32).collect()
        }
        _ => bail!("tensor '{}': not a float tensor ({})", tname(t), dtype_name(t.data_type)),
    }
    Ok(())
}

/// Set the elements whose mask is `true` to zero, in place, keeping the encoding.
pub fn zero_where(t: &mut TensorProto, mask: &[bool]) -> Result<()> {
    let st = storage(t)?;
    if mask.len() != numel(t)? {
        bail!("tensor '{}': mask length mismatch", tname(t));
    }
    match st {
        Storage::Raw(es) => {
            for (c, &m) in t.raw_data.chunks_exact_mut(es).zip(mask) {
                if m {
                    c.fill(0);
                }
            }
        }
        Storage::Float => t.float_data.iter_mut().zip(mask).filter(|p| *p.1).for_each(|p| *p.0 = 0.0),
        Storage::Double => t.double_data.iter_mut().zip(mask).filter(|p| *p.1).for_each(|p| *p.0 = 0.0),
        Storage::Int32 => t.int32_data.iter_mut().zip(mask).filter(|p| *p.1).for_each(|p| *p.0 = 0),
        Storage::Int64 => t.int64_data.iter_mut().zip(mask).filter(|p| *p.1).for_each(|p| *p.0 = 0),
        Storage::Uint64 => t.uint64_data.iter_mut().zip(mask).filter(|p| *p.1).for_each(|p| *p.0 = 0),
        Storage::String => bail!("tensor '{}': cannot zero a string tensor", tname(t)),
    }
    Ok(())
}

/// Read an integer tensor (int64, int32, int16, int8, uint8, ...) as i64.
pub fn read_i64(t: &TensorProto) -> Result<Vec<i64>> {
    let name = tname(t);
    let st = storage(t)?;
    Ok(match (st, t.data_type) {
        (Storage::Raw(_), dt::INT64) => {
            t.raw_data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
        }
        (Storage::Raw(_), dt::INT32) => {
            t.raw_data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect()
        }
        (Storage::Raw(_), dt::UINT64) => {
            t.raw_data.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap()) as i64).collect()
        }
        (Storage::Raw(_), dt::UINT32) => {
            t.raw_data.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64).collect()
        }
        (Storage::Raw(_), dt::INT16) => {
            t.raw_data.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect()
        }
        (Storage::Raw(_), dt::UINT16) => {
            t.raw_data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64).collect()
        }
        (Storage::Raw(_), dt::INT8) => t.raw_data.iter().map(|&b| b as i8 as i64).collect(),
        (Storage::Raw(_), dt::UINT8 | dt::BOOL) => t.raw_data.iter().map(|&b| b as i64).collect(),
        (Storage::Int64, _) => t.int64_data.clone(),
        (Storage::Uint64, _) => t.uint64_data.iter().map(|&v| v as i64).collect(),
        (Storage::Int32, dt::INT32 | dt::INT16 | dt::INT8 | dt::UINT16 | dt::UINT8 | dt::BOOL) => {
            t.int32_data.iter().map(|&v| v as i64).collect()
        }
        _ => bail!("tensor '{name}': expected an integer tensor, found {}", dtype_name(t.data_type)),
    })
}

/// Overwrite an integer tensor (int64, int32 or int8) with new values and dims, keeping encoding
/// (int8 values are narrowed: callers clamp them first).
pub fn write_i64(t: &mut TensorProto, vals: &[i64], dims: &[i64]) -> Result<()> {
    let st = storage(t)?;
    let raw = matches!(st, Storage::Raw(_));
    match t.data_type {
        dt::INT64 if raw => t.raw_data = vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        dt::INT64 => t.int64_data = vals.to_vec(),
        dt::INT32 if raw => t.raw_data = vals.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
        dt::INT32 => t.int32_data = vals.iter().map(|&v| v as i32).collect(),
        dt::INT8 if raw => t.raw_data = vals.iter().map(|&v| v as i8 as u8).collect(),
        dt::INT8 => t.int32_data = vals.iter().map(|&v| v as i8 as i32).collect(),
        _ => bail!("tensor '{}': cannot write integers into {}", tname(t), dtype_name(t.data_type)),
    }
    t.dims = dims.to_vec();
    // An empty raw_data with zero elements must stay valid; a non-empty typed tensor that became
    // raw-less is already handled by the typed branch.
    Ok(())
}

fn gather<T: Clone>(data: &[T], shape: &[usize], axis: usize, keep: &[usize], unit: usize) -> Vec<T> {
    let outer: usize = shape[..axis].iter().product();
    let dim = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product::<usize>() * unit;
    let mut out = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        for &k in keep {
            let s = (o * dim + k) * inner;
            out.extend_from_slice(&data[s..s + inner]);
        }
    }
    out
}

/// [`gather`] into `data` itself when `keep` is strictly ascending (every block then moves to
/// an offset at or before its own), then shrunk: no second buffer, the tail is given back.
fn gather_in_place<T: Copy>(data: &mut Vec<T>, shape: &[usize], axis: usize, keep: &[usize], unit: usize) {
    if !keep.windows(2).all(|w| w[0] < w[1]) {
        *data = gather(data, shape, axis, keep, unit);
        return;
    }
    let outer: usize = shape[..axis].iter().product();
    let dim = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product::<usize>() * unit;
    let mut d = 0;
    for o in 0..outer {
        for &k in keep {
            let s = (o * dim + k) * inner;
            data.copy_within(s..s + inner, d);
            d += inner;
        }
    }
    data.truncate(d);
    data.shrink_to_fit();
}

/// Keep only the given indices (ascending, in range) along `axis`, for any dtype or encoding.
pub fn slice_axis(t: &mut TensorProto, axis: usize, keep: &[usize]) -> Result<()> {
    let sh = shape(t)?;
    let name = tname(t).to_string();
    if axis >= sh.len() {
        bail!("tensor '{name}': axis {axis} out of range for dims {:?}", t.dims);
    }
    if let Some(&k) = keep.iter().find(|&&k| k >= sh[axis]) {
        bail!("tensor '{name}': index {k} out of range on axis {axis} of dims {:?}", t.dims);
    }
    let st = storage(t)?;
    if sh.contains(&0) {
        // No elements: only the dims change (and no loop runs over the other axes).
        t.dims[axis] = keep.len() as i64;
        return Ok(());
    }
    match st {
        Storage::Raw(es) => gather_in_place(&mut t.raw_data, &sh, axis, keep, es),
        Storage::Float => gather_in_place(&mut t.float_data, &sh, axis, keep, 1),
        Storage::Int32 => gather_in_place(&mut t.int32_data, &sh, axis, keep, 1),
        Storage::Int64 => gather_in_place(&mut t.int64_data, &sh, axis, keep, 1),
        Storage::Double => gather_in_place(&mut t.double_data, &sh, axis, keep, 1),
        Storage::Uint64 => gather_in_place(&mut t.uint64_data, &sh, axis, keep, 1),
        Storage::String => t.string_data = gather(&t.string_data, &sh, axis, keep, 1),
    }
    t.dims[axis] = keep.len() as i64;
    Ok(())
}

/// An int64 tensor (for new shape, index and bound constants the rewrite creates).
pub fn new_i64(name: &str, dims: &[i64], vals: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = dt::INT64;
    t.dims = dims.to_vec();
    t.int64_data = vals.to_vec();
    t
}

/// A float32 tensor with raw data (for new constants the rewrite creates).
pub fn new_f32(name: &str, dims: &[i64], vals: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.data_type = dt::FLOAT;
    t.dims = dims.to_vec();
    t.raw_data = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_keeps_encoding() {
        let mut t = TensorProto::new();
        t.data_type = dt::FLOAT;
        t.dims = vec![2, 3];
        t.float_data = vec![0., 1., 2., 3., 4., 5.];
        slice_axis(&mut t, 1, &[0, 2]).unwrap();
        assert_eq!(t.float_data, vec![0., 2., 3., 5.]);
        assert_eq!(t.dims, vec![2, 2]);
        let mut r = new_f32("r", &[2, 3], &[0., 1., 2., 3., 4., 5.]);
        slice_axis(&mut r, 0, &[1]).unwrap();
        assert_eq!(read_f32(&r).unwrap(), vec![3., 4., 5.]);
    }

    /// The in-place gather gives what the copying one gives, for every axis and keep set of
    /// small shapes (ascending: in place; unsorted or repeated: the copying fallback).
    #[test]
    fn gather_in_place_is_gather() {
        let shapes: [&[usize]; 4] = [&[5], &[3, 4], &[2, 3, 4], &[4, 1, 3]];
        for sh in shapes {
            let n: usize = sh.iter().product();
            for unit in [1, 2, 4] {
                let data: Vec<u8> = (0..n * unit).map(|i| i as u8).collect();
                for axis in 0..sh.len() {
                    let d = sh[axis];
                    // every subset of the axis (ascending), plus one reversed and one repeated
                    let mut keeps: Vec<Vec<usize>> =
                        (0..1usize << d).map(|m| (0..d).filter(|i| m >> i & 1 == 1).collect()).collect();
                    keeps.push((0..d).rev().collect());
                    keeps.push(vec![0, 0]);
                    for keep in keeps {
                        let want = gather(&data, sh, axis, &keep, unit);
                        let mut got = data.clone();
                        gather_in_place(&mut got, sh, axis, &keep, unit);
                        assert_eq!(got, want, "shape {sh:?} axis {axis} keep {keep:?} unit {unit}");
                    }
                }
            }
        }
    }

    #[test]
    fn f16_roundtrip_and_zero() {
        let mut t = TensorProto::new();
        t.data_type = dt::FLOAT16;
        t.dims = vec![3];
        t.raw_data = [1.0f32, -2.0, 0.5].iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
        assert_eq!(read_f32(&t).unwrap(), vec![1.0, -2.0, 0.5]);
        zero_where(&mut t, &[false, true, false]).unwrap();
        assert_eq!(read_f32(&t).unwrap(), vec![1.0, 0.0, 0.5]);
    }

    #[test]
    fn count_nonzero_matches_read_f32() {
        let vals = [0.0f64, -0.0, 1.5, -2.0, 1e-300, f64::NAN, 3.0e-8];
        for dtype in [dt::FLOAT, dt::FLOAT16, dt::BFLOAT16, dt::DOUBLE] {
            for typed in [false, true] {
                let mut t = TensorProto::new();
                t.data_type = dtype;
                t.dims = vec![vals.len() as i64];
                match (dtype, typed) {
                    (dt::FLOAT, true) => t.float_data = vec![1.0; vals.len()],
                    (dt::DOUBLE, true) => t.double_data = vec![1.0; vals.len()],
                    (_, true) => t.int32_data = vec![0x3c00; vals.len()],
                    _ => t.raw_data = vec![1; vals.len() * elem_size(dtype).unwrap()],
                }
                write_f64(&mut t, &vals).unwrap();
                let v = read_f32(&t).unwrap();
                let want = (v.len() as u64, v.iter().filter(|x| **x != 0.0).count() as u64);
                assert_eq!(count_nonzero_f32(&t).unwrap(), want, "dtype {dtype} typed {typed}");
            }
        }
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut t = TensorProto::new();
        t.name = "w".into();
        t.data_type = dt::FLOAT;
        t.dims = vec![4];
        t.raw_data = vec![0; 8];
        assert!(read_f32(&t).unwrap_err().to_string().contains("'w'"));
        t.dims = vec![1 << 40, 1 << 40];
        assert!(read_f32(&t).is_err());
        t.dims = vec![-1];
        assert!(read_f32(&t).is_err());
    }
}
