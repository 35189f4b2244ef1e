//! Reading single values: secrets from a variable or its `_FILE`, required
//! settings, durations; and [`redact_url`], which hides the passwords in a URL.

use super::errors::ConfigError;
use secrecy::SecretString;
use std::path::PathBuf;
use std::time::Duration;

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
        (_, Some(path)) => {
            let text = secret_file(setting, path)?;
            let text = text.trim_end_matches(['\r', '\n']);
            if text.trim().is_empty() {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "{setting}_FILE {} is empty: write the secret into it, or point {setting}_FILE at the file that holds it",
                        path.display()
                    ),
                ));
            }
            Some(text.to_owned())
        }
        (_, None) => None,
    };
    let raw = from_file
        .or_else(|| value.map(str::to_owned))
        .or_else(|| default.map(str::to_owned));
    required(setting, flag, raw, true).map(SecretString::from)
}

/// The most a secret file may hold: far more than any URL or key.
pub(super) const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Reads a `*_FILE` secret: a regular file (not a device, a pipe or a
/// directory: `/dev/zero` would be read until memory ran out) of at most
/// [`MAX_SECRET_FILE_BYTES`], UTF-8. Warns when other users may read it, or
/// anyone but its owner write it.
fn secret_file(setting: &'static str, path: &std::path::Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let shown = path.display();
    let cannot = |why: String| {
        ConfigError::new(
            setting,
            format!("cannot read {setting}_FILE {shown}: {why}"),
        )
    };
    let metadata = std::fs::metadata(path).map_err(|e| cannot(e.to_string()))?;
    if !metadata.is_file() {
        return Err(cannot(
            "it is not a regular file (a directory, a device or a pipe); point it at the file that holds the secret".into(),
        ));
    }
    if metadata.len() > MAX_SECRET_FILE_BYTES {
        return Err(cannot(format!(
            "it holds {} bytes, more than a secret file may ({MAX_SECRET_FILE_BYTES})",
            metadata.len()
        )));
    }
    warn_if_loose(setting, path, &metadata);
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_SECRET_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| cannot(e.to_string()))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(cannot(format!(
            "it grew past {MAX_SECRET_FILE_BYTES} bytes while being read"
        )));
    }
    String::from_utf8(bytes).map_err(|_| cannot("it is not UTF-8 text".into()))
}

/// Warns when a secret file is readable by other users, or writable by
/// anyone but its owner. Group-readable is fine: Kubernetes mounts Secrets
/// for the pod's group.
fn warn_if_loose(setting: &'static str, path: &std::path::Path, metadata: &std::fs::Metadata) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o026 != 0 {
            tracing::warn!(
                setting = %format!("{setting}_FILE"),
                path = %path.display(),
                mode = %format!("{mode:04o}"),
                "a secret file is readable by other users or writable by others than its owner; chmod 600 (or 440 for a group) it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (setting, path, metadata);
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
