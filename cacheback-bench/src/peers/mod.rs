//! The caches W2, W4 and W6 read through: cacheback and its peers, behind one `read`.
//!
//! Every subject fetches through the same [`Fetcher`] (same sleep, same [`Value`]) and is used
//! the way its documentation shows:
//!
//! - **cacheback**: `JobHandle::get_with_status` on the memory store, LocalQueue and in-process
//!   worker (16 refreshes at a time); default policy apart from `lifetime`.
//! - **moka `get_with` + TTL**: `moka::future::Cache` with `time_to_live(lifetime)`, read with
//!   `get_with(key, fetch)`: one fetch per expired key (moka coalesces), every reader of an
//!   expired key waits for it.
//! - **cached `#[cached]`**: `#[cached(ttl_millis = lifetime)] async fn` (cached 4.1, feature
//!   `async`, no other attribute): the plain memoized function. Every caller that finds the entry
//!   expired runs the body and waits for it.
//! - **amalgam-cache**: `Cache::get_or_set` with eager refresh, fail-safe and a 1 ms soft
//!   factory timeout with background completion; in memory, or on Redis (L2, backplane,
//!   distributed locker); see [`amalgam`].
//! - **cached SWR recipe**: section 5 of cached's own `examples/stale_while_revalidate.rs`:
//!   `#[cached(ttl_millis, sync_writes = "by_key")]`, read with `cache_peek_with_expiry_status`,
//!   an expired entry is served at once while the first caller (`ClaimRegistry::claim`) spawns
//!   `{fn}_prime_cache` on Tokio; a missing entry is fetched by one caller while the others wait.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use cacheback::{JobHandle, LocalQueue, Status};
use cached::claim::ClaimRegistry;
use cached::macros::cached;
use cached::{Cached, CloneCached};

use crate::value::{BenchJob, Fetcher, Value};

pub(crate) mod amalgam;

/// Which cache a reader reads through.
#[derive(Debug)]
pub(crate) enum Subject {
    Cacheback {
        handle: JobHandle<BenchJob>,
        queue: BenchQueue,
    },
    Moka {
        cache: moka::future::Cache<u64, Arc<Value>>,
        fetcher: Arc<Fetcher>,
    },
    CachedPlain(Lifetime),
    CachedSwr(Lifetime),
    Amalgam {
        cache: amalgam::Handle,
        fetcher: Arc<Fetcher>,
        /// Whether the cache has the Redis L2, backplane and locker.
        redis: bool,
    },
}

/// The queue behind a cacheback subject, for its counters.
#[derive(Debug, Clone)]
pub(crate) enum BenchQueue {
    Local(LocalQueue),
    #[cfg(feature = "redis")]
    Redis(cacheback::RedisQueue),
}

impl From<LocalQueue> for BenchQueue {
    fn from(queue: LocalQueue) -> Self {
        BenchQueue::Local(queue)
    }
}

#[cfg(feature = "redis")]
impl From<cacheback::RedisQueue> for BenchQueue {
    fn from(queue: cacheback::RedisQueue) -> Self {
        BenchQueue::Redis(queue)
    }
}

/// The lifetimes the `cached` functions are compiled with (its TTL is an attribute literal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// W2: 300 ms.
    W2,
    /// W4: 2 s.
    W4,
}

/// The W2 lifetime of every subject.
pub(crate) const W2_LIFETIME: Duration = Duration::from_millis(300);
/// The W4 lifetime of every subject.
pub(crate) const W4_LIFETIME: Duration = Duration::from_secs(2);

/// What one read returned.
#[derive(Debug, Clone)]
pub(crate) struct Read {
    pub(crate) value: Option<Arc<Value>>,
    /// cacheback's status (`hit`, `stale`, ...); peers say `value` or `none`.
    pub(crate) status: &'static str,
}

impl Subject {
    /// The subject's name in records and plots.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Subject::Cacheback { .. } => "cacheback",
            Subject::Moka { .. } => "moka get_with + TTL",
            Subject::CachedPlain(_) => "cached #[cached] + TTL",
            Subject::CachedSwr(_) => "cached SWR recipe",
            Subject::Amalgam { .. } => amalgam::NAME,
        }
    }

    /// What exactly the subject does (recorded with its figures).
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Subject::Cacheback {
                queue: BenchQueue::Local(_),
                ..
            } => "JobHandle::get_with_status; MemoryStore + LocalQueue + in-process worker",
            #[cfg(feature = "redis")]
            Subject::Cacheback {
                queue: BenchQueue::Redis(_),
                ..
            } => "JobHandle::get_with_status; RedisStore + RedisQueue + in-process worker",
            Subject::Moka { .. } => {
                "moka::future::Cache with time_to_live(lifetime), read with get_with(key, fetch): coalesced, readers of an expired key wait"
            }
            Subject::CachedPlain(_) => {
                "#[cached(ttl_millis = lifetime)] async fn: every caller of an expired key runs and awaits the body"
            }
            Subject::CachedSwr(_) => {
                "cached's examples/stale_while_revalidate.rs section 5: sync_writes = by_key, peek with expiry status, ClaimRegistry, tokio::spawn(prime_cache)"
            }
            Subject::Amalgam { redis: false, .. } => amalgam::DESCRIBE_MEMORY,
            Subject::Amalgam { redis: true, .. } => amalgam::DESCRIBE_REDIS,
        }
    }

    /// A moka peer with `lifetime` as its TTL.
    pub(crate) fn moka(lifetime: Duration, fetcher: Arc<Fetcher>) -> Self {
        Subject::Moka {
            cache: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(lifetime)
                .build(),
            fetcher,
        }
    }

    /// An amalgam-cache peer in memory with `lifetime` as its duration.
    pub(crate) fn amalgam(lifetime: Duration, fetcher: Arc<Fetcher>) -> Result<Self, String> {
        Ok(Subject::Amalgam {
            cache: amalgam::Handle(amalgam::memory(lifetime)?),
            fetcher,
            redis: false,
        })
    }

    /// An amalgam-cache peer on the Redis at `url` (keys under `prefix`).
    #[cfg(feature = "redis")]
    pub(crate) async fn amalgam_redis(
        url: &str,
        prefix: &str,
        lifetime: Duration,
        fetcher: Arc<Fetcher>,
    ) -> Result<Self, String> {
        Ok(Subject::Amalgam {
            cache: amalgam::Handle(amalgam::redis(url, prefix, lifetime).await?),
            fetcher,
            redis: true,
        })
    }

    /// A `cached` peer: installs `fetcher` behind the function and empties its cache.
    pub(crate) async fn cached(swr: bool, lifetime: Lifetime, fetcher: Arc<Fetcher>) -> Self {
        *slot(swr, lifetime)
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(fetcher);
        match (swr, lifetime) {
            (false, Lifetime::W2) => CACHED_W2_PLAIN.write().await.cache_clear(),
            (false, Lifetime::W4) => CACHED_W4_PLAIN.write().await.cache_clear(),
            (true, Lifetime::W2) => CACHED_W2_SWR.write().await.cache_clear(),
            (true, Lifetime::W4) => CACHED_W4_SWR.write().await.cache_clear(),
        }
        if swr {
            Subject::CachedSwr(lifetime)
        } else {
            Subject::CachedPlain(lifetime)
        }
    }

    /// Reads `key`.
    pub(crate) async fn read(&self, key: u64) -> Read {
        match self {
            Subject::Cacheback { handle, .. } => match handle.get_with_status(key).await {
                Ok(lookup) => Read {
                    value: lookup.value,
                    status: status_label(lookup.status),
                },
                Err(_) => Read {
                    value: None,
                    status: "error",
                },
            },
            Subject::Moka { cache, fetcher } => {
                let value = cache
                    .get_with(key, async { Arc::new(fetcher.fetch(key).await) })
                    .await;
                peer_read(value)
            }
            Subject::CachedPlain(Lifetime::W2) => peer_read(cached_w2_plain(key).await),
            Subject::CachedPlain(Lifetime::W4) => peer_read(cached_w4_plain(key).await),
            Subject::CachedSwr(Lifetime::W2) => peer_read(cached_w2_swr_read(key).await),
            Subject::CachedSwr(Lifetime::W4) => peer_read(cached_w4_swr_read(key).await),
            Subject::Amalgam { cache, fetcher, .. } => {
                let fetcher = Arc::clone(fetcher);
                let read = amalgam::get_or_set(&cache.0, key, move || async move {
                    Ok::<_, std::convert::Infallible>(fetcher.fetch(key).await)
                });
                match read.await {
                    Ok(value) => peer_read(value),
                    Err(_) => Read {
                        value: None,
                        status: "error",
                    },
                }
            }
        }
    }

    /// Refreshes enqueued so far by this process (cacheback only).
    pub(crate) fn enqueued(&self) -> Option<u64> {
        match self {
            Subject::Cacheback {
                queue: BenchQueue::Local(queue),
                ..
            } => Some(queue.enqueued()),
            #[cfg(feature = "redis")]
            Subject::Cacheback {
                queue: BenchQueue::Redis(queue),
                ..
            } => Some(queue.enqueued()),
            _ => None,
        }
    }

    /// Refresh requests waiting in the queue, not yet taken by a worker (cacheback only; the
    /// peers have no queue). `None` also when Redis cannot say.
    pub(crate) async fn backlog(&self) -> Option<u64> {
        match self {
            Subject::Cacheback {
                queue: BenchQueue::Local(queue),
                ..
            } => Some(queue.len() as u64),
            // Requests not yet delivered to a worker: the stream's length less those delivered
            // and not yet acknowledged (being processed).
            #[cfg(feature = "redis")]
            Subject::Cacheback {
                queue: BenchQueue::Redis(queue),
                ..
            } => {
                let len = queue.len("default").await.ok()?;
                let pending = queue.pending("default").await.ok()?;
                Some(len.saturating_sub(pending))
            }
            _ => None,
        }
    }
}

fn peer_read(value: Arc<Value>) -> Read {
    Read {
        value: Some(value),
        status: "value",
    }
}

fn status_label(status: Status) -> &'static str {
    status.as_str()
}

// --- the `cached` functions ------------------------------------------------------------------
//
// `cached` keeps each function's cache in a static and takes its TTL as a literal, so there is
// one function per (recipe, lifetime); the fetch behind each is installed at run time.

type Slot = Mutex<Option<Arc<Fetcher>>>;

static W2_PLAIN: Slot = Mutex::new(None);
static W4_PLAIN: Slot = Mutex::new(None);
static W2_SWR: Slot = Mutex::new(None);
static W4_SWR: Slot = Mutex::new(None);

fn slot(swr: bool, lifetime: Lifetime) -> &'static Slot {
    match (swr, lifetime) {
        (false, Lifetime::W2) => &W2_PLAIN,
        (false, Lifetime::W4) => &W4_PLAIN,
        (true, Lifetime::W2) => &W2_SWR,
        (true, Lifetime::W4) => &W4_SWR,
    }
}

fn installed(slot: &Slot) -> Arc<Fetcher> {
    slot.lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .expect("a fetcher is installed before the cached peer runs")
}

#[cached(ttl_millis = 300)]
async fn cached_w2_plain(key: u64) -> Arc<Value> {
    Arc::new(installed(&W2_PLAIN).fetch(key).await)
}

#[cached(ttl_millis = 2000)]
async fn cached_w4_plain(key: u64) -> Arc<Value> {
    Arc::new(installed(&W4_PLAIN).fetch(key).await)
}

#[cached(ttl_millis = 300, sync_writes = "by_key")]
async fn cached_w2_swr(key: u64) -> Arc<Value> {
    Arc::new(installed(&W2_SWR).fetch(key).await)
}

#[cached(ttl_millis = 2000, sync_writes = "by_key")]
async fn cached_w4_swr(key: u64) -> Arc<Value> {
    Arc::new(installed(&W4_SWR).fetch(key).await)
}

static REFRESHING_W2: LazyLock<ClaimRegistry<u64>> = LazyLock::new(ClaimRegistry::new);
static REFRESHING_W4: LazyLock<ClaimRegistry<u64>> = LazyLock::new(ClaimRegistry::new);

/// cached's recipe, as in its example (section 5), for the W2 function.
async fn cached_w2_swr_read(key: u64) -> Arc<Value> {
    let (value, expired) = {
        let cache = CACHED_W2_SWR.read().await;
        cache.cache_peek_with_expiry_status(&key)
    };
    match value {
        Some(v) if !expired => v,
        Some(stale) => {
            if let Some(claim) = REFRESHING_W2.claim(key) {
                tokio::spawn(async move {
                    cached_w2_swr_prime_cache(*claim.key()).await;
                });
            }
            stale
        }
        None => cached_w2_swr(key).await,
    }
}

/// cached's recipe, as in its example (section 5), for the W4 function.
async fn cached_w4_swr_read(key: u64) -> Arc<Value> {
    let (value, expired) = {
        let cache = CACHED_W4_SWR.read().await;
        cache.cache_peek_with_expiry_status(&key)
    };
    match value {
        Some(v) if !expired => v,
        Some(stale) => {
            if let Some(claim) = REFRESHING_W4.claim(key) {
                tokio::spawn(async move {
                    cached_w4_swr_prime_cache(*claim.key()).await;
                });
            }
            stale
        }
        None => cached_w4_swr(key).await,
    }
}
