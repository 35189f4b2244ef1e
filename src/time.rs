//! Time arithmetic that cannot panic. `Instant + Duration` and `Duration +
//! Duration` panic on overflow, and durations here come from outside (a
//! `Retry-After`, a setting, a clock): every sum of times in the worker goes
//! through [`Later`], which saturates. Clippy's `arithmetic_side_effects`
//! (see `clippy.toml`) flags any operator left on a time type.

use std::time::Duration;

/// Far enough ahead to mean "never" for any deadline here.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A point in time that can be moved later without panicking.
pub trait Later: Sized + Copy {
    /// `self + by`, or as late as can be represented.
    fn later_by(self, by: Duration) -> Self;
}

impl Later for std::time::Instant {
    fn later_by(self, by: Duration) -> Self {
        self.checked_add(by)
            .or_else(|| self.checked_add(FAR))
            .unwrap_or(self)
    }
}

impl Later for tokio::time::Instant {
    fn later_by(self, by: Duration) -> Self {
        self.checked_add(by)
            .or_else(|| self.checked_add(FAR))
            .unwrap_or(self)
    }
}

impl Later for Duration {
    fn later_by(self, by: Duration) -> Self {
        self.saturating_add(by)
    }
}

/// A duration as a person reads a wait: `132ms`, `4.2s`, `3m 5s`, never
/// below the millisecond (a jittered pause is `1s 3ms 2us 298ns` to
/// humantime).
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 && !ms.is_multiple_of(1_000) {
        format!("{:.1}s", d.as_secs_f64())
    } else if ms < 60_000 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}m {}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_saturate_instead_of_panicking() {
        let now = std::time::Instant::now();
        assert!(now.later_by(Duration::MAX) > now);
        assert_eq!(
            Some(now.later_by(Duration::from_secs(1))),
            now.checked_add(Duration::from_secs(1))
        );
        let tokio_now = tokio::time::Instant::now();
        assert!(tokio_now.later_by(Duration::MAX) > tokio_now);
        assert_eq!(Duration::MAX.later_by(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn waits_read_as_people_read_them() {
        assert_eq!(human(Duration::from_nanos(289_831_599)), "289ms");
        assert_eq!(human(Duration::from_nanos(1_003_002_298)), "1.0s");
        assert_eq!(human(Duration::from_millis(4_240)), "4.2s");
        assert_eq!(human(Duration::from_secs(30)), "30s");
        assert_eq!(human(Duration::from_secs(185)), "3m 5s");
        assert!(!human(Duration::MAX).is_empty());
    }
}
