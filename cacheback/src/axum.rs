//! axum glue for handlers that read through a job (feature `axum`): [`CachedJson`] turns a
//! read into a response, and [`Error`] is an `IntoResponse` with a fitting status.
//!
//! ```
//! use axum::extract::{Path, State};
//! use cacheback::JobHandle;
//! use cacheback::axum::CachedJson;
//! # use cacheback::Job;
//! # struct UserTweets;
//! # impl Job for UserTweets {
//! #     type Args = String;
//! #     type Value = Vec<String>;
//! #     type Error = std::io::Error;
//! #     fn name(&self) -> &str { "user_tweets" }
//! #     async fn fetch(&self, user: String) -> Result<Vec<String>, std::io::Error> { Ok(vec![user]) }
//! # }
//!
//! async fn tweets(
//!     State(tweets): State<JobHandle<UserTweets>>,
//!     Path(user): Path<String>,
//! ) -> CachedJson<Vec<String>> {
//!     tweets.get_with_status(user).await.into()
//! }
//! # let _ = axum::Router::<JobHandle<UserTweets>>::new().route("/tweets/{user}", axum::routing::get(tweets));
//! ```
//!
//! The response is the value as JSON with `Age` (seconds since it was fetched) and
//! `Cache-Status` (RFC 9211: `cacheback; hit`, `cacheback; hit; detail=stale-while-revalidate`,
//! `cacheback; fwd=miss; stored`, ...). A read that found no value yet (a job with
//! [`Policy::fetch_on_miss`](crate::Policy::fetch_on_miss) off) answers `202 Accepted` with
//! `Retry-After: 1` and a `null` body. An error answers with the status below and a JSON body
//! that names the status only (`{"error":"bad gateway"}`); the whole error chain is logged.
//!
//! | error | status |
//! |---|---|
//! | `Fetch`, `FetchPanicked` | 502 Bad Gateway |
//! | `Timeout` | 504 Gateway Timeout |
//! | `BackingOff` | 503 Service Unavailable, `Retry-After` until the next attempt |
//! | `Store`, `Queue`, `Shutdown` | 503 Service Unavailable |
//! | anything else | 500 Internal Server Error |

use axum_core::body::Body;
use axum_core::response::{IntoResponse, Response};
use http::header::{AGE, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, StatusCode};
use serde::Serialize;
use tracing::{error, warn};

use crate::client::{Lookup, Status};
use crate::clock::Timestamp;
use crate::error::{Chain, Error, Result};

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A job read as an axum response: the value as JSON, with `Age` and `Cache-Status`; an error
/// as its status. Make one with `.into()` from what
/// [`JobHandle::get_with_status`](crate::JobHandle::get_with_status) returns.
#[derive(Debug)]
pub struct CachedJson<V> {
    read: Result<Lookup<V>>,
}

impl<V> From<Result<Lookup<V>>> for CachedJson<V> {
    fn from(read: Result<Lookup<V>>) -> Self {
        CachedJson { read }
    }
}

impl<V> From<Lookup<V>> for CachedJson<V> {
    fn from(lookup: Lookup<V>) -> Self {
        CachedJson { read: Ok(lookup) }
    }
}

/// The `Cache-Status` member of a job read.
fn cache_status(status: Status) -> &'static str {
    match status {
        Status::Hit => "cacheback; hit",
        Status::Stale => "cacheback; hit; detail=stale-while-revalidate",
        Status::StaleRefetched => "cacheback; fwd=stale; stored",
        Status::Miss => "cacheback; fwd=miss; detail=refresh-queued",
        Status::MissFetched => "cacheback; fwd=miss; stored",
        Status::Bypassed => "cacheback; fwd=miss; detail=bypassed",
    }
}

impl<V: Serialize> IntoResponse for CachedJson<V> {
    fn into_response(self) -> Response {
        let lookup = match self.read {
            Ok(lookup) => lookup,
            Err(error) => return error.into_response(),
        };
        let (status, body) = match &lookup.value {
            Some(value) => match serde_json::to_vec(&**value) {
                Ok(json) => (StatusCode::OK, json),
                Err(e) => {
                    error!(error = %e, "the value does not serialize as JSON");
                    return plain(StatusCode::INTERNAL_SERVER_ERROR);
                }
            },
            None => (StatusCode::ACCEPTED, b"null".to_vec()),
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, JSON);
        headers.insert(
            CACHE_STATUS,
            HeaderValue::from_static(cache_status(lookup.status)),
        );
        if let Some(age) = lookup.age {
            headers.insert(AGE, HeaderValue::from(age.as_secs()));
        }
        if lookup.value.is_none() {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::Fetch { .. } | Error::FetchPanicked { .. } => StatusCode::BAD_GATEWAY,
            Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::BackingOff { .. }
            | Error::Store { .. }
            | Error::Queue { .. }
            | Error::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            error!(error = %Chain(&self), "cacheback read failed");
        } else {
            warn!(error = %Chain(&self), "cacheback read failed");
        }
        let mut response = plain(status);
        if let Error::BackingOff { retry_after, .. } = &self {
            let wait = retry_after.since(Timestamp::now()).as_secs().max(1);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(wait));
        }
        response
    }
}

/// A status with a JSON body that names it and nothing else.
fn plain(status: StatusCode) -> Response {
    let reason = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase();
    let body = serde_json::json!({ "error": reason }).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, JSON);
    response
}
