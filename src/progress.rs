//! Progress on stderr for stages that take more than a second (load, prune, save, verify).
//!
//! Shown only when stderr is a terminal and `--quiet` was not given; otherwise every call here is
//! a no-op. A stage draws nothing for its first second, then a spinner (or a bar, when the stage
//! reports how much work it has through [`Work`]) until it ends. stdout is never touched.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

static QUIET: AtomicBool = AtomicBool::new(false);
static LEN: AtomicU64 = AtomicU64::new(0);
static POS: AtomicU64 = AtomicU64::new(0);

/// Silence progress output for this process (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

fn shown() -> bool {
    !QUIET.load(Ordering::Relaxed) && std::io::stderr().is_terminal()
}

/// A running stage; its indicator (if any) is removed when it is dropped.
pub struct Stage {
    live: Option<(Sender<()>, JoinHandle<()>)>,
}

impl Stage {
    pub fn start(name: &'static str) -> Stage {
        LEN.store(0, Ordering::Relaxed);
        POS.store(0, Ordering::Relaxed);
        if !shown() {
            return Stage { live: None };
        }
        let (tx, rx) = channel::<()>();
        let h = std::thread::spawn(move || {
            // Nothing for short stages.
            if !matches!(rx.recv_timeout(Duration::from_secs(1)), Err(RecvTimeoutError::Timeout)) {
                return;
            }
            let pb = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
                .with_elapsed(Duration::from_secs(1));
            let spinner = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("template");
            let bar = indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("template")
                .progress_chars("=> ");
            pb.set_style(spinner);
            pb.set_message(name);
            let mut with_len = false;
            loop {
                let len = LEN.load(Ordering::Relaxed);
                if len > 0 {
                    if !with_len {
                        pb.set_style(bar.clone());
                        with_len = true;
                    }
                    pb.set_length(len);
                    pb.set_position(POS.load(Ordering::Relaxed).min(len));
                } else {
                    pb.tick();
                }
                if !matches!(rx.recv_timeout(Duration::from_millis(100)), Err(RecvTimeoutError::Timeout)) {
                    break;
                }
            }
            pb.finish_and_clear();
        });
        Stage { live: Some((tx, h)) }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Some((tx, h)) = self.live.take() {
            let _ = tx.send(());
            let _ = h.join();
        }
    }
}

/// Countable work of the current stage (e.g. tensors to prune): turns its spinner into a bar.
pub struct Work(());

impl Work {
    pub fn new(len: u64) -> Work {
        POS.store(0, Ordering::Relaxed);
        LEN.store(len, Ordering::Relaxed);
        Work(())
    }

    pub fn inc(&self, k: u64) {
        POS.fetch_add(k, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_terminal_no_thread() {
        // Under the test harness stderr is captured or a pipe: a stage must not spawn anything.
        let s = Stage::start("test");
        if !std::io::stderr().is_terminal() {
            assert!(s.live.is_none());
        }
        Work::new(3).inc(1);
    }
}
