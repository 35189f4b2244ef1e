//! Group commit: the statements of many concurrent callers folded into one.
//!
//! A caller queues its request and waits for its answer. While fewer than
//! `parallel` batches are running, a caller that queues starts a runner task;
//! the runner takes everything queued (up to `max_batch`), runs it as one
//! statement, answers each caller, and goes on until the queue is empty. So
//! an idle worker pays no added delay (a batch of one goes at once), and a
//! busy one folds whatever arrived while the previous statement ran: batches
//! grow with load by themselves, without a timer.
//!
//! At moderate load that folds nothing: each event's statement finds the
//! queue empty and runs alone, one commit each. With a *linger*
//! ([`Batcher::lingering`]), a runner that finds the queue short waits that
//! long first, so the statements of the next few milliseconds go together;
//! a queue already a quarter full goes at once, so a busy worker pays no
//! wait.
//!
//! Nothing here waits without a deadline: a batch's statement that runs
//! past [`BATCH_DEADLINE`] is abandoned and answers every caller in it with
//! an error (the statement itself has a shorter one, see
//! [`STATEMENT_DEADLINE`](super::STATEMENT_DEADLINE)), and a caller waits
//! for its answer no longer than that either: one stuck statement must not
//! hold every event behind it.

use super::StoreError;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// The longest one batch may run, its connection's acquiring included; and
/// the longest a caller waits for its answer (queued behind other batches
/// too, so somewhat longer).
pub(super) const BATCH_DEADLINE: Duration = Duration::from_secs(25);

/// One batch's statement: answers in the order of the requests.
pub(super) type BatchFuture<Resp> =
    Pin<Box<dyn Future<Output = Result<Vec<Result<Resp, StoreError>>, StoreError>> + Send>>;

type Run<Req, Resp> = Arc<dyn Fn(Vec<Req>) -> BatchFuture<Resp> + Send + Sync>;

type Reply<Resp> = oneshot::Sender<Result<Resp, StoreError>>;

/// Folds requests into batches. Cheap to clone.
pub(super) struct Batcher<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
    run: Run<Req, Resp>,
    max_batch: usize,
    parallel: usize,
    /// How long a runner waits for more when the queue is short.
    linger: Duration,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Batcher {
            shared: Arc::clone(&self.shared),
            run: Arc::clone(&self.run),
            max_batch: self.max_batch,
            parallel: self.parallel,
            linger: self.linger,
        }
    }
}

impl<Req, Resp> std::fmt::Debug for Batcher<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("max_batch", &self.max_batch)
            .field("parallel", &self.parallel)
            .finish_non_exhaustive()
    }
}

struct Shared<Req, Resp> {
    state: Mutex<State<Req, Resp>>,
}

struct State<Req, Resp> {
    queue: VecDeque<(Req, Reply<Resp>)>,
    /// Runner tasks alive.
    running: usize,
}

impl<Req, Resp> Batcher<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Batches of at most `max_batch` requests, at most `parallel` of them
    /// running at once, each run by `run`.
    pub(super) fn new(
        max_batch: usize,
        parallel: usize,
        run: impl Fn(Vec<Req>) -> BatchFuture<Resp> + Send + Sync + 'static,
    ) -> Batcher<Req, Resp> {
        Batcher {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    running: 0,
                }),
            }),
            run: Arc::new(run),
            max_batch: max_batch.max(1),
            parallel: parallel.max(1),
            linger: Duration::ZERO,
        }
    }

    /// The same, with a runner waiting up to `linger` for more requests
    /// while fewer than a quarter of `max_batch` are queued.
    pub(super) fn lingering(mut self, linger: Duration) -> Batcher<Req, Resp> {
        self.linger = linger;
        self
    }

    /// Whether a runner should wait for more before taking a batch.
    fn short(&self) -> bool {
        !self.linger.is_zero() && self.lock().queue.len() < (self.max_batch / 4).max(2)
    }

    /// Queues `request` and waits for its answer.
    pub(super) async fn call(&self, request: Req) -> Result<Resp, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start_runner = {
            let mut state = self.lock();
            state.queue.push_back((request, reply));
            let start = state.running < self.parallel;
            if start {
                state.running += 1;
            }
            start
        };
        if start_runner {
            tokio::spawn(self.clone().runner());
        }
        match tokio::time::timeout(BATCH_DEADLINE.saturating_mul(2), answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(StoreError::Failed(
                "a batched statement was abandoned (its task ended)".into(),
            )),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer from a batched statement within {}s",
                BATCH_DEADLINE.saturating_mul(2).as_secs()
            ))),
        }
    }

    /// Runs batches until the queue is empty.
    async fn runner(self) {
        // Counts this runner out if a statement panics. Otherwise it counts
        // itself out under the same lock that saw the queue empty, so a
        // request queued just after is sure to start a runner of its own.
        let mut running = Running(Some(&self));
        loop {
            if self.short() {
                tokio::time::sleep(self.linger).await;
            }
            let (requests, replies): (Vec<Req>, Vec<Reply<Resp>>) = {
                let mut state = self.lock();
                if state.queue.is_empty() {
                    state.running = state.running.saturating_sub(1);
                    running.0 = None;
                    return;
                }
                let n = state.queue.len().min(self.max_batch);
                state.queue.drain(..n).unzip()
            };
            let ran = tokio::time::timeout(BATCH_DEADLINE, (self.run)(requests))
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(format!(
                        "a batched statement ran past {}s and was abandoned",
                        BATCH_DEADLINE.as_secs()
                    )))
                });
            match ran {
                Ok(answers) if answers.len() == replies.len() => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                }
                Ok(answers) => {
                    let error = StoreError::Failed(format!(
                        "a batched statement answered {} of {} requests",
                        answers.len(),
                        replies.len()
                    ));
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<Req, Resp>> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts a runner out when it ends by a panic, and starts another for what
/// is still queued.
struct Running<'a, Req: Send + 'static, Resp: Send + 'static>(Option<&'a Batcher<Req, Resp>>);

impl<Req: Send + 'static, Resp: Send + 'static> Drop for Running<'_, Req, Resp> {
    fn drop(&mut self) {
        let Some(batcher) = self.0 else { return };
        let restart = {
            let mut state = batcher.lock();
            if state.queue.is_empty() {
                state.running = state.running.saturating_sub(1);
                false
            } else {
                true
            }
        };
        if restart {
            tokio::spawn(batcher.clone().runner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn doubling(sizes: Arc<Mutex<Vec<usize>>>) -> Batcher<u32, u32> {
        Batcher::new(50, 1, move |requests: Vec<u32>| {
            sizes.lock().unwrap().push(requests.len());
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(requests.into_iter().map(|n| Ok(n * 2)).collect())
            })
        })
    }

    #[tokio::test]
    async fn one_request_alone_goes_at_once() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = doubling(Arc::clone(&sizes));
        assert_eq!(batcher.call(21).await.unwrap(), 42);
        assert_eq!(*sizes.lock().unwrap(), vec![1]);
    }

    #[tokio::test]
    async fn requests_arriving_while_a_batch_runs_are_folded_and_answered_in_order() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = doubling(Arc::clone(&sizes));
        let calls: Vec<_> = (0..120u32)
            .map(|n| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (n, batcher.call(n).await) })
            })
            .collect();
        for call in calls {
            let (n, answer) = call.await.unwrap();
            assert_eq!(answer.unwrap(), n * 2);
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 120);
        assert!(sizes.iter().all(|&s| s <= 50), "{sizes:?}");
        assert!(sizes.len() < 120, "requests were folded: {sizes:?}");
    }

    #[tokio::test]
    async fn a_lingering_runner_folds_requests_that_trickle_in() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = doubling(Arc::clone(&sizes)).lingering(Duration::from_millis(40));
        // One request every 2 ms, as at 500 events a second.
        let mut calls = Vec::new();
        for n in 0..10u32 {
            let batcher = batcher.clone();
            calls.push(tokio::spawn(async move { (n, batcher.call(n).await) }));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for call in calls {
            let (n, answer) = call.await.unwrap();
            assert_eq!(answer.unwrap(), n * 2);
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 10);
        assert!(sizes.len() <= 3, "folded within the linger: {sizes:?}");
        // Without the linger, the same trickle runs one by one.
        let alone = Arc::new(Mutex::new(Vec::new()));
        let batcher = doubling(Arc::clone(&alone));
        for n in 0..5u32 {
            batcher.call(n).await.unwrap();
        }
        assert_eq!(*alone.lock().unwrap(), vec![1; 5]);
    }

    #[tokio::test]
    async fn a_failed_statement_answers_every_request_in_it_and_the_next_batch_runs() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&attempts);
        let batcher: Batcher<u32, u32> = Batcher::new(10, 1, move |requests: Vec<u32>| {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            Box::pin(async move {
                if first {
                    Err(StoreError::Unavailable("down".into()))
                } else {
                    Ok(requests.into_iter().map(Ok).collect())
                }
            })
        });
        assert!(matches!(
            batcher.call(1).await,
            Err(StoreError::Unavailable(_))
        ));
        assert_eq!(batcher.call(2).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_panicking_statement_fails_its_callers_and_frees_its_runner() {
        let batcher: Batcher<u32, u32> = Batcher::new(10, 1, |requests: Vec<u32>| {
            Box::pin(async move {
                if requests.contains(&13) {
                    panic!("unlucky");
                }
                Ok(requests.into_iter().map(Ok).collect())
            })
        });
        assert!(matches!(batcher.call(13).await, Err(StoreError::Failed(_))));
        assert_eq!(batcher.call(7).await.unwrap(), 7);
    }
}
