//! SPEC §10 acceptance behaviours on the embedded backends (memory store, local queue,
//! in-process worker). Wall-clock freshness runs on a `TestClock`; in-process timing on
//! `tokio::time::pause()`. Nothing here sleeps on real time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cacheback::clock::TestClock;
use cacheback::queue::Queue;
use cacheback::queue::{EnqueueError, RefreshRequest};
use cacheback::{
    Backoff, Cacheback, Error, Event, Freshness, Job, JobHandle, LocalQueue, MemoryStore, Policy,
    QueueFallback, Status, job_fn,
};
use futures_util::future::BoxFuture;
use tokio::sync::{Notify, mpsc};

const LIFETIME: Duration = Duration::from_secs(10);
const STALE_TTL: Duration = Duration::from_secs(100);

/// What the fake upstream does on its next calls.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Ok,
    Fail,
    Panic,
    Hang,
}

/// A fake slow upstream: counts calls, can fail, panic, hang, or wait at a gate.
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
    /// Fetches wait until the returned notify is triggered (`notify_waiters`/`notify_one`).
    fn close_gate(&self) -> Arc<Notify> {
        let gate = Arc::new(Notify::new());
        *self.gate.lock().unwrap() = Some(Arc::clone(&gate));
        gate
    }
    fn open_gate(&self) {
        if let Some(gate) = self.gate.lock().unwrap().take() {
            gate.notify_waiters();
        }
    }
    async fn fetch(&self, n: u64) -> Result<String, std::io::Error> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let gate = self.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.notified().await;
        }
        let mode = self.mode.lock().unwrap().unwrap_or(Mode::Ok);
        match mode {
            Mode::Ok => Ok(format!("value {n} #{call}")),
            Mode::Fail => Err(std::io::Error::other("upstream is down")),
            Mode::Panic => panic!("upstream exploded"),
            Mode::Hang => std::future::pending().await,
        }
    }
}

/// The job under test: squares... of a sort; the fake upstream does the work.
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

struct Fixture {
    cache: Cacheback,
    clock: TestClock,
    queue: LocalQueue,
    upstream: Arc<Upstream>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Fixture {
    fn new(worker: bool) -> Self {
        Self::with(worker, LocalQueue::new(1000), |b| b)
    }

    fn with(
        worker: bool,
        queue: LocalQueue,
        configure: impl FnOnce(cacheback::CachebackBuilder) -> cacheback::CachebackBuilder,
    ) -> Self {
        let clock = TestClock::new();
        let (tx, events) = mpsc::unbounded_channel();
        let builder = Cacheback::builder()
            .clock(clock.clone())
            .queue(queue.clone())
            .in_process_worker(worker)
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
        let deadline = Duration::from_secs(3600);
        tokio::time::timeout(deadline, async {
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

    async fn refreshed(&mut self) -> Event {
        self.event(|e| matches!(e, Event::Refreshed { .. })).await
    }
}

fn is_failed(e: &Event) -> bool {
    matches!(e, Event::RefreshFailed { .. })
}

// 1. Miss with fetch_on_miss fetches once, returns the value, stores it Fresh for lifetime.
#[tokio::test(start_paused = true)]
async fn miss_with_fetch_on_miss_fetches_once_and_stores_fresh() {
    let fx = Fixture::new(true);
    let squares = fx.job(policy());
    let first = squares.get_with_status(3).await.unwrap();
    assert_eq!(first.status, Status::MissFetched);
    assert_eq!(
        first.value.as_deref().map(String::as_str),
        Some("value 3 #1")
    );
    let second = squares.get_with_status(3).await.unwrap();
    assert_eq!(second.status, Status::Hit);
    assert_eq!(fx.upstream.calls(), 1);
    let peek = squares.peek(3).await.unwrap().expect("stored");
    assert_eq!(peek.freshness, Freshness::Fresh);
    assert_eq!(peek.meta.fresh_until.since(peek.meta.fetched_at), LIFETIME);
    assert_eq!(
        peek.meta.stale_until.since(peek.meta.fresh_until),
        STALE_TTL
    );
    fx.clock.advance(LIFETIME - Duration::from_millis(1));
    assert_eq!(
        squares.get_with_status(3).await.unwrap().status,
        Status::Hit
    );
    fx.clock.advance(Duration::from_millis(1));
    assert_eq!(
        squares.get_with_status(3).await.unwrap().status,
        Status::Stale
    );
}

// 2. Miss without fetch_on_miss returns empty at once and enqueues exactly one refresh; after
//    the worker runs, the next read returns the fetched value.
#[tokio::test(start_paused = true)]
async fn miss_without_fetch_on_miss_returns_empty_and_enqueues_one_refresh() {
    let mut fx = Fixture::new(true);
    let squares = fx.job(policy().fetch_on_miss(false));
    let first = squares.get_with_status(4).await.unwrap();
    assert_eq!(first.status, Status::Miss);
    assert!(first.value.is_none());
    assert!(first.refresh_triggered);
    assert_eq!(fx.queue.enqueued(), 1);
    fx.refreshed().await;
    let next = squares.get_with_status(4).await.unwrap();
    assert_eq!(next.status, Status::Hit);
    assert_eq!(
        next.value.as_deref().map(String::as_str),
        Some("value 4 #1")
    );
    assert_eq!(fx.upstream.calls(), 1);
}

// 3. A second read of a missing key while its refresh is claimed enqueues nothing.
#[tokio::test(start_paused = true)]
async fn second_read_of_a_claimed_missing_key_enqueues_nothing() {
    let fx = Fixture::new(false);
    let squares = fx.job(policy().fetch_on_miss(false));
    assert!(squares.get_with_status(5).await.unwrap().refresh_triggered);
    let second = squares.get_with_status(5).await.unwrap();
    assert_eq!(second.status, Status::Miss);
    assert!(!second.refresh_triggered);
    assert_eq!(fx.queue.enqueued(), 1);
}

// 4. A fresh hit calls no fetch and enqueues nothing.
#[tokio::test(start_paused = true)]
async fn fresh_hit_fetches_and_enqueues_nothing() {
    let fx = Fixture::new(false);
    let squares = fx.job(policy());
    squares.set(6, "six".to_owned()).await.unwrap();
    for _ in 0..10 {
        let hit = squares.get_with_status(6).await.unwrap();
        assert_eq!(hit.status, Status::Hit);
        assert_eq!(hit.value.as_deref().map(String::as_str), Some("six"));
        assert!(!hit.refresh_triggered);
    }
    assert_eq!(fx.upstream.calls(), 0);
    assert_eq!(fx.queue.enqueued(), 0);
}

// 5. A stale hit returns the stale value at once and enqueues exactly one refresh, even with 64
//    concurrent readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_stale_readers_cause_one_refresh() {
    let mut fx = Fixture::new(true);
    let squares = fx.job(policy());
    squares.set(7, "old".to_owned()).await.unwrap();
    fx.clock.advance(LIFETIME + Duration::from_secs(1));
    let gate = fx.upstream.close_gate();
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let readers: Vec<_> = (0..64)
        .map(|_| {
            let (squares, barrier) = (squares.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                squares.get_with_status(7).await.unwrap()
            })
        })
        .collect();
    let mut triggered = 0;
    for reader in readers {
        let lookup = reader.await.unwrap();
        assert_eq!(lookup.status, Status::Stale);
        assert_eq!(lookup.value.as_deref().map(String::as_str), Some("old"));
        triggered += usize::from(lookup.refresh_triggered);
    }
    // Every reader has its answer while the (gated) fetch is still running.
    assert_eq!(triggered, 1, "exactly one reader triggers the refresh");
    assert_eq!(fx.queue.enqueued(), 1);
    while fx.upstream.calls() == 0 {
        tokio::task::yield_now().await;
    }
    drop(gate);
    fx.upstream.open_gate();
    fx.refreshed().await;
    assert_eq!(fx.upstream.calls(), 1, "exactly one fetch");
    let after = squares.get_with_status(7).await.unwrap();
    assert_eq!(after.status, Status::Hit);
    assert_eq!(
        after.value.as_deref().map(String::as_str),
        Some("value 7 #1")
    );
}

// 64 concurrent misses of one key with fetch_on_miss share exactly one fetch, and all 64 get
// the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_misses_share_one_fetch() {
    let fx = Fixture::new(false);
    let squares = fx.job(policy());
    let gate = fx.upstream.close_gate();
    let barrier = Arc::new(tokio::sync::Barrier::new(65));
    let readers: Vec<_> = (0..64)
        .map(|_| {
            let (squares, barrier) = (squares.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                squares.get_with_status(8).await.unwrap()
            })
        })
        .collect();
    barrier.wait().await;
    while fx.upstream.calls() == 0 {
        tokio::task::yield_now().await;
    }
    drop(gate);
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    fx.upstream.open_gate();
    let mut values = 0;
    for reader in readers {
        let lookup = reader.await.unwrap();
        // A reader scheduled after the fetch landed finds it in the store: a hit is fine, a
        // second fetch is not.
        assert!(
            matches!(lookup.status, Status::MissFetched | Status::Hit),
            "{lookup:?}"
        );
        assert_eq!(
            lookup.value.as_deref().map(String::as_str),
            Some("value 8 #1")
        );
        values += 1;
    }
    assert_eq!(values, 64);
    assert_eq!(
        fx.upstream.calls(),
        1,
        "64 concurrent misses must share one fetch"
    );
}

// 6. Stale beyond stale_threshold fetches synchronously; at exactly the threshold it does not.
#[tokio::test(start_paused = true)]
async fn stale_threshold_is_exclusive() {
    let fx = Fixture::new(false);
    let threshold = Duration::from_secs(30);
    let squares = fx.job(policy().stale_threshold(threshold));
    squares.set(9, "old".to_owned()).await.unwrap();
    fx.clock.advance(LIFETIME + threshold);
    let at = squares.get_with_status(9).await.unwrap();
    assert_eq!(
        at.status,
        Status::Stale,
        "exactly at the threshold: serve stale"
    );
    assert_eq!(fx.upstream.calls(), 0);
    fx.clock.advance(Duration::from_millis(1));
    let beyond = squares.get_with_status(9).await.unwrap();
    assert_eq!(beyond.status, Status::StaleRefetched);
    assert_eq!(
        beyond.value.as_deref().map(String::as_str),
        Some("value 9 #1")
    );
    assert_eq!(fx.upstream.calls(), 1);
    assert_eq!(
        squares.get_with_status(9).await.unwrap().status,
        Status::Hit
    );
}

// 7. Past stale_ttl the key is a miss.
#[tokio::test(start_paused = true)]
async fn past_stale_ttl_is_a_miss() {
    let fx = Fixture::new(false);
    let squares = fx.job(policy().fetch_on_miss(false));
    squares.set(10, "old".to_owned()).await.unwrap();
    fx.clock
        .advance(LIFETIME + STALE_TTL - Duration::from_millis(1));
    assert_eq!(
        squares.get_with_status(10).await.unwrap().status,
        Status::Stale
    );
    fx.clock.advance(Duration::from_millis(1));
    let expired = squares.get_with_status(10).await.unwrap();
    assert_eq!(expired.status, Status::Miss);
    assert!(expired.value.is_none());
}

// 8. refresh fetches and stores synchronously; set stores without fetching; peek shows the
//    metadata; delete removes; delete of a missing key is not an error.
#[tokio::test(start_paused = true)]
async fn refresh_set_peek_delete() {
    let fx = Fixture::new(false);
    let squares = fx.job(policy());
    let value = squares.refresh(11).await.unwrap();
    assert_eq!(*value, "value 11 #1");
    assert_eq!(fx.upstream.calls(), 1);
    let peek = squares.peek(11).await.unwrap().expect("refresh stores");
    assert_eq!(
        peek.value.as_deref().map(String::as_str),
        Some("value 11 #1")
    );
    assert_eq!(peek.meta.generation, 1);
    assert_eq!(peek.freshness, Freshness::Fresh);
    assert!(peek.key.starts_with("cacheback:squares:"));
    assert_eq!(peek.key, squares.key(&11).unwrap());

    squares.set(11, "set".to_owned()).await.unwrap();
    assert_eq!(fx.upstream.calls(), 1, "set does not fetch");
    let peek = squares.peek(11).await.unwrap().unwrap();
    assert_eq!(peek.value.as_deref().map(String::as_str), Some("set"));
    assert_eq!(peek.meta.generation, 2);

    squares.delete(11).await.unwrap();
    assert!(squares.peek(11).await.unwrap().is_none(), "delete removes");
    let after = squares.get_with_status(11).await.unwrap();
    assert_eq!(after.status, Status::MissFetched);
    squares.delete(12).await.unwrap();
    squares.delete(12).await.unwrap();
}

// 9. invalidate of a present key keeps serving the old value and enqueues one refresh; of a
//    missing key it enqueues nothing.
#[tokio::test(start_paused = true)]
async fn invalidate_is_soft() {
    let mut fx = Fixture::new(true);
    let squares = fx.job(policy());
    squares.set(13, "old".to_owned()).await.unwrap();
    let gate = fx.upstream.close_gate();
    assert!(squares.invalidate(13).await.unwrap());
    assert_eq!(fx.queue.enqueued(), 1);
    let during = squares.get_with_status(13).await.unwrap();
    assert_eq!(during.status, Status::Stale);
    assert_eq!(during.value.as_deref().map(String::as_str), Some("old"));
    assert!(
        !during.refresh_triggered,
        "the invalidation's refresh is already claimed"
    );
    drop(gate);
    while fx.upstream.calls() == 0 {
        tokio::task::yield_now().await;
    }
    fx.upstream.open_gate();
    fx.refreshed().await;
    assert_eq!(
        squares.get_with_status(13).await.unwrap().status,
        Status::Hit
    );

    assert!(
        !squares.invalidate(14).await.unwrap(),
        "missing key: nothing to invalidate"
    );
    assert_eq!(fx.queue.enqueued(), 1);
    // refresh_async, unlike invalidate, also refreshes a missing key.
    assert!(squares.refresh_async(14).await.unwrap());
    fx.refreshed().await;
    assert_eq!(
        squares.get_with_status(14).await.unwrap().status,
        Status::Hit
    );
}

// 10. The worker writes to exactly the key the reader reads, and two jobs with the same args
//     never collide.
#[tokio::test(start_paused = true)]
async fn jobs_with_the_same_args_do_not_collide() {
    let fx = Fixture::new(false);
    let a = fx.cache.job(job("job_a", policy(), &fx.upstream));
    let b = fx.cache.job(job("job_b", policy(), &fx.upstream));
    a.set(1, "from a".to_owned()).await.unwrap();
    assert_ne!(a.key(&1).unwrap(), b.key(&1).unwrap());
    assert_eq!(a.key(&1).unwrap(), a.key(&1).unwrap());
    let from_b = b.get_with_status(1).await.unwrap();
    assert_eq!(from_b.status, Status::MissFetched);
    assert_eq!(*a.get(1).await.unwrap(), "from a");
}

// 11. A failed fetch keeps the old value; the next reads do not enqueue before retry_after.
#[tokio::test(start_paused = true)]
async fn failed_refresh_keeps_the_value_and_backs_off() {
    let mut fx = Fixture::new(true);
    let squares = fx.job(policy());
    squares.set(15, "old".to_owned()).await.unwrap();
    fx.clock.advance(LIFETIME);
    fx.upstream.set_mode(Mode::Fail);
    assert!(squares.get_with_status(15).await.unwrap().refresh_triggered);
    let failed = fx.event(is_failed).await;
    let Event::RefreshFailed {
        failures, error, ..
    } = failed
    else {
        unreachable!()
    };
    assert_eq!(failures, 1);
    assert_eq!(error.kind(), "fetch");
    for _ in 0..5 {
        let read = squares.get_with_status(15).await.unwrap();
        assert_eq!(read.value.as_deref().map(String::as_str), Some("old"));
        assert!(!read.refresh_triggered, "no retry before retry_after");
    }
    assert_eq!(fx.upstream.calls(), 1);
    let peek = squares.peek(15).await.unwrap().unwrap();
    assert_eq!(peek.claim.failures, 1);
    fx.clock.advance(Duration::from_secs(1));
    assert!(squares.get_with_status(15).await.unwrap().refresh_triggered);
    let Event::RefreshFailed {
        failures,
        retry_after,
        ..
    } = fx.event(is_failed).await
    else {
        unreachable!()
    };
    assert_eq!(failures, 2);
    let now = cacheback::clock::Clock::now(&fx.clock);
    assert_eq!(
        retry_after.since(now),
        Duration::from_secs(2),
        "backoff doubles"
    );
    fx.upstream.set_mode(Mode::Ok);
    fx.clock.advance(Duration::from_secs(2));
    assert!(squares.get_with_status(15).await.unwrap().refresh_triggered);
    fx.refreshed().await;
    assert_eq!(squares.peek(15).await.unwrap().unwrap().claim.failures, 0);
}

// A fetch that panics or hangs past fetch_timeout leaves the old value served, and is visible.
#[tokio::test(start_paused = true)]
async fn panicking_and_hanging_fetches_are_failures() {
    for (mode, kind) in [(Mode::Panic, "panic"), (Mode::Hang, "timeout")] {
        let mut fx = Fixture::new(true);
        let squares = fx.job(policy().fetch_timeout(Duration::from_secs(5)));
        squares.set(16, "old".to_owned()).await.unwrap();
        fx.clock.advance(LIFETIME);
        fx.upstream.set_mode(mode);
        assert!(squares.get_with_status(16).await.unwrap().refresh_triggered);
        let Event::RefreshFailed { error, .. } = fx.event(is_failed).await else {
            unreachable!()
        };
        assert_eq!(error.kind(), kind, "{error}");
        let read = squares.get_with_status(16).await.unwrap();
        assert_eq!(read.value.as_deref().map(String::as_str), Some("old"));
        // The worker survives: a later refresh works.
        fx.upstream.set_mode(Mode::Ok);
        squares.refresh(16).await.unwrap();
    }
}

// A panicking synchronous fetch fails every waiter with an error instead of hanging them.
#[tokio::test(start_paused = true)]
async fn a_panicking_coalesced_fetch_fails_all_waiters() {
    let fx = Fixture::new(false);
    let squares = fx.job(policy());
    fx.upstream.set_mode(Mode::Panic);
    let gate = fx.upstream.close_gate();
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let squares = squares.clone();
            tokio::spawn(async move { squares.get(17).await })
        })
        .collect();
    while fx.upstream.calls() == 0 {
        tokio::task::yield_now().await;
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    drop(gate);
    fx.upstream.open_gate();
    for reader in readers {
        let err = reader.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::FetchPanicked { .. }), "{err}");
        assert!(err.to_string().contains("upstream exploded"));
    }
    assert_eq!(fx.upstream.calls(), 1);
}

// A cancelled caller does not cancel the shared fetch for the others.
#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_does_not_cancel_the_fetch() {
    let fx = Fixture::new(false);
    let squares = fx.job(policy());
    let gate = fx.upstream.close_gate();
    let first = {
        let squares = squares.clone();
        tokio::spawn(async move { squares.get(18).await })
    };
    let second = {
        let squares = squares.clone();
        tokio::spawn(async move { squares.get(18).await })
    };
    while fx.upstream.calls() == 0 {
        tokio::task::yield_now().await;
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    drop(gate);
    fx.upstream.open_gate();
    assert_eq!(*second.await.unwrap().unwrap(), "value 18 #1");
    assert_eq!(fx.upstream.calls(), 1);
    assert_eq!(
        squares.get_with_status(18).await.unwrap().status,
        Status::Hit
    );
}

// 12. A refresh that raced a set or delete does not overwrite it.
#[tokio::test(start_paused = true)]
async fn a_late_refresh_never_overwrites_a_set_or_delete() {
    for delete in [false, true] {
        let mut fx = Fixture::new(true);
        let squares = fx.job(policy());
        squares.set(19, "old".to_owned()).await.unwrap();
        fx.clock.advance(LIFETIME);
        let gate = fx.upstream.close_gate();
        assert!(squares.get_with_status(19).await.unwrap().refresh_triggered);
        while fx.upstream.calls() == 0 {
            tokio::task::yield_now().await;
        }
        if delete {
            squares.delete(19).await.unwrap();
        } else {
            squares.set(19, "newer".to_owned()).await.unwrap();
        }
        drop(gate);
        fx.upstream.open_gate();
        fx.event(|e| matches!(e, Event::RefreshDiscarded { .. }))
            .await;
        let peek = squares.peek(19).await.unwrap();
        if delete {
            assert!(
                peek.is_none(),
                "the late refresh must not resurrect a deleted key"
            );
        } else {
            let peek = peek.expect("set value kept");
            assert_eq!(peek.value.as_deref().map(String::as_str), Some("newer"));
        }
    }
}

/// A queue whose backend is down.
#[derive(Debug)]
struct DownQueue;

impl Queue for DownQueue {
    fn backend(&self) -> &'static str {
        "down"
    }
    fn enqueue(&self, _: RefreshRequest) -> BoxFuture<'_, Result<(), EnqueueError>> {
        Box::pin(async { Err(EnqueueError::Unavailable(Error::Shutdown)) })
    }
    fn receive(
        &self,
        _: usize,
    ) -> BoxFuture<'_, cacheback::Result<Vec<cacheback::queue::Delivery>>> {
        Box::pin(std::future::pending())
    }
    fn ack<'a>(
        &'a self,
        _: &'a cacheback::queue::Delivery,
    ) -> BoxFuture<'a, cacheback::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn dead_letter<'a>(
        &'a self,
        _: &'a cacheback::queue::Delivery,
        _: &'a str,
    ) -> BoxFuture<'a, cacheback::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

// 13. If the queue cannot accept the refresh, the read still returns and the key still gets
//     refreshed (fallback).
#[tokio::test(start_paused = true)]
async fn an_unavailable_queue_falls_back_to_a_local_refresh() {
    for fallback in [QueueFallback::LocalRefresh, QueueFallback::SyncRefresh] {
        let clock = TestClock::new();
        let upstream = Arc::new(Upstream::default());
        let (tx, mut events) = mpsc::unbounded_channel();
        let cache = Cacheback::builder()
            .clock(clock.clone())
            .queue(DownQueue)
            .queue_fallback(fallback)
            .on_event(move |e| {
                let _ = tx.send(e.clone());
            })
            .build()
            .unwrap();
        let squares = cache.job(job("squares", policy(), &upstream));
        squares.set(20, "old".to_owned()).await.unwrap();
        clock.advance(LIFETIME);
        let read = squares.get_with_status(20).await.unwrap();
        assert_eq!(read.status, Status::Stale);
        assert_eq!(read.value.as_deref().map(String::as_str), Some("old"));
        assert!(read.refresh_triggered);
        loop {
            if let Event::Refreshed { .. } = events.recv().await.unwrap() {
                break;
            }
        }
        assert_eq!(upstream.calls(), 1);
        assert_eq!(
            squares.get_with_status(20).await.unwrap().status,
            Status::Hit
        );
    }
}

// A full local queue drops and counts, and the next read re-triggers.
#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_counts_and_the_next_read_retriggers() {
    let mut fx = Fixture::with(false, LocalQueue::new(1), |b| b);
    let squares = fx.job(policy());
    squares.set(21, "a".to_owned()).await.unwrap();
    squares.set(22, "b".to_owned()).await.unwrap();
    fx.clock.advance(LIFETIME);
    assert!(squares.get_with_status(21).await.unwrap().refresh_triggered);
    let dropped = squares.get_with_status(22).await.unwrap();
    assert_eq!(dropped.value.as_deref().map(String::as_str), Some("b"));
    assert!(!dropped.refresh_triggered);
    assert_eq!(fx.queue.dropped(), 1);
    fx.event(|e| matches!(e, Event::EnqueueDropped { .. }))
        .await;
    // The claim was released: the next read tries again (and, the queue still full, drops again).
    squares.get_with_status(22).await.unwrap();
    assert_eq!(fx.queue.dropped(), 2);
}

// 15. A corrupt entry reads as a miss; an oversized value is rejected with a clear error.
#[tokio::test(start_paused = true)]
async fn a_corrupt_entry_reads_as_a_miss_and_is_counted() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let store = Arc::new(MemoryStore::new());
    let clock = TestClock::new();
    let upstream = Arc::new(Upstream::default());
    // Two deployments disagree on the job's value type (a botched rolling deploy).
    let old = Cacheback::builder()
        .clock(clock.clone())
        .shared_store(store.clone())
        .build()
        .unwrap();
    let typed = old.job(job_fn("squares", policy(), |n: u64| async move {
        Ok::<_, std::io::Error>(n)
    }));
    typed.set(23, 23).await.unwrap();
    let new = Cacheback::builder()
        .clock(clock.clone())
        .shared_store(store)
        .build()
        .unwrap();
    let squares =
        metrics::with_local_recorder(&recorder, || new.job(job("squares", policy(), &upstream)));
    let read = squares.get_with_status(23).await.unwrap();
    assert_eq!(
        read.status,
        Status::MissFetched,
        "a corrupt entry is a miss"
    );
    assert_eq!(
        read.value.as_deref().map(String::as_str),
        Some("value 23 #1")
    );
    let decode_errors = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| key.key().name() == "cacheback_decode_errors_total")
        .map(|(.., value)| value);
    assert_eq!(
        decode_errors,
        Some(metrics_util::debugging::DebugValue::Counter(1))
    );
    // ... and it was overwritten by the fetch.
    assert_eq!(
        squares.get_with_status(23).await.unwrap().status,
        Status::Hit
    );
}

#[tokio::test(start_paused = true)]
async fn an_oversized_value_is_rejected_and_the_old_entry_kept() {
    let fx = Fixture::with(false, LocalQueue::new(10), |b| b.max_value_bytes(16));
    let squares = fx.job(policy());
    squares.set(24, "small".to_owned()).await.unwrap();
    let err = squares.set(24, "x".repeat(100)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                size: 101,
                limit: 16,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "value of job `squares` is 101 bytes, over the limit of 16 bytes"
    );
    assert_eq!(*squares.get(24).await.unwrap(), "small");
}

// stale_if_error: a failing refresh extends how long the old value may be served.
#[tokio::test(start_paused = true)]
async fn stale_if_error_extends_serving() {
    let mut fx = Fixture::new(true);
    let squares = fx.job(
        policy()
            .fetch_on_miss(false)
            .stale_if_error(Duration::from_secs(1000)),
    );
    squares.set(25, "old".to_owned()).await.unwrap();
    fx.clock
        .advance(LIFETIME + STALE_TTL - Duration::from_secs(1));
    fx.upstream.set_mode(Mode::Fail);
    assert!(squares.get_with_status(25).await.unwrap().refresh_triggered);
    fx.event(is_failed).await;
    fx.clock.advance(Duration::from_secs(500));
    let read = squares.get_with_status(25).await.unwrap();
    assert_eq!(
        read.status,
        Status::Stale,
        "served past stale_ttl thanks to stale_if_error"
    );
    assert_eq!(read.value.as_deref().map(String::as_str), Some("old"));
    fx.clock.advance(Duration::from_secs(501));
    assert_eq!(
        squares.get_with_status(25).await.unwrap().status,
        Status::Miss
    );
}

// Early refresh (XFetch): a fresh read close to expiry may trigger a refresh.
#[tokio::test(start_paused = true)]
async fn early_refresh_triggers_before_expiry() {
    let mut fx = Fixture::new(true);
    // A huge beta makes the probability ~1 as soon as the fetch duration is known.
    let squares = fx.job(policy().early_refresh(1e9));
    let gate = fx.upstream.close_gate();
    let reader = {
        let squares = squares.clone();
        tokio::spawn(async move { squares.get(26).await })
    };
    while fx.upstream.calls() == 0 {
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    drop(gate);
    fx.upstream.open_gate();
    reader.await.unwrap().unwrap();
    let hit = squares.get_with_status(26).await.unwrap();
    assert_eq!(hit.status, Status::Hit);
    assert!(hit.refresh_triggered, "XFetch triggered an early refresh");
    fx.refreshed().await;
    // Without early refresh, fresh reads never trigger.
    let plain = fx.cache.job(job("plain", policy(), &fx.upstream));
    plain.set(26, "v".to_owned()).await.unwrap();
    assert!(!plain.get_with_status(26).await.unwrap().refresh_triggered);
}

// Jitter only shortens the lifetime, within the configured fraction.
#[tokio::test(start_paused = true)]
async fn jitter_spreads_expiry_within_bounds() {
    let fx = Fixture::new(false);
    let squares = fx.job(policy().jitter(0.5));
    let mut lifetimes = std::collections::BTreeSet::new();
    for n in 0..50 {
        squares.set(n, "v".to_owned()).await.unwrap();
        let meta = squares.peek(n).await.unwrap().unwrap().meta;
        let lifetime = meta.fresh_until.since(meta.fetched_at);
        assert!(
            lifetime <= LIFETIME && lifetime >= LIFETIME / 2,
            "{lifetime:?}"
        );
        lifetimes.insert(lifetime);
    }
    assert!(lifetimes.len() > 10, "expiries are spread: {lifetimes:?}");
}

// Warming many keys: bounded concurrency and progress reports.
#[tokio::test(start_paused = true)]
async fn refresh_many_reports_progress_and_failures() {
    let fx = Fixture::new(false);
    let squares = fx.job(policy());
    let mut seen = Vec::new();
    let report = squares.refresh_many(0..20, 4, |p| seen.push(p.done)).await;
    assert_eq!(report.refreshed, 20);
    assert_eq!(report.failed, 0);
    assert_eq!(seen, (1..=20).collect::<Vec<_>>());
    assert_eq!(fx.upstream.calls(), 20);
    fx.upstream.set_mode(Mode::Fail);
    let report = squares.refresh_many(vec![1, 2, 3], 2, |_| {}).await;
    assert_eq!(report.failed, 3);
    assert_eq!(report.failures.len(), 3);
    assert_eq!(
        *squares.get(1).await.unwrap(),
        "value 1 #2",
        "old value kept"
    );
}

// Unknown job names are dead-lettered and the worker keeps going.
#[tokio::test(start_paused = true)]
async fn unknown_jobs_are_dead_lettered_and_the_worker_keeps_going() {
    let mut fx = Fixture::new(true);
    let squares = fx.job(policy().fetch_on_miss(false));
    let request = RefreshRequest {
        job: "no_such_job".to_owned(),
        key: "cacheback:no_such_job:00".to_owned(),
        args: vec![],
        codec: 1,
        token: cacheback::store::ClaimToken::random(),
        generation: 0,
        enqueued_at: cacheback::clock::Timestamp::EPOCH,
        prior_failures: 0,
        queue: "default".to_owned(),
    };
    fx.queue.enqueue(request).await.unwrap();
    let Event::DeadLettered { reason, job } =
        fx.event(|e| matches!(e, Event::DeadLettered { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(job.as_deref(), Some("no_such_job"));
    assert!(reason.contains("unknown job `no_such_job`"), "{reason}");
    assert_eq!(fx.queue.dead_letters().len(), 1);
    squares.get_cached(27).await.unwrap();
    fx.refreshed().await;
    assert_eq!(
        squares.get_with_status(27).await.unwrap().status,
        Status::Hit
    );
}

// Shutdown stops the in-process worker and drains background tasks.
#[tokio::test(start_paused = true)]
async fn shutdown_drains() {
    let fx = Fixture::new(true);
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

// Messages whose args do not decode, or whose key this worker derives differently (another
// prefix), are dead-lettered with the reason.
#[tokio::test(start_paused = true)]
async fn malformed_and_mismatched_requests_are_dead_lettered() {
    let mut fx = Fixture::new(true);
    let squares = fx.job(policy());
    let good_key = squares.key(&29).unwrap();
    let base = RefreshRequest {
        job: "squares".to_owned(),
        key: good_key,
        args: vec![0xff, 0xff, 0xff],
        codec: 1,
        token: cacheback::store::ClaimToken::random(),
        generation: 0,
        enqueued_at: cacheback::clock::Timestamp::EPOCH,
        prior_failures: 0,
        queue: "default".to_owned(),
    };
    fx.queue.enqueue(base.clone()).await.unwrap();
    let Event::DeadLettered { reason, .. } =
        fx.event(|e| matches!(e, Event::DeadLettered { .. })).await
    else {
        unreachable!()
    };
    assert!(reason.contains("args do not decode"), "{reason}");

    let mismatched = RefreshRequest {
        args: cacheback::Codec::Postcard.encode(&29u64).unwrap(),
        key: "otherapp:squares:00000000000000000000000000000000".to_owned(),
        ..base
    };
    fx.queue.enqueue(mismatched).await.unwrap();
    let Event::DeadLettered { reason, .. } =
        fx.event(|e| matches!(e, Event::DeadLettered { .. })).await
    else {
        unreachable!()
    };
    assert!(reason.contains("key mismatch"), "{reason}");
    assert_eq!(fx.queue.dead_letters().len(), 2);
    assert_eq!(
        fx.upstream.calls(),
        0,
        "nothing was fetched for bad requests"
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
    let fx = Fixture::with(false, LocalQueue::new(10), |b| {
        b.shared_store(Arc::clone(&store) as Arc<dyn cacheback::store::Store>)
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
    assert!(
        !read.refresh_triggered,
        "the refresh it would trigger landed already"
    );
    assert_eq!(fx.queue.enqueued(), 0);
    let claim = squares.peek(9).await.unwrap().unwrap();
    assert!(
        claim.claim.claim.is_none(),
        "the claim was let go: {claim:?}"
    );
    let after = squares.get_with_status(9).await.unwrap();
    assert_eq!(
        (after.status, after.value.as_deref().map(String::as_str)),
        (Status::Hit, Some("refreshed"))
    );
}
