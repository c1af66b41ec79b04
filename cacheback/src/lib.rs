//! # cacheback
//!
//! Serve every read from cache; recompute off the request path. A Rust service wraps a slow
//! call (a third-party API, a heavy query, a report) in a [`Job`]; from then on reads are
//! answered from the store at once — Fresh values as they are, Stale values while exactly one
//! background refresh replaces them — and the slow call only ever runs in a worker (or, on a
//! cold miss, once per key however many callers wait for it).
//!
//! ## Quick start
//!
//! ```
//! use cacheback::{Cacheback, Job, Policy, Status};
//! use std::time::Duration;
//!
//! struct UserTweets;
//!
//! impl Job for UserTweets {
//!     type Args = String;
//!     type Value = Vec<String>;
//!     type Error = std::io::Error;
//!
//!     fn name(&self) -> &str {
//!         "user_tweets"
//!     }
//!
//!     fn policy(&self) -> Policy {
//!         Policy::default().lifetime(Duration::from_secs(30))
//!     }
//!
//!     async fn fetch(&self, user: String) -> Result<Vec<String>, std::io::Error> {
//!         Ok(vec![format!("{user}: hello")]) // the slow call
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> cacheback::Result<()> {
//! let cache = Cacheback::builder().build()?; // in-memory store, in-process workers
//! let tweets = cache.job(UserTweets);
//!
//! let first = tweets.get_with_status("bob".to_owned()).await?;
//! assert_eq!(first.status, Status::MissFetched);
//! let second = tweets.get_with_status("bob".to_owned()).await?;
//! assert_eq!(second.status, Status::Hit);
//! # Ok(())
//! # }
//! ```
//!
//! ## Stores and queues
//!
//! | | in one process (default) | across a fleet (feature `redis`) |
//! |---|---|---|
//! | store | [`MemoryStore`] | `RedisStore`: entries, claims and failure state in Redis, or a Redis Cluster (`redis+cluster://`) |
//! | queue | [`LocalQueue`] + in-process [`Worker`] | `RedisQueue`: Redis Streams drained by [`Worker`] processes (sharded over a cluster's slots) |
//!
//! With feature `memcached`, `MemcachedStore` is a fleet store in memcached: the same entries,
//! claims by `add` and compare-and-swap, nothing kept through eviction or a restart. In front of
//! a `RedisStore`, a [`NearCache`] keeps copies of hot entries in process memory, coherent
//! across the fleet.
//! Refresh requests can also travel on a broker the fleet already runs, with any store:
//! `AmqpQueue` (feature `amqp`: RabbitMQ quorum queues) or `NatsQueue` (feature `nats`: a
//! NATS JetStream work-queue stream).
//!
//! ## Feature flags
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `macros` | yes | the [`cacheback`](macro@cacheback) attribute for `async fn` |
//! | `testing` | no | [`testing`]: the conformance suites every `Store` and `Queue` must pass |
//! | `json` | no | [`Codec::Json`] |
//! | `redis` | no | `RedisStore` and `RedisQueue` (redis-rs, tokio; `rediss://` TLS with rustls + ring; Redis Cluster) |
//! | `memcached` | no | `MemcachedStore` (async-memcached, meta protocol) |
//! | `http` | no | [`CachebackLayer`](crate::http::CachebackLayer): a tower layer that serves whole responses stale-while-revalidate |
//! | `axum` | no | [`CachedJson`](crate::axum::CachedJson) and `IntoResponse` for [`Error`]: a job read as a response |
//! | `amqp` | no | `AmqpQueue` (lapin, tokio; `amqps://` TLS with rustls + ring) |
//! | `nats` | no | `NatsQueue` (async-nats with JetStream; `tls://` with rustls + ring) |
//!
//! ## How it behaves
//!
//! This is the contract the crate keeps; the tests named in the repository's `RELIABILITY.md`
//! check each part of it.
//!
//! **Windows.** A fetched value is *Fresh* for [`Policy::lifetime`] (shortened by up to
//! [`Policy::jitter`] of it, never lengthened), then *Stale* for [`Policy::stale_ttl`], then
//! gone: a read past that is a miss. Freshness is decided on the client's [`Clock`](clock::Clock) (wall-clock
//! milliseconds, because entries are shared by processes), never by the store's expiry, which
//! only reclaims memory.
//!
//! **Reads.** A Fresh value is returned as it is ([`Status::Hit`]). A Stale value is returned
//! at once ([`Status::Stale`]) and one refresh is triggered, unless it is stale by more than
//! [`Policy::stale_threshold`]: then it is fetched before the read returns
//! ([`Status::StaleRefetched`]). A miss is fetched before the read returns
//! ([`Status::MissFetched`]) or, with [`Policy::fetch_on_miss`] off, answered empty
//! ([`Status::Miss`]) while a refresh is triggered. Concurrent synchronous fetches of one key
//! in one process share one fetch; cancelling a waiter does not cancel it. With
//! [`Policy::fleet_coalescing`] on a store shared by a fleet, they share one fetch across the
//! fleet: the process holding the key's claim fetches, the others wait for its write. A read whose value
//! could not be cached (the store unreachable, the value over
//! [`CachebackBuilder::max_value_bytes`]) says so: [`Status::Bypassed`] and
//! [`Event::CacheBypassed`]. A read never fails because a refresh could not be queued.
//!
//! **Claims: one refresh per stale key.** Triggering a refresh takes the key's *claim* in the
//! store, atomically (a Lua script on Redis): only the reader that wins it enqueues a refresh
//! request; everyone else serves the stale value and moves on. A claim lasts
//! [`Policy::refresh_timeout`]: a refresh lost with a crashed process is retried by the first
//! reader after that. Behind a remote store a read never waits for the claim's and the
//! enqueue's round trips (they finish in a background task, so the stale value is served after
//! one store read), and the readers of one process ask for a key's claim at most once per short
//! window. A worker process refreshes one key at a time, so a request
//! enqueued again because a claim vanished early (evicted by Redis) waits for the running
//! refresh and is then skipped.
//!
//! **Generations: nothing old overwrites something new.** Every write of a key moves its
//! generation on, and a fetch writes only if the generation it started from is still current.
//! `set`, `delete` (which leaves a tombstone for the client's tombstone TTL) and `invalidate`
//! (which marks a value stale, or writes a tombstone when there is none) therefore fence every
//! fetch requested before them: its value is dropped ([`Event::RefreshDiscarded`]), never
//! stored Fresh afterwards.
//!
//! **Failures.** A failing, panicking or hanging (past [`Policy::fetch_timeout`]) refresh keeps
//! the old value, is reported ([`Event::RefreshFailed`], metrics, logs with the whole cause
//! chain), and backs off per [`Policy::retry_backoff`]: no reader triggers the key again
//! before `retry_after`, fleet-wide on Redis. [`Policy::stale_if_error`] keeps serving the old
//! value longer than `stale_ttl` while refreshes fail. A failing synchronous fetch backs off the
//! same way ([`Policy::miss_backoff`]): reads get [`Error::BackingOff`] until the next attempt
//! is due instead of calling the upstream once each.
//!
//! **Fallbacks.** When the store cannot be read, reads follow [`StoreFallback`] (default: fetch
//! without the cache, status `Bypassed`); when the queue cannot take a refresh, the reader
//! follows [`QueueFallback`] (default: refresh in a background task of this process). A full
//! queue drops the request, counts it and releases the claim, so the next read triggers again.
//!
//! **Workers.** A [`Worker`] looks requests up by job name; an unknown job, a malformed
//! message, a request made by a process with another prefix or codec, and a message delivered
//! more than [`WorkerOptions::max_deliveries`] times are dead-lettered with the reason, and the
//! worker goes on. On a durable queue a refresh that never completes (its worker died) is
//! delivered again after the visibility timeout; a worker that stops finishes its refreshes up
//! to a deadline and hands back what it still holds.
//!
//! **Near cache.** With [`CachebackBuilder::near_cache`] in front of a store that announces
//! its writes (Redis), a process keeps copies of the entries it reads and answers from them,
//! with the entries' own windows: a stale copy still takes the key's claim in the store (in
//! the background, so its reader does not wait), so refreshes stay exactly-once across the
//! fleet. A copy is dropped when a write of a newer generation is announced (any process's
//! `set`, `delete`, `invalidate`, refresh) and at once by the process that wrote; it is served
//! only while the subscription to the announcements is live and has been since the copy was
//! taken, and never past the near cache's TTL. While the store cannot be read, a copy stands in
//! (as its windows say; one a newer write superseded as Stale, none for a deleted key) instead
//! of the store fallback.
//!
//! **Tags.** A job may tag its values ([`Job::tags`], from the args and/or the value), and
//! [`Cacheback::invalidate_tag`] / [`Cacheback::delete_tag`] then act on every entry carrying
//! a tag, with the meaning of `invalidate` / `delete` per key (served Stale and refreshed once,
//! or gone), in constant work at call time: nothing is scanned. The store keeps a tag clock per
//! prefix and, per tag, the clock values of its last invalidation and deletion; an entry
//! records the clock read before its value was fetched, and a read compares the two. So a
//! fetch that began before `invalidate_tag` is never stored Fresh after it, and only entries
//! that are read are ever refreshed. The invalidating process sees its call at once; another
//! process in front of Redis sees it when the announcement arrives if it has a near cache,
//! and in any case within its [`CachebackBuilder::tag_check_interval`] (default 1 s: how long
//! it trusts a tag state it read). A read of an untagged entry never looks at tags (still one
//! `GET` on Redis); a read of a tagged one reads its tags' states at most once per interval.
//!
//! **Values and keys.** Keys are `prefix:job:digest` with a 128-bit hash of a canonical
//! encoding of the args (never the args themselves). Values are encoded with the client's
//! [`Codec`] for byte stores (the memory store keeps the `Arc`s); an entry that does not decode
//! (another schema version, codec or type; corrupt bytes) is a miss, counted and reported with
//! [`Event::EntryUndecodable`], never a panic.
//!
//! ## Metrics
//!
//! Reported through the [`metrics`](https://docs.rs/metrics) facade, all labelled with `job`.
//! Handles are registered when a job is registered with a client, so install your recorder
//! before creating job handles.
//!
//! | metric | kind | labels | meaning |
//! |---|---|---|---|
//! | `cacheback_reads_total` | counter | `status` = `hit`, `stale`, `stale_refetched`, `miss`, `miss_fetched`, `bypassed` | reads by outcome |
//! | `cacheback_coalesced_waiters_total` | counter | | reads that shared another caller's in-flight fetch |
//! | `cacheback_claims_total` | counter | `outcome` = `won`, `held`, `backing_off` | claim attempts |
//! | `cacheback_refreshes_total` | counter | `outcome` = `ok`, `failed`, `skipped`, `discarded` | refreshes run by workers |
//! | `cacheback_enqueue_dropped_total` | counter | | refresh requests dropped by a full queue |
//! | `cacheback_fallbacks_total` | counter | `mode` = `local`, `sync`, `skip` | refreshes that could not be queued |
//! | `cacheback_dead_letters_total` | counter | `reason` | messages dead-lettered by a worker (`job` = `unknown` when it could not be read) |
//! | `cacheback_decode_errors_total` | counter | | entries that did not decode (read as misses) |
//! | `cacheback_store_errors_total` | counter | `op` | store calls that failed |
//! | `cacheback_fetch_duration_seconds` | histogram | | duration of every fetch |
//! | `cacheback_queue_lag_seconds` | histogram | | enqueue-to-start delay of refreshes |
//! | `cacheback_served_age_seconds` | histogram | | age of values served stale |
//!
//! Metrics stay in each process. For counts of the whole fleet in one place (what the
//! `cacheback top` and `cacheback dashboard` commands of the `cacheback-cli` crate show), build
//! the clients with [`CachebackBuilder::fleet_stats`] and run a
//! `fleet_stats::StatsPublisher` in each process (feature `redis`): every few seconds it adds
//! what the process counted to Redis, and a `fleet_stats::FleetStatsReader` reads the sum.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
pub mod clock;
mod codec;
mod engine;
mod entry;
mod error;
mod job;
mod key;
mod observe;
mod policy;
pub mod queue;
#[cfg(feature = "redis")]
mod redis_support;
pub mod store;
mod tags;
mod tally;
pub mod worker;

#[cfg(feature = "redis")]
pub mod fleet_stats;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "http")]
pub mod http;

#[doc(hidden)]
pub mod __private;

/// Decoders of outside bytes, for the fuzz targets only. Not public API.
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::entry::{EnvelopeError, decode_envelope, encode_envelope};
}

pub use client::global::{global, set_global};
pub use client::{
    Cacheback, CachebackBuilder, JobHandle, Lookup, Peek, QueueFallback, ShutdownReport, Status,
    StoreFallback, WarmProgress, WarmReport,
};
pub use codec::Codec;
pub use engine::near::NearCache;
pub use error::{BoxError, Error, Result};
pub use job::{FnJob, Job, job_fn};
pub use observe::Event;
pub use policy::Lifespan;
pub use policy::{Backoff, Freshness, Policy};
#[cfg(feature = "amqp")]
pub use queue::amqp::AmqpQueue;
pub use queue::local::LocalQueue;
#[cfg(feature = "nats")]
pub use queue::nats::NatsQueue;
#[cfg(feature = "redis")]
pub use queue::redis::RedisQueue;
#[cfg(feature = "memcached")]
pub use store::memcached::MemcachedStore;
pub use store::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use store::redis::RedisStore;
pub use tags::{MAX_TAG_LEN, MAX_TAGS_PER_ENTRY, Tags};
pub use worker::{Worker, WorkerOptions};

#[cfg(feature = "macros")]
pub use cacheback_macros::cacheback;

#[cfg(all(
    doctest,
    feature = "redis",
    feature = "macros",
    feature = "http",
    feature = "axum"
))]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
