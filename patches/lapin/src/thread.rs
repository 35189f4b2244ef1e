use crate::Result;
use std::sync::{Arc, Mutex, MutexGuard};

/// The end of the I/O loop, which runs as a task on the connection's
/// runtime: it sends its result here when it stops.
pub(crate) type JoinHandle = flume::Receiver<Result<()>>;
type Inner = Option<JoinHandle>;

#[derive(Clone)]
pub(crate) struct ThreadHandle(Arc<Mutex<Inner>>);

impl Default for ThreadHandle {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(None)))
    }
}

impl ThreadHandle {
    pub(crate) fn register(&self, handle: JoinHandle) {
        *self.lock_inner() = Some(handle);
    }

    fn take(&self) -> Option<JoinHandle> {
        self.lock_inner().take()
    }

    /// Blocks the current thread until the I/O loop has stopped (which must
    /// not be a thread of the runtime the loop runs on).
    pub(crate) fn wait(&self, _context: &'static str) -> Result<()> {
        match self.take().map(|done| done.recv()) {
            Some(Ok(res)) => res,
            Some(Err(_)) => Err(std::io::Error::other(
                "the I/O loop's task ended without a result (it panicked, or its runtime stopped)",
            )
            .into()),
            // Not started.
            None => Ok(()),
        }
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
