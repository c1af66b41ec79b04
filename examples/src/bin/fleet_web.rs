//! # Fleet demo, web side: a web process of a split deployment
//!
//! Run with (each in its own terminal; any Redis works, the defaults use the one on 6379 under
//! the prefix `cacheback-example-fleet` and never flush it):
//!
//! ```text
//! cargo run --release -p cacheback-examples --bin fleet_worker
//! cargo run --release -p cacheback-examples --bin fleet_web -- --port 3001
//! cargo run --release -p cacheback-examples --bin fleet_web -- --port 3002
//! for i in $(seq 30); do curl -s localhost:3001/tweets/alice; echo; curl -s localhost:3002/tweets/alice; echo; sleep 1; done
//! ```
//!
//! Options: `--redis-url redis://127.0.0.1:6380` (also `rediss://`, `redis://user:pass@host`,
//! `redis+unix:///path`), `--prefix`, `--lifetime-secs`, `--upstream-ms`.
//!
//! Any number of these web processes share one Redis: the store (entries, claims, failure
//! state) and the refresh queue (a Redis Stream). They never call the slow upstream
//! themselves: a miss answers an empty list at once, a stale read answers the stale tweets at
//! once, and in both cases exactly one refresh is enqueued for the whole fleet, which a
//! `fleet_worker` process runs. What you see, per request:
//!
//! - the first requests are `miss` with no tweets, on both web processes, and the worker logs
//!   **one** refresh;
//! - then `hit`s on both processes, with the same tweets (`fetched_by_pid` is the worker's pid);
//! - after `--lifetime-secs` (default 10), `stale` reads (same tweets, growing `age_ms`) while
//!   one refresh runs, then `hit`s with newer tweets;
//! - stop the worker: stale reads keep being served and refreshes pile up in the stream until
//!   a worker is back (`XLEN {cacheback-example-fleet:queue}:stream:default` shows them);
//! - stop Redis: reads are fetched in the web process (slowly: `--upstream-ms`) and answered
//!   anyway; start Redis again and everything recovers by itself.
//!
//! `GET /healthz` answers 200 when Redis answers.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cacheback::{Cacheback, Job, JobHandle, Policy, RedisQueue, RedisStore};
use clap::Parser;
use serde::{Deserialize, Serialize};

/// A web process of the fleet demo.
#[derive(Debug, Parser)]
struct Args {
    /// The shared Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Key prefix isolating the demo in a shared Redis (the worker must use the same).
    #[arg(long, default_value = "cacheback-example-fleet")]
    prefix: String,
    /// HTTP port on 127.0.0.1.
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// How long fetched tweets stay fresh.
    #[arg(long, default_value_t = 10)]
    lifetime_secs: u64,
    /// How long the fake upstream takes (only used here if the queue is down).
    #[arg(long, default_value_t = 2000)]
    upstream_ms: u64,
}

// The job: the same name, args and value types as in `fleet_worker.rs` (that is what ties the
// web processes and the workers together).

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

#[derive(Clone)]
struct App {
    tweets: JobHandle<UserTweets>,
    store: RedisStore,
}

#[derive(Serialize)]
struct Page {
    user: String,
    status: &'static str,
    age_ms: Option<u128>,
    refresh_triggered: bool,
    served_by_pid: u32,
    tweets: Vec<Tweet>,
}

async fn show_tweets(State(app): State<App>, Path(user): Path<String>) -> Response {
    match app.tweets.get_with_status(user.clone()).await {
        Ok(lookup) => {
            let page = Page {
                user,
                status: lookup.status.as_str(),
                age_ms: lookup.age.map(|a| a.as_millis()),
                refresh_triggered: lookup.refresh_triggered,
                served_by_pid: std::process::id(),
                tweets: lookup.value.map(|v| (*v).clone()).unwrap_or_default(),
            };
            let mut response = axum::Json(page).into_response();
            response
                .headers_mut()
                .insert("x-cache", HeaderValue::from_static(lookup.status.as_str()));
            if let Some(age) = lookup.age {
                response
                    .headers_mut()
                    .insert("age", HeaderValue::from(age.as_secs()));
            }
            response
        }
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}

async fn healthz(State(app): State<App>) -> Response {
    match app.store.ping().await {
        Ok(()) => "ok\n".into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "cacheback=info,fleet_web=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let store = RedisStore::builder(&args.redis_url)
        .command_timeout(Duration::from_millis(250))
        .build()?;
    // Web processes only enqueue: the worker processes drain the queue.
    let queue = RedisQueue::builder(&args.redis_url)
        .prefix(args.prefix.clone())
        .command_timeout(Duration::from_millis(250))
        .build()?;
    let cache = Cacheback::builder()
        .prefix(args.prefix.clone())
        .store(store.clone())
        .queue(queue)
        .build()?;
    let tweets = cache.job(UserTweets {
        lifetime: Duration::from_secs(args.lifetime_secs),
        upstream: Duration::from_millis(args.upstream_ms),
    });
    let app = Router::new()
        .route("/tweets/{user}", get(show_tweets))
        .route("/healthz", get(healthz))
        .with_state(App { tweets, store });
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "fleet_web (pid {}) on http://{addr}/tweets/alice, prefix `{}`",
        std::process::id(),
        args.prefix
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let report = cache.shutdown(Duration::from_secs(5)).await;
    eprintln!(
        "fleet_web stopped (background tasks drained: {})",
        report.drained
    );
    Ok(())
}
