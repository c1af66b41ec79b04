//! Criterion micro-benchmarks of the memory read path, each next to its raw baseline in the
//! same run (WORKLOADS.md W1, W2, W5 in miniature; the full harness is `cacheback-bench`).
//!
//! Run with: `cargo bench -p cacheback --bench read_path`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cacheback::clock::TestClock;
use cacheback::{Cacheback, Job, JobHandle, LocalQueue, Policy};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};

/// About 100 bytes encoded, as in WORKLOADS.md.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Value {
    key: String,
    body: String,
    at: u64,
}

fn value(key: &str) -> Value {
    Value {
        key: key.to_owned(),
        body: "x".repeat(32),
        at: 1_700_000_000,
    }
}

struct Bench;

impl Job for Bench {
    type Args = String;
    type Value = Value;
    type Error = std::convert::Infallible;

    fn name(&self) -> &str {
        "bench"
    }

    fn policy(&self) -> Policy {
        Policy::default().lifetime(Duration::from_secs(10))
    }

    async fn fetch(&self, key: String) -> Result<Value, Self::Error> {
        Ok(value(&key))
    }
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime")
}

fn client(rt: &tokio::runtime::Runtime, clock: TestClock, queue: LocalQueue) -> JobHandle<Bench> {
    rt.block_on(async {
        Cacheback::builder()
            .clock(clock)
            .queue(queue)
            .in_process_worker(false)
            .build()
            .expect("client")
            .job(Bench)
    })
}

/// Runs `per_task` reads on each of `tasks` tasks and returns the wall time.
fn concurrent<F, Fut>(
    rt: &tokio::runtime::Runtime,
    tasks: usize,
    per_task: u64,
    read: F,
) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    rt.block_on(async move {
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let read = read.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        read().await;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("reader");
        }
        start.elapsed()
    })
}

fn hit_path(c: &mut Criterion) {
    let rt = runtime(2);
    let handle = client(&rt, TestClock::new(), LocalQueue::new(16));
    let key = "user-42".to_owned();
    rt.block_on(handle.set(key.clone(), value(&key)))
        .expect("set");
    let moka: moka::future::Cache<String, Arc<Value>> = moka::future::Cache::new(100_000);
    rt.block_on(moka.insert(key.clone(), Arc::new(value(&key))));

    let mut group = c.benchmark_group("W1 hit");
    group.bench_function(BenchmarkId::new("cacheback get", "1 task"), |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(handle.get(black_box(key.clone())).await.expect("hit")) })
    });
    group.bench_function(BenchmarkId::new("raw moka future get", "1 task"), |b| {
        b.to_async(&rt).iter(|| async {
            // Both loops start from an owned key, as a request handler does.
            let key = black_box(key.clone());
            black_box(moka.get(&key).await)
        })
    });
    {
        let tasks = 64usize;
        group.bench_function(
            BenchmarkId::new("cacheback get", format!("{tasks} tasks")),
            |b| {
                b.iter_custom(|iters| {
                    let (handle, key) = (handle.clone(), key.clone());
                    let per_task = iters.div_ceil(tasks as u64);
                    concurrent(&rt, tasks, per_task, move || {
                        let (handle, key) = (handle.clone(), key.clone());
                        async move {
                            black_box(handle.get(key).await.expect("hit"));
                        }
                    })
                })
            },
        );
        group.bench_function(
            BenchmarkId::new("raw moka future get", format!("{tasks} tasks")),
            |b| {
                b.iter_custom(|iters| {
                    let (moka, key) = (moka.clone(), key.clone());
                    let per_task = iters.div_ceil(tasks as u64);
                    concurrent(&rt, tasks, per_task, move || {
                        let (moka, key) = (moka.clone(), key.clone());
                        async move {
                            black_box(moka.get(&key).await);
                        }
                    })
                })
            },
        );
    }
    group.finish();
}

fn stale_path(c: &mut Criterion) {
    let rt = runtime(2);
    let mut group = c.benchmark_group("W2 stale");
    // The reader that wins: serve the stale value, take the claim, enqueue the refresh.
    group.bench_function("stale read: serve + claim + enqueue", |b| {
        b.iter_custom(|iters| {
            let clock = TestClock::new();
            let queue = LocalQueue::new(usize::try_from(iters).unwrap_or(usize::MAX).max(1));
            let handle = client(&rt, clock.clone(), queue);
            let keys: Vec<String> = (0..iters).map(|i| format!("user-{i}")).collect();
            rt.block_on(async {
                for k in &keys {
                    handle.set(k.clone(), value(k)).await.expect("set");
                }
                clock.advance(Duration::from_secs(11));
                let start = Instant::now();
                for k in keys {
                    let lookup = handle.get_with_status(k).await.expect("stale");
                    debug_assert!(lookup.refresh_triggered);
                    black_box(lookup);
                }
                start.elapsed()
            })
        })
    });
    // Everyone else: serve the stale value, find the claim held.
    group.bench_function("stale read: serve, claim held", |b| {
        let clock = TestClock::new();
        let handle = client(&rt, clock.clone(), LocalQueue::new(16));
        let key = "user-7".to_owned();
        rt.block_on(async {
            handle.set(key.clone(), value(&key)).await.expect("set");
            clock.advance(Duration::from_secs(11));
            handle
                .get(key.clone())
                .await
                .expect("first stale read claims");
        });
        b.to_async(&rt)
            .iter(|| async { black_box(handle.get_with_status(key.clone()).await.expect("stale")) })
    });
    group.finish();
}

fn miss_coalescing(c: &mut Criterion) {
    let rt = runtime(2);
    let mut group = c.benchmark_group("W5 miss");
    group.bench_function("64 concurrent misses of one key (1 fetch)", |b| {
        let handle = client(&rt, TestClock::new(), LocalQueue::new(16));
        let mut round = 0u64;
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let key = format!("miss-{round}");
                total += rt.block_on(async {
                    let start = Instant::now();
                    let readers: Vec<_> = (0..64)
                        .map(|_| {
                            let (handle, key) = (handle.clone(), key.clone());
                            tokio::spawn(async move { handle.get(key).await.expect("value") })
                        })
                        .collect();
                    for r in readers {
                        black_box(r.await.expect("reader"));
                    }
                    start.elapsed()
                });
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, hit_path, stale_path, miss_coalescing);
criterion_main!(benches);
