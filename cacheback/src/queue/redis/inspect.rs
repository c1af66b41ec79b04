//! What operators read and do besides the workers: the queues under a prefix, a queue's depth,
//! consumer groups and consumers ([`RedisQueue::stats`]), and the dead letters one by one
//! (find, page through, replay with `replay.lua`, remove).

use std::time::Duration;

use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply};
use redis::{Script, Value};

use super::dead_letters::RedisDeadLetter;
use super::replies::entry_list;
use super::{RedisQueue, dead_key, stream_key};
use crate::clock::Timestamp;
use crate::error::Result;
use crate::redis_support::Failure;

/// See the script's header.
const REPLAY_LUA: &str = include_str!("replay.lua");

/// Keys one `SCAN` call looks at.
const SCAN_COUNT: u64 = 1000;

/// A queue's state, read by [`RedisQueue::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue's name.
    pub queue: String,
    /// Requests in the stream not yet acknowledged: waiting, or delivered and running.
    pub depth: u64,
    /// Messages in the queue's dead-letter stream.
    pub dead_letters: u64,
    /// When the oldest unacknowledged request was added, by Redis's clock (the time part of
    /// its stream id); `None` when the stream is empty.
    pub oldest_enqueued_at: Option<Timestamp>,
    /// The consumer groups reading the stream (worker pools); none before a worker started.
    pub groups: Vec<GroupStats>,
}

/// One consumer group of a queue (a worker pool), in [`QueueStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStats {
    /// The group's name.
    pub name: String,
    /// Requests delivered to the group's consumers and not yet acknowledged.
    pub pending: u64,
    /// Requests not yet delivered to the group (Redis 7 and later; `None` before, or when
    /// Redis cannot tell).
    pub lag: Option<u64>,
    /// The id of the last request delivered to the group.
    pub last_delivered_id: String,
    /// The group's consumers (worker processes, including ones that stopped).
    pub consumers: Vec<ConsumerStats>,
}

/// One consumer of a group (a worker process), in [`GroupStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// The consumer's name ([`RedisQueue::consumer`] of its process).
    pub name: String,
    /// Requests delivered to it and not yet acknowledged.
    pub pending: u64,
    /// Time since its last read or acknowledgement: a worker that stopped keeps growing it.
    pub idle: Duration,
}

/// What [`RedisQueue::replay_dead_letter`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replay {
    /// The message is back on its queue and the dead letter is gone.
    Replayed,
    /// There is no dead letter with that id (already replayed or removed).
    NotFound,
    /// The dead letter holds no message (a foreign stream entry): nothing can be replayed, and
    /// it is left where it is.
    NoMessage,
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The time part of a stream id (`<ms>-<seq>`).
fn id_time(id: &str) -> Option<Timestamp> {
    let (ms, _) = id.split_once('-')?;
    ms.parse().ok().map(Timestamp::from_millis)
}

impl RedisQueue {
    /// The inspection and replay methods below read one stream per queue: a queue spread over
    /// several shards (on a Redis Cluster) is refused with a clear error until they read every
    /// shard.
    fn one_shard(&self) -> Result<()> {
        match self.inner.options.shards {
            1 => Ok(()),
            n => Err(crate::error::Error::config(format!(
                "inspecting or replaying a queue spread over {n} shards (Redis Cluster) is not \
                 supported yet; it works on a queue with one shard"
            ))),
        }
    }

    /// The names of the queues under this queue's prefix that have a stream or a dead-letter
    /// stream in Redis, sorted. Uses `SCAN`, so it never blocks Redis; on Redis Cluster it
    /// sees the node the prefix's streams live on, which holds them all (they share a hash
    /// tag).
    pub async fn queue_names(&self) -> Result<Vec<String>> {
        self.one_shard()?;
        let streams = stream_key(self.prefix(), 0, "");
        let dead = dead_key(self.prefix(), 0, "");
        let mut names = std::collections::BTreeSet::new();
        for (pattern, strip) in [
            (format!("{streams}*"), &streams),
            (format!("{dead}*"), &dead),
        ] {
            let mut cursor = 0u64;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .arg("TYPE")
                    .arg("stream");
                let (next, keys): (u64, Vec<String>) = self
                    .inner
                    .conn
                    .query(&cmd, "SCAN")
                    .await
                    .map_err(Failure::into_queue)?;
                names.extend(
                    keys.iter()
                        .filter_map(|k| k.strip_prefix(strip.as_str()))
                        .filter(|name| !name.is_empty())
                        .map(str::to_owned),
                );
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The state of `queue`: its depth, dead letters, oldest request, consumer groups and
    /// their consumers. A few commands (`XLEN`, `XRANGE`, `XINFO`), none of which blocks Redis.
    pub async fn stats(&self, queue: &str) -> Result<QueueStats> {
        self.one_shard()?;
        let conn = &self.inner.conn;
        let key = stream_key(self.prefix(), 0, queue);
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(&key);
        pipe.cmd("XLEN").arg(&key);
        pipe.cmd("XLEN").arg(dead_key(self.prefix(), 0, queue));
        pipe.cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        let (exists, depth, dead_letters, oldest): (bool, u64, u64, Value) = conn
            .pipeline(&pipe, "XLEN")
            .await
            .map_err(Failure::into_queue)?;
        let oldest_enqueued_at = entry_list(oldest)
            .first()
            .and_then(|entry| id_time(&entry.id));
        let mut groups = Vec::new();
        if exists {
            let mut cmd = redis::cmd("XINFO");
            cmd.arg("GROUPS").arg(&key);
            let reply: StreamInfoGroupsReply = conn
                .query(&cmd, "XINFO GROUPS")
                .await
                .map_err(Failure::into_queue)?;
            for group in reply.groups {
                let mut cmd = redis::cmd("XINFO");
                cmd.arg("CONSUMERS").arg(&key).arg(&group.name);
                let consumers: StreamInfoConsumersReply = conn
                    .query(&cmd, "XINFO CONSUMERS")
                    .await
                    .map_err(Failure::into_queue)?;
                groups.push(GroupStats {
                    name: group.name,
                    pending: to_u64(group.pending),
                    lag: group.lag.map(to_u64),
                    last_delivered_id: group.last_delivered_id,
                    consumers: consumers
                        .consumers
                        .into_iter()
                        .map(|c| ConsumerStats {
                            name: c.name,
                            pending: to_u64(c.pending),
                            idle: Duration::from_millis(to_u64(c.idle)),
                        })
                        .collect(),
                });
            }
        }
        Ok(QueueStats {
            queue: queue.to_owned(),
            depth,
            dead_letters,
            oldest_enqueued_at,
            groups,
        })
    }

    /// The dead letter of `queue` with this id, if there is one.
    pub async fn find_dead_letter(&self, queue: &str, id: &str) -> Result<Option<RedisDeadLetter>> {
        self.one_shard()?;
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(dead_key(self.prefix(), 0, queue)).arg(id).arg(id);
        Ok(self.read_dead_letters(&cmd).await?.into_iter().next())
    }

    /// Up to `count` dead letters of `queue`, oldest first, starting after the dead letter
    /// `after` (from the oldest when `None`). Pass the last id of a page to get the next one:
    /// a walk through a dead-letter stream that ids make resumable.
    pub async fn dead_letter_page(
        &self,
        queue: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<RedisDeadLetter>> {
        self.one_shard()?;
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(dead_key(self.prefix(), 0, queue))
            .arg(after.map_or_else(|| "-".to_owned(), |id| format!("({id}")))
            .arg("+")
            .arg("COUNT")
            .arg(count.max(1));
        self.read_dead_letters(&cmd).await
    }

    pub(super) async fn read_dead_letters(&self, cmd: &redis::Cmd) -> Result<Vec<RedisDeadLetter>> {
        let reply: Value = self
            .inner
            .conn
            .query(cmd, "XRANGE")
            .await
            .map_err(Failure::into_queue)?;
        let limit = self.inner.options.max_message_bytes;
        Ok(entry_list(reply)
            .into_iter()
            .map(|entry| RedisDeadLetter::from_entry(entry, limit))
            .collect())
    }

    /// Puts the message of the dead letter `id` of `queue` back on the queue, as a new message
    /// (first delivery), and removes the dead letter, in one atomic step: a dead letter is
    /// replayed at most once, even by two operators at a time. The refresh then runs like any
    /// other; if the key was written since, the worker skips it.
    pub async fn replay_dead_letter(&self, queue: &str, id: &str) -> Result<Replay> {
        self.one_shard()?;
        let script = Script::new(REPLAY_LUA);
        let mut invocation = script.key(dead_key(self.prefix(), 0, queue));
        invocation
            .key(stream_key(self.prefix(), 0, queue))
            .arg(id)
            .arg(self.inner.options.max_len);
        let reply: i64 = self
            .inner
            .conn
            .script(&invocation, "replay script")
            .await
            .map_err(Failure::into_queue)?;
        Ok(match reply {
            1 => Replay::Replayed,
            -1 => Replay::NoMessage,
            _ => Replay::NotFound,
        })
    }

    /// Removes the dead letters `ids` of `queue` (`XDEL`); returns how many existed.
    pub async fn remove_dead_letters(&self, queue: &str, ids: &[String]) -> Result<u64> {
        self.one_shard()?;
        if ids.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(dead_key(self.prefix(), 0, queue)).arg(ids);
        self.inner
            .conn
            .query(&cmd, "XDEL")
            .await
            .map_err(Failure::into_queue)
    }
}

#[cfg(test)]
mod tests {
    use super::super::replies::MESSAGE_FIELD;
    use super::*;
    use crate::redis_support::{lua_constant, lua_string};

    #[test]
    fn the_script_replays_the_field_requests_are_read_from() {
        assert_eq!(
            lua_constant(REPLAY_LUA, "MESSAGE"),
            lua_string(MESSAGE_FIELD)
        );
    }

    #[test]
    fn stream_ids_carry_their_time() {
        assert_eq!(
            id_time("1700000000123-4"),
            Some(Timestamp::from_millis(1_700_000_000_123))
        );
        assert_eq!(id_time("garbage"), None);
        assert_eq!(id_time("x-1"), None);
    }
}
