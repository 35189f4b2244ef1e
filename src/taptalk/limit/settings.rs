//! The limiter's settings: the mode (`auto` or a fixed number), the bounds of
//! the adaptive limit, and the tuning of its control law, each with its
//! default and the reason for it. The module documentation of
//! [`crate::taptalk::limit`] explains how they act together.

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

/// How many TapTalk requests one replica may have in flight: found by the
/// limiter, or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Concurrency {
    /// Adapt between [`LimitSettings::min`] and [`LimitSettings::max`].
    #[default]
    Auto,
    /// Exactly this many, whatever TapTalk answers (no adaptation, no
    /// bounds).
    Fixed(NonZeroUsize),
}

impl FromStr for Concurrency {
    type Err = InvalidLimitSettings;

    /// `auto` (any case) or a whole number from 1 to [`MAX_LIMIT`].
    fn from_str(text: &str) -> Result<Concurrency, InvalidLimitSettings> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("auto") {
            return Ok(Concurrency::Auto);
        }
        text.parse::<NonZeroUsize>()
            .ok()
            .filter(|n| n.get() <= MAX_LIMIT)
            .map(Concurrency::Fixed)
            .ok_or_else(|| InvalidLimitSettings::NotAConcurrency(clip(text)))
    }
}

impl fmt::Display for Concurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Concurrency::Auto => f.write_str("auto"),
            Concurrency::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Settings that cannot work together, or a value that is not a setting.
/// The setting's name (`CONCURRENCY`) is said by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLimitSettings {
    /// Not `auto` nor a limit; holds the start of the text.
    #[error("{0:?} is neither `auto` nor a whole number from 1 to {MAX_LIMIT}")]
    NotAConcurrency(String),
    #[error("a fixed concurrency of {0} is above {MAX_LIMIT}")]
    FixedAboveLimit(usize),
    #[error("the minimum concurrency must be at least 1")]
    MinimumZero,
    #[error("the minimum concurrency ({min}) is above the maximum ({max})")]
    MinimumAboveMaximum { min: usize, max: usize },
    #[error("the maximum concurrency ({0}) is above {MAX_LIMIT}")]
    MaximumAboveLimit(usize),
    #[error("the round-trip tolerances must be finite and above 1")]
    Tolerance,
    #[error("the decrease factor must lie between 0 and 1")]
    Decrease,
    #[error("the back-pressure share must lie between 0 and 1")]
    BackpressureShare,
    #[error("the baseline window and the minimum interval must be positive")]
    ZeroWindow,
}

/// Everything the limiter needs. [`LimitSettings::default`] is what a
/// replica should run with; only the mode and the bounds are meant to be
/// operator settings, the rest is tuning kept here so that tests and the
/// benchmark can vary it.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    /// `auto` (default) or a fixed limit.
    pub concurrency: Concurrency,
    /// The adaptive limit never goes below this (default 16): enough to keep a
    /// fast TapTalk busy even when the worker's own CPU load inflates round
    /// trips, and a floor that keeps a storm of 429s from starving intake.
    pub min: usize,
    /// The adaptive limit never goes above this (default 1024): one replica
    /// hides a 100 ms TapTalk at ~10,000 requests per second.
    pub max: usize,
    /// Where the adaptive limit starts, clamped into `min..=max` (default 64,
    /// the fixed concurrency the worker had before; slow start leaves it
    /// within a few round trips).
    pub initial: usize,
    /// Round trips more than this many times the baseline mean TapTalk queues
    /// our requests: the limit goes back to the estimated knee (default 1.5;
    /// the limit then saws between the knee and half again as much, so a
    /// request spends at most ~1.5× the unloaded time inside TapTalk).
    pub tolerance: f64,
    /// During slow start a smaller rise already ends it (default 1.25): the
    /// limit grows so fast there that waiting for `tolerance` would overshoot
    /// far past the knee before the first slow answers return.
    pub slow_start_exit: f64,
    /// Round trips within this much of the baseline never count as queueing,
    /// whatever the ratio (default 20 ms): with a TapTalk that answers in
    /// 1 ms, scheduling delays on a busy worker easily double the round trip
    /// without TapTalk queueing anything.
    pub rtt_slack: Duration,
    /// The factor of a cut on back-pressure (default 0.75; TCP CUBIC uses 0.7,
    /// Vector 0.9). At most one cut per round trip, so a burst of 429s cuts
    /// once, not once per request.
    pub decrease: f64,
    /// Back-pressure acts once it is more than this share of the answers of
    /// the current and the previous control interval (about the last round
    /// trip or two; default 0.1): a storm of 429s crosses it within a few
    /// milliseconds, while a TapTalk that fails 1% of requests at random does
    /// not shrink the limit for nothing.
    pub backpressure_share: f64,
    /// How long the baseline (the lowest mean round trip seen) is remembered
    /// (default 10 s): long enough to span many cycles of the limit, short
    /// enough that a TapTalk that became slower for good is believed soon.
    pub baseline_window: Duration,
    /// The shortest control interval (default 10 ms); the interval is
    /// otherwise one smoothed round trip.
    pub min_interval: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            concurrency: Concurrency::Auto,
            min: 16,
            max: 1024,
            initial: 64,
            tolerance: 1.5,
            slow_start_exit: 1.25,
            rtt_slack: Duration::from_millis(20),
            decrease: 0.75,
            backpressure_share: 0.1,
            baseline_window: Duration::from_secs(10),
            min_interval: Duration::from_millis(10),
        }
    }
}

impl LimitSettings {
    /// Fixed mode: exactly `n` in flight.
    pub fn fixed(n: NonZeroUsize) -> LimitSettings {
        LimitSettings {
            concurrency: Concurrency::Fixed(n),
            ..LimitSettings::default()
        }
    }

    /// The limit to start with: the fixed one, or `initial` within the bounds.
    pub fn starting_limit(&self) -> usize {
        match self.concurrency {
            Concurrency::Fixed(n) => n.get(),
            Concurrency::Auto => self.initial.clamp(self.min, self.max),
        }
    }

    /// Checks that the settings can work together. In fixed mode the bounds
    /// and the tuning are not used, and not checked.
    pub fn validate(&self) -> Result<(), InvalidLimitSettings> {
        if let Concurrency::Fixed(n) = self.concurrency {
            if n.get() > MAX_LIMIT {
                return Err(InvalidLimitSettings::FixedAboveLimit(n.get()));
            }
            return Ok(());
        }
        if self.min == 0 {
            return Err(InvalidLimitSettings::MinimumZero);
        }
        if self.min > self.max {
            return Err(InvalidLimitSettings::MinimumAboveMaximum {
                min: self.min,
                max: self.max,
            });
        }
        // tokio's semaphore holds at most usize::MAX >> 3 permits.
        if self.max > MAX_LIMIT {
            return Err(InvalidLimitSettings::MaximumAboveLimit(self.max));
        }
        let ratio_ok = |r: f64| r.is_finite() && r > 1.0;
        if !ratio_ok(self.tolerance) || !ratio_ok(self.slow_start_exit) {
            return Err(InvalidLimitSettings::Tolerance);
        }
        if !(self.decrease.is_finite() && self.decrease > 0.0 && self.decrease < 1.0) {
            return Err(InvalidLimitSettings::Decrease);
        }
        if !(self.backpressure_share.is_finite()
            && self.backpressure_share > 0.0
            && self.backpressure_share < 1.0)
        {
            return Err(InvalidLimitSettings::BackpressureShare);
        }
        if self.baseline_window.is_zero() || self.min_interval.is_zero() {
            return Err(InvalidLimitSettings::ZeroWindow);
        }
        Ok(())
    }
}

/// The largest limit the limiter accepts: far above any sensible setting,
/// and safely below what tokio's semaphore can count.
pub const MAX_LIMIT: usize = 1 << 20;

fn clip(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_parses_auto_or_a_number() {
        assert_eq!("auto".parse(), Ok(Concurrency::Auto));
        assert_eq!(" AUTO ".parse(), Ok(Concurrency::Auto));
        assert_eq!(
            "64".parse(),
            Ok(Concurrency::Fixed(NonZeroUsize::new(64).expect("64")))
        );
        for bad in ["0", "-1", "", "lots", "1.5", "99999999999"] {
            assert!(bad.parse::<Concurrency>().is_err(), "{bad}");
        }
        assert_eq!(Concurrency::Auto.to_string(), "auto");
    }

    #[test]
    fn defaults_are_valid_and_start_within_bounds() {
        let settings = LimitSettings::default();
        assert_eq!(settings.validate(), Ok(()));
        assert_eq!(settings.starting_limit(), 64);
        let narrow = LimitSettings {
            max: 32,
            ..LimitSettings::default()
        };
        assert_eq!(narrow.starting_limit(), 32);
        let fixed = LimitSettings::fixed(NonZeroUsize::new(7).expect("7"));
        assert_eq!((fixed.validate(), fixed.starting_limit()), (Ok(()), 7));
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let base = LimitSettings::default();
        for bad in [
            LimitSettings {
                min: 0,
                ..base.clone()
            },
            LimitSettings {
                min: 100,
                max: 50,
                ..base.clone()
            },
            LimitSettings {
                max: MAX_LIMIT + 1,
                ..base.clone()
            },
            LimitSettings {
                tolerance: 1.0,
                ..base.clone()
            },
            LimitSettings {
                slow_start_exit: f64::NAN,
                ..base.clone()
            },
            LimitSettings {
                decrease: 1.0,
                ..base.clone()
            },
            LimitSettings {
                backpressure_share: 0.0,
                ..base.clone()
            },
            LimitSettings {
                min_interval: Duration::ZERO,
                ..base.clone()
            },
            LimitSettings::fixed(NonZeroUsize::new(MAX_LIMIT + 1).expect("n")),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_refusal_reads_as_before() {
        assert_eq!(
            "lots".parse::<Concurrency>(),
            Err(InvalidLimitSettings::NotAConcurrency("lots".into()))
        );
        assert_eq!(
            InvalidLimitSettings::NotAConcurrency("lots".into()).to_string(),
            format!("\"lots\" is neither `auto` nor a whole number from 1 to {MAX_LIMIT}")
        );
        assert_eq!(
            InvalidLimitSettings::MinimumAboveMaximum { min: 9, max: 4 }.to_string(),
            "the minimum concurrency (9) is above the maximum (4)"
        );
        assert_eq!(
            InvalidLimitSettings::FixedAboveLimit(1 << 21).to_string(),
            format!("a fixed concurrency of 2097152 is above {MAX_LIMIT}")
        );
    }
}
