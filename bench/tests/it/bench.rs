//! `ticket-bench`, the real binary, on the local RabbitMQ and
//! Postgres: a small run whose JSON report must add up (every event
//! published is answered and stored, CPU, commits and the ceiling measured),
//! that leaves no vhost, exchange, queue or database behind, and whose
//! replicas do not inherit the caller's worker settings. Nothing here
//! asserts on speed.

use crate::support::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Runs `ticket-bench` with `args`, `PATH` set to `path`; its exit code,
/// stderr and JSON report.
fn bench(args: &[&str], path: &str, json: &Path) -> (i32, String, Option<Value>) {
    let output = bin()
        .args(args)
        .arg("--json")
        .arg(json)
        .env("PATH", path)
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("AMQP_URL", amqp_url())
        .env("DATABASE_URL", admin_database_url())
        // Worker settings in the caller's environment that would stop a
        // replica at once if they reached it.
        .env("CONCURRENCY", "not-a-number")
        .env("PREFETCH", "0")
        .env("TAPTALK_SERVER_KEY_SECRET_FILE", "/nonexistent")
        .output()
        .expect("run ticket-bench");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = std::fs::read_to_string(json)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let _ = std::fs::remove_file(json);
    (output.status.code().unwrap_or(-1), stderr, report)
}

fn json_path() -> PathBuf {
    std::env::temp_dir().join(format!("ticket-worker-bench-{}.json", unique()))
}

fn system_path() -> String {
    std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into())
}

/// Checks that a report's figures add up for `events` events.
fn check_report(report: &Value, events: u64, stderr: &str) {
    let phase = &report["phases"][0];
    let n = |v: &Value| {
        v.as_u64()
            .unwrap_or_else(|| panic!("a number: {v} in {stderr}"))
    };
    let f = |v: &Value| {
        v.as_f64()
            .unwrap_or_else(|| panic!("a number: {v} in {stderr}"))
    };
    assert_eq!(n(&phase["published"]), events, "{phase}");
    assert_eq!(n(&phase["confirmed"]), events, "{phase}");
    assert_eq!(
        n(&phase["answered"]),
        events,
        "answered = published: {phase}"
    );
    assert_eq!(n(&phase["ready"]), events, "all valid: {phase}");
    assert_eq!(
        n(&phase["tickets_stored"]),
        events,
        "one row per event in the database before it was dropped: {phase}"
    );
    assert_eq!(n(&phase["login_to_ready"]["count"]), events);
    assert!(f(&phase["login_to_ready"]["p99_ms"]) >= f(&phase["login_to_ready"]["p50_ms"]));
    assert!(f(&phase["throughput_per_s"]) > 0.0);
    assert!(n(&phase["upstream"]["requests"]) >= events, "{phase}");
    assert!(n(&phase["upstream"]["issued"]) >= events, "{phase}");
    assert!(f(&phase["worker_cpu_us_per_event"]) > 0.0, "{phase}");
    assert!(f(&phase["postgres"]["per_event"]) > 0.0, "{phase}");
    // Tickets are stored in batches: fewer commits than events, but some.
    let commits = n(&phase["postgres"]["commits"]);
    assert!(commits >= 1, "the tickets were committed: {phase}");
    assert!(
        (f(&phase["postgres"]["per_event"]) - commits as f64 / events as f64).abs() < 0.01,
        "commits per event is commits over events: {phase}"
    );
    assert_eq!(phase["postgres"]["settled"], true, "{phase}");
    let replicas = phase["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 1);
    assert!(f(&replicas[0]["peak_rss_mib"]) > 0.0);
    assert!(f(&replicas[0]["cpu_ms"]) > 0.0);
    assert!(replicas[0]["limit_last"].is_null() || replicas[0]["limit_last"].is_number());
    let seconds: u64 = phase["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|s| n(&s["ready"]))
        .sum();
    assert_eq!(seconds, events, "every ready event in some second");
    assert!(n(&report["machine"]["cores"]) >= 1);
}

async fn database_exists(name: &str) -> bool {
    use sqlx::Connection as _;
    let mut connection = sqlx::PgConnection::connect(&admin_database_url())
        .await
        .expect("connect to Postgres");
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut connection)
        .await
        .expect("look for the database")
}

async fn queue_exists(name: &str) -> bool {
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = channel
        .queue_declare(name.into(), passive, FieldTable::default())
        .await
        .is_ok();
    let _ = connection.close(200, "checked".into()).await;
    found
}

fn vhosts() -> String {
    std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_vhosts", "name"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_small_run_adds_up_and_leaves_nothing_behind() {
    let (code, stderr, report) = bench(
        &[
            "--events",
            "300",
            "--replicas",
            "1",
            "--ceiling-events",
            "300",
        ],
        &system_path(),
        &json_path(),
    );
    assert_eq!(code, 0, "{stderr}");
    let report = report.unwrap_or_else(|| panic!("a JSON report: {stderr}"));
    check_report(&report, 300, &stderr);
    let ceiling = &report["ceiling"];
    assert_eq!(ceiling["messages"], 300, "{ceiling}");
    assert!(
        ceiling["per_second"].as_f64().is_some_and(|r| r > 0.0),
        "{ceiling}"
    );
    assert!(
        report["phases"][0]["ceiling_ratio"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
    );

    let database = report["settings"]["database"].as_str().expect("database");
    assert!(database.starts_with("ticket_bench_"));
    assert!(!database_exists(database).await, "{database} dropped");
    let isolation = &report["settings"]["isolation"];
    let name = isolation["name"].as_str().expect("isolation");
    match isolation["kind"].as_str() {
        Some("vhost") => {
            assert!(name.starts_with("bench-"));
            assert!(
                !vhosts().lines().any(|l| l.trim() == name),
                "vhost {name} deleted"
            );
        }
        _ => panic!("rabbitmqctl is on PATH here, so the run has a vhost: {isolation}; {stderr}"),
    }
    assert!(
        stderr.contains(&format!("removed vhost {name} and database {database}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("guest:guest"),
        "no password in the output: {stderr}"
    );
}

#[tokio::test]
async fn without_rabbitmqctl_it_uses_names_of_its_own_and_deletes_them() {
    // A PATH with what the bench needs besides rabbitmqctl.
    let dir = std::env::temp_dir().join(format!("ticket-worker-bench-path-{}", unique()));
    std::fs::create_dir_all(&dir).expect("a directory");
    for tool in ["kill", "getconf"] {
        if let Some(found) = std::env::split_paths(&system_path())
            .map(|p| p.join(tool))
            .find(|p| p.exists())
        {
            let _ = std::os::unix::fs::symlink(found, dir.join(tool));
        }
    }
    let (code, stderr, report) = bench(
        &["--events", "200", "--ceiling-events", "100"],
        &dir.to_string_lossy(),
        &json_path(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 0, "{stderr}");
    let report = report.unwrap_or_else(|| panic!("a JSON report: {stderr}"));
    check_report(&report, 200, &stderr);
    let isolation = &report["settings"]["isolation"];
    assert_eq!(isolation["kind"], "names", "{isolation}");
    let pattern = isolation["name"].as_str().expect("a pattern");
    let prefix = pattern.trim_end_matches('*');
    assert!(prefix.starts_with("taptalk.bench-"), "{pattern}");
    assert!(stderr.contains("no vhost of its own"), "says why: {stderr}");
    for queue in ["logins.ticket-worker", "logins.dead", "ceiling.source"] {
        assert!(
            !queue_exists(&format!("{prefix}{queue}")).await,
            "{prefix}{queue} deleted"
        );
    }
    let database = report["settings"]["database"].as_str().expect("database");
    assert!(!database_exists(database).await, "{database} dropped");
}

#[test]
fn its_help_shows_the_value_of_no_setting_that_can_carry_credentials() {
    let env = [
        ("AMQP_URL", "amqp://ops:pw-amqp-Q1@127.0.0.1:5672/%2f"),
        (
            "DATABASE_URL",
            "postgres://ops:pw-db-Q2@127.0.0.1:5432/test",
        ),
    ];
    let output = bin().arg("--help").envs(env).output().expect("help");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    for secret in ["pw-amqp-Q1", "pw-db-Q2"] {
        assert!(!help.contains(secret), "--help shows {secret}:\n{help}");
    }
    assert!(
        !help.contains("worker-run"),
        "the replicas' entry is hidden: {help}"
    );
}
