//! SPEC §10 acceptance behaviours 1–17 on Redis: a client with `RedisStore` + `RedisQueue`,
//! and a `Worker` (its own client, as in a worker process) on the same runtime, each test on
//! its own spawned `redis-server`.
//!
//! Freshness runs on a `TestClock`; where real Redis round trips and the worker are involved,
//! the tests poll a condition with a bounded loop (`eventually`) instead of sleeping.

#![cfg(feature = "redis")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cacheback::clock::{Clock, TestClock};
use cacheback::worker::WorkerReport;
use cacheback::{
    Backoff, Cacheback, Error, Freshness, Job, JobHandle, Policy, RedisQueue, RedisStore, Status,
    StoreFallback, Worker, WorkerOptions,
};
use support::{RedisServer, eventually, unique_prefix};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LIFETIME: Duration = Duration::from_secs(10);
const STALE_TTL: Duration = Duration::from_secs(100);
const WITHIN: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Ok,
    Fail,
}

/// A fake slow upstream: counts calls, can fail or wait at a gate.
#[derive(Default)]
struct Upstream {
    calls: AtomicUsize,
    mode: Mutex<Option<Mode>>,
    gate: Mutex<Option<Arc<Notify>>>,
}

impl Upstream {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = Some(mode);
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
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(gate) = gate {
            gate.notified().await;
        }
        match self.mode.lock().unwrap().unwrap_or(Mode::Ok) {
            Mode::Ok => Ok(format!("value {n} #{call}")),
            Mode::Fail => Err(std::io::Error::other("upstream is down")),
        }
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

    async fn queued(&self) -> u64 {
        self.queue.len("default").await.unwrap()
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

// 1. A miss with fetch_on_miss fetches once, returns the value, stores it Fresh for lifetime.
#[tokio::test]
async fn miss_fetches_once_and_stores_fresh() {
    let Some(fx) = Fx::new() else { return };
    let squares = fx.job("squares", policy());
    let t0 = fx.clock.now();
    let read = squares.get_with_status(1).await.unwrap();
    assert_eq!(read.status, Status::MissFetched);
    assert_eq!(value(&read), Some("value 1 #1"));
    let peek = squares.peek(1).await.unwrap().unwrap();
    assert_eq!(peek.freshness, Freshness::Fresh);
    assert_eq!(peek.meta.fresh_until, t0.saturating_add(LIFETIME));
    fx.clock.advance(LIFETIME - Duration::from_millis(1));
    assert_eq!(
        squares.get_with_status(1).await.unwrap().status,
        Status::Hit
    );
    assert_eq!(fx.upstream.calls(), 1);
}

// 2 + 3. A miss without fetch_on_miss returns empty and enqueues exactly one refresh; a second
// read while it is claimed enqueues nothing; after the worker runs, the value is there.
#[tokio::test]
async fn miss_without_fetch_enqueues_one_refresh_for_the_worker() {
    let Some(mut fx) = Fx::new() else { return };
    let squares = fx.job("squares", policy().fetch_on_miss(false));
    let first = squares.get_with_status(2).await.unwrap();
    assert_eq!((first.status, first.value.is_none()), (Status::Miss, true));
    assert!(first.refresh_triggered);
    let second = squares.get_with_status(2).await.unwrap();
    assert_eq!(second.status, Status::Miss);
    assert!(!second.refresh_triggered, "claimed: nothing more enqueued");
    assert_eq!(fx.queued().await, 1);
    assert_eq!(fx.upstream.calls(), 0, "the reader never fetches");

    fx.start_default_worker();
    eventually("the worker refreshed the key", WITHIN, || async {
        is_fresh(&squares, 2).await
    })
    .await;
    assert_eq!(
        squares
            .get_cached(2)
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("value 2 #1")
    );
    assert_eq!(fx.upstream.calls(), 1);
    eventually("the queue drained", WITHIN, || fx.settled()).await;
    let reports = fx.stop_workers().await;
    assert_eq!(reports[0].processed, 1);
}

// 4. A fresh hit calls no fetch and enqueues nothing.
#[tokio::test]
async fn fresh_hit_fetches_and_enqueues_nothing() {
    let Some(fx) = Fx::new() else { return };
    let squares = fx.job("squares", policy());
    squares.set(4, "four".into()).await.unwrap();
    for _ in 0..10 {
        let read = squares.get_with_status(4).await.unwrap();
        assert_eq!((read.status, value(&read)), (Status::Hit, Some("four")));
        assert!(!read.refresh_triggered);
    }
    assert_eq!(fx.upstream.calls(), 0);
    assert_eq!(fx.queued().await, 0);
}

// 5. A stale hit returns the stale value at once and enqueues exactly one refresh, even with
// 64 concurrent readers; and the 64 readers of one process ask Redis for the claim once (the
// others know it is in flight), so a burst costs Redis 64 GETs and one claim script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_burst_of_64_readers_enqueues_one_refresh() {
    let Some(mut fx) = Fx::new() else { return };
    let squares = fx.job("squares", policy());
    squares.set(5, "old".into()).await.unwrap();
    // Another stale key read once first, so Redis has loaded the claim script before the count.
    squares.set(50, "other".into()).await.unwrap();
    fx.clock.advance(LIFETIME);
    assert!(squares.get_with_status(50).await.unwrap().refresh_triggered);
    let claims = || fx.server.command_calls("evalsha");
    let claims_before = claims();
    let reads = (0..64).map(|_| {
        let squares = squares.clone();
        tokio::spawn(async move { squares.get_with_status(5).await.unwrap() })
    });
    let reads = futures_util::future::join_all(reads).await;
    let mut triggered = 0;
    for read in reads {
        let read = read.unwrap();
        assert_eq!((read.status, value(&read)), (Status::Stale, Some("old")));
        triggered += usize::from(read.refresh_triggered);
    }
    assert_eq!(triggered, 1, "exactly one reader enqueues");
    assert_eq!(
        claims() - claims_before,
        1,
        "one claim script for the whole burst"
    );
    assert_eq!(
        fx.queued().await,
        2,
        "exactly one message in the stream for key 5"
    );

    fx.start_default_worker();
    eventually("refreshed", WITHIN, || async {
        is_fresh(&squares, 5).await && is_fresh(&squares, 50).await
    })
    .await;
    assert_eq!(fx.upstream.calls(), 2, "one fetch each for keys 5 and 50");
    fx.stop_workers().await;
}

// 6. Stale beyond stale_threshold fetches synchronously; at exactly the threshold it does not.
#[tokio::test]
async fn stale_threshold_is_exclusive() {
    let Some(fx) = Fx::new() else { return };
    let threshold = Duration::from_secs(5);
    let squares = fx.job("squares", policy().stale_threshold(threshold));
    squares.set(6, "old".into()).await.unwrap();
    fx.clock.advance(LIFETIME + threshold);
    let at = squares.get_with_status(6).await.unwrap();
    assert_eq!((at.status, value(&at)), (Status::Stale, Some("old")));
    assert_eq!(fx.upstream.calls(), 0);
    fx.clock.advance(Duration::from_millis(1));
    let beyond = squares.get_with_status(6).await.unwrap();
    assert_eq!(beyond.status, Status::StaleRefetched);
    assert_eq!(value(&beyond), Some("value 6 #1"));
}

// 7. Past stale_ttl the key is a miss.
#[tokio::test]
async fn past_stale_ttl_is_a_miss() {
    let Some(fx) = Fx::new() else { return };
    let squares = fx.job("squares", policy().fetch_on_miss(false));
    squares.set(7, "old".into()).await.unwrap();
    fx.clock
        .advance(LIFETIME + STALE_TTL - Duration::from_millis(1));
    assert_eq!(
        squares.get_with_status(7).await.unwrap().status,
        Status::Stale
    );
    fx.clock.advance(Duration::from_millis(1));
    let read = squares.get_with_status(7).await.unwrap();
    assert_eq!((read.status, read.value), (Status::Miss, None));
}

// 8. refresh fetches and stores; set stores without fetching; peek shows metadata; delete
// removes; deleting a missing key is not an error.
#[tokio::test]
async fn refresh_set_peek_delete() {
    let Some(fx) = Fx::new() else { return };
    let squares = fx.job("squares", policy());
    assert_eq!(*squares.refresh(8).await.unwrap(), "value 8 #1");
    assert_eq!(
        squares.get_with_status(8).await.unwrap().status,
        Status::Hit
    );
    squares.set(8, "set".into()).await.unwrap();
    assert_eq!(fx.upstream.calls(), 1);
    let peek = squares.peek(8).await.unwrap().unwrap();
    assert_eq!(peek.value.as_deref().map(String::as_str), Some("set"));
    assert_eq!(peek.meta.generation, 2);
    assert_eq!(peek.key, squares.key(&8).unwrap());
    assert!(peek.claim.claim.is_none());
    squares.delete(8).await.unwrap();
    assert!(squares.peek(8).await.unwrap().is_none());
    squares.delete(8).await.unwrap();
    squares.delete(80).await.unwrap();
    let read = squares.get_with_status(8).await.unwrap();
    assert_eq!(read.status, Status::MissFetched);
}

// 9. invalidate of a present key keeps serving the old value and enqueues one refresh; of a
// missing key enqueues nothing.
#[tokio::test]
async fn invalidate_keeps_serving_and_enqueues_once() {
    let Some(fx) = Fx::new() else { return };
    let squares = fx.job("squares", policy());
    squares.set(9, "old".into()).await.unwrap();
    assert!(squares.invalidate(9).await.unwrap());
    let read = squares.get_with_status(9).await.unwrap();
    assert_eq!((read.status, value(&read)), (Status::Stale, Some("old")));
    assert!(!read.refresh_triggered);
    assert_eq!(fx.queued().await, 1);
    assert!(!squares.invalidate(90).await.unwrap());
    assert_eq!(fx.queued().await, 1);
}

// 10. The worker (another client, as in another process) writes exactly the key the reader
// reads, and two jobs with the same args never collide.
#[tokio::test]
async fn worker_writes_the_readers_key_and_jobs_do_not_collide() {
    let Some(mut fx) = Fx::new() else { return };
    let a = fx.job("squares", policy().fetch_on_miss(false));
    let b = fx.job("cubes", policy());
    b.set(10, "cube".into()).await.unwrap();
    assert_ne!(a.key(&10).unwrap(), b.key(&10).unwrap());
    assert!(a.get_cached(10).await.unwrap().is_none());
    let queue = Fx::queue_for(&fx.server, &fx.prefix, Duration::from_secs(30));
    fx.start_worker(&["squares", "cubes"], queue, WorkerOptions::default());
    eventually("refreshed by the worker", WITHIN, || async {
        is_fresh(&a, 10).await
    })
    .await;
    assert_eq!(*a.get_cached(10).await.unwrap().unwrap(), "value 10 #1");
    assert_eq!(*b.get(10).await.unwrap(), "cube");
    fx.stop_workers().await;
}

// 11. A failed fetch keeps the old value; the next reads do not enqueue before retry_after,
// whichever process they are in (the failure state is in Redis).
#[tokio::test]
async fn failed_refresh_keeps_the_value_and_backs_off_fleet_wide() {
    let Some(mut fx) = Fx::new() else { return };
    let squares = fx.job("squares", policy());
    squares.set(11, "old".into()).await.unwrap();
    fx.clock.advance(LIFETIME);
    fx.upstream.set_mode(Mode::Fail);
    assert!(squares.get_with_status(11).await.unwrap().refresh_triggered);
    fx.start_default_worker();
    eventually("the failure was recorded", WITHIN, || async {
        squares.peek(11).await.unwrap().unwrap().claim.failures == 1
    })
    .await;
    eventually("the queue drained", WITHIN, || fx.settled()).await;
    let peek = squares.peek(11).await.unwrap().unwrap();
    let retry_after = peek.claim.retry_after.unwrap();
    assert_eq!(
        retry_after,
        fx.clock.now().saturating_add(Duration::from_secs(1))
    );
    // Another "process" sees the same backoff.
    let other = Cacheback::builder()
        .prefix(fx.prefix.clone())
        .clock(fx.clock.clone())
        .store(RedisStore::from_url(&fx.server.url()).unwrap())
        .queue(fx.queue.clone())
        .build()
        .unwrap();
    let other = other.job(TestJob {
        name: "squares",
        policy: policy(),
        upstream: Arc::clone(&fx.upstream),
    });
    for handle in [&squares, &other] {
        let read = handle.get_with_status(11).await.unwrap();
        assert_eq!((read.status, value(&read)), (Status::Stale, Some("old")));
        assert!(!read.refresh_triggered, "no enqueue before retry_after");
    }
    assert_eq!(fx.queued().await, 0);
    fx.clock.advance(Duration::from_secs(1));
    fx.upstream.set_mode(Mode::Ok);
    assert!(other.get_with_status(11).await.unwrap().refresh_triggered);
    eventually("refreshed after the backoff", WITHIN, || async {
        is_fresh(&squares, 11).await
    })
    .await;
    assert_eq!(squares.peek(11).await.unwrap().unwrap().claim.failures, 0);
    fx.stop_workers().await;
}

// 12. A refresh that raced a set or a delete does not overwrite it.
#[tokio::test]
async fn a_refresh_racing_set_or_delete_does_not_overwrite() {
    let Some(mut fx) = Fx::new() else { return };
    let squares = fx.job("squares", policy());
    for (n, delete) in [(12, false), (120, true)] {
        squares.set(n, "old".into()).await.unwrap();
        fx.clock.advance(LIFETIME);
        fx.upstream.close_gate();
        assert!(squares.get_with_status(n).await.unwrap().refresh_triggered);
        if fx.workers.is_empty() {
            fx.start_default_worker();
        }
        let before = fx.upstream.calls();
        eventually("the worker's fetch started", WITHIN, || async {
            fx.upstream.calls() > before
        })
        .await;
        if delete {
            squares.delete(n).await.unwrap();
        } else {
            squares.set(n, "newer".into()).await.unwrap();
        }
        fx.upstream.open_gate();
        eventually("the refresh finished", WITHIN, || fx.settled()).await;
        let peek = squares.peek(n).await.unwrap();
        if delete {
            assert!(
                peek.is_none(),
                "a late refresh must not resurrect a deleted key"
            );
        } else {
            let value = peek.unwrap().value.unwrap();
            assert_eq!(*value, "newer", "a late refresh must not overwrite a set");
        }
    }
    fx.stop_workers().await;
}

// 13. If the queue cannot accept the refresh, the read still returns and the key still gets
// refreshed (local fallback).
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

// 14. Unknown job names and malformed messages are dead-lettered with a reason; the worker
// keeps going.
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

// 15. A corrupt entry reads as a miss (and is counted); an oversized value is rejected with a
// clear error and the old entry kept.
#[tokio::test]
async fn corrupt_entries_are_misses_and_oversized_values_are_refused() {
    let Some(fx) = Fx::with(|b| b.max_value_bytes(64)) else {
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

    // Oversized.
    let before = squares.get(15).await.unwrap();
    let err = squares.set(15, "x".repeat(100)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                size: 101,
                limit: 64,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "value of job `squares` is 101 bytes, over the limit of 64 bytes"
    );
    assert_eq!(squares.get(15).await.unwrap(), before, "old entry kept");
}

// 16. A worker killed mid-refresh: the message is redelivered after the visibility timeout and
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

// 17. Redis restarted mid-run: reads degrade as configured (fetch without the cache, or fail),
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
