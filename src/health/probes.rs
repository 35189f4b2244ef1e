//! Probing a dependency that is down: once at start (so a wrong key or
//! password pauses intake before the first message is taken), and while
//! intake is paused, with growing pauses, until it answers again.
//!
//! A probe has no side effects: TapTalk is sent an empty body with the server
//! key (a healthy TapTalk that accepts the key answers `ParamValidationFailed`,
//! issuing nothing); Postgres is asked whether the worker may use its tables.

use super::{Breaker, Dependency, Failure, Health};
use crate::retry::{RetryPolicy, Schedule};
use crate::shutdown::Shutdown;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A dependency that can be asked, without side effects, whether it would
/// serve the worker. The TapTalk client and the store implement it.
pub trait Probe: Send + Sync + std::fmt::Debug {
    /// `None` when it answers as it should; otherwise what is wrong.
    fn probe(&self) -> Pin<Box<dyn Future<Output = Option<Failure>> + Send + '_>>;
}

/// An outage that returns within this long after intake resumed continues
/// with the long pauses it had reached.
const RESUMED_RECENTLY: Duration = Duration::from_secs(30);

/// Probes the dependencies and closes the breaker when the failing one
/// answers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Probes {
    breaker: Breaker,
    taptalk: Arc<dyn Probe>,
    postgres: Arc<dyn Probe>,
    pauses: RetryPolicy,
    memory: Arc<Mutex<ProbeMemory>>,
}

/// The probe pauses of the last outage, kept so that an outage that returns
/// soon after intake resumed continues with long pauses instead of starting
/// over at one second (a dependency that passes the probe but fails real
/// calls would otherwise make the worker flap every second).
#[derive(Debug, Default)]
struct ProbeMemory {
    schedule: Option<Schedule>,
    resumed_at: Option<Instant>,
}

impl Probes {
    pub fn new(
        breaker: Breaker,
        taptalk: Arc<dyn Probe>,
        postgres: Arc<dyn Probe>,
        pauses: RetryPolicy,
    ) -> Probes {
        Probes {
            breaker,
            taptalk,
            postgres,
            pauses,
            memory: Arc::new(Mutex::new(ProbeMemory::default())),
        }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// One probe of each dependency at start; the first that fails opens the
    /// breaker.
    pub async fn check_at_start(&self) {
        for dependency in [Dependency::Taptalk, Dependency::Postgres] {
            match self.probe(dependency).await {
                Ok(()) => tracing::info!(%dependency, "{dependency} answers"),
                Err((misconfigured, error)) => {
                    tracing::error!(
                        %dependency,
                        misconfigured,
                        %error,
                        "{dependency} is not usable at start: intake waits, probing until it answers"
                    );
                    self.breaker.open(dependency, misconfigured, error);
                    return;
                }
            }
        }
    }

    /// Asks a dependency, without side effects, whether it would serve us;
    /// on failure says whether the configuration is to blame.
    #[tracing::instrument(name = "health.probe", skip(self))]
    pub async fn probe(&self, dependency: Dependency) -> Result<(), (bool, String)> {
        let failure = match dependency {
            Dependency::Taptalk => self.taptalk.probe().await,
            Dependency::Postgres => self.postgres.probe().await,
        };
        match failure {
            None => Ok(()),
            Some(Failure::Misconfigured(reason)) => Err((true, reason)),
            Some(Failure::Transient(reason)) => Err((false, reason)),
        }
    }

    /// Probes the dependency that is down, with growing pauses, until it
    /// answers (`true`, the breaker closed) or shutdown is asked for (`false`).
    pub async fn wait_for_recovery(&self, shutdown: &Shutdown) -> bool {
        let mut schedule = {
            let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
            match (memory.schedule.take(), memory.resumed_at) {
                (Some(schedule), Some(at)) if at.elapsed() < RESUMED_RECENTLY => schedule,
                _ => self.pauses.schedule(),
            }
        };
        loop {
            let Health::Down { dependency, .. } = self.breaker.health() else {
                return true;
            };
            let pause = schedule.next_pause(None).unwrap_or(self.pauses.max_pause);
            let probed = tokio::select! {
                probed = async {
                    tokio::time::sleep(pause).await;
                    self.probe(dependency).await
                } => probed,
                _ = shutdown.triggered() => return false,
            };
            match probed {
                Ok(()) => {
                    self.breaker.close();
                    tracing::info!(%dependency, "{dependency} answers again; resuming intake");
                    let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
                    memory.schedule = Some(schedule);
                    memory.resumed_at = Some(Instant::now());
                    return true;
                }
                Err((_, error)) => {
                    tracing::info!(%dependency, %error, "{dependency} still unavailable; intake stays paused")
                }
            }
        }
    }
}
