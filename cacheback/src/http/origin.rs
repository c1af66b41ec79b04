//! The response job: its fetch sends the request a key describes to the origin service and
//! sorts the answer, by its head first, into something to store (a response, once its body
//! is read whole; a `Vary` marker; a pass marker) or an error (the origin failed: the stale
//! response stays, `stale-if-error` applies). A body is read only when its response is stored
//! (or is an error); a response that is not stored goes on to the request that caused the
//! fetch, its body streaming (see `handoff`), or is dropped.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::header::{CONTENT_LENGTH, SET_COOKIE, VARY};
use http::response::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower_service::Service;

use crate::error::BoxError;
use crate::http::body::{OriginBody, OriginStream};
use crate::http::control::Directives;
use crate::http::handoff::Handed;
use crate::http::key::RequestKey;
use crate::http::stored::{Cached, StoredResponse, age_of};
use crate::job::Job;
use crate::policy::{Lifespan, Policy};

/// Bumped when [`Cached`]'s encoding changes: entries of another version read as misses.
const SCHEMA_VERSION: u32 = 1;

type CallOrigin = dyn Fn(Request<OriginBody>) -> BoxFuture<'static, Result<Response<OriginStream>, BoxError>>
    + Send
    + Sync;

/// The origin service, its type erased: called with a rebuilt request, it answers with the
/// response's head and its body, unread; and `max_body_bytes`, the most of a body that a
/// fetch reads.
#[derive(Clone)]
pub(crate) struct Origin {
    call: Arc<CallOrigin>,
    max_body_bytes: usize,
}

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
        let call: Arc<CallOrigin> = Arc::new(move |request| {
            let mut service = origin
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            Box::pin(async move {
                futures_util::future::poll_fn(|cx| service.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                let response = service.call(request).await.map_err(Into::into)?;
                Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
            })
        });
        Origin {
            call,
            max_body_bytes,
        }
    }
}

/// A body read up to a limit.
enum Read {
    /// All of it (at most the limit).
    Whole(Bytes),
    /// Over the limit: the chunks read so far, and the rest, unread.
    TooLarge {
        read: Vec<Bytes>,
        rest: OriginStream,
    },
}

/// Reads `body` until it ends or goes over `limit` bytes (trailers are not kept).
async fn read_limited(mut body: OriginStream, limit: usize) -> Result<Read, BoxError> {
    let mut read = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame?.into_data() else {
            continue;
        };
        if chunk.is_empty() {
            continue;
        }
        len = len.saturating_add(chunk.len());
        read.push(chunk);
        if len > limit {
            return Ok(Read::TooLarge { read, rest: body });
        }
    }
    Ok(Read::Whole(concat(read, len)))
}

/// `chunks` (`len` bytes in all) as one `Bytes`, copied only when there are several.
fn concat(mut chunks: Vec<Bytes>, len: usize) -> Bytes {
    if chunks.len() <= 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut whole = BytesMut::with_capacity(len);
    for chunk in chunks {
        whole.extend_from_slice(&chunk);
    }
    whole.freeze()
}

/// The `Content-Length` a head declares, if it declares one that parses.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
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
        let response = (self.origin.call)(request)
            .await
            .map_err(OriginError::Service)?;
        let (head, body) = response.into_parts();
        let limit = self.origin.max_body_bytes;
        let lifespan = match self.judge(&head, key.vary.is_none()) {
            Verdict::Error => return Err(failure(head, body, limit).await),
            Verdict::Pass(reason) => {
                // Unread: an endless stream flows on, a refresh lets the origin go at once.
                let read = Vec::new();
                key.handoff.give(Handed {
                    head,
                    read,
                    rest: body,
                });
                return Ok(self.pass(reason));
            }
            Verdict::Variants(names, lifespan) => {
                return Ok(Cached::Variants {
                    names,
                    lifespan: lifespan.into(),
                });
            }
            Verdict::Store(lifespan) => lifespan,
        };
        match read_limited(body, limit)
            .await
            .map_err(OriginError::Service)?
        {
            Read::Whole(body) => {
                let mut stored = StoredResponse::new(head.status, &head.headers, body);
                stored.lifespan = lifespan.into();
                Ok(Cached::Response(stored))
            }
            Read::TooLarge { read, rest } => {
                key.handoff.give(Handed { head, read, rest });
                Ok(self.pass("body-too-large"))
            }
        }
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

    /// What the head of the origin's response decides: an error, a pass marker, a `Vary`
    /// marker (for a URL's primary key), or a response to store once its body is read.
    fn judge(&self, head: &Parts, primary: bool) -> Verdict {
        if is_error(head.status) {
            return Verdict::Error;
        }
        let headers = &head.headers;
        let directives = Directives::of(headers);
        let vary = vary_names(headers);
        let refused = if directives.no_store {
            Some("no-store")
        } else if directives.private {
            Some("private")
        } else if directives.no_cache {
            Some("no-cache")
        } else if headers.contains_key(SET_COOKIE) {
            Some("set-cookie")
        } else if vary.iter().any(|name| name == "*") {
            Some("vary-star")
        } else if !is_cacheable(head.status) {
            Some("status")
        } else {
            None
        };
        if let Some(reason) = refused {
            return Verdict::Pass(reason);
        }
        let lifespan = directives.lifespan(age_of(headers), &self.defaults);
        if (lifespan.lifetime + lifespan.stale_ttl).is_zero() && lifespan.stale_if_error.is_none() {
            return Verdict::Pass("expires-at-once");
        }
        if primary && !vary.is_empty() {
            return Verdict::Variants(vary, lifespan);
        }
        if declared_length(headers).is_some_and(|len| len > self.origin.max_body_bytes as u64) {
            return Verdict::Pass("body-too-large");
        }
        Verdict::Store(lifespan)
    }
}

/// What the head of a response decides.
enum Verdict {
    /// The origin failed (an error status): its body is read for the error's sake.
    Error,
    /// Not stored, for this reason: the body is not read.
    Pass(&'static str),
    /// The URL's responses vary on these headers: the marker is stored, the body not read.
    Variants(Vec<String>, Lifespan),
    /// Stored with this lifespan, if its body is within the limit.
    Store(Lifespan),
}

/// The error of a response with an error status: with its headers and body, or without both
/// when the body is over the limit.
async fn failure(head: Parts, body: OriginStream, limit: usize) -> OriginError {
    let read = if declared_length(&head.headers).is_some_and(|len| len > limit as u64) {
        None
    } else {
        match read_limited(body, limit).await {
            Ok(Read::Whole(body)) => Some(body),
            Ok(Read::TooLarge { .. }) => None,
            Err(e) => return OriginError::Service(e),
        }
    };
    OriginError::Status(match read {
        Some(body) => StoredResponse::new(head.status, &head.headers, body),
        None => StoredResponse::new(head.status, &HeaderMap::new(), Bytes::new()),
    })
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
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll};

    use futures_util::FutureExt;
    use http::{HeaderValue, Method};
    use http_body::Frame;

    use crate::http::handoff::Handoff;

    /// A body that yields its chunks, then ends or (`endless`) never does; says when it is
    /// dropped.
    struct Scripted {
        chunks: VecDeque<Bytes>,
        endless: bool,
        dropped: Arc<AtomicBool>,
    }

    impl http_body::Body for Scripted {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.chunks.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None if self.endless => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    impl Drop for Scripted {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    fn head(status: u16, headers: &[(&'static str, &'static str)]) -> Parts {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response
                .headers_mut()
                .append(*name, HeaderValue::from_static(value));
        }
        response.into_parts().0
    }

    /// A job whose origin answers `head` with a scripted body (one call), storing at most 8
    /// body bytes; and the flag its body sets when dropped.
    fn job_answering(
        head: Parts,
        chunks: &[&'static str],
        endless: bool,
    ) -> (ResponseJob, Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        let body = Scripted {
            chunks: chunks
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
            endless,
            dropped: Arc::clone(&dropped),
        };
        let answer = Mutex::new(Some(Response::from_parts(head, body.boxed_unsync())));
        let call: Arc<CallOrigin> = Arc::new(move |_| {
            let response = answer.lock().unwrap().take();
            Box::pin(async move { response.ok_or_else(|| "called twice".into()) })
        });
        let job = ResponseJob {
            name: "pages".into(),
            defaults: Policy::default(),
            origin: Origin {
                call,
                max_body_bytes: 8,
            },
            pass_ttl: Duration::from_secs(30),
        };
        (job, dropped)
    }

    fn job() -> ResponseJob {
        job_answering(head(200, &[]), &[], false).0
    }

    fn key(handoff: Handoff) -> RequestKey {
        let headers = HeaderMap::new();
        RequestKey::primary(&Method::GET, "/p".into(), String::new(), &[], &headers)
            .with_handoff(handoff)
    }

    fn verdict(job: &ResponseJob, status: u16, headers: &[(&'static str, &'static str)]) -> String {
        match job.judge(&head(status, headers), true) {
            Verdict::Error => "error".into(),
            Verdict::Pass(reason) => reason.into(),
            Verdict::Variants(names, _) => format!("vary {names:?}"),
            Verdict::Store(_) => "stored".into(),
        }
    }

    fn reason(sorted: Option<Result<Cached, OriginError>>) -> String {
        match sorted.expect("the fetch does not wait for more of the body") {
            Ok(Cached::Pass { reason, .. }) => reason,
            Ok(Cached::Response(stored)) => {
                format!("stored {:?}", String::from_utf8_lossy(&stored.body))
            }
            Ok(Cached::Variants { names, .. }) => format!("vary {names:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// The data of the next frame of `body`, if it is ready.
    fn next_chunk(body: &mut OriginStream) -> Option<Bytes> {
        body.frame().now_or_never()??.ok()?.into_data().ok()
    }

    #[test]
    fn the_head_decides_what_is_stored() {
        let j = job();
        type Case = (u16, &'static [(&'static str, &'static str)], &'static str);
        let cases: [Case; 14] = [
            (200, &[], "stored"),
            (200, &[("cache-control", "no-store")], "no-store"),
            (200, &[("cache-control", "private, max-age=60")], "private"),
            (200, &[("cache-control", "no-cache")], "no-cache"),
            (200, &[("set-cookie", "a=1")], "set-cookie"),
            (200, &[("vary", "accept, *")], "vary-star"),
            (302, &[], "status"),
            (503, &[("cache-control", "no-store")], "error"),
            (200, &[("cache-control", "max-age=0")], "stored"),
            (
                200,
                &[("vary", "Accept-Language"), ("vary", "accept,accept")],
                "vary [\"accept\", \"accept-language\"]",
            ),
            (
                200,
                &[("cache-control", "max-age=0, stale-while-revalidate=0")],
                "expires-at-once",
            ),
            (200, &[("content-length", "9")], "body-too-large"),
            (200, &[("content-length", "8")], "stored"),
            (
                200,
                &[("content-length", "9"), ("cache-control", "no-store")],
                "no-store",
            ),
        ];
        for (status, headers, expected) in cases {
            assert_eq!(
                verdict(&j, status, headers),
                expected,
                "{status} {headers:?}"
            );
        }
        let variant = head(200, &[("vary", "accept"), ("content-length", "9")]);
        assert!(
            matches!(j.judge(&variant, true), Verdict::Variants(..)),
            "a URL's Vary needs no body"
        );
        assert!(
            matches!(j.judge(&variant, false), Verdict::Pass("body-too-large")),
            "a variant's does"
        );
    }

    #[test]
    fn a_response_not_stored_by_its_head_is_handed_on_unread() {
        let no_store = || head(200, &[("cache-control", "no-store")]);
        let (j, dropped) = job_answering(no_store(), &["first"], true);
        let handoff = Handoff::armed();
        let fetched = j.fetch(key(handoff.clone())).now_or_never();
        assert_eq!(reason(fetched), "no-store");
        let mut handed = handoff.take().expect("handed to the request");
        assert!(handed.read.is_empty());
        assert_eq!(handed.head.headers["cache-control"], "no-store");
        assert_eq!(next_chunk(&mut handed.rest).as_deref(), Some(&b"first"[..]));
        assert!(!dropped.load(Ordering::SeqCst));
        drop(handed);
        assert!(dropped.load(Ordering::SeqCst));

        // A refresh has no request to hand it to: the body is let go at once.
        let (j, dropped) = job_answering(no_store(), &["first"], true);
        let fetched = j.fetch(key(Handoff::default())).now_or_never();
        assert_eq!(reason(fetched), "no-store");
        assert!(dropped.load(Ordering::SeqCst), "not held");
    }

    #[test]
    fn a_body_over_the_limit_is_handed_on_from_where_the_fetch_stopped() {
        let cacheable = || head(200, &[("cache-control", "max-age=60")]);
        let chunks = ["12345", "", "6789a", "bc"];
        let (j, dropped) = job_answering(cacheable(), &chunks, true);
        let handoff = Handoff::armed();
        let fetched = j.fetch(key(handoff.clone())).now_or_never();
        assert_eq!(reason(fetched), "body-too-large");
        let mut handed = handoff.take().expect("handed to the request");
        assert_eq!(handed.read, [&b"12345"[..], &b"6789a"[..]]);
        assert_eq!(next_chunk(&mut handed.rest).as_deref(), Some(&b"bc"[..]));
        drop(handed);
        assert!(dropped.load(Ordering::SeqCst));

        let (j, dropped) = job_answering(cacheable(), &chunks, true);
        let fetched = j.fetch(key(Handoff::default())).now_or_never();
        assert_eq!(reason(fetched), "body-too-large");
        assert!(dropped.load(Ordering::SeqCst), "a refresh lets it go");

        // Within the limit (8 bytes exactly): read whole and stored, nothing handed on.
        let (j, _) = job_answering(cacheable(), &["1234", "5678"], false);
        let handoff = Handoff::armed();
        let fetched = j.fetch(key(handoff.clone())).now_or_never();
        assert_eq!(reason(fetched), "stored \"12345678\"");
        assert!(handoff.take().is_none());
    }

    #[test]
    fn an_error_keeps_its_body_within_the_limit() {
        let (j, _) = job_answering(head(503, &[("x-why", "down")]), &["down"], false);
        let Some(Err(OriginError::Status(stored))) = j.fetch(key(Handoff::armed())).now_or_never()
        else {
            panic!("an error");
        };
        assert_eq!((stored.status, &stored.body[..]), (503, &b"down"[..]));
        assert_eq!(
            stored.header(&http::HeaderName::from_static("x-why")),
            Some("down")
        );

        let (j, dropped) = job_answering(head(502, &[("x-why", "down")]), &["123456789"], true);
        let Some(Err(OriginError::Status(stored))) = j.fetch(key(Handoff::armed())).now_or_never()
        else {
            panic!("an error");
        };
        assert!(stored.body.is_empty() && stored.headers.is_empty());
        assert!(dropped.load(Ordering::SeqCst));
    }
}
