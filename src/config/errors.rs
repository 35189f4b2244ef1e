//! How a setting is refused: [`ConfigError`] names the variable and says
//! what to do; [`ConfigErrors`] holds every one found in one reading, so a
//! first run lists everything to set at once.

use std::fmt;

/// One setting that is missing or malformed, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    /// The environment variable (the flag has the same name, in kebab case).
    pub setting: &'static str,
    pub problem: String,
}

impl From<crate::observe::traces::SettingError> for ConfigError {
    fn from(error: crate::observe::traces::SettingError) -> ConfigError {
        ConfigError::new(error.setting, error.problem)
    }
}

impl ConfigError {
    pub fn new(setting: &'static str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            setting,
            problem: problem.into(),
        }
    }
}

/// Every setting found missing or malformed in one reading, in the order
/// they were checked; never empty. Displayed as one line when there is one,
/// else as a count followed by one indented line per setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// Each problem, one per setting.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// The names of the settings at fault, in order.
    pub fn settings(&self) -> Vec<&'static str> {
        self.0.iter().map(|error| error.setting).collect()
    }

    /// The problem with `setting`, if it has one.
    pub fn get(&self, setting: &str) -> Option<&ConfigError> {
        self.0.iter().find(|error| error.setting == setting)
    }

    /// These and one more, found elsewhere (the `OTEL_*` settings, read
    /// before the logs start), so that one run still reports them all.
    pub fn and(mut self, error: ConfigError) -> ConfigErrors {
        self.0.push(error);
        self
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![error])
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "configuration error: {one}"),
            all => {
                write!(f, "{} configuration errors:", all.len())?;
                for error in all {
                    write!(f, "\n  {error}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects the problems of many settings while they are checked, so that
/// one reading reports every one of them.
#[derive(Debug, Default)]
pub(super) struct Problems(Vec<ConfigError>);

impl Problems {
    /// The checked value, or `None` with its problems kept.
    pub(super) fn take<T, E: Into<ConfigErrors>>(&mut self, checked: Result<T, E>) -> Option<T> {
        match checked {
            Ok(value) => Some(value),
            Err(errors) => {
                self.0.extend(errors.into());
                None
            }
        }
    }

    /// Keeps a problem with `setting` unless `ok`.
    pub(super) fn require(&mut self, ok: bool, setting: &'static str, problem: &str) {
        if !ok {
            self.0.push(ConfigError::new(setting, problem));
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems found. Called when a value is missing, so there is at
    /// least one; should there be none, the error says so rather than
    /// passing an empty list on.
    pub(super) fn into_errors(self) -> ConfigErrors {
        if self.0.is_empty() {
            return ConfigError::new(
                "settings",
                "a setting was refused without a reason (a bug in ticket-worker; please report it)",
            )
            .into();
        }
        ConfigErrors(self.0)
    }
}
