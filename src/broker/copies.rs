//! Copies of a delivery that the worker publishes (dead letters, messages put
//! back for later) must fit in one AMQP content-header frame, with room to
//! spare for what RabbitMQ adds on the way.
//!
//! A message's properties (its headers above all) travel in one frame of at
//! most `frame_max` bytes (RabbitMQ's default: 131,072). A publisher can fill
//! that frame almost to the byte. Two things then go wrong:
//!
//! - a copy with the worker's own headers added no longer fits: RabbitMQ
//!   closes the whole connection (`frame_too_large`), taking every in-flight
//!   event with it;
//! - a *redelivery* of the message carries RabbitMQ's `x-delivery-count` on
//!   top, and lapin refuses the oversized frame, again closing the connection.
//!
//! So every copy is [`fit`] into `frame_max` less [`BROKER_HEADROOM`]: when it
//! is too big, the original headers are dropped, largest first, until it fits,
//! and [`TRIMMED_HEADER`] says what went. A delivery whose own header frame is
//! already inside the headroom is a *landmine* ([`is_landmine`]): the worker
//! puts a trimmed copy back and acknowledges the original before doing any
//! work on it, so no later redelivery can carry it over the limit.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

/// Bytes of an AMQP frame that are not payload: type, channel, size, end.
pub const FRAME_OVERHEAD: usize = 8;

/// Room kept free in every copy's header frame for what RabbitMQ adds later:
/// `x-delivery-count` on a redelivery (26 bytes), `x-death` and
/// `x-first-death-*` when it dead-letters the copy itself (a few hundred).
pub const BROKER_HEADROOM: usize = 4096;

/// Header on a copy whose original headers did not all fit.
pub const TRIMMED_HEADER: &str = "x-ticket-worker-trimmed-headers";

/// Headers RabbitMQ sets on delivery; a copy must not carry a stale one.
const BROKER_DELIVERY_HEADERS: [&str; 1] = ["x-delivery-count"];

/// The size of the content-header frame that carries `properties`, overhead
/// included: what both RabbitMQ and lapin compare with `frame_max`.
pub fn header_frame_len(properties: &BasicProperties) -> usize {
    // class id (2), weight (2), body size (8), then the properties.
    FRAME_OVERHEAD + 12 + properties_len(properties)
}

/// Whether a delivery's header frame is so close to `frame_max` that
/// RabbitMQ's own additions on a redelivery could push it over.
pub fn is_landmine(properties: &BasicProperties, frame_max: u32) -> bool {
    // Without headers the properties are a few short strings (at most 255
    // bytes each, ~3.5 KB in all): far inside the budget of any frame_max of
    // 16 KiB or more (RabbitMQ's default is 128 KiB), so the serialising
    // below, which allocates, is needed only for messages with headers.
    if properties.headers().is_none() && frame_max as usize >= 4 * BROKER_HEADROOM {
        return false;
    }
    header_frame_len(properties) > budget(frame_max)
}

/// What [`fit`] had to drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    pub headers: usize,
    pub bytes: usize,
}

/// Why a copy cannot be made to fit at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a copy of the message needs a {needed}-byte header frame even without its original headers; RabbitMQ's frame_max allows {allowed}"
)]
pub struct DoesNotFit {
    pub needed: usize,
    pub allowed: usize,
}

/// Makes a copy's properties fit `frame_max` with [`BROKER_HEADROOM`] to
/// spare. `keep` names the headers the worker itself set, which are never
/// dropped; every other header may go, largest first. Broker-set delivery
/// headers (`x-delivery-count`) are always removed.
pub fn fit(
    properties: BasicProperties,
    frame_max: u32,
    keep: &[&str],
) -> Result<(BasicProperties, Option<Trimmed>), DoesNotFit> {
    let mut map = properties
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    for name in BROKER_DELIVERY_HEADERS {
        map.remove(name);
    }
    let allowed = budget(frame_max);
    let len_with = |map: &std::collections::BTreeMap<ShortString, AMQPValue>| {
        header_frame_len(
            &properties
                .clone()
                .with_headers(FieldTable::from(map.clone())),
        )
    };
    if len_with(&map) <= allowed {
        return Ok((properties.with_headers(FieldTable::from(map)), None));
    }
    // Drop the original headers, largest first, until the rest fits. Table
    // entries add up, so one encoding gives the size and each drop subtracts
    // its entry. The note saying so is counted in from the start, at its
    // longest, so adding the real one cannot overflow.
    let mut droppable: Vec<(ShortString, usize)> = map
        .iter()
        .filter(|(name, _)| name.as_str() != TRIMMED_HEADER && !keep.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), 1 + name.as_str().len() + value_len(value)))
        .collect();
    droppable.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    let mut trimmed = Trimmed {
        headers: 0,
        bytes: 0,
    };
    map.insert(TRIMMED_HEADER.into(), note(&trimmed_placeholder()));
    let mut len = len_with(&map);
    for (name, size) in droppable {
        if len <= allowed {
            break;
        }
        map.remove(name.as_str());
        len = len.saturating_sub(size);
        trimmed.headers += 1;
        trimmed.bytes += size;
    }
    map.insert(TRIMMED_HEADER.into(), note(&trimmed));
    let copy = properties.with_headers(FieldTable::from(map));
    let needed = header_frame_len(&copy);
    if needed <= allowed {
        Ok((copy, Some(trimmed)))
    } else {
        Err(DoesNotFit { needed, allowed })
    }
}

/// The largest header frame a copy may have: `frame_max` (0 means no limit)
/// less the headroom, which is at most a quarter of a small `frame_max`.
fn budget(frame_max: u32) -> usize {
    if frame_max == 0 {
        return usize::MAX / 2;
    }
    let limit = frame_max as usize;
    limit - BROKER_HEADROOM.min(limit / 4)
}

/// A note as long as any real one can be, reserved before trimming.
fn trimmed_placeholder() -> Trimmed {
    Trimmed {
        headers: usize::MAX,
        bytes: usize::MAX,
    }
}

fn note(trimmed: &Trimmed) -> AMQPValue {
    AMQPValue::LongString(
        format!(
            "{} original headers ({} bytes) removed: the copy had to fit RabbitMQ's frame_max",
            trimmed.headers, trimmed.bytes
        )
        .into(),
    )
}

/// `properties` with `user_id` replaced (`None` removes it). lapin's
/// properties can be set but not unset, so this rebuilds them.
pub fn with_user_id(properties: &BasicProperties, user_id: Option<ShortString>) -> BasicProperties {
    let p = properties;
    let mut out = BasicProperties::default();
    let set = |out: BasicProperties,
               value: &Option<ShortString>,
               with: fn(BasicProperties, ShortString) -> BasicProperties| match value
    {
        Some(value) => with(out, value.clone()),
        None => out,
    };
    out = set(out, p.content_type(), BasicProperties::with_content_type);
    out = set(
        out,
        p.content_encoding(),
        BasicProperties::with_content_encoding,
    );
    if let Some(headers) = p.headers() {
        out = out.with_headers(headers.clone());
    }
    if let Some(mode) = p.delivery_mode() {
        out = out.with_delivery_mode(*mode);
    }
    if let Some(priority) = p.priority() {
        out = out.with_priority(*priority);
    }
    out = set(
        out,
        p.correlation_id(),
        BasicProperties::with_correlation_id,
    );
    out = set(out, p.reply_to(), BasicProperties::with_reply_to);
    out = set(out, p.expiration(), BasicProperties::with_expiration);
    out = set(out, p.message_id(), BasicProperties::with_message_id);
    if let Some(timestamp) = p.timestamp() {
        out = out.with_timestamp(*timestamp);
    }
    out = set(out, p.kind(), BasicProperties::with_type);
    out = set(out, &user_id, BasicProperties::with_user_id);
    out = set(out, p.app_id(), BasicProperties::with_app_id);
    set(out, p.cluster_id(), BasicProperties::with_cluster_id)
}

/// The encoded size of a message's properties.
fn properties_len(properties: &BasicProperties) -> usize {
    let serialize = lapin::protocol::basic::gen_properties(properties);
    match serialize(Vec::new().into()) {
        Ok(written) => written.write.len(),
        // Writing to a Vec cannot run out of room; count it as too big.
        Err(_) => usize::MAX / 4,
    }
}

/// The encoded size of one header value, its type tag included.
fn value_len(value: &AMQPValue) -> usize {
    let mut table = FieldTable::default();
    table.insert("x".into(), value.clone());
    let with = properties_len(&BasicProperties::default().with_headers(table));
    let without = properties_len(&BasicProperties::default().with_headers(FieldTable::default()));
    // Minus the one-byte key and its length byte counted by the caller.
    with.saturating_sub(without).saturating_sub(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(name: &str, bytes: usize) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(name.into(), AMQPValue::LongString("a".repeat(bytes).into()));
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers)
    }

    #[test]
    fn the_header_frame_length_counts_every_byte() {
        let empty = BasicProperties::default();
        // overhead 8 + class/weight/size 12 + property flags 2
        assert_eq!(header_frame_len(&empty), 22);
        let small = with_header("k", 10);
        let big = with_header("k", 1010);
        assert_eq!(header_frame_len(&big) - header_frame_len(&small), 1000);
    }

    #[test]
    fn copies_that_fit_are_left_alone_but_lose_broker_headers() {
        let mut properties = with_header("x-app", 100);
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        properties = properties.with_headers(headers);
        let (copy, trimmed) = fit(properties, 131_072, &[]).expect("fits");
        assert_eq!(trimmed, None);
        let headers = copy.headers().clone().unwrap_or_default();
        assert!(headers.inner().contains_key("x-app"));
        assert!(!headers.inner().contains_key("x-delivery-count"));
    }

    #[test]
    fn oversized_headers_are_dropped_largest_first_and_noted() {
        let mut headers = FieldTable::default();
        headers.insert(
            "huge".into(),
            AMQPValue::LongString("h".repeat(130_000).into()),
        );
        headers.insert("small".into(), AMQPValue::LongString("s".into()));
        headers.insert(
            "x-ticket-worker-reason".into(),
            AMQPValue::LongString("invalid".into()),
        );
        let properties = BasicProperties::default().with_headers(headers);
        assert!(is_landmine(&properties, 131_072));
        let (copy, trimmed) =
            fit(properties, 131_072, &["x-ticket-worker-reason"]).expect("fits after trimming");
        let trimmed = trimmed.expect("trimmed");
        assert_eq!(trimmed.headers, 1);
        assert!(trimmed.bytes > 130_000);
        let headers = copy.headers().clone().unwrap_or_default();
        assert!(!headers.inner().contains_key("huge"));
        assert!(headers.inner().contains_key("small"));
        assert!(headers.inner().contains_key("x-ticket-worker-reason"));
        assert!(headers.inner().contains_key(TRIMMED_HEADER));
        assert!(header_frame_len(&copy) <= 131_072 - BROKER_HEADROOM);
        assert!(!is_landmine(&copy, 131_072));
    }

    #[test]
    fn user_id_is_replaced_or_removed_and_nothing_else_changes() {
        let original = with_header("k", 3)
            .with_message_id("m-1".into())
            .with_user_id("publisher".into())
            .with_priority(3)
            .with_timestamp(42)
            .with_type("login".into());
        let mine = with_user_id(&original, Some("worker".into()));
        assert_eq!(mine.user_id().as_ref().map(|u| u.as_str()), Some("worker"));
        let none = with_user_id(&original, None);
        assert_eq!(none.user_id(), &None);
        assert_eq!(with_user_id(&none, Some("publisher".into())), original);
    }

    #[test]
    fn kept_headers_that_cannot_fit_are_an_error() {
        let properties = with_header("x-mine", 20_000);
        let error = fit(properties, 16_384, &["x-mine"]).expect_err("cannot fit");
        assert_eq!(error.allowed, 16_384 - BROKER_HEADROOM);
        assert!(error.needed > 20_000);
    }
}
