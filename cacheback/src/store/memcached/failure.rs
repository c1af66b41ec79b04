//! Why a memcached call failed, in plain words. Private: it reaches users only as the `source`
//! of an [`Error::Store`](crate::Error::Store); no `async_memcached` type leaves this module.

use std::fmt;
use std::io;
use std::time::Duration;

use async_memcached::{Error as McError, ErrorKind, Status};

use crate::error::Error;

/// The backend name in errors and metrics.
pub(super) const BACKEND: &str = "memcached";

/// Why a memcached call failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The whole call (waiting for a connection included) took longer than its bound.
    Timeout { what: &'static str, after: Duration },
    /// No connection could be opened.
    Connect { source: io::Error },
    /// Opening a connection took longer than its bound.
    ConnectTimeout { after: Duration },
    /// The connection failed while a command was on it.
    Io {
        what: &'static str,
        source: io::Error,
    },
    /// memcached answered with an error (`SERVER_ERROR ...`, `CLIENT_ERROR ...`).
    Refused { what: &'static str, message: String },
    /// memcached answered something this store does not expect.
    Protocol { what: &'static str, message: String },
    /// Other writers kept changing the key's item: every compare-and-swap attempt lost.
    Contention { what: &'static str, attempts: u32 },
}

impl Failure {
    /// A failed command, from the client library's error.
    pub(super) fn from_client(what: &'static str, error: McError) -> Failure {
        match error {
            McError::Connect(source) => Failure::Connect { source },
            McError::Io(source) => Failure::Io { what, source },
            McError::ConnectionClosed => Failure::Io {
                what,
                source: io::ErrorKind::NotConnected.into(),
            },
            McError::Protocol(Status::Error(ErrorKind::NonexistentCommand)) => Failure::Refused {
                what,
                message: "unknown command (the meta protocol needs memcached 1.6 or later)"
                    .to_owned(),
            },
            McError::Protocol(Status::Error(ErrorKind::Server(message)))
            | McError::Protocol(Status::Error(ErrorKind::Client(message))) => {
                Failure::Refused { what, message }
            }
            McError::Protocol(status) => Failure::Protocol {
                what,
                message: format!("{status:?}"),
            },
            McError::ParseError(kind) => Failure::Protocol {
                what,
                message: format!("unparseable reply ({kind:?})"),
            },
        }
    }

    /// Whether the connection failed under the command: lost, reset, closed by the server.
    pub(super) fn is_connection_lost(&self) -> bool {
        matches!(self, Failure::Io { .. })
    }

    pub(super) fn into_store(self) -> Error {
        Error::store(BACKEND, self)
    }
}

/// What an I/O error means for an operator.
fn plain_words(error: &io::Error) -> Option<&'static str> {
    use io::ErrorKind as K;
    match error.kind() {
        K::ConnectionRefused => {
            Some("connection refused: nothing accepts connections at the memcached address")
        }
        K::UnexpectedEof
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::BrokenPipe
        | K::NotConnected => Some("the connection to memcached was lost"),
        K::TimedOut => Some("memcached did not answer in time"),
        K::AddrNotAvailable | K::HostUnreachable | K::NetworkUnreachable => {
            Some("the memcached address cannot be reached")
        }
        _ => None,
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout { what, after } => {
                write!(f, "memcached {what} timed out after {after:?}")
            }
            Failure::Connect { source } => match plain_words(source) {
                Some(why) => write!(f, "cannot connect to memcached: {why}"),
                None => f.write_str("cannot connect to memcached"),
            },
            Failure::ConnectTimeout { after } => write!(
                f,
                "cannot connect to memcached: no connection within {after:?}"
            ),
            Failure::Io { what, source } => match plain_words(source) {
                Some(why) => write!(f, "memcached {what} failed: {why}"),
                None => write!(f, "memcached {what} failed"),
            },
            Failure::Refused { what, message } => {
                write!(f, "memcached refused the {what}: {message}")
            }
            Failure::Protocol { what, message } => {
                write!(f, "unexpected reply to memcached {what}: {message}")
            }
            Failure::Contention { what, attempts } => write!(
                f,
                "memcached {what} gave up after {attempts} compare-and-swap attempts: other \
                 writers kept changing the key"
            ),
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::Connect { source } | Failure::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Chain;

    #[test]
    fn failures_read_as_plain_words() {
        let refused = Failure::Connect {
            source: io::ErrorKind::ConnectionRefused.into(),
        };
        let text = Chain(&refused.into_store()).to_string();
        assert!(
            text.starts_with(
                "memcached store error: cannot connect to memcached: connection refused"
            ),
            "{text}"
        );
        let lost = Failure::from_client("get", McError::Io(io::ErrorKind::UnexpectedEof.into()));
        assert!(lost.is_connection_lost());
        assert_eq!(
            lost.to_string(),
            "memcached get failed: the connection to memcached was lost"
        );
        let timeout = Failure::Timeout {
            what: "claim",
            after: Duration::from_millis(250),
        };
        assert_eq!(timeout.to_string(), "memcached claim timed out after 250ms");
        let full = Failure::from_client(
            "put",
            McError::Protocol(Status::Error(ErrorKind::Server(
                "out of memory storing object".to_owned(),
            ))),
        );
        assert!(!full.is_connection_lost());
        let old = Failure::from_client(
            "get",
            McError::Protocol(Status::Error(ErrorKind::NonexistentCommand)),
        );
        assert!(old.to_string().contains("memcached 1.6 or later"), "{old}");
        assert_eq!(
            full.to_string(),
            "memcached refused the put: out of memory storing object"
        );
    }
}
