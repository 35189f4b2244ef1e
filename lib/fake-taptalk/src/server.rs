//! The stand-in's HTTP server and the handle tests use to steer and inspect it.

use super::answer::Answer;
use super::line::{Line, LoadStats, Slots};
use super::{Knobs, rules};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use chrono::{DateTime, Utc};
use rand::Rng;
use rand::distr::{Alphanumeric, SampleString};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use taptalk_api::wire::{
    AUTH_TICKET_PATH, ApiEnvelope, HEADER_VALIDATION_FAILED, PARAM_VALIDATION_FAILED,
    SERVER_KEY_HEADER, TicketData,
};
use taptalk_api::{AuthTicket, ServerKey};
use tokio::task::JoinHandle;

/// A ticket the stand-in issued, with the request body exactly as received.
#[derive(Debug, Clone)]
pub struct IssuedRecord {
    pub body: Map<String, Value>,
    pub user_id: String,
    pub ticket: AuthTicket,
    pub at: DateTime<Utc>,
}

/// What the stand-in has answered so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeStats {
    pub requests: u64,
    pub issued: u64,
    pub param_rejections: u64,
    pub key_rejections: u64,
    pub injected_503: u64,
    pub injected_429: u64,
    pub hung: u64,
    /// Answered 503 at once because `max_queue` requests were waiting.
    pub shed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    issued: AtomicU64,
    param_rejections: AtomicU64,
    key_rejections: AtomicU64,
    injected_503: AtomicU64,
    injected_429: AtomicU64,
    hung: AtomicU64,
    shed: AtomicU64,
}

/// The knobs, and the slots their capacity makes (replaced together).
#[derive(Debug, Clone)]
struct Config {
    knobs: Knobs,
    slots: Option<Arc<Slots>>,
}

impl Config {
    fn new(knobs: Knobs) -> Config {
        Config {
            slots: Slots::for_knobs(&knobs),
            knobs,
        }
    }
}

#[derive(Debug)]
struct Shared {
    expected_key: SecretString,
    config: RwLock<Config>,
    line: Arc<Line>,
    record: bool,
    users: Mutex<HashMap<String, String>>,
    issued: Mutex<Vec<IssuedRecord>>,
    counters: Counters,
}

/// A running stand-in. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeTaptalk {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl FakeTaptalk {
    /// Serves on `listen` (port 0 picks a free port) and accepts `key`.
    /// `record` keeps every issued ticket for [`FakeTaptalk::issued`] (tests);
    /// leave it off for long runs.
    pub async fn start(
        listen: SocketAddr,
        key: &ServerKey,
        knobs: Knobs,
        record: bool,
    ) -> std::io::Result<FakeTaptalk> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            expected_key: key.header_value(),
            config: RwLock::new(Config::new(knobs)),
            line: Arc::new(Line::default()),
            record,
            users: Mutex::new(HashMap::new()),
            issued: Mutex::new(Vec::new()),
            counters: Counters::default(),
        });
        let app = Router::new()
            .route(AUTH_TICKET_PATH, post(auth_ticket))
            .fallback(not_found)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "the TapTalk stand-in stopped");
            }
        });
        Ok(FakeTaptalk {
            addr,
            shared,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give the worker as `TAPTALK_BASE_URL`.
    pub fn base_url(&self) -> url::Url {
        // A socket address always forms a valid URL.
        url::Url::parse(&format!("http://{}", self.addr)).unwrap_or_else(|_| unreachable!())
    }

    pub fn knobs(&self) -> Knobs {
        read(&self.shared.config).knobs.clone()
    }

    /// Changes the behaviour of requests that arrive from now on. A new
    /// capacity or `max_queue` makes a new line: requests already in service
    /// or waiting finish under the old one.
    pub fn set_knobs(&self, knobs: Knobs) {
        let mut config = self
            .shared
            .config
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let same_line =
            config.knobs.capacity == knobs.capacity && config.knobs.max_queue == knobs.max_queue;
        if same_line {
            config.knobs = knobs;
        } else {
            *config = Config::new(knobs);
        }
    }

    /// Every ticket issued so far (only when started with `record`).
    pub fn issued(&self) -> Vec<IssuedRecord> {
        lock(&self.shared.issued).clone()
    }

    pub fn stats(&self) -> FakeStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FakeStats {
            requests: get(&c.requests),
            issued: get(&c.issued),
            param_rejections: get(&c.param_rejections),
            key_rejections: get(&c.key_rejections),
            injected_503: get(&c.injected_503),
            injected_429: get(&c.injected_429),
            hung: get(&c.hung),
            shed: get(&c.shed),
        }
    }

    /// Requests in service and waiting (now and at their peaks), and the
    /// time requests spent inside, from arrival to the answer sent, the wait
    /// in line included.
    pub fn load(&self) -> LoadStats {
        self.shared.line.stats()
    }

    /// Stops serving; requests in progress are cut off.
    pub fn stop(&self) {
        self.server.abort();
    }
}

impl Drop for FakeTaptalk {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// What the dice said for one request.
enum Fate {
    Hang,
    Unavailable,
    TooMany,
    Serve,
}

async fn auth_ticket(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    let counters = &shared.counters;
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let config = read(&shared.config).clone();
    let Some(visit) = Line::enter(&shared.line, config.slots.as_deref(), arrived).await else {
        counters.shed.fetch_add(1, Ordering::Relaxed);
        return Answer::from(ApiEnvelope::failure(
            503,
            "50300",
            "over capacity, request shed (injected)",
            "",
        ))
        .into_response(None);
    };
    serve(&shared, &config.knobs, &headers, &body)
        .await
        .into_response(Some(visit))
}

/// Answers a request that has been let in.
async fn serve(shared: &Shared, knobs: &Knobs, headers: &HeaderMap, body: &[u8]) -> Answer {
    let counters = &shared.counters;
    let (delay, fate) = {
        let mut rng = rand::rng();
        let jitter = knobs.latency_jitter.as_millis() as u64;
        let delay = knobs
            .latency
            .saturating_add(Duration::from_millis(if jitter > 0 {
                rng.random_range(0..=jitter)
            } else {
                0
            }));
        let roll: f64 = rng.random();
        let fate = if roll < knobs.hang {
            Fate::Hang
        } else if roll < knobs.hang + knobs.fail_503 {
            Fate::Unavailable
        } else if roll < knobs.hang + knobs.fail_503 + knobs.fail_429 {
            Fate::TooMany
        } else {
            Fate::Serve
        };
        (delay, fate)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let code = |codes: [&'static str; 2]| {
        if knobs.numeric_codes {
            codes[1]
        } else {
            codes[0]
        }
    };
    match fate {
        Fate::Hang => {
            counters.hung.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(knobs.hang_for).await;
            return Answer::from(ApiEnvelope::failure(
                504,
                "50400",
                "gateway timeout (injected)",
                "",
            ));
        }
        Fate::Unavailable => {
            counters.injected_503.fetch_add(1, Ordering::Relaxed);
            return Answer::from(ApiEnvelope::failure(
                503,
                "50300",
                "service unavailable (injected)",
                "",
            ));
        }
        Fate::TooMany => {
            counters.injected_429.fetch_add(1, Ordering::Relaxed);
            return Answer {
                envelope: ApiEnvelope::failure(429, "42900", "too many requests (injected)", ""),
                retry_after: true,
            };
        }
        Fate::Serve => {}
    }

    let key_ok = headers
        .get(SERVER_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == shared.expected_key.expose_secret());
    if knobs.wrong_key || !key_ok {
        counters.key_rejections.fetch_add(1, Ordering::Relaxed);
        let message = if headers.contains_key(SERVER_KEY_HEADER) {
            "the Server-Key header is invalid"
        } else {
            "the Server-Key header is missing"
        };
        return Answer::from(ApiEnvelope::failure(
            401,
            code(HEADER_VALIDATION_FAILED),
            message,
            "",
        ));
    }

    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object,
        _ => {
            counters.param_rejections.fetch_add(1, Ordering::Relaxed);
            return Answer::from(ApiEnvelope::failure(
                400,
                code(PARAM_VALIDATION_FAILED),
                "the body must be a JSON object",
                "",
            ));
        }
    };
    if let Err(error) = rules::check(&object) {
        counters.param_rejections.fetch_add(1, Ordering::Relaxed);
        let field = if knobs.numeric_codes {
            error.field.code().to_string()
        } else {
            error.field.name().to_owned()
        };
        return Answer::from(ApiEnvelope::failure(
            400,
            code(PARAM_VALIDATION_FAILED),
            error.to_string(),
            &field,
        ));
    }

    let xc_user_id = object
        .get("xcUserID")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if knobs.unavailable_for.contains(&xc_user_id) {
        counters.injected_503.fetch_add(1, Ordering::Relaxed);
        return Answer::from(ApiEnvelope::failure(
            503,
            "50300",
            "service unavailable for this user (injected)",
            "",
        ));
    }
    let user_id = {
        let mut users = lock(&shared.users);
        let next = 1_000_001 + users.len();
        users
            .entry(xc_user_id)
            .or_insert_with(|| next.to_string())
            .clone()
    };
    let ticket = Alphanumeric.sample_string(&mut rand::rng(), 64);
    counters.issued.fetch_add(1, Ordering::Relaxed);
    if shared.record {
        lock(&shared.issued).push(IssuedRecord {
            body: object,
            user_id: user_id.clone(),
            ticket: AuthTicket::new(ticket.clone()),
            at: Utc::now(),
        });
    }
    ApiEnvelope::success(&TicketData { user_id, ticket }).into()
}

async fn not_found() -> Response {
    Answer::from(ApiEnvelope::failure(404, "40400", "no such endpoint", "")).into_response(None)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}
