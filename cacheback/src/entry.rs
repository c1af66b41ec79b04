//! What a store holds for one key: metadata plus the value, and its byte envelope.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::clock::Timestamp;
use crate::policy::Freshness;
use crate::tags::{EntryTags, MAX_TAGS_PER_ENTRY};

/// Metadata kept with every entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryMeta {
    /// Bumped by every write of the key. A refresh only writes if the generation it was enqueued
    /// with is still current, so a late refresh never overwrites a newer `set` or `delete`.
    pub generation: u64,
    /// When the value was fetched (or set).
    pub fetched_at: Timestamp,
    /// The value is Fresh before this.
    pub fresh_until: Timestamp,
    /// The value may be served (Stale) before this; the store may drop the entry from then on.
    pub stale_until: Timestamp,
    /// How long the fetch that produced the value took (XFetch uses it).
    pub fetch_duration: Duration,
    /// The job's schema version when the value was written.
    pub schema_version: u32,
    /// Encoded size of the value in bytes (what size limits and weighers use).
    pub size: u32,
}

impl EntryMeta {
    /// Metadata for a value fetched at `fetched_at` with the given windows. `generation` is
    /// assigned by the store on write.
    pub fn new(fetched_at: Timestamp, fresh_until: Timestamp, stale_until: Timestamp) -> Self {
        EntryMeta {
            generation: 0,
            fetched_at,
            fresh_until,
            stale_until,
            fetch_duration: Duration::ZERO,
            schema_version: 0,
            size: 0,
        }
    }

    /// The state of the entry at `now`.
    pub fn freshness(&self, now: Timestamp) -> Freshness {
        Freshness::at(now, self.fresh_until, self.stale_until)
    }
}

/// The value part of an [`Entry`]: the value's encoded bytes, or a tombstone.
///
/// Stores that keep bytes see only these two. The in-process
/// [`MemoryStore`](crate::MemoryStore) also keeps the values a client writes to it as live
/// objects, skipping encoding altogether; such a payload has no bytes
/// ([`as_encoded`](Payload::as_encoded) returns `None`) and is neither of the two.
#[derive(Clone)]
pub struct Payload(pub(crate) Repr);

/// What a [`Payload`] holds.
#[derive(Clone)]
pub(crate) enum Repr {
    /// A live value, kept by the memory store for the client that wrote it.
    Live(Arc<dyn Any + Send + Sync>),
    /// An encoded value.
    Encoded { codec: u8, bytes: Bytes },
    /// The key was deleted.
    Tombstone,
}

impl Payload {
    /// An encoded value: `bytes` written with the [`Codec`](crate::Codec) whose id is `codec`.
    pub fn encoded(codec: u8, bytes: Bytes) -> Self {
        Payload(Repr::Encoded { codec, bytes })
    }

    /// A tombstone: the key was deleted. It keeps the generation alive so that a refresh
    /// enqueued before the delete cannot resurrect the value; it reads as a miss.
    pub fn tombstone() -> Self {
        Payload(Repr::Tombstone)
    }

    /// The codec id and bytes of an encoded value; `None` for a tombstone (and for a live
    /// in-process value).
    pub fn as_encoded(&self) -> Option<(u8, &Bytes)> {
        match &self.0 {
            Repr::Encoded { codec, bytes } => Some((*codec, bytes)),
            Repr::Live(_) | Repr::Tombstone => None,
        }
    }

    /// Whether this is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        matches!(self.0, Repr::Tombstone)
    }

    /// A live value, for the in-process store.
    pub(crate) fn live(value: Arc<dyn Any + Send + Sync>) -> Self {
        Payload(Repr::Live(value))
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Live(_) => f.write_str("Live(..)"),
            Repr::Encoded { codec, bytes } => f
                .debug_struct("Encoded")
                .field("codec", codec)
                .field("len", &bytes.len())
                .finish(),
            Repr::Tombstone => f.write_str("Tombstone"),
        }
    }
}

/// One key's entry: metadata, payload and tags.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Entry {
    /// Metadata.
    pub meta: EntryMeta,
    /// The value, or a tombstone.
    pub payload: Payload,
    /// The value's tags (see [`Job::tags`](crate::Job::tags)), if it has any. A store keeps
    /// them with the entry ([`encode_envelope`] does for byte stores).
    pub tags: Option<Arc<EntryTags>>,
}

impl Entry {
    /// An entry from its parts, without tags.
    pub fn new(meta: EntryMeta, payload: Payload) -> Self {
        Entry {
            meta,
            payload,
            tags: None,
        }
    }

    /// The entry with these tags.
    #[must_use]
    pub fn with_tags(mut self, tags: Option<Arc<EntryTags>>) -> Self {
        self.tags = tags;
        self
    }

    /// Whether this entry is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.payload.is_tombstone()
    }
}

/// Length of the fixed envelope header.
pub(crate) const ENVELOPE_HEADER_LEN: usize = 48;
const MAGIC: [u8; 2] = *b"CB";
const FORMAT_VERSION: u8 = 1;
/// The envelope's first bytes, magic then format version: what a server-side script checks
/// before it trusts the header.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) const ENVELOPE_PREFIX: [u8; 3] = [MAGIC[0], MAGIC[1], FORMAT_VERSION];
/// Where the generation (8 bytes, big-endian) starts in the header.
pub(crate) const GENERATION_OFFSET: usize = 8;
const FLAG_TOMBSTONE: u8 = 1;
/// The value bytes are preceded by the entry's tags.
const FLAG_TAGGED: u8 = 2;

/// Why bytes read from a store are not a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Fewer bytes than the header.
    #[error("envelope is {0} bytes, shorter than its {ENVELOPE_HEADER_LEN}-byte header")]
    Truncated(usize),
    /// The bytes do not start with the envelope magic.
    #[error("not a cacheback envelope (bad magic)")]
    BadMagic,
    /// Written by a newer or unknown envelope format.
    #[error("unknown envelope format version {0}")]
    UnknownVersion(u8),
    /// Over the size limit the reader was given.
    #[error("envelope is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Size of the bytes.
        size: usize,
        /// The reader's limit.
        limit: usize,
    },
    /// The header is inconsistent (e.g. flags this version does not know, tombstone with a value).
    #[error("malformed envelope header: {0}")]
    Malformed(&'static str),
}

/// Encodes an entry for a byte store.
///
/// The layout is a fixed 48-byte big-endian header followed by the value bytes, so that server
/// side scripts (Redis Lua) can read and compare the generation at a fixed offset without a
/// decoder:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 2 | magic `"CB"` |
/// | 2 | 1 | format version (1) |
/// | 3 | 1 | codec id (0 for a tombstone) |
/// | 4 | 1 | flags (bit 0: tombstone) |
/// | 5 | 3 | reserved, zero |
/// | 8 | 8 | generation |
/// | 16 | 8 | `fetched_at` (ms since epoch) |
/// | 24 | 8 | `fresh_until` |
/// | 32 | 8 | `stale_until` |
/// | 40 | 4 | fetch duration (ms, saturating) |
/// | 44 | 4 | schema version |
/// | 48 | .. | value bytes |
///
/// An entry with tags sets flag bit 1 and puts them between the header and the value: the
/// tag clock value (8 bytes), the number of tags (1 byte), then each tag as its length (1
/// byte) and its bytes. An entry without tags is laid out exactly as above.
///
/// Returns `None` for a live in-process value, which has no bytes to store.
pub fn encode_envelope(entry: &Entry) -> Option<Vec<u8>> {
    let (codec, mut flags, value): (u8, u8, &[u8]) = match &entry.payload.0 {
        Repr::Live(_) => return None,
        Repr::Encoded { codec, bytes } => (*codec, 0, bytes),
        Repr::Tombstone => (0, FLAG_TOMBSTONE, &[]),
    };
    // A tombstone is nothing to invalidate: its tags are not kept.
    let tags = entry.tags.as_deref().filter(|_| flags == 0);
    if tags.is_some() {
        flags |= FLAG_TAGGED;
    }
    let m = &entry.meta;
    let mut out = Vec::with_capacity(ENVELOPE_HEADER_LEN + value.len());
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(codec);
    out.push(flags);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&m.generation.to_be_bytes());
    out.extend_from_slice(&m.fetched_at.as_millis().to_be_bytes());
    out.extend_from_slice(&m.fresh_until.as_millis().to_be_bytes());
    out.extend_from_slice(&m.stale_until.as_millis().to_be_bytes());
    let fetch_ms = u32::try_from(m.fetch_duration.as_millis()).unwrap_or(u32::MAX);
    out.extend_from_slice(&fetch_ms.to_be_bytes());
    out.extend_from_slice(&m.schema_version.to_be_bytes());
    if let Some(tags) = tags {
        // Tags are checked when made: at most 32, each at most 128 bytes.
        out.extend_from_slice(&tags.since.to_be_bytes());
        out.push(u8::try_from(tags.names.len()).unwrap_or(u8::MAX));
        for name in &tags.names {
            out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(name.as_bytes());
        }
    }
    out.extend_from_slice(value);
    Some(out)
}

/// Decodes an envelope written by [`encode_envelope`]. Checks `limit` before looking at
/// anything else, never panics, and never allocates beyond the input (the value is a zero-copy
/// slice of `bytes`).
pub fn decode_envelope(bytes: Bytes, limit: usize) -> Result<Entry, EnvelopeError> {
    if bytes.len() > limit {
        return Err(EnvelopeError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    if bytes.len() < ENVELOPE_HEADER_LEN {
        return Err(EnvelopeError::Truncated(bytes.len()));
    }
    if bytes[0..2] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    if bytes[2] != FORMAT_VERSION {
        return Err(EnvelopeError::UnknownVersion(bytes[2]));
    }
    let codec = bytes[3];
    let flags = bytes[4];
    if flags & !(FLAG_TOMBSTONE | FLAG_TAGGED) != 0 {
        return Err(EnvelopeError::Malformed("unknown flags"));
    }
    if bytes[5..8] != [0; 3] {
        return Err(EnvelopeError::Malformed("reserved bytes are not zero"));
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let u32_at = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes[at..at + 4]);
        u32::from_be_bytes(b)
    };
    let (tags, value_at) = if flags & FLAG_TAGGED != 0 {
        if flags & FLAG_TOMBSTONE != 0 {
            return Err(EnvelopeError::Malformed("tombstone with tags"));
        }
        let (tags, end) = decode_tags(&bytes[ENVELOPE_HEADER_LEN..])?;
        (Some(Arc::new(tags)), ENVELOPE_HEADER_LEN + end)
    } else {
        (None, ENVELOPE_HEADER_LEN)
    };
    let value_len = bytes.len() - value_at;
    let meta = EntryMeta {
        generation: u64_at(GENERATION_OFFSET),
        fetched_at: Timestamp::from_millis(u64_at(16)),
        fresh_until: Timestamp::from_millis(u64_at(24)),
        stale_until: Timestamp::from_millis(u64_at(32)),
        fetch_duration: Duration::from_millis(u64::from(u32_at(40))),
        schema_version: u32_at(44),
        size: u32::try_from(value_len).unwrap_or(u32::MAX),
    };
    if meta.fresh_until > meta.stale_until {
        return Err(EnvelopeError::Malformed("fresh_until after stale_until"));
    }
    let payload = if flags & FLAG_TOMBSTONE != 0 {
        if value_len != 0 || codec != 0 {
            return Err(EnvelopeError::Malformed("tombstone with a value"));
        }
        Payload::tombstone()
    } else {
        Payload::encoded(codec, bytes.slice(value_at..))
    };
    Ok(Entry {
        meta,
        payload,
        tags,
    })
}

/// The tag section at the start of `bytes`, and where it ends.
fn decode_tags(bytes: &[u8]) -> Result<(EntryTags, usize), EnvelopeError> {
    const TRUNCATED: EnvelopeError = EnvelopeError::Malformed("tag section is truncated");
    let since = bytes.get(..8).ok_or(TRUNCATED)?;
    let mut since_bytes = [0u8; 8];
    since_bytes.copy_from_slice(since);
    let count = usize::from(*bytes.get(8).ok_or(TRUNCATED)?);
    if count == 0 || count > MAX_TAGS_PER_ENTRY {
        return Err(EnvelopeError::Malformed("tag count out of range"));
    }
    let mut at = 9;
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(*bytes.get(at).ok_or(TRUNCATED)?);
        let name = bytes.get(at + 1..at + 1 + len).ok_or(TRUNCATED)?;
        let name =
            std::str::from_utf8(name).map_err(|_| EnvelopeError::Malformed("a tag is not text"))?;
        names.push(name.to_owned());
        at += 1 + len;
    }
    let tags = EntryTags::new(u64::from_be_bytes(since_bytes), names)
        .map_err(|_| EnvelopeError::Malformed("invalid tag"))?;
    Ok((tags, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(generation: u64, a: u64, b: u64, c: u64) -> EntryMeta {
        EntryMeta {
            generation,
            fetched_at: Timestamp::from_millis(a),
            fresh_until: Timestamp::from_millis(b),
            stale_until: Timestamp::from_millis(c),
            fetch_duration: Duration::from_millis(1234),
            schema_version: 7,
            size: 0,
        }
    }

    #[test]
    fn layout_is_pinned() {
        let entry = Entry::new(
            meta(0x0102030405060708, 1, 2, 3),
            Payload::encoded(1, Bytes::from_static(b"hi")),
        );
        let bytes = encode_envelope(&entry).unwrap();
        assert_eq!(&bytes[..8], b"CB\x01\x01\x00\x00\x00\x00");
        assert_eq!(&bytes[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&bytes[40..48], &[0, 0, 4, 210, 0, 0, 0, 7]);
        assert_eq!(&bytes[48..], b"hi");
        assert!(encode_envelope(&Entry::new(entry.meta, Payload::live(Arc::new(1u8)))).is_none());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let good = encode_envelope(&Entry::new(meta(1, 1, 2, 3), Payload::tombstone())).unwrap();
        let decode = |b: &[u8]| decode_envelope(Bytes::copy_from_slice(b), 1 << 20);
        assert!(decode(&good).unwrap().is_tombstone());
        assert_eq!(
            decode(&good[..10]).unwrap_err(),
            EnvelopeError::Truncated(10)
        );
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad).unwrap_err(), EnvelopeError::BadMagic);
        let mut bad = good.clone();
        bad[2] = 9;
        assert_eq!(decode(&bad).unwrap_err(), EnvelopeError::UnknownVersion(9));
        let mut bad = good.clone();
        bad[6] = 1;
        assert_eq!(
            decode(&bad).unwrap_err(),
            EnvelopeError::Malformed("reserved bytes are not zero")
        );
        let mut bad = good.clone();
        bad.push(1);
        assert!(matches!(decode(&bad), Err(EnvelopeError::Malformed(_))));
        assert!(matches!(
            decode_envelope(Bytes::from(good), 10),
            Err(EnvelopeError::TooLarge {
                size: 48,
                limit: 10
            })
        ));
    }

    #[test]
    fn tags_travel_between_header_and_value_and_untagged_entries_are_unchanged() {
        let tags = EntryTags::new(9, vec!["user:1".into(), "org:2".into()]).unwrap();
        let plain = Entry::new(
            meta(3, 1, 2, 3),
            Payload::encoded(1, Bytes::from_static(b"hi")),
        );
        let tagged = plain.clone().with_tags(Some(Arc::new(tags.clone())));
        let old = encode_envelope(&plain).unwrap();
        assert_eq!(
            old[4], 0,
            "an untagged entry keeps the layout older readers know"
        );
        let bytes = encode_envelope(&tagged).unwrap();
        assert_eq!(bytes[4], FLAG_TAGGED);
        assert_eq!(&bytes[48..56], &9u64.to_be_bytes());
        assert_eq!(&bytes[56..58], &[2, 6]);
        let decoded = decode_envelope(Bytes::from(bytes.clone()), 1 << 20).unwrap();
        assert_eq!(decoded.tags.as_deref(), Some(&tags));
        assert_eq!(decoded.payload.as_encoded().unwrap().1.as_ref(), b"hi");
        assert_eq!(decoded.meta.size, 2);
        assert_eq!(
            decode_envelope(Bytes::from(old), 1 << 20).unwrap().tags,
            None
        );

        let tombstone =
            Entry::new(meta(3, 1, 2, 3), Payload::tombstone()).with_tags(Some(Arc::new(tags)));
        let bytes = encode_envelope(&tombstone).unwrap();
        assert_eq!(
            bytes.len(),
            ENVELOPE_HEADER_LEN,
            "a tombstone keeps no tags"
        );

        let decode = |b: &[u8]| decode_envelope(Bytes::copy_from_slice(b), 1 << 20);
        let good = encode_envelope(&tagged).unwrap();
        for cut in 49..58 {
            assert!(
                matches!(decode(&good[..cut]), Err(EnvelopeError::Malformed(_))),
                "cut at {cut}"
            );
        }
        let mut bad = good.clone();
        bad[56] = 0;
        assert!(decode(&bad).is_err(), "no tags under the tag flag");
        let mut bad = good.clone();
        bad[58] = b' ';
        assert!(decode(&bad).is_err(), "an invalid tag");
        let mut bad = good;
        bad[4] |= FLAG_TOMBSTONE;
        assert!(decode(&bad).is_err(), "a tombstone with tags");
    }

    proptest! {
        #[test]
        fn round_trips(generation: u64, a: u64, b in 0u64..u64::MAX / 2, extra in 0u64..u64::MAX / 2, codec in 1u8.., value in proptest::collection::vec(any::<u8>(), 0..300)) {
            let m = meta(generation, a, b, b + extra);
            let entry = Entry::new(m, Payload::encoded(codec, Bytes::from(value.clone())));
            let decoded = decode_envelope(Bytes::from(encode_envelope(&entry).unwrap()), usize::MAX).unwrap();
            prop_assert_eq!(decoded.meta, EntryMeta { size: value.len() as u32, ..m });
            match decoded.payload.as_encoded() {
                Some((c, bytes)) => { prop_assert_eq!(c, codec); prop_assert_eq!(&bytes[..], &value[..]); }
                None => prop_assert!(false, "unexpected payload {:?}", decoded.payload),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_envelope(Bytes::from(bytes), 1 << 20);
        }
    }
}
