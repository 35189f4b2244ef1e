//! TapTalk's envelope decides as much as the HTTP status: an upstream that
//! answers `HTTP 200` with an error inside the envelope (`"status": 500`, or
//! an `error.code`) and ticket-shaped data anyway never gets that data stored
//! or announced as a ticket. The worker, real RabbitMQ and real Postgres run
//! against a hostile upstream written here.

mod support;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
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
