//! # Fleet demo, web side: one of the web processes of a split deployment
//!
//! Run with: `cargo run -p cacheback-examples --bin fleet_web -- --port 3001`
//!
//! next to a `fleet_worker` on the same Redis (`CACHEBACK_REDIS_URL`, default
//! `redis://127.0.0.1:6379`) and prefix (`CACHEBACK_PREFIX`, default `fleet-demo`); the whole
//! scenario is in `src/fleet.rs`, with the job both processes share.
//!
//! A web process never calls the slow upstream while Redis is up: a miss answers an empty list
//! at once, a stale read the stale tweets, and either enqueues exactly one refresh for the
//! whole fleet, which a worker runs. `GET /healthz` answers 200 while Redis answers. It
//! publishes its counts for `cacheback dashboard` and `cacheback top` every 5 s.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cacheback::fleet_stats::StatsPublisher;
use cacheback_examples::fleet::{self, Fleet, FleetArgs, Tweet};
use clap::Parser;
use serde::Serialize;

/// A web process of the fleet demo.
#[derive(Debug, Parser)]
struct Args {
    /// HTTP port on 127.0.0.1.
    #[arg(long, default_value_t = 3000)]
    port: u16,
    #[command(flatten)]
    fleet: FleetArgs,
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

async fn show_tweets(State(app): State<Arc<Fleet>>, Path(user): Path<String>) -> Response {
    let lookup = match app.tweets.get_with_status(user.clone()).await {
        Ok(lookup) => lookup,
        Err(error) => return (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    };
    let status = lookup.status.as_str();
    let page = Page {
        user,
        status,
        age_ms: lookup.age.map(|a| a.as_millis()),
        refresh_triggered: lookup.refresh_triggered,
        served_by_pid: std::process::id(),
        tweets: lookup.value.map(|v| (*v).clone()).unwrap_or_default(),
    };
    let mut response = axum::Json(page).into_response();
    let headers = response.headers_mut();
    headers.insert("x-cache", HeaderValue::from_static(status));
    if let Some(age) = lookup.age {
        headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
    }
    response
}

async fn healthz(State(app): State<Arc<Fleet>>) -> Response {
    match app.store.ping().await {
        Ok(()) => "ok\n".into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    fleet::init_logging("cacheback=info,fleet_web=info");
    let args = Args::parse();
    // Web processes only enqueue refreshes; the default queue options suit them.
    let fleet = Arc::new(args.fleet.connect(|queue| queue)?);
    // This process's counts, for `cacheback top` and `cacheback dashboard` (every 5 s).
    let publisher = StatsPublisher::builder(&fleet.cache, &args.fleet.redis_url).build()?;
    let publishing = tokio::spawn(publisher.run_until(fleet::shutdown_signal()));
    let app = Router::new()
        .route("/tweets/{user}", get(show_tweets))
        .route("/healthz", get(healthz))
        .with_state(Arc::clone(&fleet));
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, args.port)).await?;
    let addr = listener.local_addr()?;
    let (pid, prefix) = (std::process::id(), &args.fleet.prefix);
    eprintln!("fleet_web (pid {pid}) on http://{addr}/tweets/alice, prefix `{prefix}`");
    axum::serve(listener, app)
        .with_graceful_shutdown(fleet::shutdown_signal())
        .await?;
    let _ = publishing.await;
    let report = fleet.cache.shutdown(Duration::from_secs(5)).await;
    eprintln!("fleet_web stopped: {report:?}");
    Ok(())
}
