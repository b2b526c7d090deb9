//! The one worker runtime every controller and the node agent run on: a work queue (client-go's
//! guarantees, `queue.rs`), workers that take a key, reconcile it inside a span naming the
//! controller, and one error policy for what failed.

pub mod queue;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::Instrument;

pub use queue::WorkQueue;

use crate::error::ApiError;

/// `(namespace, name)`; cluster-scoped objects have an empty namespace.
pub type Key = (String, String);

/// What a reconcile asks for after it succeeded (kube-rs' `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the object or something it watches changes (or the periodic resync).
    AwaitChange,
    /// Look again after this long (a timer, a backoff, a wait on something unwatched).
    RequeueAfter(Duration),
}

impl Action {
    pub fn requeue(after: Duration) -> Action {
        Action::RequeueAfter(after)
    }

    /// The sooner of two requests, so a reconcile can gather several.
    pub fn sooner(self, other: Action) -> Action {
        match (self, other) {
            (Action::RequeueAfter(a), Action::RequeueAfter(b)) => Action::RequeueAfter(a.min(b)),
            (Action::RequeueAfter(a), Action::AwaitChange) | (Action::AwaitChange, Action::RequeueAfter(a)) => {
                Action::RequeueAfter(a)
            }
            (Action::AwaitChange, Action::AwaitChange) => Action::AwaitChange,
        }
    }
}

impl From<Option<Duration>> for Action {
    fn from(after: Option<Duration>) -> Action {
        after.map_or(Action::AwaitChange, Action::RequeueAfter)
    }
}

/// A lost race (409) is retried almost at once: the newer object is already queued.
const CONFLICT_RETRY: Duration = Duration::from_millis(50);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(16);

/// The error policy: when a key whose reconcile failed `failures` times in a row runs again.
/// Conflicts come back at once; anything else backs off from 1 s, doubling up to 16 s, so a
/// broken object or an unreachable API is not hammered while a passing hiccup costs a second.
pub fn retry_after(error: &ApiError, failures: u32) -> Duration {
    if error.code == 409 {
        return CONFLICT_RETRY;
    }
    let doublings = failures.saturating_sub(1).min(8);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// Consecutive failures per key, forgotten at the first success.
#[derive(Default)]
struct Failures(Mutex<HashMap<Key, u32>>);

impl Failures {
    fn failed(&self, key: &Key) -> u32 {
        let Ok(mut map) = self.0.lock() else { return 1 };
        let n = map.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn succeeded(&self, key: &Key) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(key);
        }
    }
}

/// Starts `workers` tasks taking keys from `queue` and running `reconcile` on each, one key never
/// on two workers at once. Every reconcile runs in a `reconcile` span naming `controller` and the
/// key; failures other than conflicts are logged with the same names.
pub fn spawn<F, Fut>(
    controller: &'static str,
    queue: &Arc<WorkQueue<Key>>,
    workers: usize,
    reconcile: F,
) -> Vec<JoinHandle<()>>
where
    F: Fn(Key) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ApiError>> + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    let failures = Arc::new(Failures::default());
    queue.name(controller);
    (0..workers)
        .map(|_| {
            let (queue, reconcile, failures) = (Arc::clone(queue), Arc::clone(&reconcile), Arc::clone(&failures));
            tokio::spawn(async move {
                loop {
                    let key = queue.next().await;
                    let span = tracing::debug_span!("reconcile", controller, namespace = %key.0, name = %key.1);
                    match reconcile(key.clone()).instrument(span).await {
                        Ok(action) => {
                            failures.succeeded(&key);
                            if let Action::RequeueAfter(after) = action {
                                queue.add_after(key.clone(), after);
                            }
                        }
                        Err(e) => {
                            let n = failures.failed(&key);
                            let after = retry_after(&e, n);
                            if e.code != 409 {
                                tracing::warn!(
                                    controller, namespace = %key.0, name = %key.1, error = %e.message,
                                    failures = n, retry_in = ?after, "reconcile failed"
                                );
                            }
                            queue.retried();
                            queue.add_after(key.clone(), after);
                        }
                    }
                    queue.done(&key);
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_retry_at_once_and_other_errors_back_off_to_a_cap() {
        let conflict = ApiError::conflict("g", "p", "n", "x");
        let down = ApiError::unavailable("x");
        assert_eq!(retry_after(&conflict, 7), CONFLICT_RETRY);
        let waits: Vec<u64> = (1..=7).map(|n| retry_after(&down, n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 16, 16]);
        assert_eq!(retry_after(&down, u32::MAX), MAX_RETRY);
        assert_eq!(retry_after(&down, 0), FIRST_RETRY);
    }

    #[test]
    fn the_sooner_of_two_actions_wins() {
        let (a, b) = (Action::requeue(Duration::from_secs(2)), Action::requeue(Duration::from_secs(5)));
        assert_eq!(a.sooner(b), a);
        assert_eq!(Action::AwaitChange.sooner(b), b);
        assert_eq!(b.sooner(Action::AwaitChange), b);
        assert_eq!(Action::AwaitChange.sooner(Action::AwaitChange), Action::AwaitChange);
    }

    #[tokio::test]
    async fn a_failing_key_backs_off_and_a_success_resets_it() {
        let queue: Arc<WorkQueue<Key>> = WorkQueue::new();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        let tasks = spawn("test", &queue, 2, move |key: Key| {
            let seen = Arc::clone(&seen);
            async move {
                let n = {
                    let mut v = seen.lock().map_err(|_| ApiError::internal("poisoned"))?;
                    v.push((key.1.clone(), tokio::time::Instant::now()));
                    v.len()
                };
                match n {
                    1 => Err(ApiError::unavailable("first try fails")),
                    2 => Ok(Action::requeue(Duration::from_millis(10))),
                    _ => Ok(Action::AwaitChange),
                }
            }
        });
        queue.add((String::new(), "a".into()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while calls.lock().map(|v| v.len()).unwrap_or(0) < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let v = calls.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(v.len(), 3, "failed, retried, requeued");
        assert!(v[1].1 - v[0].1 >= FIRST_RETRY, "a failure waits the first backoff");
        assert!(v[2].1 - v[1].1 < FIRST_RETRY, "a requested requeue is not a failure");
        tasks.iter().for_each(JoinHandle::abort);
    }
}
