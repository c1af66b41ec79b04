//! The soak load: the client, the worker, the operation tasks and the sampling.

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use cacheback::worker::WorkerHealth;
use cacheback::{
    Cacheback, Job, JobHandle, MemoryStore, Policy, RedisQueue, Worker, WorkerOptions,
};
use cacheback_test_support::RedisServer;
use serde_json::json;
use tokio::sync::Notify;

use super::Args;
use super::probe::{self, info_field};
use super::report::{markdown, sample_line};
use super::verdict::{self, Sample};
use crate::machine;
use crate::value::Value;
use crate::workloads::runtime;
use crate::zipf::Zipf;

/// Reader (operation) tasks, as W4.
pub(super) const TASKS: usize = 8;
/// Zipf exponent of key popularity, as W4.
pub(super) const ZIPF_S: f64 = 1.1;
/// Value lifetime, as W4.
pub(super) const LIFETIME: Duration = Duration::from_secs(2);
/// The fetch's duration, as W4.
pub(super) const FETCH: Duration = Duration::from_millis(20);
/// Worker concurrency, as W4.
pub(super) const WORKER_CONCURRENCY: usize = 128;
/// Shares of the operations that are writes; the rest are reads.
pub(super) const SET_SHARE: f64 = 0.01;
pub(super) const INVALIDATE_SHARE: f64 = 0.005;
pub(super) const DELETE_SHARE: f64 = 0.001;
/// Key prefix of the client and queue in Redis.
const PREFIX: &str = "soak";
/// The queue (stream) name the job's refreshes go to.
const QUEUE: &str = "default";

/// The soak job: `u64` in, [`Value`] out after [`FETCH`]; counts its calls (and nothing else:
/// a call log would grow for the whole run).
#[derive(Debug)]
struct SoakJob {
    calls: Arc<AtomicU64>,
}

impl Job for SoakJob {
    type Args = u64;
    type Value = Value;
    type Error = Infallible;

    fn name(&self) -> &str {
        "soak"
    }

    fn policy(&self) -> Policy {
        Policy::default().lifetime(LIFETIME)
    }

    async fn fetch(&self, key: u64) -> Result<Value, Infallible> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(FETCH).await;
        Ok(Value::new(key))
    }
}

/// Operation counts, added to by the tasks in batches.
#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    empty: AtomicU64,
    sets: AtomicU64,
    invalidates: AtomicU64,
    deletes: AtomicU64,
    errors: AtomicU64,
}

/// Counts since the start, of the tasks, the job and the worker.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Totals {
    pub(super) reads: u64,
    pub(super) empty: u64,
    pub(super) sets: u64,
    pub(super) invalidates: u64,
    pub(super) deletes: u64,
    pub(super) errors: u64,
    pub(super) fetches: u64,
    pub(super) refreshes: u64,
}

impl Totals {
    fn add_to(&self, c: &Counters) {
        c.reads.fetch_add(self.reads, Ordering::Relaxed);
        c.empty.fetch_add(self.empty, Ordering::Relaxed);
        c.sets.fetch_add(self.sets, Ordering::Relaxed);
        c.invalidates.fetch_add(self.invalidates, Ordering::Relaxed);
        c.deletes.fetch_add(self.deletes, Ordering::Relaxed);
        c.errors.fetch_add(self.errors, Ordering::Relaxed);
    }

    pub(super) fn ops(&self) -> u64 {
        self.reads + self.sets + self.invalidates + self.deletes
    }
}

/// What the load is made of, for reading the counts.
struct Load {
    counters: Arc<Counters>,
    fetches: Arc<AtomicU64>,
    health: WorkerHealth,
    store: MemoryStore,
    queue: RedisQueue,
}

impl Load {
    fn totals(&self) -> Totals {
        let c = &self.counters;
        Totals {
            reads: c.reads.load(Ordering::Relaxed),
            empty: c.empty.load(Ordering::Relaxed),
            sets: c.sets.load(Ordering::Relaxed),
            invalidates: c.invalidates.load(Ordering::Relaxed),
            deletes: c.deletes.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            fetches: self.fetches.load(Ordering::Relaxed),
            refreshes: self.health.processed(),
        }
    }
}

/// What a run leaves for the report.
pub(super) struct Outcome {
    pub(super) samples: Vec<Sample>,
    pub(super) totals: Totals,
    pub(super) seconds: f64,
    pub(super) before_load: probe::ProcessProbe,
    pub(super) after_shutdown: probe::ProcessProbe,
    pub(super) worker: String,
    pub(super) drained: bool,
}

pub(super) fn run(args: &Args) -> Result<(), String> {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; use --release for the soak figures");
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let jsonl_path = args.out.join("soak.jsonl");
    let mut jsonl = std::fs::File::create(&jsonl_path)
        .map_err(|e| format!("cannot create {}: {e}", jsonl_path.display()))?;
    let started = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let facts = machine::facts();
    let load_before = machine::load_average();
    let run_s = args.minutes * 60.0;
    let warmup_s = verdict::warmup_seconds(run_s);
    let server = RedisServer::try_start().map_err(|e| e.to_string())?;
    eprintln!(
        "soak: pid {}, {:.1} min of load, a sample every {} s, warm-up {:.0} s; \
         memory store bounded to {} entries, {} keys Zipf({ZIPF_S}); redis {}",
        std::process::id(),
        args.minutes,
        args.sample_seconds,
        warmup_s,
        args.max_entries,
        args.keys,
        server.url()
    );
    let rt = runtime();
    let outcome = rt.block_on(soak(args, &server, &mut jsonl))?;
    drop(rt);
    drop(server);

    let verdict = verdict::judge(&outcome.samples, warmup_s, args.max_entries);
    let summary = json!({
        "type": "summary",
        "started": started,
        "machine": facts,
        "load_average_before": load_before,
        "load_average_after": machine::load_average(),
        "params": params_json(args),
        "seconds": outcome.seconds,
        "totals": {
            "reads": outcome.totals.reads,
            "empty_reads": outcome.totals.empty,
            "sets": outcome.totals.sets,
            "invalidates": outcome.totals.invalidates,
            "deletes": outcome.totals.deletes,
            "fetches": outcome.totals.fetches,
            "refreshes": outcome.totals.refreshes,
            "errors": outcome.totals.errors,
        },
        "before_load": probe_json(&outcome.before_load),
        "after_shutdown": probe_json(&outcome.after_shutdown),
        "worker": outcome.worker,
        "shutdown_drained": outcome.drained,
        "verdict": verdict.json(),
    });
    writeln!(jsonl, "{summary}")
        .map_err(|e| format!("cannot write {}: {e}", jsonl_path.display()))?;

    let md = markdown(args, &started, &facts, &outcome, &verdict);
    let md_path = args.out.join("soak.md");
    std::fs::write(&md_path, &md)
        .map_err(|e| format!("cannot write {}: {e}", md_path.display()))?;
    println!("{md}");
    eprintln!(
        "results: {} and {}",
        md_path.display(),
        jsonl_path.display()
    );
    if verdict.ok() {
        Ok(())
    } else {
        Err(format!("not flat: {}", verdict.failures().join("; ")))
    }
}

fn params_json(args: &Args) -> serde_json::Value {
    json!({
        "minutes": args.minutes,
        "sample_seconds": args.sample_seconds,
        "max_entries": args.max_entries,
        "keys": args.keys,
        "zipf_s": ZIPF_S,
        "tasks": TASKS,
        "lifetime_ms": LIFETIME.as_millis() as u64,
        "fetch_ms": FETCH.as_millis() as u64,
        "worker_concurrency": WORKER_CONCURRENCY,
        "shares": { "set": SET_SHARE, "invalidate": INVALIDATE_SHARE, "delete": DELETE_SHARE },
        "store": "MemoryStore",
        "queue": "RedisQueue",
    })
}

fn probe_json(p: &probe::ProcessProbe) -> serde_json::Value {
    serde_json::to_value(p).unwrap_or_default()
}

/// Builds the client and worker, runs the load for the run's length while sampling, then
/// stops everything.
async fn soak(
    args: &Args,
    server: &RedisServer,
    jsonl: &mut std::fs::File,
) -> Result<Outcome, String> {
    let before_load = probe::probe()?;
    let (client, store, queue) = client(args, server)?;
    let fetches = Arc::new(AtomicU64::new(0));
    let handle = client.job(SoakJob {
        calls: Arc::clone(&fetches),
    });
    let worker = Worker::builder(&client)
        .options(WorkerOptions::default().concurrency(WORKER_CONCURRENCY))
        .build()
        .map_err(|e| e.to_string())?;
    let health = worker.health();
    let stop_worker = Arc::new(Notify::new());
    let worker = tokio::spawn({
        let stop = Arc::clone(&stop_worker);
        worker.run_until(async move { stop.notified().await })
    });

    let load = Load {
        counters: Arc::new(Counters::default()),
        fetches,
        health,
        store,
        queue,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let zipf = Arc::new(Zipf::new(args.keys, ZIPF_S));
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            tokio::spawn(operate(
                handle.clone(),
                Arc::clone(&zipf),
                Arc::clone(&load.counters),
                Arc::clone(&stop),
                0x50A4 + i as u64,
            ))
        })
        .collect();

    let samples = sample_until_the_end(args, &load, server, start, jsonl).await?;
    let seconds = start.elapsed().as_secs_f64();

    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.map_err(|e| format!("a load task failed: {e}"))?;
    }
    let totals = load.totals();
    stop_worker.notify_one();
    let worker = worker
        .await
        .map_err(|e| format!("the worker task failed: {e}"))?;
    let report = client.shutdown(Duration::from_secs(10)).await;
    drop(handle);
    drop(client);
    drop(load);
    let after_shutdown = probe::probe()?;
    Ok(Outcome {
        samples,
        totals,
        seconds,
        before_load,
        after_shutdown,
        worker: format!("{worker:?}"),
        drained: report.drained,
    })
}

/// The client of the soak (no in-process worker): a bounded memory store and a Redis queue.
fn client(
    args: &Args,
    server: &RedisServer,
) -> Result<(Cacheback, MemoryStore, RedisQueue), String> {
    let store = MemoryStore::builder().max_entries(args.max_entries).build();
    let queue = RedisQueue::builder(&server.url())
        .prefix(PREFIX)
        .build()
        .map_err(|e| e.to_string())?;
    let client = Cacheback::builder()
        .prefix(PREFIX)
        .store(store.clone())
        .queue(queue.clone())
        .in_process_worker(false)
        .build()
        .map_err(|e| e.to_string())?;
    Ok((client, store, queue))
}

/// Takes a sample every `--sample-seconds` until the run's length, printing each and writing
/// it to `soak.jsonl` as it is taken.
async fn sample_until_the_end(
    args: &Args,
    load: &Load,
    server: &RedisServer,
    start: Instant,
    jsonl: &mut std::fs::File,
) -> Result<Vec<Sample>, String> {
    let period = Duration::from_secs(args.sample_seconds);
    let length = Duration::from_secs_f64(args.minutes * 60.0);
    let mut samples = Vec::new();
    let mut previous = (Totals::default(), start);
    let mut next = start + period;
    while next <= start + length {
        tokio::time::sleep_until(next.into()).await;
        let sample = take_sample(load, server, start, &mut previous).await?;
        eprintln!("{}", sample_line(&sample));
        let mut line = serde_json::to_value(&sample).map_err(|e| e.to_string())?;
        line["type"] = json!("sample");
        writeln!(jsonl, "{line}").map_err(|e| format!("cannot write soak.jsonl: {e}"))?;
        samples.push(sample);
        next += period;
    }
    Ok(samples)
}

/// One operation task: back-to-back operations on Zipf-drawn keys until `stop`, yielding
/// after each (as a request handler returns to the runtime between requests).
async fn operate(
    handle: JobHandle<SoakJob>,
    zipf: Arc<Zipf>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut local = Totals::default();
    while !stop.load(Ordering::Relaxed) {
        let key = zipf.sample(&mut rng) as u64;
        let u = rng.f64();
        let failed = if u < SET_SHARE {
            local.sets += 1;
            handle.set(key, Value::new(key)).await.is_err()
        } else if u < SET_SHARE + INVALIDATE_SHARE {
            local.invalidates += 1;
            handle.invalidate(key).await.is_err()
        } else if u < SET_SHARE + INVALIDATE_SHARE + DELETE_SHARE {
            local.deletes += 1;
            handle.delete(key).await.is_err()
        } else {
            local.reads += 1;
            match handle.get_with_status(key).await.map(|read| read.value) {
                Ok(Some(_)) => false,
                Ok(None) => {
                    local.empty += 1;
                    false
                }
                Err(_) => true,
            }
        };
        if failed {
            local.errors += 1;
        }
        if local.ops() >= 256 {
            local.add_to(&counters);
            local = Totals::default();
        }
        tokio::task::yield_now().await;
    }
    local.add_to(&counters);
}

/// Samples the process, Redis and the counts since the previous sample.
async fn take_sample(
    load: &Load,
    server: &RedisServer,
    start: Instant,
    previous: &mut (Totals, Instant),
) -> Result<Sample, String> {
    let now = Instant::now();
    let totals = load.totals();
    let p = probe::probe()?;
    let store_entries = load.store.entry_count();
    // The sampling itself opens a connection for `INFO` (counted in `connected_clients`,
    // closed before the next process probe) and asks `XLEN` on the queue's own connection.
    let clients = server.query::<String>(&["INFO", "clients"]).ok();
    let memory = server.query::<String>(&["INFO", "memory"]).ok();
    let queue_backlog = load.queue.len(QUEUE).await.ok();
    let (before, then) = *previous;
    *previous = (totals, now);
    let seconds = now.duration_since(then).as_secs_f64().max(1e-9);
    let reads = totals.reads - before.reads;
    Ok(Sample {
        t_s: crate::stats::round3(now.duration_since(start).as_secs_f64()),
        process: p,
        redis_clients: clients
            .as_deref()
            .and_then(|i| info_field(i, "connected_clients")),
        redis_used_memory: memory.as_deref().and_then(|i| info_field(i, "used_memory")),
        queue_backlog,
        store_entries,
        reads,
        reads_per_sec: crate::stats::round3(reads as f64 / seconds),
        empty_reads: totals.empty - before.empty,
        sets: totals.sets - before.sets,
        invalidates: totals.invalidates - before.invalidates,
        deletes: totals.deletes - before.deletes,
        fetches: totals.fetches - before.fetches,
        refreshes: totals.refreshes - before.refreshes,
        errors: totals.errors - before.errors,
    })
}
