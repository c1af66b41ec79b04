//! [`MemoryStore`]: entries in a quick_cache map, claims in a process-local map.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{self, BoxFuture};
use quick_cache::Weighter;
use quick_cache::sync::{Cache, EntryAction, EntryResult};

use crate::clock::Timestamp;
use crate::entry::{Entry, EntryMeta, Payload, Repr};
use crate::error::Result;
use crate::key::Key;
use crate::store::{
    ClaimOutcome, ClaimState, ClaimToken, Put, PutCondition, PutOutcome, Release, Store, TagStates,
};
use crate::tags::{EntryTags, TagAction, TagState, Verdict};

/// Bytes charged per entry on top of its value's encoded size, when bounded by bytes: roughly
/// what the map slot and the entry header take.
pub(crate) const ENTRY_OVERHEAD_BYTES: u64 = 200;

/// An in-process store: the embedded default.
///
/// Values are kept as live `Arc`s: a hit costs one hash-map lookup and one reference-count
/// increment, with no decoding. The map is [quick_cache](https://docs.rs/quick_cache)'s
/// (it measured faster per lookup than moka's on this read path; figures in the repository's `BENCHMARKS.md`), bounded by
/// entry count or by bytes (the values' encoded sizes plus a fixed per-entry overhead), evicting
/// the least useful entries first (CLOCK-Pro).
///
/// Entries are never served past their `stale_until` (the client checks every read), and the
/// store drops them once their TTL has passed: expired entries are purged in passes run every
/// few thousand writes, and are the first to go when the cache is full.
///
/// Claims live in a process-local map, so claims coordinate the readers of one process only:
/// use a shared store (Redis) to coordinate a fleet.
///
/// ```
/// use cacheback::MemoryStore;
///
/// let store = MemoryStore::builder().max_entries(100_000).build();
/// # let _ = store;
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    entries: Cache<u128, MemEntry, EntryWeighter, DigestHasher>,
    claims: RwLock<Claims>,
    /// The store's own monotonic time base for TTLs (store TTLs only reclaim memory; freshness
    /// is the client's, on its `Clock`).
    epoch: Instant,
    /// Writes since the last purge of expired entries.
    writes: AtomicU64,
    /// The tag clocks and tag states, per prefix.
    tags: RwLock<HashMap<String, TagBook>>,
}

/// One prefix's tag clock and the states of its invalidated tags (kept for the store's life:
/// one small record per tag ever invalidated).
#[derive(Default)]
struct TagBook {
    clock: u64,
    states: HashMap<String, TagState>,
}

/// A purge of expired entries runs after this many writes.
const PURGE_EVERY_WRITES: u64 = 4096;

/// What [`MemoryStore::read`] found.
pub(crate) enum MemRead<V> {
    /// A fresh live value of the reader's type, and when it was fetched.
    Fresh {
        value: Arc<V>,
        fetched_at: Timestamp,
    },
    /// Anything else: the entry, if there is one.
    Entry(Option<Entry>),
}

/// The compact in-memory form of an [`Entry`] (kept small: it is most of what an entry costs
/// in memory).
#[derive(Clone)]
struct MemEntry {
    generation: u64,
    fetched_at: Timestamp,
    fresh_until: Timestamp,
    stale_until: Timestamp,
    fetch_ms: u32,
    schema_version: u32,
    size: u32,
    /// Whether `value` is an [`EncodedBlob`] (known without asking the value its type).
    encoded: bool,
    /// Milliseconds after the store's epoch when the entry may be dropped.
    expires_ms: u64,
    /// `None` is a tombstone. Encoded payloads (written through the [`Store`] trait; a client
    /// writes live values) are boxed as an [`EncodedBlob`] object.
    value: Option<Arc<dyn Any + Send + Sync>>,
    tags: Option<Arc<EntryTags>>,
}

struct EncodedBlob {
    codec: u8,
    bytes: Bytes,
}

impl MemEntry {
    fn from_entry(entry: Entry, generation: u64, expires_ms: u64) -> Self {
        let m = entry.meta;
        let tags = entry.tags;
        let (value, encoded) = match entry.payload.0 {
            Repr::Live(v) => (Some(v), false),
            Repr::Encoded { codec, bytes } => (
                Some(Arc::new(EncodedBlob { codec, bytes }) as Arc<dyn Any + Send + Sync>),
                true,
            ),
            Repr::Tombstone => (None, false),
        };
        MemEntry {
            generation,
            fetched_at: m.fetched_at,
            fresh_until: m.fresh_until,
            stale_until: m.stale_until,
            fetch_ms: u32::try_from(m.fetch_duration.as_millis()).unwrap_or(u32::MAX),
            schema_version: m.schema_version,
            size: m.size,
            encoded,
            expires_ms,
            tags: tags.filter(|_| value.is_some()),
            value,
        }
    }

    fn into_entry(self) -> Entry {
        let payload = match self.value {
            None => Payload::tombstone(),
            Some(v) if self.encoded => match v.downcast_ref::<EncodedBlob>() {
                Some(blob) => Payload::encoded(blob.codec, blob.bytes.clone()),
                None => Payload::live(v),
            },
            Some(v) => Payload::live(v),
        };
        Entry::new(
            EntryMeta {
                generation: self.generation,
                fetched_at: self.fetched_at,
                fresh_until: self.fresh_until,
                stale_until: self.stale_until,
                fetch_duration: Duration::from_millis(u64::from(self.fetch_ms)),
                schema_version: self.schema_version,
                size: self.size,
            },
            payload,
        )
        .with_tags(self.tags)
    }
}

/// Keys are already xxh3-128 digests of the args: hashing them again would only cost time, so
/// the map's hash is the digest folded to 64 bits.
#[derive(Clone, Copy, Default)]
pub(crate) struct DigestHasher(u64);

impl std::hash::BuildHasher for DigestHasher {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u128 input, which this map never hashes; stay correct anyway.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u128(&mut self, digest: u128) {
        self.0 ^= (digest as u64) ^ ((digest >> 64) as u64);
    }
}

/// Weighs entries by count, or by encoded size plus overhead when bounded by bytes.
#[derive(Clone, Copy)]
struct EntryWeighter {
    by_bytes: bool,
}

impl Weighter<u128, MemEntry> for EntryWeighter {
    fn weight(&self, _: &u128, entry: &MemEntry) -> u64 {
        if self.by_bytes {
            u64::from(entry.size) + ENTRY_OVERHEAD_BYTES
        } else {
            1
        }
    }
}

/// Claim records with lazy expiry; dead records are swept when the map doubles.
#[derive(Default)]
struct Claims {
    records: HashMap<u128, ClaimRecord, DigestHasher>,
    sweep_at: usize,
}

#[derive(Clone, Copy, Default)]
struct ClaimRecord {
    claim: Option<(ClaimToken, Timestamp)>,
    failures: u32,
    retry_after: Option<Timestamp>,
    forget_at: Option<Timestamp>,
}

impl ClaimRecord {
    /// Why a claim at `now` is refused (a backoff, or a claim still held), if it is; reads the
    /// record as [`expire`](Self::expire) would leave it, without changing it.
    fn refusal(&self, now: Timestamp) -> Option<ClaimOutcome> {
        let forgotten = matches!(self.forget_at, Some(at) if at <= now);
        if let Some(retry_after) = self.retry_after.filter(|&at| at > now && !forgotten) {
            return Some(ClaimOutcome::BackingOff {
                retry_after,
                failures: self.failures,
            });
        }
        match self.claim {
            Some((_, until)) if until > now => Some(ClaimOutcome::Held { until }),
            _ => None,
        }
    }

    /// Drops whatever has expired at `now`; true if nothing is left.
    fn expire(&mut self, now: Timestamp) -> bool {
        if matches!(self.claim, Some((_, until)) if until <= now) {
            self.claim = None;
        }
        if matches!(self.forget_at, Some(at) if at <= now) {
            self.failures = 0;
            self.retry_after = None;
            self.forget_at = None;
        }
        self.claim.is_none() && self.failures == 0 && self.retry_after.is_none()
    }
}

impl Claims {
    fn sweep(&mut self, now: Timestamp) {
        if self.records.len() >= self.sweep_at.max(1024) {
            self.records.retain(|_, r| !r.expire(now));
            self.sweep_at = self.records.len() * 2;
        }
    }
}

/// Builds a [`MemoryStore`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct MemoryStoreBuilder {
    max_entries: Option<u64>,
    max_bytes: Option<u64>,
}

impl MemoryStoreBuilder {
    /// Bounds the store to this many entries (default: 100,000). Replaces a byte bound.
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = Some(n);
        self.max_bytes = None;
        self
    }

    /// Bounds the store by the values' encoded sizes plus a fixed per-entry overhead.
    /// Replaces an entry-count bound.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = Some(n);
        self.max_entries = None;
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        let (items, weight, by_bytes) = match self.max_bytes {
            Some(bytes) => {
                let items = bytes / (ENTRY_OVERHEAD_BYTES + 128);
                (items, bytes, true)
            }
            None => {
                let n = self.max_entries.unwrap_or(100_000);
                (n, n, false)
            }
        };
        let entries = Cache::with(
            usize::try_from(items.max(1)).unwrap_or(usize::MAX),
            weight.max(1),
            EntryWeighter { by_bytes },
            DigestHasher::default(),
            Default::default(),
        );
        MemoryStore {
            inner: Arc::new(Inner {
                entries,
                claims: RwLock::new(Claims::default()),
                epoch: Instant::now(),
                writes: AtomicU64::new(0),
                tags: RwLock::new(HashMap::new()),
            }),
        }
    }
}

impl MemoryStore {
    /// A store bounded to 100,000 entries.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a store.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// The number of entries held (tombstones and not yet purged expired entries included).
    pub fn entry_count(&self) -> u64 {
        self.inner.entries.len() as u64
    }

    /// Drops every entry whose TTL has passed. Runs by itself every few thousand writes; call it
    /// to reclaim memory at once.
    pub fn purge_expired(&self) {
        let now = self.elapsed_ms();
        self.inner.entries.retain(|_, e| e.expires_ms > now);
    }

    fn elapsed_ms(&self) -> u64 {
        crate::clock::duration_millis(self.inner.epoch.elapsed())
    }

    fn claims(&self) -> RwLockWriteGuard<'_, Claims> {
        // A panic while holding this lock cannot leave a record half-written (every update is a
        // plain field assignment), so a poisoned lock is safe to keep using.
        self.inner
            .claims
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The claim records for reading: the readers of a key whose claim is taken (every reader
    /// of a stale key but the first) only read, and do not wait for one another.
    fn claims_read(&self) -> RwLockReadGuard<'_, Claims> {
        self.inner
            .claims
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads an entry without awaiting: what [`Store::get`] does, for the client's hit path.
    #[inline]
    pub(crate) fn get_sync(&self, key: Key<'_>) -> Option<Entry> {
        self.inner
            .entries
            .get(&key.digest())
            .map(MemEntry::into_entry)
    }

    /// Reads an entry for a reader of values of type `V`, without awaiting: the client's hit
    /// path. A live value of type `V` that is fresh at `now`, untagged and of `schema_version`
    /// comes back as itself (with no [`Entry`] built around it) when `fresh_wanted`; anything
    /// else comes back as the entry, for the reader to classify.
    #[inline]
    pub(crate) fn read<V: Any + Send + Sync>(
        &self,
        key: Key<'_>,
        now: Timestamp,
        schema_version: u32,
        fresh_wanted: bool,
    ) -> MemRead<V> {
        let Some(mut entry) = self.inner.entries.get(&key.digest()) else {
            return MemRead::Entry(None);
        };
        let fresh = fresh_wanted
            && now < entry.fresh_until
            && entry.tags.is_none()
            && entry.schema_version == schema_version
            && !entry.encoded;
        if fresh && let Some(value) = entry.value.take() {
            match value.downcast::<V>() {
                Ok(value) => {
                    return MemRead::Fresh {
                        value,
                        fetched_at: entry.fetched_at,
                    };
                }
                // A value of another type: the reader reports it.
                Err(value) => entry.value = Some(value),
            }
        }
        MemRead::Entry(Some(entry.into_entry()))
    }

    fn put_sync(&self, key: Key<'_>, put: Put) -> PutOutcome {
        let Put {
            entry,
            condition,
            ttl,
        } = put;
        let now = self.elapsed_ms();
        let expires_ms = now.saturating_add(crate::clock::duration_millis(ttl));
        let allowed = |current: u64| match condition {
            PutCondition::Always => true,
            PutCondition::IfGeneration(g) => g == current,
        };
        let mut entry = Some(entry);
        // `entry` runs the closure under the shard's write lock: check and write are atomic.
        let result = self.inner.entries.entry(&key.digest(), None, |_, current| {
            // An entry past its TTL keeps its generation until a purge drops it: `get` returns
            // it too (the client, not the store, decides freshness), so readers and writers
            // agree on the generation.
            let generation = current.generation;
            match entry.take() {
                Some(new) if allowed(generation) => {
                    *current = MemEntry::from_entry(new, generation + 1, expires_ms);
                    EntryAction::Retain(PutOutcome::Written {
                        generation: generation + 1,
                    })
                }
                _ => EntryAction::Retain(PutOutcome::Discarded {
                    current: generation,
                }),
            }
        });
        let outcome = match result {
            EntryResult::Retained(outcome) => outcome,
            EntryResult::Vacant(guard) => match entry.take() {
                Some(new) if allowed(0) => {
                    // Fails only if the placeholder was removed meanwhile; the write then lost
                    // a race to a concurrent writer, which is an order the caller cannot tell
                    // apart from this one happening first.
                    let _ = guard.insert(MemEntry::from_entry(new, 1, expires_ms));
                    PutOutcome::Written { generation: 1 }
                }
                _ => PutOutcome::Discarded { current: 0 },
            },
            // Not produced by the actions above (no removal, no timeout given).
            EntryResult::Removed(..) | EntryResult::Replaced(..) | EntryResult::Timeout => {
                PutOutcome::Discarded { current: 0 }
            }
        };
        if self.inner.writes.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY_WRITES
            == PURGE_EVERY_WRITES - 1
        {
            self.purge_expired();
        }
        outcome
    }

    /// The tag clock of `prefix` and the states of `tags`, without awaiting: what
    /// [`Store::tag_states`] does, for the client's hit path.
    fn tag_states_sync<'t>(
        &self,
        prefix: &str,
        tags: impl IntoIterator<Item = &'t str>,
    ) -> TagStates {
        let books = self.inner.tags.read().unwrap_or_else(|p| p.into_inner());
        let Some(book) = books.get(prefix) else {
            let states = tags.into_iter().map(|_| TagState::default()).collect();
            return TagStates::new(0, states);
        };
        let states = tags
            .into_iter()
            .map(|tag| book.states.get(tag).copied().unwrap_or_default())
            .collect();
        TagStates::new(book.clock, states)
    }

    /// What the tags of an entry under `prefix` make of it, without awaiting or allocating:
    /// the client's hit path for tagged entries.
    #[inline]
    pub(crate) fn tag_verdict_sync(&self, prefix: &str, tags: &EntryTags) -> Verdict {
        let books = self.inner.tags.read().unwrap_or_else(|p| p.into_inner());
        let Some(book) = books.get(prefix) else {
            return Verdict::Current;
        };
        tags.verdict(
            tags.names()
                .map(|tag| book.states.get(tag).copied().unwrap_or_default()),
        )
    }

    /// The tag clock of `prefix`, without awaiting.
    pub(crate) fn tag_clock_sync(&self, prefix: &str) -> u64 {
        let books = self.inner.tags.read().unwrap_or_else(|p| p.into_inner());
        books.get(prefix).map_or(0, |book| book.clock)
    }

    fn bump_tag_sync(&self, prefix: &str, tag: &str, action: TagAction) -> TagState {
        let mut books = self.inner.tags.write().unwrap_or_else(|p| p.into_inner());
        let book = books.entry(prefix.to_owned()).or_default();
        book.clock += 1;
        let clock = book.clock;
        let state = book.states.entry(tag.to_owned()).or_default();
        state.invalidated = clock;
        if action == TagAction::Delete {
            state.deleted = clock;
        }
        *state
    }

    /// Takes a claim without awaiting: what [`Store::claim`] does, for the client's stale path.
    pub(crate) fn claim_sync(&self, key: Key<'_>, now: Timestamp, ttl: Duration) -> ClaimOutcome {
        // Most claims of a stale key are refused (its first reader took it): decide those under
        // the shared lock.
        if let Some(refused) = self
            .claims_read()
            .records
            .get(&key.digest())
            .and_then(|record| record.refusal(now))
        {
            return refused;
        }
        let mut claims = self.claims();
        claims.sweep(now);
        let record = claims.records.entry(key.digest()).or_default();
        record.expire(now);
        if let Some(refused) = record.refusal(now) {
            return refused;
        }
        let token = ClaimToken::random();
        record.claim = Some((token, now.saturating_add(ttl)));
        ClaimOutcome::Won {
            token,
            failures: record.failures,
        }
    }

    fn release_sync(&self, key: Key<'_>, token: ClaimToken, release: Release) {
        let mut claims = self.claims();
        let digest = key.digest();
        let Some(record) = claims.records.get_mut(&digest) else {
            if let Release::Failed { .. } = release {
                let mut record = ClaimRecord::default();
                apply_release(&mut record, release);
                claims.records.insert(digest, record);
            }
            return;
        };
        if matches!(record.claim, Some((owner, _)) if owner == token) {
            record.claim = None;
        }
        apply_release(record, release);
        if record.claim.is_none() && record.failures == 0 && record.retry_after.is_none() {
            claims.records.remove(&digest);
        }
    }
}

fn apply_release(record: &mut ClaimRecord, release: Release) {
    match release {
        Release::Refreshed => {
            record.failures = 0;
            record.retry_after = None;
            record.forget_at = None;
        }
        Release::Failed {
            failures,
            retry_after,
            forget_at,
        } => {
            record.failures = failures;
            record.retry_after = Some(retry_after);
            record.forget_at = Some(forget_at);
        }
        Release::Abandoned => {}
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.inner.entries.len())
            .finish_non_exhaustive()
    }
}

impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(&'a self, key: Key<'a>) -> BoxFuture<'a, Result<Option<Entry>>> {
        Box::pin(future::ready(Ok(self.get_sync(key))))
    }

    fn put<'a>(&'a self, key: Key<'a>, put: Put) -> BoxFuture<'a, Result<PutOutcome>> {
        Box::pin(future::ready(Ok(self.put_sync(key, put))))
    }

    fn tag_states<'a>(
        &'a self,
        prefix: &'a str,
        tags: &'a [&'a str],
    ) -> BoxFuture<'a, Result<TagStates>> {
        let states = self.tag_states_sync(prefix, tags.iter().copied());
        Box::pin(future::ready(Ok(states)))
    }

    fn bump_tag<'a>(
        &'a self,
        prefix: &'a str,
        tag: &'a str,
        action: TagAction,
    ) -> BoxFuture<'a, Result<TagState>> {
        Box::pin(future::ready(Ok(self.bump_tag_sync(prefix, tag, action))))
    }

    fn claim<'a>(
        &'a self,
        key: Key<'a>,
        now: Timestamp,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<ClaimOutcome>> {
        Box::pin(future::ready(Ok(self.claim_sync(key, now, ttl))))
    }

    fn release<'a>(
        &'a self,
        key: Key<'a>,
        token: ClaimToken,
        release: Release,
    ) -> BoxFuture<'a, Result<()>> {
        self.release_sync(key, token, release);
        Box::pin(future::ready(Ok(())))
    }

    fn claim_state<'a>(
        &'a self,
        key: Key<'a>,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<ClaimState>> {
        let state = {
            let claims = self.claims_read();
            claims
                .records
                .get(&key.digest())
                .map_or_else(ClaimState::default, |r| {
                    let mut r = *r;
                    r.expire(now);
                    ClaimState {
                        claim: r.claim,
                        failures: r.failures,
                        retry_after: r.retry_after,
                    }
                })
        };
        Box::pin(future::ready(Ok(state)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: u64) -> Entry {
        let t = Timestamp::from_millis(1_000);
        Entry::new(
            EntryMeta::new(t, t, t),
            Payload::live(Arc::new(value) as Arc<dyn Any + Send + Sync>),
        )
    }

    #[test]
    fn expired_entries_are_purged_and_live_ones_kept() {
        let store = MemoryStore::new();
        let put = |digest: u128, ttl: Duration| {
            store.put_sync(
                Key::new("p", "j", digest),
                Put::new(entry(1), PutCondition::Always, ttl),
            )
        };
        put(1, Duration::ZERO);
        put(2, Duration::from_secs(3600));
        assert_eq!(store.entry_count(), 2);
        store.purge_expired();
        assert_eq!(store.entry_count(), 1);
        assert!(store.get_sync(Key::new("p", "j", 1)).is_none());
        assert!(store.get_sync(Key::new("p", "j", 2)).is_some());
    }

    #[test]
    fn bounded_by_entries_evicts() {
        let store = MemoryStore::builder().max_entries(100).build();
        for digest in 0..1_000u128 {
            store.put_sync(
                Key::new("p", "j", digest),
                Put::new(entry(1), PutCondition::Always, Duration::from_secs(60)),
            );
        }
        assert!(store.entry_count() <= 100, "{}", store.entry_count());
    }

    #[test]
    fn bounded_by_bytes_evicts() {
        let store = MemoryStore::builder()
            .max_bytes(10 * ENTRY_OVERHEAD_BYTES)
            .build();
        for digest in 0..1_000u128 {
            store.put_sync(
                Key::new("p", "j", digest),
                Put::new(entry(1), PutCondition::Always, Duration::from_secs(60)),
            );
        }
        assert!(store.entry_count() <= 10, "{}", store.entry_count());
    }
}
