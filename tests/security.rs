//! Secrets and transport security, end to end: the key secret, tickets and
//! passwords inside URLs never reach the worker's logs (at any log level), TLS
//! works for `amqps://`, Postgres `sslmode` and an `https://` TapTalk, and the
//! server key never follows a redirect.

mod support;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use secrecy::ExposeSecret;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::*;
use ticket_worker::fake_taptalk::Knobs;
use ticket_worker::taptalk::{TaptalkClient, TicketError};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const WAIT: Duration = Duration::from_secs(60);

/// A RabbitMQ user that exists for one test, deleted again on drop.
struct RabbitUser {
    name: String,
    password: String,
}

impl RabbitUser {
    fn create() -> RabbitUser {
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

    fn url(&self, password: &str, host_port: &str, scheme: &str) -> String {
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

#[tokio::test]
async fn secrets_never_reach_the_logs_at_any_level() {
    let h = Harness::new(Knobs {
        fail_503: 0.2,
        ..Knobs::default()
    })
    .await;
    let user = RabbitUser::create();
    let db_password = format!("Db-Pw-{}", unique());
    // Local Postgres trusts local connections, so the password is carried
    // (and must be hidden) without being checked.
    let db_url =
        h.db.url
            .replacen("postgres@", &format!("postgres:{db_password}@"), 1);
    assert!(db_url.contains(&db_password));
    let mut env = worker_env(
        &db_url,
        &h.broker,
        &h.taptalk.base_url(),
        &format!("secrets-{}", unique()),
    );
    env.retain(|(k, _)| !matches!(*k, "AMQP_URL" | "RUST_LOG"));
    env.push((
        "AMQP_URL",
        user.url(&user.password, "127.0.0.1:5672", "amqp"),
    ));
    env.push(("RUST_LOG", "trace".into()));
    env.push(("LOG_FORMAT", "json".into()));
    env.push(("OUTAGE_AFTER", "1s".into()));
    let mut worker = WorkerProcess::spawn(&env);

    // Tickets issued, events rejected here and upstream, retries, a pause.
    let mut events: Vec<Value> = (0..15).map(|i| login_event(&format!("cust-{i}"))).collect();
    let mut rejected = login_event("cust-rejected");
    rejected["email"] = serde_json::json!("not-an-email");
    events.push(rejected);
    h.broker.publish_events(&events).await;
    h.broker
        .publish_raw(
            b"{broken",
            json_properties().with_message_id("broken".into()),
        )
        .await;
    h.tap.wait_for("ticket.ready", 15, WAIT).await;
    h.taptalk.set_knobs(Knobs {
        wrong_key: true,
        ..Knobs::default()
    });
    h.broker
        .publish_events(&[login_event("cust-during-wrong-key")])
        .await;
    eventually(WAIT, "the wrong key paused intake", || async {
        worker.logs().contains("intake paused").then_some(())
    })
    .await;
    h.taptalk.set_knobs(Knobs::default());
    h.tap.wait_for("ticket.ready", 16, WAIT).await;
    assert_eq!(worker.terminate().await, Some(0));

    // A worker given a wrong RabbitMQ password reports it without echoing it.
    let wrong_password = format!("Wrong-Pw-{}", unique());
    let mut env = env.clone();
    env.retain(|(k, _)| *k != "AMQP_URL");
    env.push((
        "AMQP_URL",
        user.url(&wrong_password, "127.0.0.1:5672", "amqp"),
    ));
    let mut refused = WorkerProcess::spawn(&env);
    eventually(WAIT, "the refused login is reported", || async {
        refused
            .logs()
            .contains("cannot start a RabbitMQ session")
            .then_some(())
    })
    .await;
    refused.terminate().await;

    let header = server_key().header_value().expose_secret().to_owned();
    let tickets: Vec<String> = h
        .taptalk
        .issued()
        .iter()
        .map(|i| i.ticket.expose().to_owned())
        .collect();
    assert!(tickets.len() >= 16);
    for (name, logs) in [
        ("worker", worker.logs()),
        ("refused worker", refused.logs()),
    ] {
        assert!(logs.len() > 10_000, "{name}: trace logging produced output");
        for (what, secret) in [
            ("the server key secret", KEY_SECRET.to_owned()),
            ("the Server-Key header", header.clone()),
            ("the RabbitMQ password", user.password.clone()),
            ("the wrong RabbitMQ password", wrong_password.clone()),
            ("the Postgres password", db_password.clone()),
        ] {
            assert!(!logs.contains(&secret), "{name}'s logs contain {what}");
        }
        for ticket in &tickets {
            assert!(
                !logs.contains(ticket.as_str()),
                "{name}'s logs contain a ticket"
            );
        }
    }
}

/// A throwaway certificate authority and a certificate for `localhost`.
struct TestCa {
    dir: PathBuf,
    ca_file: PathBuf,
    acceptor: TlsAcceptor,
}

impl TestCa {
    fn new() -> TestCa {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ticket-worker test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate().expect("server key");
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("server certificate");

        let dir = std::env::temp_dir().join(format!("tw-tls-{}", unique()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write CA");
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .expect("server TLS config");
        TestCa {
            dir,
            ca_file,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Terminates TLS on a local port and forwards the plain bytes to `upstream`.
struct TlsProxy {
    port: u16,
    handshakes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TlsProxy {
    async fn start(acceptor: TlsAcceptor, upstream: SocketAddr) -> TlsProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let handshakes = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&handshakes);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counter) = (acceptor.clone(), Arc::clone(&counter));
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        TlsProxy {
            port,
            handshakes,
            task,
        }
    }

    fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn tls_to_rabbitmq_postgres_and_taptalk() {
    let h = Harness::new(Knobs::default()).await;
    let ca = TestCa::new();
    let amqps = TlsProxy::start(ca.acceptor.clone(), "127.0.0.1:5672".parse().expect("addr")).await;
    let https = TlsProxy::start(ca.acceptor.clone(), h.taptalk.addr()).await;
    let mut env = worker_env(
        &format!("{}?sslmode=require", h.db.url),
        &h.broker,
        &format!("https://localhost:{}", https.port)
            .parse()
            .expect("url"),
        &format!("tls-{}", unique()),
    );
    env.retain(|(k, _)| *k != "AMQP_URL");
    env.push((
        "AMQP_URL",
        format!("amqps://guest:guest@localhost:{}/%2f", amqps.port),
    ));
    // Trust the test CA (rustls reads SSL_CERT_FILE as its root store).
    let mut trusted = env.clone();
    trusted.push(("SSL_CERT_FILE", ca.ca_file.display().to_string()));
    let mut worker = WorkerProcess::spawn(&trusted);

    let events: Vec<Value> = (0..10).map(|i| login_event(&format!("cust-{i}"))).collect();
    h.broker.publish_events(&events).await;
    h.tap.wait_for("ticket.ready", 10, WAIT).await;
    assert!(
        amqps.handshakes() >= 1,
        "the worker reached RabbitMQ over TLS"
    );
    assert!(
        https.handshakes() >= 1,
        "the worker reached TapTalk over TLS"
    );
    let encrypted: Vec<bool> = sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.datname = $1 AND a.application_name = 'ticket-worker'",
    )
    .bind(&h.db.name)
    .fetch_all(&h.db.pool)
    .await
    .expect("pg_stat_ssl");
    assert!(
        !encrypted.is_empty() && encrypted.iter().all(|ssl| *ssl),
        "Postgres connections use TLS: {encrypted:?}"
    );
    assert_eq!(worker.terminate().await, Some(0));

    // Without the CA the certificate is refused: TLS is verified, not just used.
    let mut untrusted = WorkerProcess::spawn(&env);
    eventually(WAIT, "the untrusted certificates are refused", || async {
        let logs = untrusted.logs().to_lowercase();
        let taptalk = logs
            .lines()
            .any(|l| l.contains("not usable at start") && l.contains("certificate"));
        let rabbitmq = logs
            .lines()
            .any(|l| l.contains("cannot start a rabbitmq session") && l.contains("certificate"));
        (taptalk && rabbitmq).then_some(())
    })
    .await;
    untrusted.terminate().await;
    println!(
        "tls: {} amqps and {} https handshakes; {} Postgres connections, all with ssl",
        amqps.handshakes(),
        https.handshakes(),
        encrypted.len()
    );
}

#[tokio::test]
async fn the_server_key_never_follows_a_redirect() {
    use axum::http::{HeaderMap, StatusCode, header::LOCATION};
    use axum::routing::any;
    // Where a redirect would lead: it counts requests carrying a Server-Key.
    let leaked = Arc::new(AtomicU64::new(0));
    let sink = {
        let leaked = Arc::clone(&leaked);
        axum::Router::new().fallback(any(move |headers: HeaderMap| {
            let leaked = Arc::clone(&leaked);
            async move {
                if headers.contains_key("Server-Key") {
                    leaked.fetch_add(1, Ordering::Relaxed);
                }
                StatusCode::OK
            }
        }))
    };
    let sink_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sink_addr = sink_listener.local_addr().expect("addr");
    let sink_task = tokio::spawn(async move { axum::serve(sink_listener, sink).await });
    let target = format!("http://{sink_addr}/v1/server/auth_ticket/request");
    let redirector = axum::Router::new().fallback(any(move || {
        let target = target.clone();
        async move { (StatusCode::TEMPORARY_REDIRECT, [(LOCATION, target)]) }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let redirector_task = tokio::spawn(async move { axum::serve(listener, redirector).await });

    let client = TaptalkClient::new(
        &format!("http://{addr}").parse().expect("url"),
        server_key(),
        Duration::from_secs(2),
    )
    .expect("client");
    let error = client.probe().await.expect_err("a redirect is refused");
    assert!(
        matches!(error, TicketError::Misconfigured(ref m) if m.contains("TAPTALK_BASE_URL")),
        "{error}"
    );
    assert_eq!(
        leaked.load(Ordering::Relaxed),
        0,
        "the key was not sent to the redirect target"
    );
    sink_task.abort();
    redirector_task.abort();
}
