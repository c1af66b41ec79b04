//! Receiving: the consumer group set-up, take-overs of messages idle past the visibility
//! timeout (`XAUTOCLAIM`), and reads of new messages (`XREADGROUP`): blocking on one shard,
//! or with several shards a sweep of them all before a short blocking read of one.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;
use tracing::{debug, warn};

use super::replies::{
    MESSAGE_FIELD, PRIOR_DELIVERIES_FIELD, StreamEntry, auto_claimed, delivery_count, read_reply,
};
use super::{RedisQueue, Stream};
use crate::error::Result;
use crate::queue::{Delivery, MalformedMessage, Receipt, RefreshRequest};
use crate::redis_support::{Conn, Failure};

/// The longest blocking read of one shard when a queue has several: a request that lands in
/// another shard meanwhile waits at most this long for an idle worker.
const SHARD_BLOCK: Duration = Duration::from_millis(50);

/// What the receiving side remembers between receives (behind the read lock).
#[derive(Default)]
pub(super) struct ReadState {
    last_takeover: Option<tokio::time::Instant>,
    /// Per drained stream, where the next `XAUTOCLAIM` scan resumes (`XAUTOCLAIM` scans a
    /// bounded part of the pending list per call: restarting at `0-0` every time would never
    /// reach idle messages behind many busy ones).
    cursors: Vec<String>,
    /// The shard the next sweep starts at (so that no shard is always read last).
    next_shard: usize,
}

impl RedisQueue {
    async fn ensure_groups(&self) -> std::result::Result<(), Failure> {
        let inner = &*self.inner;
        if inner.groups_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        for stream in &self.bound().streams {
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("CREATE")
                .arg(&stream.key)
                .arg(&inner.group)
                .arg("0")
                .arg("MKSTREAM");
            match inner.conn.query::<Value>(&cmd, "XGROUP CREATE").await {
                Ok(_) => {
                    debug!(stream = %stream.key, group = %inner.group, "consumer group created")
                }
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        inner.groups_ready.store(true, Ordering::Release);
        Ok(())
    }

    pub(super) async fn do_receive(&self, max: usize) -> Result<Vec<Delivery>> {
        let max = max.max(1);
        let mut state = self.inner.read_lock.lock().await;
        let mut retried = false;
        loop {
            match self.receive_once(&mut state, max).await {
                Ok(deliveries) => return Ok(deliveries),
                // The stream or the group is gone (Redis restarted, or someone deleted it):
                // set it up again, once.
                Err(e) if e.code() == Some("NOGROUP") && !retried => {
                    warn!("consumer group missing (Redis restarted?); creating it again");
                    self.inner.groups_ready.store(false, Ordering::Release);
                    retried = true;
                }
                Err(e) => {
                    if e.code() == Some("NOGROUP") {
                        self.inner.groups_ready.store(false, Ordering::Release);
                    }
                    return Err(e.into_queue());
                }
            }
        }
    }

    async fn receive_once(
        &self,
        state: &mut ReadState,
        max: usize,
    ) -> std::result::Result<Vec<Delivery>, Failure> {
        self.ensure_groups().await?;
        let options = &self.inner.options;
        let every = (options.visibility_timeout / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let now = tokio::time::Instant::now();
        if state.last_takeover.is_none_or(|at| now - at >= every) {
            state.last_takeover = Some(now);
            let taken = self.take_over(state, max).await?;
            if !taken.is_empty() {
                return Ok(taken);
            }
        }
        self.read_new(state, max).await
    }

    /// `XAUTOCLAIM`s messages idle past the visibility timeout, with their delivery counts.
    async fn take_over(
        &self,
        state: &mut ReadState,
        max: usize,
    ) -> std::result::Result<Vec<Delivery>, Failure> {
        let inner = &*self.inner;
        let streams = &self.bound().streams;
        state.cursors.resize(streams.len(), "0-0".to_owned());
        let idle = u64::try_from(inner.options.visibility_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for (stream, cursor) in streams.iter().zip(&mut state.cursors) {
            if out.len() >= max {
                break;
            }
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&stream.key)
                .arg(&inner.group)
                .arg(&inner.consumer)
                .arg(idle)
                .arg(cursor.as_str())
                .arg("COUNT")
                .arg(max - out.len());
            let Some(taken) = auto_claimed(inner.conn.query(&cmd, "XAUTOCLAIM").await?) else {
                continue;
            };
            *cursor = taken.cursor;
            if taken.entries.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for entry in &taken.entries {
                pipe.cmd("XPENDING")
                    .arg(&stream.key)
                    .arg(&inner.group)
                    .arg(&entry.id)
                    .arg(&entry.id)
                    .arg(1);
            }
            let counts: Vec<Value> = inner.conn.pipeline(&pipe, "XPENDING").await?;
            for (entry, count) in taken.entries.into_iter().zip(counts) {
                let attempt = delivery_count(count).unwrap_or(2);
                debug!(stream = %stream.key, id = %entry.id, attempt, "took over an unacknowledged message");
                out.push(self.delivery(stream, entry, attempt));
            }
        }
        Ok(out)
    }

    async fn read_new(
        &self,
        state: &mut ReadState,
        max: usize,
    ) -> std::result::Result<Vec<Delivery>, Failure> {
        let inner = &*self.inner;
        let shards = inner.options.shards;
        if shards == 1 {
            let block = inner.options.poll_interval;
            return self.read_shard(0, max, Some(block), &inner.blocking).await;
        }
        // A blocking read covers one slot only: sweep every shard without blocking first.
        let start = state.next_shard % shards;
        state.next_shard = (start + 1) % shards;
        let mut out = Vec::new();
        for shard in (start..shards).chain(0..start) {
            if out.len() >= max {
                break;
            }
            let read = self.read_shard(shard, max - out.len(), None, &inner.conn);
            out.extend(read.await?);
        }
        if !out.is_empty() {
            return Ok(out);
        }
        let block = inner.options.poll_interval.min(SHARD_BLOCK);
        self.read_shard(start, max, Some(block), &inner.blocking)
            .await
    }

    /// One `XREADGROUP` of the streams of `shard` (one hash tag), blocking up to `block`.
    async fn read_shard(
        &self,
        shard: usize,
        max: usize,
        block: Option<Duration>,
        conn: &Conn,
    ) -> std::result::Result<Vec<Delivery>, Failure> {
        let inner = &*self.inner;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&inner.group)
            .arg(&inner.consumer)
            .arg("COUNT")
            .arg(max);
        if let Some(block) = block {
            let ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
            cmd.arg("BLOCK").arg(ms);
        }
        cmd.arg("STREAMS");
        let streams: Vec<&Stream> = self
            .bound()
            .streams
            .iter()
            .filter(|s| s.shard == shard)
            .collect();
        for stream in &streams {
            cmd.arg(&stream.key);
        }
        for _ in &streams {
            cmd.arg(">");
        }
        let reply: Value = conn.query(&cmd, "XREADGROUP").await?;
        let mut out = Vec::new();
        for (key, entries) in read_reply(reply) {
            let Some(stream) = streams.iter().find(|s| s.key.as_bytes() == key) else {
                continue;
            };
            for entry in entries {
                out.push(self.delivery(stream, entry, 1));
            }
        }
        Ok(out)
    }

    fn delivery(&self, stream: &Stream, entry: StreamEntry, attempt: u32) -> Delivery {
        // Deliveries before the message was handed back by a stopping worker (see
        // `do_hand_back_held`): the delivery limit counts them too.
        let before = entry
            .field(PRIOR_DELIVERIES_FIELD)
            .and_then(|a| std::str::from_utf8(a).ok()?.parse::<u32>().ok())
            .unwrap_or(0);
        let attempt = attempt.saturating_add(before);
        let message = match entry.field(MESSAGE_FIELD) {
            Some(bytes) => RefreshRequest::decode(bytes, self.inner.options.max_message_bytes),
            None => Err(MalformedMessage::new(
                "stream entry has no `m` field (not written by cacheback)",
            )),
        };
        Delivery::new(
            message,
            attempt,
            Receipt::new(format!("{}/{}/{}", stream.shard, stream.name, entry.id)),
        )
    }
}
