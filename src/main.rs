//! `ticket-worker`: see `ticket-worker --help`, the README and docs/.

use clap::Parser;
use std::process::ExitCode;
use ticket_worker::commands::Cli;

fn main() -> ExitCode {
    Cli::parse().main()
}
