//! One TapTalk quota for the whole deployment (`TAPTALK_QUOTA`, requests per
//! second): replicas take their requests from one token bucket in the
//! Postgres they share (see `storage::quota`), so that the quota holds
//! however many replicas run, and a replica that dies leaves its share to
//! the others at once (there is no share: whoever asks, gets).
//!
//! The bucket holds at most `rate / 40` tokens (at least 1): any one second
//! of taking sees at most `rate + burst` (205 for a quota of 200), which
//! leaves room for the jitter between taking a token and the request's
//! arrival at TapTalk. A replica
//! takes up to `burst` tokens in one statement and uses them right away
//! (left unused for more than [`KEEP_FOR`], they are dropped, never sent
//! late), so the cost is one Postgres round trip per `burst` requests under
//! load. When the bucket is empty it waits for the time the next token
//! needs. When Postgres cannot be asked, no request goes out: the quota is
//! never exceeded, and a Postgres outage pauses intake anyway.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long taken tokens may wait to be used.
const KEEP_FOR: Duration = Duration::from_millis(200);

/// What one take returned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Granted {
    pub tokens: u32,
    /// Tokens left in the bucket (a fraction when it is nearly empty).
    pub left: f64,
}

/// Where the bucket lives (Postgres, in the worker).
pub trait QuotaSource: Send + Sync {
    fn take<'a>(
        &'a self,
        key_id: &'a str,
        rate: f64,
        burst: f64,
        want: u32,
    ) -> Pin<Box<dyn Future<Output = Result<Granted, QuotaError>> + Send + 'a>>;
}

/// The bucket could not be asked; no TapTalk request goes out until it can.
/// It carries the source's own error, whatever its type (a `StoreError`, in
/// the worker), and reads as that error does: the quota does not need to
/// know where the bucket lives to say why it failed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct QuotaError(Box<dyn std::error::Error + Send + Sync>);

impl QuotaError {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> QuotaError {
        QuotaError(Box::new(error))
    }

    /// The source's error, to be told apart by its type.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

/// The deployment's quota, as one replica sees it. Cheap to clone.
#[derive(Clone)]
pub struct SharedQuota {
    inner: Arc<Inner>,
}

struct Inner {
    source: Arc<dyn QuotaSource>,
    key_id: String,
    rate: f64,
    burst: f64,
    /// Tokens taken and not used yet, and when they were taken; waiters
    /// queue here one at a time.
    local: Mutex<(u32, Instant)>,
    /// Takes, for the metric of the cost.
    takes: std::sync::atomic::AtomicU64,
    /// Called for every take (the metric).
    on_take: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for SharedQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedQuota")
            .field("rate", &self.inner.rate)
            .field("burst", &self.inner.burst)
            .finish_non_exhaustive()
    }
}

impl SharedQuota {
    /// `rate` requests per second for the server key `key_id`.
    pub fn new(
        source: Arc<dyn QuotaSource>,
        key_id: &str,
        rate: f64,
        on_take: impl Fn() + Send + Sync + 'static,
    ) -> SharedQuota {
        SharedQuota {
            inner: Arc::new(Inner {
                source,
                key_id: key_id.to_owned(),
                rate,
                burst: burst_of(rate),
                local: Mutex::new((0, Instant::now())),
                takes: std::sync::atomic::AtomicU64::new(0),
                on_take: Box::new(on_take),
            }),
        }
    }

    /// The quota, in requests per second.
    pub fn rate(&self) -> f64 {
        self.inner.rate
    }

    /// The statements run so far to take tokens.
    pub fn takes(&self) -> u64 {
        self.inner.takes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until one more request fits the deployment's quota.
    pub async fn wait(&self) {
        let inner = &*self.inner;
        let mut local = inner.local.lock().await;
        let mut warned = false;
        loop {
            if local.0 > 0 && local.1.elapsed() < KEEP_FOR {
                local.0 -= 1;
                return;
            }
            inner
                .takes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (inner.on_take)();
            // A float bounded by the burst (at most rate/20, a setting):
            // the cast cannot overflow a u32 for any sane quota.
            let want = inner.burst.clamp(1.0, f64::from(u32::MAX)) as u32;
            match inner
                .source
                .take(&inner.key_id, inner.rate, inner.burst, want)
                .await
            {
                Ok(granted) if granted.tokens > 0 => {
                    *local = (granted.tokens - 1, Instant::now());
                    return;
                }
                Ok(granted) => {
                    // Empty: wait until a whole take's worth has come back,
                    // give or take a random half, so that replicas waiting
                    // together do not all ask at the same instant (each
                    // empty take is a round trip spent for nothing).
                    let missing = (inner.burst - granted.left).max(1.0);
                    let spread = 0.5 + rand::random::<f64>();
                    let pause = (missing / inner.rate * spread).clamp(0.002, 1.0);
                    tokio::time::sleep(Duration::from_secs_f64(pause)).await;
                }
                Err(error) => {
                    if !warned {
                        tracing::warn!(%error, "cannot take from the shared TapTalk quota (TAPTALK_QUOTA) in Postgres; no TapTalk request until it can");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// The bucket's size for a quota of `rate` per second.
pub fn burst_of(rate: f64) -> f64 {
    (rate / 40.0).floor().max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    /// A bucket in memory, on tokio's clock, as the database keeps it.
    struct Bucket(StdMutex<(f64, Instant)>);

    impl QuotaSource for Bucket {
        fn take<'a>(
            &'a self,
            _key: &'a str,
            rate: f64,
            burst: f64,
            want: u32,
        ) -> Pin<Box<dyn Future<Output = Result<Granted, QuotaError>> + Send + 'a>> {
            Box::pin(async move {
                let mut bucket = self.0.lock().unwrap_or_else(|p| p.into_inner());
                let available = (bucket.0 + bucket.1.elapsed().as_secs_f64() * rate).min(burst);
                let granted = available.floor().min(f64::from(want));
                *bucket = (available - granted, Instant::now());
                Ok(Granted {
                    tokens: granted as u32,
                    left: available - granted,
                })
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn three_replicas_share_one_quota_without_exceeding_it_in_any_second() {
        let rate = 200.0;
        let bucket: Arc<dyn QuotaSource> =
            Arc::new(Bucket(StdMutex::new((burst_of(rate), Instant::now()))));
        let start = Instant::now();
        let sent: Arc<StdMutex<Vec<Duration>>> = Arc::default();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let quota = SharedQuota::new(Arc::clone(&bucket), "key", rate, || {});
            for _ in 0..50 {
                let (quota, sent) = (quota.clone(), Arc::clone(&sent));
                tasks.push(tokio::spawn(async move {
                    while start.elapsed() < Duration::from_secs(10) {
                        quota.wait().await;
                        sent.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(start.elapsed());
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }));
            }
        }
        for task in tasks {
            task.await.expect("task");
        }
        let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner()).clone();
        sent.sort();
        let most = sent
            .iter()
            .enumerate()
            .map(|(i, at)| {
                sent[i..]
                    .iter()
                    .take_while(|b| **b < *at + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0);
        assert!(most <= 210, "{most} requests in one second");
        let per_second = sent.len() as f64 / 10.0;
        assert!(per_second >= 180.0, "{per_second}/s with a backlog");
    }

    #[test]
    fn a_quota_error_reads_as_its_source_and_keeps_it() {
        let error = QuotaError::new(std::io::Error::other("the bucket is away"));
        assert_eq!(error.to_string(), "the bucket is away");
        assert!(error.inner().downcast_ref::<std::io::Error>().is_some());
    }
}
