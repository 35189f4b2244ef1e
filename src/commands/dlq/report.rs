//! What `dlq replay` reports: per reason, how many dead letters were
//! replayed, skipped (not chosen: left in place) and failed (left in place
//! too), and one line per chosen dead letter; as text or JSON.

use crate::broker::dead_letters::{DeadLetter, Reason};
use crate::domain::text::printable;
use serde::Serialize;
use std::fmt::Write as _;

/// Everything one `dlq replay` did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    pub queue: String,
    pub exchange: String,
    pub dry_run: bool,
    /// Reasons with at least one dead letter, in [`Reason::ALL`] order.
    pub reasons: Vec<Tally>,
    /// Every dead letter chosen, in queue order.
    pub letters: Vec<Line>,
    /// Why the replay stopped before the end, if it did; what it had not
    /// replayed by then stays in the queue.
    pub stopped: Option<String>,
}

/// The dead letters of one reason.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tally {
    pub reason: &'static str,
    /// Published again and removed (with `--dry-run`: would be).
    pub replayed: u64,
    /// Not chosen (another reason, or past `--limit`): left in place.
    pub skipped: u64,
    /// Chosen, but RabbitMQ did not take the replay: left in place.
    pub failed: u64,
    #[serde(skip)]
    key: Reason,
}

/// What became of one chosen dead letter.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    #[serde(rename = "eventID")]
    pub event_id: Option<String>,
    pub reason: &'static str,
    /// `replayed`, `would_replay` or `failed`.
    pub result: &'static str,
    /// What the replay found or changed in Postgres.
    pub note: Option<String>,
    pub error: Option<String>,
}

impl ReplayReport {
    pub fn new(queue: &str, exchange: &str, dry_run: bool) -> ReplayReport {
        ReplayReport {
            queue: queue.to_owned(),
            exchange: exchange.to_owned(),
            dry_run,
            reasons: Vec::new(),
            letters: Vec::new(),
            stopped: None,
        }
    }

    pub fn skipped(&mut self, letter: &DeadLetter) {
        self.tally(letter.reason).skipped += 1;
    }

    pub fn replayed(&mut self, letter: &DeadLetter, note: Option<String>) {
        self.tally(letter.reason).replayed += 1;
        let result = if self.dry_run {
            "would_replay"
        } else {
            "replayed"
        };
        self.line(letter, result, note, None);
    }

    pub fn failed(&mut self, letter: &DeadLetter, note: Option<String>, error: String) {
        self.tally(letter.reason).failed += 1;
        self.line(letter, "failed", note, Some(error));
    }

    /// How many were replayed, skipped and failed, over every reason.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.reasons.iter().fold((0, 0, 0), |(r, s, f), t| {
            (r + t.replayed, s + t.skipped, f + t.failed)
        })
    }

    fn line(
        &mut self,
        letter: &DeadLetter,
        result: &'static str,
        note: Option<String>,
        error: Option<String>,
    ) {
        self.letters.push(Line {
            event_id: letter.event_id.as_ref().map(|id| id.to_string()),
            reason: letter.reason.as_str(),
            result,
            note,
            error,
        });
    }

    fn tally(&mut self, reason: Reason) -> &mut Tally {
        if !self.reasons.iter().any(|t| t.key == reason) {
            self.reasons.push(Tally {
                reason: reason.as_str(),
                replayed: 0,
                skipped: 0,
                failed: 0,
                key: reason,
            });
            self.reasons
                .sort_by_key(|t| Reason::ALL.iter().position(|a| *a == t.key));
        }
        let index = self.reasons.iter().position(|t| t.key == reason);
        &mut self.reasons[index.unwrap_or_default()]
    }

    /// The report as text, for people.
    pub fn to_text(&self) -> String {
        let (replayed, skipped, failed) = self.totals();
        let mut out = String::new();
        let verb = if self.dry_run {
            "would replay"
        } else {
            "replayed"
        };
        let _ = writeln!(
            out,
            "{verb} {replayed} dead letters from {} to {} ({failed} failed, {skipped} skipped and left in place)",
            self.queue, self.exchange
        );
        for t in &self.reasons {
            let _ = writeln!(
                out,
                "  {:<22} {verb} {}, skipped {}, failed {}",
                t.reason, t.replayed, t.skipped, t.failed
            );
        }
        for line in &self.letters {
            // Ids and errors can quote what a publisher wrote: escaped.
            let id = match &line.event_id {
                Some(id) => printable(id, 255),
                None => "(no eventID)".to_owned(),
            };
            let result = line.result.replace('_', " ");
            let mut text = format!("  {id}  {}: {result}", line.reason);
            if let Some(note) = &line.note {
                let _ = write!(text, "; {}", printable(note, 400));
            }
            if let Some(error) = &line.error {
                let _ = write!(text, "; {}", printable(error, 400));
            }
            let _ = writeln!(out, "{text}");
        }
        if let Some(stopped) = &self.stopped {
            let _ = writeln!(out, "stopped early: {}", printable(stopped, 400));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventId;

    fn letter(reason: Reason, id: &str) -> DeadLetter {
        DeadLetter {
            reason,
            problem: None,
            error: None,
            field: None,
            event_id: EventId::parse(id).ok(),
            dead_lettered_at: None,
            unreadable_headers: None,
            by_worker: !reason.by_broker(),
        }
    }

    #[test]
    fn counts_and_lines_per_reason() {
        let mut report = ReplayReport::new("q.dead", "q.logins", false);
        report.replayed(
            &letter(Reason::RetriesExhausted, "e-1"),
            Some("cleared its recorded retries_exhausted failure".into()),
        );
        report.skipped(&letter(Reason::Invalid, "e-2"));
        report.failed(
            &letter(Reason::RetriesExhausted, "e-3"),
            None,
            "no queue is bound".into(),
        );
        assert_eq!(report.totals(), (1, 1, 1));
        let text = report.to_text();
        assert!(text.starts_with(
            "replayed 1 dead letters from q.dead to q.logins (1 failed, 1 skipped and left in place)"
        ), "{text}");
        assert!(
            text.contains("  retries_exhausted      replayed 1, skipped 0, failed 1"),
            "{text}"
        );
        assert!(
            text.contains("e-1  retries_exhausted: replayed; cleared"),
            "{text}"
        );
        assert!(
            text.contains("e-3  retries_exhausted: failed; no queue is bound"),
            "{text}"
        );
        assert!(
            !text.contains("e-2"),
            "skipped letters are counted, not listed"
        );
        let json = serde_json::to_value(&report).unwrap_or_default();
        assert_eq!(json["reasons"][0]["reason"], "retries_exhausted");
        assert_eq!(json["letters"][0]["eventID"], "e-1");
    }

    #[test]
    fn a_dry_run_says_what_it_would_do() {
        let mut report = ReplayReport::new("q.dead", "q.logins", true);
        report.replayed(&letter(Reason::Invalid, "e-1"), None);
        let text = report.to_text();
        assert!(text.starts_with("would replay 1 dead letters"), "{text}");
        assert!(text.contains("e-1  invalid: would replay"), "{text}");
    }
}
