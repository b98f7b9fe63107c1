//! External data on load: locations confined to the model's folder (no `..`, no symlink out, only
//! regular files), every range checked before a byte is read (inside its file, no two tensors
//! sharing bytes, a file's tensors reading at most its size), then the tensors read into
//! `raw_data` (positioned reads, in parallel) or their files mapped read-only.
//!
//! Contract: on success, [`read_all_external`] leaves no tensor with an external reference and
//! [`map_all_external`] leaves every one with its reference (data reached through the mapping);
//! on error nothing is half-trusted: the caller refuses the model.

use super::visit::all_tensors_mut;
use crate::model::mapped::MappedData;
use crate::model::tensor::{self, tname};
use crate::model::validate;
use anyhow::{bail, Context, Result};
use onnx_protobuf::{ModelProto, TensorProto};
use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

pub(crate) fn ext_field<'a>(t: &'a TensorProto, key: &str) -> Option<&'a str> {
    t.external_data.iter().find(|e| e.key == key).map(|e| e.value.as_str())
}

/// A relative path that stays inside the model's folder.
pub fn confined(dir: &Path, location: &str, what: &str) -> Result<PathBuf> {
    let p = Path::new(location);
    if location.is_empty() {
        bail!("{what}: empty external data location");
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => bail!("{what}: external data location '{location}' leaves the model's folder"),
        }
    }
    let full = dir.join(p);
    // Symlinks could still escape: compare canonical paths.
    let cdir = dir.canonicalize().with_context(|| format!("{what}: model folder"))?;
    let cfull = full.canonicalize().with_context(|| format!("{what}: external data file '{location}' not found"))?;
    if !cfull.starts_with(&cdir) {
        bail!("{what}: external data location '{location}' leaves the model's folder");
    }
    // Only regular files: opening a named pipe would block forever, a device could be endless.
    let meta = std::fs::metadata(&cfull).with_context(|| format!("{what}: external data file '{location}'"))?;
    if !meta.is_file() {
        bail!("{what}: external data location '{location}' is not a regular file");
    }
    Ok(cfull)
}

/// The external data files a model read, with their sizes.
type DataFiles = Vec<(PathBuf, u64)>;

/// Where one tensor's external bytes are.
struct ExtRange {
    file: usize,
    offset: u64,
    length: u64,
}

/// The checked external data of a model: its open data files (canonical path, file, length,
/// location as first written) and, in [`all_tensors_mut`] order over the external tensors, where
/// each one's bytes are.
struct ExtPlan {
    files: Vec<(PathBuf, File, u64, String)>,
    /// Every location as written → index in `files` (two spellings may name one file).
    by_loc: std::collections::HashMap<String, usize>,
    ranges: Vec<ExtRange>,
}

/// Resolve and check the external data of `tensors` (the external ones of a model, in order).
///
/// Every range is checked before anything is read: inside its (regular) data file, no two
/// tensors sharing bytes, and the tensors of one file reading at most the bytes it holds (so
/// a small file cannot cost more memory than its size).
fn plan_external(tensors: &[&mut TensorProto], dir: &Path) -> Result<ExtPlan> {
    let mut files: Vec<(PathBuf, File, u64, String)> = Vec::new();
    let mut by_loc: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    // Bytes claimed so far from each data file.
    let mut used: Vec<u64> = Vec::new();
    let mut ranges = Vec::with_capacity(tensors.len());
    for t in tensors.iter() {
        let what = format!("tensor '{}'", tname(t));
        let loc = ext_field(t, "location").with_context(|| format!("{what}: external data without a location"))?;
        let parse_u64 = |k: &str| -> Result<Option<u64>> {
            match ext_field(t, k) {
                None => Ok(None),
                Some(v) => v.trim().parse::<u64>().map(Some).with_context(|| format!("{what}: bad external {k} '{v}'")),
            }
        };
        let fi = match by_loc.get(loc) {
            Some(&i) => i,
            None => {
                let full = confined(dir, loc, &what)?;
                let i = match files.iter().position(|f| f.0 == full) {
                    Some(i) => i,
                    None => {
                        let f = File::open(&full).with_context(|| format!("{what}: cannot open '{loc}'"))?;
                        let meta = f.metadata().with_context(|| format!("{what}: cannot read '{loc}'"))?;
                        if !meta.is_file() {
                            bail!("{what}: external data location '{loc}' is not a regular file");
                        }
                        files.push((full, f, meta.len(), loc.to_string()));
                        used.push(0);
                        files.len() - 1
                    }
                };
                by_loc.insert(loc.to_string(), i);
                i
            }
        };
        let offset = parse_u64("offset")?.unwrap_or(0);
        let n = tensor::numel(t)? as u64;
        let es = tensor::elem_size(t.data_type)
            .with_context(|| format!("{what}: unsupported data type {} in external data", t.data_type))?
            as u64;
        let expect = n.checked_mul(es).with_context(|| format!("{what}: dims {:?} overflow", t.dims))?;
        let length = parse_u64("length")?.unwrap_or(expect);
        if length != expect {
            bail!("{what}: external length {length} but dims {:?} need {expect} bytes", t.dims);
        }
        let (_, _, flen, floc) = &files[fi];
        let flen = *flen;
        if offset.checked_add(length).is_none_or(|end| end > flen) {
            bail!("{what}: external data [{offset}, +{length}) is past the end of '{floc}' ({flen} bytes)");
        }
        used[fi] += length;
        if used[fi] > flen {
            bail!("{what}: the tensors stored in '{floc}' read more bytes than it holds ({flen}): overlapping regions");
        }
        ranges.push(ExtRange { file: fi, offset, length });
    }
    // Two tensors must not share bytes.
    let mut order: Vec<usize> = (0..ranges.len()).filter(|&i| ranges[i].length > 0).collect();
    order.sort_by_key(|&i| (ranges[i].file, ranges[i].offset));
    for w in order.windows(2) {
        let (a, b) = (&ranges[w[0]], &ranges[w[1]]);
        if a.file == b.file && a.offset + a.length > b.offset {
            bail!(
                "tensors '{}' and '{}' overlap in '{}' ([{}, +{}) and [{}, +{}))",
                tname(tensors[w[0]]),
                tname(tensors[w[1]]),
                files[a.file].3,
                a.offset,
                a.length,
                b.offset,
                b.length
            );
        }
    }
    Ok(ExtPlan { files, by_loc, ranges })
}

/// Resolve and read every external tensor into `raw_data` (ranges checked by [`plan_external`];
/// positioned reads, in parallel). Returns the names of the external tensors and the data files
/// used with their sizes.
pub(super) fn read_all_external(proto: &mut ModelProto, dir: &Path) -> Result<(BTreeSet<String>, DataFiles)> {
    use rayon::prelude::*;
    let mut tensors: Vec<&mut TensorProto> =
        all_tensors_mut(proto).into_iter().filter(|t| validate::is_external(t)).collect();
    let ExtPlan { files, ranges, .. } = plan_external(&tensors, dir)?;
    let results: Vec<Result<()>> = tensors
        .par_iter_mut()
        .zip(&ranges)
        .map(|(t, r)| {
            let what = format!("tensor '{}'", tname(t));
            let loc = &files[r.file].3;
            let mut buf = zeroed_buffer(r.length as usize)
                .with_context(|| format!("{what}: cannot allocate {} bytes", r.length))?;
            read_at(&files[r.file].1, r.offset, &mut buf).with_context(|| format!("{what}: reading '{loc}'"))?;
            t.raw_data = buf;
            t.external_data.clear();
            t.data_location = protobuf::EnumOrUnknown::from_i32(0);
            Ok(())
        })
        .collect();
    results.into_iter().collect::<Result<Vec<_>>>()?;
    let names = tensors.iter().map(|t| t.name.clone()).collect();
    Ok((names, files.into_iter().map(|f| (f.0, f.2)).collect()))
}

/// Check the external data of every tensor as [`read_all_external`] does, then map the data
/// files read-only instead of reading them: the tensors keep their external references.
pub(super) fn map_all_external(
    proto: &mut ModelProto,
    dir: &Path,
) -> Result<(BTreeSet<String>, DataFiles, MappedData)> {
    let tensors: Vec<&mut TensorProto> =
        all_tensors_mut(proto).into_iter().filter(|t| validate::is_external(t)).collect();
    let ExtPlan { files, by_loc, .. } = plan_external(&tensors, dir)?;
    let names = tensors.iter().map(|t| t.name.clone()).collect();
    let sizes = files.iter().map(|f| (f.0.clone(), f.2)).collect();
    let maps = files
        .iter()
        .map(|(_, f, _, loc)| MappedData::map_file(f).with_context(|| format!("cannot map '{loc}'")))
        .collect::<Result<Vec<_>>>()?;
    Ok((names, sizes, MappedData::new(maps, by_loc)))
}

/// A zeroed buffer of `len` bytes for a tensor's data, or None when it cannot be allocated. Fresh
/// zeroed memory is not written here (the allocator maps zero pages), and on Linux a large one is
/// advised to use transparent huge pages before its first touch: filling it then costs ~50 page
/// faults per 100 MB instead of ~25,000 (issue 13: load of the 100 MB benchmark 85 → 50 ms).
pub(crate) fn zeroed_buffer(len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(len).ok()?;
    // SAFETY: `layout` has a non-zero size; a null result is handled.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    if p.is_null() {
        return None;
    }
    advise_huge_pages(p, len);
    // SAFETY: `p` was allocated by the global allocator with the layout of a `[u8; len]`, and all
    // `len` bytes are initialised (zeroed).
    Some(unsafe { Vec::from_raw_parts(p, len, len) })
}

/// Ask for transparent huge pages over the whole pages of `[p, p + len)` (a hint: ignored where
/// THP is off or unsupported). Only for buffers of at least 4 MiB.
fn advise_huge_pages(p: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    if len >= 4 << 20 {
        let lo = (p as usize).next_multiple_of(4096);
        let hi = (p as usize + len) & !4095;
        if hi > lo {
            // SAFETY: the range lies inside one live allocation owned by the caller; MADV_HUGEPAGE
            // changes no contents.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, len);
}

/// Fill `buf` from `offset` of `f` without moving a shared file position.
fn read_at(f: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            let k = std::os::windows::fs::FileExt::seek_read(f, &mut buf[done..], offset + done as u64)?;
            if k == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            done += k;
        }
        Ok(())
    }
}
