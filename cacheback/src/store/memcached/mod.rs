//! [`MemcachedStore`]: entries, claims and failure state in memcached, shared by a fleet
//! (feature `memcached`).
//!
//! The files: this one holds the store, its entries and its consistency contract;
//! `builder.rs` the builder and URLs; `claims.rs` claims and failure state over `record.rs`,
//! the control record; `keys.rs` memcached key names; `conn.rs` the connection pool and the
//! commands; `failure.rs` errors in plain words. Readers of one key share commands through
//! `store/same_key.rs`.

mod builder;
mod claims;
mod conn;
mod failure;
mod keys;
mod record;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tracing::debug;

pub use self::builder::MemcachedStoreBuilder;
use self::conn::{Pool, Write};
use self::failure::{BACKEND, Failure};
use self::keys::entry_key;
use self::record::exptime;
use crate::clock::Timestamp;
use crate::entry::{
    ENVELOPE_HEADER_LEN, ENVELOPE_PREFIX, Entry, EntryMeta, GENERATION_OFFSET, Payload,
    decode_envelope, encode_envelope,
};
use crate::error::{Chain, Error, Result};
use crate::key::Key;
use crate::store::same_key::{SameKey, Turn};
use crate::store::{
    ClaimOutcome, ClaimState, ClaimToken, Put, PutCondition, PutOutcome, Release, Store,
};

/// How many times a compare-and-swap loop reads and writes again after losing a race (each
/// loss means another writer's write landed; the command timeout bounds the loop as well).
const MAX_ATTEMPTS: u32 = 64;

/// What memcached adds to a value and its key in an item: a 48-byte item header, the 8-byte
/// CAS value, the key's terminating byte and the value's `\r\n` (59 bytes on 64-bit memcached
/// 1.6), rounded up.
const ITEM_OVERHEAD: usize = 64;

/// A store in memcached, shared by every web process and worker of a fleet.
///
/// # Layout
///
/// For a key whose text is `app:job:0123…` (see [`Key`](crate::store::Key)):
///
/// | memcached key | holds | expiry |
/// |---|---|---|
/// | `app:job:0123…` | the entry envelope (the same bytes as in Redis: a 48-byte header with the windows, the schema version and the generation, then the value) | until `stale_until` + grace |
/// | `app:job:0123…:c` | the control record: `1 <claim> <failure state>`, the claim `<32-hex token>:<until ms>`, the failure state `<failures>:<retry_after ms>:<forget_at ms>`, each `-` when absent | until the claim ends and the failure state may be forgotten, + grace |
///
/// A key text that memcached would refuse (over 250 bytes, or with spaces, control characters
/// or other bytes than printable ASCII: possible only for a [`Key`](crate::store::Key) built by
/// hand) is replaced by `#` and its xxh3-128 digest, followed by as much of the text as fits.
/// Expiry times are whole seconds, rounded up; past memcached's 30-day limit on relative
/// expiry, items are written without one. Times inside records are the callers' (a
/// [`Clock`](crate::clock::Clock)): expiry only reclaims memory, it never decides freshness or
/// claim ownership.
///
/// # Commands
///
/// memcached's meta protocol (memcached 1.6 or later), through a pool of connections:
///
/// - `get`: one `mg` of the entry, and nothing else. Under load, readers of one key share
///   commands: while a read of the key is on its way, further reads of it wait for it to
///   return and then go out together as one `mg` (sent after each of them asked, so none
///   reads an entry older than a write that finished before it began). A hot key's burst
///   costs memcached two commands rather than one per reader.
/// - `put`: `mg` of the entry (its generation and CAS value), then `ms` with the new
///   generation stamped into the envelope, as an `add` when the key is missing and as a
///   compare-and-swap otherwise. A lost race reads again, so the generation check is exact.
/// - `claim` and `release`: `mg` of the control record, then an `add`, a compare-and-swap or a
///   compare-and-delete of it; `release` frees the claim only if the token matches, and keeps
///   or records the failure state whoever holds the claim.
/// - `claim_state`: one `mg` of the control record.
/// - `put_and_release`: `put`, then `release`. memcached runs no scripts, so this is at least
///   four round trips instead of Redis's one; a process that dies between the two leaves the
///   claim to expire at its `until`.
///
/// Bytes at an entry key that are not a valid envelope read as an entry no job can decode (a
/// miss, counted in `cacheback_decode_errors_total`), with the generation their header holds
/// when it is readable, so that the next refresh overwrites them.
///
/// # Consistency
///
/// Each operation is atomic per key as the [`Store`] trait asks: every write is an `add` or a
/// compare-and-swap of a single item, and the claim and the failure state share one item. What
/// memcached does not give is durability:
///
/// - **Eviction.** memcached evicts items when its memory is full, whatever their expiry. An
///   evicted claim lets the next reader enqueue a second refresh of the same stale key (a
///   worker process already refreshing it skips it); an evicted failure state ends a backoff
///   early; an evicted entry is a miss. An evicted tombstone, or a restart of memcached, puts
///   the key's generation back to 0, so a refresh enqueued before a `delete` of a key that had
///   no value can still land. Give cacheback's memcached enough memory (`-m`), or a server of
///   its own, when that matters; `-M` (no eviction) turns a full memcached into write errors
///   instead.
/// - **Restarts.** memcached keeps nothing across a restart: entries, claims and failure
///   state are gone, and reads are misses until refreshes fill the cache again.
///
/// Connects lazily (a process starts even while memcached is down: its reads then follow the
/// client's [`StoreFallback`](crate::StoreFallback)), keeps idle connections for the next
/// calls, opens new ones after a failure, and bounds every call with a timeout.
///
/// ```no_run
/// use cacheback::{Cacheback, MemcachedStore};
/// use std::time::Duration;
///
/// # fn main() -> cacheback::Result<()> {
/// let store = MemcachedStore::builder("memcache://127.0.0.1:11211")
///     .command_timeout(Duration::from_millis(250))
///     .build()?;
/// // Refreshes run in this process; a `RedisQueue` would hand them to worker processes.
/// let cache = Cacheback::builder().prefix("myapp").store(store).build()?;
/// # let _ = cache;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemcachedStore {
    pool: Arc<Pool>,
    reads: Arc<SameKey<Result<Option<Entry>>>>,
    command_timeout: Duration,
    max_item_bytes: usize,
    expiry_grace: Duration,
}

impl fmt::Debug for MemcachedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcachedStore")
            .field("pool", &self.pool)
            .field("command_timeout", &self.command_timeout)
            .field("max_item_bytes", &self.max_item_bytes)
            .field("expiry_grace", &self.expiry_grace)
            .finish()
    }
}

impl MemcachedStore {
    /// A store at `url` with the default options: `memcache://host:port` (or `memcached://`;
    /// the port defaults to 11211). The host is an IPv4 address or a name that resolves to one.
    pub fn from_url(url: &str) -> Result<MemcachedStore> {
        Self::builder(url).build()
    }

    /// Configures a store at `url` (see [`MemcachedStore::from_url`]).
    pub fn builder(url: &str) -> MemcachedStoreBuilder {
        MemcachedStoreBuilder::new(url)
    }

    /// Checks that memcached answers (`version`), for readiness probes.
    pub async fn ping(&self) -> Result<()> {
        self.bounded("ping", async {
            self.pool
                .version()
                .await
                .map(drop)
                .map_err(Failure::into_store)
        })
        .await
    }

    /// Runs one store operation (every round trip of it) within the command timeout.
    async fn bounded<T>(
        &self,
        what: &'static str,
        operation: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let after = self.command_timeout;
        tokio::time::timeout(after, operation)
            .await
            .unwrap_or_else(|_| Err(Failure::Timeout { what, after }.into_store()))
    }

    async fn do_get(&self, key: Key<'_>) -> Result<Option<Entry>> {
        let name = entry_key(key);
        match self.reads.turn(name.as_bytes()) {
            Turn::Wait(reply) => match reply.await {
                Ok(reply) => reply,
                // The key was given up before a command went out for this reader.
                Err(_) => self.read_entry(&name).await,
            },
            Turn::Send => {
                let sending = Sending { store: self, name };
                self.read_entry(&sending.name).await
            }
        }
    }

    /// One `mg` of the entry key `name`, decoded.
    async fn read_entry(&self, name: &str) -> Result<Option<Entry>> {
        let item = self
            .pool
            .get("get", name)
            .await
            .map_err(Failure::into_store)?;
        Ok(item.map(|item| self.decode(name, item.data)))
    }

    /// Sends the next command for the readers of `name` that waited while one was in flight
    /// (from a task of its own, bounded by the command timeout), or frees the key when none
    /// did.
    fn hand_on(&self, name: String) {
        let waiting = self.reads.done(name.as_bytes());
        if waiting.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to send it from (it is going away): the waiters read on their own.
            self.reads.abandon(name.as_bytes());
            return;
        };
        let store = self.clone();
        runtime.spawn(async move {
            let reply = store.bounded("get", store.read_entry(&name)).await;
            store.hand_on(name);
            for waiter in waiting {
                let _ = waiter.send(reply.clone());
            }
        });
    }

    fn decode(&self, name: &str, data: Vec<u8>) -> Entry {
        let generation = generation_of(&data);
        match decode_envelope(Bytes::from(data), self.max_item_bytes) {
            Ok(entry) => entry,
            Err(error) => {
                debug!(key = name, error = %Chain(&error), "entry is not a valid envelope");
                undecodable(generation)
            }
        }
    }

    async fn do_put(&self, key: Key<'_>, put: Put) -> Result<PutOutcome> {
        const WHAT: &str = "put";
        let name = entry_key(key);
        let mut envelope = encode_envelope(&put.entry).ok_or_else(|| {
            Error::store(
                BACKEND,
                "the memcached store holds bytes: it cannot store a live object",
            )
        })?;
        self.check_size(key, &name, envelope.len())?;
        let exptime = exptime(put.ttl.saturating_add(self.expiry_grace));
        for _ in 0..MAX_ATTEMPTS {
            let item = self
                .pool
                .get(WHAT, &name)
                .await
                .map_err(Failure::into_store)?;
            let current = item.as_ref().map_or(0, |i| generation_of(&i.data));
            if let PutCondition::IfGeneration(expected) = put.condition
                && expected != current
            {
                return Ok(PutOutcome::Discarded { current });
            }
            let generation = current.wrapping_add(1);
            stamp_generation(&mut envelope, generation);
            let write = item.map_or(Write::Add, |i| Write::Cas(i.cas));
            let written = self.pool.set(WHAT, &name, &envelope, write, exptime).await;
            if written.map_err(Failure::into_store)? {
                return Ok(PutOutcome::Written { generation });
            }
            // Another write landed in between: read its generation and decide again.
        }
        Err(Failure::Contention {
            what: WHAT,
            attempts: MAX_ATTEMPTS,
        }
        .into_store())
    }

    /// Refuses an envelope whose item would be over memcached's item size limit.
    fn check_size(&self, key: Key<'_>, name: &str, envelope: usize) -> Result<()> {
        let room = self
            .max_item_bytes
            .saturating_sub(ITEM_OVERHEAD + name.len());
        if envelope <= room {
            return Ok(());
        }
        Err(Error::TooLarge {
            job: Arc::from(key.job()),
            size: envelope.saturating_sub(ENVELOPE_HEADER_LEN),
            limit: room.saturating_sub(ENVELOPE_HEADER_LEN),
        })
    }
}

/// The generation in an envelope's header, read the way the Redis store's `put` script reads
/// it: 0 unless the bytes start with the envelope's magic and version and hold a whole header.
fn generation_of(bytes: &[u8]) -> u64 {
    let at = GENERATION_OFFSET..GENERATION_OFFSET + 8;
    match bytes.get(at) {
        Some(g) if bytes.len() >= ENVELOPE_HEADER_LEN && bytes.starts_with(&ENVELOPE_PREFIX) => {
            let mut be = [0u8; 8];
            be.copy_from_slice(g);
            u64::from_be_bytes(be)
        }
        _ => 0,
    }
}

/// Writes `generation` into an encoded envelope (the store assigns it, after encoding).
fn stamp_generation(envelope: &mut [u8], generation: u64) {
    envelope[GENERATION_OFFSET..GENERATION_OFFSET + 8].copy_from_slice(&generation.to_be_bytes());
}

/// The entry for bytes that are not a valid envelope: no job decodes it (codec id 0 is no
/// codec), it is already expired (so `invalidate` leaves it alone), and it has `generation`.
fn undecodable(generation: u64) -> Entry {
    let mut meta = EntryMeta::new(Timestamp::EPOCH, Timestamp::EPOCH, Timestamp::EPOCH);
    meta.generation = generation;
    Entry::new(meta, Payload::encoded(0, Bytes::new()))
}

/// A reader's command for a key in flight; when it is over (or given up), the readers that
/// waited meanwhile get the next one.
struct Sending<'s> {
    store: &'s MemcachedStore,
    name: String,
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.store.hand_on(std::mem::take(&mut self.name));
    }
}

impl Store for MemcachedStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(MemcachedStore::ping(self))
    }

    fn get<'a>(&'a self, key: Key<'a>) -> BoxFuture<'a, Result<Option<Entry>>> {
        Box::pin(self.bounded("get", self.do_get(key)))
    }

    fn put<'a>(&'a self, key: Key<'a>, put: Put) -> BoxFuture<'a, Result<PutOutcome>> {
        Box::pin(self.bounded("put", self.do_put(key, put)))
    }

    fn claim<'a>(
        &'a self,
        key: Key<'a>,
        now: Timestamp,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<ClaimOutcome>> {
        Box::pin(self.bounded("claim", self.do_claim(key, now, ttl)))
    }

    fn release<'a>(
        &'a self,
        key: Key<'a>,
        token: ClaimToken,
        release: Release,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.bounded("release", self.do_release(key, token, release)))
    }

    fn claim_state<'a>(
        &'a self,
        key: Key<'a>,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<ClaimState>> {
        Box::pin(self.bounded("claim_state", self.do_claim_state(key, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(generation: u64) -> Vec<u8> {
        let mut meta = EntryMeta::new(Timestamp::EPOCH, Timestamp::EPOCH, Timestamp::EPOCH);
        meta.generation = generation;
        let entry = Entry::new(meta, Payload::encoded(1, Bytes::from_static(b"value")));
        encode_envelope(&entry).unwrap()
    }

    #[test]
    fn a_stamped_generation_is_the_one_the_envelope_decodes_with() {
        let mut bytes = envelope(0);
        assert_eq!(generation_of(&bytes), 0);
        stamp_generation(&mut bytes, 0x0102_0304_0506_0708);
        assert_eq!(generation_of(&bytes), 0x0102_0304_0506_0708);
        let entry = decode_envelope(Bytes::from(bytes), usize::MAX).unwrap();
        assert_eq!(entry.meta.generation, 0x0102_0304_0506_0708);
        assert_eq!(generation_of(&envelope(u64::MAX)), u64::MAX);
    }

    #[test]
    fn bytes_that_are_no_envelope_have_generation_zero_or_their_headers() {
        assert_eq!(generation_of(b""), 0);
        assert_eq!(
            generation_of(b"garbage that is long enough to hold a whole header"),
            0
        );
        let bytes = envelope(7);
        assert_eq!(
            generation_of(&bytes[..ENVELOPE_HEADER_LEN - 1]),
            0,
            "too short"
        );
        let mut unknown_flags = bytes.clone();
        unknown_flags[4] = 0xff;
        assert!(decode_envelope(Bytes::from(unknown_flags.clone()), usize::MAX).is_err());
        assert_eq!(
            generation_of(&unknown_flags),
            7,
            "the header is still readable"
        );
        let entry = undecodable(7);
        assert_eq!(entry.meta.generation, 7);
        assert!(!entry.is_tombstone());
    }

    #[test]
    fn items_over_the_limit_are_refused_before_sending() {
        let store = MemcachedStore::builder("memcache://127.0.0.1:1")
            .max_item_bytes(1 << 20)
            .build()
            .unwrap();
        let key = Key::new("app", "job", 1);
        let name = entry_key(key);
        let room = (1 << 20) - ITEM_OVERHEAD - name.len();
        assert!(store.check_size(key, &name, room).is_ok());
        let err = store.check_size(key, &name, room + 1).unwrap_err();
        let Error::TooLarge { job, size, limit } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(
            (&**job, *size, *limit),
            (
                "job",
                room + 1 - ENVELOPE_HEADER_LEN,
                room - ENVELOPE_HEADER_LEN
            )
        );
    }
}
