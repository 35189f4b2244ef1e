//! The headers the worker writes on what it publishes, and the two facts it
//! reads back from them: whether a delivery is the worker's own copy, and how
//! often the worker has put it back. Pure functions of a message's parts, so
//! they are tested without a broker.

use lapin::types::{AMQPValue, FieldTable, ShortString};

/// Header naming why the worker dead-lettered a message (`invalid`, `rejected_by_upstream`).
pub const REASON_HEADER: &str = "x-ticket-worker-reason";
/// Header with the finer problem code of an invalid event (`not_json`, `invalid_field`, …).
pub const PROBLEM_HEADER: &str = "x-ticket-worker-problem";
/// Header with the human-readable explanation.
pub const ERROR_HEADER: &str = "x-ticket-worker-error";
/// Header naming the offending field, when one is to blame.
pub const FIELD_HEADER: &str = "x-ticket-worker-field";
/// Header counting how often the worker put a message back for later.
pub const RETRIES_HEADER: &str = "x-ticket-worker-retries";
/// Header with the exchange a dead-lettered message was first published to.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-original-exchange";
/// Header with the routing key a dead-lettered message was first published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-original-routing-key";
/// Header keeping a dead-lettered message's `user_id`, which the copy cannot carry.
pub const ORIGINAL_USER_ID_HEADER: &str = "x-original-user-id";
/// Header with the time the worker dead-lettered a message.
pub const DEAD_LETTERED_AT_HEADER: &str = "x-ticket-worker-dead-lettered-at";

/// Whether a delivery is a copy the worker put back itself: it came through
/// the default exchange (`exchange` empty) to the work queue, with the
/// worker's own RabbitMQ user (`user`, when known) as its `user_id`, which
/// RabbitMQ lets no other user set.
pub(super) fn is_own(
    user: Option<&ShortString>,
    work_queue: &str,
    exchange: &str,
    routing_key: &str,
    user_id: Option<&ShortString>,
) -> bool {
    user.is_some() && exchange.is_empty() && routing_key == work_queue && user_id == user
}

/// The retry count in [`RETRIES_HEADER`]: a non-negative integer, or 0 for
/// anything else (absent, negative, of another type).
pub(super) fn retries_in(headers: Option<&FieldTable>) -> u64 {
    match headers.and_then(|h| h.inner().get(RETRIES_HEADER)) {
        Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// [`RETRIES_HEADER`]'s value for `retries` (saturating at `i64::MAX`).
pub(super) fn retries_value(retries: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(retries).unwrap_or(i64::MAX))
}

pub(super) fn long(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

pub(super) fn now_seconds() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: AMQPValue) -> FieldTable {
        let mut table = FieldTable::default();
        table.insert(RETRIES_HEADER.into(), value);
        table
    }

    #[test]
    fn only_the_workers_user_through_the_default_exchange_to_the_work_queue_is_own() {
        let worker = ShortString::from("worker");
        let other = ShortString::from("guest");
        let own = |user, exchange, key, user_id| is_own(user, "q", exchange, key, user_id);
        assert!(own(Some(&worker), "", "q", Some(&worker)));
        assert!(!own(None, "", "q", None), "no known user: nothing is own");
        assert!(!own(Some(&worker), "", "q", Some(&other)));
        assert!(!own(Some(&worker), "", "q", None));
        assert!(!own(Some(&worker), "taptalk.logins", "q", Some(&worker)));
        assert!(!own(Some(&worker), "", "other", Some(&worker)));
    }

    #[test]
    fn a_retry_count_is_a_non_negative_integer_or_zero() {
        assert_eq!(retries_in(None), 0);
        assert_eq!(retries_in(Some(&FieldTable::default())), 0);
        assert_eq!(retries_in(Some(&headers(AMQPValue::LongLongInt(3)))), 3);
        assert_eq!(retries_in(Some(&headers(AMQPValue::LongInt(2)))), 2);
        assert_eq!(retries_in(Some(&headers(AMQPValue::LongLongInt(-5)))), 0);
        assert_eq!(retries_in(Some(&headers(long("7")))), 0);
    }

    #[test]
    fn a_retry_count_saturates_on_the_wire() {
        assert_eq!(retries_value(4), AMQPValue::LongLongInt(4));
        assert_eq!(retries_value(u64::MAX), AMQPValue::LongLongInt(i64::MAX));
    }
}
