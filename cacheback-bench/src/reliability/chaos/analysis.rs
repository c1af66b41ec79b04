//! The chaos run's analysis: what the driver saw (the plan, the kill, the restart, each key's
//! refresh) and what the processes logged and summed up, turned into figures. The verdicts and
//! the report are `report.rs`'s.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value as Json, json};

use super::Args;
use super::child::{LIFETIME, REFRESH_TIMEOUT, VISIBILITY};
use super::fleet::Fleet;
use super::logs::{self, EventStats, Outcome, ProcessLog};

/// A read that ends within this long after Redis answered again is counted apart
/// ("reconnecting", while the connections re-establish); none may fail.
pub(super) const RECONNECT_GRACE_MS: u64 = 1_000;

/// Whole milliseconds of `d`.
pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The run's fixed facts, for the analysis.
#[derive(Debug)]
pub(super) struct Plan<'a> {
    pub(super) args: &'a Args,
    pub(super) start_ms: u64,
    pub(super) faults_until: u64,
    pub(super) check_at: u64,
    pub(super) recovery_ms: u64,
    pub(super) ready_at: u64,
    pub(super) forced_kill: bool,
    pub(super) replacement: bool,
}

impl Plan<'_> {
    /// Seconds from the start of the fault window to `at` (unix ms).
    pub(super) fn t(&self, at: u64) -> f64 {
        (at - self.start_ms) as f64 / 1e3
    }
}

/// The kill of a worker mid-refresh.
#[derive(Debug, Clone, Copy)]
pub(super) struct Kill {
    pub(super) idx: usize,
    pub(super) at: u64,
    pub(super) in_flight: usize,
}

/// The Redis restart.
#[derive(Debug, Clone, Copy)]
pub(super) struct Restart {
    pub(super) down_at: u64,
    pub(super) exited_at: u64,
    pub(super) up_at: u64,
    /// `DBSIZE` before the stop and after the start (the data must survive).
    pub(super) keys_before: Option<u64>,
    pub(super) keys_after: Option<u64>,
}

/// What the driver saw of each key after the fault window.
#[derive(Debug, Default)]
pub(super) struct KeyWatch {
    /// Key -> `fetched_at` of its first value fetched after the faults stopped.
    pub(super) refreshed: BTreeMap<u64, u64>,
    /// Key -> `fresh_until` of the value it held when first looked at after the faults.
    pub(super) fresh_until_at_end: BTreeMap<u64, u64>,
    /// Peeks that failed or found no entry.
    pub(super) peek_errors: u64,
    pub(super) missing: u64,
}

/// Reads (or fetches) counted by when they ended: Redis up, Redis down, reconnecting.
#[derive(Debug, Clone, Copy)]
pub(super) struct Phases {
    pub(super) up: usize,
    pub(super) outage: usize,
    pub(super) reconnect: usize,
}

impl Phases {
    fn count<'a>(
        reads: impl IntoIterator<Item = &'a logs::ReadSpan>,
        outage: Option<(u64, u64)>,
    ) -> Self {
        let (up, outage, reconnect) = logs::count_phases(reads, outage, RECONNECT_GRACE_MS);
        Phases {
            up,
            outage,
            reconnect,
        }
    }
}

/// The web processes' reads.
#[derive(Debug)]
pub(super) struct Reads {
    pub(super) total: u64,
    pub(super) served: u64,
    /// Failed reads as the summaries count them.
    pub(super) failed: u64,
    /// Failed reads as the logs hold them, by phase.
    pub(super) failed_by_phase: Phases,
    pub(super) fallback_by_phase: Phases,
    pub(super) panics: u64,
    pub(super) wrong_key: u64,
    pub(super) stale_served: u64,
    pub(super) staleness_mean: f64,
    pub(super) staleness_max: u64,
    pub(super) staleness_p99: u64,
}

impl Reads {
    /// Failed reads in the logs (every phase).
    pub(super) fn failed_logged(&self) -> usize {
        let p = self.failed_by_phase;
        p.up + p.outage + p.reconnect
    }
}

/// The fetches, of the workers and (as fallbacks) of the web processes.
#[derive(Debug)]
pub(super) struct Fetches {
    pub(super) events: EventStats,
    pub(super) worker_ok: usize,
    pub(super) worker_err: usize,
    pub(super) worker_cut: usize,
    pub(super) in_window: usize,
    pub(super) window_err: usize,
    pub(super) window_hang: usize,
    pub(super) refetches: usize,
    pub(super) refetches_outside_outage: usize,
    pub(super) web: usize,
    pub(super) web_by_phase: Phases,
}

impl Fetches {
    /// The share of the fault window's worker fetches that failed.
    pub(super) fn window_err_share(&self) -> f64 {
        share(self.window_err, self.in_window)
    }

    /// The share of the fault window's worker fetches that hung (cut by `fetch_timeout`).
    pub(super) fn window_hang_share(&self) -> f64 {
        share(self.window_hang, self.in_window)
    }
}

fn share(n: usize, of: usize) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}

/// The killed worker's cut fetches and their redelivery, as JSON and as a sentence.
#[derive(Debug)]
pub(super) struct KillOutcome {
    pub(super) json: Json,
    pub(super) text: String,
}

/// How each key was refreshed after the faults stopped.
#[derive(Debug)]
pub(super) struct Recovery {
    pub(super) max_delay: u64,
    /// Keys refreshed later than `bound` after they needed it.
    pub(super) late: usize,
    pub(super) bound: u64,
    pub(super) all_refreshed_at: Option<u64>,
}

/// Everything the report is made of.
#[derive(Debug)]
pub(super) struct Analysis {
    /// The web processes' summaries.
    pub(super) web: Vec<Json>,
    pub(super) reads: Reads,
    pub(super) fetches: Fetches,
    pub(super) kill: KillOutcome,
    /// Workers alive at the restart: how long after Redis answered again each processed its
    /// first refresh.
    pub(super) resumed: Vec<(String, Option<u64>)>,
    pub(super) recovery: Recovery,
    pub(super) dead_letters: u64,
}

impl Analysis {
    /// The sum of `field` over the web processes' summaries.
    pub(super) fn web_sum(&self, field: &str) -> u64 {
        let web: Vec<&Json> = self.web.iter().collect();
        sum(&web, field)
    }
}

fn sum(summaries: &[&Json], field: &str) -> u64 {
    summaries
        .iter()
        .map(|s| s[field].as_u64().unwrap_or(0))
        .sum()
}

fn max(summaries: &[&Json], field: &str) -> u64 {
    summaries
        .iter()
        .map(|s| s[field].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0)
}

/// Reads the processes' logs and sums up the run.
pub(super) fn analyse(
    plan: &Plan<'_>,
    fleet: &Fleet,
    kill: Option<Kill>,
    restart: Option<Restart>,
    watch: &KeyWatch,
) -> Result<Analysis, String> {
    let mut logs_by_idx = Vec::new();
    for proc in &fleet.procs {
        let text = std::fs::read_to_string(&proc.log)
            .map_err(|e| format!("cannot read {}: {e}", proc.log.display()))?;
        let log = logs::parse(&text).map_err(|e| format!("{}: {e}", proc.log.display()))?;
        logs_by_idx.push(log);
    }
    let summaries = |role: &str| -> Vec<&Json> {
        fleet
            .procs
            .iter()
            .filter(|p| p.role == role)
            .filter_map(|p| p.summary.as_ref())
            .collect()
    };
    let (web, workers) = (summaries("web"), summaries("worker"));
    let outage = restart.map(|r| (r.down_at, r.up_at));
    let web_logs: Vec<&ProcessLog> = logs_by_idx.iter().filter(|l| l.role == "web").collect();
    let worker_logs: Vec<&ProcessLog> = logs_by_idx.iter().filter(|l| l.role == "worker").collect();
    Ok(Analysis {
        reads: reads(&web, &workers, &web_logs, outage),
        fetches: fetches(plan, &web_logs, &worker_logs, outage),
        kill: kill.map_or_else(
            || KillOutcome {
                json: Json::Null,
                text: "none".to_owned(),
            },
            |k| kill_outcome(plan, k, &logs_by_idx[k.idx], &worker_logs),
        ),
        resumed: resumed(fleet, restart),
        recovery: recovery(plan, watch),
        dead_letters: sum(&workers, "dead_lettered"),
        web: web.into_iter().cloned().collect(),
    })
}

fn reads(
    web: &[&Json],
    workers: &[&Json],
    web_logs: &[&ProcessLog],
    outage: Option<(u64, u64)>,
) -> Reads {
    let all: Vec<&Json> = web.iter().chain(workers.iter()).copied().collect();
    let stale_served = sum(web, "stale_served");
    Reads {
        total: sum(web, "reads"),
        served: sum(web, "served"),
        failed: sum(web, "failed"),
        failed_by_phase: Phases::count(web_logs.iter().flat_map(|l| &l.failed_reads), outage),
        fallback_by_phase: Phases::count(web_logs.iter().flat_map(|l| &l.fallback_reads), outage),
        panics: sum(&all, "panics") + sum(web, "reader_panics"),
        wrong_key: sum(web, "wrong_key"),
        stale_served,
        staleness_mean: if stale_served == 0 {
            0.0
        } else {
            sum(web, "staleness_sum_ms") as f64 / stale_served as f64
        },
        staleness_max: max(web, "staleness_max_ms"),
        staleness_p99: max(web, "staleness_p99_ms"),
    }
}

fn fetches(
    plan: &Plan<'_>,
    web_logs: &[&ProcessLog],
    worker_logs: &[&ProcessLog],
    outage: Option<(u64, u64)>,
) -> Fetches {
    let worker: Vec<&logs::Fetch> = worker_logs.iter().flat_map(|l| l.fetches.iter()).collect();
    let outcome_count = |fetches: &[&logs::Fetch], want: Outcome| {
        fetches
            .iter()
            .filter(|f| f.end.map(|(_, o)| o) == Some(want))
            .count()
    };
    let in_window: Vec<&logs::Fetch> = worker
        .iter()
        .copied()
        .filter(|f| (plan.start_ms..plan.faults_until).contains(&f.start))
        .collect();
    let refetches = logs::refetches_of_fresh(worker.iter().copied(), ms(LIFETIME));
    let refetches_outside_outage = refetches
        .iter()
        .filter(|(_, start)| match outage {
            // The earlier value may not have been stored while Redis was down (or right after).
            Some((down, up)) => !(down.saturating_sub(ms(LIFETIME))
                ..=up + ms(VISIBILITY) + RECONNECT_GRACE_MS)
                .contains(start),
            None => true,
        })
        .count();
    let web_fetch_spans: Vec<logs::ReadSpan> = web_logs
        .iter()
        .flat_map(|l| l.fetches.iter())
        .map(|f| logs::ReadSpan {
            start: f.start,
            end: f.end.map_or(f.start, |(at, _)| at),
            key: f.key,
            reason: String::new(),
        })
        .collect();
    Fetches {
        events: logs::stale_events(worker.iter().copied(), ms(VISIBILITY)),
        worker_ok: outcome_count(&worker, Outcome::Ok),
        worker_err: outcome_count(&worker, Outcome::Err),
        worker_cut: outcome_count(&worker, Outcome::Cancelled),
        in_window: in_window.len(),
        window_err: outcome_count(&in_window, Outcome::Err),
        window_hang: outcome_count(&in_window, Outcome::Cancelled),
        refetches: refetches.len(),
        refetches_outside_outage,
        web: web_fetch_spans.len(),
        web_by_phase: Phases::count(&web_fetch_spans, outage),
    }
}

/// The killed worker's cut fetches, and when another worker fetched each key again.
fn kill_outcome(
    plan: &Plan<'_>,
    k: Kill,
    killed: &ProcessLog,
    worker_logs: &[&ProcessLog],
) -> KillOutcome {
    let others: Vec<&ProcessLog> = worker_logs
        .iter()
        .copied()
        .filter(|l| l.name != killed.name)
        .collect();
    let redelivered = logs::redeliveries(
        killed,
        k.at,
        &others,
        ms(REFRESH_TIMEOUT + VISIBILITY) + 2_000,
    );
    let delays: Vec<u64> = redelivered.iter().filter_map(|(_, d)| *d).collect();
    let not_seen = redelivered.len() - delays.len();
    let (min_d, max_d) = (delays.iter().min().copied(), delays.iter().max().copied());
    let json = json!({
        "at_s": plan.t(k.at),
        "in_flight_at_kill": k.in_flight,
        "forced_without_refresh_in_flight": plan.forced_kill,
        "fetches_cut": redelivered.len(),
        "redelivered_after_ms": { "min": min_d, "max": max_d, "not_seen": not_seen },
        "replacement_started": plan.replacement,
    });
    let text = format!(
        "worker-1 at t={:.1} s, {} refreshes in flight{}, {} fetches cut; refetched by another \
         worker {} after the kill{}",
        plan.t(k.at),
        k.in_flight,
        if plan.forced_kill {
            " (forced: none seen in 5 s)"
        } else {
            ""
        },
        redelivered.len(),
        match (min_d, max_d) {
            (Some(a), Some(b)) => format!("{:.1}–{:.1} s", a as f64 / 1e3, b as f64 / 1e3),
            _ => "—".to_owned(),
        },
        if not_seen > 0 {
            format!(" ({not_seen} not refetched within the window)")
        } else {
            String::new()
        }
    );
    KillOutcome { json, text }
}

/// Workers alive at the restart: when each processed its first refresh after Redis answered
/// again.
fn resumed(fleet: &Fleet, restart: Option<Restart>) -> Vec<(String, Option<u64>)> {
    fleet
        .procs
        .iter()
        .filter(|p| p.role == "worker" && p.killed_at.is_none())
        .map(|p| {
            let after = restart.and_then(|r| p.resumed_at.map(|at| at.saturating_sub(r.up_at)));
            (p.name.clone(), after)
        })
        .collect()
}

/// Recovery after the faults: per key, from when it needed a refresh (the faults stopped, or
/// its value turned stale, whichever is later) to the refreshed value's fetch.
fn recovery(plan: &Plan<'_>, watch: &KeyWatch) -> Recovery {
    let delays: Vec<u64> = watch
        .refreshed
        .iter()
        .map(|(key, fetched_at)| {
            let due = watch
                .fresh_until_at_end
                .get(key)
                .map_or(plan.faults_until, |f| (*f).max(plan.faults_until));
            fetched_at.saturating_sub(due)
        })
        .collect();
    let bound = ms(REFRESH_TIMEOUT + VISIBILITY);
    Recovery {
        max_delay: delays.iter().max().copied().unwrap_or(0),
        late: delays.iter().filter(|d| **d > bound).count(),
        bound,
        all_refreshed_at: watch.refreshed.values().max().copied(),
    }
}
