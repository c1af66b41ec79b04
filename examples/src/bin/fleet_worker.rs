//! # Fleet demo, worker side: a refresh worker process of a split deployment
//!
//! Run with: `cargo run -p cacheback-examples --bin fleet_worker`
//!
//! on the same Redis (`CACHEBACK_REDIS_URL`, default `redis://127.0.0.1:6379`) and prefix
//! (`CACHEBACK_PREFIX`, default `fleet-demo`) as the `fleet_web` processes; the whole scenario
//! is in `src/fleet.rs`, with the job both processes share.
//!
//! It drains the refresh stream (consumer group `cacheback-workers`) that the web processes
//! fill, runs each refresh (the slow upstream call) and writes the result to the shared store.
//! Start several: each refresh runs on exactly one. `kill -9` one mid-refresh: another takes
//! the refresh over after `--visibility-secs`. Ctrl-C or SIGTERM stops it gracefully: no new
//! work, in-flight refreshes finish (up to 30 s). Every 5 s it prints its health (what a
//! readiness probe would check).

use std::time::Duration;

use cacheback::worker::WorkerHealth;
use cacheback::{Worker, WorkerOptions};
use cacheback_examples::fleet::{self, FleetArgs};
use clap::Parser;

/// A worker process of the fleet demo.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    fleet: FleetArgs,
    /// Refreshes run at the same time.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The queues (streams) this worker drains.
    #[arg(long, default_value = "default", value_delimiter = ',')]
    queues: Vec<String>,
    /// An unacknowledged refresh (its worker died) is taken over after this long.
    #[arg(long, default_value_t = 30)]
    visibility_secs: u64,
}

/// Prints the worker's health every 5 s, until dropped with the task that runs it.
async fn report_health(health: WorkerHealth) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.tick().await;
    loop {
        every.tick().await;
        eprintln!(
            "health: running={} last_poll={:?} in_flight={} processed={} dead_lettered={}",
            health.is_running(),
            health.last_poll(),
            health.in_flight(),
            health.processed(),
            health.dead_lettered()
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    fleet::init_logging("cacheback=info,cacheback_examples=info,fleet_worker=info");
    let args = Args::parse();
    let fleet = args.fleet.connect(|queue| {
        queue
            .queues(args.queues.clone())
            .visibility_timeout(Duration::from_secs(args.visibility_secs))
    })?;
    let worker = Worker::builder(&fleet.cache)
        .options(
            WorkerOptions::default()
                .concurrency(args.concurrency)
                .drain_timeout(Duration::from_secs(30)),
        )
        .build()?;
    eprintln!(
        "fleet_worker (pid {}, consumer `{}`) draining {:?} under prefix `{}`",
        std::process::id(),
        fleet.queue.consumer(),
        args.queues,
        args.fleet.prefix
    );
    let probe = tokio::spawn(report_health(worker.health()));
    let report = worker.run_until(fleet::shutdown_signal()).await;
    probe.abort();
    eprintln!("fleet_worker stopped: {report:?}");
    Ok(())
}
