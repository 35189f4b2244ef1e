//! Service restarts: RabbitMQ and Postgres are restarted while a worker
//! process has events in flight, and the worker recovers on its own.
//!
//! These restart shared services, so this file holds exactly one test (cargo
//! runs test binaries one after another, so nothing else runs meanwhile), and
//! a guard brings both services back up even when the test fails.

mod support;

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;
use ticket_worker::fake_taptalk::Knobs;

fn postgres_cluster() -> String {
    std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .unwrap_or_else(|| "15".into())
}

fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

fn services_up() -> bool {
    run("pg_isready", &["-h", "127.0.0.1", "-q"])
        && run("rabbitmqctl", &["-q", "await_startup", "--timeout", "5"])
}

/// Brings RabbitMQ and Postgres back up, whatever happened to the test.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let started = Instant::now();
        while !services_up() && started.elapsed() < Duration::from_secs(120) {
            run("rabbitmqctl", &["-q", "start_app"]);
            run(
                "pg_ctlcluster",
                &[
                    "--skip-systemctl-redirect",
                    &postgres_cluster(),
                    "main",
                    "start",
                ],
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

#[tokio::test]
async fn rabbitmq_and_postgres_restarts_are_survived() {
    if std::env::var_os("TEST_SKIP_SERVICE_RESTARTS").is_some() {
        eprintln!("TEST_SKIP_SERVICE_RESTARTS is set: not restarting the shared services");
        return;
    }
    // Slow enough that both restarts land while events are in flight:
    // 8 at a time, about 0.5 s each, 200 events: about 12 s of work.
    let h = Harness::new(Knobs {
        latency: Duration::from_millis(400),
        latency_jitter: Duration::from_millis(200),
        ..Knobs::default()
    })
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

    let _restore = Restore;
    eventually(Duration::from_secs(30), "work under way", || async {
        (h.db.count().await >= 10).then_some(())
    })
    .await;
    let before_broker = h.db.count().await;
    assert!(
        before_broker < 150,
        "the broker restart lands mid-flight ({before_broker} done)"
    );
    assert!(run("rabbitmqctl", &["-q", "stop_app"]), "stop RabbitMQ");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(run("rabbitmqctl", &["-q", "start_app"]), "start RabbitMQ");
    eventually(Duration::from_secs(60), "work resumed", || async {
        (h.db.count().await >= before_broker + 10).then_some(())
    })
    .await;
    let before_postgres = h.db.count().await;
    assert!(
        before_postgres < 200,
        "the Postgres restart lands mid-flight ({before_postgres} done)"
    );
    assert!(
        run(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                &postgres_cluster(),
                "main",
                "restart"
            ]
        ),
        "restart Postgres"
    );

    // A second batch, published on a new connection after both restarts.
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
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
        "scenario restarts: sent {} events; faults: RabbitMQ stop_app/start_app after {before_broker} were stored, \
         a Postgres restart after {before_postgres}, 20 more published after both; outcome: {} rows, {} announced, {sessions} broker sessions",
        ids.len(),
        ids.len(),
        announced.len()
    );
}
