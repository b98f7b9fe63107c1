//! Test-only guards: an allocator that counts live bytes (peak per case, hard cap) and an
//! inotify watch that tells whether a file was opened or read.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CString;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// Install with `#[global_allocator] static A: Guard = Guard;` in a test crate.
pub struct Guard;

static CUR: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Allocations beyond this many live bytes fail (null: the process aborts with "memory
/// allocation of N bytes failed", or `try_reserve` returns an error) instead of taking the
/// machine's memory.
pub const HARD_CAP: usize = 6 << 30;

fn take(n: usize) -> bool {
    let c = CUR.fetch_add(n, SeqCst) + n;
    if c > HARD_CAP {
        CUR.fetch_sub(n, SeqCst);
        return false;
    }
    PEAK.fetch_max(c, SeqCst);
    true
}

fn give(n: usize) {
    CUR.fetch_sub(n, SeqCst);
}

unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if !take(l.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(l);
        if p.is_null() {
            give(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if !take(l.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(l);
        if p.is_null() {
            give(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        give(l.size());
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let old = l.size();
        if new > old && !take(new - old) {
            return std::ptr::null_mut();
        }
        let q = System.realloc(p, l, new);
        if q.is_null() {
            if new > old {
                give(new - old);
            }
        } else if new < old {
            give(old - new);
        }
        q
    }
}

/// Live bytes now; the peak restarts from here.
pub fn reset_peak() -> usize {
    let c = CUR.load(SeqCst);
    PEAK.store(c, SeqCst);
    c
}

pub fn peak() -> usize {
    PEAK.load(SeqCst)
}

/// An inotify watch on one folder: which of its entries were opened or read.
pub struct Watch {
    fd: i32,
}

impl Watch {
    pub fn new(dir: &Path) -> Watch {
        let c = CString::new(dir.to_string_lossy().into_owned()).unwrap();
        // SAFETY: plain syscalls on a fresh descriptor and a NUL-terminated path.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            assert!(fd >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
            let wd = libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN | libc::IN_ACCESS);
            assert!(wd >= 0, "inotify_add_watch: {}", std::io::Error::last_os_error());
            Watch { fd }
        }
    }

    /// Names of the entries opened or read since the watch began (or the last call).
    pub fn touched(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reading into a buffer we own, of the length we pass.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let mut i = 0usize;
            while i + 16 <= n as usize {
                let len = u32::from_ne_bytes(buf[i + 12..i + 16].try_into().unwrap()) as usize;
                let name = &buf[i + 16..i + 16 + len];
                let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
                names.push(String::from_utf8_lossy(name).into_owned());
                i += 16 + len;
            }
        }
        names
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor we opened.
        unsafe { libc::close(self.fd) };
    }
}
