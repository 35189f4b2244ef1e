//! `ticket-worker`: see `ticket-worker --help` and the README.

use clap::Parser;
use std::process::ExitCode;
use ticket_worker::commands::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    Cli::parse().execute().await
}
