//! The crate's one error type.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Timestamp;

/// A boxed, shareable error source.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A cause kept behind an `Arc`, so that [`Error`] is `Clone`.
type Cause = Arc<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong in cacheback.
///
/// `Error` is `Clone` (causes are kept behind an `Arc`) so that one failed fetch can be handed
/// to every caller that was waiting on it. Its `Display` says in one line what failed and why;
/// [`std::error::Error::source`] hands back the cause itself, so a job's own error type can be
/// recovered with `downcast_ref`:
///
/// ```
/// # use cacheback::Error;
/// # use std::error::Error as _;
/// #[derive(Debug)]
/// struct Upstream(u16);
/// # impl std::fmt::Display for Upstream {
/// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "upstream said {}", self.0) }
/// # }
/// # impl std::error::Error for Upstream {}
/// # fn handle(err: Error) {
/// if let Some(Upstream(status)) = err.source().and_then(|s| s.downcast_ref::<Upstream>()) {
///     println!("the upstream answered {status}");
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The job's `fetch` returned an error.
    Fetch {
        /// The job's name.
        job: Arc<str>,
        /// What `fetch` returned.
        source: Cause,
    },
    /// The job's `fetch` panicked; the panic was caught.
    FetchPanicked {
        /// The job's name.
        job: Arc<str>,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// Fetches of the key failed recently, and the next attempt is not due yet: the upstream is
    /// not called again before `retry_after` (see
    /// [`Policy::miss_backoff`](crate::Policy::miss_backoff)).
    BackingOff {
        /// The job's name.
        job: Arc<str>,
        /// Consecutive failed fetches of the key.
        failures: u32,
        /// When the next fetch may be made.
        retry_after: Timestamp,
        /// The last failure, when this process saw it.
        last: Option<Arc<Error>>,
    },
    /// An operation did not finish in time.
    Timeout {
        /// What timed out (e.g. "fetch of job `x`").
        what: String,
        /// The bound that was exceeded.
        after: Duration,
    },
    /// A store backend failed.
    Store {
        /// The backend's name (e.g. "memory", "redis").
        backend: &'static str,
        /// The backend's error.
        source: Cause,
    },
    /// A queue backend failed.
    Queue {
        /// The backend's name (e.g. "local", "redis").
        backend: &'static str,
        /// The backend's error.
        source: Cause,
    },
    /// A value or message could not be encoded or decoded.
    Codec {
        /// What went wrong, with the serializer's own message where it gave one.
        message: String,
    },
    /// A key could not be derived from a job's name and args.
    Key {
        /// What went wrong.
        message: String,
    },
    /// A value is larger than the configured limit; nothing was stored.
    TooLarge {
        /// The job's name.
        job: Arc<str>,
        /// The encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Two different job types were registered under one name.
    JobConflict {
        /// The contested name.
        name: Arc<str>,
    },
    /// A tag is invalid (given to `invalidate_tag` or `delete_tag`, or by a job's
    /// [`tags`](crate::Job::tags)); nothing was written.
    InvalidTag {
        /// Why, naming the tag.
        message: String,
    },
    /// Invalid configuration.
    Config {
        /// What is wrong.
        message: String,
    },
    /// The client or worker is shutting down.
    Shutdown,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Fetch { job, source } => write!(f, "fetch of job `{job}` failed: {source}"),
            Error::FetchPanicked { job, message } => {
                write!(f, "fetch of job `{job}` panicked: {message}")
            }
            Error::BackingOff {
                job,
                failures,
                retry_after,
                ..
            } => write!(
                f,
                "job `{job}`: not fetching again before {retry_after} after {failures} failed \
                 fetch{}",
                if *failures == 1 { "" } else { "es" }
            ),
            Error::Timeout { what, after } => write!(f, "{what} timed out after {after:?}"),
            Error::Store { backend, source } => write!(f, "{backend} store error: {source}"),
            Error::Queue { backend, source } => write!(f, "{backend} queue error: {source}"),
            Error::Codec { message } => write!(f, "codec error: {message}"),
            Error::Key { message } => write!(f, "invalid key: {message}"),
            Error::TooLarge { job, size, limit } => write!(
                f,
                "value of job `{job}` is {size} bytes, over the limit of {limit} bytes"
            ),
            Error::JobConflict { name } => write!(
                f,
                "job name `{name}` is already registered for another job type"
            ),
            Error::InvalidTag { message } => write!(f, "invalid tag: {message}"),
            Error::Config { message } => write!(f, "invalid configuration: {message}"),
            Error::Shutdown => f.write_str("cacheback is shutting down"),
        }
    }
}

impl StdError for Error {
    /// The cause itself (a job's own error, a backend's error), not a wrapper around it, so
    /// that `downcast_ref` reaches it.
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Fetch { source, .. }
            | Error::Store { source, .. }
            | Error::Queue { source, .. } => Some(&**source),
            Error::BackingOff {
                last: Some(last), ..
            } => Some(&**last),
            _ => None,
        }
    }
}

/// Turns a boxed error into a shared cause without wrapping it again, so the cause's own type
/// stays reachable by `downcast_ref`.
fn cause(source: impl Into<BoxError>) -> Cause {
    Arc::from(source.into())
}

impl Error {
    pub(crate) fn fetch(job: &Arc<str>, source: impl Into<BoxError>) -> Self {
        Error::Fetch {
            job: Arc::clone(job),
            source: cause(source),
        }
    }

    pub(crate) fn store(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Store {
            backend,
            source: cause(source),
        }
    }

    pub(crate) fn queue(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Queue {
            backend,
            source: cause(source),
        }
    }

    pub(crate) fn codec(message: impl std::fmt::Display) -> Self {
        Error::Codec {
            message: message.to_string(),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config {
            message: message.into(),
        }
    }

    /// A short, stable label for metrics and logs (`"fetch"`, `"timeout"`, `"store"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Fetch { .. } => "fetch",
            Error::FetchPanicked { .. } => "panic",
            Error::BackingOff { .. } => "backing_off",
            Error::Timeout { .. } => "timeout",
            Error::Store { .. } => "store",
            Error::Queue { .. } => "queue",
            Error::Codec { .. } => "codec",
            Error::Key { .. } => "key",
            Error::TooLarge { .. } => "too_large",
            Error::JobConflict { .. } => "job_conflict",
            Error::InvalidTag { .. } => "invalid_tag",
            Error::Config { .. } => "config",
            Error::Shutdown => "shutdown",
        }
    }
}

/// An error and its causes on one line (`what failed: why: root cause`), for log lines and
/// events: `tracing`'s `%error` alone shows only the top. A cause whose text the line already
/// holds (a `Display` that includes its source) is not repeated.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !text.is_empty() && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            next = cause.source();
        }
        f.write_str(&line)
    }
}

/// Renders a caught panic payload as text.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Upstream(u16);

    impl fmt::Display for Upstream {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "upstream answered {}", self.0)
        }
    }

    impl StdError for Upstream {}

    #[test]
    fn messages_say_why_and_keep_their_source() {
        let err = Error::fetch(&Arc::from("tweets"), "upstream said no");
        assert_eq!(
            err.to_string(),
            "fetch of job `tweets` failed: upstream said no"
        );
        assert_eq!(err.source().unwrap().to_string(), "upstream said no");
        let too_large = Error::TooLarge {
            job: Arc::from("j"),
            size: 11,
            limit: 10,
        };
        assert_eq!(
            too_large.to_string(),
            "value of job `j` is 11 bytes, over the limit of 10 bytes"
        );
        assert_eq!(too_large.kind(), "too_large");
    }

    #[test]
    fn the_source_is_the_users_own_error() {
        let err = Error::fetch(&Arc::from("tweets"), Upstream(503));
        let upstream = err.source().and_then(|s| s.downcast_ref::<Upstream>());
        assert_eq!(upstream.map(|u| u.0), Some(503));
        let store = Error::store("redis", Upstream(1));
        assert!(store.source().unwrap().downcast_ref::<Upstream>().is_some());
    }

    #[test]
    fn a_chain_names_every_cause_once() {
        #[derive(Debug)]
        struct Outer(Upstream);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("redis GET failed")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let err = Error::store("redis", Outer(Upstream(7)));
        assert_eq!(
            Chain(&err).to_string(),
            "redis store error: redis GET failed: upstream answered 7"
        );
    }
}
