//! The breaker: notices when a dependency (TapTalk or Postgres) fails for
//! *every* event, not just one, so the worker stops taking work instead of
//! burning through the queue.
//!
//! It opens at once when a dependency refuses the configuration (a wrong
//! server key or endpoint, a wrong database password, a missing table or
//! privilege), and after a streak of transient failures that lasted at least
//! [`BreakerSettings::trip_after`], with no success in between, no gap longer
//! than that, and failures of more than one event (one event that keeps
//! failing alone is that event's problem, not an outage). It closes only when
//! the worker's probe says the dependency answers again.

use crate::observe::metrics::DependencyKind;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the worker depends on for every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dependency {
    Taptalk,
    Postgres,
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dependency::Taptalk => "TapTalk",
            Dependency::Postgres => "Postgres",
        })
    }
}

/// The dependency as the metrics name it.
impl From<Dependency> for DependencyKind {
    fn from(dependency: Dependency) -> DependencyKind {
        match dependency {
            Dependency::Taptalk => DependencyKind::Taptalk,
            Dependency::Postgres => DependencyKind::Postgres,
        }
    }
}

/// A failure that says something about a dependency as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// May pass: a timeout, a 5xx, a dropped connection.
    Transient(String),
    /// Will not pass until an operator acts: every event fails the same way.
    Misconfigured(String),
}

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

/// What the breaker currently believes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Work may be taken.
    Serving,
    /// A dependency fails for everybody; hold the work until it answers again.
    Down {
        dependency: Dependency,
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
    streaks: Arc<Mutex<[Option<Streak>; 2]>>,
}

#[derive(Debug, Clone)]
struct Streak {
    since: Instant,
    last: Instant,
    failures: u32,
    /// The event behind the first failure, if any.
    first_source: Option<String>,
    /// Whether a second event (or an unattributed call) failed too.
    several: bool,
}

fn slot(dependency: Dependency) -> usize {
    match dependency {
        Dependency::Taptalk => 0,
        Dependency::Postgres => 1,
    }
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            health: Arc::new(watch::channel(Health::Serving).0),
            streaks: Arc::new(Mutex::new([None, None])),
        }
    }

    /// A call to `dependency` succeeded (or failed for reasons of the event
    /// alone): any failure streak of that dependency is over.
    pub fn record_success(&self, dependency: Dependency) {
        self.lock_streaks()[slot(dependency)] = None;
    }

    /// A call to `dependency` made for `source` (an event id; `None` when the
    /// call served no event in particular) failed. Returns `true` when this
    /// failure opened the breaker.
    pub fn record_failure(
        &self,
        dependency: Dependency,
        failure: &Failure,
        source: Option<&str>,
    ) -> bool {
        self.record_failure_at(dependency, failure, source, Instant::now())
    }

    /// [`Breaker::record_failure`] at a given moment (tests use it so as not to
    /// depend on the machine's speed).
    fn record_failure_at(
        &self,
        dependency: Dependency,
        failure: &Failure,
        source: Option<&str>,
        now: Instant,
    ) -> bool {
        match failure {
            Failure::Misconfigured(reason) => self.open(dependency, true, reason.clone()),
            Failure::Transient(detail) => {
                let outage = {
                    let mut streaks = self.lock_streaks();
                    let entry = &mut streaks[slot(dependency)];
                    if entry.as_ref().is_some_and(|s| {
                        now.saturating_duration_since(s.last) > self.settings.trip_after
                    }) {
                        *entry = None;
                    }
                    let streak = entry.get_or_insert_with(|| Streak {
                        since: now,
                        last: now,
                        failures: 0,
                        first_source: source.map(str::to_owned),
                        several: source.is_none(),
                    });
                    streak.failures += 1;
                    streak.last = now;
                    streak.several |= source.is_none() || streak.first_source.as_deref() != source;
                    streak.several
                        && streak.failures >= self.settings.min_failures
                        && now.saturating_duration_since(streak.since) >= self.settings.trip_after
                };
                outage
                    && self.open(
                        dependency,
                        false,
                        format!(
                            "every {dependency} call failed for at least {} (last: {detail})",
                            humantime::format_duration(self.settings.trip_after)
                        ),
                    )
            }
        }
    }

    /// Opens the breaker; returns `true` if it was closed before.
    pub fn open(&self, dependency: Dependency, misconfigured: bool, reason: String) -> bool {
        self.health.send_if_modified(|health| match health {
            Health::Serving => {
                *health = Health::Down {
                    dependency,
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
        *self.lock_streaks() = [None, None];
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

    fn lock_streaks(&self) -> std::sync::MutexGuard<'_, [Option<Streak>; 2]> {
        // A panic elsewhere cannot leave a streak half-written: take it as is.
        self.streaks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Later;

    fn transient() -> Failure {
        Failure::Transient("503".into())
    }

    #[test]
    fn misconfiguration_opens_at_once_and_only_once() {
        let breaker = Breaker::new(BreakerSettings::default());
        let bad_key = Failure::Misconfigured("bad key".into());
        assert!(breaker.record_failure(Dependency::Taptalk, &bad_key, Some("e1")));
        assert!(!breaker.record_failure(Dependency::Postgres, &bad_key, Some("e1")));
        assert_eq!(
            breaker.health(),
            Health::Down {
                dependency: Dependency::Taptalk,
                misconfigured: true,
                reason: "bad key".into()
            }
        );
        breaker.close();
        assert_eq!(breaker.health(), Health::Serving);
    }

    fn ms(start: Instant, millis: u64) -> Instant {
        start.later_by(Duration::from_millis(millis))
    }

    #[test]
    fn transient_failures_need_both_count_and_time() {
        let breaker = Breaker::new(BreakerSettings {
            trip_after: Duration::from_millis(40),
            min_failures: 3,
        });
        let t0 = Instant::now();
        for i in 0..10 {
            let event = format!("e{i}");
            assert!(!breaker.record_failure_at(
                Dependency::Postgres,
                &transient(),
                Some(&event),
                ms(t0, i)
            ));
        }
        assert!(!breaker.record_failure_at(
            Dependency::Postgres,
            &transient(),
            Some("a"),
            ms(t0, 30)
        ));
        assert!(breaker.record_failure_at(
            Dependency::Postgres,
            &transient(),
            Some("b"),
            ms(t0, 45)
        ));
        assert!(matches!(
            breaker.health(),
            Health::Down {
                dependency: Dependency::Postgres,
                misconfigured: false,
                ..
            }
        ));
    }

    #[test]
    fn a_success_ends_only_its_own_dependency_streak() {
        let breaker = Breaker::new(BreakerSettings {
            trip_after: Duration::from_millis(20),
            min_failures: 2,
        });
        let t0 = Instant::now();
        breaker.record_failure_at(Dependency::Taptalk, &transient(), None, t0);
        breaker.record_failure_at(Dependency::Postgres, &transient(), None, t0);
        breaker.record_failure_at(Dependency::Postgres, &transient(), None, ms(t0, 12));
        breaker.record_success(Dependency::Taptalk);
        assert!(!breaker.record_failure_at(Dependency::Taptalk, &transient(), None, ms(t0, 24)));
        assert!(breaker.record_failure_at(Dependency::Postgres, &transient(), None, ms(t0, 24)));
    }

    #[test]
    fn one_event_failing_alone_is_not_an_outage() {
        let breaker = Breaker::new(BreakerSettings {
            trip_after: Duration::from_millis(20),
            min_failures: 2,
        });
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(!breaker.record_failure_at(
                Dependency::Taptalk,
                &transient(),
                Some("poison"),
                ms(t0, i * 10)
            ));
        }
        assert!(breaker.record_failure_at(
            Dependency::Taptalk,
            &transient(),
            Some("another"),
            ms(t0, 50)
        ));
    }

    #[test]
    fn a_gap_longer_than_trip_after_starts_a_new_streak() {
        let breaker = Breaker::new(BreakerSettings {
            trip_after: Duration::from_millis(30),
            min_failures: 2,
        });
        let t0 = Instant::now();
        breaker.record_failure_at(Dependency::Taptalk, &transient(), Some("a"), t0);
        assert!(!breaker.record_failure_at(
            Dependency::Taptalk,
            &transient(),
            Some("b"),
            ms(t0, 50)
        ));
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
        breaker.open(Dependency::Taptalk, false, "down".into());
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .ok()
            .and_then(Result::ok)
            .expect("woke up");
    }
}
