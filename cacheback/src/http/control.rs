//! `Cache-Control` (RFC 9111 §5.2, RFC 5861): the directives the layer acts on, and the
//! windows a response's directives give it.

use std::time::Duration;

use http::HeaderMap;
use http::header::{CACHE_CONTROL, PRAGMA};

use crate::policy::{Lifespan, Policy};

/// The directives of one message, as far as the layer acts on them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
}

impl Directives {
    /// The `Cache-Control` directives of `headers` (all its fields, in order; names are
    /// case-insensitive, a qualified `no-cache="f"` or `private="f"` counts as the plain one,
    /// an unreadable number as 0, that is: already stale).
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut d = Directives::default();
        for field in headers.get_all(CACHE_CONTROL) {
            let Ok(field) = field.to_str() else { continue };
            for directive in field.split(',') {
                let (name, value) = match directive.split_once('=') {
                    Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let seconds = || Some(value.and_then(|v| v.parse().ok()).unwrap_or(0));
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                    "max-age" => d.max_age = d.max_age.or_else(seconds),
                    "s-maxage" => d.s_maxage = d.s_maxage.or_else(seconds),
                    "stale-while-revalidate" => {
                        d.stale_while_revalidate = d.stale_while_revalidate.or_else(seconds);
                    }
                    "stale-if-error" => d.stale_if_error = d.stale_if_error.or_else(seconds),
                    _ => {}
                }
            }
        }
        d
    }

    /// Whether a request asks for a response from the origin (`Cache-Control: no-cache`,
    /// `max-age=0`, or `Pragma: no-cache` without `Cache-Control`).
    pub(crate) fn request_wants_origin(headers: &HeaderMap) -> bool {
        if !headers.contains_key(CACHE_CONTROL) {
            return headers
                .get_all(PRAGMA)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"));
        }
        let d = Directives::of(headers);
        d.no_cache || d.max_age == Some(0)
    }

    /// How long a response with these directives lives, `age` seconds old when it was
    /// received; the layer's policy fills in what the response does not say. The stale window
    /// is `stale-while-revalidate`; `stale-if-error`, counted from the end of freshness as in
    /// RFC 5861, becomes the lifespan's extension past that window.
    pub(crate) fn lifespan(&self, age: u64, defaults: &Policy) -> Lifespan {
        let secs = Duration::from_secs;
        let lifetime = self
            .s_maxage
            .or(self.max_age)
            .map_or(defaults.lifetime, |s| secs(s.saturating_sub(age)));
        if self.must_revalidate {
            return Lifespan::new(lifetime, Duration::ZERO);
        }
        let stale = self.stale_while_revalidate.map_or(defaults.stale_ttl, secs);
        let if_error = self.stale_if_error.map(secs).or(defaults.stale_if_error);
        let lifespan = Lifespan::new(lifetime, stale);
        match if_error.and_then(|e| e.checked_sub(stale)) {
            Some(extra) if !extra.is_zero() => lifespan.with_stale_if_error(extra),
            _ => lifespan,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(cache_control: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in cache_control {
            h.append(CACHE_CONTROL, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn directives_are_read_from_every_field() {
        let d = Directives::of(&headers(&[
            "public, Max-Age=60",
            "stale-while-revalidate=\"30\", stale-if-error=600, private=\"set-cookie\"",
        ]));
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.stale_while_revalidate, Some(30));
        assert_eq!(d.stale_if_error, Some(600));
        assert!(d.private && !d.no_store && !d.no_cache);
        assert_eq!(Directives::of(&headers(&["max-age=soon"])).max_age, Some(0));
        assert_eq!(
            Directives::of(&headers(&["max-age=5, max-age=9"])).max_age,
            Some(5)
        );
    }

    #[test]
    fn windows_come_from_the_response_then_the_policy() {
        let policy = Policy::default()
            .lifetime(Duration::from_secs(7))
            .stale_ttl(Duration::from_secs(8));
        let secs = Duration::from_secs;
        let own = Directives::of(&headers(&[
            "max-age=60, s-maxage=90, stale-while-revalidate=30, stale-if-error=600",
        ]));
        assert_eq!(
            own.lifespan(10, &policy),
            Lifespan::new(secs(80), secs(30)).with_stale_if_error(secs(570))
        );
        let none = Directives::of(&HeaderMap::new());
        assert_eq!(none.lifespan(0, &policy), Lifespan::new(secs(7), secs(8)));
        let strict = Directives::of(&headers(&["max-age=5, must-revalidate, stale-if-error=9"]));
        assert_eq!(strict.lifespan(0, &policy), Lifespan::new(secs(5), secs(0)));
        let short_error = Directives::of(&headers(&["max-age=5, stale-if-error=3"]));
        assert_eq!(
            short_error.lifespan(0, &policy),
            Lifespan::new(secs(5), secs(8))
        );
    }

    #[test]
    fn a_request_asks_for_the_origin_only_when_it_says_so() {
        assert!(Directives::request_wants_origin(&headers(&["no-cache"])));
        assert!(Directives::request_wants_origin(&headers(&["max-age=0"])));
        assert!(!Directives::request_wants_origin(&headers(&["max-age=10"])));
        let mut pragma = HeaderMap::new();
        pragma.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(Directives::request_wants_origin(&pragma));
        assert!(!Directives::request_wants_origin(&HeaderMap::new()));
    }
}
