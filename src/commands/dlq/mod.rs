//! `ticket-worker dlq list | replay`: the operator's tools for the
//! dead-letter queue (see docs/operating.md, "Dead letters: list and replay").
//!
//! `list` counts the dead letters by reason and shows a few of each with
//! their personal data masked; `replay` publishes chosen ones to the login
//! exchange again, clearing first what would make them fail again, and only
//! then removes them. Neither consumes what it does not replay: both read
//! the queue through [`Browser`](crate::broker::dead_letters::Browser).

mod list;
mod listing;
pub mod replay;
mod report;

pub use list::ListArgs;
pub use listing::Listing;
pub use replay::{Interrupt, ReplayArgs};
pub use report::ReplayReport;

use super::CommandError;
use crate::broker::dead_letters::BrowseError;

/// `ticket-worker dlq`.
#[derive(clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// Count the dead letters by reason and show a few of each, personal data masked
    List(Box<ListArgs>),
    /// Publish chosen dead letters to the login exchange again, then remove them
    Replay(Box<ReplayArgs>),
}

pub async fn run(args: &DlqArgs) -> Result<(), CommandError> {
    match &args.command {
        DlqCommand::List(args) => list::run(args).await,
        DlqCommand::Replay(args) => replay::run(args).await,
    }
}

/// Why the dead-letter queue could not be opened, with what to do.
fn cannot_open(queue: &str, error: &BrowseError) -> CommandError {
    let missing = matches!(error.broker().map(lapin::Error::kind), Some(lapin::ErrorKind::ProtocolError(amqp)) if amqp.get_id() == 404);
    if missing {
        anyhow::anyhow!(
            "the dead-letter queue {queue:?} does not exist: check DEAD_LETTER_QUEUE (a worker declares it at start)"
        )
        .into()
    } else {
        anyhow::anyhow!("cannot read the dead-letter queue {queue:?}: {error}").into()
    }
}
