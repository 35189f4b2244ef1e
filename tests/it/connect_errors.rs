//! A connection that fails is reported the same way by every command: the
//! setting, the address it tried and what happened there
//! (`DATABASE_URL → 127.0.0.1:5433: connection refused`), with pauses in
//! human sizes, and no ERROR lines from lapin for what the worker recovers
//! from. Against ports where nothing listens and a vhost that does not exist
//! on the real broker.

use crate::support::private::free_port;
use crate::support::*;
use std::time::Duration;

/// `AMQP_URL` on a port where nothing listens, and what every command must
/// say about it.
fn refused_broker() -> (String, String) {
    let port = free_port();
    (
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        format!("AMQP_URL → 127.0.0.1:{port}: connection refused"),
    )
}

/// Runs a command to its end (at most 60 s): exit code and stderr.
async fn command(args: &[&str], env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut command = bin();
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || command.output().expect("run ticket-worker")),
    )
    .await
    .expect("the command ends")
    .expect("join");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn migrate_names_database_url_and_the_address_refused() {
    let port = free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let (code, stderr) = command(&["migrate"], &[("DATABASE_URL", url)]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "applying database migrations failed: DATABASE_URL → 127.0.0.1:{port}: connection refused"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("pool timed out"), "{stderr}");
}

#[tokio::test]
async fn dlq_replay_names_database_url_and_the_address_refused() {
    let port = free_port();
    let (code, stderr) = command(
        &["dlq", "replay", "--all"],
        &[
            ("AMQP_URL", amqp_url()),
            (
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{port}/test"),
            ),
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "ticket-worker: cannot use Postgres: DATABASE_URL → 127.0.0.1:{port}: connection refused"
        )
    );
}

#[tokio::test]
async fn publish_dlq_and_tail_word_a_refused_broker_alike() {
    let (url, says) = refused_broker();
    let expected = format!("ticket-worker: cannot connect to RabbitMQ: {says}");
    for args in [&["publish"][..], &["dlq", "list"], &["tail", "--for", "1s"]] {
        let (code, stderr) = command(args, &[("AMQP_URL", url.clone())]).await;
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end(), expected, "{args:?}");
    }
}

/// `ticket-worker run` with `amqp_url`, on a database of its own, until its
/// log holds `wanted` (at most 30 s): the log.
async fn run_until_logged(amqp_url: &str, wanted: &str) -> String {
    let db = TestDb::create().await;
    let mut worker = WorkerProcess::spawn(&[
        ("AMQP_URL", amqp_url.to_owned()),
        ("DATABASE_URL", db.url.clone()),
        ("TAPTALK_BASE_URL", "http://127.0.0.1:9".into()),
        ("TAPTALK_SERVER_KEY_ID", KEY_ID.into()),
        ("TAPTALK_SERVER_KEY_SECRET", KEY_SECRET.into()),
        ("HTTP_LISTEN", "off".into()),
    ]);
    let mut logs = String::new();
    for _ in 0..300 {
        logs = worker.logs();
        if logs.matches(wanted).count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.terminate().await;
    assert!(
        logs.matches(wanted).count() >= 2,
        "no {wanted:?} in\n{logs}"
    );
    logs
}

#[tokio::test]
async fn run_names_amqp_url_and_the_address_and_pauses_in_human_sizes() {
    let (url, says) = refused_broker();
    let logs = run_until_logged(&url, &says).await;
    assert!(
        logs.contains(&format!("cannot start a RabbitMQ session error={says}")),
        "{logs}"
    );
    let pauses: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("reconnecting to RabbitMQ after a pause"))
        .filter_map(|l| l.split("pause=").nth(1))
        .collect();
    assert!(!pauses.is_empty(), "{logs}");
    for pause in pauses {
        assert!(
            pause.ends_with("ms") || pause.ends_with('s'),
            "a pause in human size: {pause}"
        );
        assert!(
            !pause.contains("us") && !pause.contains("ns") && !pause.contains(' '),
            "no micro- or nanoseconds: {pause}"
        );
    }
}

#[tokio::test]
async fn an_unknown_vhost_is_named_and_lapin_logs_no_error_for_it() {
    let vhost = format!("no-such-vhost-{}", unique());
    let mut url = url::Url::parse(&amqp_url()).expect("TEST_AMQP_URL");
    url.set_path(&format!("/{vhost}"));
    let node = format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port().unwrap_or(5672)
    );
    let url = url.to_string();
    let wanted = format!("vhost {vhost} not found: check the virtual host in AMQP_URL");
    let logs = run_until_logged(&url, &wanted).await;
    assert!(
        logs.contains(&format!("error=AMQP_URL → {node}: NOT_ALLOWED - {wanted}")),
        "{logs}"
    );
    assert!(
        !logs.lines().any(|l| l.contains(" ERROR lapin")),
        "lapin logs nothing at ERROR for what the worker recovers from:\n{logs}"
    );
}
