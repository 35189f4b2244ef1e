//! The work queue as RabbitMQ's documentation recommends, on the real broker:
//! declared with at-least-once dead-lettering (`x-dead-letter-strategy` with
//! `x-overflow: reject-publish`), and a queue an earlier version declared
//! without them is used as it is, with a warning naming the policy that
//! gives it the same strategy, which docs/operating.md's policy command then does
//! (on a RabbitMQ node of the test's own: a policy is broker configuration).

use crate::support::private::PrivateRabbit;
use crate::support::*;
use fake_taptalk::Knobs;
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// `rabbitmqctl list_queues name <column>`: the column for `queue`.
fn queue_column(queue: &str, column: &str) -> String {
    let output = Command::new("rabbitmqctl")
        .args(["-q", "--no-table-headers", "list_queues", "name", column])
        .output()
        .expect("rabbitmqctl list_queues");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            line.split_once('\t')
                .filter(|(name, _)| *name == queue)
                .map(|(_, value)| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no queue {queue} in list_queues"))
}

/// `rabbitmqctl list_queues name <column>` on `rabbit`'s first node.
fn private_queue_column(rabbit: &PrivateRabbit, queue: &str, column: &str) -> String {
    rabbit
        .ctl_output(0, &["--no-table-headers", "list_queues", "name", column])
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            line.split_once('\t')
                .filter(|(name, _)| *name == queue)
                .map(|(_, value)| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no queue {queue} in list_queues"))
}

#[tokio::test]
async fn the_work_queue_dead_letters_at_least_once() {
    let broker = TestBroker::new().await;
    let arguments = queue_column(&broker.topology.work_queue, "arguments");
    for argument in [
        r#"{"x-dead-letter-strategy","at-least-once"}"#,
        r#"{"x-overflow","reject-publish"}"#,
        r#"{"x-queue-type","quorum"}"#,
    ] {
        assert!(arguments.contains(argument), "{argument} in {arguments}");
    }
}

#[tokio::test]
async fn a_work_queue_from_an_earlier_version_is_used_with_a_warning_and_the_readme_policy_fixes_it()
 {
    let rabbit = PrivateRabbit::start(1, "");
    let h = Harness::on(&rabbit.amqp_url(0), &admin_database_url(), Knobs::default()).await;
    let t = &h.broker.topology;
    // The work queue as an earlier version declared it.
    let channel = &h.broker.channel;
    channel
        .queue_delete(t.work_queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the work queue");
    let mut arguments = FieldTable::default();
    for (key, value) in [
        ("x-queue-type", AMQPValue::LongString("quorum".into())),
        (
            "x-dead-letter-exchange",
            AMQPValue::LongString(t.dead_letter_exchange.as_str().into()),
        ),
        (
            "x-delivery-limit",
            AMQPValue::LongLongInt(i64::from(t.delivery_limit)),
        ),
    ] {
        arguments.insert(key.into(), value);
    }
    channel
        .queue_declare(
            t.work_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .expect("declare the work queue the old way");
    channel
        .queue_bind(
            t.work_queue.as_str().into(),
            t.login_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind it");

    let env = worker_env(
        &h.db.url,
        &h.broker,
        &h.taptalk.base_url(),
        &format!("legacy-{}", unique()),
    );
    let worker = WorkerProcess::spawn(&env);
    let event = login_event(&format!("user-{}", unique()));
    h.broker.publish_event(&event).await;
    let ready = h.tap.wait_for("ticket.ready", 1, WAIT).await;
    assert_eq!(ready[0].body["eventID"], event["eventID"]);
    let logs = worker.logs();
    assert!(
        logs.contains("without x-dead-letter-strategy=at-least-once"),
        "the worker says what the old queue lacks:\n{logs}"
    );
    assert!(
        logs.contains("docs/operating.md"),
        "and where the fix is:\n{logs}"
    );
    assert_eq!(
        logs.matches("connected to RabbitMQ").count(),
        1,
        "one session, not a reconnect loop:\n{logs}"
    );

    // docs/operating.md's policy, scoped to this test's queue.
    let name = format!("test-{}", unique());
    let pattern = format!("^{}$", t.work_queue.replace('.', "\\."));
    let applied = rabbit.ctl(
        0,
        &[
            "set_policy",
            &name,
            &pattern,
            r#"{"dead-letter-strategy":"at-least-once","overflow":"reject-publish"}"#,
            "--apply-to",
            "queues",
        ],
    );
    assert!(applied, "RabbitMQ accepts docs/operating.md's policy");
    eventually(WAIT, "the policy applies to the work queue", || async {
        (private_queue_column(&rabbit, &t.work_queue, "policy") == name).then_some(())
    })
    .await;
    // And the worker goes on with it.
    let second = login_event(&format!("user-{}", unique()));
    h.broker.publish_event(&second).await;
    h.tap.wait_for("ticket.ready", 2, WAIT).await;
}
