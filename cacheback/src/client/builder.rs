//! [`CachebackBuilder`]: a client's settings, from code or from the environment.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::LocalQueue;
use crate::MemoryStore;
use crate::client::coalesce::Coalescer;
use crate::client::hints;
use crate::client::{
    Cacheback, ClientInner, DEFAULT_MAX_VALUE_BYTES, QueueFallback, ReadState, StoreFallback,
};
use crate::clock::{Clock, SystemClock};
use crate::codec::Codec;
use crate::engine::near::{NearCache, NearTier};
use crate::engine::registry::Registry;
use crate::engine::tags::TagTable;
use crate::engine::{self, Core, RecentFailures, Running};
use crate::error::{Error, Result};
use crate::key;
use crate::observe::{Event, EventHook};
use crate::queue::Queue;
use crate::store::{Change, Store};
use crate::worker::{Worker, WorkerOptions};

type SharedStore = Arc<dyn Store>;
type SharedQueue = Arc<dyn Queue>;

/// Builds a [`Cacheback`] client.
#[must_use]
pub struct CachebackBuilder {
    store: Option<SharedStore>,
    queue: Option<SharedQueue>,
    /// `None`: the [`SystemClock`], read without the trait object.
    clock: Option<Arc<dyn Clock>>,
    prefix: String,
    codec: Codec,
    events: Option<EventHook>,
    store_fallback: StoreFallback,
    queue_fallback: QueueFallback,
    max_value_bytes: usize,
    tombstone_ttl: Duration,
    worker: Option<bool>,
    worker_options: WorkerOptions,
    near: Option<NearCache>,
    tag_check_interval: Duration,
    fleet_stats: bool,
}

impl Default for CachebackBuilder {
    fn default() -> Self {
        CachebackBuilder {
            store: None,
            queue: None,
            clock: None,
            prefix: "cacheback".to_owned(),
            codec: Codec::default(),
            events: None,
            store_fallback: StoreFallback::default(),
            queue_fallback: QueueFallback::default(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            tombstone_ttl: Duration::from_secs(600),
            worker: None,
            worker_options: WorkerOptions::default(),
            near: None,
            tag_check_interval: Duration::from_secs(1),
            fleet_stats: false,
        }
    }
}

impl fmt::Debug for CachebackBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachebackBuilder")
            .field("store", &self.store)
            .field("queue", &self.queue)
            .field("prefix", &self.prefix)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

/// The environment variables [`CachebackBuilder::from_env`] reads.
const ENV_PREFIX: &str = "CACHEBACK_PREFIX";
const ENV_REDIS_URL: &str = "CACHEBACK_REDIS_URL";
const ENV_IN_PROCESS_WORKER: &str = "CACHEBACK_IN_PROCESS_WORKER";
const ENV_WORKER_CONCURRENCY: &str = "CACHEBACK_WORKER_CONCURRENCY";
const ENV_WORKER_MAX_CONCURRENCY: &str = "CACHEBACK_WORKER_MAX_CONCURRENCY";
const ENV_MAX_VALUE_BYTES: &str = "CACHEBACK_MAX_VALUE_BYTES";
const ENV_NEAR_CACHE_ENTRIES: &str = "CACHEBACK_NEAR_CACHE_ENTRIES";

impl CachebackBuilder {
    /// A builder with the settings services take from their environment; unset variables keep
    /// the defaults, and anything can still be overridden in code afterwards.
    ///
    /// | variable | sets | example |
    /// |---|---|---|
    /// | `CACHEBACK_PREFIX` | [`prefix`](Self::prefix) | `myapp` |
    /// | `CACHEBACK_REDIS_URL` | a `RedisStore` and a `RedisQueue` at that URL (feature `redis`) | `redis://:secret@redis:6379/0` |
    /// | `CACHEBACK_IN_PROCESS_WORKER` | [`in_process_worker`](Self::in_process_worker): `true`/`false`/`1`/`0` | `false` on web processes |
    /// | `CACHEBACK_WORKER_CONCURRENCY` | the in-process worker's [`WorkerOptions::concurrency`] | `64` |
    /// | `CACHEBACK_WORKER_MAX_CONCURRENCY` | the in-process worker's [`WorkerOptions::max_concurrency`] | `256` |
    /// | `CACHEBACK_MAX_VALUE_BYTES` | [`max_value_bytes`](Self::max_value_bytes) | `1048576` |
    /// | `CACHEBACK_NEAR_CACHE_ENTRIES` | a [`near_cache`](Self::near_cache) of that many copies | `50000` |
    ///
    /// A value that does not parse, or `CACHEBACK_REDIS_URL` in a build without the `redis`
    /// feature, is an [`Error::Config`] naming the variable (a URL's password is never shown).
    ///
    /// ```
    /// # fn main() -> cacheback::Result<()> {
    /// let builder = cacheback::CachebackBuilder::from_env()?;
    /// # let _ = builder;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_env() -> Result<CachebackBuilder> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with the variables looked up by `var` (tests pass a map).
    pub(crate) fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<CachebackBuilder> {
        let mut builder = CachebackBuilder::default();
        if let Some(prefix) = var(ENV_PREFIX) {
            builder = builder.prefix(prefix);
        }
        if let Some(url) = var(ENV_REDIS_URL) {
            builder = with_redis(builder, &url)?;
        }
        if let Some(text) = var(ENV_IN_PROCESS_WORKER) {
            let start = match text.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(bad_var(ENV_IN_PROCESS_WORKER, &text, "true or false")),
            };
            builder = builder.in_process_worker(start);
        }
        if let Some(text) = var(ENV_WORKER_CONCURRENCY) {
            let n = parse_count(ENV_WORKER_CONCURRENCY, &text)?;
            builder.worker_options = builder.worker_options.clone().concurrency(n);
        }
        if let Some(text) = var(ENV_WORKER_MAX_CONCURRENCY) {
            let n = parse_count(ENV_WORKER_MAX_CONCURRENCY, &text)?;
            builder.worker_options = builder.worker_options.clone().max_concurrency(n);
        }
        if let Some(text) = var(ENV_MAX_VALUE_BYTES) {
            builder = builder.max_value_bytes(parse_count(ENV_MAX_VALUE_BYTES, &text)?);
        }
        if let Some(text) = var(ENV_NEAR_CACHE_ENTRIES) {
            let n = parse_count(ENV_NEAR_CACHE_ENTRIES, &text)?;
            builder = builder.near_cache(NearCache::new().max_entries(n as u64));
        }
        Ok(builder)
    }

    /// The store (default: a [`MemoryStore`] of 100,000 entries).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// A store already behind an `Arc` (to share one between clients).
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The queue (default: a [`LocalQueue`] of 10,000 requests).
    pub fn queue(mut self, queue: impl Queue) -> Self {
        self.queue = Some(Arc::new(queue));
        self
    }

    /// A queue already behind an `Arc`.
    pub fn shared_queue(mut self, queue: Arc<dyn Queue>) -> Self {
        self.queue = Some(queue);
        self
    }

    /// The wall clock (default: [`SystemClock`]); tests pass a [`TestClock`](crate::clock::TestClock).
    pub fn clock<C: Clock>(mut self, clock: C) -> Self {
        let system = std::any::TypeId::of::<C>() == std::any::TypeId::of::<SystemClock>();
        self.clock = (!system).then(|| Arc::new(clock) as Arc<dyn Clock>);
        self
    }

    /// The key prefix isolating this application in a shared store (default `"cacheback"`):
    /// ASCII letters, digits, `_`, `.`, `-`; at most 64 bytes.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The codec for args and for values in byte stores (default: postcard).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Counts each job's reads (hits, stale, misses), refreshes, failures, refresh lag and
    /// served ages in this process (default: off), for a
    /// [`StatsPublisher`](crate::fleet_stats::StatsPublisher) to add up across the fleet. It
    /// costs a read two relaxed atomic additions on a per-thread stripe; nothing is sent
    /// anywhere unless a publisher runs.
    pub fn fleet_stats(mut self, on: bool) -> Self {
        self.fleet_stats = on;
        self
    }

    /// A hook called for every [`Event`].
    pub fn on_event(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.events = Some(Arc::new(hook));
        self
    }

    /// What reads do when the store cannot be reached (default: [`StoreFallback::Fetch`]).
    pub fn store_fallback(mut self, fallback: StoreFallback) -> Self {
        self.store_fallback = fallback;
        self
    }

    /// What happens to a refresh the queue cannot accept (default:
    /// [`QueueFallback::LocalRefresh`]).
    pub fn queue_fallback(mut self, fallback: QueueFallback) -> Self {
        self.queue_fallback = fallback;
        self
    }

    /// Values whose encoding is larger are refused with [`Error::TooLarge`] (default 4 MiB).
    pub fn max_value_bytes(mut self, limit: usize) -> Self {
        self.max_value_bytes = limit;
        self
    }

    /// How long a deleted key's tombstone is kept, blocking refreshes enqueued before the delete
    /// from resurrecting it (default 10 minutes).
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// Whether to start an in-process worker (default: only for in-process queues such as
    /// [`LocalQueue`], which nobody else can drain).
    pub fn in_process_worker(mut self, start: bool) -> Self {
        self.worker = Some(start);
        self
    }

    /// Options of the in-process worker (concurrency, drain deadline, ...).
    pub fn worker_options(mut self, options: WorkerOptions) -> Self {
        self.worker_options = options;
        self
    }

    /// Puts a near cache in front of the store: this process keeps copies of the entries it
    /// reads (bounded by entries or bytes), so that a hit on a hot key costs what a
    /// [`MemoryStore`] hit costs instead of a round trip. Needs a store that announces its
    /// writes ([`Store::watch`]; `RedisStore` does): when any process writes, invalidates or
    /// deletes a key, every other process drops its copy as soon as the announcement arrives
    /// (milliseconds), and this process drops its own at once.
    ///
    /// The contract, exactly:
    /// - a copy keeps its entry's windows: it is served Fresh, then Stale, as the entry would
    ///   be, and a stale copy triggers the same fleet-wide claim, so refreshes stay exactly-once;
    /// - a copy is served only while the subscription to the announcements is live and has
    ///   been since the copy was taken; when it is lost, no copy is served (reads go to the
    ///   store) until it is back, and copies taken before are never served again;
    /// - a copy is served for at most the near cache's [`ttl`](NearCache::ttl) after it was
    ///   taken, which bounds how long an announcement lost without notice could keep an
    ///   overwritten value in use;
    /// - while the store cannot be read at all, a copy this process still holds is served
    ///   instead of following [`StoreFallback`] (Fresh or Stale as its windows say; past
    ///   them the fallback applies). A copy a newer write superseded is kept for that alone,
    ///   and served as Stale; a copy of a deleted key is dropped.
    ///
    /// [`build`](Self::build) fails with [`Error::Config`] for an in-process store (which needs
    /// no near cache) and for a store that does not announce its writes.
    ///
    /// ```no_run
    /// use cacheback::{Cacheback, NearCache, RedisQueue, RedisStore};
    ///
    /// # #[tokio::main] async fn main() -> cacheback::Result<()> {
    /// let cache = Cacheback::builder()
    ///     .prefix("myapp")
    ///     .store(RedisStore::from_url("redis://127.0.0.1:6379")?)
    ///     .queue(RedisQueue::from_url("redis://127.0.0.1:6379")?)
    ///     .near_cache(NearCache::new().max_entries(50_000))
    ///     .build()?;
    /// # let _ = cache;
    /// # Ok(())
    /// # }
    /// ```
    pub fn near_cache(mut self, near: NearCache) -> Self {
        self.near = Some(near);
        self
    }

    /// The longest a process in front of a remote store trusts what it read of a tag's state
    /// (default 1 s, on the client's clock): the bound on how late it sees another process's
    /// [`invalidate_tag`](crate::Cacheback::invalidate_tag) or
    /// [`delete_tag`](crate::Cacheback::delete_tag) if the announcement of it is lost (or, for
    /// a client without a near cache, which does not listen to announcements, at all). A read
    /// of a tagged entry costs one more store read (of its tags' states) at most once per
    /// interval per tag; untagged entries never do. Irrelevant for the memory store, which is
    /// always exact.
    pub fn tag_check_interval(mut self, interval: Duration) -> Self {
        self.tag_check_interval = interval;
        self
    }

    /// Builds the client. Starting the in-process worker needs a Tokio runtime: call this
    /// from within one.
    pub fn build(self) -> Result<Cacheback> {
        key::validate_prefix(&self.prefix).map_err(|e| Error::config(e.to_string()))?;
        if self.max_value_bytes == 0 {
            return Err(Error::config("max_value_bytes must be greater than zero"));
        }
        self.worker_options.validate()?;
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new()) as SharedStore);
        let queue = self
            .queue
            .unwrap_or_else(|| Arc::new(LocalQueue::default()) as SharedQueue);
        queue.bind_prefix(&self.prefix)?;
        let start_worker = self.worker.unwrap_or_else(|| is_local(&queue));
        let memory = engine::in_process_store(&store);
        let claim_hints = memory.is_none().then(hints::ClaimHints::default);
        let stop = CancellationToken::new();
        let tags = Arc::new(TagTable::new(self.tag_check_interval));
        let near = match &self.near {
            Some(config) => Some(start_near(
                config,
                &store,
                memory.is_some(),
                (self.prefix.as_str(), &tags),
                &stop,
            )?),
            None => None,
        };
        let runtime = if start_worker {
            Some(tokio::runtime::Handle::try_current().map_err(|_| {
                Error::config(
                    "the in-process worker needs a Tokio runtime: build the client inside one, \
                     or turn the worker off with `in_process_worker(false)`",
                )
            })?)
        } else {
            None
        };
        let core = Arc::new(Core {
            store,
            memory,
            near,
            queue: Arc::clone(&queue),
            system_clock: self.clock.is_none(),
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            prefix: Arc::from(self.prefix),
            codec: self.codec,
            events: self.events,
            max_value_bytes: self.max_value_bytes,
            tombstone_ttl: self.tombstone_ttl,
            fleet_stats: self.fleet_stats,
            registry: Registry::default(),
            recent_failures: RecentFailures::default(),
            running: Running::default(),
            tasks: TaskTracker::new(),
            tags,
        });
        let reads = ReadState {
            store_fallback: self.store_fallback,
            queue_fallback: self.queue_fallback,
            hand_off_after_answer: core.queue.in_process()
                && self.queue_fallback != QueueFallback::SyncRefresh,
            coalescer: Arc::new(Coalescer::default()),
            claim_hints,
        };
        let worker = runtime.map(|runtime| {
            let worker = Worker::from_core(Arc::clone(&core), queue, self.worker_options);
            let stop = stop.clone();
            runtime.spawn(worker.run_until(async move { stop.cancelled().await }))
        });
        Ok(Cacheback {
            inner: Arc::new(ClientInner {
                core,
                reads,
                worker: Mutex::new(worker),
                _stop_on_drop: stop.clone().drop_guard(),
                stop,
            }),
        })
    }
}

/// The near tier, and the task that applies the store's announced changes to it (and to the
/// client's tag table) until `stop`.
fn start_near(
    config: &NearCache,
    store: &SharedStore,
    in_process: bool,
    (prefix, tags): (&str, &Arc<TagTable>),
    stop: &CancellationToken,
) -> Result<Arc<NearTier>> {
    config.validate()?;
    if in_process {
        return Err(Error::config(
            "a near cache goes in front of a remote store; the memory store is in-process already",
        ));
    }
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        Error::config("a near cache needs a Tokio runtime: build the client inside one")
    })?;
    let Some(mut changes) = store.watch(prefix) else {
        return Err(Error::config(format!(
            "the {} store does not announce its writes, so a near cache in front of it could \
             serve overwritten values: use a store that does (RedisStore on one Redis; a \
             RedisStore on a Redis Cluster announces nothing)",
            store.backend()
        )));
    };
    let near = Arc::new(NearTier::new(config));
    let (tier, stop, tags) = (Arc::clone(&near), stop.clone(), Arc::clone(tags));
    runtime.spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                change = changes.next() => match change {
                    Some(change) => {
                        tags.apply(change);
                        tier.apply(change);
                    }
                    None => {
                        tags.apply(Change::Lost);
                        tier.apply(Change::Lost);
                        return;
                    }
                },
            }
        }
    });
    Ok(near)
}

/// Whether only this process can drain `queue` (nobody else can run its refreshes).
fn is_local(queue: &SharedQueue) -> bool {
    let any: &dyn std::any::Any = &**queue;
    any.is::<LocalQueue>()
}

fn bad_var(name: &str, value: &str, expected: &str) -> Error {
    Error::config(format!(
        "environment variable {name} is `{value}`; expected {expected}"
    ))
}

fn parse_count(name: &str, text: &str) -> Result<usize> {
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad_var(name, text, "a whole number above 0")),
    }
}

#[cfg(feature = "redis")]
fn with_redis(builder: CachebackBuilder, url: &str) -> Result<CachebackBuilder> {
    let named = |e: Error| Error::config(format!("environment variable {ENV_REDIS_URL}: {e}"));
    let store = crate::RedisStore::from_url(url).map_err(named)?;
    let queue = crate::RedisQueue::from_url(url).map_err(named)?;
    Ok(builder.store(store).queue(queue))
}

#[cfg(not(feature = "redis"))]
fn with_redis(_: CachebackBuilder, _: &str) -> Result<CachebackBuilder> {
    Err(Error::config(format!(
        "environment variable {ENV_REDIS_URL} is set, but cacheback was built without its \
         `redis` feature"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn settings_come_from_the_environment() {
        let builder = CachebackBuilder::from_vars(vars(&[
            ("CACHEBACK_PREFIX", "shop"),
            ("CACHEBACK_IN_PROCESS_WORKER", "false"),
            ("CACHEBACK_WORKER_CONCURRENCY", "64"),
            ("CACHEBACK_WORKER_MAX_CONCURRENCY", "256"),
            ("CACHEBACK_MAX_VALUE_BYTES", "1024"),
        ]))
        .unwrap();
        assert_eq!(builder.prefix, "shop");
        assert_eq!(builder.worker, Some(false));
        assert_eq!(builder.worker_options.concurrency, 64);
        assert_eq!(builder.worker_options.max_concurrency, 256);
        assert_eq!(builder.max_value_bytes, 1024);
        let defaults = CachebackBuilder::from_vars(vars(&[])).unwrap();
        assert_eq!(defaults.prefix, "cacheback");
        assert!(defaults.store.is_none() && defaults.queue.is_none());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("CACHEBACK_IN_PROCESS_WORKER", "maybe"),
            ("CACHEBACK_WORKER_CONCURRENCY", "0"),
            ("CACHEBACK_WORKER_MAX_CONCURRENCY", "-1"),
            ("CACHEBACK_MAX_VALUE_BYTES", "lots"),
        ] {
            let err = CachebackBuilder::from_vars(vars(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_redis_store_outside_a_runtime_is_an_error_not_a_panic() {
        let err =
            CachebackBuilder::from_vars(vars(&[("CACHEBACK_REDIS_URL", "redis://127.0.0.1:1")]))
                .unwrap_err();
        assert!(err.to_string().contains("Tokio runtime"), "{err}");
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_redis_url_sets_store_and_queue_and_hides_its_password() {
        let builder = CachebackBuilder::from_vars(vars(&[(
            "CACHEBACK_REDIS_URL",
            "redis://:pw@127.0.0.1:1",
        )]))
        .unwrap();
        assert_eq!(builder.store.as_ref().map(|s| s.backend()), Some("redis"));
        assert_eq!(builder.queue.as_ref().map(|q| q.backend()), Some("redis"));
        let err = CachebackBuilder::from_vars(vars(&[("CACHEBACK_REDIS_URL", "nope://:secret@x")]))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("CACHEBACK_REDIS_URL") && !text.contains("secret"),
            "{text}"
        );
    }
}
