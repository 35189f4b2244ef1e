//! Secrets and transport security, end to end: the key secret, tickets and
//! passwords inside URLs never reach the worker's logs (at any log level), TLS
//! works for `amqps://`, Postgres `sslmode` and an `https://` TapTalk, and the
//! server key never follows a redirect.

use crate::support::*;
use fake_taptalk::Knobs;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use secrecy::ExposeSecret;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use ticket_worker::taptalk::{TaptalkClient, TicketError};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn secrets_never_reach_the_logs_at_any_level() {
    let h = Harness::new(Knobs {
        fail_503: 0.2,
        ..Knobs::default()
    })
    .await;
    let user = RabbitUser::create();
    let db_password = format!("Db@Pw/{}", unique());
    // Local Postgres trusts local connections, so the password is carried
    // (and must be hidden) without being checked.
    let db_url = h.db.url.replacen(
        "postgres@",
        &format!("postgres:{}@", url_encode(&db_password)),
        1,
    );
    assert!(db_url.contains(&url_encode(&db_password)));
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
    let wrong_password = format!("Wrong@Pw/{}", unique());
    let mut env = env.clone();
    env.retain(|(k, _)| *k != "AMQP_URL");
    env.push((
        "AMQP_URL",
        user.url(&wrong_password, "127.0.0.1:5672", "amqp"),
    ));
    let mut refused = WorkerProcess::spawn(&env);
    eventually(WAIT, "the refused login is reported", || async {
        let logs = refused.logs();
        // Enough trace output to search (the probes at start, the login).
        (logs.contains("cannot start a RabbitMQ session") && logs.len() > 10_000).then_some(())
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
    let mut leaks = Vec::new();
    for (name, logs) in [
        ("worker", worker.logs()),
        ("refused worker", refused.logs()),
    ] {
        assert!(logs.len() > 10_000, "{name}: trace logging produced output");
        let views = LogViews::new(&logs);
        let secrets = [
            ("the server key secret", KEY_SECRET.to_owned()),
            ("the Server-Key header", header.clone()),
            ("the RabbitMQ password", user.password.clone()),
            ("the wrong RabbitMQ password", wrong_password.clone()),
            ("the Postgres password", db_password.clone()),
        ];
        let tickets = tickets.iter().map(|t| ("a ticket", t.clone()));
        for (what, secret) in secrets.into_iter().chain(tickets) {
            let found = views.find(secret.as_bytes());
            if !found.is_empty() {
                leaks.push(format!("{name}'s logs contain {what}, as {found:?}"));
            }
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Logs read every way a library might have encoded a secret in them. This
/// is a detector written for the test, on purpose independent of the
/// redactor in `telemetry`: it decodes what it finds instead of predicting
/// encodings.
struct LogViews {
    /// The logs as written, and the string values of every JSON line decoded
    /// (so JSON escapes are undone).
    texts: Vec<String>,
}

impl LogViews {
    fn new(logs: &str) -> LogViews {
        let mut decoded = String::new();
        for line in logs.lines() {
            if let Ok(value) = serde_json::from_str::<Value>(line) {
                json_strings(&value, &mut decoded);
            }
        }
        LogViews {
            texts: vec![logs.to_owned(), decoded],
        }
    }

    /// The forms in which `secret` occurs; empty when it does not.
    fn find(&self, secret: &[u8]) -> Vec<&'static str> {
        let mut found = Vec::new();
        for text in &self.texts {
            let mut check = |what: &'static str, haystack: &[u8]| {
                if contains(haystack, secret) && !found.contains(&what) {
                    found.push(what);
                }
            };
            if contains(text.as_bytes(), secret) {
                check("raw text", text.as_bytes());
            } else {
                check("percent-encoded", &percent_decode(text));
            }
            for list in byte_lists(text) {
                check("a decimal byte list", &list);
            }
            for bytes in base64_tokens(text) {
                check("base64", &bytes);
            }
            for bytes in hex_runs(text) {
                check("hex", &bytes);
            }
        }
        found
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn json_strings(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

/// `%XX` replaced by its byte, everything else kept.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (other, _) => {
                out.push(other);
                i += 1;
            }
        }
    }
    out
}

/// Every run of at least two numbers 0–255 separated by commas (and
/// optional white space), as Rust's `Debug` prints `[u8]` and JSON prints
/// byte arrays, read as the bytes it spells.
fn byte_lists(text: &str) -> Vec<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut lists = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        match text[start..i].parse::<u8>() {
            Ok(byte) => current.push(byte),
            Err(_) => {
                if current.len() >= 2 {
                    lists.push(std::mem::take(&mut current));
                }
                current.clear();
                continue;
            }
        }
        let mut next = i;
        if bytes.get(next) == Some(&b',') {
            next += 1;
            while bytes.get(next).is_some_and(u8::is_ascii_whitespace) {
                next += 1;
            }
            if bytes.get(next).is_some_and(u8::is_ascii_digit) {
                i = next;
                continue;
            }
        }
        if current.len() >= 2 {
            lists.push(std::mem::take(&mut current));
        }
        current.clear();
    }
    if current.len() >= 2 {
        lists.push(current);
    }
    lists
}

/// Every base64-looking token of 8 or more characters (standard or URL-safe
/// alphabet, padded or not), decoded from each of the four alignments, so
/// that a secret inside a larger encoded blob is found too.
fn base64_tokens(text: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    use base64::alphabet::{STANDARD, URL_SAFE};
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let lenient = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    let engines = [
        (GeneralPurpose::new(&STANDARD, lenient), b"+/".as_slice()),
        (GeneralPurpose::new(&URL_SAFE, lenient), b"-_".as_slice()),
    ];
    let mut decoded = Vec::new();
    for (engine, extra) in &engines {
        let is_alphabet = |b: u8| b.is_ascii_alphanumeric() || extra.contains(&b);
        for token in text.as_bytes().split(|b| !is_alphabet(*b)) {
            if token.len() < 8 {
                continue;
            }
            for skip in 0..4 {
                let mut part = &token[skip..];
                if part.len() % 4 == 1 {
                    part = &part[..part.len() - 1];
                }
                if let Ok(bytes) = engine.decode(part) {
                    decoded.push(bytes);
                }
            }
        }
    }
    decoded
}

/// Every run of 8 or more hex digits, decoded from both alignments.
fn hex_runs(text: &str) -> Vec<Vec<u8>> {
    let mut decoded = Vec::new();
    for run in text.as_bytes().split(|b| !b.is_ascii_hexdigit()) {
        if run.len() < 8 {
            continue;
        }
        for skip in 0..2 {
            let bytes = run[skip..]
                .chunks_exact(2)
                .filter_map(|pair| {
                    std::str::from_utf8(pair)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect();
            decoded.push(bytes);
        }
    }
    decoded
}

#[test]
fn the_log_detector_finds_every_encoding_it_claims_to() {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let secret = "Pw@x/y-123";
    let views = |logs: &str| LogViews::new(logs).find(secret.as_bytes());
    assert!(views("nothing to see").is_empty());
    assert_eq!(views("a Pw@x/y-123 b"), ["raw text"]);
    assert_eq!(
        views(&format!("url {}", url_encode(secret))),
        ["percent-encoded"]
    );
    let list = format!("{:?}", [b"\0user\0", secret.as_bytes()].concat());
    assert_eq!(
        views(&format!("LongString({list})")),
        ["a decimal byte list"]
    );
    let json_list = serde_json::to_string(&[b"ab", secret.as_bytes()].concat()).expect("json");
    assert_eq!(views(&json_list), ["a decimal byte list"]);
    for filler in ["", "a", "ab", "abc"] {
        let blob = format!("{filler}{secret}trailing");
        assert_eq!(
            views(&format!("key={}", STANDARD.encode(&blob))),
            ["base64"],
            "{filler:?}"
        );
        assert_eq!(
            views(&format!("x:{}.", URL_SAFE_NO_PAD.encode(&blob))),
            ["base64"],
            "{filler:?}"
        );
    }
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    assert_eq!(views(&format!("0x{hex}")), ["hex"]);
    let quoted = r#"Pw"q\z"#;
    let line = serde_json::json!({ "message": format!("got {quoted}") }).to_string();
    assert!(!line.contains(quoted), "JSON escapes it");
    assert_eq!(LogViews::new(&line).find(quoted.as_bytes()), ["raw text"]);
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
