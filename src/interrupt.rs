//! An interrupted run leaves nothing behind: the command (`src/main.rs`) receives SIGINT,
//! SIGTERM and SIGHUP on one thread of its own ([`install`]), which kills the onnxruntime worker
//! ([`RegisteredChild`]), removes the staging folders and scratch folders the runs in progress
//! registered ([`Registered`], [`Scratch`]) and then dies of the signal as it would have. Before, Ctrl-C left an empty `.onnx-emp-XXXXXX` folder beside OUT on every interrupted
//! run (never a partial model: the output is published by a rename).
//!
//! The library (and the Python module) installs nothing: a host process keeps its own handlers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A folder removed if the process is interrupted while this lives.
pub struct Registered(PathBuf);

impl Registered {
    pub fn new(dir: &Path) -> Self {
        if let Ok(mut d) = DIRS.lock() {
            d.push(dir.to_path_buf());
        }
        Registered(dir.to_path_buf())
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut d) = DIRS.lock() {
            if let Some(i) = d.iter().rposition(|p| *p == self.0) {
                d.remove(i);
            }
        }
    }
}

/// Block the signals in the calling thread (call it first in `main`: threads started later
/// inherit the mask; child processes start with an empty one) and handle them on a thread of
/// their own.
#[cfg(unix)]
pub fn install() {
    // SAFETY: plain libc signal-mask calls on a zeroed, initialised sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
            let mut sig: libc::c_int = 0;
            if libc::sigwait(&set, &mut sig) != 0 {
                return;
            }
            if let Ok(c) = CHILDREN.lock() {
                for &pid in c.iter() {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
            if let Ok(d) = DIRS.lock() {
                for p in d.iter() {
                    let _ = std::fs::remove_dir_all(p);
                }
            }
            // Die of the signal, as without the handler (a shell reports 130 for Ctrl-C).
            libc::signal(sig, libc::SIG_DFL);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        });
        if spawned.is_err() {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

#[cfg(not(unix))]
pub fn install() {}

static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A child process (the onnxruntime worker) killed if the command is interrupted while this
/// lives: it would otherwise run on, orphaned, and write into a folder being removed.
pub struct RegisteredChild(u32);

impl RegisteredChild {
    pub fn new(pid: u32) -> Self {
        if let Ok(mut c) = CHILDREN.lock() {
            c.push(pid);
        }
        RegisteredChild(pid)
    }
}

impl Drop for RegisteredChild {
    fn drop(&mut self) {
        if let Ok(mut c) = CHILDREN.lock() {
            c.retain(|&p| p != self.0);
        }
    }
}

/// A private temporary folder (in the system's temp folder) that an interrupted command removes
/// too, as it does when dropped.
pub struct Scratch {
    dir: tempfile::TempDir,
    _registered: Registered,
}

impl Scratch {
    pub fn new() -> std::io::Result<Scratch> {
        let dir = tempfile::tempdir()?;
        let _registered = Registered::new(dir.path());
        Ok(Scratch { dir, _registered })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
