//! The fleet with real OS processes sharing one `redis-server` (the store; or a Redis Cluster,
//! [`exactly_one_fetch_on`]) and one queue (Redis Streams, RabbitMQ or NATS JetStream),
//! whichever queue the test binary names:
//!
//! - [`exactly_one_fetch`]: 4 reader processes × 16 concurrent readers hit one stale key at the
//!   same moment, with a separate worker process: exactly 1 fetch (counted with a Redis
//!   `INCR`), in each of 10 trials, and every reader gets the stale value at once.
//! - [`killed_worker_is_replaced`]: a worker process `kill -9`ed in the middle of a fetch;
//!   another worker process completes the refresh (after the queue's redelivery delay).
//!
//! The children are the test binary itself, re-invoked with its role in `CACHEBACK_CHILD`
//! (see `cacheback_test_support::process`); the binary calls [`child_main`] first thing.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cacheback::clock::{TestClock, Timestamp};
use cacheback::queue::Queue;
use cacheback::{Cacheback, Job, JobHandle, Policy, RedisStore, Status, Worker, WorkerOptions};
use cacheback_test_support::RedisServer;
use cacheback_test_support::process::{Proc, field, finish, role, spawn_self, wait_for};

const LIFETIME: Duration = Duration::from_secs(10);
const T0: u64 = 1_704_067_200_000;
const READER_PROCESSES: usize = 4;
const READERS_PER_PROCESS: usize = 16;

/// The queue a fleet uses, passed to the children as `CB_QUEUE` + `CB_QUEUE_URL`.
#[derive(Debug, Clone)]
pub enum QueueKind {
    /// Redis Streams on the store's Redis.
    Redis,
    /// RabbitMQ at this URL.
    Amqp(String),
    /// NATS JetStream at this URL.
    Nats(String),
}

impl QueueKind {
    fn vars(&self) -> [(&'static str, String); 2] {
        let (kind, url) = match self {
            QueueKind::Redis => ("redis", String::new()),
            QueueKind::Amqp(url) => ("amqp", url.clone()),
            QueueKind::Nats(url) => ("nats", url.clone()),
        };
        [("CB_QUEUE", kind.to_owned()), ("CB_QUEUE_URL", url)]
    }

    fn from_env() -> QueueKind {
        let url = std::env::var("CB_QUEUE_URL").unwrap_or_default();
        match env("CB_QUEUE").as_str() {
            "redis" => QueueKind::Redis,
            "amqp" => QueueKind::Amqp(url),
            "nats" => QueueKind::Nats(url),
            other => panic!("unknown queue kind {other}"),
        }
    }

    /// The queue, with `redelivery` as its visibility timeout where it has one (RabbitMQ
    /// redelivers as soon as the consumer's connection closes).
    fn build(&self, redis_url: &str, prefix: &str, redelivery: Duration) -> Arc<dyn Queue> {
        match self {
            QueueKind::Redis => Arc::new(
                cacheback::RedisQueue::builder(redis_url)
                    .prefix(prefix)
                    .poll_interval(Duration::from_millis(100))
                    .visibility_timeout(redelivery)
                    .build()
                    .unwrap(),
            ),
            #[cfg(feature = "amqp")]
            QueueKind::Amqp(url) => Arc::new(
                cacheback::AmqpQueue::builder(url)
                    .prefix(prefix)
                    .poll_interval(Duration::from_millis(100))
                    .build()
                    .unwrap(),
            ),
            #[cfg(feature = "nats")]
            QueueKind::Nats(url) => Arc::new(
                cacheback::NatsQueue::builder(url)
                    .prefix(prefix)
                    .poll_interval(Duration::from_millis(100))
                    .ack_wait(redelivery)
                    .build()
                    .unwrap(),
            ),
            #[allow(unreachable_patterns)]
            other => panic!("{other:?} needs its cargo feature"),
        }
    }
}

/// Fetches count themselves in Redis, then take `sleep`.
struct FleetJob {
    redis: redis::Client,
    prefix: String,
    sleep: Duration,
    /// [`Policy::fleet_coalescing`].
    coalesce: bool,
}

impl Job for FleetJob {
    type Args = u64;
    type Value = String;
    type Error = redis::RedisError;

    fn name(&self) -> &str {
        "fleet"
    }

    fn policy(&self) -> Policy {
        Policy::default()
            .lifetime(LIFETIME)
            .stale_ttl(Duration::from_secs(3600))
            .fleet_coalescing(self.coalesce)
    }

    async fn fetch(&self, n: u64) -> Result<String, redis::RedisError> {
        let mut conn = self.redis.get_multiplexed_async_connection().await?;
        let call: u64 = redis::cmd("INCR")
            .arg(fetches_key(&self.prefix, n))
            .query_async(&mut conn)
            .await?;
        tokio::time::sleep(self.sleep).await;
        Ok(format!("fresh {n} #{call}"))
    }
}

fn fetches_key(prefix: &str, n: u64) -> String {
    format!("{prefix}:fetches:{n}")
}

/// One "process" of the fleet: a client on the shared store and queue.
struct Fleet {
    /// The Redis the processes count fetches and signal each other on.
    redis_url: String,
    /// The store's (and a Redis queue's) URL: the same Redis, or a cluster.
    store_url: String,
    prefix: String,
    queue: QueueKind,
    /// The reader processes read through near caches.
    near: bool,
}

impl Fleet {
    fn client(&self, now: Timestamp, redelivery: Duration) -> Cacheback {
        self.client_on(TestClock::at(now), redelivery, false)
    }

    fn client_on(&self, clock: TestClock, redelivery: Duration, near: bool) -> Cacheback {
        let mut builder = Cacheback::builder()
            .prefix(&self.prefix)
            .clock(clock)
            .store(RedisStore::from_url(&self.store_url).unwrap())
            .shared_queue(self.queue.build(&self.store_url, &self.prefix, redelivery));
        if near {
            builder = builder.near_cache(cacheback::NearCache::new());
        }
        builder.build().unwrap()
    }

    fn job(&self, cache: &Cacheback, sleep: Duration) -> JobHandle<FleetJob> {
        self.job_coalescing(cache, sleep, false)
    }

    fn job_coalescing(
        &self,
        cache: &Cacheback,
        sleep: Duration,
        coalesce: bool,
    ) -> JobHandle<FleetJob> {
        cache.job(FleetJob {
            redis: redis::Client::open(self.redis_url.as_str()).unwrap(),
            prefix: self.prefix.clone(),
            sleep,
            coalesce,
        })
    }

    fn vars(
        &self,
        now: Timestamp,
        extra: &[(&'static str, String)],
    ) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("CB_URL", self.redis_url.clone()),
            ("CB_STORE_URL", self.store_url.clone()),
            ("CB_PREFIX", self.prefix.clone()),
            ("CB_NOW", now.as_millis().to_string()),
        ];
        v.extend(self.queue.vars());
        v.push(("CB_NEAR", u8::from(self.near).to_string()));
        v.extend_from_slice(extra);
        v
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child needs {name}"))
}

/// Runs this process's child role, if it is a child (`CACHEBACK_CHILD`); `false` otherwise.
pub fn child_main() -> bool {
    let Some(role) = role() else {
        return false;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fleet = Fleet {
        redis_url: env("CB_URL"),
        store_url: env("CB_STORE_URL"),
        prefix: env("CB_PREFIX"),
        queue: QueueKind::from_env(),
        near: env("CB_NEAR") == "1",
    };
    let now = Timestamp::from_millis(env("CB_NOW").parse().unwrap());
    runtime.block_on(async move {
        match role.as_str() {
            "reader" => reader_process(&fleet, now).await,
            "miss_reader" => miss_reader_process(&fleet, now).await,
            "worker" => {
                let sleep = Duration::from_millis(env("CB_FETCH_MS").parse().unwrap());
                worker_process(&fleet, now, sleep).await;
            }
            other => panic!("unknown role {other}"),
        }
    });
    true
}

/// Builds a client, reports ready, waits for the go signal, then runs 16 concurrent reads of
/// the stale key and prints what they saw.
async fn reader_process(fleet: &Fleet, now: Timestamp) {
    let n: u64 = env("CB_ARGS").parse().unwrap();
    // With a near cache, the process first reads the key while it is fresh (its copy is
    // kept), then its clock moves on to when the key is stale.
    let clock = TestClock::at(if fleet.near {
        Timestamp::from_millis(T0)
    } else {
        now
    });
    let cache = fleet.client_on(clock.clone(), Duration::from_secs(30), fleet.near);
    let job = fleet.job(&cache, Duration::ZERO);
    if fleet.near {
        let deadline = Instant::now() + Duration::from_secs(30);
        while cache.near_cache_live() != Some(true) {
            assert!(Instant::now() < deadline, "the near cache never went live");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        job.get(n).await.unwrap();
        clock.set(now);
    }
    // Warm the store's connection (another key), so the burst is not a connection race.
    job.peek(u64::MAX).await.unwrap();
    ready_and_wait_for_go(fleet, n).await;
    let reads = (0..READERS_PER_PROCESS).map(|_| {
        let job = job.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let read = job.get_with_status(n).await.unwrap();
            (read, started.elapsed())
        })
    });
    let (mut triggered, mut stale, mut slowest) = (0, 0, Duration::ZERO);
    for read in futures_util::future::join_all(reads).await {
        let (read, took) = read.unwrap();
        if read.status == Status::Stale && read.value.as_deref().map(String::as_str) == Some("old")
        {
            stale += 1;
        }
        triggered += usize::from(read.refresh_triggered);
        slowest = slowest.max(took);
    }
    // A near cache's stale readers ask for the claim in the background: let that finish, as
    // a service's graceful stop would.
    cache.shutdown(Duration::from_secs(10)).await;
    println!(
        "READER triggered={triggered} stale={stale} slowest_us={}",
        slowest.as_micros()
    );
}

/// Says this process is ready (`<prefix>:ready:<n>`), then waits for `<prefix>:go:<n>`.
async fn ready_and_wait_for_go(fleet: &Fleet, n: u64) {
    let redis = redis::Client::open(fleet.redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let prefix = &fleet.prefix;
    let _: u64 = redis::cmd("INCR")
        .arg(format!("{prefix}:ready:{n}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let go: Option<String> = redis::cmd("GET")
            .arg(format!("{prefix}:go:{n}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if go.is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "no go signal");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Builds a client whose job coalesces misses across the fleet or not (`CB_COALESCE`),
/// reports ready, waits for the go signal, then runs 16 concurrent reads of the cold key
/// (each fetching a miss) and prints how many got the fleet's first fetch's value.
async fn miss_reader_process(fleet: &Fleet, now: Timestamp) {
    let n: u64 = env("CB_ARGS").parse().unwrap();
    let coalesce = env("CB_COALESCE") == "1";
    let cache = fleet.client(now, Duration::from_secs(30));
    let job = fleet.job_coalescing(&cache, Duration::from_millis(MISS_FETCH_MS), coalesce);
    job.peek(u64::MAX).await.unwrap();
    ready_and_wait_for_go(fleet, n).await;
    let reads = (0..READERS_PER_PROCESS).map(|_| {
        let job = job.clone();
        tokio::spawn(async move { job.get(n).await.unwrap() })
    });
    let first = format!("fresh {n} #1");
    let mut got_first = 0;
    for value in futures_util::future::join_all(reads).await {
        got_first += usize::from(*value.unwrap() == first);
    }
    cache.shutdown(Duration::from_secs(10)).await;
    println!("MISS_READER got_first={got_first}");
}

/// Spawns the reader processes (`role`) of round `n`, waits until each says it is ready, then
/// gives them the go signal together.
fn start_readers(
    server: &RedisServer,
    prefix: &str,
    n: u64,
    role: &str,
    vars: &[(&'static str, String)],
) -> Vec<Proc> {
    let readers = (0..READER_PROCESSES)
        .map(|_| spawn_self(role, vars))
        .collect();
    let ready_key = format!("{prefix}:ready:{n}");
    wait_for("readers ready", Duration::from_secs(30), || {
        server.cmd::<Option<u64>>(&["GET", &ready_key]) == Some(READER_PROCESSES as u64)
    });
    let _: () = server.cmd(&["SET", &format!("{prefix}:go:{n}"), "1"]);
    readers
}

/// How long a miss reader's fetch takes.
const MISS_FETCH_MS: u64 = 300;

/// 4 reader processes × 16 concurrent readers read one cold key at the same moment, their
/// job coalescing misses across the fleet (`coalesce`) or only within each process. Returns
/// the fetches made and how many readers got the value of the fetch counted first.
pub fn cold_key_burst(server: &RedisServer, prefix: &str, n: u64, coalesce: bool) -> (u64, u64) {
    let fleet = Fleet {
        redis_url: server.url(),
        store_url: server.url(),
        prefix: prefix.to_owned(),
        queue: QueueKind::Redis,
        near: false,
    };
    let now = Timestamp::from_millis(T0);
    let vars = fleet.vars(
        now,
        &[
            ("CB_ARGS", n.to_string()),
            ("CB_COALESCE", u8::from(coalesce).to_string()),
        ],
    );
    let readers = start_readers(server, prefix, n, "miss_reader", &vars);
    let mut got_first = 0;
    for reader in readers {
        let lines = finish(reader, "MISS_READER", Duration::from_secs(60));
        assert_eq!(lines.len(), 1, "{lines:?}");
        got_first += field(&lines[0], "got_first");
    }
    let fetches: Option<u64> = server.cmd(&["GET", &fetches_key(prefix, n)]);
    (fetches.unwrap_or(0), got_first)
}

/// Drains the queue until `<prefix>:stop` is set.
async fn worker_process(fleet: &Fleet, now: Timestamp, sleep: Duration) {
    let cache = fleet.client(now, Duration::from_secs(1));
    fleet.job(&cache, sleep);
    let worker = Worker::builder(&cache)
        .options(WorkerOptions::default().drain_timeout(Duration::from_secs(5)))
        .build()
        .unwrap();
    let redis = redis::Client::open(fleet.redis_url.as_str()).unwrap();
    let stop_key = format!("{}:stop", fleet.prefix);
    // Stops when told to, and by itself when the parent test is gone (its Redis with it) or
    // after two minutes, so a failed test never leaves a worker behind.
    let report = worker
        .run_until(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut unreachable_since: Option<Instant> = None;
            while Instant::now() < deadline {
                let stop = match redis.get_multiplexed_async_connection().await {
                    Ok(mut conn) => redis::cmd("GET")
                        .arg(&stop_key)
                        .query_async::<Option<String>>(&mut conn)
                        .await
                        .ok(),
                    Err(_) => None,
                };
                match stop {
                    Some(Some(_)) => return,
                    Some(None) => unreachable_since = None,
                    None => {
                        let since = *unreachable_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(5) {
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    println!("WORKER processed={}", report.processed);
}

/// Whether `n` is Fresh, read without side effects.
fn is_fresh(runtime: &tokio::runtime::Runtime, job: &JobHandle<FleetJob>, n: u64) -> bool {
    runtime
        .block_on(job.peek(n))
        .unwrap()
        .is_some_and(|p| p.freshness == cacheback::Freshness::Fresh)
}

/// The test's own runtime, with a thread that runs what the test's clients do in the
/// background (a stale read's claim and enqueue) while the test waits on its child processes.
fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// 4 reader processes and a worker process, 10 stale events: exactly one fetch each.
pub fn exactly_one_fetch(server: &RedisServer, queue: QueueKind, prefix: &str) {
    exactly_one_fetch_of(server, &server.url(), queue, prefix, false);
}

/// The same with the store (and a Redis queue) at `store_url` (a Redis Cluster), the fetches
/// counted and the processes signalled on `control`.
pub fn exactly_one_fetch_on(
    control: &RedisServer,
    store_url: &str,
    queue: QueueKind,
    prefix: &str,
) {
    exactly_one_fetch_of(control, store_url, queue, prefix, false);
}

/// The same with near caches in the reader processes, each holding a copy of the key taken
/// while it was fresh: still exactly one fetch per stale event, and no reader waits for Redis.
pub fn exactly_one_fetch_with_near_caches(server: &RedisServer, prefix: &str) {
    exactly_one_fetch_of(server, &server.url(), QueueKind::Redis, prefix, true);
}

fn exactly_one_fetch_of(
    server: &RedisServer,
    store_url: &str,
    queue: QueueKind,
    prefix: &str,
    near: bool,
) {
    let fleet = Fleet {
        redis_url: server.url(),
        store_url: store_url.to_owned(),
        prefix: prefix.to_owned(),
        queue,
        near,
    };
    let stale_now = Timestamp::from_millis(T0).saturating_add(LIFETIME);
    let worker = spawn_self(
        "worker",
        &fleet.vars(stale_now, &[("CB_FETCH_MS", "200".to_owned())]),
    );
    let runtime = test_runtime();
    // The parent writes the values at T0: Fresh then, Stale at T0 + LIFETIME.
    let writer = runtime.block_on(async {
        let cache = fleet.client(Timestamp::from_millis(T0), Duration::from_secs(30));
        let job = fleet.job(&cache, Duration::ZERO);
        (cache, job)
    });
    let results = runtime.block_on(async {
        let cache = fleet.client(stale_now, Duration::from_secs(30));
        fleet.job(&cache, Duration::ZERO)
    });
    let mut slowest_us = Vec::new();
    for trial in 0..10u64 {
        runtime
            .block_on(writer.1.set(trial, "old".to_owned()))
            .unwrap();
        let vars = fleet.vars(stale_now, &[("CB_ARGS", trial.to_string())]);
        let readers = start_readers(server, prefix, trial, "reader", &vars);
        let mut triggered = 0;
        for reader in readers {
            let lines = finish(reader, "READER", Duration::from_secs(30));
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert_eq!(
                field(&lines[0], "stale"),
                READERS_PER_PROCESS as u64,
                "every reader got the stale value at once: {lines:?}"
            );
            triggered += field(&lines[0], "triggered");
            slowest_us.push(field(&lines[0], "slowest_us"));
        }
        // Each process's first stale reader asks (in the background); the claim lets one of
        // them enqueue (the worker's count at the end says exactly one request per trial).
        assert!(
            (1..=READER_PROCESSES as u64).contains(&triggered),
            "trial {trial}: at most one reader per process asked, {triggered} did"
        );
        // Polled with `peek`: a polling read could trigger a refresh of its own.
        wait_for("the worker's refresh", Duration::from_secs(30), || {
            is_fresh(&runtime, &results, trial)
        });
        let count: Option<u64> = server.cmd(&["GET", &fetches_key(prefix, trial)]);
        assert_eq!(count, Some(1), "trial {trial}: exactly one fetch");
    }
    let _: () = server.cmd(&["SET", &format!("{prefix}:stop"), "1"]);
    let lines = finish(worker, "WORKER", Duration::from_secs(30));
    assert_eq!(lines, ["WORKER processed=10"]);
    slowest_us.sort_unstable();
    eprintln!(
        "slowest reader per process across 10 trials: median {} µs, max {} µs",
        slowest_us[slowest_us.len() / 2],
        slowest_us.last().unwrap()
    );
    drop(writer);
}

/// A worker `kill -9`ed mid-fetch: another worker process completes the refresh; returns how
/// long after the kill.
pub fn killed_worker_is_replaced(server: &RedisServer, queue: QueueKind, prefix: &str) -> Duration {
    let fleet = Fleet {
        redis_url: server.url(),
        store_url: server.url(),
        prefix: prefix.to_owned(),
        queue,
        near: false,
    };
    let stale_now = Timestamp::from_millis(T0).saturating_add(LIFETIME);
    let vars = |fetch_ms: &str| fleet.vars(stale_now, &[("CB_FETCH_MS", fetch_ms.to_owned())]);
    let runtime = test_runtime();
    let (_writer, job) = runtime.block_on(async {
        let cache = fleet.client(Timestamp::from_millis(T0), Duration::from_secs(30));
        let job = fleet.job(&cache, Duration::ZERO);
        job.set(1, "old".to_owned()).await.unwrap();
        (cache, job)
    });
    let (_reader, reader) = runtime.block_on(async {
        let cache = fleet.client(stale_now, Duration::from_secs(30));
        let job = fleet.job(&cache, Duration::ZERO);
        (cache, job)
    });
    drop(job);
    let read = runtime.block_on(reader.get_with_status(1)).unwrap();
    assert_eq!(read.status, Status::Stale);
    assert!(read.refresh_triggered);

    // A worker whose fetch hangs for a minute: killed with SIGKILL once the fetch started.
    let mut doomed = spawn_self("worker", &vars("60000"));
    let fetches = fetches_key(prefix, 1);
    wait_for("the doomed worker's fetch", Duration::from_secs(30), || {
        server.cmd::<Option<u64>>(&["GET", &fetches]) == Some(1)
    });
    doomed.kill(); // SIGKILL
    let killed_at = Instant::now();

    let survivor = spawn_self("worker", &vars("0"));
    wait_for(
        "the surviving worker's refresh",
        Duration::from_secs(30),
        || is_fresh(&runtime, &reader, 1),
    );
    let took = killed_at.elapsed();
    assert_eq!(
        server.cmd::<Option<u64>>(&["GET", &fetches]),
        Some(2),
        "the killed fetch and its redelivery"
    );
    assert_eq!(*runtime.block_on(reader.get(1)).unwrap(), "fresh 1 #2");
    let _: () = server.cmd(&["SET", &format!("{prefix}:stop"), "1"]);
    let lines = finish(survivor, "WORKER", Duration::from_secs(30));
    assert_eq!(lines, ["WORKER processed=1"]);
    took
}
