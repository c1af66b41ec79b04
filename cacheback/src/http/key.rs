//! The key of a cached response: method, normalised target, the request header values the key
//! holds (configured ones, and those the response's `Vary` names), and the scope the user's
//! key function gave the request. It is also everything a refresh sends to the origin.

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use serde::{Deserialize, Serialize};

use crate::http::handoff::Handoff;

/// One request header in a key: its lowercase name and its value, if the request had it.
pub(crate) type KeyHeader = (String, Option<Bytes>);

/// The args of the response job: what identifies one cached response, and the request a
/// refresh rebuilds from it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct RequestKey {
    pub(crate) method: String,
    /// Path and query, normalised (see [`normalise_target`]).
    pub(crate) target: String,
    /// What the layer's key function said about the request (tenant, auth scope).
    pub(crate) scope: String,
    /// The configured key headers, in configuration order.
    pub(crate) headers: Vec<KeyHeader>,
    /// `None` for the URL's primary key; for a variant of a response with `Vary`, the values
    /// of the headers it names.
    pub(crate) vary: Option<Vec<KeyHeader>>,
    /// Where a fetch in this process leaves the request that read with this key a response it
    /// does not store. No part of the key: not serialized (so not in its digest, and `None`
    /// after a queue), compared, hashed or printed.
    #[serde(skip)]
    pub(crate) handoff: Handoff,
}

impl fmt::Debug for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestKey")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("scope", &self.scope)
            .field("headers", &self.headers)
            .field("vary", &self.vary)
            .finish()
    }
}

impl RequestKey {
    /// The primary key of a request.
    pub(crate) fn primary(
        method: &Method,
        target: String,
        scope: String,
        names: &[HeaderName],
        headers: &HeaderMap,
    ) -> Self {
        RequestKey {
            method: method.as_str().to_owned(),
            target,
            scope,
            headers: values_of(names.iter().map(HeaderName::as_str), headers),
            vary: None,
            handoff: Handoff::default(),
        }
    }

    /// The key with `handoff`, for a request that takes what its fetch does not store.
    pub(crate) fn with_handoff(self, handoff: Handoff) -> Self {
        RequestKey { handoff, ..self }
    }

    /// The key of the variant that `headers` select among the ones `vary` names.
    pub(crate) fn variant(&self, vary: &[String], headers: &HeaderMap) -> Self {
        RequestKey {
            vary: Some(values_of(vary.iter().map(String::as_str), headers)),
            ..self.clone()
        }
    }

    /// The request a fetch sends to the origin: method, target and the key's headers, nothing
    /// else. `None` if the key does not make a valid request (it came from another build).
    pub(crate) fn to_request<B: Default>(&self) -> Option<Request<B>> {
        let mut request = Request::builder()
            .method(Method::from_bytes(self.method.as_bytes()).ok()?)
            .uri(&self.target);
        let sent = self.headers.iter().chain(self.vary.iter().flatten());
        for (name, value) in sent {
            if let Some(value) = value {
                let value = HeaderValue::from_bytes(value).ok()?;
                request = request.header(HeaderName::from_bytes(name.as_bytes()).ok()?, value);
            }
        }
        request.body(B::default()).ok()
    }
}

/// The values of the headers `names` in `headers` (several values of one header joined with
/// `, `, as a field's values may be).
fn values_of<'a>(names: impl Iterator<Item = &'a str>, headers: &HeaderMap) -> Vec<KeyHeader> {
    names
        .map(|name| {
            let mut values = headers.get_all(name).iter();
            let value = values.next().map(|first| {
                let mut joined = first.as_bytes().to_vec();
                for more in values {
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(more.as_bytes());
                }
                Bytes::from(joined)
            });
            (name.to_ascii_lowercase(), value)
        })
        .collect()
}

/// A request target in one spelling per resource: percent-escapes upper-cased, unreserved
/// characters unescaped, query parameters sorted by name (the order of repeated names kept),
/// an empty query dropped. `/a%7e?b=2&a=1` and `/a~?a=1&b=2` are one key.
pub(crate) fn normalise_target(path: &str, query: Option<&str>) -> String {
    let mut target = normalise_escapes(if path.is_empty() { "/" } else { path });
    let mut params: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter(|param| !param.is_empty())
        .map(normalise_escapes)
        .collect();
    if !params.is_empty() {
        params.sort_by(|a, b| param_name(a).cmp(param_name(b)));
        target.push('?');
        target.push_str(&params.join("&"));
    }
    target
}

fn param_name(param: &str) -> &str {
    param.split('=').next().unwrap_or(param)
}

fn normalise_escapes(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2)))
        {
            let byte = hi * 16 + lo;
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                out.push(char::from(byte));
            } else {
                out.push('%');
                out.push_str(&format!("{byte:02X}"));
            }
            i += 3;
            continue;
        }
        // `text` came from a valid URI: every byte outside escapes is ASCII.
        out.push(char::from(bytes[i]));
        i += 1;
    }
    out
}

fn hex(byte: Option<&u8>) -> Option<u8> {
    char::from(*byte?)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_resource_has_one_target() {
        assert_eq!(normalise_target("/a%7e", Some("b=2&a=1")), "/a~?a=1&b=2");
        assert_eq!(normalise_target("/a~", Some("a=1&b=2")), "/a~?a=1&b=2");
        assert_eq!(normalise_target("/x%2f", None), "/x%2F");
        assert_eq!(normalise_target("/x", Some("")), "/x");
        assert_eq!(normalise_target("", None), "/");
        assert_eq!(
            normalise_target("/x", Some("t=2&s=1&t=1")),
            "/x?s=1&t=2&t=1",
            "repeated names keep their order"
        );
        assert_eq!(normalise_target("/%zz%4", None), "/%zz%4");
    }

    #[test]
    fn a_key_rebuilds_its_request() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.com"));
        headers.append("accept-language", HeaderValue::from_static("fr"));
        headers.append("accept-language", HeaderValue::from_static("de"));
        headers.insert("cookie", HeaderValue::from_static("secret"));
        let names = [HeaderName::from_static("host")];
        let key = RequestKey::primary(
            &Method::GET,
            "/p?a=1".into(),
            String::new(),
            &names,
            &headers,
        )
        .variant(&["Accept-Language".into(), "x-absent".into()], &headers);
        let request: Request<()> = key.to_request().unwrap();
        assert_eq!(request.uri(), "/p?a=1");
        assert_eq!(request.headers()["host"], "example.com");
        assert_eq!(request.headers()["accept-language"], "fr, de");
        assert!(
            request.headers().get("cookie").is_none(),
            "only the key's headers"
        );
        assert!(request.headers().get("x-absent").is_none());
    }

    #[test]
    fn the_handoff_is_no_part_of_the_key() {
        let key = RequestKey::primary(
            &Method::GET,
            "/p".into(),
            String::new(),
            &[],
            &HeaderMap::new(),
        );
        let armed = key.clone().with_handoff(Handoff::armed());
        let encode = |key: &RequestKey| {
            let mut out = Vec::new();
            crate::key::canonical_encode(key, &mut out).unwrap();
            out
        };
        assert_eq!(encode(&armed), encode(&key), "the canonical encoding");
        assert_eq!(
            crate::key::digest("p", "pages", &armed).unwrap(),
            crate::key::digest("p", "pages", &key).unwrap()
        );
        assert_eq!(armed, key);
        assert_eq!(format!("{armed:?}"), format!("{key:?}"));
        // After a queue (the codec's bytes), the key has no handoff.
        let bytes = postcard::to_stdvec(&armed).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&key).unwrap());
        let back: RequestKey = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, key);
        assert!(back.handoff.take().is_none(), "nothing to take from");
    }
}
