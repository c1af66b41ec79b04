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
use std::time::{Duration, Instant};

use cacheback::{JobHandle, Policy};
use hdrhistogram::Histogram;
use serde_json::{Map, Value as Json};
use tokio::runtime::Runtime;

use crate::peers::amalgam::{self, AmalgamCache, KeyText};
use crate::report::{self, Baseline, Record};
use crate::stats::{self, Spread};
use crate::value::{BenchJob, ClientSetup, Fetcher, Value, memory_client};
use crate::workloads::{Ctx, runtime};

pub(super) const KEY: u64 = 42;
/// django-cacheback's in-process hit rate on this class of machine (WORKLOADS.md).
const DJANGO_HITS_PER_SEC: f64 = 69_000.0;
pub(super) const TRIALS: usize = 3;

/// Something read in a loop.
pub(crate) trait HitRead: Clone + Send + Sync + 'static {
    /// One read of the fresh key; the result goes through `black_box`.
    fn read(&self) -> impl Future<Output = ()> + Send + '_;
}

/// cacheback's hit path: `JobHandle::get` of the fresh key.
#[derive(Clone)]
pub(super) struct CachebackHit(JobHandle<BenchJob>);

impl HitRead for CachebackHit {
    fn read(&self) -> impl Future<Output = ()> + Send + '_ {
        let read = self.0.get(black_box(KEY));
        async move {
            black_box(read.await.ok());
        }
    }
}

/// Raw `moka::future::Cache::get` of the same `Arc` value.
#[derive(Clone)]
struct MokaHit(moka::future::Cache<u64, Arc<Value>>);

impl HitRead for MokaHit {
    async fn read(&self) {
        black_box(self.0.get(&black_box(KEY)).await);
    }
}

/// amalgam-cache's read-through hit: `Cache::get_or_set` of the fresh key (its factory, which
/// captures nothing, is never called).
#[derive(Clone)]
pub(super) struct AmalgamHit(pub(super) AmalgamCache);

impl HitRead for AmalgamHit {
    async fn read(&self) {
        let read = self.0.get_or_set(
            KeyText::new(black_box(KEY)),
            ::amalgam::source::factory(|_| async {
                Ok::<_, std::convert::Infallible>(Arc::new(Value::new(KEY)))
            }),
        );
        black_box(read.await.ok());
    }
}

/// amalgam-cache's plain read: `Cache::try_get` of the fresh key.
#[derive(Clone)]
struct AmalgamTryGet(AmalgamCache);

impl HitRead for AmalgamTryGet {
    async fn read(&self) {
        black_box(self.0.try_get(KeyText::new(black_box(KEY))).await.ok());
    }
}

/// The floor: a read-locked `HashMap` lookup of the same `Arc` value.
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

/// One subject at one task count: its throughput over the trials and its latency pass.
pub(super) struct Measured {
    /// Reads per second: median, minimum and maximum of the trials.
    pub(super) rate: Spread,
    /// Every read of the latency pass.
    pub(super) latency: Histogram<u64>,
}

impl Measured {
    /// `None` when no trial ran.
    pub(super) fn new(rates: &[f64], latency: Histogram<u64>) -> Option<Self> {
        Some(Measured {
            rate: Spread::of(rates)?,
            latency,
        })
    }

    /// The median latency, in microseconds.
    pub(super) fn p50_us(&self) -> f64 {
        stats::ns_to_us(self.latency.value_at_quantile(0.5))
    }

    /// `{"ops_per_sec", "latency"}`: the figures of one subject.
    fn figures(&self) -> Map<String, Json> {
        let mut figures = Map::new();
        figures.insert("ops_per_sec".to_owned(), self.rate.json());
        figures.insert("latency".to_owned(), stats::latency_figures(&self.latency));
        figures
    }
}

/// A W1 record of cacheback on `store` at `tasks` tasks, with what every W1 record has: the
/// parameters of a pass and cacheback's own figures.
pub(super) fn w1_record(store: &str, tasks: usize, reads: u64, cacheback: &Measured) -> Record {
    let mut r = Record::new(
        "W1",
        format!("{store}, {tasks} task{}", if tasks == 1 { "" } else { "s" }),
        "cacheback",
    )
    .param("reads_per_pass", reads)
    .param("tasks", tasks as u64)
    .param("trials", TRIALS as u64);
    r.figures.extend(cacheback.figures());
    r
}

/// What a same-run baseline is, and which figure cacheback's ratio to it is of.
pub(super) struct BaselineName {
    /// What the baseline is.
    pub(super) name: &'static str,
    /// Which figure the ratio is of.
    pub(super) ratio_of: &'static str,
}

/// The baseline of W1 on the memory store.
const MOKA: BaselineName = BaselineName {
    name: "moka::future::Cache::get, same Arc",
    ratio_of: "ops/s, cacheback ÷ moka",
};

/// The same-run baseline of a record: `measured`'s figures and cacheback's `ratio` to it.
pub(super) fn baseline(which: &BaselineName, measured: &Measured, ratio: f64) -> Baseline {
    Baseline {
        name: which.name.to_owned(),
        figures: measured.figures(),
        ratio: stats::round3(ratio),
        ratio_of: which.ratio_of.to_owned(),
    }
}

/// The policy and fetcher of W1's job: a value fresh for an hour, fetched at once.
pub(super) fn hit_job() -> (Policy, Arc<Fetcher>) {
    (
        Policy::default().lifetime(Duration::from_secs(3600)),
        Fetcher::new(Duration::ZERO),
    )
}

/// Errs unless `KEY` now reads as a fresh hit: W1 measures the hit path only.
pub(super) async fn expect_fresh_hit(handle: &JobHandle<BenchJob>) -> Result<(), String> {
    let status = handle
        .get_with_status(KEY)
        .await
        .map_err(|e| e.to_string())?
        .status;
    if status != cacheback::Status::Hit {
        return Err(format!("the key should be a fresh hit, is {status}"));
    }
    Ok(())
}

/// The three subjects of W1 on the memory store, each holding the same `Arc` value.
struct MemorySubjects {
    /// cacheback's hit path.
    cacheback: CachebackHit,
    /// Raw `moka::future::Cache::get`.
    moka: MokaHit,
    /// The `RwLock<HashMap>` floor.
    floor: FloorHit,
    /// amalgam-cache's `get_or_set`.
    amalgam: AmalgamHit,
    /// amalgam-cache's `try_get`.
    amalgam_try: AmalgamTryGet,
}

/// W1 on the memory store.
pub(crate) fn memory(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let reads: u64 = ctx.scale.pick(2_000_000, 50_000);
    let rt = runtime();
    let (subjects, value) = memory_subjects(&rt)?;
    let overhead = timer_overhead_ns();
    let mut records = Vec::new();
    for tasks in [1usize, 64] {
        let [cb, mk, fl, am, am_try] = measure_memory(&rt, &subjects, tasks, reads);
        let variant = format!("memory, {tasks} task{}", if tasks == 1 { "" } else { "s" });
        let peer = amalgam_record(variant, tasks, reads, &am, Some(&am_try), &cb, "cacheback");
        records.push(memory_record(tasks, reads, overhead, &value, [cb, mk, fl]));
        records.push(peer);
    }
    Ok(records)
}

/// A memory client whose `KEY` is a fresh hit, and raw moka and the floor holding its value.
fn memory_subjects(rt: &Runtime) -> Result<(MemorySubjects, Arc<Value>), String> {
    let (handle, value) = rt.block_on(async {
        let (policy, fetcher) = hit_job();
        let (handle, _queue) = memory_client(&ClientSetup::new(policy), fetcher, None);
        let value = handle.get(KEY).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((handle, value))
    })?;
    rt.block_on(expect_fresh_hit(&handle))?;
    let moka: moka::future::Cache<u64, Arc<Value>> = moka::future::Cache::new(100_000);
    rt.block_on(moka.insert(KEY, Arc::clone(&value)));
    let floor = Arc::new(RwLock::new(HashMap::from([(KEY, Arc::clone(&value))])));
    let cache = rt.block_on(async {
        let cache = amalgam::memory(Duration::from_secs(3600))?;
        amalgam_fill(&cache, &value).await?;
        Ok::<_, String>(cache)
    })?;
    let subjects = MemorySubjects {
        cacheback: CachebackHit(handle),
        moka: MokaHit(moka),
        floor: FloorHit(floor),
        amalgam: AmalgamHit(cache.clone()),
        amalgam_try: AmalgamTryGet(cache),
    };
    Ok((subjects, value))
}

/// Writes `value` under `KEY` in an amalgam cache and checks it reads back (W1 measures hits).
pub(super) async fn amalgam_fill(cache: &AmalgamCache, value: &Arc<Value>) -> Result<(), String> {
    cache
        .set(KeyText::new(KEY), Arc::clone(value))
        .await
        .map_err(|e| e.to_string())?;
    match cache.try_get(KeyText::new(KEY)).await {
        Ok(Some(_)) => Ok(()),
        other => Err(format!("amalgam-cache should hold the key: {other:?}")),
    }
}

/// The throughput trials, then the latency pass, of the memory subjects at `tasks` tasks:
/// cacheback, moka, the floor, amalgam's `get_or_set` and its `try_get`, in that order.
fn measure_memory(rt: &Runtime, s: &MemorySubjects, tasks: usize, reads: u64) -> [Measured; 5] {
    let [cb_rates, mk_rates, fl_rates, am_rates, at_rates] =
        rt.block_on(memory_trials(s, tasks, reads));
    let [cb, mk, fl, am, at] = rt.block_on(async {
        [
            latencies(&s.cacheback, tasks, reads).await,
            latencies(&s.moka, tasks, reads).await,
            latencies(&s.floor, tasks, reads).await,
            latencies(&s.amalgam, tasks, reads).await,
            latencies(&s.amalgam_try, tasks, reads).await,
        ]
    });
    let measured = |rates: &[f64], latency| Measured::new(rates, latency).expect("trials ran");
    [
        measured(&cb_rates, cb),
        measured(&mk_rates, mk),
        measured(&fl_rates, fl),
        measured(&am_rates, am),
        measured(&at_rates, at),
    ]
}

/// A warm-up, then `TRIALS` throughput passes of the memory subjects, interleaved so they
/// share the machine's noise; each subject's reads per second.
async fn memory_trials(s: &MemorySubjects, tasks: usize, reads: u64) -> [Vec<f64>; 5] {
    throughput(&s.cacheback, tasks, reads / 10).await;
    throughput(&s.moka, tasks, reads / 10).await;
    throughput(&s.floor, tasks, reads / 10).await;
    throughput(&s.amalgam, tasks, reads / 10).await;
    throughput(&s.amalgam_try, tasks, reads / 10).await;
    let mut rates: [Vec<f64>; 5] = Default::default();
    for _ in 0..TRIALS {
        rates[0].push(throughput(&s.cacheback, tasks, reads).await);
        rates[1].push(throughput(&s.moka, tasks, reads).await);
        rates[2].push(throughput(&s.floor, tasks, reads).await);
        rates[3].push(throughput(&s.amalgam, tasks, reads).await);
        rates[4].push(throughput(&s.amalgam_try, tasks, reads).await);
    }
    rates
}

/// The record of amalgam-cache on W1: its `get_or_set` hits (and `try_get`, when measured),
/// next to `ours` (cacheback, described by `ours_name`) measured interleaved with it.
pub(super) fn amalgam_record(
    variant: String,
    tasks: usize,
    reads: u64,
    peer: &Measured,
    try_get: Option<&Measured>,
    ours: &Measured,
    ours_name: &str,
) -> Record {
    let mut r = Record::new("W1", variant, amalgam::NAME)
        .param("reads_per_pass", reads)
        .param("tasks", tasks as u64)
        .param("trials", TRIALS as u64)
        .param(
            "what_it_does",
            "Cache::get_or_set of a fresh key (factory never called)",
        );
    r.figures.extend(peer.figures());
    if let Some(t) = try_get {
        r.figure("try_get", t.figures());
    }
    let ratio = ours.rate.median / peer.rate.median;
    r.figure("cacheback_same_run", ours.figures());
    r.figure("cacheback_over_peer_ops_per_sec", stats::round3(ratio));
    r.summary = format!(
        "get_or_set {}{}; p50/p99 {}/{}; {ours_name} {} in the same run ({} amalgam's throughput)",
        report::rate(peer.rate.median),
        try_get.map_or(String::new(), |t| format!(
            " (try_get {}, p50 {})",
            report::rate(t.rate.median),
            report::micros(t.p50_us())
        )),
        report::micros(peer.p50_us()),
        report::micros(stats::ns_to_us(peer.latency.value_at_quantile(0.99))),
        report::rate(ours.rate.median),
        report::times(ratio),
    );
    r
}

/// The record of W1 on the memory store at `tasks` tasks: moka is the baseline, the floor and
/// django-cacheback's rate are reference figures.
fn memory_record(
    tasks: usize,
    reads: u64,
    timer_overhead_ns: u64,
    value: &Value,
    [cb, mk, fl]: [Measured; 3],
) -> Record {
    let mut r = w1_record("memory", tasks, reads, &cb)
        .param("runtime", "tokio multi-thread, 2 workers")
        .param(
            "value_json_bytes",
            serde_json::to_vec(value).map_or(0, |v| v.len()) as u64,
        )
        .param("timer_overhead_ns", timer_overhead_ns);
    r.figure("floor_rwlock_hashmap", fl.figures());
    r.figure(
        "django_cacheback_reference_ops_per_sec",
        DJANGO_HITS_PER_SEC,
    );
    let ratio = cb.rate.median / mk.rate.median;
    r.baseline = Some(baseline(&MOKA, &mk, ratio));
    r.summary = memory_summary(&cb, &mk, &fl);
    memory_checks(&mut r, tasks, cb.rate, fl.rate, ratio);
    r.latencies = Some(cb.latency);
    r
}

/// The table line of W1 on the memory store.
fn memory_summary(cb: &Measured, mk: &Measured, fl: &Measured) -> String {
    format!(
        "{} (moka {}, floor {}); p50/p99/p99.9 {}/{}/{} µs (moka p50 {} µs)",
        report::rate(cb.rate.median),
        report::rate(mk.rate.median),
        report::rate(fl.rate.median),
        cb.p50_us(),
        stats::ns_to_us(cb.latency.value_at_quantile(0.99)),
        stats::ns_to_us(cb.latency.value_at_quantile(0.999)),
        mk.p50_us(),
    )
}

/// The targets of W1 on the memory store; `ratio` is cacheback's throughput ÷ moka's.
fn memory_checks(r: &mut Record, tasks: usize, cb: Spread, floor: Spread, ratio: f64) {
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
        format!(
            "floor is {} faster",
            report::times(floor.median / cb.median)
        ),
        cb.median * 3.0 >= floor.median,
    );
}

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub(crate) use redis::redis;

#[cfg(feature = "redis")]
mod cluster;
#[cfg(feature = "redis")]
pub(crate) use cluster::cluster;
