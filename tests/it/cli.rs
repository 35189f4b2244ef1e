//! The `ticket-worker` binary itself: configuration errors, the `run`,
//! `migrate`, `publish`, `fake-taptalk` and `demo` commands.

use crate::support::*;
use fake_taptalk::Knobs;
use serde_json::{Value, json};
use std::io::Write;
use std::time::Duration;

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

use ticket_worker::broker::Topology;
use ticket_worker::commands::demo::DemoRun;

/// Runs `ticket-worker demo` with `args` against the local RabbitMQ and the
/// database at `db_url`, plus `env`; returns its exit code, stdout and stderr.
async fn demo(
    args: &[&str],
    db_url: &str,
    env: &[(&'static str, String)],
) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut env = env.to_vec();
    env.push(("AMQP_URL", amqp_url()));
    env.push(("DATABASE_URL", db_url.to_owned()));
    let output = tokio::task::spawn_blocking(move || {
        bin()
            .arg("demo")
            .args(&args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("demo")
    })
    .await
    .expect("demo thread");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The run the demo announced on stderr (`demo: run demo-1a2b3c4d, …`).
fn announced_run(stderr: &str) -> DemoRun {
    let at = stderr
        .find("demo: run demo-")
        .expect("the demo names its run")
        + "demo: run ".len();
    let id = stderr
        .get(at..at + "demo-1a2b3c4d".len())
        .expect("a run id");
    DemoRun::parse(id).expect("a run id")
}

/// The number in the summary's "… → N tickets stored".
fn tickets_stored(stdout: &str) -> i64 {
    stdout
        .split(" tickets stored")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ticket count in {stdout}"))
}

/// Rows per table whose event id starts with `prefix` (`""`: all rows).
async fn demo_rows(db: &TestDb, prefix: &str) -> [i64; 3] {
    let mut counts = [0; 3];
    for (count, table) in
        counts
            .iter_mut()
            .zip(["auth_tickets", "event_outcomes", "ticket_event_outbox"])
    {
        let query = format!("SELECT count(*) FROM {table} WHERE starts_with(event_id, $1)");
        *count = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
            .bind(prefix)
            .fetch_one(&db.pool)
            .await
            .expect("count rows");
    }
    counts
}

/// Which of `topology`'s exchanges and queues exist, by passive declarations
/// (each on a channel of its own: a missing one closes the channel).
async fn existing(topology: &Topology) -> Vec<String> {
    use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let not_found = |e: &lapin::Error| matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404);
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .expect("connect to RabbitMQ");
    let mut found = Vec::new();
    for queue in [&topology.work_queue, &topology.dead_letter_queue] {
        let channel = connection.create_channel().await.expect("channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            Ok(_) => found.push(queue.clone()),
            Err(e) => assert!(not_found(&e), "passive declare of {queue}: {e}"),
        }
    }
    for exchange in [
        &topology.login_exchange,
        &topology.dead_letter_exchange,
        &topology.ticket_exchange,
    ] {
        let channel = connection.create_channel().await.expect("channel");
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await
        {
            Ok(()) => found.push(exchange.clone()),
            Err(e) => assert!(not_found(&e), "passive declare of {exchange}: {e}"),
        }
    }
    let _ = connection.close(200, "".into()).await;
    found
}

/// Names of the local broker's queues and exchanges containing `fragment`,
/// by `rabbitmqctl`; `None` where rabbitmqctl cannot list them (a broker
/// elsewhere).
fn listed_by_rabbitmqctl(fragment: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for what in ["list_queues", "list_exchanges"] {
        let output = std::process::Command::new("rabbitmqctl")
            .args(["-q", what, "name"])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        names.extend(
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter(|name| name.contains(fragment))
                .map(str::to_owned),
        );
    }
    Some(names)
}

/// Deletes a demo run's exchanges and queues when dropped, so that a failing
/// test leaves none behind either.
struct DeleteOnDrop(Topology);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let topology = self.0.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(connection) =
                    lapin::Connection::connect(&amqp_url(), Default::default()).await
                {
                    if let Ok(channel) = connection.create_channel().await {
                        let _ = topology.delete(&channel).await;
                    }
                    let _ = connection.close(200, "".into()).await;
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn demo_runs_end_to_end_prints_the_table_and_leaves_nothing_behind() {
    let db = TestDb::create().await;
    let (code, stdout, stderr) = demo(&["--events", "40", "--timeout", "60s"], &db.url, &[]).await;
    let run = announced_run(&stderr);
    let topology = run.topology(20);
    let _leftovers = DeleteOnDrop(topology.clone());
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("auth_tickets (first 12 of"), "{stdout}");
    assert!(stdout.contains("40 login events →"), "{stdout}");
    assert!(stdout.contains("events/s"), "{stdout}");
    assert!(
        stdout.contains("FROM current_auth_ticket('") && stdout.contains("rows are removed"),
        "the hint says the rows go: {stdout}"
    );
    let stored = tickets_stored(&stdout);
    assert!(
        (38..=40).contains(&stored),
        "one row per valid event: {stdout}"
    );
    assert!(
        stderr.contains(&format!(
            "on exchanges and queues of its own (taptalk.{run}.*)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "removed what run {run} made: its rows ({stored} auth_tickets, "
        )) && stderr.contains(&format!(
            "its exchanges and queues taptalk.{run}.* (with 1 dead letter)"
        )),
        "one line says what was removed: {stderr}"
    );

    // The database is this test's alone: every row would be the demo's.
    assert_eq!(demo_rows(&db, "").await, [0, 0, 0], "no rows left");
    assert_eq!(existing(&topology).await, Vec::<String>::new());
    if let Some(listed) = listed_by_rabbitmqctl(&run.to_string()) {
        assert_eq!(listed, Vec::<String>::new(), "nothing named after the run");
    }
}

#[tokio::test]
async fn demo_keep_keeps_what_it_made_and_says_how_to_remove_it() {
    let db = TestDb::create().await;
    let (code, stdout, stderr) = demo(
        &["--events", "20", "--timeout", "60s", "--keep"],
        &db.url,
        &[],
    )
    .await;
    let run = announced_run(&stderr);
    let topology = run.topology(20);
    let _leftovers = DeleteOnDrop(topology.clone());
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let remove_with = format!("remove them with: ticket-worker demo --remove {run}");
    assert!(
        stderr.contains(&format!(
            "kept what run {run} made: its rows (event ids {run}-…)"
        )) && stderr.contains(&remove_with),
        "one line says what was kept and how to remove it: {stderr}"
    );

    // The rows are there, all of this run's events, and so is the topology.
    let stored = tickets_stored(&stdout);
    assert!(stored >= 18, "one row per valid event: {stdout}");
    let [tickets, outcomes, _] = demo_rows(&db, &run.event_id_prefix()).await;
    assert_eq!(tickets, stored);
    assert!(outcomes >= tickets, "{outcomes} outcomes");
    assert_eq!(
        demo_rows(&db, "").await[..2],
        [tickets, outcomes],
        "no others"
    );
    assert_eq!(existing(&topology).await.len(), 5, "{topology:?}");

    // The hint works afterwards, as printed.
    let select = stdout
        .split("current ticket with: ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no SELECT in {stdout}"));
    let ticket: Option<(String, String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(select.to_owned()))
            .fetch_optional(&db.pool)
            .await
            .expect("the printed SELECT runs");
    assert!(ticket.is_some(), "{select} finds the user's ticket");

    // And so does the way to remove them.
    let (code, _, removing) = demo(&["--remove", &run.to_string()], &db.url, &[]).await;
    assert_eq!(code, Some(0), "{removing}");
    assert!(
        removing.contains(&format!(
            "removed what run {run} left: its rows ({tickets} auth_tickets, {outcomes} event_outcomes"
        )) && removing.contains(&format!("any exchanges and queues taptalk.{run}.*")),
        "{removing}"
    );
    assert_eq!(demo_rows(&db, "").await, [0, 0, 0]);
    assert_eq!(existing(&topology).await, Vec::<String>::new());
}

#[tokio::test]
async fn demo_on_topology_names_given_uses_them_and_leaves_them_in_place() {
    let db = TestDb::create().await;
    let broker = TestBroker::new().await;
    let t = &broker.topology;
    let env = [
        ("LOGIN_EXCHANGE", t.login_exchange.clone()),
        ("WORK_QUEUE", t.work_queue.clone()),
        ("DEAD_LETTER_EXCHANGE", t.dead_letter_exchange.clone()),
        ("DEAD_LETTER_QUEUE", t.dead_letter_queue.clone()),
    ];
    let (code, stdout, stderr) = demo(
        &[
            "--events",
            "20",
            "--timeout",
            "60s",
            "--ticket-exchange",
            &t.ticket_exchange,
        ],
        &db.url,
        &env,
    )
    .await;
    let run = announced_run(&stderr);
    let _leftovers = DeleteOnDrop(run.topology(20));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "on the exchanges and queues you named (LOGIN_EXCHANGE, WORK_QUEUE, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, TICKET_EXCHANGE)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("removed what run {run} made: its rows ("))
            && stderr.contains("the exchanges and queues you named stay as they are"),
        "{stderr}"
    );
    // The events went through the names given: the invalid one is in that
    // dead-letter queue, which is still there.
    let dead = broker.all_dead_letters().await;
    assert_eq!(dead.len(), 1, "the unknown platform");
    assert!(
        String::from_utf8_lossy(&dead[0].data).contains(&run.event_id_prefix()),
        "a dead letter of this run"
    );
    assert_eq!(existing(t).await.len(), 5);
    assert_eq!(existing(&run.topology(20)).await, Vec::<String>::new());
    assert_eq!(demo_rows(&db, "").await, [0, 0, 0], "its rows are gone");
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
    let _drop_it_afterwards = DropDatabase::named(&missing);
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

#[test]
fn no_help_shows_the_value_of_a_setting_that_can_carry_credentials() {
    let env = [
        ("AMQP_URL", "amqp://ops:pw-amqp-Q1@127.0.0.1:5672/%2f"),
        (
            "DATABASE_URL",
            "postgres://ops:pw-db-Q2@127.0.0.1:5432/test",
        ),
        // A gateway in front of TapTalk that takes credentials in the URL.
        ("TAPTALK_BASE_URL", "https://gw:pw-base-Q3@taptalk.example"),
        ("TAPTALK_SERVER_KEY_SECRET", "pw-key-Q4"),
    ];
    for command in [
        &["run", "--help"][..],
        &["migrate", "--help"],
        &["publish", "--help"],
        &["demo", "--help"],
        &["fake-taptalk", "--help"],
        &["dlq", "list", "--help"],
        &["dlq", "replay", "--help"],
    ] {
        let output = bin().args(command).envs(env).output().expect("help");
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{command:?}: {help}");
        for secret in ["pw-amqp-Q1", "pw-db-Q2", "pw-base-Q3", "pw-key-Q4"] {
            assert!(
                !help.contains(secret),
                "{command:?} shows {secret}:\n{help}"
            );
        }
    }
}

#[test]
fn a_secret_file_other_users_can_read_is_warned_about() {
    let dir = std::env::temp_dir().join(format!("tw-cli-{}", unique()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("secret");
    std::fs::write(&path, "hunter2-key\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut env = complete_env();
    env.retain(|(k, _)| *k != "TAPTALK_SERVER_KEY_SECRET" && *k != "AMQP_URL");
    env.push(("TAPTALK_SERVER_KEY_SECRET_FILE", path.display().to_string()));
    let (code, stderr) = run_with(&env);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 2, "AMQP_URL is missing: {stderr}");
    assert!(
        stderr.contains("a secret file is readable by other users")
            && stderr.contains("TAPTALK_SERVER_KEY_SECRET_FILE")
            && stderr.contains("0644"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
