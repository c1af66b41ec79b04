//! W1, the hit path: one fresh key read N times, by 1 task and by 64 concurrent tasks, next to
//! raw `moka::future::Cache::get` of the same `Arc` value and the `RwLock<HashMap>` floor.
//!
//! Each subject is measured twice: a throughput pass (no clock reads in the loop; ops/s, median
//! of 3 trials, subjects interleaved so they share the machine's noise) and a latency pass
//! (every read timed with `Instant::now`, whose own cost — reported as `timer_overhead_ns` — is
//! included in every subject's percentiles alike).

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use cacheback::{JobHandle, Policy};
use hdrhistogram::Histogram;
use serde_json::{Map, json};

use crate::report::{self, Baseline, Record};
use crate::stats::{self, Spread};
use crate::value::{BenchJob, ClientSetup, Fetcher, Value, memory_client};
use crate::workloads::{Ctx, runtime};

const KEY: u64 = 42;
/// django-cacheback's in-process hit rate on this class of machine (WORKLOADS.md).
const DJANGO_HITS_PER_SEC: f64 = 69_000.0;
const TRIALS: usize = 3;

/// Something read in a loop.
pub(crate) trait HitRead: Clone + Send + Sync + 'static {
    /// One read of the fresh key; the result goes through `black_box`.
    fn read(&self) -> impl Future<Output = ()> + Send + '_;
}

#[derive(Clone)]
struct CachebackHit(JobHandle<BenchJob>);

impl HitRead for CachebackHit {
    fn read(&self) -> impl Future<Output = ()> + Send + '_ {
        let read = self.0.get(black_box(KEY));
        async move {
            black_box(read.await.ok());
        }
    }
}

#[derive(Clone)]
struct MokaHit(moka::future::Cache<u64, Arc<Value>>);

impl HitRead for MokaHit {
    async fn read(&self) {
        black_box(self.0.get(&black_box(KEY)).await);
    }
}

#[derive(Clone)]
struct FloorHit(Arc<RwLock<HashMap<u64, Arc<Value>>>>);

impl HitRead for FloorHit {
    fn read(&self) -> impl Future<Output = ()> + Send + '_ {
        let value = self
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&black_box(KEY))
            .cloned();
        black_box(value);
        std::future::ready(())
    }
}

/// `total` reads split over `tasks` tasks; reads per second.
pub(crate) async fn throughput<R: HitRead>(reader: &R, tasks: usize, total: u64) -> f64 {
    let per_task = total / tasks as u64;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let reader = reader.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    reader.read().await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("reader task");
    }
    (per_task * tasks as u64) as f64 / start.elapsed().as_secs_f64()
}

/// `total` timed reads split over `tasks` tasks; their latencies.
pub(crate) async fn latencies<R: HitRead>(reader: &R, tasks: usize, total: u64) -> Histogram<u64> {
    let per_task = total / tasks as u64;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let reader = reader.clone();
            tokio::spawn(async move {
                let mut h = stats::latency_histogram();
                for _ in 0..per_task {
                    let t = Instant::now();
                    reader.read().await;
                    stats::record(&mut h, t.elapsed());
                }
                h
            })
        })
        .collect();
    let mut all = stats::latency_histogram();
    for h in handles {
        stats::merge(&mut all, &h.await.expect("reader task"));
    }
    all
}

/// The cost of the timing itself: an empty read timed the same way.
fn timer_overhead_ns() -> u64 {
    let mut h = stats::latency_histogram();
    for _ in 0..100_000 {
        let t = Instant::now();
        black_box(());
        stats::record(&mut h, t.elapsed());
    }
    h.value_at_quantile(0.5)
}

/// W1 on the memory store.
pub(crate) fn memory(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let reads: u64 = ctx.scale.pick(2_000_000, 200_000);
    let rt = runtime();
    let (handle, value) = rt.block_on(async {
        let setup =
            ClientSetup::new(Policy::default().lifetime(std::time::Duration::from_secs(3600)));
        let (handle, _queue) = memory_client(&setup, Fetcher::new(std::time::Duration::ZERO), None);
        let value = handle.get(KEY).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((handle, value))
    })?;
    let status = rt
        .block_on(handle.get_with_status(KEY))
        .map_err(|e| e.to_string())?
        .status;
    if status != cacheback::Status::Hit {
        return Err(format!("the key should be a fresh hit, is {status}"));
    }
    let moka: moka::future::Cache<u64, Arc<Value>> = moka::future::Cache::new(100_000);
    rt.block_on(moka.insert(KEY, Arc::clone(&value)));
    let floor = Arc::new(RwLock::new(HashMap::from([(KEY, Arc::clone(&value))])));
    let subjects = (CachebackHit(handle), MokaHit(moka), FloorHit(floor));
    let overhead = timer_overhead_ns();

    let mut records = Vec::new();
    for tasks in [1usize, 64] {
        let mut rates: [Vec<f64>; 3] = Default::default();
        rt.block_on(async {
            // Warm-up, then interleaved trials.
            throughput(&subjects.0, tasks, reads / 10).await;
            throughput(&subjects.1, tasks, reads / 10).await;
            throughput(&subjects.2, tasks, reads / 10).await;
            for _ in 0..TRIALS {
                rates[0].push(throughput(&subjects.0, tasks, reads).await);
                rates[1].push(throughput(&subjects.1, tasks, reads).await);
                rates[2].push(throughput(&subjects.2, tasks, reads).await);
            }
        });
        let hists = rt.block_on(async {
            (
                latencies(&subjects.0, tasks, reads).await,
                latencies(&subjects.1, tasks, reads).await,
                latencies(&subjects.2, tasks, reads).await,
            )
        });
        let spread = |v: &[f64]| Spread::of(v).expect("trials ran");
        let (cb, mk, fl) = (spread(&rates[0]), spread(&rates[1]), spread(&rates[2]));
        let subject_figures = |s: Spread, h: &Histogram<u64>| json!({ "ops_per_sec": s.json(), "latency": stats::latency_figures(h) });

        let mut r = Record::new(
            "W1",
            format!("memory, {tasks} task{}", if tasks == 1 { "" } else { "s" }),
            "cacheback",
        )
        .param("reads_per_pass", reads)
        .param("tasks", tasks as u64)
        .param("trials", TRIALS as u64)
        .param("runtime", "tokio multi-thread, 2 workers")
        .param(
            "value_json_bytes",
            serde_json::to_vec(&*value).map_or(0, |v| v.len()) as u64,
        )
        .param("timer_overhead_ns", overhead);
        r.figure("ops_per_sec", cb.json());
        r.figure("latency", stats::latency_figures(&hists.0));
        r.figure("floor_rwlock_hashmap", subject_figures(fl, &hists.2));
        r.figure(
            "django_cacheback_reference_ops_per_sec",
            DJANGO_HITS_PER_SEC,
        );
        let mut base = Map::new();
        if let serde_json::Value::Object(m) = subject_figures(mk, &hists.1) {
            base = m;
        }
        let ratio = cb.median / mk.median;
        r.baseline = Some(Baseline {
            name: "moka::future::Cache::get, same Arc".to_owned(),
            figures: base,
            ratio: stats::round3(ratio),
            ratio_of: "ops/s, cacheback ÷ moka".to_owned(),
        });
        let lat = |h: &Histogram<u64>| stats::ns_to_us(h.value_at_quantile(0.5));
        r.summary = format!(
            "{} (moka {}, floor {}); p50/p99/p99.9 {}/{}/{} µs (moka p50 {} µs)",
            report::rate(cb.median),
            report::rate(mk.median),
            report::rate(fl.median),
            lat(&hists.0),
            stats::ns_to_us(hists.0.value_at_quantile(0.99)),
            stats::ns_to_us(hists.0.value_at_quantile(0.999)),
            lat(&hists.1),
        );
        if tasks == 1 {
            r.check(
                "≥ 100× django-cacheback's in-process hit rate (≥ 6.9 M reads/s)",
                format!(
                    "{} = {:.0}×",
                    report::rate(cb.median),
                    cb.median / DJANGO_HITS_PER_SEC
                ),
                cb.median >= 100.0 * DJANGO_HITS_PER_SEC,
            );
        }
        r.check(
            "within 1.5× of raw moka get (same run)",
            format!("{} moka's throughput", report::times(ratio)),
            ratio >= 1.0 / 1.5,
        );
        r.check(
            "goal: ≤ 3× the RwLock<HashMap> floor (same run)",
            format!("floor is {} faster", report::times(fl.median / cb.median)),
            cb.median * 3.0 >= fl.median,
        );
        r.latencies = Some(hists.0);
        records.push(r);
    }
    Ok(records)
}

/// Sums the `calls` of every command in `INFO commandstats`.
#[cfg(feature = "redis")]
fn redis_commands(server: &cacheback_test_support::RedisServer) -> Result<u64, String> {
    let stats = server.command_stats().map_err(|e| e.to_string())?;
    Ok(stats.iter().map(|(_, calls)| calls).sum())
}

#[cfg(feature = "redis")]
#[derive(Clone)]
struct RedisGet(redis::aio::ConnectionManager, Arc<str>);

#[cfg(feature = "redis")]
impl HitRead for RedisGet {
    fn read(&self) -> impl Future<Output = ()> + Send + '_ {
        let mut conn = self.0.clone();
        async move {
            let reply: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&*self.1)
                .query_async(&mut conn)
                .await
                .ok()
                .flatten();
            black_box(reply);
        }
    }
}

/// W1 on the Redis store (a `redis-server` of the harness on loopback), next to raw redis-rs
/// `GET` of the same key (the same bytes) on a `ConnectionManager` (the kind of connection
/// `RedisStore` uses), at equal concurrency; commands per read from `INFO commandstats`.
#[cfg(feature = "redis")]
pub(crate) fn redis(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let server = ctx.redis()?;
    server
        .query::<()>(&["FLUSHALL"])
        .map_err(|e| e.to_string())?;
    let url = server.url();
    let reads: u64 = ctx.scale.pick(100_000, 10_000);
    let rt = runtime();
    let (handle, raw) = rt.block_on(async {
        let store = cacheback::RedisStore::from_url(&url).map_err(|e| e.to_string())?;
        let client = cacheback::Cacheback::builder()
            .store(store)
            .prefix("w1")
            .build()
            .map_err(|e| e.to_string())?;
        let handle = client.job(BenchJob {
            fetcher: Fetcher::new(std::time::Duration::ZERO),
            policy: Policy::default().lifetime(std::time::Duration::from_secs(3600)),
        });
        handle.get(KEY).await.map_err(|e| e.to_string())?;
        let status = handle
            .get_with_status(KEY)
            .await
            .map_err(|e| e.to_string())?
            .status;
        if status != cacheback::Status::Hit {
            return Err(format!("the key should be a fresh hit, is {status}"));
        }
        // The raw baseline GETs the very key cacheback stored its entry under.
        let redis_client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
        let mut conn = redis::aio::ConnectionManager::new(redis_client)
            .await
            .map_err(|e| e.to_string())?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let mut entry_key = None;
        for k in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            if kind == "string" {
                entry_key = Some(k);
            }
        }
        let entry_key = entry_key.ok_or("no string key holds cacheback's entry")?;
        Ok::<_, String>((handle, RedisGet(conn, Arc::from(entry_key))))
    })?;
    let entry_bytes = rt
        .block_on(async {
            let mut c = raw.0.clone();
            redis::cmd("STRLEN")
                .arg(&*raw.1)
                .query_async::<u64>(&mut c)
                .await
        })
        .map_err(|e| e.to_string())?;
    let ours = CachebackHit(handle);

    let mut records = Vec::new();
    for tasks in [1usize, 64] {
        let mut rates: [Vec<f64>; 2] = Default::default();
        let mut commands_per_read = f64::NAN;
        rt.block_on(async {
            throughput(&ours, tasks, reads / 10).await;
            throughput(&raw, tasks, reads / 10).await;
            for trial in 0..TRIALS {
                let before = redis_commands(server)?;
                rates[0].push(throughput(&ours, tasks, reads).await);
                let after = redis_commands(server)?;
                if trial == 0 {
                    // The first INFO is counted in the second one's figures.
                    let per_task = reads / tasks as u64;
                    commands_per_read =
                        (after - before - 1) as f64 / (per_task * tasks as u64) as f64;
                }
                rates[1].push(throughput(&raw, tasks, reads).await);
            }
            Ok::<_, String>(())
        })?;
        let hists = rt.block_on(async {
            (
                latencies(&ours, tasks, reads).await,
                latencies(&raw, tasks, reads).await,
            )
        });
        let cb = Spread::of(&rates[0]).ok_or("no trials")?;
        let raw_rate = Spread::of(&rates[1]).ok_or("no trials")?;
        let ratio = cb.median / raw_rate.median;
        let mut r = Record::new(
            "W1",
            format!("Redis, {tasks} task{}", if tasks == 1 { "" } else { "s" }),
            "cacheback",
        )
        .param("reads_per_pass", reads)
        .param("tasks", tasks as u64)
        .param("trials", TRIALS as u64)
        .param(
            "redis",
            "redis-server on loopback, --save '' --appendonly no",
        )
        .param("entry_bytes", entry_bytes);
        r.figure("ops_per_sec", cb.json());
        r.figure("latency", stats::latency_figures(&hists.0));
        r.figure("redis_commands_per_read", stats::round3(commands_per_read));
        r.baseline = Some(Baseline {
            name: "redis-rs GET of the same key, ConnectionManager".to_owned(),
            figures: json!({ "ops_per_sec": raw_rate.json(), "latency": stats::latency_figures(&hists.1) })
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ratio: stats::round3(ratio),
            ratio_of: "ops/s, cacheback ÷ raw GET".to_owned(),
        });
        r.summary = format!(
            "{} (raw GET {}); p50/p99 {}/{} (raw p50 {}); {} Redis commands per read",
            report::rate(cb.median),
            report::rate(raw_rate.median),
            report::micros(stats::ns_to_us(hists.0.value_at_quantile(0.5))),
            report::micros(stats::ns_to_us(hists.0.value_at_quantile(0.99))),
            report::micros(stats::ns_to_us(hists.1.value_at_quantile(0.5))),
            stats::round3(commands_per_read),
        );
        r.check(
            "exactly 1 Redis command per hit",
            format!("{:.3}", commands_per_read),
            (commands_per_read - 1.0).abs() < 0.001,
        );
        r.check(
            "≥ 0.9× raw redis-rs GET throughput at equal concurrency",
            report::times(ratio),
            ratio >= 0.9,
        );
        if tasks == 64 {
            r.check(
                "with 64 concurrent tasks ≥ 100,000 reads/s on 2 cores",
                report::rate(cb.median),
                cb.median >= 100_000.0,
            );
        }
        r.latencies = Some(hists.0);
        records.push(r);
    }
    Ok(records)
}
