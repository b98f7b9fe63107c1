//! Lossless load/save of ONNX models.
//!
//! The protobuf types come from `onnx-protobuf`, which keeps unknown fields; scalars written
//! with their default value keep their presence through `presence` (the types are proto3, ONNX
//! is proto2), so a model that is loaded and saved unchanged is equal to its input under proto2
//! message equality (`onnx.load(in) == onnx.load(out)`). External data is read into
//! `raw_data` on load (paths are confined to the model's folder, ranges checked) and written back
//! beside the output on save. Saving is atomic: temp file in the target folder, then rename (like
//! `cp`, the files are not fsynced: durability against power loss is left to the OS).
//!
//! Its parts: `visit` (every tensor of a model, in one fixed order), `external` (external data:
//! locations confined to the model's folder, ranges checked, then read or mapped), `save` (a model
//! and its data file written), `atomic` (where a write lands, and the temp-file-then-rename).
//! Loading and parsing are here.

use super::mapped::MappedData;
use super::{presence, validate, wire};
use anyhow::{bail, Context, Result};
use onnx_protobuf::{Message, ModelProto};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

mod atomic;
mod external;
mod save;
mod visit;
pub use atomic::{write_atomic, write_target, WriteTarget};
pub use external::confined;
pub(crate) use external::ext_field;
use external::{map_all_external, read_all_external};
pub use save::{encoded_size, save, save_mapped, SaveOptions};
use visit::all_tensors_mut;
pub use visit::{for_each_graph_tensor, for_each_graph_tensor_mut, for_each_tensor_mut};

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

/// Why `path` is not a model file to read: "no such file", "a folder, not a file" or "not a
/// regular file" (a device such as `/dev/null`).
pub fn not_a_file(path: &Path) -> &'static str {
    match std::fs::metadata(path) {
        Err(_) => "no such file",
        Ok(m) if m.is_dir() => "a folder, not a file",
        Ok(_) => "not a regular file",
    }
}
