//! The copy of a delivery the worker publishes (a dead letter, a message put
//! back for later): which of the original's headers it keeps, which it drops
//! as forged, and what it records about the original. Deciding only; the
//! publishing is in [`super::resend`].

use super::super::{copies, header_limits};
use super::headers::{
    ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, ORIGINAL_USER_ID_HEADER, long,
};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use std::collections::BTreeMap;

/// What the worker's own copies record about the original, kept on every
/// further copy.
const KEPT_FROM_OWN_COPIES: [&str; 5] = [
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    ORIGINAL_USER_ID_HEADER,
    copies::TRIMMED_HEADER,
    header_limits::UNREADABLE_HEADER,
];

/// The headers of a copy the worker makes of a delivery, and which of them
/// the worker wrote (those are never trimmed).
pub(super) struct Copy {
    headers: BTreeMap<ShortString, AMQPValue>,
    /// The headers the worker wrote, which trimming keeps.
    pub(super) written: Vec<&'static str>,
    /// Where the original was first published to: the delivery's own routing
    /// key, or, on the worker's own copy, the one it recorded.
    pub(super) original_routing_key: String,
}

/// The parts of a delivery a copy is made from.
#[derive(Clone, Copy)]
pub(super) struct Original<'a> {
    pub(super) exchange: &'a str,
    pub(super) routing_key: &'a str,
    pub(super) properties: &'a BasicProperties,
}

impl<'a> Original<'a> {
    pub(super) fn of(delivery: &'a Delivery) -> Original<'a> {
        Original {
            exchange: delivery.exchange.as_str(),
            routing_key: delivery.routing_key.as_str(),
            properties: &delivery.properties,
        }
    }
}

impl Copy {
    /// Starts from the original's headers. The worker's own names
    /// (`x-ticket-worker-*`, `x-original-*`) and RabbitMQ's record of
    /// dead-lettering (`x-death`, `x-first-death-*`, `x-last-death-*`) mean
    /// nothing coming from a publisher and are dropped, unless the delivery
    /// is the worker's own copy,
    /// whose record of the original (exchange, routing key, `user_id`) is kept.
    /// Headers the parser may have cut short are left out, and a header
    /// says how many (see [`header_limits`]).
    /// `own`: whether the delivery is the worker's own copy
    /// ([`super::headers::is_own`]).
    pub(super) fn of(own: bool, original: Original<'_>) -> Copy {
        let mut headers: BTreeMap<ShortString, AMQPValue> = original
            .properties
            .headers()
            .as_ref()
            .map(|h| h.inner().clone())
            .unwrap_or_default();
        headers.retain(|name, _| {
            let name = name.as_str();
            let workers = name.starts_with("x-ticket-worker-") || name.starts_with("x-original-");
            // RabbitMQ's record of dead-lettering, written by a publisher,
            // would make the worker's own dead letter read as RabbitMQ's.
            let brokers = name == "x-death"
                || name.starts_with("x-first-death-")
                || name.starts_with("x-last-death-");
            (!workers && !brokers) || (own && KEPT_FROM_OWN_COPIES.contains(&name))
        });
        let unreadable = header_limits::strip(&mut headers);
        let mut copy = Copy {
            headers,
            written: Vec::new(),
            original_routing_key: original.routing_key.to_owned(),
        };
        if own {
            if let Some(AMQPValue::LongString(key)) = copy.headers.get(ORIGINAL_ROUTING_KEY_HEADER)
            {
                copy.original_routing_key = key.to_string();
            }
            for name in KEPT_FROM_OWN_COPIES {
                if copy.headers.contains_key(name) {
                    copy.written.push(name);
                }
            }
        } else {
            copy.set(ORIGINAL_EXCHANGE_HEADER, long(original.exchange));
            copy.set(ORIGINAL_ROUTING_KEY_HEADER, long(original.routing_key));
            if let Some(user_id) = original.properties.user_id() {
                copy.set(ORIGINAL_USER_ID_HEADER, long(user_id.as_str()));
            }
        }
        if unreadable > 0 {
            copy.set(
                header_limits::UNREADABLE_HEADER,
                header_limits::note(unreadable),
            );
        }
        copy
    }

    pub(super) fn set(&mut self, name: &'static str, value: AMQPValue) {
        self.headers.insert(name.into(), value);
        if !self.written.contains(&name) {
            self.written.push(name);
        }
    }

    /// The copy's properties: the original's, with these headers and the
    /// worker's `user_id` (`user`; RabbitMQ refuses any other from the
    /// worker, and closes the channel), or none.
    pub(super) fn properties(
        &self,
        original: &BasicProperties,
        user: Option<ShortString>,
    ) -> BasicProperties {
        let properties = original
            .clone()
            .with_headers(FieldTable::from(self.headers.clone()));
        copies::with_user_id(&properties, user)
    }

    #[cfg(test)]
    fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.headers.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::publisher::headers::{REASON_HEADER, RETRIES_HEADER};

    fn with_headers(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (name, value) in pairs {
            table.insert((*name).into(), value.clone());
        }
        BasicProperties::default().with_headers(table)
    }

    fn from_publisher(properties: &BasicProperties) -> Original<'_> {
        Original {
            exchange: "taptalk.logins",
            routing_key: "login.web",
            properties,
        }
    }

    #[test]
    fn a_publishers_worker_and_broker_headers_are_dropped_and_the_original_recorded() {
        let properties = with_headers(&[
            ("app-header", long("kept")),
            (REASON_HEADER, long("rejected_by_upstream")),
            (ORIGINAL_ROUTING_KEY_HEADER, long("attacker.key")),
            ("x-death", AMQPValue::FieldArray(Default::default())),
            ("x-first-death-reason", long("expired")),
            ("x-last-death-queue", long("q")),
        ])
        .with_user_id("guest".into());
        let copy = Copy::of(false, from_publisher(&properties));
        assert_eq!(copy.header("app-header"), Some(&long("kept")));
        for forged in [
            REASON_HEADER,
            "x-death",
            "x-first-death-reason",
            "x-last-death-queue",
        ] {
            assert_eq!(copy.header(forged), None, "{forged} is dropped");
        }
        assert_eq!(
            copy.header(ORIGINAL_ROUTING_KEY_HEADER),
            Some(&long("login.web"))
        );
        assert_eq!(
            copy.header(ORIGINAL_EXCHANGE_HEADER),
            Some(&long("taptalk.logins"))
        );
        assert_eq!(copy.header(ORIGINAL_USER_ID_HEADER), Some(&long("guest")));
        assert_eq!(copy.original_routing_key, "login.web");
        assert!(copy.written.contains(&ORIGINAL_ROUTING_KEY_HEADER));
    }

    #[test]
    fn the_workers_own_copy_keeps_its_record_of_the_original() {
        let properties = with_headers(&[
            (ORIGINAL_EXCHANGE_HEADER, long("taptalk.logins")),
            (ORIGINAL_ROUTING_KEY_HEADER, long("login.ios")),
            (ORIGINAL_USER_ID_HEADER, long("login-service")),
            (RETRIES_HEADER, AMQPValue::LongLongInt(2)),
        ]);
        let own = Original {
            exchange: "",
            routing_key: "work-queue",
            properties: &properties,
        };
        let copy = Copy::of(true, own);
        assert_eq!(copy.original_routing_key, "login.ios");
        assert_eq!(
            copy.header(ORIGINAL_USER_ID_HEADER),
            Some(&long("login-service"))
        );
        assert_eq!(
            copy.header(RETRIES_HEADER),
            None,
            "the count is written afresh"
        );
        for kept in [
            ORIGINAL_EXCHANGE_HEADER,
            ORIGINAL_ROUTING_KEY_HEADER,
            ORIGINAL_USER_ID_HEADER,
        ] {
            assert!(copy.written.contains(&kept), "{kept} is never trimmed");
        }
    }

    #[test]
    fn a_copy_carries_the_workers_user_id_or_none() {
        let properties = with_headers(&[]).with_user_id("guest".into());
        let copy = Copy::of(false, from_publisher(&properties));
        let as_worker = copy.properties(&properties, Some("worker".into()));
        assert_eq!(
            as_worker.user_id().as_ref().map(|u| u.as_str()),
            Some("worker")
        );
        let anonymous = copy.properties(&properties, None);
        assert_eq!(anonymous.user_id(), &None);
    }

    #[test]
    fn set_records_each_written_header_once() {
        let properties = with_headers(&[]);
        let mut copy = Copy::of(false, from_publisher(&properties));
        let before = copy.written.len();
        copy.set(REASON_HEADER, long("invalid"));
        copy.set(REASON_HEADER, long("invalid"));
        assert_eq!(copy.written.len(), before + 1);
    }
}
