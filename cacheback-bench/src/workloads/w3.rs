//! W3, refresh throughput: N refreshes of distinct keys through the LocalQueue and the
//! in-process worker, the fetch returning at once; worker concurrency 2 and 64.
//!
//! End to end: `refresh_async` on N distinct keys (each takes the key's claim and enqueues one
//! request), timed from the first enqueue until the events hook has seen N `Refreshed` events
//! (each emitted after the worker stored the value); then every key is checked with `peek`.
//! Enqueue alone: the same N calls on a client without a worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cacheback::{Event, Policy};
use tokio::sync::Notify;

use crate::report::{self, Record};
use crate::stats;
use crate::value::{ClientSetup, Fetcher, memory_client};
use crate::workloads::{Ctx, runtime};

/// Celery's end-to-end rate in WORKLOADS.md.
const CELERY_PER_SEC: f64 = 386.0;

pub(crate) fn local(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let sizes: &[u64] = ctx.scale.pick(&[5_000, 50_000], &[2_000]);
    let rt = runtime();
    let mut records = Vec::new();
    for &n in sizes {
        let enqueue_rate = rt.block_on(enqueue_only(n))?;
        for concurrency in [2usize, 64] {
            let (rate, took) = rt.block_on(end_to_end(n, concurrency))?;
            let r = record(
                format!("LocalQueue, {n} keys, worker concurrency {concurrency}"),
                n,
                concurrency,
                Rates {
                    end_to_end: rate,
                    took,
                    enqueue_alone: enqueue_rate,
                },
            );
            records.push(r);
        }
    }
    Ok(records)
}

/// What one W3 variant measured.
struct Rates {
    end_to_end: f64,
    took: Duration,
    enqueue_alone: f64,
}

/// The record of one W3 variant, with its figures and the target check.
fn record(variant: String, n: u64, concurrency: usize, rates: Rates) -> Record {
    let Rates {
        end_to_end,
        took,
        enqueue_alone,
    } = rates;
    let mut r = Record::new("W3", variant, "cacheback")
        .param("keys", n)
        .param("worker_concurrency", concurrency as u64)
        .param("fetch", "returns at once");
    r.figure("refreshes_per_sec", stats::round3(end_to_end));
    r.figure("seconds", stats::round3(took.as_secs_f64()));
    r.figure("enqueue_alone_per_sec", stats::round3(enqueue_alone));
    r.figure("celery_reference_per_sec", CELERY_PER_SEC);
    r.summary = format!(
        "{} end to end ({:.2} s); enqueue alone {}",
        report::rate(end_to_end),
        took.as_secs_f64(),
        report::rate(enqueue_alone)
    );
    r.check(
        "≥ 20,000 refreshes/s end to end (≥ 50× Celery)",
        format!(
            "{} = {:.0}× Celery",
            report::rate(end_to_end),
            end_to_end / CELERY_PER_SEC
        ),
        end_to_end >= 20_000.0,
    );
    r
}

fn setup(n: u64, worker: Option<usize>) -> ClientSetup {
    let mut setup = ClientSetup::new(Policy::default().lifetime(Duration::from_secs(3600)));
    setup.queue_capacity = usize::try_from(n).unwrap_or(usize::MAX);
    setup.worker = worker;
    setup
}

async fn enqueue_only(n: u64) -> Result<f64, String> {
    let (handle, queue) = memory_client(&setup(n, None), Fetcher::new(Duration::ZERO), None);
    let start = Instant::now();
    for key in 0..n {
        if !handle.refresh_async(key).await.map_err(|e| e.to_string())? {
            return Err(format!("refresh of key {key} was not enqueued"));
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    if queue.enqueued() != n {
        return Err(format!("{} of {n} enqueued", queue.enqueued()));
    }
    Ok(rate)
}

async fn end_to_end(n: u64, concurrency: usize) -> Result<(f64, Duration), String> {
    let refreshed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let hook = {
        let (refreshed, done) = (Arc::clone(&refreshed), Arc::clone(&done));
        Box::new(move |event: &Event| {
            if let Event::Refreshed { .. } = event
                && refreshed.fetch_add(1, Ordering::Relaxed) + 1 == n
            {
                done.notify_one();
            }
        })
    };
    let fetcher = Fetcher::new(Duration::ZERO);
    let (handle, queue) = memory_client(
        &setup(n, Some(concurrency)),
        Arc::clone(&fetcher),
        Some(hook),
    );
    let start = Instant::now();
    for key in 0..n {
        handle.refresh_async(key).await.map_err(|e| e.to_string())?;
    }
    tokio::time::timeout(Duration::from_secs(300), done.notified())
        .await
        .map_err(|_| {
            format!(
                "only {} of {n} refreshes landed in 300 s",
                refreshed.load(Ordering::Relaxed)
            )
        })?;
    let took = start.elapsed();
    if queue.enqueued() != n || fetcher.calls() != n {
        return Err(format!(
            "{} enqueued, {} fetched, of {n}",
            queue.enqueued(),
            fetcher.calls()
        ));
    }
    for key in 0..n {
        let peek = handle.peek(key).await.map_err(|e| e.to_string())?;
        if peek.and_then(|p| p.value).is_none() {
            return Err(format!("key {key} is not in the store after its refresh"));
        }
    }
    Ok((n as f64 / took.as_secs_f64(), took))
}

/// W3 through Redis: `RedisStore` + the `--queue` (default `RedisQueue`) and a
/// [`Worker`](cacheback::Worker) in this process, the same N distinct keys; a fresh key prefix
/// per variant so runs do not mix.
#[cfg(feature = "redis")]
pub(crate) fn redis(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let server = ctx.redis()?;
    let url = server.url();
    let sizes: &[u64] = ctx.scale.pick(&[5_000, 50_000], &[1_000]);
    let rt = runtime();
    let queue_name = ctx.brokers.choice().name();
    let mut records = Vec::new();
    for &n in sizes {
        for concurrency in [2usize, 64] {
            let prefix = format!("w3-{n}-{concurrency}-{}", std::process::id());
            // Built inside the runtime: the Redis queue's connections need one.
            let queue = rt.block_on(async { ctx.brokers.queue(&url) })?;
            let measured = rt.block_on(redis_end_to_end(server, queue, &prefix, n, concurrency))?;
            let (rate, took, enqueue_rate) = (measured.rate, measured.took, measured.enqueue_rate);
            let mut r = record(
                format!("{queue_name}, {n} keys, worker concurrency {concurrency}"),
                n,
                concurrency,
                Rates {
                    end_to_end: rate,
                    took,
                    enqueue_alone: enqueue_rate,
                },
            )
            .param("store", "RedisStore")
            .param("queue", queue_name);
            measured.cost.record_per(&mut r, n, "refresh");
            r.figure(
                "client_cpu_us_per_refresh",
                stats::round3(measured.client_cpu_s * 1e6 / n as f64),
            );
            r.summary.push_str(&format!(
                "; {}; this process's CPU {:.1} µs per refresh",
                measured.cost.summary_per(n, "refresh"),
                measured.client_cpu_s * 1e6 / n as f64
            ));
            if concurrency == 64 {
                // What Redis itself does at the same concurrency, in the same run.
                let set_rate = rt.block_on(raw_sets(&url, &prefix, n, concurrency))?;
                r.figure("raw_set_per_sec", stats::round3(set_rate));
                r.figure("ratio_to_raw_set", stats::round3(rate / set_rate));
                r.summary.push_str(&format!(
                    "; redis-rs SET from {concurrency} tasks {} ({})",
                    report::rate(set_rate),
                    report::times(rate / set_rate)
                ));
                r.check(
                    "≥ 0.5× redis-rs SET at the same concurrency",
                    report::times(rate / set_rate),
                    rate >= 0.5 * set_rate,
                );
            }
            records.push(r);
        }
    }
    Ok(records)
}

/// What W3 measured through Redis.
#[cfg(feature = "redis")]
struct Measured {
    rate: f64,
    took: Duration,
    enqueue_rate: f64,
    /// What the timed refreshes cost Redis.
    cost: crate::redis_cost::Cost,
    /// CPU this process (clients and worker) used for them.
    client_cpu_s: f64,
}

/// Enqueues N refreshes with nobody draining (the enqueue rate alone), lets a worker drain them,
/// then times N more refreshes from the first enqueue, with the worker running, until all N
/// landed in Redis (end to end), with what they cost Redis and this process.
#[cfg(feature = "redis")]
async fn redis_end_to_end(
    server: &cacheback_test_support::RedisServer,
    queue: std::sync::Arc<dyn cacheback::queue::Queue>,
    prefix: &str,
    n: u64,
    concurrency: usize,
) -> Result<Measured, String> {
    use cacheback::{Cacheback, RedisStore, Worker, WorkerOptions};

    use crate::redis_cost::Snapshot;

    let url = &server.url();

    let refreshed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let hook = {
        let (refreshed, done) = (Arc::clone(&refreshed), Arc::clone(&done));
        move |event: &Event| {
            if let Event::Refreshed { .. } = event
                && refreshed.fetch_add(1, Ordering::Relaxed) + 1 == n
            {
                done.notify_one();
            }
        }
    };
    let fetcher = Fetcher::new(Duration::ZERO);
    let client = Cacheback::builder()
        .prefix(prefix)
        .store(RedisStore::from_url(url).map_err(|e| e.to_string())?)
        .shared_queue(queue)
        .on_event(hook)
        .build()
        .map_err(|e| e.to_string())?;
    let handle = client.job(crate::value::BenchJob {
        fetcher: Arc::clone(&fetcher),
        policy: Policy::default().lifetime(Duration::from_secs(3600)),
    });
    // Enqueue alone: nobody drains the stream yet.
    let start = Instant::now();
    enqueue_concurrently(&handle, 0..n).await?;
    let enqueue_rate = n as f64 / start.elapsed().as_secs_f64();
    let worker = Worker::builder(&client)
        .options(WorkerOptions::default().concurrency(concurrency).batch(256))
        .build()
        .map_err(|e| e.to_string())?;
    let stop = Arc::new(Notify::new());
    let worker = tokio::spawn({
        let stop = Arc::clone(&stop);
        worker.run_until(async move { stop.notified().await })
    });
    tokio::time::timeout(Duration::from_secs(300), done.notified())
        .await
        .map_err(|_| {
            format!(
                "only {} of {n} refreshes landed",
                refreshed.load(Ordering::Relaxed)
            )
        })?;
    refreshed.store(0, Ordering::Relaxed);
    fetcher.reset();
    let redis_before = Snapshot::take(server)?;
    let cpu_before = crate::machine::cpu_seconds().unwrap_or(0.0);
    let start = Instant::now();
    enqueue_concurrently(&handle, n..2 * n).await?;
    tokio::time::timeout(Duration::from_secs(300), done.notified())
        .await
        .map_err(|_| {
            format!(
                "only {} of {n} refreshes landed",
                refreshed.load(Ordering::Relaxed)
            )
        })?;
    let took = start.elapsed();
    let client_cpu_s = crate::machine::cpu_seconds().unwrap_or(0.0) - cpu_before;
    let cost = redis_before.until(&Snapshot::take(server)?);
    stop.notify_one();
    let _ = worker.await;
    if fetcher.calls() != n {
        return Err(format!("{} fetches for {n} refreshes", fetcher.calls()));
    }
    for key in n..2 * n {
        let peek = handle.peek(key).await.map_err(|e| e.to_string())?;
        if peek.and_then(|p| p.value).is_none() {
            return Err(format!("key {key} is not in Redis after its refresh"));
        }
    }
    client.shutdown(Duration::from_secs(5)).await;
    Ok(Measured {
        rate: n as f64 / took.as_secs_f64(),
        took,
        enqueue_rate,
        cost,
        client_cpu_s,
    })
}

/// Raw redis-rs `SET` of `n` keys (values of the size of a refreshed entry) from `tasks`
/// tasks on one `ConnectionManager`, the connection kind cacheback uses: SETs per second.
#[cfg(feature = "redis")]
async fn raw_sets(url: &str, prefix: &str, n: u64, tasks: usize) -> Result<f64, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let conn = redis::aio::ConnectionManager::new(client)
        .await
        .map_err(|e| e.to_string())?;
    let value = vec![b'x'; 96];
    let start = Instant::now();
    let workers: Vec<_> = (0..tasks as u64)
        .map(|t| {
            let (mut conn, value) = (conn.clone(), value.clone());
            let prefix = format!("{prefix}:raw-set");
            tokio::spawn(async move {
                for key in (t..n).step_by(tasks) {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(format!("{prefix}:{key}")).arg(&value);
                    cmd.query_async::<()>(&mut conn)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for worker in workers {
        worker.await.map_err(|e| e.to_string())??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// `refresh_async` of every key, from 64 tasks (as 64 request handlers would), each key's
/// refresh checked to be enqueued.
#[cfg(feature = "redis")]
async fn enqueue_concurrently(
    handle: &cacheback::JobHandle<crate::value::BenchJob>,
    keys: std::ops::Range<u64>,
) -> Result<(), String> {
    const TASKS: u64 = 64;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let handle = handle.clone();
            let keys = keys.clone();
            tokio::spawn(async move {
                for key in keys
                    .skip(usize::try_from(t).unwrap_or(0))
                    .step_by(TASKS as usize)
                {
                    if !handle.refresh_async(key).await.map_err(|e| e.to_string())? {
                        return Err(format!("refresh of key {key} was not enqueued"));
                    }
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}
