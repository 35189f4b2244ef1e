//! Health: the [`breaker`] decides when TapTalk or Postgres is down for
//! everybody (so intake pauses), and [`probes`] asks the failing one, with
//! growing pauses, until it answers again; [`liveness`] and [`readiness`]
//! answer the `/healthz` and `/readyz` probes, which [`endpoints`] serves
//! with the metrics.

pub mod breaker;
pub mod endpoints;
pub mod liveness;
pub mod probes;
pub mod readiness;

pub use breaker::{Breaker, BreakerSettings, Dependency, Failure, Health};
pub use liveness::Heartbeat;
pub use probes::{Probe, Probes};
pub use readiness::{NotReady, Readiness};
