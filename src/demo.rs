//! `ticket-worker demo`: the newcomer's first command. It starts the TapTalk
//! stand-in and a worker in this process, publishes a few hundred realistic
//! login events to the local RabbitMQ (a few of them deliberately bad), shows
//! progress while they flow, and ends with what Postgres now holds.

use crate::broker::{Topology, connect};
use crate::cli::CommandError;
use crate::configuration::{
    BrokerArgs, BrokerSettings, DatabaseArgs, DatabaseSettings, RunArgs, ServerKeyArgs, Settings,
    TaptalkArgs,
};
use crate::domain::{EventId, TicketRecord};
use crate::fake_taptalk::{FakeTaptalk, Knobs};
use crate::retry::RetryPolicy;
use crate::shutdown::Shutdown;
use crate::startup::Application;
use crate::storage::TicketStore;
use crate::taptalk::ServerKey;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use rand::Rng;
use rand::seq::IndexedRandom;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the demo looks when AMQP_URL / DATABASE_URL are not set.
pub const LOCAL_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const LOCAL_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// `ticket-worker demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Login events to publish
    #[arg(long, default_value_t = 300)]
    pub events: usize,
    /// Messages the worker processes at once
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Stand-in latency per request (plus up to twice as much jitter)
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Share of stand-in requests answered 503, to show retries (0 to 1)
    #[arg(long, default_value_t = 0.03)]
    pub fail_503: f64,
    /// Give up waiting after this long
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Counts of the ticket events seen for the demo's own login events.
#[derive(Debug, Default)]
struct Seen {
    ready: HashSet<String>,
    failed: Vec<(String, String)>,
}

pub async fn run(args: &DemoArgs) -> Result<(), CommandError> {
    let broker = BrokerSettings::from_args(&args.broker, Some(LOCAL_AMQP_URL))?;
    let database = DatabaseSettings::from_args(&args.database, Some(LOCAL_DATABASE_URL))?;
    let topology = broker.topology.clone();
    let amqp_url = broker.amqp_url.clone();

    let secret = SecretString::from(uuid::Uuid::new_v4().to_string());
    let key = ServerKey::new("demo-key", secret.clone());
    let knobs = Knobs {
        latency: args.latency,
        latency_jitter: args.latency * 2,
        fail_503: args.fail_503.clamp(0.0, 1.0),
        ..Knobs::default()
    };
    let fake = FakeTaptalk::start(([127, 0, 0, 1], 0).into(), &key, knobs, false)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the TapTalk stand-in: {e}"))?;
    say(&format!(
        "TapTalk stand-in on {} ({} latency, {:.0}% of requests answered 503)",
        fake.base_url(),
        humantime::format_duration(args.latency),
        args.fail_503 * 100.0
    ));

    // The worker's own defaults, on the demo's services, with quicker retries
    // so that the injected 503s do not hold the demo up.
    let mut run = RunArgs::from_environment().map_err(|e| anyhow::anyhow!("{e}"))?;
    run.broker = args.broker.clone();
    run.database = args.database.clone();
    if run.broker.amqp_url_file.is_none() {
        run.broker
            .amqp_url
            .get_or_insert_with(|| LOCAL_AMQP_URL.to_owned());
    }
    if run.database.database_url_file.is_none() {
        run.database
            .database_url
            .get_or_insert_with(|| LOCAL_DATABASE_URL.to_owned());
    }
    run.taptalk = TaptalkArgs {
        taptalk_base_url: Some(fake.base_url().to_string()),
        key: ServerKeyArgs {
            taptalk_server_key_id: Some(key.id().to_owned()),
            taptalk_server_key_secret: Some(secret.expose_secret().to_owned()),
            taptalk_server_key_secret_file: None,
        },
    };
    run.concurrency = args.concurrency.max(1);
    run.prefetch = u16::try_from(run.concurrency.saturating_mul(2)).unwrap_or(u16::MAX);
    let mut settings = Settings::from_args(&run)?;
    settings.taptalk.retry = RetryPolicy {
        first_pause: Duration::from_millis(100),
        max_pause: Duration::from_secs(2),
        give_up_after: Some(Duration::from_secs(20)),
    };
    settings.probe = RetryPolicy::forever(Duration::from_millis(500), Duration::from_secs(5));
    settings.shutdown_grace = Duration::from_secs(5);
    settings.purge = None;
    let app = Application::build(settings)?;
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .map_err(|e| anyhow::anyhow!("cannot listen for signals: {e}"))?;
    let worker = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let connection = connect(&amqp_url, "ticket-worker demo")
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to RabbitMQ at {}: {e}",
                crate::configuration::redact_url(secrecy::ExposeSecret::expose_secret(&amqp_url))
            )
        })?;
    let channel = connection
        .create_channel()
        .await
        .map_err(anyhow::Error::from)?;
    topology
        .declare(&channel)
        .await
        .map_err(anyhow::Error::from)?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    watch_ticket_events(&channel, &topology, Arc::clone(&seen))
        .await
        .map_err(anyhow::Error::from)?;

    let events = login_events(args.events);
    let ids: HashSet<String> = events
        .iter()
        .filter_map(|e| e["eventID"].as_str().map(str::to_owned))
        .collect();
    say(&format!(
        "publishing {} login events to exchange {}",
        events.len(),
        topology.login_exchange
    ));
    let started = Instant::now();
    publish(&channel, &topology, &events)
        .await
        .map_err(anyhow::Error::from)?;

    let finished = progress(&seen, &ids, started, args.timeout).await;
    let elapsed = started.elapsed();
    shutdown.trigger();
    let _ = worker.await;
    let _ = connection.close(200, "demo over".into()).await;
    fake.stop();

    let store = TicketStore::connect_lazy(&database.url, 2).map_err(anyhow::Error::from)?;
    let event_ids: Vec<EventId> = ids
        .iter()
        .filter_map(|id| EventId::parse(id).ok())
        .collect();
    let records = store
        .find_many(&event_ids)
        .await
        .map_err(anyhow::Error::from)?;
    print_table(&records);
    let seen = seen
        .lock()
        .map(|s| (s.ready.len(), s.failed.clone()))
        .unwrap_or_default();
    print_summary(events.len(), &records, &seen.1, elapsed);
    if !finished {
        return Err(anyhow::anyhow!(
            "not every event was answered within {}",
            humantime::format_duration(args.timeout)
        )
        .into());
    }
    Ok(())
}

/// Consumes ticket events from a private queue, recording them in `seen`.
async fn watch_ticket_events(
    channel: &Channel,
    topology: &Topology,
    seen: Arc<Mutex<Seen>>,
) -> Result<(), lapin::Error> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            topology.ticket_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let Ok(body) = serde_json::from_slice::<Value>(&delivery.data) else {
                continue;
            };
            let id = body["eventID"].as_str().unwrap_or_default().to_owned();
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            if delivery.routing_key.as_str() == "ticket.ready" {
                seen.ready.insert(id);
            } else {
                let reason = body["reason"].as_str().unwrap_or_default().to_owned();
                seen.failed.push((id, reason));
            }
        }
    });
    Ok(())
}

async fn publish(
    channel: &Channel,
    topology: &Topology,
    events: &[Value],
) -> Result<(), lapin::Error> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    for event in events {
        let id = event["eventID"].as_str().unwrap_or_default();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(id.into());
        channel
            .basic_publish(
                topology.login_exchange.as_str().into(),
                "login".into(),
                BasicPublishOptions::default(),
                event.to_string().as_bytes(),
                properties,
            )
            .await?;
    }
    channel.wait_for_confirms().await.map(|_| ())
}

/// Prints a progress line until every event is answered; `false` on timeout.
async fn progress(
    seen: &Mutex<Seen>,
    ids: &HashSet<String>,
    started: Instant,
    timeout: Duration,
) -> bool {
    let total = ids.len();
    loop {
        let (ready, failed) = {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            (
                seen.ready.iter().filter(|id| ids.contains(*id)).count(),
                seen.failed
                    .iter()
                    .filter(|(id, _)| ids.contains(id))
                    .map(|(id, _)| id)
                    .collect::<HashSet<_>>()
                    .len(),
            )
        };
        let rate = (ready + failed) as f64 / started.elapsed().as_secs_f64().max(0.001);
        eprint!(
            "\r  answered {:>4}/{total}  ready {ready:>4}  failed {failed:>3}  {rate:>6.0} events/s ",
            ready + failed
        );
        let _ = std::io::stderr().flush();
        if ready + failed >= total {
            eprintln!();
            return true;
        }
        if started.elapsed() > timeout {
            eprintln!();
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_table(records: &[TicketRecord]) {
    println!();
    println!(
        "auth_tickets (first {} of {} rows written by this demo):",
        records.len().min(12),
        records.len()
    );
    println!(
        "  {:<12} {:<10} {:<8} {:<14} {:<16} {:<20}",
        "xcUserID", "userID", "platform", "device", "ticket", "expires_at (UTC)"
    );
    for record in records.iter().take(12) {
        let ticket = record.ticket.expose();
        let masked = format!(
            "{}…({} chars)",
            ticket.chars().take(4).collect::<String>(),
            ticket.chars().count()
        );
        println!(
            "  {:<12} {:<10} {:<8} {:<14} {:<16} {:<20}",
            record.xc_user_id,
            record.user_id,
            record.platform.as_str(),
            record.user_device_id.chars().take(14).collect::<String>(),
            masked,
            record.expires_at.format("%Y-%m-%d %H:%M:%S")
        );
    }
}

fn print_summary(
    published: usize,
    records: &[TicketRecord],
    failed: &[(String, String)],
    elapsed: Duration,
) {
    let mut reasons: Vec<(String, usize)> = Vec::new();
    let unique: HashSet<&(String, String)> = failed.iter().collect();
    for (_, reason) in unique {
        match reasons.iter_mut().find(|(r, _)| r == reason) {
            Some((_, n)) => *n += 1,
            None => reasons.push((reason.clone(), 1)),
        }
    }
    reasons.sort();
    let failed_text = reasons
        .iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect::<Vec<_>>()
        .join(", ");
    let users: HashSet<&str> = records.iter().map(|r| r.xc_user_id.as_str()).collect();
    println!();
    println!(
        "{published} login events → {} tickets stored for {} users, ticket.failed: {}",
        records.len(),
        users.len(),
        if failed_text.is_empty() {
            "none".into()
        } else {
            failed_text
        }
    );
    println!(
        "{:.1} s from first publish to last answer: {:.0} events/s",
        elapsed.as_secs_f64(),
        published as f64 / elapsed.as_secs_f64().max(0.001)
    );
    if let Some(first) = records.first() {
        println!(
            "an app backend reads a user's current ticket with: SELECT user_id, ticket, expires_at FROM current_auth_ticket('{}');",
            first.xc_user_id
        );
    }
}

/// `count` login events as a login service would send them: a third as many
/// users as events (people log in more than once), all three platforms, and
/// about 1 in 50 deliberately bad (an unknown platform, caught by the worker;
/// a malformed e-mail, caught by TapTalk).
fn login_events(count: usize) -> Vec<Value> {
    const FIRST: [&str; 12] = [
        "Ana", "Budi", "Citra", "Dewi", "Eko", "Fajar", "Gita", "Hadi", "Intan", "Joko", "Kartika",
        "Lukas",
    ];
    const LAST: [&str; 10] = [
        "Lima", "Santoso", "Wijaya", "Pratama", "Nguyen", "Tan", "Silva", "Kusuma", "Halim",
        "Saputra",
    ];
    const AGENTS: [(&str, &str); 3] = [
        ("ios", "TapTalkDemo/3.2 (iPhone15,2; iOS 18.1)"),
        ("android", "TapTalkDemo/3.2 (Linux; Android 15; Pixel 9)"),
        (
            "web",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
        ),
    ];
    let mut rng = rand::rng();
    let users = (count / 3).max(1);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    (0..count)
        .map(|i| {
            let user = rng.random_range(0..users);
            let first = FIRST[user % FIRST.len()];
            let last = LAST[(user / FIRST.len()) % LAST.len()];
            let (platform, agent) = *AGENTS.choose(&mut rng).unwrap_or(&AGENTS[0]);
            let mut event = json!({
                "eventID": uuid::Uuid::new_v4().to_string(),
                "occurredAt": now,
                "userIPAddress": format!("203.0.113.{}", rng.random_range(1..255)),
                "userAgent": agent,
                "userPlatform": platform,
                "userDeviceID": format!("{platform}-{:08x}", rng.random::<u32>()),
                "xcUserID": format!("cust-{user}"),
                "fullName": format!("{first} {last}"),
                "email": format!("{}.{}{user}@example.com", first.to_lowercase(), last.to_lowercase()),
                "phone": format!("+628{:09}", rng.random_range(0..1_000_000_000u64)),
            });
            match i % 50 {
                17 => event["userPlatform"] = json!("windows-phone"),
                42 => event["email"] = json!(format!("{}(at)example.com", first.to_lowercase())),
                _ => {}
            }
            event
        })
        .collect()
}

fn say(line: &str) {
    eprintln!("demo: {line}");
}
