//! The service through real HTTP, on a database of its own (skipped loudly without a
//! PostgreSQL server, unless `CACHEBACK_REQUIRE_POSTGRES=1`).

use std::net::Ipv4Addr;
use std::time::Duration;

use axum::http::StatusCode;
use cacheback::Cacheback;
use cacheback::clock::TestClock;
use cacheback_examples::pg::Database;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::db::{self, Tweet};
use crate::routes;

struct Got {
    status: StatusCode,
    cache_status: String,
    body: String,
}

async fn service(clock: &TestClock) -> Option<(Database, impl AsyncFn(&str, &str) -> Got)> {
    let database = Database::create("service_test").await?;
    db::migrate(&database.pool).await.unwrap();
    let cache = Cacheback::builder().clock(clock.clone()).build().unwrap();
    let app = routes::app(&cache, database.pool.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send = async move |method: &str, path_and_body: &str| {
        let (path, body) = path_and_body.split_once(' ').unwrap_or((path_and_body, ""));
        let request = axum::http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status();
        let cache_status = response
            .headers()
            .get("cache-status")
            .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Got {
            status,
            cache_status,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    };
    Some((database, send))
}

/// Polls `check` (bounded) while a background refresh lands.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn tweets_are_read_through_the_job_and_a_write_invalidates_them() {
    let clock = TestClock::new();
    let Some((_database, send)) = service(&clock).await else {
        return;
    };
    let first = send("GET", "/tweets/alice").await;
    assert_eq!(
        (first.status, first.cache_status.as_str()),
        (StatusCode::OK, "cacheback; fwd=miss; stored")
    );
    let tweets: Vec<Tweet> = serde_json::from_str(&first.body).unwrap();
    assert_eq!(tweets[0].body, "hello, I am alice");
    assert_eq!(
        send("GET", "/tweets/alice").await.cache_status,
        "cacheback; hit"
    );

    assert_eq!(
        send("POST", "/tweets/alice second tweet").await.status,
        StatusCode::CREATED
    );
    eventually("the new tweet", async || {
        send("GET", "/tweets/alice")
            .await
            .body
            .contains("second tweet")
    })
    .await;
    let bob: Vec<Tweet> = serde_json::from_str(&send("GET", "/tweets/bob").await.body).unwrap();
    assert_eq!(bob.len(), 1, "a write invalidates its own user's key only");
}

#[tokio::test]
async fn the_timeline_page_is_cached_by_the_layer() {
    let clock = TestClock::new();
    let Some((_database, send)) = service(&clock).await else {
        return;
    };
    let first = send("GET", "/timeline/bob").await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(
        first.body.contains("<li>hello, I am bob</li>"),
        "{}",
        first.body
    );
    assert!(
        first.cache_status.contains("fwd=miss"),
        "{}",
        first.cache_status
    );
    assert_eq!(
        send("GET", "/timeline/bob").await.cache_status,
        "cacheback; hit; ttl=5"
    );

    clock.advance(Duration::from_secs(6));
    let stale = send("GET", "/timeline/bob").await;
    assert!(
        stale.cache_status.contains("stale-while-revalidate"),
        "{}",
        stale.cache_status
    );

    send("POST", "/tweets/bob <b>bold</b>").await;
    eventually("the page with the new tweet", async || {
        send("GET", "/timeline/bob")
            .await
            .body
            .contains("&lt;b&gt;bold&lt;/b&gt;")
    })
    .await;
}
