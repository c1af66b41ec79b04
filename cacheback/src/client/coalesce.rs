//! One fetch in flight per key per process; everyone else waits for it.
//!
//! Semantics follow moka's `try_get_with`: the first caller for a key starts the fetch, later
//! callers share its result, errors included. The fetch runs in its own task (owned by the
//! client's task tracker), so a caller that is cancelled (its request timed out, its client
//! disconnected) does not cancel the fetch for the others; a fetch that panics is caught and
//! every waiter gets [`Error::FetchPanicked`](crate::Error::FetchPanicked) instead of hanging.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};

pub(crate) type AnyValue = Arc<dyn Any + Send + Sync>;
type SharedFetch = Shared<BoxFuture<'static, Result<AnyValue>>>;

#[derive(Default)]
pub(crate) struct Coalescer {
    inflight: Mutex<HashMap<u128, (u64, SharedFetch)>>,
    next_id: AtomicU64,
}

impl Coalescer {
    /// Runs `fetch` for `digest` unless one is already in flight, and waits for the result.
    /// Returns the result and whether this caller joined someone else's fetch.
    pub(crate) async fn run<F>(
        self: &Arc<Self>,
        digest: u128,
        tasks: &TaskTracker,
        fetch: impl FnOnce() -> F,
    ) -> (Result<AnyValue>, bool)
    where
        F: Future<Output = Result<AnyValue>> + Send + 'static,
    {
        let (shared, joined) = {
            let mut inflight = self.lock();
            match inflight.get(&digest) {
                Some((_, shared)) => (shared.clone(), true),
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let this = Arc::clone(self);
                    let fut = fetch();
                    let task = tasks.spawn(async move {
                        let result = fut.await;
                        // Leave the map only once the value is stored, so late callers find it
                        // in the store rather than starting a second fetch.
                        this.finish(digest, id);
                        result
                    });
                    let shared = async move {
                        match task.await {
                            Ok(result) => result,
                            // Fetch panics are caught inside the task; a join error means the
                            // runtime is shutting down and cancelled it.
                            Err(_) => Err(Error::Shutdown),
                        }
                    }
                    .boxed()
                    .shared();
                    inflight.insert(digest, (id, shared.clone()));
                    (shared, false)
                }
            }
        };
        (shared.await, joined)
    }

    fn finish(&self, digest: u128, id: u64) {
        let mut inflight = self.lock();
        if matches!(inflight.get(&digest), Some((current, _)) if *current == id) {
            inflight.remove(&digest);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u128, (u64, SharedFetch)>> {
        self.inflight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
