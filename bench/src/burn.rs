//! `--burn-core`: a CPU-hungry neighbour for the whole run, one thread that
//! spins on one core, so the figures show what a worker sees on a shared
//! node (issue 16: p99 at 500/s doubled beside such a process).
//!
//! The thread lives in the bench's own process, which no figure counts: the
//! worker's CPU is read per replica, and the spinning takes the cores that
//! the broker, Postgres, the stand-in and the replicas share.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// The spinning thread; it stops when dropped.
pub(crate) struct Burner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Burner {
    /// Starts spinning; `None` if the thread cannot be started.
    pub(crate) fn start() -> Option<Burner> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("burn-core".into())
            .spawn(move || {
                let mut spins: u64 = 0;
                while !stopped.load(Ordering::Relaxed) {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
                spins
            })
            .ok()?;
        Some(Burner {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_spins_until_dropped() {
        let burner = Burner::start().expect("a thread");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut burner = burner;
        burner.stop.store(true, Ordering::Relaxed);
        let spins = burner
            .thread
            .take()
            .expect("the thread")
            .join()
            .expect("joined");
        assert!(spins > 0, "it spun");
    }
}
