//! Lossless load/save of ONNX models.
//!
//! The protobuf types come from `onnx-protobuf`, which keeps unknown fields, so a model that is
//! loaded and saved unchanged comes out semantically identical. External data is read into
//! `raw_data` on load (paths are confined to the model's folder) and written back beside the
//! output on save. Saving is atomic: temp file in the target folder, then rename.

use super::tensor::{self, tname};
use super::{validate, wire};
use anyhow::{bail, Context, Result};
use onnx_protobuf::{GraphProto, Message, ModelProto, NodeProto, StringStringEntryProto, TensorProto};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

/// protobuf refuses single messages of 2 GiB or more.
pub const PROTOBUF_LIMIT: u64 = (1 << 31) - 1;

/// A loaded model and what we need to know to write it back the same way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub proto: ModelProto,
    pub path: PathBuf,
    /// Size of the .onnx file plus its external data files.
    pub bytes_on_disk: u64,
    /// Names of tensors that were stored as external data in the input.
    pub external: BTreeSet<String>,
}

/// Read and parse a model file, resolving external data relative to its folder.
pub fn load(path: &Path) -> Result<Loaded> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", path.display());
    }
    if meta.len() > PROTOBUF_LIMIT {
        // Refused before reading it into memory: protobuf cannot decode it anyway.
        bail!("{}: {} bytes: protobuf messages are limited to 2 GiB (large weights belong in external data)", path.display(), meta.len());
    }
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut proto = parse(&bytes).with_context(|| format!("{}: not a valid ONNX model", path.display()))?;
    drop(bytes);
    let dir = path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p }).unwrap_or(Path::new("."));
    let mut external = BTreeSet::new();
    // Bytes read so far from each data file: the tensors of one file cannot read more bytes
    // than it holds, so overlapping regions cannot multiply the memory a small file costs.
    let mut data_bytes: BTreeMap<PathBuf, (u64, u64)> = BTreeMap::new();
    let mut err = None;
    for_each_tensor_mut(&mut proto, &mut |t| {
        if err.is_some() {
            return;
        }
        if validate::is_external(t) {
            match read_external(t, dir, &mut data_bytes) {
                Ok(()) => {
                    external.insert(t.name.clone());
                }
                Err(e) => err = Some(e),
            }
        }
    });
    if let Some(e) = err {
        return Err(e.context(format!("{}: external data", path.display())));
    }
    if !external.is_empty() {
        // The data read from outside the file gets the checks `parse` could not do.
        validate::for_each_tensor(&proto, &mut |t| {
            if external.contains(&t.name) {
                validate::check_tensor(t)?;
            }
            Ok(())
        })
        .with_context(|| format!("{}: external data", path.display()))?;
    }
    let mut size = meta.len();
    for (flen, _) in data_bytes.values() {
        size += flen;
    }
    Ok(Loaded { proto, path: path.to_path_buf(), bytes_on_disk: size, external })
}

/// Parse bytes and check that they are a well-formed ONNX model (see `validate`): every
/// tensor's data agrees with its dims, names are defined once, the graph has no cycle. Tensors
/// with external data get their data checked by `load` once it is read.
///
/// Before decoding, the bytes are scanned (`wire::scan`) so that hostile input can neither
/// overflow the stack of the protobuf decoder nor make it allocate far more than the input size.
pub fn parse(bytes: &[u8]) -> Result<ModelProto> {
    if bytes.is_empty() {
        bail!("file is empty");
    }
    if bytes.len() as u64 > PROTOBUF_LIMIT {
        bail!("file is {} bytes: protobuf messages are limited to 2 GiB", bytes.len());
    }
    wire::scan(bytes).context("protobuf decode failed")?;
    let proto = ModelProto::parse_from_bytes(bytes).map_err(|e| anyhow::anyhow!("protobuf decode failed: {e}"))?;
    if proto.ir_version <= 0 {
        bail!("no ir_version (is this an ONNX file?)");
    }
    let Some(g) = proto.graph.as_ref() else { bail!("model has no graph") };
    if g.node.is_empty() {
        bail!("graph '{}' is empty (no nodes)", g.name.escape_debug());
    }
    validate::validate(&proto)?;
    Ok(proto)
}

/// Visit every tensor of a graph, recursively (initializers, Constant values, attribute tensors,
/// sparse tensors, subgraphs).
pub fn for_each_graph_tensor_mut(g: &mut GraphProto, f: &mut dyn FnMut(&mut TensorProto)) {
    for t in g.initializer.iter_mut() {
        f(t);
    }
    for st in g.sparse_initializer.iter_mut() {
        if let Some(v) = st.values.as_mut() {
            f(v);
        }
        if let Some(i) = st.indices.as_mut() {
            f(i);
        }
    }
    for n in g.node.iter_mut() {
        for_each_node_tensor_mut(n, f);
    }
}

fn for_each_node_tensor_mut(n: &mut NodeProto, f: &mut dyn FnMut(&mut TensorProto)) {
    for a in n.attribute.iter_mut() {
        if let Some(t) = a.t.as_mut() {
            f(t);
        }
        for t in a.tensors.iter_mut() {
            f(t);
        }
        for st in a.sparse_tensor.as_mut().into_iter().chain(a.sparse_tensors.iter_mut()) {
            if let Some(v) = st.values.as_mut() {
                f(v);
            }
            if let Some(i) = st.indices.as_mut() {
                f(i);
            }
        }
        if let Some(sg) = a.g.as_mut() {
            for_each_graph_tensor_mut(sg, f);
        }
        for sg in a.graphs.iter_mut() {
            for_each_graph_tensor_mut(sg, f);
        }
    }
}

/// Read-only visit of every tensor of a graph, recursively.
pub fn for_each_graph_tensor(g: &GraphProto, f: &mut dyn FnMut(&TensorProto)) {
    g.initializer.iter().for_each(&mut *f);
    for n in &g.node {
        for a in &n.attribute {
            if let Some(t) = a.t.as_ref() {
                f(t);
            }
            a.tensors.iter().for_each(&mut *f);
            if let Some(sg) = a.g.as_ref() {
                for_each_graph_tensor(sg, f);
            }
            for sg in &a.graphs {
                for_each_graph_tensor(sg, f);
            }
        }
    }
}

/// Visit every tensor of a model: main graph, function bodies, training graphs.
pub fn for_each_tensor_mut(m: &mut ModelProto, f: &mut dyn FnMut(&mut TensorProto)) {
    if let Some(g) = m.graph.as_mut() {
        for_each_graph_tensor_mut(g, f);
    }
    for fun in m.functions.iter_mut() {
        for n in fun.node.iter_mut() {
            for_each_node_tensor_mut(n, f);
        }
    }
    for ti in m.training_info.iter_mut() {
        if let Some(g) = ti.initialization.as_mut() {
            for_each_graph_tensor_mut(g, f);
        }
        if let Some(g) = ti.algorithm.as_mut() {
            for_each_graph_tensor_mut(g, f);
        }
    }
}

fn ext_field<'a>(t: &'a TensorProto, key: &str) -> Option<&'a str> {
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

fn read_external(t: &mut TensorProto, dir: &Path, used: &mut BTreeMap<PathBuf, (u64, u64)>) -> Result<()> {
    let name = tname(t).to_string();
    let what = format!("tensor '{name}'");
    let loc = ext_field(t, "location").with_context(|| format!("{what}: external data without a location"))?;
    let file = confined(dir, loc, &what)?;
    let parse_u64 = |k: &str| -> Result<Option<u64>> {
        match ext_field(t, k) {
            None => Ok(None),
            Some(v) => v.trim().parse::<u64>().map(Some).with_context(|| format!("{what}: bad external {k} '{v}'")),
        }
    };
    let offset = parse_u64("offset")?.unwrap_or(0);
    let n = tensor::numel(t)? as u64;
    let es = tensor::elem_size(t.data_type)
        .with_context(|| format!("{what}: unsupported data type {} in external data", t.data_type))? as u64;
    let expect = n * es;
    let length = parse_u64("length")?.unwrap_or(expect);
    if length != expect {
        bail!("{what}: external length {length} but dims {:?} need {expect} bytes", t.dims);
    }
    let mut f = File::open(&file).with_context(|| format!("{what}: cannot open '{loc}'"))?;
    let meta = f.metadata().with_context(|| format!("{what}: cannot read '{loc}'"))?;
    if !meta.is_file() {
        bail!("{what}: external data location '{loc}' is not a regular file");
    }
    let flen = meta.len();
    if offset.checked_add(length).is_none_or(|end| end > flen) {
        bail!("{what}: external data [{offset}, +{length}) is past the end of '{loc}' ({flen} bytes)");
    }
    let read = &mut used.entry(file.clone()).or_insert((flen, 0)).1;
    *read += length;
    if *read > flen {
        bail!("{what}: the tensors stored in '{loc}' read more bytes than it holds ({flen}): overlapping regions");
    }
    f.seek(SeekFrom::Start(offset)).with_context(|| format!("{what}: reading '{loc}'"))?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(length as usize).with_context(|| format!("{what}: cannot allocate {length} bytes"))?;
    (&mut f).take(length).read_to_end(&mut buf).with_context(|| format!("{what}: reading '{loc}'"))?;
    if buf.len() as u64 != length {
        bail!("{what}: '{loc}' ended after {} of {length} bytes", buf.len());
    }
    t.raw_data = buf;
    t.external_data.clear();
    t.data_location = protobuf::EnumOrUnknown::from_i32(0);
    Ok(())
}

/// How to write a model.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// Tensors (by name) to place in the external data file beside the output.
    pub external: BTreeSet<String>,
}

/// Write a model atomically. Tensors named in `opts.external` (and, if the protobuf would exceed
/// 2 GiB, every tensor of 1 KiB or more) go to one data file `<out file name>.data` beside it.
/// Returns the bytes written (model + data).
pub fn save(mut proto: ModelProto, out: &Path, opts: &SaveOptions) -> Result<u64> {
    let dir = out.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p }).unwrap_or(Path::new("."));
    let fname = out.file_name().with_context(|| format!("{}: not a file path", out.display()))?;
    let mut external = opts.external.clone();
    if proto.compute_size() > PROTOBUF_LIMIT {
        for_each_tensor_mut(&mut proto, &mut |t| {
            if t.raw_data.len() >= 1024 {
                external.insert(t.name.clone());
            }
        });
    }
    let mut total = 0u64;
    let mut data_tmp = None;
    let data_name = format!("{}.data", fname.to_string_lossy());
    // Refuse what would make a rename fail half-way (a data file in place, the model not).
    let data_path = dir.join(&data_name);
    for p in [out, data_path.as_path()] {
        if p.is_dir() {
            bail!("{}: is a folder", p.display());
        }
    }
    if !external.is_empty() {
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("{}: cannot create a file in this folder", dir.display()))?;
        let mut offset = 0u64;
        let mut err: Option<anyhow::Error> = None;
        {
            let mut w = std::io::BufWriter::new(tmp.as_file_mut());
            for_each_tensor_mut(&mut proto, &mut |t| {
                if err.is_some() || !external.contains(&t.name) || t.raw_data.is_empty() {
                    return;
                }
                // 64-byte alignment, as onnx's own writer can do, for mmap-friendly readers.
                let pad = (64 - offset % 64) % 64;
                let r = w.write_all(&vec![0u8; pad as usize]).and_then(|_| w.write_all(&t.raw_data));
                if let Err(e) = r {
                    err = Some(e.into());
                    return;
                }
                offset += pad;
                let len = t.raw_data.len() as u64;
                t.raw_data = Vec::new();
                t.data_location = protobuf::EnumOrUnknown::from_i32(1);
                t.external_data = vec![kv("location", &data_name), kv("offset", &offset.to_string()), kv("length", &len.to_string())];
                offset += len;
            });
            if let Some(e) = err {
                return Err(e.context(format!("{}: writing external data", out.display())));
            }
            w.flush().with_context(|| format!("{}: writing external data", out.display()))?;
        }
        total += offset;
        data_tmp = Some(tmp);
    }
    if proto.compute_size() > PROTOBUF_LIMIT {
        bail!("{}: model protobuf would exceed 2 GiB even with external data", out.display());
    }
    let bytes = proto.write_to_bytes().with_context(|| format!("{}: encoding failed", out.display()))?;
    total += bytes.len() as u64;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("{}: cannot create a file in this folder", dir.display()))?;
    tmp.write_all(&bytes).with_context(|| format!("{}: write failed", out.display()))?;
    tmp.as_file().sync_all().ok();
    let wrote_data = data_tmp.is_some();
    if let Some(d) = data_tmp {
        d.as_file().sync_all().ok();
        d.persist(&data_path).with_context(|| format!("{}: cannot write {data_name}", out.display()))?;
    }
    if let Err(e) = tmp.persist(out) {
        if wrote_data {
            // No data file without its model.
            std::fs::remove_file(&data_path).ok();
        }
        return Err(anyhow::Error::new(e.error).context(format!("{}: cannot write", out.display())));
    }
    Ok(total)
}

fn kv(k: &str, v: &str) -> StringStringEntryProto {
    let mut e = StringStringEntryProto::new();
    e.key = k.to_string();
    e.value = v.to_string();
    e
}

/// Encoded size of a model without writing it (for reports).
pub fn encoded_size(m: &ModelProto) -> u64 {
    m.compute_size()
}

/// Write bytes atomically (temp file in the same folder, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p }).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("{}: cannot create a file in this folder", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("{}: write failed", path.display()))?;
    tmp.persist(path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}
