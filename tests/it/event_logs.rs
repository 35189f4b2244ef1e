//! What a worker's log says at the default level, `info`, read from a real
//! `ticket-worker run` as an operator reads it: the progress line of the
//! last window is written at shutdown too.

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
