//! W2 across processes: 4 reader processes × 16 readers and a separate worker process, all on
//! one `redis-server` (or the store on a `memcached`, the queue on Redis; or the store and queue
//! on a Redis Cluster, and 16 processes × 4 readers too); fetches count themselves with a Redis
//! `INCR` on the `redis-server`. The amalgam-cache peer's reader processes are in `amalgam.rs`
//! (it has no worker: its readers' processes run the refresh).

use std::io::Read as _;
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use cacheback::{Cacheback, Job, JobHandle, MemcachedStore, NearCache, Policy, RedisStore, Worker};
use serde::Deserialize;
use serde_json::json;

use super::{FETCH, READERS};
use crate::peers::W2_LIFETIME;
use crate::queues::{AnyQueue, Brokers, QueueChoice};
use crate::report::Record;
use crate::stats;
use crate::value::unix_ms;
use crate::workloads::runtime;

/// Reader processes, unless a run says otherwise.
pub(super) const PROCESSES: usize = 4;
/// Readers per process with the default [`PROCESSES`].
pub(super) const PER_PROCESS: usize = READERS / PROCESSES;
/// Time between two trials' bursts (the 200 ms fetch lands well within it).
pub(super) const PERIOD: Duration = Duration::from_millis(1_000);
/// Time for the children to start before the first burst.
pub(super) const STARTUP: Duration = Duration::from_millis(3_000);
/// With near caches: each trial's key is refreshed this long before its burst (its 200 ms
/// fetch lands about 800 ms before), and every reader process reads it (and keeps its copy)
/// [`WARM_BEFORE`] before the burst, while it is still fresh (300 ms lifetime); the burst then
/// finds the copy stale.
pub(super) const PRIME_BEFORE: Duration = Duration::from_millis(1_000);
const WARM_BEFORE: Duration = Duration::from_millis(650);

/// Fetches count themselves in Redis (`INCR`), then sleep [`FETCH`].
#[derive(Debug)]
pub(super) struct CountingJob {
    pub(super) redis: redis::Client,
    pub(super) prefix: String,
}

impl Job for CountingJob {
    type Args = u64;
    type Value = crate::value::Value;
    type Error = redis::RedisError;

    fn name(&self) -> &str {
        "w2-fleet"
    }

    fn policy(&self) -> Policy {
        Policy::default()
            .lifetime(W2_LIFETIME)
            .stale_ttl(Duration::from_secs(3600))
    }

    async fn fetch(&self, key: u64) -> Result<Self::Value, redis::RedisError> {
        let mut conn = self.redis.get_multiplexed_async_connection().await?;
        let _: u64 = redis::cmd("INCR")
            .arg(counter(&self.prefix, key))
            .query_async(&mut conn)
            .await?;
        tokio::time::sleep(FETCH).await;
        Ok(crate::value::Value::new(key))
    }
}

pub(super) fn counter(prefix: &str, key: u64) -> String {
    format!("{prefix}:fetches:{key}")
}

/// What every process of the fleet agrees on, passed as arguments
/// (`URL PREFIX T0_MS TRIALS --queue KIND --queue-url URL [--store-url URL] [--processes N]
/// [--near] [--memcached URL] [--amalgam]`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Plan {
    /// The run's Redis (fetches are counted there).
    pub(super) url: String,
    /// The run's key prefix.
    pub(super) prefix: String,
    /// Unix ms of the first burst.
    pub(super) t0_ms: u64,
    /// Trials (one key and one burst each).
    pub(super) trials: usize,
    /// The queue behind the refreshes.
    #[arg(long, value_enum, default_value_t)]
    pub(super) queue: QueueChoice,
    /// The queue's URL (the Redis URL for `redis`).
    #[arg(long, default_value = "")]
    pub(super) queue_url: String,
    /// Every client reads through a near cache (amalgam-cache: every process read the key
    /// while it was fresh, so its L1 holds a copy).
    #[arg(long)]
    pub(super) near: bool,
    /// The store is `MemcachedStore` at this URL (the queue and the fetch counters stay on
    /// Redis).
    #[arg(long)]
    pub(super) memcached: Option<String>,
    /// The readers read through amalgam-cache on the Redis (no queue, no worker).
    #[arg(long)]
    pub(super) amalgam: bool,
    /// The store's URL, when not the run's Redis (a Redis Cluster).
    #[arg(long, default_value = "")]
    pub(super) store_url: String,
    /// Reader processes; the 64 readers are shared among them.
    #[arg(long, default_value_t = PROCESSES)]
    pub(super) processes: usize,
}

impl Plan {
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            self.url.clone(),
            self.prefix.clone(),
            self.t0_ms.to_string(),
            self.trials.to_string(),
            "--queue".to_owned(),
            self.queue.arg().to_owned(),
            "--queue-url".to_owned(),
            self.queue_url.clone(),
        ];
        if self.near {
            args.push("--near".to_owned());
        }
        if let Some(url) = &self.memcached {
            args.push("--memcached".to_owned());
            args.push(url.clone());
        }
        if self.amalgam {
            args.push("--amalgam".to_owned());
        }
        args.extend([
            "--store-url".to_owned(),
            self.store_url.clone(),
            "--processes".to_owned(),
            self.processes.to_string(),
        ]);
        args
    }

    /// Readers per reader process.
    fn per_process(&self) -> usize {
        READERS / self.processes.max(1)
    }

    /// The store's URL.
    fn store_url(&self) -> &str {
        if self.store_url.is_empty() {
            &self.url
        } else {
            &self.store_url
        }
    }

    /// Unix ms of trial `i`'s burst.
    pub(super) fn burst_at(&self, i: usize) -> u64 {
        self.t0_ms + i as u64 * PERIOD.as_millis() as u64
    }

    /// A client of the fleet (no in-process worker), its job handle and its queue.
    fn client(&self) -> Result<(Cacheback, JobHandle<CountingJob>, AnyQueue), String> {
        let queue = AnyQueue::open(self.queue, &self.queue_url)?;
        let builder = Cacheback::builder().prefix(&self.prefix);
        let builder = match &self.memcached {
            Some(url) => builder.store(MemcachedStore::from_url(url).map_err(|e| e.to_string())?),
            None => {
                builder.store(RedisStore::from_url(self.store_url()).map_err(|e| e.to_string())?)
            }
        };
        let mut builder = builder
            .shared_queue(queue.shared())
            .in_process_worker(false);
        if self.near {
            builder = builder.near_cache(NearCache::new());
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        let handle = client.job(CountingJob {
            redis: redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?,
            prefix: self.prefix.clone(),
        });
        Ok((client, handle, queue))
    }
}

/// What a reader process reports for one trial (one JSON line on stdout).
#[derive(Debug, Deserialize)]
pub(super) struct TrialReport {
    trial: usize,
    latencies_ns: Vec<u64>,
    stale: usize,
    enqueued: u64,
    late_ms: u64,
}

/// Sleeps until the Unix time `at_ms`; how late it woke.
pub(super) async fn sleep_until_unix(at_ms: u64) -> u64 {
    let now = unix_ms();
    if at_ms > now {
        tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
    }
    unix_ms().saturating_sub(at_ms)
}

/// A reader process: at each trial's instant, 16 readers read that trial's key at once.
async fn reader(plan: Plan) -> Result<(), String> {
    let (client, handle, queue) = plan.client()?;
    // Connect before the first burst, so no burst pays for the connection.
    handle
        .peek(u64::MAX)
        .await
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    // Likewise the queue's (a broker queue connects on first use).
    queue
        .shared()
        .ping()
        .await
        .map_err(|e| format!("cannot reach the queue: {e}"))?;
    while plan.near && client.near_cache_live() != Some(true) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut pending = None;
    for trial in 0..plan.trials {
        if plan.near {
            sleep_until_unix(plan.burst_at(trial) - WARM_BEFORE.as_millis() as u64).await;
            handle.get(trial as u64).await.map_err(|e| e.to_string())?;
        }
        let late_ms = sleep_until_unix(plan.burst_at(trial)).await;
        // The previous burst's report, now that its refresh request is enqueued (a stale
        // reader of a remote store enqueues in the background; this is a burst interval later).
        if let Some((report, before)) = pending.take() {
            print_report(report, queue.enqueued() - before);
        }
        let enqueued_before = queue.enqueued();
        let barrier = Arc::new(tokio::sync::Barrier::new(plan.per_process()));
        let readers: Vec<_> = (0..plan.per_process())
            .map(|_| {
                let (handle, barrier) = (handle.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let t = std::time::Instant::now();
                    let lookup = handle.get_with_status(trial as u64).await;
                    let took = t.elapsed().as_nanos() as u64;
                    let stale = lookup
                        .is_ok_and(|l| l.value.is_some() && l.status == cacheback::Status::Stale);
                    (took, stale)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        let mut stale = 0usize;
        for r in readers {
            let (took, was_stale) = r.await.map_err(|e| e.to_string())?;
            latencies.push(took);
            stale += usize::from(was_stale);
        }
        // A stale reader of a remote store enqueues in the background: count what this burst
        // enqueued just before the next burst (or once the process stopped).
        let report = json!({
            "trial": trial,
            "late_ms": late_ms,
            "latencies_ns": latencies,
            "stale": stale,
        });
        pending = Some((report, enqueued_before));
    }
    // Background work (stale readers ask for the claim in the background)
    // finishes before the process exits, as a service's graceful stop would let it.
    client.shutdown(Duration::from_secs(5)).await;
    if let Some((report, before)) = pending {
        print_report(report, queue.enqueued() - before);
    }
    Ok(())
}

/// Prints a trial's report (one JSON line) with what it enqueued.
pub(super) fn print_report(mut report: serde_json::Value, enqueued: u64) {
    report["enqueued"] = json!(enqueued);
    println!("{report}");
}

/// The worker process: drains the queue until one period after the last burst.
async fn worker(plan: Plan) -> Result<(), String> {
    let (client, _handle, _queue) = plan.client()?;
    let worker = Worker::builder(&client)
        .build()
        .map_err(|e| e.to_string())?;
    let until = plan.burst_at(plan.trials) + PERIOD.as_millis() as u64;
    let report = worker
        .run_until(async move {
            sleep_until_unix(until).await;
        })
        .await;
    eprintln!("   w2 worker process: {report:?}");
    Ok(())
}

/// The reader process (`__child w2-reader`).
pub(crate) fn reader_main(plan: Plan) -> Result<(), String> {
    if plan.amalgam {
        return runtime().block_on(super::amalgam::reader(plan));
    }
    runtime().block_on(reader(plan))
}

/// The worker process (`__child w2-worker`).
pub(crate) fn worker_main(plan: Plan) -> Result<(), String> {
    runtime().block_on(worker(plan))
}

/// Kills the children still running when dropped (on any early return).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the trials across processes, with or without near caches, the store on the Redis at
/// `url` or on the memcached at `memcached`.
pub(super) fn run(
    url: &str,
    trials: usize,
    brokers: &Brokers,
    near: bool,
    memcached: Option<&str>,
) -> Result<Record, String> {
    let store = if memcached.is_some() { "mc" } else { "redis" };
    let plan = Plan {
        url: url.to_owned(),
        prefix: format!("w2fleet-{}-{near}-{store}", std::process::id()),
        t0_ms: 0,
        trials,
        queue: brokers.choice(),
        queue_url: brokers.url(url)?,
        near,
        memcached: memcached.map(str::to_owned),
        amalgam: false,
        store_url: String::new(),
        processes: PROCESSES,
    };
    run_plan(plan)
}

/// Runs the trials with the store and a `RedisQueue` on the Redis Cluster at `cluster_url`,
/// `processes` reader processes sharing the 64 readers; fetches counted on `url`.
pub(super) fn run_on_cluster(
    url: &str,
    cluster_url: &str,
    trials: usize,
    processes: usize,
) -> Result<Record, String> {
    let plan = Plan {
        url: url.to_owned(),
        prefix: format!("w2cluster-{}-{processes}", std::process::id()),
        t0_ms: 0,
        trials,
        queue: QueueChoice::Redis,
        queue_url: cluster_url.to_owned(),
        near: false,
        memcached: None,
        amalgam: false,
        store_url: cluster_url.to_owned(),
        processes,
    };
    run_plan(plan)
}

fn run_plan(mut plan: Plan) -> Result<Record, String> {
    let rt = runtime();
    let near = plan.near;
    plan.t0_ms = unix_ms() + STARTUP.as_millis() as u64;
    // Prime one key per trial (1 fetch each, counted): long before its burst, or, for near
    // caches, just before it (in the background while the children run).
    let (client, handle, _queue) = rt.block_on(async { plan.client() })?;
    let priming = {
        let (handle, plan) = (handle.clone(), plan.clone());
        rt.spawn(async move {
            for key in 0..plan.trials {
                if plan.near {
                    let at = plan.burst_at(key) - PRIME_BEFORE.as_millis() as u64;
                    sleep_until_unix(at).await;
                }
                handle
                    .refresh(key as u64)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        })
    };
    if !near {
        rt.block_on(async { priming.await.map_err(|e| e.to_string())? })?;
        plan.t0_ms = unix_ms() + STARTUP.as_millis() as u64;
        let reports = run_children(&plan, true)?;
        return finish(&rt, &plan, &client, &handle, &reports);
    }
    let reports = run_children(&plan, true)?;
    rt.block_on(async { priming.await.map_err(|e| e.to_string())? })?;
    finish(&rt, &plan, &client, &handle, &reports)
}

/// Counts the fetches once the children are done, and makes the record.
fn finish(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    client: &Cacheback,
    handle: &JobHandle<CountingJob>,
    reports: &[TrialReport],
) -> Result<Record, String> {
    let fetches = rt.block_on(async {
        let fetches = count_fetches(plan, handle).await;
        client.shutdown(Duration::from_secs(5)).await;
        fetches
    })?;
    record(&fetches, reports, plan)
}

/// Starts the worker process (when `worker`) and the reader processes, waits for them to
/// finish, and returns the readers' trial reports.
pub(super) fn run_children(plan: &Plan, worker: bool) -> Result<Vec<TrialReport>, String> {
    let mut children = Children(Vec::new());
    if worker {
        children
            .0
            .push(crate::fleet::spawn("w2-worker", &plan.args())?);
    }
    for _ in 0..plan.processes {
        children
            .0
            .push(crate::fleet::spawn("w2-reader", &plan.args())?);
    }
    // Every child exits on its own after the last trial; give them a bound.
    let deadline = std::time::Instant::now()
        + STARTUP
        + PERIOD * (plan.trials as u32 + 2)
        + Duration::from_secs(20);
    let mut outputs = Vec::new();
    for child in &mut children.0 {
        loop {
            match child.try_wait().map_err(|e| e.to_string())? {
                Some(status) if status.success() => break,
                Some(status) => return Err(format!("a W2 child process failed: {status}")),
                None if std::time::Instant::now() > deadline => {
                    return Err("a W2 child process did not finish in time".to_owned());
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            stdout.read_to_string(&mut out).map_err(|e| e.to_string())?;
        }
        outputs.push(out);
    }
    let reports: Vec<TrialReport> = outputs
        .iter()
        .flat_map(|o| o.lines())
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).map_err(|e| format!("bad child report {l}: {e}")))
        .collect::<Result<_, _>>()?;
    if reports.len() != plan.processes * plan.trials {
        return Err(format!(
            "{} trial reports from the reader processes, expected {}",
            reports.len(),
            plan.processes * plan.trials
        ));
    }
    Ok(reports)
}

/// Fetches per event: each key's counter, less its priming fetch. Checks every trial's
/// refresh landed.
async fn count_fetches(plan: &Plan, handle: &JobHandle<CountingJob>) -> Result<Vec<f64>, String> {
    let redis = redis::Client::open(plan.url.as_str()).map_err(|e| e.to_string())?;
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let mut fetches = Vec::new();
    for key in 0..plan.trials as u64 {
        let n: Option<u64> = redis::cmd("GET")
            .arg(counter(&plan.prefix, key))
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        fetches.push(n.unwrap_or(0).saturating_sub(1) as f64);
        let landed = handle
            .peek(key)
            .await
            .map_err(|e| e.to_string())?
            .is_some_and(|p| {
                p.value
                    .is_some_and(|v| v.at_ms >= plan.burst_at(key as usize))
            });
        if !landed {
            return Err(format!("trial {key}: the refresh never landed"));
        }
    }
    Ok(fetches)
}

/// The readers' reports tallied per trial, next to its fetches (`queued`: the subject has a
/// queue, whose enqueues the reports count); and the latest any burst started.
pub(super) fn tally(fetches: &[f64], reports: &[TrialReport], queued: bool) -> (super::Tally, u64) {
    let mut tally = super::Tally::default();
    let mut late_max = 0u64;
    for (trial, &trial_fetches) in fetches.iter().enumerate() {
        let (mut stale, mut enqueued) = (0, 0);
        let mut trial_hist = stats::latency_histogram();
        for r in reports.iter().filter(|r| r.trial == trial) {
            for &ns in &r.latencies_ns {
                stats::record(&mut trial_hist, Duration::from_nanos(ns));
            }
            stale += r.stale;
            late_max = late_max.max(r.late_ms);
            enqueued += r.enqueued;
        }
        let enqueued = queued.then_some(enqueued as f64);
        tally.trial(&trial_hist, stale, trial_fetches, enqueued);
    }
    (tally, late_max)
}

/// The record of the trials: the readers' reports tallied per trial, next to its fetches.
fn record(fetches: &[f64], reports: &[TrialReport], plan: &Plan) -> Result<Record, String> {
    let trials = plan.trials;
    let (tally, late_max) = tally(fetches, reports, true);
    let name = plan.queue.name();
    let near = if plan.near { " + near cache" } else { "" };
    let (processes, per_process) = (plan.processes, plan.per_process());
    let fleet = format!("{processes} processes × {per_process} readers + a worker process");
    let store = if plan.memcached.is_some() {
        "memcached"
    } else if plan.store_url.is_empty() {
        "Redis"
    } else {
        "Redis Cluster (3 masters)"
    };
    let variant = match plan.queue {
        QueueChoice::Redis if plan.memcached.is_some() => {
            format!("memcached + RedisQueue, {fleet}")
        }
        QueueChoice::Redis => format!("{store}{near}, {fleet}"),
        _ => format!("{store} + {name}{near}, {fleet}"),
    };
    let store_type = if plan.memcached.is_some() {
        "MemcachedStore"
    } else {
        "RedisStore"
    };
    let warmed = if plan.near {
        ", each process holding a copy in its near cache (NearCache::new()) read 650 ms before \
         while fresh"
    } else {
        ""
    };
    let setup = format!(
        "{processes} OS processes × {per_process} readers (JobHandle::get_with_status, \
         {store_type} on {store} + {name}, no worker) hit one stale key at the same Unix \
         millisecond{warmed}; a separate worker process refreshes; fetches counted with Redis \
         INCR"
    );
    let mut r = tally
        .record(&variant, "cacheback", &setup)?
        .param("processes", processes as u64)
        .param("queue", name);
    r.figure("max_burst_start_skew_ms", late_max);
    if let Some(url) = &plan.memcached {
        r = r
            .param("store", "MemcachedStore")
            .param("memcached", url.as_str());
    }
    if plan.near {
        super::check(
            &mut r,
            trials,
            100.0,
            "reader p99 < 100 µs with near caches while the 200 ms fetch runs",
        );
    } else {
        super::check(
            &mut r,
            trials,
            5_000.0,
            "reader p99 < 5 ms (Redis) while the 200 ms fetch runs",
        );
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Args {
        #[command(flatten)]
        plan: Plan,
    }

    /// A child parses exactly the plan its parent passed (store, queue, near, amalgam).
    #[test]
    fn a_plan_survives_the_command_line() {
        let plan = Plan {
            url: "redis://127.0.0.1:1/".to_owned(),
            prefix: "p".to_owned(),
            t0_ms: 1_700_000_000_000,
            trials: 3,
            queue: QueueChoice::Nats,
            queue_url: "nats://127.0.0.1:2".to_owned(),
            near: true,
            memcached: Some("memcache://127.0.0.1:3".to_owned()),
            amalgam: true,
            store_url: "redis+cluster://127.0.0.1:4".to_owned(),
            processes: 16,
        };
        let argv = std::iter::once("child".to_owned()).chain(plan.args());
        let parsed = Args::try_parse_from(argv).unwrap().plan;
        assert_eq!(format!("{parsed:?}"), format!("{plan:?}"));
        let plain = Plan {
            near: false,
            memcached: None,
            amalgam: false,
            ..plan
        };
        let argv = std::iter::once("child".to_owned()).chain(plain.args());
        let parsed = Args::try_parse_from(argv).unwrap().plan;
        assert_eq!(format!("{parsed:?}"), format!("{plain:?}"));
    }
}
