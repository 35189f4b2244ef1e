//! The login events a bench run publishes: realistic and valid (the
//! stand-in's `fake_taptalk::logins`, which the demo uses too, a third as
//! many users as events), each with a fresh UUID as
//! its `eventID`, serialized before the run starts so that publishing costs
//! the load generator next to nothing. `occurredAt` is written into the
//! serialized body at the instant of publishing, with millisecond precision.

use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use std::collections::HashMap;

/// What `occurredAt` holds until the event is published: as long as every
/// time it is replaced with (`2026-12-01T18:30:15.123Z`).
const PLACEHOLDER: &str = "2000-01-01T00:00:00.000Z";

/// One serialized login event.
#[derive(Debug, Clone)]
pub(crate) struct EventBody {
    pub id: String,
    pub bytes: Vec<u8>,
    /// Where the `occurredAt` value starts in `bytes`.
    stamp_at: usize,
}

impl EventBody {
    /// Writes `at` (to the millisecond) as the event's `occurredAt`.
    pub(crate) fn stamp(&mut self, at: DateTime<Utc>) {
        let text = at.to_rfc3339_opts(SecondsFormat::Millis, true);
        if text.len() == PLACEHOLDER.len()
            && let Some(slot) = self
                .bytes
                .get_mut(self.stamp_at..self.stamp_at + text.len())
        {
            slot.copy_from_slice(text.as_bytes());
        }
    }
}

/// `count` events, and their ids mapped to their index.
pub(crate) fn login_events(count: usize) -> (Vec<EventBody>, HashMap<String, usize>) {
    let mut rng = rand::rng();
    let users = (count / 3).max(1);
    let mut bodies = Vec::with_capacity(count);
    let mut index = HashMap::with_capacity(count);
    for i in 0..count {
        let id = uuid::Uuid::new_v4().to_string();
        let user = rng.random_range(0..users);
        let event = fake_taptalk::logins::realistic_login_event(&mut rng, user, &id, PLACEHOLDER);
        let bytes = event.to_string().into_bytes();
        let needle = format!("\"occurredAt\":\"{PLACEHOLDER}\"");
        let stamp_at = find(&bytes, needle.as_bytes())
            .map(|at| at + needle.len() - PLACEHOLDER.len() - 1)
            .unwrap_or(0);
        index.insert(id.clone(), i);
        bodies.push(EventBody {
            id,
            bytes,
            stamp_at,
        });
    }
    (bodies, index)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticket_worker::events::{DEFAULT_MAX_EVENT_BYTES, Envelope, LoginEvent};

    #[test]
    fn events_are_valid_unique_and_stamped_when_published() {
        let (mut bodies, index) = login_events(300);
        assert_eq!(index.len(), 300, "unique ids");
        let at = "2026-12-01T18:30:15.123Z"
            .parse::<DateTime<Utc>>()
            .expect("a time");
        for body in &mut bodies {
            body.stamp(at);
            let envelope = Envelope {
                content_type: Some("application/json"),
                content_encoding: None,
                message_id: Some(&body.id),
            };
            let event = LoginEvent::parse(&body.bytes, &envelope, DEFAULT_MAX_EVENT_BYTES)
                .expect("the worker accepts it");
            assert!(
                event.check_clock_skew(at, Duration::from_secs(60)).is_ok(),
                "stamped"
            );
            let json: serde_json::Value = serde_json::from_slice(&body.bytes).expect("JSON");
            assert_eq!(json["occurredAt"], "2026-12-01T18:30:15.123Z");
            assert_eq!(json["eventID"], body.id.as_str());
        }
    }

    use std::time::Duration;
}
