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
//! | store | [`MemoryStore`] | `RedisStore`: entries, claims and failure state in Redis (Cluster-ready hash tags) |
//! | queue | [`LocalQueue`] + in-process [`Worker`] | `RedisQueue`: Redis Streams drained by [`Worker`] processes |
//!
//! ## Feature flags
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `macros` | yes | the [`cacheback`](macro@cacheback) attribute for `async fn` |
//! | `testing` | no | [`testing`]: the conformance suites every `Store` and `Queue` must pass |
//! | `json` | no | [`Codec::Json`] |
//! | `redis` | no | `RedisStore` and `RedisQueue` (redis-rs, tokio; `rediss://` TLS with rustls + ring) |
//!
//! ## Semantics
//!
//! Keys are Fresh for [`Policy::lifetime`], then Stale for [`Policy::stale_ttl`] (served at
//! once while one refresh runs), then gone. A per-key claim, held for
//! [`Policy::refresh_timeout`], makes a stale key cause exactly one refresh however many
//! readers see it; a failed refresh keeps the old value and backs off. See `SPEC.md` in the
//! repository for the whole contract.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod clock;
mod codec;
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
mod worker;

#[cfg(feature = "testing")]
pub mod testing;

#[doc(hidden)]
pub mod __private;

pub use client::global::{global, set_global};
pub use client::{
    Cacheback, CachebackBuilder, DEFAULT_MAX_VALUE_BYTES, JobHandle, Lookup, Peek, QueueFallback,
    ShutdownReport, Status, StoreFallback, WarmProgress, WarmReport,
};
pub use clock::{Clock, SystemClock, TestClock, Timestamp};
pub use codec::Codec;
pub use entry::{
    ENVELOPE_HEADER_LEN, Entry, EntryMeta, EnvelopeError, Payload, decode_envelope, encode_envelope,
};
pub use error::{BoxError, Error, Result};
pub use job::{FnJob, Job, job_fn};
pub use key::Key;
pub use observe::Event;
pub use policy::{Backoff, Freshness, Policy, Windows};
pub use queue::{LocalQueue, Queue};
#[cfg(feature = "redis")]
pub use queue::{RedisDeadLetter, RedisQueue, RedisQueueBuilder};
pub use store::{MemoryStore, Store};
#[cfg(feature = "redis")]
pub use store::{RedisStore, RedisStoreBuilder};
pub use worker::{Worker, WorkerBuilder, WorkerHealth, WorkerOptions, WorkerReport};

#[cfg(feature = "macros")]
pub use cacheback_macros::cacheback;

#[cfg(all(doctest, feature = "redis", feature = "macros"))]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
