//! Faults of the servers themselves: RabbitMQ and Postgres restarted while a
//! worker has events in flight, a RabbitMQ memory alarm during a burst, and
//! the broker's message size limit.
//!
//! Each test runs its own RabbitMQ node and, where it needs one, its own
//! Postgres ([`crate::support::private`]), on ports and in data directories of
//! their own, removed when the test ends (also when it fails): the machine's
//! own RabbitMQ and Postgres are never stopped or reconfigured, and these
//! tests run beside every other.

use crate::support::private::{PrivatePostgres, PrivateRabbit};
use crate::support::*;
use fake_taptalk::Knobs;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[tokio::test]
async fn rabbitmq_and_postgres_restarts_are_survived() {
    let rabbit = PrivateRabbit::start(1, "");
    let postgres = PrivatePostgres::start();
    // Slow enough that both restarts land while events are in flight:
    // 8 at a time, about 0.5 s each, 200 events: about 12 s of work.
    let h = Harness::on(
        &rabbit.amqp_url(0),
        &postgres.primary.url("postgres"),
        Knobs {
            latency: Duration::from_millis(400),
            latency_jitter: Duration::from_millis(200),
            ..Knobs::default()
        },
    )
    .await;
    // The harness's own tap dies with the broker: keep ticket events in a
    // durable queue instead, read after the restarts.
    let tap_queue = h.broker.durable_tap_queue().await;
    ticket_worker::storage::MIGRATOR
        .run(&h.db.pool)
        .await
        .expect("migrate");
    let mut env = worker_env(
        &h.db.url,
        &h.broker,
        &h.taptalk.base_url(),
        &format!("restart-{}", unique()),
    );
    env.push(("CONCURRENCY", "8".into()));
    let worker = WorkerProcess::spawn(&env);
    let first: Vec<Value> = (0..200)
        .map(|i| login_event(&format!("cust-{}", i % 50)))
        .collect();
    h.broker.publish_events(&first).await;

    eventually(Duration::from_secs(30), "work under way", || async {
        (h.db.count().await >= 10).then_some(())
    })
    .await;
    let before_broker = h.db.count().await;
    assert!(
        before_broker < 150,
        "the broker restart lands mid-flight ({before_broker} done)"
    );
    assert!(rabbit.ctl(0, &["stop_app"]), "stop RabbitMQ");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(rabbit.ctl(0, &["start_app"]), "start RabbitMQ");
    eventually(Duration::from_secs(60), "work resumed", || async {
        (h.db.count().await >= before_broker + 10).then_some(())
    })
    .await;
    let before_postgres = h.db.count().await;
    assert!(
        before_postgres < 200,
        "the Postgres restart lands mid-flight ({before_postgres} done)"
    );
    postgres.restart_primary();

    // A second batch, published on a new connection after both restarts.
    let connection = Connection::connect(&rabbit.amqp_url(0), ConnectionProperties::default())
        .await
        .expect("reconnect");
    let channel = connection.create_channel().await.expect("channel");
    let second: Vec<Value> = (0..20).map(|i| login_event(&format!("late-{i}"))).collect();
    for event in &second {
        channel
            .basic_publish(
                h.broker.topology.login_exchange.as_str().into(),
                "login".into(),
                Default::default(),
                event.to_string().as_bytes(),
                json_properties(),
            )
            .await
            .expect("publish");
    }
    let ids: HashSet<String> = first
        .iter()
        .chain(&second)
        .filter_map(|e| e["eventID"].as_str().map(str::to_owned))
        .collect();

    // Every event gets its row, once, and its ticket.ready.
    eventually(Duration::from_secs(120), "every event stored", || async {
        (h.db.count().await == ids.len() as i64).then_some(())
    })
    .await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT event_id FROM auth_tickets")
        .fetch_all(&h.db.pool)
        .await
        .expect("rows");
    assert_eq!(stored.into_iter().collect::<HashSet<_>>(), ids);
    let mut announced = HashSet::new();
    let started = Instant::now();
    while announced != ids && started.elapsed() < Duration::from_secs(60) {
        match channel
            .basic_get(tap_queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            Some(message) => {
                let body: Value =
                    serde_json::from_slice(&message.delivery.data).unwrap_or(Value::Null);
                if let Some(id) = body["eventID"].as_str() {
                    announced.insert(id.to_owned());
                }
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(announced, ids, "every event announced ticket.ready");
    let queued = channel
        .queue_declare(
            h.broker.topology.work_queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("work queue")
        .message_count();
    assert_eq!(queued, 0);
    let sessions = worker.logs().matches("connected to RabbitMQ").count();
    assert!(
        sessions >= 2,
        "the worker reconnected ({sessions} sessions)"
    );
    println!(
        "scenario restarts (a private RabbitMQ node and Postgres): sent {} events; faults: RabbitMQ stop_app/start_app after {before_broker} were stored, \
         a Postgres restart after {before_postgres}, 20 more published after both; outcome: {} rows, {} announced, {sessions} broker sessions",
        ids.len(),
        ids.len(),
        announced.len()
    );
}

/// The RabbitMQ configuration the project ships.
fn shipped_config() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/rabbitmq/ticket-worker.conf"
    );
    std::fs::read_to_string(path).expect("the shipped RabbitMQ configuration")
}

/// The `max_message_size` the project ships for RabbitMQ.
fn shipped_max_message_size() -> u64 {
    shipped_config()
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == "max_message_size")
        .and_then(|(_, value)| value.trim().parse().ok())
        .expect("the shipped configuration sets max_message_size")
}

#[tokio::test]
async fn the_shipped_broker_limit_refuses_bodies_that_would_swell_a_worker() {
    let limit = shipped_max_message_size();
    let max_event = ticket_worker::events::DEFAULT_MAX_EVENT_BYTES as u64;
    assert!(
        (max_event..=4 * max_event).contains(&limit),
        "the shipped limit ({limit}) lets every acceptable event through and bounds the rest"
    );
    // A node of this test's own, with the shipped configuration as is.
    let rabbit = PrivateRabbit::start(1, &shipped_config());
    let h = Harness::on(&rabbit.amqp_url(0), &admin_database_url(), Knobs::default()).await;
    let worker = h.worker();

    // 10 MiB bodies, as an attacker would send 40 of them: refused at publish.
    let connection = Connection::connect(&rabbit.amqp_url(0), ConnectionProperties::default())
        .await
        .expect("connect");
    let mut refused = 0;
    for _ in 0..5 {
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(Default::default())
            .await
            .expect("confirm mode");
        let body = vec![b' '; 10 * 1024 * 1024];
        let published = async {
            channel
                .basic_publish(
                    h.broker.topology.login_exchange.as_str().into(),
                    "login".into(),
                    Default::default(),
                    &body,
                    json_properties(),
                )
                .await?
                .await
        }
        .await;
        refused += usize::from(published.is_err() || !channel.status().connected());
    }
    assert_eq!(refused, 5, "RabbitMQ refuses every 10 MiB body");
    let _ = connection.close(200, "done".into()).await;

    // A body a little over MAX_EVENT_BYTES still reaches the worker, which
    // answers it; ordinary events flow.
    let mut too_large = login_event("cust-big");
    too_large["padding"] = Value::String("p".repeat(max_event as usize));
    h.broker.publish_event(&too_large).await;
    let valid: Vec<Value> = (0..20).map(|i| login_event(&format!("cust-{i}"))).collect();
    h.broker.publish_events(&valid).await;
    h.tap
        .wait_for("ticket.ready", 20, Duration::from_secs(60))
        .await;
    let failed = h
        .tap
        .wait_for("ticket.failed", 1, Duration::from_secs(60))
        .await;
    assert_eq!(failed[0].body["eventID"], too_large["eventID"]);
    let dead = h
        .broker
        .wait_for_dead_letters(1, Duration::from_secs(60))
        .await;
    assert_eq!(
        header(&dead[0], "x-ticket-worker-problem").as_deref(),
        Some("too_large")
    );
    worker.stop().await;
    println!(
        "scenario message-size: a private RabbitMQ node with the shipped configuration (max_message_size {limit} bytes); outcome: 5 of 5 bodies of 10 MiB refused at publish, a {} KiB event dead-lettered too_large, 20 tickets",
        too_large.to_string().len() / 1024
    );
}

/// The state (`running`, `blocking`, `blocked`, …) of the connection whose
/// client-provided name is `name`, on node 0 of `rabbit`.
fn connection_state(rabbit: &PrivateRabbit, name: &str) -> Option<String> {
    let listing = rabbit.ctl_output(
        0,
        &[
            "--no-table-headers",
            "list_connections",
            "state",
            "client_properties",
        ],
    )?;
    let quoted = format!("\"{name}\"");
    listing
        .lines()
        .find(|line| line.contains(&quoted))
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_owned)
}

#[tokio::test]
async fn a_memory_alarm_during_a_burst_blocks_publishing_only_and_loses_nothing() {
    let rabbit = PrivateRabbit::start(1, "");
    // 8 at a time, 200 ms each: 400 events take about 10 s.
    let h = Harness::on(
        &rabbit.amqp_url(0),
        &admin_database_url(),
        Knobs {
            latency: Duration::from_millis(200),
            ..Knobs::default()
        },
    )
    .await;
    let name = format!("alarm-{}", unique());
    let mut env = worker_env(&h.db.url, &h.broker, &h.taptalk.base_url(), &name);
    env.push(("CONCURRENCY", "8".into()));
    let worker = WorkerProcess::spawn(&env);
    // Published before the alarm: it blocks this test's publisher too.
    let events: Vec<Value> = (0..400)
        .map(|i| login_event(&format!("alarm-{i}")))
        .collect();
    h.broker.publish_events(&events).await;
    let ids: HashSet<String> = events
        .iter()
        .filter_map(|e| e["eventID"].as_str().map(str::to_owned))
        .collect();
    eventually(Duration::from_secs(30), "work under way", || async {
        (h.tap.ready().len() >= 20).then_some(())
    })
    .await;

    assert!(
        rabbit.ctl(0, &["set_vm_memory_high_watermark", "0"]),
        "raise the memory alarm"
    );
    // Publishing stops: the worker's publishing connection is blocked, its
    // consuming one is not (it only acknowledges), so RabbitMQ keeps the
    // deliveries it has and nothing piles up on the consuming side.
    let publish = format!("{name} publish");
    let consume = format!("{name} consume");
    let publishing = eventually(
        Duration::from_secs(20),
        "RabbitMQ blocks the worker's publishing connection",
        || async { connection_state(&rabbit, &publish).filter(|state| state == "blocked") },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = h.tap.ready().len();
    // `blocking`: it would be blocked if it published, and it does not.
    let consuming = connection_state(&rabbit, &consume);
    assert!(
        matches!(consuming.as_deref(), Some("running" | "blocking")),
        "the consuming connection is never blocked (publishing: {publishing}, consuming: {consuming:?})"
    );
    assert!(
        during < ids.len(),
        "the alarm lands mid-burst ({during} of {} announced)",
        ids.len()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.tap.ready().len(),
        during,
        "nothing is announced while publishing is blocked"
    );
    assert!(
        rabbit.ctl(0, &["set_vm_memory_high_watermark", "0.4"]),
        "clear the memory alarm"
    );

    let ready = h
        .tap
        .wait_for("ticket.ready", ids.len(), Duration::from_secs(90))
        .await;
    let announced: HashSet<String> = ready
        .iter()
        .filter_map(|e| e.body["eventID"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(announced, ids, "every event announced");
    eventually(
        Duration::from_secs(30),
        "every event stored once",
        || async { (h.db.count().await == ids.len() as i64).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the work queue drained",
        || async { (h.broker.ready_count(&h.broker.topology.work_queue).await == 0).then_some(()) },
    )
    .await;
    assert!(
        h.broker.all_dead_letters().await.is_empty(),
        "nothing dead-lettered"
    );
    let logs = worker.logs();
    assert!(
        logs.contains("RabbitMQ blocks publishing"),
        "the block is logged:\n{logs}"
    );
    println!(
        "scenario memory-alarm (a private RabbitMQ node): 400 events; faults: memory watermark 0 for ~5 s after {during} were announced; \
         outcome: {} rows, {} announced, 0 dead letters",
        h.db.count().await,
        announced.len()
    );
}
