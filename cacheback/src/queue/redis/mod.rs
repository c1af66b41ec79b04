//! [`RedisQueue`]: refresh requests on Redis Streams, drained by worker processes (feature
//! `redis`).
//!
//! The files: this one holds the queue and the stream names; `builder.rs` its builder and
//! constructors; `receive.rs` the
//! group set-up, take-overs and reads; `acks.rs` acknowledgements; `dead_letters.rs` and
//! `hand_back.rs` those two operations with their Lua scripts (`dead_letter.lua`,
//! `hand_back.lua`); `inspect.rs` what operators read and do (queue stats, dead letters one by
//! one, replay with `replay.lua`); `replies.rs` the decoding of the stream commands' replies.

mod acks;
mod builder;
mod dead_letters;
mod hand_back;
mod inspect;
mod receive;
mod replies;

pub use self::builder::RedisQueueBuilder;
pub use self::dead_letters::RedisDeadLetter;
pub use self::inspect::{ConsumerStats, GroupStats, QueueStats, Replay};

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::{BoxFuture, join_all};
use redis::{Script, Value};

use self::acks::PendingAck;
use self::receive::ReadState;

use crate::error::{Error, Result};
use crate::queue::{Delivery, EnqueueError, Queue, Receipt, RefreshRequest};
use crate::redis_support::{BACKEND, Conn, ConnOptions, Failure};

/// The prefix of a queue used without a client.
const DEFAULT_PREFIX: &str = "cacheback";

/// Default approximate bound on a stream's length (`XADD ... MAXLEN ~`).
pub(crate) const DEFAULT_MAX_LEN: u64 = 1_000_000;
/// Default approximate bound on a dead-letter stream's length.
pub(crate) const DEFAULT_DEAD_LETTER_MAX_LEN: u64 = 100_000;
/// Default time a delivered, unacknowledged message waits before another worker takes it over.
pub(crate) const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default longest wait of one `receive` (`XREADGROUP ... BLOCK`).
pub(crate) const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default number of shards of each queue on a Redis Cluster (one Redis: 1).
pub(crate) const DEFAULT_CLUSTER_SHARDS: usize = 8;
/// The most shards a queue may have.
const MAX_SHARDS: usize = 1024;

/// A refresh queue on Redis Streams, shared by the web processes (which enqueue) and the
/// worker processes (which drain it).
///
/// # Layout
///
/// Each queue name ([`Policy::queue`](crate::Policy::queue)) is a stream, or with
/// [`shards`](RedisQueueBuilder::shards) `n > 1` (the default on a Redis Cluster) `n` streams;
/// each stream has a dead-letter stream beside it:
///
/// | Redis key | holds |
/// |---|---|
/// | `{<prefix>:queue}:stream:<name>` | one entry per request: field `m` = [`RefreshRequest::encode`](crate::queue::RefreshRequest::encode) |
/// | `{<prefix>:queue}:dead:<name>` | dead letters: `reason`, `attempt`, `id`, `stream`, `job` and the original fields (`m` included) |
/// | `{<prefix>:queue:<i>}:stream:<name>`, `{<prefix>:queue:<i>}:dead:<name>` | the same for shard `i` (1 to `n - 1`; shard 0 is the pair above) |
///
/// The streams of one shard share a hash tag, so one `XREADGROUP` drains all the queues of a
/// shard, and a dead letter moves within one slot. On a Redis Cluster the shards' tags fall in
/// different slots, so requests spread over the masters, those of one busy queue too;
/// `enqueue` takes the shards in turn.
///
/// # Delivery
///
/// - `enqueue`: `XADD <stream> MAXLEN ~ <max_len> * m <bytes>` (one round trip, bounded by the
///   command timeout; [`EnqueueError::Unavailable`](crate::queue::EnqueueError::Unavailable) when Redis is down).
/// - `receive`: the consumer group (default `cacheback-workers`) is created on first use
///   (`XGROUP CREATE ... 0 MKSTREAM`, so requests enqueued before any worker started are
///   delivered too, and again after a Redis restart wiped it). Messages idle in another
///   consumer's pending list for longer than the visibility timeout are taken over first
///   (`XAUTOCLAIM`), with their delivery count (`XPENDING`) as [`Delivery::attempt`](crate::queue::Delivery::attempt); then new
///   messages are read with `XREADGROUP ... BLOCK` on a connection of their own, so a blocked
///   read never delays the other commands. With several shards, `receive` first reads every
///   shard without blocking (starting one shard further each time), and only when all are
///   empty blocks on one of them for at most 50 ms: an idle worker costs one command per
///   shard every 50 ms, and a request waits at most that long for an idle worker.
/// - `ack`: `XACK` + `XDEL` (one round trip, shared by the acks that arrive meanwhile): the
///   stream holds only unfinished requests, so `MAXLEN` trimming only bites on a real backlog.
///   Acks of several shards go out in one pipeline per shard, at the same time.
/// - `dead_letter`: a script copies the message (raw, even when it did not decode) with the
///   reason to the dead-letter stream, then acknowledges and deletes it.
///
/// A receive that is dropped while blocked may leave messages in this consumer's pending list;
/// like those of a worker that died, they are redelivered after the visibility timeout. Set the
/// visibility timeout above the jobs' `fetch_timeout`, or a slow refresh is run twice.
///
/// On a Redis Cluster (`redis+cluster://host:port,host:port` or [`RedisQueue::cluster`]) every
/// command touches one slot; redirections and failovers are followed within the command
/// timeout (see [`RedisStore::cluster`](crate::RedisStore::cluster)). Every process of a fleet
/// must use the same number of shards: a worker drains only the shards it knows of.
///
/// ```no_run
/// use cacheback::RedisQueue;
/// use std::time::Duration;
///
/// # fn main() -> cacheback::Result<()> {
/// // A worker pool that drains two queues. No `.prefix(...)`: the queue takes the prefix of
/// // the client it is given to, so it cannot differ from it.
/// let queue = RedisQueue::builder("redis://127.0.0.1:6379")
///     .queues(["default", "reports"])
///     .visibility_timeout(Duration::from_secs(120))
///     .build()?;
/// # let _ = queue;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisQueue {
    inner: Arc<Inner>,
}

struct Inner {
    /// Multiplexed: enqueue, ack, dead letters, group set-up, take-overs.
    conn: Conn,
    /// Dedicated to `XREADGROUP ... BLOCK`.
    blocking: Conn,
    /// One blocking read at a time on the dedicated connection.
    read_lock: tokio::sync::Mutex<ReadState>,
    /// The prefix given to the builder, if any; else the client's (see [`Queue::bind_prefix`]).
    explicit_prefix: Option<String>,
    /// The prefix and the streams under it, fixed by the first client bound (or by first use).
    bound: OnceLock<Bound>,
    /// The queue names this process drains.
    names: Vec<String>,
    group: String,
    consumer: String,
    groups_ready: AtomicBool,
    options: Options,
    enqueued: AtomicU64,
    /// The shard the next enqueue goes to (modulo the number of shards).
    next_shard: AtomicU64,
    dead_letter: Script,
    hand_back: Script,
    /// Acknowledgements waiting for the next flush, and the lock of whoever flushes.
    acks: std::sync::Mutex<Vec<PendingAck>>,
    ack_flush: tokio::sync::Mutex<()>,
}

/// The prefix in use and the stream keys under it.
#[derive(Debug)]
struct Bound {
    prefix: String,
    /// The streams this process drains: every queue name in every shard, shard by shard.
    streams: Vec<Stream>,
}

impl Bound {
    fn new(prefix: &str, names: &[String], shards: usize) -> Self {
        Bound {
            prefix: prefix.to_owned(),
            streams: (0..shards)
                .flat_map(|shard| {
                    names.iter().map(move |name| Stream {
                        name: name.clone(),
                        shard,
                        key: stream_key(prefix, shard, name),
                    })
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone)]
struct Stream {
    name: String,
    shard: usize,
    key: String,
}

#[derive(Debug, Clone, Copy)]
struct Options {
    conn: ConnOptions,
    poll_interval: Duration,
    visibility_timeout: Duration,
    max_len: u64,
    dead_letter_max_len: u64,
    max_message_bytes: usize,
    shards: usize,
}

impl fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisQueue")
            .field("prefix", &inner.bound.get().map(|b| &b.prefix))
            .field("group", &inner.group)
            .field("consumer", &inner.consumer)
            .field("queues", &inner.names)
            .field("options", &inner.options)
            .finish_non_exhaustive()
    }
}

/// Queue, group and consumer names: 1 to 128 printable ASCII bytes, no braces.
fn validate_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!(
            "Redis queue/group/consumer name `{name}` must be 1 to 128 bytes"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
    {
        return Err(format!(
            "Redis queue/group/consumer name `{name}` may only hold printable ASCII without braces"
        ));
    }
    Ok(())
}

/// The hash tag of a shard's streams (shard 0 keeps the tag of an unsharded queue).
fn shard_tag(prefix: &str, shard: usize) -> String {
    match shard {
        0 => format!("{{{prefix}:queue}}"),
        _ => format!("{{{prefix}:queue:{shard}}}"),
    }
}

fn stream_key(prefix: &str, shard: usize, name: &str) -> String {
    format!("{}:stream:{name}", shard_tag(prefix, shard))
}

fn dead_key(prefix: &str, shard: usize, name: &str) -> String {
    format!("{}:dead:{name}", shard_tag(prefix, shard))
}

impl RedisQueue {
    /// The prefix and streams in use: those of the client the queue was bound to, else (a
    /// queue used on its own) the builder's prefix or `"cacheback"`.
    fn bound(&self) -> &Bound {
        let inner = &*self.inner;
        inner.bound.get_or_init(|| {
            let prefix = inner.explicit_prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
            Bound::new(prefix, &inner.names, inner.options.shards)
        })
    }

    /// The prefix the queue's streams live under.
    pub fn prefix(&self) -> &str {
        &self.bound().prefix
    }

    fn do_bind_prefix(&self, prefix: &str) -> Result<()> {
        let inner = &*self.inner;
        let wanted = inner.explicit_prefix.as_deref().unwrap_or(prefix);
        let bound = inner
            .bound
            .get_or_init(|| Bound::new(wanted, &inner.names, inner.options.shards));
        if bound.prefix == prefix {
            return Ok(());
        }
        let why = match &inner.explicit_prefix {
            Some(own) => format!("the RedisQueue was built with prefix `{own}`"),
            None => format!(
                "the RedisQueue is already in use under prefix `{}`",
                bound.prefix
            ),
        };
        Err(Error::config(format!(
            "{why}, but the client's prefix is `{prefix}`: its refresh requests would go to \
             another application's streams. Build the queue without `.prefix(...)` (it takes \
             the client's) or with the same prefix"
        )))
    }

    /// This process's consumer name.
    pub fn consumer(&self) -> &str {
        &self.inner.consumer
    }

    /// Requests this handle enqueued so far.
    pub fn enqueued(&self) -> u64 {
        self.inner.enqueued.load(Ordering::Relaxed)
    }

    /// Checks that Redis answers (`PING`), for readiness probes.
    pub async fn ping(&self) -> Result<()> {
        let _: Value = self
            .inner
            .conn
            .query(&redis::cmd("PING"), "PING")
            .await
            .map_err(Failure::into_queue)?;
        Ok(())
    }

    /// Requests in the streams of `queue` not yet acknowledged (waiting or being processed).
    pub async fn len(&self, queue: &str) -> Result<u64> {
        let mut total = 0;
        for shard in 0..self.inner.options.shards {
            let mut cmd = redis::cmd("XLEN");
            cmd.arg(stream_key(self.prefix(), shard, queue));
            let n: u64 = self
                .inner
                .conn
                .query(&cmd, "XLEN")
                .await
                .map_err(Failure::into_queue)?;
            total += n;
        }
        Ok(total)
    }

    /// Requests of `queue` delivered to a worker and not yet acknowledged.
    pub async fn pending(&self, queue: &str) -> Result<u64> {
        let mut total = 0;
        for shard in 0..self.inner.options.shards {
            let mut cmd = redis::cmd("XPENDING");
            cmd.arg(stream_key(self.prefix(), shard, queue))
                .arg(&self.inner.group);
            total += match self.inner.conn.query(&cmd, "XPENDING").await {
                Ok(reply) => replies::pending_count(reply),
                Err(e) if e.code() == Some("NOGROUP") => 0,
                Err(e) => return Err(e.into_queue()),
            };
        }
        Ok(total)
    }

    /// How many streams each queue is spread over (see [`RedisQueueBuilder::shards`]).
    pub fn shards(&self) -> usize {
        self.inner.options.shards
    }

    async fn do_enqueue(&self, request: RefreshRequest) -> std::result::Result<(), EnqueueError> {
        let cmd = self.xadd(&request)?;
        let _: Value = self
            .inner
            .conn
            .query(&cmd, "XADD")
            .await
            .map_err(|e| EnqueueError::Unavailable(e.into_queue()))?;
        self.inner.enqueued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Several requests in one pipeline of `XADD`s on one Redis; on a cluster, where a
    /// pipeline must stay in one hash slot, one `XADD` each (sent together all the same).
    async fn do_enqueue_many(
        &self,
        requests: Vec<RefreshRequest>,
    ) -> Vec<std::result::Result<(), EnqueueError>> {
        if self.inner.conn.is_cluster() {
            return join_all(requests.into_iter().map(|r| self.do_enqueue(r))).await;
        }
        let mut pipe = redis::pipe();
        let mut results = Vec::with_capacity(requests.len());
        for request in &requests {
            results.push(self.xadd(request).map(|cmd| {
                pipe.add_command(cmd).ignore();
            }));
        }
        if pipe.is_empty() {
            return results;
        }
        let sent: std::result::Result<(), Failure> = self.inner.conn.pipeline(&pipe, "XADD").await;
        match sent {
            Ok(()) => {
                let n = results.iter().filter(|r| r.is_ok()).count() as u64;
                self.inner.enqueued.fetch_add(n, Ordering::Relaxed);
            }
            Err(failure) => {
                let error = failure.into_queue();
                for result in &mut results {
                    if result.is_ok() {
                        *result = Err(EnqueueError::Unavailable(error.clone()));
                    }
                }
            }
        }
        results
    }

    /// The `XADD` of `request`, to the next shard of its queue.
    fn xadd(&self, request: &RefreshRequest) -> std::result::Result<redis::Cmd, EnqueueError> {
        let inner = &*self.inner;
        validate_name(&request.queue)
            .map_err(|m| EnqueueError::Unavailable(Error::queue(BACKEND, m)))?;
        let bytes = request.encode().map_err(EnqueueError::Unavailable)?;
        let shards = inner.options.shards as u64;
        let shard = inner.next_shard.fetch_add(1, Ordering::Relaxed) % shards;
        let shard = usize::try_from(shard).unwrap_or(0);
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream_key(self.prefix(), shard, &request.queue))
            .arg("MAXLEN")
            .arg("~")
            .arg(inner.options.max_len)
            .arg("*")
            .arg(replies::MESSAGE_FIELD)
            .arg(bytes);
        Ok(cmd)
    }

    /// The stream of a delivery (receipts are `<shard>/<queue name>/<message id>`): its key,
    /// shard, queue name and the message id.
    fn stream_of<'a>(&'a self, receipt: &'a Receipt) -> Result<(String, usize, &'a str, &'a str)> {
        let not_ours = || Error::queue(BACKEND, "not a RedisQueue receipt");
        let (shard, rest) = receipt.id().split_once('/').ok_or_else(not_ours)?;
        let shard: usize = shard.parse().map_err(|_| not_ours())?;
        let (name, id) = rest.rsplit_once('/').ok_or_else(not_ours)?;
        if shard >= self.inner.options.shards {
            return Err(not_ours());
        }
        Ok((stream_key(self.prefix(), shard, name), shard, name, id))
    }
}

impl Queue for RedisQueue {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn bind_prefix(&self, prefix: &str) -> Result<()> {
        self.do_bind_prefix(prefix)
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(RedisQueue::ping(self))
    }

    fn enqueue(
        &self,
        request: RefreshRequest,
    ) -> BoxFuture<'_, std::result::Result<(), EnqueueError>> {
        Box::pin(self.do_enqueue(request))
    }

    fn enqueue_many(
        &self,
        requests: Vec<RefreshRequest>,
    ) -> BoxFuture<'_, Vec<std::result::Result<(), EnqueueError>>> {
        Box::pin(self.do_enqueue_many(requests))
    }

    fn receive(&self, max: usize) -> BoxFuture<'_, Result<Vec<Delivery>>> {
        Box::pin(self.do_receive(max))
    }

    fn ack<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.do_ack(delivery))
    }

    fn dead_letter<'a>(
        &'a self,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.do_dead_letter(delivery, reason))
    }

    fn hand_back_held(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.do_hand_back_held())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_of_a_shard_share_a_hash_tag() {
        assert_eq!(
            stream_key("app", 0, "default"),
            "{app:queue}:stream:default"
        );
        assert_eq!(dead_key("app", 0, "default"), "{app:queue}:dead:default");
        assert_eq!(stream_key("app", 3, "a/b"), "{app:queue:3}:stream:a/b");
        assert_eq!(dead_key("app", 3, "a/b"), "{app:queue:3}:dead:a/b");
    }

    #[tokio::test]
    async fn receipts_name_the_shard_the_queue_and_the_message() {
        let queue = RedisQueue::builder("redis://127.0.0.1:1")
            .prefix("app")
            .shards(4)
            .build()
            .unwrap();
        let receipt = Receipt::new("2/a/b/5-0");
        let (key, shard, name, id) = queue.stream_of(&receipt).unwrap();
        assert_eq!(
            (key.as_str(), shard, name, id),
            ("{app:queue:2}:stream:a/b", 2, "a/b", "5-0")
        );
        for bad in ["a/5-0", "4/a/5-0", "x", "1/5-0"] {
            assert!(queue.stream_of(&Receipt::new(bad)).is_err(), "{bad}");
        }
        assert!(
            RedisQueue::builder("redis://127.0.0.1:1")
                .shards(0)
                .build()
                .is_err()
        );
        assert_eq!(
            RedisQueue::from_url("redis+cluster://127.0.0.1:1")
                .unwrap()
                .shards(),
            DEFAULT_CLUSTER_SHARDS
        );
        assert_eq!(
            RedisQueue::from_url("redis://127.0.0.1:1")
                .unwrap()
                .shards(),
            1
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("reports-2").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name("a{b}").is_err());
    }
}
