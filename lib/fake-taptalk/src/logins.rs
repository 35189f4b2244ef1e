//! Realistic login events, as a customer's login service would publish them
//! (the contract is `docs/integrating.md`): the other half of standing in
//! for the world around the worker, for the demo and the benchmark.
//!
//! Only JSON values are built here, so nothing of the worker's own types is
//! known; the worker's tests parse them as any publisher's events.

use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};

/// One valid login event of user number `user` (the same number gives the
/// same person), on a random platform and device: what `ticket-worker demo` and
/// the benchmark publish.
pub fn realistic_login_event(
    rng: &mut impl Rng,
    user: usize,
    event_id: &str,
    occurred_at: &str,
) -> Value {
    const FIRST: [&str; 12] = [
        "Ana", "Budi", "Citra", "Dewi", "Eko", "Fajar", "Gita", "Hadi", "Intan", "Joko", "Kartika",
        "Lukas",
    ];
    const LAST: [&str; 10] = [
        "Lima", "Santoso", "Wijaya", "Pratama", "Nguyen", "Tan", "Silva", "Kusuma", "Halim",
        "Saputra",
    ];
    const AGENTS: [(&str, &str); 3] = [
        ("ios", "TapTalkDemo/3.2 (iPhone15,2; iOS 18.1)"),
        ("android", "TapTalkDemo/3.2 (Linux; Android 15; Pixel 9)"),
        (
            "web",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
        ),
    ];
    let first = FIRST[user % FIRST.len()];
    let last = LAST[(user / FIRST.len()) % LAST.len()];
    let (platform, agent) = *AGENTS.choose(rng).unwrap_or(&AGENTS[0]);
    json!({
        "eventID": event_id,
        "occurredAt": occurred_at,
        "userIPAddress": format!("203.0.113.{}", rng.random_range(1..255)),
        "userAgent": agent,
        "userPlatform": platform,
        "userDeviceID": format!("{platform}-{:08x}", rng.random::<u32>()),
        "xcUserID": format!("cust-{user}"),
        "fullName": format!("{first} {last}"),
        "email": format!("{}.{}{user}@example.com", first.to_lowercase(), last.to_lowercase()),
        "phone": format!("+628{:09}", rng.random_range(0..1_000_000_000u64)),
    })
}
