//! # Fleet demo, worker side: a refresh worker process of a split deployment
//!
//! Run with (see `fleet_web.rs` for the whole scenario):
//!
//! ```text
//! cargo run --release -p cacheback-examples --bin fleet_worker
//! cargo run --release -p cacheback-examples --bin fleet_worker -- --redis-url redis://127.0.0.1:6380 --concurrency 64
//! ```
//!
//! It drains the refresh queue (a Redis Stream, consumer group `cacheback-workers`) that the
//! `fleet_web` processes fill, runs each refresh (the slow upstream call) and writes the result
//! to the shared store; every web process then serves it. Start several: each refresh runs on
//! exactly one of them. `kill -9` one in the middle of a refresh: another takes the refresh over
//! after `--visibility-secs`. Ctrl-C or SIGTERM stops it gracefully: it takes no new work and
//! lets in-flight refreshes finish (up to 30 s); the rest is redelivered to the other workers.
//!
//! Every 5 s it prints its health (what a readiness probe would check): last queue poll,
//! refreshes in flight, processed and dead-lettered counts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cacheback::{Cacheback, Job, Policy, RedisQueue, RedisStore, Worker, WorkerOptions};
use clap::Parser;
use serde::{Deserialize, Serialize};

/// A worker process of the fleet demo.
#[derive(Debug, Parser)]
struct Args {
    /// The shared Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Key prefix isolating the demo in a shared Redis (the web processes must use the same).
    #[arg(long, default_value = "cacheback-example-fleet")]
    prefix: String,
    /// Refreshes run at the same time.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The queues (streams) this worker drains.
    #[arg(long, default_value = "default", value_delimiter = ',')]
    queues: Vec<String>,
    /// An unacknowledged refresh (its worker died) is taken over after this long.
    #[arg(long, default_value_t = 30)]
    visibility_secs: u64,
    /// How long fetched tweets stay fresh (must match the web processes).
    #[arg(long, default_value_t = 10)]
    lifetime_secs: u64,
    /// How long the fake upstream takes.
    #[arg(long, default_value_t = 2000)]
    upstream_ms: u64,
}

// The job: the same name, args and value types as in `fleet_web.rs`.

/// One fake tweet.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tweet {
    text: String,
    fetched_at_ms: u64,
    fetched_by_pid: u32,
}

struct UserTweets {
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
        tokio::time::sleep(self.upstream).await;
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

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "cacheback=info,fleet_worker=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let store = RedisStore::from_url(&args.redis_url)?;
    let queue = RedisQueue::builder(&args.redis_url)
        .prefix(args.prefix.clone())
        .queues(args.queues.clone())
        .visibility_timeout(Duration::from_secs(args.visibility_secs))
        .build()?;
    let consumer = queue.consumer().to_owned();
    let cache = Cacheback::builder()
        .prefix(args.prefix.clone())
        .store(store)
        .queue(queue)
        .build()?;
    cache.job(UserTweets {
        lifetime: Duration::from_secs(args.lifetime_secs),
        upstream: Duration::from_millis(args.upstream_ms),
    });
    let worker = Worker::builder(&cache)
        .options(
            WorkerOptions::default()
                .concurrency(args.concurrency)
                .drain_timeout(Duration::from_secs(30)),
        )
        .build()?;
    let health = worker.health();
    eprintln!(
        "fleet_worker (pid {}, consumer `{consumer}`) draining {:?} under prefix `{}`",
        std::process::id(),
        args.queues,
        args.prefix
    );
    let probe = tokio::spawn(async move {
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
    });
    let report = worker.run_until(shutdown_signal()).await;
    probe.abort();
    eprintln!("fleet_worker stopped: {report:?}");
    Ok(())
}
