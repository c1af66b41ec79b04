//! # The tweets demo: cacheback in 20 seconds
//!
//! Run with: `cargo run --release -p cacheback-examples --bin tweets`
//!
//! It replays the story of the original django-async-cache README. A web page shows a user's
//! tweets, and the upstream call `fetch_user_tweets(user)` takes 3 s. The call is wrapped in a
//! `cacheback` [`Job`](cacheback::Job) named `user_tweets` (the Rust form of the seed's
//! `class UserTweets(AsyncCacheJob)`), so every request is answered from the cache and the slow
//! call only runs in the background:
//!
//! 1. the first request for a user is a **miss**: it gets an empty list at once, and one
//!    background fetch starts (`fetch_on_miss = false`, as in the seed);
//! 2. requests made while that fetch runs are misses too, and start **no second fetch** (the
//!    claim);
//! 3. once the fetch lands, requests are **hits**, served in microseconds;
//! 4. once the value is older than its `lifetime` it is **stale**: a burst of concurrent
//!    requests all get the stale tweets at once while **exactly one** refresh runs;
//! 5. when the refresh lands the next request sees newer tweets (**refreshed**), then hits.
//!
//! It runs on the embedded defaults (in-memory store, in-process refresh worker): no server to
//! install. It starts an axum server on `127.0.0.1` (a free port unless `--port`) with
//! `GET /tweets/{user}`, drives it with a real HTTP client over loopback, and prints one table
//! row per request. Responses carry `x-cache` (`hit`, `stale`, `miss`), `age` (seconds, as in
//! HTTP), `x-upstream-calls` and `x-refresh-triggered` headers.
//!
//! `--serve` keeps the server up after the script, for `curl`, until Ctrl-C. Set `RUST_LOG`
//! (e.g. `RUST_LOG=cacheback=debug,tweets=info`) to see the library's logs on stderr.
//!
//! Where the parts are: `upstream.rs` (the slow call and the job), `server.rs` (the axum
//! server), `client.rs` (the HTTP client), `story.rs` (the five chapters, read this one
//! first), `script.rs` (sending requests and printing rows), `table.rs` (the table and the
//! summary); this file has the command line.

mod client;
mod script;
mod server;
mod story;
mod table;
mod upstream;

#[cfg(test)]
mod tests;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::script::Script;
use crate::server::{ServerConfig, start_server};
use crate::story::ScriptConfig;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// cacheback demo: a slow "tweets" endpoint served entirely from cache.
#[derive(Debug, Parser)]
#[command(name = "tweets")]
struct Cli {
    /// Port to listen on, on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// How long fetched tweets stay fresh (e.g. 5s, 1500ms).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    lifetime: Duration,
    /// How long the fake upstream fetch_user_tweets() takes.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    upstream_delay: Duration,
    /// How many concurrent requests hit the stale value.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=500))]
    burst: u16,
    /// The user whose tweets the script reads.
    #[arg(long, default_value = "alice", value_parser = parse_user)]
    user: String,
    /// Keep serving after the script, until Ctrl-C.
    #[arg(long)]
    serve: bool,
}

/// A user name that fits in a URL path segment as is.
fn parse_user(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(text.to_owned())
    } else {
        Err("use 1 to 64 ASCII letters, digits, `_`, `-` or `.`".to_owned())
    }
}

/// A duration as humantime reads it (`5s`, `500ms`, `1m 30s`), or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration (try 5s or 500ms): {e}"))
}

fn init_logging() {
    // Quiet by default so the table stays readable; RUST_LOG turns logs on (stderr).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let server = start_server(ServerConfig {
        port: cli.port,
        upstream_delay: cli.upstream_delay,
        lifetime: cli.lifetime,
    })
    .await?;
    let config = ScriptConfig {
        upstream_delay: cli.upstream_delay,
        lifetime: cli.lifetime,
        burst: usize::from(cli.burst),
    };
    let finished = tokio::select! {
        result = story::tell(Script::new(&server, &cli.user), &config) => result.map(|_| true),
        _ = tokio::signal::ctrl_c() => Ok(false),
    };
    match finished {
        Err(error) => {
            server.shutdown().await;
            return Err(error);
        }
        Ok(true) if cli.serve => {
            println!();
            println!("Serving on http://{} — try:", server.addr);
            let url = format!("http://{}/tweets/bob", server.addr);
            println!("  curl -i {url}   # miss: [] at once, one refresh queued");
            println!(
                "  sleep {}; curl -i {url}   # hit",
                cli.upstream_delay.as_secs_f64().ceil()
            );
            println!("Press Ctrl-C to stop.");
            if let Err(error) = tokio::signal::ctrl_c().await {
                eprintln!("cannot listen for Ctrl-C ({error}); stopping now");
            }
            println!("shutting down…");
        }
        Ok(true) => {
            println!();
            println!(
                "Add --serve to keep the server running and try it with curl; RUST_LOG=info shows \
                 the logs."
            );
        }
        Ok(false) => {}
    }
    server.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the Tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
