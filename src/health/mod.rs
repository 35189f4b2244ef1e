//! Dependency health: the [`breaker`] decides when TapTalk or Postgres is down
//! for everybody (so intake pauses), and [`probes`] asks the failing one,
//! with growing pauses, until it answers again.

pub mod breaker;
pub mod probes;

pub use breaker::{Breaker, BreakerSettings, Dependency, Failure, Health};
pub use probes::{Probe, Probes};
