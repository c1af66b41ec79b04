//! What the store writes into Redis besides the envelope itself: key names, times as text, the
//! claim and failure records, and the entry that stands for bytes that are no envelope.

use bytes::Bytes;

use crate::clock::Timestamp;
use crate::entry::{
    ENVELOPE_HEADER_LEN, ENVELOPE_PREFIX, Entry, EntryMeta, GENERATION_OFFSET, Payload,
};
use crate::key::Key;
use crate::store::ClaimToken;
use crate::tags::TagState;

/// How many bytes of an entry [`undecodable`] looks at: up to the generation's end.
pub(super) const HEAD_LEN: usize = GENERATION_OFFSET + 8;

/// `{<key text>}<suffix>`, in one allocation of its exact length (this runs on every read).
fn tagged(key: Key<'_>, suffix: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.text_len() + 2 + suffix.len());
    out.push(b'{');
    key.write_text(&mut out);
    out.push(b'}');
    out.extend_from_slice(suffix.as_bytes());
    out
}

pub(super) fn entry_key(key: Key<'_>) -> Vec<u8> {
    tagged(key, "")
}

pub(super) fn claim_key(key: Key<'_>) -> Vec<u8> {
    tagged(key, ":c")
}

pub(super) fn fail_key(key: Key<'_>) -> Vec<u8> {
    tagged(key, ":f")
}

/// `{<prefix>:tags}<suffix>`: every tag key of a prefix shares one hash tag, so the tag script
/// and the read of several tags' records each touch one Cluster slot.
fn tag_space(prefix: &str, suffix: &str) -> Vec<u8> {
    format!("{{{prefix}:tags}}{suffix}").into_bytes()
}

/// The tag clock of `prefix`.
pub(super) fn tag_clock_key(prefix: &str) -> Vec<u8> {
    tag_space(prefix, ":clock")
}

/// The record of `tag` under `prefix`.
pub(super) fn tag_key(prefix: &str, tag: &str) -> Vec<u8> {
    tag_space(prefix, &format!(":t:{tag}"))
}

/// A tag record `<invalidated>:<deleted>`, as the tag script writes it; anything else reads
/// as a tag never invalidated.
pub(super) fn parse_tag_record(record: &[u8]) -> TagState {
    tag_record(record).unwrap_or_default()
}

/// A tag record `<invalidated>:<deleted>`, if that is what `record` is.
pub(super) fn tag_record(record: &[u8]) -> Option<TagState> {
    let text = std::str::from_utf8(record).ok()?;
    let (invalidated, deleted) = text.split_once(':')?;
    Some(TagState::new(
        invalidated.parse().ok()?,
        deleted.parse().ok()?,
    ))
}

/// A timestamp as 20 zero-padded digits: compares as a string the way it compares as a number.
pub(super) fn time_text(t: Timestamp) -> String {
    format!("{:020}", t.as_millis())
}

pub(super) fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The failure record `<failures>:<retry_after>:<forget_at>`, as the claim script parses it.
pub(super) fn failure_record(
    failures: u32,
    retry_after: Timestamp,
    forget_at: Timestamp,
) -> String {
    format!(
        "{failures}:{}:{}",
        time_text(retry_after),
        time_text(forget_at)
    )
}

/// A claim record `<token>:<until>` still held at `now`.
pub(super) fn parse_claim(record: &str, now: Timestamp) -> Option<(ClaimToken, Timestamp)> {
    let (token, until) = record.split_once(':')?;
    let (Ok(token), Ok(until)) = (u128::from_str_radix(token, 16), until.parse()) else {
        return None;
    };
    let until = Timestamp::from_millis(until);
    (until > now).then(|| (ClaimToken::from_u128(token), until))
}

/// A failure record not yet forgotten at `now`: the failures and when to retry.
pub(super) fn parse_failure(record: &str, now: Timestamp) -> Option<(u32, Timestamp)> {
    let mut parts = record.split(':').map(str::parse::<u64>);
    let (Some(Ok(failures)), Some(Ok(retry)), Some(Ok(forget))) =
        (parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    (Timestamp::from_millis(forget) > now)
        .then(|| (clamp_u32(failures), Timestamp::from_millis(retry)))
}

/// The entry for bytes (`head`: their first [`HEAD_LEN`] bytes; `len`: their length) that are
/// not a valid envelope: no job decodes it (codec id 0 is no codec), it is already expired (so
/// `invalidate` leaves it alone), and its generation is the one the `put` script sees in the
/// same bytes.
pub(super) fn undecodable(head: &[u8], len: usize) -> Entry {
    let generation = match head.get(GENERATION_OFFSET..HEAD_LEN) {
        Some(g) if len >= ENVELOPE_HEADER_LEN && head.starts_with(&ENVELOPE_PREFIX) => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(g);
            u64::from_be_bytes(bytes)
        }
        _ => 0,
    };
    let mut meta = EntryMeta::new(Timestamp::EPOCH, Timestamp::EPOCH, Timestamp::EPOCH);
    meta.generation = generation;
    Entry::new(meta, Payload::encoded(0, Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::encode_envelope;

    #[test]
    fn keys_share_one_hash_tag() {
        for digest in [
            0,
            0xabc,
            u128::MAX,
            0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        ] {
            let key = Key::new("app", "job.v2", digest);
            let text = key.to_string();
            assert_eq!(entry_key(key), format!("{{{text}}}").into_bytes());
            assert_eq!(claim_key(key), format!("{{{text}}}:c").into_bytes());
            assert_eq!(fail_key(key), format!("{{{text}}}:f").into_bytes());
        }
    }

    #[test]
    fn tag_keys_share_the_prefixs_hash_tag() {
        assert_eq!(tag_clock_key("app"), b"{app:tags}:clock");
        assert_eq!(tag_key("app", "user:1"), b"{app:tags}:t:user:1");
        assert_eq!(parse_tag_record(b"7:3"), TagState::new(7, 3));
        assert_eq!(parse_tag_record(b"7"), TagState::default());
        assert_eq!(parse_tag_record(b"\xff"), TagState::default());
    }

    #[test]
    fn times_compare_as_text() {
        let (a, b) = (Timestamp::from_millis(999), Timestamp::from_millis(1000));
        assert!(time_text(a) < time_text(b));
        assert!(time_text(Timestamp::MAX) > time_text(b));
        assert_eq!(time_text(Timestamp::MAX).len(), 20);
    }

    #[test]
    fn the_layout_constants_are_the_envelopes() {
        let mut meta = EntryMeta::new(Timestamp::EPOCH, Timestamp::EPOCH, Timestamp::EPOCH);
        meta.generation = 0x0102_0304_0506_0708;
        let entry = Entry::new(meta, Payload::tombstone());
        let bytes = encode_envelope(&entry).unwrap();
        assert!(bytes.starts_with(&ENVELOPE_PREFIX));
        assert_eq!(
            &bytes[GENERATION_OFFSET..HEAD_LEN],
            &[1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(bytes.len(), ENVELOPE_HEADER_LEN);
        assert_eq!(undecodable(&bytes[..HEAD_LEN], bytes.len()).meta, {
            let mut m = EntryMeta::new(Timestamp::EPOCH, Timestamp::EPOCH, Timestamp::EPOCH);
            m.generation = meta.generation;
            m
        });
    }

    #[test]
    fn garbage_has_the_generation_the_script_sees() {
        assert_eq!(undecodable(b"garbage", 7).meta.generation, 0);
        let mut header = [0u8; ENVELOPE_HEADER_LEN];
        header[..ENVELOPE_PREFIX.len()].copy_from_slice(&ENVELOPE_PREFIX);
        header[HEAD_LEN - 1] = 7;
        header[4] = 0xff; // unknown flags: not a valid envelope, but the header is readable
        let head = &header[..HEAD_LEN];
        assert_eq!(undecodable(head, ENVELOPE_HEADER_LEN).meta.generation, 7);
        assert_eq!(
            undecodable(head, ENVELOPE_HEADER_LEN - 1).meta.generation,
            0,
            "too short"
        );
        assert!(!undecodable(head, ENVELOPE_HEADER_LEN).is_tombstone());
    }

    #[test]
    fn records_read_back() {
        let now = Timestamp::from_millis(100);
        let token = ClaimToken::from_u128(0xabc);
        let held = format!("{token}:{}", time_text(Timestamp::from_millis(101)));
        assert_eq!(
            parse_claim(&held, now),
            Some((token, Timestamp::from_millis(101)))
        );
        let ended = format!("{token}:{}", time_text(now));
        assert_eq!(parse_claim(&ended, now), None);
        assert_eq!(parse_claim("nonsense", now), None);
        let record = failure_record(3, Timestamp::from_millis(150), Timestamp::from_millis(900));
        assert_eq!(
            parse_failure(&record, now),
            Some((3, Timestamp::from_millis(150)))
        );
        assert_eq!(parse_failure(&record, Timestamp::from_millis(900)), None);
        assert_eq!(parse_failure("1:2", now), None);
    }
}
