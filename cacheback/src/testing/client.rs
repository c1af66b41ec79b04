//! Client behaviours that must hold on every store: generations fence fetches requested
//! before an invalidation, reads that bypass the cache say so, failing misses back off.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::client::{Cacheback, CachebackBuilder, JobHandle, Status};
use crate::clock::TestClock;
use crate::error::Error;
use crate::job::Job;
use crate::observe::Event;
use crate::policy::{Backoff, Policy};
use crate::store::Store;

/// Longest wait for something the suite caused (a fetch starting, an event): a bound against
/// a hang, not a pause that hopes.
const WITHIN: Duration = Duration::from_secs(10);

/// Runs the client behaviours that depend on the store, against `store` (which may be shared
/// with other data: every client of the suite uses a prefix of its own). Panics naming the
/// behaviour that does not hold.
///
/// The clients use an in-process queue and worker, a [`TestClock`] for freshness and real
/// tokio time (the store may do real I/O).
pub async fn client_suite(store: Arc<dyn Store>) {
    invalidate_fences_a_miss_fetch_in_flight(&store, false).await;
    invalidate_fences_a_miss_fetch_in_flight(&store, true).await;
    invalidate_fences_a_queued_refresh_of_a_missing_key(&store).await;
    an_oversized_value_bypasses_the_cache_and_says_so(&store).await;
    a_failing_miss_backs_off(&store, true).await;
    a_failing_miss_backs_off(&store, false).await;
}

/// A fake upstream: counts calls, can fail, can hold calls at a gate, and says when one starts.
#[derive(Default)]
struct Upstream {
    calls: AtomicUsize,
    failing: Mutex<bool>,
    gate: Mutex<Option<Arc<Notify>>>,
    started: Notify,
}

impl Upstream {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn close_gate(&self) {
        *lock(&self.gate) = Some(Arc::new(Notify::new()));
    }

    fn open_gate(&self) {
        if let Some(gate) = lock(&self.gate).take() {
            gate.notify_waiters();
        }
    }

    async fn fetch(&self, n: u64) -> Result<String, std::io::Error> {
        let gate = lock(&self.gate).clone();
        let gated = gate.as_ref().map(|g| g.notified());
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.started.notify_one();
        if let Some(gated) = gated {
            gated.await;
        }
        if *lock(&self.failing) {
            return Err(std::io::Error::other("upstream is down"));
        }
        Ok(format!(
            "value {n} #{call} {}",
            "x".repeat(usize::try_from(n % 1000).unwrap_or(0))
        ))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct SuiteJob {
    policy: Policy,
    upstream: Arc<Upstream>,
}

impl Job for SuiteJob {
    type Args = u64;
    type Value = String;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        "client_suite"
    }

    fn policy(&self) -> Policy {
        self.policy.clone()
    }

    async fn fetch(&self, n: u64) -> Result<String, std::io::Error> {
        self.upstream.fetch(n).await
    }
}

/// One client of the suite on `store`, with its own prefix, clock, upstream and events.
struct Fx {
    clock: TestClock,
    upstream: Arc<Upstream>,
    events: mpsc::UnboundedReceiver<Event>,
    job: JobHandle<SuiteJob>,
    _cache: Cacheback,
}

impl Fx {
    fn new(
        store: &Arc<dyn Store>,
        policy: Policy,
        configure: impl FnOnce(CachebackBuilder) -> CachebackBuilder,
    ) -> Fx {
        let clock = TestClock::new();
        let (tx, events) = mpsc::unbounded_channel();
        let builder = Cacheback::builder()
            .prefix(format!("suite-{:016x}", fastrand::u64(..)))
            .shared_store(Arc::clone(store))
            .clock(clock.clone())
            .on_event(move |e| {
                let _ = tx.send(e.clone());
            });
        let cache = configure(builder)
            .build()
            .expect("client_suite: the client builds");
        let upstream = Arc::new(Upstream::default());
        let job = cache.job(SuiteJob {
            policy: policy
                .lifetime(Duration::from_secs(10))
                .stale_ttl(Duration::from_secs(100))
                .retry_backoff(
                    Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60))
                        .without_jitter(),
                ),
            upstream: Arc::clone(&upstream),
        });
        Fx {
            clock,
            upstream,
            events,
            job,
            _cache: cache,
        }
    }

    async fn fetch_started(&self, what: &str) {
        tokio::time::timeout(WITHIN, self.upstream.started.notified())
            .await
            .unwrap_or_else(|_| panic!("client_suite: {what}: the fetch never started"));
    }

    async fn event(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        tokio::time::timeout(WITHIN, async {
            loop {
                match self.events.recv().await {
                    Some(event) if pred(&event) => return event,
                    Some(_) => {}
                    None => panic!("client_suite: {what}: the events channel closed"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("client_suite: {what}: the expected event never came"))
    }

    /// Whether the key of `n` holds a value (Fresh or Stale), looked at without side effects.
    async fn holds_value(&self, n: u64) -> bool {
        let peek = self.job.peek(n).await.expect("client_suite: peek works");
        peek.is_some_and(|p| p.value.is_some())
    }
}

/// A synchronous miss fetch that began before `invalidate` (of a key that has no value, or
/// whose value was deleted) must not be stored Fresh after it.
async fn invalidate_fences_a_miss_fetch_in_flight(store: &Arc<dyn Store>, deleted_first: bool) {
    let what = if deleted_first {
        "invalidate of a deleted key fences a miss fetch in flight"
    } else {
        "invalidate of a missing key fences a miss fetch in flight"
    };
    let fx = Fx::new(store, Policy::default(), |b| b);
    if deleted_first {
        fx.job.set(1, "old".to_owned()).await.expect("set works");
        fx.job.delete(1).await.expect("delete works");
    }
    fx.upstream.close_gate();
    let reader = {
        let job = fx.job.clone();
        tokio::spawn(async move { job.get_with_status(1).await })
    };
    fx.fetch_started(what).await;
    assert!(
        !fx.job.invalidate(1).await.expect("invalidate works"),
        "client_suite: {what}: invalidate of a key without a value enqueues nothing"
    );
    fx.upstream.open_gate();
    let lookup = reader
        .await
        .expect("the reader does not panic")
        .expect("the read succeeds");
    assert!(
        lookup.value.is_some(),
        "client_suite: {what}: the reader gets its value"
    );
    assert!(
        !fx.holds_value(1).await,
        "client_suite: {what}: the value fetched before the invalidation was stored after it"
    );
    let again = fx
        .job
        .get_with_status(1)
        .await
        .expect("the next read works");
    assert_eq!(again.status, Status::MissFetched, "client_suite: {what}");
}

/// A refresh enqueued for a missing key before `invalidate` must not land afterwards.
async fn invalidate_fences_a_queued_refresh_of_a_missing_key(store: &Arc<dyn Store>) {
    let what = "invalidate of a missing key fences a queued refresh";
    let mut fx = Fx::new(store, Policy::default().fetch_on_miss(false), |b| b);
    fx.upstream.close_gate();
    let first = fx.job.get_with_status(2).await.expect("the read works");
    assert_eq!(first.status, Status::Miss, "client_suite: {what}");
    assert!(
        first.refresh_triggered,
        "client_suite: {what}: the miss enqueues"
    );
    fx.fetch_started(what).await;
    fx.job.invalidate(2).await.expect("invalidate works");
    fx.upstream.open_gate();
    fx.event(what, |e| {
        matches!(e, Event::RefreshDiscarded { .. } | Event::Refreshed { .. })
    })
    .await;
    assert!(
        !fx.holds_value(2).await,
        "client_suite: {what}: the refresh requested before the invalidation was stored"
    );
}

/// A value over the size limit is served, with status `Bypassed` and an event, not as a miss.
async fn an_oversized_value_bypasses_the_cache_and_says_so(store: &Arc<dyn Store>) {
    let what = "an oversized value bypasses the cache and says so";
    let mut fx = Fx::new(store, Policy::default(), |b| b.max_value_bytes(64));
    let lookup = fx.job.get_with_status(500).await.expect("the read works");
    assert_eq!(lookup.status, Status::Bypassed, "client_suite: {what}");
    assert!(
        lookup.value.is_some(),
        "client_suite: {what}: the value is served"
    );
    let event = fx
        .event(what, |e| matches!(e, Event::CacheBypassed { .. }))
        .await;
    let Event::CacheBypassed { error, .. } = event else {
        unreachable!("matched above");
    };
    assert!(
        matches!(error, Error::TooLarge { .. }),
        "client_suite: {what}: the event says why: {error}"
    );
    assert!(!fx.holds_value(500).await, "client_suite: {what}");
    let small = fx.job.get_with_status(5).await.expect("the read works");
    assert_eq!(small.status, Status::MissFetched, "client_suite: {what}");
}

/// Reads of a key whose synchronous fetch fails call the upstream once per backoff window
/// (or, with `miss_backoff` off, once per read).
async fn a_failing_miss_backs_off(store: &Arc<dyn Store>, backoff: bool) {
    let what = if backoff {
        "a failing miss backs off"
    } else {
        "a failing miss without miss_backoff calls the upstream every time"
    };
    let fx = Fx::new(store, Policy::default().miss_backoff(backoff), |b| b);
    *lock(&fx.upstream.failing) = true;
    let mut errors = Vec::new();
    for _ in 0..5 {
        errors.push(
            fx.job
                .get(3)
                .await
                .expect_err("a failing fetch fails the read"),
        );
    }
    if !backoff {
        assert_eq!(fx.upstream.calls(), 5, "client_suite: {what}");
        return;
    }
    assert_eq!(
        fx.upstream.calls(),
        1,
        "client_suite: {what}: one call per window"
    );
    assert!(
        matches!(errors[0], Error::Fetch { .. }),
        "client_suite: {what}"
    );
    for error in &errors[1..] {
        let Error::BackingOff { failures, last, .. } = error else {
            panic!("client_suite: {what}: expected BackingOff, got {error}");
        };
        assert_eq!(*failures, 1, "client_suite: {what}");
        assert!(
            last.as_ref()
                .is_some_and(|l| l.to_string().contains("upstream is down")),
            "client_suite: {what}: the last failure is the cause"
        );
    }
    // The first retry is due after 1 s; it fails again, and the next window is 2 s.
    fx.clock.advance(Duration::from_millis(1001));
    let _ = fx.job.get(3).await.expect_err("still failing");
    let _ = fx.job.get(3).await.expect_err("still backing off");
    assert_eq!(
        fx.upstream.calls(),
        2,
        "client_suite: {what}: one call per window"
    );
    fx.clock.advance(Duration::from_millis(2001));
    *lock(&fx.upstream.failing) = false;
    let recovered = fx
        .job
        .get_with_status(3)
        .await
        .expect("the upstream is back");
    assert_eq!(
        recovered.status,
        Status::MissFetched,
        "client_suite: {what}"
    );
    assert_eq!(fx.upstream.calls(), 3, "client_suite: {what}");
}
