//! Connection plumbing shared by [`RedisStore`](crate::store::redis::RedisStore) and
//! [`RedisQueue`](crate::queue::redis::RedisQueue): URLs (one Redis or a Redis Cluster), lazily
//! connected auto-reconnecting connections, timeouts, and the mapping of Redis errors to
//! [`Error`].
//!
//! Nothing here is public: `redis::` types only appear in the explicit `from_client` /
//! `from_connection_manager` adapters of the two backends.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    Client, Cmd, ConnectionInfo, FromRedisValue, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, Value,
};

use crate::error::Error;

/// The backend name in errors and metrics.
pub(crate) const BACKEND: &str = "redis";

/// Default bound on one command (connecting included).
pub(crate) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Default bound on one connection attempt.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a store or a queue connects to.
#[derive(Clone)]
pub(crate) enum Target {
    /// One Redis server.
    Single(Box<Client>),
    /// A Redis Cluster, discovered from any of these nodes.
    Cluster(Vec<ConnectionInfo>),
}

impl Target {
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }
}

/// Opens `url`: one Redis (`redis://`, `rediss://` (TLS), `redis://user:pass@host`,
/// `redis+unix:///path` or `unix:///path`) or a cluster (`redis+cluster://host:port,host:port`,
/// `rediss+cluster://` with TLS). Does not connect.
pub(crate) fn open(url: &str) -> Result<Target, Error> {
    match cluster_nodes(url)? {
        Some(nodes) => open_cluster(nodes),
        None => open_client(url).map(|client| Target::Single(Box::new(client))),
    }
}

/// Opens a client for one Redis at `url`. Does not connect.
pub(crate) fn open_client(url: &str) -> Result<Client, Error> {
    if url.starts_with("rediss://") || url.starts_with("valkeys://") {
        install_crypto_provider();
    }
    // The URL may hold a password: it is never echoed back.
    Client::open(url).map_err(|e| {
        Error::config(format!(
            "invalid Redis URL (expected redis://, rediss://, redis+unix://, unix:// or \
             redis+cluster://): {}",
            e.detail().unwrap_or("it does not parse")
        ))
    })
}

/// A cluster reached through `nodes` (`redis://host:port` or `rediss://host:port` URLs, with
/// the same credentials each). Does not connect.
pub(crate) fn open_cluster<I, S>(nodes: I) -> Result<Target, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut infos = Vec::new();
    for node in nodes {
        let node = node.as_ref();
        if node.starts_with("rediss://") {
            install_crypto_provider();
        }
        if !(node.starts_with("redis://") || node.starts_with("rediss://")) {
            return Err(Error::config(
                "a Redis Cluster node is a redis:// or rediss:// URL of one node (host:port)",
            ));
        }
        let info = node.into_connection_info().map_err(|e| {
            Error::config(format!(
                "invalid Redis Cluster node URL: {}",
                e.detail().unwrap_or("it does not parse")
            ))
        })?;
        infos.push(info);
    }
    if infos.is_empty() {
        return Err(Error::config(
            "a Redis Cluster needs at least one node to discover the others from",
        ));
    }
    Ok(Target::Cluster(infos))
}

/// The node URLs of a `redis+cluster://[user:pass@]host:port[,host:port...][/]` URL (and its
/// `rediss+cluster://` TLS form), `None` for every other URL.
fn cluster_nodes(url: &str) -> Result<Option<Vec<String>>, Error> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return Ok(None);
    };
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (Some(auth), hosts),
        None => (None, rest),
    };
    // A cluster has one database: nothing may follow the hosts but a slash.
    let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
    if hosts.contains(['/', '?', '#']) {
        return Err(Error::config(
            "invalid Redis Cluster URL: a cluster has no database, path or options \
             (redis+cluster://host:port,host:port)",
        ));
    }
    let nodes: Vec<String> = hosts
        .split(',')
        .map(|host| match auth {
            Some(auth) => format!("{scheme}://{auth}@{host}"),
            None => format!("{scheme}://{host}"),
        })
        .collect();
    if hosts.split(',').any(str::is_empty) {
        return Err(Error::config(
            "invalid Redis Cluster URL: expected redis+cluster://host:port[,host:port...]",
        ));
    }
    Ok(Some(nodes))
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

/// A lazily connected, auto-reconnecting connection with every command bounded by a timeout:
/// to one Redis, redis-rs' `ConnectionManager` (which multiplexes concurrent commands over one
/// socket); to a cluster, its cluster connection (one multiplexed socket per node, commands
/// routed by slot, `MOVED` / `ASK` followed, the slot map refreshed after a failover).
#[derive(Clone)]
pub(crate) struct Conn {
    link: Link,
    /// Bound on one command, waiting for a (re)connection included, when the connection's own
    /// timeouts do not already bound it (a manager the application built).
    timeout: Option<Duration>,
}

#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(manager) => ConnectionLike::req_packed_command(manager, cmd),
            Link::Cluster(cluster) => ConnectionLike::req_packed_command(cluster, cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(manager) => {
                ConnectionLike::req_packed_commands(manager, pipeline, offset, count)
            }
            Link::Cluster(cluster) => {
                ConnectionLike::req_packed_commands(cluster, pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(manager) => ConnectionLike::get_db(manager),
            Link::Cluster(cluster) => ConnectionLike::get_db(cluster),
        }
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No address: the URL may carry credentials.
        f.debug_struct("Conn")
            .field("cluster", &self.is_cluster())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// A connection that connects on first use. `extra_response_time` is added to the
    /// response timeout (for blocking commands such as `XREADGROUP ... BLOCK`).
    pub(crate) fn lazy(
        target: Target,
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
        let link = match target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(options.connect_timeout))
                    .set_response_timeout(Some(response))
                    // One attempt per reconnection: the next command triggers the next
                    // attempt, so a Redis that is down costs each caller one bounded try,
                    // never a long retry loop.
                    .set_number_of_retries(0)
                    .set_max_delay(Duration::from_millis(500));
                let manager =
                    ConnectionManager::new_lazy_with_config(*client, config).map_err(|e| {
                        Error::config(format!("cannot set up the Redis connection: {e}"))
                    })?;
                Link::Single(manager)
            }
            Target::Cluster(nodes) => {
                // redis-rs retries a command through redirections, reconnections and slot map
                // refreshes (a failover, a slot that moved), all within `response`: one call
                // never outlives the command timeout, however many nodes it tried.
                let client = ClusterClientBuilder::new(nodes)
                    .connection_timeout(options.connect_timeout)
                    .response_timeout(response)
                    .overall_response_timeout(Some(response))
                    // Retries (`TRYAGAIN` while a slot migrates, a node that went away) wait
                    // 10 ms, then up to 200 ms: several fit in one command timeout.
                    .min_retry_wait(10)
                    .max_retry_wait(200)
                    .build()
                    .map_err(|e| {
                        Error::config(format!(
                            "cannot set up the Redis Cluster connection: {}",
                            e.detail().unwrap_or("invalid settings")
                        ))
                    })?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(options.connect_timeout)
                    .set_response_timeout(response);
                Link::Cluster(client.get_pending_async_connection_with_config(config))
            }
        };
        // The connection bounds every call by itself: one connection attempt within
        // `connect_timeout`, then the response within `response`. No second timer per call.
        Ok(Conn {
            link,
            timeout: None,
        })
    }

    /// Wraps a connection manager the application built itself.
    pub(crate) fn from_manager(manager: ConnectionManager, options: ConnOptions) -> Conn {
        Conn {
            link: Link::Single(manager),
            timeout: Some(options.command_timeout + options.connect_timeout),
        }
    }

    /// Whether this is a connection to a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(_))
    }

    /// Runs one command.
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        what: &'static str,
    ) -> Result<T, Failure> {
        let run = || {
            let mut link = self.link.clone();
            async move { cmd.query_async(&mut link).await }
        };
        bounded(what, self.timeout, again_if_refused(run)).await
    }

    /// Runs one command on the master that holds `key`'s hash slot, on a cluster (one Redis
    /// runs it as [`query`](Self::query) does): for a command without keys that must reach
    /// the node of some keys (`SCAN` of one shard's streams).
    pub(crate) async fn query_at<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        key: &str,
        what: &'static str,
    ) -> Result<T, Failure> {
        let Link::Cluster(cluster) = &self.link else {
            return self.query(cmd, what).await;
        };
        let run = || {
            let mut cluster = cluster.clone();
            let route = Route::with_key(key, SlotAddr::Master);
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
            async move {
                let value = cluster.route_command(cmd.clone(), routing).await?;
                Ok(T::from_redis_value(value)?)
            }
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
            let mut link = self.link.clone();
            async move { pipe.query_async(&mut link).await }
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
            let mut link = self.link.clone();
            async move { invocation.invoke_async(&mut link).await }
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
    } else if matches!(code, "CLUSTERDOWN" | "TRYAGAIN" | "MOVED" | "ASK") {
        Some("the Redis Cluster is failing over or moving slots; try again shortly")
    } else if code == "CROSSSLOT" {
        Some("the keys of one command are in different Redis Cluster slots")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_nodes() {
        assert_eq!(cluster_nodes("redis://127.0.0.1:6379").unwrap(), None);
        assert_eq!(
            cluster_nodes("redis+cluster://10.0.0.1:7000,10.0.0.2:7001/").unwrap(),
            Some(vec![
                "redis://10.0.0.1:7000".to_owned(),
                "redis://10.0.0.2:7001".to_owned()
            ])
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://app:s%40cret@a:1,b:2").unwrap(),
            Some(vec![
                "rediss://app:s%40cret@a:1".to_owned(),
                "rediss://app:s%40cret@b:2".to_owned()
            ])
        );
        for bad in [
            "redis+cluster://",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:1/3",
            "redis+cluster://a:1?protocol=3",
        ] {
            let err = cluster_nodes(bad).unwrap_err().to_string();
            assert!(err.contains("Redis Cluster URL"), "{bad}: {err}");
        }
    }

    #[test]
    fn cluster_nodes_are_checked_without_echoing_passwords() {
        assert!(
            open_cluster(["redis://127.0.0.1:7000"])
                .unwrap()
                .is_cluster()
        );
        assert!(!open("redis://127.0.0.1:7000").unwrap().is_cluster());
        assert!(open("redis+cluster://127.0.0.1:7000").unwrap().is_cluster());
        let none: [&str; 0] = [];
        assert!(open_cluster(none).is_err());
        let err = open_cluster(["http://user:hunter2@127.0.0.1:7000"])
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
