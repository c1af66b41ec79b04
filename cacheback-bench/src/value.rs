//! The value every workload caches, the fetch that produces it, and the cacheback job around it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cacheback::{Cacheback, Event, Job, JobHandle, LocalQueue, Policy, WorkerOptions};
use serde::{Deserialize, Serialize};

/// The cached value: a key string, a 32-byte string and a timestamp, about 100 bytes encoded
/// (85 bytes of JSON, as WORKLOADS.md asks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Value {
    /// The key it was fetched for.
    pub(crate) key: String,
    /// 32 bytes of payload.
    pub(crate) body: String,
    /// When the fetch that made it finished, in Unix milliseconds. Workloads derive the value's
    /// age (and whether it is past its lifetime) from it, the same way for every cache.
    pub(crate) at_ms: u64,
}

impl Value {
    /// The value of `key`, stamped now.
    pub(crate) fn new(key: u64) -> Self {
        Value {
            key: format!("bench:key:{key:08}"),
            body: "0123456789abcdef0123456789abcdef".to_owned(),
            at_ms: unix_ms(),
        }
    }

    /// Heap and inline bytes of an `Arc<Value>` (allocator rounding not included).
    pub(crate) fn arc_bytes(&self) -> usize {
        2 * std::mem::size_of::<usize>()
            + std::mem::size_of::<Value>()
            + self.key.capacity()
            + self.body.capacity()
    }
}

/// Now, in Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The fetch under test: sleeps a fixed time, counts its calls and logs when each started, so a
/// workload can tell how many fetches each refresh event cost. Shared by cacheback and every
/// peer, so all of them do exactly the same work.
#[derive(Debug)]
pub(crate) struct Fetcher {
    delay: Duration,
    calls: AtomicU64,
    log: Mutex<Vec<(u64, Instant)>>,
}

impl Fetcher {
    /// A fetch that takes `delay` (zero: returns at once, without yielding).
    pub(crate) fn new(delay: Duration) -> Arc<Self> {
        Arc::new(Fetcher {
            delay,
            calls: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        })
    }

    /// Fetches `key`.
    pub(crate) async fn fetch(&self, key: u64) -> Value {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.log_lock().push((key, Instant::now()));
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Value::new(key)
    }

    /// Calls so far.
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Forgets the calls so far (after prewarming).
    pub(crate) fn reset(&self) {
        self.calls.store(0, Ordering::Relaxed);
        self.log_lock().clear();
    }

    /// The calls so far: key and start time.
    pub(crate) fn log(&self) -> Vec<(u64, Instant)> {
        self.log_lock().clone()
    }

    fn log_lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Instant)>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The cacheback job of the workloads: `u64` key in, [`Value`] out, through a [`Fetcher`].
#[derive(Debug)]
pub(crate) struct BenchJob {
    pub(crate) fetcher: Arc<Fetcher>,
    pub(crate) policy: Policy,
}

impl Job for BenchJob {
    type Args = u64;
    type Value = Value;
    type Error = Infallible;

    fn name(&self) -> &str {
        "bench"
    }

    fn policy(&self) -> Policy {
        self.policy.clone()
    }

    async fn fetch(&self, key: u64) -> Result<Value, Infallible> {
        Ok(self.fetcher.fetch(key).await)
    }
}

/// How to build the cacheback client of a workload.
#[derive(Debug, Clone)]
pub(crate) struct ClientSetup {
    pub(crate) policy: Policy,
    pub(crate) queue_capacity: usize,
    pub(crate) worker: Option<usize>,
    /// A near cache of this many copies in front of a remote store (none by default).
    pub(crate) near: Option<u64>,
}

impl ClientSetup {
    /// The embedded default (memory store, local queue, in-process worker of 16) with `policy`.
    pub(crate) fn new(policy: Policy) -> Self {
        ClientSetup {
            policy,
            queue_capacity: 10_000,
            worker: Some(16),
            near: None,
        }
    }
}

/// Whether the clients count for fleet stats (`CACHEBACK_FLEET_STATS=1`): what the counting
/// costs a hit is W1 run with and without it (nothing is published during a run).
fn fleet_stats() -> bool {
    std::env::var("CACHEBACK_FLEET_STATS").is_ok_and(|v| v == "1")
}

/// A hook for cacheback's events.
pub(crate) type EventHook = Box<dyn Fn(&Event) + Send + Sync>;

/// A memory-store cacheback client with its job handle and queue. Call from inside a runtime.
pub(crate) fn memory_client(
    setup: &ClientSetup,
    fetcher: Arc<Fetcher>,
    events: Option<EventHook>,
) -> (JobHandle<BenchJob>, LocalQueue) {
    let queue = LocalQueue::new(setup.queue_capacity);
    let mut builder = Cacheback::builder()
        .store(
            cacheback::MemoryStore::builder()
                .max_entries(2_000_000)
                .build(),
        )
        .queue(queue.clone())
        .fleet_stats(fleet_stats())
        .in_process_worker(setup.worker.is_some());
    if let Some(concurrency) = setup.worker {
        builder = builder.worker_options(WorkerOptions::default().concurrency(concurrency));
    }
    if let Some(hook) = events {
        builder = builder.on_event(hook);
    }
    let client = builder.build().expect("valid client");
    let handle = client.job(BenchJob {
        fetcher,
        policy: setup.policy.clone(),
    });
    (handle, queue)
}

/// A cacheback client on Redis (`RedisStore` + `RedisQueue` on `url`, keys under `prefix`), with
/// an in-process worker when `setup.worker` says so, and its job handle and queue. Call from
/// inside a runtime.
#[cfg(feature = "redis")]
pub(crate) fn redis_client(
    url: &str,
    prefix: &str,
    setup: &ClientSetup,
    fetcher: Arc<Fetcher>,
) -> Result<(Cacheback, JobHandle<BenchJob>, cacheback::RedisQueue), String> {
    let store = cacheback::RedisStore::from_url(url).map_err(|e| e.to_string())?;
    queued_client(store, url, prefix, setup, fetcher)
}

/// A cacheback client on `store` with a `RedisQueue` on the Redis at `url` (keys under
/// `prefix`), otherwise as [`redis_client`].
#[cfg(feature = "redis")]
pub(crate) fn queued_client(
    store: impl cacheback::store::Store,
    url: &str,
    prefix: &str,
    setup: &ClientSetup,
    fetcher: Arc<Fetcher>,
) -> Result<(Cacheback, JobHandle<BenchJob>, cacheback::RedisQueue), String> {
    let queue = cacheback::RedisQueue::builder(url)
        .prefix(prefix)
        .build()
        .map_err(|e| e.to_string())?;
    let mut builder = Cacheback::builder()
        .prefix(prefix)
        .store(store)
        .queue(queue.clone())
        .fleet_stats(fleet_stats())
        .in_process_worker(setup.worker.is_some());
    if let Some(concurrency) = setup.worker {
        builder = builder.worker_options(WorkerOptions::default().concurrency(concurrency));
    }
    if let Some(copies) = setup.near {
        builder = builder.near_cache(cacheback::NearCache::new().max_entries(copies));
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let handle = client.job(BenchJob {
        fetcher,
        policy: setup.policy.clone(),
    });
    Ok((client, handle, queue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_is_about_100_bytes_encoded() {
        let v = Value::new(42);
        assert_eq!(v.body.len(), 32);
        let json = serde_json::to_vec(&v).unwrap();
        assert!((70..=110).contains(&json.len()), "{}", json.len());
    }
}
