//! What an operator sees of a running worker, through its HTTP server on the
//! real services: `/metrics` moves as events flow and never names an event or
//! a user; `/healthz` answers while the loops turn; `/readyz` turns unready
//! while TapTalk rejects the server key and ready again when it accepts it;
//! and a port that cannot be bound is an error naming `HTTP_LISTEN`.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;
use ticket_worker::fake_taptalk::Knobs;

const WAIT: Duration = Duration::from_secs(30);

/// A worker in this process that serves its endpoints on a free port.
async fn serving_worker(h: &Harness) -> (TestWorker, String) {
    let (worker, url, _) = serving_worker_named(h).await;
    (worker, url)
}

/// [`serving_worker`], and the name its RabbitMQ connections carry.
async fn serving_worker_named(h: &Harness) -> (TestWorker, String, String) {
    let mut settings = h.settings();
    settings.http_listen = Some(([127, 0, 0, 1], 0).into());
    let name = settings.broker.connection_name.clone();
    let worker = TestWorker::spawn(settings);
    let url = worker.http_url().await;
    (worker, url, name)
}

/// One GET: status and body.
async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response.text().await.expect("read the answer");
    (status, body)
}

/// The value of the sample whose line starts with `series ` in `text`
/// (`series` is the name with its labels, exactly as rendered).
fn sample(text: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{series} has no number in\n{text}"))
}

#[tokio::test]
async fn metrics_move_as_events_flow_and_never_name_an_event_or_a_user() {
    let h = Harness::new(Knobs::default()).await;
    let (worker, url) = serving_worker(&h).await;
    let metrics_url = format!("{url}/metrics");

    let response = reqwest::get(&metrics_url).await.expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "Prometheus reads OpenMetrics text: {content_type}"
    );
    let before = response.text().await.expect("read /metrics");
    assert_eq!(
        sample(&before, "ticket_worker_events_total{outcome=\"issued\"}"),
        0.0
    );
    assert!(before.contains("ticket_worker_build_info{version=\""));

    let events: Vec<_> = (0..20)
        .map(|i| login_event(&format!("user-{}-{i}", unique())))
        .collect();
    let mut invalid = login_event(&format!("user-{}-bad", unique()));
    invalid["userPlatform"] = json!("windows");
    h.broker.publish_events(&events).await;
    h.broker.publish_event(&invalid).await;
    h.tap.wait_for("ticket.ready", 20, WAIT).await;
    h.broker.wait_for_dead_letters(1, WAIT).await;

    // Settled events are counted once their acks are sent, a moment later.
    let after = eventually(WAIT, "the metrics count 20 tickets", || {
        let metrics_url = metrics_url.clone();
        async move {
            let (_, text) = get(&metrics_url).await;
            (sample(&text, "ticket_worker_events_total{outcome=\"issued\"}") == 20.0)
                .then_some(text)
        }
    })
    .await;
    for (series, want) in [
        ("ticket_worker_tickets_issued_total", 20.0),
        ("ticket_worker_taptalk_requests_total{result=\"ok\"}", 20.0),
        (
            "ticket_worker_taptalk_request_duration_seconds_count{result=\"ok\"}",
            20.0,
        ),
        ("ticket_worker_login_to_ready_seconds_count", 20.0),
        ("ticket_worker_dead_letters_total{reason=\"invalid\"}", 1.0),
        ("ticket_worker_failures_total{reason=\"invalid\"}", 1.0),
        ("ticket_worker_intake_state{state=\"running\"}", 1.0),
        ("ticket_worker_intake_state{state=\"disconnected\"}", 0.0),
        ("ticket_worker_events_in_flight", 0.0),
    ] {
        assert_eq!(sample(&after, series), want, "{series} in\n{after}");
    }
    assert!(
        sample(
            &after,
            "ticket_worker_connections_opened_total{dependency=\"rabbitmq\"}"
        ) >= 1.0
    );
    assert!(
        sample(
            &after,
            "ticket_worker_connections_opened_total{dependency=\"postgres\"}"
        ) >= 1.0
    );
    assert!(sample(&after, "ticket_worker_taptalk_concurrency_limit") >= 1.0);
    assert!(sample(&after, "ticket_worker_prefetch") >= 1.0);

    for event in events.iter().chain([&invalid]) {
        for field in ["eventID", "xcUserID", "userDeviceID"] {
            let value = event[field].as_str().expect("a string field");
            assert!(
                !after.contains(value),
                "/metrics carries the {field} {value}"
            );
        }
    }
    worker.stop().await;
}

#[tokio::test]
async fn readyz_turns_unready_while_the_key_is_rejected_and_ready_after() {
    let h = Harness::new(Knobs::default()).await;
    let (worker, url, settings_name) = serving_worker_named(&h).await;
    let readyz = format!("{url}/readyz");

    assert_eq!(get(&format!("{url}/healthz")).await.0, 200);
    eventually(WAIT, "/readyz answers 200 once the worker consumes", || {
        let readyz = readyz.clone();
        async move { (get(&readyz).await.0 == 200).then_some(()) }
    })
    .await;

    h.taptalk.set_knobs(Knobs {
        wrong_key: true,
        ..Knobs::default()
    });
    let user = format!("user-{}", unique());
    h.broker.publish_event(&login_event(&user)).await;
    let why = eventually(Duration::from_secs(10), "/readyz turns unready", || {
        let readyz = readyz.clone();
        async move {
            let (status, body) = get(&readyz).await;
            (status == 503).then_some(body)
        }
    })
    .await;
    assert!(
        why.contains("not ready") && why.contains("TAPTALK_SERVER_KEY_ID"),
        "the answer says why and names the settings: {why}"
    );
    let (_, text) = get(&format!("{url}/metrics")).await;
    assert_eq!(
        sample(
            &text,
            "ticket_worker_intake_state{state=\"paused_taptalk_misconfigured\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        get(&format!("{url}/healthz")).await.0,
        200,
        "paused is not dead: the probing loop turns"
    );

    // A new RabbitMQ session while paused: the worker is still paused, for
    // the same reason, and says so (not "no RabbitMQ session").
    let name = settings_name.clone();
    let closed = tokio::task::spawn_blocking(move || close_rabbitmq_connections(&name))
        .await
        .unwrap_or(0);
    assert!(closed >= 1, "the worker's connections were closed");
    eventually(
        WAIT,
        "a new session, still paused for TapTalk's key",
        || {
            let url = url.clone();
            let metrics = worker.stats();
            async move {
                let (status, body) = get(&format!("{url}/readyz")).await;
                (metrics.sessions >= 2 && status == 503 && body.contains("TAPTALK_SERVER_KEY_ID"))
                    .then_some(())
            }
        },
    )
    .await;

    h.taptalk.set_knobs(Knobs::default());
    eventually(WAIT, "/readyz answers 200 again", || {
        let readyz = readyz.clone();
        async move { (get(&readyz).await.0 == 200).then_some(()) }
    })
    .await;
    let ready = h.tap.wait_for("ticket.ready", 1, WAIT).await;
    assert_eq!(ready[0].body["xcUserID"], json!(user));
    let (_, text) = get(&format!("{url}/metrics")).await;
    assert!(
        sample(
            &text,
            "ticket_worker_taptalk_requests_total{result=\"misconfigured\"}"
        ) >= 1.0
    );
    worker.stop().await;
}

#[tokio::test]
async fn an_address_that_cannot_be_bound_is_an_error_naming_http_listen() {
    let h = Harness::new(Knobs::default()).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = taken.local_addr().expect("its address");
    let mut env = worker_env(&h.db.url, &h.broker, &h.taptalk.base_url(), "tw-operate");
    env.push(("HTTP_LISTEN", address.to_string()));
    let mut worker = WorkerProcess::spawn(&env);
    let status = worker
        .wait(WAIT)
        .await
        .expect("the worker stops when it cannot serve its probes");
    assert!(!status.success());
    let logs = worker.logs();
    assert!(logs.contains("HTTP_LISTEN"), "{logs}");
    assert!(logs.contains(&address.to_string()), "{logs}");
}
