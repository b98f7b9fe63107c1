//! The files of a run: the paths checked before anything is read, which tensors go to external
//! data, the sparse re-save, and the move of a finished output into place (never a partial file).

use crate::model::io::{self, Loaded, SaveOptions};
use anyhow::{bail, Context, Result};
use onnx_protobuf::ModelProto;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Resolve the output path and refuse to overwrite the input.
pub(super) fn check_paths(input: &Path, output: &Path, force: bool) -> Result<PathBuf> {
    if !input.is_file() {
        bail!("{}: no such file", input.display());
    }
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!("{}: output folder does not exist", dir.display());
    }
    if output.is_dir() {
        bail!("{}: output is a folder", output.display());
    }
    let same = match (input.canonicalize(), output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same && !force {
        bail!("{}: output is the input file; pass --force to overwrite it", output.display());
    }
    Ok(dir)
}

/// Rewrite the staged (verified, dense-stored) model with sparse initializers, in place.
pub(super) fn store_sparse(staged: &Path, save_opts: &SaveOptions) -> Result<(u64, crate::model::sparse::Sparsified)> {
    let mut l = io::load(staged)?;
    let s = crate::model::sparse::sparsify_initializers(&mut l.proto)?;
    let bytes = io::save(l.proto, staged, save_opts)?;
    Ok((bytes, s))
}

/// Names of the tensors of a model's main graph.
pub(super) fn tensor_names(m: &ModelProto) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if let Some(g) = m.graph.as_ref() {
        io::for_each_graph_tensor(g, &mut |t| {
            names.insert(t.name.clone());
        });
    }
    names
}

/// Tensors to write as external data: those that were external in the input, plus tensors the
/// rewrite created (renamed slices: not in `before`) of 1 KiB or more when the input used
/// external data.
pub(super) fn external_names(loaded: &Loaded, before: &BTreeSet<String>, pruned: &ModelProto) -> BTreeSet<String> {
    let mut ext = loaded.external.clone();
    if ext.is_empty() {
        return ext;
    }
    if let Some(g) = pruned.graph.as_ref() {
        io::for_each_graph_tensor(g, &mut |t| {
            if !before.contains(&t.name) && t.raw_data.len() >= 1024 {
                ext.insert(t.name.clone());
            }
        });
    }
    ext
}

/// Move the staged output (and its external data file, if any) into place.
pub(super) fn publish(staged: &Path, out: &Path) -> Result<()> {
    let data_name = format!("{}.data", out.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default());
    let staged_data = staged.with_file_name(&data_name);
    if staged_data.exists() {
        let out_data = out.with_file_name(&data_name);
        std::fs::rename(&staged_data, &out_data).with_context(|| format!("{}: cannot write", out_data.display()))?;
    }
    std::fs::rename(staged, out).with_context(|| format!("{}: cannot write", out.display()))?;
    Ok(())
}
