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
        let waited = waited_100ms(&hist);
        r.figure("reads_that_waited_100ms_or_more", waited);
        r.summary = format!(
            "fetches/event {} (min {}, max {}); enqueued/event {}; reader p50 {}, p99 {}, max {}; stale served to {stale_served}/{reads}; {waited}/{reads} waited ≥ 100 ms",
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

/// How many reads of `hist` took 100 ms or more (waited for a fetch).
fn waited_100ms(hist: &hdrhistogram::Histogram<u64>) -> u64 {
    hist.iter_recorded()
        .filter(|v| v.value_iterated_to() >= 100_000_000)
        .map(|v| v.count_at_value())
        .sum()
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

/// W2 on `RedisStore` + `RedisQueue` with an in-process worker, one process; the same on
/// `MemcachedStore` (the queue on Redis); both across processes, and on Redis with near caches.
#[cfg(feature = "redis")]
pub(crate) fn redis(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let url = ctx.redis()?.url();
    let trials = ctx.scale.pick(10, 3);
    let rt = runtime();
    let memcached = ctx.memcached().map(|m| m.url());
    let mut records = vec![rt.block_on(one_process(&url, None, trials))?];
    match &memcached {
        Ok(mc) => records.push(rt.block_on(one_process(&url, Some(mc), trials))?),
        Err(e) => records.push(crate::report::not_measured(
            "W2",
            "memcached, one process",
            e,
        )),
    }
    records.push(fleet::run(&url, trials, &ctx.brokers, false, None)?);
    if let Ok(mc) = &memcached {
        records.push(fleet::run(&url, trials, &ctx.brokers, false, Some(mc))?);
    }
    records.push(fleet::run(&url, trials, &ctx.brokers, true, None)?);
    Ok(records)
}

/// W2 in one process on `RedisStore` (or `MemcachedStore` at `memcached`) + `RedisQueue` with
/// an in-process worker.
#[cfg(feature = "redis")]
async fn one_process(url: &str, memcached: Option<&str>, trials: usize) -> Result<Record, String> {
    let fetcher = Fetcher::new(FETCH);
    let setup = ClientSetup::new(Policy::default().lifetime(W2_LIFETIME));
    let (prefix, variant) = match memcached {
        Some(_) => (
            format!("w2mc-{}", std::process::id()),
            "memcached, one process",
        ),
        None => (format!("w2-{}", std::process::id()), "Redis, one process"),
    };
    let (client, handle, queue) = match memcached {
        Some(mc) => {
            let store = cacheback::MemcachedStore::from_url(mc).map_err(|e| e.to_string())?;
            crate::value::queued_client(store, url, &prefix, &setup, Arc::clone(&fetcher))?
        }
        None => crate::value::redis_client(url, &prefix, &setup, Arc::clone(&fetcher))?,
    };
    let subject = Arc::new(Subject::Cacheback {
        handle,
        queue: queue.into(),
    });
    let mut r = burst(subject, &fetcher, trials, variant).await?;
    client.shutdown(Duration::from_secs(5)).await;
    if memcached.is_some() {
        r = r
            .param("store", "MemcachedStore")
            .param("queue", "RedisQueue")
            .param(
                "what_it_does",
                "JobHandle::get_with_status; MemcachedStore + RedisQueue + in-process worker",
            );
    }
    check(
        &mut r,
        trials,
        5_000.0,
        "reader p99 < 5 ms (Redis) while the 200 ms fetch runs",
    );
    Ok(r)
}

#[cfg(feature = "redis")]
mod amalgam;

/// W2 across processes with the store and queue on a 3-master Redis Cluster: 4 processes × 16
/// readers (the same as W2's run on one Redis, which runs just before) and 16 processes × 4
/// readers; fetches are counted on the run's one Redis.
#[cfg(feature = "redis")]
pub(crate) fn cluster(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let url = ctx.redis()?.url();
    let cluster_url = ctx.cluster()?.url();
    let trials = ctx.scale.pick(10, 3);
    let four = fleet::run_on_cluster(&url, &cluster_url, trials, 4)?;
    let sixteen = fleet::run_on_cluster(&url, &cluster_url, trials, 16)?;
    Ok(vec![four, sixteen])
}

#[cfg(feature = "redis")]
mod fleet;

#[cfg(feature = "redis")]
pub(crate) use amalgam::run as amalgam_fleet;

#[cfg(feature = "redis")]
pub(crate) use fleet::{Plan as FleetPlan, reader_main as reader, worker_main as worker};
