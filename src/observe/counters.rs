//! Counts of what happened to deliveries: read by the progress line, the
//! tests and (later) `/metrics`. Plain atomics, so counting costs nothing
//! measurable on the hot path.

use crate::pipeline::Outcome;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Counts of what happened to deliveries, for progress reports and tests.
#[derive(Debug, Default)]
pub struct Counters {
    issued: AtomicU64,
    already_issued: AtomicU64,
    dead_lettered: AtomicU64,
    expired: AtomicU64,
    retry_later: AtomicU64,
    requeued: AtomicU64,
    abandoned: AtomicU64,
    panicked: AtomicU64,
    sessions: AtomicU64,
    pauses: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub issued: u64,
    pub already_issued: u64,
    pub dead_lettered: u64,
    pub expired: u64,
    pub retry_later: u64,
    pub requeued: u64,
    pub abandoned: u64,
    pub panicked: u64,
    /// Broker sessions opened (1 + reconnects).
    pub sessions: u64,
    /// Times intake paused because a dependency was down.
    pub pauses: u64,
}

impl Snapshot {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            issued: self.issued.saturating_sub(earlier.issued),
            already_issued: self.already_issued.saturating_sub(earlier.already_issued),
            dead_lettered: self.dead_lettered.saturating_sub(earlier.dead_lettered),
            expired: self.expired.saturating_sub(earlier.expired),
            retry_later: self.retry_later.saturating_sub(earlier.retry_later),
            requeued: self.requeued.saturating_sub(earlier.requeued),
            abandoned: self.abandoned.saturating_sub(earlier.abandoned),
            panicked: self.panicked.saturating_sub(earlier.panicked),
            sessions: self.sessions.saturating_sub(earlier.sessions),
            pauses: self.pauses.saturating_sub(earlier.pauses),
        }
    }
}

impl Counters {
    /// A broker session was opened.
    pub fn session_opened(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// Intake paused because a dependency was down.
    pub fn paused(&self) {
        self.pauses.fetch_add(1, Ordering::Relaxed);
    }

    /// Handling a delivery panicked.
    pub fn panicked(&self) {
        self.panicked.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one settled delivery.
    pub fn record(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Issued => &self.issued,
            Outcome::AlreadyIssued => &self.already_issued,
            Outcome::DeadLettered(_) | Outcome::Rejected => &self.dead_lettered,
            Outcome::Expired => &self.expired,
            Outcome::RetryLater => &self.retry_later,
            Outcome::Requeued => &self.requeued,
            Outcome::Abandoned => &self.abandoned,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            issued: get(&self.issued),
            already_issued: get(&self.already_issued),
            dead_lettered: get(&self.dead_lettered),
            expired: get(&self.expired),
            retry_later: get(&self.retry_later),
            requeued: get(&self.requeued),
            abandoned: get(&self.abandoned),
            panicked: get(&self.panicked),
            sessions: get(&self.sessions),
            pauses: get(&self.pauses),
        }
    }
}

impl Counters {
    /// Logs what happened since the last line, every `every` in which
    /// something did, until `stop`.
    pub async fn report_progress(&self, every: Duration, stop: CancellationToken) {
        let mut last = self.snapshot();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            let now = self.snapshot();
            let delta = now.since(&last);
            let answered =
                delta.issued + delta.already_issued + delta.dead_lettered + delta.expired;
            if answered + delta.retry_later + delta.requeued + delta.abandoned > 0 {
                tracing::info!(
                    issued = delta.issued,
                    announced_again = delta.already_issued,
                    failed = delta.dead_lettered + delta.expired,
                    back_to_queue = delta.retry_later + delta.requeued + delta.abandoned,
                    "{answered} login events answered in the last {}",
                    humantime::format_duration(every)
                );
            }
            last = now;
        }
    }
}
