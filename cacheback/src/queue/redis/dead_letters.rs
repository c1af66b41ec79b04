//! Dead letters: a message that cannot be processed is moved (`dead_letter.lua`) to the
//! dead-letter stream beside its stream, where operators read it back
//! ([`RedisQueue::dead_letters`]).

use redis::Value;

use super::replies::{MESSAGE_FIELD, StreamEntry, entry_list};
use super::{RedisQueue, dead_key};
use crate::error::Result;
use crate::queue::{Delivery, RefreshRequest};
use crate::redis_support::Failure;

/// See the script's header.
pub(super) const DEAD_LETTER_LUA: &str = include_str!("dead_letter.lua");

/// The fields the script writes besides the message's own.
const REASON_FIELD: &str = "reason";
const ATTEMPT_FIELD: &str = "attempt";
const SOURCE_ID_FIELD: &str = "id";
const JOB_FIELD: &str = "job";

/// A message in a dead-letter stream ([`RedisQueue::dead_letters`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisDeadLetter {
    /// The dead letter's id: its id in the dead-letter stream, prefixed with its shard
    /// (`<shard>/<stream id>`) when the queue is spread over several
    /// ([`RedisQueueBuilder::shards`](super::RedisQueueBuilder::shards)). The inspection and
    /// replay methods take it as they give it.
    pub id: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The delivery it was dead-lettered at.
    pub attempt: u32,
    /// The original message's id in its stream.
    pub source_id: String,
    /// The job name, when the message decoded.
    pub job: Option<String>,
    /// The original message bytes (field `m`), if it had any.
    pub message: Option<Vec<u8>>,
    /// The decoded request, when the message decodes.
    pub request: Option<RefreshRequest>,
}

impl RedisDeadLetter {
    /// Reads a dead-letter stream entry; `limit` bounds the message decoded.
    pub(super) fn from_entry(entry: StreamEntry, limit: usize) -> Self {
        // Only the message is binary; the other fields are text the script wrote.
        let text = |name: &str| {
            entry
                .field(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let message = entry.field(MESSAGE_FIELD).map(<[u8]>::to_vec);
        RedisDeadLetter {
            reason: text(REASON_FIELD).unwrap_or_default(),
            attempt: text(ATTEMPT_FIELD)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            source_id: text(SOURCE_ID_FIELD).unwrap_or_default(),
            job: text(JOB_FIELD).filter(|j| !j.is_empty()),
            request: message
                .as_deref()
                .and_then(|m| RefreshRequest::decode(m, limit).ok()),
            message,
            id: entry.id,
        }
    }
}

impl RedisQueue {
    /// The newest `count` dead letters of `queue` (of all its shards), newest first.
    pub async fn dead_letters(&self, queue: &str, count: usize) -> Result<Vec<RedisDeadLetter>> {
        let count = count.max(1);
        let mut letters = Vec::new();
        for shard in 0..self.inner.options.shards {
            let mut cmd = redis::cmd("XREVRANGE");
            cmd.arg(dead_key(self.prefix(), shard, queue))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(count);
            let reply: Value = self
                .inner
                .conn
                .query(&cmd, "XREVRANGE")
                .await
                .map_err(Failure::into_queue)?;
            letters.extend(entry_list(reply).into_iter().map(|entry| (shard, entry)));
        }
        // Stream ids are `<ms>-<seq>`: newest first across shards.
        letters.sort_by_key(|(shard, entry)| std::cmp::Reverse((id_order(&entry.id), *shard)));
        letters.truncate(count);
        let limit = self.inner.options.max_message_bytes;
        Ok(letters
            .into_iter()
            .map(|(shard, entry)| self.named(shard, RedisDeadLetter::from_entry(entry, limit)))
            .collect())
    }

    pub(super) async fn do_dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        let inner = &*self.inner;
        let (key, shard, name, id) = self.stream_of(&delivery.receipt)?;
        let job = delivery
            .message
            .as_ref()
            .map(|r| r.job.as_str())
            .unwrap_or("");
        let mut invocation = inner.dead_letter.key(&key);
        invocation
            .key(dead_key(self.prefix(), shard, name))
            .arg(&inner.group)
            .arg(id)
            .arg(reason)
            .arg(delivery.attempt)
            .arg(inner.options.dead_letter_max_len)
            .arg(job);
        let _: Value = inner
            .conn
            .script(&invocation, "dead-letter script")
            .await
            .map_err(Failure::into_queue)?;
        Ok(())
    }
}

/// A stream id (`<ms>-<seq>`) as numbers, for ordering ids of different streams.
pub(super) fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_as_numbers() {
        assert!(id_order("10-0") > id_order("9-5"));
        assert!(id_order("9-10") > id_order("9-9"));
    }
    use crate::redis_support::{lua_constant, lua_string};

    #[test]
    fn the_script_writes_the_fields_dead_letters_read() {
        for (lua, rust) in [
            ("MESSAGE", MESSAGE_FIELD),
            ("REASON", REASON_FIELD),
            ("ATTEMPT", ATTEMPT_FIELD),
            ("SOURCE_ID", SOURCE_ID_FIELD),
            ("JOB", JOB_FIELD),
        ] {
            assert_eq!(
                lua_constant(DEAD_LETTER_LUA, lua),
                lua_string(rust),
                "{lua}"
            );
        }
    }

    #[test]
    fn dead_letters_keep_the_message_bytes() {
        let fields = [
            (REASON_FIELD, &b"fetch failed"[..]),
            (ATTEMPT_FIELD, b"3"),
            (SOURCE_ID_FIELD, b"1-0"),
            (JOB_FIELD, b""),
            (MESSAGE_FIELD, &[0xff, 0x00]),
        ];
        let entry = StreamEntry {
            id: "9-0".to_owned(),
            fields: Some(
                fields
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
                    .collect(),
            ),
        };
        let letter = RedisDeadLetter::from_entry(entry, 1024);
        assert_eq!(letter.id, "9-0");
        assert_eq!(letter.reason, "fetch failed");
        assert_eq!(letter.attempt, 3);
        assert_eq!(letter.source_id, "1-0");
        assert_eq!(letter.job, None);
        assert_eq!(letter.message.as_deref(), Some(&[0xff, 0x00][..]));
        assert!(letter.request.is_none(), "not a request");
    }
}
