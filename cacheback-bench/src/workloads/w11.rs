//! W11, the HTTP layer: an axum handler that takes 50 ms, behind a cache, served over loopback
//! HTTP/1.1 to 64 keep-alive clients reading 1,000 URLs with Zipf(1.1) popularity for 20 s. The
//! handler answers `Cache-Control: max-age=2, stale-while-revalidate=60`.
//!
//! Subjects, each on a server of its own (a fresh cache) in the same process run:
//! - **no cache**: the handler alone (the baseline);
//! - **cacheback**: `CachebackLayer` on the memory store (in-process worker of 64), and on
//!   `RedisStore` + `RedisQueue` (the same worker in this process);
//! - **hitbox**: `hitbox_tower::Cache` on its moka backend, and on its Redis backend
//!   (`hitbox_redis::RedisBackend`, against the same `redis-server` as cacheback's Redis row),
//!   configured as the header says: stale after 2 s, kept 62 s, `StalePolicy::OffloadRevalidate`
//!   (background revalidation by an `OffloadManager`), dogpile prevention with a
//!   `BroadcastConcurrencyManager` of 1;
//! - **http-cache-tower-server**: `ServerCacheLayer` on its moka manager (no stale serving: a
//!   stale entry calls the handler).
//!
//! *Origin calls per stale event*: the handler's calls per URL, grouped as in W4 (a call more
//! than half the max-age after its group's first starts a new group; a URL's first call, its
//! miss, is a group too).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::report::{self, Baseline, Record};
use crate::stats;
use crate::value::Fetcher;
use crate::workloads::{Ctx, Scale, runtime, w4};
use crate::zipf::Zipf;

/// URLs the clients read.
const URLS: usize = 1_000;
/// Concurrent keep-alive clients.
const CLIENTS: usize = 64;
/// How long the handler takes.
const HANDLER: Duration = Duration::from_millis(50);
/// What the handler says of its responses.
const CACHE_CONTROL: &str = "max-age=2, stale-while-revalidate=60";
/// The max-age above.
const MAX_AGE: Duration = Duration::from_secs(2);
/// The stale-while-revalidate above.
const SWR: Duration = Duration::from_secs(60);
/// Refreshes the in-process worker runs at once: 1,000 URLs going stale every 2 s with a 50 ms
/// handler need about 25 in flight; 64 leaves room for bursts.
const WORKER_CONCURRENCY: usize = 64;

/// The run length of a scale.
fn duration(scale: Scale) -> Duration {
    scale.pick(Duration::from_secs(20), Duration::from_secs(2))
}

/// The handler: 50 ms of work (through the shared [`Fetcher`], which counts and logs the
/// calls), then the value as JSON with the workload's `Cache-Control`.
async fn item(State(origin): State<Arc<Fetcher>>, Path(id): Path<u64>) -> impl IntoResponse {
    let value = origin.fetch(id).await;
    (
        [(http::header::CACHE_CONTROL, CACHE_CONTROL)],
        axum::Json(value),
    )
}

/// The routes of the origin, on `origin`.
fn routes(origin: &Arc<Fetcher>) -> Router {
    Router::new()
        .route("/item/{id}", get(item))
        .with_state(Arc::clone(origin))
}

/// A subject of W11: how it is named and described, and how its app is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    NoCache,
    Cacheback,
    Hitbox,
    HttpCacheServer,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::NoCache => "no cache",
            Subject::Cacheback => "cacheback",
            Subject::Hitbox => "hitbox",
            Subject::HttpCacheServer => "http-cache-tower-server",
        }
    }

    fn describe(self, redis: bool) -> &'static str {
        match (self, redis) {
            (Subject::NoCache, _) => "the axum handler alone",
            (Subject::Cacheback, false) => {
                "CachebackLayer (route_layer), MemoryStore + LocalQueue + in-process worker of 64"
            }
            (Subject::Cacheback, true) => {
                "CachebackLayer (route_layer), RedisStore + RedisQueue + in-process worker of 64"
            }
            (Subject::Hitbox, false) => {
                "hitbox_tower::Cache (layer), MokaBackend; Method + Path extractors; stale 2 s, ttl 62 s, StalePolicy::OffloadRevalidate with an OffloadManager, BroadcastConcurrencyManager limit 1"
            }
            (Subject::Hitbox, true) => {
                "hitbox_tower::Cache (layer), hitbox_redis::RedisBackend (one multiplexed ConnectionManager; HMGET + PTTL per read; Bincode values, Bitcode keys, no compression); Method + Path extractors; stale 2 s, ttl 62 s, StalePolicy::OffloadRevalidate with an OffloadManager, BroadcastConcurrencyManager limit 1"
            }
            (Subject::HttpCacheServer, _) => {
                "http_cache_tower_server::ServerCacheLayer (layer), MokaManager, DefaultKeyer; honours max-age, serves no stale response"
            }
        }
    }
}

/// A server of one subject on loopback, stopped when dropped.
struct Server {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The cacheback client behind the layer, shut down after the run.
    client: Option<cacheback::Cacheback>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `app` on a free loopback port.
async fn serve(app: Router, client: Option<cacheback::Cacheback>) -> Result<Server, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(Server {
        addr,
        stop: Some(stop),
        client,
    })
}

/// A cacheback layer over the routes on `client`, as the layer's docs show it.
fn cacheback_app(client: &cacheback::Cacheback, origin: &Arc<Fetcher>) -> Result<Router, String> {
    let layer = cacheback::http::CachebackLayer::builder(client)
        .name("w11")
        .build(routes(origin))
        .map_err(|e| e.to_string())?;
    Ok(routes(origin).route_layer(layer))
}

/// The app of `subject` on the memory (or, for cacheback and hitbox, Redis at `redis`) store.
async fn app(
    subject: Subject,
    origin: &Arc<Fetcher>,
    redis: Option<&str>,
) -> Result<(Router, Option<cacheback::Cacheback>), String> {
    let workers = cacheback::WorkerOptions::default().concurrency(WORKER_CONCURRENCY);
    match subject {
        Subject::NoCache => Ok((routes(origin), None)),
        Subject::Cacheback => {
            let builder = cacheback::Cacheback::builder().worker_options(workers);
            let client = match redis {
                None => builder.build(),
                #[cfg(feature = "redis")]
                Some(url) => {
                    let prefix = format!("w11-{}", std::process::id());
                    let queue = cacheback::RedisQueue::builder(url)
                        .prefix(&prefix)
                        .build()
                        .map_err(|e| e.to_string())?;
                    // A Redis queue is drained by worker processes; this run's worker is
                    // the in-process one, asked for (it starts by itself on local queues only).
                    builder
                        .prefix(&prefix)
                        .store(cacheback::RedisStore::from_url(url).map_err(|e| e.to_string())?)
                        .queue(queue)
                        .in_process_worker(true)
                        .build()
                }
                #[cfg(not(feature = "redis"))]
                Some(_) => return Err("built without the redis feature".to_owned()),
            }
            .map_err(|e| e.to_string())?;
            Ok((cacheback_app(&client, origin)?, Some(client)))
        }
        Subject::Hitbox => match redis {
            None => {
                let backend = hitbox_moka::MokaBackend::builder()
                    .max_entries(10_000)
                    .build();
                Ok((with_hitbox(routes(origin), backend), None))
            }
            #[cfg(feature = "redis")]
            Some(url) => {
                // The backend's defaults, which its docs recommend for production: Bincode
                // values, Bitcode keys, no compression (the bodies are ~100 bytes).
                let backend = hitbox_redis::RedisBackend::builder()
                    .connection(hitbox_redis::ConnectionMode::single(url))
                    .build()
                    .map_err(|e| e.to_string())?;
                Ok((with_hitbox(routes(origin), backend), None))
            }
            #[cfg(not(feature = "redis"))]
            Some(_) => Err("built without the redis feature".to_owned()),
        },
        Subject::HttpCacheServer => {
            let manager = http_cache::MokaManager::default();
            let layer = http_cache_tower_server::ServerCacheLayer::new(manager);
            // Its service fails with a boxed error, which axum asks to be turned into a
            // response.
            let errors =
                axum::error_handling::HandleErrorLayer::new(|e: cacheback::BoxError| async move {
                    (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                });
            let layer = tower_layer::Stack::new(layer, errors);
            Ok((routes(origin).layer(layer), None))
        }
    }
}

/// `router` behind hitbox's layer on `backend`, configured for what the handler's
/// `Cache-Control` says (hitbox takes its lifetimes from its configuration, not from the
/// response).
fn with_hitbox<B>(router: Router, backend: B) -> Router
where
    B: hitbox::backend::CacheBackend + Clone + Send + Sync + 'static,
{
    use axum::body::Body;
    use hitbox::concurrency::BroadcastConcurrencyManager;
    use hitbox::offload::OffloadManager;
    use hitbox::policy::{ConcurrencyLimit, PolicyConfig, StalePolicy};
    use hitbox_http::extractors::path::PathExtractor;
    use hitbox_http::extractors::{Method, NeutralExtractor};
    use hitbox_http::predicates::{NeutralRequestPredicate, NeutralResponsePredicate};

    let config = hitbox::Config::builder()
        .request_predicate(NeutralRequestPredicate::<Body>::new())
        .response_predicate(NeutralResponsePredicate::<Body>::new())
        .extractor(Method::<NeutralExtractor<Body>>::new().path("/item/{id}"))
        .policy(
            PolicyConfig::builder()
                .stale(MAX_AGE)
                .ttl(MAX_AGE + SWR)
                .stale_policy(StalePolicy::OffloadRevalidate)
                .concurrency(ConcurrencyLimit::new(1).expect("1 is in 1..=255"))
                .build(),
        )
        .build();
    let layer = hitbox_tower::Cache::builder()
        .backend(backend)
        .config(config)
        .concurrency_manager(BroadcastConcurrencyManager::new())
        .offload(OffloadManager::with_defaults())
        .build();
    router.layer(layer)
}

/// What the clients of one run saw.
#[derive(Debug)]
struct Seen {
    hist: Histogram<u64>,
    requests: u64,
    /// Responses other than 200, and failed requests.
    errors: u64,
    /// Responses by what the cache said of them: `hit`, `stale`, `miss`, `none` (no header).
    statuses: HashMap<&'static str, u64>,
    elapsed_s: f64,
}

/// Sorts a response by its cache-status header, whatever the subject calls it.
fn classify(response: &http::Response<hyper::body::Incoming>) -> &'static str {
    let headers = response.headers();
    let Some(value) = ["cache-status", "x-cache-status", "x-cache"]
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| v.to_str().ok())
    else {
        return "none";
    };
    let v = value.to_ascii_lowercase();
    if v.contains("stale") {
        "stale"
    } else if v.contains("fwd=") || v.contains("miss") {
        "miss"
    } else if v.contains("hit") {
        "hit"
    } else {
        "other"
    }
}

/// One client: a keep-alive HTTP/1.1 connection reading Zipf-chosen URLs until `deadline`.
async fn client(
    addr: std::net::SocketAddr,
    zipf: Arc<Zipf>,
    seed: u64,
    deadline: Instant,
) -> Result<Seen, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut seen = Seen {
        hist: stats::latency_histogram(),
        requests: 0,
        errors: 0,
        statuses: HashMap::new(),
        elapsed_s: 0.0,
    };
    while Instant::now() < deadline {
        let id = zipf.sample(&mut rng);
        let request = http::Request::get(format!("/item/{id}"))
            .header(http::header::HOST, "127.0.0.1")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        sender.ready().await.map_err(|e| e.to_string())?;
        let answered = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                let class = classify(&response);
                let body = response.into_body().collect().await;
                (status == http::StatusCode::OK && body.is_ok()).then_some(class)
            }
            Err(_) => None,
        };
        stats::record(&mut seen.hist, t.elapsed());
        seen.requests += 1;
        match answered {
            Some(class) => *seen.statuses.entry(class).or_default() += 1,
            None => seen.errors += 1,
        }
    }
    Ok(seen)
}

/// 64 clients against the server at `addr` for `length`; what they saw together.
async fn load(addr: std::net::SocketAddr, length: Duration) -> Result<Seen, String> {
    let zipf = Arc::new(Zipf::new(URLS, w4::ZIPF_S));
    let start = Instant::now();
    let deadline = start + length;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(addr, Arc::clone(&zipf), 0x5EED + i as u64, deadline)))
        .collect();
    let mut all = Seen {
        hist: stats::latency_histogram(),
        requests: 0,
        errors: 0,
        statuses: HashMap::new(),
        elapsed_s: 0.0,
    };
    for c in clients {
        let seen = c.await.map_err(|e| e.to_string())??;
        stats::merge(&mut all.hist, &seen.hist);
        all.requests += seen.requests;
        all.errors += seen.errors;
        for (k, v) in seen.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
    }
    all.elapsed_s = start.elapsed().as_secs_f64();
    Ok(all)
}

/// Runs one subject for `length` on a fresh server; its record.
async fn measure(
    subject: Subject,
    redis: Option<&str>,
    length: Duration,
    variant: &str,
) -> Result<Record, String> {
    let origin = Fetcher::new(HANDLER);
    let (app, client) = app(subject, &origin, redis).await?;
    let server = serve(app, client).await?;
    let seen = load(server.addr, length).await?;
    let log = origin.log();
    if let Some(client) = &server.client {
        client.shutdown(Duration::from_secs(5)).await;
    }
    drop(server);
    let events = w4::refresh_events(&log, MAX_AGE / 2);
    let calls = log.len() as f64;
    let per_event = if events == 0 {
        0.0
    } else {
        calls / events as f64
    };
    let rate = seen.requests as f64 / seen.elapsed_s;
    let mut r = Record::new("W11", variant, subject.name())
        .param("urls", URLS as u64)
        .param("zipf_s", w4::ZIPF_S)
        .param("clients", CLIENTS as u64)
        .param("handler_ms", HANDLER.as_millis() as u64)
        .param("cache_control", CACHE_CONTROL)
        .param("duration_s", length.as_secs_f64())
        .param(
            "transport",
            "HTTP/1.1 keep-alive over loopback (hyper client, axum::serve)",
        )
        .param("what_it_does", subject.describe(redis.is_some()));
    r.figure("requests", seen.requests);
    r.figure("requests_per_sec", stats::round3(rate));
    r.figure("latency", stats::latency_figures(&seen.hist));
    r.figure("errors", seen.errors);
    r.figure("origin_calls", log.len() as u64);
    r.figure("stale_events", events as u64);
    r.figure("origin_calls_per_stale_event", stats::round3(per_event));
    r.figure("cache_status", json!(seen.statuses));
    let share =
        |k: &str| 100.0 * *seen.statuses.get(k).unwrap_or(&0) as f64 / seen.requests.max(1) as f64;
    r.summary = format!(
        "{}; p50 {}, p99 {}; {} origin calls, {:.2}/stale event; hit {:.1}%, stale {:.1}%, miss {:.1}%; errors {}",
        report::rate(rate),
        report::micros(stats::ns_to_us(seen.hist.value_at_quantile(0.5))),
        report::micros(stats::ns_to_us(seen.hist.value_at_quantile(0.99))),
        log.len(),
        per_event,
        share("hit"),
        share("stale"),
        share("miss"),
        seen.errors,
    );
    r.latencies = Some(seen.hist);
    Ok(r)
}

/// The subjects measured on memory; cacheback and hitbox on Redis.
const MEMORY_SUBJECTS: [Subject; 4] = [
    Subject::NoCache,
    Subject::Cacheback,
    Subject::Hitbox,
    Subject::HttpCacheServer,
];

/// Sets every cache subject's same-run ratio to the no-cache baseline.
fn with_baseline(records: &mut [Record]) {
    let Some(base) = records
        .iter()
        .find(|r| r.subject == Subject::NoCache.name())
        .cloned()
    else {
        return;
    };
    let Some(base_rate) = base.number("requests_per_sec") else {
        return;
    };
    for r in records.iter_mut().filter(|r| r.subject != base.subject) {
        let Some(rate) = r.number("requests_per_sec") else {
            continue;
        };
        r.baseline = Some(Baseline {
            name: "the same handler without a cache, same run".to_owned(),
            figures: base.figures.clone(),
            ratio: stats::round3(rate / base_rate),
            ratio_of: "requests/s, subject ÷ no cache".to_owned(),
        });
    }
}

/// W11 on memory: every subject, one after the other.
pub(crate) fn memory(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let rt = runtime();
    let length = duration(ctx.scale);
    let mut records = Vec::new();
    for subject in MEMORY_SUBJECTS {
        records.push(rt.block_on(measure(subject, None, length, "memory"))?);
    }
    with_baseline(&mut records);
    Ok(records)
}

/// W11 with cacheback on Redis, next to the handler alone and hitbox on the same Redis in the
/// same run.
#[cfg(feature = "redis")]
pub(crate) fn redis(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let url = ctx.redis()?.url();
    let rt = runtime();
    let length = duration(ctx.scale);
    let mut records = vec![
        rt.block_on(measure(Subject::NoCache, None, length, "Redis"))?,
        rt.block_on(measure(Subject::Cacheback, Some(&url), length, "Redis"))?,
        rt.block_on(measure(Subject::Hitbox, Some(&url), length, "Redis"))?,
    ];
    with_baseline(&mut records);
    Ok(records)
}
