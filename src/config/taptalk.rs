//! TapTalk settings: the base URL, the server key (id and secret, or secret
//! file), the request timeout and how long one event retries.

use super::errors::{ConfigError, ConfigErrors, Problems};
use super::values::{required, secret};
use crate::retry::RetryPolicy;
use crate::taptalk::ServerKey;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// The TapTalk server key (read by `run` and by the stand-in).
#[derive(clap::Args, Clone)]
pub struct ServerKeyArgs {
    /// Server Key ID from the TapTalk dashboard
    #[arg(
        long,
        env = "TAPTALK_SERVER_KEY_ID",
        value_name = "TAPTALK_SERVER_KEY_ID"
    )]
    pub taptalk_server_key_id: Option<String>,
    /// Server Key Secret from the TapTalk dashboard (prefer the _FILE variant)
    #[arg(
        long,
        env = "TAPTALK_SERVER_KEY_SECRET",
        value_name = "TAPTALK_SERVER_KEY_SECRET",
        hide_env_values = true
    )]
    pub taptalk_server_key_secret: Option<String>,
    /// File holding the Server Key Secret
    #[arg(
        long,
        env = "TAPTALK_SERVER_KEY_SECRET_FILE",
        value_name = "TAPTALK_SERVER_KEY_SECRET_FILE"
    )]
    pub taptalk_server_key_secret_file: Option<PathBuf>,
}

/// Where to find TapTalk.io, and the server key.
#[derive(clap::Args, Clone)]
pub struct TaptalkArgs {
    /// TapTalk base URL, e.g. https://taptalk.io (the stand-in: http://127.0.0.1:8089)
    #[arg(
        long,
        env = "TAPTALK_BASE_URL",
        value_name = "TAPTALK_BASE_URL",
        hide_env_values = true
    )]
    pub taptalk_base_url: Option<String>,
    #[command(flatten)]
    pub key: ServerKeyArgs,
}

/// TapTalk connection settings, validated.
#[derive(Debug, Clone)]
pub struct TaptalkSettings {
    pub base_url: Url,
    pub server_key: ServerKey,
    pub timeout: Duration,
    /// Retries of one request: 200 ms doubling to 5 s, for `retry_for`.
    pub retry: RetryPolicy,
    /// `TAPTALK_MAX_RETRY_AFTER`: the longest pause a 429's `Retry-After`
    /// imposes (see [`UpstreamPause`](crate::taptalk::UpstreamPause)).
    pub max_retry_after: Duration,
}

impl TaptalkSettings {
    pub fn new(
        base_url: Url,
        server_key: ServerKey,
        timeout: Duration,
        retry_for: Duration,
    ) -> TaptalkSettings {
        TaptalkSettings {
            base_url,
            server_key,
            timeout,
            retry: RetryPolicy {
                first_pause: Duration::from_millis(200),
                max_pause: Duration::from_secs(5),
                give_up_after: Some(retry_for),
            },
            max_retry_after: crate::taptalk::pause::DEFAULT_MAX_RETRY_AFTER,
        }
    }
}

/// The TapTalk base URL, checked (one setting, so at most one problem).
pub fn taptalk_base_url(raw: Option<&str>) -> Result<Url, ConfigErrors> {
    let raw = required(
        "TAPTALK_BASE_URL",
        "--taptalk-base-url",
        raw.map(str::to_owned),
        false,
    )?;
    let url = Url::parse(raw.trim()).map_err(|e| {
        ConfigError::new(
            "TAPTALK_BASE_URL",
            format!("is not a URL ({e}); expected e.g. https://taptalk.io"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(
            ConfigError::new("TAPTALK_BASE_URL", "must start with http:// or https://").into(),
        );
    }
    Ok(url)
}

/// The server key, from id plus secret (or secret file); reports the
/// problems of both.
pub fn server_key(args: &ServerKeyArgs) -> Result<ServerKey, ConfigErrors> {
    let mut problems = Problems::default();
    let id = problems.take(server_key_id(args.taptalk_server_key_id.clone()));
    let secret = problems.take(secret(
        "TAPTALK_SERVER_KEY_SECRET",
        "--taptalk-server-key-secret",
        args.taptalk_server_key_secret.as_deref(),
        args.taptalk_server_key_secret_file.as_ref(),
        None,
    ));
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(ServerKey::new(id, secret)),
        _ => Err(problems.into_errors()),
    }
}

fn server_key_id(raw: Option<String>) -> Result<String, ConfigError> {
    let id = required(
        "TAPTALK_SERVER_KEY_ID",
        "--taptalk-server-key-id",
        raw,
        false,
    )?;
    if id.contains(':') || id.chars().any(char::is_control) || id.trim() != id {
        return Err(ConfigError::new(
            "TAPTALK_SERVER_KEY_ID",
            "must not contain ':', control characters or surrounding spaces",
        ));
    }
    Ok(id)
}
