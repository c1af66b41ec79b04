//! `cacheback top`: the fleet at a glance, redrawn every second: each job's counts of the last
//! minute (from the processes' published counts), then the queues.

use std::io::IsTerminal;
use std::time::Duration;

use cacheback::fleet_stats::{FleetStats, FleetStatsReader};
use serde::Serialize;

use super::Target;
use super::queues::{QueueJson, collect, render as render_queues};
use crate::exit::{OK, Outcome};
use crate::output::{Table, now, span, time};
use crate::progress::Interrupt;

#[derive(Debug, clap::Args)]
pub(super) struct TopArgs {
    /// Seconds between two screens.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Stop after this many screens (default: until Ctrl-C).
    #[arg(long)]
    iterations: Option<u64>,
}

/// One screen, as `--json` prints it (one JSON document per line).
#[derive(Debug, Serialize)]
struct Screen {
    at: String,
    processes: usize,
    jobs: Vec<JobJson>,
    queues: Vec<QueueJson>,
}

#[derive(Debug, Serialize)]
struct JobJson {
    job: String,
    hits: u64,
    stale: u64,
    misses: u64,
    refreshes: u64,
    failures: u64,
    mean_refresh_lag_ms: Option<u64>,
}

fn jobs(stats: &FleetStats) -> Vec<JobJson> {
    stats
        .jobs
        .iter()
        .map(|j| JobJson {
            job: j.job.clone(),
            hits: j.hits,
            stale: j.stale,
            misses: j.misses,
            refreshes: j.refreshes,
            failures: j.failures,
            mean_refresh_lag_ms: j
                .mean_refresh_lag
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        })
        .collect()
}

fn render(screen: &Screen, prefix: &str) -> String {
    let mut out = format!(
        "cacheback top  prefix {prefix}  {}  {} process(es) publishing\n\n",
        screen.at, screen.processes
    );
    if screen.jobs.is_empty() {
        out.push_str(
            "no job counts published (clients need .fleet_stats(true) and a StatsPublisher)\n",
        );
    } else {
        let mut table = Table::new(&[
            "JOB",
            "HITS/MIN",
            "STALE/MIN",
            "MISSES/MIN",
            "REFRESHES/MIN",
            "FAILURES/MIN",
            "LAG",
        ]);
        for j in &screen.jobs {
            table.row(vec![
                j.job.clone(),
                j.hits.to_string(),
                j.stale.to_string(),
                j.misses.to_string(),
                j.refreshes.to_string(),
                j.failures.to_string(),
                j.mean_refresh_lag_ms
                    .map_or_else(|| "-".to_owned(), |ms| span(Duration::from_millis(ms))),
            ]);
        }
        out.push_str(&table.render());
    }
    out.push('\n');
    if screen.queues.is_empty() {
        out.push_str("no queues\n");
    } else {
        out.push_str(&render_queues(&screen.queues));
    }
    out
}

pub(super) async fn run(target: &Target, args: TopArgs, json: bool) -> Outcome {
    let prefix = target.prefix()?.to_owned();
    let reader = FleetStatsReader::from_url(&target.url, &prefix)?;
    let interval = Duration::from_secs_f64(args.interval.clamp(0.1, 3600.0));
    let terminal = std::io::stdout().is_terminal();
    let interrupt = Interrupt::listen();
    let mut every = tokio::time::interval(interval);
    let mut shown = 0u64;
    loop {
        // Ctrl-C ends the wait for the next screen at once, however long `--interval` is.
        tokio::select! {
            biased;
            () = interrupt.pressed() => break,
            _ = every.tick() => {}
        }
        let now = now();
        let stats = reader.read(now).await?;
        let screen = Screen {
            at: time(now),
            processes: stats.processes.len(),
            jobs: jobs(&stats),
            queues: collect(target, Vec::new()).await?,
        };
        if json {
            println!(
                "{}",
                serde_json::to_string(&screen).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            );
        } else if terminal {
            // Home and clear, then the screen: redrawn in place.
            print!("\x1b[H\x1b[2J{}", render(&screen, &prefix));
        } else {
            println!("{}", render(&screen, &prefix));
        }
        shown += 1;
        if args.iterations.is_some_and(|n| shown >= n) {
            break;
        }
    }
    Ok(OK)
}
