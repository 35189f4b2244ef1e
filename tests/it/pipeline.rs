//! The pipeline end to end: real RabbitMQ, real Postgres, the TapTalk
//! stand-in over HTTP, and the worker running in-process.
// Test code: times here are the test's own, not input to guard against.
#![allow(clippy::arithmetic_side_effects)]

use crate::support::*;
use chrono::{DateTime, TimeDelta, Utc};
use fake_taptalk::Knobs;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use ticket_worker::domain::EventId;
use ticket_worker::storage::{TicketStore, body_digest};

const WAIT: Duration = Duration::from_secs(60);

/// Stores a ticket for `event_id`, issued at `issued_at`, with its
/// `ticket.ready` in the outbox, as a worker that died right after saving
/// leaves it; returns the record and that event's JSON.
async fn store_ticket(
    store: &TicketStore,
    event_id: &str,
    issued_at: DateTime<Utc>,
) -> (ticket_worker::domain::TicketRecord, String) {
    let record = ticket_worker::domain::TicketRecord {
        event_id: EventId::parse(event_id).expect("id"),
        xc_user_id: format!("cust-{event_id}"),
        user_id: format!("tt-{event_id}"),
        user_device_id: "d-1".into(),
        platform: ticket_worker::domain::Platform::Web,
        ticket: ticket_worker::domain::AuthTicket::new(format!("ticket-of-{event_id}")),
        issued_at,
        expires_at: issued_at + TimeDelta::hours(1),
    };
    let ready = serde_json::to_string(&ticket_worker::events::TicketReady::for_record(&record))
        .expect("encode");
    store.save(&record, &ready).await.expect("save");
    (record, ready)
}

fn parse_time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().expect("a timestamp string"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

/// What TapTalk must receive for an event: its TapTalk fields, untouched,
/// without the event's own keys, unknown keys and nulls.
fn expected_upstream_body(event: &Value) -> Map<String, Value> {
    const FIELDS: [&str; 12] = [
        "userIPAddress",
        "userAgent",
        "userPlatform",
        "userDeviceID",
        "xcUserID",
        "fullName",
        "email",
        "phone",
        "username",
        "photoThumbnailURL",
        "photoFullsizeURL",
        "userRoleCode",
    ];
    event
        .as_object()
        .expect("object")
        .iter()
        .filter(|(k, v)| FIELDS.contains(&k.as_str()) && !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[tokio::test]
async fn many_login_events_become_stored_tickets_and_ready_events() {
    let h = Harness::new(Knobs {
        latency: Duration::from_millis(5),
        latency_jitter: Duration::from_millis(10),
        ..Knobs::default()
    })
    .await;
    let worker = h.worker();

    // 150 logins by 50 users, with every shape of optional field.
    let events: Vec<Value> = (0..150)
        .map(|i| {
            let mut event = login_event(&format!("cust-{}", i % 50));
            match i % 3 {
                0 => {
                    let object = event.as_object_mut().expect("object");
                    object.remove("email");
                    object.remove("phone");
                }
                1 => {
                    event["email"] = Value::Null;
                    event["username"] = json!(format!("user{i}"));
                    event["photoThumbnailURL"] = json!("https://cdn.example.com/t/1.png");
                    event["photoFullsizeURL"] = json!("https://cdn.example.com/f/1.png");
                    event["userRoleCode"] = json!("member");
                    event["userPlatform"] = json!("android");
                    event["userAgent"] = json!("Ünïcode ✓ agent/1.0");
                }
                _ => {
                    event["userPlatform"] = json!("web");
                    event["userIPAddress"] = json!("2001:db8::7");
                }
            }
            event
        })
        .collect();
    let sent_at = Utc::now();
    h.broker.publish_events(&events).await;
    let ready = h.tap.wait_for("ticket.ready", events.len(), WAIT).await;
    let received_at = Utc::now();

    // One ready event per login event, correlated by eventID.
    let by_id: HashMap<String, &Value> = events
        .iter()
        .map(|e| (e["eventID"].as_str().unwrap_or_default().to_owned(), e))
        .collect();
    let ready_ids: HashSet<String> = ready
        .iter()
        .map(|r| r.body["eventID"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ready_ids, by_id.keys().cloned().collect::<HashSet<_>>());
    assert_eq!(
        ready.len(),
        events.len(),
        "no duplicate ready events without faults"
    );

    // Every row matches what the stand-in issued, for exactly the body sent.
    let store = TicketStore::from_pool(h.db.pool.clone());
    let ids: Vec<EventId> = by_id
        .keys()
        .map(|id| EventId::parse(id).expect("id"))
        .collect();
    let rows = store.find_many(&ids).await.expect("rows");
    assert_eq!(rows.len(), events.len());
    assert_eq!(h.db.count().await, events.len() as i64);
    let issued = h.taptalk.issued();
    assert_eq!(issued.len(), events.len(), "one upstream ticket per event");
    let issued_by_ticket: HashMap<&str, _> =
        issued.iter().map(|i| (i.ticket.expose(), i)).collect();
    let mut user_ids: HashMap<String, HashSet<String>> = HashMap::new();
    for row in &rows {
        let event = by_id[row.event_id.as_str()];
        let upstream = issued_by_ticket
            .get(row.ticket.expose())
            .expect("the stored ticket is one the stand-in issued");
        assert_eq!(
            upstream.body,
            expected_upstream_body(event),
            "fields reach TapTalk exactly as sent"
        );
        assert_eq!(row.user_id, upstream.user_id);
        assert_eq!(
            row.xc_user_id,
            event["xcUserID"].as_str().unwrap_or_default()
        );
        assert_eq!(
            row.user_device_id,
            event["userDeviceID"].as_str().unwrap_or_default()
        );
        assert_eq!(
            row.platform.as_str(),
            event["userPlatform"].as_str().unwrap_or_default()
        );
        // expires_at is one hour after the request was sent.
        assert_eq!(row.expires_at - row.issued_at, TimeDelta::hours(1));
        assert!(
            row.issued_at >= sent_at && row.issued_at <= upstream.at,
            "issued_at is the send time"
        );
        assert!(upstream.at - row.issued_at < TimeDelta::seconds(2));
        user_ids
            .entry(row.xc_user_id.clone())
            .or_default()
            .insert(row.user_id.clone());

        let ready = ready
            .iter()
            .find(|r| r.body["eventID"] == row.event_id.as_str())
            .expect("ready event");
        assert_eq!(ready.correlation_id.as_deref(), Some(row.event_id.as_str()));
        assert_eq!(ready.body["userID"], row.user_id.as_str());
        assert_eq!(ready.body["xcUserID"], row.xc_user_id.as_str());
        assert_eq!(ready.body["userDeviceID"], row.user_device_id.as_str());
        assert_eq!(ready.body["userPlatform"], row.platform.as_str());
        assert_eq!(
            parse_time(&ready.body["expiresAt"]),
            row.expires_at.trunc_subsecs_millis()
        );
        assert_eq!(
            parse_time(&ready.body["issuedAt"]),
            row.issued_at.trunc_subsecs_millis()
        );
        assert!(
            !ready.raw.contains(row.ticket.expose()),
            "ready events never carry the ticket"
        );
        assert!(parse_time(&ready.body["issuedAt"]) <= received_at);
    }
    // A stable TapTalk userID per xcUserID, distinct between users.
    assert_eq!(user_ids.len(), 50);
    assert!(user_ids.values().all(|ids| ids.len() == 1));
    let distinct: HashSet<&String> = user_ids.values().flatten().collect();
    assert_eq!(distinct.len(), 50);

    assert_eq!(h.broker.ready_count(&h.broker.topology.work_queue).await, 0);
    assert!(h.broker.drain_dead_letters().await.is_empty());
    assert!(h.tap.failed().is_empty());
    let stats = worker.stats();
    assert_eq!(
        (stats.issued, stats.dead_lettered, stats.requeued),
        (150, 0, 0)
    );
    worker.stop().await;
}

trait TruncMillis {
    fn trunc_subsecs_millis(self) -> Self;
}

impl TruncMillis for DateTime<Utc> {
    fn trunc_subsecs_millis(self) -> Self {
        chrono::DurationRound::duration_trunc(self, TimeDelta::milliseconds(1)).unwrap_or(self)
    }
}

/// One kind of bad input.
struct BadInput {
    name: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    message_id: Option<&'static str>,
    problem: &'static str,
    /// `Some((field, code))` when one field is to blame.
    field: Option<(&'static str, Option<u64>)>,
}

fn with(mutate: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut event = login_event("cust-bad");
    event.as_object_mut().map(|o| o.remove("eventID"));
    mutate(&mut event);
    event.to_string().into_bytes()
}

fn bad_inputs() -> Vec<BadInput> {
    let json = Some("application/json");
    let huge = with(|e| e["padding"] = json!("x".repeat(70 * 1024)));
    vec![
        BadInput {
            name: "not-json",
            body: b"{\"eventID\": oops".to_vec(),
            content_type: json,
            message_id: Some("m-not-json"),
            problem: "not_json",
            field: None,
        },
        BadInput {
            name: "not-utf8",
            body: vec![0xff, 0xfe, b'{', b'}'],
            content_type: json,
            message_id: Some("m-not-utf8"),
            problem: "not_utf8",
            field: None,
        },
        BadInput {
            name: "array",
            body: b"[1, 2, 3]".to_vec(),
            content_type: json,
            message_id: Some("m-array"),
            problem: "not_an_object",
            field: None,
        },
        BadInput {
            name: "too-large",
            body: huge,
            content_type: json,
            message_id: Some("m-too-large"),
            problem: "too_large",
            field: None,
        },
        BadInput {
            name: "text-plain",
            body: with(|_| {}),
            content_type: Some("text/plain"),
            message_id: Some("m-text"),
            problem: "content_type",
            field: None,
        },
        BadInput {
            name: "no-full-name",
            body: with(|e| {
                e.as_object_mut().map(|o| o.remove("fullName"));
            }),
            content_type: json,
            message_id: Some("m-no-name"),
            problem: "invalid_field",
            field: Some(("fullName", Some(106))),
        },
        BadInput {
            name: "bad-platform",
            body: with(|e| e["userPlatform"] = json!("blackberry")),
            content_type: json,
            message_id: Some("m-platform"),
            problem: "invalid_field",
            field: Some(("userPlatform", Some(103))),
        },
        BadInput {
            name: "long-xc-user-id",
            body: with(|e| e["xcUserID"] = json!("u".repeat(51))),
            content_type: json,
            message_id: Some("m-long"),
            problem: "invalid_field",
            field: Some(("xcUserID", Some(105))),
        },
        BadInput {
            name: "bad-ip",
            body: with(|e| e["userIPAddress"] = json!("999.1.1.1")),
            content_type: json,
            message_id: Some("m-ip"),
            problem: "invalid_field",
            field: Some(("userIPAddress", Some(101))),
        },
        BadInput {
            name: "wrong-type",
            body: with(|e| e["userAgent"] = json!(5)),
            content_type: json,
            message_id: Some("m-type"),
            problem: "invalid_field",
            field: Some(("userAgent", Some(102))),
        },
        BadInput {
            name: "bad-occurred-at",
            body: with(|e| e["occurredAt"] = json!("yesterday")),
            content_type: json,
            message_id: Some("m-when"),
            problem: "invalid_occurred_at",
            field: Some(("occurredAt", None)),
        },
        BadInput {
            name: "no-id-at-all",
            body: with(|_| {}),
            content_type: json,
            message_id: None,
            problem: "missing_event_id",
            field: Some(("eventID", None)),
        },
        BadInput {
            name: "numeric-event-id",
            body: with(|e| e["eventID"] = json!(42)),
            content_type: json,
            message_id: None,
            problem: "invalid_event_id",
            field: Some(("eventID", None)),
        },
    ]
}

#[tokio::test]
async fn every_kind_of_invalid_input_is_dead_lettered_with_its_reason_and_never_sent_upstream() {
    let h = Harness::new(Knobs::default()).await;
    let worker = h.worker();
    let cases = bad_inputs();
    for case in &cases {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-test-case".into(),
            AMQPValue::LongString(case.name.into()),
        );
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(ct) = case.content_type {
            properties = properties.with_content_type(ct.into());
        }
        if let Some(id) = case.message_id {
            properties = properties.with_message_id(id.into());
        }
        h.broker.publish_raw(&case.body, properties).await;
    }
    let with_id = cases.iter().filter(|c| c.message_id.is_some()).count();
    let failed = h.tap.wait_for("ticket.failed", with_id, WAIT).await;
    let dead = h.broker.wait_for_dead_letters(cases.len(), WAIT).await;
    assert_eq!(dead.len(), cases.len());

    for case in &cases {
        let letter = dead
            .iter()
            .find(|d| header(d, "x-test-case").as_deref() == Some(case.name))
            .unwrap_or_else(|| panic!("{} was dead-lettered", case.name));
        assert_eq!(
            letter.data, case.body,
            "{}: the body is kept byte for byte",
            case.name
        );
        assert_eq!(
            header(letter, "x-ticket-worker-reason").as_deref(),
            Some("invalid"),
            "{}",
            case.name
        );
        assert_eq!(
            header(letter, "x-ticket-worker-problem").as_deref(),
            Some(case.problem),
            "{}",
            case.name
        );
        assert!(
            header(letter, "x-ticket-worker-error").is_some_and(|e| !e.is_empty()),
            "{}",
            case.name
        );
        assert_eq!(
            header(letter, "x-original-routing-key").as_deref(),
            Some("login")
        );
        assert_eq!(
            header(letter, "x-ticket-worker-field").as_deref(),
            case.field.map(|f| f.0),
            "{}",
            case.name
        );

        let event = failed
            .iter()
            .find(|f| Some(f.body["eventID"].as_str().unwrap_or_default()) == case.message_id);
        match case.message_id {
            Some(id) => {
                let event = event.unwrap_or_else(|| panic!("{}: ticket.failed", case.name));
                assert_eq!(event.body["reason"], "invalid");
                assert_eq!(event.correlation_id.as_deref(), Some(id));
                assert!(
                    event.body["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty())
                );
                if let Some((field, code)) = case.field {
                    assert_eq!(event.body["field"], field, "{}", case.name);
                    assert_eq!(event.body["fieldCode"].as_u64(), code, "{}", case.name);
                }
                if case.problem == "invalid_field" && case.name != "long-xc-user-id" {
                    assert_eq!(
                        event.body["xcUserID"], "cust-bad",
                        "{}: identity salvaged",
                        case.name
                    );
                }
            }
            None => assert!(event.is_none()),
        }
    }
    assert_eq!(
        failed.len(),
        with_id,
        "no event without an id gets ticket.failed"
    );
    assert_eq!(
        h.taptalk.stats().requests,
        1,
        "only the start-up probe reached TapTalk"
    );
    assert_eq!(h.db.count().await, 0);
    assert_eq!(h.broker.ready_count(&h.broker.topology.work_queue).await, 0);
    assert!(h.tap.ready().is_empty());
    worker.stop().await;
}

#[tokio::test]
async fn events_taptalk_rejects_get_ticket_failed_and_a_dead_letter_without_retries() {
    let h = Harness::new(Knobs::default()).await;
    let worker = h.worker();
    eventually(WAIT, "the worker is consuming", || async {
        (worker.stats().sessions == 1).then_some(())
    })
    .await;
    // The start-up probe is answered ParamValidationFailed too.
    let before = h.taptalk.stats().param_rejections;

    let mut bad_email = login_event("cust-email");
    bad_email["email"] = json!("ana(at)example.com");
    h.broker.publish_event(&bad_email).await;
    let failed = h.tap.wait_for("ticket.failed", 1, WAIT).await;
    assert_eq!(failed[0].body["eventID"], bad_email["eventID"]);
    assert_eq!(failed[0].body["reason"], "rejected_by_upstream");
    assert_eq!(failed[0].body["field"], "email");
    assert_eq!(failed[0].body["fieldCode"], 107);
    assert_eq!(failed[0].body["xcUserID"], "cust-email");

    // TapTalk may name the field by its code and send numeric error codes.
    h.taptalk.set_knobs(Knobs {
        numeric_codes: true,
        ..Knobs::default()
    });
    let mut bad_phone = login_event("cust-phone");
    bad_phone["phone"] = json!("call me");
    h.broker.publish_event(&bad_phone).await;
    let failed = h.tap.wait_for("ticket.failed", 2, WAIT).await;
    let phone = failed
        .iter()
        .find(|f| f.body["eventID"] == bad_phone["eventID"])
        .expect("phone failure");
    assert_eq!(
        (phone.body["field"].clone(), phone.body["fieldCode"].clone()),
        (json!("phone"), json!(108))
    );

    let dead = h.broker.wait_for_dead_letters(2, WAIT).await;
    assert!(dead.iter().all(|d| header(d, "x-ticket-worker-reason").as_deref() == Some("rejected_by_upstream")));
    let fields: HashSet<String> = dead
        .iter()
        .filter_map(|d| header(d, "x-ticket-worker-field"))
        .collect();
    assert_eq!(
        fields,
        HashSet::from(["email".to_owned(), "phone".to_owned()])
    );
    let stats = h.taptalk.stats();
    assert_eq!(
        stats.param_rejections - before,
        2,
        "each rejected event reached TapTalk exactly once"
    );
    assert_eq!(stats.issued, 0);
    assert_eq!(h.db.count().await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn transient_upstream_failures_are_retried_until_every_event_has_its_ticket() {
    let h = Harness::new(Knobs {
        fail_503: 0.25,
        fail_429: 0.15,
        hang: 0.05,
        hang_for: Duration::from_secs(30),
        ..Knobs::default()
    })
    .await;
    let mut settings = h.settings();
    settings.taptalk.timeout = Duration::from_millis(400);
    settings.taptalk.retry.give_up_after = Some(Duration::from_secs(20));
    settings.breaker.trip_after = Duration::from_secs(3600);
    let worker = TestWorker::spawn(settings);

    let events: Vec<Value> = (0..60).map(|i| login_event(&format!("cust-{i}"))).collect();
    h.broker.publish_events(&events).await;
    let ready = h.tap.wait_for("ticket.ready", events.len(), WAIT).await;
    let ids: HashSet<&str> = ready
        .iter()
        .filter_map(|r| r.body["eventID"].as_str())
        .collect();
    assert_eq!(ids.len(), events.len());

    let stats = h.taptalk.stats();
    assert!(
        stats.injected_503 > 0 && stats.injected_429 > 0 && stats.hung > 0,
        "faults were injected: {stats:?}"
    );
    assert_eq!(h.db.count().await, events.len() as i64, "one row per event");
    assert!(h.tap.failed().is_empty());
    assert!(h.broker.drain_dead_letters().await.is_empty());
    worker.stop().await;
}

#[tokio::test]
async fn an_upstream_that_stays_down_loses_nothing_and_pauses_intake() {
    let h = Harness::new(Knobs::default()).await;
    let mut settings = h.settings();
    settings.taptalk.retry.give_up_after = Some(Duration::from_millis(500));
    settings.breaker.trip_after = Duration::from_millis(800);
    settings.breaker.min_failures = 3;
    let worker = TestWorker::spawn(settings);
    eventually(WAIT, "the worker is consuming", || async {
        (worker.stats().sessions == 1).then_some(())
    })
    .await;

    h.taptalk.set_knobs(Knobs::down());
    let events: Vec<Value> = (0..20).map(|i| login_event(&format!("cust-{i}"))).collect();
    h.broker.publish_events(&events).await;

    // The breaker opens, the consumer stops, and every event is back in the queue.
    eventually(WAIT, "intake paused with all events queued", || async {
        let queued = h.broker.ready_count(&h.broker.topology.work_queue).await;
        (worker.stats().pauses >= 1 && queued == 20).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.broker.ready_count(&h.broker.topology.work_queue).await,
        20,
        "paused: nothing taken"
    );
    assert!(h.tap.all().is_empty(), "no ticket.failed during an outage");
    assert!(
        h.broker.drain_dead_letters().await.is_empty(),
        "no dead letters during an outage"
    );
    assert_eq!(h.db.count().await, 0);

    h.taptalk.set_knobs(Knobs::default());
    let ready = h.tap.wait_for("ticket.ready", 20, WAIT).await;
    let ids: HashSet<&str> = ready
        .iter()
        .filter_map(|r| r.body["eventID"].as_str())
        .collect();
    assert_eq!(ids.len(), 20);
    assert_eq!(h.db.count().await, 20);
    worker.stop().await;
}

#[tokio::test]
async fn when_retries_run_out_the_event_goes_back_to_the_queue_not_to_the_dead_letters() {
    let h = Harness::new(Knobs::default()).await;
    let mut settings = h.settings();
    settings.taptalk.retry.give_up_after = Some(Duration::from_millis(300));
    settings.breaker.trip_after = Duration::from_secs(3600);
    let worker = TestWorker::spawn(settings);
    eventually(WAIT, "the worker is consuming", || async {
        (worker.stats().sessions == 1).then_some(())
    })
    .await;

    h.taptalk.set_knobs(Knobs::down());
    let events: Vec<Value> = (0..5).map(|i| login_event(&format!("cust-{i}"))).collect();
    h.broker.publish_events(&events).await;
    eventually(WAIT, "events retried later several times", || async {
        (worker.stats().retry_later >= 10).then_some(())
    })
    .await;
    assert!(h.broker.drain_dead_letters().await.is_empty());
    assert!(h.tap.all().is_empty());

    h.taptalk.set_knobs(Knobs::default());
    h.tap.wait_for("ticket.ready", 5, WAIT).await;
    assert_eq!(h.db.count().await, 5);
    worker.stop().await;
}

#[tokio::test]
async fn stale_events_are_answered_expired_without_calling_taptalk() {
    let h = Harness::new(Knobs::default()).await;
    let worker = h.worker();
    let mut stale = login_event("cust-late");
    stale["occurredAt"] = json!((Utc::now() - TimeDelta::hours(2)).to_rfc3339());
    let fresh = login_event("cust-on-time");
    h.broker
        .publish_events(&[stale.clone(), fresh.clone()])
        .await;

    let failed = h.tap.wait_for("ticket.failed", 1, WAIT).await;
    assert_eq!(failed[0].body["eventID"], stale["eventID"]);
    assert_eq!(failed[0].body["reason"], "expired");
    assert_eq!(failed[0].body["xcUserID"], "cust-late");
    let ready = h.tap.wait_for("ticket.ready", 1, WAIT).await;
    assert_eq!(ready[0].body["eventID"], fresh["eventID"]);
    assert_eq!(
        h.taptalk.stats().issued,
        1,
        "only the fresh event reached TapTalk"
    );
    assert!(
        h.broker.drain_dead_letters().await.is_empty(),
        "expired events are not dead-lettered"
    );
    assert_eq!(
        h.broker.ready_count(&h.broker.topology.work_queue).await,
        0,
        "and they are acked"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_repeated_event_gets_no_second_ticket_and_its_ready_event_again() {
    let h = Harness::new(Knobs::default()).await;
    let worker = h.worker();
    let event = login_event("cust-twice");
    h.broker.publish_event(&event).await;
    let first = h.tap.wait_for("ticket.ready", 1, WAIT).await;

    // The same event again, and a copy keyed only by its AMQP message_id.
    h.broker.publish_event(&event).await;
    let mut keyed_by_message_id = event.clone();
    keyed_by_message_id
        .as_object_mut()
        .map(|o| o.remove("eventID"));
    let properties =
        json_properties().with_message_id(event["eventID"].as_str().unwrap_or_default().into());
    h.broker
        .publish_raw(keyed_by_message_id.to_string().as_bytes(), properties)
        .await;

    let ready = h.tap.wait_for("ticket.ready", 3, WAIT).await;
    assert!(
        ready.iter().all(|r| r.body == first[0].body),
        "the same ready event, republished"
    );
    assert_eq!(h.taptalk.stats().issued, 1, "no second upstream call");
    assert_eq!(h.db.count().await, 1);
    assert_eq!(worker.stats().already_issued, 2);

    // Ten copies at once (as from two replicas, or a duplicate publish): one row.
    let burst = login_event("cust-burst");
    h.broker.publish_events(&vec![burst.clone(); 10]).await;
    let ready = h.tap.wait_for("ticket.ready", 13, WAIT).await;
    let burst_ready: Vec<_> = ready
        .iter()
        .filter(|r| r.body["eventID"] == burst["eventID"])
        .collect();
    assert_eq!(burst_ready.len(), 10);
    assert!(
        burst_ready.iter().all(|r| r.body == burst_ready[0].body),
        "every copy announces the stored ticket"
    );
    assert_eq!(h.db.count().await, 2);
    worker.stop().await;
}

#[tokio::test]
async fn a_wrong_server_key_pauses_intake_until_taptalk_accepts_it_again() {
    let h = Harness::new(Knobs::default()).await;
    let worker = h.worker();
    eventually(WAIT, "the worker is consuming", || async {
        (worker.stats().sessions == 1).then_some(())
    })
    .await;

    h.taptalk.set_knobs(Knobs {
        wrong_key: true,
        ..Knobs::default()
    });
    let events: Vec<Value> = (0..10).map(|i| login_event(&format!("cust-{i}"))).collect();
    h.broker.publish_events(&events).await;
    eventually(WAIT, "paused with every event queued", || async {
        let queued = h.broker.ready_count(&h.broker.topology.work_queue).await;
        (worker.stats().pauses == 1 && queued == 10).then_some(())
    })
    .await;
    let rejected = h.taptalk.stats().key_rejections;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Probe pauses start at 50-150 ms and double, so one second holds at most
    // four or five probes; ten queued events would make at least ten requests.
    assert!(
        h.taptalk.stats().key_rejections - rejected <= 5,
        "only probes reach TapTalk while paused"
    );
    assert!(h.tap.all().is_empty());
    assert!(h.broker.drain_dead_letters().await.is_empty());

    h.taptalk.set_knobs(Knobs::default());
    h.tap.wait_for("ticket.ready", 10, WAIT).await;
    assert_eq!(h.db.count().await, 10);
    worker.stop().await;
}

#[tokio::test]
async fn the_worker_purges_long_expired_tickets() {
    let h = Harness::new(Knobs::default()).await;
    ticket_worker::storage::MIGRATOR
        .run(&h.db.pool)
        .await
        .expect("migrate");
    let store = TicketStore::from_pool(h.db.pool.clone());
    let (old, _) = store_ticket(&store, "old-event", Utc::now() - TimeDelta::days(3)).await;

    let mut settings = h.settings();
    settings.purge = Some(ticket_worker::purge::PurgeSettings {
        after: Duration::from_secs(24 * 3600),
        every: Duration::from_millis(100),
    });
    let worker = TestWorker::spawn(settings);
    h.broker.publish_event(&login_event("cust-new")).await;
    h.tap.wait_for("ticket.ready", 1, WAIT).await;
    eventually(WAIT, "the old row purged", || async {
        (store.find(&old.event_id).await.ok()?.is_none()).then_some(())
    })
    .await;
    assert_eq!(h.db.count().await, 1, "the fresh ticket stays");
    worker.stop().await;
}

#[tokio::test]
async fn a_redelivered_event_that_has_a_ticket_is_announced_even_when_it_is_old_by_now() {
    let h = Harness::new(Knobs::default()).await;
    let mut settings = h.settings();
    settings.max_event_age = Some(Duration::from_secs(4));
    let worker = TestWorker::spawn(settings);
    eventually(WAIT, "the worker is consuming", || async {
        (worker.stats().sessions == 1).then_some(())
    })
    .await;
    let event = login_event("cust-slow-ack");
    h.broker.publish_event(&event).await;
    h.tap.wait_for("ticket.ready", 1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    h.broker.publish_event(&event).await;
    let ready = h.tap.wait_for("ticket.ready", 2, WAIT).await;
    assert_eq!(ready[0].body, ready[1].body);
    assert!(
        h.tap.failed().is_empty(),
        "not answered expired after it was answered ready"
    );
    worker.stop().await;
}

#[tokio::test]
async fn an_event_that_keeps_failing_alone_is_given_up_after_max_requeues() {
    let h = Harness::new(Knobs::default()).await;
    let mut settings = h.settings();
    settings.taptalk.retry.give_up_after = Some(Duration::from_millis(200));
    settings.breaker.trip_after = Duration::from_secs(3600);
    settings.max_requeues = Some(2);
    let worker = TestWorker::spawn(settings);
    eventually(WAIT, "the worker is consuming", || async {
        (worker.stats().sessions == 1).then_some(())
    })
    .await;

    h.taptalk.set_knobs(Knobs::down());
    let event = login_event("cust-unlucky");
    h.broker.publish_event(&event).await;
    let failed = h.tap.wait_for("ticket.failed", 1, WAIT).await;
    assert_eq!(failed[0].body["eventID"], event["eventID"]);
    assert_eq!(failed[0].body["reason"], "retries_exhausted");
    let dead = h.broker.wait_for_dead_letters(1, WAIT).await;
    assert_eq!(
        header(&dead[0], "x-ticket-worker-reason").as_deref(),
        Some("retries_exhausted")
    );
    // The dead letter says where the event was first published, not where the
    // worker's own copies went, and how often it went back.
    assert_eq!(dead[0].routing_key.as_str(), "login");
    assert_eq!(
        header(&dead[0], "x-original-exchange"),
        Some(h.broker.topology.login_exchange.clone())
    );
    assert_eq!(
        header(&dead[0], "x-ticket-worker-retries").as_deref(),
        Some("LongLongInt(2)")
    );
    assert_eq!(
        worker.stats().retry_later,
        2,
        "two rounds back to the queue, then given up"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_missing_table_pauses_intake_and_loses_nothing() {
    let h = Harness::new(Knobs::default()).await;
    let worker = h.worker();
    eventually(WAIT, "the worker is consuming", || async {
        (worker.stats().sessions == 1).then_some(())
    })
    .await;

    // As if a DBA dropped or renamed the table: a configuration error, not an outage.
    sqlx::query("ALTER TABLE auth_tickets RENAME TO auth_tickets_elsewhere")
        .execute(&h.db.pool)
        .await
        .expect("rename");
    let events: Vec<Value> = (0..10).map(|i| login_event(&format!("cust-{i}"))).collect();
    h.broker.publish_events(&events).await;
    eventually(WAIT, "paused with every event queued", || async {
        let queued = h.broker.ready_count(&h.broker.topology.work_queue).await;
        (worker.stats().pauses == 1 && queued == 10).then_some(())
    })
    .await;
    assert!(h.tap.all().is_empty());
    assert!(h.broker.drain_dead_letters().await.is_empty());
    assert_eq!(
        worker.stats().requeued,
        0,
        "the delivery limit is not spent on a configuration error"
    );

    sqlx::query("ALTER TABLE auth_tickets_elsewhere RENAME TO auth_tickets")
        .execute(&h.db.pool)
        .await
        .expect("rename back");
    h.tap.wait_for("ticket.ready", 10, WAIT).await;
    assert_eq!(h.db.count().await, 10);
    worker.stop().await;
}

#[tokio::test]
async fn copies_of_one_event_never_end_both_ready_and_failed() {
    // Copy A is slow at TapTalk; copy B arrives once the event is too old and
    // is answered expired. A's ticket must then not be stored or announced.
    let h = Harness::new(Knobs {
        latency: Duration::from_secs(3),
        ..Knobs::default()
    })
    .await;
    let mut settings = h.settings();
    settings.max_event_age = Some(Duration::from_secs(2));
    settings.taptalk.timeout = Duration::from_secs(10);
    let worker = TestWorker::spawn(settings);
    eventually(WAIT, "the worker is consuming", || async {
        (worker.stats().sessions == 1).then_some(())
    })
    .await;

    let event = login_event("cust-twice");
    h.broker.publish_event(&event).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    h.broker.publish_event(&event).await;
    let failed = h.tap.wait_for("ticket.failed", 2, WAIT).await;
    assert!(
        failed
            .iter()
            .all(|f| f.body["reason"] == "expired" && f.body["eventID"] == event["eventID"])
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        h.tap.ready().is_empty(),
        "no ticket.ready beside ticket.failed"
    );
    assert_eq!(h.db.count().await, 0, "the late ticket was not kept");
    assert_eq!(
        h.taptalk.stats().issued,
        1,
        "copy A did get a ticket upstream"
    );
    worker.stop().await;
}

#[tokio::test]
async fn outcomes_stored_but_never_announced_are_announced_from_the_outbox() {
    let h = Harness::new(Knobs::default()).await;
    ticket_worker::storage::MIGRATOR
        .run(&h.db.pool)
        .await
        .expect("migrate");
    // A worker stored these outcomes and died before announcing them (or
    // RabbitMQ dead-lettered their login events afterwards): the rows and
    // their announcements are in Postgres, nothing is on the bus.
    let store = TicketStore::from_pool(h.db.pool.clone());
    let (_, ready) = store_ticket(
        &store,
        "stranded-ticket",
        Utc::now() - TimeDelta::minutes(2),
    )
    .await;
    let failure = ticket_worker::storage::StoredFailure {
        reason: ticket_worker::events::FailureReason::Expired,
        message: "too late".into(),
        field: None,
        about: None,
    };
    let failed_id = EventId::parse("stranded-failure").expect("id");
    let failed = serde_json::to_string(&ticket_worker::events::TicketFailed::new(
        &failed_id,
        failure.reason,
        failure.message.clone(),
        None,
    ))
    .expect("encode");
    store
        .record_failure(&failed_id, &failure, &failed, &body_digest(b"{}"))
        .await
        .expect("record");
    assert_eq!(store.pending_announcements().await.expect("count"), 2);

    let worker = h.worker();
    // Live traffic goes the usual way and leaves nothing in the outbox.
    h.broker.publish_events(&[login_event("cust-live")]).await;
    let announced = h.tap.wait_for("ticket.ready", 2, WAIT).await;
    let relayed = announced
        .iter()
        .find(|e| e.body["eventID"] == "stranded-ticket")
        .expect("the stranded ticket is announced");
    assert_eq!(relayed.raw, ready, "exactly the stored ticket.ready");
    assert_eq!(relayed.correlation_id.as_deref(), Some("stranded-ticket"));
    let failures = h.tap.wait_for("ticket.failed", 1, WAIT).await;
    assert_eq!(failures[0].raw, failed, "exactly the stored ticket.failed");
    eventually(WAIT, "the outbox to empty", || async {
        (store.pending_announcements().await.ok()? == 0).then_some(())
    })
    .await;
    // Announced once: the relay does not publish again what was confirmed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(h.tap.ready().len(), 2);
    assert_eq!(h.tap.failed().len(), 1);
    worker.stop().await;
}

/// `event`'s JSON text with one more member written first, so the body repeats
/// a key when the member's key is already there.
fn with_first_member(event: &Value, member: &str) -> Vec<u8> {
    let text = event.to_string();
    format!("{{{member},{}", text.trim_start_matches('{')).into_bytes()
}

#[tokio::test]
async fn repeated_keys_and_logins_from_the_future_are_refused_before_taptalk() {
    let h = Harness::new(Knobs::default()).await;
    let worker = h.worker();

    // Valid ones, one of them a little ahead of our clock (within MAX_CLOCK_SKEW).
    let mut valid: Vec<Value> = (0..3)
        .map(|i| login_event(&format!("cust-ok-{i}")))
        .collect();
    valid[0]["occurredAt"] = json!((Utc::now() + TimeDelta::seconds(20)).to_rfc3339());

    let twin_ids = login_event("cust-twin-ids");
    let twin_ids_unnamed = login_event("cust-twin-ids-unnamed");
    let twin_users = login_event("cust-twin-user");
    let mut future = login_event("cust-future");
    future["occurredAt"] = json!("9999-01-01T00:00:00Z");
    let id_of = |event: &Value| event["eventID"].as_str().unwrap_or_default().to_owned();

    struct Case {
        name: &'static str,
        body: Vec<u8>,
        message_id: Option<String>,
        problem: &'static str,
        field: &'static str,
        /// The id `ticket.failed` must carry; `None`: no ticket.failed at all.
        failed_id: Option<String>,
        /// The xcUserID `ticket.failed` echoes (`null` when it is the repeated key).
        xc_user_id: Value,
    }
    let cases = [
        // Two eventIDs: neither is taken, the message_id identifies the event.
        Case {
            name: "twin-event-ids",
            body: with_first_member(&twin_ids, r#""eventID":"evt-the-other-one""#),
            message_id: Some("m-twin-ids".into()),
            problem: "duplicate_key",
            field: "eventID",
            failed_id: Some("m-twin-ids".into()),
            xc_user_id: json!("cust-twin-ids"),
        },
        // The same, spelled with an escape and without a message_id: no id at all.
        Case {
            name: "twin-event-ids-no-message-id",
            body: with_first_member(&twin_ids_unnamed, r#""event\u0049D":"evt-escaped""#),
            message_id: None,
            problem: "duplicate_key",
            field: "eventID",
            failed_id: None,
            xc_user_id: Value::Null,
        },
        Case {
            name: "twin-xc-user-ids",
            body: with_first_member(&twin_users, r#""xcUserID":"cust-someone-else""#),
            message_id: Some(id_of(&twin_users)),
            problem: "duplicate_key",
            field: "xcUserID",
            failed_id: Some(id_of(&twin_users)),
            xc_user_id: Value::Null,
        },
        Case {
            name: "year-9999",
            body: future.to_string().into_bytes(),
            message_id: Some(id_of(&future)),
            problem: "invalid_occurred_at",
            field: "occurredAt",
            failed_id: Some(id_of(&future)),
            xc_user_id: json!("cust-future"),
        },
    ];
    for case in &cases {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-test-case".into(),
            AMQPValue::LongString(case.name.into()),
        );
        let mut properties = json_properties().with_headers(headers);
        if let Some(id) = &case.message_id {
            properties = properties.with_message_id(id.as_str().into());
        }
        h.broker.publish_raw(&case.body, properties).await;
    }
    h.broker.publish_events(&valid).await;

    let total = (cases.len() + valid.len()) as u64;
    eventually(WAIT, "every message handled", || async {
        let stats = worker.stats();
        (stats.issued + stats.dead_lettered >= total).then_some(())
    })
    .await;
    // Dead letters are confirmed before the delivery is acked and counted.
    let dead = h.broker.drain_dead_letters().await;
    let letter_of = |case: &Case| {
        dead.iter()
            .find(|d| header(d, "x-test-case").as_deref() == Some(case.name))
    };
    let missing: Vec<&str> = cases
        .iter()
        .filter(|c| letter_of(c).is_none())
        .map(|c| c.name)
        .collect();
    assert!(missing.is_empty(), "not dead-lettered: {missing:?}");
    for case in &cases {
        let Some(letter) = letter_of(case) else {
            continue;
        };
        assert_eq!(letter.data, case.body, "{}: the body is kept", case.name);
        assert_eq!(
            header(letter, "x-ticket-worker-reason").as_deref(),
            Some("invalid"),
            "{}",
            case.name
        );
        assert_eq!(
            header(letter, "x-ticket-worker-problem").as_deref(),
            Some(case.problem),
            "{}",
            case.name
        );
        assert_eq!(
            header(letter, "x-ticket-worker-field").as_deref(),
            Some(case.field),
            "{}",
            case.name
        );
    }
    assert_eq!(
        dead.len(),
        cases.len(),
        "only the bad ones are dead-lettered"
    );

    let expected_failed: Vec<&Case> = cases.iter().filter(|c| c.failed_id.is_some()).collect();
    let failed = h
        .tap
        .wait_for("ticket.failed", expected_failed.len(), WAIT)
        .await;
    for case in expected_failed {
        let id = case.failed_id.as_deref();
        let event = failed.iter().find(|f| f.body["eventID"].as_str() == id);
        let Some(event) = event else {
            panic!("{}: ticket.failed for {id:?}", case.name);
        };
        assert_eq!(event.body["reason"], "invalid", "{}", case.name);
        assert_eq!(event.body["field"], case.field, "{}", case.name);
        assert_eq!(event.correlation_id.as_deref(), id, "{}", case.name);
        assert_eq!(event.body["xcUserID"], case.xc_user_id, "{}", case.name);
    }
    assert_eq!(
        failed.len(),
        3,
        "no ticket.failed for the one without a usable id: {failed:?}"
    );

    // The valid ones got their tickets; TapTalk never saw a bad one.
    let ready = h.tap.wait_for("ticket.ready", valid.len(), WAIT).await;
    let ready_ids: HashSet<String> = ready.iter().map(|r| id_of(&r.body)).collect();
    assert_eq!(ready_ids, valid.iter().map(id_of).collect::<HashSet<_>>());
    let upstream_users: HashSet<String> = h
        .taptalk
        .issued()
        .iter()
        .filter_map(|i| i.body.get("xcUserID").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    let valid_users: HashSet<String> = valid
        .iter()
        .filter_map(|e| e["xcUserID"].as_str())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        upstream_users, valid_users,
        "only valid events reach TapTalk"
    );
    assert_eq!(
        h.taptalk.stats().requests,
        1 + valid.len() as u64,
        "the start-up probe and one request per valid event"
    );
    assert_eq!(h.db.count().await, valid.len() as i64);
    assert_eq!(h.broker.ready_count(&h.broker.topology.work_queue).await, 0);
    worker.stop().await;
}
