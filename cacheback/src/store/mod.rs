//! Stores: where entries and claims live.
//!
//! A [`Store`] holds one [`Entry`] per key plus a small per-key *claim record*: who is refreshing
//! the key right now, and how often its refreshes have failed. It is deliberately small so that
//! it fits a plain in-process map, Redis (with or without scripting, Cluster included), and
//! memcached (`add` for claims, `cas` for conditional writes).
//!
//! | store | feature | holds |
//! |---|---|---|
//! | [`MemoryStore`](crate::MemoryStore) | — | live `Arc` values, claims in a process-local map |
//! | `RedisStore` | `redis` | envelopes, claims and failure state in Redis, shared by a fleet |
//! | `MemcachedStore` | `memcached` | envelopes in memcached, claims and failure state in one compare-and-swapped item per key, shared by a fleet (lost on eviction or restart) |

use std::any::Any;
use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::Result;

#[cfg(feature = "memcached")]
pub(crate) mod memcached;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(any(feature = "redis", feature = "memcached"))]
mod same_key;

#[cfg(feature = "memcached")]
pub use self::memcached::MemcachedStoreBuilder;
#[cfg(feature = "redis")]
pub use self::redis::RedisStoreBuilder;
pub use crate::entry::{Entry, EntryMeta, Payload};
pub use crate::key::Key;
pub use crate::tags::{EntryTags, TagAction, TagState};
pub use memory::MemoryStoreBuilder;

/// When a [`Store::put`] may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutCondition {
    /// Always write (a user's `set`, `refresh` or `delete`).
    Always,
    /// Write only if the key's current generation is exactly this one (a refresh enqueued when
    /// the key was at this generation). A missing key has generation 0.
    IfGeneration(u64),
}

/// What a [`Store::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutOutcome {
    /// The entry was written with this generation.
    Written {
        /// The new generation: the previous one plus one.
        generation: u64,
    },
    /// The condition did not hold; nothing was written.
    Discarded {
        /// The key's generation at the time (0 if missing).
        current: u64,
    },
}

/// A write: the entry, when it may be written, and how long the store must keep it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Put {
    /// The entry. Its `meta.generation` is ignored: the store assigns it.
    pub entry: Entry,
    /// When the write may happen.
    pub condition: PutCondition,
    /// How long the store must keep the entry (it may drop it afterwards). Computed by the
    /// caller from its own clock, so stores need no clock.
    pub ttl: Duration,
}

impl Put {
    /// A write of `entry` under `condition`, kept for `ttl`.
    pub fn new(entry: Entry, condition: PutCondition, ttl: Duration) -> Self {
        Put {
            entry,
            condition,
            ttl,
        }
    }
}

/// The token that proves ownership of a claim. It travels with the refresh request so that
/// whichever worker runs the refresh can release the claim, and only that claim.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClaimToken(u128);

impl ClaimToken {
    /// A fresh random token.
    pub fn random() -> Self {
        ClaimToken(fastrand::u128(..))
    }

    /// A token from its raw value (for backends that store it).
    pub fn from_u128(raw: u128) -> Self {
        ClaimToken(raw)
    }

    /// The raw value.
    pub fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Debug for ClaimToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClaimToken({:032x})", self.0)
    }
}

impl fmt::Display for ClaimToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// What a [`Store::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimOutcome {
    /// The caller owns the claim until `now + ttl` and must enqueue the refresh.
    Won {
        /// Proof of ownership.
        token: ClaimToken,
        /// Consecutive failed refreshes of the key so far.
        failures: u32,
    },
    /// Someone else's claim is live: a refresh is already on its way.
    Held {
        /// When that claim expires.
        until: Timestamp,
    },
    /// The last refresh failed and the backoff has not elapsed.
    BackingOff {
        /// When readers may trigger again.
        retry_after: Timestamp,
        /// Consecutive failed refreshes so far.
        failures: u32,
    },
}

/// How a claim is let go of, in [`Store::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Release {
    /// The refresh succeeded: clear the failure state.
    Refreshed,
    /// The refresh failed: record it. Readers will not claim before `retry_after`; the store
    /// remembers the count until `forget_at`.
    Failed {
        /// The new count of consecutive failures.
        failures: u32,
        /// Readers do not trigger again before this.
        retry_after: Timestamp,
        /// After this, the failure state may be forgotten.
        forget_at: Timestamp,
    },
    /// The refresh did not run (queue full, skipped, shut down): drop the claim, keep any
    /// failure state, so the next reader triggers again.
    Abandoned,
}

/// The claim record of one key, for inspection ([`Store::claim_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ClaimState {
    /// The live claim, if any: its token and expiry.
    pub claim: Option<(ClaimToken, Timestamp)>,
    /// Consecutive failed refreshes.
    pub failures: u32,
    /// Readers do not trigger before this, if set and in the future.
    pub retry_after: Option<Timestamp>,
}

/// A change to the entries under a prefix, announced by stores that can (see
/// [`Store::watch`]); what keeps a client's near cache coherent with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// The subscription is live: every change from now on is announced. Changes made before
    /// it (while it was being set up, or while it was lost) were not.
    Watching,
    /// The entry of the key with this digest ([`Key::digest`]) was written (a value, an
    /// invalidation or a delete): copies of an older generation are out of date.
    Written {
        /// The key's digest.
        digest: u128,
        /// The generation the write gave the entry.
        generation: u64,
        /// Whether the write was a delete (a tombstone): an older copy must not even stand in
        /// for the store while it is unreachable.
        deleted: bool,
    },
    /// The subscription was lost: changes may go unannounced until the next
    /// [`Watching`](Change::Watching).
    Lost,
    /// A tag was invalidated or deleted ([`Store::bump_tag`]).
    Tagged {
        /// The tag's digest (xxh3-128 of its bytes).
        tag: u128,
        /// Its state after the change.
        state: TagState,
    },
}

/// The tag clock of a prefix and the states of some of its tags, as
/// [`Store::tag_states`] reads them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TagStates {
    /// The tag clock: bumped by every invalidation or deletion of a tag under the prefix.
    pub clock: u64,
    /// The states of the tags asked for, in the order asked.
    pub states: Vec<TagState>,
}

impl TagStates {
    /// The clock and states read.
    pub fn new(clock: u64, states: Vec<TagState>) -> Self {
        TagStates { clock, states }
    }
}

/// The changes a store announces, as [`Store::watch`] returns them.
pub type Changes = futures_util::stream::BoxStream<'static, Change>;

/// Where entries and claims live.
///
/// Implementations are shared by every reader and worker of a process (and, for remote stores,
/// of a fleet), so every operation must be atomic per key as described on each method. A missing
/// key is `Ok(None)`, never an error; errors mean the store could not answer (and must be
/// returned promptly: remote stores bound every call with a timeout).
///
/// All times are passed in by the caller, so a store needs no clock of its own and tests can
/// use [`TestClock`](crate::clock::TestClock).
///
/// Every implementation is treated alike, with one exception a client finds out by itself
/// (hence the [`Any`] bound, which every `'static` type meets): the in-process
/// [`MemoryStore`](crate::MemoryStore) is read and claimed without awaiting, and holds live
/// values rather than encoded bytes. A store that wraps a `MemoryStore` is a store like any
/// other: it gets encoded values and every call is awaited.
pub trait Store: Any + Send + Sync + fmt::Debug {
    /// A short name for errors and metrics (`"memory"`, `"redis"`).
    fn backend(&self) -> &'static str;

    /// Checks that the store answers (one round trip for a remote store), for readiness
    /// probes and start-up checks; the error says why not (unreachable, credentials refused,
    /// ...). The default, for in-process stores, always answers.
    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(futures_util::future::ready(Ok(())))
    }

    /// Subscribes to the changes of entries whose keys have `prefix`, when the store announces
    /// them (every writer of the store publishes each write with its new generation), for a
    /// client's near cache. The stream starts with [`Change::Watching`] once the subscription
    /// is live, says [`Change::Lost`] when it is lost and `Watching` again when it is back,
    /// and ends only when dropped. `None` (the default): this store announces nothing, and a
    /// client refuses to put a near cache in front of it. Called inside a Tokio runtime.
    fn watch(&self, prefix: &str) -> Option<Changes> {
        let _ = prefix;
        None
    }

    /// Reads the entry of `key` (tombstones included), or `None`.
    fn get<'a>(&'a self, key: Key<'a>) -> BoxFuture<'a, Result<Option<Entry>>>;

    /// Reads the entries of several keys (tombstones included), in the order given: what
    /// [`get`](Store::get) of each returns (an error if any read fails). Backends that can
    /// read many keys in one round trip (a Redis `MGET`) override this; the default reads
    /// them concurrently.
    fn get_many<'a>(&'a self, keys: &'a [Key<'a>]) -> BoxFuture<'a, Result<Vec<Option<Entry>>>> {
        Box::pin(async move {
            let reads = futures_util::future::join_all(keys.iter().map(|&key| self.get(key)));
            reads.await.into_iter().collect()
        })
    }

    /// Writes an entry, atomically checking [`PutCondition`] and assigning the next generation
    /// (current + 1, where a missing key is at 0).
    fn put<'a>(&'a self, key: Key<'a>, put: Put) -> BoxFuture<'a, Result<PutOutcome>>;

    /// Tries to take the refresh claim of `key` at `now` for `ttl`. Atomic: of concurrent
    /// callers (in every process sharing the store) at most one wins while a claim is live.
    /// Returns [`ClaimOutcome::BackingOff`] while a recorded failure's `retry_after` is after
    /// `now`. An expired claim counts as no claim.
    fn claim<'a>(
        &'a self,
        key: Key<'a>,
        now: Timestamp,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<ClaimOutcome>>;

    /// A write that asks for the key's refresh claim once it is written: [`put`](Store::put),
    /// then, only if the entry was written, [`claim`](Store::claim) at `now` for `ttl`.
    /// Returns the write's outcome and, when it was written, the claim's. Backends that can
    /// do both in one round trip (a Redis script) override this; the default makes the two
    /// calls. An error of the claim after a write leaves the entry written.
    fn put_and_claim<'a>(
        &'a self,
        key: Key<'a>,
        put: Put,
        now: Timestamp,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(PutOutcome, Option<ClaimOutcome>)>> {
        Box::pin(async move {
            let outcome = self.put(key, put).await?;
            let claim = match outcome {
                PutOutcome::Written { .. } => Some(self.claim(key, now, ttl).await?),
                PutOutcome::Discarded { .. } => None,
            };
            Ok((outcome, claim))
        })
    }

    /// Tries to take the refresh claims of several keys at `now` for `ttl`: what
    /// [`claim`](Store::claim) of each returns, in the order given, each key decided as if
    /// claimed alone (one failed key does not fail the others). Backends that can take many
    /// claims in one round trip (a Redis script) override this; the default makes the calls
    /// concurrently.
    fn claim_many<'a>(
        &'a self,
        keys: &'a [Key<'a>],
        now: Timestamp,
        ttl: Duration,
    ) -> BoxFuture<'a, Vec<Result<ClaimOutcome>>> {
        Box::pin(futures_util::future::join_all(
            keys.iter().map(move |&key| self.claim(key, now, ttl)),
        ))
    }

    /// Lets go of a claim, if `token` still owns it (a claim that expired and was re-taken by
    /// someone else is left alone), and records the refresh's outcome. The failure state is
    /// recorded even when the claim is no longer owned.
    fn release<'a>(
        &'a self,
        key: Key<'a>,
        token: ClaimToken,
        release: Release,
    ) -> BoxFuture<'a, Result<()>>;

    /// A refresh's write and the release of its claim: [`put`](Store::put), then — whether
    /// the write happened or was discarded (the fetch itself succeeded) —
    /// [`release`](Store::release) with [`Release::Refreshed`]. Backends that can do both in
    /// one round trip (a Redis script) override this; the default makes the two calls. On an
    /// error the claim may or may not have been released.
    fn put_and_release<'a>(
        &'a self,
        key: Key<'a>,
        put: Put,
        token: ClaimToken,
    ) -> BoxFuture<'a, Result<PutOutcome>> {
        Box::pin(async move {
            let outcome = self.put(key, put).await?;
            self.release(key, token, Release::Refreshed).await?;
            Ok(outcome)
        })
    }

    /// The claim record of `key` at `now`, without side effects.
    fn claim_state<'a>(&'a self, key: Key<'a>, now: Timestamp)
    -> BoxFuture<'a, Result<ClaimState>>;

    /// Reads the tag clock of `prefix` and the states of `tags` under it (a tag never
    /// invalidated reads as `TagState::default()`), in one round trip where the store can.
    /// The default, for stores without tags, reads a clock of 0 and no invalidations: tagged
    /// entries then always read as their windows say.
    fn tag_states<'a>(
        &'a self,
        prefix: &'a str,
        tags: &'a [&'a str],
    ) -> BoxFuture<'a, Result<TagStates>> {
        let _ = prefix;
        let states = vec![TagState::default(); tags.len()];
        Box::pin(futures_util::future::ready(Ok(TagStates::new(0, states))))
    }

    /// Invalidates (or deletes) every entry carrying `tag` under `prefix`, in constant work:
    /// atomically bumps the prefix's tag clock and records the new value as the tag's
    /// `invalidated` (and, for [`TagAction::Delete`], `deleted`) clock value, announcing it
    /// ([`Change::Tagged`]) where the store announces changes. Returns the tag's new state.
    /// The default refuses: the store does not keep tags.
    fn bump_tag<'a>(
        &'a self,
        prefix: &'a str,
        tag: &'a str,
        action: TagAction,
    ) -> BoxFuture<'a, Result<TagState>> {
        let _ = (prefix, tag, action);
        let backend = self.backend();
        Box::pin(futures_util::future::ready(Err(crate::Error::store(
            backend,
            format!("the {backend} store does not support tags"),
        ))))
    }
}
