//! The stand-in's fault and latency knobs.

use std::time::Duration;

/// How the stand-in misbehaves. Shares are probabilities between 0 and 1,
/// drawn per request in this order: hang, 503, 429. With a `capacity`, a
/// request first waits for a slot (or is shed), then meets the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct Knobs {
    /// Added to every answer.
    pub latency: Duration,
    /// A random extra delay between zero and this, per request.
    pub latency_jitter: Duration,
    /// Share of requests answered 503 Service Unavailable.
    pub fail_503: f64,
    /// Share of requests answered 429 Too Many Requests (with `Retry-After: 1`).
    pub fail_429: f64,
    /// Share of requests that hang for `hang_for` before a 504, well past any
    /// sensible client timeout.
    pub hang: f64,
    pub hang_for: Duration,
    /// Answer every request `HeaderValidationFailed`, as if the key were revoked.
    pub wrong_key: bool,
    /// Send TapTalk's numeric error codes (`40001`, `40002`) instead of names.
    pub numeric_codes: bool,
    /// At most this many requests are served at once (the latency is spent
    /// holding a slot); the others wait in line, first come first served, so
    /// latency grows with load. `None`: no limit.
    pub capacity: Option<usize>,
    /// With a `capacity`: at most this many requests wait; one more is shed
    /// at once with 503. `None`: the line has no end.
    pub max_queue: Option<usize>,
    /// `xcUserID`s whose requests are answered 503 whatever else is set, as
    /// if TapTalk failed for those users only (tests: events that exhaust
    /// their retries while others get tickets).
    pub unavailable_for: Vec<String>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            fail_503: 0.0,
            fail_429: 0.0,
            hang: 0.0,
            hang_for: Duration::from_secs(300),
            wrong_key: false,
            numeric_codes: false,
            capacity: None,
            max_queue: None,
            unavailable_for: Vec::new(),
        }
    }
}

impl Knobs {
    /// Every request fails with 503: TapTalk is down.
    pub fn down() -> Knobs {
        Knobs {
            fail_503: 1.0,
            ..Knobs::default()
        }
    }
}
