//! Answers made from stored responses: `Age`, `Cache-Status` (RFC 9211), `304 Not Modified`
//! from the stored validators, `HEAD` without a body.

use std::fmt::Write as _;
use std::time::Duration;

use http::header::{self, AGE, ETAG, HeaderName, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::http::body::CacheBody;
use crate::http::stored::StoredResponse;

/// The `Cache-Status` header (RFC 9211).
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a request went to the origin (RFC 9211 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fwd {
    /// No stored response for the URL.
    Miss,
    /// The URL's response varies, and this variant was not stored.
    VaryMiss,
    /// The stored response was too stale to serve.
    Stale,
    /// The request asked for the origin (`Cache-Control: no-cache`, when honoured).
    Request,
    /// The request is not served from cache (its scope, or the URL's response cannot be).
    Bypass,
    /// The method is not cached.
    Method,
}

impl Fwd {
    fn as_str(self) -> &'static str {
        match self {
            Fwd::Miss => "miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
        }
    }
}

/// How a stored response came to answer this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// Fresh from the store.
    Hit,
    /// Stale from the store, within `stale-while-revalidate` (or, with `if_error`, past it
    /// because refreshes failed).
    Stale { if_error: bool },
    /// Fetched from the origin for this request; `stored` unless it could not be cached.
    Fetched { fwd: Fwd, stored: bool },
}

/// One `Cache-Status` member.
pub(crate) struct CacheStatus<'a> {
    pub(crate) cache: &'a str,
    pub(crate) served: Option<Served>,
    pub(crate) fwd: Option<Fwd>,
    pub(crate) fwd_status: Option<StatusCode>,
    pub(crate) ttl: Option<i64>,
    pub(crate) detail: Option<&'a str>,
}

impl<'a> CacheStatus<'a> {
    /// A request that went past the cache.
    pub(crate) fn forwarded(cache: &'a str, fwd: Fwd, detail: Option<&'a str>) -> Self {
        CacheStatus {
            cache,
            served: None,
            fwd: Some(fwd),
            fwd_status: None,
            ttl: None,
            detail,
        }
    }

    pub(crate) fn value(&self) -> HeaderValue {
        let mut s = self.cache.to_owned();
        let mut detail = self.detail;
        let mut stored = false;
        match self.served {
            Some(Served::Hit) => s.push_str("; hit"),
            Some(Served::Stale { if_error }) => {
                s.push_str("; hit");
                detail = Some(if if_error {
                    "stale-if-error"
                } else {
                    "stale-while-revalidate"
                });
            }
            Some(Served::Fetched { fwd, stored: s2 }) => {
                let _ = write!(s, "; fwd={}", fwd.as_str());
                stored = s2;
            }
            None => {}
        }
        if let Some(fwd) = self.fwd {
            let _ = write!(s, "; fwd={}", fwd.as_str());
        }
        if let Some(status) = self.fwd_status {
            let _ = write!(s, "; fwd-status={}", status.as_u16());
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(s, "; ttl={ttl}");
        }
        if stored {
            s.push_str("; stored");
        }
        if let Some(detail) = detail {
            let _ = write!(s, "; detail={detail}");
        }
        HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("cacheback"))
    }
}

/// The answer to a request with method `method` and `headers` from `stored`, served `age`
/// after it was fetched.
pub(crate) fn from_stored<B>(
    method: &Method,
    request: &HeaderMap,
    stored: &StoredResponse,
    served: Served,
    age: Duration,
    cache: &str,
) -> Response<CacheBody<B>> {
    let age = stored.age.saturating_add(age.as_secs());
    let lifetime = stored.lifespan.lifetime_ms / 1000;
    let mut ttl = i64::try_from(lifetime).unwrap_or(i64::MAX) - i64::try_from(age).unwrap_or(0);
    if let Served::Stale { .. } = served {
        // Stale before its lifetime ran out: it was invalidated.
        ttl = ttl.min(0);
    }
    let status = CacheStatus {
        cache,
        served: Some(served),
        fwd: None,
        fwd_status: matches!(served, Served::Fetched { .. }).then(|| stored.status()),
        ttl: Some(ttl),
        detail: None,
    };
    let not_modified = stored.status() == StatusCode::OK && not_modified(request, stored);
    let mut headers = stored.header_map();
    if not_modified {
        headers.retain_304();
    }
    headers.insert(AGE, HeaderValue::from(age));
    headers.append(CACHE_STATUS, status.value());
    let body = if not_modified || method == Method::HEAD {
        CacheBody::bytes(bytes::Bytes::new())
    } else {
        CacheBody::bytes(stored.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        stored.status()
    };
    *response.headers_mut() = headers;
    response
}

trait Retain304 {
    fn retain_304(&mut self);
}

impl Retain304 for HeaderMap {
    /// Keeps what RFC 9110 §15.4.5 asks a 304 to carry.
    fn retain_304(&mut self) {
        const KEPT: [HeaderName; 7] = [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::VARY,
            header::LAST_MODIFIED,
        ];
        let kept: Vec<_> = KEPT
            .iter()
            .flat_map(|name| {
                self.get_all(name)
                    .iter()
                    .map(|v| (name.clone(), v.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        self.clear();
        for (name, value) in kept {
            self.append(name, value);
        }
    }
}

/// Whether the request's validators match the stored response (RFC 9110 §13.2.2):
/// `If-None-Match` (weak comparison, `*` matches) first, else `If-Modified-Since`.
fn not_modified(request: &HeaderMap, stored: &StoredResponse) -> bool {
    if request.contains_key(IF_NONE_MATCH) {
        let Some(etag) = stored.header(&ETAG) else {
            return false;
        };
        return request
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| {
                let tag = tag.trim();
                tag == "*" || weak(tag) == weak(etag.trim())
            });
    }
    let since = request
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
    let modified = stored
        .header(&LAST_MODIFIED)
        .and_then(|v| httpdate::parse_http_date(v).ok());
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}

fn weak(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(headers: &[(&'static str, &'static str)]) -> StoredResponse {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(*n, HeaderValue::from_static(v));
        }
        StoredResponse::new(StatusCode::OK, &map, bytes::Bytes::from_static(b"x"))
    }

    fn request(headers: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(*n, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn validators_decide_not_modified() {
        let s = stored(&[
            ("etag", "\"v1\""),
            ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ]);
        assert!(not_modified(
            &request(&[("if-none-match", "\"v0\", W/\"v1\"")]),
            &s
        ));
        assert!(not_modified(&request(&[("if-none-match", "*")]), &s));
        assert!(!not_modified(&request(&[("if-none-match", "\"v2\"")]), &s));
        assert!(
            !not_modified(
                &request(&[
                    ("if-none-match", "\"v2\""),
                    ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT"),
                ]),
                &s
            ),
            "If-None-Match wins over If-Modified-Since"
        );
        assert!(not_modified(
            &request(&[("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            &s
        ));
        assert!(!not_modified(
            &request(&[("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT")]),
            &s
        ));
        assert!(!not_modified(
            &request(&[("if-modified-since", "garbage")]),
            &s
        ));
        assert!(!not_modified(
            &request(&[("if-none-match", "*")]),
            &stored(&[])
        ));
    }

    #[test]
    fn cache_status_says_how_the_response_was_served() {
        let status = |served, ttl| {
            CacheStatus {
                cache: "cb",
                served: Some(served),
                fwd: None,
                fwd_status: None,
                ttl: Some(ttl),
                detail: None,
            }
            .value()
        };
        assert_eq!(status(Served::Hit, 5), "cb; hit; ttl=5");
        assert_eq!(
            status(Served::Stale { if_error: false }, -3),
            "cb; hit; ttl=-3; detail=stale-while-revalidate"
        );
        assert_eq!(
            status(
                Served::Fetched {
                    fwd: Fwd::VaryMiss,
                    stored: true
                },
                60
            ),
            "cb; fwd=vary-miss; ttl=60; stored"
        );
        assert_eq!(
            CacheStatus::forwarded("cb", Fwd::Bypass, Some("set-cookie")).value(),
            "cb; fwd=bypass; detail=set-cookie"
        );
    }
}
