//! TapTalk's `Retry-After`, honoured by every request of a replica: once
//! TapTalk answers 429 with a pause, no request leaves this replica before
//! the pause is over. Without it each event would wait out its own copy of
//! the pause, or give up and go back to the queue only to be redelivered and
//! ask again at once: a retry storm against an upstream that asked for quiet.
//!
//! The pause is capped (`TAPTALK_MAX_RETRY_AFTER`, 60 s by default): a value
//! TapTalk sends is input like any other, and `Retry-After:
//! 18446744073709551615` must not stop the worker for ever. Waiting is
//! cancel-safe: nothing is taken.

use crate::time::Later;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The default of `TAPTALK_MAX_RETRY_AFTER`.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The pause TapTalk asked for, shared by all tasks of one replica; cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct UpstreamPause {
    until: Arc<Mutex<Option<Instant>>>,
    max: Duration,
}

impl UpstreamPause {
    /// Pauses of at most `max`.
    pub fn new(max: Duration) -> UpstreamPause {
        UpstreamPause {
            until: Arc::new(Mutex::new(None)),
            max,
        }
    }

    /// The longest pause honoured.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// TapTalk asked for `after` of quiet: no request before now plus
    /// `after` (at most [`UpstreamPause::max`]), unless a longer pause is on
    /// already. Returns the pause now in force, and whether it is new (none
    /// was on), for a log line.
    pub fn asked(&self, after: Duration) -> (Duration, bool) {
        let now = Instant::now();
        let wanted = now.later_by(after.min(self.max));
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = until.is_none_or(|at| at <= now);
        let at = match *until {
            Some(at) if at > wanted => at,
            _ => wanted,
        };
        *until = Some(at);
        (at.saturating_duration_since(now), fresh)
    }

    /// Waits until no pause is on.
    pub async fn wait(&self) {
        loop {
            let until = *self.until.lock().unwrap_or_else(|p| p.into_inner());
            match until {
                Some(at) if at > Instant::now() => tokio::time::sleep_until(at).await,
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_huge_retry_after_is_capped_and_waited_out_by_everyone() {
        let pause = UpstreamPause::new(Duration::from_secs(2));
        let started = Instant::now();
        let (applied, fresh) = pause.asked(Duration::from_secs(u64::MAX));
        assert_eq!(applied, Duration::from_secs(2));
        assert!(fresh);
        // A shorter ask does not shorten it.
        let (applied, fresh) = pause.asked(Duration::from_secs(1));
        assert_eq!(applied, Duration::from_secs(2));
        assert!(!fresh);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let pause = pause.clone();
                tokio::spawn(async move { pause.wait().await })
            })
            .collect();
        for waiter in waiters {
            waiter.await.expect("waiter");
        }
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // Over: no wait.
        pause.wait().await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
