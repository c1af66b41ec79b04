//! The client: the read path, claims, coalescing and fallbacks.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::job::Job;
use crate::key;
use crate::observe::JobMetrics;
use crate::queue::Queue;
use crate::store::Store;
use crate::worker::{Worker, WorkerBuilder, WorkerReport};

mod builder;
mod coalesce;
mod fleet;
pub(crate) mod global;
mod handle;
mod hints;
mod lookup;
mod many;
mod miss;
mod tags;
mod trigger;
mod write;

pub use builder::CachebackBuilder;
pub use handle::JobHandle;
pub use lookup::{Lookup, Peek, Status, WarmProgress, WarmReport};

use crate::engine::Core;
use crate::engine::registry::JobEntry;
use coalesce::Coalescer;

/// The default limit on a value's encoded size.
pub(crate) const DEFAULT_MAX_VALUE_BYTES: usize = 4 << 20;

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
    /// Whether a won claim of an in-process store is handed over in a task after the read
    /// answers: the queue is in-process and the fallback does not refresh before answering.
    pub(crate) hand_off_after_answer: bool,
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
/// assert_eq!(*square.get(7).await?, 49);
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
    /// Configures a client. The defaults are the embedded ones: a [`MemoryStore`](crate::MemoryStore), a
    /// [`LocalQueue`](crate::LocalQueue) and an in-process worker.
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
        let mut metrics = JobMetrics::new(&name);
        if self.inner.core.fleet_stats {
            metrics.tally = Some(Arc::default());
        }
        let seed = key::job_seed(&self.inner.core.prefix, &name);
        let entry = Arc::new(JobEntry {
            job,
            seed,
            name,
            policy,
            metrics,
            tagged: Default::default(),
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

    /// Whether the [near cache](CachebackBuilder::near_cache) is serving copies: `None`
    /// without one, `Some(false)` while its subscription to the store's announcements is not
    /// live (at start, and after a loss until it is back; reads then go to the store).
    pub fn near_cache_live(&self) -> Option<bool> {
        self.inner.core.near.as_ref().map(|near| near.is_live())
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

impl Worker {
    /// A worker for `client`'s jobs, store and (by default) queue.
    pub fn builder(client: &Cacheback) -> WorkerBuilder {
        WorkerBuilder::new(Arc::clone(client.core()))
    }
}
