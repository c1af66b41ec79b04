//! The fleet with real OS processes sharing one `redis-server`:
//!
//! - 4 reader processes × 16 concurrent readers hit one stale key at the same moment, with a
//!   separate worker process: exactly 1 fetch (counted with a Redis `INCR`), in each of 10
//!   trials, and every reader gets the stale value at once.
//! - A worker process `kill -9`ed in the middle of a fetch: another worker process completes
//!   the refresh after the visibility timeout.
//!
//! The children are this test binary itself, re-invoked with `--exact child_process` and their
//! role in `CACHEBACK_CHILD`; `child_process` does nothing in a normal run.

#![cfg(feature = "redis")]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cacheback::clock::{TestClock, Timestamp};
use cacheback::{
    Cacheback, Job, JobHandle, Policy, RedisQueue, RedisStore, Status, Worker, WorkerOptions,
};
use support::{RedisServer, unique_prefix};

const LIFETIME: Duration = Duration::from_secs(10);
const T0: u64 = 1_704_067_200_000;
const READER_PROCESSES: usize = 4;
const READERS_PER_PROCESS: usize = 16;

/// Fetches count themselves in Redis, then take `sleep`.
struct FleetJob {
    redis: redis::Client,
    prefix: String,
    sleep: Duration,
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

fn client(url: &str, prefix: &str, now: Timestamp, visibility: Duration) -> Cacheback {
    let queue = RedisQueue::builder(url)
        .prefix(prefix)
        .poll_interval(Duration::from_millis(100))
        .visibility_timeout(visibility)
        .build()
        .unwrap();
    Cacheback::builder()
        .prefix(prefix)
        .clock(TestClock::at(now))
        .store(RedisStore::from_url(url).unwrap())
        .queue(queue)
        .build()
        .unwrap()
}

fn fleet_job(cache: &Cacheback, url: &str, prefix: &str, sleep: Duration) -> JobHandle<FleetJob> {
    cache.job(FleetJob {
        redis: redis::Client::open(url).unwrap(),
        prefix: prefix.to_owned(),
        sleep,
    })
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child needs {name}"))
}

/// A child process: a reader process or a worker process, by `CACHEBACK_CHILD`.
#[test]
fn child_process() {
    let Ok(role) = std::env::var("CACHEBACK_CHILD") else {
        return; // a normal test run: nothing to do
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (url, prefix) = (env("CB_URL"), env("CB_PREFIX"));
    let now = Timestamp::from_millis(env("CB_NOW").parse().unwrap());
    runtime.block_on(async move {
        match role.as_str() {
            "reader" => reader_process(&url, &prefix, now).await,
            "worker" => {
                let sleep = Duration::from_millis(env("CB_FETCH_MS").parse().unwrap());
                worker_process(&url, &prefix, now, sleep).await;
            }
            other => panic!("unknown role {other}"),
        }
    });
}

/// Builds a client, reports ready, waits for the go signal, then runs 16 concurrent reads of
/// the stale key and prints what they saw.
async fn reader_process(url: &str, prefix: &str, now: Timestamp) {
    let n: u64 = env("CB_ARGS").parse().unwrap();
    let cache = client(url, prefix, now, Duration::from_secs(30));
    let job = fleet_job(&cache, url, prefix, Duration::ZERO);
    let redis = redis::Client::open(url).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    // Warm the store's connection (another key), so the burst is not a connection race.
    job.peek(u64::MAX).await.unwrap();
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
            break;
        }
        assert!(Instant::now() < deadline, "no go signal");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let reads = (0..READERS_PER_PROCESS).map(|_| {
        let job = job.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let read = job.get_with_status(n).await.unwrap();
            (read, started.elapsed())
        })
    });
    let mut triggered = 0;
    let mut stale = 0;
    let mut slowest = Duration::ZERO;
    for read in futures_util::future::join_all(reads).await {
        let (read, took) = read.unwrap();
        if read.status == Status::Stale && read.value.as_deref().map(String::as_str) == Some("old")
        {
            stale += 1;
        }
        triggered += usize::from(read.refresh_triggered);
        slowest = slowest.max(took);
    }
    println!(
        "READER triggered={triggered} stale={stale} slowest_us={}",
        slowest.as_micros()
    );
}

/// Drains the queue until `<prefix>:stop` is set.
async fn worker_process(url: &str, prefix: &str, now: Timestamp, sleep: Duration) {
    let cache = client(url, prefix, now, Duration::from_secs(1));
    fleet_job(&cache, url, prefix, sleep);
    let worker = Worker::builder(&cache)
        .options(WorkerOptions::default().drain_timeout(Duration::from_secs(5)))
        .build()
        .unwrap();
    let redis = redis::Client::open(url).unwrap();
    let stop_key = format!("{prefix}:stop");
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

/// A child process, killed if the test fails before it finished.
struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns this test binary as a child with `role`.
fn spawn(role: &str, vars: &[(&str, String)]) -> Proc {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_process",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("CACHEBACK_CHILD", role)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    Proc(Some(cmd.spawn().expect("spawn a child process")))
}

/// Waits (bounded) for a child and returns its `prefix` lines; panics if it failed.
fn finish(mut proc: Proc, prefix: &str, within: Duration) -> Vec<String> {
    let mut child = proc.0.take().expect("a running child");
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait().unwrap() {
            Some(status) => {
                let out = BufReader::new(child.stdout.take().unwrap());
                // libtest prints "test child_process ... " without a newline before the
                // test's own output: find the marker anywhere in the line.
                let lines: Vec<String> = out
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|l| l.find(prefix).map(|at| l[at..].to_owned()))
                    .collect();
                assert!(status.success(), "child failed with {status}: {lines:?}");
                return lines;
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child did not finish within {within:?}");
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `n` is Fresh, read without side effects.
fn is_fresh(runtime: &tokio::runtime::Runtime, job: &JobHandle<FleetJob>, n: u64) -> bool {
    runtime
        .block_on(job.peek(n))
        .unwrap()
        .is_some_and(|p| p.freshness == cacheback::Freshness::Fresh)
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

#[test]
fn four_reader_processes_and_a_worker_process_make_exactly_one_fetch() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let prefix = unique_prefix("fleet");
    let stale_now = Timestamp::from_millis(T0).saturating_add(LIFETIME);
    let vars = |extra: &[(&'static str, String)]| {
        let mut v = vec![
            ("CB_URL", url.clone()),
            ("CB_PREFIX", prefix.clone()),
            ("CB_NOW", stale_now.as_millis().to_string()),
        ];
        v.extend_from_slice(extra);
        v
    };
    let worker = spawn("worker", &vars(&[("CB_FETCH_MS", "200".to_owned())]));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The parent writes the values at T0: Fresh then, Stale at T0 + LIFETIME.
    let writer = runtime.block_on(async {
        let cache = client(
            &url,
            &prefix,
            Timestamp::from_millis(T0),
            Duration::from_secs(30),
        );
        let job = fleet_job(&cache, &url, &prefix, Duration::ZERO);
        (cache, job)
    });
    let reader_of_results = runtime.block_on(async {
        let cache = client(&url, &prefix, stale_now, Duration::from_secs(30));
        fleet_job(&cache, &url, &prefix, Duration::ZERO)
    });
    let mut slowest_us = Vec::new();
    for trial in 0..10u64 {
        runtime
            .block_on(writer.1.set(trial, "old".to_owned()))
            .unwrap();
        let readers: Vec<Proc> = (0..READER_PROCESSES)
            .map(|_| spawn("reader", &vars(&[("CB_ARGS", trial.to_string())])))
            .collect();
        let ready_key = format!("{prefix}:ready:{trial}");
        wait_for("readers ready", Duration::from_secs(30), || {
            server.cmd::<Option<u64>>(&["GET", &ready_key]) == Some(READER_PROCESSES as u64)
        });
        let _: () = server.cmd(&["SET", &format!("{prefix}:go:{trial}"), "1"]);
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
        assert_eq!(triggered, 1, "trial {trial}: exactly one reader enqueued");
        let fetches = fetches_key(&prefix, trial);
        // Polled with `peek`: a polling read could trigger a refresh of its own.
        wait_for("the worker's refresh", Duration::from_secs(30), || {
            is_fresh(&runtime, &reader_of_results, trial)
        });
        let count: Option<u64> = server.cmd(&["GET", &fetches]);
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

#[test]
fn a_worker_killed_mid_fetch_is_replaced_after_the_visibility_timeout() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let prefix = unique_prefix("kill9");
    let stale_now = Timestamp::from_millis(T0).saturating_add(LIFETIME);
    let vars = |fetch_ms: &str| {
        vec![
            ("CB_URL", url.clone()),
            ("CB_PREFIX", prefix.clone()),
            ("CB_NOW", stale_now.as_millis().to_string()),
            ("CB_FETCH_MS", fetch_ms.to_owned()),
        ]
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_writer, job) = runtime.block_on(async {
        let cache = client(
            &url,
            &prefix,
            Timestamp::from_millis(T0),
            Duration::from_secs(30),
        );
        let job = fleet_job(&cache, &url, &prefix, Duration::ZERO);
        job.set(1, "old".to_owned()).await.unwrap();
        (cache, job)
    });
    let (_reader, reader) = runtime.block_on(async {
        let cache = client(&url, &prefix, stale_now, Duration::from_secs(30));
        let job = fleet_job(&cache, &url, &prefix, Duration::ZERO);
        (cache, job)
    });
    drop(job);
    let read = runtime.block_on(reader.get_with_status(1)).unwrap();
    assert_eq!(read.status, Status::Stale);
    assert!(read.refresh_triggered);

    // A worker whose fetch hangs for a minute: killed with SIGKILL once the fetch started.
    let mut doomed = spawn("worker", &vars("60000"));
    let fetches = fetches_key(&prefix, 1);
    wait_for("the doomed worker's fetch", Duration::from_secs(30), || {
        server.cmd::<Option<u64>>(&["GET", &fetches]) == Some(1)
    });
    let mut doomed = doomed.0.take().unwrap();
    doomed.kill().unwrap(); // SIGKILL
    doomed.wait().unwrap();
    let killed_at = Instant::now();

    let survivor = spawn("worker", &vars("0"));
    wait_for(
        "the surviving worker's refresh",
        Duration::from_secs(30),
        || is_fresh(&runtime, &reader, 1),
    );
    let took = killed_at.elapsed();
    eprintln!("refresh completed {took:?} after the kill (visibility timeout 1 s)");
    assert_eq!(
        server.cmd::<Option<u64>>(&["GET", &fetches]),
        Some(2),
        "the killed fetch and its redelivery"
    );
    assert_eq!(*runtime.block_on(reader.get(1)).unwrap(), "fresh 1 #2");
    let _: () = server.cmd(&["SET", &format!("{prefix}:stop"), "1"]);
    let lines = finish(survivor, "WORKER", Duration::from_secs(30));
    assert_eq!(lines, ["WORKER processed=1"]);
}
