//! What the layer stores under a key: a response (status, headers, body bytes, its lifespan),
//! or a marker that sends reads elsewhere (to a variant, or past the cache).

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::policy::Lifespan;

/// The value of the response job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Cached {
    /// A response, served to every request with this key.
    Response(StoredResponse),
    /// The URL's responses vary on these request headers (lowercase, sorted): each
    /// combination of their values is a key of its own.
    Variants {
        names: Vec<String>,
        lifespan: StoredLifespan,
    },
    /// The URL's response cannot be cached (why): requests go to the service as they are
    /// until this marker expires.
    Pass { reason: String, ttl_ms: u64 },
}

impl Cached {
    /// How long the value lives in the store.
    pub(crate) fn lifespan(&self) -> Lifespan {
        match self {
            Cached::Response(response) => response.lifespan.into(),
            Cached::Variants { lifespan, .. } => (*lifespan).into(),
            Cached::Pass { ttl_ms, .. } => {
                Lifespan::new(Duration::from_millis(*ttl_ms), Duration::ZERO)
            }
        }
    }
}

/// A [`Lifespan`] in the stored value, so that the layer can tell (from the value alone) how
/// fresh or stale a served response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredLifespan {
    pub(crate) lifetime_ms: u64,
    pub(crate) stale_ms: u64,
    pub(crate) if_error_ms: Option<u64>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<Lifespan> for StoredLifespan {
    fn from(l: Lifespan) -> Self {
        StoredLifespan {
            lifetime_ms: millis(l.lifetime),
            stale_ms: millis(l.stale_ttl),
            if_error_ms: l.stale_if_error.map(millis),
        }
    }
}

impl From<StoredLifespan> for Lifespan {
    fn from(s: StoredLifespan) -> Self {
        let l = Lifespan::new(
            Duration::from_millis(s.lifetime_ms),
            Duration::from_millis(s.stale_ms),
        );
        match s.if_error_ms {
            Some(ms) => l.with_stale_if_error(Duration::from_millis(ms)),
            None => l,
        }
    }
}

/// A response as the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredResponse {
    pub(crate) status: u16,
    /// End-to-end headers, lowercase names, in order.
    pub(crate) headers: Vec<(String, Bytes)>,
    pub(crate) body: Bytes,
    pub(crate) lifespan: StoredLifespan,
    /// The response's `Age` when the origin sent it, in seconds.
    pub(crate) age: u64,
}

/// A response's `Age` in seconds (0 when it has none, or one that does not parse).
pub(crate) fn age_of(headers: &HeaderMap) -> u64 {
    headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
        .unwrap_or(0)
}

/// Headers that describe one connection or one cache's view, never stored.
const NOT_STORED: [HeaderName; 9] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::AGE,
    HeaderName::from_static("keep-alive"),
];

impl StoredResponse {
    pub(crate) fn new(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Self {
        let age = age_of(headers);
        StoredResponse {
            status: status.as_u16(),
            headers: headers
                .iter()
                .filter(|(name, _)| !NOT_STORED.contains(name))
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        Bytes::copy_from_slice(value.as_bytes()),
                    )
                })
                .collect(),
            body,
            lifespan: Lifespan::new(Duration::ZERO, Duration::ZERO).into(),
            age,
        }
    }

    /// The status, or 500 for a number that is not one (an entry written by another build).
    pub(crate) fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The stored headers (any that do not parse are left out).
    pub(crate) fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.headers.len() + 2);
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_maybe_shared(value.clone()),
            ) {
                map.append(name, value);
            }
        }
        map
    }

    /// The first value of header `name`, as text.
    pub(crate) fn header(&self, name: &HeaderName) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name.as_str())
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_response_keeps_end_to_end_headers_and_bytes() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(header::AGE, HeaderValue::from_static("12"));
        headers.append("x-many", HeaderValue::from_static("1"));
        headers.append("x-many", HeaderValue::from_static("2"));
        let body = Bytes::from_static(&[0, 159, 146, 150, 255]);
        let stored = StoredResponse::new(StatusCode::OK, &headers, body.clone());
        assert_eq!(stored.age, 12);
        let map = stored.header_map();
        assert!(map.get(header::CONNECTION).is_none() && map.get(header::AGE).is_none());
        assert_eq!(map.get_all("x-many").iter().count(), 2);
        assert_eq!(stored.header(&header::CONTENT_TYPE), Some("image/png"));
        let cached = Cached::Response(stored);
        let bytes = postcard::to_stdvec(&cached).unwrap();
        let Cached::Response(back) = postcard::from_bytes(&bytes).unwrap() else {
            panic!("a response decodes as a response");
        };
        assert_eq!(back.body, body);
    }

    #[test]
    fn lifespans_survive_the_store() {
        let l = Lifespan::new(Duration::from_millis(1500), Duration::from_secs(3))
            .with_stale_if_error(Duration::from_secs(9));
        assert_eq!(Lifespan::from(StoredLifespan::from(l)), l);
    }
}
