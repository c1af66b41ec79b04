//! A tower layer that serves whole HTTP responses stale-while-revalidate (feature `http`).
//!
//! [`CachebackLayer`] caches the responses of any `tower::Service<http::Request<_>>`, an axum
//! `Router` or handler included, with the semantics of jobs: a Fresh response is served from
//! the store, a Stale one is served at once while **one** background revalidation per key
//! (across the fleet, with a shared store) calls the origin again, and a miss is fetched once
//! per key however many requests wait for it: once per process, and once across the fleet on
//! a shared store ([`Policy::fleet_coalescing`], on by default here).
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use cacheback::Cacheback;
//! use cacheback::http::CachebackLayer;
//!
//! async fn timeline() -> ([(&'static str, &'static str); 1], &'static str) {
//!     // Fresh for 5 s, then served stale for 60 s while one refresh runs.
//!     ([("cache-control", "max-age=5, stale-while-revalidate=60")], "<h1>timeline</h1>")
//! }
//!
//! fn routes() -> Router {
//!     Router::new().route("/timeline", get(timeline))
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cacheback::builder().build()?;
//! // The origin is what fetches and refreshes call: the same routes, without the layer.
//! let pages = CachebackLayer::builder(&cache).name("pages").build(routes())?;
//! let app = routes().route_layer(pages);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## What is cached
//!
//! `GET` and `HEAD` requests (other methods go to the inner service, `Cache-Status:
//! cacheback; fwd=method`). The **key** is the method, the path and query normalised
//! (percent-escapes in one spelling, query parameters sorted by name), the values of the
//! [key headers](CachebackLayerBuilder::key_header) and the [scope](CachebackLayerBuilder::scope)
//! the key function gives the request (a tenant, an auth scope; by default requests with an
//! `Authorization` header are not served from the cache at all), and, when the response says
//! `Vary`, the request's values of the headers it names: the URL's entry then records the
//! names, and each combination of values is an entry of its own.
//!
//! A response is **not** cached when it says `Cache-Control: no-store`, `private` or
//! `no-cache`, sets a cookie, says `Vary: *`, has a status that is not cacheable by default
//! (RFC 9110: 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501), a body over
//! [`max_body_bytes`](CachebackLayerBuilder::max_body_bytes), or no time to live at all. The
//! fetch decides from the response's head first: a response refused by its headers, or whose
//! `Content-Length` is over the limit, is not read at all; a body of unknown length is read
//! up to the limit and no further.
//!
//! Such a response is not thrown away: the request whose fetch found it (in this process: its
//! miss, its new variant, its own `no-cache`) is answered with it, unless that request carries
//! credentials (`Cookie`, `Authorization`, `Proxy-Authorization`: the origin's answer to the
//! request rebuilt from the key, which has none of them, may not be the answer to it; it goes
//! to the inner service as it came, a second origin call), as the origin sent it, its
//! body streaming (the bytes the fetch read, then the rest as the origin sends them, never
//! buffered whole; an endless event stream flows through). That request costs the origin one
//! call. Requests that joined the same fetch, and every request for the URL during
//! [`pass_ttl`](CachebackLayerBuilder::pass_ttl), go past the cache to the inner service
//! ("hit-for-pass"); after that, one fetch looks again. A refresh (which no request waits
//! for) drops such a response without reading further.
//!
//! ## Windows
//!
//! From the response's `Cache-Control`, the layer's [`Policy`] filling in what it does not
//! say: `s-maxage`, else `max-age` (less the response's `Age`) → how long it is Fresh
//! ([`Policy::lifetime`] when absent); `stale-while-revalidate` → how long it is then served
//! stale while one refresh runs ([`Policy::stale_ttl`]); `stale-if-error` → how long past its
//! freshness a failing origin is covered ([`Policy::stale_if_error`]): once a refresh fails
//! (the origin answers 500, 502, 503 or 504, fails, or hangs past
//! [`Policy::fetch_timeout`]), the stale response keeps being served until then.
//! `must-revalidate` and `proxy-revalidate` allow no stale serving. `Expires` is not read.
//!
//! ## Headers
//!
//! Every response carries `Cache-Status` (RFC 9211) with the layer's
//! [name](CachebackLayerBuilder::cache_status_name): `cacheback; hit; ttl=12` (fresh),
//! `cacheback; hit; ttl=-3; detail=stale-while-revalidate` (stale, one refresh running),
//! `detail=stale-if-error` (stale past that window because refreshes fail),
//! `cacheback; fwd=miss; fwd-status=200; ttl=60; stored` (fetched for this request; `vary-miss`
//! for a new variant, `request` for a request's own `no-cache`), `cacheback; fwd=miss;
//! detail=no-store` (fetched for this request and not stored, with the reason: `private`,
//! `set-cookie`, `body-too-large`, ...), `cacheback; fwd=bypass; detail=set-cookie` (the URL
//! goes past the cache), `fwd=method`. Stored responses carry `Age`. A request's
//! `If-None-Match` (weak comparison) or `If-Modified-Since` that matches the stored `ETag` or
//! `Last-Modified` of a 200 is answered `304 Not Modified`. A request's `Cache-Control:
//! no-cache` fetches from the origin only with
//! [`honour_no_cache`](CachebackLayerBuilder::honour_no_cache): on a public endpoint, no client
//! should be able to force origin calls.
//!
//! ## Refreshes call the origin again
//!
//! A fetch never sees the client's request: it sends the origin a request rebuilt from the
//! key (method, target, key headers, the `Vary` headers' values) and nothing else, so a stored
//! response can only depend on what its key holds, and a refresh can be made by any process,
//! long after the request that caused it. The origin is the service given to
//! [`build`](CachebackLayerBuilder::build): with axum, the same routes *without* the layer
//! (inside `Router::layer` the layer wraps one route's handler, which cannot route a rebuilt
//! request). The layer registers a job under its [name](CachebackLayerBuilder::name) with the
//! client, so refreshes run where jobs run: the client's in-process worker, or worker
//! processes that build the same layer with the same name and origin (a worker needs no HTTP
//! server). Claims, backoff, generations and the store's limits work as for any job; a
//! response over the client's [`max_value_bytes`](crate::CachebackBuilder::max_value_bytes)
//! is served and not stored. On the memory store a response is kept as it is; on Redis as
//! bytes (status, headers, body), and an entry that does not decode (another version of
//! the layer, corrupt bytes) is a miss.
//!
//! A fetch reads a body only when its response is to be stored (or is an origin error, kept
//! to answer with), whole and up to `max_body_bytes`, before anyone is answered: a stream
//! whose headers allow caching is served once complete, or fails at
//! [`Policy::fetch_timeout`] (mark endless streams `no-store`). A response that is not stored
//! goes to the request that caused its fetch as described above; like every fetched
//! response, it is the origin's answer to the request rebuilt from the key, not to the
//! client's own request (a `Set-Cookie` in it was made for that rebuilt request; `HEAD`
//! gets no body). Requests that go past the cache reach the inner service unchanged.
//!
//! Fleet note: a refresh request on a [`RedisQueue`](crate::queue) carries the key, and so the
//! values of the key and `Vary` headers (a `Cookie`, when a response varies on it), to the
//! workers; the store holds only their hash.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderName};
use http::request::Parts;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::client::{Cacheback, JobHandle};
use crate::error::{BoxError, Error, Result};
use crate::policy::Policy;

mod body;
mod control;
mod handoff;
mod key;
mod origin;
mod respond;
mod service;
mod stored;

pub use body::{CacheBody, OriginBody};
pub use service::CachebackService;

use origin::{Origin, ResponseJob};
use stored::Cached;

/// Decides a request's scope: `Some(scope)` (part of its key; `""` when shared by everyone),
/// or `None` to send it past the cache.
type ScopeFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

/// What every service of one layer shares.
pub(crate) struct Shared {
    pub(crate) handle: JobHandle<ResponseJob>,
    pub(crate) key_headers: Vec<HeaderName>,
    pub(crate) scope: Arc<ScopeFn>,
    pub(crate) honour_no_cache: bool,
    pub(crate) cache_name: String,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("job", &self.handle.name())
            .field("key_headers", &self.key_headers)
            .field("honour_no_cache", &self.honour_no_cache)
            .finish_non_exhaustive()
    }
}

/// A [`tower_layer::Layer`] that serves `GET` and `HEAD` responses from a cacheback client,
/// stale-while-revalidate; see the [module docs](self). Cheap to clone.
#[derive(Debug, Clone)]
pub struct CachebackLayer {
    shared: Arc<Shared>,
}

impl<S> Layer<S> for CachebackLayer {
    type Service = CachebackService<S>;

    fn layer(&self, inner: S) -> CachebackService<S> {
        CachebackService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

impl CachebackLayer {
    /// A builder of a layer whose responses live in `client`'s store.
    pub fn builder(client: &Cacheback) -> CachebackLayerBuilder {
        CachebackLayerBuilder {
            client: client.clone(),
            name: "http".to_owned(),
            defaults: Policy::default()
                .lifetime(Duration::from_secs(60))
                .stale_ttl(Duration::from_secs(60))
                .fetch_timeout(Duration::from_secs(10))
                .fleet_coalescing(true),
            max_body_bytes: 1 << 20,
            key_headers: Vec::new(),
            scope: Arc::new(|parts: &Parts| {
                (!parts.headers.contains_key(AUTHORIZATION)).then(String::new)
            }),
            honour_no_cache: false,
            pass_ttl: Duration::from_secs(60),
            cache_name: "cacheback".to_owned(),
        }
    }

    /// The name of the layer's job.
    pub fn name(&self) -> &str {
        self.shared.handle.name()
    }

    /// Marks the stored response for `request` (its method, URI and headers) stale: it is
    /// served while one refresh replaces it, as [`JobHandle::invalidate`] does for a job.
    /// When the URL's responses vary, the variant the request selects is invalidated too.
    /// Returns whether a refresh was enqueued.
    ///
    /// ```no_run
    /// # async fn f(pages: cacheback::http::CachebackLayer) -> Result<(), Box<dyn std::error::Error>> {
    /// let request = http::Request::get("/timeline/alice").body(())?;
    /// pages.invalidate(&request).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate<B>(&self, request: &Request<B>) -> Result<bool> {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = request.method().clone();
        parts.uri = request.uri().clone();
        parts.headers = request.headers().clone();
        let Some(key) = self.shared.primary_key(&parts) else {
            return Ok(false);
        };
        let handle = &self.shared.handle;
        let mut enqueued = false;
        if let Some(peek) = handle.peek(key.clone()).await?
            && let Some(value) = peek.value
            && let Cached::Variants { names, .. } = &*value
        {
            enqueued |= handle
                .invalidate(key.variant(names, &parts.headers))
                .await?;
        }
        enqueued |= handle.invalidate(key).await?;
        Ok(enqueued)
    }
}

/// Builds a [`CachebackLayer`]. Get one from [`CachebackLayer::builder`].
#[must_use]
pub struct CachebackLayerBuilder {
    client: Cacheback,
    name: String,
    defaults: Policy,
    max_body_bytes: usize,
    key_headers: Vec<HeaderName>,
    scope: Arc<ScopeFn>,
    honour_no_cache: bool,
    pass_ttl: Duration,
    cache_name: String,
}

impl fmt::Debug for CachebackLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachebackLayerBuilder")
            .field("name", &self.name)
            .field("defaults", &self.defaults)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("key_headers", &self.key_headers)
            .finish_non_exhaustive()
    }
}

impl CachebackLayerBuilder {
    /// The name of the layer's job: stable, shared by every process that serves or refreshes
    /// these responses, unique per layer in a client. Default: `"http"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// What applies when a response does not say: [`Policy::lifetime`] for `max-age`,
    /// [`Policy::stale_ttl`] for `stale-while-revalidate`, [`Policy::stale_if_error`] for
    /// `stale-if-error` (counted from the end of freshness); and the job knobs: fetch timeout,
    /// claim timeout, backoff, jitter, queue. Misses are always fetched, and a failing origin
    /// does not make later misses fail without trying. Default: fresh 60 s, stale 60 s, no
    /// `stale-if-error`, fetch timeout 10 s, and a miss fetched once across the fleet on a
    /// shared store ([`Policy::fleet_coalescing`]: keep it in a policy you give here, unless
    /// one origin call per process and cold URL is what you want).
    pub fn policy(mut self, defaults: Policy) -> Self {
        self.defaults = defaults;
        self
    }

    /// Responses with a larger body are not cached: a fetch reads no more of a body than
    /// this (none of one whose `Content-Length` is larger), and hands the response on to the
    /// request that caused it, its body streaming. Default: 1 MiB.
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body_bytes = limit;
        self
    }

    /// Adds a request header whose value is part of the key and is sent to the origin by
    /// fetches (`host` for a service with several virtual hosts, a tenant header).
    pub fn key_header(mut self, name: HeaderName) -> Self {
        self.key_headers.push(name);
        self
    }

    /// The key function: gives a request its scope (a tenant, an auth scope; part of the
    /// key, not sent to the origin), or `None` to send it past the cache. Replaces the
    /// default, which sends requests with an `Authorization` header past the cache and gives
    /// every other request the shared scope `""`.
    pub fn scope(
        mut self,
        scope: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.scope = Arc::new(scope);
        self
    }

    /// Whether a request's `Cache-Control: no-cache` (or `max-age=0`, or `Pragma: no-cache`)
    /// fetches from the origin and stores the answer. Default: false, so that no client can
    /// force origin calls.
    pub fn honour_no_cache(mut self, honour: bool) -> Self {
        self.honour_no_cache = honour;
        self
    }

    /// How long a URL whose response cannot be cached goes past the cache before one fetch
    /// looks again. Default: 60 s.
    pub fn pass_ttl(mut self, ttl: Duration) -> Self {
        self.pass_ttl = ttl;
        self
    }

    /// The cache's name in `Cache-Status`. Default: `cacheback`.
    pub fn cache_status_name(mut self, name: impl Into<String>) -> Self {
        self.cache_name = name.into();
        self
    }

    /// Builds the layer around `origin`, the service that fetches and refreshes call with
    /// requests rebuilt from keys (an axum `Router` of the same routes, without this layer),
    /// and registers its job with the client.
    ///
    /// Fails if the name is not a valid job name or is taken by another job or layer of the
    /// client, if the policy is invalid, or if the cache status name is not a token.
    pub fn build<O, B>(self, origin: O) -> Result<CachebackLayer>
    where
        O: Service<Request<OriginBody>, Response = Response<B>> + Clone + Send + 'static,
        O::Future: Send + 'static,
        O::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let token = |c: char| c.is_ascii_alphanumeric() || "-._:/".contains(c);
        if self.cache_name.is_empty()
            || !self
                .cache_name
                .starts_with(|c: char| c.is_ascii_alphabetic())
            || !self.cache_name.chars().all(token)
        {
            return Err(Error::config(format!(
                "cache status name `{}` is not a token",
                self.cache_name
            )));
        }
        if self.client.job_names().iter().any(|n| **n == *self.name) {
            return Err(Error::config(format!(
                "the client already has a job or layer named `{}`: give each layer its own name",
                self.name
            )));
        }
        let job = ResponseJob {
            name: self.name,
            defaults: self.defaults,
            origin: Origin::new(origin, self.max_body_bytes),
            pass_ttl: self.pass_ttl,
        };
        let handle = self.client.try_job(job)?;
        Ok(CachebackLayer {
            shared: Arc::new(Shared {
                handle,
                key_headers: self.key_headers,
                scope: self.scope,
                honour_no_cache: self.honour_no_cache,
                cache_name: self.cache_name,
            }),
        })
    }
}
