//! Liveness: whether the worker's control loop is turning, for `/healthz`.
//!
//! The loop that feeds deliveries beats on every turn and at least once a
//! second while it waits; the waits outside it (probing a dependency that is
//! down, pausing before a reconnect, applying migrations) beat every second
//! while they last, and each is bounded. A heartbeat older than [`STALE`]
//! means the loop is stuck: the process should be restarted. (A blocked
//! runtime is caught too: `/healthz` itself would not be answered.)

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// A heartbeat older than this means the control loop is stuck.
pub const STALE: Duration = Duration::from_secs(30);

/// How often waits beat.
const EVERY: Duration = Duration::from_secs(1);

/// The control loop's heartbeat. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    start: Instant,
    /// Milliseconds after `start` of the last beat.
    last: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat::new()
    }
}

impl Heartbeat {
    pub fn new() -> Heartbeat {
        Heartbeat {
            start: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The loop turned.
    pub fn beat(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// How long ago the loop last turned.
    pub fn since_last(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Whether the loop turned within [`STALE`].
    pub fn is_alive(&self) -> bool {
        self.since_last() < STALE
    }

    /// Runs `wait`, beating every second until it is done.
    pub async fn while_waiting<T>(&self, wait: impl Future<Output = T>) -> T {
        tokio::pin!(wait);
        let mut ticks = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                done = &mut wait => {
                    self.beat();
                    return done;
                }
                _ = ticks.tick() => self.beat(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_stops_beating_goes_stale_and_waiting_keeps_it_alive() {
        let heartbeat = Heartbeat::new();
        heartbeat.beat();
        assert!(heartbeat.is_alive());
        tokio::time::advance(STALE + Duration::from_secs(1)).await;
        assert!(!heartbeat.is_alive(), "no beat for longer than STALE");
        heartbeat.while_waiting(tokio::time::sleep(STALE * 2)).await;
        assert!(heartbeat.is_alive(), "a long wait beats all along");
    }
}
