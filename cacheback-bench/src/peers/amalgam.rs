//! amalgam-cache, the nearest peer: a Rust port of .NET's FusionCache (an in-process L1,
//! optionally a Redis L2 with a backplane and a distributed locker), configured the way its
//! documentation recommends for serving a stale value at once while one refresh runs.
//!
//! - **Entry options** (the cache's defaults): fresh for the workload's lifetime; *eager
//!   refresh* once half of it has passed (a read in that window returns the value and starts one
//!   background refresh); *fail-safe* on, keeping a stale value for a day (cacheback's default
//!   `stale_ttl`), so an expired entry can be served; a 1 ms *soft factory timeout* with
//!   background completion: a reader that finds the entry expired starts the factory, waits at
//!   most 1 ms and returns the stale value while the factory finishes in the background and
//!   writes the cache.
//! - **With Redis**: `RedisDistributedCache` (L2) + `RedisBackplane` (peers' L1 copies dropped
//!   on writes) + `RedisDistributedLocker` (one factory per key across processes), as in its
//!   own `examples/redis.rs`; values in L2 as JSON (`JsonSerializer`).
//! - **Reads**: `get_or_set(key, factory)` with the key as decimal text (formatted on the stack)
//!   and the value an `Arc`, as every other subject holds it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use amalgam::{Cache, EagerThreshold, EntryOptions, Timeout};

use crate::value::Value;

/// The cache of an amalgam subject: the same `Arc` values as the other subjects.
pub(crate) type AmalgamCache = Cache<Arc<Value>>;

/// An amalgam cache with a `Debug` of its own (amalgam's `Cache` has none).
#[derive(Clone)]
pub(crate) struct Handle(pub(crate) AmalgamCache);

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("amalgam::Cache")
            .field("name", &self.0.name())
            .field("instance_id", &self.0.instance_id())
            .finish_non_exhaustive()
    }
}

/// The subject's name in records and plots.
pub(crate) const NAME: &str = "amalgam-cache";

/// What the in-memory subject does.
pub(crate) const DESCRIBE_MEMORY: &str = "amalgam-cache 0.4 Cache::get_or_set, L1 only; eager refresh at 0.5 of the duration, fail-safe (1 day), 1 ms soft factory timeout with background completion";

/// What the Redis subject does.
pub(crate) const DESCRIBE_REDIS: &str = "amalgam-cache 0.4 Cache::get_or_set, L1 + RedisDistributedCache + RedisBackplane + RedisDistributedLocker (JSON); eager refresh at 0.5 of the duration, fail-safe (1 day), 1 ms soft factory timeout with background completion";

/// How long fail-safe keeps an expired value: cacheback's default `stale_ttl`.
const FAIL_SAFE_MAX: Duration = Duration::from_secs(86_400);

/// The entry options of every amalgam subject (see the module docs).
pub(crate) fn options(lifetime: Duration) -> EntryOptions {
    EntryOptions::new(lifetime)
        .with_eager_refresh(EagerThreshold::new(0.5))
        .with_fail_safe(true, Some(FAIL_SAFE_MAX), None)
        .with_factory_timeouts(
            Timeout::After(Duration::from_millis(1)),
            Timeout::Infinite,
            true,
        )
}

/// An in-process amalgam cache whose entries live `lifetime`.
pub(crate) fn memory(lifetime: Duration) -> Result<AmalgamCache, String> {
    Cache::builder()
        .default_options(options(lifetime))
        .try_build()
        .map_err(|e| format!("amalgam-cache: {e}"))
}

/// An amalgam cache on the Redis at `url` (L2, backplane and locker), its keys under `prefix`.
#[cfg(feature = "redis")]
pub(crate) async fn redis(
    url: &str,
    prefix: &str,
    lifetime: Duration,
) -> Result<AmalgamCache, String> {
    use amalgam::provider::{
        Backplane, DistributedCache, DistributedLocker, DistributedSerializer, JsonSerializer,
        RedisBackplane, RedisDistributedCache, RedisDistributedLocker,
    };
    let error = |e: amalgam::Error| format!("amalgam-cache on Redis: {e}");
    let l2 = RedisDistributedCache::connect(url.to_owned())
        .await
        .map_err(error)?;
    let backplane = RedisBackplane::connect(url.to_owned())
        .await
        .map_err(error)?;
    let locker = RedisDistributedLocker::connect(url.to_owned())
        .await
        .map_err(error)?;
    Cache::builder()
        .default_options(options(lifetime))
        .distributed(Arc::new(l2) as Arc<dyn DistributedCache>)
        .serializer(Arc::new(JsonSerializer) as Arc<dyn DistributedSerializer<Arc<Value>>>)
        .backplane(Arc::new(backplane) as Arc<dyn Backplane>)
        .distributed_locker(Arc::new(locker) as Arc<dyn DistributedLocker>)
        .key_prefix(prefix)
        .try_build()
        .map_err(error)
}

/// Reads `key` through `cache`; `fetch` makes the value on a miss or a refresh.
pub(crate) async fn get_or_set<F, Fut, E>(
    cache: &AmalgamCache,
    key: u64,
    fetch: F,
) -> amalgam::Result<Arc<Value>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Value, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    cache
        .get_or_set(
            KeyText::new(key),
            amalgam::source::factory(move |_| async move { fetch().await.map(Arc::new) }),
        )
        .await
}

/// A `u64` key as decimal text, without a heap allocation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyText {
    digits: [u8; 20],
    start: usize,
}

impl KeyText {
    /// The decimal text of `key`.
    pub(crate) fn new(mut key: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (key % 10) as u8;
            key /= 10;
            if key == 0 {
                return KeyText { digits, start };
            }
        }
    }
}

impl AsRef<str> for KeyText {
    fn as_ref(&self) -> &str {
        std::str::from_utf8(&self.digits[self.start..]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_decimal_text() {
        assert_eq!(KeyText::new(0).as_ref(), "0");
        assert_eq!(KeyText::new(42).as_ref(), "42");
        assert_eq!(KeyText::new(u64::MAX).as_ref(), u64::MAX.to_string());
    }

    /// With the configuration above, 16 readers of an expired entry all get the stale value
    /// (the very `Arc`: none waited for the 2 s fetch) while exactly one refresh runs, and the
    /// refresh lands. Freshness runs on amalgam's `ManualClock`; the fetch on real time.
    #[test]
    fn an_expired_entry_is_served_stale_while_one_refresh_runs() {
        use amalgam::Timestamp;
        use amalgam::provider::{Clock, ManualClock};

        crate::workloads::runtime().block_on(async {
            let clock = Arc::new(ManualClock::new(Timestamp::from_ticks(1_000_000_000)));
            let cache: AmalgamCache = Cache::builder()
                .default_options(options(Duration::from_millis(300)))
                .clock(Arc::clone(&clock) as Arc<dyn Clock>)
                .try_build()
                .unwrap();
            let fetcher = crate::value::Fetcher::new(Duration::from_secs(2));
            let read = |cache: AmalgamCache| {
                let fetcher = Arc::clone(&fetcher);
                async move {
                    get_or_set(&cache, 7, move || async move {
                        Ok::<_, std::convert::Infallible>(fetcher.fetch(7).await)
                    })
                    .await
                    .unwrap()
                }
            };
            let first = read(cache.clone()).await;
            assert_eq!(fetcher.calls(), 1);
            clock.advance(Duration::from_millis(400));

            let readers: Vec<_> = (0..16).map(|_| tokio::spawn(read(cache.clone()))).collect();
            for reader in readers {
                let value = reader.await.unwrap();
                assert!(Arc::ptr_eq(&value, &first), "the stale value is served");
            }
            assert_eq!(fetcher.calls(), 2, "one refresh for 16 readers");

            cacheback_test_support::eventually(
                "the refresh lands",
                Duration::from_secs(10),
                || {
                    let read = read(cache.clone());
                    let first = Arc::clone(&first);
                    async move { !Arc::ptr_eq(&read.await, &first) }
                },
            )
            .await;
            assert_eq!(
                fetcher.calls(),
                2,
                "reads during the refresh started no other"
            );
            cache.shutdown().await.unwrap();
        });
    }
}
