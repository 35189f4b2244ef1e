//! `ticket-worker run`: the worker itself, until SIGTERM or SIGINT.

use super::{CommandError, secrets};
use crate::config::{RunArgs, Settings};
use crate::shutdown::Shutdown;
use crate::startup::Application;
use secrecy::ExposeSecret;

pub(super) async fn run(args: &RunArgs) -> Result<(), CommandError> {
    let settings = Settings::from_args(args)?;
    secrets::register_broker(&settings.broker);
    secrets::register_database(&settings.database);
    crate::taptalk::register_with_logs(&settings.taptalk.server_key);
    // A proxy or gateway in front of TapTalk may take credentials in the URL.
    crate::observe::register_url(settings.taptalk.base_url.as_str());
    tracing::info!(
        amqp = %crate::observe::redact_url(settings.broker.amqp_url.expose_secret()),
        taptalk = %crate::observe::redact_url(settings.taptalk.base_url.as_str()),
        server_key_id = settings.taptalk.server_key.id(),
        "starting ticket-worker {}",
        env!("CARGO_PKG_VERSION")
    );
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .map_err(|e| anyhow::anyhow!("cannot listen for signals: {e}"))?;
    Application::build(settings)?
        .run_until_stopped(shutdown)
        .await?;
    Ok(())
}
