//! `ticket-worker tail` against a running worker on the real broker: it
//! shows each ticket event as one line (user, outcome, reason,
//! login-to-ready), its filters choose what it shows, `--count` and `--for`
//! end it, and a forged ticket event with escape codes and newlines is shown
//! escaped, on one line.

use crate::support::*;
use fake_taptalk::Knobs;
use lapin::options::BasicPublishOptions;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `ticket-worker tail` child on the test's broker and ticket exchange,
/// started once it says it follows.
struct Tail {
    child: Child,
}

impl Tail {
    fn start(broker: &TestBroker, args: &[&str]) -> Tail {
        let mut child = bin()
            .arg("tail")
            .args(args)
            .env("AMQP_URL", &broker.url)
            .env("TICKET_EXCHANGE", &broker.topology.ticket_exchange)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ticket-worker tail");
        let stderr = child.stderr.take().expect("stderr");
        let (said, heard) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = said.send(line);
            }
        });
        let first = heard
            .recv_timeout(Duration::from_secs(20))
            .expect("tail says it follows");
        assert!(
            first.starts_with("tail: following ticket.ready and ticket.failed on exchange"),
            "{first}"
        );
        let password = url::Url::parse(&broker.url)
            .ok()
            .and_then(|u| u.password().map(str::to_owned))
            .unwrap_or_default();
        assert!(
            password.is_empty() || !first.contains(&format!(":{password}@")),
            "no password: {first}"
        );
        Tail { child }
    }

    /// Waits (at most 30 s) for it to end by itself: its exit code and stdout.
    fn finish(mut self) -> (Option<i32>, String) {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let mut out = String::new();
                self.child
                    .stdout
                    .take()
                    .expect("stdout")
                    .read_to_string(&mut out)
                    .expect("read stdout");
                return (status.code(), out);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("tail did not end within 30 s");
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn tail_shows_each_ticket_event_filtered_and_escaped() {
    let h = Harness::new(Knobs::default()).await;
    let worker = h.worker();
    let good_user = format!("good-{}", unique());
    let bad_user = format!("bad-{}", unique());

    let all = Tail::start(&h.broker, &["--count", "3"]);
    let failed_of_bad = Tail::start(
        &h.broker,
        &["--outcome", "failed", "--user", &bad_user, "--count", "1"],
    );
    let nobody = Tail::start(&h.broker, &["--user", "nobody", "--for", "3s"]);

    h.broker.publish_event(&login_event(&good_user)).await;
    h.tap
        .wait_for("ticket.ready", 1, Duration::from_secs(30))
        .await;
    let mut bad = login_event(&bad_user);
    bad["userPlatform"] = "windows-phone".into();
    h.broker.publish_event(&bad).await;
    h.tap
        .wait_for("ticket.failed", 1, Duration::from_secs(30))
        .await;
    // Anyone who may publish to the ticket exchange can forge an event.
    let forged = "{\"eventID\":\"forged\",\"xcUserID\":\"evil\\u001b[2J\",\"reason\":\"invalid\",\"message\":\"x\\nALL CLEAR\"}";
    h.broker
        .channel
        .basic_publish(
            h.broker.topology.ticket_exchange.as_str().into(),
            "ticket.failed".into(),
            BasicPublishOptions::default(),
            forged.as_bytes(),
            json_properties(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");

    let (code, out) = all.finish();
    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].contains(&format!("ready   {good_user}  device dev-"))
            && lines[0].contains("login-to-ready "),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(&format!(
            "failed  {bad_user}  reason invalid (userPlatform)"
        )),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("failed  evil\\u{1b}[2J  reason invalid: x\\u{a}ALL CLEAR  event forged"),
        "{}",
        lines[2]
    );
    assert!(
        !out.contains('\u{1b}'),
        "no raw escape code reaches the terminal"
    );

    let (code, out) = failed_of_bad.finish();
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains(&bad_user) && out.contains("failed"), "{out}");

    let (code, out) = nobody.finish();
    assert_eq!(code, Some(0));
    assert_eq!(out, "", "nothing of user nobody");
    worker.stop().await;
}

#[test]
fn tail_on_a_missing_exchange_says_which_setting() {
    let output = bin()
        .arg("tail")
        .env("AMQP_URL", amqp_url())
        .env("TICKET_EXCHANGE", format!("test.{}.nothing-here", unique()))
        .output()
        .expect("run tail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot follow the ticket exchange") && stderr.contains("TICKET_EXCHANGE"),
        "{stderr}"
    );
}
