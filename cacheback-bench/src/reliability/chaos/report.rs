//! The chaos run's verdicts (the requirements of RELIABILITY.md) and its report: `chaos.json`
//! and the Markdown table of `chaos.md`.

use std::fmt::Write as _;

use serde_json::{Value as Json, json};

use super::analysis::{Analysis, KeyWatch, Plan, RECONNECT_GRACE_MS, Restart, ms};
use super::child::{
    BACKOFF_INITIAL, BACKOFF_MAX, FAIL_P, FETCH_TIMEOUT, HANG_P, JOB_NAME, LIFETIME,
    REFRESH_TIMEOUT, VISIBILITY, WORKER_CONCURRENCY,
};
use super::driver::{MONITOR_EVERY_MS, REDIS_DOWN};
use super::fleet::Fleet;

/// The outcome: JSON, Markdown and the failed requirements.
#[derive(Debug)]
pub(super) struct Report {
    pub(super) json: Json,
    pub(super) markdown: String,
    pub(super) failures: Vec<String>,
}

/// What the report is made of: the plan, the faults as they happened, and the analysis.
#[derive(Debug)]
pub(super) struct Facts<'a> {
    pub(super) plan: &'a Plan<'a>,
    pub(super) fleet: &'a Fleet,
    pub(super) restart: Option<Restart>,
    pub(super) watch: &'a KeyWatch,
    pub(super) lost: &'a [u64],
    pub(super) analysis: &'a Analysis,
}

/// The verdicts and the report of a run.
pub(super) fn report(f: &Facts<'_>) -> Report {
    let failures = failures(f);
    Report {
        json: to_json(f, &failures),
        markdown: markdown(f, &failures),
        failures,
    }
}

/// The requirements the run broke, each in one line.
fn failures(f: &Facts<'_>) -> Vec<String> {
    let (r, lost) = (&f.analysis.reads, f.lost);
    let failed = r.failed_by_phase;
    let mut failures = Vec::new();
    if r.panics > 0 {
        failures.push(format!("{} panics", r.panics));
    }
    if failed.up > 0 {
        failures.push(format!("{} reads failed while Redis was up", failed.up));
    }
    if failed.reconnect > 0 {
        failures.push(format!(
            "{} reads failed in the {RECONNECT_GRACE_MS} ms after Redis answered again",
            failed.reconnect
        ));
    }
    if !lost.is_empty() {
        failures.push(format!(
            "{} refreshes lost (keys {:?}...)",
            lost.len(),
            &lost[..lost.len().min(10)]
        ));
    }
    if let Some(restart) = f.restart
        && restart.keys_after.unwrap_or(0) < f.plan.args.keys
    {
        failures.push(format!(
            "Redis held {:?} keys after its restart ({:?} before): data lost",
            restart.keys_after, restart.keys_before
        ));
    }
    if r.wrong_key > 0 {
        failures.push(format!("{} reads got another key's value", r.wrong_key));
    }
    if r.failed_logged() as u64 != r.failed {
        failures.push(format!(
            "the logs hold {} failed reads, the summaries count {}",
            r.failed_logged(),
            r.failed
        ));
    }
    failures
}

/// `chaos.json`.
fn to_json(f: &Facts<'_>, failures: &[String]) -> Json {
    let (plan, a) = (f.plan, f.analysis);
    let args = plan.args;
    json!({
        "seconds": args.seconds,
        "start_ms": plan.start_ms,
        "faults_until_ms": plan.faults_until,
        "check_at_ms": plan.check_at,
        "keys": args.keys,
        "processes": { "web": 2, "readers_per_web": args.readers, "workers": 2,
                       "worker_concurrency": WORKER_CONCURRENCY, "redis": 1 },
        "queue": args.queue.name(),
        "near_cache": args.near_cache,
        "policy": {
            "job": JOB_NAME,
            "lifetime_ms": ms(LIFETIME), "fetch_timeout_ms": ms(FETCH_TIMEOUT),
            "refresh_timeout_ms": ms(REFRESH_TIMEOUT), "visibility_timeout_ms": ms(VISIBILITY),
            "retry_backoff_ms": [ms(BACKOFF_INITIAL), ms(BACKOFF_MAX)],
            "fault_fail_p": FAIL_P, "fault_hang_p": HANG_P,
        },
        "children_ready_late_ms": plan.ready_at.saturating_sub(plan.start_ms),
        "reads": a.reads.total,
        "reads_served": a.reads.served,
        "reads_failed": {
            "total": a.reads.failed,
            "redis_up": a.reads.failed_by_phase.up,
            "redis_down": a.reads.failed_by_phase.outage,
            "reconnecting": a.reads.failed_by_phase.reconnect,
            "reconnect_grace_ms": RECONNECT_GRACE_MS,
        },
        "reads_by_status": {
            "hit": a.web_sum("hit"), "stale": a.web_sum("stale"),
            "stale_refetched": a.web_sum("stale_refetched"), "miss": a.web_sum("miss"),
            "miss_fetched": a.web_sum("miss_fetched"),
        },
        "reads_served_by_fallback_fetch": {
            "redis_up": a.reads.fallback_by_phase.up,
            "redis_down": a.reads.fallback_by_phase.outage,
            "reconnecting": a.reads.fallback_by_phase.reconnect,
        },
        "wrong_key": a.reads.wrong_key,
        "read_timeouts": a.web_sum("timed_out"),
        "panics": a.reads.panics,
        "refreshes_lost": f.lost.len(),
        "lost_keys": f.lost,
        "recovery": recovery_json(f),
        "staleness_ms": { "max": a.reads.staleness_max, "mean": a.reads.staleness_mean,
                          "p99_worst_process": a.reads.staleness_p99,
                          "stale_reads": a.reads.stale_served },
        "fetches": fetches_json(a),
        "stale_events": a.fetches.events.events,
        "duplicate_fetches": a.fetches.events.duplicates,
        "duplicate_fetches_per_stale_event": { "mean": a.fetches.events.duplicates_per_event(),
                                               "max": a.fetches.events.max_per_event.saturating_sub(1) },
        "worker_kill": a.kill.json,
        "redis_restart": f.restart.map(|r| restart_json(plan, r, a)),
        "dead_letters": a.dead_letters,
        "processes_detail": f.fleet.procs.iter().map(|p| json!({
            "name": p.name, "exit": p.exit, "killed": p.killed_at.is_some(), "summary": p.summary,
        })).collect::<Vec<_>>(),
        "failures": failures,
    })
}

fn recovery_json(f: &Facts<'_>) -> Json {
    let (plan, r) = (f.plan, &f.analysis.recovery);
    json!({
        "check_after_faults_ms": plan.check_at - plan.faults_until,
        "recovery_budget_ms": plan.recovery_ms,
        "max_refresh_delay_ms": r.max_delay,
        "late_refreshes": r.late,
        "late_bound_ms": r.bound,
        "last_key_refreshed_after_faults_ms":
            r.all_refreshed_at.map(|at| at.saturating_sub(plan.faults_until)),
        "peek_errors": f.watch.peek_errors,
        "missing_entries": f.watch.missing,
    })
}

fn fetches_json(a: &Analysis) -> Json {
    let x = &a.fetches;
    json!({
        "worker": x.events.fetches,
        "worker_ok": x.worker_ok,
        "worker_err": x.worker_err,
        "worker_cut_by_timeout": x.worker_cut,
        "worker_unfinished": x.events.unfinished,
        "in_window": x.in_window,
        "in_window_err_share": x.window_err_share(),
        "in_window_hang_share": x.window_hang_share(),
        "web_fallback": x.web,
        "web_fallback_redis_up": x.web_by_phase.up,
        "web_fallback_redis_down": x.web_by_phase.outage,
        "web_fallback_reconnecting": x.web_by_phase.reconnect,
        "refetches_of_fresh_value": x.refetches,
        "refetches_of_fresh_value_outside_outage": x.refetches_outside_outage,
    })
}

fn restart_json(plan: &Plan<'_>, r: Restart, a: &Analysis) -> Json {
    json!({
        "at_s": plan.t(r.down_at),
        "down_at_ms": r.down_at,
        "up_at_ms": r.up_at,
        "downtime_ms": r.up_at - r.down_at,
        "shutdown_save_ms": r.exited_at - r.down_at,
        "keys_before": r.keys_before,
        "keys_after": r.keys_after,
        "workers_resumed_after_ms": a.resumed.iter()
            .map(|(name, after)| (name.clone(), json!(after)))
            .collect::<serde_json::Map<String, Json>>(),
    })
}

/// The restart in one sentence, with when each worker refreshed again.
fn restart_text(plan: &Plan<'_>, restart: Option<Restart>, a: &Analysis) -> String {
    let resumed_text = a
        .resumed
        .iter()
        .map(|(name, after)| match after {
            Some(ms) => format!("{name} +{:.2} s", *ms as f64 / 1e3),
            None => format!("{name} never"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    restart.map_or("none".to_owned(), |r| {
        format!(
            "at t={:.1} s: down {:.2} s (SHUTDOWN SAVE {} ms, {} ms stopped, {} ms until PING); \
             keys {} before, {} after; workers refreshing again: {resumed_text} after Redis \
             answered",
            plan.t(r.down_at),
            (r.up_at - r.down_at) as f64 / 1e3,
            r.exited_at - r.down_at,
            ms(REDIS_DOWN),
            r.up_at
                .saturating_sub(r.exited_at)
                .saturating_sub(ms(REDIS_DOWN)),
            r.keys_before.map_or("?".to_owned(), |n| n.to_string()),
            r.keys_after.map_or("?".to_owned(), |n| n.to_string()),
        )
    })
}

fn pass(ok: bool) -> &'static str {
    if ok { "ok" } else { "**FAIL**" }
}

/// The Markdown table under construction.
struct Table(String);

impl Table {
    fn row(&mut self, metric: &str, value: String, req: &str) {
        let _ = writeln!(self.0, "| {metric} | {value} | {req} |");
    }
}

/// `chaos.md`: the setup, the table, the notes and the result.
fn markdown(f: &Facts<'_>, failures: &[String]) -> String {
    let plan = f.plan;
    let args = plan.args;
    let mut md = format!(
        "## Chaos run: {} s of faults\n\n2 web processes × {} readers (steady reads of {} keys), \
         2 worker processes (concurrency {}), 1 Redis, refreshes on {}{}; job `{JOB_NAME}`: \
         lifetime {} s, \
         fetch_timeout {} s, refresh_timeout {} s, retry backoff {}–{} ms, visibility timeout \
         {} s. In the fault window the fetch fails {:.0}% and hangs {:.0}% of the time.\n\n",
        args.seconds,
        args.readers,
        args.keys,
        WORKER_CONCURRENCY,
        args.queue.name(),
        if args.near_cache {
            ", web processes reading through a near cache"
        } else {
            ""
        },
        LIFETIME.as_secs_f64(),
        FETCH_TIMEOUT.as_secs_f64(),
        REFRESH_TIMEOUT.as_secs_f64(),
        ms(BACKOFF_INITIAL),
        ms(BACKOFF_MAX),
        VISIBILITY.as_secs_f64(),
        FAIL_P * 100.0,
        HANG_P * 100.0,
    );
    let mut table = Table("| metric | value | requirement |\n|---|---|---|\n".to_owned());
    read_rows(&mut table, f);
    fetch_rows(&mut table, f.analysis);
    table.row("worker kill", f.analysis.kill.text.clone(), "");
    table.row(
        "Redis restart",
        restart_text(plan, f.restart, f.analysis),
        "",
    );
    table.row(
        "dead letters",
        f.analysis.dead_letters.to_string(),
        "reported",
    );
    md.push_str(&table.0);
    md.push('\n');
    if plan.ready_at > plan.start_ms {
        let _ = write!(
            md,
            "Note: the children were ready {} ms after the planned start.\n\n",
            plan.ready_at - plan.start_ms
        );
    }
    md.push_str(&notes());
    let _ = writeln!(
        md,
        "Result: {}",
        if failures.is_empty() {
            "pass".to_owned()
        } else {
            format!("FAIL — {}", failures.join("; "))
        }
    );
    md
}

/// The rows about reads, refreshes and staleness.
fn read_rows(t: &mut Table, f: &Facts<'_>) {
    let (r, lost) = (&f.analysis.reads, f.lost);
    let (failed, fallback) = (r.failed_by_phase, r.fallback_by_phase);
    t.row("reads served", format!("{} of {}", r.served, r.total), "");
    t.row(
        "reads failed, Redis up",
        failed.up.to_string(),
        &format!("0: {}", pass(failed.up == 0)),
    );
    if f.plan.args.near_cache {
        t.row(
            "reads failed, Redis down",
            format!(
                "{} (a key with a near copy is served from it; the others fall back to a \
                 synchronous fetch)",
                failed.outage
            ),
            "reported",
        );
    } else {
        t.row(
            "reads failed, Redis down",
            format!(
                "{} (reads fall back to a synchronous fetch, which the faults fail; run with \
                 --near-cache to serve the keys a process holds)",
                failed.outage
            ),
            "reported",
        );
    }
    t.row(
        "reads failed, reconnecting",
        format!(
            "{} (ended ≤ {RECONNECT_GRACE_MS} ms after Redis answered again)",
            failed.reconnect
        ),
        &format!("0: {}", pass(failed.reconnect == 0)),
    );
    t.row(
        "reads served by a fallback fetch",
        format!(
            "{} with Redis up, {} Redis down, {} reconnecting",
            fallback.up, fallback.outage, fallback.reconnect
        ),
        "",
    );
    t.row(
        "reads served another key's value",
        r.wrong_key.to_string(),
        &format!("0: {}", pass(r.wrong_key == 0)),
    );
    t.row(
        "panics",
        r.panics.to_string(),
        &format!("0: {}", pass(r.panics == 0)),
    );
    let plan = f.plan;
    t.row(
        "refreshes lost",
        format!(
            "{} of {} keys not refreshed {:.0} s after the faults stopped",
            lost.len(),
            plan.args.keys,
            (plan.check_at - plan.faults_until) as f64 / 1e3
        ),
        &format!("0: {}", pass(lost.is_empty())),
    );
    let recovery = &f.analysis.recovery;
    t.row(
        "refresh after the faults stopped",
        format!(
            "max {:.2} s after a key needed it; {} keys later than refresh_timeout + visibility ({:.0} s)",
            recovery.max_delay as f64 / 1e3,
            recovery.late,
            recovery.bound as f64 / 1e3
        ),
        "reported",
    );
    t.row(
        "staleness served",
        format!(
            "max {:.2} s, mean {:.0} ms, p99 {:.2} s (worst process), over {} stale reads",
            r.staleness_max as f64 / 1e3,
            r.staleness_mean,
            r.staleness_p99 as f64 / 1e3,
            r.stale_served
        ),
        "reported",
    );
}

/// The rows about fetches.
fn fetch_rows(t: &mut Table, a: &Analysis) {
    let x = &a.fetches;
    t.row(
        "worker fetches",
        format!(
            "{} ({} ok, {} failed, {} cut by fetch_timeout, {} cut by the kill); in the window {:.1}% failed, {:.1}% hung",
            x.events.fetches,
            x.worker_ok,
            x.worker_err,
            x.worker_cut,
            x.events.unfinished,
            x.window_err_share() * 100.0,
            x.window_hang_share() * 100.0
        ),
        "",
    );
    t.row(
        "web fallback fetches",
        format!(
            "{} ({} with Redis up, {} Redis down, {} reconnecting)",
            x.web, x.web_by_phase.up, x.web_by_phase.outage, x.web_by_phase.reconnect
        ),
        "counted apart",
    );
    t.row("stale events", x.events.events.to_string(), "");
    t.row(
        "duplicate fetches per stale event",
        format!(
            "mean {:.4}, max {} ({} duplicates)",
            x.events.duplicates_per_event(),
            x.events.max_per_event.saturating_sub(1),
            x.events.duplicates
        ),
        "reported",
    );
    t.row(
        "refetches of a still-fresh value",
        format!(
            "{} ({} outside the Redis restart)",
            x.refetches, x.refetches_outside_outage
        ),
        "reported",
    );
}

/// How to read the table.
fn notes() -> String {
    format!(
        "Notes:\n\n\
         - *Redis down*: a read that cannot reach the store falls back to a synchronous fetch \
           (`StoreFallback::Fetch`), uncached; inside the fault window that fetch fails or \
           hangs like any other, so such reads fail. With `--near-cache`, a web process serves \
           the keys it holds a copy of from it instead (as their windows say; a copy a newer \
           write superseded as Stale), and only keys it holds no copy of fall back.\n\
         - *Reconnecting*: reads that ended within {RECONNECT_GRACE_MS} ms after Redis answered \
           again are counted apart, and must not fail: a connection whose reconnection attempt \
           failed during the outage reconnects on its next command (a refused command is tried \
           once more at once; without that, the first command failed and workers idled 2–3 s).\n\
         - *Staleness*: `age - lifetime` of each Stale value served. *Stale events*: worker \
           fetches of one key grouped while they overlap in time; a fetch whose worker was \
           killed counts as running until its start + the visibility timeout. *Duplicates*: \
           fetches that started while another fetch of the same key was running. Web \
           processes' fallback fetches are counted apart.\n\
         - *Refresh after the faults stopped*: per key, from the later of the fault window's \
           end and the moment its value turned stale, to the `fetched_at` of the first value \
           fetched after the window (the driver peeks every key every {MONITOR_EVERY_MS} ms).\n\n"
    )
}
