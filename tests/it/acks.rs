//! Bulk acknowledgements on a real RabbitMQ: runs of settled deliveries go
//! as one `multiple` ack, a requeue or a reject inside a run keeps its own
//! meaning, a delivery settled behind one still in flight is acknowledged
//! alone once it has waited, and whatever is unsettled when the channel
//! closes comes back.

use crate::support::{TestBroker, header, json_properties};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::collections::BTreeSet;
use std::time::Duration;
use ticket_worker::broker::acks::{Acks, HOLD, Settlement};
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
    let broker = TestBroker::new().await;
    for _ in 0..50 {
        broker.publish_raw(b"{}", json_properties()).await;
    }
    let queue = broker.topology.work_queue.clone();
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

/// The `x-test-id`s (or `?`) of everything ready in `queue`, taken out.
/// A consumer of the work queue with `prefetch`, and the bulk acknowledger
/// on its channel (with the token it cancels when the channel fails).
async fn consume_with_acks(
    broker: &TestBroker,
    prefetch: u16,
    tag: &str,
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
    let acks = Acks::start(channel.clone(), broken.clone());
    (channel, consumer, acks, broken)
}

async fn ids_in(broker: &TestBroker, queue: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Some(message) = broker
        .channel
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        ids.insert(header(&message.delivery, "x-test-id").unwrap_or_else(|| "?".into()));
    }
    ids
}
