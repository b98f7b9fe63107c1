//! Input data read from `.npy` / `.npz` files, converted to the element type the model declares
//! (lossless only: a value that does not fit is an error, never a wrapped number).

use super::InputData;
use crate::model::tensor::{dt, dtype_name};
use anyhow::{bail, Context, Result};
use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};
use ndarray_npy::{NpzReader, ReadNpyExt, ReadableElement, ViewNpyExt};
use std::io::Cursor;
use std::path::Path;

/// `$m!(element type, FileArray variant)` for every element type a file may hold, in the order
/// readers try them.
macro_rules! each_file_type {
    ($m:ident) => {
        $m!(f32, F32);
        $m!(f64, F64);
        $m!(i64, I64);
        $m!(i32, I32);
        $m!(i16, I16);
        $m!(i8, I8);
        $m!(u8, U8);
        $m!(u16, U16);
        $m!(u32, U32);
        $m!(bool, Bool);
        $m!(Half, F16);
    };
}

/// A float16 `.npy` element (`<f2`, `>f2`): ndarray-npy reads no half type.
#[derive(Clone, Copy, Default)]
pub(super) struct Half(half::f16);

impl ReadableElement for Half {
    fn read_to_end_exact_vec<R: std::io::Read>(
        mut reader: R,
        type_desc: &py_literal::Value,
        len: usize,
    ) -> std::result::Result<Vec<Self>, ndarray_npy::ReadDataError> {
        let big = match type_desc {
            py_literal::Value::String(s) if s == "<f2" || (s == "=f2" && cfg!(target_endian = "little")) => false,
            py_literal::Value::String(s) if s == ">f2" || s == "=f2" => true,
            other => return Err(ndarray_npy::ReadDataError::WrongDescriptor(other.clone())),
        };
        let mut bytes = vec![0u8; len.checked_mul(2).ok_or(ndarray_npy::ReadDataError::MissingData)?];
        reader.read_exact(&mut bytes).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ndarray_npy::ReadDataError::MissingData,
            _ => ndarray_npy::ReadDataError::Io(e),
        })?;
        let extra = std::io::copy(&mut reader, &mut std::io::sink())?;
        if extra > 0 {
            return Err(ndarray_npy::ReadDataError::ExtraBytes(extra as usize));
        }
        Ok(bytes
            .chunks_exact(2)
            .map(|b| {
                let v = [b[0], b[1]];
                Half(half::f16::from_bits(if big { u16::from_be_bytes(v) } else { u16::from_le_bytes(v) }))
            })
            .collect())
    }
}

/// Any array we can read from `.npy`.
pub(super) enum FileArray {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    I64(ArrayD<i64>),
    I32(ArrayD<i32>),
    I16(ArrayD<i16>),
    I8(ArrayD<i8>),
    U8(ArrayD<u8>),
    U16(ArrayD<u16>),
    U32(ArrayD<u32>),
    Bool(ArrayD<bool>),
    F16(ArrayD<Half>),
}

impl FileArray {
    pub(super) fn shape(&self) -> &[usize] {
        match self {
            FileArray::F32(a) => a.shape(),
            FileArray::F64(a) => a.shape(),
            FileArray::I64(a) => a.shape(),
            FileArray::I32(a) => a.shape(),
            FileArray::I16(a) => a.shape(),
            FileArray::I8(a) => a.shape(),
            FileArray::U8(a) => a.shape(),
            FileArray::U16(a) => a.shape(),
            FileArray::U32(a) => a.shape(),
            FileArray::Bool(a) => a.shape(),
            FileArray::F16(a) => a.shape(),
        }
    }
    pub(super) fn dtype(&self) -> &'static str {
        match self {
            FileArray::F32(_) => "float32",
            FileArray::F64(_) => "float64",
            FileArray::I64(_) => "int64",
            FileArray::I32(_) => "int32",
            FileArray::I16(_) => "int16",
            FileArray::I8(_) => "int8",
            FileArray::U8(_) => "uint8",
            FileArray::U16(_) => "uint16",
            FileArray::U32(_) => "uint32",
            FileArray::Bool(_) => "bool",
            FileArray::F16(_) => "float16",
        }
    }
    /// The rows `idx` of axis 0 (the whole array for a scalar).
    pub(super) fn pick(self, idx: &[usize]) -> FileArray {
        self.pick_on(0, idx)
    }
    /// The entries `idx` of `axis` (the whole array when it has no such axis).
    pub(super) fn pick_on(self, axis: usize, idx: &[usize]) -> FileArray {
        macro_rules! pick {
            ($($v:ident),*) => {
                match self {
                    $(FileArray::$v(a) if a.ndim() > axis => FileArray::$v(a.select(Axis(axis), idx)),)*
                    other => other,
                }
            };
        }
        pick!(F32, F64, I64, I32, I16, I8, U8, U16, U32, Bool, F16)
    }
    fn is_float(&self) -> bool {
        matches!(self, FileArray::F32(_) | FileArray::F64(_) | FileArray::F16(_))
    }
    /// Values as f64 (exact for every type we read except int64 beyond 2^53).
    fn to_f64(&self) -> ArrayD<f64> {
        match self {
            FileArray::F32(a) => a.mapv(|v| v as f64),
            FileArray::F64(a) => a.clone(),
            FileArray::I64(a) => a.mapv(|v| v as f64),
            FileArray::I32(a) => a.mapv(|v| v as f64),
            FileArray::I16(a) => a.mapv(|v| v as f64),
            FileArray::I8(a) => a.mapv(|v| v as f64),
            FileArray::U8(a) => a.mapv(|v| v as f64),
            FileArray::U16(a) => a.mapv(|v| v as f64),
            FileArray::U32(a) => a.mapv(|v| v as f64),
            FileArray::Bool(a) => a.mapv(|v| if v { 1.0 } else { 0.0 }),
            FileArray::F16(a) => a.mapv(|v| v.0.to_f64()),
        }
    }
    fn to_i64(&self) -> Option<ArrayD<i64>> {
        Some(match self {
            FileArray::I64(a) => a.clone(),
            FileArray::I32(a) => a.mapv(|v| v as i64),
            FileArray::I16(a) => a.mapv(|v| v as i64),
            FileArray::I8(a) => a.mapv(|v| v as i64),
            FileArray::U8(a) => a.mapv(|v| v as i64),
            FileArray::U16(a) => a.mapv(|v| v as i64),
            FileArray::U32(a) => a.mapv(|v| v as i64),
            FileArray::Bool(a) => a.mapv(|v| v as i64),
            FileArray::F32(_) | FileArray::F64(_) | FileArray::F16(_) => return None,
        })
    }
}

fn is_wrong_dtype(e: &ndarray_npy::ReadNpyError) -> bool {
    matches!(e, ndarray_npy::ReadNpyError::WrongDescriptor(_))
}

/// Read a `.npy` held in memory, whatever its element type.
pub(super) fn read_npy_bytes(bytes: &[u8]) -> Result<FileArray> {
    fn try_read<T: ReadableElement>(bytes: &[u8]) -> std::result::Result<Option<ArrayD<T>>, ndarray_npy::ReadNpyError> {
        match ArrayD::<T>::read_npy(Cursor::new(bytes)) {
            Ok(a) => Ok(Some(a)),
            Err(e) if is_wrong_dtype(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
    macro_rules! attempt {
        ($t:ty, $v:ident) => {
            if let Some(a) = try_read::<$t>(bytes).map_err(|e| anyhow::anyhow!("{e}"))? {
                return Ok(FileArray::$v(a));
            }
        };
    }
    each_file_type!(attempt);
    bail!("unsupported .npy element type (supported: float16/32/64, int8/16/32/64, uint8/16/32, bool)")
}

/// Class labels from a `.npy`: integers of any type and shape (flattened), floats that are whole
/// numbers, or float one-hot rows `[N, C]` (Keras' `to_categorical`), read as their argmax.
pub(crate) fn read_labels(path: &Path) -> Result<Vec<i64>> {
    let a = read_npy_file(path).map_err(|e| anyhow::anyhow!("labels {e:#}"))?;
    if let Some(v) = a.to_i64() {
        return Ok(v.iter().copied().collect());
    }
    let f = a.to_f64();
    let shape = f.shape().to_vec();
    if shape.len() == 2 && shape[1] > 1 {
        let rows: Option<Vec<i64>> = f
            .rows()
            .into_iter()
            .map(|r| {
                let ones = r.iter().filter(|&&v| v == 1.0).count();
                let zeros = r.iter().filter(|&&v| v == 0.0).count();
                (ones == 1 && ones + zeros == r.len()).then(|| r.iter().position(|&v| v == 1.0).unwrap_or(0) as i64)
            })
            .collect();
        if let Some(rows) = rows {
            return Ok(rows);
        }
    }
    if f.iter().all(|v| v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15) {
        return Ok(f.iter().map(|&v| v as i64).collect());
    }
    bail!(
        "labels {}: {} {shape:?} holds values that are neither class indices (whole numbers) nor one-hot rows",
        path.display(),
        a.dtype()
    )
}

pub(super) fn read_npy_file(path: &Path) -> Result<FileArray> {
    read_npy_file_picking(path, |_| None)
}

/// Read a `.npy`, keeping only the rows of axis 0 that `pick` chooses from the file's shape
/// (None: all). The file is mapped and viewed in place, so only the chosen rows are copied: a
/// calibration file of many GB costs the memory of the rows used. A file that cannot be viewed
/// in place (byte order, alignment) is read from the mapping, then picked.
pub(super) fn read_npy_file_picking(
    path: &Path,
    mut pick: impl FnMut(&[usize]) -> Option<Vec<usize>>,
) -> Result<FileArray> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    // SAFETY: a read-only mapping, read once here; the file must not be cut short meanwhile (as
    // for mapped models, `model::mapped`).
    let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("{}: cannot read", path.display()))?;
    // Rows are picked far apart: read ahead, each would bring in megabytes around it.
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Random);
    // float16 is read (below), not viewed: it has no `ViewElement`.
    macro_rules! view {
        (Half, F16) => {};
        ($t:ty, $v:ident) => {
            if let Ok(a) = ArrayViewD::<$t>::view_npy(&map) {
                let a = match (a.ndim() > 0).then(|| pick(a.shape())).flatten() {
                    Some(idx) => a.select(Axis(0), &idx),
                    None => a.to_owned(),
                };
                return Ok(FileArray::$v(a));
            }
        };
    }
    each_file_type!(view);
    let a = read_npy_bytes(&map).with_context(|| format!("{}: not a readable .npy", path.display()))?;
    let idx = (!a.shape().is_empty()).then(|| pick(a.shape())).flatten();
    Ok(match idx {
        Some(idx) => a.pick(&idx),
        None => a,
    })
}

/// `k` of `n` rows, evenly spaced (row ⌊i·n/k⌋ for i < k), all of them when `n ≤ k` or `k` is 0:
/// a file sorted by class still gives every class.
pub(crate) fn evenly_spaced(n: usize, k: usize) -> Vec<usize> {
    if k == 0 || n <= k {
        return (0..n).collect();
    }
    (0..k).map(|i| i * n / k).collect()
}

/// The names of the arrays in an `.npz` (as `np.savez` gave them: keywords, or `arr_0`, … for
/// positional arrays).
pub(super) fn npz_names(path: &Path) -> Result<Vec<String>> {
    let f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut z = NpzReader::new(f).map_err(|e| anyhow::anyhow!("{}: not a readable .npz: {e}", path.display()))?;
    z.names().map_err(|e| anyhow::anyhow!("{}: not a readable .npz: {e}", path.display()))
}

/// Read array `name` from an `.npz`; `Ok(None)` when there is no such array.
pub(super) fn read_npz_array(path: &Path, name: &str) -> Result<Option<FileArray>> {
    let open = || -> Result<NpzReader<std::fs::File>> {
        let f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        NpzReader::new(f).map_err(|e| anyhow::anyhow!("{}: not a readable .npz: {e}", path.display()))
    };
    let names = open()?.names().map_err(|e| anyhow::anyhow!("{}: not a readable .npz: {e}", path.display()))?;
    if !names.iter().any(|n| n == name) {
        return Ok(None);
    }
    macro_rules! attempt {
        ($t:ty, $v:ident) => {
            match open()?.by_name::<ndarray::OwnedRepr<$t>, IxDyn>(name) {
                Ok(a) => return Ok(Some(FileArray::$v(a))),
                Err(ndarray_npy::ReadNpzError::Npy(e)) if is_wrong_dtype(&e) => {}
                Err(e) => bail!("{}: array '{name}': {e}", path.display()),
            }
        };
    }
    each_file_type!(attempt);
    bail!("{}: array '{name}' has an unsupported element type", path.display())
}

/// Convert file data to the model's element type. Float↔float and int↔int (and int→float,
/// bool→anything) are cast; float data for an integer input is rejected.
pub(super) fn convert(name: &str, a: FileArray, elem: i32) -> Result<InputData> {
    let from = a.dtype();
    Ok(match elem {
        dt::FLOAT => InputData::F32(match a {
            FileArray::F32(a) => a,
            other => other.to_f64().mapv(|v| v as f32),
        }),
        dt::DOUBLE => InputData::F64(a.to_f64()),
        dt::FLOAT16 => InputData::F16(match a {
            FileArray::F16(a) => a.mapv(|v| v.0),
            other => other.to_f64().mapv(half::f16::from_f64),
        }),
        dt::INT64 | dt::INT32 | dt::INT8 | dt::UINT8 => {
            let v = a.to_i64().with_context(|| {
                format!("input '{name}': model expects {} but the file holds {from}", dtype_name(elem))
            })?;
            let (lo, hi) = match elem {
                dt::INT32 => (i32::MIN as i64, i32::MAX as i64),
                dt::INT8 => (i8::MIN as i64, i8::MAX as i64),
                dt::UINT8 => (0, u8::MAX as i64),
                _ => (i64::MIN, i64::MAX),
            };
            if let Some(bad) = v.iter().find(|x| **x < lo || **x > hi) {
                bail!("input '{name}': value {bad} does not fit {}", dtype_name(elem));
            }
            match elem {
                dt::INT64 => InputData::I64(v),
                dt::INT32 => InputData::I32(v.mapv(|x| x as i32)),
                dt::INT8 => InputData::I8(v.mapv(|x| x as i8)),
                _ => InputData::U8(v.mapv(|x| x as u8)),
            }
        }
        dt::BOOL => {
            if a.is_float() {
                bail!("input '{name}': model expects bool but the file holds {from}");
            }
            InputData::Bool(a.to_f64().mapv(|v| v != 0.0))
        }
        other => bail!("input '{name}': element type {} is not supported for verification", dtype_name(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 `.npy` of `descr`, `shape`, then `data`.
    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b.extend(data);
        b
    }

    #[test]
    fn float16_files_are_read_in_either_byte_order() {
        let vals = [1.5f32, -2.0, 0.0, 65504.0];
        let h: Vec<half::f16> = vals.iter().map(|&v| half::f16::from_f32(v)).collect();
        let le: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
        let be: Vec<u8> = h.iter().flat_map(|v| v.to_be_bytes()).collect();
        for (descr, data) in [("<f2", &le), (">f2", &be)] {
            let a = read_npy_bytes(&npy(descr, "(2, 2)", data)).unwrap();
            assert_eq!(a.dtype(), "float16");
            assert_eq!(a.shape(), [2, 2]);
            let f: Vec<f64> = a.to_f64().iter().copied().collect();
            assert_eq!(f, vals.map(f64::from), "{descr}");
            // Exact into a float16 input; a float16 file is no integer data.
            let FileArray::F16(_) = &a else { panic!() };
            let InputData::F16(x) = convert("x", a, dt::FLOAT16).unwrap() else { panic!("not f16") };
            assert_eq!(x.iter().copied().collect::<Vec<_>>(), h);
        }
        let a = read_npy_bytes(&npy("<f2", "(2, 2)", &le)).unwrap();
        assert!(convert("ids", a, dt::INT64).unwrap_err().to_string().contains("float16"));
        assert!(read_npy_bytes(&npy("<f2", "(2, 2)", &le[..6])).is_err(), "short data");
        assert!(read_npy_bytes(&npy("<f2", "(2, 2)", &[le.clone(), vec![0, 0]].concat())).is_err(), "extra data");
    }

    /// Labels as users save them: any integer type, whole-number floats, Keras' float one-hot
    /// rows (their argmax); anything else is refused rather than truncated.
    #[test]
    fn labels_are_read_from_integers_whole_floats_or_one_hot_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("y.npy");
        let put = |a: &dyn Fn(&Path)| {
            a(&p);
            read_labels(&p)
        };
        let v = put(&|p| ndarray_npy::write_npy(p, &ndarray::arr1(&[3u16, 0, 9])).unwrap()).unwrap();
        assert_eq!(v, [3, 0, 9]);
        let v = put(&|p| ndarray_npy::write_npy(p, &ndarray::arr1(&[3.0f64, 0.0, 9.0])).unwrap()).unwrap();
        assert_eq!(v, [3, 0, 9]);
        let one_hot = ndarray::arr2(&[[0f32, 0., 1.], [1., 0., 0.]]);
        let v = put(&|p| ndarray_npy::write_npy(p, &one_hot).unwrap()).unwrap();
        assert_eq!(v, [2, 0]);
        // Probabilities are not labels.
        let soft = ndarray::arr2(&[[0.2f32, 0.8], [0.6, 0.4]]);
        let e = format!("{:#}", put(&|p| ndarray_npy::write_npy(p, &soft).unwrap()).unwrap_err());
        assert!(e.contains("neither class indices") && e.contains("float32 [2, 2]"), "{e}");
    }
}
