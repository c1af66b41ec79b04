//! Workers: take refresh requests off a queue and run them, by job name.
//!
//! The same [`Worker`] runs in-process (started by the client for a [`LocalQueue`]) and in
//! dedicated worker processes fed by a shared queue. It looks each request's job up by name in
//! the client's registry, runs it with bounded concurrency, acknowledges it, and dead-letters
//! what it cannot run (unknown job, malformed message, too many deliveries) without stopping.
//!
//! [`LocalQueue`]: crate::LocalQueue

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::clock::Timestamp;
use crate::engine::Core;
use crate::engine::refresh::ReadBefore;
use crate::engine::registry::Processed;
use crate::error::{Chain, Result};
use crate::key::Key;
use crate::observe::{Event, dead_letter_metric};
use crate::queue::{Delivery, Queue};

mod adaptive;
mod options;

use adaptive::Concurrency;
pub use options::WorkerOptions;

/// Counts of what a worker did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Requests processed and acknowledged (refreshed, failed, skipped or discarded).
    pub processed: u64,
    /// Requests dead-lettered.
    pub dead_lettered: u64,
    /// Refreshes still running at the drain deadline, abandoned to redelivery.
    pub abandoned: usize,
}

/// A worker's liveness, for health probes. Cheap to clone; reads are lock-free.
#[derive(Clone, Default)]
pub struct WorkerHealth {
    inner: Arc<HealthInner>,
}

#[derive(Default)]
struct HealthInner {
    running: AtomicBool,
    last_poll_ms: AtomicU64,
    in_flight: AtomicUsize,
    concurrency: AtomicUsize,
    processed: AtomicU64,
    dead_lettered: AtomicU64,
}

impl WorkerHealth {
    /// Whether the run loop is running.
    pub fn is_running(&self) -> bool {
        self.inner.running.load(Ordering::Relaxed)
    }

    /// When the worker last got an answer from its queue (per the client's clock).
    pub fn last_poll(&self) -> Option<Timestamp> {
        match self.inner.last_poll_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Timestamp::from_millis(ms)),
        }
    }

    /// Refreshes running now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Refreshes the worker lets run at the same time now (it grows while requests wait; see
    /// [`WorkerOptions`]); 0 before the worker runs.
    pub fn concurrency(&self) -> usize {
        self.inner.concurrency.load(Ordering::Relaxed)
    }

    /// Requests processed so far.
    pub fn processed(&self) -> u64 {
        self.inner.processed.load(Ordering::Relaxed)
    }

    /// Requests dead-lettered so far.
    pub fn dead_lettered(&self) -> u64 {
        self.inner.dead_lettered.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for WorkerHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHealth")
            .field("running", &self.is_running())
            .field("last_poll", &self.last_poll())
            .field("in_flight", &self.in_flight())
            .field("concurrency", &self.concurrency())
            .field("processed", &self.processed())
            .finish()
    }
}

/// Runs refresh requests from a queue, by job name.
///
/// The same worker runs in-process (started by the client for a [`LocalQueue`](crate::LocalQueue))
/// and in dedicated worker processes fed by a shared queue. It looks each request's job up by
/// name in the client's registry, runs it with bounded concurrency, acknowledges it, and
/// dead-letters what it cannot run (unknown job, malformed message, too many deliveries) without
/// stopping.
///
/// ```no_run
/// use cacheback::{Cacheback, Worker, WorkerOptions};
///
/// # async fn run(client: Cacheback) {
/// // `client` is built with the same store, queue and prefix as the web processes, and has
/// // every job registered (`client.job(...)`).
/// let worker = Worker::builder(&client)
///     .options(WorkerOptions::default().concurrency(64))
///     .build()
///     .expect("valid options");
/// let report = worker
///     .run_until(async {
///         let _ = tokio::signal::ctrl_c().await;
///     })
///     .await;
/// println!("{report:?}");
/// # }
/// ```
pub struct Worker {
    core: Arc<Core>,
    queue: Arc<dyn Queue>,
    options: WorkerOptions,
    health: WorkerHealth,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.queue)
            .field("options", &self.options)
            .field("health", &self.health)
            .finish()
    }
}

/// Builds a [`Worker`].
#[must_use]
#[derive(Debug)]
pub struct WorkerBuilder {
    core: Arc<Core>,
    queue: Option<Arc<dyn Queue>>,
    options: WorkerOptions,
}

impl WorkerBuilder {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        WorkerBuilder {
            core,
            queue: None,
            options: WorkerOptions::default(),
        }
    }

    /// Drain this queue instead of the client's.
    pub fn queue(mut self, queue: Arc<dyn Queue>) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Sets the options.
    pub fn options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// Builds the worker.
    pub fn build(self) -> Result<Worker> {
        self.options.validate()?;
        let queue = self.queue.unwrap_or_else(|| Arc::clone(&self.core.queue));
        queue.bind_prefix(&self.core.prefix)?;
        Ok(Worker::from_core(self.core, queue, self.options))
    }
}

impl Worker {
    // `Worker::builder(&Cacheback)` is defined beside `Cacheback` (in the client module), so that
    // this module depends on the engine alone.

    pub(crate) fn from_core(
        core: Arc<Core>,
        queue: Arc<dyn Queue>,
        options: WorkerOptions,
    ) -> Self {
        Worker {
            core,
            queue,
            options,
            health: WorkerHealth::default(),
        }
    }

    /// A handle on the worker's liveness, for probes.
    pub fn health(&self) -> WorkerHealth {
        self.health.clone()
    }

    /// Runs until `shutdown` completes, then stops taking work, lets in-flight refreshes finish
    /// up to [`WorkerOptions::drain_timeout`], hands back what it still holds, and returns what
    /// it did. Messages it did not acknowledge are redelivered by queues that support it.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> WorkerReport {
        let health = &self.health.inner;
        health.running.store(true, Ordering::Relaxed);
        let concurrency = Arc::new(Concurrency::new(
            self.options.concurrency,
            self.options.max_concurrency,
            self.options.grow_after,
        ));
        let permits = Arc::clone(concurrency.permits());
        health
            .concurrency
            .store(concurrency.limit(), Ordering::Relaxed);
        let mut running: JoinSet<()> = JoinSet::new();
        tokio::pin!(shutdown);
        info!(
            queue = self.queue.backend(),
            concurrency = self.options.concurrency,
            max_concurrency = self.options.max_concurrency.max(self.options.concurrency),
            "worker started"
        );
        loop {
            while let Some(done) = running.try_join_next() {
                log_join(done);
            }
            match self.next_batch(&permits, &mut shutdown).await {
                Step::Stop => break,
                Step::Retry => continue,
                Step::Batch(first, deliveries) => {
                    if !self
                        .spawn_all(&concurrency, first, deliveries, &mut running)
                        .await
                    {
                        break;
                    }
                }
            }
        }
        let abandoned = self.drain(running).await;
        self.hand_back().await;
        health.running.store(false, Ordering::Relaxed);
        WorkerReport {
            processed: health.processed.load(Ordering::Relaxed),
            dead_lettered: health.dead_lettered.load(Ordering::Relaxed),
            abandoned,
        }
    }

    /// Waits for room for one refresh, then receives as many messages as there is room for.
    async fn next_batch(
        &self,
        permits: &Arc<Semaphore>,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Step {
        // Take messages only when a refresh can start right away: messages held but not
        // started would be invisible to other workers until their visibility timeout.
        let first = tokio::select! {
            biased;
            () = shutdown.as_mut() => return Step::Stop,
            permit = Arc::clone(permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Step::Stop,
            },
        };
        let room = 1 + permits.available_permits();
        let batch = tokio::select! {
            biased;
            () = shutdown.as_mut() => return Step::Stop,
            batch = self.queue.receive(room.min(self.options.batch)) => batch,
        };
        self.health
            .inner
            .last_poll_ms
            .store(self.core.now().as_millis(), Ordering::Relaxed);
        match batch {
            Ok(deliveries) => Step::Batch(first, deliveries),
            Err(error) => {
                warn!(error = %Chain(&error), "receiving from the queue failed; retrying");
                drop(first);
                tokio::select! {
                    biased;
                    () = shutdown.as_mut() => Step::Stop,
                    () = tokio::time::sleep(self.options.receive_retry) => Step::Retry,
                }
            }
        }
    }

    /// Starts a refresh task per delivery, each holding a permit; `false` if the worker is
    /// closing (no permit can be had).
    async fn spawn_all(
        &self,
        concurrency: &Arc<Concurrency>,
        first: OwnedSemaphorePermit,
        deliveries: Vec<Delivery>,
        running: &mut JoinSet<()>,
    ) -> bool {
        let permits = concurrency.permits();
        let mut first = Some(first);
        let befores = read_before(&self.core, &deliveries).await;
        for (delivery, before) in deliveries.into_iter().zip(befores) {
            let permit = match first.take() {
                Some(permit) => permit,
                None => match Arc::clone(permits).try_acquire_owned() {
                    Ok(permit) => permit,
                    // Receive asked for no more than the free permits, so this only happens
                    // with a queue that returns more than asked: wait for room.
                    Err(_) => match Arc::clone(permits).acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return false,
                    },
                },
            };
            let (core, queue, health) = (
                Arc::clone(&self.core),
                Arc::clone(&self.queue),
                self.health.clone(),
            );
            if let Ok(request) = &delivery.message
                && let Some(grown) = concurrency.on_received(request.enqueued_at, core.now())
            {
                health.inner.concurrency.store(grown, Ordering::Relaxed);
            }
            let max_deliveries = self.options.max_deliveries;
            health.inner.in_flight.fetch_add(1, Ordering::Relaxed);
            let (concurrency, spawned) = (Arc::clone(concurrency), tokio::time::Instant::now());
            running.spawn(async move {
                concurrency.started_after(spawned.elapsed());
                handle_delivery(&core, &*queue, &health, delivery, before, max_deliveries).await;
                health.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
        }
        true
    }

    /// Lets in-flight refreshes finish up to the drain deadline; returns how many were
    /// abandoned to redelivery.
    async fn drain(&self, mut running: JoinSet<()>) -> usize {
        info!(
            in_flight = running.len(),
            "worker stopping; draining in-flight refreshes"
        );
        let drained = tokio::time::timeout(self.options.drain_timeout, async {
            while let Some(done) = running.join_next().await {
                log_join(done);
            }
        })
        .await;
        if drained.is_ok() {
            return 0;
        }
        let n = running.len();
        warn!(
            abandoned = n,
            "drain deadline passed; abandoning refreshes to redelivery"
        );
        running.abort_all();
        while running.join_next().await.is_some() {}
        n
    }

    /// Gives the queue back what this worker still holds, so other workers get it at once.
    async fn hand_back(&self) {
        match self.queue.hand_back_held().await {
            Ok(0) => {}
            Ok(n) => info!(handed_back = n, "handed held requests back to the queue"),
            Err(error) => warn!(
                error = %Chain(&error),
                "could not hand held requests back; they are redelivered after the visibility timeout"
            ),
        }
    }
}

/// What the run loop does next.
enum Step {
    /// Start these deliveries (the first one's permit is already held).
    Batch(OwnedSemaphorePermit, Vec<Delivery>),
    /// Receiving failed; the pause before trying again is over.
    Retry,
    /// Shutting down.
    Stop,
}

fn log_join(result: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = result
        && e.is_panic()
    {
        // Fetch panics are caught where they happen; this is a bug in cacheback itself.
        error!(error = %Chain(&e), "worker task panicked");
    }
}

/// The entries a batch of deliveries is for, read in one store call (one `MGET` on Redis) so
/// that each refresh need not read its own before its fetch. With the in-process store (whose
/// reads cost no round trip), a batch of one, or when the read fails, every refresh reads its
/// entry itself; so does one whose key is being refreshed in this process already (it waits
/// for that refresh, then reads what it wrote), and one that names no key of this prefix.
async fn read_before(core: &Core, deliveries: &[Delivery]) -> Vec<ReadBefore> {
    let mut befores: Vec<ReadBefore> = deliveries.iter().map(|_| ReadBefore::Unread).collect();
    if core.memory.is_some() || deliveries.len() < 2 {
        return befores;
    }
    let (places, keys): (Vec<usize>, Vec<Key<'_>>) = deliveries
        .iter()
        .enumerate()
        .filter_map(|(i, delivery)| {
            let key = Key::parse(&delivery.message.as_ref().ok()?.key).ok()?;
            let ours = key.prefix() == &*core.prefix;
            (ours && !core.running.is_running(key.digest())).then_some((i, key))
        })
        .unzip();
    if keys.len() < 2 {
        return befores;
    }
    if let Ok(entries) = core.store.get_many(&keys).await {
        for (i, entry) in places.into_iter().zip(entries) {
            befores[i] = ReadBefore::Read(entry);
        }
    }
    befores
}

async fn handle_delivery(
    core: &Arc<Core>,
    queue: &dyn Queue,
    health: &WorkerHealth,
    delivery: Delivery,
    before: ReadBefore,
    max_deliveries: u32,
) {
    let request = match &delivery.message {
        Ok(request) => request,
        Err(malformed) => {
            return dead_letter(
                core,
                queue,
                health,
                &delivery,
                None,
                malformed.reason(),
                "malformed",
            )
            .await;
        }
    };
    if delivery.attempt > max_deliveries {
        let reason = format!(
            "delivered {} times, over the limit of {max_deliveries}: the refresh never completed",
            delivery.attempt
        );
        return dead_letter(
            core,
            queue,
            health,
            &delivery,
            Some(&request.job),
            &reason,
            "max_deliveries",
        )
        .await;
    }
    let Some(job) = core.registry.get(&request.job) else {
        let reason = format!(
            "unknown job `{}`: no job of that name is registered with this worker",
            request.job
        );
        return dead_letter(
            core,
            queue,
            health,
            &delivery,
            Some(&request.job),
            &reason,
            "unknown_job",
        )
        .await;
    };
    match job.process(Arc::clone(core), request.clone(), before).await {
        Processed::Done(outcome) => {
            debug!(job = %request.job, ?outcome, "refresh processed");
            health.inner.processed.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = queue.ack(&delivery).await {
                warn!(error = %Chain(&error), "could not acknowledge a processed refresh; it may run again");
            }
        }
        Processed::Rejected { reason, kind } => {
            dead_letter(
                core,
                queue,
                health,
                &delivery,
                Some(&request.job),
                &reason,
                kind,
            )
            .await;
        }
    }
}

async fn dead_letter(
    core: &Core,
    queue: &dyn Queue,
    health: &WorkerHealth,
    delivery: &Delivery,
    job: Option<&str>,
    reason: &str,
    kind: &'static str,
) {
    warn!(
        job = job.unwrap_or("unknown"),
        reason, "dead-lettering a refresh request"
    );
    dead_letter_metric(job, kind);
    health.inner.dead_lettered.fetch_add(1, Ordering::Relaxed);
    if let Err(error) = queue.dead_letter(delivery, reason).await {
        error!(error = %Chain(&error), "could not dead-letter a message; it may be redelivered");
    }
    core.emit(|| Event::DeadLettered {
        job: job.map(str::to_owned),
        reason: reason.to_owned(),
    });
}
