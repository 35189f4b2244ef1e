//! Exponential backoff with jitter, for every "try again later" in the worker:
//! upstream calls, database writes, reconnects and outage probes.
//!
//! This is the only module that uses the `backoff` crate. The crate carries an
//! "unmaintained" advisory (RUSTSEC-2025-0012); keeping it behind [`Schedule`]
//! means replacing it touches this file alone.

use backoff::ExponentialBackoffBuilder;
use backoff::backoff::Backoff as _;
use std::future::Future;
use std::time::{Duration, Instant};

/// How to space retries: pauses start at `first_pause`, double (with ±50%
/// jitter) up to `max_pause`, and stop once `give_up_after` has passed since the
/// first attempt (`None`: never stop).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub first_pause: Duration,
    pub max_pause: Duration,
    pub give_up_after: Option<Duration>,
}

impl RetryPolicy {
    /// A policy that keeps trying forever, for reconnect loops and probes.
    pub fn forever(first_pause: Duration, max_pause: Duration) -> RetryPolicy {
        RetryPolicy {
            first_pause,
            max_pause,
            give_up_after: None,
        }
    }

    /// Starts a fresh schedule; the time budget runs from now.
    pub fn schedule(&self) -> Schedule {
        let backoff = ExponentialBackoffBuilder::new()
            .with_initial_interval(self.first_pause)
            .with_max_interval(self.max_pause)
            .with_multiplier(2.0)
            .with_randomization_factor(0.5)
            .with_max_elapsed_time(self.give_up_after)
            .build();
        Schedule {
            backoff,
            policy: *self,
            started: Instant::now(),
        }
    }
}

/// The pauses of one run of retries.
#[derive(Debug)]
pub struct Schedule {
    backoff: backoff::ExponentialBackoff,
    policy: RetryPolicy,
    started: Instant,
}

impl Schedule {
    /// The pause before the next attempt, or `None` when the time budget is
    /// spent. Jittered pauses never exceed the policy's `max_pause`; a server's
    /// `Retry-After` (`at_least`) is honoured in full, unless waiting that long
    /// would overrun the budget, which ends the retries at once.
    pub fn next_pause(&mut self, at_least: Option<Duration>) -> Option<Duration> {
        let pause = self
            .backoff
            .next_backoff()?
            .min(self.policy.max_pause)
            .max(at_least.unwrap_or_default());
        match self.policy.give_up_after {
            Some(budget) if self.started.elapsed().saturating_add(pause) > budget => None,
            _ => Some(pause),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after the next pause, waiting at least this long if given.
    Retry(Option<Duration>),
    /// The error is final: return it.
    Stop,
}

/// Runs `attempt` until it succeeds, `judge` calls an error final, or the
/// policy's time budget is spent; returns the last error then. `judge` sees
/// every error, so it is also the place to log or count them.
pub async fn retry<T, E, Fut>(
    policy: &RetryPolicy,
    mut attempt: impl FnMut() -> Fut,
    mut judge: impl FnMut(&E) -> Verdict,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut schedule = policy.schedule();
    loop {
        let error = match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let Verdict::Retry(at_least) = judge(&error) else {
            return Err(error);
        };
        match schedule.next_pause(at_least) {
            Some(pause) => tokio::time::sleep(pause).await,
            None => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn quick(budget: Option<Duration>) -> RetryPolicy {
        RetryPolicy {
            first_pause: Duration::from_millis(1),
            max_pause: Duration::from_millis(4),
            give_up_after: budget,
        }
    }

    #[tokio::test]
    async fn retries_until_success() {
        let calls = Cell::new(0);
        let result: Result<u32, &str> = retry(
            &quick(Some(Duration::from_secs(5))),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { if n < 4 { Err("not yet") } else { Ok(n) } }
            },
            |_| Verdict::Retry(None),
        )
        .await;
        assert_eq!(result, Ok(4));
    }

    #[tokio::test]
    async fn stops_on_a_final_error_and_when_the_budget_is_spent() {
        let calls = Cell::new(0);
        let result: Result<(), &str> = retry(
            &quick(Some(Duration::from_secs(5))),
            || {
                calls.set(calls.get() + 1);
                async { Err("final") }
            },
            |_| Verdict::Stop,
        )
        .await;
        assert_eq!((result, calls.get()), (Err("final"), 1));

        let started = std::time::Instant::now();
        let result: Result<(), &str> = retry(
            &quick(Some(Duration::from_millis(30))),
            || async { Err("down") },
            |_| Verdict::Retry(None),
        )
        .await;
        assert_eq!(result, Err("down"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn pauses_grow_within_bounds_and_honour_retry_after() {
        let policy = RetryPolicy::forever(Duration::from_millis(100), Duration::from_secs(2));
        let mut schedule = policy.schedule();
        let pauses: Vec<Duration> = (0..12).filter_map(|_| schedule.next_pause(None)).collect();
        assert_eq!(pauses.len(), 12);
        assert!(
            pauses
                .iter()
                .all(|p| *p >= Duration::from_millis(50) && *p <= Duration::from_secs(2))
        );
        assert!(pauses[11] > pauses[0]);
        assert_eq!(
            schedule.next_pause(Some(Duration::from_secs(60))),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn a_retry_after_beyond_the_budget_ends_the_retries() {
        let mut schedule = quick(Some(Duration::from_secs(5))).schedule();
        assert!(schedule.next_pause(Some(Duration::from_secs(2))).is_some());
        assert_eq!(schedule.next_pause(Some(Duration::from_secs(60))), None);
    }
}
