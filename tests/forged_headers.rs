//! What a publisher writes into a message's properties cannot steer the
//! worker: a retry count it sets is not believed, and a `user_id` it sets
//! (RabbitMQ checks it against the publisher's own login) does not break the
//! copies the worker publishes under its own login.

mod support;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use secrecy::SecretString;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use support::*;
use ticket_worker::fake_taptalk::Knobs;

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
