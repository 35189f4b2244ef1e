//! Reading single values: secrets from a variable or its `_FILE`, required
//! settings, durations; and [`redact_url`], which hides the passwords in a URL.

use super::errors::ConfigError;
use secrecy::SecretString;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// A secret from its variable or its `_FILE` variant (exactly one of them).
pub(super) fn secret(
    setting: &'static str,
    flag: &str,
    value: Option<&str>,
    file: Option<&PathBuf>,
    default: Option<&str>,
) -> Result<SecretString, ConfigError> {
    let value = value.filter(|v| !v.is_empty());
    let from_file = match (value, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                setting,
                format!("set either {setting} or {setting}_FILE, not both"),
            ));
        }
        (_, Some(path)) => Some(std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                setting,
                format!("cannot read {setting}_FILE {}: {e}", path.display()),
            )
        })?),
        (_, None) => None,
    };
    let raw = from_file
        .map(|text| text.trim_end_matches(['\r', '\n']).to_owned())
        .or_else(|| value.map(str::to_owned))
        .or_else(|| default.map(str::to_owned));
    required(setting, flag, raw, true).map(SecretString::from)
}

pub(super) fn required(
    setting: &'static str,
    flag: &str,
    value: Option<String>,
    has_file: bool,
) -> Result<String, ConfigError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ConfigError::new(
            setting,
            format!(
                "missing; set the environment variable {setting}{} or pass {flag}",
                if has_file {
                    format!(" (or {setting}_FILE)")
                } else {
                    String::new()
                }
            ),
        )),
    }
}

/// A duration like `30s`, `5m`, `250ms` or `0`.
pub(super) fn duration(setting: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    if raw.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(raw.trim()).map_err(|e| {
        ConfigError::new(
            setting,
            format!("is not a duration ({e}); write e.g. 30s, 5m, 250ms"),
        )
    })
}

pub(super) fn positive_duration(setting: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    let value = duration(setting, raw)?;
    if value.is_zero() {
        return Err(ConfigError::new(setting, "must be longer than 0"));
    }
    Ok(value)
}

/// A URL with its passwords replaced by `***`, for logs and `Debug`: the one
/// in the user info and any `password`-like query parameter (Postgres
/// accepts `?password=` and `?sslpassword=`).
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = Url::parse(raw) else {
        return "[unparseable URL]".to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    let secret_key = |key: &str| {
        let key = key.to_ascii_lowercase();
        key.contains("password") || key.contains("secret") || key == "pass"
    };
    if url.query_pairs().any(|(key, _)| secret_key(&key)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let value = if secret_key(&k) {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}
