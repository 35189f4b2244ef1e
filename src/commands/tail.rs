//! `ticket-worker tail`: follows `ticket.ready` and `ticket.failed` live, one
//! line per event (user, outcome, reason, login-to-ready time), on a queue of
//! its own that RabbitMQ deletes when it stops, so it never takes a message
//! from anybody else. Filters choose users, an outcome and reasons; `--count`
//! and `--for` end it, as does Ctrl-C.
//!
//! What it prints comes off the bus, so it is hostile until shown: every text
//! is escaped ([`printable`]) and nothing unreadable stops the tail.

use super::{CommandError, broker_connection, secrets};
use crate::broker::connection::{describe, within};
use crate::broker::tap;
use crate::config::{BrokerArgs, BrokerSettings};
use crate::domain::text::{json_printable, printable};
use crate::observe::redact_url;
use crate::shutdown::Shutdown;
use crate::time::human;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::io::Write;
use std::time::Duration;

/// The longest text of an event shown in a line (a message, an id).
const SHOWN_CHARS: usize = 120;

/// Ticket events RabbitMQ holds for a tail that does not read (its
/// terminal paused, a slow pipe); past it the oldest are dropped.
const MAX_HELD: u32 = 10_000;

/// `ticket-worker tail`.
#[derive(clap::Args)]
pub struct TailArgs {
    /// Only this user's events (their xcUserID; repeatable)
    #[arg(long = "user", value_name = "XC_USER_ID")]
    pub users: Vec<String>,
    /// Only ready or only failed events
    #[arg(long, value_enum)]
    pub outcome: Option<TailOutcome>,
    /// Only failures with this reason (invalid, expired, rejected_by_upstream, …; repeatable)
    #[arg(long = "reason", value_name = "REASON")]
    pub reasons: Vec<String>,
    /// Stop once this many events are shown
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this long (30s, 5m, …); without it, until Ctrl-C
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub stop_after: Option<Duration>,
    /// One JSON object per line instead of text
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// The two kinds of ticket event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TailOutcome {
    Ready,
    Failed,
}

impl TailOutcome {
    fn from_routing_key(key: &str) -> Option<TailOutcome> {
        match key {
            "ticket.ready" => Some(TailOutcome::Ready),
            "ticket.failed" => Some(TailOutcome::Failed),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            TailOutcome::Ready => "ready",
            TailOutcome::Failed => "failed",
        }
    }
}

/// One ticket event as read off the bus, every field as it came.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub outcome: TailOutcome,
    pub event_id: Option<String>,
    pub user: Option<String>,
    pub device: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub field: Option<String>,
    /// From the login (`loginOccurredAt`) to this event's arrival.
    pub login_to_ready: Option<Duration>,
    pub arrived: DateTime<Utc>,
}

impl Seen {
    /// Reads a ticket event; `None` for another routing key or a body that
    /// is not a JSON object.
    pub fn read(routing_key: &str, body: &[u8], arrived: DateTime<Utc>) -> Option<Seen> {
        let outcome = TailOutcome::from_routing_key(routing_key)?;
        let body: Value = serde_json::from_slice(body).ok()?;
        let body = body.as_object()?;
        let text = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_owned);
        let login_to_ready = text("loginOccurredAt")
            .and_then(|at| DateTime::parse_from_rfc3339(&at).ok())
            .and_then(|at| arrived.signed_duration_since(at).to_std().ok());
        Some(Seen {
            outcome,
            event_id: text("eventID"),
            user: text("xcUserID"),
            device: text("userDeviceID"),
            reason: text("reason"),
            message: text("message"),
            field: text("field"),
            login_to_ready,
            arrived,
        })
    }

    /// Whether the filters of `args` let it through.
    fn wanted(&self, args: &TailArgs) -> bool {
        let user = args.users.is_empty()
            || self
                .user
                .as_ref()
                .is_some_and(|user| args.users.contains(user));
        let outcome = args.outcome.is_none_or(|o| o == self.outcome);
        let reason = args.reasons.is_empty()
            || self
                .reason
                .as_ref()
                .is_some_and(|reason| args.reasons.contains(reason));
        user && outcome && reason
    }

    /// One line of text, every field from the bus escaped.
    pub fn to_text(&self) -> String {
        let shown = |v: &Option<String>| printable(v.as_deref().unwrap_or("-"), SHOWN_CHARS);
        let mut line = format!(
            "{}  {:<6}  {}",
            self.arrived.format("%H:%M:%S%.3f"),
            self.outcome.as_str(),
            shown(&self.user),
        );
        match self.outcome {
            TailOutcome::Ready => {
                line.push_str(&format!("  device {}", shown(&self.device)));
                if let Some(took) = self.login_to_ready {
                    line.push_str(&format!("  login-to-ready {}", human(took)));
                }
            }
            TailOutcome::Failed => {
                line.push_str(&format!("  reason {}", shown(&self.reason)));
                if self.field.is_some() {
                    line.push_str(&format!(" ({})", shown(&self.field)));
                }
                if self.message.is_some() {
                    line.push_str(&format!(": {}", shown(&self.message)));
                }
            }
        }
        line.push_str(&format!("  event {}", shown(&self.event_id)));
        line
    }

    /// One JSON object (escaped for a terminal too).
    pub fn to_json(&self) -> String {
        let json = json!({
            "arrived": self.arrived.to_rfc3339_opts(SecondsFormat::Millis, true),
            "outcome": self.outcome.as_str(),
            "eventID": self.event_id,
            "xcUserID": self.user,
            "userDeviceID": self.device,
            "reason": self.reason,
            "field": self.field,
            "message": self.message,
            "loginToReadyMs": self.login_to_ready.map(|d| d.as_millis()),
        });
        json_printable(&json.to_string())
    }
}

pub async fn run(args: &TailArgs) -> Result<(), CommandError> {
    let broker = BrokerSettings::from_args(&args.broker, None)?;
    secrets::register_broker(&broker);
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .map_err(|e| anyhow::anyhow!("cannot listen for signals: {e}"))?;
    // Ctrl-C stops the wait for RabbitMQ too.
    let connection = tokio::select! {
        connection = broker_connection(&broker, "tail") => connection?,
        () = shutdown.triggered() => return Ok(()),
    };
    let exchange = broker.topology.ticket_exchange.as_str();
    let subscribe = async {
        let channel = within("opening a channel", connection.create_channel()).await?;
        tap::subscribe_bounded(&channel, exchange, MAX_HELD).await
    };
    let subscribed = tokio::select! {
        subscribed = subscribe => subscribed,
        () = shutdown.triggered() => {
            let _ = within("closing", connection.close(200, "tail over".into())).await;
            return Ok(());
        }
    };
    let mut consumer = match subscribed {
        Ok(consumer) => consumer,
        Err(e) => {
            let _ = within("closing", connection.close(200, "tail over".into())).await;
            return Err(anyhow::anyhow!(
                "cannot follow the ticket exchange {exchange:?} (check TICKET_EXCHANGE, and that the AMQP_URL user may read it; a worker declares it at start): {}",
                describe(&e)
            )
            .into());
        }
    };
    eprintln!(
        "tail: following ticket.ready and ticket.failed on exchange {} at {} (Ctrl-C stops)",
        printable(exchange, SHOWN_CHARS),
        redact_url(broker.amqp_url.expose_secret())
    );
    let deadline = async {
        match args.stop_after {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut shown: u64 = 0;
    let mut unreadable: u64 = 0;
    let ended = loop {
        if args.count.is_some_and(|count| shown >= count) {
            break Ok(());
        }
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            () = &mut deadline => break Ok(()),
            () = shutdown.triggered() => break Ok(()),
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => break Err(e.to_string()),
            None => break Err("the broker ended the subscription".to_owned()),
        };
        match Seen::read(delivery.routing_key.as_str(), &delivery.data, Utc::now()) {
            Some(seen) if seen.wanted(args) => {
                let line = if args.json {
                    seen.to_json()
                } else {
                    seen.to_text()
                };
                // A closed pipe (`tail | head -3`) ends the tail, quietly.
                if writeln!(std::io::stdout().lock(), "{line}").is_err() {
                    break Ok(());
                }
                shown = shown.saturating_add(1);
            }
            Some(_) => {}
            None => unreadable = unreadable.saturating_add(1),
        }
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        connection.close(200, "tail over".into()),
    )
    .await;
    if unreadable > 0 {
        eprintln!("tail: skipped {unreadable} messages that were not ticket events");
    }
    ended.map_err(|e| {
        anyhow::anyhow!("lost the connection to RabbitMQ while following (AMQP_URL): {e}").into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a time")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_ready_event_shows_user_device_and_login_to_ready() {
        let body = br#"{"eventID":"e-1","xcUserID":"cust-42","userDeviceID":"ios-1","userID":"9","loginOccurredAt":"2026-12-07T10:00:00.000Z"}"#;
        let seen = Seen::read("ticket.ready", body, at("2026-12-07T10:00:00.132Z")).expect("read");
        assert_eq!(seen.login_to_ready, Some(Duration::from_millis(132)));
        assert_eq!(
            seen.to_text(),
            "10:00:00.132  ready   cust-42  device ios-1  login-to-ready 132ms  event e-1"
        );
        let json: Value = serde_json::from_str(&seen.to_json()).expect("JSON");
        assert_eq!(json["loginToReadyMs"], 132);
        assert_eq!(json["outcome"], "ready");
    }

    #[test]
    fn a_failed_event_shows_its_reason_and_hostile_text_is_escaped() {
        let body = "{\"eventID\":\"e-2\",\"xcUserID\":\"cust-\\u001b[2J\",\"reason\":\"invalid\",\"field\":\"userPlatform\",\"message\":\"line\\nALL CLEAR\"}";
        let seen =
            Seen::read("ticket.failed", body.as_bytes(), at("2026-12-07T10:00:01Z")).expect("read");
        let line = seen.to_text();
        assert_eq!(
            line,
            "10:00:01.000  failed  cust-\\u{1b}[2J  reason invalid (userPlatform): line\\u{a}ALL CLEAR  event e-2"
        );
        assert!(!line.contains('\u{1b}') && !line.contains('\n'));
        assert!(!seen.to_json().contains('\u{1b}'));
    }

    #[test]
    fn other_keys_and_unreadable_bodies_are_skipped() {
        let now = Utc::now();
        assert_eq!(Seen::read("ticket.other", b"{}", now), None);
        assert_eq!(Seen::read("ticket.ready", b"not json", now), None);
        assert_eq!(Seen::read("ticket.ready", b"[1]", now), None);
        // A login time in the future or malformed shows no duration.
        let future = br#"{"loginOccurredAt":"2999-01-01T00:00:00Z"}"#;
        let seen = Seen::read("ticket.ready", future, now).expect("read");
        assert_eq!(seen.login_to_ready, None);
        assert!(seen.to_text().contains("ready   -  device -  event -"));
    }

    #[test]
    fn filters_choose_users_outcome_and_reasons() {
        use clap::Parser;
        #[derive(Parser)]
        struct Command {
            #[command(flatten)]
            tail: TailArgs,
        }
        let args = |extra: &[&str]| {
            Command::try_parse_from(std::iter::once("tail").chain(extra.iter().copied()))
                .expect("parse")
                .tail
        };
        let now = Utc::now();
        let ready = Seen::read("ticket.ready", br#"{"xcUserID":"a"}"#, now).expect("read");
        let failed = Seen::read(
            "ticket.failed",
            br#"{"xcUserID":"b","reason":"expired"}"#,
            now,
        )
        .expect("read");
        assert!(ready.wanted(&args(&[])) && failed.wanted(&args(&[])));
        assert!(ready.wanted(&args(&["--user", "a"])) && !failed.wanted(&args(&["--user", "a"])));
        assert!(!ready.wanted(&args(&["--outcome", "failed"])));
        assert!(failed.wanted(&args(&["--outcome", "failed", "--reason", "expired"])));
        assert!(!failed.wanted(&args(&["--reason", "invalid"])));
        assert!(!ready.wanted(&args(&["--reason", "invalid"])));
    }
}
