//! A demo run's identity: its id ([`DemoRun`], `demo-1a2b3c4d`), the
//! exchanges, queues and event ids it names, and which topology names the
//! user gave instead ([`GivenNames`]). Everything the demo makes is found
//! again by these names alone, which is what `--remove` relies on.

use crate::broker::Topology;
use std::fmt;

/// Not a run id as the demo prints it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a demo run id as the demo printed it: demo- and 8 hex digits")]
pub struct NotARunId;

/// One demo run's id, `demo-` and 8 hex digits. It names the run's exchanges
/// and queues and starts its login events' ids, so that what a run made can
/// be told from everything else, and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoRun(String);

impl DemoRun {
    pub(super) fn new() -> DemoRun {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        DemoRun(format!("demo-{}", &hex[..8]))
    }

    /// Reads a run id as the demo prints it (`demo-1a2b3c4d`; the bare hex
    /// digits do too).
    pub fn parse(raw: &str) -> Result<DemoRun, NotARunId> {
        let hex = raw.strip_prefix("demo-").unwrap_or(raw);
        if hex.len() == 8 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(DemoRun(format!("demo-{hex}")))
        } else {
            Err(NotARunId)
        }
    }

    /// The run's own exchanges and queues: the worker's default names with
    /// `taptalk.` replaced by `taptalk.<run>.`.
    pub fn topology(&self, delivery_limit: u32) -> Topology {
        Topology::scoped(&self.0, delivery_limit)
    }

    /// What every event id of the run starts with: `demo-1a2b3c4d-`.
    pub fn event_id_prefix(&self) -> String {
        format!("{}-", self.0)
    }

    /// A fresh event id of the run.
    pub(super) fn event_id(&self) -> String {
        format!("{}{}", self.event_id_prefix(), uuid::Uuid::new_v4())
    }

    /// `taptalk.demo-1a2b3c4d.*`, for messages.
    pub(super) fn topology_pattern(&self) -> String {
        format!("taptalk.{}.*", self.0)
    }
}

impl fmt::Display for DemoRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The topology settings given by flag or environment rather than left at
/// their defaults (clap fills the defaults in, so only its matches tell).
/// Adds no arguments of its own: it reads those of [`BrokerArgs`].
#[derive(Debug, Clone, Default)]
pub(super) struct GivenNames(pub(super) Vec<&'static str>);

/// The topology names: clap's argument id, and the setting's name.
pub(super) const NAME_SETTINGS: [(&str, &str); 5] = [
    ("login_exchange", "LOGIN_EXCHANGE"),
    ("work_queue", "WORK_QUEUE"),
    ("dead_letter_exchange", "DEAD_LETTER_EXCHANGE"),
    ("dead_letter_queue", "DEAD_LETTER_QUEUE"),
    ("ticket_exchange", "TICKET_EXCHANGE"),
];

impl clap::FromArgMatches for GivenNames {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        use clap::parser::ValueSource;
        Ok(GivenNames(
            NAME_SETTINGS
                .iter()
                .filter(|(id, _)| {
                    matches!(
                        matches.value_source(id),
                        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                    )
                })
                .map(|(_, setting)| *setting)
                .collect(),
        ))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = GivenNames::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for GivenNames {
    fn augment_args(command: clap::Command) -> clap::Command {
        command
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        command
    }
}

#[cfg(test)]
mod tests {
    use super::super::DemoArgs;
    use super::*;
    use crate::domain::EventId;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        demo: DemoArgs,
    }

    fn parse(args: &[&str]) -> Result<DemoArgs, clap::Error> {
        Command::try_parse_from(std::iter::once("demo").chain(args.iter().copied())).map(|c| c.demo)
    }

    #[test]
    fn topology_names_count_as_given_only_when_set() {
        let defaults = parse(&[]).expect("parse");
        assert!(defaults.names.0.is_empty(), "{:?}", defaults.names);
        let given = parse(&[
            "--ticket-exchange",
            "t",
            "--work-queue",
            "taptalk.logins.ticket-worker",
        ])
        .expect("parse");
        assert_eq!(
            given.names.0,
            ["WORK_QUEUE", "TICKET_EXCHANGE"],
            "set, even to the default"
        );
        assert_eq!(given.broker.names.ticket_exchange, "t");
    }

    #[test]
    fn run_ids_name_the_topology_and_start_the_event_ids() {
        let run = DemoRun::new();
        assert_eq!(DemoRun::parse(&run.to_string()), Ok(run.clone()));
        let topology = run.topology(7);
        assert_eq!(topology.login_exchange, format!("taptalk.{run}.logins"));
        assert_eq!(
            topology.work_queue,
            format!("taptalk.{run}.logins.ticket-worker")
        );
        assert_eq!(topology.delivery_limit, 7);
        assert!(run.event_id().starts_with(&format!("{run}-")));
        assert!(EventId::parse(&run.event_id()).is_ok());
        assert_ne!(DemoRun::new(), run);
    }

    #[test]
    fn remove_takes_only_a_run_id_and_not_with_keep() {
        assert_eq!(
            DemoRun::parse("1a2b3c4d"),
            Ok(DemoRun("demo-1a2b3c4d".into()))
        );
        for bad in [
            "",
            "demo-",
            "demo-1a2b3c4",
            "demo-1a2b3c4d5",
            "demo-1A2B3C4D",
            "demo-1a2b3c4d-",
            "demo-%%%%%%%%",
            "taptalk.",
        ] {
            assert!(DemoRun::parse(bad).is_err(), "{bad:?}");
            assert!(parse(&["--remove", bad]).is_err(), "{bad:?}");
        }
        let args = parse(&["--remove", "demo-1a2b3c4d"]).expect("parse");
        assert_eq!(args.remove, Some(DemoRun("demo-1a2b3c4d".into())));
        assert!(parse(&["--remove", "demo-1a2b3c4d", "--keep"]).is_err());
    }
}
