//! The client side: a real HTTP client over loopback, reading the cache headers of each reply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::Barrier;

use crate::BoxError;
use crate::upstream::Tweet;

pub(crate) type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub(crate) fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

#[derive(Deserialize)]
struct TweetsReply {
    tweets: Vec<Tweet>,
}

/// One response, as a client sees it.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) cache: String,
    pub(crate) age: Option<u64>,
    pub(crate) upstream_calls: usize,
    pub(crate) refresh_triggered: bool,
    pub(crate) tweets: Vec<Tweet>,
    pub(crate) latency: Duration,
}

impl Reply {
    pub(crate) fn fetched_at_ms(&self) -> Option<u64> {
        self.tweets.first().map(|t| t.fetched_at_ms)
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `GET url`, timed from sending the request to having read the whole body.
pub(crate) async fn fetch(client: &HttpClient, url: &str) -> Result<Reply, BoxError> {
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

/// `n` GETs of `url` released at the same instant.
pub(crate) async fn fetch_all_at_once(
    client: &HttpClient,
    url: &str,
    n: usize,
) -> Result<Vec<Reply>, BoxError> {
    all_at_once(n, || {
        let (client, url) = (client.clone(), url.to_owned());
        async move { fetch(&client, &url).await }
    })
    .await
}

/// Runs `n` futures made by `make`, released at the same instant (a barrier); their results in
/// the order they finished.
pub(crate) async fn all_at_once<T, Fut>(
    n: usize,
    make: impl Fn() -> Fut,
) -> Result<Vec<T>, BoxError>
where
    T: Send + 'static,
    Fut: Future<Output = Result<T, BoxError>> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (barrier, request) = (barrier.clone(), make());
        tasks.spawn(async move {
            barrier.wait().await;
            request.await
        });
    }
    let mut results = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        results.push(joined??);
    }
    Ok(results)
}
