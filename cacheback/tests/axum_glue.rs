//! axum glue through real HTTP: a handler of three lines reads through a job and answers
//! with JSON, `Age` and `Cache-Status`; errors answer with a status and no internal detail.

mod http_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use cacheback::axum::CachedJson;
use cacheback::clock::TestClock;
use cacheback::{Cacheback, Job, JobHandle, Policy};
use http_support::{Client, serve};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Tweet {
    user: String,
    text: String,
}

struct UserTweets {
    failing: Arc<AtomicBool>,
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
            .lifetime(Duration::from_secs(10))
            .miss_backoff(false)
    }

    async fn fetch(&self, user: String) -> Result<Vec<Tweet>, std::io::Error> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("secret connection string in here"));
        }
        Ok(vec![Tweet {
            text: format!("hello from {user}"),
            user,
        }])
    }
}

async fn tweets(
    State(tweets): State<JobHandle<UserTweets>>,
    Path(user): Path<String>,
) -> CachedJson<Vec<Tweet>> {
    tweets.get_with_status(user).await.into()
}

#[tokio::test]
async fn a_job_read_is_json_with_age_and_cache_status_and_errors_leak_nothing() {
    let clock = TestClock::new();
    let cache = Cacheback::builder().clock(clock.clone()).build().unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    let job = cache.job(UserTweets {
        failing: Arc::clone(&failing),
    });
    let app = Router::new()
        .route("/tweets/{user}", get(tweets))
        .with_state(job);
    let client = Client::new(serve(app).await);

    let miss = client.get("/tweets/bob").await;
    assert_eq!(miss.status, StatusCode::OK);
    assert_eq!(miss.headers["content-type"], "application/json");
    assert_eq!(miss.cache_status(), "cacheback; fwd=miss; stored");
    assert_eq!(miss.age(), Some(0));
    let body: Vec<Tweet> = serde_json::from_slice(&miss.body).unwrap();
    assert_eq!(body[0].text, "hello from bob");

    clock.advance(Duration::from_secs(4));
    let hit = client.get("/tweets/bob").await;
    assert_eq!((hit.cache_status(), hit.age()), ("cacheback; hit", Some(4)));

    clock.advance(Duration::from_secs(10));
    let stale = client.get("/tweets/bob").await;
    assert_eq!(
        stale.cache_status(),
        "cacheback; hit; detail=stale-while-revalidate"
    );

    failing.store(true, Ordering::SeqCst);
    let failed = client.get("/tweets/alice").await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    assert_eq!(failed.body, r#"{"error":"bad gateway"}"#);
}

#[test]
fn every_error_has_a_fitting_status() {
    use axum::response::IntoResponse;
    let status = |e: cacheback::Error| e.into_response().status();
    assert_eq!(
        status(cacheback::Error::Timeout {
            what: "fetch".into(),
            after: Duration::from_secs(1)
        }),
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(
        status(cacheback::Error::Shutdown),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status(cacheback::Error::Config {
            message: "x".into()
        }),
        StatusCode::INTERNAL_SERVER_ERROR
    );
}
