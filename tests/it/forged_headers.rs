//! What a publisher writes into a message's properties cannot steer the
//! worker: a retry count it sets is not believed, and a `user_id` it sets
//! (RabbitMQ checks it against the publisher's own login) does not break the
//! copies the worker publishes under its own login.

use crate::support::*;
use fake_taptalk::Knobs;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use secrecy::SecretString;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn with_retries(count: i64) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-ticket-worker-retries".into(),
        AMQPValue::LongLongInt(count),
    );
    headers
}

#[tokio::test]
async fn headers_and_user_ids_set_by_a_publisher_do_not_steer_the_worker() {
    let h = Harness::new(Knobs::default()).await;
    // The worker logs in as its own RabbitMQ user; the publisher is `guest`.
    let user = RabbitUser::create();
    let mut settings = h.settings();
    settings.broker.amqp_url =
        SecretString::from(user.url(&user.password, "127.0.0.1:5672", "amqp"));
    settings.max_requeues = Some(10);
    settings.taptalk.retry.give_up_after = Some(Duration::from_millis(300));
    settings.breaker.trip_after = Duration::from_secs(60);
    let worker = TestWorker::spawn(settings);
    // Once it has checked TapTalk at start, TapTalk goes down (503s).
    eventually(WAIT, "the worker's start-up probe", || async {
        (h.taptalk.stats().requests >= 1).then_some(())
    })
    .await;
    h.taptalk.set_knobs(Knobs::down());

    // A: says it was put back 1000 times already, through the login exchange.
    let forged = login_event("cust-forged");
    h.broker
        .publish_raw(
            forged.to_string().as_bytes(),
            json_properties().with_headers(with_retries(1000)),
        )
        .await;
    // B: the same, published straight to the work queue as the worker's own
    // copies are (the default exchange), but without the worker's user_id.
    let direct = login_event("cust-direct");
    h.broker
        .channel
        .basic_publish(
            "".into(),
            h.broker.topology.work_queue.as_str().into(),
            BasicPublishOptions::default(),
            direct.to_string().as_bytes(),
            json_properties().with_headers(with_retries(1000)),
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");
    // C: a valid event and D: an invalid one, each with the publisher's own
    // (RabbitMQ-validated) user_id; the worker must copy both (back to the
    // queue, to the dead letters) under its own login.
    let own_user_id = login_event("cust-user-id");
    h.broker
        .publish_raw(
            own_user_id.to_string().as_bytes(),
            json_properties().with_user_id("guest".into()),
        )
        .await;
    // D also carries headers that only the worker may write.
    let mut invalid = login_event("cust-invalid");
    invalid["userPlatform"] = json!("windows");
    let mut forged_headers = with_retries(7);
    for (name, value) in [
        ("x-ticket-worker-reason", "forged"),
        ("x-original-user-id", "admin"),
        ("x-original-exchange", "somewhere-else"),
    ] {
        forged_headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    h.broker
        .publish_raw(
            invalid.to_string().as_bytes(),
            json_properties()
                .with_user_id("guest".into())
                .with_headers(forged_headers),
        )
        .await;
    // E: a publisher cannot borrow the worker's user_id: RabbitMQ refuses it.
    let channel = h.broker.connection.create_channel().await.expect("channel");
    channel
        .confirm_select(Default::default())
        .await
        .expect("confirm mode");
    let refused = async {
        channel
            .basic_publish(
                h.broker.topology.login_exchange.as_str().into(),
                "login".into(),
                BasicPublishOptions::default(),
                login_event("cust-impostor").to_string().as_bytes(),
                json_properties().with_user_id(user.name.as_str().into()),
            )
            .await?
            .await
    }
    .await;
    assert!(
        refused.is_err(),
        "RabbitMQ refuses a user_id that is not the publisher's"
    );

    // Let every valid event fail a few rounds (TapTalk answers 503), then heal.
    eventually(WAIT, "several rounds of retries", || async {
        (h.taptalk.stats().injected_503 >= 20).then_some(())
    })
    .await;
    h.taptalk.set_knobs(Knobs::default());

    let ready = h.tap.wait_for("ticket.ready", 3, WAIT).await;
    let ids: HashSet<&str> = ready
        .iter()
        .filter_map(|e| e.body["eventID"].as_str())
        .collect();
    for event in [&forged, &direct, &own_user_id] {
        assert!(
            ids.contains(event["eventID"].as_str().unwrap_or_default()),
            "{event}"
        );
    }
    let failed = h.tap.wait_for("ticket.failed", 1, WAIT).await;
    assert_eq!(
        failed.len(),
        1,
        "one ticket.failed, for the invalid event only"
    );
    assert_eq!(failed[0].body["eventID"], invalid["eventID"]);
    let dead = h.broker.wait_for_dead_letters(1, WAIT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0], "x-original-user-id").as_deref(),
        Some("guest")
    );
    assert_eq!(
        header(&dead[0], "x-ticket-worker-reason").as_deref(),
        Some("invalid")
    );
    assert_eq!(
        header(&dead[0], "x-original-exchange"),
        Some(h.broker.topology.login_exchange.clone())
    );
    assert_eq!(header(&dead[0], "x-ticket-worker-retries"), None);
    assert_eq!(
        dead[0].properties.user_id().as_ref().map(|u| u.to_string()),
        Some(user.name.clone()),
        "the dead letter is the worker's own copy"
    );
    let stats = worker.stats();
    assert_eq!(stats.sessions, 1, "no copy cost the worker its connection");
    assert!(
        stats.retry_later >= 3,
        "events went back to the queue: {stats:?}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_user_name_rabbitmq_would_refuse_as_user_id_is_not_used() {
    // The URL's user name is not always the one RabbitMQ authenticated (an
    // OAuth 2 token names its own): the worker asks RabbitMQ before using it.
    let broker = TestBroker::new().await;
    let topology = std::sync::Arc::new(broker.topology.clone());
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .expect("connect");
    let right =
        ticket_worker::broker::Publisher::open(&connection, topology.clone(), Some("guest"))
            .await
            .expect("publisher");
    assert_eq!(right.user_id(), Some("guest"));
    let wrong =
        ticket_worker::broker::Publisher::open(&connection, topology, Some("somebody-else"))
            .await
            .expect("the refusal costs neither the connection nor the publisher");
    assert_eq!(wrong.user_id(), None);
    let failed = ticket_worker::events::TicketFailed::new(
        &ticket_worker::domain::EventId::parse("e-1").expect("id"),
        ticket_worker::events::FailureReason::Expired,
        "late".to_owned(),
        None,
    );
    wrong
        .ticket_failed(&failed, None)
        .await
        .expect("still publishes");
    let _ = connection.close(200, "done".into()).await;
}

// ------------------------------------------------------- unreadable headers

use crate::support::raw_amqp::{RawMessage, RawPublisher, RawValue};

/// Hostile headers of every shape the issue names, from 1,000 levels up to
/// what RabbitMQ's frame_max allows, each on a valid login event.
fn hostile_events(frame_max: usize) -> Vec<(String, RawMessage)> {
    let arrays = |n| ("x-evil", RawValue::nested_arrays(n));
    let tables = |n| ("x-evil", RawValue::nested_tables(n));
    // Room for the other properties, the kept header and what RabbitMQ adds
    // when it dead-letters one (x-death, x-first-death-*: some 500 bytes);
    // it checks none of that against frame_max.
    let other = 2_048;
    let deepest_arrays = RawValue::deepest_fitting(frame_max, "x-evil", other, 5);
    let deepest_tables = RawValue::deepest_fitting(frame_max, "x-evil", other, 7);
    let shapes = vec![
        ("arrays 1,000", arrays(1_000)),
        ("arrays 1,500", arrays(1_500)),
        ("arrays 10,000", arrays(10_000)),
        ("arrays to the frame's end", arrays(deepest_arrays)),
        ("tables 1,000", tables(1_000)),
        ("tables to the frame's end", tables(deepest_tables)),
    ];
    shapes
        .into_iter()
        .map(|(what, (name, value))| {
            let event = login_event("cust-hostile");
            let id = event["eventID"].as_str().unwrap_or_default().to_owned();
            let message = RawMessage {
                content_type: Some("application/json".into()),
                message_id: Some(id),
                expiration: None,
                headers: vec![
                    ("x-kept".into(), RawValue::long_string("kept")),
                    (name.into(), value),
                ],
                body: event.to_string().into_bytes(),
            };
            assert!(message.header_frame_len() <= frame_max, "{what} fits");
            (what.to_owned(), message)
        })
        .collect()
}

#[tokio::test]
async fn headers_nested_as_deep_as_a_frame_allows_end_as_dead_letters_while_valid_events_flow() {
    let h = Harness::new(Knobs::default()).await;
    let mut raw = RawPublisher::from_url(&amqp_url());
    let hostile = hostile_events(raw.frame_max);
    let valid: Vec<_> = (0..30).map(|i| login_event(&format!("cust-{i}"))).collect();
    // Hostile and valid events interleaved, all queued before the worker starts.
    for (i, (_, message)) in hostile.iter().enumerate() {
        raw.publish(&h.broker.topology.login_exchange, "login", message);
        h.broker.publish_events(&valid[i * 5..i * 5 + 5]).await;
    }
    drop(raw);
    let mut worker = WorkerProcess::spawn(&worker_env(
        &h.db.url,
        &h.broker,
        &h.taptalk.base_url(),
        &format!("tw-deep-{}", unique()),
    ));
    let ready = h.tap.wait_for("ticket.ready", valid.len(), WAIT).await;
    let failed = h.tap.wait_for("ticket.failed", hostile.len(), WAIT).await;
    let dead = h.broker.wait_for_dead_letters(hostile.len(), WAIT).await;
    assert_eq!(
        worker.wait(Duration::from_millis(100)).await,
        None,
        "the worker is still running; its log:\n{}",
        worker.logs()
    );
    let ready_ids: HashSet<String> = ready
        .iter()
        .filter_map(|e| e.body["eventID"].as_str().map(str::to_owned))
        .collect();
    for event in &valid {
        assert!(ready_ids.contains(event["eventID"].as_str().unwrap_or_default()));
    }
    assert_eq!(h.db.count().await, valid.len() as i64);
    for event in &failed {
        assert_eq!(event.body["reason"], "invalid");
        let message = event.body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("\"x-evil\"") && message.contains("63"),
            "{message}"
        );
    }
    assert_eq!(dead.len(), hostile.len());
    for letter in &dead {
        assert_eq!(
            header(letter, "x-ticket-worker-reason").as_deref(),
            Some("invalid")
        );
        assert_eq!(
            header(letter, "x-ticket-worker-problem").as_deref(),
            Some("unreadable_headers")
        );
        assert_eq!(
            header(letter, "x-kept").as_deref(),
            Some("kept"),
            "other headers stay"
        );
        let headers = letter.properties.headers().clone().unwrap_or_default();
        assert!(
            !headers.inner().contains_key("x-evil"),
            "the unreadable header is left out"
        );
        assert!(
            header(letter, "x-ticket-worker-unreadable-headers")
                .is_some_and(|note| note.starts_with("1 original headers removed")),
            "the dead letter says what went"
        );
    }
    assert_eq!(h.broker.ready_count(&h.broker.topology.work_queue).await, 0);
    assert_eq!(worker.terminate().await, Some(0));
}

#[tokio::test]
async fn dlq_list_and_replay_read_letters_with_unreadable_headers_and_go_on() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let mut raw = RawPublisher::from_url(&amqp_url());
    let hostile = hostile_events(raw.frame_max);
    // With no consumer, RabbitMQ dead-letters each itself the moment it
    // expires, keeping the publisher's headers: the dead-letter queue holds
    // them as sent. A plain one expires with them.
    let plain = login_event("cust-plain");
    let mut letters: Vec<RawMessage> = hostile.into_iter().map(|(_, m)| m).collect();
    letters.push(RawMessage {
        content_type: Some("application/json".into()),
        message_id: plain["eventID"].as_str().map(str::to_owned),
        expiration: None,
        headers: vec![("x-kept".into(), RawValue::long_string("kept"))],
        body: plain.to_string().into_bytes(),
    });
    for letter in &mut letters {
        letter.expiration = Some("0".into());
        raw.publish(&broker.topology.login_exchange, "login", letter);
    }
    drop(raw);
    let dead_queue = broker.topology.dead_letter_queue.clone();
    eventually(WAIT, "RabbitMQ dead-letters the expired events", || async {
        (broker.ready_count(&dead_queue).await as usize == letters.len()).then_some(())
    })
    .await;
    let t = &broker.topology;
    let env = [
        ("AMQP_URL", amqp_url()),
        ("DATABASE_URL", db.url.clone()),
        ("LOGIN_EXCHANGE", t.login_exchange.clone()),
        ("WORK_QUEUE", t.work_queue.clone()),
        ("DEAD_LETTER_EXCHANGE", t.dead_letter_exchange.clone()),
        ("DEAD_LETTER_QUEUE", t.dead_letter_queue.clone()),
        ("TICKET_EXCHANGE", t.ticket_exchange.clone()),
        ("DELIVERY_LIMIT", t.delivery_limit.to_string()),
    ];
    let run = |args: &[&str]| {
        let output = bin()
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("run ticket-worker");
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (status, stdout, stderr) = run(&["dlq", "list", "--json", "--samples", "10"]);
    assert!(status.success(), "dlq list: {status}\n{stderr}");
    let listing: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(listing["total"], letters.len());
    let samples = listing["reasons"][0]["samples"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(listing["reasons"][0]["reason"], "expired");
    let unreadable = samples
        .iter()
        .filter(|s| {
            s["unreadableHeaders"]
                .as_str()
                .is_some_and(|u| u.contains("x-evil"))
        })
        .count();
    assert_eq!(unreadable, letters.len() - 1, "{stdout}");
    let (status, text, stderr) = run(&["dlq", "list"]);
    assert!(status.success(), "dlq list: {status}\n{stderr}");
    assert!(text.contains("a replay leaves them out"), "{text}");

    let (status, stdout, stderr) = run(&["dlq", "replay", "--all", "--json"]);
    assert!(status.success(), "dlq replay: {status}\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(report["reasons"][0]["replayed"], letters.len(), "{stdout}");
    assert_eq!(broker.ready_count(&dead_queue).await, 0);
    // The replays wait in the work queue, every one readable now.
    let work_queue = broker.topology.work_queue.clone();
    eventually(WAIT, "the replays reach the work queue", || async {
        (broker.ready_count(&work_queue).await as usize == letters.len()).then_some(())
    })
    .await;
    for _ in 0..letters.len() {
        let got = broker
            .channel
            .basic_get(
                work_queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
            .expect("a replay");
        let delivery = got.delivery;
        assert_eq!(header(&delivery, "x-kept").as_deref(), Some("kept"));
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        assert!(!headers.inner().contains_key("x-evil"));
        assert!(!headers.inner().contains_key("x-death"));
    }
}
