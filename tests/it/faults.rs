//! The fault-injection suite. Each scenario sends a few hundred events, injects
//! one kind of fault while they are in flight, lets the system recover, and
//! checks one invariant:
//!
//! > every published event ended in exactly one of {one stored ticket and a
//! > `ticket.ready` event, a `ticket.failed` event, a dead letter}, with no
//! > duplicate rows and nothing left in the work queue.
//!
//! (An event may be announced `ticket.ready` more than once — the contract lets a
//! crash repeat it, with the same eventID — but never with another ticket.)
//! Each scenario prints one `scenario …` line with its counts; run
//! `cargo test --test it faults:: -- --nocapture 2>&1 | grep ^scenario` to see them.

use crate::support::*;
use fake_taptalk::Knobs;
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use rand::seq::SliceRandom;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use ticket_worker::domain::EventId;
use ticket_worker::storage::TicketStore;

const SETTLE: Duration = Duration::from_secs(120);

/// One message to publish.
#[derive(Clone)]
struct Outgoing {
    body: Vec<u8>,
    properties: BasicProperties,
}

/// What was sent, to check the outcome against.
#[derive(Default)]
struct Ledger {
    /// eventIDs of valid events (each may have been published several times).
    valid: HashSet<String>,
    /// test ids of invalid messages, with the eventID a failure can carry.
    invalid: HashMap<String, Option<String>>,
    messages: usize,
}

fn tagged(test_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("x-test-id".into(), AMQPValue::LongString(test_id.into()));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// `valid` distinct login events, each published `copies` times, and
/// `invalid` malformed messages of rotating kinds, shuffled together.
fn traffic(valid: usize, copies: usize, invalid: usize) -> (Vec<Outgoing>, Ledger) {
    let mut ledger = Ledger::default();
    let mut out = Vec::new();
    for i in 0..valid {
        let event = login_event(&format!("cust-{}", i % 97));
        let id = event["eventID"].as_str().unwrap_or_default().to_owned();
        let properties = tagged(&format!("valid-{id}"))
            .with_content_type("application/json".into())
            .with_message_id(id.as_str().into());
        for _ in 0..copies {
            out.push(Outgoing {
                body: event.to_string().into_bytes(),
                properties: properties.clone(),
            });
        }
        ledger.valid.insert(id);
    }
    for i in 0..invalid {
        let test_id = format!("invalid-{i}-{}", unique());
        let message_id = format!("bad-{i}-{}", unique());
        let json = |v: Value| v.to_string().into_bytes();
        let (body, content_type, id): (Vec<u8>, &str, Option<&str>) = match i % 6 {
            0 => (
                b"{\"not\": json".to_vec(),
                "application/json",
                Some(&message_id),
            ),
            1 => (
                json({
                    let mut e = login_event("cust-x");
                    e["userPlatform"] = json!("symbian");
                    e.as_object_mut().map(|o| o.remove("eventID"));
                    e
                }),
                "application/json",
                Some(&message_id),
            ),
            2 => (
                json({
                    let mut e = login_event("cust-x");
                    e.as_object_mut().map(|o| {
                        o.remove("eventID");
                        o.remove("fullName")
                    });
                    e
                }),
                "application/json",
                Some(&message_id),
            ),
            3 => (
                json({
                    let mut e = login_event("cust-x");
                    e.as_object_mut().map(|o| o.remove("eventID"));
                    e
                }),
                "application/json",
                None,
            ),
            4 => (
                vec![0xc3, 0x28, 0xff],
                "application/json",
                Some(&message_id),
            ),
            _ => (json(login_event("cust-x")), "text/plain", Some(&message_id)),
        };
        let mut properties = tagged(&test_id).with_content_type(content_type.into());
        if let Some(id) = id {
            properties = properties.with_message_id(id.into());
        }
        out.push(Outgoing { body, properties });
        ledger.invalid.insert(test_id, id.map(str::to_owned));
    }
    out.shuffle(&mut rand::rng());
    ledger.messages = out.len();
    (out, ledger)
}

/// Publishes in batches of `batch`, pausing `pause` between batches, so that
/// faults land while events are in flight.
async fn publish_paced(broker: &TestBroker, messages: &[Outgoing], batch: usize, pause: Duration) {
    for chunk in messages.chunks(batch) {
        let mut confirms = Vec::new();
        for message in chunk {
            let confirm = broker
                .channel
                .basic_publish(
                    broker.topology.login_exchange.as_str().into(),
                    "login".into(),
                    Default::default(),
                    &message.body,
                    message.properties.clone(),
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert!(confirm.await.expect("confirm").is_ack());
        }
        tokio::time::sleep(pause).await;
    }
}

/// The counts a scenario reports.
#[derive(Debug)]
struct Report {
    messages: usize,
    valid: usize,
    invalid: usize,
    rows: usize,
    ready_events: usize,
    failed_events: usize,
    dead_letters: usize,
    upstream_tickets: u64,
}

/// Waits until every event has its outcome, then checks the invariant.
async fn settle_and_check(h: &Harness, ledger: &Ledger) -> Report {
    let started = Instant::now();
    let expected_failed: HashSet<String> = ledger.invalid.values().flatten().cloned().collect();
    let mut dead;
    loop {
        dead = h.broker.all_dead_letters().await;
        let ready: HashSet<String> = h
            .tap
            .ready()
            .iter()
            .filter_map(|e| e.body["eventID"].as_str().map(str::to_owned))
            .collect();
        let failed: HashSet<String> = h
            .tap
            .failed()
            .iter()
            .filter_map(|e| e.body["eventID"].as_str().map(str::to_owned))
            .collect();
        let dead_ids: HashSet<String> =
            dead.iter().filter_map(|d| header(d, "x-test-id")).collect();
        let done = ledger.valid.is_subset(&ready)
            && expected_failed.is_subset(&failed)
            && ledger.invalid.keys().all(|k| dead_ids.contains(k));
        if done {
            break;
        }
        assert!(
            started.elapsed() < SETTLE,
            "not settled after {SETTLE:?}: ready {}/{}, failed {}/{}, dead {}/{}",
            ready.intersection(&ledger.valid).count(),
            ledger.valid.len(),
            failed.len(),
            expected_failed.len(),
            dead_ids.len(),
            ledger.invalid.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything still in flight that would break the invariant shows up now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    dead = h.broker.all_dead_letters().await;

    let ready_events = h.tap.ready();
    let failed_events = h.tap.failed();
    let ready: HashSet<String> = ready_events
        .iter()
        .filter_map(|e| e.body["eventID"].as_str().map(str::to_owned))
        .collect();
    let failed: HashSet<String> = failed_events
        .iter()
        .filter_map(|e| e.body["eventID"].as_str().map(str::to_owned))
        .collect();
    let dead_ids: HashSet<String> = dead.iter().filter_map(|d| header(d, "x-test-id")).collect();
    assert_eq!(
        ready, ledger.valid,
        "ticket.ready for exactly the valid events"
    );
    assert_eq!(
        failed, expected_failed,
        "ticket.failed for exactly the invalid events that carry an id"
    );
    assert!(ready.is_disjoint(&failed), "no event both ready and failed");
    assert_eq!(
        dead_ids,
        ledger.invalid.keys().cloned().collect::<HashSet<_>>(),
        "dead letters for exactly the invalid messages"
    );
    assert_eq!(
        h.broker.ready_count(&h.broker.topology.work_queue).await,
        0,
        "nothing left in the work queue"
    );

    let store = TicketStore::from_pool(h.db.pool.clone());
    let ids: Vec<EventId> = ledger
        .valid
        .iter()
        .filter_map(|id| EventId::parse(id).ok())
        .collect();
    let rows = store.find_many(&ids).await.expect("rows");
    assert_eq!(
        h.db.count().await,
        ledger.valid.len() as i64,
        "one row per valid event, no more"
    );
    assert_eq!(rows.len(), ledger.valid.len());
    let issued: HashMap<String, String> = h
        .taptalk
        .issued()
        .into_iter()
        .map(|i| {
            (
                i.ticket.expose().to_owned(),
                i.body["xcUserID"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for row in &rows {
        assert_eq!(
            issued.get(row.ticket.expose()),
            Some(&row.xc_user_id),
            "every stored ticket was issued upstream for its user"
        );
        let announced: HashSet<&Value> = ready_events
            .iter()
            .filter(|e| e.body["eventID"] == row.event_id.as_str())
            .map(|e| &e.body)
            .collect();
        assert_eq!(
            announced.len(),
            1,
            "repeated ready events for {} are identical",
            row.event_id
        );
    }
    Report {
        messages: ledger.messages,
        valid: ledger.valid.len(),
        invalid: ledger.invalid.len(),
        rows: rows.len(),
        ready_events: ready_events.len(),
        failed_events: failed_events.len(),
        dead_letters: dead.len(),
        upstream_tickets: h.taptalk.stats().issued,
    }
}

fn print(scenario: &str, faults: &str, report: &Report) {
    println!(
        "scenario {scenario}: sent {} messages ({} events, {} malformed); faults: {faults}; \
         outcome: {} rows, {} ticket.ready ({} events), {} ticket.failed, {} dead letters; {} tickets issued upstream",
        report.messages,
        report.valid,
        report.invalid,
        report.rows,
        report.ready_events,
        report.valid,
        report.failed_events,
        report.dead_letters,
        report.upstream_tickets
    );
}

fn env_for(h: &Harness, name: &str, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = worker_env(&h.db.url, &h.broker, &h.taptalk.base_url(), name);
    for (key, value) in extra {
        env.retain(|(k, _)| k != key);
        env.push((key, (*value).to_owned()));
    }
    env
}

fn quick_latency() -> Knobs {
    Knobs {
        latency: Duration::from_millis(10),
        latency_jitter: Duration::from_millis(20),
        ..Knobs::default()
    }
}

#[tokio::test]
async fn worker_killed_with_sigkill_repeatedly() {
    let h = Harness::new(quick_latency()).await;
    let env = env_for(
        &h,
        &format!("kill-{}", unique()),
        &[("CONCURRENCY", "16"), ("PREFETCH", "32")],
    );
    let (messages, ledger) = traffic(400, 1, 0);
    let mut worker = WorkerProcess::spawn(&env);
    let mut kills = 0;
    let faults = async {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            worker.signal("KILL");
            assert!(worker.wait(Duration::from_secs(10)).await.is_some());
            kills += 1;
            worker = WorkerProcess::spawn(&env);
        }
    };
    tokio::join!(
        publish_paced(&h.broker, &messages, 40, Duration::from_millis(150)),
        faults
    );
    let report = settle_and_check(&h, &ledger).await;
    print(
        "sigkill",
        &format!("{kills} SIGKILLs of the worker, each followed by a restart"),
        &report,
    );
}

#[tokio::test]
async fn two_replicas_share_the_queue_with_duplicates_and_malformed_messages() {
    let h = Harness::new(quick_latency()).await;
    let name = format!("pair-{}", unique());
    let env = env_for(&h, &name, &[("CONCURRENCY", "16")]);
    let (messages, ledger) = traffic(300, 2, 20);
    let first = WorkerProcess::spawn(&env);
    let second = WorkerProcess::spawn(&env);
    eventually(Duration::from_secs(30), "both replicas consume", || async {
        [&first, &second]
            .iter()
            .all(|w| w.logs().contains("connected to RabbitMQ"))
            .then_some(())
    })
    .await;
    publish_paced(&h.broker, &messages, 60, Duration::from_millis(50)).await;
    let report = settle_and_check(&h, &ledger).await;
    for (n, worker) in [&first, &second].into_iter().enumerate() {
        assert!(
            worker.logs().contains("outcome=Issued"),
            "replica {n} issued tickets too"
        );
    }
    print(
        "two-replicas",
        "2 replicas at once; every event published twice; 20 malformed",
        &report,
    );
}

#[tokio::test]
async fn rabbitmq_connections_closed_mid_flight() {
    let h = Harness::new(quick_latency()).await;
    let name = format!("close-{}", unique());
    let env = env_for(&h, &name, &[]);
    let (messages, ledger) = traffic(400, 1, 10);
    let worker = WorkerProcess::spawn(&env);
    worker.consuming().await;
    let mut closed = 0;
    let faults = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            closed += tokio::task::spawn_blocking({
                let name = name.clone();
                move || close_rabbitmq_connections(&name)
            })
            .await
            .unwrap_or(0);
        }
    };
    tokio::join!(
        publish_paced(&h.broker, &messages, 40, Duration::from_millis(150)),
        faults
    );
    // Two connections per session: at least two sessions' worth.
    assert!(closed >= 4, "connections were closed ({closed})");
    let report = settle_and_check(&h, &ledger).await;
    print(
        "rabbitmq-close",
        &format!("{closed} worker connections closed with rabbitmqctl close_connection"),
        &report,
    );
}

#[tokio::test]
async fn losing_only_the_publishing_connection_ends_the_session_and_loses_nothing() {
    let h = Harness::new(quick_latency()).await;
    let name = format!("pubclose-{}", unique());
    let env = env_for(&h, &name, &[]);
    let worker = WorkerProcess::spawn(&env);
    worker.consuming().await;
    // The worker idles: nothing publishes, nothing settles. Closing its
    // publishing connection alone must still end the session, or the next
    // events would find no publisher.
    let publishing = format!("{name} publish");
    let closed = tokio::task::spawn_blocking(move || close_rabbitmq_connections(&publishing))
        .await
        .unwrap_or(0);
    assert_eq!(closed, 1, "the publishing connection alone was closed");
    eventually(SETTLE, "a second session", || async {
        (worker.logs().matches("connected to RabbitMQ").count() >= 2).then_some(())
    })
    .await;
    let (messages, ledger) = traffic(50, 1, 5);
    publish_paced(&h.broker, &messages, 25, Duration::from_millis(50)).await;
    let report = settle_and_check(&h, &ledger).await;
    print(
        "publish-connection-lost",
        "the idle worker's publishing connection closed with rabbitmqctl close_connection",
        &report,
    );
}

#[tokio::test]
async fn postgres_backends_terminated_mid_flight() {
    let h = Harness::new(quick_latency()).await;
    let env = env_for(&h, &format!("pgkill-{}", unique()), &[]);
    let (messages, ledger) = traffic(400, 1, 10);
    let worker = WorkerProcess::spawn(&env);
    worker.consuming().await;
    let mut terminated = 0;
    let faults = async {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            terminated += h.db.terminate_backends().await;
        }
    };
    tokio::join!(
        publish_paced(&h.broker, &messages, 40, Duration::from_millis(150)),
        faults
    );
    assert!(terminated > 0);
    let report = settle_and_check(&h, &ledger).await;
    print(
        "postgres-terminate",
        &format!("{terminated} Postgres backends terminated in 10 rounds"),
        &report,
    );
}

#[tokio::test]
async fn upstream_down_for_a_while() {
    let h = Harness::new(quick_latency()).await;
    let env = env_for(
        &h,
        &format!("down-{}", unique()),
        &[("OUTAGE_AFTER", "1s"), ("TAPTALK_RETRY_FOR", "2s")],
    );
    let (messages, ledger) = traffic(300, 1, 10);
    let worker = WorkerProcess::spawn(&env);
    worker.consuming().await;
    let faults = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        h.taptalk.set_knobs(Knobs::down());
        tokio::time::sleep(Duration::from_secs(4)).await;
        h.taptalk.set_knobs(quick_latency());
    };
    tokio::join!(
        publish_paced(&h.broker, &messages, 30, Duration::from_millis(100)),
        faults
    );
    let report = settle_and_check(&h, &ledger).await;
    let logs = worker.logs();
    assert!(
        logs.contains("intake paused") && logs.contains("resuming intake"),
        "the worker paused and resumed"
    );
    let stats = h.taptalk.stats();
    print(
        "upstream-down",
        &format!(
            "TapTalk answered 503 to everything for 4 s ({} requests)",
            stats.injected_503
        ),
        &report,
    );
}

#[tokio::test]
async fn upstream_slow_with_timeouts() {
    let h = Harness::new(Knobs {
        latency: Duration::from_millis(200),
        latency_jitter: Duration::from_millis(500),
        ..Knobs::default()
    })
    .await;
    let env = env_for(
        &h,
        &format!("slow-{}", unique()),
        &[
            ("TAPTALK_TIMEOUT", "500ms"),
            ("CONCURRENCY", "64"),
            ("TAPTALK_RETRY_FOR", "20s"),
        ],
    );
    let (messages, ledger) = traffic(250, 1, 10);
    let worker = WorkerProcess::spawn(&env);
    worker.consuming().await;
    publish_paced(&h.broker, &messages, 50, Duration::from_millis(100)).await;
    let report = settle_and_check(&h, &ledger).await;
    let stats = h.taptalk.stats();
    let timed_out = stats.requests - stats.issued - stats.param_rejections;
    assert!(timed_out > 0, "some requests timed out");
    print(
        "upstream-slow",
        &format!("200–700 ms latency against a 500 ms timeout ({timed_out} requests timed out)"),
        &report,
    );
}

#[tokio::test]
async fn upstream_answering_429() {
    let h = Harness::new(Knobs {
        fail_429: 0.5,
        ..quick_latency()
    })
    .await;
    let env = env_for(
        &h,
        &format!("429-{}", unique()),
        &[("TAPTALK_RETRY_FOR", "20s")],
    );
    let (messages, ledger) = traffic(250, 1, 10);
    let worker = WorkerProcess::spawn(&env);
    worker.consuming().await;
    publish_paced(&h.broker, &messages, 50, Duration::from_millis(50)).await;
    let report = settle_and_check(&h, &ledger).await;
    print(
        "upstream-429",
        &format!(
            "half of all requests answered 429 ({} of them)",
            h.taptalk.stats().injected_429
        ),
        &report,
    );
}

#[tokio::test]
async fn upstream_rejects_the_key_for_a_while() {
    let h = Harness::new(quick_latency()).await;
    let env = env_for(&h, &format!("key-{}", unique()), &[]);
    let (messages, ledger) = traffic(300, 1, 10);
    let worker = WorkerProcess::spawn(&env);
    worker.consuming().await;
    let faults = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        h.taptalk.set_knobs(Knobs {
            wrong_key: true,
            ..quick_latency()
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        h.taptalk.set_knobs(quick_latency());
    };
    tokio::join!(
        publish_paced(&h.broker, &messages, 30, Duration::from_millis(100)),
        faults
    );
    let report = settle_and_check(&h, &ledger).await;
    let logs = worker.logs();
    let paused = logs.matches("intake paused").count();
    assert!(paused >= 1, "the wrong key paused intake");
    print(
        "wrong-key",
        &format!(
            "HeaderValidationFailed for 3 s ({} rejections, intake paused {paused}×)",
            h.taptalk.stats().key_rejections
        ),
        &report,
    );
}

#[tokio::test]
async fn malformed_messages_mixed_into_valid_traffic() {
    let h = Harness::new(quick_latency()).await;
    let env = env_for(&h, &format!("mixed-{}", unique()), &[]);
    let (messages, ledger) = traffic(300, 1, 60);
    let _worker = WorkerProcess::spawn(&env);
    publish_paced(&h.broker, &messages, 60, Duration::from_millis(20)).await;
    let report = settle_and_check(&h, &ledger).await;
    print(
        "malformed",
        "60 malformed messages of 6 kinds shuffled into 300 valid ones",
        &report,
    );
}

#[tokio::test]
async fn duplicate_event_ids() {
    let h = Harness::new(quick_latency()).await;
    let env = env_for(&h, &format!("dup-{}", unique()), &[("CONCURRENCY", "32")]);
    let (messages, ledger) = traffic(150, 3, 0);
    let _worker = WorkerProcess::spawn(&env);
    publish_paced(&h.broker, &messages, 90, Duration::from_millis(20)).await;
    let report = settle_and_check(&h, &ledger).await;
    assert!(report.upstream_tickets >= 150);
    print(
        "duplicates",
        "every event published 3 times, shuffled, 32 in flight",
        &report,
    );
}

#[tokio::test]
async fn sigterm_under_load() {
    let h = Harness::new(Knobs {
        latency: Duration::from_millis(150),
        latency_jitter: Duration::from_millis(100),
        ..Knobs::default()
    })
    .await;
    let env = env_for(
        &h,
        &format!("term-{}", unique()),
        &[("CONCURRENCY", "16"), ("SHUTDOWN_GRACE", "3s")],
    );
    let (messages, ledger) = traffic(300, 1, 10);
    let mut first = WorkerProcess::spawn(&env);
    let stop = async {
        // Once it is working (and, with 150 ms+ per request, has events in flight).
        eventually(
            Duration::from_secs(30),
            "the first worker settles events",
            || async { first.logs().contains("outcome=Issued").then_some(()) },
        )
        .await;
        first.signal("TERM");
        let started = Instant::now();
        let status = first
            .wait(Duration::from_secs(10))
            .await
            .expect("exits within the grace period");
        (status, started.elapsed())
    };
    let (_, (status, took)) = tokio::join!(
        publish_paced(&h.broker, &messages, 30, Duration::from_millis(100)),
        stop
    );
    assert_eq!(status.code(), Some(0), "{}", first.logs());
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");
    let logs = first.logs();
    assert!(logs.contains("letting in-flight messages finish"), "{logs}");
    let mut second = WorkerProcess::spawn(&env);
    let report = settle_and_check(&h, &ledger).await;
    print(
        "sigterm",
        &format!(
            "SIGTERM with 16 in flight; exit 0 after {took:.1?}; a second worker finished the rest"
        ),
        &report,
    );
    assert_eq!(second.terminate().await, Some(0));

    // A grace period shorter than the work: unfinished events go back to the
    // queue and the worker exits promptly; the next worker finishes them.
    h.taptalk.set_knobs(Knobs {
        latency: Duration::from_secs(3),
        ..Knobs::default()
    });
    let mut third = WorkerProcess::spawn(&env_for(
        &h,
        &format!("term2-{}", unique()),
        &[("SHUTDOWN_GRACE", "500ms"), ("TAPTALK_TIMEOUT", "10s")],
    ));
    eventually(
        Duration::from_secs(30),
        "the third worker consumes",
        || async { third.logs().contains("connected to RabbitMQ").then_some(()) },
    )
    .await;
    let (messages, ledger2) = traffic(20, 1, 0);
    publish_paced(&h.broker, &messages, 20, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    third.signal("TERM");
    let started = Instant::now();
    let status = third
        .wait(Duration::from_secs(5))
        .await
        .expect("prompt exit");
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        third.logs().contains("shutdown grace is over"),
        "{}",
        third.logs()
    );
    h.taptalk.set_knobs(Knobs::default());
    let _fourth = WorkerProcess::spawn(&env);
    let all = Ledger {
        valid: ledger.valid.union(&ledger2.valid).cloned().collect(),
        invalid: ledger.invalid.clone(),
        messages: ledger.messages + ledger2.messages,
    };
    let report = settle_and_check(&h, &all).await;
    print(
        "sigterm-short-grace",
        &format!(
            "SIGTERM with 3 s requests in flight and a 500 ms grace: exit 0 after {took:.1?}, events returned and finished by the next worker"
        ),
        &report,
    );
}

#[tokio::test]
async fn a_message_that_keeps_crashing_consumers_is_dead_lettered_by_the_delivery_limit() {
    let broker = TestBroker::with_delivery_limit(3).await;
    broker
        .publish_raw(
            b"{\"eventID\": \"crasher\"}",
            json_properties().with_message_id("crasher".into()),
        )
        .await;
    // A consumer that takes the message and dies before acknowledging it,
    // again and again: to RabbitMQ this is a worker crashing on it.
    let mut deliveries = 0;
    for _ in 0..10 {
        let channel = broker.connection.create_channel().await.expect("channel");
        let got = channel
            .basic_get(
                broker.topology.work_queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: false },
            )
            .await
            .expect("get");
        if got.is_none() {
            break;
        }
        deliveries += 1;
        let _ = channel.close(200, "crash".into()).await;
    }
    let dead = broker
        .wait_for_dead_letters(1, Duration::from_secs(10))
        .await;
    assert_eq!(deliveries, 4, "delivered the limit (3) plus the first time");
    let reason =
        dead[0]
            .properties
            .headers()
            .as_ref()
            .and_then(|h| match h.inner().get("x-death") {
                Some(AMQPValue::FieldArray(deaths)) => {
                    deaths.as_slice().iter().find_map(|d| match d {
                        AMQPValue::FieldTable(t) => match t.inner().get("reason") {
                            Some(AMQPValue::LongString(r)) => Some(r.to_string()),
                            _ => None,
                        },
                        _ => None,
                    })
                }
                _ => None,
            });
    assert_eq!(reason.as_deref(), Some("delivery_limit"));
    println!(
        "scenario delivery-limit: 1 message; faults: 4 consumer crashes before ack; outcome: dead-lettered by RabbitMQ (x-death reason delivery_limit), 0 rows"
    );
}

#[tokio::test]
async fn messages_whose_headers_fill_the_frame_never_stall_valid_traffic() {
    let h = Harness::new(quick_latency()).await;
    let worker = h.worker();
    // An invalid event and a valid one whose headers nearly fill RabbitMQ's
    // frame: a copy with the worker's headers added, or a redelivery, would
    // not fit. Then ordinary traffic.
    let mut invalid = login_event("cust-bad");
    invalid["userPlatform"] = json!("windows");
    let big_valid = login_event("cust-big");
    for event in [&invalid, &big_valid] {
        let id = event["eventID"].as_str().unwrap_or_default();
        let properties = filling_the_frame(json_properties().with_message_id(id.into()), 10);
        h.broker
            .publish_raw(event.to_string().as_bytes(), properties)
            .await;
    }
    let valid: Vec<Value> = (0..50).map(|i| login_event(&format!("cust-{i}"))).collect();
    h.broker.publish_events(&valid).await;
    let started = Instant::now();

    let ready = h.tap.wait_for("ticket.ready", 51, SETTLE).await;
    let took = started.elapsed();
    let failed = h.tap.wait_for("ticket.failed", 1, SETTLE).await;
    assert_eq!(failed[0].body["eventID"], invalid["eventID"]);
    assert_eq!(failed[0].body["reason"], "invalid");
    let dead = h.broker.wait_for_dead_letters(1, SETTLE).await;
    assert_eq!(dead.len(), 1, "only the invalid event is dead-lettered");
    assert_eq!(dead[0].data, invalid.to_string().into_bytes(), "body kept");
    assert_eq!(
        header(&dead[0], "x-ticket-worker-reason").as_deref(),
        Some("invalid")
    );
    assert_eq!(
        header(&dead[0], "x-filler"),
        None,
        "the oversized header went"
    );
    let note = header(&dead[0], "x-ticket-worker-trimmed-headers").unwrap_or_default();
    assert!(note.starts_with("1 original headers"), "{note}");

    let ids: HashSet<&str> = ready
        .iter()
        .filter_map(|e| e.body["eventID"].as_str())
        .collect();
    assert!(ids.contains(big_valid["eventID"].as_str().unwrap_or_default()));
    assert_eq!(
        worker.stats().sessions,
        1,
        "the worker never lost its connection"
    );
    assert_eq!(h.db.count().await, 51);
    worker.stop().await;
    println!(
        "scenario oversized-headers: 52 messages (2 with headers filling the frame, 1 of them invalid); outcome: 51 tickets in {took:.1?}, 1 dead letter with trimmed headers, 1 RabbitMQ session"
    );
}

#[tokio::test]
async fn a_redelivery_too_large_to_receive_costs_valid_traffic_seconds_and_no_deliveries() {
    // RabbitMQ's delivery limit and the worker's reconnect pauses at their
    // defaults (20; 0.5 s growing to 30 s): reconnecting with backoff after
    // each of the 20 failures it takes to dead-letter the message would stall
    // the queue for about 7 minutes.
    let h = Harness::new(quick_latency()).await;
    assert_eq!(h.broker.topology.delivery_limit, 20);
    // A message whose headers fill the frame, taken once by a consumer that
    // dies before acknowledging it: its redelivery carries x-delivery-count
    // and no longer fits in a frame the worker can receive.
    let landmine = login_event("cust-landmine");
    let id = landmine["eventID"].as_str().unwrap_or_default();
    h.broker
        .publish_raw(
            landmine.to_string().as_bytes(),
            filling_the_frame(json_properties().with_message_id(id.into()), 10),
        )
        .await;
    // (basic.get is no good here: on a quorum queue it adds x-delivery-count
    // even to a first delivery, which already does not fit.)
    let channel = h.broker.connection.create_channel().await.expect("channel");
    channel.basic_qos(1, Default::default()).await.expect("qos");
    let mut consumer = channel
        .basic_consume(
            h.broker.topology.work_queue.as_str().into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let got = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the landmine is delivered");
    assert!(
        matches!(got, Some(Ok(_))),
        "the landmine was delivered once"
    );
    let _ = channel.close(200, "crash".into()).await;
    let valid: Vec<Value> = (0..50).map(|i| login_event(&format!("cust-{i}"))).collect();
    h.broker.publish_events(&valid).await;

    let started = Instant::now();
    let mut settings = h.settings();
    settings.broker.reconnect = ticket_worker::config::RECONNECT_PAUSES;
    let worker = TestWorker::spawn(settings);
    let ready = h.tap.wait_for("ticket.ready", 50, SETTLE).await;
    let took = started.elapsed();
    let dlq = h.broker.topology.dead_letter_queue.clone();
    eventually(SETTLE, "RabbitMQ dead-letters the landmine", || async {
        (h.broker.ready_count(&dlq).await == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.broker.ready_count(&dlq).await,
        1,
        "no valid event was dead-lettered by the delivery limit"
    );
    let ids: HashSet<&str> = ready
        .iter()
        .filter_map(|e| e.body["eventID"].as_str())
        .collect();
    assert_eq!(ids.len(), 50);
    assert!(!ids.contains(id), "the landmine itself could not be read");
    assert_eq!(h.db.count().await, 50);
    assert_eq!(h.broker.ready_count(&h.broker.topology.work_queue).await, 0);
    let sessions = worker.stats().sessions;
    assert!(sessions > 1 && sessions <= 26, "sessions: {sessions}");
    // Once the returned messages were through, full speed again.
    h.broker.publish_events(&[login_event("cust-after")]).await;
    h.tap.wait_for("ticket.ready", 51, SETTLE).await;
    let queue = h.broker.topology.work_queue.clone();
    eventually(
        SETTLE,
        "the worker consuming at its full prefetch",
        || async { (consumer_prefetch_counts(&queue) == [32]).then_some(()) },
    )
    .await;
    worker.stop().await;
    println!(
        "scenario oversized-redelivery: 1 message too large to receive on redelivery, 50 events; outcome: 50 tickets in {took:.1?}, {sessions} RabbitMQ sessions, the landmine dead-lettered by RabbitMQ's delivery limit, no valid event spent"
    );
}

#[tokio::test]
async fn a_stored_ticket_is_announced_even_when_rabbitmq_dead_letters_its_login_event() {
    // A delivery limit of 0: RabbitMQ dead-letters a login event the first
    // time it comes back unacknowledged.
    let db = TestDb::migrated().await;
    let broker = TestBroker::with_delivery_limit(0).await;
    let taptalk = fake_taptalk(Knobs {
        latency: Duration::from_millis(300),
        ..Knobs::default()
    })
    .await;
    let tap = broker.tap().await;
    let h = Harness {
        db,
        broker,
        taptalk,
        tap,
    };
    // The worker reaches RabbitMQ through a link that freezes mid-flight:
    // tickets are stored, but their ticket.ready and the acks never arrive.
    // Then the link drops, and the worker stops.
    let link = FreezableProxy::start("127.0.0.1:5672".parse().expect("addr")).await;
    let mut settings = h.settings();
    settings.broker.amqp_url = secrecy::SecretString::from(link.amqp_url());
    settings.limit =
        ticket_worker::taptalk::LimitSettings::fixed(std::num::NonZeroUsize::new(8).expect("8"));
    settings.shutdown_grace = Duration::from_millis(500);
    let worker = TestWorker::spawn(settings);
    let events: Vec<Value> = (0..100)
        .map(|i| login_event(&format!("cust-{i}")))
        .collect();
    h.broker.publish_events(&events).await;
    eventually(SETTLE, "work under way", || async {
        (h.db.count().await >= 10).then_some(())
    })
    .await;
    link.freeze();
    let at_freeze = h.db.count().await;
    assert!(
        at_freeze < 90,
        "the link froze mid-flight ({at_freeze} stored)"
    );
    eventually(SETTLE, "tickets stored behind the frozen link", || async {
        (h.db.count().await > at_freeze).then_some(())
    })
    .await;
    // Every permit ends up with a stored ticket waiting for its confirm.
    tokio::time::sleep(Duration::from_secs(1)).await;
    link.cut();
    worker.stop().await;
    let stored: HashSet<String> = sqlx::query_scalar("SELECT event_id FROM auth_tickets")
        .fetch_all(&h.db.pool)
        .await
        .expect("rows")
        .into_iter()
        .collect();
    let dlq = h.broker.topology.dead_letter_queue.clone();
    eventually(
        SETTLE,
        "RabbitMQ dead-letters what the worker held",
        || async { (h.broker.ready_count(&dlq).await > 0).then_some(()) },
    )
    .await;

    // A new worker: the login events of the stored tickets are dead letters
    // now, yet every stored ticket is announced, from the outbox; the events
    // never delivered before are processed as usual.
    let relay = h.worker();
    eventually(SETTLE, "every stored ticket announced", || async {
        let announced: HashSet<String> = h
            .tap
            .ready()
            .iter()
            .filter_map(|e| e.body["eventID"].as_str().map(str::to_owned))
            .collect();
        stored.is_subset(&announced).then_some(())
    })
    .await;
    eventually(SETTLE, "the work queue drained", || async {
        (h.broker.ready_count(&h.broker.topology.work_queue).await == 0).then_some(())
    })
    .await;
    let store = TicketStore::from_pool(h.db.pool.clone());
    eventually(SETTLE, "the outbox empties", || async {
        (store.pending_announcements().await.ok()? == 0).then_some(())
    })
    .await;
    relay.stop().await;
    let stored_now: HashSet<String> = sqlx::query_scalar("SELECT event_id FROM auth_tickets")
        .fetch_all(&h.db.pool)
        .await
        .expect("rows")
        .into_iter()
        .collect();
    let announced: HashSet<String> = h
        .tap
        .ready()
        .iter()
        .filter_map(|e| e.body["eventID"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        announced, stored_now,
        "exactly the stored tickets are announced"
    );
    let dead = h.broker.all_dead_letters().await;
    let dead_ids: HashSet<String> = dead
        .iter()
        .filter_map(|d| d.properties.message_id().as_ref().map(|m| m.to_string()))
        .collect();
    let all: HashSet<String> = events
        .iter()
        .filter_map(|e| e["eventID"].as_str().map(str::to_owned))
        .collect();
    assert!(
        all.iter()
            .all(|id| stored_now.contains(id) || dead_ids.contains(id)),
        "every event has its ticket or is a dead letter"
    );
    let stranded = stored.intersection(&dead_ids).count();
    assert!(stranded > 0, "some stored tickets lost their login event");
    println!(
        "scenario lost-deliveries: 100 events; faults: the link to RabbitMQ froze with tickets stored but not announced, then dropped, delivery limit 0; \
         outcome: {} tickets stored before the link dropped, {} login events dead-lettered by RabbitMQ ({stranded} of them with a stored ticket, announced by the relay), {} tickets in all, each announced",
        stored.len(),
        dead_ids.len(),
        stored_now.len()
    );
}

#[tokio::test]
async fn with_nobody_listening_for_ticket_events_each_dead_letter_is_sent_once() {
    // No tap: every ticket.failed is unroutable, and RabbitMQ returns it.
    let db = TestDb::create().await;
    let broker = TestBroker::new().await;
    let taptalk = fake_taptalk(Knobs::default()).await;
    let worker = TestWorker::spawn(settings(&db, &broker, taptalk.base_url()));
    let mut invalid = Vec::new();
    for i in 0..100 {
        let mut event = login_event(&format!("cust-{i}"));
        event["userPlatform"] = json!("windows");
        invalid.push(event);
    }
    broker.publish_events(&invalid).await;
    let dead = broker.wait_for_dead_letters(100, SETTLE).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dead = dead.len() + broker.drain_dead_letters().await.len();
    assert_eq!(dead, 100, "one dead letter per invalid event");
    assert_eq!(
        worker.stats().requeued,
        0,
        "no copy was taken for unroutable"
    );
    assert_eq!(broker.ready_count(&broker.topology.work_queue).await, 0);
    worker.stop().await;
}

/// Postgres stops answering on the connections the worker holds, as when a
/// peer vanishes without closing (a half-open connection), or a statement
/// waits on a lock for ever. No statement may hold its events, or the events
/// batched behind it, beyond its deadline: they are retried on fresh
/// connections, and every one gets its ticket.
#[tokio::test]
async fn a_postgres_that_stops_answering_holds_no_delivery_beyond_its_deadline() {
    let h = Harness::new(Knobs::default()).await;
    let proxy = FreezableProxy::start("127.0.0.1:5432".parse().expect("addr")).await;
    let mut settings = h.settings();
    let mut url = url::Url::parse(&h.db.url).expect("database URL");
    let _ = url.set_port(Some(proxy.port));
    settings.database.url = secrecy::SecretString::from(url.to_string());
    // The outage is not the question here: retry through it.
    settings.breaker.trip_after = Duration::from_secs(3600);
    let worker = TestWorker::spawn(settings);
    let warm: Vec<Value> = (0..20).map(|i| login_event(&format!("warm-{i}"))).collect();
    h.broker.publish_events(&warm).await;
    h.tap.wait_for("ticket.ready", warm.len(), SETTLE).await;

    // Every pooled connection goes silent, for good.
    proxy.stall_open_links();
    let after: Vec<Value> = (0..20)
        .map(|i| login_event(&format!("after-{i}")))
        .collect();
    h.broker.publish_events(&after).await;
    let wanted: HashSet<String> = after
        .iter()
        .filter_map(|e| e["eventID"].as_str().map(str::to_owned))
        .collect();
    eventually(
        Duration::from_secs(90),
        "every event after the stall is ready",
        || async {
            let ready: HashSet<String> = h
                .tap
                .ready()
                .iter()
                .filter_map(|r| r.body["eventID"].as_str().map(str::to_owned))
                .collect();
            wanted.is_subset(&ready).then_some(())
        },
    )
    .await;
    assert_eq!(h.db.count().await, (warm.len() + after.len()) as i64);
    worker.stop().await;
}
