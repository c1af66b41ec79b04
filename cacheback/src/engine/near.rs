//! The near cache: copies of entries read from a remote store, kept in this process and
//! dropped when the store announces that their key was written.
//!
//! A copy is served only while all of these hold: the subscription to the store's
//! announcements is live and has been since the copy was taken (every loss bumps the
//! *epoch*), no announcement of a newer generation of its key arrived, and its near TTL has
//! not passed on the client's clock. A copy read from the store is kept only if no
//! announcement for its shard of keys arrived while it was being read (the *ticket*), so a
//! read that raced a write cannot keep the older value.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::clock::Timestamp;
use crate::entry::{Entry, EntryMeta, Payload};
use crate::error::{Error, Result};
use crate::store::Change;
use crate::store::memory::{DigestHasher, ENTRY_OVERHEAD_BYTES};
use crate::tags::EntryTags;

/// How many shards of keys the tickets track (a power of two).
const SHARDS: usize = 1024;

/// A near cache in front of a remote store: see
/// [`CachebackBuilder::near_cache`](crate::CachebackBuilder::near_cache).
///
/// ```
/// use cacheback::NearCache;
/// use std::time::Duration;
///
/// let near = NearCache::new().max_entries(50_000).ttl(Duration::from_secs(5));
/// # let _ = near;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct NearCache {
    max_entries: u64,
    max_bytes: Option<u64>,
    ttl: Duration,
}

impl Default for NearCache {
    fn default() -> Self {
        NearCache {
            max_entries: 10_000,
            max_bytes: None,
            ttl: Duration::from_secs(10),
        }
    }
}

impl NearCache {
    /// A near cache of up to 10,000 copies, each served for at most 10 seconds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bounds the near cache to this many copies (default 10,000). Replaces a byte bound.
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self.max_bytes = None;
        self
    }

    /// Bounds the near cache by the copies' encoded sizes plus a fixed overhead per copy.
    /// Replaces an entry-count bound.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = Some(n);
        self
    }

    /// How long a copy is served after it was taken, at most (default 10 s): the bound on
    /// serving an overwritten value if an announcement is ever lost without the loss being
    /// noticed. Copies are also never served past their entry's own windows.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.ttl.is_zero() {
            return Err(Error::config(
                "the near cache's ttl must be greater than zero",
            ));
        }
        if self.max_entries == 0 || self.max_bytes == Some(0) {
            return Err(Error::config("the near cache must hold at least one entry"));
        }
        Ok(())
    }
}

/// One copy: the entry's metadata and its decoded value.
#[derive(Clone)]
struct Copy {
    meta: EntryMeta,
    value: Arc<dyn Any + Send + Sync>,
    /// The entry's tags: a read judges the copy by them as it would the entry.
    tags: Option<Arc<EntryTags>>,
    /// The epoch it was taken in.
    epoch: u64,
    /// Served until then (client clock).
    until: Timestamp,
    /// A newer value was written: never served, except while the store cannot be read (then
    /// as a Stale value).
    superseded: bool,
}

#[derive(Clone, Copy)]
struct CopyWeighter {
    by_bytes: bool,
}

impl Weighter<u128, Copy> for CopyWeighter {
    fn weight(&self, _: &u128, copy: &Copy) -> u64 {
        if self.by_bytes {
            u64::from(copy.meta.size) + ENTRY_OVERHEAD_BYTES
        } else {
            1
        }
    }
}

/// What a read from the store must still match to keep its copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    epoch: u64,
    seq: u64,
}

/// The near tier of one client.
pub(crate) struct NearTier {
    copies: Cache<u128, Copy, CopyWeighter, DigestHasher>,
    ttl: Duration,
    /// Whether the subscription is live.
    live: AtomicBool,
    /// Bumped when the subscription is lost and when it is back.
    epoch: AtomicU64,
    /// Bumped by every change to a key of the shard.
    seqs: Box<[AtomicU64]>,
}

impl fmt::Debug for NearTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NearTier")
            .field("copies", &self.copies.len())
            .field("ttl", &self.ttl)
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl NearTier {
    pub(crate) fn new(config: &NearCache) -> Self {
        let (items, weight, by_bytes) = match config.max_bytes {
            Some(bytes) => (bytes / (ENTRY_OVERHEAD_BYTES + 128), bytes, true),
            None => (config.max_entries, config.max_entries, false),
        };
        NearTier {
            copies: Cache::with(
                usize::try_from(items.max(1)).unwrap_or(usize::MAX),
                weight.max(1),
                CopyWeighter { by_bytes },
                DigestHasher::default(),
                Default::default(),
            ),
            ttl: config.ttl,
            live: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            seqs: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn seq(&self, digest: u128) -> &AtomicU64 {
        &self.seqs[(digest as usize) & (SHARDS - 1)]
    }

    /// The copy of `digest`, if it may be served at `now`.
    #[inline]
    pub(crate) fn get(&self, digest: u128, now: Timestamp) -> Option<Entry> {
        let copy = self.copies.get(&digest)?;
        let current = self.live.load(Ordering::Acquire)
            && copy.epoch == self.epoch.load(Ordering::Acquire)
            && !copy.superseded;
        (current && now < copy.until)
            .then(|| Entry::new(copy.meta, Payload::live(copy.value)).with_tags(copy.tags))
    }

    /// The copy of `digest` whatever its age, for a read while the store cannot be reached
    /// (one a newer write superseded reads as Stale).
    pub(crate) fn get_any(&self, digest: u128) -> Option<Entry> {
        let copy = self.copies.get(&digest)?;
        Some(Entry::new(copy.meta, Payload::live(copy.value)).with_tags(copy.tags))
    }

    /// What a read of `digest` from the store must still match for its copy to be kept;
    /// `None` while the subscription is not live (nothing is kept then).
    pub(crate) fn ticket(&self, digest: u128) -> Option<Ticket> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let seq = self.seq(digest).load(Ordering::SeqCst);
        self.live
            .load(Ordering::SeqCst)
            .then_some(Ticket { epoch, seq })
    }

    /// Keeps a copy of what a read from the store found, unless a change to its shard (or a
    /// loss of the subscription) came in since the read's `ticket` was taken.
    pub(crate) fn keep(
        &self,
        ticket: Ticket,
        digest: u128,
        meta: EntryMeta,
        value: Arc<dyn Any + Send + Sync>,
        tags: Option<Arc<EntryTags>>,
        now: Timestamp,
    ) {
        let unchanged = || {
            self.epoch.load(Ordering::SeqCst) == ticket.epoch
                && self.seq(digest).load(Ordering::SeqCst) == ticket.seq
        };
        if !unchanged() {
            return;
        }
        let generation = meta.generation;
        let copy = Copy {
            meta,
            value,
            tags,
            epoch: ticket.epoch,
            until: now.saturating_add(self.ttl),
            superseded: false,
        };
        self.copies.insert(digest, copy);
        // A change applied between the check above and the insert bumped the shard first and
        // removed the copy before it existed: take the copy back out.
        if !unchanged() {
            self.copies
                .remove_if(&digest, |c| c.meta.generation == generation);
        }
    }

    /// Drops the copy of `digest` (this process wrote the key).
    pub(crate) fn forget(&self, digest: u128) {
        self.seq(digest).fetch_add(1, Ordering::SeqCst);
        self.copies.remove(&digest);
    }

    /// Applies an announced change.
    pub(crate) fn apply(&self, change: Change) {
        match change {
            Change::Written {
                digest,
                generation,
                deleted,
            } => {
                self.seq(digest).fetch_add(1, Ordering::SeqCst);
                if deleted {
                    self.copies
                        .remove_if(&digest, |c| c.meta.generation < generation);
                } else {
                    self.supersede(digest, generation);
                }
            }
            Change::Lost => {
                self.live.store(false, Ordering::SeqCst);
                self.epoch.fetch_add(1, Ordering::SeqCst);
            }
            Change::Watching => {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                self.live.store(true, Ordering::SeqCst);
            }
            // Copies are judged by their tags when read (the client's tag table applies it).
            Change::Tagged { .. } => {}
        }
    }

    /// Keeps an older copy of `digest` only to stand in while the store cannot be read, as a
    /// Stale value (a newer one was written).
    fn supersede(&self, digest: u128, generation: u64) {
        let Some(mut copy) = self.copies.peek(&digest) else {
            return;
        };
        if copy.meta.generation >= generation || copy.superseded {
            return;
        }
        copy.superseded = true;
        copy.meta.fresh_until = copy.meta.fresh_until.min(copy.meta.fetched_at);
        self.copies.insert(digest, copy);
    }

    /// Whether the subscription is live.
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// How many copies are held (served or not).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.copies.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(generation: u64) -> EntryMeta {
        let mut m = EntryMeta::new(
            T0,
            T0.saturating_add(Duration::from_secs(60)),
            T0.saturating_add(Duration::from_secs(120)),
        );
        m.generation = generation;
        m
    }

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    fn value() -> Arc<dyn Any + Send + Sync> {
        Arc::new(1u8)
    }

    fn written(digest: u128, generation: u64, deleted: bool) -> Change {
        Change::Written {
            digest,
            generation,
            deleted,
        }
    }

    fn live() -> NearTier {
        let near = NearTier::new(&NearCache::new().ttl(Duration::from_secs(5)));
        near.apply(Change::Watching);
        near
    }

    #[test]
    fn nothing_is_kept_or_served_before_the_subscription_is_live() {
        let near = NearTier::new(&NearCache::new());
        assert!(near.ticket(1).is_none());
        near.apply(Change::Watching);
        let ticket = near.ticket(1).unwrap();
        near.keep(ticket, 1, meta(3), value(), None, T0);
        assert_eq!(near.get(1, T0).unwrap().meta.generation, 3);
    }

    #[test]
    fn copies_expire_after_the_near_ttl() {
        let near = live();
        near.keep(near.ticket(1).unwrap(), 1, meta(3), value(), None, T0);
        assert!(
            near.get(1, T0.saturating_add(Duration::from_millis(4_999)))
                .is_some()
        );
        assert!(
            near.get(1, T0.saturating_add(Duration::from_secs(5)))
                .is_none()
        );
        assert!(near.get_any(1).is_some(), "kept for outages");
    }

    #[test]
    fn announcements_drop_older_copies_only() {
        let near = live();
        near.keep(near.ticket(1).unwrap(), 1, meta(3), value(), None, T0);
        near.apply(written(1, 3, false));
        assert!(
            near.get(1, T0).is_some(),
            "a copy as new as the write stays"
        );
        near.apply(written(1, 4, false));
        assert!(near.get(1, T0).is_none());
        let stand_in = near.get_any(1).expect("kept to stand in for the store");
        assert!(stand_in.meta.fresh_until <= T0, "as a Stale value");
        near.apply(written(1, 5, true));
        assert_eq!(near.len(), 0, "a delete leaves nothing to stand in");
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_kept() {
        let near = live();
        let ticket = near.ticket(1).unwrap();
        near.apply(written(1, 4, false));
        near.keep(ticket, 1, meta(3), value(), None, T0);
        assert!(near.get(1, T0).is_none());
        let ticket = near.ticket(1).unwrap();
        near.forget(1);
        near.keep(ticket, 1, meta(4), value(), None, T0);
        assert!(
            near.get(1, T0).is_none(),
            "a local write also invalidates the ticket"
        );
    }

    #[test]
    fn a_lost_subscription_stops_serving_until_it_is_back() {
        let near = live();
        near.keep(near.ticket(1).unwrap(), 1, meta(3), value(), None, T0);
        let ticket = near.ticket(2).unwrap();
        near.apply(Change::Lost);
        assert!(near.get(1, T0).is_none());
        assert!(near.ticket(1).is_none());
        near.keep(ticket, 2, meta(1), value(), None, T0);
        near.apply(Change::Watching);
        assert!(
            near.get(1, T0).is_none(),
            "copies from before the loss are not served"
        );
        assert!(near.get(2, T0).is_none(), "nor a read that straddled it");
        assert!(near.get_any(1).is_some());
    }
}
