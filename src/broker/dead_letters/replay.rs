//! The copy `dlq replay` publishes for a dead letter: the original body and
//! properties, under the original routing key, as if the login service had
//! just published it again.
//!
//! It leaves behind everything that described the dead letter rather than
//! the login event: the worker's headers (`x-ticket-worker-*`, among them
//! the retry count, and `x-original-*`) and RabbitMQ's (`x-death`,
//! `x-first-death-*`, `x-last-death-*`, `x-delivery-count`). The dead
//! letter's `user_id` is the worker's (RabbitMQ refuses any other from it);
//! the replay carries the original's, kept in `x-original-user-id`, only
//! when that is the replaying connection's own user, since RabbitMQ refuses
//! (and closes the channel on) any other.
//!
//! Only a letter the worker provably wrote (see
//! [`DeadLetter`](super::DeadLetter)) is believed about the original: for
//! any other, `x-original-routing-key` and `x-original-user-id` are the
//! publisher's words, so the replay goes under the letter's own routing key
//! and carries its own `user_id` (which RabbitMQ checked when it was
//! published), again only when that is the replaying user. Headers the parser may have cut
//! short (see [`header_limits`]) are left out too.

use crate::broker::publisher::{ORIGINAL_ROUTING_KEY_HEADER, ORIGINAL_USER_ID_HEADER};
use crate::broker::{copies, header_limits};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};

/// Header prefixes of the worker and of RabbitMQ: none goes on a replay.
const DROPPED_PREFIXES: [&str; 5] = [
    "x-ticket-worker-",
    "x-original-",
    "x-first-death-",
    "x-last-death-",
    "x-death",
];

/// Header RabbitMQ sets on every redelivery from a quorum queue.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// What a replay of one dead letter publishes to the login exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayCopy {
    /// Where the login event was first published.
    pub routing_key: String,
    pub properties: BasicProperties,
}

impl ReplayCopy {
    /// The replay of `delivery`, taken from the dead-letter queue, published
    /// by a connection logged in as `user` (when known); `by_worker`: the
    /// worker provably wrote the letter ([`DeadLetter::by_worker`](super::DeadLetter::by_worker)).
    pub fn of(delivery: &Delivery, user: Option<&str>, by_worker: bool) -> ReplayCopy {
        ReplayCopy::from_parts(
            &delivery.properties,
            delivery.routing_key.as_str(),
            user,
            by_worker,
        )
    }

    fn from_parts(
        properties: &BasicProperties,
        routing_key: &str,
        user: Option<&str>,
        by_worker: bool,
    ) -> ReplayCopy {
        let original = properties.headers().as_ref().map(FieldTable::inner);
        let text = |name: &str| match original.and_then(|h| h.get(name)) {
            Some(AMQPValue::LongString(text)) if by_worker => Some(text.to_string()),
            Some(AMQPValue::ShortString(text)) if by_worker => Some(text.as_str().to_owned()),
            _ => None,
        };
        let routing_key =
            text(ORIGINAL_ROUTING_KEY_HEADER).unwrap_or_else(|| routing_key.to_owned());
        let original_user = match by_worker {
            true => text(ORIGINAL_USER_ID_HEADER),
            false => properties.user_id().as_ref().map(|u| u.as_str().to_owned()),
        };
        let user_id = original_user
            .filter(|original| Some(original.as_str()) == user)
            .map(|original| crate::broker::short(&original));
        let mut headers = original.cloned().unwrap_or_default();
        headers.retain(|name, _| {
            let name = name.as_str();
            name != DELIVERY_COUNT_HEADER && !DROPPED_PREFIXES.iter().any(|p| name.starts_with(p))
        });
        header_limits::strip(&mut headers);
        let mut properties = copies::with_user_id(properties, user_id);
        if properties.headers().is_some() {
            properties = properties.with_headers(FieldTable::from(headers));
        }
        ReplayCopy {
            routing_key,
            properties,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    fn long(value: &str) -> AMQPValue {
        AMQPValue::LongString(value.into())
    }

    /// A dead letter as the worker publishes it, after RabbitMQ redelivered
    /// it once from the dead-letter queue.
    fn dead_letter(original_user: Option<&str>) -> BasicProperties {
        let mut headers = FieldTable::default();
        for (name, value) in [
            ("x-ticket-worker-reason", "retries_exhausted"),
            ("x-ticket-worker-error", "no ticket after 3 rounds"),
            ("x-original-exchange", "taptalk.logins"),
            ("x-original-routing-key", "login.eu"),
            ("x-first-death-reason", "rejected"),
            ("x-last-death-queue", "q"),
            ("traceparent", "00-abc-def-01"),
        ] {
            headers.insert(name.into(), long(value));
        }
        headers.insert("x-ticket-worker-retries".into(), AMQPValue::LongLongInt(3));
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![])),
        );
        if let Some(user) = original_user {
            headers.insert("x-original-user-id".into(), long(user));
        }
        BasicProperties::default()
            .with_headers(headers)
            .with_content_type("application/json".into())
            .with_message_id("e-1".into())
            .with_user_id("ticket-worker".into())
            .with_delivery_mode(2)
    }

    #[test]
    fn a_replay_carries_the_original_and_nothing_of_the_dead_letter() {
        let copy =
            ReplayCopy::from_parts(&dead_letter(None), "login.eu", Some("ticket-worker"), true);
        assert_eq!(copy.routing_key, "login.eu");
        let headers = copy.properties.headers().clone().unwrap_or_default();
        let names: Vec<&str> = headers.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            vec!["traceparent"],
            "only the publisher's own header stays"
        );
        assert_eq!(copy.properties.user_id(), &None, "not the worker's user_id");
        assert_eq!(
            copy.properties.message_id().as_ref().map(|m| m.as_str()),
            Some("e-1")
        );
        assert_eq!(
            copy.properties.content_type().as_ref().map(|m| m.as_str()),
            Some("application/json")
        );
    }

    #[test]
    fn the_original_routing_key_wins_over_the_dead_letters() {
        let copy = ReplayCopy::from_parts(&dead_letter(None), "elsewhere", None, true);
        assert_eq!(copy.routing_key, "login.eu");
        let bare = BasicProperties::default();
        assert_eq!(
            ReplayCopy::from_parts(&bare, "login", None, false).routing_key,
            "login"
        );
        assert_eq!(
            ReplayCopy::from_parts(&bare, "login", None, false).properties,
            bare
        );
    }

    #[test]
    fn the_original_user_id_comes_back_only_when_it_is_the_replayers() {
        let mine = ReplayCopy::from_parts(&dead_letter(Some("ops")), "login", Some("ops"), true);
        assert_eq!(
            mine.properties.user_id().as_ref().map(|u| u.as_str()),
            Some("ops")
        );
        let theirs = ReplayCopy::from_parts(
            &dead_letter(Some("login-service")),
            "login",
            Some("ops"),
            true,
        );
        assert_eq!(theirs.properties.user_id(), &None);
        let unknown = ReplayCopy::from_parts(&dead_letter(Some("ops")), "login", None, true);
        assert_eq!(unknown.properties.user_id(), &None);
    }

    #[test]
    fn a_letter_the_worker_did_not_write_is_replayed_as_it_came() {
        // x-original-* forged by a publisher, its message dead-lettered by
        // RabbitMQ: the letter's own routing key and user_id count.
        let forged = dead_letter(Some("guest")).with_user_id("guest".into());
        let copy = ReplayCopy::from_parts(&forged, "login", Some("guest"), false);
        assert_eq!(copy.routing_key, "login", "not the forged login.eu");
        assert_eq!(
            copy.properties.user_id().as_ref().map(|u| u.as_str()),
            Some("guest"),
            "its own user_id, which RabbitMQ checked"
        );
        let other = ReplayCopy::from_parts(&forged, "login", Some("ops"), false);
        assert_eq!(other.properties.user_id(), &None);
    }
}
