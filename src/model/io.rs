//! Lossless load/save of ONNX models.
//!
//! The protobuf types come from `onnx-protobuf`, which keeps unknown fields; scalars written
//! with their default value keep their presence through `presence` (the types are proto3, ONNX
//! is proto2), so a model that is loaded and saved unchanged is equal to its input under proto2
//! message equality (`onnx.load(in) == onnx.load(out)`). External data is read into
//! `raw_data` on load (paths are confined to the model's folder, ranges checked) and written back
//! beside the output on save. Saving is atomic: temp file in the target folder, then rename (like
//! `cp`, the files are not fsynced: durability against power loss is left to the OS).

use super::mapped::MappedData;
use super::tensor::{self, tname};
use super::{presence, validate, wire};
use anyhow::{bail, Context, Result};
use onnx_protobuf::{GraphProto, Message, ModelProto, NodeProto, StringStringEntryProto, TensorProto};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
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
    /// With [`load_mapped`]: the input's data files, mapped read-only; the external tensors still
    /// refer to them (empty `raw_data`) until [`Loaded::materialize`].
    pub mapped: Option<std::sync::Arc<MappedData>>,
}

impl Loaded {
    /// Read the data of tensors left in their mapped files into `raw_data`, as [`load`] does.
    pub fn materialize(&mut self) -> Result<()> {
        if self.mapped.take().is_none() {
            return Ok(());
        }
        let dir = folder(&self.path);
        read_all_external(&mut self.proto, dir)
            .and_then(|_| check_external(&self.proto, &self.external))
            .map_err(|e| e.context(format!("{}: external data", self.path.display())))
    }
}

fn folder(path: &Path) -> &Path {
    path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p }).unwrap_or(Path::new("."))
}

/// Read and parse a model file, resolving external data relative to its folder.
///
/// The protobuf is parsed straight from the file (no second copy of its bytes); external data is
/// read tensor by tensor (one open file per data file, positioned reads, in parallel) after the
/// ranges were checked: inside the data file, not overlapping.
pub fn load(path: &Path) -> Result<Loaded> {
    load_with(path, false)
}

/// [`load`], except that external data files are mapped read-only rather than read: the tensors
/// stored in them keep empty `raw_data` and their references, and their bytes are reached through
/// [`Loaded::mapped`] (the per-weight pass reads them there and writes its output from them, see
/// `save_mapped`). Nothing of the data is copied or checked beyond its ranges until it is used;
/// [`Loaded::materialize`] turns the result into what [`load`] returns. Where mapping is not
/// available (not Unix), this is [`load`].
pub fn load_mapped(path: &Path) -> Result<Loaded> {
    load_with(path, cfg!(unix))
}

fn load_with(path: &Path, map: bool) -> Result<Loaded> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", path.display());
    }
    if meta.len() > PROTOBUF_LIMIT {
        // Refused before reading it into memory: protobuf cannot decode it anyway.
        bail!(
            "{}: {} bytes: protobuf messages are limited to 2 GiB (large weights belong in external data)",
            path.display(),
            meta.len()
        );
    }
    let mut proto =
        parse_file(path, meta.len()).with_context(|| format!("{}: not a valid ONNX model", path.display()))?;
    // Valid ONNX (the checker accepts it, onnxruntime runs it), but there is nothing to prune.
    if let Some(g) = proto.graph.as_ref().filter(|g| g.node.is_empty()) {
        bail!("{}: graph '{}' has no nodes: nothing to prune", path.display(), g.name.escape_debug());
    }
    let dir = folder(path);
    let ctx = |e: anyhow::Error| e.context(format!("{}: external data", path.display()));
    let (external, data_files, mapped) = if map {
        let (names, files, m) = map_all_external(&mut proto, dir).map_err(ctx)?;
        let m = (!names.is_empty()).then(|| std::sync::Arc::new(m));
        (names, files, m)
    } else {
        let (names, files) = read_all_external(&mut proto, dir).map_err(ctx)?;
        // The data read from outside the file gets the checks `parse` could not do.
        check_external(&proto, &names).map_err(ctx)?;
        (names, files, None)
    };
    let mut size = meta.len();
    for (_, flen) in &data_files {
        size += flen;
    }
    Ok(Loaded { proto, path: path.to_path_buf(), bytes_on_disk: size, external, mapped })
}

/// The checks of `parse` on the tensors whose data was read from outside the file.
fn check_external(proto: &ModelProto, external: &BTreeSet<String>) -> Result<()> {
    if external.is_empty() {
        return Ok(());
    }
    validate::for_each_tensor(proto, &mut |t| {
        if external.contains(&t.name) {
            validate::check_tensor(t)?;
        }
        Ok(())
    })
}

/// Parse a model file of `len` bytes with the checks of [`parse`], straight from the file (no
/// copy of its bytes in memory): a first streaming pass runs the wire pre-scan (`wire::scan_reader`,
/// skipping over opaque payloads such as raw_data), a second pass decodes.
fn parse_file(path: &Path, len: u64) -> Result<ModelProto> {
    if len == 0 {
        bail!("file is empty");
    }
    if len > PROTOBUF_LIMIT {
        bail!("file is {len} bytes: protobuf messages are limited to 2 GiB");
    }
    let file = File::open(path).context("cannot read")?;
    let (_, defaults) = {
        let mut br = std::io::BufReader::with_capacity(1 << 16, &file);
        wire::scan_reader_presence(&mut br, len).context("protobuf decode failed")?
    };
    let mut file = file;
    {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(0)).context("cannot read")?;
    }
    let mut br = std::io::BufReader::with_capacity(1 << 20, file.take(len));
    let mut is = protobuf::CodedInputStream::from_buf_read(&mut br);
    let mut proto = ModelProto::parse_from(&mut is)
        .and_then(|m| is.check_eof().map(|_| m))
        .map_err(|e| anyhow::anyhow!("protobuf decode failed: {e}"))?;
    presence::attach(&mut proto, defaults);
    check_model(proto)
}

/// The data files the external tensors of the model at `path` name, canonical (those that
/// exist), read from its protobuf alone (no data is read).
pub fn external_data_files(path: &Path) -> Result<BTreeSet<PathBuf>> {
    let len = std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?.len();
    let mut proto = parse_file(path, len).with_context(|| format!("{}", path.display()))?;
    let dir = folder(path);
    let mut files = BTreeSet::new();
    for t in all_tensors_mut(&mut proto) {
        if let Some(loc) = validate::is_external(t).then(|| ext_field(t, "location")).flatten() {
            if let Ok(p) = dir.join(loc).canonicalize() {
                files.insert(p);
            }
        }
    }
    Ok(files)
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
    let (_, defaults) = wire::scan_presence(bytes).context("protobuf decode failed")?;
    let mut proto = ModelProto::parse_from_bytes(bytes).map_err(|e| anyhow::anyhow!("protobuf decode failed: {e}"))?;
    presence::attach(&mut proto, defaults);
    check_model(proto)
}

fn check_model(proto: ModelProto) -> Result<ModelProto> {
    if proto.ir_version <= 0 {
        bail!("no ir_version (is this an ONNX file?)");
    }
    if proto.graph.is_none() {
        bail!("model has no graph");
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

/// Every tensor of a model, mutably, in the order [`for_each_tensor_mut`] visits them: main
/// graph (initializers, sparse initializers, attribute tensors and sparse tensors, subgraphs),
/// function bodies, training graphs.
fn all_tensors_mut(m: &mut ModelProto) -> Vec<&mut TensorProto> {
    fn sparse<'a>(st: &'a mut onnx_protobuf::SparseTensorProto, out: &mut Vec<&'a mut TensorProto>) {
        let onnx_protobuf::SparseTensorProto { values, indices, .. } = st;
        out.extend(values.as_mut());
        out.extend(indices.as_mut());
    }
    fn node<'a>(n: &'a mut NodeProto, out: &mut Vec<&'a mut TensorProto>) {
        for a in n.attribute.iter_mut() {
            let onnx_protobuf::AttributeProto { t, tensors, sparse_tensor, sparse_tensors, g, graphs, .. } = a;
            out.extend(t.as_mut());
            out.extend(tensors.iter_mut());
            for st in sparse_tensor.as_mut().into_iter().chain(sparse_tensors.iter_mut()) {
                sparse(st, out);
            }
            if let Some(sg) = g.as_mut() {
                graph(sg, out);
            }
            for sg in graphs.iter_mut() {
                graph(sg, out);
            }
        }
    }
    fn graph<'a>(g: &'a mut GraphProto, out: &mut Vec<&'a mut TensorProto>) {
        let GraphProto { initializer, sparse_initializer, node: nodes, .. } = g;
        out.extend(initializer.iter_mut());
        for st in sparse_initializer.iter_mut() {
            sparse(st, out);
        }
        for n in nodes.iter_mut() {
            node(n, out);
        }
    }
    let mut out = Vec::new();
    let ModelProto { graph: g, functions, training_info, .. } = m;
    if let Some(g) = g.as_mut() {
        graph(g, &mut out);
    }
    for fun in functions.iter_mut() {
        for n in fun.node.iter_mut() {
            node(n, &mut out);
        }
    }
    for ti in training_info.iter_mut() {
        let onnx_protobuf::TrainingInfoProto { initialization, algorithm, .. } = ti;
        if let Some(g) = initialization.as_mut() {
            graph(g, &mut out);
        }
        if let Some(g) = algorithm.as_mut() {
            graph(g, &mut out);
        }
    }
    out
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
fn read_all_external(proto: &mut ModelProto, dir: &Path) -> Result<(BTreeSet<String>, DataFiles)> {
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
fn map_all_external(proto: &mut ModelProto, dir: &Path) -> Result<(BTreeSet<String>, DataFiles, MappedData)> {
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

/// How to write a model.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// Tensors (by name) to place in the external data file beside the output.
    pub external: BTreeSet<String>,
}

/// Write a model atomically. Tensors named in `opts.external` (and, if the protobuf would exceed
/// 2 GiB, every tensor of 1 KiB or more) go to one data file `<out file name>.data` beside it.
/// Returns the bytes written (model + data).
pub fn save(proto: ModelProto, out: &Path, opts: &SaveOptions) -> Result<u64> {
    save_mapped(proto, out, opts, None)
}

/// [`save`] for a model loaded with [`load_mapped`]: a tensor whose data is still in the mapped
/// input files is written from there, through a small buffer, with the elements its keep bits in
/// `masks` clear zeroed (or inline, read and masked, when it is not to be external). The output
/// is byte for byte what [`save`] writes for the same model loaded with [`load`] and zeroed in
/// place. Without `mapped`, any tensor whose data was not read is an error.
pub fn save_mapped(
    mut proto: ModelProto,
    out: &Path,
    opts: &SaveOptions,
    mapped: Option<(&MappedData, &super::mapped::Masks)>,
) -> Result<u64> {
    let dir = folder(out);
    let fname = out.file_name().with_context(|| format!("{}: not a file path", out.display()))?;
    presence::settle(&mut proto);
    let mut external = opts.external.clone();
    // Data still in the input's files: inline ones (and empty ones, written inline as `load`
    // leaves them) are read now; the others are streamed below.
    let mut unread: Option<anyhow::Error> = None;
    for_each_tensor_mut(&mut proto, &mut |t| {
        if unread.is_some() || !validate::is_external(t) {
            return;
        }
        let Some((m, masks)) = mapped else {
            unread = Some(anyhow::anyhow!("tensor '{}': external data was not read", tname(t)));
            return;
        };
        let Some(key) = m.locate(t) else {
            unread = Some(anyhow::anyhow!("tensor '{}': external data was not read", tname(t)));
            return;
        };
        match m.bytes(key) {
            Ok(b) if b.is_empty() || !external.contains(&t.name) => {
                let mut v = b.to_vec();
                if let (Some(mask), Some(es), false) =
                    (masks.get(&key).map(|m| &m.bits), tensor::elem_size(t.data_type), v.is_empty())
                {
                    if mask.len() * 64 * es < v.len() {
                        unread = Some(anyhow::anyhow!("tensor '{}': keep bits shorter than the tensor", tname(t)));
                        return;
                    }
                    super::mapped::clear_unkept(&mut v, es, mask);
                }
                t.raw_data = v;
                t.external_data.clear();
                t.data_location = protobuf::EnumOrUnknown::from_i32(0);
            }
            Ok(_) => {}
            Err(e) => unread = Some(e.context(format!("tensor '{}'", tname(t)))),
        }
    });
    if let Some(e) = unread {
        return Err(e.context(format!("{}: cannot write", out.display())));
    }
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
        let mut tmp =
            new_file_in(dir).with_context(|| format!("{}: cannot create a file in this folder", dir.display()))?;
        let mut offset = 0u64;
        let mut err: Option<anyhow::Error> = None;
        {
            let mut w = std::io::BufWriter::with_capacity(WRITE_SLICE, Sliced(tmp.as_file_mut()));
            for_each_tensor_mut(&mut proto, &mut |t| {
                if err.is_some() || !external.contains(&t.name) {
                    return;
                }
                // A mapped tensor (non-empty: the empty ones were made inline above).
                let src = mapped.and_then(|(m, masks)| m.locate(t).map(|k| (m, masks.get(&k).map(|m| &m.bits), k)));
                if src.is_none() && t.raw_data.is_empty() {
                    return;
                }
                // 64-byte alignment, as onnx's own writer can do, for mmap-friendly readers.
                let pad = (64 - offset % 64) % 64;
                let r = w.write_all(&vec![0u8; pad as usize]).map_err(anyhow::Error::from).and_then(|_| match src {
                    None => w.write_all(&t.raw_data).map(|_| t.raw_data.len() as u64).map_err(Into::into),
                    Some((m, mask, key)) => write_mapped(&mut w, t, m, key, mask),
                });
                let len = match r {
                    Ok(len) => len,
                    Err(e) => {
                        err = Some(e);
                        return;
                    }
                };
                offset += pad;
                t.raw_data = Vec::new();
                t.data_location = protobuf::EnumOrUnknown::from_i32(1);
                t.external_data =
                    vec![kv("location", &data_name), kv("offset", &offset.to_string()), kv("length", &len.to_string())];
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
    let size = proto.compute_size();
    if size > PROTOBUF_LIMIT {
        bail!("{}: model protobuf would exceed 2 GiB even with external data", out.display());
    }
    total += size;
    let mut tmp =
        new_file_in(dir).with_context(|| format!("{}: cannot create a file in this folder", dir.display()))?;
    {
        // Encoded straight into the file: no second copy of the model in memory.
        let mut w = std::io::BufWriter::with_capacity(WRITE_SLICE, Sliced(tmp.as_file_mut()));
        let mut os = protobuf::CodedOutputStream::new(&mut w);
        proto
            .write_to_with_cached_sizes(&mut os)
            .and_then(|_| os.flush())
            .with_context(|| format!("{}: write failed", out.display()))?;
        drop(os);
        w.flush().with_context(|| format!("{}: write failed", out.display()))?;
    }
    let wrote_data = data_tmp.is_some();
    if let Some(d) = data_tmp {
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

/// The most bytes handed to one `write` call. Measured on a 1.6 GB file (ext4, this VM):
/// `dd bs=128K` wrote it in 0.66–0.75 s, `bs=1M` in 1.1–2.8 s (the kernel's copy into fresh
/// page-cache pages, `copy_folio_from_iter_atomic`, slows down with larger writes); at 100 MB
/// both take the same time. `cat` writes 128 KiB at a time.
const WRITE_SLICE: usize = 128 << 10;

/// A writer that passes at most [`WRITE_SLICE`] bytes to each `write` call (`write_all` loops).
struct Sliced<W>(W);

impl<W: Write> Write for Sliced<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(&buf[..buf.len().min(WRITE_SLICE)])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Write a mapped tensor's bytes through its keep bits (if any); returns the bytes written.
fn write_mapped(
    w: &mut (impl Write + Send),
    t: &TensorProto,
    m: &MappedData,
    key: super::mapped::ExtKey,
    mask: Option<&Vec<u64>>,
) -> Result<u64> {
    let b = m.bytes(key)?;
    let len = b.len();
    match mask {
        None => w.write_all(b)?,
        Some(mask) => {
            let es = tensor::elem_size(t.data_type).context("unsupported data type in external data")?;
            super::mapped::write_masked(w, b, es, mask)?
        }
    }
    Ok(len as u64)
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
/// A temporary file in `dir` created with the mode an ordinary file gets (0666 less the
/// umask), not tempfile's private 0600: the published model and reports must be readable by
/// whoever may read the folder, as files written by `cp` or onnx.save are.
fn new_file_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let mut b = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b.tempfile_in(dir)
}

/// How writing a path lands ([`write_target`]).
#[derive(Debug, PartialEq)]
pub enum WriteTarget {
    /// A regular file (or nothing yet) at this path, resolved through symlinks: replaced
    /// atomically (temp file beside it, then rename), the symlink kept.
    Replace(PathBuf),
    /// Something that must not be replaced: a FIFO or a device (`/dev/stdout`, `/dev/null`),
    /// written through.
    Through,
}

/// Where writing `path` lands: a rename over a FIFO or a device would put a regular file in its
/// place (`--report /dev/stdout` printed nothing and left a file there), and over a symlink it
/// would replace the link instead of writing where it points.
pub fn write_target(path: &Path) -> WriteTarget {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => WriteTarget::Replace(path.canonicalize().unwrap_or_else(|_| path.to_path_buf())),
        Ok(m) if !m.is_dir() => WriteTarget::Through,
        // A symlink to a file not there yet: the file it names.
        Err(_) if path.is_symlink() => match std::fs::read_link(path) {
            Ok(to) => WriteTarget::Replace(folder(path).join(to)),
            Err(_) => WriteTarget::Replace(path.to_path_buf()),
        },
        _ => WriteTarget::Replace(path.to_path_buf()),
    }
}

/// Why `path` is not a model file to read: "no such file", "a folder, not a file" or "not a
/// regular file" (a device such as `/dev/null`).
pub fn not_a_file(path: &Path) -> &'static str {
    match std::fs::metadata(path) {
        Err(_) => "no such file",
        Ok(m) if m.is_dir() => "a folder, not a file",
        Ok(_) => "not a regular file",
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let path = match write_target(path) {
        WriteTarget::Replace(p) => p,
        WriteTarget::Through => {
            return std::fs::write(path, bytes).with_context(|| format!("{}: cannot write", path.display()));
        }
    };
    let path = path.as_path();
    let dir = folder(path);
    let mut tmp =
        new_file_in(dir).with_context(|| format!("{}: cannot create a file in this folder", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("{}: write failed", path.display()))?;
    tmp.persist(path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}
