//! The soak run's report: one line per sample on stderr, and `soak.md` (the table and the
//! verdict).

use std::fmt::Write as _;

use super::Args;
use super::run::{
    DELETE_SHARE, FETCH, INVALIDATE_SHARE, LIFETIME, Outcome, SET_SHARE, TASKS, WORKER_CONCURRENCY,
    ZIPF_S,
};
use super::verdict::{Sample, Verdict};

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn opt(x: Option<u64>) -> String {
    x.map_or("?".to_owned(), |x| x.to_string())
}

/// A sample's figures after its time, as the line and the table show them: RSS, anon (MiB),
/// threads, fds, sockets, TCP established, Redis clients, store entries, reads/s, empty reads,
/// writes, fetches, refreshes, backlog, Redis memory (MiB), errors.
fn cells(s: &Sample) -> [String; 16] {
    let p = &s.process;
    [
        mib(p.rss_kib),
        mib(p.rss_anon_kib),
        p.threads.to_string(),
        p.fds.to_string(),
        p.sockets.to_string(),
        p.tcp_established.to_string(),
        opt(s.redis_clients),
        s.store_entries.to_string(),
        format!("{:.0}", s.reads_per_sec),
        s.empty_reads.to_string(),
        (s.sets + s.invalidates + s.deletes).to_string(),
        s.fetches.to_string(),
        s.refreshes.to_string(),
        opt(s.queue_backlog),
        s.redis_used_memory
            .map_or("?".to_owned(), |b| format!("{:.1}", b as f64 / 1_048_576.0)),
        s.errors.to_string(),
    ]
}

/// One sample in one line, for stderr as it is taken.
pub(super) fn sample_line(s: &Sample) -> String {
    let [
        rss,
        anon,
        threads,
        fds,
        sockets,
        tcp,
        clients,
        entries,
        reads,
        empty,
        writes,
        fetches,
        refreshes,
        backlog,
        redis_mem,
        errors,
    ] = cells(s);
    let mega = if s.redis_used_memory.is_some() {
        "M"
    } else {
        ""
    };
    format!(
        "t={:>5.0}s rss={rss} MiB (anon {anon}) threads={threads} fds={fds} sockets={sockets} \
         tcp={tcp} redis_clients={clients} entries={entries} reads/s={reads} empty={empty} \
         writes={writes} fetches={fetches} refreshes={refreshes} backlog={backlog} \
         redis_mem={redis_mem}{mega} errors={errors}",
        s.t_s,
    )
}

pub(super) fn markdown(
    args: &Args,
    started: &str,
    facts: &serde_json::Value,
    outcome: &Outcome,
    verdict: &Verdict,
) -> String {
    let mut md = String::new();
    intro(&mut md, args, started, facts, outcome, verdict);
    samples_table(&mut md, outcome, verdict);
    before_after_and_verdict(&mut md, outcome, verdict);
    md
}

/// The setup, the load and the totals.
fn intro(
    md: &mut String,
    args: &Args,
    started: &str,
    facts: &serde_json::Value,
    outcome: &Outcome,
    verdict: &Verdict,
) {
    let t = &outcome.totals;
    let _ = writeln!(
        md,
        "Soak run of {started}: {:.1} min of load ({:.0} s measured), a sample every {} s, \
         warm-up {:.0} s; machine: {} ({} cores).\n",
        args.minutes,
        outcome.seconds,
        args.sample_seconds,
        verdict.warmup_s,
        facts["cpu_model"].as_str().unwrap_or("?"),
        facts["nproc"],
    );
    let _ = writeln!(
        md,
        "Load: `MemoryStore` bounded to {} entries, {} keys with Zipf({ZIPF_S}) popularity; \
         `RedisQueue` on the harness's redis-server and an in-process `Worker` \
         (concurrency {WORKER_CONCURRENCY}); lifetime {} s, fetch {} ms; {TASKS} tasks \
         running {:.1}% get, {:.1}% set, {:.1}% invalidate, {:.1}% delete back to back.\n",
        args.max_entries,
        args.keys,
        LIFETIME.as_secs(),
        FETCH.as_millis(),
        100.0 * (1.0 - SET_SHARE - INVALIDATE_SHARE - DELETE_SHARE),
        100.0 * SET_SHARE,
        100.0 * INVALIDATE_SHARE,
        100.0 * DELETE_SHARE,
    );
    let _ = writeln!(
        md,
        "Totals: {} operations ({:.0}/s): {} reads ({} empty), {} sets, {} invalidates, \
         {} deletes; {} fetches, {} refreshes through the queue; {} errors. Worker at stop: \
         {}; client shutdown drained: {}.\n",
        t.ops(),
        t.ops() as f64 / outcome.seconds.max(1e-9),
        t.reads,
        t.empty,
        t.sets,
        t.invalidates,
        t.deletes,
        t.fetches,
        t.refreshes,
        t.errors,
        outcome.worker,
        outcome.drained,
    );
}

/// One row per sample.
fn samples_table(md: &mut String, outcome: &Outcome, verdict: &Verdict) {
    let _ = writeln!(
        md,
        "| t (s) | RSS (MiB) | anon (MiB) | threads | fds | sockets | TCP est. | Redis clients \
         | store entries | reads/s | empty reads | writes | fetches | refreshes | backlog \
         | Redis mem (MiB) | errors |"
    );
    let _ = writeln!(md, "|{}", "---:|".repeat(17));
    for s in &outcome.samples {
        let warm = if s.t_s < verdict.warmup_s {
            " (warm-up)"
        } else {
            ""
        };
        let _ = writeln!(md, "| {:.0}{warm} | {} |", s.t_s, cells(s).join(" | "));
    }
}

/// The process before the load and after the shutdown, and the verdict's rules.
fn before_after_and_verdict(md: &mut String, outcome: &Outcome, verdict: &Verdict) {
    let _ = writeln!(
        md,
        "\nBefore the load: RSS {} MiB, {} fds, {} sockets. After the client shut down: RSS \
         {} MiB, {} fds, {} sockets, {} established TCP connections.\n",
        mib(outcome.before_load.rss_kib),
        outcome.before_load.fds,
        outcome.before_load.sockets,
        mib(outcome.after_shutdown.rss_kib),
        outcome.after_shutdown.fds,
        outcome.after_shutdown.sockets,
        outcome.after_shutdown.tcp_established,
    );
    let _ = writeln!(
        md,
        "Verdict after the warm-up ({} samples): **{}**{}\n",
        verdict.judged_samples,
        if verdict.ok() { "flat" } else { "NOT flat" },
        verdict
            .rss_trend_kib_per_min
            .map_or(String::new(), |k| format!(
                "; RSS trend {k:+.0} KiB/min (least squares)"
            )),
    );
    let _ = writeln!(md, "| rule | observed | holds |\n|---|---|---|");
    for c in &verdict.checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            c.rule,
            c.observed,
            if c.ok { "yes" } else { "**no**" }
        );
    }
}
