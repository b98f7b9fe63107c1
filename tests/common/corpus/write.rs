//! Writing cases to disk.
use super::*;

/// Write `case` into `parent/<case.name>/` and the bait `parent/outside.bin`.
/// Returns the path of the model file.
pub fn write_case(case: &Case, parent: &Path) -> std::io::Result<PathBuf> {
    let dir = parent.join(case.name);
    if dir.symlink_metadata().is_ok() {
        // Start afresh (remove_dir_all does not follow the symlinks some cases contain).
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let outside = parent.join(OUTSIDE);
    if !outside.exists() {
        // 1 MiB of ones: every hostile offset and length in the corpus fits in it.
        std::fs::write(&outside, vec![0x3fu8; 1 << 20])?;
    }
    let mut bytes = case.model.clone();
    if bytes.windows(OUTSIDE_ABS.len()).any(|w| w == OUTSIDE_ABS.as_bytes()) {
        let mut m = ModelProto::parse_from_bytes(&bytes).expect("cases with OUTSIDE_ABS are valid protobuf");
        let abs = std::fs::canonicalize(parent)?.join(OUTSIDE);
        for t in gm(&mut m).initializer.iter_mut() {
            for e in t.external_data.iter_mut() {
                if e.value == OUTSIDE_ABS {
                    e.value = abs.to_string_lossy().into_owned();
                }
            }
        }
        bytes = enc(&m);
    }
    std::fs::write(dir.join(MODEL), bytes)?;
    for x in &case.extra {
        match x {
            Extra::File(p, b) => std::fs::write(dir.join(p), b)?,
            Extra::Dir(p) => std::fs::create_dir_all(dir.join(p))?,
            Extra::Symlink(p, target) => std::os::unix::fs::symlink(target, dir.join(p))?,
            Extra::Fifo(p) => {
                let c = std::ffi::CString::new(dir.join(p).to_string_lossy().into_owned()).unwrap();
                // SAFETY: a valid NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
    }
    Ok(dir.join(MODEL))
}
