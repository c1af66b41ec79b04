//! The engine shared by the read path ([`client`](crate::client)) and the refresh path
//! ([`worker`](crate::worker)): the state both work on ([`Core`]), the job registry, and what
//! both do to a key: run a fetch, encode and decode values, refresh a claimed key, back off
//! failing fetches. Nothing here knows about clients or workers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::clock::{Clock, Timestamp};
use crate::codec::Codec;
use crate::error::Result;
use crate::key::Key;
use crate::observe::{Event, EventHook};
use crate::queue::Queue;
use crate::store::memory::MemoryStore;
use crate::store::{ClaimOutcome, ClaimToken, Put, PutOutcome, Store};

pub(crate) mod backoff;
pub(crate) mod fetch;
pub(crate) mod near;
pub(crate) mod refresh;
pub(crate) mod registry;
mod running;
pub(crate) mod tags;
pub(crate) mod value;

pub(crate) use backoff::RecentFailures;
pub(crate) use running::Running;

use registry::Registry;

/// Shared state of a client and of the workers built from it.
pub(crate) struct Core {
    pub(crate) store: Arc<dyn Store>,
    /// The same store when it is the in-process [`MemoryStore`]: read and claimed without
    /// awaiting, and given live values instead of bytes.
    pub(crate) memory: Option<MemoryStore>,
    /// Copies of entries of a remote store, when the client has a near cache.
    pub(crate) near: Option<Arc<near::NearTier>>,
    pub(crate) queue: Arc<dyn Queue>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Whether `clock` is the [`SystemClock`](crate::clock::SystemClock): the read path then
    /// asks the system directly instead of through the trait object.
    pub(crate) system_clock: bool,
    pub(crate) prefix: Arc<str>,
    pub(crate) codec: Codec,
    pub(crate) events: Option<EventHook>,
    pub(crate) max_value_bytes: usize,
    pub(crate) tombstone_ttl: Duration,
    /// Whether jobs keep a [`Tally`](crate::tally::Tally) of their reads and refreshes.
    pub(crate) fleet_stats: bool,
    pub(crate) registry: Registry,
    /// Keys being refreshed in this process: one refresh of a key at a time.
    pub(crate) running: Running,
    /// Failures of synchronous fetches this process saw, for their backoff.
    pub(crate) recent_failures: RecentFailures,
    /// Every background task of the client (coalesced fetches, local fallback refreshes).
    pub(crate) tasks: TaskTracker,
    /// The tag states this process knows (for a remote store).
    pub(crate) tags: Arc<tags::TagTable>,
}

/// The in-process store behind `store`, if that is what it is.
pub(crate) fn in_process_store(store: &Arc<dyn Store>) -> Option<MemoryStore> {
    let any: &dyn std::any::Any = &**store;
    any.downcast_ref::<MemoryStore>().cloned()
}

impl Core {
    /// The client's time: [`Timestamp::now`](crate::clock::Timestamp::now) with the system
    /// clock (no dynamic call on the read path), else the configured clock's.
    #[inline]
    pub(crate) fn now(&self) -> crate::clock::Timestamp {
        if self.system_clock {
            crate::clock::Timestamp::now()
        } else {
            self.clock.now()
        }
    }

    /// Writes through the store and drops this process's near copy of the key, so that this
    /// process reads its own writes (other processes drop theirs when the store announces the
    /// write).
    pub(crate) async fn put(&self, key: Key<'_>, put: Put) -> Result<PutOutcome> {
        let outcome = self.store.put(key, put).await;
        self.forget_near(key.digest());
        outcome
    }

    /// [`Store::put_and_release`], dropping the near copy as [`put`](Self::put) does.
    pub(crate) async fn put_and_release(
        &self,
        key: Key<'_>,
        put: Put,
        token: ClaimToken,
    ) -> Result<PutOutcome> {
        let outcome = self.store.put_and_release(key, put, token).await;
        self.forget_near(key.digest());
        outcome
    }

    /// [`Store::put_and_claim`], dropping the near copy as [`put`](Self::put) does.
    pub(crate) async fn put_and_claim(
        &self,
        key: Key<'_>,
        put: Put,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<(PutOutcome, Option<ClaimOutcome>)> {
        let outcome = self.store.put_and_claim(key, put, now, ttl).await;
        self.forget_near(key.digest());
        outcome
    }

    fn forget_near(&self, digest: u128) {
        if let Some(near) = &self.near {
            near.forget(digest);
        }
    }

    /// Calls the events hook, building the event only when there is one.
    pub(crate) fn emit(&self, event: impl FnOnce() -> Event) {
        if let Some(hook) = &self.events {
            hook(&event());
        }
    }
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("store", &self.store)
            .field("queue", &self.queue)
            .field("prefix", &self.prefix)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}
