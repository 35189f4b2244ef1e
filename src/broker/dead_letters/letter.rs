//! What a dead letter says about itself: why it is there (the worker's
//! `x-ticket-worker-*` headers, or RabbitMQ's `x-death` for what the broker
//! dead-lettered itself), which event it carries, and since when.
//!
//! Headers prove nothing by themselves: RabbitMQ's own dead-lettering (a
//! message's TTL, the delivery limit) keeps whatever headers the publisher
//! set, `x-ticket-worker-*` and `x-original-*` included. So a letter is read
//! as the worker's only when the worker provably wrote it: RabbitMQ did not
//! dead-letter it (no `x-death`) and its `user_id`, which RabbitMQ checks
//! against the publishing connection's login, is the workers' RabbitMQ user.
//! Any other letter is classified by `x-death` alone, and its worker headers
//! are ignored. (When publishers log in as the workers' user, nothing can
//! tell their letters apart: give them users of their own.)

use crate::broker::header_limits;
use crate::broker::publisher::{
    DEAD_LETTERED_AT_HEADER, ERROR_HEADER, FIELD_HEADER, PROBLEM_HEADER, REASON_HEADER,
};
use crate::delivery::UnreadableHeaders;
use crate::domain::EventId;
use crate::events::{BodyEventId, FailureReason, LoginEvent};
use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};

/// Why a message is in the dead-letter queue: what `dlq list` counts by and
/// `dlq replay --reason` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The worker refused the event (`x-ticket-worker-problem` says why).
    Invalid,
    /// TapTalk answered `ParamValidationFailed`.
    RejectedByUpstream,
    /// The event went back to the queue `MAX_REQUEUES` times.
    RetriesExhausted,
    /// RabbitMQ: delivered `DELIVERY_LIMIT` times without an ack.
    DeliveryLimit,
    /// RabbitMQ: a consumer rejected it without requeueing.
    Rejected,
    /// RabbitMQ: its TTL ran out.
    Expired,
    /// RabbitMQ: a queue length limit pushed it out.
    Maxlen,
    /// Neither the worker's headers nor `x-death` say.
    Unknown,
}

impl Reason {
    /// Every reason, in the order `dlq list` shows them.
    pub const ALL: [Reason; 8] = [
        Reason::RetriesExhausted,
        Reason::RejectedByUpstream,
        Reason::Invalid,
        Reason::DeliveryLimit,
        Reason::Rejected,
        Reason::Expired,
        Reason::Maxlen,
        Reason::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Invalid => "invalid",
            Reason::RejectedByUpstream => "rejected_by_upstream",
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::DeliveryLimit => "delivery_limit",
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::Unknown => "unknown",
        }
    }

    pub fn parse(raw: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == raw)
    }

    /// Whether RabbitMQ dead-lettered the message itself (`x-death`).
    pub fn by_broker(self) -> bool {
        matches!(
            self,
            Reason::DeliveryLimit | Reason::Rejected | Reason::Expired | Reason::Maxlen
        )
    }

    /// The failure recorded in `event_outcomes` that put the event here and
    /// that would answer a replayed copy again without a TapTalk call, if
    /// any: replay clears it.
    pub fn recorded_failure(self) -> Option<FailureReason> {
        match self {
            Reason::RetriesExhausted => Some(FailureReason::RetriesExhausted),
            Reason::RejectedByUpstream => Some(FailureReason::RejectedByUpstream),
            _ => None,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one dead letter says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub reason: Reason,
    /// For invalid events, the problem code (`not_json`, `invalid_field`, …).
    pub problem: Option<String>,
    /// The worker's explanation (`x-ticket-worker-error`).
    pub error: Option<String>,
    /// The field to blame, when there is one.
    pub field: Option<String>,
    /// The event, as the worker identifies it: the body's `eventID`, else the
    /// `message_id`; `None` when neither is a usable id.
    pub event_id: Option<EventId>,
    /// When it was dead-lettered (the worker's header, `x-death`, or else
    /// when it was published).
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// Set when its headers nest or number beyond what the parser reads in
    /// full (a replay leaves those headers out).
    pub unreadable_headers: Option<UnreadableHeaders>,
    /// The worker provably wrote it (see the module documentation): only
    /// then do its `x-ticket-worker-*` and `x-original-*` headers count.
    pub by_worker: bool,
}

impl DeadLetter {
    /// Reads what a message taken from the dead-letter queue says;
    /// `worker_user` is the workers' RabbitMQ user, when known.
    pub fn read(delivery: &Delivery, worker_user: Option<&str>) -> DeadLetter {
        DeadLetter::from_parts(&delivery.properties, &delivery.data, worker_user)
    }

    fn from_parts(
        properties: &BasicProperties,
        body: &[u8],
        worker_user: Option<&str>,
    ) -> DeadLetter {
        let empty = FieldTable::default();
        let headers = properties.headers().as_ref().unwrap_or(&empty);
        let by_worker = written_by_worker(properties, worker_user);
        let text = |name: &str| {
            by_worker
                .then(|| headers.inner().get(name).and_then(as_text))
                .flatten()
        };
        let death = latest_death(headers);
        let reason = match text(REASON_HEADER) {
            Some(worker) => Reason::parse(&worker)
                .filter(|r| !r.by_broker())
                .unwrap_or(Reason::Unknown),
            None => death
                .and_then(|d| d.inner().get("reason").and_then(as_text))
                .or_else(|| text("x-first-death-reason"))
                .and_then(|broker| Reason::parse(&broker))
                .filter(|r| r.by_broker())
                .unwrap_or(Reason::Unknown),
        };
        let dead_lettered_at = by_worker
            .then(|| headers.inner().get(DEAD_LETTERED_AT_HEADER))
            .flatten()
            .or_else(|| death.and_then(|d| d.inner().get("time")))
            .and_then(as_time)
            .or_else(|| properties.timestamp().and_then(seconds));
        DeadLetter {
            reason,
            problem: text(PROBLEM_HEADER),
            error: text(ERROR_HEADER),
            field: text(FIELD_HEADER),
            event_id: event_id(properties, body),
            dead_lettered_at,
            unreadable_headers: header_limits::check(Some(headers)),
            by_worker,
        }
    }

    /// How long ago it was dead-lettered, when that is known.
    pub fn age(&self, now: DateTime<Utc>) -> Option<std::time::Duration> {
        now.signed_duration_since(self.dead_lettered_at?)
            .to_std()
            .ok()
    }
}

/// Whether the worker provably wrote a letter with these properties: not
/// dead-lettered by RabbitMQ (no `x-death`), and published by the workers'
/// user (a `user_id` RabbitMQ checked).
pub(super) fn written_by_worker(properties: &BasicProperties, worker_user: Option<&str>) -> bool {
    let dead_lettered_by_rabbitmq = properties
        .headers()
        .as_ref()
        .is_some_and(|h| h.inner().contains_key("x-death"));
    let user_id = properties.user_id().as_ref().map(|u| u.as_str());
    !dead_lettered_by_rabbitmq
        && worker_user.is_some_and(|w| !w.is_empty())
        && user_id == worker_user
}

/// The event id as the worker reads it: the body's `eventID` wins over the
/// `message_id`.
fn event_id(properties: &BasicProperties, body: &[u8]) -> Option<EventId> {
    match LoginEvent::body_event_id(body) {
        BodyEventId::One(id) => Some(id),
        BodyEventId::Absent | BodyEventId::Repeated => properties
            .message_id()
            .as_ref()
            .and_then(|id| EventId::parse(id.as_str()).ok()),
    }
}

/// The newest entry of RabbitMQ's `x-death` (it puts the latest first).
fn latest_death(headers: &FieldTable) -> Option<&FieldTable> {
    match headers.inner().get("x-death")? {
        AMQPValue::FieldArray(deaths) => match deaths.as_slice().first()? {
            AMQPValue::FieldTable(death) => Some(death),
            _ => None,
        },
        _ => None,
    }
}

fn as_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(text) => Some(text.to_string()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}

fn as_time(value: &AMQPValue) -> Option<DateTime<Utc>> {
    match value {
        AMQPValue::Timestamp(at) => seconds(*at),
        AMQPValue::LongLongInt(at) => u64::try_from(*at).ok().and_then(seconds),
        _ => None,
    }
}

fn seconds(at: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(i64::try_from(at).ok()?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    const WORKER: &str = "ticket-worker";

    /// A letter the workers' user published (as the worker's own are).
    fn read(headers: FieldTable, body: &[u8]) -> DeadLetter {
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_message_id("from-message-id".into())
            .with_user_id(WORKER.into());
        DeadLetter::from_parts(&properties, body, Some(WORKER))
    }

    fn long(value: &str) -> AMQPValue {
        AMQPValue::LongString(value.into())
    }

    #[test]
    fn the_workers_headers_say_why_and_when() {
        let mut headers = FieldTable::default();
        headers.insert(REASON_HEADER.into(), long("invalid"));
        headers.insert(PROBLEM_HEADER.into(), long("invalid_field"));
        headers.insert(ERROR_HEADER.into(), long("userPlatform (103) must be …"));
        headers.insert(FIELD_HEADER.into(), long("userPlatform"));
        headers.insert(
            DEAD_LETTERED_AT_HEADER.into(),
            AMQPValue::Timestamp(1_790_000_000),
        );
        let letter = read(headers, br#"{"eventID":"e-1"}"#);
        assert_eq!(letter.reason, Reason::Invalid);
        assert_eq!(letter.problem.as_deref(), Some("invalid_field"));
        assert_eq!(letter.field.as_deref(), Some("userPlatform"));
        assert_eq!(letter.event_id.as_ref().map(EventId::as_str), Some("e-1"));
        assert_eq!(
            letter.dead_lettered_at.map(|t| t.timestamp()),
            Some(1_790_000_000)
        );
    }

    #[test]
    fn what_rabbitmq_dead_lettered_is_counted_by_its_x_death_reason() {
        let mut death = FieldTable::default();
        death.insert("reason".into(), long("delivery_limit"));
        death.insert("time".into(), AMQPValue::Timestamp(1_790_000_100));
        let mut older = FieldTable::default();
        older.insert("reason".into(), long("rejected"));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::FieldTable(death),
                AMQPValue::FieldTable(older),
            ])),
        );
        let letter = read(headers, b"not json");
        assert_eq!(letter.reason, Reason::DeliveryLimit);
        assert!(letter.reason.by_broker());
        assert_eq!(
            letter.event_id.as_ref().map(EventId::as_str),
            Some("from-message-id")
        );
        assert_eq!(
            letter.dead_lettered_at.map(|t| t.timestamp()),
            Some(1_790_000_100)
        );
    }

    #[test]
    fn anything_else_is_unknown() {
        let mut headers = FieldTable::default();
        headers.insert(REASON_HEADER.into(), long("delivery_limit"));
        assert_eq!(
            read(headers, b"").reason,
            Reason::Unknown,
            "the worker never writes a broker reason"
        );
        let letter = read(FieldTable::default(), b"");
        assert_eq!(letter.reason, Reason::Unknown);
        assert_eq!(letter.dead_lettered_at, None);
    }

    #[test]
    fn only_failures_the_worker_records_are_cleared_by_a_replay() {
        assert_eq!(
            Reason::RetriesExhausted.recorded_failure(),
            Some(FailureReason::RetriesExhausted)
        );
        assert_eq!(
            Reason::RejectedByUpstream.recorded_failure(),
            Some(FailureReason::RejectedByUpstream)
        );
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
            if !matches!(
                reason,
                Reason::RetriesExhausted | Reason::RejectedByUpstream
            ) {
                assert_eq!(reason.recorded_failure(), None);
            }
        }
    }

    fn forged() -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(REASON_HEADER.into(), long("rejected_by_upstream"));
        headers.insert(ERROR_HEADER.into(), long("\u{1b}[2JALL CLEAR"));
        headers.insert(PROBLEM_HEADER.into(), long("x\ny"));
        headers
    }

    #[test]
    fn worker_headers_on_a_letter_rabbitmq_dead_lettered_count_for_nothing() {
        let mut headers = forged();
        let mut death = FieldTable::default();
        death.insert("reason".into(), long("expired"));
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        // Even with the workers' user_id: a publisher logged in as them.
        let letter = read(headers, br#"{"eventID":"e-1"}"#);
        assert!(!letter.by_worker);
        assert_eq!(letter.reason, Reason::Expired);
        assert_eq!(letter.error, None);
        assert_eq!(letter.problem, None);
    }

    #[test]
    fn a_letter_from_another_user_is_not_the_workers() {
        let properties = BasicProperties::default()
            .with_headers(forged())
            .with_user_id("login-service".into());
        let letter = DeadLetter::from_parts(&properties, b"{}", Some(WORKER));
        assert!(!letter.by_worker);
        assert_eq!(letter.reason, Reason::Unknown);
        assert_eq!(letter.error, None);
        let unknown_user = DeadLetter::from_parts(
            &BasicProperties::default().with_headers(forged()),
            b"{}",
            None,
        );
        assert_eq!(unknown_user.reason, Reason::Unknown);
    }
}
