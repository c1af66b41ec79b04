//! What reads and warm-ups answer: [`Status`], [`Lookup`], [`Peek`], [`WarmProgress`],
//! [`WarmReport`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::entry::EntryMeta;
use crate::error::Error;
use crate::policy::Freshness;
use crate::store::ClaimState;

#[cfg(doc)]
use crate::client::JobHandle;
#[cfg(doc)]
use crate::observe::Event;

/// How a read was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// A Fresh value from the store.
    Hit,
    /// A Stale value served at once; a refresh was triggered unless one already runs.
    Stale,
    /// The value was stale beyond `stale_threshold`, so it was fetched synchronously.
    StaleRefetched,
    /// No value; a refresh was triggered ([`JobHandle::get_cached`], or `fetch_on_miss = false`).
    Miss,
    /// No value, so it was fetched synchronously ([`JobHandle::get`], or `fetch_on_miss = true`).
    MissFetched,
    /// The read did not go through the cache: the store is unreachable, or the value is over
    /// the size limit. The value was fetched without the cache (the next read fetches again),
    /// or, for [`JobHandle::get_cached`] with the store unreachable, there is none. An
    /// [`Event::CacheBypassed`] says why.
    Bypassed,
}

impl Status {
    /// A stable lowercase label: `hit`, `stale`, `stale_refetched`, `miss`, `miss_fetched`,
    /// `bypassed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Bypassed => "bypassed",
            Status::Hit => "hit",
            Status::Stale => "stale",
            Status::StaleRefetched => "stale_refetched",
            Status::Miss => "miss",
            Status::MissFetched => "miss_fetched",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer of [`JobHandle::get_with_status`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Lookup<V> {
    /// The value, if there was one to serve.
    pub value: Option<Arc<V>>,
    /// How the read was answered.
    pub status: Status,
    /// How long ago the served value was fetched.
    pub age: Option<Duration>,
    /// Whether this read started a refresh. With the in-process memory store the claim is
    /// decided during the read, and this says this read won it and its request was enqueued
    /// (or the refresh ran), with one exception: with the in-process queue
    /// ([`LocalQueue`](crate::LocalQueue)) a stale read hands its request over right
    /// after it answers (unless the fallback is
    /// [`QueueFallback::SyncRefresh`](crate::QueueFallback::SyncRefresh)), so a full queue,
    /// which lets the claim go for the next read to try again, is not reflected here. With a
    /// remote
    /// store (Redis, memcached, and through a near cache) a read never waits for the claim's
    /// and the enqueue's round trips: they finish in the background, this says the read asked
    /// for the refresh, and the claim decides whether it is enqueued (at most one per stale
    /// event across the fleet either way).
    pub refresh_triggered: bool,
}

/// An entry as [`JobHandle::peek`] sees it, with no side effects.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Peek<V> {
    /// The value, if it decodes.
    pub value: Option<Arc<V>>,
    /// Why the value did not decode, if it did not.
    pub decode_error: Option<String>,
    /// The entry's metadata.
    pub meta: EntryMeta,
    /// The entry's state now.
    pub freshness: Freshness,
    /// The key's claim and failure state.
    pub claim: ClaimState,
    /// The key's text.
    pub key: String,
}

/// Progress of [`JobHandle::refresh_many`], passed to its callback after each key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmProgress {
    /// Keys finished (refreshed or failed).
    pub done: usize,
    /// Keys that failed.
    pub failed: usize,
    /// Total number of keys, when the iterator knew it.
    pub total: Option<usize>,
}

/// The result of [`JobHandle::refresh_many`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WarmReport<A> {
    /// Keys refreshed.
    pub refreshed: usize,
    /// Keys that failed, with their errors (the first 100).
    pub failures: Vec<(A, Error)>,
    /// Total keys that failed (may exceed `failures.len()`).
    pub failed: usize,
}
