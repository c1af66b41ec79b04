//! The routes. `/tweets/{user}` reads through the job (JSON with `Age` and `Cache-Status`) and
//! a `POST` to it writes a tweet and invalidates the user's entries; `/timeline/{user}` is an
//! HTML page that knows nothing of caching but its `Cache-Control`: the layer caches it.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use cacheback::axum::CachedJson;
use cacheback::http::CachebackLayer;
use cacheback::{Cacheback, JobHandle};
use sqlx::PgPool;
use tracing::warn;

use crate::db::{self, Tweet};
use crate::jobs::UserTweets;

#[derive(Clone)]
struct Api {
    tweets: JobHandle<UserTweets>,
    pool: PgPool,
    pages: CachebackLayer,
}

/// The whole service on `cache`'s store.
pub(crate) fn app(cache: &Cacheback, pool: PgPool) -> cacheback::Result<Router> {
    let tweets = cache.job(UserTweets { pool: pool.clone() });
    // The layer's fetches and refreshes call the page routes without the layer.
    let pages = CachebackLayer::builder(cache)
        .name("timeline_pages")
        .build(pages(pool.clone()))?;
    let api = Router::new()
        .route("/tweets/{user}", get(read_tweets).post(write_tweet))
        .with_state(Api {
            tweets,
            pool: pool.clone(),
            pages: pages.clone(),
        });
    Ok(api.merge(self::pages(pool).route_layer(pages)))
}

fn pages(pool: PgPool) -> Router {
    Router::new()
        .route("/timeline/{user}", get(timeline))
        .with_state(pool)
}

async fn read_tweets(State(api): State<Api>, Path(user): Path<String>) -> CachedJson<Vec<Tweet>> {
    api.tweets.get_with_status(user).await.into()
}

/// Writes the tweet, then invalidates what shows it: the job's key and the cached page (each
/// keeps being served while one refresh reads the new rows).
async fn write_tweet(
    State(api): State<Api>,
    Path(user): Path<String>,
    body: String,
) -> Result<StatusCode, Response> {
    db::insert(&api.pool, &user, &body).await.map_err(|e| {
        warn!(error = %e, "could not write the tweet");
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    })?;
    api.tweets
        .invalidate(user.clone())
        .await
        .map_err(IntoResponse::into_response)?;
    match Request::get(format!("/timeline/{user}")).body(()) {
        Ok(page) => {
            api.pages
                .invalidate(&page)
                .await
                .map_err(IntoResponse::into_response)?;
        }
        Err(e) => warn!(error = %e, "no page to invalidate for this user name"),
    }
    Ok(StatusCode::CREATED)
}

/// Rendered from the database on every call the layer lets through; fresh for 5 s, then
/// served stale for a minute while one refresh renders it again.
async fn timeline(
    State(pool): State<PgPool>,
    Path(user): Path<String>,
) -> Result<([(&'static str, &'static str); 1], Html<String>), StatusCode> {
    let tweets = db::latest(&pool, &user)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let mut page = format!("<h1>{}</h1>\n<ul>\n", escape(&user));
    for tweet in tweets {
        page.push_str(&format!("<li>{}</li>\n", escape(&tweet.body)));
    }
    page.push_str("</ul>\n");
    let cache_control = ("cache-control", "max-age=5, stale-while-revalidate=60");
    Ok(([cache_control], Html(page)))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
