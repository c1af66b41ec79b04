//! The client: the read path, claims, coalescing and fallbacks.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::clock::{Clock, SystemClock};
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::job::Job;
use crate::key;
use crate::observe::{Event, EventHook, JobMetrics};
use crate::queue::{LocalQueue, Queue};
use crate::store::{MemoryStore, Store};
use crate::worker::{Worker, WorkerBuilder, WorkerOptions, WorkerReport};

mod coalesce;
pub(crate) mod global;
mod handle;
mod hints;
mod lookup;
mod miss;
mod trigger;
mod write;

pub use handle::JobHandle;
pub use lookup::{Lookup, Peek, Status, WarmProgress, WarmReport};

use crate::engine::registry::{JobEntry, Registry};
use crate::engine::{Core, RecentFailures, Running};
use coalesce::Coalescer;

/// The default limit on a value's encoded size.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 4 << 20;

/// What a read does when the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StoreFallback {
    /// Treat the read as a miss: fetch synchronously (coalesced per process) and return the
    /// value without storing it. The default: the service keeps answering.
    #[default]
    Fetch,
    /// Return the store's error to the caller.
    Fail,
}

/// What a reader does with a refresh it won the claim for but could not enqueue because the
/// queue is unavailable. A full queue is not unavailable: that request is dropped,
/// counted, and the claim released so the next read triggers again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueFallback {
    /// Refresh in a background task of this process. The default.
    #[default]
    LocalRefresh,
    /// Refresh before the read returns (the read then serves the value it found).
    SyncRefresh,
    /// Do nothing; the claim is released, the next read tries again.
    Skip,
}

/// What the read path of a client keeps besides the shared [`Core`]: its fallbacks, its
/// coalesced fetches and its claim hints (workers need none of it).
pub(crate) struct ReadState {
    pub(crate) store_fallback: StoreFallback,
    pub(crate) queue_fallback: QueueFallback,
    pub(crate) coalescer: Arc<Coalescer>,
    /// Claim hints for read-triggered refreshes; `None` for in-process stores.
    pub(crate) claim_hints: Option<hints::ClaimHints>,
}

/// A cacheback client: a cheap-to-clone handle (an `Arc` inside) on a store, a queue and,
/// by default, an in-process refresh worker.
///
/// Build one with [`Cacheback::builder`], register jobs with [`Cacheback::job`], and read
/// through the returned [`JobHandle`]s.
///
/// ```
/// use cacheback::{Cacheback, job_fn, Policy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cacheback::Result<()> {
/// let cache = Cacheback::builder().build()?; // in-memory store, in-process workers
/// let square = cache.job(job_fn("square", Policy::default(), |n: u64| async move {
///     Ok::<_, std::io::Error>(n * n)
/// }));
/// assert_eq!(*square.get(7).await?.unwrap(), 49);
/// cache.shutdown(std::time::Duration::from_secs(5)).await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Cacheback {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    core: Arc<Core>,
    reads: ReadState,
    /// The in-process worker, if this client started one.
    worker: Mutex<Option<JoinHandle<WorkerReport>>>,
    /// Stops the in-process worker when the last handle is dropped.
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl fmt::Debug for Cacheback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cacheback")
            .field("core", &self.inner.core)
            .finish_non_exhaustive()
    }
}

/// What [`Cacheback::shutdown`] finished.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// The in-process worker's report, if there was one.
    pub worker: Option<WorkerReport>,
    /// Whether every background task finished before the deadline.
    pub drained: bool,
}

impl Cacheback {
    /// Configures a client. The defaults are the embedded ones: a [`MemoryStore`], a
    /// [`LocalQueue`] and an in-process worker.
    pub fn builder() -> CachebackBuilder {
        CachebackBuilder::default()
    }

    /// Registers `job` and returns its handle.
    ///
    /// # Panics
    ///
    /// If the job's name or policy is invalid, or another job type is registered under the
    /// same name: these are programming errors, found at start-up. Use [`Cacheback::try_job`]
    /// to handle them.
    #[track_caller]
    pub fn job<J: Job>(&self, job: J) -> JobHandle<J> {
        match self.try_job(job) {
            Ok(handle) => handle,
            Err(e) => panic!("cacheback: cannot register job: {e}"),
        }
    }

    /// Registers `job` and returns its handle, or why it cannot be registered.
    /// Registering the same job type again under the same name replaces the earlier instance.
    pub fn try_job<J: Job>(&self, job: J) -> Result<JobHandle<J>> {
        let name: Arc<str> = Arc::from(job.name());
        key::validate_job_name(&name).map_err(|e| Error::Key {
            message: e.to_string(),
        })?;
        let policy = job.policy();
        policy
            .validate()
            .map_err(|m| Error::config(format!("job `{name}`: {m}")))?;
        let metrics = JobMetrics::new(&name);
        let seed = key::job_seed(&self.inner.core.prefix, &name);
        let entry = Arc::new(JobEntry {
            job,
            seed,
            name,
            policy,
            metrics,
        });
        self.inner
            .core
            .registry
            .register(Arc::clone(&entry))
            .map_err(|name| Error::JobConflict { name })?;
        Ok(JobHandle::new(self.clone(), entry))
    }

    /// Names of the registered jobs, sorted.
    pub fn job_names(&self) -> Vec<Arc<str>> {
        self.inner.core.registry.names()
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.core.prefix
    }

    /// The clock the client decides freshness with.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.core.clock
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.core.store
    }

    /// The queue.
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.inner.core.queue
    }

    /// Checks that the store and the queue answer, for a readiness probe (`/healthz`) or a
    /// start-up check. The error says which one failed and why, in words that tell a Redis
    /// that is unreachable from one that refuses the credentials.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cacheback::Result<()> {
    /// let cache = cacheback::Cacheback::builder().build()?;
    /// cache.health_check().await?; // in-process store and queue: always healthy
    /// # Ok(())
    /// # }
    /// ```
    pub async fn health_check(&self) -> Result<()> {
        let core = &self.inner.core;
        core.store.ping().await?;
        core.queue.ping().await
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.inner.core
    }

    pub(crate) fn reads(&self) -> &ReadState {
        &self.inner.reads
    }

    /// Stops the in-process worker (letting in-flight refreshes finish) and waits up to
    /// `deadline` for every background task. Reads keep working afterwards, but refreshes
    /// enqueued to an in-process queue are no longer run.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        self.inner.stop.cancel();
        let worker = self
            .inner
            .worker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let deadline_at = tokio::time::Instant::now() + deadline;
        let mut report = ShutdownReport::default();
        if let Some(worker) = worker {
            match tokio::time::timeout_at(deadline_at, worker).await {
                Ok(Ok(worker_report)) => report.worker = Some(worker_report),
                Ok(Err(join_error)) => {
                    tracing::error!(error = %join_error, "in-process worker ended abnormally");
                }
                Err(_) => {}
            }
        }
        let tasks = &self.inner.core.tasks;
        tasks.close();
        report.drained = tokio::time::timeout_at(deadline_at, tasks.wait())
            .await
            .is_ok();
        tasks.reopen();
        report
    }
}

type SharedStore = Arc<dyn Store>;
type SharedQueue = Arc<dyn Queue>;

/// Builds a [`Cacheback`] client.
#[must_use]
pub struct CachebackBuilder {
    store: Option<SharedStore>,
    queue: Option<SharedQueue>,
    clock: Arc<dyn Clock>,
    prefix: String,
    codec: Codec,
    events: Option<EventHook>,
    store_fallback: StoreFallback,
    queue_fallback: QueueFallback,
    max_value_bytes: usize,
    tombstone_ttl: Duration,
    worker: Option<bool>,
    worker_options: WorkerOptions,
}

impl Default for CachebackBuilder {
    fn default() -> Self {
        CachebackBuilder {
            store: None,
            queue: None,
            clock: Arc::new(SystemClock),
            prefix: "cacheback".to_owned(),
            codec: Codec::default(),
            events: None,
            store_fallback: StoreFallback::default(),
            queue_fallback: QueueFallback::default(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            tombstone_ttl: Duration::from_secs(600),
            worker: None,
            worker_options: WorkerOptions::default(),
        }
    }
}

impl fmt::Debug for CachebackBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachebackBuilder")
            .field("store", &self.store)
            .field("queue", &self.queue)
            .field("prefix", &self.prefix)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl CachebackBuilder {
    /// The store (default: a [`MemoryStore`] of 100,000 entries).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// A store already behind an `Arc` (to share one between clients).
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The queue (default: a [`LocalQueue`] of 10,000 requests).
    pub fn queue(mut self, queue: impl Queue) -> Self {
        self.queue = Some(Arc::new(queue));
        self
    }

    /// A queue already behind an `Arc`.
    pub fn shared_queue(mut self, queue: Arc<dyn Queue>) -> Self {
        self.queue = Some(queue);
        self
    }

    /// The wall clock (default: [`SystemClock`]); tests pass a [`TestClock`](crate::TestClock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The key prefix isolating this application in a shared store (default `"cacheback"`):
    /// ASCII letters, digits, `_`, `.`, `-`; at most 64 bytes.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The codec for args and for values in byte stores (default: postcard).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// A hook called for every [`Event`].
    pub fn on_event(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.events = Some(Arc::new(hook));
        self
    }

    /// What reads do when the store cannot be reached (default: [`StoreFallback::Fetch`]).
    pub fn store_fallback(mut self, fallback: StoreFallback) -> Self {
        self.store_fallback = fallback;
        self
    }

    /// What happens to a refresh the queue cannot accept (default:
    /// [`QueueFallback::LocalRefresh`]).
    pub fn queue_fallback(mut self, fallback: QueueFallback) -> Self {
        self.queue_fallback = fallback;
        self
    }

    /// Values whose encoding is larger are refused with [`Error::TooLarge`] (default 4 MiB).
    pub fn max_value_bytes(mut self, limit: usize) -> Self {
        self.max_value_bytes = limit;
        self
    }

    /// How long a deleted key's tombstone is kept, blocking refreshes enqueued before the delete
    /// from resurrecting it (default 10 minutes).
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// Whether to start an in-process worker (default: only for in-process queues such as
    /// [`LocalQueue`], which nobody else can drain).
    pub fn in_process_worker(mut self, start: bool) -> Self {
        self.worker = Some(start);
        self
    }

    /// Options of the in-process worker (concurrency, drain deadline, ...).
    pub fn worker_options(mut self, options: WorkerOptions) -> Self {
        self.worker_options = options;
        self
    }

    /// Builds the client. Starting the in-process worker needs a Tokio runtime: call this
    /// from within one.
    pub fn build(self) -> Result<Cacheback> {
        key::validate_prefix(&self.prefix).map_err(|e| Error::config(e.to_string()))?;
        if self.max_value_bytes == 0 {
            return Err(Error::config("max_value_bytes must be greater than zero"));
        }
        self.worker_options.validate()?;
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new()) as SharedStore);
        let queue = self
            .queue
            .unwrap_or_else(|| Arc::new(LocalQueue::default()) as SharedQueue);
        queue.bind_prefix(&self.prefix)?;
        let start_worker = self.worker.unwrap_or_else(|| queue.is_in_process());
        let claim_hints = (!store.is_in_process()).then(hints::ClaimHints::default);
        let runtime = if start_worker {
            Some(tokio::runtime::Handle::try_current().map_err(|_| {
                Error::config(
                    "the in-process worker needs a Tokio runtime: build the client inside one, \
                     or turn the worker off with `in_process_worker(false)`",
                )
            })?)
        } else {
            None
        };
        let core = Arc::new(Core {
            store,
            queue: Arc::clone(&queue),
            clock: self.clock,
            prefix: Arc::from(self.prefix),
            codec: self.codec,
            events: self.events,
            max_value_bytes: self.max_value_bytes,
            tombstone_ttl: self.tombstone_ttl,
            registry: Registry::default(),
            recent_failures: RecentFailures::default(),
            running: Running::default(),
            tasks: TaskTracker::new(),
        });
        let reads = ReadState {
            store_fallback: self.store_fallback,
            queue_fallback: self.queue_fallback,
            coalescer: Arc::new(Coalescer::default()),
            claim_hints,
        };
        let stop = CancellationToken::new();
        let worker = runtime.map(|runtime| {
            let worker = Worker::from_core(Arc::clone(&core), queue, self.worker_options);
            let stop = stop.clone();
            runtime.spawn(worker.run_until(async move { stop.cancelled().await }))
        });
        Ok(Cacheback {
            inner: Arc::new(ClientInner {
                core,
                reads,
                worker: Mutex::new(worker),
                _stop_on_drop: stop.clone().drop_guard(),
                stop,
            }),
        })
    }
}

impl Worker {
    /// A worker for `client`'s jobs, store and (by default) queue.
    pub fn builder(client: &Cacheback) -> WorkerBuilder {
        WorkerBuilder::new(Arc::clone(client.core()))
    }
}
