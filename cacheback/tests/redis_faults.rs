//! Faults only a Redis deployment has, each test on its own spawned `redis-server`: the queue's
//! server down, garbage written into the stream or over an entry, a worker that dies holding a
//! message (redelivery after the visibility timeout, dead letter after too many deliveries), and
//! Redis restarted mid-run. A client with `RedisStore` + `RedisQueue`, and a `Worker` (its own
//! client, as in a worker process) on the same runtime.
//!
//! Every client behaviour that holds on any store runs on Redis through the client suite
//! (`cacheback::testing::ClientSuite`, in `redis_conformance.rs`).
//!
//! Freshness runs on a `TestClock`; where real Redis round trips and the worker are involved,
//! the tests poll a condition with a bounded loop (`eventually`) instead of sleeping.

#![cfg(feature = "redis")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cacheback::clock::{Clock, TestClock, Timestamp};
use cacheback::store::{ClaimOutcome, ClaimToken, Key, Release, Store};
use cacheback::worker::WorkerReport;
use cacheback::{
    Backoff, Cacheback, Error, Freshness, Job, JobHandle, Policy, RedisQueue, RedisStore, Status,
    StoreFallback, Worker, WorkerOptions,
};
use futures_util::future::BoxFuture;
use support::{RedisServer, eventually, unique_prefix};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LIFETIME: Duration = Duration::from_secs(10);
const STALE_TTL: Duration = Duration::from_secs(100);
const WITHIN: Duration = Duration::from_secs(10);

/// A fake upstream that counts its calls.
#[derive(Default)]
struct Upstream {
    calls: AtomicUsize,
}

impl Upstream {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    async fn fetch(&self, n: u64) -> Result<String, std::io::Error> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
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

fn policy() -> Policy {
    Policy::default()
        .lifetime(LIFETIME)
        .stale_ttl(STALE_TTL)
        .retry_backoff(
            Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)).without_jitter(),
        )
}

/// One Redis, one web client, and (on demand) worker "processes": separate clients sharing the
/// store, queue prefix and clock.
struct Fx {
    server: RedisServer,
    prefix: String,
    clock: TestClock,
    web: Cacheback,
    queue: RedisQueue,
    upstream: Arc<Upstream>,
    stop: CancellationToken,
    workers: Vec<JoinHandle<WorkerReport>>,
}

impl Fx {
    fn new() -> Option<Fx> {
        Self::with(|b| b)
    }

    fn with(
        configure: impl FnOnce(cacheback::CachebackBuilder) -> cacheback::CachebackBuilder,
    ) -> Option<Fx> {
        let server = RedisServer::start()?;
        let prefix = unique_prefix("behave");
        let clock = TestClock::new();
        let queue = Self::queue_for(&server, &prefix, Duration::from_secs(30));
        let web = configure(
            Cacheback::builder()
                .prefix(prefix.clone())
                .clock(clock.clone())
                .store(RedisStore::from_url(&server.url()).unwrap())
                .queue(queue.clone()),
        )
        .build()
        .unwrap();
        Some(Fx {
            server,
            prefix,
            clock,
            web,
            queue,
            upstream: Arc::new(Upstream::default()),
            stop: CancellationToken::new(),
            workers: Vec::new(),
        })
    }

    fn queue_for(server: &RedisServer, prefix: &str, visibility: Duration) -> RedisQueue {
        RedisQueue::builder(&server.url())
            .prefix(prefix)
            .poll_interval(Duration::from_millis(50))
            .visibility_timeout(visibility)
            .command_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_millis(500))
            .build()
            .unwrap()
    }

    fn job(&self, name: &'static str, policy: Policy) -> JobHandle<TestJob> {
        self.web.job(TestJob {
            name,
            policy,
            upstream: Arc::clone(&self.upstream),
        })
    }

    /// A worker process: its own client (same prefix, store and clock), its jobs, its queue.
    fn start_worker(&mut self, jobs: &[&'static str], queue: RedisQueue, options: WorkerOptions) {
        let client = Cacheback::builder()
            .prefix(self.prefix.clone())
            .clock(self.clock.clone())
            .store(RedisStore::from_url(&self.server.url()).unwrap())
            .queue(queue)
            .build()
            .unwrap();
        for name in jobs {
            client.job(TestJob {
                name,
                policy: policy(),
                upstream: Arc::clone(&self.upstream),
            });
        }
        let worker = Worker::builder(&client).options(options).build().unwrap();
        let stop = self.stop.clone();
        self.workers.push(tokio::spawn(async move {
            let report = worker.run_until(stop.cancelled()).await;
            drop(client);
            report
        }));
    }

    fn start_default_worker(&mut self) {
        let queue = Self::queue_for(&self.server, &self.prefix, Duration::from_secs(30));
        self.start_worker(&["squares"], queue, WorkerOptions::default());
    }

    async fn stop_workers(&mut self) -> Vec<WorkerReport> {
        self.stop.cancel();
        let mut reports = Vec::new();
        for worker in self.workers.drain(..) {
            reports.push(worker.await.unwrap());
        }
        reports
    }

    async fn settled(&self) -> bool {
        self.queue.len("default").await.unwrap() == 0
            && self.queue.pending("default").await.unwrap() == 0
    }
}

/// Whether `n` is Fresh, without side effects: polling with a read could itself trigger a
/// refresh (between the worker's write and its release of the claim) and skew the counts.
async fn is_fresh(job: &JobHandle<TestJob>, n: u64) -> bool {
    job.peek(n)
        .await
        .unwrap()
        .is_some_and(|p| p.freshness == Freshness::Fresh && p.value.is_some())
}

fn value(lookup: &cacheback::Lookup<String>) -> Option<&str> {
    lookup.value.as_deref().map(String::as_str)
}

// The queue's Redis is down: the read still returns within the queue's timeout, and the key is
// refreshed in this process (the default fallback).
#[tokio::test]
async fn unreachable_queue_falls_back_to_a_local_refresh() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let Some(mut down) = RedisServer::start() else {
        return;
    };
    down.stop();
    let clock = TestClock::new();
    let upstream = Arc::new(Upstream::default());
    let web = Cacheback::builder()
        .prefix("fallback")
        .clock(clock.clone())
        .store(RedisStore::from_url(&server.url()).unwrap())
        .queue(Fx::queue_for(&down, "fallback", Duration::from_secs(30)))
        .build()
        .unwrap();
    let squares = web.job(TestJob {
        name: "squares",
        policy: policy(),
        upstream: Arc::clone(&upstream),
    });
    squares.set(13, "old".into()).await.unwrap();
    clock.advance(LIFETIME);
    let started = std::time::Instant::now();
    let read = squares.get_with_status(13).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the timeout"
    );
    assert_eq!((read.status, value(&read)), (Status::Stale, Some("old")));
    assert!(read.refresh_triggered, "refreshed locally instead");
    eventually("refreshed by the local fallback", WITHIN, || async {
        is_fresh(&squares, 13).await
    })
    .await;
    assert_eq!(upstream.calls(), 1);
}

// Garbage in the stream (no `m` field, bytes that do not decode, an empty message) and a job
// the worker does not know are dead-lettered with the reason, the raw bytes and the delivery
// count; the worker keeps going.
#[tokio::test]
async fn unknown_jobs_and_malformed_messages_are_dead_lettered() {
    let Some(mut fx) = Fx::new() else { return };
    // A job the worker does not know (a deploy mismatch), and raw garbage in the stream.
    let unknown = fx.job("not-on-the-worker", policy().fetch_on_miss(false));
    assert!(unknown.get_with_status(14).await.unwrap().refresh_triggered);
    let stream = format!("{{{}:queue}}:stream:default", fx.prefix);
    let _: String = fx.server.cmd(&["XADD", &stream, "*", "m", "\u{1}garbage"]);
    let _: String = fx.server.cmd(&["XADD", &stream, "*", "other", "field"]);
    let _: String = fx.server.cmd(&["XADD", &stream, "*", "m", ""]);
    // And a good one behind them.
    let squares = fx.job("squares", policy().fetch_on_miss(false));
    assert!(
        squares
            .get_with_status(140)
            .await
            .unwrap()
            .refresh_triggered
    );
    fx.start_default_worker();
    eventually("the good request was processed", WITHIN, || async {
        is_fresh(&squares, 140).await
    })
    .await;
    eventually("all settled", WITHIN, || fx.settled()).await;
    let dead = fx.queue.dead_letters("default", 10).await.unwrap();
    assert_eq!(dead.len(), 4, "{dead:#?}");
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unknown job `not-on-the-worker`")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("no `m` field")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("does not decode")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("empty message")),
        "{reasons:?}"
    );
    let unknown_letter = dead
        .iter()
        .find(|d| d.job.as_deref() == Some("not-on-the-worker"))
        .unwrap();
    assert_eq!(
        unknown_letter.request.as_ref().unwrap().job,
        "not-on-the-worker"
    );
    assert_eq!(unknown_letter.attempt, 1);
    let garbage = dead
        .iter()
        .find(|d| d.reason.contains("does not decode"))
        .unwrap();
    assert_eq!(
        garbage.message.as_deref(),
        Some(&b"\x01garbage"[..]),
        "raw message kept"
    );
    let reports = fx.stop_workers().await;
    assert_eq!((reports[0].processed, reports[0].dead_lettered), (1, 4));
}

// Garbage bytes over an entry, or a valid envelope around garbage value bytes: read as a miss,
// counted, and overwritten by the fetch.
#[tokio::test]
async fn corrupt_entry_bytes_are_misses() {
    let Some(fx) = Fx::new() else {
        return;
    };
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let squares = metrics::with_local_recorder(&recorder, || fx.job("squares", policy()));
    let decode_errors = || {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .find(|(key, ..)| key.key().name() == "cacheback_decode_errors_total")
            .map(|(.., value)| value)
    };
    squares.set(15, "old".into()).await.unwrap();
    let redis_key = format!("{{{}}}", squares.key(&15).unwrap());
    // Plain garbage.
    let _: () = fx.server.cmd(&["SET", &redis_key, "garbage bytes"]);
    let read = squares.get_with_status(15).await.unwrap();
    assert_eq!(
        read.status,
        Status::MissFetched,
        "a corrupt entry is a miss"
    );
    assert_eq!(value(&read), Some("value 15 #1"));
    assert_eq!(
        decode_errors(),
        Some(metrics_util::debugging::DebugValue::Counter(1))
    );
    assert_eq!(
        squares.get_with_status(15).await.unwrap().status,
        Status::Hit,
        "overwritten"
    );
    // A valid envelope whose value bytes are garbage.
    let _: i64 = fx.server.cmd(&["SETRANGE", &redis_key, "48", "\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}"]);
    let read = squares.get_with_status(15).await.unwrap();
    assert_eq!(read.status, Status::MissFetched);
    // (A snapshot drains the counters: this is the count since the last one.)
    assert_eq!(
        decode_errors(),
        Some(metrics_util::debugging::DebugValue::Counter(1))
    );
    assert_eq!(
        squares.get_with_status(15).await.unwrap().status,
        Status::Hit
    );
}

// A worker killed mid-refresh: the message is redelivered after the visibility timeout and
// the refresh completes on another worker. (The real `kill -9` of a worker process is in
// `redis_processes.rs`.) After too many deliveries, it is dead-lettered.
#[tokio::test]
async fn an_abandoned_refresh_is_redelivered_then_dead_lettered() {
    let Some(mut fx) = Fx::new() else { return };
    let squares = fx.job("squares", policy().fetch_on_miss(false));
    assert!(squares.get_with_status(16).await.unwrap().refresh_triggered);
    // A worker that takes the message and dies before acknowledging it.
    let visibility = Duration::from_millis(300);
    let dying = Fx::queue_for(&fx.server, &fx.prefix, visibility);
    let taken = cacheback::queue::Queue::receive(&dying, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].attempt, 1);
    drop(dying);
    let survivor = Fx::queue_for(&fx.server, &fx.prefix, visibility);
    fx.start_worker(&["squares"], survivor, WorkerOptions::default());
    eventually("refreshed by the surviving worker", WITHIN, || async {
        is_fresh(&squares, 16).await
    })
    .await;
    assert_eq!(fx.upstream.calls(), 1);
    eventually("acknowledged", WITHIN, || fx.settled()).await;
    fx.stop_workers().await;

    // Now a message nobody ever completes: delivered 3 times, dead-lettered on the 4th.
    assert!(
        squares
            .get_with_status(160)
            .await
            .unwrap()
            .refresh_triggered
    );
    let flaky = Fx::queue_for(&fx.server, &fx.prefix, Duration::from_millis(20));
    let mut attempts = Vec::new();
    for _ in 0..1000 {
        if attempts.len() >= 3 {
            break;
        }
        for d in cacheback::queue::Queue::receive(&flaky, 10).await.unwrap() {
            attempts.push(d.attempt);
        }
    }
    assert_eq!(attempts, [1, 2, 3], "delivery counts come from Redis");
    fx.stop = CancellationToken::new();
    let last = Fx::queue_for(&fx.server, &fx.prefix, Duration::from_millis(20));
    fx.start_worker(
        &["squares"],
        last,
        WorkerOptions::default().max_deliveries(3),
    );
    eventually("dead-lettered", WITHIN, || async {
        !fx.queue
            .dead_letters("default", 1)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let dead = fx.queue.dead_letters("default", 1).await.unwrap();
    assert!(
        dead[0].reason.contains("delivered 4 times"),
        "{:?}",
        dead[0]
    );
    assert_eq!(dead[0].attempt, 4);
    fx.stop_workers().await;
}

// Redis restarted mid-run: reads degrade as configured (fetch without the cache, or fail),
// within a bounded time, nothing panics, and everything recovers on its own. (Two runtime
// threads, as in a server: the connection's reconnection attempts run in the background while
// Redis is down, and fail.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_degrades_then_recovers() {
    let Some(mut fx) = Fx::new() else { return };
    let squares = fx.job("squares", policy());
    let strict = Cacheback::builder()
        .prefix(fx.prefix.clone())
        .clock(fx.clock.clone())
        .store(
            RedisStore::builder(&fx.server.url())
                .command_timeout(Duration::from_millis(200))
                .connect_timeout(Duration::from_millis(200))
                .build()
                .unwrap(),
        )
        .queue(fx.queue.clone())
        .store_fallback(StoreFallback::Fail)
        .build()
        .unwrap()
        .job(TestJob {
            name: "squares",
            policy: policy(),
            upstream: Arc::clone(&fx.upstream),
        });
    fx.start_default_worker();
    squares.set(17, "cached".into()).await.unwrap();
    assert_eq!(
        squares.get_with_status(17).await.unwrap().status,
        Status::Hit
    );

    fx.server.stop();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let read = squares.get_with_status(17).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(4), "bounded");
        assert_eq!(read.status, Status::Bypassed, "read without the cache");
        let started = std::time::Instant::now();
        let err = strict.get_with_status(17).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "bounded");
        assert!(
            matches!(
                err,
                Error::Store {
                    backend: "redis",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    fx.server.restart();
    // Redis answers again: the very first command of a connection whose last reconnection
    // attempt failed during the outage succeeds (it reconnects, rather than returning the
    // outage's stale error). The data is gone (no persistence): a miss, fetched.
    let first = strict.get_with_status(17).await;
    assert!(
        first
            .as_ref()
            .is_ok_and(|r| r.status == Status::MissFetched),
        "the first read after the restart reaches Redis: {first:?}"
    );
    eventually("reads recovered", WITHIN, || async {
        squares.get_with_status(17).await.unwrap().status == Status::Hit
    })
    .await;
    assert_eq!(
        strict.get_with_status(17).await.unwrap().status,
        Status::Hit
    );
    // The worker recovered too: the consumer group is recreated.
    fx.clock.advance(LIFETIME);
    assert!(squares.get_with_status(17).await.unwrap().refresh_triggered);
    eventually("the worker refreshed after the restart", WITHIN, || async {
        is_fresh(&squares, 17).await
    })
    .await;
    fx.stop_workers().await;
}

/// A `RedisStore` that counts the claims it finds held (what a reader waiting for another
/// process's fetch sees), and otherwise forwards every call.
#[derive(Debug)]
struct CountingHeld {
    inner: RedisStore,
    held: Arc<AtomicUsize>,
}

impl Store for CountingHeld {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn get<'a>(
        &'a self,
        key: Key<'a>,
    ) -> BoxFuture<'a, cacheback::Result<Option<cacheback::store::Entry>>> {
        self.inner.get(key)
    }

    fn put<'a>(
        &'a self,
        key: Key<'a>,
        put: cacheback::store::Put,
    ) -> BoxFuture<'a, cacheback::Result<cacheback::store::PutOutcome>> {
        self.inner.put(key, put)
    }

    fn claim<'a>(
        &'a self,
        key: Key<'a>,
        now: Timestamp,
        ttl: Duration,
    ) -> BoxFuture<'a, cacheback::Result<ClaimOutcome>> {
        Box::pin(async move {
            let outcome = self.inner.claim(key, now, ttl).await;
            if matches!(outcome, Ok(ClaimOutcome::Held { .. })) {
                self.held.fetch_add(1, Ordering::SeqCst);
            }
            outcome
        })
    }

    fn release<'a>(
        &'a self,
        key: Key<'a>,
        token: ClaimToken,
        release: Release,
    ) -> BoxFuture<'a, cacheback::Result<()>> {
        self.inner.release(key, token, release)
    }

    fn put_and_release<'a>(
        &'a self,
        key: Key<'a>,
        put: cacheback::store::Put,
        token: ClaimToken,
    ) -> BoxFuture<'a, cacheback::Result<cacheback::store::PutOutcome>> {
        self.inner.put_and_release(key, put, token)
    }

    fn claim_state<'a>(
        &'a self,
        key: Key<'a>,
        now: Timestamp,
    ) -> BoxFuture<'a, cacheback::Result<cacheback::store::ClaimState>> {
        self.inner.claim_state(key, now)
    }
}

/// How another process's fetch of a cold key ends, seen by a reader of a job that coalesces
/// misses across the fleet.
enum Holder {
    /// It gives up (its fetch failed): the claim is released without a write.
    GivesUp,
    /// It crashed: its claim stays until it expires.
    Crashes,
}

/// A reader finds the key's claim held by "another process" (the test, through the store):
/// it does not fetch while the claim is live, and fetches once when the holder lets go.
async fn cold_key_waits_for_the_claim_holder(holder: Holder) {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("fleetmiss");
    let clock = TestClock::new();
    let held = Arc::new(AtomicUsize::new(0));
    let store = CountingHeld {
        inner: RedisStore::from_url(&server.url()).unwrap(),
        held: Arc::clone(&held),
    };
    let cache = Cacheback::builder()
        .prefix(&prefix)
        .clock(clock.clone())
        .store(store)
        .build()
        .unwrap();
    let upstream = Arc::new(Upstream::default());
    let job = cache.job(TestJob {
        name: "cold",
        policy: policy().fleet_coalescing(true),
        upstream: Arc::clone(&upstream),
    });
    let other = RedisStore::from_url(&server.url()).unwrap();
    let key_text = job.key(&7).unwrap();
    let key = Key::parse(&key_text).unwrap();
    let claim_ttl = Duration::from_secs(60);
    let Ok(ClaimOutcome::Won { token, .. }) = other.claim(key, clock.now(), claim_ttl).await else {
        panic!("the other process could not take the claim");
    };
    let reader = tokio::spawn({
        let job = job.clone();
        async move { job.get(7).await }
    });
    eventually("the reader found the claim held twice", WITHIN, || async {
        held.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(
        upstream.calls(),
        0,
        "no fetch while another process holds the claim"
    );
    match holder {
        Holder::GivesUp => other.release(key, token, Release::Abandoned).await.unwrap(),
        Holder::Crashes => clock.advance(claim_ttl + Duration::from_millis(1)),
    }
    let value = reader.await.unwrap().unwrap();
    assert_eq!(*value, "value 7 #1");
    assert_eq!(upstream.calls(), 1);
    let peeked = job.peek(7).await.unwrap().unwrap();
    assert_eq!(
        peeked.value.as_deref().map(String::as_str),
        Some("value 7 #1")
    );
    // The reader's write released its claim: the key can be claimed again.
    let again = other.claim(key, clock.now(), claim_ttl).await.unwrap();
    assert!(matches!(again, ClaimOutcome::Won { .. }), "{again:?}");
}

#[tokio::test]
async fn a_cold_key_whose_fetching_process_gives_up_is_fetched_by_a_waiting_reader() {
    cold_key_waits_for_the_claim_holder(Holder::GivesUp).await;
}

#[tokio::test]
async fn a_cold_key_whose_fetching_process_crashed_is_fetched_once_its_claim_expires() {
    cold_key_waits_for_the_claim_holder(Holder::Crashes).await;
}

/// Fails every fetch, once let through its gate; says when a fetch has started.
struct FailsAtGate {
    started: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl Job for FailsAtGate {
    type Args = u64;
    type Value = String;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        "failing"
    }

    fn policy(&self) -> Policy {
        policy().fleet_coalescing(true)
    }

    async fn fetch(&self, _: u64) -> Result<String, std::io::Error> {
        self.started.fetch_add(1, Ordering::SeqCst);
        drop(self.gate.acquire().await);
        Err(std::io::Error::other("upstream down"))
    }
}

#[tokio::test]
async fn readers_waiting_for_a_fetch_that_fails_back_off_with_it() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("fleetfail");
    let clock = TestClock::new();
    let started = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::new(AtomicUsize::new(0));
    let url = server.url();
    // Two "processes": A fetches, B finds A's claim (its store counts what it finds held).
    let a = Cacheback::builder()
        .prefix(&prefix)
        .clock(clock.clone())
        .store(RedisStore::from_url(&url).unwrap())
        .build()
        .unwrap();
    let b = Cacheback::builder()
        .prefix(&prefix)
        .clock(clock.clone())
        .store(CountingHeld {
            inner: RedisStore::from_url(&url).unwrap(),
            held: Arc::clone(&held),
        })
        .build()
        .unwrap();
    let job = |cache: &Cacheback| {
        cache.job(FailsAtGate {
            started: Arc::clone(&started),
            gate: Arc::clone(&gate),
        })
    };
    let (job_a, job_b) = (job(&a), job(&b));
    let read_a = tokio::spawn(async move { job_a.get(1).await });
    eventually("A's fetch started", WITHIN, || async {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    let read_b = tokio::spawn(async move { job_b.get(1).await });
    eventually("B waiting for A's fetch", WITHIN, || async {
        held.load(Ordering::SeqCst) >= 2
    })
    .await;
    gate.add_permits(1);
    let error_a = read_a.await.unwrap().unwrap_err();
    assert!(matches!(error_a, Error::Fetch { .. }), "{error_a:?}");
    let error_b = read_b.await.unwrap().unwrap_err();
    assert!(
        matches!(error_b, Error::BackingOff { failures: 1, .. }),
        "B shares A's failure: {error_b:?}"
    );
    assert_eq!(started.load(Ordering::SeqCst), 1, "one fetch in the fleet");
}
