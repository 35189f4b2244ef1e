//! Setting up and cleaning up what a run makes: its place on RabbitMQ (a
//! vhost, or names of its own: see `vhost.rs`) and its Postgres database
//! (`database.rs`). Each thing is noted before it is made, so that the
//! clean-up, which runs after success, failure and Ctrl-C alike, removes
//! whatever exists, each step within a time limit; `--keep` keeps it all
//! and prints how to remove it later.

use super::database::BenchDatabase;
use super::vhost::{self, Isolation, Place};
use crate::error::CleanUpError;
use secrecy::ExposeSecret;
use std::time::Duration;
use ticket_worker::broker::connect;
use ticket_worker::config::{BrokerSettings, DatabaseSettings};
use ticket_worker::observe::redact_url;

/// How long each clean-up step may take.
const CLEAN_UP_WITHIN: Duration = Duration::from_secs(30);

/// What a run has made so far.
pub(crate) struct Environment {
    /// 8 hex digits naming everything of the run.
    pub id: String,
    pub place: Option<Place>,
    /// A vhost `add_vhost` may have made (deleted even when unconfirmed).
    vhost: Option<String>,
    pub database: Option<BenchDatabase>,
}

impl Environment {
    pub(crate) fn new() -> Environment {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        Environment {
            id: hex[..8].to_owned(),
            place: None,
            vhost: None,
            database: None,
        }
    }

    /// Finds the run a place on RabbitMQ: a vhost of its own if it can,
    /// else names of its own. Says which on stderr.
    pub(crate) async fn prepare_broker(
        &mut self,
        broker: &BrokerSettings,
        delivery_limit: u32,
    ) -> anyhow::Result<&Place> {
        let user = broker.login_user();
        let made = vhost::make_vhost(
            &broker.amqp_url,
            user.as_deref(),
            &self.id,
            delivery_limit,
            &mut self.vhost,
        )
        .await;
        let place = match made {
            Ok(place) => place,
            Err(why) => {
                if let Some(name) = self.vhost.take() {
                    let _ = vhost::delete_vhost(&name).await;
                }
                let place = Place::with_names(&broker.amqp_url, &self.id, delivery_limit);
                if let Isolation::Names(pattern) = &place.isolation {
                    say(&format!(
                        "no vhost of its own ({why}); using exchanges and queues {pattern} in the vhost of AMQP_URL instead"
                    ));
                }
                place
            }
        };
        // Check the broker now, with a clear message, rather than later.
        let connection = connect(&place.amqp_url, "ticket-bench")
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot connect to RabbitMQ at {} (AMQP_URL): {e}",
                    redact_url(place.amqp_url.expose_secret())
                )
            })?;
        let _ = connection.close(200, "checked".into()).await;
        Ok(self.place.insert(place))
    }

    /// Creates and migrates the run's database.
    pub(crate) async fn prepare_database(
        &mut self,
        database: &DatabaseSettings,
    ) -> anyhow::Result<&BenchDatabase> {
        let bench = self
            .database
            .insert(BenchDatabase::new(&database.url, &self.id)?);
        bench.create(&database.reader_role).await?;
        Ok(bench)
    }

    /// Removes everything the run made; one line saying what went (and
    /// what did not, with how to remove it by hand), and whether all went.
    pub(crate) async fn remove(&mut self) -> (String, bool) {
        let mut removed = Vec::new();
        let mut failed = Vec::new();
        if let Some(name) = self.vhost.take() {
            match within(async { vhost::delete_vhost(&name).await.map_err(CleanUpError::from) })
                .await
            {
                Ok(()) => removed.push(format!("vhost {name}")),
                Err(e) => failed.push(format!(
                    "vhost {name} ({e}; remove it with: rabbitmqctl delete_vhost {name})"
                )),
            }
        } else if let Some(place) = &self.place
            && let Isolation::Names(pattern) = &place.isolation
        {
            match within(delete_names(place)).await {
                Ok(()) => removed.push(format!("exchanges and queues {pattern}")),
                Err(e) => failed.push(format!("exchanges and queues {pattern} ({e})")),
            }
        }
        if let Some(database) = self.database.take() {
            match within(database.drop_database()).await {
                Ok(()) => removed.push(format!("database {}", database.name)),
                Err(e) => failed.push(format!(
                    "database {} ({e}; remove it with: DROP DATABASE {} WITH (FORCE))",
                    database.name, database.name
                )),
            }
        }
        let mut line = if removed.is_empty() {
            "removed nothing".to_owned()
        } else {
            format!("removed {}", removed.join(" and "))
        };
        if !failed.is_empty() {
            line.push_str(&format!("; could not remove {}", failed.join(" and ")));
        }
        (ticket_worker::observe::scrub(&line), failed.is_empty())
    }

    /// The line for `--keep`: what stays, and how to remove it.
    pub(crate) fn kept_line(&self) -> String {
        let mut kept = Vec::new();
        if let Some(name) = &self.vhost {
            kept.push(format!("vhost {name} (rabbitmqctl delete_vhost {name})"));
        } else if let Some(place) = &self.place
            && let Isolation::Names(pattern) = &place.isolation
        {
            kept.push(format!(
                "exchanges and queues {pattern} (delete them with rabbitmqctl or the management UI)"
            ));
        }
        if let Some(database) = &self.database {
            kept.push(format!(
                "database {} (DROP DATABASE {} WITH (FORCE))",
                database.name, database.name
            ));
        }
        format!("kept {}", kept.join(" and "))
    }
}

impl Default for Environment {
    fn default() -> Self {
        Environment::new()
    }
}

/// Deletes the run's own exchanges and queues in the configured vhost.
async fn delete_names(place: &Place) -> Result<(), CleanUpError> {
    let connection = connect(&place.amqp_url, "ticket-bench clean-up")
        .await
        .map_err(CleanUpError::Connect)?;
    let deleted = async {
        let channel = connection.create_channel().await?;
        place.topology.delete(&channel).await?;
        channel
            .queue_delete(place.ceiling_source.as_str().into(), Default::default())
            .await?;
        channel
            .exchange_delete(place.ceiling_replies.as_str().into(), Default::default())
            .await?;
        let _ = channel.close(200, "bench clean-up".into()).await;
        Ok::<(), lapin::Error>(())
    }
    .await;
    let _ = connection.close(200, "bench clean-up".into()).await;
    Ok(deleted?)
}

async fn within<T>(step: impl Future<Output = Result<T, CleanUpError>>) -> Result<T, CleanUpError> {
    tokio::time::timeout(CLEAN_UP_WITHIN, step)
        .await
        .unwrap_or(Err(CleanUpError::NoAnswer))
}

pub(crate) fn say(line: &str) {
    eprintln!("bench: {}", ticket_worker::observe::scrub(line));
}
