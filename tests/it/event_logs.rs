//! What a worker's log says at the default level, `info`, read from a real
//! `ticket-worker run` as an operator reads it: the progress line of the
//! last window is written at shutdown too; each settled event gets one line
//! (at most EVENT_LOG_RATE a second, the rest counted); a rejection by TapTalk
//! is logged with its code, field and message; no ticket is ever logged.

use crate::support::*;
use fake_taptalk::Knobs;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// `ticket-worker run` on the harness's services at `RUST_LOG=info`, with
/// `extra` settings.
async fn worker(h: &Harness, extra: &[(&'static str, &str)]) -> WorkerProcess {
    let mut env = worker_env(
        &h.db.url,
        &h.broker,
        &h.taptalk.base_url(),
        &format!("tw-logs-{}", unique()),
    );
    env.retain(|(k, _)| *k != "RUST_LOG");
    env.push(("RUST_LOG", "info".into()));
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let worker = WorkerProcess::spawn(&env);
    worker.consuming().await;
    worker
}

#[tokio::test]
async fn the_last_windows_progress_line_is_written_at_shutdown() {
    let h = Harness::new(Knobs::default()).await;
    // A window far longer than the test: only the shutdown can write it.
    let mut worker = worker(&h, &[("PROGRESS_EVERY", "1h")]).await;
    let events: Vec<_> = (0..3)
        .map(|i| login_event(&format!("user-{}-{i}", unique())))
        .collect();
    h.broker.publish_events(&events).await;
    h.tap.wait_for("ticket.ready", 3, WAIT).await;
    assert_eq!(worker.terminate().await, Some(0), "{}", worker.logs());
    let logs = worker.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("login events answered in the last"))
        .unwrap_or_else(|| panic!("no progress line at shutdown:\n{logs}"));
    assert!(
        line.contains("3 login events answered in the last")
            && line.contains(", up to shutdown")
            && line.contains("issued=3"),
        "{line}"
    );
    let progress_at = logs.find(line).unwrap_or_default();
    let stopped_at = logs.find("worker stopped").expect("worker stopped");
    assert!(progress_at < stopped_at, "written before the worker stops");
}

/// The `event settled` lines of a log.
fn settled_lines(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| l.contains("event settled"))
        .collect()
}

#[tokio::test]
async fn each_settled_event_is_one_line_and_a_rejection_says_what_taptalk_said() {
    let h = Harness::new(Knobs::default()).await;
    let mut worker = worker(&h, &[]).await;
    let good: Vec<_> = (0..2)
        .map(|i| login_event(&format!("user-{}-{i}", unique())))
        .collect();
    let mut invalid = login_event(&format!("bad-{}", unique()));
    invalid["userPlatform"] = "windows-phone".into();
    let mut rejected = login_event(&format!("rej-{}", unique()));
    rejected["email"] = "ana(at)example.com".into();
    h.broker.publish_events(&good).await;
    h.broker
        .publish_events(&[invalid.clone(), rejected.clone()])
        .await;
    h.tap.wait_for("ticket.ready", 2, WAIT).await;
    h.tap.wait_for("ticket.failed", 2, WAIT).await;
    assert_eq!(worker.terminate().await, Some(0));
    let logs = worker.logs();
    let lines = settled_lines(&logs);
    assert_eq!(lines.len(), 4, "one line per event:\n{logs}");
    let line_of = |event: &serde_json::Value| -> &str {
        let id = event["eventID"].as_str().unwrap_or_default();
        lines
            .iter()
            .find(|l| l.contains(&format!("event_id={id}")))
            .unwrap_or_else(|| panic!("no line for {id}:\n{logs}"))
    };
    for event in &good {
        let line = line_of(event);
        assert!(
            line.contains(" INFO ") && line.contains("outcome=\"issued\"") && line.contains(" ms="),
            "{line}"
        );
    }
    let line = line_of(&invalid);
    assert!(
        line.contains("outcome=\"dead_lettered\"") && line.contains("reason=\"invalid\""),
        "{line}"
    );
    let line = line_of(&rejected);
    assert!(line.contains("reason=\"rejected_by_upstream\""), "{line}");
    let rejection = logs
        .lines()
        .find(|l| l.contains("TapTalk rejected the event's data"))
        .unwrap_or_else(|| panic!("the rejection is logged:\n{logs}"));
    assert!(
        rejection.contains("code=\"ParamValidationFailed\"")
            && rejection.contains("field=Some(\"email\")"),
        "TapTalk's code, field and message: {rejection}"
    );
    // Never a ticket.
    let tickets: Vec<String> = sqlx::query_scalar("SELECT ticket FROM auth_tickets")
        .fetch_all(&h.db.pool)
        .await
        .expect("read the tickets");
    assert_eq!(tickets.len(), 2);
    for ticket in tickets {
        assert!(!logs.contains(&ticket), "a ticket reached the log");
    }
}

#[tokio::test]
async fn past_event_log_rate_lines_are_left_out_and_counted() {
    let h = Harness::new(Knobs::default()).await;
    let mut worker = worker(&h, &[("EVENT_LOG_RATE", "5")]).await;
    let events: Vec<_> = (0..60)
        .map(|i| login_event(&format!("user-{}-{i}", unique())))
        .collect();
    h.broker.publish_events(&events).await;
    h.tap.wait_for("ticket.ready", 60, WAIT).await;
    assert_eq!(worker.terminate().await, Some(0));
    let logs = worker.logs();
    let shown = settled_lines(&logs).len();
    let left_out: usize = logs
        .lines()
        .filter_map(|l| {
            l.split("left_out=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(shown < 60, "the rate holds ({shown} lines):\n{logs}");
    assert_eq!(
        shown + left_out,
        60,
        "every event shown or counted:\n{logs}"
    );
    assert!(
        logs.contains("more events settled in that second than EVENT_LOG_RATE shows"),
        "{logs}"
    );
}
