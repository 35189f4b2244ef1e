//! What an operator sees of a running worker, through its HTTP server on the
//! real services: `/metrics` moves as events flow and never names an event or
//! a user; `/healthz` answers while the loops turn; `/readyz` turns unready
//! while TapTalk rejects the server key and ready again when it accepts it;
//! and a port that cannot be bound is an error naming `HTTP_LISTEN`.

use crate::support::*;
use fake_taptalk::Knobs;
use serde_json::json;
use std::time::Duration;

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

// ------------------------------------------------------- hostile HTTP clients

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where a worker process serves its endpoints, from its log.
async fn http_address(worker: &WorkerProcess) -> String {
    eventually(WAIT, "the worker serves HTTP", || async {
        worker.logs().lines().find_map(|line| {
            let rest = line.split("address=").nth(1)?;
            line.contains("serving /metrics").then(|| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
        })
    })
    .await
}

/// Whether the server ends the connection (EOF, a reset, or an answer
/// followed by EOF) within `within`; `false` if it keeps it open.
async fn server_ends(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 4096];
    let read_to_end = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end).await.is_ok()
}

/// GET `path` on a fresh connection, within 10 s: the status code.
async fn get_within(address: &str, path: &str) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .ok()?;
    let response = client
        .get(format!("http://{address}{path}"))
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

/// A worker process with few file descriptors, as a busy container might
/// have (idle sockets could take them all), and where it serves HTTP.
async fn worker_with_few_files(h: &Harness) -> (WorkerProcess, String) {
    let name = format!("tw-http-{}", unique());
    let worker = WorkerProcess::spawn_with_open_files(
        &worker_env(&h.db.url, &h.broker, &h.taptalk.base_url(), &name),
        1024,
    );
    worker.consuming().await;
    let address = http_address(&worker).await;
    assert_eq!(get_within(&address, "/readyz").await, Some(200));
    (worker, address)
}

#[tokio::test]
async fn idle_http_connections_are_closed_after_the_header_read_timeout() {
    let h = Harness::new(Knobs::default()).await;
    let (mut worker, address) = worker_with_few_files(&h).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(&address).await.expect("connect"));
    }
    for stream in &mut idle {
        assert!(
            server_ends(stream, Duration::from_secs(12)).await,
            "the server ends a connection that sends nothing"
        );
    }
    assert_eq!(worker.terminate().await, Some(0));
}

#[tokio::test]
async fn an_endless_request_head_is_cut_off_at_a_few_kib() {
    let h = Harness::new(Knobs::default()).await;
    let (mut worker, address) = worker_with_few_files(&h).await;
    let mut trickled = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(&address).await.expect("connect");
        let _ = stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: worker\r\nX-Pad: ")
            .await;
        // 288 KiB of one header, never finished: under hyper's own default
        // bound (~400 KB), far over the endpoints' 8 KiB.
        let pad = vec![b'a'; 16 * 1024];
        for _ in 0..18 {
            if stream.write_all(&pad).await.is_err() {
                break;
            }
        }
        trickled.push(stream);
    }
    for stream in &mut trickled {
        // Ended at once (431, or closed): well before the header-read
        // timeout could end it.
        assert!(
            server_ends(stream, Duration::from_secs(2)).await,
            "the server ends a connection whose head outgrows its bound"
        );
    }
    assert_eq!(worker.terminate().await, Some(0));
}

#[tokio::test]
async fn a_flood_of_idle_sockets_starves_neither_the_probes_nor_the_message_path() {
    let h = Harness::new(Knobs::default()).await;
    let (mut worker, address) = worker_with_few_files(&h).await;
    // More idle sockets than the worker has file descriptors.
    let mut flood = Vec::new();
    for _ in 0..1_500 {
        match TcpStream::connect(&address).await {
            Ok(stream) => flood.push(stream),
            Err(_) => break,
        }
    }
    assert!(
        flood.len() >= 1_100,
        "the flood connected ({})",
        flood.len()
    );
    for path in ["/readyz", "/healthz", "/metrics"] {
        assert_eq!(
            get_within(&address, path).await,
            Some(200),
            "{path} answers under the flood"
        );
    }
    let events: Vec<_> = (0..20)
        .map(|i| login_event(&format!("cust-http-{i}")))
        .collect();
    h.broker.publish_events(&events).await;
    h.tap.wait_for("ticket.ready", events.len(), WAIT).await;
    drop(flood);
    assert_eq!(
        worker.wait(Duration::from_millis(10)).await,
        None,
        "still running"
    );
    assert_eq!(worker.terminate().await, Some(0));
}

#[tokio::test]
async fn a_delivery_in_flight_past_its_deadline_goes_back_named_and_counted() {
    // One TapTalk request at a time, each taking 1.5 s: with 8 events taken
    // at once, most wait for a slot longer than the 2 s deadline.
    let h = Harness::new(Knobs {
        latency: Duration::from_millis(1_500),
        ..Knobs::default()
    })
    .await;
    let mut env = worker_env(
        &h.db.url,
        &h.broker,
        &h.taptalk.base_url(),
        &format!("tw-overdue-{}", unique()),
    );
    env.extend([
        ("CONCURRENCY", "1".to_owned()),
        ("PREFETCH", "8".to_owned()),
        ("DELIVERY_DEADLINE", "2s".to_owned()),
        ("TAPTALK_TIMEOUT", "5s".to_owned()),
    ]);
    let events: Vec<_> = (0..8)
        .map(|i| login_event(&format!("cust-slow-{i}")))
        .collect();
    h.broker.publish_events(&events).await;
    let mut worker = WorkerProcess::spawn(&env);
    let address = http_address(&worker).await;
    let overdue = eventually(WAIT, "a delivery is overdue", || async {
        let body = reqwest::get(format!("http://{address}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let n = sample(
            &body,
            "ticket_worker_deliveries_overdue_total{stage=\"taptalk_wait\"}",
        );
        (n > 0.0).then_some(n)
    })
    .await;
    assert!(overdue >= 1.0);
    let logs = worker.logs();
    assert!(
        logs.contains("a delivery was in flight longer than DELIVERY_DEADLINE, stuck waiting to send its TapTalk request")
            && logs.contains("WARN"),
        "{logs}"
    );
    assert_eq!(worker.terminate().await, Some(0));
}
