//! The fleet demo: a split deployment on one Redis, `fleet_web` processes serving reads and
//! `fleet_worker` processes running the refreshes. This module is what both must agree on —
//! the job (its name, args and value types tie a web process's refresh request to the worker
//! that runs it) and the connection (the same URL, and one prefix for the store's keys and the
//! refresh stream) — so there is exactly one copy of it.
//!
//! Run with (each in its own terminal; any Redis works, the demo never flushes it):
//!
//! ```text
//! export CACHEBACK_REDIS_URL=redis://127.0.0.1:6379   # the default
//! export CACHEBACK_PREFIX=fleet-demo                  # the default
//! cargo run --release -p cacheback-examples --bin fleet_worker
//! cargo run --release -p cacheback-examples --bin fleet_web -- --port 3001
//! cargo run --release -p cacheback-examples --bin fleet_web -- --port 3002
//! for i in $(seq 30); do curl -s localhost:3001/tweets/alice; echo; curl -s localhost:3002/tweets/alice; echo; sleep 1; done
//! ```
//!
//! What you see, per request:
//!
//! - the first requests are `miss` with no tweets, on both web processes, and the worker logs
//!   **one** refresh;
//! - then `hit`s on both processes, with the same tweets (`fetched_by_pid` is the worker's pid);
//! - after `--lifetime-secs` (default 10), `stale` reads (same tweets, growing `age_ms`) while
//!   one refresh runs, then `hit`s with newer tweets;
//! - stop the worker: stale reads keep being served and refreshes wait in the stream until a
//!   worker is back (`XLEN {fleet-demo:queue}:stream:default` shows them);
//! - stop Redis: reads are fetched in the web process (slowly: `--upstream-ms`) and answered
//!   anyway; start Redis again and everything recovers by itself.
//!
//! Two applications copied from this demo onto one Redis must use two prefixes: the prefix
//! names their keys and their refresh stream alike, so they share neither.

use std::io::IsTerminal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cacheback::queue::RedisQueueBuilder;
use cacheback::{Cacheback, Job, JobHandle, Policy, RedisQueue, RedisStore};
use serde::{Deserialize, Serialize};

/// The prefix of the demo's keys and refresh stream unless `CACHEBACK_PREFIX` says otherwise.
pub const DEFAULT_PREFIX: &str = "fleet-demo";

/// How long a Redis command may take before a read falls back (see `StoreFallback`).
const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// One fake tweet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tweet {
    /// What it says.
    pub text: String,
    /// When upstream produced it (Unix milliseconds).
    pub fetched_at_ms: u64,
    /// The process that fetched it: a worker's, unless Redis was down.
    pub fetched_by_pid: u32,
}

/// The job both processes register: a user's tweets from a slow upstream.
#[derive(Debug)]
pub struct UserTweets {
    lifetime: Duration,
    upstream: Duration,
}

impl Job for UserTweets {
    type Args = String;
    type Value = Vec<Tweet>;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        "user_tweets"
    }

    fn policy(&self) -> Policy {
        Policy::default()
            .lifetime(self.lifetime)
            .stale_ttl(Duration::from_secs(3600))
            .refresh_timeout(Duration::from_secs(30))
            .fetch_timeout(Duration::from_secs(20))
            .fetch_on_miss(false)
    }

    async fn fetch(&self, user: String) -> Result<Vec<Tweet>, std::io::Error> {
        tracing::info!(%user, "fetching from the slow upstream");
        tokio::time::sleep(self.upstream).await; // the slow third-party API
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Ok((1..=3)
            .map(|i| Tweet {
                text: format!("{user}: tweet {i}"),
                fetched_at_ms: now,
                fetched_by_pid: std::process::id(),
            })
            .collect())
    }
}

/// What every process of the fleet reads from its environment (or command line).
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// The shared Redis (also `rediss://`, `redis://user:pass@host`, `redis+unix:///path`).
    #[arg(
        long,
        env = "CACHEBACK_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// The prefix of this application's keys and refresh stream in the shared Redis.
    #[arg(long, env = "CACHEBACK_PREFIX", default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// How long fetched tweets stay fresh.
    #[arg(long, default_value_t = 10)]
    pub lifetime_secs: u64,
    /// How long the fake upstream takes.
    #[arg(long, default_value_t = 2000)]
    pub upstream_ms: u64,
}

/// A process's connection to the fleet: the client, its store and queue, and the job.
#[derive(Debug)]
pub struct Fleet {
    /// The client, on the Redis store and queue.
    pub cache: Cacheback,
    /// The store, for health checks.
    pub store: RedisStore,
    /// The queue, for its consumer name and stream lengths.
    pub queue: RedisQueue,
    /// The job, registered with `cache`.
    pub tweets: JobHandle<UserTweets>,
}

impl FleetArgs {
    /// The job, with this process's lifetime and upstream delay.
    pub fn job(&self) -> UserTweets {
        UserTweets {
            lifetime: Duration::from_secs(self.lifetime_secs),
            upstream: Duration::from_millis(self.upstream_ms),
        }
    }

    /// Connects to the shared Redis and registers the job. `queue` adds a role's own queue
    /// options (a worker's streams and visibility timeout); the prefix is set after it, from
    /// the one setting the store's client uses too, so the two cannot differ.
    pub fn connect(
        &self,
        queue: impl FnOnce(RedisQueueBuilder) -> RedisQueueBuilder,
    ) -> cacheback::Result<Fleet> {
        let store = RedisStore::builder(&self.redis_url)
            .command_timeout(COMMAND_TIMEOUT)
            .build()?;
        let queue = queue(RedisQueue::builder(&self.redis_url).command_timeout(COMMAND_TIMEOUT))
            .prefix(&self.prefix)
            .build()?;
        let cache = Cacheback::builder()
            .prefix(&self.prefix)
            .store(store.clone())
            .queue(queue.clone())
            // Per-job counts for `cacheback top` and `cacheback dashboard`, published by the
            // web processes (see `fleet_web`).
            .fleet_stats(true)
            .build()?;
        let tweets = cache.try_job(self.job())?;
        Ok(Fleet {
            cache,
            store,
            queue,
            tweets,
        })
    }
}

/// Logs to stderr: `RUST_LOG` if set, else `default` (e.g. `"cacheback=info"`).
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what a process manager sends).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
