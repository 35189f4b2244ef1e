//! `ticket-worker fake-taptalk`: serves the TapTalk.io stand-in until SIGTERM
//! or SIGINT (see [`fake_taptalk`]).

use super::CommandError;
use crate::config::ServerKeyArgs;
use crate::shutdown::Shutdown;
use fake_taptalk::{FakeTaptalk, Knobs};
use std::net::SocketAddr;
use std::time::Duration;

/// `ticket-worker fake-taptalk`.
#[derive(clap::Args)]
pub struct FakeTaptalkArgs {
    /// Address to listen on
    #[arg(
        long,
        env = "FAKE_TAPTALK_LISTEN",
        value_name = "FAKE_TAPTALK_LISTEN",
        default_value = "127.0.0.1:8089"
    )]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub key: ServerKeyArgs,
    /// Delay added to every answer
    #[arg(long, env = "FAKE_LATENCY", value_name = "FAKE_LATENCY", value_parser = duration, default_value = "0s")]
    pub latency: Duration,
    /// Random extra delay, up to this much
    #[arg(long, env = "FAKE_LATENCY_JITTER", value_name = "FAKE_LATENCY_JITTER", value_parser = duration, default_value = "0s")]
    pub latency_jitter: Duration,
    /// Share of requests answered 503 (0 to 1)
    #[arg(long, env = "FAKE_FAIL_503", value_name = "FAKE_FAIL_503", value_parser = share, default_value_t = 0.0)]
    pub fail_503: f64,
    /// Share of requests answered 429 with Retry-After: 1 (0 to 1)
    #[arg(long, env = "FAKE_FAIL_429", value_name = "FAKE_FAIL_429", value_parser = share, default_value_t = 0.0)]
    pub fail_429: f64,
    /// Share of requests that hang past any client timeout (0 to 1)
    #[arg(long, env = "FAKE_HANG", value_name = "FAKE_HANG", value_parser = share, default_value_t = 0.0)]
    pub hang: f64,
    /// How long a hanging request hangs
    #[arg(long, env = "FAKE_HANG_FOR", value_name = "FAKE_HANG_FOR", value_parser = duration, default_value = "5m")]
    pub hang_for: Duration,
    /// Answer every request HeaderValidationFailed, as if the key were revoked
    #[arg(long, env = "FAKE_WRONG_KEY", value_name = "FAKE_WRONG_KEY")]
    pub wrong_key: bool,
    /// Send numeric error codes (40001, 40002) instead of names
    #[arg(
        long,
        env = "FAKE_NUMERIC_ERROR_CODES",
        value_name = "FAKE_NUMERIC_ERROR_CODES"
    )]
    pub numeric_error_codes: bool,
    /// Requests served at once (the latency is spent holding a slot); the rest wait in line. Default: no limit
    #[arg(long, env = "FAKE_CAPACITY", value_name = "FAKE_CAPACITY", value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: Option<u32>,
    /// With --capacity: requests that may wait; one more is shed at once with 503. Default: no limit
    #[arg(
        long,
        env = "FAKE_MAX_QUEUE",
        value_name = "FAKE_MAX_QUEUE",
        requires = "capacity"
    )]
    pub max_queue: Option<u32>,
}

pub async fn run(args: &FakeTaptalkArgs) -> Result<(), CommandError> {
    let key = crate::config::server_key(&args.key)?;
    crate::taptalk::register_with_logs(&key);
    let knobs = Knobs {
        latency: args.latency,
        latency_jitter: args.latency_jitter,
        fail_503: args.fail_503,
        fail_429: args.fail_429,
        hang: args.hang,
        hang_for: args.hang_for,
        wrong_key: args.wrong_key,
        numeric_codes: args.numeric_error_codes,
        capacity: args.capacity.map(|n| n as usize),
        max_queue: args.max_queue.map(|n| n as usize),
        unavailable_for: Vec::new(),
    };
    let server = FakeTaptalk::start(args.listen, &key, knobs.clone(), false)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} (FAKE_TAPTALK_LISTEN): {e}",
                args.listen
            )
        })?;
    tracing::info!(url = %server.base_url(), server_key_id = key.id(), ?knobs, "TapTalk stand-in listening");
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .map_err(|e| anyhow::anyhow!("cannot listen for signals: {e}"))?;
    shutdown.triggered().await;
    server.stop();
    Ok(())
}

/// A stand-in setting that takes a duration but was given something else;
/// clap names the setting and the value before this.
#[derive(Debug, thiserror::Error)]
#[error("{0}; write e.g. 25ms, 2s")]
struct DurationError(
    /// Said in the message itself, so not a `source` (it would be said twice).
    humantime::DurationError,
);

/// A stand-in setting that takes a share of requests (0 to 1) but was given
/// something else; clap names the setting and the value before this.
#[derive(Debug, thiserror::Error)]
#[error("must be a number between 0 and 1")]
struct ShareError;

fn duration(raw: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(raw).map_err(DurationError)
}

fn share(raw: &str) -> Result<f64, ShareError> {
    match raw.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(ShareError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_duration_says_how_to_write_one() {
        assert_eq!(duration("25ms").ok(), Some(Duration::from_millis(25)));
        let error = duration("soon").expect_err("not a duration");
        assert!(
            error.to_string().ends_with("; write e.g. 25ms, 2s"),
            "{error}"
        );
    }

    #[test]
    fn a_share_lies_between_0_and_1() {
        assert_eq!(share("0.25").ok(), Some(0.25));
        for bad in ["1.5", "-0.1", "half"] {
            assert_eq!(
                share(bad).map_err(|e| e.to_string()),
                Err("must be a number between 0 and 1".to_owned()),
            );
        }
    }
}
