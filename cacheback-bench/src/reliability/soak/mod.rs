//! The soak run: 10 minutes of W4-like mixed load on one client, sampling this process's
//! resident memory, file descriptors and connections (and Redis's client count) every 10 s; the
//! verdict is that they stay flat within ±10% after the warm-up (issue #5).
//!
//! ```text
//! cargo run --release -p cacheback-bench -- soak                                 # 10 min
//! cargo run --release -p cacheback-bench -- soak --minutes 1 --sample-seconds 5  # quick check
//! ```
//!
//! The load: a [`MemoryStore`](cacheback::MemoryStore) bounded to 2,000 entries in front of 20,000 keys read with
//! Zipf(1.1) popularity, so eviction churns all the time; refreshes go through a [`RedisQueue`](cacheback::RedisQueue)
//! on the harness's own `redis-server` (real connections) to a [`Worker`](cacheback::Worker) in this process
//! (concurrency 128, as W4); lifetime 2 s, the fetch sleeps 20 ms; 8 tasks run operations back
//! to back: 98.4% `get`, 1% `set`, 0.5% `invalidate`, 0.1% `delete`, keys drawn by the same Zipf.
//!
//! Output: one line per sample on stderr as it is taken; `soak.jsonl` (one object per sample,
//! written as it is taken, then a summary object) and `soak.md` (the table and the verdict) in
//! `--out`. Exits with an error, naming the rules broken, when the run is not flat.

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
mod probe;
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
mod verdict;

use std::path::PathBuf;

/// `cacheback-bench soak`: a long mixed load; RSS and connections must stay flat.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Length of the load, minutes.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    sample_seconds: u64,
    /// Where to write `soak.md` and `soak.jsonl`.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
    /// The memory store's bound, entries.
    #[arg(long, default_value_t = 2_000)]
    max_entries: u64,
    /// Distinct keys read.
    #[arg(long, default_value_t = 20_000)]
    keys: usize,
}

/// `cacheback-bench soak [ARGS]`.
pub(crate) fn main(args: &Args) -> Result<(), String> {
    if !(args.minutes > 0.0 && args.minutes.is_finite()) {
        return Err("--minutes must be greater than 0".to_owned());
    }
    if args.sample_seconds == 0 {
        return Err("--sample-seconds must be at least 1".to_owned());
    }
    if args.max_entries == 0 || args.keys == 0 {
        return Err("--max-entries and --keys must be at least 1".to_owned());
    }
    run::run(args)
}

#[cfg(feature = "redis")]
mod report;
#[cfg(feature = "redis")]
mod run;

#[cfg(not(feature = "redis"))]
mod run {
    /// Without Redis there is no `RedisQueue` to soak.
    pub(super) fn run(_: &super::Args) -> Result<(), String> {
        Err("the soak run needs the `redis` feature (its queue is a RedisQueue)".to_owned())
    }
}
