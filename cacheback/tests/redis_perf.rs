//! Quick performance figures on a spawned `redis-server` (ignored by default; not a pass/fail
//! gate, the machines are noisy). Run with:
//!
//! ```text
//! cargo test --release -p cacheback --features redis --test redis_perf -- --ignored --nocapture --test-threads=1
//! ```
//!
//! - W1 (hit path): `JobHandle::get` of one fresh key vs raw redis-rs `GET` of the same bytes on
//!   the same kind of connection (a `ConnectionManager`), at 1 and 64 concurrent tasks, runs
//!   alternated, medians of 5; plus Redis commands per read from `INFO commandstats`.
//! - W2 (stale burst, one process): 64 readers behind a barrier hit one stale key while the
//!   worker's 200 ms fetch runs; fetches and enqueues per stale event, reader p50/p99/max.
//! - W3 (refresh throughput): N distinct keys read once each with `fetch_on_miss = false`
//!   (claim + `XADD`), drained by a `Worker` with a trivial fetch; refreshes/s from the first
//!   enqueue until the worker has acknowledged all of them, and the enqueue rate alone.

#![cfg(feature = "redis")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cacheback::{Cacheback, Job, JobHandle, Policy, RedisQueue, RedisStore, Worker, WorkerOptions};
use serde::{Deserialize, Serialize};
use support::{RedisServer, unique_prefix};

/// About 100 bytes encoded (WORKLOADS.md common parameters).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Value {
    key: String,
    token: String,
    at: u64,
}

struct Perf;

impl Job for Perf {
    type Args = u64;
    type Value = Value;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        "perf"
    }

    fn policy(&self) -> Policy {
        Policy::default()
            .lifetime(Duration::from_secs(3600))
            .fetch_on_miss(false)
    }

    async fn fetch(&self, n: u64) -> Result<Value, std::io::Error> {
        Ok(Value {
            key: format!("perf-key-{n:0>40}"),
            token: "0123456789abcdef0123456789abcdef".to_owned(),
            at: n,
        })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn run_concurrent<F, Fut>(tasks: usize, total: usize, op: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per_task = total / tasks;
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    op().await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    (per_task * tasks) as f64 / started.elapsed().as_secs_f64()
}

#[test]
#[ignore = "performance figures: run in release mode with --ignored"]
fn w1_hit_path_vs_raw_get() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let rt = runtime();
    let url = server.url();
    let (job, raw, key): (JobHandle<Perf>, redis::aio::ConnectionManager, String) =
        rt.block_on(async {
            let cache = Cacheback::builder()
                .prefix(unique_prefix("w1"))
                .store(RedisStore::from_url(&url).unwrap())
                .queue(RedisQueue::from_url(&url).unwrap())
                .build()
                .unwrap();
            let job = cache.job(Perf);
            job.refresh(1).await.unwrap();
            let key = format!("{{{}}}", job.key(&1).unwrap());
            let raw = redis::Client::open(url.as_str())
                .unwrap()
                .get_connection_manager()
                .await
                .unwrap();
            (job, raw, key)
        });
    let bytes: Vec<u8> = server.cmd(&["GET", &key]);
    println!("entry = {} bytes (48-byte header + value)", bytes.len());
    let mut cacheback_reads = 0usize;
    let mut cacheback_gets = 0u64;
    for tasks in [1usize, 64] {
        let total = if tasks == 1 { 50_000 } else { 200_000 };
        let (mut ours, mut theirs, mut store_only) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            let (store2, digest) = (Arc::clone(job.client().store()), job.key(&1).unwrap());
            let prefix = job.client().prefix().to_owned();
            let hex = u128::from_str_radix(&digest[digest.len() - 32..], 16).unwrap();
            store_only.push(rt.block_on(run_concurrent(tasks, total, move || {
                let (store, prefix) = (Arc::clone(&store2), prefix.clone());
                async move {
                    let key = cacheback::store::Key::new(&prefix, "perf", hex);
                    assert!(store.get(key).await.unwrap().is_some());
                }
            })));
            let job2 = job.clone();
            let before = server.command_calls("get");
            ours.push(rt.block_on(run_concurrent(tasks, total, move || {
                let job = job2.clone();
                async move {
                    let _value = job.get(1).await.unwrap();
                }
            })));
            cacheback_reads += total / tasks * tasks;
            cacheback_gets += server.command_calls("get") - before;
            let (raw2, key2) = (raw.clone(), key.clone());
            theirs.push(rt.block_on(run_concurrent(tasks, total, move || {
                let (mut raw, key) = (raw2.clone(), key2.clone());
                async move {
                    let v: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut raw)
                        .await
                        .unwrap();
                    assert!(v.is_some());
                }
            })));
        }
        let (o, t) = (median(ours.clone()), median(theirs.clone()));
        println!(
            "W1 {tasks:>2} task(s): RedisStore::get alone {:>9.0} reads/s",
            median(store_only)
        );
        println!(
            "W1 {tasks:>2} task(s): cacheback {o:>9.0} reads/s, raw GET {t:>9.0} reads/s, \
             ratio {:.2} (runs: ours {:?}, raw {:?})",
            o / t,
            ours.iter().map(|x| x.round()).collect::<Vec<_>>(),
            theirs.iter().map(|x| x.round()).collect::<Vec<_>>()
        );
    }
    println!(
        "Redis GETs during cacheback reads: {cacheback_gets} for {cacheback_reads} reads; \
         EVALSHA in the whole test (setup): {}",
        server.command_calls("evalsha")
    );
}

#[test]
#[ignore = "performance figures: run in release mode with --ignored"]
fn w3_refresh_throughput() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let rt = runtime();
    let url = server.url();
    let _: () = server.cmd(&["CONFIG", "RESETSTAT"]);
    for (n, concurrency) in [(5_000u64, 64usize), (50_000, 64), (5_000, 2)] {
        let mut e2e = Vec::new();
        let mut enq = Vec::new();
        for _ in 0..3 {
            let (end_to_end, enqueue) = rt.block_on(refresh_run(&url, n, concurrency));
            e2e.push(end_to_end);
            enq.push(enqueue);
        }
        println!(
            "W3 {n:>6} refreshes, worker concurrency {concurrency:>2}: {:>7.0} refreshes/s end to end \
             (runs {:?}); enqueue alone {:>7.0}/s",
            median(e2e.clone()),
            e2e.iter().map(|x| x.round()).collect::<Vec<_>>(),
            median(enq)
        );
    }
    // Where Redis spent its time, per command.
    let info: String = server.cmd(&["INFO", "commandstats"]);
    for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
        println!("  {line}");
    }
}

/// Returns (end-to-end refreshes/s, enqueue rate).
async fn refresh_run(url: &str, n: u64, concurrency: usize) -> (f64, f64) {
    let prefix = unique_prefix("w3");
    let queue = RedisQueue::builder(url)
        .prefix(prefix.clone())
        .poll_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let web = Cacheback::builder()
        .prefix(prefix.clone())
        .store(RedisStore::from_url(url).unwrap())
        .queue(queue.clone())
        .build()
        .unwrap();
    let job = web.job(Perf);
    let worker_client = Cacheback::builder()
        .prefix(prefix)
        .store(RedisStore::from_url(url).unwrap())
        .queue(queue.clone())
        .build()
        .unwrap();
    worker_client.job(Perf);
    let worker = Worker::builder(&worker_client)
        .options(WorkerOptions::default().concurrency(concurrency).batch(256))
        .build()
        .unwrap();
    let health = worker.health();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stop2 = Arc::clone(&stop);
    // Warm the worker's connections before timing.
    queue.ping().await.unwrap();
    let worker = tokio::spawn(worker.run_until(async move { stop2.notified().await }));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let readers = 64u64;
    let tasks: Vec<_> = (0..readers)
        .map(|r| {
            let job = job.clone();
            tokio::spawn(async move {
                let mut i = r;
                while i < n {
                    let read = job.get_with_status(i).await.unwrap();
                    assert!(read.refresh_triggered);
                    i += readers;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let enqueued_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while health.processed() < n {
        assert!(Instant::now() < deadline, "refreshes did not finish");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let all_in = started.elapsed();
    stop.notify_one();
    worker.await.unwrap();
    assert_eq!(queue.len("default").await.unwrap(), 0);
    (
        n as f64 / all_in.as_secs_f64(),
        n as f64 / enqueued_in.as_secs_f64(),
    )
}

/// W2's job: counts its calls and sleeps 200 ms.
struct Slow(Arc<std::sync::atomic::AtomicUsize>);

impl Job for Slow {
    type Args = u64;
    type Value = Value;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        "slow"
    }

    fn policy(&self) -> Policy {
        Policy::default().lifetime(Duration::from_secs(10))
    }

    async fn fetch(&self, n: u64) -> Result<Value, std::io::Error> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        Perf.fetch(n).await
    }
}

#[test]
#[ignore = "performance figures: run in release mode with --ignored"]
fn w2_stale_burst_one_process() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let Some(server) = RedisServer::start() else {
        return;
    };
    let rt = runtime();
    let url = server.url();
    rt.block_on(async {
        let clock = cacheback::clock::TestClock::new();
        let prefix = unique_prefix("w2");
        let calls = Arc::new(AtomicUsize::new(0));
        let client = |queue: RedisQueue| {
            Cacheback::builder()
                .prefix(prefix.clone())
                .clock(clock.clone())
                .store(RedisStore::from_url(&url).unwrap())
                .queue(queue)
                .build()
                .unwrap()
        };
        let queue = || {
            RedisQueue::builder(&url)
                .prefix(prefix.clone())
                .poll_interval(Duration::from_millis(100))
                .build()
                .unwrap()
        };
        let web = client(queue());
        let job = web.job(Slow(Arc::clone(&calls)));
        let worker_client = client(queue());
        worker_client.job(Slow(Arc::clone(&calls)));
        let worker = Worker::builder(&worker_client).build().unwrap();
        let stop = Arc::new(tokio::sync::Notify::new());
        let stop2 = Arc::clone(&stop);
        let worker = tokio::spawn(worker.run_until(async move { stop2.notified().await }));
        let mut latencies = Vec::new();
        let (mut fetches, mut enqueues) = (Vec::new(), Vec::new());
        for trial in 0..10u64 {
            job.set(trial, Perf.fetch(trial).await.unwrap())
                .await
                .unwrap();
            job.get(trial).await.unwrap(); // warm
            clock.advance(Duration::from_secs(10));
            let before = calls.load(Ordering::SeqCst);
            let barrier = Arc::new(tokio::sync::Barrier::new(64));
            let reads: Vec<_> = (0..64)
                .map(|_| {
                    let (job, barrier) = (job.clone(), Arc::clone(&barrier));
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let started = Instant::now();
                        let read = job.get_with_status(trial).await.unwrap();
                        assert_eq!(read.status, cacheback::Status::Stale);
                        (started.elapsed(), read.refresh_triggered)
                    })
                })
                .collect();
            let mut triggered = 0;
            for r in reads {
                let (took, t) = r.await.unwrap();
                latencies.push(took);
                triggered += usize::from(t);
            }
            enqueues.push(triggered);
            let deadline = Instant::now() + Duration::from_secs(10);
            while job.peek(trial).await.unwrap().unwrap().freshness != cacheback::Freshness::Fresh {
                assert!(Instant::now() < deadline, "no refresh");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            fetches.push(calls.load(Ordering::SeqCst) - before);
        }
        stop.notify_one();
        worker.await.unwrap();
        latencies.sort_unstable();
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        println!(
            "W2 one process, 64 readers x 10 trials: fetches per event {fetches:?}, \
             enqueues per event {enqueues:?}; reader p50 {:?}, p99 {:?}, max {:?}",
            at(0.5),
            at(0.99),
            latencies.last().unwrap()
        );
    });
}
