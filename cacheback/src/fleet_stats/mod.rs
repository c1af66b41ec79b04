//! Fleet-wide counts (feature `redis`): each process of a fleet publishes what its jobs counted
//! ([`CachebackBuilder::fleet_stats`](crate::CachebackBuilder::fleet_stats)) to Redis every few
//! seconds with a [`StatsPublisher`], and anyone reads the sum with a [`FleetStatsReader`]
//! (the `cacheback dashboard` and `top` commands do).
//!
//! The files: this one holds the publisher and the key layout; `read.rs` the reader.
//!
//! # Layout
//!
//! | Redis key | holds | expiry |
//! |---|---|---|
//! | `{<prefix>:stats}:slot:<n>` | a hash per 10-second slot `n` (Unix ms / 10,000): field `<count>\|<job>` = what every process counted in that slot | 1 hour |
//! | `{<prefix>:stats}:procs` | a hash: process id = the time of its last publication (Unix ms) | none; a stopping publisher removes its field |
//!
//! Counts are `hit`, `stale`, `miss` (reads), `refresh_ok`, `refresh_failed` (refreshes run by
//! the process), `lag_ms` and `lag_n` (total and number of queue waits of those refreshes) and
//! `age0` to `age5` (reads served by age: under 1 s, 10 s, 1 min, 10 min, 1 h, and older).
//!
//! # Cost
//!
//! Nothing on the read path but two relaxed atomic additions per read (when `fleet_stats` is
//! on); a publication is one pipelined round trip of one `HINCRBY` per count that changed,
//! plus an `EXPIRE` and an `HSET`, every interval (default 5 s), from the publisher's own task.

mod read;

pub use self::read::{FleetStats, FleetStatsReader, JobStats};

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::client::Cacheback;
use crate::clock::Timestamp;
use crate::error::{Chain, Error, Result};
use crate::redis_support::{self, Conn, ConnOptions, Failure};
use crate::tally::{AGE_BUCKETS, Count, Counts};

/// How long a slot is.
pub(crate) const SLOT: Duration = Duration::from_secs(10);
/// How long slots are kept.
const SLOT_TTL: Duration = Duration::from_secs(3600);
/// Default time between two publications.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// The counts' names in Redis, in the order of [`Count`].
const COUNT_NAMES: [(Count, &str); 7] = [
    (Count::Hit, "hit"),
    (Count::Stale, "stale"),
    (Count::Miss, "miss"),
    (Count::RefreshOk, "refresh_ok"),
    (Count::RefreshFailed, "refresh_failed"),
    (Count::LagMillis, "lag_ms"),
    (Count::LagSamples, "lag_n"),
];

const AGE_NAMES: [&str; AGE_BUCKETS] = ["age0", "age1", "age2", "age3", "age4", "age5"];

pub(crate) fn slot_of(t: Timestamp) -> u64 {
    t.as_millis() / SLOT.as_millis() as u64
}

pub(crate) fn slot_key(prefix: &str, slot: u64) -> String {
    format!("{{{prefix}:stats}}:slot:{slot}")
}

pub(crate) fn procs_key(prefix: &str) -> String {
    format!("{{{prefix}:stats}}:procs")
}

/// The hash field of a count of a job (the count first: job names may hold any printable
/// character but braces).
fn field(count: &str, job: &str) -> String {
    format!("{count}|{job}")
}

/// Publishes this process's counts for the fleet, every interval until stopped. Build it with
/// [`StatsPublisher::builder`] from a client built with
/// [`fleet_stats(true)`](crate::CachebackBuilder::fleet_stats), then run
/// [`run_until`](StatsPublisher::run_until) on a task of your own.
///
/// ```no_run
/// use cacheback::fleet_stats::StatsPublisher;
/// use cacheback::{Cacheback, RedisQueue, RedisStore};
///
/// # async fn run() -> cacheback::Result<()> {
/// let url = "redis://127.0.0.1:6379";
/// let cache = Cacheback::builder()
///     .prefix("myapp")
///     .store(RedisStore::from_url(url)?)
///     .queue(RedisQueue::from_url(url)?)
///     .fleet_stats(true)
///     .build()?;
/// let publisher = StatsPublisher::builder(&cache, url).build()?;
/// let stop = tokio_util::sync::CancellationToken::new();
/// let task = tokio::spawn(publisher.run_until(stop.clone().cancelled_owned()));
/// // ... serve ...
/// stop.cancel();
/// task.await.ok();
/// # Ok(())
/// # }
/// ```
pub struct StatsPublisher {
    cache: Cacheback,
    conn: Conn,
    id: String,
    interval: Duration,
    /// What each job's tally held at the last publication that reached Redis.
    published: HashMap<Arc<str>, Counts>,
}

impl fmt::Debug for StatsPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsPublisher")
            .field("prefix", &self.cache.prefix())
            .field("id", &self.id)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Builds a [`StatsPublisher`].
#[must_use]
#[derive(Debug)]
pub struct StatsPublisherBuilder {
    cache: Cacheback,
    url: String,
    id: Option<String>,
    interval: Duration,
}

impl StatsPublisherBuilder {
    /// Time between two publications (default 5 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The name this process publishes under (default: `<host>-<pid>-<random>`).
    pub fn process_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Builds the publisher. Does not connect: the first publication does.
    pub fn build(self) -> Result<StatsPublisher> {
        if !self.cache.core().fleet_stats {
            return Err(Error::config(
                "the client counts nothing to publish: build it with `.fleet_stats(true)`",
            ));
        }
        if self.interval.is_zero() {
            return Err(Error::config("the publication interval must be above zero"));
        }
        let client = redis_support::open(&self.url)?;
        let conn = Conn::lazy(client, ConnOptions::default(), Duration::ZERO)?;
        let id = self.id.unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "process".to_owned());
            format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
        });
        Ok(StatsPublisher {
            cache: self.cache,
            conn,
            id,
            interval: self.interval,
            published: HashMap::new(),
        })
    }
}

impl StatsPublisher {
    /// A publisher of `cache`'s counts to the Redis at `url`, under the client's prefix.
    pub fn builder(cache: &Cacheback, url: &str) -> StatsPublisherBuilder {
        StatsPublisherBuilder {
            cache: cache.clone(),
            url: url.to_owned(),
            id: None,
            interval: DEFAULT_INTERVAL,
        }
    }

    /// The name this process publishes under.
    pub fn process_id(&self) -> &str {
        &self.id
    }

    /// Publishes what was counted since the last publication that reached Redis (one round
    /// trip). A failed publication loses nothing: its counts go with the next one.
    pub async fn publish(&mut self) -> Result<()> {
        let core = self.cache.core();
        let now = core.now();
        let prefix = &*core.prefix;
        let key = slot_key(prefix, slot_of(now));
        let mut pipe = redis::pipe();
        let mut current = Vec::new();
        for (job, tally) in core.registry.tallies() {
            let counts = tally.snapshot();
            let delta = match self.published.get(&job) {
                Some(before) => counts.since(before),
                None => counts,
            };
            for (count, name) in COUNT_NAMES {
                let n = delta.get(count);
                if n > 0 {
                    pipe.cmd("HINCRBY")
                        .arg(&key)
                        .arg(field(name, &job))
                        .arg(n)
                        .ignore();
                }
            }
            for (n, name) in delta.ages.iter().zip(AGE_NAMES) {
                if *n > 0 {
                    pipe.cmd("HINCRBY")
                        .arg(&key)
                        .arg(field(name, &job))
                        .arg(*n)
                        .ignore();
                }
            }
            current.push((job, counts));
        }
        pipe.cmd("EXPIRE")
            .arg(&key)
            .arg(SLOT_TTL.as_secs())
            .ignore();
        pipe.cmd("HSET")
            .arg(procs_key(prefix))
            .arg(&self.id)
            .arg(now.as_millis())
            .ignore();
        let () = self
            .conn
            .pipeline(&pipe, "stats publication")
            .await
            .map_err(Failure::into_store)?;
        self.published.extend(current);
        Ok(())
    }

    /// Publishes every interval until `shutdown` resolves, then once more, and removes this
    /// process from the live ones. Failed publications are logged and retried at the next
    /// interval.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) {
        let mut every = tokio::time::interval(self.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = every.tick() => {
                    if let Err(error) = self.publish().await {
                        warn!(error = %Chain(&error), "could not publish this process's cache stats");
                    }
                }
            }
        }
        if let Err(error) = self.publish().await {
            warn!(error = %Chain(&error), "could not publish this process's last cache stats");
        }
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(procs_key(self.cache.prefix())).arg(&self.id);
        let _: std::result::Result<i64, _> = self.conn.query(&cmd, "HDEL").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_stats_hash_tag() {
        assert_eq!(slot_key("app", 7), "{app:stats}:slot:7");
        assert_eq!(procs_key("app"), "{app:stats}:procs");
        assert_eq!(slot_of(Timestamp::from_millis(29_999)), 2);
        assert_eq!(field("hit", "a|b"), "hit|a|b");
    }
}
