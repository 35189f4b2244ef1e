//! `ticket-worker dlq replay`: publishes chosen dead letters to the login
//! exchange again, so that the worker tries them once more.
//!
//! For each chosen dead letter, in this order:
//!
//! 1. clear what would make the replay fail again without a TapTalk call:
//!    the failure recorded for its event when that failure is what put it
//!    here (`retries_exhausted`, `rejected_by_upstream`), with its
//!    `ticket.failed` if still waiting in the outbox; never an event that has
//!    a ticket (its replay is answered with that ticket, announced again);
//! 2. publish the replay ([`ReplayCopy`]: the original body and properties
//!    under the original routing key, without the worker's or RabbitMQ's
//!    headers, so the retry count starts at 0) with a confirm, `mandatory`;
//! 3. only then remove the dead letter from the queue.
//!
//! Copies of one event can differ (a publisher may send another body under
//! the same eventID), and the first outcome recorded wins: so a replay
//! clears a recorded failure only for the copy it was recorded for (its
//! body's digest), and replays at most one body per event in one run (a
//! dead letter of the same event with another body stays in place), so that
//! no copy can race the one whose failure it cleared.
//!
//! A crash anywhere repeats a step, never loses a dead letter: until step 3
//! the dead letter is still the queue's (RabbitMQ takes it back from a dead
//! connection), and a second run replays it again; a replay published twice
//! is one event twice, which the worker answers once (first outcome wins).
//! Dead letters not chosen are given back in their order.

use super::{ReplayReport, cannot_open};
use crate::broker::dead_letters::{Browser, DeadLetter, Reason, ReplayCopy};
use crate::broker::{PublishError, Publisher};
use crate::commands::secrets;
use crate::commands::{CommandError, broker_connection};
use crate::config::{BrokerArgs, DatabaseArgs, ReplaySettings, SelectionArgs};
use crate::storage::{Cleared, ReplayState, StoreError, TicketStore, body_digest};
use lapin::message::Delivery;
use std::collections::HashMap;
use std::sync::Arc;

/// `ticket-worker dlq replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Show what would be replayed, and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Stopping a replay part-way as a crash would (tests).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    Never,
    /// Drop the connection right after the n-th replay is confirmed, before
    /// its dead letter is removed.
    AfterPublishing(u64),
}

pub async fn run(args: &ReplayArgs) -> Result<(), CommandError> {
    let report = replay(args, Interrupt::Never).await?;
    if args.json {
        let json = serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?;
        println!("{}", crate::domain::text::json_printable(&json));
    } else {
        print!("{}", report.to_text());
    }
    let (_, _, failed) = report.totals();
    if let Some(stopped) = &report.stopped {
        return Err(anyhow::anyhow!("the replay stopped early: {stopped}").into());
    }
    if failed > 0 {
        return Err(anyhow::anyhow!(
            "{failed} dead letters could not be replayed and stay in the queue; run again once the cause above is fixed"
        )
        .into());
    }
    Ok(())
}

/// Replays what `args` chooses; the report says what became of each dead
/// letter. `interrupt` is for tests.
pub async fn replay(args: &ReplayArgs, interrupt: Interrupt) -> Result<ReplayReport, CommandError> {
    let settings = ReplaySettings::from_args(&args.broker, &args.database, &args.selection)?;
    secrets::register_broker(&settings.broker);
    secrets::register_database(&settings.database);
    let database = &settings.database;
    // One statement at a time: one connection.
    let store = TicketStore::connect_lazy_with_reader_role(&database.url, 1, &database.reader_role)
        .map_err(|e| anyhow::anyhow!("cannot use DATABASE_URL: {e}"))?;
    if let Err(error) = store.probe().await {
        // A pool timeout hides why; the store asks the server (as migrate does).
        let why = store.explain(&error).await;
        return Err(anyhow::anyhow!("cannot use Postgres: {why}").into());
    }

    let broker = &settings.broker;
    let topology = &broker.topology;
    let connection = broker_connection(broker, "dlq replay").await?;
    let setup = async {
        topology.declare(&connection).await?;
        let user = broker.login_user();
        Publisher::open(&connection, Arc::new(topology.clone()), user.as_deref()).await
    };
    let publisher = setup.await.map_err(|e| {
        let refused = matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406);
        let hint = if refused {
            "; RabbitMQ refuses the queues' arguments: give DELIVERY_LIMIT (and the names) the values the workers use"
        } else {
            ""
        };
        anyhow::anyhow!("cannot declare the exchanges and queues: {e}{hint}")
    })?;
    // Letters are the worker's when its user wrote them: the workers log in
    // as the user replay does (see docs/guarantees.md, Security).
    let worker_user = broker.login_user();
    let queue = &topology.dead_letter_queue;
    let mut browser = Browser::open(&connection, queue)
        .await
        .map_err(|e| cannot_open(queue, &e))?;

    let replayer = Replayer {
        store,
        publisher,
        dry_run: args.dry_run,
    };
    let mut report = ReplayReport::new(queue, &topology.login_exchange, args.dry_run);
    let mut chosen = 0u64;
    let mut published = 0u64;
    // The body replayed for each event in this run.
    let mut replayed_bodies: HashMap<String, [u8; 32]> = HashMap::new();
    loop {
        let delivery = match browser.next().await {
            Ok(Some(delivery)) => delivery,
            Ok(None) => break,
            Err(error) => {
                report.stopped = Some(format!("reading the dead-letter queue failed: {error}"));
                break;
            }
        };
        let letter = DeadLetter::read(&delivery, worker_user.as_deref());
        let within_limit = settings.selection.limit.is_none_or(|limit| chosen < limit);
        if !settings.selection.takes(letter.reason) || !within_limit {
            report.skipped(&letter);
            continue;
        }
        chosen += 1;
        let digest = body_digest(&delivery.data);
        if let Some(id) = &letter.event_id {
            match replayed_bodies.get(id.as_str()) {
                Some(replayed) if *replayed != digest => {
                    report.failed(
                        &letter,
                        None,
                        "another copy of this event, with another body, was replayed in this run; this one stays in place so that it cannot compete with it".into(),
                    );
                    continue;
                }
                _ => {
                    replayed_bodies.insert(id.as_str().to_owned(), digest);
                }
            }
        }
        let note = match replayer.prepare(&letter, &delivery.data).await {
            Ok(note) => note,
            Err(error) => {
                report.stopped = Some(format!(
                    "cannot clear the recorded failure of {} in Postgres: {error}",
                    shown_id(&letter)
                ));
                break;
            }
        };
        if replayer.dry_run {
            report.replayed(&letter, note);
            continue;
        }
        match replayer.publish(&delivery, &letter).await {
            Ok(()) => {}
            Err(error) if error.is_broker_failure() => {
                report.failed(&letter, note, error.to_string());
                report.stopped = Some(format!("RabbitMQ failed: {error}"));
                break;
            }
            Err(error) => {
                report.failed(&letter, note, error.to_string());
                continue;
            }
        }
        published += 1;
        if interrupt == Interrupt::AfterPublishing(published) {
            // As if the process died here: the connection goes, and
            // RabbitMQ takes back every dead letter it held, this one too.
            let _ = connection.close(200, "interrupted (test)".into()).await;
            return Err(anyhow::anyhow!("interrupted after publishing a replay").into());
        }
        if let Err(error) = browser.remove(&delivery).await {
            let error = format!("replayed, but removing it failed: {error}");
            report.failed(&letter, note, error);
            report.stopped = Some(
                "RabbitMQ failed; the dead letter stays in the queue, and a second run replays it again (the worker answers the event once)".into(),
            );
            break;
        }
        report.replayed(&letter, note);
    }
    if let Err(error) = browser.give_back().await
        && report.stopped.is_none()
    {
        report.stopped = Some(format!(
            "giving back the dead letters not replayed failed: {error}; RabbitMQ takes them back with the connection"
        ));
    }
    let _ = connection.close(200, "replayed".into()).await;
    Ok(report)
}

/// The parts one replay needs.
struct Replayer {
    store: TicketStore,
    publisher: Publisher,
    dry_run: bool,
}

impl Replayer {
    /// Step 1: clears the recorded failure that put `letter` here (with
    /// `--dry-run`, only looks); returns what it found, in words.
    async fn prepare(
        &self,
        letter: &DeadLetter,
        body: &[u8],
    ) -> Result<Option<String>, StoreError> {
        let Some(event_id) = &letter.event_id else {
            return Ok(Some("no usable eventID: nothing recorded to clear".into()));
        };
        let digest = body_digest(body);
        let note = match letter.reason.recorded_failure() {
            Some(reason) if !self.dry_run => {
                let cleared = self
                    .store
                    .clear_for_replay(event_id, reason, &digest)
                    .await?;
                describe_cleared(&cleared, reason.as_str())
            }
            reason => {
                let state = self.store.replay_state(event_id, &digest).await?;
                describe_state(&state, reason.map(|r| r.as_str()))
            }
        };
        // Invalid events are not recorded: their body decides, again.
        let note = note.or_else(|| {
            (letter.reason == Reason::Invalid).then(|| {
                "checked again as it is: invalid again unless the worker's rules or settings changed"
                    .to_owned()
            })
        });
        Ok(match (&letter.unreadable_headers, note) {
            (None, note) => note,
            (Some(_), None) => Some("its unreadable headers are left out".into()),
            (Some(_), Some(note)) => Some(format!("{note}; its unreadable headers are left out")),
        })
    }

    /// Step 2: publishes the replay and waits for its confirm.
    async fn publish(&self, delivery: &Delivery, letter: &DeadLetter) -> Result<(), PublishError> {
        let copy = ReplayCopy::of(delivery, self.publisher.user_id(), letter.by_worker);
        self.publisher.replay(&copy, &delivery.data).await
    }
}

fn describe_cleared(cleared: &Cleared, reason: &str) -> Option<String> {
    if cleared.failure {
        let outbox = if cleared.announcement {
            ", and its ticket.failed not yet announced"
        } else {
            ""
        };
        return Some(format!("cleared its recorded {reason} failure{outbox}"));
    }
    describe_state(&cleared.before, Some(reason))
}

/// What a replay will meet, for a dead letter whose failure was not cleared
/// (or, with `--dry-run`, would be).
fn describe_state(state: &ReplayState, clears: Option<&str>) -> Option<String> {
    if state.ticketed {
        return Some("already has a ticket: the worker announces it again".into());
    }
    match (&state.failure, clears) {
        (Some(recorded), _) if state.other_copy => Some(format!(
            "its recorded {recorded} failure is another copy's (the bodies differ), which stays: the worker answers this one with it again"
        )),
        (Some(recorded), Some(reason)) if recorded == reason => {
            Some(format!("would clear its recorded {reason} failure"))
        }
        (Some(recorded), _) => Some(format!(
            "its recorded failure is {recorded}, which stays: the worker answers it again"
        )),
        (None, _) => None,
    }
}

fn shown_id(letter: &DeadLetter) -> String {
    match &letter.event_id {
        Some(id) => format!("event {id}"),
        None => "a dead letter without eventID".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ticketed: bool, failure: Option<&str>) -> ReplayState {
        ReplayState {
            ticketed,
            failure: failure.map(str::to_owned),
            other_copy: false,
        }
    }

    #[test]
    fn notes_say_what_the_replay_meets() {
        assert_eq!(
            describe_state(&state(true, None), Some("retries_exhausted")).as_deref(),
            Some("already has a ticket: the worker announces it again")
        );
        assert_eq!(
            describe_state(
                &state(false, Some("retries_exhausted")),
                Some("retries_exhausted")
            )
            .as_deref(),
            Some("would clear its recorded retries_exhausted failure")
        );
        assert_eq!(
            describe_state(&state(false, Some("expired")), None).as_deref(),
            Some("its recorded failure is expired, which stays: the worker answers it again")
        );
        assert_eq!(describe_state(&state(false, None), None), None);
        let cleared = Cleared {
            before: state(false, Some("rejected_by_upstream")),
            failure: true,
            announcement: true,
        };
        assert_eq!(
            describe_cleared(&cleared, "rejected_by_upstream").as_deref(),
            Some(
                "cleared its recorded rejected_by_upstream failure, and its ticket.failed not yet announced"
            )
        );
    }
}
