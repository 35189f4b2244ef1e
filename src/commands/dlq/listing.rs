//! What `dlq list` reports: the dead letters counted by reason (and by
//! problem, for invalid events), with a few samples of each, masked
//! ([`MaskedBody`]); as text for people or JSON for machines. Everything a
//! letter says is a publisher's text: it is printed escaped
//! ([`printable`]), so that no escape code in it reaches the terminal.

use crate::broker::dead_letters::{DeadLetter, Reason};
use crate::domain::text::{json_printable, printable};
use crate::events::{MaskedBody, hide_values, masked_texts};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Longest error message shown in the text output, in characters.
const TEXT_ERROR_CHARS: usize = 240;

/// Everything `dlq list` found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    pub queue: String,
    pub total: u64,
    /// Reasons with at least one dead letter, in [`Reason::ALL`] order.
    pub reasons: Vec<ReasonCount>,
    #[serde(skip)]
    samples_per_reason: usize,
}

/// The dead letters of one reason.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReasonCount {
    pub reason: &'static str,
    /// `worker` (provably: see [`DeadLetter::by_worker`]), `rabbitmq` for
    /// what RabbitMQ dead-lettered itself, or `unknown`.
    pub dead_lettered_by: &'static str,
    pub count: u64,
    /// Invalid events by problem code (`not_json`, `invalid_field`, …).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub problems: BTreeMap<String, u64>,
    /// The first few, in queue order.
    pub samples: Vec<Sample>,
    #[serde(skip)]
    key: Reason,
}

/// One dead letter, as an operator may see it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    #[serde(rename = "eventID")]
    pub event_id: Option<String>,
    pub dead_lettered_at: Option<String>,
    pub age_seconds: Option<u64>,
    pub problem: Option<String>,
    pub error: Option<String>,
    pub field: Option<String>,
    /// Why its headers cannot be read in full, when they cannot (a replay
    /// leaves those headers out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable_headers: Option<String>,
    pub body_bytes: usize,
    /// The body with every personal value masked; `null` when it is not JSON.
    pub body: Option<serde_json::Value>,
}

impl Listing {
    pub fn new(queue: &str, samples_per_reason: usize) -> Listing {
        Listing {
            queue: queue.to_owned(),
            total: 0,
            reasons: Vec::new(),
            samples_per_reason,
        }
    }

    /// Counts one dead letter (its body, `body`, masked if it is sampled).
    pub fn add(&mut self, letter: &DeadLetter, body: &[u8], now: DateTime<Utc>) {
        self.total += 1;
        let samples = self.samples_per_reason;
        let entry = self.entry(letter.reason);
        entry.count += 1;
        if let (Reason::Invalid, Some(problem)) = (letter.reason, &letter.problem) {
            *entry.problems.entry(problem.clone()).or_default() += 1;
        }
        if entry.samples.len() < samples {
            entry.samples.push(Sample::of(letter, body, now));
        }
    }

    fn entry(&mut self, reason: Reason) -> &mut ReasonCount {
        let position = self.reasons.iter().position(|r| r.key == reason);
        let index = match position {
            Some(index) => index,
            None => {
                self.reasons.push(ReasonCount {
                    reason: reason.as_str(),
                    dead_lettered_by: match reason {
                        Reason::Unknown => "unknown",
                        reason if reason.by_broker() => "rabbitmq",
                        _ => "worker",
                    },
                    count: 0,
                    problems: BTreeMap::new(),
                    samples: Vec::new(),
                    key: reason,
                });
                let order = |r: &ReasonCount| Reason::ALL.iter().position(|a| *a == r.key);
                self.reasons.sort_by_key(order);
                self.reasons
                    .iter()
                    .position(|r| r.key == reason)
                    .unwrap_or(0)
            }
        };
        &mut self.reasons[index]
    }

    /// The report as text, for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if self.total == 0 {
            let _ = writeln!(out, "dead-letter queue {}: empty", self.queue);
            return out;
        }
        let _ = writeln!(
            out,
            "dead-letter queue {}: {} dead letters",
            self.queue, self.total
        );
        for reason in &self.reasons {
            let by = match reason.dead_lettered_by {
                "rabbitmq" => "  (dead-lettered by RabbitMQ)",
                "unknown" => "  (not written by the worker)",
                _ => "",
            };
            let problems: Vec<String> = reason
                .problems
                .iter()
                .map(|(problem, n)| format!("{} {n}", printable(problem, 64)))
                .collect();
            let problems = if problems.is_empty() {
                String::new()
            } else {
                format!("  {}", problems.join(", "))
            };
            let _ = writeln!(
                out,
                "  {:<22}{:>6}{by}{problems}",
                reason.reason, reason.count
            );
        }
        for reason in self.reasons.iter().filter(|r| !r.samples.is_empty()) {
            let _ = writeln!(
                out,
                "\n{} ({} of {}):",
                reason.reason,
                reason.samples.len(),
                reason.count
            );
            for sample in &reason.samples {
                sample.write_text(&mut out);
            }
        }
        out
    }
}

impl Sample {
    fn of(letter: &DeadLetter, body: &[u8], now: DateTime<Utc>) -> Sample {
        // What the headers say may quote the body (TapTalk's messages can):
        // its personal values are hidden there too.
        let hidden = masked_texts(body);
        let hide = |text: &Option<String>| text.as_deref().map(|t| hide_values(t, &hidden));
        Sample {
            event_id: letter.event_id.as_ref().map(|id| id.to_string()),
            dead_lettered_at: letter
                .dead_lettered_at
                .map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, true)),
            age_seconds: letter.age(now).map(|age| age.as_secs()),
            problem: hide(&letter.problem),
            error: hide(&letter.error),
            field: hide(&letter.field),
            unreadable_headers: letter.unreadable_headers.as_ref().map(|u| u.to_string()),
            body_bytes: body.len(),
            body: match MaskedBody::of(body) {
                MaskedBody::Json(value) => Some(value),
                MaskedBody::Opaque { .. } => None,
            },
        }
    }

    fn write_text(&self, out: &mut String) {
        let id = match &self.event_id {
            Some(id) => printable(id, 255),
            None => "(no eventID)".to_owned(),
        };
        let age = match self.age_seconds {
            Some(seconds) => format!(
                "dead-lettered {} ago",
                humantime::format_duration(Duration::from_secs(seconds))
            ),
            None => "dead-lettered at an unknown time".to_owned(),
        };
        let _ = writeln!(out, "  {id}  {age}");
        let mut detail: Vec<String> = Vec::new();
        if let Some(problem) = &self.problem {
            detail.push(format!("problem: {}", printable(problem, 64)));
        }
        if let Some(field) = &self.field {
            detail.push(format!("field: {}", printable(field, 64)));
        }
        if !detail.is_empty() {
            let _ = writeln!(out, "    {}", detail.join("  "));
        }
        if let Some(error) = &self.error {
            let _ = writeln!(out, "    error: {}", printable(error, TEXT_ERROR_CHARS));
        }
        if let Some(unreadable) = &self.unreadable_headers {
            let _ = writeln!(
                out,
                "    headers: {}; a replay leaves them out",
                printable(unreadable, TEXT_ERROR_CHARS)
            );
        }
        let body = match &self.body {
            Some(value) => json_printable(&value.to_string()),
            None => format!("(not JSON, {} bytes)", self.body_bytes),
        };
        let _ = writeln!(out, "    body:  {body}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventId;

    fn letter(reason: Reason, problem: Option<&str>, id: &str) -> DeadLetter {
        DeadLetter {
            reason,
            problem: problem.map(str::to_owned),
            error: Some("email (107) \"ana@example\" must be an e-mail address".into()),
            field: Some("email".into()),
            event_id: EventId::parse(id).ok(),
            dead_lettered_at: DateTime::from_timestamp(1_790_000_000, 0),
            unreadable_headers: None,
            by_worker: !reason.by_broker(),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_125, 0).unwrap_or_default()
    }

    #[test]
    fn dead_letters_are_counted_by_reason_and_problem_with_a_few_samples() {
        let mut listing = Listing::new("q.dead", 2);
        let body = br#"{"eventID":"e-1","email":"ana@example","userPlatform":"web"}"#;
        for (i, problem) in ["not_json", "invalid_field", "not_json"].iter().enumerate() {
            listing.add(
                &letter(Reason::Invalid, Some(problem), &format!("i-{i}")),
                body,
                now(),
            );
        }
        let by_rabbitmq = DeadLetter {
            error: None,
            ..letter(Reason::DeliveryLimit, None, "d-1")
        };
        listing.add(&by_rabbitmq, b"\x00binary", now());
        listing.add(&letter(Reason::RetriesExhausted, None, "r-1"), body, now());
        assert_eq!(listing.total, 5);
        let reasons: Vec<(&str, u64)> = listing
            .reasons
            .iter()
            .map(|r| (r.reason, r.count))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("retries_exhausted", 1),
                ("invalid", 3),
                ("delivery_limit", 1)
            ]
        );
        let invalid = &listing.reasons[1];
        assert_eq!(invalid.problems.get("not_json"), Some(&2));
        assert_eq!(invalid.samples.len(), 2, "--samples 2");
        assert_eq!(invalid.samples[0].event_id.as_deref(), Some("i-0"));
        assert_eq!(invalid.samples[0].age_seconds, Some(125));
        let json = serde_json::to_string(&listing).unwrap_or_default();
        let text = listing.to_text();
        for output in [&json, &text] {
            assert!(!output.contains("ana@example"), "{output}");
            assert!(!output.contains("binary"), "{output}");
        }
        assert!(text.contains("2m 5s ago"), "{text}");
        assert!(text.contains("(not JSON, 7 bytes)"), "{text}");
        assert!(text.contains("(dead-lettered by RabbitMQ)"), "{text}");
        assert!(text.contains("invalid_field 1, not_json 2"), "{text}");
    }

    #[test]
    fn an_empty_queue_says_so() {
        let listing = Listing::new("q.dead", 3);
        assert_eq!(listing.to_text(), "dead-letter queue q.dead: empty\n");
        let json = serde_json::to_value(&listing).unwrap_or_default();
        assert_eq!(json["total"], 0);
        assert_eq!(json["reasons"], serde_json::json!([]));
    }

    #[test]
    fn nothing_a_letter_says_reaches_the_terminal_unescaped() {
        let mut listing = Listing::new("q.dead", 3);
        let hostile = DeadLetter {
            problem: Some("x\ny".into()),
            error: Some("\u{1b}[2J\u{1b}[HALL CLEAR\r\n\u{9b}31m".into()),
            field: Some("f\u{202e}".into()),
            ..letter(Reason::Invalid, Some("not_json"), "e-\u{200b}1")
        };
        let body = "{\"\u{1b}[2Jkey\":\"v\",\"eventID\":\"e-1\"}";
        listing.add(&hostile, body.as_bytes(), now());
        let text = listing.to_text();
        assert!(
            !text
                .chars()
                .any(|c| c != '\n' && crate::domain::text::is_unsafe(c)),
            "{text:?}"
        );
        assert!(text.contains("\\u{1b}[2J"), "{text}");
        let json = json_printable(&serde_json::to_string(&listing).unwrap_or_default());
        assert!(
            !json.chars().any(crate::domain::text::is_unsafe),
            "{json:?}"
        );
    }
}
