//! Startup: builds the worker's parts from [`Settings`] and runs them until
//! shutdown. `main` and the integration tests both go through here.

use crate::config::Settings;
use crate::health::{Breaker, Probes};
use crate::observe::counters::Counters;
use crate::pipeline::{EventPolicy, Pipeline};
use crate::purge::PurgeSettings;
use crate::retry::{RetryPolicy, Verdict, retry};
use crate::shutdown::Shutdown;
use crate::storage::{TicketStore, describe_migration};
use crate::taptalk::{AdaptiveLimit, TaptalkClient};
use crate::worker::{Worker, WorkerSettings};
use std::sync::Arc;
use std::time::Duration;

/// A built worker, ready to run.
#[derive(Debug)]
pub struct Application {
    store: TicketStore,
    worker: Worker,
    migrate: bool,
    purge: Option<PurgeSettings>,
}

impl Application {
    /// Builds every part; connects to nothing yet.
    pub fn build(settings: Settings) -> anyhow::Result<Application> {
        let database = &settings.database;
        let store = TicketStore::connect_lazy_with_reader_role(
            &database.url,
            database.max_connections,
            &database.reader_role,
        )
        .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?;
        let taptalk = &settings.taptalk;
        let client = TaptalkClient::new(
            &taptalk.base_url,
            taptalk.server_key.clone(),
            taptalk.timeout,
        )?;
        let policy = EventPolicy {
            max_event_bytes: settings.max_event_bytes,
            max_event_age: settings.max_event_age,
            max_clock_skew: settings.max_clock_skew,
            max_requeues: settings.max_requeues,
            upstream_retry: taptalk.retry,
            // Longer than OUTAGE_AFTER, so that in a real outage the breaker
            // opens before an event's retries run out (and counts against it).
            store_retry: RetryPolicy {
                first_pause: Duration::from_millis(100),
                max_pause: Duration::from_secs(2),
                give_up_after: Some(
                    settings.breaker.trip_after.max(Duration::from_secs(5))
                        + Duration::from_secs(5),
                ),
            },
        };
        let breaker = Breaker::new(settings.breaker);
        let probes = Probes::new(
            breaker.clone(),
            Arc::new(client.clone()),
            Arc::new(store.clone()),
            settings.probe,
        );
        let limit =
            AdaptiveLimit::new(&settings.limit).map_err(|e| anyhow::anyhow!("CONCURRENCY: {e}"))?;
        let pipeline = Pipeline::new(
            store.clone(),
            client,
            limit.clone(),
            settings.rate_limit.clone(),
            breaker,
            policy,
        );
        let worker = Worker::new(
            WorkerSettings {
                broker: settings.broker.clone(),
                prefetch: settings.prefetch,
                shutdown_grace: settings.shutdown_grace,
                relay: settings.relay,
                progress_every: settings.progress_every,
            },
            pipeline,
            probes,
            store.clone(),
            limit,
        );
        Ok(Application {
            store,
            worker,
            migrate: settings.migrate,
            purge: settings.purge,
        })
    }

    /// What the worker has done so far.
    pub fn stats(&self) -> Arc<Counters> {
        self.worker.stats()
    }

    /// Applies migrations (unless disabled), then consumes (and purges) until
    /// `shutdown`.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        if self.migrate {
            tokio::select! {
                migrated = migrate(&self.store) => migrated?,
                _ = shutdown.triggered() => return Ok(()),
            }
        }
        let purge = self.purge.map(|settings| {
            tokio::spawn(crate::purge::run(
                self.store.clone(),
                settings,
                shutdown.clone(),
            ))
        });
        self.worker.run(&shutdown).await;
        if let Some(purge) = purge {
            shutdown.trigger();
            let _ = purge.await;
        }
        self.store.pool().close().await;
        Ok(())
    }
}

/// Applies the migrations, waiting (with backoff) while Postgres is down or
/// refuses the configuration (a wrong password, no such database): like an
/// outage later on, that waits for an operator instead of exiting.
pub async fn migrate(store: &TicketStore) -> anyhow::Result<()> {
    retry(
        &crate::config::PROBE_PAUSES,
        || store.migrate(),
        |error| match error {
            // A connection lost while a migration ran (Postgres restarted, the
            // backend was terminated): the migration's transaction rolled back,
            // so trying again is safe.
            sqlx::migrate::MigrateError::Execute(e)
            | sqlx::migrate::MigrateError::ExecuteMigration(e, _)
                if crate::storage::is_transient(e) =>
            {
                let error = describe_migration(error);
                tracing::warn!(%error, "cannot reach Postgres to apply migrations; retrying");
                Verdict::Retry(None)
            }
            sqlx::migrate::MigrateError::Execute(e) if crate::storage::is_misconfiguration(e) => {
                let error = describe_migration(error);
                tracing::error!(%error, "Postgres refuses the worker's configuration; check DATABASE_URL; retrying");
                Verdict::Retry(None)
            }
            _ => Verdict::Stop,
        },
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "applying database migrations failed: {}",
            describe_migration(&e)
        )
    })?;
    tracing::info!("database migrations applied");
    Ok(())
}
