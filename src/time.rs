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
}
