//! How a command fails, and which exit code that is: 2 for missing or
//! malformed settings, 1 for anything else.

use crate::config::{ConfigError, ConfigErrors};

/// How a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Every missing or malformed setting, one per line (exit code 2).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl From<ConfigError> for CommandError {
    fn from(error: ConfigError) -> CommandError {
        CommandError::Config(error.into())
    }
}

impl CommandError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::Config(_) => 2,
            CommandError::Failed(_) => 1,
        }
    }
}
