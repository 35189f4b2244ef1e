//! The production topology, on real servers the tests start themselves
//! (`support::private`): PgBouncer in transaction mode in front of Postgres,
//! a RabbitMQ cluster that loses the node leading the work queue, a Postgres
//! primary that dies and a standby promoted in its place, and one TapTalk
//! quota shared by replicas that come and go.

use crate::support::private::PgBouncer;
use crate::support::*;
use fake_taptalk::Knobs;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(120);

fn ids(events: &[Value]) -> HashSet<String> {
    events
        .iter()
        .filter_map(|e| e["eventID"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until every event in `wanted` has a row, and checks there is one
/// row each.
async fn every_event_stored_once(db: &TestDb, wanted: &HashSet<String>, within: Duration) {
    eventually(within, "every event stored", || async {
        (db.count().await as usize >= wanted.len()).then_some(())
    })
    .await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT event_id FROM auth_tickets")
        .fetch_all(&db.pool)
        .await
        .expect("rows");
    assert_eq!(stored.len(), wanted.len(), "one row per event");
    assert_eq!(&stored.into_iter().collect::<HashSet<_>>(), wanted);
}

#[tokio::test]
async fn four_replicas_work_through_pgbouncer_in_transaction_mode() {
    let h = Harness::new(Knobs::default()).await;
    ticket_worker::storage::MIGRATOR
        .run(&h.db.pool)
        .await
        .expect("migrate straight to Postgres");
    // Few server connections for many clients: each is shared, statement
    // after statement, between the replicas.
    let pooler = PgBouncer::start(5432, 3);
    let through = pooler.url(&h.db.name);

    // migrate through it refuses, saying what to do instead.
    let refused = bin()
        .arg("migrate")
        .env("DATABASE_URL", &through)
        .env("DATABASE_POOLER", "transaction")
        .output()
        .expect("run migrate");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("DATABASE_POOLER") && stderr.contains("SKIP_MIGRATIONS=true"),
        "{stderr}"
    );

    let mut replicas = Vec::new();
    for n in 0..4 {
        let mut env = worker_env(
            &through,
            &h.broker,
            &h.taptalk.base_url(),
            &format!("tw-bouncer-{n}-{}", unique()),
        );
        env.extend([
            ("DATABASE_POOLER", "transaction".to_owned()),
            ("SKIP_MIGRATIONS", "true".to_owned()),
            ("DATABASE_MAX_CONNECTIONS", "10".to_owned()),
        ]);
        replicas.push(WorkerProcess::spawn(&env));
    }
    for replica in &replicas {
        replica.consuming().await;
    }
    let events: Vec<Value> = (0..800)
        .map(|i| login_event(&format!("cust-{}", i % 97)))
        .collect();
    h.broker.publish_events(&events).await;
    every_event_stored_once(&h.db, &ids(&events), SETTLE).await;
    let ready: HashSet<String> = h
        .tap
        .wait_for("ticket.ready", events.len(), SETTLE)
        .await
        .iter()
        .filter_map(|r| r.body["eventID"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ready, ids(&events));
    assert!(
        h.broker.all_dead_letters().await.is_empty(),
        "nothing dead-lettered"
    );
    for mut replica in replicas {
        let logs = replica.logs();
        for symptom in ["prepared statement", "42P05", "26000", "08P01"] {
            assert!(
                !logs.contains(symptom),
                "{symptom} in a replica's log:\n{logs}"
            );
        }
        assert_eq!(replica.terminate().await, Some(0), "{logs}");
    }
    assert!(
        !pooler.log().contains("prepared statement"),
        "{}",
        pooler.log()
    );
}

// ------------------------------------------------------- a RabbitMQ cluster

use crate::support::private::{HaProxy, PrivateRabbit};
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use std::collections::HashMap;
use std::time::Instant;

/// A connection to the first node of `rabbit` that answers.
async fn any_node(rabbit: &PrivateRabbit) -> Connection {
    for n in 0..rabbit.nodes.len() {
        if let Ok(connection) =
            Connection::connect(&rabbit.amqp_url(n), ConnectionProperties::default()).await
        {
            return connection;
        }
    }
    panic!("no node of the private cluster answers");
}

/// A quorum queue bound to the ticket exchange: unlike a test's ordinary
/// tap, it survives the loss of any one node.
async fn replicated_tap(connection: &Connection, exchange: &str, name: &str) {
    let channel = connection.create_channel().await.expect("channel");
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .expect("declare the tap");
    channel
        .queue_bind(
            name.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the tap");
}

/// Every ticket event in `queue`, taken: routing key and body.
async fn drain(connection: &Connection, queue: &str) -> Vec<(String, Value)> {
    let channel = connection.create_channel().await.expect("channel");
    let mut taken = Vec::new();
    while let Some(got) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let body = serde_json::from_slice(&got.delivery.data).unwrap_or(Value::Null);
        taken.push((got.delivery.routing_key.to_string(), body));
    }
    taken
}

async fn ready_in(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare")
        .message_count()
}

#[tokio::test]
async fn a_cluster_losing_the_work_queues_leader_mid_burst_loses_nothing() {
    let mut rabbit = PrivateRabbit::start(3, "");
    let db = TestDb::migrated().await;
    // 2 replicas × 8 at a time × 200 ms: 600 events take about 8 s, so the
    // kill lands mid-burst.
    let taptalk = fake_taptalk(Knobs {
        latency: Duration::from_millis(200),
        ..Knobs::default()
    })
    .await;
    let broker = TestBroker::at(&rabbit.amqp_url(0), 20).await;
    let t = broker.topology.clone();
    let tap = format!("{}.replicated-tap", t.work_queue);
    replicated_tap(&broker.connection, &t.ticket_exchange, &tap).await;
    let ports: Vec<u16> = rabbit.nodes.iter().map(|n| n.port).collect();
    let haproxy = HaProxy::start(&ports);
    let mut all_ready: HashMap<String, usize> = HashMap::new();

    for (scenario, amqp_url) in [
        ("the address list", rabbit.amqp_urls()),
        ("HAProxy in front", haproxy.amqp_url()),
    ] {
        let mut replicas = Vec::new();
        for n in 0..2 {
            let mut env = worker_env(
                &db.url,
                &broker,
                &taptalk.base_url(),
                &format!("tw-cluster-{n}-{}", unique()),
            );
            env.retain(|(k, _)| *k != "AMQP_URL");
            env.push(("AMQP_URL", amqp_url.clone()));
            env.push(("SKIP_MIGRATIONS", "true".into()));
            env.push(("CONCURRENCY", "8".into()));
            replicas.push(WorkerProcess::spawn(&env));
        }
        for replica in &replicas {
            replica.consuming().await;
        }
        let events: Vec<Value> = (0..600)
            .map(|i| login_event(&format!("cust-{}", i % 61)))
            .collect();
        let before = db.count().await;
        let publisher = any_node(&rabbit).await;
        let channel = publisher.create_channel().await.expect("channel");
        channel
            .confirm_select(Default::default())
            .await
            .expect("confirms");
        for event in &events {
            channel
                .basic_publish(
                    t.login_exchange.as_str().into(),
                    "login".into(),
                    Default::default(),
                    event.to_string().as_bytes(),
                    json_properties()
                        .with_message_id(event["eventID"].as_str().unwrap_or_default().into()),
                )
                .await
                .expect("publish")
                .await
                .expect("confirmed");
        }
        let _ = publisher.close(200, "published".into()).await;
        let started = Instant::now();
        while db.count().await < before + 60 {
            assert!(
                started.elapsed() < SETTLE,
                "{scenario}: no work under way; a replica's log:\n{}",
                replicas[0].logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let leader = rabbit
            .leader_of(&t.work_queue)
            .expect("the work queue has a leader");
        let stored_at_kill = db.count().await;
        assert!(
            ((stored_at_kill - before) as usize) < events.len(),
            "{scenario}: the kill lands mid-burst"
        );
        rabbit.kill(leader);
        let killed_at = Instant::now();
        eventually(SETTLE, "a ticket after the kill", || async {
            (db.count().await > stored_at_kill).then_some(())
        })
        .await;
        let stall = killed_at.elapsed();
        assert!(
            stall < Duration::from_secs(10),
            "{scenario}: first ticket {stall:?} after the kill"
        );
        let wanted: HashSet<String> = ids(&events);
        let started = Instant::now();
        while (db.count().await as usize) < before as usize + events.len() {
            assert!(
                started.elapsed() < SETTLE,
                "{scenario}: {} of {} stored; a replica's log ends:\n{}",
                db.count().await - before,
                events.len(),
                replicas[0]
                    .logs()
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The node comes back by itself, and rejoins.
        rabbit.boot(leader);
        eventually(
            Duration::from_secs(60),
            "the cluster is whole again",
            || async {
                let status =
                    rabbit.ctl_output(leader, &["cluster_status", "--formatter", "json"])?;
                let status: Value = serde_json::from_str(&status).ok()?;
                (status["running_nodes"].as_array()?.len() == 3).then_some(())
            },
        )
        .await;
        for mut replica in replicas {
            let logs = replica.logs();
            assert_eq!(replica.terminate().await, Some(0), "{logs}");
        }
        let connection = any_node(&rabbit).await;
        assert_eq!(
            ready_in(&connection, &t.work_queue).await,
            0,
            "{scenario}: the work queue is empty"
        );
        assert_eq!(
            ready_in(&connection, &t.dead_letter_queue).await,
            0,
            "{scenario}: nothing dead-lettered"
        );
        let events_seen = drain(&connection, &tap).await;
        assert!(
            events_seen.iter().all(|(key, _)| key == "ticket.ready"),
            "{scenario}: nothing answered ticket.failed"
        );
        let mut ready: HashMap<String, usize> = HashMap::new();
        for (_, body) in &events_seen {
            if let Some(id) = body["eventID"].as_str() {
                *ready.entry(id.to_owned()).or_default() += 1;
            }
        }
        assert!(
            wanted.iter().all(|id| ready.contains_key(id)),
            "{scenario}: every event announced at least once"
        );
        let duplicates: usize = ready.values().map(|n| n - 1).sum();
        println!(
            "scenario cluster ({scenario}): 600 events, 2 replicas; SIGKILL of the work queue's leader (node {leader}) after {} were stored; first ticket {stall:?} after; 600 rows; ticket.ready {} times ({duplicates} duplicates); 0 failed, 0 dead letters",
            stored_at_kill - before,
            events_seen.len()
        );
        all_ready.extend(ready);
    }
    // One row per event over both scenarios.
    let rows: i64 = db.count().await;
    assert_eq!(rows as usize, all_ready.len(), "one row per event");
}

#[tokio::test]
async fn a_consumer_cancelled_by_rabbitmq_subscribes_again() {
    // RabbitMQ cancels a consumer when its queue is deleted (or, for some
    // queue types, when the queue's leader moves): the worker declares the
    // queue again and goes on, rather than stall.
    let h = Harness::new(Knobs::default()).await;
    let worker = h.worker();
    let first = login_event("cust-before-cancel");
    h.broker.publish_event(&first).await;
    h.tap.wait_for("ticket.ready", 1, SETTLE).await;
    h.broker
        .channel
        .queue_delete(
            h.broker.topology.work_queue.as_str().into(),
            Default::default(),
        )
        .await
        .expect("delete the work queue");
    // Once the worker has declared it again (and bound it), events flow.
    let queue = h.broker.topology.work_queue.clone();
    eventually(SETTLE, "the work queue declared again", || async {
        let channel = h.broker.connection.create_channel().await.ok()?;
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        (declared.consumer_count() > 0).then_some(())
    })
    .await;
    let second = login_event("cust-after-cancel");
    h.broker.publish_event(&second).await;
    h.tap.wait_for("ticket.ready", 2, SETTLE).await;
    assert!(
        worker.stats().sessions >= 2,
        "a new session subscribed again"
    );
    worker.stop().await;
}

// ------------------------------------------------------- Postgres failover

use crate::support::private::PrivatePostgres;

#[tokio::test]
async fn a_primary_killed_mid_burst_and_its_standby_promoted_lose_and_fail_nothing() {
    let postgres = PrivatePostgres::with_standby();
    let standby = postgres.standby.as_ref().expect("a standby");
    let db = TestDb::create_at(&postgres.primary.url("postgres")).await;
    ticket_worker::storage::MIGRATOR
        .run(&db.pool)
        .await
        .expect("migrate");
    let broker = TestBroker::new().await;
    let tap = broker.tap().await;
    // 8 at a time, 200 ms each: 300 events take about 8 s.
    let taptalk = fake_taptalk(Knobs {
        latency: Duration::from_millis(200),
        ..Knobs::default()
    })
    .await;
    // The standby first: a writer must pass it by.
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{}?target_session_attrs=read-write",
        standby.port, postgres.primary.port, db.name
    );
    let mut env = worker_env(
        &url,
        &broker,
        &taptalk.base_url(),
        &format!("tw-failover-{}", unique()),
    );
    env.push(("SKIP_MIGRATIONS", "true".into()));
    env.push(("CONCURRENCY", "8".into()));
    let mut worker = WorkerProcess::spawn(&env);
    worker.consuming().await;
    let events: Vec<Value> = (0..300)
        .map(|i| login_event(&format!("cust-{}", i % 41)))
        .collect();
    broker.publish_events(&events).await;
    eventually(SETTLE, "work under way", || async {
        (db.count().await >= 40).then_some(())
    })
    .await;
    let stored_at_kill = db.count().await;
    postgres.kill_primary();
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres.promote_standby();

    // Read on the promoted standby from now on.
    let promoted = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&standby.url(&db.name))
        .await
        .expect("connect to the promoted standby");
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM auth_tickets")
            .fetch_one(&promoted)
            .await
            .unwrap_or(0)
    };
    eventually(SETTLE, "every event stored on the new primary", || async {
        (count().await as usize == events.len()).then_some(())
    })
    .await;
    let stored: HashSet<String> = sqlx::query_scalar("SELECT event_id FROM auth_tickets")
        .fetch_all(&promoted)
        .await
        .expect("rows")
        .into_iter()
        .collect();
    assert_eq!(
        stored,
        ids(&events),
        "one row per event, none lost in the failover"
    );
    let ready = tap.wait_for("ticket.ready", events.len(), SETTLE).await;
    let announced: HashSet<String> = ready
        .iter()
        .filter_map(|r| r.body["eventID"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(announced, ids(&events));
    assert!(
        tap.failed().is_empty(),
        "nothing answered ticket.failed: {:?}",
        tap.failed().len()
    );
    assert!(
        broker.all_dead_letters().await.is_empty(),
        "nothing dead-lettered"
    );
    let logs = worker.logs();
    assert!(
        logs.contains("Postgres failover: the worker moves"),
        "{logs}"
    );
    assert_eq!(worker.terminate().await, Some(0), "{logs}");
    println!(
        "scenario postgres-failover: 300 events; the primary killed after {stored_at_kill} were stored, its synchronous standby promoted 2 s later; 300 rows on the new primary, {} ticket.ready, 0 failed, 0 dead letters",
        ready.len()
    );
}

// ------------------------------------------------------- one TapTalk quota

/// An instant TapTalk that notes when each ticket request arrived.
struct CountingUpstream {
    url: url::Url,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingUpstream {
    async fn start() -> CountingUpstream {
        use axum::Json;
        let seen: std::sync::Arc<std::sync::Mutex<Vec<Instant>>> = Default::default();
        let noted = std::sync::Arc::clone(&seen);
        let app = axum::Router::new().route(
            ticket_worker::taptalk::api::AUTH_TICKET_PATH,
            axum::routing::post(move |body: Json<Value>| {
                let noted = std::sync::Arc::clone(&noted);
                async move {
                    let Some(user) = body.get("xcUserID").and_then(Value::as_str) else {
                        return (
                            axum::http::StatusCode::BAD_REQUEST,
                            Json(serde_json::json!({"status": 400, "error": {"code": "ParamValidationFailed", "message": "xcUserID (105) is required", "field": "xcUserID"}, "data": {}})),
                        );
                    };
                    let n = {
                        let mut seen = noted.lock().unwrap_or_else(|p| p.into_inner());
                        seen.push(Instant::now());
                        seen.len()
                    };
                    (
                        axum::http::StatusCode::OK,
                        Json(serde_json::json!({"status": 200, "error": {"code": "", "message": "", "field": ""}, "data": {"userID": format!("u-{user}"), "ticket": format!("t-{n}")}})),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CountingUpstream {
            url: format!("http://{addr}").parse().expect("url"),
            seen,
            task,
        }
    }

    fn seen(&self) -> Vec<Instant> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a worker process serves its endpoints, from its log.
async fn http_address(worker: &WorkerProcess) -> String {
    eventually(SETTLE, "the worker serves HTTP", || async {
        worker.logs().lines().find_map(|line| {
            let rest = line.split("address=").nth(1)?;
            line.contains("serving /metrics").then(|| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
        })
    })
    .await
}

#[tokio::test]
async fn three_replicas_keep_to_one_quota_while_one_of_them_dies() {
    let h = Harness::new(Knobs::default()).await;
    let upstream = CountingUpstream::start().await;
    let mut replicas = Vec::new();
    for n in 0..3 {
        let mut env = worker_env(
            &h.db.url,
            &h.broker,
            &upstream.url,
            &format!("tw-quota-{n}-{}", unique()),
        );
        env.push(("TAPTALK_QUOTA", "200".into()));
        replicas.push(WorkerProcess::spawn(&env));
    }
    for replica in &replicas {
        replica.consuming().await;
    }
    let events: Vec<Value> = (0..2_000)
        .map(|i| login_event(&format!("cust-{}", i % 103)))
        .collect();
    h.broker.publish_events(&events).await;
    // A third of the way, one replica dies; the others take its share.
    eventually(SETTLE, "a third done", || async {
        (h.db.count().await >= 660).then_some(())
    })
    .await;
    replicas[0].signal("KILL");
    every_event_stored_once(&h.db, &ids(&events), SETTLE).await;
    let mut addresses = Vec::new();
    for replica in &replicas[1..] {
        addresses.push(http_address(replica).await);
    }
    let mut takes = 0.0;
    for address in &addresses {
        let text = reqwest::get(format!("http://{address}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        takes += text
            .lines()
            .find_map(|l| l.strip_prefix("ticket_worker_taptalk_quota_takes_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    let mut seen = upstream.seen();
    seen.sort();
    let most = (0..seen.len())
        .map(|i| {
            seen[i..]
                .iter()
                .take_while(|at| at.duration_since(seen[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    let span = seen[seen.len() - 1].duration_since(seen[0]).as_secs_f64();
    let per_second = (seen.len() - 1) as f64 / span;
    println!(
        "scenario quota: 3 replicas, TAPTALK_QUOTA=200, 2,000 events, one replica SIGKILLed after 660: {} requests over {span:.1} s = {per_second:.0}/s, at most {most} in any 1 s; the survivors took tokens {takes} times",
        seen.len()
    );
    assert!(most <= 210, "{most} requests in one second");
    assert!(
        per_second >= 180.0,
        "{per_second:.0} requests/s with a backlog"
    );
    for mut replica in replicas.into_iter().skip(1) {
        assert_eq!(replica.terminate().await, Some(0));
    }
}
