//! What operators read and do besides the workers: the queues under a prefix, a queue's depth,
//! consumer groups and consumers ([`RedisQueue::stats`]), and the dead letters one by one
//! (find, page through, replay with `replay.lua`, remove).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply};
use redis::{Script, Value};

use super::dead_letters::{RedisDeadLetter, id_order};
use super::replies::entry_list;
use super::{RedisQueue, dead_key, shard_tag, stream_key};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::redis_support::{BACKEND, Failure};

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
    /// Requests in the queue's streams not yet acknowledged: waiting, or delivered and running.
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
    /// Redis cannot tell for one of the queue's shards).
    pub lag: Option<u64>,
    /// The stream id of the last request delivered to the group (on a queue spread over
    /// several shards, the latest of the shards').
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
    /// A dead letter's id as this queue's methods give and take it: its id in the dead-letter
    /// stream, prefixed with its shard (`<shard>/<stream id>`) when the queue is spread over
    /// several (stream ids of different shards may be equal).
    pub(super) fn dead_letter_id(&self, shard: usize, id: &str) -> String {
        match self.shards() {
            1 => id.to_owned(),
            _ => format!("{shard}/{id}"),
        }
    }

    /// The shard and the stream id of `id`, a dead-letter id of this queue.
    fn parse_dead_letter_id<'a>(&self, id: &'a str) -> Result<(usize, &'a str)> {
        let shards = self.shards();
        if shards == 1 {
            return Ok((0, id));
        }
        let parsed = id
            .split_once('/')
            .and_then(|(shard, rest)| Some((shard.parse::<usize>().ok()?, rest)));
        match parsed {
            Some((shard, rest)) if shard < shards && !rest.is_empty() => Ok((shard, rest)),
            _ => Err(Error::queue(
                BACKEND,
                format!(
                    "`{id}` is not a dead-letter id of this queue: it is spread over {shards} \
                     shards, and its dead-letter ids read `<shard>/<stream id>` (shards 0 to {})",
                    shards - 1
                ),
            )),
        }
    }

    /// The names of the queues under this queue's prefix that have a stream or a dead-letter
    /// stream in Redis (in any shard), sorted. Uses `SCAN`, so it never blocks Redis; on a
    /// Redis Cluster each shard's keys are scanned on the master that holds them.
    pub async fn queue_names(&self) -> Result<Vec<String>> {
        let mut names = BTreeSet::new();
        for shard in 0..self.shards() {
            let tag = shard_tag(self.prefix(), shard);
            for start in [
                stream_key(self.prefix(), shard, ""),
                dead_key(self.prefix(), shard, ""),
            ] {
                self.scan_names(&tag, &start, &mut names).await?;
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Adds to `names` what follows `start` in the stream keys that start with it, scanning
    /// the node that holds `tag`'s slot.
    async fn scan_names(&self, tag: &str, start: &str, names: &mut BTreeSet<String>) -> Result<()> {
        let pattern = format!("{}*", glob_escape(start));
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
                .query_at(&cmd, tag, "SCAN")
                .await
                .map_err(Failure::into_queue)?;
            names.extend(
                keys.iter()
                    .filter_map(|k| k.strip_prefix(start))
                    .filter(|name| !name.is_empty())
                    .map(str::to_owned),
            );
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// The state of `queue`: its depth, dead letters, oldest request, consumer groups and
    /// their consumers, over all its shards. A few commands per shard (`XLEN`, `XRANGE`,
    /// `XINFO`), none of which blocks Redis.
    pub async fn stats(&self, queue: &str) -> Result<QueueStats> {
        let mut stats = QueueStats {
            queue: queue.to_owned(),
            depth: 0,
            dead_letters: 0,
            oldest_enqueued_at: None,
            groups: Vec::new(),
        };
        for shard in 0..self.shards() {
            self.add_shard_stats(shard, &mut stats).await?;
        }
        Ok(stats)
    }

    /// Adds one shard's depth, dead letters, oldest request and groups to `stats`.
    async fn add_shard_stats(&self, shard: usize, stats: &mut QueueStats) -> Result<()> {
        let conn = &self.inner.conn;
        let key = stream_key(self.prefix(), shard, &stats.queue);
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(&key);
        pipe.cmd("XLEN").arg(&key);
        pipe.cmd("XLEN")
            .arg(dead_key(self.prefix(), shard, &stats.queue));
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
        stats.depth += depth;
        stats.dead_letters += dead_letters;
        let oldest = entry_list(oldest)
            .first()
            .and_then(|entry| id_time(&entry.id));
        stats.oldest_enqueued_at = match (stats.oldest_enqueued_at, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if !exists {
            return Ok(());
        }
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
            let group = GroupStats {
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
            };
            merge_group(&mut stats.groups, group);
        }
        Ok(())
    }

    /// The dead letter of `queue` with this id, if there is one.
    ///
    /// # Errors
    ///
    /// When `id` cannot be one of this queue's (see [`RedisDeadLetter::id`]), or Redis fails.
    pub async fn find_dead_letter(&self, queue: &str, id: &str) -> Result<Option<RedisDeadLetter>> {
        let (shard, raw) = self.parse_dead_letter_id(id)?;
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(dead_key(self.prefix(), shard, queue))
            .arg(raw)
            .arg(raw);
        let found = self.read_dead_letters(&cmd).await?.into_iter().next();
        Ok(found.map(|letter| self.named(shard, letter)))
    }

    /// Up to `count` dead letters of `queue`, oldest first (over all its shards), starting
    /// after the dead letter `after` (from the oldest when `None`). Pass the last id of a page
    /// to get the next one: a walk through the dead letters that ids make resumable.
    ///
    /// # Errors
    ///
    /// When `after` cannot be one of this queue's ids, or Redis fails.
    pub async fn dead_letter_page(
        &self,
        queue: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<RedisDeadLetter>> {
        let after = after.map(|id| self.parse_dead_letter_id(id)).transpose()?;
        let count = count.max(1);
        let mut page = Vec::new();
        for shard in 0..self.shards() {
            // Dead letters are ordered by stream id, then shard: a later shard's dead letter
            // with the same stream id as `after` comes after it.
            let start = match after {
                None => "-".to_owned(),
                Some((of, id)) if shard > of => id.to_owned(),
                Some((_, id)) => format!("({id}"),
            };
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(dead_key(self.prefix(), shard, queue))
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(count);
            let letters = self.read_dead_letters(&cmd).await?;
            page.extend(letters.into_iter().map(|letter| (shard, letter)));
        }
        page.sort_by_key(|(shard, letter)| (id_order(&letter.id), *shard));
        page.truncate(count);
        Ok(page
            .into_iter()
            .map(|(shard, letter)| self.named(shard, letter))
            .collect())
    }

    /// The dead letters `cmd` reads, their ids as the stream has them.
    async fn read_dead_letters(&self, cmd: &redis::Cmd) -> Result<Vec<RedisDeadLetter>> {
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

    /// `letter` of `shard`, its id as this queue's methods take it.
    pub(super) fn named(&self, shard: usize, mut letter: RedisDeadLetter) -> RedisDeadLetter {
        letter.id = self.dead_letter_id(shard, &letter.id);
        letter
    }

    /// Puts the message of the dead letter `id` of `queue` back on the queue (on the shard it
    /// came from), as a new message (first delivery), and removes the dead letter, in one
    /// atomic step: a dead letter is replayed at most once, even by two operators at a time.
    /// The refresh then runs like any other; if the key was written since, the worker skips
    /// it.
    ///
    /// # Errors
    ///
    /// When `id` cannot be one of this queue's, or Redis fails.
    pub async fn replay_dead_letter(&self, queue: &str, id: &str) -> Result<Replay> {
        let (shard, raw) = self.parse_dead_letter_id(id)?;
        let script = Script::new(REPLAY_LUA);
        let mut invocation = script.key(dead_key(self.prefix(), shard, queue));
        invocation
            .key(stream_key(self.prefix(), shard, queue))
            .arg(raw)
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

    /// Removes the dead letters `ids` of `queue` (`XDEL`, one per shard); returns how many
    /// existed.
    ///
    /// # Errors
    ///
    /// When one of `ids` cannot be one of this queue's (nothing is removed then), or Redis
    /// fails.
    pub async fn remove_dead_letters(&self, queue: &str, ids: &[String]) -> Result<u64> {
        let mut by_shard: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for id in ids {
            let (shard, raw) = self.parse_dead_letter_id(id)?;
            by_shard.entry(shard).or_default().push(raw);
        }
        let mut removed = 0;
        for (shard, raw) in by_shard {
            let mut cmd = redis::cmd("XDEL");
            cmd.arg(dead_key(self.prefix(), shard, queue)).arg(raw);
            let n: u64 = self
                .inner
                .conn
                .query(&cmd, "XDEL")
                .await
                .map_err(Failure::into_queue)?;
            removed += n;
        }
        Ok(removed)
    }
}

/// Adds one shard's view of a consumer group to a queue's groups: counts add up, a consumer
/// seen on several shards is one consumer (idle since its latest activity on any), and the
/// last delivered id is the latest of the shards'.
fn merge_group(groups: &mut Vec<GroupStats>, group: GroupStats) {
    let Some(into) = groups.iter_mut().find(|g| g.name == group.name) else {
        groups.push(group);
        return;
    };
    into.pending += group.pending;
    into.lag = into.lag.zip(group.lag).map(|(a, b)| a + b);
    if id_order(&group.last_delivered_id) > id_order(&into.last_delivered_id) {
        into.last_delivered_id = group.last_delivered_id;
    }
    for consumer in group.consumers {
        match into.consumers.iter_mut().find(|c| c.name == consumer.name) {
            Some(known) => {
                known.pending += consumer.pending;
                known.idle = known.idle.min(consumer.idle);
            }
            None => into.consumers.push(consumer),
        }
    }
}

/// `text` with Redis glob patterns' special characters escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
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
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("{a:queue}:stream:"), "{a:queue}:stream:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn a_group_on_several_shards_is_one_group() {
        let consumer = |name: &str, pending, idle| ConsumerStats {
            name: name.to_owned(),
            pending,
            idle: Duration::from_millis(idle),
        };
        let group = |pending, lag, last: &str, consumers| GroupStats {
            name: "workers".to_owned(),
            pending,
            lag,
            last_delivered_id: last.to_owned(),
            consumers,
        };
        let mut groups = Vec::new();
        merge_group(
            &mut groups,
            group(2, Some(1), "20-1", vec![consumer("a", 2, 500)]),
        );
        merge_group(
            &mut groups,
            group(
                3,
                Some(4),
                "100-0",
                vec![consumer("a", 1, 50), consumer("b", 2, 9)],
            ),
        );
        merge_group(&mut groups, group(0, None, "3-0", Vec::new()));
        assert_eq!(
            groups,
            [group(
                5,
                None,
                "100-0",
                vec![consumer("a", 3, 50), consumer("b", 2, 9)]
            )]
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
