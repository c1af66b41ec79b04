//! What the behaviours share: a fake upstream, the suite's job, and a fixture of one reader
//! client ("web") with worker "processes" started on demand, all on the store under test.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::ClientSuite;
use super::recorded::Recorded;
use crate::client::{Cacheback, CachebackBuilder, JobHandle, Lookup};
use crate::clock::TestClock;
use crate::job::Job;
use crate::observe::Event;
use crate::policy::{Backoff, Freshness, Policy};
use crate::queue::Queue;
use crate::store::Store;
use crate::tags::Tags;
use crate::worker::{Worker, WorkerReport};

/// How long values of the suite's jobs stay fresh.
pub(super) const LIFETIME: Duration = Duration::from_secs(10);
/// How long they may be served stale after that.
pub(super) const STALE_TTL: Duration = Duration::from_secs(100);
/// The longest wait for something a behaviour caused (a fetch starting, an event, a worker's
/// write): a bound against a hang, not a pause that hopes.
pub(super) const WITHIN: Duration = Duration::from_secs(10);

/// The suite's default policy: [`LIFETIME`], [`STALE_TTL`], and a retry backoff of 1 s
/// doubling up to 60 s, without jitter.
pub(super) fn policy() -> Policy {
    Policy::default()
        .lifetime(LIFETIME)
        .stale_ttl(STALE_TTL)
        .retry_backoff(
            Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)).without_jitter(),
        )
}

/// What the fake upstream does on its next calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Ok,
    Fail,
    Panic,
}

/// A fake upstream: counts calls, can fail or panic, can hold calls at a gate, and says when
/// a call starts. Its values are `value {n} #{call}`, padded with `x`s when asked.
#[derive(Debug)]
pub(super) struct Upstream {
    calls: AtomicUsize,
    batches: Mutex<Vec<usize>>,
    mode: Mutex<Mode>,
    padding: AtomicUsize,
    gate: Mutex<Option<Arc<Notify>>>,
    started: Notify,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            calls: AtomicUsize::new(0),
            batches: Mutex::new(Vec::new()),
            mode: Mutex::new(Mode::Ok),
            padding: AtomicUsize::new(0),
            gate: Mutex::new(None),
            started: Notify::new(),
        }
    }
}

impl Upstream {
    pub(super) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The sizes of the batches `fetch_many` was called with, in order.
    pub(super) fn batches(&self) -> Vec<usize> {
        lock(&self.batches).clone()
    }

    pub(super) fn set_mode(&self, mode: Mode) {
        *lock(&self.mode) = mode;
    }

    /// Values get `n` more bytes (to go over a size limit).
    pub(super) fn pad(&self, n: usize) {
        self.padding.store(n, Ordering::SeqCst);
    }

    /// Calls from now on wait at the gate until [`open_gate`](Self::open_gate).
    pub(super) fn close_gate(&self) {
        *lock(&self.gate) = Some(Arc::new(Notify::new()));
    }

    pub(super) fn open_gate(&self) {
        if let Some(gate) = lock(&self.gate).take() {
            gate.notify_waiters();
        }
    }

    /// Waits until the upstream has been called `n` times in all.
    pub(super) async fn called(&self, n: usize, what: &str) {
        let wait = async {
            loop {
                let mut started = pin!(self.started.notified());
                started.as_mut().enable();
                if self.calls() >= n {
                    return;
                }
                started.await;
            }
        };
        if tokio::time::timeout(WITHIN, wait).await.is_err() {
            panic!(
                "{what}: the upstream was called {} times, never {n}",
                self.calls()
            );
        }
    }

    async fn fetch(&self, n: u64) -> Result<String, std::io::Error> {
        // Take the gate before counting the call: a counted call is a gated one.
        let gate = lock(&self.gate).clone();
        let gated = gate.as_ref().map(|g| g.notified());
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.started.notify_waiters();
        if let Some(gated) = gated {
            gated.await;
        }
        match *lock(&self.mode) {
            Mode::Ok => Ok(format!(
                "value {n} #{call}{}",
                "x".repeat(self.padding.load(Ordering::SeqCst))
            )),
            Mode::Fail => Err(std::io::Error::other("upstream is down")),
            Mode::Panic => panic!("upstream exploded"),
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The suite's job: `u64 -> String` through the fake upstream. A tagged one tags each value
/// `all`, `parity:<n % 2>` and `call:<the upstream call that made it>`.
#[derive(Debug)]
pub(super) struct SuiteJob {
    name: &'static str,
    policy: Policy,
    upstream: Arc<Upstream>,
    tagged: bool,
}

impl Job for SuiteJob {
    type Args = u64;
    type Value = String;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        self.name
    }

    fn policy(&self) -> Policy {
        self.policy.clone()
    }

    async fn fetch(&self, n: u64) -> Result<String, std::io::Error> {
        self.upstream.fetch(n).await
    }

    async fn fetch_many(&self, ns: Vec<u64>) -> Vec<Result<String, std::io::Error>> {
        lock(&self.upstream.batches).push(ns.len());
        futures_util::future::join_all(ns.into_iter().map(|n| self.upstream.fetch(n))).await
    }

    fn tags(&self, n: &u64, value: &String) -> Tags {
        if !self.tagged {
            return Tags::new();
        }
        let call = value
            .split_once('#')
            .map_or("", |(_, rest)| rest.trim_end_matches('x'));
        Tags::new()
            .with("all")
            .with(format!("parity:{}", n % 2))
            .with(format!("call:{call}"))
    }
}

/// The value of a lookup or peek, as text.
pub(super) fn text(value: Option<&Arc<String>>) -> Option<&str> {
    value.map(|v| v.as_str())
}

/// One behaviour's world: a web client on the store under test with a prefix of its own, a
/// queue from the suite, a clock, an upstream, the events of every client, and the worker
/// "processes" (clients of their own on the same store, queue and clock) it starts.
pub(super) struct Fx {
    pub(super) prefix: String,
    pub(super) clock: TestClock,
    pub(super) upstream: Arc<Upstream>,
    pub(super) queue: Arc<Recorded>,
    pub(super) web: Cacheback,
    store: Arc<dyn Store>,
    events: mpsc::UnboundedReceiver<Event>,
    events_tx: mpsc::UnboundedSender<Event>,
    /// The jobs registered through [`Fx::job`] (and whether they are tagged), which workers
    /// run too.
    jobs: Vec<(&'static str, Policy, bool)>,
    workers: Vec<JoinHandle<WorkerReport>>,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl Fx {
    pub(super) async fn new(suite: &ClientSuite) -> Fx {
        Fx::with(suite, |b| b).await
    }

    /// A fixture whose web client is configured further by `configure`.
    pub(super) async fn with(
        suite: &ClientSuite,
        configure: impl FnOnce(CachebackBuilder) -> CachebackBuilder,
    ) -> Fx {
        let prefix = format!("suite-{:016x}", fastrand::u64(..));
        let clock = TestClock::new();
        let store = suite.store();
        let queue = Arc::new(Recorded::new(suite.queue()));
        let (events_tx, events) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let mut builder = client_builder(&prefix, &store, &queue, &clock, &events_tx);
        if let Some(near) = &suite.near {
            builder = builder.near_cache(near.clone());
        }
        let web = configure(builder).build().expect("the web client builds");
        if suite.near.is_some() {
            let live = || web.near_cache_live() == Some(true);
            eventually("the near cache goes live", || async { live() }).await;
        }
        Fx {
            prefix,
            clock,
            upstream: Arc::new(Upstream::default()),
            queue,
            web,
            store,
            events,
            events_tx,
            jobs: Vec::new(),
            workers: Vec::new(),
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        }
    }

    /// Reads `n` once another client's write (a worker's refresh) has reached this fixture's
    /// web client, and returns that read: through a near cache the old copy is dropped when
    /// the write's announcement arrives (milliseconds later), so it waits (bounded) for a read
    /// showing `value`; otherwise the first read must show it.
    pub(super) async fn read_written(
        &self,
        job: &JobHandle<SuiteJob>,
        n: u64,
        value: &str,
    ) -> Lookup<String> {
        let read = || async { job.get_with_status(n).await.expect("the read works") };
        if self.near() {
            eventually("the write reaches the near cache", || async {
                text(read().await.value.as_ref()) == Some(value)
            })
            .await;
        }
        read().await
    }

    /// Whether a read asks for a key's claim in the background (a remote store) instead of
    /// deciding it during the read (the in-process memory store).
    pub(super) fn background_claims(&self) -> bool {
        self.store.backend() != "memory"
    }

    /// Whether the main client reads through a near cache.
    pub(super) fn near(&self) -> bool {
        self.web.near_cache_live().is_some()
    }

    /// A builder for another client of this fixture: same prefix, store, queue, clock and
    /// events, no in-process worker.
    pub(super) fn client_builder(&self) -> CachebackBuilder {
        client_builder(
            &self.prefix,
            &self.store,
            &self.queue,
            &self.clock,
            &self.events_tx,
        )
    }

    /// Registers a job on the web client (and on the workers started after this).
    pub(super) fn job(&mut self, name: &'static str, policy: Policy) -> JobHandle<SuiteJob> {
        self.register(name, policy, false)
    }

    /// Registers a job that tags its values (see [`SuiteJob`]) on the web client (and on the
    /// workers started after this).
    pub(super) fn tagged_job(&mut self, name: &'static str, policy: Policy) -> JobHandle<SuiteJob> {
        self.register(name, policy, true)
    }

    fn register(
        &mut self,
        name: &'static str,
        policy: Policy,
        tagged: bool,
    ) -> JobHandle<SuiteJob> {
        self.jobs.push((name, policy.clone(), tagged));
        let web = self.web.clone();
        self.job_on_tagged(&web, name, policy, tagged)
    }

    /// Registers a job on `client` only.
    pub(super) fn job_on(
        &self,
        client: &Cacheback,
        name: &'static str,
        policy: Policy,
    ) -> JobHandle<SuiteJob> {
        self.job_on_tagged(client, name, policy, false)
    }

    /// Registers a job, tagged or not, on `client` only.
    pub(super) fn job_on_tagged(
        &self,
        client: &Cacheback,
        name: &'static str,
        policy: Policy,
        tagged: bool,
    ) -> JobHandle<SuiteJob> {
        client.job(SuiteJob {
            name,
            policy,
            upstream: Arc::clone(&self.upstream),
            tagged,
        })
    }

    /// Starts a worker "process": a client of its own with the jobs registered so far, and a
    /// [`Worker`] on the shared queue.
    pub(super) fn start_worker(&mut self) {
        let client = self
            .client_builder()
            .build()
            .expect("the worker's client builds");
        for (name, policy, tagged) in &self.jobs {
            self.job_on_tagged(&client, name, policy.clone(), *tagged);
        }
        let worker = Worker::builder(&client).build().expect("the worker builds");
        let stop = self.stop.clone();
        self.workers.push(tokio::spawn(async move {
            let report = worker.run_until(stop.cancelled()).await;
            drop(client);
            report
        }));
    }

    /// Stops the workers and returns their reports.
    pub(super) async fn stop_workers(&mut self) -> Vec<WorkerReport> {
        self.stop.cancel();
        let mut reports = Vec::new();
        for worker in self.workers.drain(..) {
            reports.push(worker.await.expect("a worker does not panic"));
        }
        reports
    }

    /// Waits for the next event matching `pred` (events that do not match are dropped).
    pub(super) async fn event(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let wait = async {
            loop {
                match self.events.recv().await {
                    Some(event) if pred(&event) => return event,
                    Some(_) => {}
                    None => unreachable!("the fixture holds a sender"),
                }
            }
        };
        tokio::time::timeout(WITHIN, wait)
            .await
            .unwrap_or_else(|_| panic!("{what}: the expected event never came"))
    }

    /// Waits until `n` refresh requests went through the queue (with a remote store a read asks
    /// for its claim, and enqueues, in the background).
    pub(super) async fn enqueued(&self, n: u64, what: &str) {
        eventually(what, || async { self.queue.enqueued() == n }).await;
    }

    /// Waits until every request that went through the queue was acknowledged or
    /// dead-lettered.
    pub(super) async fn settled(&self, what: &str) {
        eventually(what, || async { self.queue.settled() }).await;
    }
}

/// A client builder on the fixture's prefix, store, queue, clock and events, without an
/// in-process worker.
fn client_builder(
    prefix: &str,
    store: &Arc<dyn Store>,
    queue: &Arc<Recorded>,
    clock: &TestClock,
    events: &mpsc::UnboundedSender<Event>,
) -> CachebackBuilder {
    let events = events.clone();
    Cacheback::builder()
        .prefix(prefix)
        .shared_store(Arc::clone(store))
        .shared_queue(Arc::clone(queue) as Arc<dyn Queue>)
        .clock(clock.clone())
        .in_process_worker(false)
        .on_event(move |e| {
            let _ = events.send(e.clone());
        })
}

/// Whether `n` is Fresh with a value, looked at without side effects (a read could trigger
/// a refresh of its own).
pub(super) async fn is_fresh(job: &JobHandle<SuiteJob>, n: u64) -> bool {
    job.peek(n)
        .await
        .expect("peek works")
        .is_some_and(|p| p.freshness == Freshness::Fresh && p.value.is_some())
}

/// Polls `check` until it holds, for at most [`WITHIN`]: for what a worker or a store does in
/// the background without an event to wait on.
pub(super) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still not the case after {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
