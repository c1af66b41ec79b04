//! The response job: its fetch sends the request a key describes to the origin service and
//! sorts the answer into something to store (a response, a `Vary` marker, a pass marker) or
//! an error (the origin failed: the stale response stays, `stale-if-error` applies).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{CONTENT_LENGTH, SET_COOKIE, VARY};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use tower_service::Service;

use crate::error::BoxError;
use crate::http::body::OriginBody;
use crate::http::control::Directives;
use crate::http::key::RequestKey;
use crate::http::stored::{Cached, StoredResponse};
use crate::job::Job;
use crate::policy::{Lifespan, Policy};

/// Bumped when [`Cached`]'s encoding changes: entries of another version read as misses.
const SCHEMA_VERSION: u32 = 1;

/// What the origin answered: a whole response, or the head of one whose body was too large.
pub(crate) enum Answer {
    Complete(Response<Bytes>),
    TooLarge(StatusCode),
}

type CallOrigin =
    dyn Fn(Request<OriginBody>) -> BoxFuture<'static, Result<Answer, BoxError>> + Send + Sync;

/// The origin service, its type erased: called with a rebuilt request, it answers with the
/// whole body read (up to the limit).
#[derive(Clone)]
pub(crate) struct Origin(Arc<CallOrigin>);

impl Origin {
    pub(crate) fn new<O, B>(origin: O, max_body_bytes: usize) -> Self
    where
        O: Service<Request<OriginBody>, Response = Response<B>> + Clone + Send + 'static,
        O::Future: Send + 'static,
        O::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // A Mutex only to make the closure Sync: each call clones the service out of it.
        let origin = Mutex::new(origin);
        Origin(Arc::new(move |request| {
            let mut service = origin
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            Box::pin(async move {
                futures_util::future::poll_fn(|cx| service.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                let response = service.call(request).await.map_err(Into::into)?;
                read_whole(response, max_body_bytes).await
            })
        }))
    }
}

async fn read_whole<B>(response: Response<B>, limit: usize) -> Result<Answer, BoxError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Ok(Answer::TooLarge(parts.status));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(Answer::Complete(Response::from_parts(
            parts,
            collected.to_bytes(),
        ))),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Ok(Answer::TooLarge(parts.status)),
        Err(e) => Err(e),
    }
}

/// Why a fetch of a response failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OriginError {
    /// The origin answered with an error status (500, 502, 503 or 504).
    #[error("the origin answered {}", .0.status)]
    Status(StoredResponse),
    /// The origin service failed, or its body could not be read.
    #[error("the origin failed: {0}")]
    Service(BoxError),
    /// The stored key does not make a request (it was written by another build).
    #[error("the key does not make a valid request")]
    BadKey,
}

/// Fetches responses for the layer: the cacheback job behind it.
pub(crate) struct ResponseJob {
    pub(crate) name: String,
    pub(crate) defaults: Policy,
    pub(crate) origin: Origin,
    pub(crate) pass_ttl: Duration,
}

impl fmt::Debug for ResponseJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseJob")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Job for ResponseJob {
    type Args = RequestKey;
    type Value = Cached;
    type Error = OriginError;

    fn name(&self) -> &str {
        &self.name
    }

    fn policy(&self) -> Policy {
        let mut policy = self.defaults.clone();
        // A miss is fetched by the request that found it (coalesced per process), and an
        // uncacheable or failing origin must not make later requests fail without trying.
        policy.fetch_on_miss = true;
        policy.miss_backoff = false;
        policy.stale_threshold = None;
        policy.schema_version = SCHEMA_VERSION;
        policy
    }

    async fn fetch(&self, key: RequestKey) -> Result<Cached, OriginError> {
        let request = key.to_request().ok_or(OriginError::BadKey)?;
        let answer = (self.origin.0)(request)
            .await
            .map_err(OriginError::Service)?;
        self.sort(answer, key.vary.is_none())
    }

    fn lifespan(&self, value: &Cached, _policy: &Policy) -> Lifespan {
        value.lifespan()
    }
}

/// RFC 5861's errors: what `stale-if-error` covers.
fn is_error(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// Statuses cacheable by default (RFC 9110 §15.1), partial content aside.
fn is_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

impl ResponseJob {
    fn pass(&self, reason: impl Into<String>) -> Cached {
        Cached::Pass {
            reason: reason.into(),
            ttl_ms: u64::try_from(self.pass_ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Sorts the origin's answer: an error, a pass marker, a `Vary` marker (for a URL's
    /// primary key) or the response to store.
    fn sort(&self, answer: Answer, primary: bool) -> Result<Cached, OriginError> {
        let response = match answer {
            Answer::TooLarge(status) if is_error(status) => {
                let empty = StoredResponse::new(status, &HeaderMap::new(), Bytes::new());
                return Err(OriginError::Status(empty));
            }
            Answer::TooLarge(_) => return Ok(self.pass("body-too-large")),
            Answer::Complete(response) => response,
        };
        let (parts, body) = response.into_parts();
        if is_error(parts.status) {
            return Err(OriginError::Status(StoredResponse::new(
                parts.status,
                &parts.headers,
                body,
            )));
        }
        let directives = Directives::of(&parts.headers);
        let vary = vary_names(&parts.headers);
        let refused = if directives.no_store {
            Some("no-store")
        } else if directives.private {
            Some("private")
        } else if directives.no_cache {
            Some("no-cache")
        } else if parts.headers.contains_key(SET_COOKIE) {
            Some("set-cookie")
        } else if vary.iter().any(|name| name == "*") {
            Some("vary-star")
        } else if !is_cacheable(parts.status) {
            Some("status")
        } else {
            None
        };
        if let Some(reason) = refused {
            return Ok(self.pass(reason));
        }
        let mut stored = StoredResponse::new(parts.status, &parts.headers, body);
        let lifespan = directives.lifespan(stored.age, &self.defaults);
        if (lifespan.lifetime + lifespan.stale_ttl).is_zero() && lifespan.stale_if_error.is_none() {
            return Ok(self.pass("expires-at-once"));
        }
        stored.lifespan = lifespan.into();
        if primary && !vary.is_empty() {
            return Ok(Cached::Variants {
                names: vary,
                lifespan: lifespan.into(),
            });
        }
        Ok(Cached::Response(stored))
    }
}

/// The header names a response's `Vary` lists: lowercase, sorted, once each.
fn vary_names(headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn job() -> ResponseJob {
        ResponseJob {
            name: "pages".into(),
            defaults: Policy::default(),
            origin: Origin(Arc::new(|_| {
                Box::pin(async { Err::<Answer, BoxError>("unused".into()) })
            })),
            pass_ttl: Duration::from_secs(30),
        }
    }

    fn answer(status: u16, headers: &[(&'static str, &'static str)]) -> Answer {
        let mut response = Response::new(Bytes::from_static(b"body"));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response
                .headers_mut()
                .append(*name, HeaderValue::from_static(value));
        }
        Answer::Complete(response)
    }

    fn reason(sorted: Result<Cached, OriginError>) -> String {
        match sorted {
            Ok(Cached::Pass { reason, .. }) => reason,
            Ok(Cached::Response(_)) => "stored".into(),
            Ok(Cached::Variants { names, .. }) => format!("vary {names:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn only_shareable_responses_are_stored() {
        let j = job();
        type Case = (u16, &'static [(&'static str, &'static str)], &'static str);
        let cases: [Case; 10] = [
            (200, &[], "stored"),
            (200, &[("cache-control", "no-store")], "no-store"),
            (200, &[("cache-control", "private, max-age=60")], "private"),
            (200, &[("cache-control", "no-cache")], "no-cache"),
            (200, &[("set-cookie", "a=1")], "set-cookie"),
            (200, &[("vary", "accept, *")], "vary-star"),
            (302, &[], "status"),
            (503, &[], "the origin answered 503"),
            (200, &[("cache-control", "max-age=0")], "stored"),
            (
                200,
                &[("vary", "Accept-Language"), ("vary", "accept,accept")],
                "vary [\"accept\", \"accept-language\"]",
            ),
        ];
        for (status, headers, expected) in cases {
            assert_eq!(
                reason(j.sort(answer(status, headers), true)),
                expected,
                "{status} {headers:?}"
            );
        }
        let never = answer(
            200,
            &[("cache-control", "max-age=0, stale-while-revalidate=0")],
        );
        assert_eq!(reason(j.sort(never, true)), "expires-at-once");
        let variant = answer(200, &[("vary", "accept")]);
        assert_eq!(
            reason(j.sort(variant, false)),
            "stored",
            "a variant is stored"
        );
        assert_eq!(
            reason(j.sort(Answer::TooLarge(StatusCode::OK), true)),
            "body-too-large"
        );
    }
}
