//! `ticket-worker dlq list` and `dlq replay` against the real services: the
//! binary itself, dead letters a worker made (running in-process), and the
//! TapTalk stand-in over HTTP.

use crate::support::*;
use clap::Parser;
use fake_taptalk::Knobs;
use lapin::options::{BasicGetOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use ticket_worker::broker::dead_letters::Browser;
use ticket_worker::commands::dlq::{DlqCommand, Interrupt, ReplayArgs};
use ticket_worker::commands::{Cli, Command};

const WAIT: Duration = Duration::from_secs(60);

/// What one run of the binary printed, and how it ended.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// The environment `dlq` needs to reach this test's services.
fn dlq_env(h: &Harness) -> Vec<(&'static str, String)> {
    worker_env(&h.db.url, &h.broker, &h.taptalk.base_url(), "tw-dlq-test")
}

/// Runs `ticket-worker dlq <args>` (without blocking the in-process worker).
async fn dlq(env: &[(&'static str, String)], args: &[&str]) -> Ran {
    let mut command = bin();
    command
        .arg("dlq")
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let output = tokio::process::Command::from(command)
        .output()
        .await
        .expect("run ticket-worker dlq");
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `dlq <args>`, which must succeed.
async fn dlq_ok(env: &[(&'static str, String)], args: &[&str]) -> Ran {
    let ran = dlq(env, args).await;
    assert_eq!(
        ran.code, 0,
        "dlq {args:?} failed:\n{}\n{}",
        ran.stdout, ran.stderr
    );
    ran
}

/// `reason → count` of a `dlq list --json`.
fn counts(listing: &Value) -> BTreeMap<String, u64> {
    listing["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| {
            let reason = r["reason"].as_str().expect("reason").to_owned();
            (reason, r["count"].as_u64().expect("count"))
        })
        .collect()
}

/// The eventIDs of the samples of `reason`, in queue order.
fn sample_ids(listing: &Value, reason: &str) -> Vec<String> {
    listing["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter(|r| r["reason"] == reason)
        .flat_map(|r| r["samples"].as_array().cloned().unwrap_or_default())
        .map(|s| s["eventID"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn id_of(event: &Value) -> String {
    event["eventID"].as_str().expect("eventID").to_owned()
}

/// A worker that gives an event up after 2 rounds back to the queue.
fn impatient_worker(h: &Harness) -> TestWorker {
    let mut settings = h.settings();
    settings.taptalk.retry.give_up_after = Some(Duration::from_millis(200));
    settings.max_requeues = Some(2);
    // Others succeed meanwhile, but on a slow machine the failing events'
    // last rounds could be alone: never count them as an outage.
    settings.breaker.trip_after = Duration::from_secs(3600);
    TestWorker::spawn(settings)
}

async fn consuming(worker: &TestWorker) {
    eventually(WAIT, "the worker is consuming", || async {
        (worker.stats().sessions == 1).then_some(())
    })
    .await;
}

/// Waits until the dead-letter queue holds exactly `n` messages.
async fn dead_letters_settle_at(h: &Harness, n: u32) {
    let queue = h.broker.topology.dead_letter_queue.clone();
    eventually(WAIT, &format!("{n} dead letters"), || async {
        (h.broker.ready_count(&queue).await == n).then_some(())
    })
    .await;
}

async fn tickets_of(h: &Harness, event_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM auth_tickets WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(&h.db.pool)
        .await
        .expect("count tickets")
}

/// The stand-in fails for these users only.
fn failing_for(users: &[String]) -> Knobs {
    Knobs {
        unavailable_for: users.to_vec(),
        ..Knobs::default()
    }
}

/// Publishes events for `unlucky` users (which the stand-in fails for) and
/// `lucky` ones, and waits until the unlucky ones are dead letters
/// (`retries_exhausted`) and the lucky ones have tickets.
async fn exhaust(h: &Harness, unlucky: &[String], lucky: usize) -> Vec<Value> {
    let failing: Vec<Value> = unlucky.iter().map(|u| login_event(u)).collect();
    let fine: Vec<Value> = (0..lucky)
        .map(|i| login_event(&format!("cust-lucky-{i}")))
        .collect();
    h.broker
        .publish_events(&[failing.clone(), fine].concat())
        .await;
    let failed = h.tap.wait_for("ticket.failed", failing.len(), WAIT).await;
    assert!(
        failed
            .iter()
            .all(|f| f.body["reason"] == "retries_exhausted")
    );
    h.tap.wait_for("ticket.ready", lucky, WAIT).await;
    dead_letters_settle_at(h, failing.len() as u32).await;
    failing
}

#[tokio::test]
async fn exhausted_events_are_listed_and_a_replay_turns_each_into_exactly_one_ticket() {
    let unlucky: Vec<String> = (0..3).map(|i| format!("cust-unlucky-{i}")).collect();
    let h = Harness::new(failing_for(&unlucky)).await;
    let worker = impatient_worker(&h);
    consuming(&worker).await;
    let failing = exhaust(&h, &unlucky, 5).await;
    let env = dlq_env(&h);

    let listing = dlq_ok(&env, &["list", "--json"]).await.json();
    assert_eq!(listing["total"], 3);
    assert_eq!(
        counts(&listing),
        BTreeMap::from([("retries_exhausted".to_owned(), 3)])
    );
    let mut sampled = sample_ids(&listing, "retries_exhausted");
    let mut expected: Vec<String> = failing.iter().map(id_of).collect();
    sampled.sort();
    expected.sort();
    assert_eq!(sampled, expected, "three samples by default: these three");
    let text = dlq_ok(&env, &["list"]).await.stdout;
    assert!(text.contains("retries_exhausted"), "{text}");
    assert!(text.contains("no ticket after 3 rounds"), "{text}");

    // TapTalk is fixed.
    h.taptalk.set_knobs(Knobs::default());
    let ran = dlq_ok(&env, &["replay", "--reason", "retries_exhausted"]).await;
    assert!(
        ran.stdout.starts_with("replayed 3 dead letters from test."),
        "{}",
        ran.stdout
    );
    assert_eq!(
        ran.stdout
            .matches("cleared its recorded retries_exhausted failure")
            .count(),
        3,
        "{}",
        ran.stdout
    );

    let ready = h.tap.wait_for("ticket.ready", 8, WAIT).await;
    for id in &expected {
        assert!(
            ready.iter().any(|r| r.body["eventID"] == id.as_str()),
            "{id} is ready"
        );
        assert_eq!(tickets_of(&h, id).await, 1, "{id}: exactly one ticket");
    }
    dead_letters_settle_at(&h, 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.broker
            .ready_count(&h.broker.topology.dead_letter_queue)
            .await,
        0,
        "no replay came back as a dead letter"
    );
    let issued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_outcomes WHERE event_id = ANY($1) AND outcome = 'issued'",
    )
    .bind(&expected)
    .fetch_one(&h.db.pool)
    .await
    .expect("outcomes");
    assert_eq!(issued, 3, "the recorded failures gave way to the tickets");
    assert_eq!(h.db.count().await, 8);
    worker.stop().await;
}

#[tokio::test]
async fn replaying_one_invalid_dead_letter_leaves_the_others_in_place_and_in_order() {
    let h = Harness::new(Knobs::default()).await;
    let worker = h.worker();
    consuming(&worker).await;
    let mut events = Vec::new();
    for i in 0..3 {
        let mut event = login_event(&format!("cust-beos-{i}"));
        event["userPlatform"] = json!("beos");
        let mut headers = FieldTable::default();
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(format!("00-trace-{i}-01").into()),
        );
        let properties = json_properties()
            .with_message_id(id_of(&event).as_str().into())
            .with_headers(headers);
        h.broker
            .publish_raw(event.to_string().as_bytes(), properties)
            .await;
        events.push(event);
    }
    dead_letters_settle_at(&h, 3).await;
    // Nothing consumes the replay: it stays in the work queue for a look.
    worker.stop().await;
    let env = dlq_env(&h);
    let listing = dlq_ok(&env, &["list", "--json", "--samples", "10"])
        .await
        .json();
    let order = sample_ids(&listing, "invalid");
    assert_eq!(order.len(), 3);
    assert_eq!(
        listing["reasons"][0]["problems"],
        json!({"invalid_field": 3})
    );

    let report = dlq_ok(
        &env,
        &["replay", "--reason", "invalid", "--limit", "1", "--json"],
    )
    .await
    .json();
    assert_eq!(
        report["reasons"],
        json!([{"reason": "invalid", "replayed": 1, "skipped": 2, "failed": 0}])
    );
    assert_eq!(report["letters"].as_array().map(Vec::len), Some(1));
    assert_eq!(report["letters"][0]["eventID"], order[0].as_str());

    // The replay: the original body and properties, as first published.
    let replay = h
        .broker
        .channel
        .basic_get(
            h.broker.topology.work_queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
        .expect("the replay is in the work queue")
        .delivery;
    let original = events
        .iter()
        .find(|e| id_of(e) == order[0])
        .expect("the replayed event");
    assert_eq!(replay.data, original.to_string().into_bytes());
    assert_eq!(replay.routing_key.as_str(), "login");
    assert_eq!(replay.exchange.as_str(), h.broker.topology.login_exchange);
    assert_eq!(
        replay
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        Some(order[0].clone())
    );
    assert_eq!(replay.properties.user_id(), &None);
    let headers = replay.properties.headers().clone().unwrap_or_default();
    // (RabbitMQ adds x-delivery-count to every delivery from a quorum queue.)
    let names: Vec<String> = headers
        .inner()
        .keys()
        .map(|k| k.to_string())
        .filter(|k| k != "x-delivery-count")
        .collect();
    assert!(
        matches!(
            headers.inner().get("x-delivery-count"),
            None | Some(AMQPValue::LongLongInt(0))
        ),
        "delivered for the first time: the dead letter's count did not come along"
    );
    assert_eq!(
        names,
        vec!["traceparent".to_owned()],
        "the publisher's header and nothing of the dead letter"
    );

    let left: Vec<String> = h
        .broker
        .drain_dead_letters()
        .await
        .iter()
        .map(|d| header(d, "x-ticket-worker-reason").unwrap_or_default() + " " + &message_id(d))
        .collect();
    assert_eq!(
        left,
        vec![
            format!("invalid {}", order[1]),
            format!("invalid {}", order[2])
        ],
        "the other two stay, in their order"
    );
}

fn message_id(delivery: &lapin::message::Delivery) -> String {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default()
}

/// Values that must never appear in any `dlq` output.
const PERSONAL: [(&str, &str); 12] = [
    ("fullName", "Zebulon Quixote-Marsh"),
    ("email", "zebulon.q@mailbox.example"),
    ("phone", "+6281299887766"),
    ("userIPAddress", "198.51.100.77"),
    ("userAgent", "SecretAgent/9.9 (Zebulon; \"quoted\")"),
    ("userDeviceID", "device-zq-7781"),
    ("xcUserID", "cust-zq-5521"),
    ("username", "zebq-handle"),
    ("photoThumbnailURL", "https://photos.example/zq-thumb.png"),
    ("photoFullsizeURL", "https://photos.example/zq-full.png"),
    ("userRoleCode", "role-zq-admin"),
    ("apiToken", "tok-zq-99812-secret"),
];

/// A login event carrying every value of [`PERSONAL`].
fn personal_event() -> Value {
    let mut event = login_event("unused");
    for (key, value) in PERSONAL {
        event[key] = json!(value);
    }
    event
}

/// Dead letters of every kind: invalid (a field; not JSON), rejected by
/// upstream, retries exhausted (while `unlucky` fails), and one RabbitMQ
/// dead-lettered itself (rejected by a consumer). Returns how many.
async fn every_kind_of_dead_letter(h: &Harness) -> u32 {
    let worker = impatient_worker(h);
    consuming(&worker).await;

    let mut invalid = personal_event();
    invalid["userPlatform"] = json!("beos");
    let mut rejected = personal_event();
    rejected["email"] = json!("zq-not-an-email");
    let mut exhausted = personal_event();
    exhausted["xcUserID"] = json!("cust-zq-unlucky");
    h.taptalk
        .set_knobs(failing_for(&["cust-zq-unlucky".to_owned()]));
    h.broker
        .publish_events(&[invalid, rejected, exhausted])
        .await;
    let not_json = format!("fullName={}&secret=zq-blob-3141", PERSONAL[0].1);
    h.broker
        .publish_raw(
            not_json.as_bytes(),
            json_properties().with_message_id("not-json-1".into()),
        )
        .await;
    dead_letters_settle_at(h, 4).await;
    worker.stop().await;

    // With nobody consuming, a consumer takes one and rejects it.
    h.broker.publish_event(&personal_event()).await;
    let taken = h
        .broker
        .channel
        .basic_get(
            h.broker.topology.work_queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .expect("basic.get")
        .expect("the event is in the work queue");
    taken
        .delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    dead_letters_settle_at(h, 5).await;
    5
}

#[tokio::test]
async fn listing_twice_gives_the_same_answer_and_consumes_nothing() {
    let h = Harness::new(Knobs::default()).await;
    let n = every_kind_of_dead_letter(&h).await;
    let env = dlq_env(&h);
    let dead = h.broker.topology.dead_letter_queue.clone();
    let first = dlq_ok(&env, &["list", "--json", "--samples", "100"])
        .await
        .json();
    // Counted again by the time the command is done.
    assert_eq!(h.broker.ready_count(&dead).await, n, "all there");
    let second = dlq_ok(&env, &["list", "--json", "--samples", "100"])
        .await
        .json();
    assert_eq!(h.broker.ready_count(&dead).await, n, "still all there");
    assert_eq!(first["total"], u64::from(n));
    assert_eq!(
        counts(&first),
        BTreeMap::from([
            ("invalid".to_owned(), 2),
            ("rejected".to_owned(), 1),
            ("rejected_by_upstream".to_owned(), 1),
            ("retries_exhausted".to_owned(), 1),
        ])
    );
    assert_eq!(counts(&first), counts(&second));
    let problems = first["reasons"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["reason"] == "invalid"))
        .map(|r| r["problems"].clone());
    assert_eq!(problems, Some(json!({"invalid_field": 1, "not_json": 1})));
    let by_rabbitmq = first["reasons"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["reason"] == "rejected"))
        .map(|r| r["deadLetteredBy"].clone());
    assert_eq!(by_rabbitmq, Some(json!("rabbitmq")));
    for reason in [
        "invalid",
        "rejected",
        "rejected_by_upstream",
        "retries_exhausted",
    ] {
        assert_eq!(
            sample_ids(&first, reason),
            sample_ids(&second, reason),
            "{reason}: the same order both times"
        );
    }
    // And the queue itself still holds them in that order.
    let drained = h.broker.drain_dead_letters().await;
    assert_eq!(drained.len() as u32, n);
    let invalid_order: Vec<String> = drained
        .iter()
        .filter(|d| header(d, "x-ticket-worker-reason").as_deref() == Some("invalid"))
        .map(message_id)
        .collect();
    assert_eq!(invalid_order, sample_ids(&first, "invalid"));
}

#[tokio::test]
async fn what_dlq_prints_holds_none_of_the_personal_values_it_was_given() {
    let h = Harness::new(Knobs::default()).await;
    every_kind_of_dead_letter(&h).await;
    let env = dlq_env(&h);
    let outputs = [
        dlq_ok(&env, &["list", "--samples", "100"]).await,
        dlq_ok(&env, &["list", "--json", "--samples", "100"]).await,
        dlq_ok(&env, &["replay", "--all", "--dry-run"]).await,
        dlq_ok(&env, &["replay", "--all", "--dry-run", "--json"]).await,
    ];
    let mut forbidden: Vec<String> = PERSONAL.iter().map(|(_, v)| v.to_string()).collect();
    forbidden.push("zq-not-an-email".into());
    forbidden.push("cust-zq-unlucky".into());
    forbidden.push("zq-blob-3141".into());
    for value in forbidden.clone() {
        // As JSON writes it (quotes and slashes escaped, non-ASCII as is).
        let escaped = serde_json::to_string(&value).expect("encode");
        forbidden.push(escaped.trim_matches('"').to_owned());
    }
    for ran in &outputs {
        let all = format!("{}{}", ran.stdout, ran.stderr);
        for value in &forbidden {
            assert!(!all.contains(value.as_str()), "{value:?} in:\n{all}");
        }
    }
    // The keys are all there, with a trace of their values.
    let text = &outputs[0].stdout;
    for (key, _) in PERSONAL {
        assert!(text.contains(&format!("\"{key}\":")), "{key} in {text}");
    }
    assert!(text.contains("\"fullName\":\"Z… (21 chars)\""), "{text}");
    assert!(text.contains("(not JSON, "), "{text}");
}

#[tokio::test]
async fn a_replay_without_a_selector_exits_2_and_names_the_flags() {
    let h = Harness::new(Knobs::default()).await;
    let env = dlq_env(&h);
    let ran = dlq(&env, &["replay"]).await;
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    for flag in ["--reason", "--limit", "--all"] {
        assert!(ran.stderr.contains(flag), "{flag} in {}", ran.stderr);
    }
    let chosen = replay_args(
        &h,
        &[
            "--reason",
            "invalid,retries_exhausted",
            "--reason",
            "rejected",
        ],
    );
    assert_eq!(
        chosen.selection.reason,
        vec!["invalid", "retries_exhausted", "rejected"],
        "repeatable, and comma lists"
    );
    let ran = dlq(&env, &["replay", "--reason", "retries-exhausted"]).await;
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("retries_exhausted"), "{}", ran.stderr);

    // With nothing set, every problem at once.
    let ran = dlq(&[], &["replay"]).await;
    assert_eq!(ran.code, 2);
    for setting in ["AMQP_URL", "DATABASE_URL", "--reason, --limit or --all"] {
        assert!(ran.stderr.contains(setting), "{setting} in {}", ran.stderr);
    }
    let ran = dlq(&[], &["list"]).await;
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("AMQP_URL"), "{}", ran.stderr);
}

/// `dlq replay <args>` parsed as the binary would, with every setting a flag.
fn replay_args(h: &Harness, args: &[&str]) -> ReplayArgs {
    let t = &h.broker.topology;
    let mut line: Vec<String> = ["ticket-worker", "dlq", "replay"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    line.extend(args.iter().map(|s| s.to_string()));
    for (flag, value) in [
        ("--amqp-url", amqp_url()),
        ("--database-url", h.db.url.clone()),
        ("--login-exchange", t.login_exchange.clone()),
        ("--work-queue", t.work_queue.clone()),
        ("--dead-letter-exchange", t.dead_letter_exchange.clone()),
        ("--dead-letter-queue", t.dead_letter_queue.clone()),
        ("--ticket-exchange", t.ticket_exchange.clone()),
    ] {
        line.push(flag.to_owned());
        line.push(value);
    }
    let cli = Cli::try_parse_from(line).expect("parse dlq replay");
    match cli.command {
        Command::Dlq(dlq) => match dlq.command {
            DlqCommand::Replay(args) => *args,
            DlqCommand::List(_) => panic!("not replay"),
        },
        _ => panic!("not dlq"),
    }
}

#[tokio::test]
async fn a_replay_interrupted_before_the_ack_is_repeated_and_still_ends_in_one_ticket() {
    let unlucky = vec!["cust-interrupted".to_owned()];
    let h = Harness::new(failing_for(&unlucky)).await;
    let worker = impatient_worker(&h);
    consuming(&worker).await;
    let failing = exhaust(&h, &unlucky, 2).await;
    let id = id_of(&failing[0]);
    h.taptalk.set_knobs(Knobs::default());

    // Dies right after the replay is confirmed, before the dead letter is removed.
    let args = replay_args(&h, &["--reason", "retries_exhausted"]);
    let interrupted =
        ticket_worker::commands::dlq::replay::replay(&args, Interrupt::AfterPublishing(1)).await;
    assert!(interrupted.is_err(), "the hook stopped it");
    let ready = h.tap.wait_for("ticket.ready", 3, WAIT).await;
    assert!(ready.iter().any(|r| r.body["eventID"] == id.as_str()));
    assert_eq!(tickets_of(&h, &id).await, 1);
    dead_letters_settle_at(&h, 1).await;

    // The second run replays it again: the event has its ticket by now,
    // which the worker announces once more; nothing else changes.
    let report = dlq_ok(
        &dlq_env(&h),
        &["replay", "--reason", "retries_exhausted", "--json"],
    )
    .await
    .json();
    assert_eq!(report["letters"][0]["eventID"], id.as_str());
    assert_eq!(report["letters"][0]["result"], "replayed");
    assert_eq!(
        report["letters"][0]["note"],
        "already has a ticket: the worker announces it again"
    );
    let ready = h.tap.wait_for("ticket.ready", 4, WAIT).await;
    let of_event: Vec<&SeenEvent> = ready
        .iter()
        .filter(|r| r.body["eventID"] == id.as_str())
        .collect();
    assert_eq!(of_event.len(), 2);
    assert_eq!(
        of_event[0].body, of_event[1].body,
        "the same ticket, announced again"
    );
    dead_letters_settle_at(&h, 0).await;
    assert_eq!(tickets_of(&h, &id).await, 1, "still exactly one ticket");
    worker.stop().await;
}

#[tokio::test]
async fn a_rejected_event_replayed_goes_to_taptalk_again() {
    let h = Harness::new(Knobs::default()).await;
    let worker = h.worker();
    consuming(&worker).await;
    let mut event = login_event("cust-bad-email");
    event["email"] = json!("not-an-email");
    h.broker.publish_event(&event).await;
    h.tap.wait_for("ticket.failed", 1, WAIT).await;
    dead_letters_settle_at(&h, 1).await;
    let asked = h.taptalk.stats().param_rejections;

    let ran = dlq_ok(
        &dlq_env(&h),
        &["replay", "--reason", "rejected_by_upstream"],
    )
    .await;
    assert!(
        ran.stdout
            .contains("cleared its recorded rejected_by_upstream failure"),
        "{}",
        ran.stdout
    );
    // Still wrong upstream: asked once more, refused, dead-lettered once more.
    let failed = h.tap.wait_for("ticket.failed", 2, WAIT).await;
    assert!(
        failed
            .iter()
            .all(|f| f.body["reason"] == "rejected_by_upstream")
    );
    assert_eq!(h.taptalk.stats().param_rejections, asked + 1);
    dead_letters_settle_at(&h, 1).await;
    let dead = h.broker.drain_dead_letters().await;
    assert_eq!(
        header(&dead[0], "x-ticket-worker-reason").as_deref(),
        Some("rejected_by_upstream")
    );
    worker.stop().await;
}

/// The RabbitMQ user the tests (and their workers) log in as.
fn test_user() -> String {
    url::Url::parse(&amqp_url())
        .map(|u| u.username().to_owned())
        .unwrap_or_default()
}

/// Publishes a dead letter as the worker would have, for `event_id`: with
/// its `user_id`, the user the test workers log in as.
async fn worker_dead_letter(h: &Harness, event: &Value, reason: &str) {
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("x-ticket-worker-reason", reason),
        (
            "x-ticket-worker-error",
            "no ticket after 3 rounds of retries",
        ),
        (
            "x-original-exchange",
            h.broker.topology.login_exchange.as_str(),
        ),
        ("x-original-routing-key", "login"),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    h.broker
        .channel
        .basic_publish(
            h.broker.topology.dead_letter_exchange.as_str().into(),
            "login".into(),
            BasicPublishOptions::default(),
            event.to_string().as_bytes(),
            json_properties()
                .with_message_id(id_of(event).as_str().into())
                .with_user_id(test_user().as_str().into())
                .with_headers(headers),
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");
}

#[tokio::test]
async fn messages_arriving_while_the_queue_is_read_are_neither_counted_nor_lost() {
    let h = Harness::new(Knobs::default()).await;
    let queue = h.broker.topology.dead_letter_queue.clone();
    let old: Vec<Value> = (0..3)
        .map(|i| login_event(&format!("cust-old-{i}")))
        .collect();
    for event in &old {
        worker_dead_letter(&h, event, "invalid").await;
    }
    dead_letters_settle_at(&h, 3).await;

    let mut browser = Browser::open(&h.broker.connection, &queue)
        .await
        .expect("open the dead-letter queue");
    assert_eq!(browser.left(), 3);
    let mut read = Vec::new();
    let first = browser.next().await.expect("read").expect("a dead letter");
    read.push(message_id(&first));
    let late = login_event("cust-late");
    worker_dead_letter(&h, &late, "invalid").await;
    while let Some(delivery) = browser.next().await.expect("read") {
        read.push(message_id(&delivery));
    }
    assert_eq!(
        read,
        old.iter().map(id_of).collect::<Vec<_>>(),
        "what was there at the start, once each, in order; not the late one"
    );
    browser.give_back().await.expect("give back");

    dead_letters_settle_at(&h, 4).await;
    let drained: Vec<String> = h
        .broker
        .drain_dead_letters()
        .await
        .iter()
        .map(message_id)
        .collect();
    let kept: Vec<String> = drained
        .iter()
        .filter(|id| **id != id_of(&late))
        .cloned()
        .collect();
    assert_eq!(kept, read, "given back in their order");
    assert!(drained.contains(&id_of(&late)), "the late one is there too");
}

#[tokio::test]
async fn a_replay_clears_the_failure_and_its_unannounced_event_but_never_touches_a_ticket() {
    let h = Harness::new(Knobs::default()).await;
    ticket_worker::storage::MIGRATOR
        .run(&h.db.pool)
        .await
        .expect("migrate");
    let failed = login_event("cust-failed");
    let ticketed = login_event("cust-ticketed");
    let (failed_id, ticketed_id) = (id_of(&failed), id_of(&ticketed));
    // A failure whose ticket.failed was never announced (the worker died),
    // and an event with a ticket that, against every rule, also has a
    // recorded failure: replay must leave that one alone.
    sqlx::query(
        "INSERT INTO event_outcomes (event_id, outcome, reason, message)
         VALUES ($1, 'failed', 'retries_exhausted', 'gave up'), ($2, 'failed', 'retries_exhausted', 'gave up')",
    )
    .bind(&failed_id)
    .bind(&ticketed_id)
    .execute(&h.db.pool)
    .await
    .expect("outcomes");
    sqlx::query(
        "INSERT INTO ticket_event_outbox (event_id, routing_key, body) VALUES ($1, 'ticket.failed', '{}')",
    )
    .bind(&failed_id)
    .execute(&h.db.pool)
    .await
    .expect("outbox");
    sqlx::query(
        "INSERT INTO auth_tickets (event_id, xc_user_id, user_id, user_device_id, user_platform, ticket, issued_at, expires_at)
         VALUES ($1, 'cust-ticketed', 'tt-1', 'd-1', 'ios', 'TICKET-never-shown', now(), now() + interval '1 hour')",
    )
    .bind(&ticketed_id)
    .execute(&h.db.pool)
    .await
    .expect("ticket");
    worker_dead_letter(&h, &failed, "retries_exhausted").await;
    worker_dead_letter(&h, &ticketed, "retries_exhausted").await;
    dead_letters_settle_at(&h, 2).await;
    let env = dlq_env(&h);

    let dry = dlq_ok(&env, &["replay", "--all", "--dry-run"]).await.stdout;
    assert!(dry.starts_with("would replay 2 dead letters"), "{dry}");
    assert!(
        dry.contains(&format!("{failed_id}  retries_exhausted: would replay; would clear its recorded retries_exhausted failure")),
        "{dry}"
    );
    assert!(
        dry.contains(&format!(
            "{ticketed_id}  retries_exhausted: would replay; already has a ticket"
        )),
        "{dry}"
    );
    assert!(!dry.contains("TICKET-never-shown"));
    dead_letters_settle_at(&h, 2).await;
    let outcomes: i64 = sqlx::query_scalar("SELECT count(*) FROM event_outcomes")
        .fetch_one(&h.db.pool)
        .await
        .expect("count");
    assert_eq!(outcomes, 2, "a dry run changes nothing");

    let ran = dlq_ok(&env, &["replay", "--reason", "retries_exhausted"]).await;
    assert!(
        ran.stdout.contains(&format!(
            "{failed_id}  retries_exhausted: replayed; cleared its recorded retries_exhausted failure, and its ticket.failed not yet announced"
        )),
        "{}",
        ran.stdout
    );
    let left: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT event_id, reason FROM event_outcomes")
            .fetch_all(&h.db.pool)
            .await
            .expect("outcomes");
    assert_eq!(
        left,
        vec![(ticketed_id.clone(), Some("retries_exhausted".into()))],
        "only the ticketed event keeps its row"
    );
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM ticket_event_outbox")
        .fetch_one(&h.db.pool)
        .await
        .expect("count");
    assert_eq!(outbox, 0);
    assert_eq!(tickets_of(&h, &ticketed_id).await, 1);
    dead_letters_settle_at(&h, 0).await;
    assert_eq!(
        h.broker.ready_count(&h.broker.topology.work_queue).await,
        2,
        "both replays wait in the work queue"
    );
}

// ------------------------------------------------------- forged dead letters

/// What a hostile publisher writes into a message it lets RabbitMQ
/// dead-letter (its TTL runs out): the worker's headers, terminal escape
/// codes, newlines, another routing key and user.
fn forged_headers() -> FieldTable {
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("x-ticket-worker-reason", "rejected_by_upstream"),
        (
            "x-ticket-worker-error",
            "\u{1b}[2J\u{1b}[H\u{1b}[32mALL CLEAR\u{1b}[0m: nothing to see",
        ),
        ("x-ticket-worker-problem", "invalid_field\nALL CLEAR"),
        ("x-ticket-worker-field", "email\r\nALL CLEAR"),
        ("x-original-routing-key", "attacker.key"),
        ("x-original-user-id", "guest"),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    headers
}

/// A valid event TapTalk refuses (`ParamValidationFailed`: the stand-in
/// wants a dotted e-mail domain), for `user`.
fn refused_upstream(user: &str) -> Value {
    let mut event = login_event(user);
    event["email"] = json!("ana@nodot");
    event
}

/// The attacker's copy of `event`: same eventID, the attacker's data, which
/// TapTalk would accept.
fn attackers_copy(event: &Value) -> Value {
    let mut copy = login_event("cust-attacker");
    copy["eventID"] = event["eventID"].clone();
    copy
}

#[tokio::test]
async fn letters_rabbitmq_dead_lettered_are_read_by_x_death_alone_and_printed_escaped() {
    let h = Harness::new(Knobs::default()).await;
    // The worker and dlq log in as a user of their own; the attacker
    // publishes as guest.
    let user = RabbitUser::create();
    let worker_url = user.url(&user.password, "127.0.0.1:5672", "amqp");
    let mut settings = h.settings();
    settings.broker.amqp_url = secrecy::SecretString::from(worker_url.clone());
    let worker = TestWorker::spawn(settings);
    consuming(&worker).await;
    // A genuine event, refused by TapTalk: its failure is recorded.
    let genuine = refused_upstream("cust-victim");
    h.broker.publish_event(&genuine).await;
    h.tap.wait_for("ticket.failed", 1, WAIT).await;
    dead_letters_settle_at(&h, 1).await;
    worker.stop().await;

    // With nobody consuming, the attacker's copy expires in the work queue
    // and RabbitMQ dead-letters it, forged headers and all.
    let copy = attackers_copy(&genuine);
    h.broker
        .publish_raw(
            copy.to_string().as_bytes(),
            json_properties()
                .with_message_id(id_of(&copy).as_str().into())
                .with_expiration("0".into())
                .with_headers(forged_headers()),
        )
        .await;
    dead_letters_settle_at(&h, 2).await;

    let mut env = dlq_env(&h);
    env.retain(|(k, _)| *k != "AMQP_URL");
    env.push(("AMQP_URL", worker_url));
    let listing = dlq_ok(&env, &["list", "--json", "--samples", "5"])
        .await
        .json();
    assert_eq!(
        counts(&listing),
        BTreeMap::from([("expired".into(), 1), ("rejected_by_upstream".into(), 1)]),
        "the forged letter counts as what RabbitMQ says it is"
    );
    let expired = listing["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["reason"] == "expired")
        .cloned()
        .unwrap_or_default();
    assert_eq!(expired["deadLetteredBy"], "rabbitmq");
    assert_eq!(
        expired["samples"][0]["error"],
        Value::Null,
        "its worker headers are ignored"
    );
    let text = dlq_ok(&env, &["list", "--samples", "5"]).await.stdout;
    assert!(
        !text
            .chars()
            .any(|c| c != '\n' && (c.is_control() || c == '\u{202e}')),
        "nothing raw reaches the terminal: {text:?}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("ALL CLEAR")),
        "no line of the attacker's: {text}"
    );

    // Replayed, the forged letter goes under its own routing key, without
    // the forged user id, and cannot overturn the recorded failure.
    let watch = format!("{}.replays", h.broker.topology.work_queue);
    let channel = h.broker.connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            watch.as_str().into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare the watch queue");
    channel
        .queue_bind(
            watch.as_str().into(),
            h.broker.topology.login_exchange.as_str().into(),
            "#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the watch queue");
    let ran = dlq_ok(&env, &["replay", "--reason", "expired"]).await;
    assert!(!ran.stdout.contains('\u{1b}'), "{}", ran.stdout);
    let replayed = channel
        .basic_get(watch.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("the replay");
    let _ = channel
        .queue_delete(watch.as_str().into(), Default::default())
        .await;
    assert_eq!(replayed.delivery.routing_key.as_str(), "login");
    assert_eq!(replayed.delivery.properties.user_id(), &None);
    let mut settings = h.settings();
    settings.broker.amqp_url =
        secrecy::SecretString::from(user.url(&user.password, "127.0.0.1:5672", "amqp"));
    let worker = TestWorker::spawn(settings);
    let failed = h.tap.wait_for("ticket.failed", 2, WAIT).await;
    assert_eq!(
        tickets_of(&h, &id_of(&genuine)).await,
        0,
        "the recorded failure stands"
    );
    for event in &failed {
        assert_eq!(event.body["reason"], "rejected_by_upstream");
        assert_eq!(
            event.body["xcUserID"], "cust-victim",
            "every copy is answered with what was recorded"
        );
    }
    worker.stop().await;
}

#[tokio::test]
async fn a_dead_letter_of_another_copy_cannot_clear_the_failure_recorded_for_the_first() {
    // Publishers and the worker share one RabbitMQ user here, so nothing
    // tells the attacker's letters from the worker's: the body's digest,
    // kept with the recorded failure, still does.
    let h = Harness::new(Knobs::default()).await;
    let worker = h.worker();
    consuming(&worker).await;
    let genuine = refused_upstream("cust-victim");
    h.broker.publish_event(&genuine).await;
    h.tap.wait_for("ticket.failed", 1, WAIT).await;
    dead_letters_settle_at(&h, 1).await;
    let genuine_letters = h.broker.drain_dead_letters().await;
    assert_eq!(genuine_letters.len(), 1);
    // The attacker's copy: the worker answers it with the recorded failure
    // and dead-letters it, as its own letter.
    let copy = attackers_copy(&genuine);
    h.broker.publish_event(&copy).await;
    h.tap.wait_for("ticket.failed", 2, WAIT).await;
    dead_letters_settle_at(&h, 1).await;

    let ran = dlq(&dlq_env(&h), &["replay", "--all"]).await;
    assert!(
        ran.stdout.contains("another copy's (the bodies differ)"),
        "{}\n{}",
        ran.stdout,
        ran.stderr
    );
    // The worker answers the replay with the recorded failure again.
    let failed = h.tap.wait_for("ticket.failed", 3, WAIT).await;
    assert_eq!(
        tickets_of(&h, &id_of(&genuine)).await,
        0,
        "no ticket for the attacker's copy"
    );
    assert_eq!(
        h.taptalk.stats().issued,
        0,
        "TapTalk was never asked for it"
    );
    assert!(
        failed.iter().all(|f| f.body["xcUserID"] == "cust-victim"),
        "every copy is answered with what was recorded: {failed:?}",
        failed = failed.iter().map(|f| &f.body).collect::<Vec<_>>()
    );
    worker.stop().await;
}

#[tokio::test]
async fn an_x_death_a_publisher_wrote_does_not_disguise_the_workers_own_dead_letter() {
    let h = Harness::new(Knobs::default()).await;
    let worker = h.worker();
    consuming(&worker).await;
    // An event the worker refuses, carrying RabbitMQ's dead-letter record
    // as a publisher forged it.
    let mut death = FieldTable::default();
    death.insert("reason".into(), AMQPValue::LongString("expired".into()));
    death.insert("time".into(), AMQPValue::Timestamp(1));
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
    );
    headers.insert(
        "x-first-death-reason".into(),
        AMQPValue::LongString("expired".into()),
    );
    h.broker
        .publish_raw(
            b"not json",
            json_properties()
                .with_message_id("forged-death-1".into())
                .with_headers(headers),
        )
        .await;
    dead_letters_settle_at(&h, 1).await;
    worker.stop().await;
    let listing = dlq_ok(&dlq_env(&h), &["list", "--json"]).await.json();
    assert_eq!(
        counts(&listing),
        BTreeMap::from([("invalid".into(), 1)]),
        "the worker's own letter, read as the worker's"
    );
}
