//! Tags across a fleet on a real Redis: `invalidate_tag` in one process reaches the near
//! caches of the others through its announcement, a lost announcement is still seen within
//! the tag check interval (with the subscription up, and with it killed), and the entries are
//! refreshed exactly once each. The last test runs the fleet as OS processes.
//!
//! Clients in one test binary have their own connections and subscriptions, as processes do;
//! the tag check interval runs on a shared `TestClock`, and waits for Redis round trips are
//! bounded polls.

#![cfg(feature = "redis")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cacheback::clock::{TestClock, Timestamp};
use cacheback::{
    Cacheback, Job, JobHandle, NearCache, Policy, RedisQueue, RedisStore, Status, Tags, Worker,
};
use cacheback_test_support::process::{field, finish, role, spawn_self, wait_for};
use support::{RedisServer, eventually, unique_prefix};
use tokio_util::sync::CancellationToken;

const LIFETIME: Duration = Duration::from_secs(600);
const INTERVAL: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(10);

/// `n -> "<n> #<call>"`, tagged `group:<n % 2>`; counts its calls per key in Redis, so that
/// the processes of a fleet count together.
struct Grouped {
    redis: redis::Client,
    prefix: String,
    calls: Arc<AtomicU64>,
}

impl Job for Grouped {
    type Args = u64;
    type Value = String;
    type Error = redis::RedisError;

    fn name(&self) -> &str {
        "grouped"
    }

    fn policy(&self) -> Policy {
        Policy::default()
            .lifetime(LIFETIME)
            .stale_ttl(Duration::from_secs(3600))
    }

    async fn fetch(&self, n: u64) -> Result<String, redis::RedisError> {
        let mut conn = self.redis.get_multiplexed_async_connection().await?;
        let call: u64 = redis::cmd("INCR")
            .arg(format!("{}:fetches:{n}", self.prefix))
            .query_async(&mut conn)
            .await?;
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(format!("{n} #{call}"))
    }

    fn tags(&self, n: &u64, _: &String) -> Tags {
        Tags::new().with(format!("group:{}", n % 2))
    }
}

/// One Redis and the clients ("processes") on it, sharing a prefix and a clock.
struct Fleet {
    url: String,
    prefix: String,
    clock: TestClock,
    calls: Arc<AtomicU64>,
}

impl Fleet {
    fn new(server: &RedisServer, clock: TestClock) -> Fleet {
        Fleet {
            url: server.url(),
            prefix: unique_prefix("tags"),
            clock,
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A client; `announce`: its writes and tag bumps are announced; `near`: it has a near
    /// cache (and listens to announcements).
    fn client(&self, announce: bool, near: bool) -> (Cacheback, JobHandle<Grouped>) {
        let store = RedisStore::builder(&self.url)
            .announce_changes(announce)
            .build()
            .unwrap();
        let mut builder = Cacheback::builder()
            .prefix(self.prefix.clone())
            .clock(self.clock.clone())
            .store(store)
            .queue(RedisQueue::builder(&self.url).build().unwrap())
            .in_process_worker(false)
            .tag_check_interval(INTERVAL);
        if near {
            builder = builder.near_cache(NearCache::new().ttl(LIFETIME));
        }
        let cache = builder.build().unwrap();
        let job = cache.job(Grouped {
            redis: redis::Client::open(self.url.as_str()).unwrap(),
            prefix: self.prefix.clone(),
            calls: Arc::clone(&self.calls),
        });
        (cache, job)
    }

    fn fetches(&self, server: &RedisServer, n: u64) -> u64 {
        server
            .cmd::<Option<u64>>(&["GET", &format!("{}:fetches:{n}", self.prefix)])
            .unwrap_or(0)
    }
}

async fn status(job: &JobHandle<Grouped>, n: u64) -> Status {
    job.get_with_status(n).await.unwrap().status
}

/// Reads `n` until its copy is served by the near cache (no `GET` reaches Redis).
async fn served_near(server: &RedisServer, cache: &Cacheback, job: &JobHandle<Grouped>, n: u64) {
    eventually("a read answered by the near cache", WAIT, || async {
        if cache.near_cache_live() != Some(true) {
            return false;
        }
        job.get(n).await.unwrap();
        let gets = server.command_calls("get");
        job.get(n).await.unwrap();
        server.command_calls("get") == gets
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_tag_bump_reaches_near_caches_and_each_entry_is_refreshed_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let fleet = Fleet::new(&server, TestClock::new());
    let (_a, writer) = fleet.client(true, false);
    for n in 0..4 {
        writer.get(n).await.unwrap();
    }
    let readers: Vec<_> = (0..3).map(|_| fleet.client(true, true)).collect();
    for (cache, job) in &readers {
        for n in 0..4 {
            served_near(&server, cache, job, n).await;
        }
    }

    writer.client().invalidate_tag("group:1").await.unwrap();
    // The clock does not move: only the announcement can tell the readers.
    for (_, job) in &readers {
        eventually("the reader sees the tagged entries stale", WAIT, || async {
            status(job, 1).await == Status::Stale && status(job, 3).await == Status::Stale
        })
        .await;
        assert_eq!(
            status(job, 0).await,
            Status::Hit,
            "other tags are untouched"
        );
    }
    // Bursts of stale reads in every reader, then one worker: one refresh per entry.
    let reads = readers.iter().flat_map(|(_, job)| {
        (0..16).map(move |i| async move { job.get_with_status(1 + 2 * (i % 2)).await.unwrap() })
    });
    let reads = futures_util::future::join_all(reads).await;
    assert!(reads.iter().all(|r| r.status == Status::Stale));
    let (worker_client, _) = fleet.client(true, false);
    let worker = Worker::builder(&worker_client).build().unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    for (_, job) in &readers {
        for n in [1, 3] {
            eventually("the refreshed value is read fresh", WAIT, || async {
                status(job, n).await == Status::Hit
            })
            .await;
        }
    }
    stop.cancel();
    running.await.unwrap();
    for n in [1, 3] {
        assert_eq!(
            fleet.fetches(&server, n),
            2,
            "key {n}: one fetch, one refresh"
        );
    }
    assert_eq!(fleet.fetches(&server, 0), 1, "untouched");
}

#[tokio::test]
async fn a_lost_tag_announcement_is_seen_within_the_check_interval() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let fleet = Fleet::new(&server, TestClock::new());
    // Its tag bumps are never announced: only the check interval can tell the reader.
    let (silent, writer) = fleet.client(false, false);
    writer.get(1).await.unwrap();
    let (cache, reader) = fleet.client(true, true);
    served_near(&server, &cache, &reader, 1).await;

    silent.invalidate_tag("group:1").await.unwrap();
    fleet.clock.advance(INTERVAL - Duration::from_millis(1));
    for _ in 0..50 {
        assert_eq!(
            status(&reader, 1).await,
            Status::Hit,
            "without the announcement the tag state read earlier is trusted for the interval"
        );
    }
    fleet.clock.advance(Duration::from_millis(1));
    assert_eq!(
        status(&reader, 1).await,
        Status::Stale,
        "read again after the interval"
    );
}

#[tokio::test]
async fn a_tag_bump_while_the_subscription_is_killed_is_still_seen() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let fleet = Fleet::new(&server, TestClock::new());
    let (a, writer) = fleet.client(true, false);
    writer.get(1).await.unwrap();
    let (cache, reader) = fleet.client(true, true);
    served_near(&server, &cache, &reader, 1).await;

    let mut admin = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1, "the reader's subscription");
    a.invalidate_tag("group:1").await.unwrap();
    // Whether the announcement was lost or not, the bound holds.
    fleet.clock.advance(INTERVAL);
    assert_eq!(status(&reader, 1).await, Status::Stale);
    // And once the subscription is back, the near cache serves again, still stale.
    eventually("the subscription is back", WAIT, || async {
        cache.near_cache_live() == Some(true)
    })
    .await;
    assert_eq!(status(&reader, 1).await, Status::Stale);
}

/// A child process: a reader process with a near cache, by `CACHEBACK_CHILD`.
#[test]
fn child_process() {
    if role().as_deref() != Some("tag_reader") {
        return; // a normal test run: nothing to do
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(tag_reader());
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child needs {name}"))
}

/// Keeps near copies of keys `0..KEYS`, says so, waits for the parent's `invalidate_tag`, then
/// reads until every odd key reads stale (its clock never moves: only the announcement can
/// say so), with bursts of concurrent stale reads, and prints how long that took.
async fn tag_reader() {
    let server_url = env("CB_URL");
    let fleet = Fleet {
        url: server_url.clone(),
        prefix: env("CB_PREFIX"),
        clock: TestClock::at(Timestamp::from_millis(env("CB_NOW").parse().unwrap())),
        calls: Arc::new(AtomicU64::new(0)),
    };
    let (cache, job) = fleet.client(true, true);
    let redis = redis::Client::open(server_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + WAIT;
    while cache.near_cache_live() != Some(true) {
        assert!(Instant::now() < deadline, "the near cache never went live");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for n in 0..KEYS {
        job.get(n).await.unwrap();
    }
    let _: u64 = redis::cmd("INCR")
        .arg(format!("{}:ready", fleet.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    loop {
        let go: Option<String> = redis::cmd("GET")
            .arg(format!("{}:go", fleet.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        if go.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no go signal");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let seen = Instant::now();
    let mut pending: Vec<u64> = (0..KEYS).filter(|n| n % 2 == 1).collect();
    while !pending.is_empty() {
        assert!(seen.elapsed() < WAIT, "{pending:?} never read stale");
        let reads = pending.iter().map(|&n| {
            let job = job.clone();
            async move { (n, job.get_with_status(n).await.unwrap().status) }
        });
        let stale: Vec<u64> = futures_util::future::join_all(reads)
            .await
            .into_iter()
            .filter(|&(_, status)| status == Status::Stale)
            .map(|(n, _)| n)
            .collect();
        pending.retain(|n| !stale.contains(n));
        tokio::task::yield_now().await;
    }
    let took = seen.elapsed();
    let untouched = status(&job, 0).await == Status::Hit;
    cache.shutdown(Duration::from_secs(10)).await;
    println!(
        "TAGREADER stale_after_us={} untouched={}",
        took.as_micros(),
        u8::from(untouched)
    );
}

const KEYS: u64 = 8;
const READER_PROCESSES: u64 = 3;

#[test]
fn reader_processes_see_a_tag_bump_and_each_entry_is_refreshed_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let now = Timestamp::from_millis(1_800_000_000_000);
    let fleet = Fleet::new(&server, TestClock::at(now));
    let (a, writer) = runtime.block_on(async { fleet.client(true, false) });
    runtime.block_on(async {
        for n in 0..KEYS {
            writer.get(n).await.unwrap();
        }
    });
    let vars = [
        ("CB_URL", fleet.url.clone()),
        ("CB_PREFIX", fleet.prefix.clone()),
        ("CB_NOW", now.as_millis().to_string()),
    ];
    let readers: Vec<_> = (0..READER_PROCESSES)
        .map(|_| spawn_self("tag_reader", &vars))
        .collect();
    let ready = format!("{}:ready", fleet.prefix);
    wait_for("readers ready", WAIT, || {
        server.cmd::<Option<u64>>(&["GET", &ready]) == Some(READER_PROCESSES)
    });
    let called = Instant::now();
    runtime.block_on(a.invalidate_tag("group:1")).unwrap();
    let call_us = called.elapsed().as_micros();
    let _: () = server.cmd(&["SET", &format!("{}:go", fleet.prefix), "1"]);
    for reader in readers {
        let lines = finish(reader, "TAGREADER", Duration::from_secs(30));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(field(&lines[0], "untouched"), 1, "{lines:?}");
        eprintln!("invalidate_tag took {call_us} µs; reader: {}", lines[0]);
    }
    // Every reader process asked for the refreshes; one worker process drains them.
    runtime.block_on(async {
        let (worker_client, job) = fleet.client(true, false);
        let worker = Worker::builder(&worker_client).build().unwrap();
        let stop = CancellationToken::new();
        let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
        for n in (0..KEYS).filter(|n| n % 2 == 1) {
            eventually("the refresh lands", WAIT, || async {
                job.peek(n)
                    .await
                    .unwrap()
                    .is_some_and(|p| p.freshness == cacheback::Freshness::Fresh)
            })
            .await;
        }
        stop.cancel();
        running.await.unwrap();
    });
    for n in 0..KEYS {
        let expected = if n % 2 == 1 { 2 } else { 1 };
        assert_eq!(
            fleet.fetches(&server, n),
            expected,
            "key {n}: its first fetch, and one refresh if it was tagged group:1"
        );
    }
}
