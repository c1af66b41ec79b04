//! [`MemcachedStoreBuilder`]: the address, timeouts, pool size, item size limit and expiry
//! grace of a [`MemcachedStore`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::MemcachedStore;
use super::conn::{ConnOptions, Pool};
use crate::error::{Error, Result};

/// memcached's default item size limit (`-I 1m`).
pub(crate) const DEFAULT_MAX_ITEM_BYTES: usize = 1 << 20;

/// memcached's smallest item size limit (`-I 1k`).
const MIN_MAX_ITEM_BYTES: usize = 1 << 10;

/// Default extra time memcached keeps entries and claims past their own end (clock skew between
/// processes, and a last chance for `stale_if_error`).
const DEFAULT_EXPIRY_GRACE: Duration = Duration::from_secs(60);

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_MAX_CONNECTIONS: usize = 16;
const DEFAULT_PORT: u16 = 11211;

/// Builds a [`MemcachedStore`]; from [`MemcachedStore::builder`].
#[must_use]
pub struct MemcachedStoreBuilder {
    url: String,
    command_timeout: Duration,
    connect_timeout: Duration,
    max_connections: usize,
    max_item_bytes: usize,
    expiry_grace: Duration,
}

impl fmt::Debug for MemcachedStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcachedStoreBuilder")
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_item_bytes", &self.max_item_bytes)
            .field("expiry_grace", &self.expiry_grace)
            .finish_non_exhaustive()
    }
}

impl MemcachedStoreBuilder {
    pub(super) fn new(url: &str) -> Self {
        MemcachedStoreBuilder {
            url: url.to_owned(),
            command_timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_item_bytes: DEFAULT_MAX_ITEM_BYTES,
            expiry_grace: DEFAULT_EXPIRY_GRACE,
        }
    }

    /// Bound on one store call, waiting for a connection and its compare-and-swap retries
    /// included (default 1 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Bound on opening one connection (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Most connections open at once (default 16); calls beyond wait for one, within their
    /// timeout. Idle connections are kept for the next calls.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// memcached's item size limit, to match the server's `-I` (default 1 MiB, memcached's
    /// own default). An entry whose item would be larger (value, 48-byte envelope header, key
    /// and memcached's own per-item overhead) is refused with
    /// [`Error::TooLarge`](crate::Error::TooLarge) before anything is sent.
    pub fn max_item_bytes(mut self, limit: usize) -> Self {
        self.max_item_bytes = limit;
        self
    }

    /// How much longer than needed memcached keeps an entry, a claim or a failure state
    /// before expiring it (default 60 s): covers clock skew between the processes of a fleet.
    pub fn expiry_grace(mut self, grace: Duration) -> Self {
        self.expiry_grace = grace;
        self
    }

    /// Builds the store. Does not connect: the first call does.
    pub fn build(self) -> Result<MemcachedStore> {
        let dsn = dsn(&self.url)?;
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::config(
                "memcached timeouts must be greater than zero",
            ));
        }
        if self.max_connections == 0 {
            return Err(Error::config("max_connections must be at least 1"));
        }
        if self.max_item_bytes < MIN_MAX_ITEM_BYTES {
            return Err(Error::config(format!(
                "max_item_bytes must be at least {MIN_MAX_ITEM_BYTES} (memcached's smallest -I)"
            )));
        }
        let pool = Pool::new(ConnOptions {
            dsn,
            connect_timeout: self.connect_timeout,
            max_connections: self.max_connections,
        });
        Ok(MemcachedStore {
            pool: Arc::new(pool),
            reads: Arc::default(),
            command_timeout: self.command_timeout,
            max_item_bytes: self.max_item_bytes,
            expiry_grace: self.expiry_grace,
        })
    }
}

/// `memcache://host[:port]` (or `memcached://`) as the client library's `tcp://host:port`.
fn dsn(url: &str) -> Result<String> {
    // The URL itself is not echoed: a mistyped one may hold a password.
    let invalid = |why: &str| {
        Error::config(format!(
            "invalid memcached URL (expected memcache://host:port): {why}"
        ))
    };
    let rest = url
        .strip_prefix("memcache://")
        .or_else(|| url.strip_prefix("memcached://"))
        .ok_or_else(|| invalid("unknown scheme"))?;
    let address = rest.strip_suffix('/').unwrap_or(rest);
    if address.is_empty() {
        return Err(invalid("no host"));
    }
    if address.contains(['/', '@', '?', '#']) || address.contains(char::is_whitespace) {
        return Err(invalid("only a host and a port are accepted"));
    }
    if address.starts_with('[') {
        // async-memcached opens IPv4 sockets only.
        return Err(invalid(
            "IPv6 addresses are not supported; use an IPv4 address or a host name",
        ));
    }
    let (host, port) = match address.split_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| invalid("bad port"))?),
        None => (address, DEFAULT_PORT),
    };
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    Ok(format!("tcp://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_host_and_a_port() {
        for (url, dsn_) in [
            ("memcache://127.0.0.1:11311", "tcp://127.0.0.1:11311"),
            ("memcached://cache.internal", "tcp://cache.internal:11211"),
            ("memcache://localhost:1/", "tcp://localhost:1"),
        ] {
            assert_eq!(dsn(url).unwrap(), dsn_, "{url}");
        }
        for bad in [
            "redis://127.0.0.1",
            "127.0.0.1:11211",
            "memcache://",
            "memcache://host:port",
            "memcache://host:99999",
            "memcache://user:pw@host",
            "memcache://host/path",
            "memcache://::1",
            "memcache://[::1]:11211",
            "memcache://:11211",
        ] {
            let err = dsn(bad).unwrap_err();
            assert!(
                err.to_string().contains("invalid memcached URL"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let url = "memcache://127.0.0.1:1";
        let build = |b: MemcachedStoreBuilder| b.build().map(|_| ()).map_err(|e| e.to_string());
        assert!(build(MemcachedStoreBuilder::new(url)).is_ok());
        let b = || MemcachedStoreBuilder::new(url);
        assert!(build(b().command_timeout(Duration::ZERO)).is_err());
        assert!(build(b().connect_timeout(Duration::ZERO)).is_err());
        assert!(build(b().max_connections(0)).is_err());
        assert!(build(b().max_item_bytes(1000)).is_err());
        assert!(build(b().max_item_bytes(1024)).is_ok());
    }
}
