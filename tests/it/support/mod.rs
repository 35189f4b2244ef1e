//! Test support: each test gets its own Postgres database, its own RabbitMQ
//! exchanges and queues, and its own TapTalk stand-in, all real, and removes
//! them when it ends (also when it fails).
//!
//! `TEST_AMQP_URL` and `TEST_DATABASE_URL` point elsewhere than the local
//! defaults; `TEST_LOG=1` shows the worker's logs.

pub(crate) mod private;
pub(crate) mod raw_amqp;

use fake_taptalk::{FakeTaptalk, Knobs};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgConnection, PgPool};
use std::future::Future;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};
use ticket_worker::broker::Topology;
use ticket_worker::config::{BrokerSettings, DatabaseSettings, Settings, TaptalkSettings};
use ticket_worker::health::BreakerSettings;
use ticket_worker::observe::metrics::{Metrics, Snapshot as StatsSnapshot};
use ticket_worker::relay::RelaySettings;
use ticket_worker::retry::RetryPolicy;
use ticket_worker::shutdown::Shutdown;
use ticket_worker::startup::Application;
use ticket_worker::taptalk::ServerKey;
use tokio::task::JoinHandle;

pub(crate) fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub(crate) fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A short unique suffix for names.
pub(crate) fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

pub(crate) fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            ticket_worker::observe::init(
                ticket_worker::observe::LogFormat::Text,
                "info,ticket_worker=debug,lapin=warn",
            );
        }
    });
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub(crate) async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- Postgres

/// A fresh database, dropped (with its connections) when this is dropped.
pub(crate) struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    /// The database it was created from (and is dropped through).
    admin: String,
}

impl TestDb {
    pub(crate) async fn create() -> TestDb {
        TestDb::create_at(&admin_database_url()).await
    }

    /// A fresh database on the server of `admin` (a URL to any database
    /// there: a private server's, say).
    pub(crate) async fn create_at(admin: &str) -> TestDb {
        let name = format!("tw_test_{}", unique());
        let admin = admin.to_owned();
        let mut connection = PgConnection::connect(&admin)
            .await
            .expect("connect to the admin database");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await
            .expect("create the test database");
        let _ = connection.close().await;
        let url = database_url_for(&admin, &name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("connect to the test database");
        TestDb {
            name,
            url,
            pool,
            admin,
        }
    }

    /// A database with the migrations applied.
    pub(crate) async fn migrated() -> TestDb {
        let db = TestDb::create().await;
        ticket_worker::storage::MIGRATOR
            .run(&db.pool)
            .await
            .expect("migrate");
        db
    }

    pub(crate) async fn count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM auth_tickets")
            .fetch_one(&self.pool)
            .await
            .expect("count rows")
    }

    /// Kills every server process connected to this database except ours.
    pub(crate) async fn terminate_backends(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_one(&self.pool)
        .await
        .unwrap_or(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // The pool belongs to the test's runtime, which may be the one blocked
        // here: leave it alone; DROP ... WITH (FORCE) ends its connections.
        drop(DropDatabase::at(&self.admin, &self.name));
    }
}

/// Drops the database of this name when dropped (for databases a test
/// creates itself, rather than through [`TestDb`]).
pub(crate) struct DropDatabase(pub String, Option<String>);

impl DropDatabase {
    /// The database `name` of the shared server.
    pub(crate) fn named(name: &str) -> DropDatabase {
        DropDatabase(name.to_owned(), None)
    }

    /// The database `name` on the server of `admin`.
    pub(crate) fn at(admin: &str, name: &str) -> DropDatabase {
        DropDatabase(name.to_owned(), Some(admin.to_owned()))
    }
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let name = self.0.clone();
        let admin = self.1.clone().unwrap_or_else(admin_database_url);
        run_detached(async move {
            if let Ok(mut connection) = PgConnection::connect(&admin).await {
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                    .execute(&mut connection)
                    .await;
            }
        });
    }
}

/// Runs a clean-up to completion on a runtime and thread of its own: `Drop`
/// cannot await, and the test's own runtime may be the one dropping.
fn run_detached(cleanup: impl Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(cleanup);
        }
    })
    .join();
}

fn database_url_for(admin: &str, database: &str) -> String {
    let mut url = url::Url::parse(admin).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

/// Postgres roles of one test, dropped when this is dropped (also when the
/// test fails). Roles are cluster-wide and a role holding privileges or
/// objects in a live database cannot be dropped, so the clean-up ends the
/// roles' sessions, runs `DROP OWNED BY` in every database where Postgres
/// records something of theirs (which also revokes their privileges), and
/// only then drops them. Databases dropped before that (a [`TestDb`] dropped
/// first) take their records with them.
#[derive(Default)]
pub(crate) struct TestRoles {
    names: Vec<String>,
}

impl TestRoles {
    /// A fresh role name starting with `prefix`, registered for clean-up
    /// before anything creates the role (a test may fail right after).
    pub(crate) fn name(&mut self, prefix: &str) -> String {
        let name = format!("{prefix}_{}", unique());
        self.names.push(name.clone());
        name
    }

    /// Creates a LOGIN role with a password, member of `member_of`, and
    /// returns a URL that connects as it to `db` over the same host and port
    /// as the test's own connections.
    pub(crate) async fn create_login(&mut self, db: &TestDb, member_of: &str) -> String {
        let name = self.name("tw_login");
        let password = unique();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE {member_of}"
        )))
        .execute(&db.pool)
        .await
        .expect("create the login role");
        url_as(&db.url, &name, &password)
    }
}

impl Drop for TestRoles {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.names);
        let admin = admin_database_url();
        run_detached(async move {
            let Ok(mut connection) = PgConnection::connect(&admin).await else {
                return;
            };
            let _ = sqlx::query(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
                 WHERE usename = ANY($1) AND pid <> pg_backend_pid()",
            )
            .bind(&names)
            .execute(&mut connection)
            .await;
            let existing: Vec<String> =
                sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)")
                    .bind(&names)
                    .fetch_all(&mut connection)
                    .await
                    .unwrap_or_default();
            if existing.is_empty() {
                return;
            }
            let databases: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT d.datname::text FROM pg_shdepend s
                 JOIN pg_database d ON d.oid = s.dbid
                 JOIN pg_roles r ON r.oid = s.refobjid AND s.refclassid = 'pg_authid'::regclass
                 WHERE r.rolname = ANY($1)",
            )
            .bind(&existing)
            .fetch_all(&mut connection)
            .await
            .unwrap_or_default();
            let owned = format!("DROP OWNED BY {}", existing.join(", "));
            for database in databases {
                let url = database_url_for(&admin, &database);
                if let Ok(mut in_database) = PgConnection::connect(&url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(owned.clone()))
                        .execute(&mut in_database)
                        .await;
                    let _ = in_database.close().await;
                }
            }
            for role in existing {
                let drop = format!("DROP ROLE IF EXISTS {role}");
                let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                    .execute(&mut connection)
                    .await;
            }
        });
    }
}

/// `url` with another user and password.
pub(crate) fn url_as(url: &str, user: &str, password: &str) -> String {
    let mut url = url::Url::parse(url).expect("a database URL");
    let _ = url.set_username(user);
    let _ = url.set_password(Some(password));
    url.to_string()
}

// ---------------------------------------------------------------- RabbitMQ

/// Topology names of this test's own, declared, and deleted on drop.
pub(crate) struct TestBroker {
    /// The broker it is on (the shared one, unless [`TestBroker::at`]).
    pub url: String,
    pub topology: Topology,
    pub connection: Connection,
    pub channel: Channel,
    /// Every dead letter `all_dead_letters` has taken so far.
    dead_seen: Mutex<Vec<Delivery>>,
    /// Queues a test declared besides the topology, deleted on drop too.
    extra_queues: Mutex<Vec<String>>,
}

impl TestBroker {
    pub(crate) async fn new() -> TestBroker {
        TestBroker::with_delivery_limit(20).await
    }

    pub(crate) async fn with_delivery_limit(delivery_limit: u32) -> TestBroker {
        TestBroker::at(&amqp_url(), delivery_limit).await
    }

    /// Names of this test's own on the broker at `url` (a private one, say).
    pub(crate) async fn at(url: &str, delivery_limit: u32) -> TestBroker {
        let id = unique();
        let topology = Topology {
            login_exchange: format!("test.{id}.logins"),
            work_queue: format!("test.{id}.logins.ticket-worker"),
            dead_letter_exchange: format!("test.{id}.logins.dlx"),
            dead_letter_queue: format!("test.{id}.logins.dead"),
            ticket_exchange: format!("test.{id}.tickets"),
            delivery_limit,
        };
        let connection = Connection::connect(
            url,
            ConnectionProperties::default()
                .with_connection_name(format!("test-harness-{id}").into()),
        )
        .await
        .expect("connect to RabbitMQ");
        topology
            .declare(&connection)
            .await
            .expect("declare the test topology");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        TestBroker {
            url: url.to_owned(),
            topology,
            connection,
            channel,
            dead_seen: Mutex::new(Vec::new()),
            extra_queues: Mutex::new(Vec::new()),
        }
    }

    /// Publishes raw bytes to the login exchange and waits for the confirm.
    pub(crate) async fn publish_raw(&self, body: &[u8], properties: BasicProperties) {
        self.channel
            .basic_publish(
                self.topology.login_exchange.as_str().into(),
                "login".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("publish confirmed");
    }

    /// Publishes a login event as a login service would.
    pub(crate) async fn publish_event(&self, event: &Value) {
        let mut properties = json_properties();
        if let Some(id) = event["eventID"].as_str() {
            properties = properties.with_message_id(id.into());
        }
        self.publish_raw(event.to_string().as_bytes(), properties)
            .await;
    }

    /// Publishes many events, awaiting their confirms together (pipelined).
    pub(crate) async fn publish_events(&self, events: &[Value]) {
        let mut confirms = Vec::with_capacity(events.len());
        for event in events {
            let mut properties = json_properties();
            if let Some(id) = event["eventID"].as_str() {
                properties = properties.with_message_id(id.into());
            }
            let confirm = self
                .channel
                .basic_publish(
                    self.topology.login_exchange.as_str().into(),
                    "login".into(),
                    BasicPublishOptions::default(),
                    event.to_string().as_bytes(),
                    properties,
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert!(
                confirm.await.expect("confirm").is_ack(),
                "the broker took the event"
            );
        }
    }

    /// A durable queue bound to the ticket exchange, which (unlike [`tap`])
    /// survives a broker restart; deleted when this broker is dropped.
    pub(crate) async fn durable_tap_queue(&self) -> String {
        let name = format!("{}.durable-tap", self.topology.work_queue);
        self.channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("durable tap queue");
        self.channel
            .queue_bind(
                name.as_str().into(),
                self.topology.ticket_exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the durable tap");
        self.extra_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        name
    }

    /// Starts collecting ticket events (bind before publishing).
    pub(crate) async fn tap(&self) -> EventTap {
        EventTap::start(&self.connection, &self.topology.ticket_exchange).await
    }

    /// Messages ready in a queue (not counting those a consumer holds).
    pub(crate) async fn ready_count(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare");
        let _ = channel.close(200, "".into()).await;
        declared.message_count()
    }

    /// Waits until at least `n` dead letters arrived, and takes them all.
    pub(crate) async fn wait_for_dead_letters(&self, n: usize, timeout: Duration) -> Vec<Delivery> {
        let started = Instant::now();
        let mut dead = Vec::new();
        loop {
            dead.extend(self.drain_dead_letters().await);
            if dead.len() >= n {
                return dead;
            }
            assert!(
                started.elapsed() < timeout,
                "timed out waiting for {n} dead letters (have {})",
                dead.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every dead letter so far: those taken before by this method, and any new
    /// ones it takes out of the queue now.
    pub(crate) async fn all_dead_letters(&self) -> Vec<Delivery> {
        let new = self.drain_dead_letters().await;
        let mut seen = self.dead_seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.extend(new);
        seen.iter()
            .map(|d| Delivery {
                delivery_tag: d.delivery_tag,
                exchange: d.exchange.clone(),
                routing_key: d.routing_key.clone(),
                redelivered: d.redelivered,
                properties: d.properties.clone(),
                data: d.data.clone(),
                acker: d.acker.clone(),
            })
            .collect()
    }

    /// Takes every message out of the dead-letter queue.
    pub(crate) async fn drain_dead_letters(&self) -> Vec<Delivery> {
        let mut dead = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(
                self.topology.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
        {
            dead.push(message.delivery);
        }
        dead
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let topology = self.topology.clone();
        let url = self.url.clone();
        let extra =
            std::mem::take(&mut *self.extra_queues.lock().unwrap_or_else(|p| p.into_inner()));
        run_detached(async move {
            if let Ok(connection) = Connection::connect(&url, ConnectionProperties::default()).await
            {
                if let Ok(channel) = connection.create_channel().await {
                    for queue in extra {
                        let _ = channel
                            .queue_delete(queue.as_str().into(), Default::default())
                            .await;
                    }
                    let _ = topology.delete(&channel).await;
                }
                let _ = connection.close(200, "".into()).await;
            }
        });
    }
}

pub(crate) fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// A header's text value.
pub(crate) fn header(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// One ticket event as seen on the ticket exchange.
#[derive(Debug, Clone)]
pub(crate) struct SeenEvent {
    pub routing_key: String,
    pub body: Value,
    pub correlation_id: Option<String>,
    pub raw: String,
}

/// Collects every ticket event from an exclusive queue.
pub(crate) struct EventTap {
    seen: Arc<Mutex<Vec<SeenEvent>>>,
}

impl EventTap {
    async fn start(connection: &Connection, exchange: &str) -> EventTap {
        let channel = connection.create_channel().await.expect("channel");
        let mut consumer = ticket_worker::broker::tap::subscribe(&channel, exchange)
            .await
            .expect("consume a tap queue");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                let raw = String::from_utf8_lossy(&delivery.data).into_owned();
                let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(SeenEvent {
                        routing_key: delivery.routing_key.to_string(),
                        body,
                        correlation_id: delivery
                            .properties
                            .correlation_id()
                            .as_ref()
                            .map(|s| s.to_string()),
                        raw,
                    });
            }
        });
        EventTap { seen }
    }

    pub(crate) fn all(&self) -> Vec<SeenEvent> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn with_key(&self, routing_key: &str) -> Vec<SeenEvent> {
        self.all()
            .into_iter()
            .filter(|e| e.routing_key == routing_key)
            .collect()
    }

    pub(crate) fn ready(&self) -> Vec<SeenEvent> {
        self.with_key("ticket.ready")
    }

    pub(crate) fn failed(&self) -> Vec<SeenEvent> {
        self.with_key("ticket.failed")
    }

    /// Waits until at least `n` events of `routing_key` arrived.
    pub(crate) async fn wait_for(
        &self,
        routing_key: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<SeenEvent> {
        eventually(timeout, &format!("{n} {routing_key} events"), || async {
            let events = self.with_key(routing_key);
            (events.len() >= n).then_some(events)
        })
        .await
    }
}

// ---------------------------------------------------------------- TapTalk

pub(crate) const KEY_ID: &str = "test-key-id";
pub(crate) const KEY_SECRET: &str = "test-secret-Zq9v";

pub(crate) fn server_key() -> ServerKey {
    ServerKey::new(KEY_ID, SecretString::from(KEY_SECRET))
}

pub(crate) async fn fake_taptalk(knobs: Knobs) -> FakeTaptalk {
    FakeTaptalk::start(([127, 0, 0, 1], 0).into(), &server_key(), knobs, true)
        .await
        .expect("start the stand-in")
}

// ---------------------------------------------------------------- events

/// A valid login event with a fresh eventID.
pub(crate) fn login_event(xc_user_id: &str) -> Value {
    json!({
        "eventID": uuid::Uuid::new_v4().to_string(),
        "occurredAt": chrono::Utc::now().to_rfc3339(),
        "userIPAddress": "203.0.113.7",
        "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X)",
        "userPlatform": "ios",
        "userDeviceID": format!("dev-{}", unique()),
        "xcUserID": xc_user_id,
        "fullName": "Ana Lima",
        "email": "ana@example.com",
        "phone": "+628123456789",
        "somethingTheWorkerIgnores": {"nested": true}
    })
}

// ---------------------------------------------------------------- the worker

/// Settings for a worker on this test's database, broker names and stand-in,
/// with short retry budgets so tests finish quickly.
pub(crate) fn settings(db: &TestDb, broker: &TestBroker, taptalk_url: url::Url) -> Settings {
    Settings {
        broker: BrokerSettings {
            amqp_url: SecretString::from(broker.url.clone()),
            connection_name: format!("tw-test-{}", unique()),
            topology: broker.topology.clone(),
            reconnect: RetryPolicy::forever(Duration::from_millis(100), Duration::from_secs(1)),
        },
        database: DatabaseSettings {
            url: SecretString::from(db.url.clone()),
            max_connections: 5,
            reader_role: ticket_worker::storage::DEFAULT_READER_ROLE.to_owned(),
            pooling: ticket_worker::storage::Pooling::Direct,
        },
        taptalk: TaptalkSettings {
            base_url: taptalk_url,
            server_key: server_key(),
            timeout: Duration::from_secs(2),
            retry: RetryPolicy {
                first_pause: Duration::from_millis(20),
                max_pause: Duration::from_millis(200),
                give_up_after: Some(Duration::from_secs(5)),
            },
            max_retry_after: Duration::from_secs(60),
        },
        breaker: BreakerSettings {
            trip_after: Duration::from_secs(2),
            min_failures: 5,
        },
        probe: RetryPolicy::forever(Duration::from_millis(100), Duration::from_millis(500)),
        max_requeues: Some(50),
        prefetch: ticket_worker::worker::Prefetch::Fixed(32),
        limit: ticket_worker::taptalk::LimitSettings::fixed(
            std::num::NonZeroUsize::new(16).expect("16 is not zero"),
        ),
        rate_limit: None,
        quota: None,
        max_event_bytes: ticket_worker::events::DEFAULT_MAX_EVENT_BYTES,
        max_event_age: Some(Duration::from_secs(600)),
        max_clock_skew: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(5),
        migrate: true,
        purge: None,
        relay: RelaySettings::new(Duration::from_secs(1)),
        progress_every: None,
        event_log_rate: 20,
        http_listen: None,
        delivery_deadline: Duration::from_secs(300),
    }
}

/// A worker running in this process.
pub(crate) struct TestWorker {
    shutdown: Shutdown,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    metrics: Metrics,
    /// Where its HTTP server listens (when the settings ask for one).
    http: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
}

impl TestWorker {
    pub(crate) fn spawn(settings: Settings) -> TestWorker {
        init_logs();
        let app = Application::build(settings).expect("build the worker");
        let metrics = app.metrics();
        let http = app.http_address();
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        TestWorker {
            shutdown,
            handle: Some(handle),
            metrics,
            http,
        }
    }

    pub(crate) fn stats(&self) -> StatsSnapshot {
        self.metrics.snapshot()
    }

    /// The base URL of its HTTP server, once it listens.
    pub(crate) async fn http_url(&self) -> String {
        let http = Arc::clone(&self.http);
        let addr = eventually(Duration::from_secs(10), "the HTTP server listens", || {
            let http = Arc::clone(&http);
            async move { http.get().copied() }
        })
        .await;
        format!("http://{addr}")
    }

    /// Triggers shutdown and waits for the worker to stop.
    pub(crate) async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(handle) = self.handle.take() {
            let stopped = tokio::time::timeout(Duration::from_secs(30), handle).await;
            let result = stopped
                .expect("the worker stops within 30s")
                .expect("the worker task did not panic");
            result.expect("the worker ended without error");
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Everything one pipeline test needs.
pub(crate) struct Harness {
    pub db: TestDb,
    pub broker: TestBroker,
    pub taptalk: FakeTaptalk,
    pub tap: EventTap,
}

impl Harness {
    pub(crate) async fn new(knobs: Knobs) -> Harness {
        Harness::on(&amqp_url(), &admin_database_url(), knobs).await
    }

    /// A harness on the broker at `amqp_url` and the Postgres of `admin_url`
    /// (private servers, say).
    pub(crate) async fn on(amqp_url: &str, admin_url: &str, knobs: Knobs) -> Harness {
        let db = TestDb::create_at(admin_url).await;
        let broker = TestBroker::at(amqp_url, 20).await;
        let taptalk = fake_taptalk(knobs).await;
        let tap = broker.tap().await;
        Harness {
            db,
            broker,
            taptalk,
            tap,
        }
    }

    pub(crate) fn settings(&self) -> Settings {
        settings(&self.db, &self.broker, self.taptalk.base_url())
    }

    pub(crate) fn worker(&self) -> TestWorker {
        TestWorker::spawn(self.settings())
    }
}

// ---------------------------------------------------------------- the binary

pub(crate) fn bin() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ticket-worker"));
    // Tests run side by side: each worker takes a free port for its probes
    // (a test that wants another sets HTTP_LISTEN itself).
    command
        .env_clear()
        .env("RUST_BACKTRACE", "0")
        .env("HTTP_LISTEN", "127.0.0.1:0");
    command
}

/// The environment for `ticket-worker run` against this test's services.
pub(crate) fn worker_env(
    db_url: &str,
    broker: &TestBroker,
    taptalk_url: &url::Url,
    connection_name: &str,
) -> Vec<(&'static str, String)> {
    let t = &broker.topology;
    vec![
        ("AMQP_URL", broker.url.clone()),
        ("AMQP_CONNECTION_NAME", connection_name.to_owned()),
        ("DATABASE_URL", db_url.to_owned()),
        ("TAPTALK_BASE_URL", taptalk_url.to_string()),
        ("TAPTALK_SERVER_KEY_ID", KEY_ID.to_owned()),
        ("TAPTALK_SERVER_KEY_SECRET", KEY_SECRET.to_owned()),
        ("LOGIN_EXCHANGE", t.login_exchange.clone()),
        ("WORK_QUEUE", t.work_queue.clone()),
        ("DEAD_LETTER_EXCHANGE", t.dead_letter_exchange.clone()),
        ("DEAD_LETTER_QUEUE", t.dead_letter_queue.clone()),
        ("TICKET_EXCHANGE", t.ticket_exchange.clone()),
        ("DELIVERY_LIMIT", t.delivery_limit.to_string()),
        ("TAPTALK_TIMEOUT", "2s".into()),
        ("TAPTALK_RETRY_FOR", "5s".into()),
        ("SHUTDOWN_GRACE", "10s".into()),
        ("RUST_LOG", "info,ticket_worker=debug".into()),
    ]
}

/// `ticket-worker run` as a child process, its logs in a file.
pub(crate) struct WorkerProcess {
    child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl WorkerProcess {
    pub(crate) fn spawn(env: &[(&'static str, String)]) -> WorkerProcess {
        let log = std::env::temp_dir().join(format!("ticket-worker-test-{}.log", unique()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = bin()
            .arg("run")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start ticket-worker run");
        WorkerProcess { child, log }
    }

    /// [`WorkerProcess::spawn`], with at most `files` open file descriptors
    /// (`prlimit`, which then runs the worker in its own place).
    pub(crate) fn spawn_with_open_files(
        env: &[(&'static str, String)],
        files: u32,
    ) -> WorkerProcess {
        let log = std::env::temp_dir().join(format!("ticket-worker-test-{}.log", unique()));
        let file = std::fs::File::create(&log).expect("log file");
        let worker = bin();
        let mut command = std::process::Command::new("prlimit");
        command
            .arg(format!("--nofile={files}:{files}"))
            .arg("--")
            .arg(worker.get_program())
            .arg("run")
            .env_clear()
            .envs(worker.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        let child = command.spawn().expect("start prlimit ticket-worker run");
        WorkerProcess { child, log }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub(crate) fn signal(&self, name: &str) {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub(crate) async fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if started.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until it consumes (its first RabbitMQ session is open), so that
    /// faults injected on a timer land while it works, however slowly a busy
    /// machine starts it.
    pub(crate) async fn consuming(&self) {
        eventually(Duration::from_secs(60), "the worker consumes", || async {
            self.logs().contains("connected to RabbitMQ").then_some(())
        })
        .await;
    }

    /// Sends SIGTERM and waits up to 20 s; the exit code, `None` if it did
    /// not exit (or was killed by a signal).
    pub(crate) async fn terminate(&mut self) -> Option<i32> {
        self.signal("TERM");
        self.wait(Duration::from_secs(20))
            .await
            .and_then(|s| s.code())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

// ---------------------------------------------------------------- faults

/// Closes, as an operator would with `rabbitmqctl close_connection`, every
/// RabbitMQ connection whose client properties mention `fragment` (the
/// worker's `AMQP_CONNECTION_NAME`). Returns how many it closed.
/// The prefetch counts of the consumers on `queue`, as RabbitMQ sees them.
pub(crate) fn consumer_prefetch_counts(queue: &str) -> Vec<u32> {
    let Ok(listing) = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_consumers", "queue_name", "prefetch_count"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter_map(|line| {
            let (name, count) = line.rsplit_once(char::is_whitespace)?;
            (name.trim() == queue).then(|| count.trim().parse().ok())?
        })
        .collect()
}

pub(crate) fn close_rabbitmq_connections(fragment: &str) -> usize {
    let Ok(listing) = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
    else {
        return 0;
    };
    let text = String::from_utf8_lossy(&listing.stdout).into_owned();
    let mut closed = 0;
    for line in text.lines().filter(|l| l.contains(fragment)) {
        let Some(pid) = line.split_whitespace().next() else {
            continue;
        };
        let status = std::process::Command::new("rabbitmqctl")
            .args([
                "-q",
                "close_connection",
                pid,
                "fault injection by the test suite",
            ])
            .status();
        closed += usize::from(status.is_ok_and(|s| s.success()));
    }
    closed
}

// ---------------------------------------------------------------- oversized headers

/// RabbitMQ's default `frame_max`, which the local broker uses.
pub(crate) const FRAME_MAX: usize = 131_072;

/// `base` plus one header that makes the message's content-header frame
/// exactly `slack` bytes short of [`FRAME_MAX`]: RabbitMQ accepts it, but a
/// redelivery (which adds the 26-byte `x-delivery-count`) no longer fits.
pub(crate) fn filling_the_frame(base: BasicProperties, slack: usize) -> BasicProperties {
    let target = (FRAME_MAX - slack) as isize;
    let mut filler = 120_000isize;
    loop {
        let mut headers = base.headers().clone().unwrap_or_default();
        headers.insert(
            "x-filler".into(),
            AMQPValue::LongString("f".repeat(filler.max(0) as usize).into()),
        );
        let properties = base.clone().with_headers(headers);
        let len = header_frame_len(&properties) as isize;
        if len == target {
            return properties;
        }
        filler += target - len;
    }
}

/// The size of the content-header frame carrying `properties`: 7 bytes of
/// frame header, class id, weight and body size (12), the encoded
/// properties, and the frame-end byte.
pub(crate) fn header_frame_len(properties: &BasicProperties) -> usize {
    let serialize = lapin::protocol::basic::gen_properties(properties);
    let encoded = serialize(Vec::new().into())
        .map(|written| written.write.len())
        .expect("properties encode");
    7 + 12 + encoded + 1
}

// ---------------------------------------------------------------- RabbitMQ users

/// A RabbitMQ user that exists for one test (full permissions on `/`),
/// deleted again on drop, also when the test fails.
pub(crate) struct RabbitUser {
    pub name: String,
    pub password: String,
}

impl RabbitUser {
    pub(crate) fn create() -> RabbitUser {
        let name = format!("tw-test-{}", unique());
        let password = format!("Amqp-Pw-{}", unique());
        let ok = |args: &[&str]| {
            std::process::Command::new("rabbitmqctl")
                .arg("-q")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(ok(&["add_user", &name, &password]), "rabbitmqctl add_user");
        // From here on the guard deletes the user, whatever happens next.
        let user = RabbitUser { name, password };
        assert!(
            ok(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]),
            "rabbitmqctl set_permissions"
        );
        user
    }

    /// `scheme://name:password@host_port/%2f` with the given password.
    pub(crate) fn url(&self, password: &str, host_port: &str, scheme: &str) -> String {
        format!("{scheme}://{}:{password}@{host_port}/%2f", self.name)
    }
}

impl Drop for RabbitUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_user", &self.name])
            .status();
    }
}

// ---------------------------------------------------------------- a freezable link

/// A TCP proxy in front of RabbitMQ that can stop passing on what its clients
/// send (as a broken link or a stalled broker would): the broker keeps
/// delivering, but publishes, confirms requested and acknowledgements never
/// arrive. [`FreezableProxy::cut`] then drops every connection, discarding
/// what was held back.
pub(crate) struct FreezableProxy {
    pub port: u16,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// One flag per link: set, that link forwards nothing more, for ever.
    stalls: Arc<Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>>,
    accept: JoinHandle<()>,
}

impl FreezableProxy {
    pub(crate) async fn start(upstream: std::net::SocketAddr) -> FreezableProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let frozen = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        let stalls: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::new(Mutex::new(Vec::new()));
        let (flag, tasks, stall_flags) =
            (Arc::clone(&frozen), Arc::clone(&links), Arc::clone(&stalls));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let flag = Arc::clone(&flag);
                let stalled = Arc::new(AtomicBool::new(false));
                stall_flags
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Arc::clone(&stalled));
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        if flag.load(Ordering::Relaxed) || stalled.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        match client_read.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            // Read just as the link froze: held back too.
                            Ok(_)
                                if flag.load(Ordering::Relaxed)
                                    || stalled.load(Ordering::Relaxed) => {}
                            Ok(n) => {
                                if server_write.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
                let down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let mut tasks = tasks.lock().unwrap_or_else(|p| p.into_inner());
                tasks.push(up);
                tasks.push(down);
            }
        });
        FreezableProxy {
            port,
            frozen,
            links,
            stalls,
            accept,
        }
    }

    /// `AMQP_URL` through this proxy, as guest.
    pub(crate) fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// From now on, nothing the clients send reaches the broker.
    pub(crate) fn freeze(&self) {
        self.frozen
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every connection open now forwards nothing more, for ever, but stays
    /// open: a peer that vanished without closing (a half-open TCP
    /// connection). New connections work.
    pub(crate) fn stall_open_links(&self) {
        for stall in self.stalls.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            stall.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Drops every connection through the proxy, and what was held back.
    pub(crate) fn cut(&self) {
        for link in self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            link.abort();
        }
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
