//! The web server of the demo: `GET /tweets/{user}` answered from the cache, with headers that
//! tell the script how each answer was made.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cacheback::{Cacheback, JobHandle};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::BoxError;
use crate::upstream::{Tweet, Upstream, UserTweets};

/// What the server is built from (the test passes a short delay and lifetime).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerConfig {
    pub(crate) port: u16,
    pub(crate) upstream_delay: Duration,
    pub(crate) lifetime: Duration,
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
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    cache: Cacheback,
    pub(crate) tweets: JobHandle<UserTweets>,
    pub(crate) upstream: Arc<Upstream>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Builds the cache client, registers the job and starts serving `GET /tweets/{user}` on
/// `127.0.0.1:{port}` (port 0: a free one).
pub(crate) async fn start_server(config: ServerConfig) -> Result<Server, BoxError> {
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
    pub(crate) async fn shutdown(self) {
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
