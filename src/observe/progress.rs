//! The progress line: while events flow, what happened since the last line
//! (`PROGRESS_EVERY`), so the log at the default level shows that tickets are
//! being issued.

use super::metrics::Metrics;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Logs what happened since the last line, every `every` in which something
/// did, until `stop`.
pub async fn report(metrics: Metrics, every: Duration, stop: CancellationToken) {
    let mut last = metrics.snapshot();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let now = metrics.snapshot();
        let delta = now.since(&last);
        let answered = delta.issued + delta.already_issued + delta.dead_lettered + delta.expired;
        if answered + delta.retry_later + delta.requeued + delta.abandoned > 0 {
            tracing::info!(
                issued = delta.issued,
                announced_again = delta.already_issued,
                failed = delta.dead_lettered + delta.expired,
                back_to_queue = delta.retry_later + delta.requeued + delta.abandoned,
                "{answered} login events answered in the last {}",
                humantime::format_duration(every)
            );
        }
        last = now;
    }
}
