//! The chaos run's job (a fetch with injected faults, logged outside Redis), the client every
//! process builds, and the two child processes: a web process (steady reads) and a worker
//! process (drains the Redis Streams queue).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cacheback::{
    Backoff, Cacheback, Job, JobHandle, Policy, RedisQueue, RedisStore, Status, Worker,
    WorkerOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::logs::LogFile;
use crate::queues::QueueChoice;
use cacheback::queue::Queue;

/// The job's name.
pub(super) const JOB_NAME: &str = "chaos";
/// How long a fetched value is Fresh.
pub(super) const LIFETIME: Duration = Duration::from_secs(2);
/// A hanging fetch is cut after this.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(1);
/// Claim TTL.
pub(super) const REFRESH_TIMEOUT: Duration = Duration::from_secs(4);
/// Backoff after a failed refresh: 0.5 s doubling to this.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// First backoff delay.
pub(super) const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// The queue's visibility timeout (above `FETCH_TIMEOUT`, as the queue's docs ask).
pub(super) const VISIBILITY: Duration = Duration::from_secs(2);
/// Share of fetches that fail inside the fault window.
pub(super) const FAIL_P: f64 = 0.30;
/// Share of fetches that hang inside the fault window.
pub(super) const HANG_P: f64 = 0.05;
/// A worker's refreshes at a time.
pub(super) const WORKER_CONCURRENCY: usize = 16;

/// Panics seen by this process's panic hook.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Now, in unix milliseconds.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The cached value: which key, when and by which process it was fetched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ChaosValue {
    /// The key it was fetched for (a reader checks it got its own key's value).
    pub(super) key: u64,
    /// When the fetch finished (unix ms).
    pub(super) fetched_at_ms: u64,
    /// The fetching process.
    pub(super) pid: u32,
}

/// The job: a 20–50 ms fetch that, inside the fault window, fails 30% of the time and hangs
/// 5% of the time. Every fetch is logged (start and end) to the process's own file.
#[derive(Debug)]
pub(super) struct ChaosJob {
    /// Faults are injected for fetches starting in `[faults_from_ms, faults_until_ms)`.
    faults_from_ms: u64,
    faults_until_ms: u64,
    log: Option<Arc<LogFile>>,
    next_id: AtomicU64,
}

impl ChaosJob {
    /// A job with faults in `[from, until)` (unix ms), logging to `log`.
    pub(super) fn new(faults: (u64, u64), log: Option<Arc<LogFile>>) -> Self {
        ChaosJob {
            faults_from_ms: faults.0,
            faults_until_ms: faults.1,
            log,
            next_id: AtomicU64::new(0),
        }
    }
}

/// The policy of the job (the same in every process).
pub(super) fn policy() -> Policy {
    Policy::default()
        .lifetime(LIFETIME)
        .stale_ttl(Duration::from_secs(3600))
        .fetch_timeout(FETCH_TIMEOUT)
        .refresh_timeout(REFRESH_TIMEOUT)
        .retry_backoff(Backoff::exponential(BACKOFF_INITIAL, BACKOFF_MAX))
}

/// Logs the end of a fetch; a fetch dropped before it ended (cut by `fetch_timeout`) is logged
/// as cancelled when the guard drops.
struct FetchGuard {
    log: Arc<LogFile>,
    id: u64,
    done: bool,
}

impl FetchGuard {
    fn finish(mut self, outcome: &str) {
        self.done = true;
        self.log
            .line(&format!("E {} {} {outcome}", self.id, now_ms()));
    }
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        if !self.done {
            self.log
                .line(&format!("E {} {} cancelled", self.id, now_ms()));
        }
    }
}

impl Job for ChaosJob {
    type Args = u64;
    type Value = ChaosValue;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        JOB_NAME
    }

    fn policy(&self) -> Policy {
        policy()
    }

    async fn fetch(&self, key: u64) -> Result<ChaosValue, std::io::Error> {
        let started = now_ms();
        let guard = self.log.as_ref().map(|log| {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            log.line(&format!("S {id} {key} {started}"));
            FetchGuard {
                log: Arc::clone(log),
                id,
                done: false,
            }
        });
        if (self.faults_from_ms..self.faults_until_ms).contains(&started) {
            let draw = fastrand::f64();
            if draw < FAIL_P {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(5..=20))).await;
                if let Some(guard) = guard {
                    guard.finish("err");
                }
                return Err(std::io::Error::other("chaos: injected fetch failure"));
            }
            if draw < FAIL_P + HANG_P {
                // Hangs until `fetch_timeout` drops it (the guard logs `cancelled`).
                std::future::pending::<()>().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(20..=50))).await;
        let value = ChaosValue {
            key,
            fetched_at_ms: now_ms(),
            pid: std::process::id(),
        };
        if let Some(guard) = guard {
            guard.finish("ok");
        }
        Ok(value)
    }
}

/// The client every process of the run builds: Redis store, the run's queue (Redis Streams by
/// default) with [`VISIBILITY`] as its redelivery delay, no in-process worker (web processes
/// only enqueue; worker processes run a `Worker`).
pub(super) fn client(url: &str, prefix: &str, queue: &QueueArgs) -> Result<Cacheback, String> {
    client_with(url, prefix, queue, false)
}

/// [`client`], with a near cache when `near`.
pub(super) fn client_with(
    url: &str,
    prefix: &str,
    queue: &QueueArgs,
    near: bool,
) -> Result<Cacheback, String> {
    let store = RedisStore::from_url(url).map_err(|e| format!("RedisStore: {e}"))?;
    let poll = Duration::from_millis(200);
    let queue_url = if queue.queue_url.is_empty() {
        url
    } else {
        &queue.queue_url
    };
    let e = |e: cacheback::Error| format!("{}: {e}", queue.queue.name());
    let queue: Arc<dyn Queue> = match queue.queue {
        QueueChoice::Redis => Arc::new(
            RedisQueue::builder(queue_url)
                .visibility_timeout(VISIBILITY)
                .poll_interval(poll)
                .build()
                .map_err(e)?,
        ),
        // RabbitMQ redelivers as soon as a consumer's connection closes.
        QueueChoice::Amqp => Arc::new(
            cacheback::AmqpQueue::builder(queue_url)
                .poll_interval(poll)
                .build()
                .map_err(e)?,
        ),
        QueueChoice::Nats => Arc::new(
            cacheback::NatsQueue::builder(queue_url)
                .ack_wait(VISIBILITY)
                .poll_interval(poll)
                .build()
                .map_err(e)?,
        ),
    };
    let mut builder = Cacheback::builder()
        .prefix(prefix)
        .store(store)
        .shared_queue(queue)
        .in_process_worker(false);
    if near {
        builder = builder.near_cache(cacheback::NearCache::new());
    }
    builder.build().map_err(|e| format!("client: {e}"))
}

/// The queue of a run: its kind and, for a broker, its URL.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct QueueArgs {
    /// The queue behind the refreshes.
    #[arg(long, value_enum, default_value_t)]
    pub(super) queue: QueueChoice,
    /// The queue's URL; empty: the run's Redis.
    #[arg(long, default_value = "")]
    pub(super) queue_url: String,
}

/// The arguments of a child process (the driver passes all of them).
#[derive(Debug, clap::Args)]
pub(crate) struct ChildArgs {
    #[command(flatten)]
    queue: QueueArgs,
    /// The process's name in the run (`web-1`, `worker-3`, ...).
    #[arg(long)]
    name: String,
    /// The run's Redis.
    #[arg(long)]
    url: String,
    /// The run's key prefix.
    #[arg(long)]
    prefix: String,
    /// Keys `0..keys` are read.
    #[arg(long)]
    keys: u64,
    /// Reader tasks (web).
    #[arg(long, default_value_t = 8)]
    readers: usize,
    /// Pause between two reads of one reader, in ms (web).
    #[arg(long, default_value_t = 1)]
    read_pause_ms: u64,
    /// Reads start at this unix ms; faults start then too (web, worker).
    #[arg(long)]
    start_ms: u64,
    /// Faults stop at this unix ms.
    #[arg(long)]
    faults_until_ms: u64,
    /// The process stops at this unix ms.
    #[arg(long)]
    until_ms: u64,
    /// The process's fetch/read log.
    #[arg(long)]
    log: PathBuf,
    /// Reads go through a near cache (web).
    #[arg(long)]
    near_cache: bool,
}

/// Writes one line to stdout (the driver reads it). The driver being gone is the signal to
/// stop: a child never outlives it by more than one line.
pub(super) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
}

/// Which chaos child a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Web,
    Worker,
}

/// Runs a chaos child: `chaos-web` or `chaos-worker`.
pub(super) fn run(role: Role, args: ChildArgs) -> Result<(), String> {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        eprintln!("PANIC in a chaos child (pid {}):", std::process::id());
        default_hook(info);
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let short = match role {
        Role::Web => "web",
        Role::Worker => "worker",
    };
    let log = Arc::new(LogFile::create(&args.log, &args.name, short)?);
    match role {
        Role::Web => runtime.block_on(web(args, log)),
        Role::Worker => runtime.block_on(worker(args, log)),
    }
}

/// How long until the unix ms `at`.
fn until(at: u64) -> Duration {
    Duration::from_millis(at.saturating_sub(now_ms()))
}

/// What one reader task saw.
#[derive(Debug, Default)]
struct ReaderStats {
    reads: u64,
    served: u64,
    failed: u64,
    timed_out: u64,
    wrong_key: u64,
    by_status: [u64; 5],
    stale_served: u64,
    staleness_sum_ms: u64,
    staleness_max_ms: u64,
    staleness: Vec<u64>,
}

impl ReaderStats {
    fn merge(&mut self, o: ReaderStats) {
        self.reads += o.reads;
        self.served += o.served;
        self.failed += o.failed;
        self.timed_out += o.timed_out;
        self.wrong_key += o.wrong_key;
        for (a, b) in self.by_status.iter_mut().zip(o.by_status) {
            *a += b;
        }
        self.stale_served += o.stale_served;
        self.staleness_sum_ms += o.staleness_sum_ms;
        self.staleness_max_ms = self.staleness_max_ms.max(o.staleness_max_ms);
        self.staleness.extend(o.staleness);
    }
}

fn status_index(status: Status) -> usize {
    match status {
        Status::Hit => 0,
        Status::Stale => 1,
        Status::StaleRefetched => 2,
        Status::Miss => 3,
        _ => 4, // MissFetched (and any later status)
    }
}

/// One reader: random keys in a steady loop until `until_ms`.
async fn reader(
    job: JobHandle<ChaosJob>,
    log: Arc<LogFile>,
    keys: u64,
    pause: Duration,
    until_ms: u64,
) -> ReaderStats {
    let mut s = ReaderStats::default();
    let lifetime_ms = u64::try_from(LIFETIME.as_millis()).unwrap_or(u64::MAX);
    while now_ms() < until_ms {
        let key = fastrand::u64(0..keys);
        let start = now_ms();
        // Every read is bounded by the library (store and fetch timeouts); this bound only
        // makes a bug visible instead of a hang.
        let read = tokio::time::timeout(Duration::from_secs(10), job.get_with_status(key)).await;
        let end = now_ms();
        s.reads += 1;
        match read {
            Ok(Ok(lookup)) => match &lookup.value {
                Some(value) => {
                    s.served += 1;
                    s.by_status[status_index(lookup.status)] += 1;
                    if value.key != key {
                        s.wrong_key += 1;
                    }
                    match lookup.status {
                        Status::Stale => {
                            let age = lookup
                                .age
                                .map_or(0, |a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX));
                            let stale = age.saturating_sub(lifetime_ms);
                            s.stale_served += 1;
                            s.staleness_sum_ms += stale;
                            s.staleness_max_ms = s.staleness_max_ms.max(stale);
                            s.staleness.push(stale);
                        }
                        Status::MissFetched => log.line(&format!("M {start} {end} {key}")),
                        _ => {}
                    }
                }
                None => {
                    s.failed += 1;
                    s.by_status[status_index(lookup.status)] += 1;
                    log.line(&format!(
                        "R {start} {end} {key} no value (status {})",
                        lookup.status
                    ));
                }
            },
            Ok(Err(error)) => {
                s.failed += 1;
                let reason = error.to_string().replace('\n', " ");
                log.line(&format!("R {start} {end} {key} {reason}"));
            }
            Err(_) => {
                s.failed += 1;
                s.timed_out += 1;
                log.line(&format!(
                    "R {start} {end} {key} read did not finish within 10 s"
                ));
            }
        }
        if pause.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(pause).await;
        }
    }
    s
}

/// A web process: `readers` reader tasks until `until_ms`, then one `SUMMARY` line.
async fn web(args: ChildArgs, log: Arc<LogFile>) -> Result<(), String> {
    let cache = client_with(&args.url, &args.prefix, &args.queue, args.near_cache)?;
    let job = cache.job(ChaosJob::new(
        (args.start_ms, args.faults_until_ms),
        Some(Arc::clone(&log)),
    ));
    // Connect before the start (a read of a key nobody uses).
    job.peek(u64::MAX)
        .await
        .map_err(|e| format!("first contact with Redis: {e}"))?;
    say("READY");
    tokio::time::sleep(until(args.start_ms)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.readers {
        tasks.spawn(reader(
            job.clone(),
            Arc::clone(&log),
            args.keys,
            Duration::from_millis(args.read_pause_ms),
            args.until_ms,
        ));
    }
    let mut stats = ReaderStats::default();
    let mut reader_panics = 0;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(s) => stats.merge(s),
            Err(_) => reader_panics += 1,
        }
    }
    let shutdown = cache.shutdown(Duration::from_secs(3)).await;
    stats.staleness.sort_unstable();
    let p99 = percentile(&stats.staleness, 0.99);
    let [hit, stale, stale_refetched, miss, miss_fetched] = stats.by_status;
    let summary = json!({
        "name": args.name,
        "role": "web",
        "pid": std::process::id(),
        "reads": stats.reads,
        "served": stats.served,
        "failed": stats.failed,
        "timed_out": stats.timed_out,
        "wrong_key": stats.wrong_key,
        "hit": hit,
        "stale": stale,
        "stale_refetched": stale_refetched,
        "miss": miss,
        "miss_fetched": miss_fetched,
        "stale_served": stats.stale_served,
        "staleness_sum_ms": stats.staleness_sum_ms,
        "staleness_max_ms": stats.staleness_max_ms,
        "staleness_p99_ms": p99,
        "reader_panics": reader_panics,
        "panics": PANICS.load(Ordering::Relaxed),
        "drained": shutdown.drained,
    });
    say(&format!("SUMMARY {summary}"));
    Ok(())
}

/// The `q` quantile of sorted values (0 when empty).
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A worker process: drains the queue until `until_ms` with a heartbeat (`HB <in_flight>
/// <processed> <last queue poll ms> <now ms>`) every 20 ms, so the driver can kill it while a
/// refresh runs (the driver keeps the heartbeats in `logs/<name>.hb`).
async fn worker(args: ChildArgs, log: Arc<LogFile>) -> Result<(), String> {
    let cache = client(&args.url, &args.prefix, &args.queue)?;
    let job = cache.job(ChaosJob::new(
        (args.start_ms, args.faults_until_ms),
        Some(log),
    ));
    job.peek(u64::MAX)
        .await
        .map_err(|e| format!("first contact with Redis: {e}"))?;
    let worker = Worker::builder(&cache)
        .options(
            WorkerOptions::default()
                .concurrency(WORKER_CONCURRENCY)
                .drain_timeout(Duration::from_secs(2)),
        )
        .build()
        .map_err(|e| format!("worker: {e}"))?;
    let health = worker.health();
    say("READY");
    let beat = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(20));
        loop {
            every.tick().await;
            say(&format!(
                "HB {} {} {} {}",
                health.in_flight(),
                health.processed(),
                health.last_poll().map_or(0, |t| t.as_millis()),
                now_ms()
            ));
        }
    });
    let report = worker
        .run_until(tokio::time::sleep(until(args.until_ms)))
        .await;
    beat.abort();
    let summary = json!({
        "name": args.name,
        "role": "worker",
        "pid": std::process::id(),
        "processed": report.processed,
        "dead_lettered": report.dead_lettered,
        "abandoned": report.abandoned,
        "panics": PANICS.load(Ordering::Relaxed),
    });
    say(&format!("SUMMARY {summary}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_rank() {
        assert_eq!(percentile(&[], 0.99), 0);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[7], 0.5), 7);
    }

    #[test]
    fn the_policy_is_valid_and_cuts_hangs_before_redelivery() {
        assert!(policy().validate().is_ok());
        assert!(VISIBILITY > FETCH_TIMEOUT);
    }
}
