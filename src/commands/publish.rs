//! `ticket-worker publish`: publishes login events, one JSON object per line
//! from a file or stdin, exactly as a login service would (see docs/integrating.md's
//! "Publishing login events"). Lines are sent byte for byte as read.
//!
//! By default each line is checked with the worker's own rules first (its
//! parser, and its clock-skew rule at the default `MAX_CLOCK_SKEW`); invalid
//! lines are reported with their line number and skipped (`--no-validate`
//! sends them anyway, to exercise dead-lettering).
//!
//! The AMQP `message_id` is the line's `eventID`, read by the worker's own
//! reader. A line without one gets a fresh UUID, which the worker then uses as
//! the idempotency key. A line that writes `eventID` twice gets none: the
//! worker refuses such a line whichever copy it would have taken, and a
//! `message_id` copied from either would be a guess.

use super::CommandError;
use crate::broker::Topology;
use crate::config::{BrokerArgs, BrokerSettings};
use crate::events::{
    BodyEventId, DEFAULT_MAX_CLOCK_SKEW, DEFAULT_MAX_EVENT_BYTES, Envelope, InvalidEvent,
    LoginEvent,
};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use std::collections::VecDeque;
use std::path::PathBuf;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

/// `ticket-worker publish`.
#[derive(clap::Args)]
pub struct PublishArgs {
    /// JSON-lines file of login events; stdin when absent or "-"
    pub file: Option<PathBuf>,
    /// Routing key for every event (the work queue is bound with '#')
    #[arg(long, default_value = "login")]
    pub routing_key: String,
    /// Publish lines even when the worker would reject them
    #[arg(long)]
    pub no_validate: bool,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// What a publish run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Confirmed by the broker and routed to a queue.
    pub published: u64,
    /// Lines not sent because they are not valid login events.
    pub skipped: u64,
    /// Refused by the broker, or with no queue to go to.
    pub failed: u64,
}

/// Confirms awaited at once before publishing more.
const WINDOW: usize = 512;

pub async fn run(args: &PublishArgs) -> Result<(), CommandError> {
    let broker = BrokerSettings::from_args(&args.broker, None)?;
    let connection = super::broker_connection(&broker, "publish").await?;
    broker
        .topology
        .declare(&connection)
        .await
        .map_err(|e| anyhow::anyhow!("cannot declare the topology: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(anyhow::Error::from)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(anyhow::Error::from)?;

    let report = match args.file.as_deref().filter(|p| p.as_os_str() != "-") {
        None => {
            let stdin = BufReader::new(tokio::io::stdin());
            publish_lines(stdin, &channel, &broker.topology, args).await?
        }
        Some(path) => {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
            publish_lines(BufReader::new(file), &channel, &broker.topology, args).await?
        }
    };
    let _ = connection.close(200, "done".into()).await;
    eprintln!(
        "published {} login events to {} ({} skipped, {} failed)",
        report.published, broker.topology.login_exchange, report.skipped, report.failed
    );
    if report.skipped > 0 || report.failed > 0 {
        return Err(anyhow::anyhow!(
            "{} lines were not published",
            report.skipped + report.failed
        )
        .into());
    }
    Ok(())
}

/// Publishes every line of `input`, keeping up to [`WINDOW`] confirms in flight.
pub async fn publish_lines(
    input: impl AsyncBufRead + Unpin,
    channel: &Channel,
    topology: &Topology,
    args: &PublishArgs,
) -> anyhow::Result<PublishReport> {
    let mut report = PublishReport::default();
    let mut pending: VecDeque<(u64, PublisherConfirm)> = VecDeque::new();
    let mut lines = input.lines();
    let mut number = 0u64;
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read input: {e}"))?
    {
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let message_id = match LoginEvent::body_event_id(line.as_bytes()) {
            BodyEventId::One(id) => Some(id.to_string()),
            BodyEventId::Absent => Some(uuid::Uuid::new_v4().to_string()),
            BodyEventId::Repeated => None,
        };
        if !args.no_validate {
            if let Err(invalid) = check(&line, message_id.as_deref()) {
                eprintln!("line {number}: {invalid}; skipped");
                report.skipped += 1;
                continue;
            }
        } else if message_id.is_none() {
            eprintln!(
                "line {number}: eventID is written more than once; sent without a message_id, so the worker can only dead-letter it"
            );
        }
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_app_id("ticket-worker publish".into())
            .with_timestamp(u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default());
        if let Some(message_id) = &message_id {
            properties = properties.with_message_id(crate::broker::short(message_id));
        }
        let confirm = channel
            .basic_publish(
                topology.login_exchange.as_str().into(),
                crate::broker::short(&args.routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                line.as_bytes(),
                properties,
            )
            .await?;
        pending.push_back((number, confirm));
        if pending.len() >= WINDOW
            && let Some((line, confirm)) = pending.pop_front()
        {
            tally(&mut report, line, confirm.await?);
        }
    }
    while let Some((line, confirm)) = pending.pop_front() {
        tally(&mut report, line, confirm.await?);
    }
    Ok(report)
}

fn tally(report: &mut PublishReport, line: u64, confirmation: Confirmation) {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => report.published += 1,
        Confirmation::Ack(Some(_)) => {
            eprintln!("line {line}: no queue is bound to the login exchange; not delivered");
            report.failed += 1;
        }
        Confirmation::Nack(_) => {
            eprintln!("line {line}: RabbitMQ refused the message");
            report.failed += 1;
        }
    }
}

/// Checks a line as the worker will check the message: its parser, under
/// the envelope `publish` sends, then its clock-skew rule at the default
/// `MAX_CLOCK_SKEW` (a worker configured otherwise may still refuse a line
/// that passes here).
fn check(line: &str, message_id: Option<&str>) -> Result<(), InvalidEvent> {
    let envelope = Envelope {
        content_type: Some("application/json"),
        content_encoding: None,
        message_id,
    };
    LoginEvent::parse(line.as_bytes(), &envelope, DEFAULT_MAX_EVENT_BYTES)?
        .check_clock_skew(chrono::Utc::now(), DEFAULT_MAX_CLOCK_SKEW)
}
