//! The in-process path, on the embedded defaults (memory store, local queue, the client's own
//! worker), where its timing is tokio's: `tokio::time::pause()` drives fetch timeouts and fetch
//! durations, a `TestClock` freshness. What a client does on any store (and with any queue) is
//! in the client suite, `cacheback::testing::ClientSuite`, run by `conformance.rs` and
//! `redis_conformance.rs`; this file keeps what only the embedded path has: the client's own
//! worker and its shutdown, `fetch_timeout` and the measured fetch duration (early refresh),
//! `LocalQueue`'s bound, a race injected into the memory store, and configuration errors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cacheback::clock::TestClock;
use cacheback::{
    Backoff, Cacheback, Error, Event, Job, JobHandle, LocalQueue, MemoryStore, Policy, Status,
    job_fn,
};
use futures_util::future::BoxFuture;
use tokio::sync::{Notify, mpsc};

mod support;

const LIFETIME: Duration = Duration::from_secs(10);
/// How long a test waits for what a read finishes in the background.
const WAIT: Duration = Duration::from_secs(10);
const STALE_TTL: Duration = Duration::from_secs(100);

/// A fake upstream: counts calls, can hang, or wait at a gate.
#[derive(Default)]
struct Upstream {
    calls: AtomicUsize,
    hang: Mutex<bool>,
    gate: Mutex<Option<Arc<Notify>>>,
}

impl Upstream {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn set_hang(&self, hang: bool) {
        *self.hang.lock().unwrap() = hang;
    }
    fn close_gate(&self) {
        *self.gate.lock().unwrap() = Some(Arc::new(Notify::new()));
    }
    fn open_gate(&self) {
        if let Some(gate) = self.gate.lock().unwrap().take() {
            gate.notify_waiters();
        }
    }
    async fn fetch(&self, n: u64) -> Result<String, std::io::Error> {
        let gate = self.gate.lock().unwrap().clone();
        let gated = gate.as_ref().map(|g| g.notified());
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(gated) = gated {
            gated.await;
        }
        if *self.hang.lock().unwrap() {
            std::future::pending::<()>().await;
        }
        Ok(format!("value {n} #{call}"))
    }
}

struct TestJob {
    name: &'static str,
    policy: Policy,
    upstream: Arc<Upstream>,
}

impl Job for TestJob {
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
}

fn job(name: &'static str, policy: Policy, upstream: &Arc<Upstream>) -> TestJob {
    TestJob {
        name,
        policy,
        upstream: Arc::clone(upstream),
    }
}

fn policy() -> Policy {
    Policy::default()
        .lifetime(LIFETIME)
        .stale_ttl(STALE_TTL)
        .retry_backoff(
            Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)).without_jitter(),
        )
}

/// A client on the embedded defaults (its own worker for the local queue), on a test clock.
struct Fixture {
    cache: Cacheback,
    clock: TestClock,
    queue: LocalQueue,
    upstream: Arc<Upstream>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Fixture {
    fn new() -> Self {
        Self::with(LocalQueue::new(1000), |b| b)
    }

    fn with(
        queue: LocalQueue,
        configure: impl FnOnce(cacheback::CachebackBuilder) -> cacheback::CachebackBuilder,
    ) -> Self {
        let clock = TestClock::new();
        let (tx, events) = mpsc::unbounded_channel();
        let builder = Cacheback::builder()
            .clock(clock.clone())
            .queue(queue.clone())
            .on_event(move |e| {
                let _ = tx.send(e.clone());
            });
        let cache = configure(builder).build().expect("client builds");
        Fixture {
            cache,
            clock,
            queue,
            upstream: Arc::new(Upstream::default()),
            events,
        }
    }

    fn job(&self, policy: Policy) -> JobHandle<TestJob> {
        self.cache.job(job("squares", policy, &self.upstream))
    }

    /// Waits (in paused tokio time, so instantly) for the next event matching `pred`.
    async fn event(&mut self, pred: impl Fn(&Event) -> bool) -> Event {
        tokio::time::timeout(Duration::from_secs(3600), async {
            loop {
                let event = self.events.recv().await.expect("events channel open");
                if pred(&event) {
                    return event;
                }
            }
        })
        .await
        .expect("the expected event never came")
    }
}

// The client's own worker runs the refreshes of its local queue: nothing else drains it.
#[tokio::test(start_paused = true)]
async fn the_clients_own_worker_runs_refreshes_of_a_local_queue() {
    let mut fx = Fixture::new();
    let squares = fx.job(policy().fetch_on_miss(false));
    let first = squares.get_with_status(4).await.unwrap();
    assert_eq!(
        (first.status, first.refresh_triggered),
        (Status::Miss, true)
    );
    assert_eq!(fx.queue.enqueued(), 1);
    fx.event(|e| matches!(e, Event::Refreshed { .. })).await;
    let next = squares.get_with_status(4).await.unwrap();
    assert_eq!(next.status, Status::Hit);
    assert_eq!(
        next.value.as_deref().map(String::as_str),
        Some("value 4 #1")
    );
    assert_eq!(fx.upstream.calls(), 1);
}

// A fetch that hangs past fetch_timeout is a failure: the old value is served, and the worker
// goes on.
#[tokio::test(start_paused = true)]
async fn a_hanging_fetch_times_out_as_a_failure() {
    let mut fx = Fixture::new();
    let squares = fx.job(policy().fetch_timeout(Duration::from_secs(5)));
    squares.set(16, "old".to_owned()).await.unwrap();
    fx.clock.advance(LIFETIME);
    fx.upstream.set_hang(true);
    assert!(squares.get_with_status(16).await.unwrap().refresh_triggered);
    let Event::RefreshFailed { error, .. } =
        fx.event(|e| matches!(e, Event::RefreshFailed { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(error.kind(), "timeout", "{error}");
    let read = squares.get_with_status(16).await.unwrap();
    assert_eq!(read.value.as_deref().map(String::as_str), Some("old"));
    // The worker survives: the retry after the backoff is refreshed.
    fx.upstream.set_hang(false);
    fx.clock.advance(Duration::from_secs(1));
    assert!(squares.get_with_status(16).await.unwrap().refresh_triggered);
    fx.event(|e| matches!(e, Event::Refreshed { .. })).await;
}

// Early refresh (XFetch): a fresh read close to expiry may trigger a refresh. The probability
// grows with the fetch's measured duration (tokio's clock: 2 s here).
#[tokio::test(start_paused = true)]
async fn early_refresh_triggers_before_expiry() {
    let mut fx = Fixture::new();
    // A huge beta makes the probability ~1 as soon as the fetch duration is known.
    let squares = fx.job(policy().early_refresh(1e9));
    fx.upstream.close_gate();
    let reader = {
        let squares = squares.clone();
        tokio::spawn(async move { squares.get(26).await })
    };
    while fx.upstream.calls() == 0 {
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    fx.upstream.open_gate();
    reader.await.unwrap().unwrap();
    let hit = squares.get_with_status(26).await.unwrap();
    assert_eq!(hit.status, Status::Hit);
    assert!(hit.refresh_triggered, "XFetch triggered an early refresh");
    fx.event(|e| matches!(e, Event::Refreshed { .. })).await;
    // Without early refresh, fresh reads never trigger.
    let plain = fx.cache.job(job("plain", policy(), &fx.upstream));
    plain.set(26, "v".to_owned()).await.unwrap();
    assert!(!plain.get_with_status(26).await.unwrap().refresh_triggered);
}

// LocalQueue's bound: when full, the request is dropped and counted by the queue (and the
// next read re-triggers, as on any full queue).
#[tokio::test(start_paused = true)]
async fn a_full_local_queue_drops_and_counts() {
    let fx = Fixture::with(LocalQueue::new(1), |b| b.in_process_worker(false));
    let squares = fx.job(policy());
    squares.set(21, "a".to_owned()).await.unwrap();
    squares.set(22, "b".to_owned()).await.unwrap();
    fx.clock.advance(LIFETIME);
    assert!(squares.get_with_status(21).await.unwrap().refresh_triggered);
    settle(|| fx.queue.enqueued() == 1).await;
    // The read wins the key's claim and answers; the request it hands on after answering
    // finds the queue full, and the claim is let go of.
    let dropped = squares.get_with_status(22).await.unwrap();
    assert_eq!(dropped.value.as_deref().map(String::as_str), Some("b"));
    assert!(dropped.refresh_triggered);
    settle(|| fx.queue.dropped() == 1).await;
    assert_eq!((fx.queue.enqueued(), fx.queue.dropped()), (1, 1));
    // So the next read of the key tries again.
    assert!(squares.get_with_status(22).await.unwrap().refresh_triggered);
    settle(|| fx.queue.dropped() == 2).await;
}

/// Lets the runtime's other tasks run until `done` holds (at most 1,000 turns).
async fn settle(done: impl Fn() -> bool) {
    for _ in 0..1_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the spawned work never finished");
}

// LocalQueue keeps what its worker dead-letters, with the reason, for inspection.
#[tokio::test(start_paused = true)]
async fn a_local_queue_keeps_its_dead_letters() {
    let mut fx = Fixture::new();
    let other = Cacheback::builder()
        .clock(fx.clock.clone())
        .queue(fx.queue.clone())
        .in_process_worker(false)
        .build()
        .unwrap();
    // A job only this other client knows: the in-process worker cannot run it.
    let unknown = other.job(job(
        "elsewhere",
        policy().fetch_on_miss(false),
        &fx.upstream,
    ));
    assert!(unknown.get_with_status(1).await.unwrap().refresh_triggered);
    fx.event(|e| matches!(e, Event::DeadLettered { .. })).await;
    let letters = fx.queue.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].reason.contains("unknown job `elsewhere`"),
        "{letters:?}"
    );
    assert_eq!(
        letters[0].request.as_ref().map(|r| r.job.as_str()),
        Some("elsewhere")
    );
}

// Shutdown stops the in-process worker and drains background tasks.
#[tokio::test(start_paused = true)]
async fn shutdown_drains() {
    let fx = Fixture::new();
    let squares = fx.job(policy().fetch_on_miss(false));
    squares.get_cached(28).await.unwrap();
    let report = fx.cache.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained);
    assert!(report.worker.is_some());
}

// Bad configuration is a clear error, not a panic.
#[tokio::test]
async fn bad_configuration_is_a_clear_error() {
    let err = Cacheback::builder()
        .prefix("has space")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("prefix"), "{err}");
    let cache = Cacheback::builder().build().unwrap();
    let upstream = Arc::new(Upstream::default());
    let err = cache
        .try_job(job("bad name", policy(), &upstream))
        .unwrap_err();
    assert!(err.to_string().contains("whitespace"), "{err}");
    let err = cache
        .try_job(job("ok", policy().jitter(2.0), &upstream))
        .unwrap_err();
    assert!(err.to_string().contains("jitter"), "{err}");
    cache.job(job("dup", policy(), &upstream));
    let other = job_fn("dup", policy(), |n: u32| async move {
        Ok::<_, std::io::Error>(n)
    });
    let err = cache.try_job(other).unwrap_err();
    assert!(matches!(err, Error::JobConflict { .. }), "{err}");
}

#[test]
fn building_outside_a_runtime_is_a_clear_error() {
    let err = Cacheback::builder().build().unwrap_err();
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
    assert!(
        Cacheback::builder()
            .in_process_worker(false)
            .build()
            .is_ok()
    );
}
/// A memory store that, once armed, lets a refresh land (a write of the key, as a worker would)
/// just before the next claim: the window between a reader's read of a stale entry and its
/// claim, which a remote store cannot close.
#[derive(Debug)]
struct RefreshLandsBeforeClaim {
    inner: MemoryStore,
    armed: Mutex<Option<cacheback::store::Put>>,
}

impl cacheback::store::Store for RefreshLandsBeforeClaim {
    fn backend(&self) -> &'static str {
        "memory-with-race"
    }
    fn get<'a>(
        &'a self,
        key: cacheback::store::Key<'a>,
    ) -> BoxFuture<'a, cacheback::Result<Option<cacheback::store::Entry>>> {
        self.inner.get(key)
    }
    fn put<'a>(
        &'a self,
        key: cacheback::store::Key<'a>,
        put: cacheback::store::Put,
    ) -> BoxFuture<'a, cacheback::Result<cacheback::store::PutOutcome>> {
        self.inner.put(key, put)
    }
    fn claim<'a>(
        &'a self,
        key: cacheback::store::Key<'a>,
        now: cacheback::clock::Timestamp,
        ttl: Duration,
    ) -> BoxFuture<'a, cacheback::Result<cacheback::store::ClaimOutcome>> {
        Box::pin(async move {
            let landed = self.armed.lock().unwrap().take();
            if let Some(put) = landed {
                self.inner.put(key, put).await?;
            }
            self.inner.claim(key, now, ttl).await
        })
    }
    fn release<'a>(
        &'a self,
        key: cacheback::store::Key<'a>,
        token: cacheback::store::ClaimToken,
        release: cacheback::store::Release,
    ) -> BoxFuture<'a, cacheback::Result<()>> {
        self.inner.release(key, token, release)
    }
    fn claim_state<'a>(
        &'a self,
        key: cacheback::store::Key<'a>,
        now: cacheback::clock::Timestamp,
    ) -> BoxFuture<'a, cacheback::Result<cacheback::store::ClaimState>> {
        self.inner.claim_state(key, now)
    }
}

// A stale read whose key is refreshed between its read and its claim (the refresh released its
// claim already) wins the claim, but sees the entry changed and lets it go: no second refresh
// is enqueued for a stale event that is already over.
#[tokio::test]
async fn a_stale_read_overtaken_by_its_refresh_enqueues_nothing() {
    let store = Arc::new(RefreshLandsBeforeClaim {
        inner: MemoryStore::new(),
        armed: Mutex::new(None),
    });
    let fx = Fixture::with(LocalQueue::new(10), |b| {
        b.in_process_worker(false)
            .shared_store(Arc::clone(&store) as Arc<dyn cacheback::store::Store>)
    });
    let squares = fx.job(policy());
    squares.set(9, "old".to_owned()).await.unwrap();
    fx.clock.advance(LIFETIME + Duration::from_secs(1));
    let now = cacheback::clock::Clock::now(&fx.clock);
    let fresh = cacheback::store::EntryMeta::new(
        now,
        now.saturating_add(LIFETIME),
        now.saturating_add(STALE_TTL),
    );
    let codec = cacheback::Codec::default();
    let value = codec.encode("refreshed").unwrap();
    *store.armed.lock().unwrap() = Some(cacheback::store::Put::new(
        cacheback::store::Entry::new(
            fresh,
            cacheback::store::Payload::encoded(codec.id(), value.into()),
        ),
        cacheback::store::PutCondition::Always,
        STALE_TTL,
    ));

    let read = squares.get_with_status(9).await.unwrap();
    assert_eq!(read.status, Status::Stale, "it read the stale entry");
    // A store outside the process: the read asks for the claim in the background, where the
    // refresh lands first (the claim takes the armed write).
    assert!(read.refresh_triggered, "the read asked for a refresh");
    let released = || async {
        let peek = squares.peek(9).await.unwrap().unwrap();
        store.armed.lock().unwrap().is_none() && peek.claim.claim.is_none()
    };
    support::eventually("the claim is taken, then let go", WAIT, released).await;
    assert_eq!(
        fx.queue.enqueued(),
        0,
        "the refresh it would trigger landed already"
    );
    let after = squares.get_with_status(9).await.unwrap();
    assert_eq!(
        (after.status, after.value.as_deref().map(String::as_str)),
        (Status::Hit, Some("refreshed"))
    );
}

/// Starts a worker on the fixture's queue with `options`; returns its health and a stop handle.
fn start_worker(
    fx: &Fixture,
    options: cacheback::WorkerOptions,
) -> (
    cacheback::worker::WorkerHealth,
    tokio::sync::oneshot::Sender<()>,
) {
    let worker = cacheback::Worker::builder(&fx.cache)
        .options(options)
        .build()
        .expect("the worker builds");
    let health = worker.health();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    (health, stop)
}

/// Enqueues a refresh of each of `keys` (reads of missing keys, without fetch_on_miss).
async fn enqueue_misses(squares: &JobHandle<TestJob>, keys: std::ops::Range<u64>) {
    for n in keys {
        assert!(squares.get_with_status(n).await.unwrap().refresh_triggered);
    }
}

// Requests that wait in the queue while every refresh slot is taken make the worker double its
// concurrency, up to its maximum: with I/O-bound fetches a worker that changes nothing keeps up.
#[tokio::test(start_paused = true)]
async fn a_worker_whose_requests_wait_grows_up_to_its_maximum() {
    let fx = Fixture::with(LocalQueue::new(1000), |b| b.in_process_worker(false));
    let squares = fx.job(policy().fetch_on_miss(false));
    fx.upstream.close_gate();
    enqueue_misses(&squares, 0..100).await;
    // The requests have waited a second when the worker starts.
    fx.clock.advance(Duration::from_secs(1));
    let options = cacheback::WorkerOptions::default()
        .concurrency(16)
        .max_concurrency(64);
    let (health, _stop) = start_worker(&fx, options);
    // Paused time: the sleep returns once every task waits (the fetches at their gate).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        (
            fx.upstream.calls(),
            health.in_flight(),
            health.concurrency()
        ),
        (64, 64, 64),
        "16 → 32 → 64, then the maximum holds"
    );
    fx.upstream.open_gate();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fx.upstream.calls(), 100, "the rest ran as slots came free");
}

// Requests taken as soon as they come (younger than grow_after) do not grow the worker, and
// neither does a maximum equal to the start.
#[tokio::test(start_paused = true)]
async fn a_worker_that_keeps_up_or_is_capped_does_not_grow() {
    for (age, max) in [(Duration::ZERO, 512), (Duration::from_secs(1), 16)] {
        let fx = Fixture::with(LocalQueue::new(1000), |b| b.in_process_worker(false));
        let squares = fx.job(policy().fetch_on_miss(false));
        fx.upstream.close_gate();
        enqueue_misses(&squares, 0..40).await;
        fx.clock.advance(age);
        let options = cacheback::WorkerOptions::default()
            .concurrency(16)
            .max_concurrency(max);
        let (health, _stop) = start_worker(&fx, options);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            (fx.upstream.calls(), health.concurrency()),
            (16, 16),
            "requests {age:?} old, maximum {max}"
        );
        fx.upstream.open_gate();
    }
}

/// A job whose `fetch_many` misbehaves as told.
struct Batchy {
    how: &'static str,
}

impl Job for Batchy {
    type Args = u64;
    type Value = u64;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        "batchy"
    }

    async fn fetch(&self, n: u64) -> Result<u64, std::io::Error> {
        Ok(n)
    }

    async fn fetch_many(&self, ns: Vec<u64>) -> Vec<Result<u64, std::io::Error>> {
        match self.how {
            "short" => ns.into_iter().skip(1).map(Ok).collect(),
            "panic" => panic!("the batch exploded"),
            _ => ns
                .into_iter()
                .map(|n| {
                    if n % 2 == 0 {
                        Ok(n * 10)
                    } else {
                        Err(std::io::Error::other(format!("no {n}")))
                    }
                })
                .collect(),
        }
    }
}

// A batch that answers with the wrong number of values, or panics, fails each of its keys with
// an error that says so; a key's own error fails that key only; nothing is stored for a failed
// key, and the next read fetches it again.
#[tokio::test(start_paused = true)]
async fn a_misbehaving_fetch_many_fails_its_keys_with_a_clear_error() {
    for (how, expected) in [
        ("short", "fetch_many returned 2 results for 3 args"),
        ("panic", "the batch exploded"),
    ] {
        let fx = Fixture::new();
        let batchy = fx.cache.job(Batchy { how });
        for answer in batchy.get_many([1, 2, 3]).await {
            let error = answer.expect_err("the batch failed").to_string();
            assert!(error.contains(expected), "{how}: {error}");
        }
        assert_eq!(
            batchy.peek(2).await.unwrap().map(|p| p.value.is_some()),
            None
        );
    }
    let fx = Fixture::new();
    let batchy = fx.cache.job(Batchy { how: "odd" });
    let answers = batchy.get_many([1, 2]).await;
    assert!(
        answers[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("no 1")
    );
    assert_eq!(answers[1].as_ref().unwrap().value.as_deref(), Some(&20));
    assert_eq!(*batchy.get(2).await.unwrap(), 20, "stored");
}

// Every read is counted once, under its status, whichever path answers it: a fresh hit, a batch
// read (fresh, stale and missing keys), a stale read, an early refresh's fresh read.
#[tokio::test(start_paused = true)]
async fn every_read_is_counted_once_under_its_status() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A snapshot drains the counters: each call returns the counts since the last one.
    let reads = || {
        let mut counts = std::collections::BTreeMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            if key.name() != "cacheback_reads_total" {
                continue;
            }
            let status = key
                .labels()
                .find(|l| l.key() == "status")
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            if let metrics_util::debugging::DebugValue::Counter(n) = value
                && n > 0
            {
                *counts.entry(status).or_insert(0) += n;
            }
        }
        counts
    };
    let counted = |pairs: &[(&str, u64)]| {
        pairs
            .iter()
            .map(|&(status, n)| (status.to_owned(), n))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let fx = Fixture::new();
    let (squares, early) = metrics::with_local_recorder(&recorder, || {
        (
            fx.cache.job(job("squares", policy(), &fx.upstream)),
            fx.cache
                .job(job("early", policy().early_refresh(1.0), &fx.upstream)),
        )
    });
    squares.set(1, "one".into()).await.unwrap();
    squares.set(2, "two".into()).await.unwrap();
    early.set(1, "one".into()).await.unwrap();
    reads();

    assert_eq!(
        squares.get_with_status(1).await.unwrap().status,
        Status::Hit
    );
    assert_eq!(early.get_with_status(1).await.unwrap().status, Status::Hit);
    assert_eq!(reads(), counted(&[("hit", 2)]));

    // Every read form answers a fresh hit with the value (and its age), counted once.
    fx.clock.advance(Duration::from_secs(3));
    assert_eq!(squares.get(1).await.unwrap().as_str(), "one");
    assert_eq!(
        squares
            .get_cached(2)
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("two")
    );
    let hit = squares.get_with_status(1).await.unwrap();
    assert_eq!(
        (hit.status, hit.age, hit.refresh_triggered),
        (Status::Hit, Some(Duration::from_secs(3)), false)
    );
    assert_eq!(hit.value.as_deref().map(String::as_str), Some("one"));
    assert_eq!(reads(), counted(&[("hit", 3)]));

    let batch = squares.get_many([1, 2, 3]).await;
    let statuses: Vec<_> = batch.iter().map(|r| r.as_ref().unwrap().status).collect();
    assert_eq!(statuses, [Status::Hit, Status::Hit, Status::MissFetched]);
    assert_eq!(reads(), counted(&[("hit", 2), ("miss_fetched", 1)]));

    fx.clock.advance(LIFETIME);
    assert_eq!(
        squares.get_with_status(1).await.unwrap().status,
        Status::Stale
    );
    assert_eq!(reads(), counted(&[("stale", 1)]));
}

// Clients that share one memory store under one job name never serve each other's entries when
// they cannot be theirs (another schema version, another value type): such an entry is read as
// a miss, fetched and overwritten.
#[tokio::test(start_paused = true)]
async fn a_shared_memory_entry_of_another_schema_or_type_is_a_miss() {
    let store = MemoryStore::new();
    let clock = TestClock::new();
    let client = || {
        Cacheback::builder()
            .clock(clock.clone())
            .store(store.clone())
            .queue(LocalQueue::new(10))
            .build()
            .expect("client builds")
    };
    let upstream = Arc::new(Upstream::default());
    let texts = client().job(job("shared", policy(), &upstream));
    let texts_v2 = client().job(job("shared", policy().schema_version(2), &upstream));
    let numbers = client().job(job_fn("shared", policy(), |n: u64| async move {
        Ok::<_, std::io::Error>(n * 100)
    }));

    texts.set(7, "seven".into()).await.unwrap();
    assert_eq!(texts.get_with_status(7).await.unwrap().status, Status::Hit);
    // Another schema version: fetched, and now the entry is the new version's.
    let read = texts_v2.get_with_status(7).await.unwrap();
    assert_eq!(read.status, Status::MissFetched);
    assert_eq!(
        read.value.as_deref().map(String::as_str),
        Some("value 7 #1")
    );
    assert_eq!(
        texts_v2.get_with_status(7).await.unwrap().status,
        Status::Hit
    );
    // Another type under the reader's own schema version.
    texts.set(8, "eight".into()).await.unwrap();
    let read = numbers.get_with_status(8).await.unwrap();
    assert_eq!(read.status, Status::MissFetched);
    assert_eq!(read.value.as_deref(), Some(&800));
    let read = texts.get_with_status(8).await.unwrap();
    assert_eq!(read.status, Status::MissFetched);
    assert_eq!(
        read.value.as_deref().map(String::as_str),
        Some("value 8 #2")
    );
    // A batch read sees the same.
    let batch = numbers.get_many([8]).await;
    let read = batch[0].as_ref().unwrap();
    assert_eq!(read.status, Status::MissFetched);
    assert_eq!(read.value.as_deref(), Some(&800));
}

// Args that cannot be made into a key (here: over the 1 MiB limit on their encoding) fail every
// read form with a key error, before the store or the upstream is asked anything.
#[tokio::test(start_paused = true)]
async fn args_that_do_not_make_a_key_fail_every_read_form() {
    let fx = Fixture::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let lengths = fx.cache.job(job_fn("lengths", policy(), move |s: String| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, std::io::Error>(s.len()) }
    }));
    let huge = "x".repeat((1 << 20) + 1);
    assert!(matches!(
        lengths.get(huge.clone()).await,
        Err(Error::Key { .. })
    ));
    assert!(matches!(
        lengths.get_cached(huge.clone()).await,
        Err(Error::Key { .. })
    ));
    assert!(matches!(
        lengths.get_with_status(huge).await,
        Err(Error::Key { .. })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // The job still answers args that do make a key.
    assert_eq!(*lengths.get("abc".to_owned()).await.unwrap(), 3);
}
