//! The broker-only ceiling: the best a replica could do on this broker with
//! no upstream and no database. The same number of messages, of the same
//! size as the run's login events, is preloaded into a quorum queue (as the
//! work queue is); then several tasks, each on a connection of its own
//! (a replica has one, but this is the broker's best, not a replica's: more
//! connections let RabbitMQ and the client spread the work over more
//! threads), consume it with a high prefetch and, for each delivery,
//! publish one persistent message to a topic exchange with a bound queue
//! (with a publisher confirm, as the worker's `ticket.ready`) and
//! acknowledge the delivery once the confirm is in, keeping many confirms
//! outstanding at once. The bound queue is consumed as the bench consumes
//! ticket events. Timed from the first consume to the last acknowledgement.

use super::events::EventBody;
use super::vhost::Place;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use ticket_worker::broker::{connect, short};
use tokio_util::sync::CancellationToken;

/// Consuming tasks, each on a connection of its own with a consume and a
/// publish channel.
const TASKS: usize = 4;
/// Unacknowledged deliveries per task.
const PREFETCH: u16 = 500;
/// Preload confirms outstanding at once.
const PRELOAD_WINDOW: usize = 4_096;

/// What the ceiling came to.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Ceiling {
    pub messages: usize,
    pub seconds: f64,
    pub per_second: f64,
    /// Tasks, each on a connection of its own.
    pub tasks: usize,
    pub prefetch_per_task: u16,
    pub message_bytes: usize,
    pub reply_bytes: usize,
}

/// Measures the ceiling with `messages` messages like `bodies`, each
/// answered with `reply`; gives up after `patience`.
pub(crate) async fn measure(
    place: &Place,
    bodies: &[EventBody],
    reply: &[u8],
    messages: usize,
    patience: Duration,
) -> anyhow::Result<Ceiling> {
    let connection = connect(&place.amqp_url, "ticket-bench ceiling")
        .await
        .map_err(|e| anyhow::anyhow!("the ceiling cannot connect to RabbitMQ: {e}"))?;
    let measured = tokio::time::timeout(patience, run(&connection, place, bodies, reply, messages))
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the broker-only ceiling did not finish within {}",
                humantime::format_duration(patience)
            ))
        });
    let _ = remove(&connection, place).await;
    let _ = connection.close(200, "ceiling measured".into()).await;
    measured
}

async fn run(
    connection: &Connection,
    place: &Place,
    bodies: &[EventBody],
    reply: &[u8],
    messages: usize,
) -> anyhow::Result<Ceiling> {
    let setup = connection.create_channel().await?;
    declare(&setup, place).await?;
    let sink = drain_sink(connection, place).await?;
    preload(&setup, place, bodies, messages).await?;

    let done = Arc::new(AtomicUsize::new(0));
    let all_done = CancellationToken::new();
    let mut connections = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        connections.push(connect(&place.amqp_url, "ticket-bench ceiling").await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(TASKS);
    for own in &connections {
        let consume = own.create_channel().await?;
        let publish = own.create_channel().await?;
        tasks.push(tokio::spawn(relay(
            consume,
            publish,
            place.clone(),
            reply.to_vec(),
            messages,
            Arc::clone(&done),
            all_done.clone(),
        )));
    }
    all_done.cancelled().await;
    let seconds = started.elapsed().as_secs_f64();
    for task in tasks {
        task.await??;
    }
    for own in connections {
        let _ = own.close(200, "ceiling measured".into()).await;
    }
    sink.abort();
    let message_bytes = bodies.first().map_or(0, |b| b.bytes.len());
    Ok(Ceiling {
        messages,
        seconds,
        per_second: messages as f64 / seconds.max(1e-9),
        tasks: TASKS,
        prefetch_per_task: PREFETCH,
        message_bytes,
        reply_bytes: reply.len(),
    })
}

async fn declare(channel: &Channel, place: &Place) -> Result<(), lapin::Error> {
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            place.ceiling_source.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            quorum,
        )
        .await?;
    channel
        .exchange_declare(
            place.ceiling_replies.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// A private queue bound to the replies exchange, consumed without acks as
/// the bench consumes ticket events.
async fn drain_sink(
    connection: &Connection,
    place: &Place,
) -> Result<tokio::task::JoinHandle<()>, lapin::Error> {
    let channel = connection.create_channel().await?;
    let mut consumer =
        ticket_worker::broker::tap::subscribe(&channel, place.ceiling_replies.as_str()).await?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(_)) = consumer.next().await {}
        drop(channel);
    }))
}

async fn preload(
    channel: &Channel,
    place: &Place,
    bodies: &[EventBody],
    messages: usize,
) -> anyhow::Result<()> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut pending = VecDeque::with_capacity(PRELOAD_WINDOW);
    for i in 0..messages {
        let Some(body) = bodies.get(i % bodies.len().max(1)) else {
            break;
        };
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(short(&body.id));
        let confirm = channel
            .basic_publish(
                "".into(),
                place.ceiling_source.as_str().into(),
                BasicPublishOptions::default(),
                &body.bytes,
                properties,
            )
            .await?;
        pending.push_back(confirm);
        if pending.len() >= PRELOAD_WINDOW
            && let Some(confirm) = pending.pop_front()
        {
            anyhow::ensure!(
                confirm.await?.is_ack(),
                "RabbitMQ refused a preloaded message"
            );
        }
    }
    while let Some(confirm) = pending.pop_front() {
        anyhow::ensure!(
            confirm.await?.is_ack(),
            "RabbitMQ refused a preloaded message"
        );
    }
    Ok(())
}

/// One task: consume, publish the reply with a confirm, ack once confirmed.
async fn relay(
    consume: Channel,
    publish: Channel,
    place: Place,
    reply: Vec<u8>,
    messages: usize,
    done: Arc<AtomicUsize>,
    all_done: CancellationToken,
) -> anyhow::Result<()> {
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    consume
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = consume
        .basic_consume(
            place.ceiling_source.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = all_done.cancelled() => break,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let correlation = delivery
                        .properties
                        .message_id()
                        .clone()
                        .unwrap_or_else(|| "".into());
                    // The properties the worker puts on a ticket event.
                    let properties = BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_delivery_mode(2)
                        .with_correlation_id(correlation)
                        .with_message_id(uuid::Uuid::new_v4().to_string().into())
                        .with_type("ticket.ready".into())
                        .with_app_id("ticket-worker".into())
                        .with_timestamp(now_seconds());
                    let confirm = publish
                        .basic_publish(
                            place.ceiling_replies.as_str().into(),
                            "ticket.ready".into(),
                            BasicPublishOptions::default(),
                            &reply,
                            properties,
                        )
                        .await?;
                    in_flight.push(async move {
                        let confirmation = confirm.await?;
                        delivery.acker.ack(BasicAckOptions::default()).await?;
                        Ok::<bool, lapin::Error>(confirmation.is_ack())
                    });
                }
                Some(Err(error)) => return Err(error.into()),
                None => break,
            },
            Some(settled) = in_flight.next(), if !in_flight.is_empty() => {
                anyhow::ensure!(settled?, "RabbitMQ refused a ceiling reply");
                if done.fetch_add(1, Ordering::AcqRel) + 1 >= messages {
                    all_done.cancel();
                }
            }
        }
    }
    let _ = consume.close(200, "ceiling measured".into()).await;
    let _ = publish.close(200, "ceiling measured".into()).await;
    Ok(())
}

fn now_seconds() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default()
}

/// Deletes the ceiling's queue and exchange (the sink goes with its channel).
async fn remove(connection: &Connection, place: &Place) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(
            place.ceiling_source.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await?;
    channel
        .exchange_delete(place.ceiling_replies.as_str().into(), Default::default())
        .await?;
    let _ = channel.close(200, "ceiling removed".into()).await;
    Ok(())
}
