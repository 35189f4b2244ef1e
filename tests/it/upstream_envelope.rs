//! TapTalk's envelope decides as much as the HTTP status: an upstream that
//! answers `HTTP 200` with an error inside the envelope (`"status": 500`, or
//! an `error.code`) and ticket-shaped data anyway never gets that data stored
//! or announced as a ticket. The worker, real RabbitMQ and real Postgres run
//! against a hostile upstream written here.

use crate::support::*;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use ticket_worker::taptalk::api::AUTH_TICKET_PATH;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);

/// One answer the hostile upstream gave to a ticket request.
#[derive(Debug, Clone)]
struct Answer {
    xc_user_id: String,
    ticket: String,
    hostile: bool,
}

#[derive(Default)]
struct Upstream {
    requests: AtomicU64,
    answers: Mutex<Vec<Answer>>,
}

/// Answers every other ticket request `HTTP 200` with an envelope that is not
/// a success but carries ticket-shaped data (`HOSTILE-<n>`), alternating
/// between `"status": 500` and `"status": 200` with an `error.code`; the
/// others get a clean success (`CLEAN-<n>`). A body without `xcUserID` (the
/// worker's probe) gets `ParamValidationFailed`, as from TapTalk.
struct HostileUpstream {
    url: url::Url,
    state: Arc<Upstream>,
    task: JoinHandle<()>,
}

impl HostileUpstream {
    async fn start() -> HostileUpstream {
        let state = Arc::new(Upstream::default());
        let app = axum::Router::new()
            .route(AUTH_TICKET_PATH, axum::routing::post(answer))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HostileUpstream {
            url: format!("http://{addr}").parse().expect("url"),
            state,
            task,
        }
    }

    fn answers(&self) -> Vec<Answer> {
        self.state
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for HostileUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    State(state): State<Arc<Upstream>>,
    body: Json<Value>,
) -> (StatusCode, Json<Value>) {
    let Some(xc_user_id) = body.get("xcUserID").and_then(Value::as_str) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "status": 400,
                "error": {"code": "ParamValidationFailed", "message": "xcUserID (105) is required", "field": "xcUserID"},
                "data": {}
            })),
        );
    };
    let n = state.requests.fetch_add(1, Ordering::SeqCst);
    let (envelope, ticket, hostile) = match n % 4 {
        0 => {
            let ticket = format!("HOSTILE-{n}");
            let envelope = json!({
                "status": 500,
                "error": {"code": "", "message": "", "field": ""},
                "data": {"userID": "u-x", "ticket": ticket}
            });
            (envelope, ticket, true)
        }
        2 => {
            let ticket = format!("HOSTILE-{n}");
            let envelope = json!({
                "status": 200,
                "error": {"code": "InternalServerError", "message": "something broke", "field": ""},
                "data": {"userID": "u-x", "ticket": ticket}
            });
            (envelope, ticket, true)
        }
        _ => {
            let ticket = format!("CLEAN-{n}");
            let envelope = json!({
                "status": 200,
                "error": {"code": "", "message": "", "field": ""},
                "data": {"userID": format!("u-{xc_user_id}"), "ticket": ticket}
            });
            (envelope, ticket, false)
        }
    };
    state
        .answers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Answer {
            xc_user_id: xc_user_id.to_owned(),
            ticket,
            hostile,
        });
    (StatusCode::OK, Json(envelope))
}

#[tokio::test]
async fn errors_inside_http_200_are_retried_never_stored_or_announced() {
    let db = TestDb::create().await;
    let broker = TestBroker::new().await;
    let tap = broker.tap().await;
    let upstream = HostileUpstream::start().await;
    let worker = TestWorker::spawn(settings(&db, &broker, upstream.url.clone()));

    let events: Vec<Value> = (0..20)
        .map(|i| login_event(&format!("envelope-{i}")))
        .collect();
    broker.publish_events(&events).await;
    tap.wait_for("ticket.ready", events.len(), WAIT).await;
    // Let anything that would come late (a second ready, a stray row) arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.stop().await;

    let answers = upstream.answers();
    let xc_of: HashMap<String, String> = events
        .iter()
        .map(|e| {
            (
                e["eventID"].as_str().unwrap_or_default().to_owned(),
                e["xcUserID"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();

    // Every event has exactly one stored ticket, and it is a clean one that
    // TapTalk gave for that very user.
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT event_id, user_id, ticket FROM auth_tickets")
            .fetch_all(&db.pool)
            .await
            .expect("read the stored tickets");
    let stored: HashSet<&str> = rows.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(rows.len(), events.len(), "one row per event: {rows:?}");
    assert_eq!(
        stored,
        xc_of.keys().map(String::as_str).collect::<HashSet<_>>()
    );
    for (event_id, user_id, ticket) in &rows {
        assert!(
            ticket.starts_with("CLEAN-"),
            "event {event_id} stored a ticket from an error answer: {ticket}"
        );
        let xc_user_id = &xc_of[event_id];
        assert_eq!(user_id, &format!("u-{xc_user_id}"));
        assert!(
            answers
                .iter()
                .any(|a| !a.hostile && &a.ticket == ticket && &a.xc_user_id == xc_user_id),
            "{ticket} was served for {xc_user_id}"
        );
    }

    // Exactly one ready event per login event, none carrying anything from an
    // error answer, and nothing failed.
    let ready = tap.ready();
    let ready_ids: HashSet<&str> = ready
        .iter()
        .filter_map(|r| r.body["eventID"].as_str())
        .collect();
    assert_eq!(ready.len(), events.len(), "{ready:?}");
    assert_eq!(
        ready_ids,
        xc_of.keys().map(String::as_str).collect::<HashSet<_>>()
    );
    for event in tap.all() {
        assert!(
            !event.raw.contains("HOSTILE") && !event.raw.contains("u-x"),
            "{} carries an error answer: {}",
            event.routing_key,
            event.raw
        );
    }
    assert!(tap.failed().is_empty(), "{:?}", tap.failed());
    assert!(broker.all_dead_letters().await.is_empty());

    // The error answers were retried: every user that got one got a clean
    // answer after it.
    let hostile = answers.iter().filter(|a| a.hostile).count();
    assert!(hostile >= events.len() / 2, "{hostile} error answers");
    for (i, bad) in answers.iter().enumerate().filter(|(_, a)| a.hostile) {
        assert!(
            answers[i + 1..]
                .iter()
                .any(|a| !a.hostile && a.xc_user_id == bad.xc_user_id),
            "{} got {} and was not asked again",
            bad.xc_user_id,
            bad.ticket
        );
    }
    println!(
        "{} requests, {hostile} answered with an error inside HTTP 200",
        answers.len()
    );
}

// ------------------------------------------------------- a huge Retry-After

/// Answers ticket requests `503` for the first 1.2 s (so that events retry
/// for a while, as the worker did before the 429s of the report), then the
/// next `throttled` ones `429` with `Retry-After: 18446744073709551615`
/// (u64::MAX seconds), then clean successes.
struct ThrottlingUpstream {
    url: url::Url,
    state: Arc<Mutex<Throttle>>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Throttle {
    requests: Vec<std::time::Instant>,
    /// When the 429s were sent.
    throttled_at: Vec<std::time::Instant>,
    throttle_left: usize,
}

enum Reply {
    Warming,
    Throttled,
    Ticket(usize),
}

impl ThrottlingUpstream {
    async fn start(throttled: usize) -> ThrottlingUpstream {
        let state = Arc::new(Mutex::new(Throttle {
            throttle_left: throttled,
            ..Throttle::default()
        }));
        let shared = Arc::clone(&state);
        let app = axum::Router::new().route(
            AUTH_TICKET_PATH,
            axum::routing::post(move |body: Json<Value>| {
                let shared = Arc::clone(&shared);
                async move {
                    use axum::response::IntoResponse;
                    let Some(xc_user_id) = body.get("xcUserID").and_then(Value::as_str) else {
                        return (
                            StatusCode::BAD_REQUEST,
                            Json(json!({"status": 400, "error": {"code": "ParamValidationFailed", "message": "xcUserID (105) is required", "field": "xcUserID"}, "data": {}})),
                        )
                            .into_response();
                    };
                    let reply = {
                        let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
                        let now = std::time::Instant::now();
                        state.requests.push(now);
                        let first = state.requests[0];
                        if now.duration_since(first) < Duration::from_millis(1_200) {
                            Reply::Warming
                        } else if state.throttle_left > 0 {
                            state.throttle_left -= 1;
                            state.throttled_at.push(now);
                            Reply::Throttled
                        } else {
                            Reply::Ticket(state.requests.len())
                        }
                    };
                    match reply {
                        Reply::Warming => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Json(json!({"status": 503, "error": {"code": "50300", "message": "warming up", "field": ""}, "data": {}})),
                        )
                            .into_response(),
                        Reply::Throttled => (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "18446744073709551615")],
                            Json(json!({"status": 429, "error": {"code": "42900", "message": "slow down", "field": ""}, "data": {}})),
                        )
                            .into_response(),
                        Reply::Ticket(n) => (
                            StatusCode::OK,
                            Json(json!({"status": 200, "error": {"code": "", "message": "", "field": ""},
                                        "data": {"userID": format!("u-{xc_user_id}"), "ticket": format!("T-{n}")}})),
                        )
                            .into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ThrottlingUpstream {
            url: format!("http://{addr}").parse().expect("url"),
            state,
            task,
        }
    }

    /// Every request, and when the 429s went out.
    fn seen(&self) -> (Vec<std::time::Instant>, Vec<std::time::Instant>) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (state.requests.clone(), state.throttled_at.clone())
    }
}

impl Drop for ThrottlingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_huge_retry_after_is_a_capped_pause_for_every_request_not_a_panic() {
    let db = TestDb::create().await;
    let broker = TestBroker::new().await;
    let tap = broker.tap().await;
    let upstream = ThrottlingUpstream::start(3).await;
    let mut env = worker_env(
        &db.url,
        &broker,
        &upstream.url,
        &format!("tw-429-{}", unique()),
    );
    env.push(("TAPTALK_MAX_RETRY_AFTER", "2s".into()));
    env.push(("LOG_FORMAT", "json".into()));
    let events: Vec<Value> = (0..10)
        .map(|i| login_event(&format!("throttled-{i}")))
        .collect();
    broker.publish_events(&events).await;
    let mut worker = WorkerProcess::spawn(&env);
    tap.wait_for("ticket.ready", events.len(), WAIT).await;
    let logs = worker.logs();
    assert_eq!(worker.terminate().await, Some(0), "{logs}");

    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "every line is JSON, panics included: {line}"
        );
    }
    assert!(!logs.contains("panicked"), "{logs}");
    assert!(logs.contains("Retry-After"), "the pause is logged: {logs}");
    // Honoured as a pause for everyone: after the first 429, nothing for
    // the (capped) pause but what was in flight already; not a storm.
    let (requests, throttled_at) = upstream.seen();
    let first_429 = throttled_at[0];
    let during: Vec<_> = requests
        .iter()
        .map(|at| at.saturating_duration_since(first_429))
        .filter(|after| {
            *after > Duration::from_millis(300) && *after < Duration::from_millis(1_500)
        })
        .collect();
    assert!(during.is_empty(), "requests during the pause: {during:?}");
    let after_warming = requests.iter().filter(|at| **at >= first_429).count();
    assert!(
        after_warming <= events.len() + 3,
        "{after_warming} requests once TapTalk throttled"
    );
    assert_eq!(tap.failed().len(), 0);
    assert_eq!(db.count().await, events.len() as i64);
}
