//! The scenarios every broker-backed queue (RabbitMQ, NATS JetStream) passes, written once
//! against the [`Broker`] a test binary implements: the conformance suite, the process fleet,
//! dead letters with their reasons, a broker restart, connection loss, hand-back on a graceful
//! stop, a bounded queue.
//!
//! In-process "processes" share a `MemoryStore` (the queue is what is under test); the fleet
//! scenarios use real processes and a spawned Redis store.

#![allow(dead_code)]

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cacheback::clock::{TestClock, Timestamp};
use cacheback::queue::{EnqueueError, Queue, RefreshRequest};
use cacheback::store::{ClaimToken, Store};
use cacheback::worker::WorkerReport;
use cacheback::{
    Cacheback, Freshness, Job, JobHandle, MemoryStore, Policy, QueueFallback, Status, Worker,
    WorkerOptions,
};
use cacheback_test_support::runner::{self, Test};
use cacheback_test_support::{RedisServer, eventually, unique_prefix};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::fleet::{self, QueueKind};

pub const WITHIN: Duration = Duration::from_secs(20);
const LIFETIME: Duration = Duration::from_secs(10);
const T0: u64 = 1_704_067_200_000;

/// Anything held for its `Drop` (an outage that ends when it drops).
pub trait Guard {}

impl<T> Guard for T {}

/// What a broker's test binary provides to the shared scenarios.
pub trait Broker {
    /// A queue under `prefix` consuming `routes`, polling every 100 ms, `max_len` bounding
    /// each route where given.
    fn queue(&self, prefix: &str, routes: &[&str], max_len: Option<u64>) -> Arc<dyn Queue>;
    /// The same queue, for child processes.
    fn kind(&self) -> QueueKind;
    /// Publishes raw bytes where `route`'s requests go (a message no cacheback wrote).
    fn publish_raw(&self, prefix: &str, route: &str, bytes: &[u8]);
    /// The reasons of `route`'s dead letters.
    fn dead_letter_reasons(&self, prefix: &str, route: &str) -> Vec<String>;
    /// Messages of `route` that a consumer holds (delivered, not acknowledged).
    fn held(&self, prefix: &str, route: &str) -> u64;
    /// Messages of `route` waiting for a consumer.
    fn waiting(&self, prefix: &str, route: &str) -> u64;
    /// Takes the broker away until the guard drops (which must bring it back, even while
    /// a test panics).
    fn outage(&self) -> Box<dyn Guard + '_>;
    /// How soon after a worker's death its request must be refreshed by another.
    fn redelivery_bound(&self) -> Duration;
}

/// A 2-thread runtime for one scenario.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Counts its fetches.
struct Counted {
    name: &'static str,
    route: &'static str,
    calls: Arc<AtomicUsize>,
}

impl Job for Counted {
    type Args = u64;
    type Value = String;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        self.name
    }

    fn policy(&self) -> Policy {
        Policy::default()
            .lifetime(LIFETIME)
            .stale_ttl(Duration::from_secs(3600))
            .queue(self.route)
    }

    async fn fetch(&self, n: u64) -> Result<String, std::io::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(format!("v{n}"))
    }
}

/// One "process": a client on the shared store and its own queue handle, with one job.
struct App {
    client: Cacheback,
    job: JobHandle<Counted>,
    calls: Arc<AtomicUsize>,
}

impl App {
    fn new(store: &Arc<dyn Store>, clock: &TestClock, queue: Arc<dyn Queue>, prefix: &str) -> App {
        Self::with_job(store, clock, queue, prefix, "counted", "default")
    }

    fn with_job(
        store: &Arc<dyn Store>,
        clock: &TestClock,
        queue: Arc<dyn Queue>,
        prefix: &str,
        name: &'static str,
        route: &'static str,
    ) -> App {
        let client = Cacheback::builder()
            .prefix(prefix)
            .clock(clock.clone())
            .shared_store(Arc::clone(store))
            .shared_queue(queue)
            // Strict: a refresh only ever runs through the queue under test.
            .queue_fallback(QueueFallback::Skip)
            .build()
            .unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let job = client.job(Counted {
            name,
            route,
            calls: Arc::clone(&calls),
        });
        App { client, job, calls }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn run_worker(&self, stop: &CancellationToken) -> JoinHandle<WorkerReport> {
        let worker = Worker::builder(&self.client)
            .options(WorkerOptions::default().receive_retry(Duration::from_millis(100)))
            .build()
            .unwrap();
        let stop = stop.clone();
        tokio::spawn(async move { worker.run_until(stop.cancelled_owned()).await })
    }

    async fn is_fresh(&self, n: u64) -> bool {
        self.job
            .peek(n)
            .await
            .unwrap()
            .is_some_and(|p| p.freshness == Freshness::Fresh)
    }

    /// Writes `old` for each key at T0, then reads them stale (the clock moves past the
    /// lifetime): each read triggers one refresh.
    async fn make_stale(&self, clock: &TestClock, keys: impl IntoIterator<Item = u64>) {
        for n in keys {
            clock.set(Timestamp::from_millis(T0));
            self.job.set(n, "old".to_owned()).await.unwrap();
            clock.set(Timestamp::from_millis(T0).saturating_add(LIFETIME));
            // A read whose enqueue fails triggers nothing (the queue fallback is `Skip`) and
            // the next read tries again: a broker that stumbles once (its warning is on
            // stderr) costs a read, and one that keeps failing fails the test.
            let skipped = AtomicUsize::new(0);
            eventually("a stale read that triggers a refresh", WITHIN, || async {
                let read = self.job.get_with_status(n).await.unwrap();
                assert_eq!(read.status, Status::Stale, "key {n}");
                if !read.refresh_triggered {
                    let k = skipped.fetch_add(1, Ordering::SeqCst) + 1;
                    eprintln!("stale read {k} of key {n} triggered no refresh; reading again");
                }
                read.refresh_triggered
            })
            .await;
        }
    }
}

fn memory() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

/// A request for `job` with generation `n`, on the default route.
pub fn request(job: &str, n: u32) -> RefreshRequest {
    RefreshRequest {
        job: job.to_owned(),
        key: format!("x:{job}:{n:032x}"),
        args: vec![1],
        codec: 1,
        token: ClaimToken::random(),
        generation: u64::from(n),
        enqueued_at: Timestamp::from_millis(T0),
        prior_failures: 0,
        queue: "default".to_owned(),
    }
}

/// `testing::queue_suite` on a fresh prefix.
pub fn conformance<B: Broker>(b: &B) {
    let queue = b.queue(&unique_prefix("suite"), &["default"], None);
    runtime().block_on(cacheback::testing::queue_suite(&*queue));
}

/// A Redis store and this queue: 4 reader processes and a worker process, one fetch per stale
/// event.
pub fn fleet_makes_exactly_one_fetch<B: Broker>(b: &B) {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    fleet::exactly_one_fetch(&redis, b.kind(), &unique_prefix("fleet"));
}

/// A worker process killed mid-refresh: its message goes to another worker process.
pub fn killed_worker_is_redelivered<B: Broker>(b: &B) {
    let within = b.redelivery_bound();
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let took = fleet::killed_worker_is_replaced(&redis, b.kind(), &unique_prefix("kill9"));
    eprintln!("redelivered and refreshed {took:?} after the kill");
    assert!(took < within, "took {took:?}, over {within:?}");
}

/// An unknown job and a malformed message are dead-lettered with their reasons, and the worker
/// goes on.
pub fn dead_letters_keep_their_reasons<B: Broker>(b: &B) {
    let prefix = unique_prefix("dead");
    runtime().block_on(async {
        let queue = b.queue(&prefix, &["default"], None);
        let app = App::new(&memory(), &TestClock::new(), Arc::clone(&queue), &prefix);
        let stop = CancellationToken::new();
        let running = app.run_worker(&stop);
        queue.enqueue(request("no_such_job", 1)).await.unwrap();
        b.publish_raw(&prefix, "default", &[9, 9, 9]);
        eventually("two dead letters", WITHIN, || async {
            b.dead_letter_reasons(&prefix, "default").len() == 2
        })
        .await;
        let reasons = b.dead_letter_reasons(&prefix, "default").join(" | ");
        assert!(reasons.contains("unknown job `no_such_job`"), "{reasons}");
        assert!(reasons.contains("unknown message version 9"), "{reasons}");
        stop.cancel();
        let report = running.await.unwrap();
        assert_eq!(report.dead_lettered, 2);
        assert_eq!(b.waiting(&prefix, "default"), 0, "nothing left to deliver");
    });
}

/// Requests confirmed before a broker restart are all refreshed after it; enqueue fails fast
/// while the broker is away; a running worker reconnects by itself.
pub fn broker_restart_loses_no_request<B: Broker>(b: &B) {
    let prefix = unique_prefix("restart");
    let rt = runtime();
    let (store, clock) = (memory(), TestClock::new());
    let queue = |route: &str| b.queue(&prefix, &[route], None);
    let app = |route: &'static str, name: &'static str| {
        App::with_job(&store, &clock, queue(route), &prefix, name, route)
    };
    let (web, later, worker) =
        rt.block_on(async { (app("default", "a"), app("later", "b"), app("default", "a")) });
    let stop = CancellationToken::new();
    let running = {
        let _in_runtime = rt.enter();
        worker.run_worker(&stop)
    };
    rt.block_on(async {
        web.make_stale(&clock, [1]).await;
        eventually("the first refresh", WITHIN, || web.is_fresh(1)).await;
        // Five requests on a route nobody consumes yet: they must survive the restart.
        later.make_stale(&clock, 1..=5).await;
    });
    let outage = b.outage();
    rt.block_on(async {
        let started = Instant::now();
        let refused = queue("default").enqueue(request("a", 99)).await;
        assert!(
            matches!(refused, Err(EnqueueError::Unavailable(_))),
            "{refused:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "enqueue failed fast"
        );
    });
    drop(outage);
    rt.block_on(async {
        // The worker that was running reconnects by itself (reads whose enqueue fails while
        // the web process reconnects too are skipped: the next read triggers again).
        eventually("a refresh after the restart", WITHIN, || async {
            let _ = web.job.get_with_status(2).await;
            web.is_fresh(2).await
        })
        .await;
        assert_eq!(
            later.calls(),
            0,
            "nothing ran the requests from before the restart"
        );
        let stop_later = CancellationToken::new();
        let draining = later.run_worker(&stop_later);
        for n in 1..=5 {
            eventually("a request from before the restart", WITHIN, || {
                later.is_fresh(n)
            })
            .await;
        }
        assert_eq!(later.calls(), 5, "each request refreshed once");
        stop_later.cancel();
        draining.await.unwrap();
        stop.cancel();
        running.await.unwrap();
    });
}

/// The next delivery, waiting for it (bounded).
pub async fn take_one(queue: &Arc<dyn Queue>) -> cacheback::queue::Delivery {
    let deadline = Instant::now() + WITHIN;
    loop {
        if let Ok(mut got) = queue.receive(1).await
            && let Some(d) = got.pop()
        {
            return d;
        }
        assert!(Instant::now() < deadline, "nothing received");
    }
}

/// A stopped worker leaves nothing held: a request enqueued after it stopped waits for the
/// next worker, which takes it at once; held deliveries are handed back, attempt counted.
pub fn graceful_stop_leaves_nothing_pending<B: Broker>(b: &B) {
    let prefix = unique_prefix("stop");
    runtime().block_on(async {
        let (store, clock) = (memory(), TestClock::new());
        let web = App::new(
            &store,
            &clock,
            b.queue(&prefix, &["default"], None),
            &prefix,
        );
        let old = App::new(
            &store,
            &clock,
            b.queue(&prefix, &["default"], None),
            &prefix,
        );
        let stop_old = CancellationToken::new();
        let running = old.run_worker(&stop_old);
        web.make_stale(&clock, [1]).await;
        eventually("the old worker's refresh", WITHIN, || web.is_fresh(1)).await;
        stop_old.cancel();
        running.await.unwrap();
        web.make_stale(&clock, [2]).await;
        assert_eq!(
            b.held(&prefix, "default"),
            0,
            "the stopped worker holds nothing"
        );
        let new = App::new(
            &store,
            &clock,
            b.queue(&prefix, &["default"], None),
            &prefix,
        );
        let stop_new = CancellationToken::new();
        let running = new.run_worker(&stop_new);
        eventually("the new worker's refresh", WITHIN, || web.is_fresh(2)).await;
        stop_new.cancel();
        running.await.unwrap();
        assert_eq!(old.calls() + new.calls(), 2);

        // Held by a receiver that stops: handed back, then delivered elsewhere as attempt 2.
        let a = b.queue(&prefix, &["default"], None);
        let other = b.queue(&prefix, &["default"], None);
        a.enqueue(request("x", 7)).await.unwrap();
        let held = take_one(&a).await;
        assert!(a.hand_back_held().await.unwrap() >= 1);
        let again = take_one(&other).await;
        assert_eq!(again.attempt, 2);
        assert_eq!(again.message.as_ref().unwrap().generation, 7);
        a.ack(&held).await.unwrap();
        other.ack(&again).await.unwrap();
        assert_eq!(b.held(&prefix, "default"), 0);
    });
}

/// A bounded queue refuses past its bound (a broker may take a few more first: RabbitMQ's
/// quorum queues apply the bound asynchronously): `EnqueueError::Full`, at once.
pub fn a_full_queue_refuses<B: Broker>(b: &B) {
    let prefix = unique_prefix("full");
    runtime().block_on(async {
        let queue = b.queue(&prefix, &["default"], Some(2));
        let mut accepted = 0;
        for n in 0..20 {
            let started = Instant::now();
            match queue.enqueue(request("a", n)).await {
                Ok(()) => accepted += 1,
                Err(EnqueueError::Full) => {
                    assert!(started.elapsed() < Duration::from_secs(1));
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            (2..=4).contains(&accepted),
            "{accepted} requests accepted by a queue bounded at 2"
        );
    });
}

/// The scenarios every broker queue runs, in order (the broker restart last).
pub fn scenarios<B: Broker>() -> Vec<Test<B>> {
    vec![
        ("conformance", conformance::<B>),
        (
            "fleet_makes_exactly_one_fetch",
            fleet_makes_exactly_one_fetch::<B>,
        ),
        (
            "killed_worker_is_redelivered",
            killed_worker_is_redelivered::<B>,
        ),
        (
            "dead_letters_keep_their_reasons",
            dead_letters_keep_their_reasons::<B>,
        ),
        (
            "graceful_stop_leaves_nothing_pending",
            graceful_stop_leaves_nothing_pending::<B>,
        ),
        ("a_full_queue_refuses", a_full_queue_refuses::<B>),
        (
            "broker_restart_loses_no_request",
            broker_restart_loses_no_request::<B>,
        ),
    ]
}

/// A broker test binary's `main`: runs the child role if this is a child process, else the
/// selected tests (`scenarios` then `extra`) on the broker `start` makes (`None`: skipped).
pub fn main<B: Broker>(extra: &[Test<B>], start: impl FnOnce() -> Option<B>) -> ExitCode {
    if fleet::child_main() {
        return ExitCode::SUCCESS;
    }
    let mut tests = scenarios::<B>();
    tests.extend_from_slice(extra);
    let selected = runner::select(&tests);
    if selected.is_empty() {
        return ExitCode::SUCCESS;
    }
    show_warnings();
    match start() {
        Some(broker) => runner::run(&broker, &selected),
        None => ExitCode::SUCCESS,
    }
}

/// The read path's and the queues' warnings on stderr (not the worker's, which repeat through
/// every outage), so that a scenario that fails shows what the queue said.
fn show_warnings() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "cacheback::client=warn,cacheback::queue=warn",
        ))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs `f` to completion on a runtime of its own, on a thread of its own (the scenarios call
/// the broker's hooks from inside their runtime).
pub fn off_runtime<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
    .unwrap()
}
