//! The breaker: notices when TapTalk fails for *every* event, not just one, so
//! the worker stops taking work instead of burning through the queue.
//!
//! It opens at once when TapTalk refuses the configuration (a wrong server key,
//! a wrong endpoint), and after a streak of transient failures that lasted at
//! least [`BreakerSettings::trip_after`] with no success in between. It closes
//! only when the worker's probe says TapTalk answers again.

use super::TicketError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// When a streak of transient failures counts as an outage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// How long failures must go on, with no success, before the breaker opens.
    pub trip_after: Duration,
    /// How many failures that streak needs at least.
    pub min_failures: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            trip_after: Duration::from_secs(15),
            min_failures: 5,
        }
    }
}

/// What the breaker currently believes about TapTalk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Requests may go out.
    Serving,
    /// TapTalk fails for everybody; hold the work until it answers again.
    Down {
        /// The configuration is wrong (not a passing outage).
        misconfigured: bool,
        reason: String,
    },
}

/// Shared by every task of one worker; cheap to clone.
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    health: Arc<watch::Sender<Health>>,
    streak: Arc<Mutex<Option<Streak>>>,
}

#[derive(Debug, Clone, Copy)]
struct Streak {
    since: Instant,
    failures: u32,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            health: Arc::new(watch::channel(Health::Serving).0),
            streak: Arc::new(Mutex::new(None)),
        }
    }

    /// A request succeeded: any failure streak is over.
    pub fn record_success(&self) {
        *self.lock_streak() = None;
    }

    /// A request failed. Returns `true` when this failure opened the breaker.
    pub fn record_failure(&self, error: &TicketError) -> bool {
        match error {
            TicketError::Rejected { .. } => {
                // One bad event says nothing about TapTalk itself.
                self.record_success();
                false
            }
            TicketError::Misconfigured(reason) => self.open(true, reason.clone()),
            TicketError::Transient { detail, .. } => {
                let outage = {
                    let mut streak = self.lock_streak();
                    let current = streak.get_or_insert(Streak {
                        since: Instant::now(),
                        failures: 0,
                    });
                    current.failures += 1;
                    current.failures >= self.settings.min_failures
                        && current.since.elapsed() >= self.settings.trip_after
                };
                outage
                    && self.open(
                        false,
                        format!(
                            "every TapTalk request failed for at least {} (last: {detail})",
                            humantime::format_duration(self.settings.trip_after)
                        ),
                    )
            }
        }
    }

    /// Opens the breaker; returns `true` if it was closed before.
    pub fn open(&self, misconfigured: bool, reason: String) -> bool {
        self.health.send_if_modified(|health| match health {
            Health::Serving => {
                *health = Health::Down {
                    misconfigured,
                    reason,
                };
                true
            }
            Health::Down { .. } => false,
        })
    }

    /// Closes the breaker after a successful probe.
    pub fn close(&self) {
        self.record_success();
        self.health.send_if_modified(|health| {
            let was_down = *health != Health::Serving;
            *health = Health::Serving;
            was_down
        });
    }

    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    pub fn is_open(&self) -> bool {
        self.health() != Health::Serving
    }

    /// Resolves once the breaker is open (at once if it already is).
    pub async fn opened(&self) {
        let mut watcher = self.health.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = watcher.wait_for(|h| *h != Health::Serving).await;
    }

    fn lock_streak(&self) -> std::sync::MutexGuard<'_, Option<Streak>> {
        self.streak
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> TicketError {
        TicketError::Transient {
            detail: "503".into(),
            retry_after: None,
        }
    }

    #[test]
    fn misconfiguration_opens_at_once_and_only_once() {
        let breaker = Breaker::new(BreakerSettings::default());
        assert!(breaker.record_failure(&TicketError::Misconfigured("bad key".into())));
        assert!(!breaker.record_failure(&TicketError::Misconfigured("bad key".into())));
        assert_eq!(
            breaker.health(),
            Health::Down {
                misconfigured: true,
                reason: "bad key".into()
            }
        );
        breaker.close();
        assert_eq!(breaker.health(), Health::Serving);
    }

    #[test]
    fn transient_failures_need_both_count_and_time() {
        let breaker = Breaker::new(BreakerSettings {
            trip_after: Duration::from_millis(40),
            min_failures: 3,
        });
        for _ in 0..10 {
            assert!(!breaker.record_failure(&transient()));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(breaker.record_failure(&transient()));
        assert!(breaker.is_open());
    }

    #[test]
    fn a_success_or_a_rejection_ends_the_streak() {
        let breaker = Breaker::new(BreakerSettings {
            trip_after: Duration::from_millis(20),
            min_failures: 2,
        });
        breaker.record_failure(&transient());
        std::thread::sleep(Duration::from_millis(30));
        breaker.record_success();
        assert!(!breaker.record_failure(&transient()));
        breaker.record_failure(&TicketError::Rejected {
            field: None,
            message: "x".into(),
        });
        assert!(!breaker.record_failure(&transient()));
        assert!(!breaker.is_open());
    }

    #[tokio::test]
    async fn opened_resolves_when_the_breaker_opens() {
        let breaker = Breaker::new(BreakerSettings::default());
        let waiter = tokio::spawn({
            let breaker = breaker.clone();
            async move { breaker.opened().await }
        });
        tokio::task::yield_now().await;
        breaker.open(false, "down".into());
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .ok()
            .and_then(Result::ok)
            .expect("woke up");
    }
}
