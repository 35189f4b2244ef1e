//! One log line per settled event, at `info`: its id, how it ended, why, and
//! how long it was in the worker (`event settled event_id=… outcome=issued
//! ms=104`), never its ticket or personal data.
//!
//! At most `EVENT_LOG_RATE` lines a second (20 by default; 0 turns them off):
//! a busy worker would otherwise spend on its log what it should spend on
//! tickets, and bury everything else in it. What a second leaves out is
//! summed up, by outcome, in one line when the next second's first event
//! comes, or at shutdown ([`EventLog::flush`]), so the log always says how
//! many events it did not show.

use crate::delivery::Outcome;
use crate::domain::text::printable;
use crate::time::Later;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest event id shown (a hostile one could be long).
const ID_CHARS: usize = 80;

/// One second of lines.
const WINDOW: Duration = Duration::from_secs(1);

/// The per-event log of one worker.
#[derive(Debug)]
pub struct EventLog {
    per_second: u32,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    ends: Instant,
    logged: u32,
    /// Lines left out in this window, by outcome.
    left_out: BTreeMap<&'static str, u64>,
}

/// How an outcome is named in the line: the `outcome` label of the metrics,
/// and for dead letters the reason.
pub fn outcome_words(outcome: Outcome) -> (&'static str, Option<&'static str>) {
    match outcome {
        Outcome::Issued => ("issued", None),
        Outcome::AlreadyIssued => ("already_issued", None),
        Outcome::DeadLettered(reason) => ("dead_lettered", Some(reason.as_str())),
        Outcome::Expired => ("expired", Some("expired")),
        Outcome::RetryLater => ("retry_later", None),
        Outcome::Requeued => ("requeued", None),
        Outcome::Rejected => ("rejected", None),
        Outcome::Abandoned => ("abandoned", None),
    }
}

impl EventLog {
    /// A log of at most `per_second` lines a second; 0: none (and no
    /// summaries).
    pub fn new(per_second: u32) -> EventLog {
        EventLog {
            per_second,
            window: Mutex::new(Window {
                ends: Instant::now().later_by(WINDOW),
                logged: 0,
                left_out: BTreeMap::new(),
            }),
        }
    }

    /// Logs one settled event, or counts it as left out.
    pub fn settled(&self, event_id: Option<&str>, outcome: Outcome, took: Duration) {
        if self.per_second == 0 {
            return;
        }
        let (name, reason) = outcome_words(outcome);
        let now = Instant::now();
        let (show, ended) = {
            let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
            let mut ended = None;
            if now >= window.ends {
                ended = Some(std::mem::take(&mut window.left_out));
                window.logged = 0;
                window.ends = now.later_by(WINDOW);
            }
            let show = if window.logged < self.per_second {
                window.logged = window.logged.saturating_add(1);
                true
            } else {
                let n = window.left_out.entry(name).or_insert(0);
                *n = n.saturating_add(1);
                false
            };
            (show, ended)
        };
        // Logged with the lock released: a slow log writer stalls no one else.
        if let Some(ended) = ended {
            summarize(&ended);
        }
        if show {
            let event_id = printable(event_id.unwrap_or("-"), ID_CHARS);
            let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
            match reason {
                Some(reason) => {
                    tracing::info!(%event_id, outcome = name, reason, ms, "event settled")
                }
                None => tracing::info!(%event_id, outcome = name, ms, "event settled"),
            }
        }
    }

    /// Says what the current window left out (at shutdown).
    pub fn flush(&self) {
        let left_out = {
            let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut window.left_out)
        };
        summarize(&left_out);
    }

    /// Lines left out of the current window, by outcome (for tests).
    pub fn left_out(&self) -> BTreeMap<&'static str, u64> {
        self.window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .left_out
            .clone()
    }
}

/// The line for what one window left out, if it left out anything.
fn summarize(left_out: &BTreeMap<&'static str, u64>) {
    let total = left_out.values().fold(0u64, |a, n| a.saturating_add(*n));
    if total == 0 {
        return;
    }
    let by_outcome = left_out
        .iter()
        .map(|(outcome, n)| format!("{n} {outcome}"))
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(
        left_out = total,
        "{total} more events settled in that second than EVENT_LOG_RATE shows: {by_outcome}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::FailureReason;

    #[test]
    fn lines_past_the_rate_are_counted_by_outcome_and_a_new_second_starts_afresh() {
        let log = EventLog::new(2);
        log.settled(Some("a"), Outcome::Issued, Duration::from_millis(5));
        log.settled(Some("b"), Outcome::Issued, Duration::from_millis(5));
        assert!(log.left_out().is_empty(), "two lines shown");
        log.settled(Some("c"), Outcome::Issued, Duration::from_millis(5));
        let dead = Outcome::DeadLettered(FailureReason::Invalid);
        log.settled(Some("d"), dead, Duration::from_millis(5));
        assert_eq!(
            log.left_out(),
            BTreeMap::from([("dead_lettered", 1), ("issued", 1)])
        );
        // The next second: the summary is said, the count starts again.
        log.window.lock().expect("lock").ends = Instant::now();
        log.settled(Some("e"), Outcome::Issued, Duration::from_millis(5));
        assert!(log.left_out().is_empty());
        log.flush();
    }

    #[test]
    fn a_rate_of_zero_logs_nothing() {
        let log = EventLog::new(0);
        for _ in 0..5 {
            log.settled(None, Outcome::Issued, Duration::ZERO);
        }
        assert!(log.left_out().is_empty());
    }

    #[test]
    fn dead_letters_carry_their_reason() {
        assert_eq!(
            outcome_words(Outcome::DeadLettered(FailureReason::RejectedByUpstream)),
            ("dead_lettered", Some("rejected_by_upstream"))
        );
        assert_eq!(outcome_words(Outcome::Issued), ("issued", None));
    }
}
