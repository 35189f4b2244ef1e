//! The baseline round trip: the lowest value seen within a sliding time
//! window, kept as a monotonic queue (each push and each query is amortised
//! O(1); one entry per control interval at most, so it stays small).

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// The minimum of the values pushed within the last `window`. When nothing
/// new has been pushed for longer than the window, the last minimum is kept:
/// an idle period is no evidence that TapTalk got slower.
#[derive(Debug)]
pub(super) struct WindowedMin {
    window: Duration,
    /// Values in increasing order of time and of value; the front is the
    /// minimum.
    entries: VecDeque<(Instant, f64)>,
}

impl WindowedMin {
    pub(super) fn new(window: Duration) -> WindowedMin {
        WindowedMin {
            window,
            entries: VecDeque::with_capacity(64),
        }
    }

    pub(super) fn push(&mut self, now: Instant, value: f64) {
        while self.entries.back().is_some_and(|&(_, v)| v >= value) {
            self.entries.pop_back();
        }
        self.entries.push_back((now, value));
        while self.entries.len() > 1
            && self
                .entries
                .front()
                .is_some_and(|&(at, _)| now.duration_since(at) > self.window)
        {
            self.entries.pop_front();
        }
    }

    pub(super) fn get(&self) -> Option<f64> {
        self.entries.front().map(|&(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_minimum_of_the_window() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut min = WindowedMin::new(Duration::from_secs(1));
        assert_eq!(min.get(), None);
        min.push(at(0), 5.0);
        min.push(at(100), 7.0);
        min.push(at(200), 6.0);
        assert_eq!(min.get(), Some(5.0));
        // 5.0 leaves the window; 6.0 is the lowest of what remains.
        min.push(at(1050), 8.0);
        assert_eq!(min.get(), Some(6.0));
        min.push(at(1300), 3.0);
        assert_eq!(min.get(), Some(3.0));
        // Without pushes, the minimum stays, however long; the next push
        // after a long pause finds the old minimum outside the window.
        assert_eq!(min.get(), Some(3.0));
        min.push(at(60_000), 9.0);
        assert_eq!(min.get(), Some(9.0));
    }
}
