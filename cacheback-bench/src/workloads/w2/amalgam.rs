//! W2 across processes for amalgam-cache: 4 reader processes × 16 readers on one Redis (its L2,
//! backplane and distributed locker), no worker process (amalgam's readers run the refresh in
//! their own process). Two cases: processes already serving the key (each read it while fresh,
//! so its L1 holds a copy), and processes that never read it (only L2 has it).

use std::sync::Arc;
use std::time::Duration;

use cacheback::Job;
use serde_json::json;

use super::fleet::{
    self, CountingJob, PER_PROCESS, PERIOD, PRIME_BEFORE, PROCESSES, Plan, STARTUP,
    sleep_until_unix,
};
use crate::peers::amalgam::{self, AmalgamCache, KeyText};
use crate::peers::{W2_LIFETIME, amalgam::DESCRIBE_REDIS};
use crate::queues::QueueChoice;
use crate::report::Record;
use crate::value::{Value, unix_ms};
use crate::workloads::runtime;

/// When serving: each process reads the key this long before its burst, 800 ms after the
/// priming fetch started (about 100 ms after its 200 ms fetch landed): fresh, and short of
/// the eager-refresh window (half the 300 ms lifetime), so the read neither refreshes nor
/// misses.
const WARM_BEFORE: Duration = Duration::from_millis(700);

/// `key` through `cache`, fetched (and counted) by `job` on a miss or a refresh.
async fn read(
    cache: &AmalgamCache,
    job: &Arc<CountingJob>,
    key: u64,
) -> ::amalgam::Result<Arc<Value>> {
    let job = Arc::clone(job);
    amalgam::get_or_set(cache, key, move || async move { job.fetch(key).await }).await
}

/// An amalgam cache and the counting job of the fleet.
async fn subject(plan: &Plan) -> Result<(AmalgamCache, Arc<CountingJob>), String> {
    let cache = amalgam::redis(&plan.url, &plan.prefix, W2_LIFETIME).await?;
    let job = Arc::new(CountingJob {
        redis: redis::Client::open(plan.url.as_str()).map_err(|e| e.to_string())?,
        prefix: plan.prefix.clone(),
    });
    Ok((cache, job))
}

/// A reader process: at each trial's instant, 16 readers read that trial's key at once.
pub(super) async fn reader(plan: Plan) -> Result<(), String> {
    let (cache, job) = subject(&plan).await?;
    // Connect before the first burst (a read of a key no trial uses).
    cache
        .try_get(KeyText::new(u64::MAX))
        .await
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    for trial in 0..plan.trials {
        let key = trial as u64;
        let burst_at = plan.burst_at(trial);
        if plan.near {
            sleep_until_unix(burst_at - WARM_BEFORE.as_millis() as u64).await;
            read(&cache, &job, key).await.map_err(|e| e.to_string())?;
        }
        let late_ms = sleep_until_unix(burst_at).await;
        let barrier = Arc::new(tokio::sync::Barrier::new(PER_PROCESS));
        let readers: Vec<_> = (0..PER_PROCESS)
            .map(|_| {
                let (cache, job, barrier) = (cache.clone(), Arc::clone(&job), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let t = std::time::Instant::now();
                    let value = read(&cache, &job, key).await;
                    let took = t.elapsed().as_nanos() as u64;
                    // The value from before the burst: the one primed for this trial.
                    let stale = value.is_ok_and(|v| v.at_ms < burst_at);
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
        });
        fleet::print_report(report, 0);
    }
    // The refreshes amalgam completes in the background finish before the process exits.
    cache.shutdown().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs the trials across processes, the processes already serving the key (`serving`) or not.
pub(crate) fn run(url: &str, trials: usize, serving: bool) -> Result<Record, String> {
    let rt = runtime();
    let mut plan = Plan {
        url: url.to_owned(),
        prefix: format!("w2amalgam-{}-{serving}", std::process::id()),
        t0_ms: unix_ms() + STARTUP.as_millis() as u64,
        trials,
        queue: QueueChoice::Redis,
        queue_url: url.to_owned(),
        near: serving,
        memcached: None,
        amalgam: true,
        store_url: String::new(),
        processes: PROCESSES,
    };
    // Prime one key per trial (1 counted fetch each): long before its burst, or, for processes
    // serving it, 1 s before (in the background while the children run).
    let (cache, job) = rt.block_on(subject(&plan))?;
    let prime = |plan: Plan| {
        let (cache, job) = (cache.clone(), Arc::clone(&job));
        rt.spawn(async move {
            for key in 0..plan.trials {
                if plan.near {
                    let at = plan.burst_at(key) - PRIME_BEFORE.as_millis() as u64;
                    sleep_until_unix(at).await;
                }
                read(&cache, &job, key as u64)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        })
    };
    let reports = if serving {
        let priming = prime(plan.clone());
        let reports = fleet::run_children(&plan, false)?;
        rt.block_on(async { priming.await.map_err(|e| e.to_string())? })?;
        reports
    } else {
        rt.block_on(async { prime(plan.clone()).await.map_err(|e| e.to_string())? })?;
        plan.t0_ms = unix_ms() + STARTUP.as_millis() as u64;
        fleet::run_children(&plan, false)?
    };
    let (fetches, landed) = rt.block_on(async {
        let counted = count(&plan).await;
        cache.shutdown().await.map_err(|e| e.to_string())?;
        counted
    })?;
    record(&fetches, landed, &reports, &plan)
}

/// Fetches per event (each key's counter less its priming fetch), and how many trials' refreshes
/// reached L2 (read by a cache of its own, stale values allowed).
async fn count(plan: &Plan) -> Result<(Vec<f64>, usize), String> {
    let (cache, _job) = subject(plan).await?;
    let redis = redis::Client::open(plan.url.as_str()).map_err(|e| e.to_string())?;
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let mut fetches = Vec::new();
    let mut landed = 0;
    for key in 0..plan.trials as u64 {
        let n: Option<u64> = redis::cmd("GET")
            .arg(fleet::counter(&plan.prefix, key))
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        fetches.push(n.unwrap_or(0).saturating_sub(1) as f64);
        let stored = cache
            .try_get(KeyText::new(key))
            .options(|o| o.with_allow_stale_on_read_only(true))
            .await
            .map_err(|e| e.to_string())?;
        if stored.is_some_and(|v| v.at_ms >= plan.burst_at(key as usize)) {
            landed += 1;
        }
    }
    cache.shutdown().await.map_err(|e| e.to_string())?;
    Ok((fetches, landed))
}

/// The record of amalgam's trials across processes.
fn record(
    fetches: &[f64],
    landed: usize,
    reports: &[fleet::TrialReport],
    plan: &Plan,
) -> Result<Record, String> {
    let (tally, late_max) = fleet::tally(fetches, reports, false);
    let (variant, case) = if plan.near {
        (
            "Redis, 4 processes × 16 readers, processes already serving the key",
            "every process read the key through get_or_set 700 ms before the burst, while fresh (its L1 holds a copy)",
        )
    } else {
        (
            "Redis, 4 processes × 16 readers, processes that never read the key",
            "no process read the key before (only L2 holds it)",
        )
    };
    let setup = format!(
        "4 OS processes × 16 readers ({DESCRIBE_REDIS}) hit one expired key at the same Unix \
         millisecond; {case}; no worker process: the refresh runs in a reader's process; fetches \
         counted with Redis INCR"
    );
    let mut r = tally
        .record(variant, amalgam::NAME, &setup)?
        .param("processes", PROCESSES as u64)
        .param("period_ms", PERIOD.as_millis() as u64);
    r.figure("max_burst_start_skew_ms", late_max);
    r.figure("refreshes_landed_in_l2", landed as u64);
    r.summary = format!("{}; {landed}/{} refreshes landed", r.summary, plan.trials);
    Ok(r)
}
