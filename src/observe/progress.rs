//! The progress line: while events flow, what happened since the last line
//! (`PROGRESS_EVERY`), so the log at the default level shows that tickets are
//! being issued. At `stop` (the worker's shutdown, once its in-flight events
//! are settled) the last, shorter window gets its line too, so nothing that
//! happened goes unsaid.

use super::metrics::{Metrics, Snapshot};
use crate::time::human;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Logs what happened since the last line, every `every` in which something
/// did, until `stop`; then once more for the time since the last line.
pub async fn report(metrics: Metrics, every: Duration, stop: CancellationToken) {
    let mut last = metrics.snapshot();
    let mut since = Instant::now();
    loop {
        let stopped = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = stop.cancelled() => true,
        };
        let now = metrics.snapshot();
        let window = if stopped { since.elapsed() } else { every };
        line(&now.since(&last), window, stopped);
        if stopped {
            return;
        }
        last = now;
        since = Instant::now();
    }
}

/// The line for one window, if anything happened in it.
fn line(delta: &Snapshot, window: Duration, at_shutdown: bool) {
    let answered = delta
        .issued
        .saturating_add(delta.already_issued)
        .saturating_add(delta.dead_lettered)
        .saturating_add(delta.expired);
    let back_to_queue = delta
        .retry_later
        .saturating_add(delta.requeued)
        .saturating_add(delta.abandoned);
    if answered.saturating_add(back_to_queue) == 0 {
        return;
    }
    let when = if at_shutdown { ", up to shutdown" } else { "" };
    tracing::info!(
        issued = delta.issued,
        announced_again = delta.already_issued,
        failed = delta.dead_lettered.saturating_add(delta.expired),
        back_to_queue,
        "{answered} login events answered in the last {}{when}",
        human(window)
    );
}
