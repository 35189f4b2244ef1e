//! `ticket-worker dlq list`: reads the whole dead-letter queue without
//! consuming it and reports it ([`Listing`]), as text or `--json`.

use super::{Listing, cannot_open};
use crate::broker::dead_letters::{Browser, DeadLetter};
use crate::commands::secrets;
use crate::commands::{CommandError, broker_connection};
use crate::config::{BrokerArgs, BrokerSettings};
use crate::domain::text::json_printable;

/// `ticket-worker dlq list`.
#[derive(clap::Args)]
pub struct ListArgs {
    /// Dead letters shown per reason (their personal data masked)
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub samples: usize,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

pub(super) async fn run(args: &ListArgs) -> Result<(), CommandError> {
    let broker = BrokerSettings::from_args(&args.broker, None)?;
    secrets::register_broker(&broker);
    let listing = list(&broker, args.samples).await?;
    if args.json {
        let json = serde_json::to_string_pretty(&listing).map_err(anyhow::Error::from)?;
        println!("{}", json_printable(&json));
    } else {
        print!("{}", listing.to_text());
    }
    Ok(())
}

/// Reads every dead letter the queue holds now and gives each back.
async fn list(broker: &BrokerSettings, samples: usize) -> Result<Listing, CommandError> {
    let queue = &broker.topology.dead_letter_queue;
    let connection = broker_connection(broker, "dlq list").await?;
    let mut browser = Browser::open(&connection, queue)
        .await
        .map_err(|e| cannot_open(queue, &e))?;
    let mut listing = Listing::new(queue, samples);
    let now = chrono::Utc::now();
    // Letters are the worker's when its user wrote them: the workers log in
    // as the user list does (see docs/guarantees.md, Security).
    let worker_user = broker.login_user();
    let read = async {
        while let Some(delivery) = browser.next().await? {
            let letter = DeadLetter::read(&delivery, worker_user.as_deref());
            listing.add(&letter, &delivery.data, now);
        }
        browser.give_back().await
    };
    let result = read.await;
    let _ = connection.close(200, "listed".into()).await;
    result.map_err(|e| {
        anyhow::anyhow!(
            "reading the dead-letter queue {queue:?} failed: {e}; what was read goes back to the queue by itself"
        )
    })?;
    Ok(listing)
}
