//! The files of a run: the paths checked before anything is read, which tensors go to external
//! data, the sparse re-save, and the move of a finished output into place (never a partial file).

use crate::model::io::{self, Loaded, SaveOptions};
use anyhow::{bail, Context, Result};
use onnx_protobuf::ModelProto;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Resolve the output path, refuse to overwrite the input or the data files it reads, and say
/// where the staging folder goes: beside OUT, or in the system's temp folder when OUT is a
/// FIFO or a device (`/dev/null`: written through, never replaced).
pub(super) fn check_paths(input: &Path, output: &Path, force: bool) -> Result<PathBuf> {
    if !input.is_file() {
        bail!("{}: {}", input.display(), crate::model::io::not_a_file(input));
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
    let io::WriteTarget::Replace(target) = io::write_target(output) else { return Ok(std::env::temp_dir()) };
    // A symlinked OUT is written where it points: staged there, so that the final rename stays on
    // one filesystem (a link into another one failed with "cannot write").
    let dir = match target.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) if d.is_dir() => d.to_path_buf(),
        Some(d) => {
            bail!("{}: links to {}, whose folder {} does not exist", output.display(), target.display(), d.display())
        }
        None => dir,
    };
    if !same {
        // A model with external data is written with `<OUT>.data` beside it: never one of the
        // files the input reads its weights from (renaming an export to `model_fp32.onnx` and
        // pruning it back to `model.onnx` would overwrite `model.onnx.data` under it).
        // (The input's protobuf is read again only when that file exists.)
        if let Some(data) = resolved(&data_path(&target)).filter(|p| p.exists()) {
            if io::external_data_files(input)?.contains(&data) {
                bail!(
                    "{}: its external data file {} holds the weights of the input {}: writing it would break \
                     the input; choose another output name",
                    output.display(),
                    data.display(),
                    input.display()
                );
            }
        }
    }
    Ok(dir)
}

/// `<OUT>.data` beside OUT: where a model with external data puts it.
fn data_path(out: &Path) -> PathBuf {
    out.with_file_name(format!("{}.data", out.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()))
}

/// The path as it would be written: canonical when it exists, else its canonical folder joined
/// with its name (None when the folder does not exist).
fn resolved(p: &Path) -> Option<PathBuf> {
    p.canonicalize().ok().or_else(|| {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Some(dir.canonicalize().ok()?.join(p.file_name()?))
    })
}

/// The files a run writes must not land on a file it reads. The output model (and its `<OUT>.data`)
/// must not be a data file the run reads (`--calibration`, `--inputs`, `--labels`: the run
/// succeeded and the data were gone). The report files (`--report`, `--html`: flag, path) must
/// not land on the input model, the output model, the output's external data, one another, a
/// data file the input reads or a data file of the run (`--report in.onnx` replaced the input
/// with JSON), and their folders must take a new file, checked before anything runs (a report
/// that could not be written failed the command after the model was published). A FIFO or
/// device (`/dev/stdout`) is fine.
pub fn check_side_outputs(o: &super::RunOptions, side: &[(&str, &Path)]) -> Result<()> {
    let input = o.input.as_path();
    let mut taken: Vec<(String, PathBuf)> = vec![];
    taken.extend(resolved(input).map(|p| ("the input model".to_string(), p)));
    // The data files the run reads, by flag.
    let mut reads: Vec<(String, PathBuf)> = vec![];
    let mut spec_files = |flag: &str, spec: &crate::check::InputSpec| {
        for p in spec.files.values().chain(spec.npz.as_ref()) {
            reads.extend(resolved(p).map(|r| (format!("a {flag} file"), r)));
        }
    };
    if let Some(c) = &o.calibration {
        spec_files("--calibration", c);
    }
    spec_files("--inputs", &o.verify_opts.inputs);
    if let Some(l) = &o.verify_opts.labels {
        reads.extend(resolved(l).map(|r| ("the --labels file".to_string(), r)));
    }
    if !o.plan {
        let out = o.output.as_path();
        let out = match io::write_target(out) {
            io::WriteTarget::Replace(p) => p,
            io::WriteTarget::Through => out.to_path_buf(),
        };
        for (what, p) in [("that", resolved(&out)), ("its external data file", resolved(&data_path(&out)))] {
            if let Some((flag, r)) = p.as_ref().and_then(|p| reads.iter().find(|(_, r)| r == p)) {
                let r = if what == "that" { String::new() } else { format!(" {}", r.display()) };
                bail!("{}: {what}{r} is {flag} the run reads; choose another output path", o.output.display());
            }
        }
        taken.extend(resolved(&out).map(|p| ("the output model".to_string(), p)));
        taken.extend(resolved(&data_path(&out)).map(|p| ("the output model's external data file".to_string(), p)));
    }
    taken.extend(reads);
    let mut input_data: Option<std::collections::BTreeSet<PathBuf>> = None;
    for (flag, p) in side {
        let io::WriteTarget::Replace(target) = io::write_target(p) else { continue };
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if target.is_dir() {
            bail!("{flag} {}: that is a folder", p.display());
        }
        if !dir.is_dir() {
            bail!("{flag} {}: folder {} does not exist", p.display(), dir.display());
        }
        tempfile::tempfile_in(&dir)
            .with_context(|| format!("{flag} {}: cannot create a file in folder {}", p.display(), dir.display()))?;
        let Some(r) = resolved(&target) else { continue };
        if let Some((what, _)) = taken.iter().find(|(_, t)| t == &r) {
            bail!("{flag} {}: that is {what}; choose another path", p.display());
        }
        if r.exists() {
            let data = match &input_data {
                Some(d) => d,
                None => input_data.insert(io::external_data_files(input).unwrap_or_default()),
            };
            if data.contains(&r) {
                bail!("{flag} {}: that is an external data file of the input model; choose another path", p.display());
            }
        }
        taken.push((format!("the {flag} file"), r));
    }
    Ok(())
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

/// Move the staged output (and its external data file, if any) into place: renamed over a
/// regular file (through a symlink, to where it points), copied into a FIFO or a device.
pub(super) fn publish(staged: &Path, out: &Path) -> Result<()> {
    let data_name = data_path(out).file_name().map(|f| f.to_os_string()).unwrap_or_default();
    let staged_data = staged.with_file_name(&data_name);
    let target = match io::write_target(out) {
        io::WriteTarget::Replace(p) => p,
        io::WriteTarget::Through => {
            if staged_data.exists() {
                bail!("{}: not a regular file: the model's external data cannot be written beside it", out.display());
            }
            let mut w = std::fs::File::create(out).with_context(|| format!("{}: cannot write", out.display()))?;
            let mut r = std::fs::File::open(staged).with_context(|| format!("{}: cannot read", staged.display()))?;
            std::io::copy(&mut r, &mut w).with_context(|| format!("{}: cannot write", out.display()))?;
            return Ok(());
        }
    };
    if staged_data.exists() {
        // The model names its data file by OUT's name, beside the file it is written to.
        let out_data = target.with_file_name(&data_name);
        std::fs::rename(&staged_data, &out_data).with_context(|| format!("{}: cannot write", out_data.display()))?;
    }
    std::fs::rename(staged, &target).with_context(|| format!("{}: cannot write", out.display()))?;
    Ok(())
}
