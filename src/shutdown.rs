//! Shutdown: one explicit signal that every long-running part of the worker
//! listens to.
//!
//! `SIGTERM` or `SIGINT` triggers it (see [`Shutdown::on_signals`]); tests and
//! the demo trigger it by hand. Once triggered it stays triggered. What each
//! part does then is documented where it listens: the worker stops consuming,
//! lets in-flight messages finish within `SHUTDOWN_GRACE`, returns the rest to
//! the queue and closes its connections.

use tokio_util::sync::CancellationToken;

/// A cloneable handle on the shutdown signal.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Asks everything listening to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has been asked for.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has been asked for (at once if it already was).
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// Triggers this shutdown on the first `SIGTERM` or `SIGINT`.
    pub fn on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = self.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = shutdown.triggered() => return,
            };
            tracing::info!(signal = name, "shutdown requested");
            shutdown.trigger();
        });
        Ok(())
    }
}
