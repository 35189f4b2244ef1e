//! The flags of `ticket-bench`. A `--case` picks a preset (see
//! `cases.rs`); every flag given overrides it.

use super::cases::Case;
use std::path::PathBuf;
use std::time::Duration;
use ticket_worker::config::{BrokerArgs, DatabaseArgs};

/// `ticket-bench`.
#[derive(clap::Args, Clone)]
pub(crate) struct BenchArgs {
    /// A preset reproducing one of the performance targets; flags override it
    #[arg(long, value_enum)]
    pub case: Option<Case>,
    /// Login events to publish (per phase)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub events: Option<u32>,
    /// Publish at this many events per second instead of all at once
    #[arg(long, value_parser = positive_rate)]
    pub rate: Option<f64>,
    /// Stand-in latency per request
    #[arg(long, value_parser = duration)]
    pub latency: Option<Duration>,
    /// Random extra stand-in latency per request, up to this much
    #[arg(long, value_parser = duration)]
    pub jitter: Option<Duration>,
    /// Requests the stand-in serves at once; the rest wait in line
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: Option<u32>,
    /// Requests that may wait in the stand-in's line; beyond, 503 at once
    #[arg(long, requires = "capacity")]
    pub max_queue: Option<u32>,
    /// Worker replicas (separate processes); in the replicas case, the count compared with one
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub replicas: Option<u32>,
    /// A worker setting for every replica (repeatable); otherwise replicas run at the worker's defaults
    #[arg(long = "worker-env", value_name = "KEY=VALUE", value_parser = key_value)]
    pub worker_env: Vec<(String, String)>,
    /// Messages in the broker-only ceiling run (default: as many as the largest phase publishes)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub ceiling_events: Option<u32>,
    /// Skip the broker-only ceiling
    #[arg(long)]
    pub no_ceiling: bool,
    /// Write a JSON report to this file ("-": stdout, the table then goes to stderr)
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write an SVG plot of throughput and latency over the run
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// Give up (saying which events are missing) after this long in all
    #[arg(long, default_value = "30m", value_parser = duration)]
    pub timeout: Duration,
    /// Keep the vhost (or exchanges and queues) and database the run made
    #[arg(long)]
    pub keep: bool,
    /// Write each replica's whole log to DIR/replica-N.log (secrets scrubbed)
    #[arg(long, value_name = "DIR")]
    pub replica_logs: Option<PathBuf>,
    /// Run this ticket-worker binary as the replicas (default: the worker built into this one), to compare two builds under one harness
    #[arg(long, value_name = "PATH")]
    pub worker_bin: Option<PathBuf>,
    /// Spin one core for the whole run, as a CPU-hungry neighbour on a shared node would
    #[arg(long)]
    pub burn_core: bool,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

fn duration(raw: &str) -> Result<Duration, String> {
    if raw.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(raw).map_err(|e| format!("{e}; write e.g. 100ms, 2s, 5m"))
}

fn positive_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0 => Ok(rate),
        _ => Err("must be a number of events per second above 0".into()),
    }
}

/// `KEY=VALUE`, the key an environment variable name.
fn key_value(raw: &str) -> Result<(String, String), String> {
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| "expected KEY=VALUE, e.g. CONCURRENCY=256".to_owned())?;
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !plain {
        return Err(format!(
            "{key:?} is not a setting name; expected KEY=VALUE with KEY like CONCURRENCY"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_env_takes_setting_names_only() {
        assert_eq!(
            key_value("CONCURRENCY=256"),
            Ok(("CONCURRENCY".into(), "256".into()))
        );
        assert_eq!(
            key_value("RUST_LOG=info,a=b"),
            Ok(("RUST_LOG".into(), "info,a=b".into()))
        );
        for bad in ["CONCURRENCY", "=1", "concurrency=1", "A B=1"] {
            assert!(key_value(bad).is_err(), "{bad}");
        }
    }
}
