//! Building a [`RedisStore`]: where it connects (a URL, a cluster's nodes, the application's
//! own client or connection manager) and the settings of [`RedisStoreBuilder`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use redis::Client;
use redis::aio::ConnectionManager;

use super::reads::Reads;
use super::scripts::Scripts;
use super::{DEFAULT_EXPIRY_GRACE, DEFAULT_MAX_ENTRY_BYTES, RedisStore};
use crate::entry::ENVELOPE_HEADER_LEN;
use crate::error::{Error, Result};
use crate::redis_support::{self, Conn, ConnOptions};

enum Source {
    Url(String),
    Cluster(Vec<String>),
    Client(Box<Client>),
    Manager(Box<ConnectionManager>),
}

/// Builds a [`RedisStore`].
#[must_use]
pub struct RedisStoreBuilder {
    source: Source,
    options: ConnOptions,
    announce: bool,
    max_entry_bytes: usize,
    expiry_grace: Duration,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("options", &self.options)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .field("expiry_grace", &self.expiry_grace)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    fn new(source: Source) -> Self {
        RedisStoreBuilder {
            source,
            options: ConnOptions::default(),
            announce: true,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            expiry_grace: DEFAULT_EXPIRY_GRACE,
        }
    }

    /// Bound on one call, waiting for a reconnection included (default 1 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.options.command_timeout = timeout;
        self
    }

    /// Bound on one connection attempt (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// Entries read back larger than this are not decoded: they read as a miss (default
    /// 64 MiB). Keep it above the client's
    /// [`max_value_bytes`](crate::CachebackBuilder::max_value_bytes) plus 48 bytes.
    pub fn max_entry_bytes(mut self, limit: usize) -> Self {
        self.max_entry_bytes = limit;
        self
    }

    /// How much longer than needed Redis keeps an entry or a claim before expiring it
    /// (default 60 s): covers clock skew between the processes of a fleet.
    pub fn expiry_grace(mut self, grace: Duration) -> Self {
        self.expiry_grace = grace;
        self
    }

    /// Whether every write is announced (one `PUBLISH` inside the write's script, on the
    /// channel `cacheback:changes:<prefix>`), so that clients with a
    /// [near cache](crate::NearCache) drop their out-of-date copies (default: on). Turn it off
    /// only when no process of the fleet uses a near cache: theirs would then serve
    /// overwritten values until their near TTL.
    ///
    /// A store on a Redis Cluster announces nothing, whatever this says: it takes no near
    /// cache (see [`RedisStore::cluster`]).
    pub fn announce_changes(mut self, announce: bool) -> Self {
        self.announce = announce;
        self
    }

    /// Builds the store. Does not connect: the first call does.
    pub fn build(self) -> Result<RedisStore> {
        self.options.validate()?;
        if self.max_entry_bytes < ENVELOPE_HEADER_LEN {
            return Err(Error::config(format!(
                "max_entry_bytes must be at least {ENVELOPE_HEADER_LEN}"
            )));
        }
        let (conn, watcher) = match self.source {
            Source::Url(url) => on_target(redis_support::open(&url)?, self.options)?,
            Source::Cluster(nodes) => on_target(redis_support::open_cluster(nodes)?, self.options)?,
            Source::Client(client) => {
                on_target(redis_support::Target::Single(client), self.options)?
            }
            Source::Manager(manager) => (Conn::from_manager(*manager, self.options), None),
        };
        // Classic pub/sub on a cluster goes over the cluster bus to every node, and a
        // subscriber on one node cannot tell a message the bus dropped: no near cache there,
        // so nothing to announce either.
        let announce = self.announce && !conn.is_cluster();
        Ok(RedisStore {
            watcher,
            announce,
            eviction_checked: Arc::new(AtomicBool::new(false)),
            max_entry_bytes: self.max_entry_bytes,
            expiry_grace: self.expiry_grace,
            reads: Arc::new(Reads::new(conn.clone())),
            conn,
            scripts: Scripts::new(),
        })
    }
}

/// The connection to `target`, and what a subscription to announced changes connects with
/// (one Redis only).
fn on_target(
    target: redis_support::Target,
    options: ConnOptions,
) -> Result<(Conn, Option<(Client, ConnOptions)>)> {
    let watcher = match &target {
        redis_support::Target::Single(client) => Some(((**client).clone(), options)),
        redis_support::Target::Cluster(_) => None,
    };
    Ok((Conn::lazy(target, options, Duration::ZERO)?, watcher))
}

impl RedisStore {
    /// A store at `url` with the default options: `redis://host:port/db`, `rediss://` (TLS),
    /// `redis://user:password@host`, `redis+unix:///path/to/socket` or `unix:///path`; a
    /// Redis Cluster with `redis+cluster://host:port,host:port` (any nodes of it, the others
    /// are discovered; `rediss+cluster://` for TLS; see [`RedisStore::cluster`]).
    pub fn from_url(url: &str) -> Result<RedisStore> {
        Self::builder(url).build()
    }

    /// Configures a store at `url` (see [`RedisStore::from_url`]).
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Source::Url(url.to_owned()))
    }

    /// Configures a store on a Redis Cluster, discovered from `nodes` (`redis://host:port` or
    /// `rediss://host:port` URLs of any of its nodes, with the same credentials).
    ///
    /// Every key an operation touches carries one hash tag (see the layout in [`RedisStore`]),
    /// so each script runs on one slot and a hit is still one `GET`, sent to the master that
    /// owns the key's slot; [`Store::get_many`](crate::store::Store::get_many) sends one
    /// `MGET` per slot. Redirections (`MOVED` while slots move, `ASK` during a migration) are
    /// followed and a failover (a replica promoted) is found by refreshing the slot map, all
    /// within the command timeout: during a failover, reads of the failed master's slots fail
    /// (and follow the client's
    /// [`StoreFallback`](crate::StoreFallback)) until a replica takes over.
    ///
    /// Over TLS (`rediss://` nodes, or a `rediss+cluster://` URL) the nodes' certificates
    /// are checked against the system's trust store; a private CA is trusted by pointing
    /// `SSL_CERT_FILE` at its PEM file (which then replaces the system's roots).
    ///
    /// What a cluster does not do: a client with a [near cache](crate::NearCache) refuses a
    /// cluster store at build time (writes are not announced: classic pub/sub goes over the
    /// cluster bus, whose lost messages a subscriber cannot notice, and a missed
    /// announcement would let a near copy outlive its overwrite).
    ///
    /// ```no_run
    /// use cacheback::{Cacheback, RedisQueue, RedisStore};
    ///
    /// # fn main() -> cacheback::Result<()> {
    /// let store = RedisStore::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]).build()?;
    /// // The same cluster, as one URL:
    /// let queue = RedisQueue::from_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7000")?;
    /// let cache = Cacheback::builder()
    ///     .prefix("myapp")
    ///     .store(store)
    ///     .queue(queue)
    ///     .build()?;
    /// # let _ = cache;
    /// # Ok(())
    /// # }
    /// ```
    pub fn cluster<I, S>(nodes: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisStoreBuilder::new(Source::Cluster(nodes.into_iter().map(Into::into).collect()))
    }

    /// Configures a store on a `redis::Client` the application built (custom TLS, ...).
    pub fn from_client(client: redis::Client) -> RedisStoreBuilder {
        // A `rediss://` client needs rustls' crypto provider before it connects.
        redis_support::install_crypto_provider();
        RedisStoreBuilder::new(Source::Client(Box::new(client)))
    }

    /// Configures a store on an existing `redis::aio::ConnectionManager` (shared with the
    /// application's own Redis traffic). Its own timeouts and reconnection settings apply, and
    /// the builder's timeouts bound every call on top.
    pub fn from_connection_manager(manager: ConnectionManager) -> RedisStoreBuilder {
        redis_support::install_crypto_provider();
        RedisStoreBuilder::new(Source::Manager(Box::new(manager)))
    }
}
