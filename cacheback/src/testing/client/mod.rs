//! The client behaviour suite: every behaviour of a [`Cacheback`](crate::Cacheback) client
//! that must hold whatever the store (and the queue between readers and workers), run through
//! real clients and workers on the store under test.
//!
//! One file per theme: `reads.rs` (hits, misses, freshness windows), `concurrency.rs` (bursts
//! and coalesced fetches), `writes.rs` (refresh, set, delete, invalidate, peek, warming, value
//! limits), `fencing.rs` (generations keep late fetches from overwriting newer writes),
//! `failures.rs` (failing and panicking fetches, backoff), `queueing.rs` (full and unavailable
//! queues, dead letters), `tags.rs` (`invalidate_tag`, `delete_tag`). `fixture.rs` holds what they share: the clients, the fake upstream,
//! the worker "processes"; `recorded.rs` the queue wrapper that counts what crossed the queue;
//! `counters.rs` a metrics recorder for the counted behaviours.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::queue::Queue;
use crate::store::Store;
use crate::{LocalQueue, NearCache};

mod concurrency;
mod counters;
mod failures;
mod fencing;
mod fixture;
mod queueing;
mod reads;
mod recorded;
mod tags;
mod writes;

/// The longest one behaviour may take before the suite calls it hung.
const BEHAVIOUR_LIMIT: Duration = Duration::from_secs(60);

/// A named behaviour of the suite.
type Behaviour = (&'static str, fn(ClientSuite) -> BoxFuture<'static, ()>);

/// Makes a queue for one behaviour of the suite.
type MakeQueue = dyn Fn() -> Arc<dyn Queue> + Send + Sync;

/// The client behaviour suite, configured for one backend: the store under test and how to
/// make the queues between its readers and workers. [`run`](ClientSuite::run) it from the
/// backend's tests, against a real server; on a multi-thread runtime the bursts of concurrent
/// readers some behaviours make really race (a current-thread runtime works too).
///
/// The suite builds everything else itself: for each behaviour a reader client with a prefix
/// of its own (so the store may hold other data), and, where a behaviour needs its refreshes
/// run, worker "processes" (a [`Worker`](crate::Worker) on a client of its own, on the same
/// store and queue). Freshness runs on a [`TestClock`](crate::clock::TestClock); what a worker
/// or the store does in the background is awaited with bounded waits on events and conditions,
/// never a pause that hopes.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() {
/// use std::sync::Arc;
/// use cacheback::{MemoryStore, testing::ClientSuite};
///
/// // Another store runs it the same way. The queues are in-process `LocalQueue`s unless
/// // given: `.queues(move || RedisQueue::builder(&url).build().expect("a valid URL"))`.
/// ClientSuite::new(Arc::new(MemoryStore::new())).run().await;
/// # }
/// ```
#[derive(Clone)]
pub struct ClientSuite {
    store: Arc<dyn Store>,
    queues: Arc<MakeQueue>,
    near: Option<NearCache>,
}

impl fmt::Debug for ClientSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSuite")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl ClientSuite {
    /// The suite on `store`, with a new [`LocalQueue`] for each behaviour.
    #[must_use]
    pub fn new(store: Arc<dyn Store>) -> Self {
        ClientSuite {
            store,
            queues: Arc::new(|| Arc::new(LocalQueue::new(1000)) as Arc<dyn Queue>),
            near: None,
        }
    }

    /// Runs the behaviours through a near cache: every behaviour's main client is built with
    /// `near` (its other clients and workers without), and reads once its near cache is live.
    /// For stores that announce their writes ([`Store::watch`]).
    #[must_use]
    pub fn near_cache(mut self, near: NearCache) -> Self {
        self.near = Some(near);
        self
    }

    /// How to make the queue of one behaviour: `make` is called once per behaviour, and the
    /// queue it returns is shared by that behaviour's clients and by the workers the suite runs
    /// for them, in this process. Its messages must reach only that behaviour: make a new
    /// in-process queue each time, or a remote queue built without a prefix, which adopts the
    /// prefix of the behaviour's clients (see [`Queue::bind_prefix`]).
    #[must_use]
    pub fn queues<Q: Queue>(mut self, make: impl Fn() -> Q + Send + Sync + 'static) -> Self {
        self.queues = Arc::new(move || Arc::new(make()) as Arc<dyn Queue>);
        self
    }

    /// Runs every behaviour, one after the other. Panics naming the first behaviour that does
    /// not hold (or that takes over a minute), with the failed check.
    pub async fn run(&self) {
        for group in [
            reads::BEHAVIOURS,
            concurrency::BEHAVIOURS,
            writes::BEHAVIOURS,
            fencing::BEHAVIOURS,
            failures::BEHAVIOURS,
            queueing::BEHAVIOURS,
            self.tag_behaviours().await,
        ] {
            for &(name, behaviour) in group {
                self.run_one(name, behaviour).await;
            }
        }
    }

    /// Runs one behaviour in a task of its own, so that its panic (an assertion) can be
    /// reported with the behaviour's name.
    async fn run_one(&self, name: &str, behaviour: fn(ClientSuite) -> BoxFuture<'static, ()>) {
        let task = tokio::spawn(behaviour(self.clone()));
        let abort = task.abort_handle();
        match tokio::time::timeout(BEHAVIOUR_LIMIT, task).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) if error.is_panic() => {
                let panic = error.into_panic();
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                panic!("client suite: `{name}` does not hold: {message}");
            }
            Ok(Err(error)) => panic!("client suite: `{name}` was cancelled: {error}"),
            Err(_) => {
                abort.abort();
                panic!("client suite: `{name}` did not finish within {BEHAVIOUR_LIMIT:?}");
            }
        }
    }

    /// The tag behaviours, or, for a store that keeps no tags (its
    /// [`Store::bump_tag`] refuses), the behaviours of a client on such a store.
    async fn tag_behaviours(&self) -> &'static [Behaviour] {
        let probe = format!("suite-probe-{:016x}", fastrand::u64(..));
        let bump = self
            .store
            .bump_tag(&probe, "probe", crate::store::TagAction::Invalidate)
            .await;
        match bump {
            Ok(_) => tags::BEHAVIOURS,
            Err(_) => tags::WITHOUT_TAGS,
        }
    }

    fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    fn queue(&self) -> Arc<dyn Queue> {
        (self.queues)()
    }
}

/// Runs the [`ClientSuite`] on `store` with in-process queues ([`LocalQueue`]): every client
/// behaviour that must hold whatever the store. Panics naming the behaviour that does not.
///
/// The store may be shared with other data: every client of the suite uses a prefix of its
/// own. Run it on a multi-thread runtime, so that its bursts of readers really race.
pub async fn client_suite(store: Arc<dyn Store>) {
    ClientSuite::new(store).run().await;
}
