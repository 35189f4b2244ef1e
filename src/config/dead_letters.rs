//! Settings of `dlq replay`: the broker and database settings every command
//! shares, and which dead letters to replay (`--reason`, `--limit`, `--all`;
//! one of them is required, so that a bare `dlq replay` replays nothing by
//! accident).

use super::errors::{ConfigError, ConfigErrors, Problems};
use super::{BrokerArgs, BrokerSettings, DatabaseArgs, DatabaseSettings};
use crate::broker::dead_letters::Reason;
use std::collections::BTreeSet;

/// Which dead letters `dlq replay` takes.
#[derive(clap::Args, Clone, Debug)]
pub struct SelectionArgs {
    /// Replay the dead letters of this reason (repeatable, or a comma list): invalid, rejected_by_upstream, retries_exhausted, delivery_limit, rejected, expired, maxlen, unknown
    #[arg(long, value_name = "REASON", value_delimiter = ',')]
    pub reason: Vec<String>,
    /// Replay at most N dead letters (of the chosen reasons), in queue order
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Replay every dead letter, whatever its reason
    #[arg(long, conflicts_with = "reason")]
    pub all: bool,
}

/// Which dead letters to replay, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// `None`: every reason.
    pub reasons: Option<BTreeSet<Reason>>,
    /// `None`: as many as there are.
    pub limit: Option<u64>,
}

impl Selection {
    /// Checks `--reason`, `--limit` and `--all`.
    pub fn from_args(args: &SelectionArgs) -> Result<Selection, ConfigError> {
        let mut reasons = BTreeSet::new();
        for raw in args
            .reason
            .iter()
            .map(|r| r.trim())
            .filter(|r| !r.is_empty())
        {
            let reason = Reason::parse(raw).ok_or_else(|| {
                let known: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
                ConfigError::new(
                    "--reason",
                    format!("{raw:?} is not a reason; use one of {}", known.join(", ")),
                )
            })?;
            reasons.insert(reason);
        }
        if args.limit == Some(0) {
            return Err(ConfigError::new(
                "--limit",
                "must be at least 1 (leave it out, with --reason or --all, for no limit)",
            ));
        }
        if reasons.is_empty() && args.limit.is_none() && !args.all {
            return Err(ConfigError::new(
                "--reason, --limit or --all",
                "missing; choose the dead letters to replay: --reason R (repeatable, or a comma list), --limit N (the first N), or --all (every one); `ticket-worker dlq list` shows what is there",
            ));
        }
        Ok(Selection {
            reasons: (!reasons.is_empty()).then_some(reasons),
            limit: args.limit,
        })
    }

    /// Whether dead letters of `reason` are chosen (the limit aside).
    pub fn takes(&self, reason: Reason) -> bool {
        self.reasons.as_ref().is_none_or(|r| r.contains(&reason))
    }
}

/// Everything `dlq replay` needs, checked. `Debug` hides every secret.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    pub broker: BrokerSettings,
    pub database: DatabaseSettings,
    pub selection: Selection,
}

impl ReplaySettings {
    /// Checks every setting, reporting every problem found.
    pub fn from_args(
        broker: &BrokerArgs,
        database: &DatabaseArgs,
        selection: &SelectionArgs,
    ) -> Result<ReplaySettings, ConfigErrors> {
        let mut problems = Problems::default();
        let broker = problems.take(BrokerSettings::from_args(broker, None));
        let database = problems.take(DatabaseSettings::from_args(database, None));
        let selection = problems.take(Selection::from_args(selection));
        match (broker, database, selection) {
            (Some(broker), Some(database), Some(selection)) => Ok(ReplaySettings {
                broker,
                database,
                selection,
            }),
            _ => Err(problems.into_errors()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(reason: &[&str], limit: Option<u64>, all: bool) -> SelectionArgs {
        SelectionArgs {
            reason: reason.iter().map(|r| r.to_string()).collect(),
            limit,
            all,
        }
    }

    #[test]
    fn one_of_reason_limit_or_all_is_required() {
        let error = Selection::from_args(&args(&[], None, false)).expect_err("refused");
        let text = error.to_string();
        for flag in ["--reason", "--limit", "--all"] {
            assert!(text.contains(flag), "{text}");
        }
        let all = Selection::from_args(&args(&[], None, true)).expect("--all");
        assert_eq!(all.reasons, None);
        assert!(all.takes(Reason::Invalid));
        let first = Selection::from_args(&args(&[], Some(2), false)).expect("--limit");
        assert_eq!(first.limit, Some(2));
    }

    #[test]
    fn reasons_are_checked_and_limit_zero_is_refused() {
        let chosen = Selection::from_args(&args(&["retries_exhausted", "invalid"], None, false))
            .expect("reasons");
        assert!(chosen.takes(Reason::Invalid) && chosen.takes(Reason::RetriesExhausted));
        assert!(!chosen.takes(Reason::DeliveryLimit));
        let error =
            Selection::from_args(&args(&["retries-exhausted"], None, false)).expect_err("typo");
        assert_eq!(error.setting, "--reason");
        assert!(error.problem.contains("retries_exhausted"), "{error}");
        let error = Selection::from_args(&args(&[], Some(0), false)).expect_err("zero");
        assert_eq!(error.setting, "--limit");
    }
}
