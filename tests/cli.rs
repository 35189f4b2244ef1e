//! The `ticket-worker` binary itself: configuration errors, the `run`,
//! `migrate`, `publish`, `fake-taptalk` and `demo` commands.

mod support;

use serde_json::{Value, json};
use std::io::Write;
use std::time::Duration;
use support::*;
use ticket_worker::fake_taptalk::Knobs;

const WAIT: Duration = Duration::from_secs(60);

fn complete_env() -> Vec<(&'static str, String)> {
    vec![
        ("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        (
            "DATABASE_URL",
            "postgres://postgres:hunter2-db@127.0.0.1:5432/test".into(),
        ),
        ("TAPTALK_BASE_URL", "http://127.0.0.1:9".into()),
        ("TAPTALK_SERVER_KEY_ID", "key".into()),
        ("TAPTALK_SERVER_KEY_SECRET", "hunter2-key".into()),
    ]
}

fn run_with(env: &[(&'static str, String)]) -> (i32, String) {
    let output = bin()
        .arg("run")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run the binary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn each_missing_setting_stops_run_with_exit_code_2_and_its_name() {
    for missing in [
        "AMQP_URL",
        "DATABASE_URL",
        "TAPTALK_BASE_URL",
        "TAPTALK_SERVER_KEY_ID",
        "TAPTALK_SERVER_KEY_SECRET",
    ] {
        let env: Vec<_> = complete_env()
            .into_iter()
            .filter(|(k, _)| *k != missing)
            .collect();
        let (code, stderr) = run_with(&env);
        assert_eq!(code, 2, "{missing}: {stderr}");
        assert!(
            stderr.contains(&format!("{missing}: missing")),
            "{missing}: {stderr}"
        );
    }
}

#[test]
fn a_run_with_nothing_set_names_all_five_required_settings_at_once() {
    let (code, stderr) = run_with(&[]);
    assert_eq!(code, 2, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("ticket-worker: 5 configuration errors:"),
        "{stderr}"
    );
    for (variable, flag) in [
        ("AMQP_URL", "--amqp-url"),
        ("DATABASE_URL", "--database-url"),
        ("TAPTALK_BASE_URL", "--taptalk-base-url"),
        ("TAPTALK_SERVER_KEY_ID", "--taptalk-server-key-id"),
        ("TAPTALK_SERVER_KEY_SECRET", "--taptalk-server-key-secret"),
    ] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("  {variable}: missing;")))
            .unwrap_or_else(|| panic!("no line for {variable}: {stderr}"));
        assert!(
            line.contains(&format!("set the environment variable {variable}"))
                && line.contains(flag),
            "says what to do: {line}"
        );
    }
    assert_eq!(lines.len(), 6, "one line per setting: {stderr}");
}

#[test]
fn malformed_settings_stop_run_with_exit_code_2_and_never_echo_secrets() {
    let cases: [(&'static str, &str, &str); 7] = [
        ("AMQP_URL", "amqp://guest:hunter2-amqp@[::1", "AMQP_URL"),
        ("AMQP_URL", "http://localhost", "AMQP_URL"),
        (
            "DATABASE_URL",
            "mysql://root:hunter2-db@localhost/x",
            "DATABASE_URL",
        ),
        ("TAPTALK_TIMEOUT", "soon", "TAPTALK_TIMEOUT"),
        ("PREFETCH", "lots", "PREFETCH"),
        ("CONCURRENCY", "0", "CONCURRENCY"),
        (
            "TAPTALK_SERVER_KEY_SECRET_FILE",
            "/nonexistent/secret",
            "TAPTALK_SERVER_KEY_SECRET",
        ),
    ];
    for (variable, value, named) in cases {
        let mut env = complete_env();
        env.retain(|(k, _)| {
            *k != variable
                && !(variable == "TAPTALK_SERVER_KEY_SECRET_FILE"
                    && *k == "TAPTALK_SERVER_KEY_SECRET")
        });
        env.push((variable, value.to_owned()));
        let (code, stderr) = run_with(&env);
        assert_eq!(code, 2, "{variable}={value}: {stderr}");
        assert!(stderr.contains(named), "{variable}={value}: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "{variable}={value} leaked a secret: {stderr}"
        );
    }
    // --help shows variable names but not their secret values.
    let help = bin()
        .args(["run", "--help"])
        .envs(complete_env().iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("TAPTALK_SERVER_KEY_SECRET") && !help.contains("hunter2"),
        "{help}"
    );
}

#[tokio::test]
async fn run_processes_events_and_exits_0_on_sigterm() {
    let h = Harness::new(Knobs::default()).await;
    let env = worker_env(
        &h.db.url,
        &h.broker,
        &h.taptalk.base_url(),
        &format!("cli-{}", unique()),
    );
    let mut env = env;
    env.retain(|(k, _)| *k != "RUST_LOG");
    env.push(("PROGRESS_EVERY", "1s".into()));
    let mut worker = WorkerProcess::spawn(&env);
    let events: Vec<Value> = (0..20).map(|i| login_event(&format!("cust-{i}"))).collect();
    h.broker.publish_events(&events).await;
    h.tap.wait_for("ticket.ready", 20, WAIT).await;
    // At the default log level, progress lines say that tickets are issued.
    let issued_in_progress_lines = |logs: &str| -> u64 {
        logs.lines()
            .filter(|l| l.contains("login events answered in the last 1s"))
            .filter_map(|l| {
                l.split("issued=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    eventually(WAIT, "progress lines for all 20 events", || async {
        (issued_in_progress_lines(&worker.logs()) == 20).then_some(())
    })
    .await;

    assert_eq!(worker.terminate().await, Some(0), "{}", worker.logs());
    let logs = worker.logs();
    assert!(
        logs.contains("shutdown requested") && logs.contains("worker stopped"),
        "{logs}"
    );
    assert!(
        !logs.contains(KEY_SECRET),
        "the key secret never reaches the logs"
    );
    for issued in h.taptalk.issued() {
        assert!(
            !logs.contains(issued.ticket.expose()),
            "tickets never reach the logs"
        );
    }
}

#[tokio::test]
async fn migrate_applies_the_schema_and_can_run_again() {
    let db = TestDb::create().await;
    for _ in 0..2 {
        let output = bin()
            .arg("migrate")
            .env("DATABASE_URL", &db.url)
            .output()
            .expect("migrate");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(db.count().await, 0, "auth_tickets exists");
    let output = bin().arg("migrate").output().expect("migrate");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("DATABASE_URL: missing"));
}

#[test]
fn migrate_names_database_url_when_the_database_does_not_exist() {
    let missing = format!("tw_test_{}", unique());
    let mut url = url::Url::parse(&admin_database_url()).expect("a database URL");
    url.set_path(&format!("/{missing}"));
    let output = bin()
        .arg("migrate")
        .env("DATABASE_URL", url.as_str())
        .output()
        .expect("migrate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "applying database migrations failed: database \"{missing}\" does not exist (SQLSTATE 3D000); \
             DATABASE_URL names a database that does not exist on this server: create it, or correct DATABASE_URL"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(" at line "), "{stderr}");
}

#[tokio::test]
async fn publish_sends_valid_lines_byte_for_byte_and_reports_bad_ones_by_line() {
    let broker = TestBroker::new().await;
    let t = &broker.topology;
    let first = login_event("cust-1");
    let mut without_id = login_event("cust-2");
    without_id.as_object_mut().map(|o| o.remove("eventID"));
    let mut bad = login_event("cust-3");
    bad["userPlatform"] = json!("amiga");
    let first_line = format!("{}   ", first);
    // eventID written twice: serde_json (and the old publish) take the last
    // copy; the worker refuses the event whichever copy it would take.
    let late_id = format!("late-{}", unique());
    let repeated_id = format!(
        "{},\"eventID\":\"{late_id}\"}}",
        login_event("cust-4")
            .to_string()
            .strip_suffix('}')
            .expect("an object")
    );
    let mut from_the_future = login_event("cust-5");
    from_the_future["occurredAt"] = json!("9999-12-31T23:59:59Z");
    let input = format!("{first_line}\n\n{without_id}\n{bad}\n{repeated_id}\n{from_the_future}\n");

    let publish = |extra: &'static [&'static str]| {
        let mut child = bin()
            .arg("publish")
            .args(extra)
            .env("AMQP_URL", amqp_url())
            .env("LOGIN_EXCHANGE", &t.login_exchange)
            .env("WORK_QUEUE", &t.work_queue)
            .env("DEAD_LETTER_EXCHANGE", &t.dead_letter_exchange)
            .env("DEAD_LETTER_QUEUE", &t.dead_letter_queue)
            .env("TICKET_EXCHANGE", &t.ticket_exchange)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("publish");
        child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(input.as_bytes()));
        child.wait_with_output().expect("publish output")
    };

    let output = publish(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "three lines were skipped: {stderr}"
    );
    let line = |number: usize| {
        stderr
            .lines()
            .find(|l| l.starts_with(&format!("line {number}: ")))
            .unwrap_or_else(|| panic!("no report of line {number}: {stderr}"))
    };
    assert!(line(4).contains("userPlatform (103)"), "{stderr}");
    assert!(
        line(5).contains("(duplicate_key)") && line(5).contains("\"eventID\""),
        "{stderr}"
    );
    assert!(
        line(6).contains("(invalid_occurred_at)") && line(6).contains("MAX_CLOCK_SKEW (1m)"),
        "the worker's clock-skew rule: {stderr}"
    );
    assert!(
        stderr.contains("published 2 login events") && stderr.contains("(3 skipped, 0 failed)"),
        "{stderr}"
    );
    assert_eq!(broker.ready_count(&t.work_queue).await, 2);

    let queued = take_all(&broker, &t.work_queue).await;
    assert_eq!(queued[0].data, first_line.as_bytes(), "sent byte for byte");
    assert_eq!(
        queued[0]
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        first["eventID"].as_str().map(str::to_owned)
    );
    assert_eq!(
        queued[0]
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.to_string())
            .as_deref(),
        Some("application/json")
    );
    assert!(
        queued[1].properties.message_id().is_some(),
        "a line without eventID gets a message_id"
    );

    let output = publish(&["--no-validate"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("line 5: eventID is written more than once; sent without a message_id"),
        "{stderr}"
    );
    assert_eq!(broker.ready_count(&t.work_queue).await, 5);
    let queued = take_all(&broker, &t.work_queue).await;
    let message_id = |i: usize| {
        queued[i]
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
    };
    assert_eq!(queued[3].data, repeated_id.as_bytes());
    assert_eq!(
        message_id(3),
        None,
        "no guess between two eventIDs (the last one was {late_id})"
    );
    assert_eq!(
        message_id(4),
        from_the_future["eventID"].as_str().map(str::to_owned),
        "sent as it is, under its own eventID"
    );
}

/// Takes every message waiting in `queue`.
async fn take_all(broker: &TestBroker, queue: &str) -> Vec<lapin::message::Delivery> {
    let mut taken = Vec::new();
    while let Some(message) = broker
        .channel
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("get")
    {
        taken.push(message.delivery);
    }
    taken
}

#[tokio::test]
async fn fake_taptalk_serves_the_documented_endpoint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let server = bin()
        .arg("fake-taptalk")
        .env("FAKE_TAPTALK_LISTEN", format!("127.0.0.1:{port}"))
        .env("TAPTALK_SERVER_KEY_ID", KEY_ID)
        .env("TAPTALK_SERVER_KEY_SECRET", KEY_SECRET)
        // Its log lines are checked below, not left to clutter the test output.
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start fake-taptalk");
    let url = format!("http://127.0.0.1:{port}/v1/server/auth_ticket/request");
    let header = server_key_header();
    let client = reqwest::Client::new();
    let post = |key: Option<String>, body: Value| {
        let mut request = client.post(&url).json(&body);
        if let Some(key) = key {
            request = request.header("Server-Key", key);
        }
        async move {
            let response = request.send().await.ok()?;
            let status = response.status().as_u16();
            Some((status, response.json::<Value>().await.ok()?))
        }
    };
    let mut body = login_event("cust-9");
    let (status, first) = eventually(WAIT, "the stand-in answers", || {
        post(Some(header.clone()), body.clone())
    })
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], 200);
    assert!(
        first["data"]["ticket"]
            .as_str()
            .is_some_and(|t| t.len() >= 32)
    );
    let (_, second) = post(Some(header.clone()), body.clone())
        .await
        .expect("answer");
    assert_eq!(
        second["data"]["userID"], first["data"]["userID"],
        "a stable userID per xcUserID"
    );
    assert_ne!(
        second["data"]["ticket"], first["data"]["ticket"],
        "a fresh ticket per request"
    );

    let (status, wrong) = post(Some("bm90OnRoZWtleQ==".into()), body.clone())
        .await
        .expect("answer");
    assert_eq!(
        (status, wrong["error"]["code"].clone()),
        (401, json!("HeaderValidationFailed"))
    );
    let (status, _) = post(None, body.clone()).await.expect("answer");
    assert_eq!(status, 401);

    body["xcUserID"] = json!("x".repeat(51));
    let (status, invalid) = post(Some(header.clone()), body).await.expect("answer");
    assert_eq!(status, 400);
    assert_eq!(invalid["error"]["code"], "ParamValidationFailed");
    assert_eq!(invalid["error"]["field"], "xcUserID");
    assert!(
        invalid["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("(105)")),
        "{invalid}"
    );

    let _ = std::process::Command::new("kill")
        .arg(server.id().to_string())
        .status();
    let output = server.wait_with_output().expect("exit");
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{logs}");
    assert!(
        logs.contains("TapTalk stand-in listening") && logs.contains("shutdown requested"),
        "{logs}"
    );
    assert!(!logs.contains(KEY_SECRET), "{logs}");
}

fn server_key_header() -> String {
    use secrecy::ExposeSecret;
    server_key().header_value().expose_secret().to_owned()
}

#[tokio::test]
async fn demo_runs_end_to_end_and_prints_the_table() {
    let db = TestDb::create().await;
    let broker = TestBroker::new().await;
    let t = &broker.topology;
    let output = tokio::task::spawn_blocking({
        let (db_url, t) = (db.url.clone(), t.clone());
        move || {
            bin()
                .args(["demo", "--events", "40", "--timeout", "60s"])
                .env("AMQP_URL", amqp_url())
                .env("DATABASE_URL", db_url)
                .env("LOGIN_EXCHANGE", &t.login_exchange)
                .env("WORK_QUEUE", &t.work_queue)
                .env("DEAD_LETTER_EXCHANGE", &t.dead_letter_exchange)
                .env("DEAD_LETTER_QUEUE", &t.dead_letter_queue)
                .env("TICKET_EXCHANGE", &t.ticket_exchange)
                .output()
                .expect("demo")
        }
    })
    .await
    .expect("demo thread");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("auth_tickets (first 12 of"), "{stdout}");
    assert!(stdout.contains("40 login events →"), "{stdout}");
    assert!(stdout.contains("events/s"), "{stdout}");
    let rows = db.count().await;
    assert!((38..=40).contains(&rows), "one row per valid event: {rows}");
    assert!(
        stdout.contains(&format!("{rows} tickets stored")),
        "{stdout}"
    );
}

#[tokio::test]
async fn run_waits_for_a_database_that_does_not_exist_yet_instead_of_exiting() {
    let h = Harness::new(Knobs::default()).await;
    let missing = format!("tw_test_{}", unique());
    let url = h.db.url.replace(&h.db.name, &missing);
    let env = worker_env(
        &url,
        &h.broker,
        &h.taptalk.base_url(),
        &format!("nodb-{}", unique()),
    );
    let mut worker = WorkerProcess::spawn(&env);
    let logs = eventually(WAIT, "the configuration error is reported", || async {
        let logs = worker.logs();
        logs.contains("Postgres refuses the worker's configuration")
            .then_some(logs)
    })
    .await;
    // Postgres' own words, its code, and which setting to fix; not the
    // server's C source line, which read like a line of our migrations.
    let line = logs
        .lines()
        .find(|l| l.contains("Postgres refuses the worker's configuration"))
        .unwrap_or_default();
    assert!(
        line.contains(&format!(
            "database \"{missing}\" does not exist (SQLSTATE 3D000)"
        )) && line.contains("DATABASE_URL names a database that does not exist"),
        "{line}"
    );
    assert!(!logs.contains(" at line "), "{logs}");
    assert!(
        worker.wait(Duration::from_millis(500)).await.is_none(),
        "still running, waiting"
    );

    // The database appears (an operator fixed it): the worker carries on.
    let create = format!("CREATE DATABASE {missing}");
    let _drop_it_afterwards = DropDatabase(missing.clone());
    sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&h.db.pool)
        .await
        .expect("create");
    eventually(WAIT, "migrations applied", || async {
        worker
            .logs()
            .contains("database migrations applied")
            .then_some(())
    })
    .await;
    h.broker.publish_event(&login_event("cust-late-db")).await;
    h.tap.wait_for("ticket.ready", 1, WAIT).await;
    assert_eq!(worker.terminate().await, Some(0));
}
