//! [`CachebackService`]: a request's way through the layer. `GET` and `HEAD` with a scope are
//! read through the response job (a miss is fetched from the origin, coalesced; a stale
//! response is served while one refresh runs); everything else goes to the inner service. A
//! request whose own fetch found a response that is not stored is answered with that
//! response, its body streaming; a URL marked pass sends requests to the inner service.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tower_service::Service;
use tracing::warn;

use crate::client::{JobHandle, Status};
use crate::error::{BoxError, Chain, Error, Result};
use crate::http::Shared;
use crate::http::body::CacheBody;
use crate::http::control::Directives;
use crate::http::handoff::{Handed, Handoff};
use crate::http::key::{RequestKey, normalise_target};
use crate::http::origin::{OriginError, ResponseJob};
use crate::http::respond::{CACHE_STATUS, CacheStatus, Fwd, Served, from_stored};
use crate::http::stored::{Cached, StoredResponse};

/// The service made by [`CachebackLayer`](crate::http::CachebackLayer) around an inner
/// service.
#[derive(Debug, Clone)]
pub struct CachebackService<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for CachebackService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // The clone takes the place of the service that was polled ready, which serves this
        // request if it goes past the cache.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { serve(&shared, inner, request).await })
    }
}

/// A stored value and how this request got it.
struct Found {
    value: Arc<Cached>,
    served: Served,
    age: Duration,
}

async fn serve<S, ReqB, ResB>(
    shared: &Shared,
    inner: S,
    request: Request<ReqB>,
) -> Result<Response<CacheBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    let (parts, body) = request.into_parts();
    let cache = shared.cache_name.as_str();
    if parts.method != Method::GET && parts.method != Method::HEAD {
        let status = CacheStatus::forwarded(cache, Fwd::Method, None);
        return pass(inner, parts, body, status).await;
    }
    let Some(key) = shared.primary_key(&parts) else {
        let status = CacheStatus::forwarded(cache, Fwd::Bypass, None);
        return pass(inner, parts, body, status).await;
    };
    let forced = shared.honour_no_cache && Directives::request_wants_origin(&parts.headers);
    // Where a fetch this request makes leaves a response it does not store (one small
    // allocation per request; a hit never looks inside). Such a response answers the request
    // rebuilt from the key: a request with credentials of its own (a cookie, authorization)
    // could have had another answer, so it goes to the inner service as it came instead.
    let handoff = if carries_credentials(&parts.headers) {
        Handoff::default()
    } else {
        Handoff::armed()
    };
    match read(shared, key.with_handoff(handoff.clone()), &parts, forced).await {
        Ok(Found { value, served, age }) => match &*value {
            Cached::Response(stored) => Ok(from_stored(
                &parts.method,
                &parts.headers,
                stored,
                served,
                age,
                cache,
            )),
            Cached::Pass { reason, .. } => {
                let fwd = match served {
                    Served::Fetched { fwd, .. } => fwd,
                    _ => Fwd::Bypass,
                };
                let status = CacheStatus::forwarded(cache, fwd, Some(reason));
                match handoff.take().filter(|_| fwd != Fwd::Bypass) {
                    // This request's own fetch: its response, as the origin sent it.
                    Some(handed) => Ok(handed_on(&parts.method, handed, &status)),
                    // Joined someone else's fetch, or found the URL marked pass.
                    None => pass(inner, parts, body, status).await,
                }
            }
            // A variant that asks for variants: the origin's `Vary` changed meanwhile.
            Cached::Variants { .. } => {
                let status = CacheStatus::forwarded(cache, Fwd::VaryMiss, Some("vary-changed"));
                pass(inner, parts, body, status).await
            }
        },
        Err(error) => Ok(failed(&parts.method, &error, cache)),
    }
}

/// Reads the request's primary key and, if the URL's responses vary, its variant.
async fn read(shared: &Shared, key: RequestKey, parts: &Parts, forced: bool) -> Result<Found> {
    let found = lookup(&shared.handle, key.clone(), forced, Fwd::Miss).await?;
    let Cached::Variants { names, .. } = &*found.value else {
        return Ok(found);
    };
    let variant = key.variant(names, &parts.headers);
    lookup(&shared.handle, variant, forced, Fwd::VaryMiss).await
}

async fn lookup(
    handle: &JobHandle<ResponseJob>,
    key: RequestKey,
    forced: bool,
    miss: Fwd,
) -> Result<Found> {
    if forced {
        let value = handle.refresh(key).await?;
        let served = Served::Fetched {
            fwd: Fwd::Request,
            stored: true,
        };
        return Ok(Found {
            value,
            served,
            age: Duration::ZERO,
        });
    }
    let lookup = handle.get_with_status(key).await?;
    let age = lookup.age.unwrap_or_default();
    let Some(value) = lookup.value else {
        return Err(Error::config("a fetching read of a response found none"));
    };
    let served = match lookup.status {
        Status::Hit => Served::Hit,
        Status::Stale => Served::Stale {
            if_error: beyond_stale_window(&value, age),
        },
        Status::StaleRefetched => Served::Fetched {
            fwd: Fwd::Stale,
            stored: true,
        },
        Status::Miss | Status::MissFetched => Served::Fetched {
            fwd: miss,
            stored: true,
        },
        Status::Bypassed => Served::Fetched {
            fwd: miss,
            stored: false,
        },
    };
    Ok(Found { value, served, age })
}

/// Whether a stale value is served past its `stale-while-revalidate` window, which only a
/// failed refresh's `stale-if-error` allows.
fn beyond_stale_window(value: &Cached, age: Duration) -> bool {
    let lifespan = value.lifespan();
    age >= lifespan.lifetime + lifespan.stale_ttl
}

/// Sends the request to the inner service as it came, adding our `Cache-Status`.
async fn pass<S, ReqB, ResB>(
    mut inner: S,
    parts: Parts,
    body: ReqB,
    status: CacheStatus<'_>,
) -> Result<Response<CacheBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    let value = status.value();
    let response = inner.call(Request::from_parts(parts, body)).await?;
    let mut response = response.map(CacheBody::inner);
    response.headers_mut().append(CACHE_STATUS, value);
    Ok(response)
}

/// Whether a request says who sent it: what the request rebuilt from its key leaves out and
/// an uncacheable response may depend on.
fn carries_credentials(headers: &http::HeaderMap) -> bool {
    [
        http::header::COOKIE,
        http::header::AUTHORIZATION,
        http::header::PROXY_AUTHORIZATION,
    ]
    .iter()
    .any(|name| headers.contains_key(name))
}

/// The response a fetch did not store, handed to the request that caused the fetch: the
/// origin's head with our `Cache-Status`, its body streaming on from what the fetch read
/// (none for `HEAD`; the origin's body is then let go).
fn handed_on<B>(
    method: &Method,
    handed: Handed,
    status: &CacheStatus<'_>,
) -> Response<CacheBody<B>> {
    let Handed { head, read, rest } = handed;
    let body = if method == Method::HEAD {
        CacheBody::bytes(Bytes::new())
    } else {
        CacheBody::origin(read, rest)
    };
    let mut response = Response::from_parts(head, body);
    response.headers_mut().append(CACHE_STATUS, status.value());
    response
}

/// The answer when the origin could not give one and no stored response could stand in: the
/// origin's own error response if it sent one, else a bare 502 or 504. Nothing internal
/// leaks into it; the whole cause is logged.
fn failed<B>(method: &Method, error: &Error, cache: &str) -> Response<CacheBody<B>> {
    warn!(error = %Chain(error), "no response to serve");
    let origin = match error {
        Error::Fetch { source, .. } => source.downcast_ref::<OriginError>(),
        _ => None,
    };
    if let Some(OriginError::Status(stored)) = origin {
        return origin_error(method, stored, cache);
    }
    let (status, text) = match error {
        Error::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "the origin timed out\n"),
        Error::Fetch { .. } | Error::FetchPanicked { .. } => {
            (StatusCode::BAD_GATEWAY, "the origin failed\n")
        }
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the cache is unavailable\n",
        ),
    };
    let body = if method == Method::HEAD { "" } else { text };
    let mut response = Response::new(CacheBody::bytes(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let mut cache_status = CacheStatus::forwarded(cache, Fwd::Miss, Some(error.kind()));
    cache_status.fwd_status = None;
    headers.append(CACHE_STATUS, cache_status.value());
    response
}

/// The origin's own error response (without cookies: it was shared by coalesced requests).
fn origin_error<B>(
    method: &Method,
    stored: &StoredResponse,
    cache: &str,
) -> Response<CacheBody<B>> {
    let mut headers = stored.header_map();
    headers.remove(http::header::SET_COOKIE);
    let mut cache_status = CacheStatus::forwarded(cache, Fwd::Miss, None);
    cache_status.fwd_status = Some(stored.status());
    headers.append(CACHE_STATUS, cache_status.value());
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        stored.body.clone()
    };
    let mut response = Response::new(CacheBody::bytes(body));
    *response.status_mut() = stored.status();
    *response.headers_mut() = headers;
    response
}

impl Shared {
    /// The primary key of a request, or `None` when the key function keeps it from the cache.
    pub(crate) fn primary_key(&self, parts: &Parts) -> Option<RequestKey> {
        let scope = (self.scope)(parts)?;
        let target = normalise_target(parts.uri.path(), parts.uri.query());
        Some(RequestKey::primary(
            &parts.method,
            target,
            scope,
            &self.key_headers,
            &parts.headers,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    use http_body_util::{BodyExt, Full};

    /// A body whose drop is seen.
    struct Watched(Full<Bytes>, Arc<AtomicBool>);

    impl http_body::Body for Watched {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
            std::pin::Pin::new(&mut self.0)
                .poll_frame(cx)
                .map_err(|never| match never {})
        }
    }

    impl Drop for Watched {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }

    fn handed(dropped: &Arc<AtomicBool>) -> Handed {
        let mut head = Response::new(()).into_parts().0;
        head.headers
            .insert("set-cookie", HeaderValue::from_static("id=1"));
        let rest = Watched(Full::new(Bytes::from_static(b"rest")), Arc::clone(dropped));
        Handed {
            head,
            read: vec![Bytes::from_static(b"read, ")],
            rest: rest.boxed_unsync(),
        }
    }

    #[tokio::test]
    async fn a_handed_response_keeps_its_head_and_streams_its_body() {
        let status = CacheStatus::forwarded("cb", Fwd::Miss, Some("set-cookie"));
        let dropped = Arc::new(AtomicBool::new(false));
        let response: Response<CacheBody<Full<Bytes>>> =
            handed_on(&Method::GET, handed(&dropped), &status);
        assert_eq!(response.headers()["set-cookie"], "id=1");
        assert_eq!(
            response.headers()[CACHE_STATUS],
            "cb; fwd=miss; detail=set-cookie"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "read, rest");

        let dropped = Arc::new(AtomicBool::new(false));
        let response: Response<CacheBody<Full<Bytes>>> =
            handed_on(&Method::HEAD, handed(&dropped), &status);
        assert!(
            dropped.load(Ordering::SeqCst),
            "HEAD lets the origin's body go"
        );
        assert_eq!(response.headers()["set-cookie"], "id=1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty());
    }
}
