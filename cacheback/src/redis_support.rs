//! Connection plumbing shared by [`RedisStore`](crate::store::redis::RedisStore) and
//! [`RedisQueue`](crate::queue::redis::RedisQueue): URLs, lazily connected auto-reconnecting
//! connections, timeouts, and the mapping of Redis errors to [`Error`].
//!
//! Nothing here is public: `redis::` types only appear in the explicit `from_client` /
//! `from_connection_manager` adapters of the two backends.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, FromRedisValue, Pipeline, RedisError, Value};

use crate::error::Error;

/// The backend name in errors and metrics.
pub(crate) const BACKEND: &str = "redis";

/// Default bound on one command (connecting included).
pub(crate) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Default bound on one connection attempt.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Opens a client for `url`: `redis://`, `rediss://` (TLS), `redis://user:pass@host`,
/// `redis+unix:///path` or `unix:///path`. Does not connect.
pub(crate) fn open_client(url: &str) -> Result<Client, Error> {
    if url.starts_with("rediss://") || url.starts_with("valkeys://") {
        install_crypto_provider();
    }
    // The URL may hold a password: it is never echoed back.
    Client::open(url).map_err(|e| {
        Error::config(format!(
            "invalid Redis URL (expected redis://, rediss://, redis+unix:// or unix://): {}",
            e.detail().unwrap_or("it does not parse")
        ))
    })
}

/// rustls needs a process-wide crypto provider; ring is the one this crate builds with. Another
/// provider installed by the application first is kept.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Connection settings, common to the store and the queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnOptions {
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

impl Default for ConnOptions {
    fn default() -> Self {
        ConnOptions {
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl ConnOptions {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::config("Redis timeouts must be greater than zero"));
        }
        Ok(())
    }
}

/// A lazily connected, auto-reconnecting connection (redis-rs' `ConnectionManager`, which
/// multiplexes concurrent commands over one socket) with every command bounded by a timeout.
#[derive(Clone)]
pub(crate) struct Conn {
    manager: ConnectionManager,
    /// Bound on one command, waiting for a (re)connection included, when the manager's own
    /// timeouts do not already bound it (a manager the application built).
    timeout: Option<Duration>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No address: the URL may carry credentials.
        f.debug_struct("Conn")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// A connection that connects on first use. `extra_response_time` is added to the
    /// response timeout (for blocking commands such as `XREADGROUP ... BLOCK`).
    pub(crate) fn lazy(
        client: Client,
        options: ConnOptions,
        extra_response_time: Duration,
    ) -> Result<Conn, Error> {
        // redis-rs sets up its connection task on the current Tokio runtime (and panics
        // without one): say so instead.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "Redis stores and queues must be built inside a Tokio runtime",
            ));
        }
        let response = options.command_timeout + extra_response_time;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(response))
            // One attempt per reconnection: the next command triggers the next attempt, so a
            // Redis that is down costs each caller one bounded try, never a long retry loop.
            .set_number_of_retries(0)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| Error::config(format!("cannot set up the Redis connection: {e}")))?;
        // The manager bounds every call by itself: one connection attempt (no retries) within
        // `connect_timeout`, then the response within `response`. No second timer per call.
        Ok(Conn {
            manager,
            timeout: None,
        })
    }

    /// Wraps a connection manager the application built itself.
    pub(crate) fn from_manager(manager: ConnectionManager, options: ConnOptions) -> Conn {
        Conn {
            manager,
            timeout: Some(options.command_timeout + options.connect_timeout),
        }
    }

    /// Runs one command.
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        what: &'static str,
    ) -> Result<T, Failure> {
        let run = || {
            let mut manager = self.manager.clone();
            async move { cmd.query_async(&mut manager).await }
        };
        bounded(what, self.timeout, again_if_refused(run)).await
    }

    /// Runs a pipeline (one round trip).
    pub(crate) async fn pipeline<T: FromRedisValue>(
        &self,
        pipe: &Pipeline,
        what: &'static str,
    ) -> Result<T, Failure> {
        let run = || {
            let mut manager = self.manager.clone();
            async move { pipe.query_async(&mut manager).await }
        };
        bounded(what, self.timeout, again_if_refused(run)).await
    }

    /// Runs a script (`EVALSHA`, loading it on `NOSCRIPT`).
    pub(crate) async fn script<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        what: &'static str,
    ) -> Result<T, Failure> {
        let run = || {
            let mut manager = self.manager.clone();
            async move { invocation.invoke_async(&mut manager).await }
        };
        bounded(what, self.timeout, again_if_refused(run)).await
    }
}

/// Runs `attempt`, and once more if the connection was refused.
///
/// The connection manager keeps the outcome of its last reconnection attempt: after an outage,
/// the first command finds the attempt made while Redis was down, fails with its "connection
/// refused", and only then starts a new attempt. A refused connection means the command was
/// never sent, so trying once more is safe for every command (scripts included), and cheap
/// (a refusal comes back at once). Other errors (timeouts, a connection dropped after the
/// command was sent) are returned as they are.
async fn again_if_refused<T, F, Fut>(mut attempt: F) -> Result<T, RedisError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RedisError>>,
{
    match attempt().await {
        Err(error) if error.is_connection_refusal() => attempt().await,
        result => result,
    }
}

async fn bounded<T>(
    what: &'static str,
    after: Option<Duration>,
    fut: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, Failure> {
    let result = match after {
        None => fut.await,
        Some(after) => match tokio::time::timeout(after, fut).await {
            Ok(result) => result,
            Err(_) => return Err(Failure::Timeout { what, after }),
        },
    };
    result.map_err(|source| Failure::Redis { what, source })
}

/// Why a Redis call failed. Private: it reaches users only as the `source` of an
/// [`Error::Store`] or [`Error::Queue`].
#[derive(Debug)]
pub(crate) enum Failure {
    Timeout {
        what: &'static str,
        after: Duration,
    },
    Redis {
        what: &'static str,
        source: RedisError,
    },
    Protocol {
        what: &'static str,
        message: String,
    },
}

impl Failure {
    pub(crate) fn protocol(what: &'static str, message: impl Into<String>) -> Self {
        Failure::Protocol {
            what,
            message: message.into(),
        }
    }

    /// The server's error code (`NOGROUP`, `BUSYGROUP`, ...), if the server answered with one.
    pub(crate) fn code(&self) -> Option<&str> {
        match self {
            Failure::Redis { source, .. } => source.code(),
            _ => None,
        }
    }

    pub(crate) fn into_store(self) -> Error {
        Error::store(BACKEND, self)
    }

    pub(crate) fn into_queue(self) -> Error {
        Error::queue(BACKEND, self)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout { what, after } => write!(f, "redis {what} timed out after {after:?}"),
            Failure::Redis { what, source } => match plain_words(source) {
                Some(why) => write!(f, "redis {what} failed: {why}"),
                None => write!(f, "redis {what} failed"),
            },
            Failure::Protocol { what, message } => {
                write!(f, "unexpected reply to redis {what}: {message}")
            }
        }
    }
}

/// What a Redis error means for an operator, when it is one of the usual suspects: a Redis
/// that does not answer looks different from one that refuses the credentials.
fn plain_words(error: &RedisError) -> Option<&'static str> {
    let code = error.code().unwrap_or("");
    if error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM")
    {
        Some("Redis refused the credentials (check the user and password in the URL, and the ACL)")
    } else if error.is_connection_refusal() {
        Some("connection refused: nothing accepts connections at the Redis address")
    } else if error.is_timeout() {
        Some("Redis did not answer in time")
    } else if error.is_connection_dropped() {
        Some("the connection to Redis was lost")
    } else if code == "OOM" {
        Some("Redis is out of memory (maxmemory reached with the noeviction policy)")
    } else {
        None
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::Redis { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The bytes of a bulk-string reply.
pub(crate) fn bytes_of(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

/// An integer reply (or a string holding one).
pub(crate) fn int_of(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// A non-negative integer reply (or a string holding one), up to `u64::MAX`.
pub(crate) fn u64_of(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// Milliseconds as Redis `PX` wants them: at least 1, at most a century (Redis refuses expiry
/// times that overflow when added to its clock).
pub(crate) fn px(d: Duration) -> u64 {
    const CENTURY_MS: u64 = 100 * 366 * 24 * 3600 * 1000;
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, CENTURY_MS)
}

/// The value of the line `local NAME = value` in a Lua script: how tests check the constants a
/// script shares with Rust.
#[cfg(test)]
pub(crate) fn lua_constant<'a>(script: &'a str, name: &str) -> &'a str {
    let start = format!("local {name} = ");
    script
        .lines()
        .find_map(|line| line.strip_prefix(&start))
        .unwrap_or_else(|| panic!("no `{start}` in the script"))
        .trim()
}

/// `text` as a Lua string literal (for text without quotes or escapes).
#[cfg(test)]
pub(crate) fn lua_string(text: &str) -> String {
    format!("'{text}'")
}
