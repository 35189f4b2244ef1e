//! Leaving nothing behind: removing what a demo run made (its exchanges and
//! queues, the rows of its event ids), each step within a deadline, and the
//! one line that says what went, what could not, and how to try again.

use super::run_id::DemoRun;
use crate::broker::{Topology, connect};
use crate::domain::EventId;
use crate::storage::{Forgotten, StoreError, TicketStore};
use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use secrecy::SecretString;
use std::time::Duration;

/// How long each clean-up step (RabbitMQ, Postgres) may take.
const CLEAN_UP_WITHIN: Duration = Duration::from_secs(15);

/// Why a clean-up step did not finish.
#[derive(Debug, thiserror::Error)]
pub(super) enum CleanUpError {
    #[error("cannot connect: {0}")]
    Connect(#[source] crate::broker::ConnectError),
    #[error("{0}")]
    Broker(#[from] lapin::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("no answer within {}", humantime::format_duration(*.0))]
    NoAnswer(Duration),
}

/// The run could not be removed whole; the line before said what is left.
#[derive(Debug, thiserror::Error)]
#[error("could not remove everything the demo made (see above)")]
pub(super) struct Incomplete;

/// Which rows to forget.
pub(super) enum Rows<'a> {
    Of(&'a [EventId]),
    StartingWith(&'a str),
}

/// Whose things are removed, for the words of the line that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Whose {
    /// This run's, on exchanges and queues of its own.
    ThisRun,
    /// This run's, on exchanges and queues named by flag or environment,
    /// which stay.
    ThisRunOnNamesGiven,
    /// An earlier run's (`--remove`): whatever of it is left.
    EarlierRun,
}

/// What removing a run's things came to.
pub(super) struct Removal {
    rows: Result<Forgotten, CleanUpError>,
    /// `None`: the topology was not the run's own, so it was left alone.
    topology: Option<Result<Held, CleanUpError>>,
}

/// Messages in a run's work queue and dead-letter queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Held {
    unanswered: u32,
    dead_letters: u32,
}

/// Deletes `topology` (when given: the run's own) with whatever its queues
/// still hold, and the rows, each step within [`CLEAN_UP_WITHIN`].
pub(super) async fn remove_things(
    amqp_url: &SecretString,
    topology: Option<&Topology>,
    store: &TicketStore,
    rows: Rows<'_>,
) -> Removal {
    let topology = match topology {
        Some(topology) => Some(within(delete_topology(amqp_url, topology)).await),
        None => None,
    };
    let forgotten = async {
        match rows {
            Rows::Of(ids) => store.forget_events(ids).await,
            Rows::StartingWith(prefix) => store.forget_events_starting_with(prefix).await,
        }
        .map_err(CleanUpError::from)
    };
    Removal {
        rows: within(forgotten).await,
        topology,
    }
}

/// Deletes the run's exchanges and queues (deleting what is not there is no
/// error), and says what its queues held.
async fn delete_topology(
    amqp_url: &SecretString,
    topology: &Topology,
) -> Result<Held, CleanUpError> {
    let connection = connect(amqp_url, "ticket-worker demo clean-up")
        .await
        .map_err(CleanUpError::Connect)?;
    let deleted = async {
        let channel = connection.create_channel().await?;
        // The queues first, one by one, for their message counts; then the
        // rest of the topology.
        let held = Held {
            unanswered: channel
                .queue_delete(topology.work_queue.as_str().into(), Default::default())
                .await?,
            dead_letters: channel
                .queue_delete(
                    topology.dead_letter_queue.as_str().into(),
                    Default::default(),
                )
                .await?,
        };
        topology.delete(&channel).await?;
        // Closed before the connection, which lapin otherwise logs as an error.
        let _ = channel.close(200, "demo clean-up".into()).await;
        Ok::<Held, lapin::Error>(held)
    }
    .await;
    let _ = connection.close(200, "demo clean-up".into()).await;
    deleted.map_err(CleanUpError::from)
}

/// What the run's queues hold (for `--keep`), by passive declarations, each
/// on a channel of its own (a missing queue closes it), within
/// [`CLEAN_UP_WITHIN`].
pub(super) async fn count_held(
    amqp_url: &SecretString,
    topology: &Topology,
) -> Result<Held, CleanUpError> {
    async fn messages(connection: &Connection, queue: &str) -> u32 {
        let Ok(channel) = connection.create_channel().await else {
            return 0;
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(declared) => {
                let _ = channel.close(200, "counted".into()).await;
                declared.message_count()
            }
            Err(_) => 0,
        }
    }
    within(async {
        let connection = connect(amqp_url, "ticket-worker demo")
            .await
            .map_err(CleanUpError::Connect)?;
        let held = Held {
            unanswered: messages(&connection, &topology.work_queue).await,
            dead_letters: messages(&connection, &topology.dead_letter_queue).await,
        };
        let _ = connection.close(200, "demo over".into()).await;
        Ok(held)
    })
    .await
}

/// `step`, or an error once it has taken [`CLEAN_UP_WITHIN`].
async fn within<T>(step: impl Future<Output = Result<T, CleanUpError>>) -> Result<T, CleanUpError> {
    tokio::time::timeout(CLEAN_UP_WITHIN, step)
        .await
        .unwrap_or(Err(CleanUpError::NoAnswer(CLEAN_UP_WITHIN)))
}

impl Removal {
    /// `Ok` when everything went.
    pub(super) fn complete(&self) -> Result<(), Incomplete> {
        let topology_failed = matches!(self.topology, Some(Err(_)));
        if self.rows.is_err() || topology_failed {
            Err(Incomplete)
        } else {
            Ok(())
        }
    }
}

/// The one line after a run (or `--remove`): what went, what could not, and
/// how to try again.
pub(super) fn removal_line(run: &DemoRun, removal: &Removal, whose: Whose) -> String {
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    match &removal.rows {
        Ok(rows) => removed.push(format!(
            "its rows ({} auth_tickets, {} event_outcomes, {} ticket_event_outbox)",
            rows.tickets, rows.outcomes, rows.announcements
        )),
        Err(e) => failed.push(format!("its rows (Postgres: {e})")),
    }
    let topology = match whose {
        Whose::EarlierRun => format!("any exchanges and queues {}", run.topology_pattern()),
        _ => format!("its exchanges and queues {}", run.topology_pattern()),
    };
    match &removal.topology {
        Some(Ok(held)) => removed.push(format!("{topology}{}", held_note(*held))),
        Some(Err(e)) => failed.push(format!("{topology} (RabbitMQ: {e})")),
        None => {}
    }
    let verb = match whose {
        Whose::EarlierRun => "left",
        _ => "made",
    };
    let mut line = if removed.is_empty() {
        format!("removed nothing run {run} {verb}")
    } else {
        format!("removed what run {run} {verb}: {}", removed.join(" and "))
    };
    if !failed.is_empty() {
        line.push_str(&format!(
            "; could not remove {}; try again with: ticket-worker demo --remove {run}",
            failed.join(" and ")
        ));
    }
    if whose == Whose::ThisRunOnNamesGiven {
        line.push_str("; the exchanges and queues you named stay as they are");
    }
    crate::observe::scrub(&line)
}

/// The one line after a run with `--keep`. `held` is `None` when the
/// topology was not the run's own.
pub(super) fn kept_line(run: &DemoRun, held: Option<Result<Held, CleanUpError>>) -> String {
    let topology = match held {
        None => String::new(),
        Some(Ok(held)) => format!(
            " and its exchanges and queues {}{}",
            run.topology_pattern(),
            held_note(held)
        ),
        Some(Err(_)) => format!(" and its exchanges and queues {}", run.topology_pattern()),
    };
    format!(
        "kept what run {run} made: its rows (event ids {}…){topology}; remove them with: ticket-worker demo --remove {run}",
        run.event_id_prefix()
    )
}

/// ` (with 3 unanswered login events and 1 dead letter)`, or nothing.
fn held_note(held: Held) -> String {
    let mut notes = Vec::new();
    if held.unanswered > 0 {
        notes.push(counted(held.unanswered, "unanswered login event"));
    }
    if held.dead_letters > 0 {
        notes.push(counted(held.dead_letters, "dead letter"));
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!(" (with {})", notes.join(" and "))
    }
}

fn counted(n: u32, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clean_up_line_says_what_went_and_how_to_finish() {
        let run = DemoRun::parse("demo-1a2b3c4d").expect("a run id");
        let all = Removal {
            rows: Ok(Forgotten {
                tickets: 39,
                outcomes: 40,
                announcements: 0,
            }),
            topology: Some(Ok(Held {
                unanswered: 0,
                dead_letters: 1,
            })),
        };
        assert_eq!(
            removal_line(&run, &all, Whose::ThisRun),
            "removed what run demo-1a2b3c4d made: its rows (39 auth_tickets, 40 event_outcomes, 0 ticket_event_outbox) and its exchanges and queues taptalk.demo-1a2b3c4d.* (with 1 dead letter)"
        );
        assert!(all.complete().is_ok());
        let half = Removal {
            rows: Err(CleanUpError::NoAnswer(Duration::from_secs(15))),
            topology: Some(Ok(Held {
                unanswered: 3,
                dead_letters: 2,
            })),
        };
        let line = removal_line(&run, &half, Whose::EarlierRun);
        assert!(
            line.starts_with("removed what run demo-1a2b3c4d left: any exchanges and queues taptalk.demo-1a2b3c4d.* (with 3 unanswered login events and 2 dead letters)")
                && line.ends_with(
                    "could not remove its rows (Postgres: no answer within 15s); try again with: ticket-worker demo --remove demo-1a2b3c4d"
                ),
            "{line}"
        );
        assert!(half.complete().is_err());
        let kept = kept_line(&run, Some(Ok(Held::default())));
        assert_eq!(
            kept,
            "kept what run demo-1a2b3c4d made: its rows (event ids demo-1a2b3c4d-…) and its exchanges and queues taptalk.demo-1a2b3c4d.*; remove them with: ticket-worker demo --remove demo-1a2b3c4d"
        );
    }
}
