//! The limiter in front of the real client and the project's TapTalk
//! stand-in over HTTP, in real time: what the simulation cannot show (the
//! worker's own CPU and the HTTP stack inside the round trip). Ignored by
//! default: it takes ~12 s and both cores.
//! `cargo test --release --test it limiter::live -- --ignored --nocapture`

use fake_taptalk::{FakeTaptalk, Knobs};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use ticket_worker::domain::TicketRequest;
use ticket_worker::taptalk::limit::{AdaptiveLimit, LimitSettings, Signal};
use ticket_worker::taptalk::{ServerKey, TaptalkClient};
use tokio::time::Instant;

async fn against_the_stand_in(
    settings: &LimitSettings,
    latency: Duration,
    tasks: usize,
    run: Duration,
) {
    let key = ServerKey::new("live-id", secrecy::SecretString::from("live-limit-secret"));
    let knobs = Knobs {
        latency,
        ..Knobs::default()
    };
    let listen = "127.0.0.1:0".parse().expect("address");
    let server = FakeTaptalk::start(listen, &key, knobs, false)
        .await
        .expect("stand-in");
    let client =
        TaptalkClient::new(&server.base_url(), key, Duration::from_secs(10)).expect("client");
    let object = match serde_json::json!({
        "userIPAddress": "203.0.113.7", "userAgent": "Mozilla/5.0", "userPlatform": "ios",
        "userDeviceID": "A1B2", "xcUserID": "cust-42", "fullName": "Ana Lima",
    }) {
        serde_json::Value::Object(map) => map,
        _ => return,
    };
    let request = Arc::new(TicketRequest::from_json(&object).expect("request"));
    let limit = AdaptiveLimit::new(settings).expect("settings");
    let (tickets, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (limit, client, request) = (limit.clone(), client.clone(), Arc::clone(&request));
            let (tickets, failures) = (Arc::clone(&tickets), Arc::clone(&failures));
            tokio::spawn(async move {
                while start.elapsed() < run {
                    let permit = limit.acquire().await;
                    let result = client.request_ticket(&request).await;
                    permit.done(Signal::of(&result));
                    match result {
                        Ok(_) => tickets.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let mut trace = Vec::new();
    let mut to_1000 = None;
    let mut lags = Vec::new();
    let mut last_tickets = 0;
    while start.elapsed() < run {
        let mut lag = Duration::ZERO;
        for _ in 0..10 {
            let before = std::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(10)).await;
            lag = lag.saturating_add(before.elapsed().saturating_sub(Duration::from_millis(10)));
        }
        lags.push(lag / 10);
        let at = start.elapsed();
        let snapshot = limit.snapshot();
        if to_1000.is_none() && snapshot.limit >= 1_000 {
            to_1000 = Some(at);
        }
        let done = tickets.load(Ordering::Relaxed);
        if std::env::var_os("LIVE_TRACE").is_some() {
            println!(
                "  {:>5.1}s limit {:>4} in flight {:>4} {:>5}/s rtt {:?} lag {:?}",
                at.as_secs_f64(),
                snapshot.limit,
                snapshot.in_flight,
                (done - last_tickets) * 10,
                snapshot.rtt,
                lag / 10
            );
        }
        last_tickets = done;
        trace.push((at, snapshot.limit, done));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let later: Vec<_> = trace.iter().filter(|p| p.0 >= run / 2).collect();
    let (first, last) = (later.first(), later.last());
    let late_rate = match (first, last) {
        (Some(a), Some(b)) if b.0 > a.0 => {
            (b.2 - a.2) as f64 / b.0.saturating_sub(a.0).as_secs_f64()
        }
        _ => 0.0,
    };
    let limits: Vec<usize> = later.iter().map(|p| p.1).collect();
    let snapshot = limit.snapshot();
    println!(
        "{} stand-in at {latency:?}, {tasks} tasks, {elapsed:.1} s: {} tickets ({:.0}/s overall, \
         {late_rate:.0}/s in the second half), {} failures; limit ≥ 1,000 after {to_1000:?}; \
         second half limit {}..{}; rtt {:?}, baseline {:?}; {} raises, {} cuts",
        settings.concurrency,
        tickets.load(Ordering::Relaxed),
        tickets.load(Ordering::Relaxed) as f64 / elapsed,
        failures.load(Ordering::Relaxed),
        limits.iter().min().copied().unwrap_or(0),
        limits.iter().max().copied().unwrap_or(0),
        snapshot.rtt,
        snapshot.baseline,
        snapshot.increases,
        snapshot.decreases,
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real time, both cores: run by hand with --ignored --nocapture"]
async fn the_limiter_in_front_of_the_stand_in() {
    let auto = LimitSettings::default();
    let fixed = LimitSettings::fixed(NonZeroUsize::new(1_024).expect("1024"));
    for settings in [&auto, &fixed] {
        against_the_stand_in(
            settings,
            Duration::from_millis(100),
            1_500,
            Duration::from_secs(6),
        )
        .await;
    }
    for settings in [&auto, &fixed] {
        against_the_stand_in(settings, Duration::ZERO, 300, Duration::from_secs(6)).await;
    }
}
