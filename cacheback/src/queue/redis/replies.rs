//! Decoding the stream commands' replies, in RESP2 and RESP3 alike.
//!
//! Stream entries (`XREADGROUP`, `XAUTOCLAIM`, `XREVRANGE`) are parsed here by hand, field
//! names and values kept as bytes. redis-rs' own `StreamReadReply`, `StreamAutoClaimReply` and
//! `StreamRangeReply` keep values as bytes too, but key each entry's fields by `String`: one
//! entry with a field name that is not UTF-8 (any program may write to a stream) fails the
//! whole reply. Its batch would then be lost to this consumer, and its take-over would fail the
//! same way each time, stranding every message of the batch; here such an entry is delivered,
//! found malformed, and dead-lettered like any other foreign entry. (`StreamReadReply` also
//! clones the whole reply before parsing it, a copy of every message on the worker's hot path.)
//!
//! `XPENDING` replies hold only ids, consumer names and counts: redis-rs' `StreamPendingReply`
//! and `StreamPendingCountReply` decode them.

use redis::streams::{StreamPendingCountReply, StreamPendingReply};
use redis::{FromRedisValue, Value};

use crate::redis_support::bytes_of;

/// The field holding the encoded [`RefreshRequest`](crate::queue::RefreshRequest).
pub(super) const MESSAGE_FIELD: &str = "m";
/// The field counting deliveries before a stopping worker handed the message back.
pub(super) const PRIOR_DELIVERIES_FIELD: &str = "a";

/// One stream entry: its id and its field/value pairs as bytes (`None` for an entry deleted
/// since it was delivered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StreamEntry {
    pub(super) id: String,
    pub(super) fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl StreamEntry {
    /// The first value of field `name`.
    pub(super) fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .as_deref()?
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
}

/// `XREADGROUP` reply: (stream key, entries) per stream, a RESP2 array or a RESP3 map; nothing
/// (`Nil`) when the read timed out.
pub(super) fn read_reply(reply: Value) -> Vec<(Vec<u8>, Vec<StreamEntry>)> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Array(kv) if kv.len() == 2 => {
                    let mut kv = kv.into_iter();
                    Some((kv.next()?, kv.next()?))
                }
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs,
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(key, entries)| Some((bytes_of(key)?, entry_list(entries))))
        .collect()
}

/// A list of stream entries (`XRANGE`, `XREVRANGE`, `XAUTOCLAIM`, one stream of `XREADGROUP`).
pub(super) fn entry_list(value: Value) -> Vec<StreamEntry> {
    let Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let mut parts = parts.into_iter();
            let id = String::from_utf8(bytes_of(parts.next()?)?).ok()?;
            let fields = parts.next().and_then(field_pairs);
            Some(StreamEntry { id, fields })
        })
        .collect()
}

/// An entry's fields: a flat array of names and values, or (RESP3) a map.
fn field_pairs(value: Value) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    match value {
        Value::Array(flat) => {
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                if let (Some(k), Some(v)) = (bytes_of(k), bytes_of(v)) {
                    pairs.push((k, v));
                }
            }
            Some(pairs)
        }
        Value::Map(map) => Some(
            map.into_iter()
                .filter_map(|(k, v)| Some((bytes_of(k)?, bytes_of(v)?)))
                .collect(),
        ),
        _ => None,
    }
}

/// What one `XAUTOCLAIM` took over.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct AutoClaimed {
    /// Where the next scan starts.
    pub(super) cursor: String,
    /// The messages taken over that still exist.
    pub(super) entries: Vec<StreamEntry>,
}

/// `XAUTOCLAIM` reply: `[cursor, entries]`, plus (Redis 7) the ids of deleted entries, which
/// Redis 6.2 lists as entries without fields instead. `None` for anything else.
pub(super) fn auto_claimed(reply: Value) -> Option<AutoClaimed> {
    let Value::Array(parts) = reply else {
        return None;
    };
    let mut parts = parts.into_iter();
    let (cursor, entries) = (parts.next()?, parts.next()?);
    Some(AutoClaimed {
        cursor: bytes_of(cursor)
            .and_then(|c| String::from_utf8(c).ok())
            .unwrap_or_else(|| "0-0".to_owned()),
        entries: entry_list(entries)
            .into_iter()
            .filter(|entry| entry.fields.is_some())
            .collect(),
    })
}

/// Pending messages with their delivery counts, from `XPENDING key group start end count
/// [consumer]`; nothing if the reply does not decode.
pub(super) fn pending_deliveries(reply: Value) -> Vec<(String, u64)> {
    StreamPendingCountReply::from_redis_value(reply)
        .map(|reply| {
            reply
                .ids
                .into_iter()
                .map(|p| (p.id, u64::try_from(p.times_delivered).unwrap_or(u64::MAX)))
                .collect()
        })
        .unwrap_or_default()
}

/// The delivery count in an `XPENDING key group id id 1` reply.
pub(super) fn delivery_count(reply: Value) -> Option<u32> {
    let (_, count) = pending_deliveries(reply).into_iter().next()?;
    Some(u32::try_from(count).unwrap_or(u32::MAX))
}

/// The number of pending messages in an `XPENDING key group` summary (0 if it does not decode).
pub(super) fn pending_count(reply: Value) -> u64 {
    StreamPendingReply::from_redis_value(reply)
        .map_or(0, |reply| u64::try_from(reply.count()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::streams::{StreamAutoClaimReply, StreamReadReply};

    fn bulk(bytes: &[u8]) -> Value {
        Value::BulkString(bytes.to_vec())
    }

    /// An entry whose `m` field holds bytes that are not UTF-8.
    fn entry(id: &str) -> Value {
        Value::Array(vec![
            bulk(id.as_bytes()),
            Value::Array(vec![bulk(b"m"), bulk(&[0xff, 0, 0xc3])]),
        ])
    }

    #[test]
    fn read_replies_parse_in_both_protocols() {
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk(b"k"),
            Value::Array(vec![entry("1-0"), entry("2-0")]),
        ])]);
        let parsed = read_reply(resp2);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, b"k");
        assert_eq!(parsed[0].1[1].id, "2-0");
        assert_eq!(parsed[0].1[1].field("m"), Some(&[0xff, 0, 0xc3][..]));
        let resp3 = Value::Map(vec![(bulk(b"k"), Value::Array(vec![entry("3-0")]))]);
        assert_eq!(read_reply(resp3)[0].1[0].id, "3-0");
        assert!(read_reply(Value::Nil).is_empty());
    }

    #[test]
    fn fields_keep_their_bytes_in_both_protocols() {
        let map = Value::Array(vec![Value::Array(vec![
            bulk(b"5-0"),
            Value::Map(vec![
                (bulk(&[0xfe]), bulk(&[1])),
                (bulk(b"m"), bulk(&[0x80])),
            ]),
        ])]);
        let parsed = entry_list(map);
        assert_eq!(parsed[0].field("m"), Some(&[0x80][..]));
        assert_eq!(parsed[0].fields.as_ref().unwrap()[0], (vec![0xfe], vec![1]));
        let deleted = Value::Array(vec![Value::Array(vec![bulk(b"4-0"), Value::Nil])]);
        let deleted = entry_list(deleted);
        assert_eq!(deleted[0].fields, None);
        assert_eq!(deleted[0].field("m"), None);
    }

    #[test]
    fn redis_rs_stream_types_refuse_a_field_name_that_is_not_utf8() {
        // Why the entry lists are parsed by hand (see the module docs).
        let foreign = Value::Array(vec![
            bulk(b"6-0"),
            Value::Array(vec![bulk(&[0xff]), bulk(b"x")]),
        ]);
        let batch = || {
            Value::Array(vec![Value::Array(vec![
                bulk(b"k"),
                Value::Array(vec![entry("5-0"), foreign.clone()]),
            ])])
        };
        assert!(StreamReadReply::from_redis_value(batch()).is_err());
        let parsed = read_reply(batch());
        assert_eq!(parsed[0].1.len(), 2, "both entries are delivered");
        let claimed = Value::Array(vec![bulk(b"0-0"), Value::Array(vec![foreign.clone()])]);
        assert!(StreamAutoClaimReply::from_redis_value(claimed.clone()).is_err());
        assert_eq!(auto_claimed(claimed).unwrap().entries[0].id, "6-0");
    }

    #[test]
    fn auto_claim_replies_parse() {
        let redis7 = Value::Array(vec![
            bulk(b"7-0"),
            Value::Array(vec![entry("1-0")]),
            Value::Array(vec![bulk(b"2-0")]),
        ]);
        let taken = auto_claimed(redis7).unwrap();
        assert_eq!(taken.cursor, "7-0");
        assert_eq!(taken.entries.len(), 1);
        let redis6 = Value::Array(vec![
            bulk(b"0-0"),
            Value::Array(vec![
                Value::Array(vec![bulk(b"2-0"), Value::Nil]),
                entry("3-0"),
            ]),
        ]);
        let taken = auto_claimed(redis6).unwrap();
        assert_eq!(taken.entries.len(), 1, "deleted entries are left out");
        assert_eq!(taken.entries[0].id, "3-0");
        assert_eq!(auto_claimed(Value::Array(vec![bulk(b"0-0")])), None);
        assert_eq!(auto_claimed(Value::Nil), None);
    }

    #[test]
    fn pending_replies_parse() {
        let row = |id: &[u8], count| {
            Value::Array(vec![
                bulk(id),
                bulk(b"worker-1"),
                Value::Int(1500),
                Value::Int(count),
            ])
        };
        let reply = Value::Array(vec![row(b"1-0", 3), row(b"2-0", 1)]);
        assert_eq!(
            pending_deliveries(reply.clone()),
            vec![("1-0".to_owned(), 3), ("2-0".to_owned(), 1)]
        );
        assert_eq!(delivery_count(reply), Some(3));
        assert_eq!(delivery_count(Value::Array(vec![])), None);
        assert_eq!(delivery_count(Value::Nil), None);
        assert!(pending_deliveries(Value::Array(vec![bulk(b"1-0")])).is_empty());

        let summary = Value::Array(vec![
            Value::Int(4),
            bulk(b"1-0"),
            bulk(b"9-0"),
            Value::Array(vec![Value::Array(vec![bulk(b"worker-1"), bulk(b"4")])]),
        ]);
        assert_eq!(pending_count(summary), 4);
        let empty = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(pending_count(empty), 0);
        assert_eq!(pending_count(Value::Okay), 0);
    }
}
