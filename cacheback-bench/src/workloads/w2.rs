//! W2, the stale burst: one key turns stale and 64 readers hit it at the same instant (a
//! barrier); the fetch sleeps 200 ms and counts its calls. 10 trials, a fresh key each.
//!
//! Each trial: fill the key (a miss), wait past its lifetime, release the 64 readers, time each
//! reader's read (from its own call, not from the barrier), then wait for the refresh to land
//! and count the fetches and refresh requests it took.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cacheback::Policy;
use serde_json::json;

use crate::peers::{Subject, W2_LIFETIME};
use crate::report::{self, Record};
use crate::stats::{self, Spread};
use crate::value::{ClientSetup, Fetcher, memory_client};
use crate::workloads::{Ctx, runtime};

/// Readers per burst.
pub(crate) const READERS: usize = 64;
/// How long the fetch sleeps.
pub(crate) const FETCH: Duration = Duration::from_millis(200);

/// W2 on the memory store, one process.
pub(crate) fn memory(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let trials = ctx.scale.pick(10, 3);
    let rt = runtime();
    rt.block_on(async {
        let fetcher = Fetcher::new(FETCH);
        let (handle, queue) = memory_client(
            &ClientSetup::new(Policy::default().lifetime(W2_LIFETIME)),
            Arc::clone(&fetcher),
            None,
        );
        let subject = Arc::new(Subject::Cacheback {
            handle,
            queue: queue.into(),
        });
        let mut r = burst(subject, &fetcher, trials, "memory, one process").await?;
        check(
            &mut r,
            trials,
            50.0,
            "reader p99 < 50 µs (memory) while the 200 ms fetch runs",
        );
        Ok(vec![r])
    })
}

/// Runs the W2 trials against `subject`, whose fetches go through `fetcher`.
pub(crate) async fn burst(
    subject: Arc<Subject>,
    fetcher: &Fetcher,
    trials: usize,
    variant: &str,
) -> Result<Record, String> {
    let mut tally = Tally::default();
    for trial in 0..trials {
        let key = 1_000 + trial as u64;
        let old = subject
            .read(key)
            .await
            .value
            .ok_or("the first read of a key returned no value")?;
        tokio::time::sleep(W2_LIFETIME + Duration::from_millis(50)).await;

        let calls_before = fetcher.calls();
        let enqueued_before = subject.enqueued();
        let barrier = Arc::new(tokio::sync::Barrier::new(READERS));
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let (subject, barrier) = (Arc::clone(&subject), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let t = Instant::now();
                    let read = subject.read(key).await;
                    (t.elapsed(), read)
                })
            })
            .collect();
        let mut trial_hist = stats::latency_histogram();
        let mut stale_served = 0;
        for reader in readers {
            let (took, read) = reader.await.map_err(|e| e.to_string())?;
            stats::record(&mut trial_hist, took);
            if read
                .value
                .is_some_and(|v| Arc::ptr_eq(&v, &old) || *v == *old)
            {
                stale_served += 1;
            }
        }

        // Wait for the refresh to land (a read that returns a newer value), then a little more
        // so that any extra fetch still starting is counted.
        tokio::time::sleep(FETCH).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = subject.read(key).await.value;
            if now.is_some_and(|v| v.at_ms != old.at_ms) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("trial {trial}: the refresh never landed"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let enqueued = match (enqueued_before, subject.enqueued()) {
            (Some(before), Some(after)) => Some((after - before) as f64),
            _ => None,
        };
        tally.trial(
            &trial_hist,
            stale_served,
            (fetcher.calls() - calls_before) as f64,
            enqueued,
        );
    }
    tally.record(variant, subject.name(), subject.describe())
}

/// What the trials of one W2 variant measured, trial by trial.
#[derive(Debug, Default)]
struct Tally {
    latencies: Option<hdrhistogram::Histogram<u64>>,
    fetches: Vec<f64>,
    enqueued: Vec<f64>,
    reader_p50: Vec<f64>,
    reader_max: Vec<f64>,
    stale_served: u64,
    reads: u64,
}

impl Tally {
    /// One trial: its readers' latencies, how many of them got the stale value, its fetches,
    /// and its enqueued refreshes (when the subject has a queue).
    fn trial(
        &mut self,
        readers: &hdrhistogram::Histogram<u64>,
        stale_served: usize,
        fetches: f64,
        enqueued: Option<f64>,
    ) {
        let hist = self.latencies.get_or_insert_with(stats::latency_histogram);
        stats::merge(hist, readers);
        self.reader_p50
            .push(stats::ns_to_us(readers.value_at_quantile(0.5)));
        self.reader_max.push(stats::ns_to_us(readers.max()));
        self.reads += readers.len();
        self.stale_served += stale_served as u64;
        self.fetches.push(fetches);
        self.enqueued.extend(enqueued);
    }

    /// The record of the trials.
    fn record(self, variant: &str, subject: &str, what_it_does: &str) -> Result<Record, String> {
        let hist = self.latencies.ok_or("no trials")?;
        let fetch_spread = Spread::of(&self.fetches).ok_or("no trials")?;
        let (stale_served, reads) = (self.stale_served, self.reads);
        let mut r = Record::new("W2", variant, subject)
            .param("readers", READERS as u64)
            .param("trials", self.fetches.len() as u64)
            .param("fetch_ms", FETCH.as_millis() as u64)
            .param("lifetime_ms", W2_LIFETIME.as_millis() as u64)
            .param("what_it_does", what_it_does);
        r.figure("fetches_per_event", fetch_spread.json());
        r.figure("fetches_per_trial", json!(self.fetches));
        r.figure("refreshes_enqueued_per_trial", json!(self.enqueued));
        let enqueued = Spread::of(&self.enqueued);
        match &enqueued {
            Some(s) => r.figure("refreshes_enqueued_per_event", s.json()),
            None => r.figure("refreshes_enqueued_per_event", "n/a (no queue)"),
        }
        r.figure("reader_latency", stats::latency_figures(&hist));
        r.figure(
            "reader_p50_us_per_trial",
            Spread::of(&self.reader_p50).map(Spread::json),
        );
        r.figure(
            "reader_max_us_per_trial",
            Spread::of(&self.reader_max).map(Spread::json),
        );
        r.figure("reads_served_the_stale_value", stale_served);
        r.figure("reads", reads);
        r.figure("every_reader_got_the_stale_value", stale_served == reads);
        r.summary = format!(
            "fetches/event {} (min {}, max {}); enqueued/event {}; reader p50 {}, p99 {}, max {}; stale served to {stale_served}/{reads}",
            fetch_spread.median,
            fetch_spread.min,
            fetch_spread.max,
            enqueued.map_or("n/a".to_owned(), |s| format!(
                "{} ({}–{})",
                s.median, s.min, s.max
            )),
            report::micros(stats::ns_to_us(hist.value_at_quantile(0.5))),
            report::micros(stats::ns_to_us(hist.value_at_quantile(0.99))),
            report::micros(stats::ns_to_us(hist.max())),
        );
        r.latencies = Some(hist);
        Ok(r)
    }
}

/// The checks of every W2 variant: one fetch per event in every trial, reader p99 under
/// `p99_target_us` while the fetch runs.
fn check(r: &mut Record, trials: usize, p99_target_us: f64, target: &str) {
    let fetch_max = r.number("fetches_per_event/max").unwrap_or(f64::NAN);
    let fetch_min = r.number("fetches_per_event/min").unwrap_or(f64::NAN);
    let p99 = r.number("reader_latency/p99_us").unwrap_or(f64::NAN);
    r.check(
        "exactly 1 fetch per stale event in every trial",
        format!("min {fetch_min}, max {fetch_max} over {trials} trials"),
        fetch_min == 1.0 && fetch_max == 1.0,
    );
    r.check(target, report::micros(p99), p99 < p99_target_us);
}

/// W2 on `RedisStore` + `RedisQueue` with an in-process worker, one process.
#[cfg(feature = "redis")]
pub(crate) fn redis(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let url = ctx.redis()?.url();
    let trials = ctx.scale.pick(10, 3);
    let rt = runtime();
    let one = rt.block_on(async {
        let fetcher = Fetcher::new(FETCH);
        let prefix = format!("w2-{}", std::process::id());
        let (client, handle, queue) = crate::value::redis_client(
            &url,
            &prefix,
            &ClientSetup::new(Policy::default().lifetime(W2_LIFETIME)),
            Arc::clone(&fetcher),
        )?;
        let subject = Arc::new(Subject::Cacheback {
            handle,
            queue: queue.into(),
        });
        let mut r = burst(subject, &fetcher, trials, "Redis, one process").await?;
        client.shutdown(Duration::from_secs(5)).await;
        check(
            &mut r,
            trials,
            5_000.0,
            "reader p99 < 5 ms (Redis) while the 200 ms fetch runs",
        );
        Ok::<_, String>(r)
    })?;
    let fleet = fleet::run(&url, trials)?;
    Ok(vec![one, fleet])
}

/// W2 across processes: 4 reader processes × 16 readers and a separate worker process, all on
/// one `redis-server`; fetches count themselves with a Redis `INCR`.
#[cfg(feature = "redis")]
mod fleet {
    use std::io::Read as _;
    use std::process::Child;
    use std::sync::Arc;
    use std::time::Duration;

    use cacheback::{Cacheback, Job, JobHandle, Policy, RedisQueue, RedisStore, Worker};
    use serde::Deserialize;
    use serde_json::json;

    use super::{FETCH, READERS};
    use crate::peers::W2_LIFETIME;
    use crate::report::Record;
    use crate::stats;
    use crate::value::unix_ms;
    use crate::workloads::runtime;

    const PROCESSES: usize = 4;
    const PER_PROCESS: usize = READERS / PROCESSES;
    /// Time between two trials' bursts (the 200 ms fetch lands well within it).
    const PERIOD: Duration = Duration::from_millis(1_000);
    /// Time for the children to start before the first burst.
    const STARTUP: Duration = Duration::from_millis(3_000);

    /// Fetches count themselves in Redis (`INCR`), then sleep [`FETCH`].
    #[derive(Debug)]
    struct CountingJob {
        redis: redis::Client,
        prefix: String,
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

    fn counter(prefix: &str, key: u64) -> String {
        format!("{prefix}:fetches:{key}")
    }

    /// What every process of the fleet agrees on, passed as arguments
    /// (`URL PREFIX T0_MS TRIALS`).
    #[derive(Debug, Clone, clap::Args)]
    pub(crate) struct Plan {
        /// The run's Redis.
        url: String,
        /// The run's key prefix.
        prefix: String,
        /// Unix ms of the first burst.
        t0_ms: u64,
        /// Trials (one key and one burst each).
        trials: usize,
    }

    impl Plan {
        fn args(&self) -> Vec<String> {
            vec![
                self.url.clone(),
                self.prefix.clone(),
                self.t0_ms.to_string(),
                self.trials.to_string(),
            ]
        }

        /// Unix ms of trial `i`'s burst.
        fn burst_at(&self, i: usize) -> u64 {
            self.t0_ms + i as u64 * PERIOD.as_millis() as u64
        }

        /// A client of the fleet (no in-process worker), its job handle and its queue.
        fn client(&self) -> Result<(Cacheback, JobHandle<CountingJob>, RedisQueue), String> {
            let queue = RedisQueue::builder(&self.url)
                .prefix(&self.prefix)
                .build()
                .map_err(|e| e.to_string())?;
            let client = Cacheback::builder()
                .prefix(&self.prefix)
                .store(RedisStore::from_url(&self.url).map_err(|e| e.to_string())?)
                .queue(queue.clone())
                .in_process_worker(false)
                .build()
                .map_err(|e| e.to_string())?;
            let handle = client.job(CountingJob {
                redis: redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?,
                prefix: self.prefix.clone(),
            });
            Ok((client, handle, queue))
        }
    }

    /// What a reader process reports for one trial (one JSON line on stdout).
    #[derive(Debug, Deserialize)]
    struct TrialReport {
        trial: usize,
        latencies_ns: Vec<u64>,
        stale: usize,
        enqueued: u64,
        late_ms: u64,
    }

    /// Sleeps until the Unix time `at_ms`; how late it woke.
    async fn sleep_until_unix(at_ms: u64) -> u64 {
        let now = unix_ms();
        if at_ms > now {
            tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
        }
        unix_ms().saturating_sub(at_ms)
    }

    /// A reader process: at each trial's instant, 16 readers read that trial's key at once.
    async fn reader(plan: Plan) -> Result<(), String> {
        let (_client, handle, queue) = plan.client()?;
        // Connect before the first burst, so no burst pays for the connection.
        handle
            .peek(u64::MAX)
            .await
            .map_err(|e| format!("cannot reach Redis: {e}"))?;
        for trial in 0..plan.trials {
            let late_ms = sleep_until_unix(plan.burst_at(trial)).await;
            let enqueued_before = queue.enqueued();
            let barrier = Arc::new(tokio::sync::Barrier::new(PER_PROCESS));
            let readers: Vec<_> = (0..PER_PROCESS)
                .map(|_| {
                    let (handle, barrier) = (handle.clone(), Arc::clone(&barrier));
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let t = std::time::Instant::now();
                        let lookup = handle.get_with_status(trial as u64).await;
                        let took = t.elapsed().as_nanos() as u64;
                        let stale = lookup.is_ok_and(|l| {
                            l.value.is_some() && l.status == cacheback::Status::Stale
                        });
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
            let report = json!({
                "trial": trial,
                "late_ms": late_ms,
                "latencies_ns": latencies,
                "stale": stale,
                "enqueued": queue.enqueued() - enqueued_before,
            });
            println!("{report}");
        }
        Ok(())
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

    /// Runs the trials across processes.
    pub(super) fn run(url: &str, trials: usize) -> Result<Record, String> {
        let rt = runtime();
        let prefix = format!("w2fleet-{}", std::process::id());
        let mut plan = Plan {
            url: url.to_owned(),
            prefix,
            t0_ms: 0,
            trials,
        };
        // Prime one key per trial (1 fetch each, counted), long before its burst.
        let (client, handle, _queue) = rt.block_on(async { plan.client() })?;
        rt.block_on(async {
            for key in 0..trials as u64 {
                handle.refresh(key).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        })?;
        plan.t0_ms = unix_ms() + STARTUP.as_millis() as u64;
        let mut children = Children(Vec::new());
        children
            .0
            .push(crate::fleet::spawn("w2-worker", &plan.args())?);
        for _ in 0..PROCESSES {
            children
                .0
                .push(crate::fleet::spawn("w2-reader", &plan.args())?);
        }
        // Every child exits on its own after the last trial; give them a bound.
        let deadline = std::time::Instant::now()
            + STARTUP
            + PERIOD * (trials as u32 + 2)
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
        if reports.len() != PROCESSES * trials {
            return Err(format!(
                "{} trial reports from the reader processes, expected {}",
                reports.len(),
                PROCESSES * trials
            ));
        }
        // Fetches per event: each key's counter, less its priming fetch.
        let mut fetches = Vec::new();
        rt.block_on(async {
            let redis = redis::Client::open(url).map_err(|e| e.to_string())?;
            let mut conn = redis
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            for key in 0..trials as u64 {
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
            client.shutdown(Duration::from_secs(5)).await;
            Ok::<_, String>(())
        })?;

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
            tally.trial(&trial_hist, stale, trial_fetches, Some(enqueued as f64));
        }
        let mut r = tally
            .record(
                "Redis, 4 processes × 16 readers + a worker process",
                "cacheback",
                "4 OS processes × 16 readers (JobHandle::get_with_status, RedisStore + RedisQueue, no worker) hit one stale key at the same Unix millisecond; a separate worker process refreshes; fetches counted with Redis INCR",
            )?
            .param("processes", PROCESSES as u64);
        r.figure("max_burst_start_skew_ms", late_max);
        super::check(
            &mut r,
            trials,
            5_000.0,
            "reader p99 < 5 ms (Redis) while the 200 ms fetch runs",
        );
        Ok(r)
    }
}

#[cfg(feature = "redis")]
pub(crate) use fleet::{Plan as FleetPlan, reader_main as reader, worker_main as worker};
