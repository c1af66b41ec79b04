//! Deployments real teams run, on a real Redis: two applications on one Redis, web and worker
//! processes built differently, a Redis that evicts keys, workers stopped during a deploy, a
//! Redis that is down or refuses the credentials, a failing upstream seen by several
//! processes. Each "process" is a client of its own on the test's runtime.

#![cfg(all(feature = "redis", feature = "json"))]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cacheback::clock::TestClock;
use cacheback::worker::WorkerReport;
use cacheback::{
    Cacheback, Codec, Error, Event, Freshness, Job, JobHandle, Policy, RedisQueue, RedisStore,
    Status, Worker, WorkerOptions,
};
use support::{RedisServer, eventually, unique_prefix};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WITHIN: Duration = Duration::from_secs(10);
const LIFETIME: Duration = Duration::from_secs(10);

/// A fake upstream shared by every process of a test: counts calls, can fail or hold calls.
#[derive(Default)]
struct Upstream {
    calls: AtomicUsize,
    failing: Mutex<bool>,
    gate: Mutex<Option<Arc<Notify>>>,
}

impl Upstream {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
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
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gated) = gated {
            gated.await;
        }
        if *self.failing.lock().unwrap() {
            return Err(std::io::Error::other("upstream is down"));
        }
        Ok(format!("value {n}"))
    }
}

struct Profile {
    policy: Policy,
    upstream: Arc<Upstream>,
}

impl Job for Profile {
    type Args = u64;
    type Value = String;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        "profile"
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
        .stale_ttl(Duration::from_secs(100))
}

/// A queue as the README builds one: no prefix of its own (it takes the client's).
fn readme_queue(server: &RedisServer) -> RedisQueue {
    RedisQueue::builder(&server.url())
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap()
}

/// A queue handle for looking at an app's streams.
fn inspector(server: &RedisServer, prefix: &str) -> RedisQueue {
    RedisQueue::builder(&server.url())
        .prefix(prefix)
        .build()
        .unwrap()
}

/// One "process" of a fleet: a client on the shared Redis with the `profile` job.
struct Process {
    client: Cacheback,
    job: JobHandle<Profile>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Process {
    fn start(
        server: &RedisServer,
        prefix: &str,
        clock: &TestClock,
        queue: RedisQueue,
        job_policy: Policy,
        upstream: &Arc<Upstream>,
        configure: impl FnOnce(cacheback::CachebackBuilder) -> cacheback::CachebackBuilder,
    ) -> Process {
        let (tx, events) = mpsc::unbounded_channel();
        let builder = Cacheback::builder()
            .prefix(prefix)
            .clock(clock.clone())
            .store(RedisStore::from_url(&server.url()).unwrap())
            .queue(queue)
            .on_event(move |e| {
                let _ = tx.send(e.clone());
            });
        let client = configure(builder).build().unwrap();
        let job = client.job(Profile {
            policy: job_policy,
            upstream: Arc::clone(upstream),
        });
        Process {
            client,
            job,
            events,
        }
    }

    /// Runs a worker for this process's jobs until `stop`.
    fn run_worker(&self, stop: &CancellationToken) -> JoinHandle<WorkerReport> {
        let worker = Worker::builder(&self.client)
            .options(WorkerOptions::default())
            .build()
            .unwrap();
        let stop = stop.clone();
        tokio::spawn(async move { worker.run_until(stop.cancelled_owned()).await })
    }

    async fn event(&mut self, pred: impl Fn(&Event) -> bool) -> Event {
        tokio::time::timeout(WITHIN, async {
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

    async fn is_fresh(&self, n: u64) -> bool {
        self.job
            .peek(n)
            .await
            .unwrap()
            .is_some_and(|p| p.freshness == Freshness::Fresh && p.value.is_some())
    }
}

// Two applications copied from the README (client prefix set, queue built without one) on one
// Redis: each app's workers see only that app's requests, and every refresh lands.
#[tokio::test]
async fn two_apps_from_the_readme_on_one_redis_do_not_share_refreshes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = TestClock::new();
    let stop = CancellationToken::new();
    let upstream = Arc::new(Upstream::default());
    let lazy = policy().fetch_on_miss(false);
    let mut apps = Vec::new();
    let mut workers = Vec::new();
    for name in ["shop", "blog"] {
        let prefix = unique_prefix(name);
        let web = Process::start(
            &server,
            &prefix,
            &clock,
            readme_queue(&server),
            lazy.clone(),
            &upstream,
            |b| b,
        );
        let worker = Process::start(
            &server,
            &prefix,
            &clock,
            readme_queue(&server),
            lazy.clone(),
            &upstream,
            |b| b,
        );
        workers.push(worker.run_worker(&stop));
        apps.push((web, worker));
    }
    for (web, _) in &apps {
        for n in 0..10 {
            assert_eq!(
                web.job.get_with_status(n).await.unwrap().status,
                Status::Miss
            );
        }
    }
    for (web, _) in &apps {
        eventually("every key of both apps refreshed", WITHIN, || async {
            for n in 0..10 {
                if !web.is_fresh(n).await {
                    return false;
                }
            }
            true
        })
        .await;
    }
    stop.cancel();
    for worker in workers {
        let report = worker.await.unwrap();
        assert_eq!(
            report.dead_lettered, 0,
            "a worker saw the other app's requests"
        );
        assert_eq!(report.processed, 10);
    }
    assert_eq!(upstream.calls(), 20);
}

// A queue built with a prefix other than its client's is refused at build(), by the client and
// by a worker.
#[tokio::test]
async fn a_queue_with_another_prefix_is_refused_at_build() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let other = || {
        RedisQueue::builder(&server.url())
            .prefix("other-app")
            .build()
            .unwrap()
    };
    let err = Cacheback::builder()
        .prefix("my-app")
        .store(RedisStore::from_url(&server.url()).unwrap())
        .queue(other())
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("`other-app`") && text.contains("`my-app`"),
        "{text}"
    );
    // The same prefix is fine, and a queue without one takes the client's.
    let same = RedisQueue::builder(&server.url())
        .prefix("my-app")
        .build()
        .unwrap();
    let client = Cacheback::builder()
        .prefix("my-app")
        .store(RedisStore::from_url(&server.url()).unwrap())
        .queue(same)
        .build()
        .unwrap();
    let inherits = readme_queue(&server);
    let _other_client = Cacheback::builder()
        .prefix("inheriting")
        .store(RedisStore::from_url(&server.url()).unwrap())
        .queue(inherits.clone())
        .build()
        .unwrap();
    assert_eq!(inherits.prefix(), "inheriting");
    // A worker given a queue of another prefix is refused too.
    let err = Worker::builder(&client)
        .queue(Arc::new(other()))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("`other-app`"), "{err}");
}

// Web on JSON, worker on postcard: the worker refuses the request with a reason instead of
// writing values the web side cannot read, nothing is fetched in a loop, and an entry written
// with another codec is reported when it is read.
#[tokio::test]
async fn processes_built_with_different_codecs_are_reported_not_looped() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("codecs");
    let clock = TestClock::new();
    let stop = CancellationToken::new();
    let upstream = Arc::new(Upstream::default());
    let lazy = policy().fetch_on_miss(false);
    let json = |b: cacheback::CachebackBuilder| b.codec(Codec::Json);
    let web = Process::start(
        &server,
        &prefix,
        &clock,
        readme_queue(&server),
        lazy.clone(),
        &upstream,
        json,
    );
    let mut worker = Process::start(
        &server,
        &prefix,
        &clock,
        readme_queue(&server),
        lazy,
        &upstream,
        |b| b,
    );
    let running = worker.run_worker(&stop);
    assert!(web.job.get_with_status(1).await.unwrap().refresh_triggered);
    let event = worker
        .event(|e| matches!(e, Event::DeadLettered { .. }))
        .await;
    let Event::DeadLettered { reason, .. } = event else {
        unreachable!()
    };
    assert!(reason.contains("codec mismatch"), "{reason}");
    assert!(
        reason.contains("json") && reason.contains("postcard"),
        "{reason}"
    );
    // The claim is kept: the next reads do not enqueue again, and nothing was fetched.
    for _ in 0..5 {
        assert!(!web.job.get_with_status(1).await.unwrap().refresh_triggered);
    }
    assert_eq!(upstream.calls(), 0);
    // An entry written by the JSON process, read by the postcard one: a miss that says why.
    web.job.set(2, "written as json".to_owned()).await.unwrap();
    let read = worker.job.get_with_status(2).await.unwrap();
    assert_eq!(read.status, Status::Miss);
    let event = worker
        .event(|e| matches!(e, Event::EntryUndecodable { .. }))
        .await;
    let Event::EntryUndecodable { reason, .. } = event else {
        unreachable!()
    };
    assert!(
        reason.contains("json") && reason.contains("postcard"),
        "{reason}"
    );
    stop.cancel();
    assert_eq!(running.await.unwrap().dead_lettered, 1);
}

/// The Redis key of `n`'s claim.
fn claim_key(job: &JobHandle<Profile>, n: u64) -> String {
    format!("{{{}}}:c", job.key(&n).unwrap())
}

/// Makes `n` stale with a refresh (held at the upstream's gate) running in the worker.
async fn stale_with_a_refresh_running(web: &Process, clock: &TestClock, upstream: &Upstream) {
    web.job.set(7, "old".to_owned()).await.unwrap();
    clock.advance(LIFETIME + Duration::from_secs(1));
    upstream.close_gate();
    let read = web.job.get_with_status(7).await.unwrap();
    assert_eq!(read.status, Status::Stale);
    assert!(read.refresh_triggered);
    eventually("the refresh started", WITHIN, || async {
        upstream.calls() == 1
    })
    .await;
}

// A claim deleted while its refresh runs (three times): the readers enqueue again, but the
// workers already refreshing the key skip those requests. Two worker processes: at most two
// fetches for the stale event (one per process).
#[tokio::test]
async fn claims_deleted_mid_refresh_cost_at_most_one_fetch_per_worker_process() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("evicted");
    let clock = TestClock::new();
    let stop = CancellationToken::new();
    let upstream = Arc::new(Upstream::default());
    let web = Process::start(
        &server,
        &prefix,
        &clock,
        readme_queue(&server),
        policy(),
        &upstream,
        |b| b,
    );
    let workers: Vec<Process> = (0..2)
        .map(|_| {
            Process::start(
                &server,
                &prefix,
                &clock,
                readme_queue(&server),
                policy(),
                &upstream,
                |b| b,
            )
        })
        .collect();
    let running: Vec<_> = workers.iter().map(|w| w.run_worker(&stop)).collect();
    stale_with_a_refresh_running(&web, &clock, &upstream).await;
    let queue = inspector(&server, &prefix);
    for round in 1..=3u64 {
        let deleted: u64 = server.cmd(&["DEL", &claim_key(&web.job, 7)]);
        assert_eq!(deleted, 1, "round {round}: the claim was there");
        clock.advance(Duration::from_secs(1));
        let read = web.job.get_with_status(7).await.unwrap();
        assert!(
            read.refresh_triggered,
            "round {round}: the lost claim is taken again"
        );
        eventually("the request was delivered", WITHIN, || async {
            queue.pending("default").await.unwrap() == 1 + round
        })
        .await;
    }
    upstream.open_gate();
    eventually(
        "the key refreshed and the queue settled",
        WITHIN,
        || async {
            web.is_fresh(7).await
                && queue.len("default").await.unwrap() == 0
                && queue.pending("default").await.unwrap() == 0
        },
    )
    .await;
    assert!(
        upstream.calls() <= 2,
        "{} fetches for one stale event",
        upstream.calls()
    );
    stop.cancel();
    for worker in running {
        worker.await.unwrap();
    }
}

// A Redis with maxmemory and an allkeys-* policy evicts a claim while its refresh runs: the
// eviction settings are reported, and one worker process fetches the key once.
#[tokio::test]
async fn a_redis_that_evicts_claims_is_reported_and_costs_no_second_fetch() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let _: () = server.cmd(&["CONFIG", "SET", "maxmemory", "8mb"]);
    let _: () = server.cmd(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let store = RedisStore::from_url(&server.url()).unwrap();
    let warning = store.eviction_warning().await.unwrap().expect("a warning");
    assert!(
        warning.contains("allkeys-lru") && warning.contains("noeviction"),
        "{warning}"
    );
    // LRU's clock ticks once a second, so within a fast test it cannot tell the entry the test
    // keeps reading from the claim nobody reads, and may evict either. LFU can: the run below
    // evicts the claim (as LRU does in a real deployment) and keeps the entry.
    let _: () = server.cmd(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lfu"]);
    let prefix = unique_prefix("lru");
    let clock = TestClock::new();
    let stop = CancellationToken::new();
    let upstream = Arc::new(Upstream::default());
    let web = Process::start(
        &server,
        &prefix,
        &clock,
        readme_queue(&server),
        policy(),
        &upstream,
        |b| b,
    );
    let worker = Process::start(
        &server,
        &prefix,
        &clock,
        readme_queue(&server),
        policy(),
        &upstream,
        |b| b,
    );
    let running = worker.run_worker(&stop);
    stale_with_a_refresh_running(&web, &clock, &upstream).await;
    let queue = inspector(&server, &prefix);
    let claim = claim_key(&web.job, 7);
    let entry = format!("{{{}}}", web.job.key(&7).unwrap());
    let stream = format!("{{{prefix}:queue}}:stream:default");
    let filler = "x".repeat(16 << 10);
    let mut conn = server.conn();
    let mut written = 0u32;
    for round in 1..=2u64 {
        // Fill Redis until it evicts the claim, keeping the entry itself in use.
        while server.cmd::<u64>(&["EXISTS", &claim]) == 1 {
            let mut pipe = redis::pipe();
            for _ in 0..64 {
                written += 1;
                pipe.cmd("SET")
                    .arg(format!("filler:{written}"))
                    .arg(&filler)
                    .ignore();
                // Reads keep the entry and the stream in use: LFU spares them.
                pipe.cmd("GET").arg(&entry).ignore();
                pipe.cmd("XLEN").arg(&stream).ignore();
            }
            let () = pipe.query(&mut conn).unwrap();
            assert!(written < 100_000, "the claim was never evicted");
        }
        clock.advance(Duration::from_secs(1));
        let read = web.job.get_with_status(7).await.unwrap();
        assert_eq!(read.status, Status::Stale, "round {round}: the entry stays");
        assert!(
            read.refresh_triggered,
            "round {round}: the evicted claim is taken again"
        );
        // Wait until the worker holds the request (before more filler can evict the stream).
        eventually("the request was delivered", WITHIN, || async {
            queue.pending("default").await.unwrap() > round
        })
        .await;
    }
    upstream.open_gate();
    eventually("the key refreshed", WITHIN, || async {
        web.is_fresh(7).await
    })
    .await;
    stop.cancel();
    let report = running.await.unwrap();
    assert_eq!(report.processed, 3);
    assert_eq!(
        upstream.calls(),
        1,
        "one worker process fetches a key once per stale event"
    );
}

// A worker stopped while its read waits in Redis: a request delivered to it as it stops is
// handed back at once, not left pending for the visibility timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_leaves_nothing_pending() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("deploy");
    let clock = TestClock::new();
    let upstream = Arc::new(Upstream::default());
    let slow_poll = || {
        RedisQueue::builder(&server.url())
            .poll_interval(Duration::from_secs(2))
            .visibility_timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    };
    let lazy = policy().fetch_on_miss(false);
    let web = Process::start(
        &server,
        &prefix,
        &clock,
        slow_poll(),
        lazy.clone(),
        &upstream,
        |b| b,
    );
    let old = Process::start(
        &server,
        &prefix,
        &clock,
        slow_poll(),
        lazy.clone(),
        &upstream,
        |b| b,
    );
    let stop_old = CancellationToken::new();
    let running = old.run_worker(&stop_old);
    eventually("the worker waits in XREADGROUP", WITHIN, || async {
        let info: String = server.cmd(&["INFO", "clients"]);
        info.contains("blocked_clients:1")
    })
    .await;
    stop_old.cancel();
    assert!(web.job.get_with_status(1).await.unwrap().refresh_triggered);
    running.await.unwrap();
    let queue = inspector(&server, &prefix);
    assert_eq!(
        queue.pending("default").await.unwrap(),
        0,
        "nothing left pending"
    );
    // The new worker takes it at once (the visibility timeout is 60 s).
    let new = Process::start(
        &server,
        &prefix,
        &clock,
        slow_poll(),
        lazy,
        &upstream,
        |b| b,
    );
    let stop_new = CancellationToken::new();
    let running = new.run_worker(&stop_new);
    eventually("the new worker refreshed the key", WITHIN, || async {
        web.is_fresh(1).await
    })
    .await;
    stop_new.cancel();
    running.await.unwrap();
    assert_eq!(upstream.calls(), 1);
}

// A Redis that is not there and one that refuses the credentials are told apart, in the error
// a health check returns and in its causes; the password is never shown.
#[tokio::test]
async fn unreachable_and_refused_credentials_are_told_apart() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = |url: String| {
        Cacheback::builder()
            .store(
                RedisStore::builder(&url)
                    .command_timeout(Duration::from_millis(500))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    };
    let down = client(format!("redis://127.0.0.1:{closed}"))
        .health_check()
        .await
        .unwrap_err();
    assert!(down.to_string().contains("connection refused"), "{down}");
    let _: () = server.cmd(&["CONFIG", "SET", "requirepass", "right-one"]);
    let refused = client(format!("redis://:wrong-one@127.0.0.1:{}", server.port()))
        .health_check()
        .await
        .unwrap_err();
    let text = refused.to_string();
    assert!(text.contains("refused the credentials"), "{text}");
    assert!(
        !format!("{refused:?} {text}").contains("wrong-one"),
        "the password is never shown"
    );
    // The redis error itself stays reachable as a cause.
    let mut causes = 0;
    let mut next = std::error::Error::source(&refused);
    while let Some(cause) = next {
        causes += 1;
        next = cause.source();
    }
    assert!(causes >= 2, "{refused:?}");
    client(format!("redis://:right-one@127.0.0.1:{}", server.port()))
        .health_check()
        .await
        .unwrap();
}

// A failing upstream seen by two processes: the second backs off on the first's failure
// (shared through Redis) instead of calling the upstream again.
#[tokio::test]
async fn a_failing_miss_backs_off_across_the_fleet() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("backoff");
    let clock = TestClock::new();
    let upstream = Arc::new(Upstream::default());
    *upstream.failing.lock().unwrap() = true;
    let a = Process::start(
        &server,
        &prefix,
        &clock,
        readme_queue(&server),
        policy(),
        &upstream,
        |b| b,
    );
    let b = Process::start(
        &server,
        &prefix,
        &clock,
        readme_queue(&server),
        policy(),
        &upstream,
        |b| b,
    );
    assert!(matches!(
        a.job.get(1).await.unwrap_err(),
        Error::Fetch { .. }
    ));
    for _ in 0..10 {
        let err = b.job.get(1).await.unwrap_err();
        assert!(
            matches!(err, Error::BackingOff { failures: 1, .. }),
            "{err}"
        );
    }
    assert_eq!(upstream.calls(), 1);
}

// With the store down, a read is answered without the cache and says so.
#[tokio::test]
async fn a_read_during_a_store_outage_is_bypassed_not_a_miss() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("outage");
    let clock = TestClock::new();
    let upstream = Arc::new(Upstream::default());
    let mut web = Process::start(
        &server,
        &prefix,
        &clock,
        readme_queue(&server),
        policy(),
        &upstream,
        |b| b,
    );
    server.stop();
    let read = web.job.get_with_status(1).await.unwrap();
    assert_eq!(read.status, Status::Bypassed);
    assert_eq!(read.value.as_deref().map(String::as_str), Some("value 1"));
    let event = web
        .event(|e| matches!(e, Event::CacheBypassed { .. }))
        .await;
    let Event::CacheBypassed { error, .. } = event else {
        unreachable!()
    };
    assert!(matches!(error, Error::Store { .. }), "{error}");
}
