//! Bulk acknowledgements on a real RabbitMQ: runs of settled deliveries go
//! as one `multiple` ack, a requeue or a reject inside a run keeps its own
//! meaning, a delivery settled behind one still in flight is acknowledged
//! alone once it has waited, a run waits a little to fold more unless it is
//! a quarter of the prefetch, and whatever is unsettled (or settled and not
//! sent yet) when the channel closes comes back.

use crate::support::{TestBroker, header, json_properties};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::collections::BTreeSet;
use std::time::Duration;
use ticket_worker::broker::acks::{Acks, FOLD, HOLD, Settlement};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn settlements_keep_their_meaning_when_folded_and_nothing_unsettled_is_lost() {
    let broker = TestBroker::new().await;
    for n in 1..=10u32 {
        let properties = json_properties().with_headers(FieldTable::from(
            [(
                "x-test-id".into(),
                lapin::types::AMQPValue::LongString(n.to_string().into()),
            )]
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>(),
        ));
        broker.publish_raw(b"{}", properties).await;
    }
    let queue = broker.topology.work_queue.clone();
    let (channel, mut consumer, acks, broken) = consume_with_acks(&broker, 10, "acks-test").await;
    let mut tags = Vec::new();
    for _ in 0..10 {
        let delivery = consumer
            .next()
            .await
            .expect("a delivery")
            .expect("no error");
        acks.received(delivery.delivery_tag);
        tags.push((delivery.delivery_tag, header(&delivery, "x-test-id")));
    }
    // 1 stays in flight; 2..=10 are done, 5 goes back, 7 is rejected.
    for (tag, id) in &tags[1..] {
        let how = match id.as_deref() {
            Some("5") => Settlement::Requeue,
            Some("7") => Settlement::Reject,
            _ => Settlement::Ack,
        };
        acks.settle(*tag, how);
    }
    // Behind the unsettled first delivery, the others wait HOLD, then go.
    tokio::time::sleep(HOLD * 4).await;
    assert!(!broken.is_cancelled(), "RabbitMQ accepted every settlement");
    // Close without settling the first: only it, and the requeued 5, come back.
    channel.close(200, "done".into()).await.expect("close");
    let back = ids_in(&broker, &queue).await;
    assert_eq!(back, BTreeSet::from(["1".to_owned(), "5".to_owned()]));
    let dead: BTreeSet<String> = broker
        .wait_for_dead_letters(1, Duration::from_secs(10))
        .await
        .iter()
        .filter_map(|d| header(d, "x-test-id"))
        .collect();
    assert_eq!(dead, BTreeSet::from(["7".to_owned()]));
}

#[tokio::test]
async fn a_run_settled_in_order_is_acknowledged_and_flush_waits_for_it() {
    let (broker, queue) = broker_with(50).await;
    let (channel, mut consumer, acks, broken) = consume_with_acks(&broker, 50, "acks-run").await;
    for _ in 0..50 {
        let delivery = consumer.next().await.expect("delivery").expect("ok");
        acks.received(delivery.delivery_tag);
        acks.settle(delivery.delivery_tag, Settlement::Ack);
    }
    acks.flush().await;
    channel.close(200, "done".into()).await.expect("close");
    assert!(!broken.is_cancelled());
    assert!(
        ids_in(&broker, &queue).await.is_empty(),
        "every message was acknowledged"
    );
    assert_eq!(broker.ready_count(&queue).await, 0);
}

#[tokio::test]
async fn a_short_run_waits_to_fold_more_unless_it_is_a_quarter_of_the_prefetch_or_old_enough() {
    let (broker, queue) = broker_with(2).await;
    // Settles both deliveries of a consumer with prefetch 2, told the
    // prefetch is `window`, folding up to `fold`; then waits and closes the
    // channel, and says how many messages came back unacknowledged.
    let settle_both_then_close = |window: u16, fold: Duration, tag: &'static str| {
        let broker = &broker;
        let queue = queue.clone();
        async move {
            let (channel, mut consumer, acks, broken) = consume_folding(broker, 2, tag, fold).await;
            acks.window(window);
            for _ in 0..2 {
                let delivery = consumer.next().await.expect("delivery").expect("ok");
                acks.received(delivery.delivery_tag);
                acks.settle(delivery.delivery_tag, Settlement::Ack);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(!broken.is_cancelled());
            channel.close(200, "done".into()).await.expect("close");
            let back = taken(broker, &queue).await;
            // Two ready again for the next round.
            for _ in 0..2 {
                broker.publish_raw(b"{}", json_properties()).await;
            }
            back
        }
    };
    // A run of 2 against a prefetch of 1,000 waits for more: within its
    // fold (a minute here), nothing is acknowledged yet.
    assert_eq!(
        settle_both_then_close(1000, Duration::from_secs(60), "fold-wait").await,
        2,
        "the run was held"
    );
    // A run of a quarter of the prefetch goes at once, whatever the fold:
    // the broker would send nothing more until it is acknowledged.
    assert_eq!(
        settle_both_then_close(2, Duration::from_secs(60), "fold-full").await,
        0,
        "the full run went at once"
    );
    // A short run goes once its oldest settlement waited the fold.
    assert_eq!(
        settle_both_then_close(1000, FOLD, "fold-timer").await,
        0,
        "the run went after FOLD"
    );
}

/// A consumer of the work queue with `prefetch`, and the bulk acknowledger
/// on its channel (with the token it cancels when the channel fails).
async fn consume_with_acks(
    broker: &TestBroker,
    prefetch: u16,
    tag: &str,
) -> (lapin::Channel, lapin::Consumer, Acks, CancellationToken) {
    consume_folding(broker, prefetch, tag, FOLD).await
}

/// The same, with runs folded for up to `fold`.
async fn consume_folding(
    broker: &TestBroker,
    prefetch: u16,
    tag: &str,
    fold: Duration,
) -> (lapin::Channel, lapin::Consumer, Acks, CancellationToken) {
    let channel = broker.connection.create_channel().await.expect("channel");
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    let consumer = channel
        .basic_consume(
            broker.topology.work_queue.as_str().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let broken = CancellationToken::new();
    let acks = Acks::folding(channel.clone(), broken.clone(), fold);
    (channel, consumer, acks, broken)
}

/// The `x-test-id`s (or `?`) of everything ready in `queue`, taken out.
async fn ids_in(broker: &TestBroker, queue: &str) -> BTreeSet<String> {
    take_all(broker, queue)
        .await
        .iter()
        .map(|message| header(&message.delivery, "x-test-id").unwrap_or_else(|| "?".into()))
        .collect()
}

/// How many messages are ready in `queue`, taken out.
async fn taken(broker: &TestBroker, queue: &str) -> usize {
    take_all(broker, queue).await.len()
}

/// Everything ready in `queue` (after a moment for requeues to land), taken out.
async fn take_all(broker: &TestBroker, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut messages = Vec::new();
    while let Some(message) = broker
        .channel
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        messages.push(message);
    }
    messages
}

/// A broker of the test's own with `n` messages in the work queue, and
/// that queue's name.
async fn broker_with(n: usize) -> (TestBroker, String) {
    let broker = TestBroker::new().await;
    for _ in 0..n {
        broker.publish_raw(b"{}", json_properties()).await;
    }
    let queue = broker.topology.work_queue.clone();
    (broker, queue)
}
