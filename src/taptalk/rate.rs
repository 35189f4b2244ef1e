//! An optional hard rate limit toward TapTalk (`TAPTALK_RATE_LIMIT`,
//! requests per second per replica), for a TapTalk quota that the adaptive
//! concurrency limit alone would only find by hitting it (429s).
//!
//! Requests are spaced evenly, `1 / rate` apart, with no burst beyond one
//! request: that is the GCRA of the `governor` crate with a burst of one, so
//! any window of `t` seconds holds at most `rate × t + 1` requests. Waiters go
//! through a FIFO gate one at a time, so a thousand waiting tasks do not all
//! wake up for each free instant; the wait is cancel-safe (nothing is taken
//! until `wait` returns). The limiter reads tokio's clock, so paused-time
//! tests drive it too.
//!
//! Use it before [`AdaptiveLimit::acquire`](super::limit::AdaptiveLimit::acquire),
//! so that waiting for the rate does not hold a concurrency slot or inflate a
//! measured round trip. `Retry-After` is not its business: the retry code
//! waits that out per event.

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The highest rate accepted: one request per microsecond.
pub const MAX_RATE: f64 = 1_000_000.0;

/// A rate limit shared by all tasks of one replica; cheap to clone.
#[derive(Clone)]
pub struct RateLimit {
    inner: Arc<Inner>,
}

struct Inner {
    per_second: f64,
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>,
    clock: TokioClock,
    /// Waiters queue here, first come first served; only the first sleeps on
    /// the limiter.
    gate: Mutex<()>,
}

/// A value that is not a rate. The setting's name is said by the caller.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidRate {
    /// Not a number; holds the start of the text (at most 40 characters).
    #[error("{0:?} is not a number of requests per second")]
    NotANumber(String),
    #[error("{0} is not a rate between 0 and {MAX_RATE} requests per second")]
    OutOfRange(f64),
    /// So fast that the time between two requests rounds down to zero.
    #[error("{0} per second is too fast")]
    TooFast(f64),
}

impl RateLimit {
    /// At most `per_second` requests per second (fractions allowed: `0.5` is
    /// one every two seconds).
    pub fn new(per_second: f64) -> Result<RateLimit, InvalidRate> {
        if !(per_second.is_finite() && per_second > 0.0 && per_second <= MAX_RATE) {
            return Err(InvalidRate::OutOfRange(per_second));
        }
        let period = Duration::from_secs_f64(1.0 / per_second);
        let quota = Quota::with_period(period).ok_or(InvalidRate::TooFast(per_second))?;
        let clock = TokioClock::new();
        Ok(RateLimit {
            inner: Arc::new(Inner {
                per_second,
                limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
                clock,
                gate: Mutex::new(()),
            }),
        })
    }

    /// Reads a setting: a positive number of requests per second, such as
    /// `50` or `2.5`; an optional `/s` suffix is accepted.
    pub fn parse(text: &str) -> Result<RateLimit, InvalidRate> {
        let trimmed = text.trim();
        let number = trimmed.strip_suffix("/s").unwrap_or(trimmed).trim();
        let per_second = number
            .parse::<f64>()
            .map_err(|_| InvalidRate::NotANumber(trimmed.chars().take(40).collect()))?;
        RateLimit::new(per_second)
    }

    /// The configured rate, in requests per second.
    pub fn per_second(&self) -> f64 {
        self.inner.per_second
    }

    /// Waits until one more request fits the rate, and counts it.
    pub async fn wait(&self) {
        let inner = &*self.inner;
        let _gate = inner.gate.lock().await;
        loop {
            match inner.limiter.check() {
                Ok(()) => return,
                Err(not_until) => {
                    let pause = not_until.wait_time_from(inner.clock.now());
                    tokio::time::sleep(pause.max(Duration::from_micros(1))).await;
                }
            }
        }
    }
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("per_second", &self.inner.per_second)
            .finish_non_exhaustive()
    }
}

/// governor's clock, read from tokio's (which tests can pause).
#[derive(Debug, Clone)]
struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    fn new() -> TokioClock {
        TokioClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.origin.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(RateLimit::parse("50").map(|r| r.per_second()), Ok(50.0));
        assert_eq!(RateLimit::parse(" 2.5/s ").map(|r| r.per_second()), Ok(2.5));
        for bad in ["", "0", "-3", "fast", "NaN", "inf", "2000000"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_refused_rate_says_what_a_rate_is() {
        assert_eq!(
            RateLimit::parse("lots").map(|_| ()),
            Err(InvalidRate::NotANumber("lots".into()))
        );
        assert_eq!(
            InvalidRate::NotANumber("lots".into()).to_string(),
            "\"lots\" is not a number of requests per second"
        );
        assert_eq!(
            RateLimit::parse("-2/s").map(|_| ()),
            Err(InvalidRate::OutOfRange(-2.0))
        );
        assert!(
            InvalidRate::OutOfRange(-2.0)
                .to_string()
                .starts_with("-2 is not a rate between 0 and "),
        );
        assert_eq!(
            InvalidRate::TooFast(1e12).to_string(),
            "1000000000000 per second is too fast"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn spaces_requests_evenly() {
        let rate = RateLimit::new(100.0).expect("rate");
        let start = Instant::now();
        for _ in 0..201 {
            rate.wait().await;
        }
        // The first goes at once, then one every 10 ms.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1_999) && took <= Duration::from_millis(2_010),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn many_waiters_share_the_rate_in_arrival_order() {
        let rate = RateLimit::new(50.0).expect("rate");
        let start = Instant::now();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..100 {
            let (rate, order) = (rate.clone(), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                rate.wait().await;
                order.lock().expect("order").push((i, start.elapsed()));
            }));
            tokio::task::yield_now().await;
        }
        for task in tasks {
            task.await.expect("task");
        }
        let order = order.lock().expect("order").clone();
        let indices: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
        assert_eq!(indices, (0..100).collect::<Vec<_>>());
        let last = order.last().map(|(_, at)| *at).unwrap_or_default();
        // 100 requests at 50/s: the last one 99 periods of 20 ms after the first.
        assert!(
            last >= Duration::from_millis(1_979) && last <= Duration::from_millis(2_000),
            "{last:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_wait_takes_nothing() {
        let rate = RateLimit::new(1.0).expect("rate");
        rate.wait().await; // the first is free
        let abandoned = tokio::time::timeout(Duration::from_millis(300), rate.wait()).await;
        assert!(abandoned.is_err());
        let start = Instant::now();
        rate.wait().await;
        // One second after the first, not two.
        assert!(
            start.elapsed() <= Duration::from_millis(701),
            "{:?}",
            start.elapsed()
        );
    }
}
