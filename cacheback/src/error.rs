//! The crate's one error type.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

/// A boxed, shareable error source.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in cacheback.
///
/// `Error` is `Clone` (sources are kept behind an `Arc`) so that one failed fetch can be handed to
/// every caller that was waiting on it. The cause stays reachable through
/// [`std::error::Error::source`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The job's `fetch` returned an error.
    #[error("fetch of job `{job}` failed")]
    Fetch {
        /// The job's name.
        job: Arc<str>,
        /// What `fetch` returned.
        #[source]
        source: Arc<dyn StdError + Send + Sync + 'static>,
    },
    /// The job's `fetch` panicked; the panic was caught.
    #[error("fetch of job `{job}` panicked: {message}")]
    FetchPanicked {
        /// The job's name.
        job: Arc<str>,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// An operation did not finish in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What timed out (e.g. "fetch of job `x`").
        what: String,
        /// The bound that was exceeded.
        after: Duration,
    },
    /// A store backend failed.
    #[error("{backend} store error")]
    Store {
        /// The backend's name (e.g. "memory", "redis").
        backend: &'static str,
        /// The backend's error.
        #[source]
        source: Arc<dyn StdError + Send + Sync + 'static>,
    },
    /// A queue backend failed.
    #[error("{backend} queue error")]
    Queue {
        /// The backend's name (e.g. "local", "redis").
        backend: &'static str,
        /// The backend's error.
        #[source]
        source: Arc<dyn StdError + Send + Sync + 'static>,
    },
    /// A value or message could not be encoded or decoded.
    #[error("codec error: {message}")]
    Codec {
        /// What went wrong.
        message: String,
    },
    /// A key could not be derived from a job's name and args.
    #[error("invalid key: {message}")]
    Key {
        /// What went wrong.
        message: String,
    },
    /// A value is larger than the configured limit; nothing was stored.
    #[error("value of job `{job}` is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The job's name.
        job: Arc<str>,
        /// The encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Two different job types were registered under one name.
    #[error("job name `{name}` is already registered for another job type")]
    JobConflict {
        /// The contested name.
        name: Arc<str>,
    },
    /// Invalid configuration.
    #[error("invalid configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
    /// The client or worker is shutting down.
    #[error("cacheback is shutting down")]
    Shutdown,
}

impl Error {
    pub(crate) fn fetch(job: &Arc<str>, source: impl Into<BoxError>) -> Self {
        Error::Fetch {
            job: Arc::clone(job),
            source: Arc::from(source.into()),
        }
    }

    pub(crate) fn store(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Store {
            backend,
            source: Arc::from(source.into()),
        }
    }

    pub(crate) fn queue(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Queue {
            backend,
            source: Arc::from(source.into()),
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
            Error::Timeout { .. } => "timeout",
            Error::Store { .. } => "store",
            Error::Queue { .. } => "queue",
            Error::Codec { .. } => "codec",
            Error::Key { .. } => "key",
            Error::TooLarge { .. } => "too_large",
            Error::JobConflict { .. } => "job_conflict",
            Error::Config { .. } => "config",
            Error::Shutdown => "shutdown",
        }
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

    #[test]
    fn messages_are_lowercase_and_keep_their_source() {
        let err = Error::fetch(&Arc::from("tweets"), "upstream said no");
        assert_eq!(err.to_string(), "fetch of job `tweets` failed");
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
}
