//! Startup: builds the worker's parts from [`Settings`] and runs them until
//! shutdown. `main` and the integration tests both go through here.

use crate::config::Settings;
use crate::health::endpoints::{self, Endpoints, LimitReading};
use crate::health::{Breaker, Probe, Probes, Readiness};
use crate::observe::metrics::Metrics;
use crate::pipeline::{EventPolicy, Pipeline, Upstream};
use crate::purge::PurgeSettings;
use crate::retry::{RetryPolicy, Verdict, retry};
use crate::shutdown::Shutdown;
use crate::storage::{TicketStore, describe_migration};
use crate::taptalk::{AdaptiveLimit, TaptalkClient};
use crate::worker::{Worker, WorkerSettings};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A built worker, ready to run.
#[derive(Debug)]
pub struct Application {
    store: TicketStore,
    worker: Worker,
    migrate: bool,
    purge: Option<PurgeSettings>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`, and what they read.
    http: Option<(SocketAddr, Endpoints)>,
    /// Where the HTTP server listens, once it does (port 0 picks one).
    http_addr: Arc<OnceLock<SocketAddr>>,
}

impl Application {
    /// Builds every part; connects to nothing yet.
    pub fn build(settings: Settings) -> anyhow::Result<Application> {
        let metrics = Metrics::new();
        let database = &settings.database;
        let counted = metrics.clone();
        let store = TicketStore::connect_lazy_observed(
            &database.url,
            database.max_connections,
            &database.reader_role,
            database.pooling,
            move || counted.database_connection_opened(),
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
                    settings
                        .breaker
                        .trip_after
                        .max(Duration::from_secs(5))
                        .saturating_add(Duration::from_secs(5)),
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
            Upstream {
                client,
                limit: limit.clone(),
                rate: settings.rate_limit.clone(),
                pause: crate::taptalk::UpstreamPause::new(settings.taptalk.max_retry_after),
                quota: settings.quota.map(|rate| {
                    let counted = metrics.clone();
                    crate::taptalk::quota::SharedQuota::new(
                        Arc::new(store.clone()),
                        settings.taptalk.server_key.id(),
                        rate,
                        move || counted.quota_take(),
                    )
                }),
            },
            breaker,
            policy,
            metrics.clone(),
        );
        let worker = Worker::new(
            WorkerSettings {
                broker: settings.broker.clone(),
                prefetch: settings.prefetch,
                shutdown_grace: settings.shutdown_grace,
                relay: settings.relay,
                progress_every: settings.progress_every,
                event_log_rate: settings.event_log_rate,
                delivery_deadline: settings.delivery_deadline,
            },
            pipeline,
            probes,
            store.clone(),
            limit.clone(),
            metrics.clone(),
        );
        let postgres: Arc<dyn Probe> = Arc::new(store.clone());
        let http = settings.http_listen.map(|listen| {
            let endpoints = Endpoints {
                metrics: metrics.clone(),
                limit: LimitReading::new(move || (limit.limit(), limit.in_flight())),
                heartbeat: worker.heartbeat().clone(),
                readiness: Readiness::new(metrics, postgres),
            };
            (listen, endpoints)
        });
        Ok(Application {
            store,
            worker,
            migrate: settings.migrate,
            purge: settings.purge,
            http,
            http_addr: Arc::new(OnceLock::new()),
        })
    }

    /// What the worker has done so far (also on `/metrics`).
    pub fn metrics(&self) -> Metrics {
        self.worker.metrics().clone()
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, once they are.
    pub fn http_address(&self) -> Arc<OnceLock<SocketAddr>> {
        Arc::clone(&self.http_addr)
    }

    /// Applies migrations (unless disabled), then consumes (and purges) until
    /// `shutdown`.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        // The probes answer from the start: /healthz while migrations wait
        // for Postgres, /readyz (not ready) until the worker consumes. The
        // server stops when this returns, however it returns.
        let stop_server = CancellationToken::new();
        let _stop_server = stop_server.clone().drop_guard();
        let server = match self.http {
            Some((listen, endpoints)) => {
                let listener = endpoints::bind(listen).await?;
                let bound = listener.local_addr().unwrap_or(listen);
                let _ = self.http_addr.set(bound);
                tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
                Some(tokio::spawn(endpoints::serve(
                    listener,
                    endpoints,
                    stop_server.clone(),
                )))
            }
            None => None,
        };
        if self.migrate {
            let heartbeat = self.worker.heartbeat();
            tokio::select! {
                migrated = heartbeat.while_waiting(migrate(&self.store)) => migrated?,
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
            let _ = tokio::time::timeout(crate::storage::STATEMENT_DEADLINE, purge).await;
        }
        stop_server.cancel();
        if let Some(server) = server {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
        // Closing says goodbye on every connection: a connection whose peer
        // stopped answering would hold the exit for ever.
        if tokio::time::timeout(Duration::from_secs(5), self.store.pool().close())
            .await
            .is_err()
        {
            tracing::warn!("Postgres connections did not close within 5s; exiting without them");
        }
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
