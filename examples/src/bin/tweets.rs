//! # The tweets demo: cacheback in 20 seconds
//!
//! Run with: `cargo run --release -p cacheback-examples --bin tweets`
//!
//! It replays the story of the original django-async-cache README. A web page shows a user's
//! tweets, and the upstream call `fetch_user_tweets(user)` takes 3 s. The call is wrapped in a
//! `cacheback` [`Job`] named `user_tweets` (the Rust form of the seed's
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

use std::convert::Infallible;
use std::fmt;
use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cacheback::{Cacheback, Freshness, Job, JobHandle, Policy};
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::{Barrier, oneshot};
use tokio::task::JoinHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// The slow upstream and the job wrapping it
// ---------------------------------------------------------------------------------------------

/// One fake tweet. `fetched_at_ms` (Unix milliseconds) lets a reader tell versions apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Tweet {
    id: u64,
    text: String,
    fetched_at_ms: u64,
}

/// The fictional `twitter` library of the seed: slow, and counting its calls.
#[derive(Debug)]
struct Upstream {
    delay: Duration,
    calls: AtomicUsize,
}

impl Upstream {
    fn new(delay: Duration) -> Self {
        Upstream {
            delay,
            calls: AtomicUsize::new(0),
        }
    }

    /// How many times `fetch_user_tweets` has been called (counted when a call starts).
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The expensive read: takes `delay`, returns a few tweets stamped with the fetch time.
    async fn fetch_user_tweets(&self, user: &str) -> Vec<Tweet> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::info!(user, call, delay = ?self.delay, "upstream: fetch_user_tweets started");
        tokio::time::sleep(self.delay).await;
        let now = unix_millis();
        let stamp = clock_time(now);
        let texts = [
            "my service answers every read from cache now",
            "stale-while-revalidate is underrated",
            "nobody waited for this tweet",
        ];
        tracing::info!(user, call, "upstream: fetch_user_tweets done");
        texts
            .iter()
            .zip(1..)
            .map(|(text, n)| Tweet {
                id: call as u64 * 100 + n,
                text: format!("@{user}: {text} (fetched {stamp} UTC, upstream call #{call})"),
                fetched_at_ms: now,
            })
            .collect()
    }
}

/// The seed's `class UserTweets(AsyncCacheJob)`: `fetch` is the slow call, and the policy says
/// how long its result is fresh and that a miss must not wait for it.
#[derive(Debug)]
struct UserTweets {
    upstream: Arc<Upstream>,
    lifetime: Duration,
}

impl Job for UserTweets {
    type Args = String;
    type Value = Vec<Tweet>;
    type Error = Infallible;

    fn name(&self) -> &str {
        "user_tweets"
    }

    fn policy(&self) -> Policy {
        Policy::default()
            .lifetime(self.lifetime)
            // Like the seed: a miss returns an empty list at once and fetches in the background.
            .fetch_on_miss(false)
            .fetch_timeout(
                self.upstream
                    .delay
                    .saturating_mul(2)
                    .max(Duration::from_secs(30)),
            )
    }

    async fn fetch(&self, user: String) -> Result<Vec<Tweet>, Infallible> {
        Ok(self.upstream.fetch_user_tweets(&user).await)
    }
}

// ---------------------------------------------------------------------------------------------
// The web server
// ---------------------------------------------------------------------------------------------

/// What the server is built from (the test passes a short delay and lifetime).
#[derive(Debug, Clone, Copy)]
struct ServerConfig {
    port: u16,
    upstream_delay: Duration,
    lifetime: Duration,
}

#[derive(Clone)]
struct AppState {
    tweets: JobHandle<UserTweets>,
    upstream: Arc<Upstream>,
}

#[derive(Serialize)]
struct TweetsBody<'a> {
    user: &'a str,
    tweets: &'a [Tweet],
}

/// The view: `UserTweets.get(username)` of the seed, plus cache headers.
async fn show_tweets(State(app): State<AppState>, Path(user): Path<String>) -> Response {
    let lookup = match app.tweets.get_with_status(user.clone()).await {
        Ok(lookup) => lookup,
        Err(error) => {
            tracing::error!(%error, "reading the cache failed");
            let body = serde_json::json!({ "error": error.to_string() });
            return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
        }
    };
    let tweets = lookup.value.as_deref().map_or(&[][..], Vec::as_slice);
    let mut response = axum::Json(TweetsBody {
        user: &user,
        tweets,
    })
    .into_response();
    let headers = response.headers_mut();
    headers.insert("x-cache", HeaderValue::from_static(lookup.status.as_str()));
    if let Some(age) = lookup.age {
        headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
    }
    headers.insert("x-upstream-calls", HeaderValue::from(app.upstream.calls()));
    headers.insert(
        "x-refresh-triggered",
        HeaderValue::from_static(if lookup.refresh_triggered {
            "true"
        } else {
            "false"
        }),
    );
    response
}

async fn index() -> &'static str {
    "cacheback tweets demo: GET /tweets/{user}\n"
}

/// A running demo server and what the script needs to look at.
#[derive(Debug)]
struct Server {
    addr: SocketAddr,
    cache: Cacheback,
    tweets: JobHandle<UserTweets>,
    upstream: Arc<Upstream>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Builds the cache client, registers the job and starts serving `GET /tweets/{user}` on
/// `127.0.0.1:{port}` (port 0: a free one).
async fn start_server(config: ServerConfig) -> Result<Server, BoxError> {
    let upstream = Arc::new(Upstream::new(config.upstream_delay));
    // The embedded defaults: in-memory store, in-process queue and refresh worker.
    let cache = Cacheback::builder().build()?;
    let tweets = cache.try_job(UserTweets {
        upstream: Arc::clone(&upstream),
        lifetime: config.lifetime,
    })?;
    let app = Router::new()
        .route("/", get(index))
        .route("/tweets/{user}", get(show_tweets))
        .with_state(AppState {
            tweets: tweets.clone(),
            upstream: Arc::clone(&upstream),
        });
    let bind_to = SocketAddr::from((Ipv4Addr::LOCALHOST, config.port));
    let listener = tokio::net::TcpListener::bind(bind_to).await.map_err(|e| {
        format!("cannot listen on {bind_to}: {e} (pick another --port, or --port 0 for a free one)")
    })?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(Server {
        addr,
        cache,
        tweets,
        upstream,
        stop,
        task,
    })
}

impl Server {
    /// Stops accepting requests, finishes those in flight, then lets the cache's background
    /// refreshes finish (up to a deadline).
    async fn shutdown(self) {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => eprintln!("server error: {error}"),
            Ok(Err(error)) => eprintln!("server task failed: {error}"),
            Err(_) => eprintln!("server did not stop within 5 s"),
        }
        let report = self.cache.shutdown(Duration::from_secs(5)).await;
        if !report.drained {
            eprintln!("some background refreshes were still running at shutdown");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP client side
// ---------------------------------------------------------------------------------------------

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

#[derive(Deserialize)]
struct TweetsReply {
    tweets: Vec<Tweet>,
}

/// One response, as a client sees it.
#[derive(Debug, Clone)]
struct Reply {
    cache: String,
    age: Option<u64>,
    upstream_calls: usize,
    refresh_triggered: bool,
    tweets: Vec<Tweet>,
    latency: Duration,
}

impl Reply {
    fn fetched_at_ms(&self) -> Option<u64> {
        self.tweets.first().map(|t| t.fetched_at_ms)
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `GET url`, timed from sending the request to having read the whole body.
async fn fetch(client: &HttpClient, url: &str) -> Result<Reply, BoxError> {
    let uri: hyper::Uri = url.parse()?;
    let started = Instant::now();
    let response = client.get(uri).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    let latency = started.elapsed();
    if parts.status != StatusCode::OK {
        return Err(format!(
            "GET {url}: {} {}",
            parts.status,
            String::from_utf8_lossy(&body)
        )
        .into());
    }
    let reply: TweetsReply = serde_json::from_slice(&body)?;
    let headers = &parts.headers;
    Ok(Reply {
        cache: header_str(headers, "x-cache").unwrap_or("?").to_owned(),
        age: header_str(headers, "age").and_then(|v| v.parse().ok()),
        upstream_calls: header_str(headers, "x-upstream-calls")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        refresh_triggered: header_str(headers, "x-refresh-triggered") == Some("true"),
        tweets: reply.tweets,
        latency,
    })
}

// ---------------------------------------------------------------------------------------------
// The scripted tour
// ---------------------------------------------------------------------------------------------

/// What the script observed, for the summary (and the smoke test).
#[derive(Debug)]
struct Summary {
    requests: usize,
    upstream_calls: usize,
    latencies: Vec<Duration>,
    /// One label per request: `miss`, `hit`, `stale`, `refreshed`.
    statuses: Vec<String>,
}

/// Formats a latency the way a person reads it: µs, ms or s.
struct Latency(Duration);

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0.as_micros();
        let text = if micros < 1_000 {
            format!("{micros} µs")
        } else if micros < 1_000_000 {
            format!("{:.1} ms", self.0.as_secs_f64() * 1e3)
        } else {
            format!("{:.2} s", self.0.as_secs_f64())
        };
        f.pad(&text)
    }
}

/// A duration in seconds, briefly (`3 s`, `0.75 s`).
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = if self.0.subsec_millis() == 0 {
            format!("{} s", self.0.as_secs())
        } else {
            format!("{:.2} s", self.0.as_secs_f64())
        };
        f.pad(&text)
    }
}

/// One line of the table.
struct Row<'r> {
    number: &'r str,
    at: &'r str,
    request: &'r str,
    cache: &'r str,
    latency: &'r str,
    upstream: &'r str,
    age: &'r str,
    tweets: &'r str,
}

impl Row<'_> {
    fn print(&self) {
        println!(
            "{:>5}  {:>7}  {:<24}  {:<10}  {:>9}  {:>8}  {:>4}  {}",
            self.number,
            self.at,
            self.request,
            self.cache,
            self.latency,
            self.upstream,
            self.age,
            self.tweets
        );
    }
}

const RULE_WIDTH: usize = 100;

struct Script<'a> {
    server: &'a Server,
    client: HttpClient,
    url: String,
    user: String,
    started: Instant,
    started_unix_ms: u64,
    requests: usize,
    latencies: Vec<Duration>,
    statuses: Vec<String>,
    newest_seen: Option<u64>,
}

impl<'a> Script<'a> {
    fn new(server: &'a Server, user: &str) -> Self {
        Script {
            server,
            client: http_client(),
            url: format!("http://{}/tweets/{user}", server.addr),
            user: user.to_owned(),
            started: Instant::now(),
            started_unix_ms: unix_millis(),
            requests: 0,
            latencies: Vec::new(),
            statuses: Vec::new(),
            newest_seen: None,
        }
    }

    /// `hit`, `stale`, `miss` as the server said, or `refreshed` for a hit whose tweets are
    /// newer than any an earlier request saw (the background refresh landed).
    fn label(&mut self, reply: &Reply) -> String {
        let fetched = reply.fetched_at_ms();
        let newer = matches!((self.newest_seen, fetched), (Some(seen), Some(now)) if now > seen);
        if let Some(now) = fetched {
            self.newest_seen = Some(self.newest_seen.map_or(now, |seen| seen.max(now)));
        }
        if newer && reply.cache == "hit" {
            "refreshed".to_owned()
        } else {
            reply.cache.clone()
        }
    }

    /// The tweets served: how many, and when upstream produced them (seconds into the demo).
    fn tweets(&self, reply: &Reply) -> String {
        match reply.fetched_at_ms() {
            None => "none".to_owned(),
            Some(ms) => format!(
                "{}, fetched at {:.1} s",
                reply.tweets.len(),
                ms.saturating_sub(self.started_unix_ms) as f64 / 1e3
            ),
        }
    }

    fn at(&self) -> String {
        format!("{:.2} s", self.started.elapsed().as_secs_f64())
    }

    fn age(age: Option<u64>) -> String {
        age.map_or_else(|| "-".to_owned(), |a| format!("{a} s"))
    }

    fn step(&self, title: &str, explanation: &str) {
        println!();
        println!("  ▶ {title}");
        for line in explanation.lines() {
            println!("    {line}");
        }
    }

    fn note(&self, text: &str) {
        println!("    ⋯ {text}");
    }

    /// Opens `n` keep-alive connections (as browsers or a proxy would hold), so that the
    /// latencies in the table are the cache's, not TCP handshakes'. Not counted as requests.
    async fn open_connections(&self, n: usize) -> Result<(), BoxError> {
        let url = format!("http://{}/", self.server.addr);
        let barrier = Arc::new(Barrier::new(n));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (client, url, barrier) = (self.client.clone(), url.clone(), barrier.clone());
            tasks.spawn(async move {
                barrier.wait().await;
                let response = client.get(url.parse()?).await?;
                response.into_body().collect().await?;
                Ok::<_, BoxError>(())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined??;
        }
        Ok(())
    }

    /// One request, printed as one row.
    async fn request(&mut self, what: &str) -> Result<Reply, BoxError> {
        let at = self.at();
        let reply = fetch(&self.client, &self.url).await?;
        self.requests += 1;
        self.latencies.push(reply.latency);
        let label = self.label(&reply);
        let mut tweets = self.tweets(&reply);
        if reply.refresh_triggered {
            tweets.push_str("  ← queued a refresh");
        }
        Row {
            number: &self.requests.to_string(),
            at: &at,
            request: what,
            cache: &label,
            latency: &Latency(reply.latency).to_string(),
            upstream: &reply.upstream_calls.to_string(),
            age: &Self::age(reply.age),
            tweets: &tweets,
        }
        .print();
        self.statuses.push(label);
        Ok(reply)
    }

    /// `n` requests released at the same instant, printed as one row.
    async fn burst(&mut self, n: usize, what: &str) -> Result<Vec<Reply>, BoxError> {
        let at = self.at();
        let barrier = Arc::new(Barrier::new(n));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (client, url, barrier) = (self.client.clone(), self.url.clone(), barrier.clone());
            tasks.spawn(async move {
                barrier.wait().await;
                fetch(&client, &url).await
            });
        }
        let mut replies = Vec::with_capacity(n);
        while let Some(joined) = tasks.join_next().await {
            replies.push(joined??);
        }
        let first = self.requests + 1;
        self.requests += n;
        let mut labels: Vec<String> = Vec::with_capacity(n);
        for reply in &replies {
            self.latencies.push(reply.latency);
            labels.push(self.label(reply));
        }
        let slowest = replies.iter().map(|r| r.latency).max().unwrap_or_default();
        let upstream = replies.iter().map(|r| r.upstream_calls).max().unwrap_or(0);
        let age = replies.iter().filter_map(|r| r.age).max();
        let triggered = replies.iter().filter(|r| r.refresh_triggered).count();
        let tweets = replies
            .iter()
            .max_by_key(|r| r.fetched_at_ms())
            .map(|r| self.tweets(r))
            .unwrap_or_default();
        Row {
            number: &format!("{first}–{}", self.requests),
            at: &at,
            request: what,
            cache: &tally(&labels, " ×"),
            latency: &format!("≤ {}", Latency(slowest)),
            upstream: &upstream.to_string(),
            age: &Self::age(age),
            tweets: &tweets,
        }
        .print();
        println!(
            "{:>5}  {:>7}  {triggered} of the {n} queued the refresh; the others found it already \
             claimed",
            "", ""
        );
        self.statuses.extend(labels);
        Ok(replies)
    }

    /// Polls the cache itself (`peek`: no side effects, no upstream call) until `done` holds.
    async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(Option<&cacheback::Peek<Vec<Tweet>>>) -> bool,
    ) -> Result<Duration, BoxError> {
        let started = Instant::now();
        loop {
            let peek = self.server.tweets.peek(self.user.clone()).await?;
            if done(peek.as_ref()) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                return Err(format!("gave up waiting for {what} after {}", Secs(limit)).into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn run(mut self, config: &ScriptConfig) -> Result<Summary, BoxError> {
        let (delay, lifetime, burst) = (config.upstream_delay, config.lifetime, config.burst);
        let patience = delay.saturating_mul(3) + lifetime + Duration::from_secs(10);
        let user = self.user.clone();
        self.open_connections(burst).await?;

        println!(
            "cacheback demo: GET {}  (in-memory store, in-process refresh worker)",
            self.url
        );
        println!(
            "The upstream call fetch_user_tweets(\"{user}\") takes {}. Its result is fresh for {} \
             (lifetime),\nthen stale: still served at once while one background refresh replaces \
             it.",
            Secs(delay),
            Secs(lifetime),
        );
        println!();
        println!(
            "x-cache: the server's answer (\"refreshed\": a hit with newer tweets than any earlier \
             reply).\nlatency: measured by the client over keep-alive connections. upstream: calls \
             so far. age: Age header."
        );
        println!();
        Row {
            number: "#",
            at: "at",
            request: "request",
            cache: "x-cache",
            latency: "latency",
            upstream: "upstream",
            age: "age",
            tweets: "tweets served",
        }
        .print();
        println!("{}", "─".repeat(RULE_WIDTH));

        self.step(
            "1. Cold cache",
            &format!(
                "Nobody has asked for {user} yet: the reader gets an empty list at once, and ONE \
                 background\nfetch is queued (fetch_on_miss = false, like the original \
                 django-async-cache)."
            ),
        );
        self.request(&format!("first request for {user}")).await?;

        self.step(
            "2. While the fetch runs",
            &format!(
                "Readers still get an instant (empty) answer. The refresh claim stops them from \
                 queueing\na second {} fetch: upstream calls stay at 1.",
                Secs(delay)
            ),
        );
        for _ in 0..3 {
            tokio::time::sleep(delay / 4).await;
            self.request("while the fetch runs").await?;
        }
        let waited = self
            .wait_for("the background fetch", patience, |peek| {
                peek.is_some_and(|p| p.value.is_some())
            })
            .await?;
        self.note(&format!(
            "{} later the background fetch lands in the cache",
            Secs(waited)
        ));

        self.step(
            "3. Fresh hits",
            "Every read is now served from the cache, in microseconds, without calling upstream.",
        );
        self.request("after the fetch landed").await?;
        let before = self.request("again").await?;

        let fetched_at = self
            .server
            .tweets
            .peek(user.clone())
            .await?
            .map(|p| p.meta.fetched_at);
        let waited = self
            .wait_for("the tweets to go stale", patience, |peek| {
                peek.is_some_and(|p| p.freshness == Freshness::Stale)
            })
            .await?;
        self.note(&format!(
            "{} later the tweets are older than their {} lifetime: stale",
            Secs(waited),
            Secs(lifetime)
        ));

        self.step(
            &format!("4. Stale, and {burst} readers at once"),
            &format!(
                "All of them get the stale tweets immediately, and exactly ONE refresh runs in \
                 the background\n(upstream calls: {} → {}).",
                before.upstream_calls,
                before.upstream_calls + 1
            ),
        );
        self.burst(burst, &format!("{burst} at once")).await?;

        let waited = self
            .wait_for("the background refresh", patience, |peek| {
                peek.is_some_and(|p| Some(p.meta.fetched_at) != fetched_at)
            })
            .await?;
        self.note(&format!(
            "{} later the refresh lands; nobody waited for it",
            Secs(waited)
        ));

        self.step(
            "5. Refreshed",
            "The next reader gets the newer tweets, straight from the cache.",
        );
        self.request("after the refresh landed").await?;
        self.request("again").await?;

        let summary = Summary {
            requests: self.requests,
            upstream_calls: self.server.upstream.calls(),
            latencies: self.latencies,
            statuses: self.statuses,
        };
        summary.print(delay);
        Ok(summary)
    }
}

/// `"stale ×20"`, `"miss 4, hit 3"`: how many times each label occurs, in order of appearance.
fn tally(labels: &[String], separator: &str) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for label in labels {
        match counts.iter_mut().find(|(l, _)| l == label) {
            Some((_, count)) => *count += 1,
            None => counts.push((label, 1)),
        }
    }
    counts
        .iter()
        .map(|(label, count)| format!("{label}{separator}{count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Summary {
    fn print(&self, upstream_delay: Duration) {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
        let slowest = sorted.last().copied().unwrap_or_default();
        println!();
        println!("{}", "─".repeat(RULE_WIDTH));
        println!(
            "{} requests ({}): median latency {}, slowest {}.",
            self.requests,
            tally(&self.statuses, " "),
            Latency(median),
            Latency(slowest),
        );
        println!(
            "Upstream was called {} times. Without cacheback every request would have waited \
             {} and\nupstream would have been called {} times.",
            self.upstream_calls,
            Secs(upstream_delay),
            self.requests
        );
    }
}

/// The script's knobs (the smoke test shrinks them).
#[derive(Debug, Clone, Copy)]
struct ScriptConfig {
    upstream_delay: Duration,
    lifetime: Duration,
    burst: usize,
}

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

/// `5s`, `1.5s`, `500ms`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 5s or 500ms)"))?;
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("`{text}` is not a valid duration"))
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
        result = Script::new(&server, &cli.user).run(&config) => result.map(|_| true),
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

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
fn clock_time(unix_ms: u64) -> String {
    let secs = unix_ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_millis(5);
    const MAX_POLLS: usize = 400; // 2 s at most

    async fn server(delay_ms: u64, lifetime_ms: u64) -> Server {
        start_server(ServerConfig {
            port: 0,
            upstream_delay: Duration::from_millis(delay_ms),
            lifetime: Duration::from_millis(lifetime_ms),
        })
        .await
        .expect("server starts")
    }

    /// The script's key claims, checked on statuses and upstream call counts only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn miss_then_one_fetch_then_one_refresh_for_a_stale_burst() {
        let server = server(50, 400).await;
        let client = http_client();
        let url = format!("http://{}/tweets/alice", server.addr);

        // 1. Cold: a miss with empty tweets, answered without waiting for upstream.
        let first = fetch(&client, &url).await.expect("first request");
        assert_eq!(first.cache, "miss");
        assert!(first.tweets.is_empty());
        assert!(first.refresh_triggered);

        // 2 + 3. Poll until the background fetch lands: misses meanwhile start no fetch.
        let mut hit = None;
        for _ in 0..MAX_POLLS {
            let reply = fetch(&client, &url).await.expect("poll");
            assert!(reply.upstream_calls <= 1, "a miss started a second fetch");
            if reply.cache == "hit" {
                hit = Some(reply);
                break;
            }
            assert_eq!(reply.cache, "miss");
            assert!(
                !reply.refresh_triggered,
                "the claim must stop a second trigger"
            );
            tokio::time::sleep(POLL).await;
        }
        let hit = hit.expect("the background fetch lands");
        assert_eq!(hit.tweets.len(), 3);
        assert_eq!(server.upstream.calls(), 1);

        // 4. Wait (without side effects) until the value is stale, then a concurrent burst.
        let mut stale = false;
        for _ in 0..MAX_POLLS {
            let peek = server.tweets.peek("alice".to_owned()).await.expect("peek");
            if peek.is_some_and(|p| p.freshness == Freshness::Stale) {
                stale = true;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        assert!(stale, "the value goes stale after its lifetime");
        let burst = 20;
        let barrier = Arc::new(Barrier::new(burst));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..burst {
            let (client, url, barrier) = (client.clone(), url.clone(), barrier.clone());
            tasks.spawn(async move {
                barrier.wait().await;
                fetch(&client, &url).await
            });
        }
        let mut replies = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            replies.push(joined.expect("task").expect("burst request"));
        }
        assert!(
            replies
                .iter()
                .all(|r| (r.cache == "stale" || r.cache == "hit") && r.tweets.len() == 3),
            "every reader of a stale value is served a value: {replies:?}"
        );
        assert!(replies.iter().any(|r| r.cache == "stale"));
        assert_eq!(
            replies.iter().filter(|r| r.refresh_triggered).count(),
            1,
            "exactly one reader triggers the refresh"
        );

        // 5. Poll until the refresh lands: exactly one extra upstream call.
        let mut refreshed = None;
        for _ in 0..MAX_POLLS {
            let reply = fetch(&client, &url).await.expect("poll");
            if reply.cache == "hit" && reply.fetched_at_ms() > hit.fetched_at_ms() {
                refreshed = Some(reply);
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let refreshed = refreshed.expect("the refresh lands");
        assert_eq!(refreshed.upstream_calls, 2);
        assert_eq!(server.upstream.calls(), 2);
        server.shutdown().await;
    }

    /// The scripted tour itself runs to the end on short timings.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_script_runs_to_the_end() {
        let (delay, lifetime) = (Duration::from_millis(40), Duration::from_millis(300));
        let server = server(40, 300).await;
        let summary = Script::new(&server, "bob")
            .run(&ScriptConfig {
                upstream_delay: delay,
                lifetime,
                burst: 10,
            })
            .await
            .expect("script");
        assert_eq!(summary.requests, 18);
        assert_eq!(summary.upstream_calls, 2);
        assert_eq!(summary.statuses.first().map(String::as_str), Some("miss"));
        assert_eq!(
            summary.statuses.iter().rev().nth(1).map(String::as_str),
            Some("refreshed")
        );
        assert_eq!(summary.statuses.last().map(String::as_str), Some("hit"));
        server.shutdown().await;
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
