//! Atomic writes: bytes go to a temp file in the target's folder (created with an ordinary
//! file's mode, not tempfile's private 0600) and are renamed over the target, so a reader never
//! sees a partial file.
//!
//! Contract: a FIFO or a device (`/dev/stdout`, `/dev/null`) is written through, never replaced;
//! a symlink is written where it points, the link kept ([`write_target`]). Like `cp`, nothing is
//! fsynced.

use super::folder;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A temporary file in `dir` created with the mode an ordinary file gets (0666 less the
/// umask), not tempfile's private 0600: the published model and reports must be readable by
/// whoever may read the folder, as files written by `cp` or onnx.save are.
pub(super) fn new_file_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
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

/// Write bytes atomically (temp file in the same folder, then rename).
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
