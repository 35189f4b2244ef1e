//! The TapTalk stand-in's capacity, over real HTTP: requests beyond the
//! capacity wait in line (so they take longer), beyond `max_queue` they are
//! shed with 503 at once, and its counters and timings agree with what the
//! clients saw. Only lower bounds on time are asserted: a slow machine can
//! make things later, never earlier.

use crate::support::*;
use fake_taptalk::{FakeTaptalk, Knobs};
use secrecy::ExposeSecret;
use serde_json::Value;
use std::time::{Duration, Instant};
use ticket_worker::taptalk::api::{AUTH_TICKET_PATH, SERVER_KEY_HEADER};

/// One answer as a client saw it: status, envelope, and when it came.
struct Seen {
    status: u16,
    envelope: Value,
    after: Duration,
}

/// Sends `n` ticket requests at once and returns the answers, slowest last.
async fn send_at_once(fake: &FakeTaptalk, n: usize) -> Vec<Seen> {
    let client = reqwest::Client::new();
    let url = format!(
        "{}{}",
        fake.base_url().as_str().trim_end_matches('/'),
        AUTH_TICKET_PATH
    );
    let key = server_key().header_value();
    let started = Instant::now();
    let requests = (0..n).map(|i| {
        let request = client
            .post(&url)
            .header(SERVER_KEY_HEADER, key.expose_secret())
            .json(&serde_json::json!({
                "userIPAddress": "203.0.113.7", "userAgent": "test", "userPlatform": "web",
                "userDeviceID": format!("device-{i}"), "xcUserID": format!("user-{i}"),
                "fullName": "Ana Lima"
            }));
        async move {
            let response = request.send().await.expect("the stand-in answers");
            let status = response.status().as_u16();
            let envelope: Value = response.json().await.expect("a JSON envelope");
            Seen {
                status,
                envelope,
                after: started.elapsed(),
            }
        }
    });
    let mut seen = futures_util::future::join_all(requests).await;
    seen.sort_by_key(|s| s.after);
    seen
}

#[tokio::test]
async fn beyond_its_capacity_requests_wait_in_line() {
    let fake = fake_taptalk(Knobs {
        latency: Duration::from_millis(100),
        capacity: Some(2),
        ..Knobs::default()
    })
    .await;
    let seen = send_at_once(&fake, 6).await;
    assert!(
        seen.iter().all(|s| s.status == 200),
        "all served in the end"
    );
    assert!(
        seen[0].after >= Duration::from_millis(100),
        "even the first waits the latency: {:?}",
        seen[0].after
    );
    // Two at a time, 100 ms each: the last two can only start after four
    // others have been served.
    let last = seen.last().map(|s| s.after).unwrap_or_default();
    assert!(
        last >= Duration::from_millis(300),
        "six requests through two slots take three rounds: {last:?}"
    );

    let stats = fake.stats();
    assert_eq!((stats.requests, stats.issued, stats.shed), (6, 6, 0));
    let load = fake.load();
    assert_eq!(load.peak_in_service, 2, "{load:?}");
    assert!((1..=4).contains(&load.peak_waiting), "{load:?}");
    assert_eq!((load.in_service, load.waiting), (0, 0), "{load:?}");
    let inside = load.in_upstream;
    assert_eq!(inside.visits, 6, "{inside:?}");
    assert!(
        inside.max >= Duration::from_millis(295) && inside.max <= last + Duration::from_millis(5),
        "the slowest spent its wait inside, and no longer than its client waited: {inside:?}, {last:?}"
    );
    assert!(inside.p50 >= Duration::from_millis(100), "{inside:?}");
}

#[tokio::test]
async fn beyond_max_queue_requests_are_shed_at_once_with_503() {
    let latency = Duration::from_secs(1);
    let fake = fake_taptalk(Knobs {
        latency,
        capacity: Some(2),
        max_queue: Some(1),
        ..Knobs::default()
    })
    .await;
    let seen = send_at_once(&fake, 6).await;
    let shed: Vec<&Seen> = seen.iter().filter(|s| s.status == 503).collect();
    let served: Vec<&Seen> = seen.iter().filter(|s| s.status == 200).collect();
    assert_eq!(
        (served.len(), shed.len()),
        (3, 3),
        "two in service, one waits, the rest shed"
    );
    for s in &shed {
        assert!(
            s.after < latency,
            "shed at once, not after a wait: {:?}",
            s.after
        );
        assert_eq!(s.envelope["status"], 503, "{}", s.envelope);
        assert_eq!(s.envelope["error"]["code"], "50300", "{}", s.envelope);
        assert!(s.envelope["data"].is_null() || s.envelope["data"] == serde_json::json!({}));
    }
    let waited = served.last().map(|s| s.after).unwrap_or_default();
    assert!(
        waited >= latency * 2,
        "the one in line waited a round: {waited:?}"
    );

    let stats = fake.stats();
    assert_eq!(
        (stats.requests, stats.issued, stats.shed, stats.injected_503),
        (6, 3, 3, 0),
        "{stats:?}"
    );
    let load = fake.load();
    assert_eq!(
        (load.peak_in_service, load.peak_waiting),
        (2, 1),
        "{load:?}"
    );
    assert_eq!(
        load.in_upstream.visits, 3,
        "shed requests are counted, not timed"
    );
    assert!(load.in_upstream.max >= latency * 2, "{load:?}");
}

#[tokio::test]
async fn without_a_capacity_every_request_is_served_at_once_and_timed() {
    let fake = fake_taptalk(Knobs {
        latency: Duration::from_millis(50),
        ..Knobs::default()
    })
    .await;
    let seen = send_at_once(&fake, 8).await;
    assert!(seen.iter().all(|s| s.status == 200));
    let load = fake.load();
    assert_eq!(load.in_upstream.visits, 8, "{load:?}");
    assert_eq!(load.peak_waiting, 0, "{load:?}");
    assert!(
        load.in_upstream.p50 >= Duration::from_millis(50),
        "{load:?}"
    );

    // A capacity set later applies to requests from then on.
    fake.set_knobs(Knobs {
        capacity: Some(1),
        max_queue: Some(0),
        latency: Duration::from_millis(500),
        ..Knobs::default()
    });
    let seen = send_at_once(&fake, 3).await;
    let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(fake.stats().shed, 2);
}
