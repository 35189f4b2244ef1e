//! Publishing the ticket events, `ticket.ready` and `ticket.failed`, on the
//! events channel: from the pipeline (with the login event's trace) and from
//! the outbox relay (exactly as stored). An unroutable ticket event is
//! normal (nobody listens yet): said once, not an error.

use super::headers::now_seconds;
use super::{PublishError, Publisher};
use crate::broker::short;
use crate::events::{TicketFailed, TicketReady};
use crate::observe::traces;
use crate::storage::Announcement;
use lapin::BasicProperties;
use lapin::types::FieldTable;
use std::sync::atomic::Ordering;

impl Publisher {
    /// Publishes `ticket.ready` answering a login event with these headers
    /// (`None` for none), carrying its trace on (see
    /// [`traces::carried_on`]).
    #[tracing::instrument(name = "broker.publish_ready", level = "debug", skip_all, fields(event_id = %ready.event_id))]
    pub async fn ticket_ready(
        &self,
        ready: &TicketReady,
        login: Option<&FieldTable>,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(ready)?;
        let trace = traces::carried_on(login);
        self.ticket_event(TicketReady::ROUTING_KEY, &ready.event_id, &body, trace)
            .await
    }

    /// Publishes a `ticket.ready` already encoded (as stored in the outbox),
    /// as [`Publisher::ticket_ready`] does.
    #[tracing::instrument(name = "broker.publish_ready", level = "debug", skip_all, fields(event_id = %event_id))]
    pub async fn ticket_ready_encoded(
        &self,
        event_id: &str,
        body: &str,
        login: Option<&FieldTable>,
    ) -> Result<(), PublishError> {
        let trace = traces::carried_on(login);
        self.ticket_event(TicketReady::ROUTING_KEY, event_id, body.as_bytes(), trace)
            .await
    }

    /// Publishes `ticket.failed`, as [`Publisher::ticket_ready`] does.
    #[tracing::instrument(name = "broker.publish_failed", level = "debug", skip_all, fields(event_id = %failed.event_id, reason = failed.reason.as_str()))]
    pub async fn ticket_failed(
        &self,
        failed: &TicketFailed,
        login: Option<&FieldTable>,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(failed)?;
        let trace = traces::carried_on(login);
        self.ticket_event(TicketFailed::ROUTING_KEY, &failed.event_id, &body, trace)
            .await
    }

    /// Publishes a ticket event from the outbox, exactly as it was stored.
    /// Its login event's delivery is gone, and its trace with it: it carries
    /// none.
    #[tracing::instrument(name = "broker.publish_announcement", level = "debug", skip_all, fields(event_id = %announcement.event_id, routing_key = %announcement.routing_key))]
    pub async fn announcement(&self, announcement: &Announcement) -> Result<(), PublishError> {
        self.ticket_event(
            &announcement.routing_key,
            &announcement.event_id,
            announcement.body.as_bytes(),
            None,
        )
        .await
    }

    /// `trace`: the trace headers it carries, if any.
    async fn ticket_event(
        &self,
        routing_key: &str,
        event_id: &str,
        body: &[u8],
        trace: Option<FieldTable>,
    ) -> Result<(), PublishError> {
        let properties = event_properties(routing_key, event_id, trace);
        match self
            .publish(
                &self.events,
                &self.topology.ticket_exchange,
                routing_key,
                body,
                properties,
            )
            .await
        {
            Err(PublishError::Unroutable {
                exchange,
                routing_key,
            }) => {
                // Tickets are in Postgres whether or not anybody listens; say so once.
                if !self.warned_unroutable.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%exchange, %routing_key, "no queue is bound for ticket events; they are dropped until one is");
                }
                Ok(())
            }
            other => other,
        }
    }
}

/// A ticket event's properties: JSON, persistent, correlated with its login
/// event by `eventID`, typed by its routing key, and carrying `trace` (the
/// login event's trace headers) when there is one.
fn event_properties(
    routing_key: &str,
    event_id: &str,
    trace: Option<FieldTable>,
) -> BasicProperties {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_correlation_id(short(event_id))
        .with_message_id(message_id().into())
        .with_type(short(routing_key))
        .with_app_id("ticket-worker".into())
        .with_timestamp(now_seconds());
    match trace {
        Some(trace) => properties.with_headers(trace),
        None => properties,
    }
}

/// A fresh random (version 4) message id, drawn from the thread's
/// cryptographic generator: `Uuid::new_v4` asks the kernel (a `getrandom`
/// system call) for every one, once per ticket event.
fn message_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::AMQPValue;

    #[test]
    fn a_ticket_event_is_persistent_json_correlated_with_its_login_event() {
        let properties = event_properties(TicketReady::ROUTING_KEY, "evt-1", None);
        let text = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.to_string());
        assert_eq!(
            text(properties.content_type()).as_deref(),
            Some("application/json")
        );
        assert_eq!(properties.delivery_mode(), &Some(2));
        assert_eq!(text(properties.correlation_id()).as_deref(), Some("evt-1"));
        assert_eq!(
            text(properties.kind()).as_deref(),
            Some(TicketReady::ROUTING_KEY)
        );
        assert_eq!(text(properties.app_id()).as_deref(), Some("ticket-worker"));
        assert!(properties.timestamp().is_some_and(|t| t > 1_700_000_000));
        assert!(properties.headers().is_none(), "no trace, no headers");
        let other = event_properties(TicketReady::ROUTING_KEY, "evt-1", None);
        assert_ne!(
            properties.message_id(),
            other.message_id(),
            "each publish has its own id"
        );
    }

    #[test]
    fn a_ticket_event_carries_the_trace_it_is_given_and_cuts_long_ids() {
        let mut trace = FieldTable::default();
        trace.insert(
            "traceparent".into(),
            AMQPValue::LongString("00-abc-def-01".into()),
        );
        let long_id = "e".repeat(300);
        let properties = event_properties(TicketFailed::ROUTING_KEY, &long_id, Some(trace));
        let headers = properties.headers().as_ref().expect("trace headers");
        assert!(headers.inner().contains_key("traceparent"));
        let id = properties
            .correlation_id()
            .as_ref()
            .expect("correlation id");
        assert_eq!(
            id.as_str().len(),
            255,
            "an AMQP short string holds 255 bytes"
        );
    }

    #[test]
    fn message_ids_are_fresh_version_4_uuids() {
        let (a, b) = (message_id(), message_id());
        assert_ne!(a, b);
        for id in [a, b] {
            let parsed = uuid::Uuid::parse_str(&id).expect("a UUID");
            assert_eq!(parsed.get_version(), Some(uuid::Version::Random), "{id}");
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{id}");
        }
    }
}
