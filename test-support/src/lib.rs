//! A throwaway `redis-server` per test (or per benchmark run), shared by the core crate's
//! integration tests and the `cacheback-bench` harness.
//!
//! [`RedisServer::start`] spawns `redis-server` on a free loopback port in a temp dir (no
//! persistence), waits for `PING`, and kills it on drop, printing its log when the test
//! failed. [`RedisServer::stop`] and [`RedisServer::restart`] (same port, data lost) inject
//! faults; [`RedisServer::stop_saving`] and [`RedisServer::start_again`] restart it with its
//! data intact. [`RedisServer::builder`] adds a unix socket, TLS or extra config arguments.
//!
//! When the binary is missing, [`RedisServer::start`] skips with a loud message (it returns
//! `None`), unless `CACHEBACK_REQUIRE_REDIS=1`, where it panics; [`RedisServer::try_start`]
//! returns an [`Error`] instead. The binary is `$CACHEBACK_REDIS_SERVER`, else `redis-server`
//! on `PATH`, else `/usr/bin/redis-server`. Never the shared server on 6379.
//!
//! ```no_run
//! use cacheback_test_support::RedisServer;
//!
//! let Some(mut server) = RedisServer::start() else {
//!     return; // skipped, loudly
//! };
//! let _: () = server.cmd(&["SET", "a", "1"]);
//! server.restart(); // same port, empty
//! assert_eq!(server.cmd::<Option<String>>(&["GET", "a"]), None);
//! ```
//!
//! [`RedisCluster`] starts a Redis Cluster of such servers (3 masters, replicas on request),
//! joined with `redis-cli --cluster create`, with the faults cluster tests need: a master
//! killed and its replica promoted, slots resharded. One per test binary is plenty.
//!
//! [`MemcachedServer`] does the same for `memcached` (skipped loudly when missing unless
//! `CACHEBACK_REQUIRE_MEMCACHED=1`; the binary is `$CACHEBACK_MEMCACHED`, else `memcached` on
//! `PATH`, else `/usr/bin/memcached`).

mod cluster;
mod inspect;
mod memcached;
pub mod nats;
pub mod process;
pub mod rabbitmq;
pub mod runner;
mod server;
mod tls;

use std::time::Duration;

pub use cluster::{RedisCluster, RedisClusterBuilder, SLOTS};
pub use memcached::{MemcachedServer, MemcachedServerBuilder};
pub use server::{RedisServer, RedisServerBuilder};

/// Why a server (or broker vhost) could not be started, stopped or asked something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A program the server needs is not installed (`redis-server` or `memcached`, or
    /// `openssl` for TLS).
    #[error("{0}")]
    Missing(String),
    /// The server did not start, stop or answer as asked; the message says why (with its log
    /// when it has one).
    #[error("redis-server: {0}")]
    Server(String),
    /// `memcached` did not start or answer as asked; the message says why (with its log when
    /// it has one).
    #[error("memcached: {0}")]
    Memcached(String),
    /// A broker (RabbitMQ, `nats-server`) did not do as asked; the message says which and why.
    #[error("{0}")]
    Broker(String),
}

/// A prefix unique to this call, so tests sharing a server never see each other's keys.
pub fn unique_prefix(name: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{name}-{:08x}", h.finish() as u32)
}

/// Polls `check` every 5 ms until it holds or `within` passes; panics with `what` then.
/// For conditions that depend on real Redis round trips (never for correctness by sleeping).
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_and_named() {
        let (a, b) = (unique_prefix("t"), unique_prefix("t"));
        assert!(a.starts_with("t-") && a.len() == "t-".len() + 8, "{a}");
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn eventually_returns_once_the_check_holds() {
        let mut calls = 0;
        eventually("the third call", Duration::from_secs(5), || {
            calls += 1;
            let done = calls >= 3;
            async move { done }
        })
        .await;
        assert_eq!(calls, 3);
    }
}
