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

    /// [`run`](Self::run) for many keys at once: the keys not in flight already (each once) are
    /// fetched together by `fetch`, given their places in `digests`, which returns one result
    /// per place in that order; the others join the fetches in flight. Returns, per digest,
    /// the result and whether it joined someone else's fetch.
    pub(crate) async fn run_many<F>(
        self: &Arc<Self>,
        digests: &[u128],
        tasks: &TaskTracker,
        fetch: impl FnOnce(Vec<usize>) -> F,
    ) -> Vec<(Result<AnyValue>, bool)>
    where
        F: Future<Output = Vec<Result<AnyValue>>> + Send + 'static,
    {
        let shared: Vec<(SharedFetch, bool)> = {
            let mut inflight = self.lock();
            let mut first_of: HashMap<u128, usize> = HashMap::new();
            let mut mine = Vec::new();
            for (place, &digest) in digests.iter().enumerate() {
                if !inflight.contains_key(&digest) && !first_of.contains_key(&digest) {
                    first_of.insert(digest, place);
                    mine.push(place);
                }
            }
            if !mine.is_empty() {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let (this, fetched) = (Arc::clone(self), mine.len());
                let keys: Vec<u128> = mine.iter().map(|&place| digests[place]).collect();
                let fut = fetch(mine.clone());
                let task = tasks.spawn(async move {
                    let results = fut.await;
                    for digest in keys {
                        this.finish(digest, id);
                    }
                    results
                });
                let batch = async move {
                    match task.await {
                        Ok(results) => Arc::new(results),
                        Err(_) => Arc::new(vec![Err(Error::Shutdown); fetched]),
                    }
                }
                .boxed()
                .shared();
                for (position, &place) in mine.iter().enumerate() {
                    let batch = batch.clone();
                    let one = async move {
                        batch
                            .await
                            .get(position)
                            .cloned()
                            .unwrap_or(Err(Error::Shutdown))
                    }
                    .boxed()
                    .shared();
                    inflight.insert(digests[place], (id, one));
                }
            }
            digests
                .iter()
                .enumerate()
                .map(|(place, digest)| {
                    let (_, one) = &inflight[digest];
                    (one.clone(), first_of.get(digest) != Some(&place))
                })
                .collect()
        };
        futures_util::future::join_all(
            shared
                .into_iter()
                .map(|(one, joined)| async move { (one.await, joined) }),
        )
        .await
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
