//! The chaos run (issue #5): real processes, real faults, one command.
//!
//! ```text
//! cargo run --release -p cacheback-bench -- chaos                 # 60 s of faults
//! cargo run --release -p cacheback-bench -- chaos --seconds 10    # a short run (~25 s)
//! cargo run --release -p cacheback-bench -- chaos --out DIR       # default target/chaos
//! ```
//!
//! The driver (this process) starts its own `redis-server`, warms 200 keys of one job, then
//! runs 2 web processes (8 reader tasks each, steady reads of every key) and 2 worker processes
//! (draining the Redis Streams queue, or the `--queue`) — all children of this binary (`__child chaos-web`,
//! `__child chaos-worker`). For `--seconds` the job's fetch fails 30% of the time and hangs 5%
//! of the time (the job's `fetch_timeout` cuts it); at a quarter of the window a worker is
//! `kill -9`ed while refreshes run in it (a replacement starts 2 s later, as an orchestrator
//! would); at half of it Redis is stopped with `SHUTDOWN SAVE` and started again on the same
//! port and dir. After the window the fleet keeps running long enough for every key to be
//! refreshed (`lifetime + fetch_timeout + backoff max + refresh_timeout + visibility timeout +
//! 1 s`), while the driver watches each key's `fetched_at`.
//!
//! Fetches and failed reads are logged by each process to a file of its own (not to Redis,
//! which is restarted); the driver merges the logs. It prints a Markdown table and writes
//! `chaos.json` and `chaos.md` (and the logs, `logs/*.log`) to `--out`, and fails if any
//! process panicked, a read failed while Redis was up, a reader got another key's value, or a
//! key was not refreshed after the faults stopped.

use std::path::PathBuf;

#[cfg(feature = "redis")]
mod analysis;
#[cfg(feature = "redis")]
mod child;
#[cfg(feature = "redis")]
mod driver;
#[cfg(feature = "redis")]
mod fleet;
#[cfg(feature = "redis")]
mod logs;
#[cfg(feature = "redis")]
mod report;

/// Faults across real processes: 2 web + 2 worker processes, one Redis.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Length of the fault window, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Where to write `chaos.json`, `chaos.md` and the processes' logs.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Keys read by the web processes.
    #[arg(long, default_value_t = 200)]
    keys: u64,
    /// Reader tasks per web process.
    #[arg(long, default_value_t = 8)]
    readers: usize,
    /// Web processes read through a near cache (`NearCache::new()`).
    #[arg(long)]
    near_cache: bool,
    /// The queue behind the refreshes (the store stays Redis, which the run restarts).
    #[cfg(feature = "redis")]
    #[arg(long, value_enum, default_value_t)]
    queue: crate::queues::QueueChoice,
}

/// `cacheback-bench chaos [ARGS]`.
pub(crate) fn main(args: &Args) -> Result<(), String> {
    if args.seconds < 4 {
        return Err("--seconds must be at least 4 (a kill and a restart fit in it)".to_owned());
    }
    if args.keys == 0 || args.readers == 0 {
        return Err("--keys and --readers must be at least 1".to_owned());
    }
    run(args)
}

#[cfg(feature = "redis")]
fn run(args: &Args) -> Result<(), String> {
    driver::run(args)
}

#[cfg(not(feature = "redis"))]
fn run(_args: &Args) -> Result<(), String> {
    Err("the chaos run needs the `redis` feature (on by default)".to_owned())
}

#[cfg(feature = "redis")]
pub(crate) use child::ChildArgs;

/// The chaos web process (`__child chaos-web`).
#[cfg(feature = "redis")]
pub(crate) fn web(args: ChildArgs) -> Result<(), String> {
    child::run(child::Role::Web, args)
}

/// The chaos worker process (`__child chaos-worker`).
#[cfg(feature = "redis")]
pub(crate) fn worker(args: ChildArgs) -> Result<(), String> {
    child::run(child::Role::Worker, args)
}
