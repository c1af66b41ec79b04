//! [`RedisQueue`]: refresh requests on Redis Streams, drained by worker processes (feature
//! `redis`).
//!
//! # Layout
//!
//! Each queue name ([`Policy::queue`](crate::Policy::queue)) is a stream; each stream has a
//! dead-letter stream beside it:
//!
//! | Redis key | holds |
//! |---|---|
//! | `{<prefix>:queue}:stream:<name>` | one entry per request: field `m` = [`RefreshRequest::encode`] |
//! | `{<prefix>:queue}:dead:<name>` | dead letters: `reason`, `attempt`, `id`, `stream`, `job` and the original fields (`m` included) |
//!
//! All streams of a prefix share one hash tag, so one `XREADGROUP` can drain several of them on
//! Redis Cluster too.
//!
//! # Delivery
//!
//! - `enqueue`: `XADD <stream> MAXLEN ~ <max_len> * m <bytes>` (one round trip, bounded by the
//!   command timeout; [`EnqueueError::Unavailable`] when Redis is down).
//! - `receive`: the consumer group (default `cacheback-workers`) is created on first use
//!   (`XGROUP CREATE ... 0 MKSTREAM`, so requests enqueued before any worker started are
//!   delivered too, and again after a Redis restart wiped it). Messages idle in another
//!   consumer's pending list for longer than the visibility timeout are taken over first
//!   (`XAUTOCLAIM`), with their delivery count (`XPENDING`) as [`Delivery::attempt`]; then new
//!   messages are read with `XREADGROUP ... BLOCK` on a connection of their own, so a blocked
//!   read never delays the other commands.
//! - `ack`: `XACK` + `XDEL` (one round trip, shared by the acks that arrive meanwhile): the
//!   stream holds only unfinished requests, so `MAXLEN` trimming only bites on a real backlog.
//! - `dead_letter`: a script copies the message (raw, even when it did not decode) with the
//!   reason to the dead-letter stream, then acknowledges and deletes it.
//!
//! A receive that is dropped while blocked may leave messages in this consumer's pending list;
//! like those of a worker that died, they are redelivered after the visibility timeout. Set the
//! visibility timeout above the jobs' `fetch_timeout`, or a slow refresh is run twice.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::{Client, Script, Value};
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::queue::{
    Delivery, EnqueueError, MAX_MESSAGE_BYTES, MalformedMessage, Queue, Receipt, RefreshRequest,
};
use crate::redis_support::{self, BACKEND, Conn, ConnOptions, Failure, bytes_of, u64_of};

/// The prefix of a queue used without a client.
const DEFAULT_PREFIX: &str = "cacheback";

/// Default approximate bound on a stream's length (`XADD ... MAXLEN ~`).
pub const DEFAULT_MAX_LEN: u64 = 1_000_000;
/// Default approximate bound on a dead-letter stream's length.
pub const DEFAULT_DEAD_LETTER_MAX_LEN: u64 = 100_000;
/// Default time a delivered, unacknowledged message waits before another worker takes it over.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default longest wait of one `receive` (`XREADGROUP ... BLOCK`).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// KEYS = stream, dead; ARGV = group, id, reason, attempt, dead max len, job.
const DEAD_LETTER_LUA: &str = r"
local found = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local fields = {'reason', ARGV[3], 'attempt', ARGV[4], 'id', ARGV[2], 'stream', KEYS[1], 'job', ARGV[6]}
if found[1] and found[1][2] then
  local original = found[1][2]
  for i = 1, #original, 2 do
    local name = original[i]
    if name ~= 'm' then
      name = 'field:' .. name
    end
    fields[#fields + 1] = name
    fields[#fields + 1] = original[i + 1]
  end
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
";

/// See the script's header.
const HAND_BACK_LUA: &str = include_str!("lua/hand_back.lua");

/// Messages looked at per `XPENDING` call when handing back.
const HAND_BACK_PAGE: usize = 100;

/// A refresh queue on Redis Streams, shared by the web processes (which enqueue) and the
/// worker processes (which drain it). See the [module docs](self) for the commands it sends.
///
/// ```no_run
/// use cacheback::RedisQueue;
/// use std::time::Duration;
///
/// # fn main() -> cacheback::Result<()> {
/// // A worker pool that drains two queues.
/// let queue = RedisQueue::builder("redis://127.0.0.1:6379")
///     .prefix("myapp")
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
    dead_letter: Script,
    hand_back: Script,
    /// Acknowledgements waiting for the next flush, and the lock of whoever flushes.
    acks: std::sync::Mutex<Vec<PendingAck>>,
    ack_flush: tokio::sync::Mutex<()>,
}

struct PendingAck {
    key: String,
    id: String,
    done: tokio::sync::oneshot::Sender<Result<()>>,
}

impl Inner {
    fn pending_acks(&self) -> std::sync::MutexGuard<'_, Vec<PendingAck>> {
        // Pushing or taking a `Vec` cannot leave it half-updated: a poisoned lock is fine.
        self.acks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
struct ReadState {
    last_takeover: Option<tokio::time::Instant>,
    /// Per drained stream, where the next `XAUTOCLAIM` scan resumes (`XAUTOCLAIM` scans a
    /// bounded part of the pending list per call: restarting at `0-0` every time would never
    /// reach idle messages behind many busy ones).
    cursors: Vec<String>,
}

/// The prefix in use and the stream keys under it.
#[derive(Debug)]
struct Bound {
    prefix: String,
    /// The streams this process drains.
    streams: Vec<Stream>,
}

impl Bound {
    fn new(prefix: &str, names: &[String]) -> Self {
        Bound {
            prefix: prefix.to_owned(),
            streams: names
                .iter()
                .map(|name| Stream {
                    name: name.clone(),
                    key: stream_key(prefix, name),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone)]
struct Stream {
    name: String,
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

/// A message in a dead-letter stream ([`RedisQueue::dead_letters`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisDeadLetter {
    /// The dead letter's id in the dead-letter stream.
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

enum Source {
    Url(String),
    Client(Box<Client>),
}

/// Builds a [`RedisQueue`].
#[must_use]
pub struct RedisQueueBuilder {
    source: Source,
    prefix: Option<String>,
    group: String,
    consumer: Option<String>,
    queues: Vec<String>,
    options: Options,
}

impl fmt::Debug for RedisQueueBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueueBuilder")
            .field("prefix", &self.prefix)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("queues", &self.queues)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RedisQueueBuilder {
    fn new(source: Source) -> Self {
        RedisQueueBuilder {
            source,
            prefix: None,
            group: "cacheback-workers".to_owned(),
            consumer: None,
            queues: vec!["default".to_owned()],
            options: Options {
                conn: ConnOptions::default(),
                poll_interval: DEFAULT_POLL_INTERVAL,
                visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
                max_len: DEFAULT_MAX_LEN,
                dead_letter_max_len: DEFAULT_DEAD_LETTER_MAX_LEN,
                max_message_bytes: MAX_MESSAGE_BYTES,
            },
        }
    }

    /// The prefix isolating this application's streams in a shared Redis. Default: the prefix
    /// of the client the queue is given to, which is what a queue should use; a client whose
    /// prefix differs from one set here refuses the queue at `build()` (two prefixes would
    /// let another application's workers read this one's requests, or this one's miss them).
    /// ASCII letters, digits, `_`, `.`, `-`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The consumer group: one per worker pool (default `"cacheback-workers"`).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// This process's consumer name (default: `<pid>-<random>`). A stable name (a pod name)
    /// lets a restarted worker find the messages it held when it died at once, instead of
    /// after the visibility timeout.
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }

    /// The queues (streams) this process drains (default `["default"]`). Enqueueing works for
    /// every queue name whatever this is set to.
    pub fn queues<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = names.into_iter().map(Into::into).collect();
        self
    }

    /// Longest wait of one receive for new messages (default 1 s).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.options.poll_interval = d;
        self
    }

    /// How long a delivered message may stay unacknowledged before another worker takes it
    /// over (default 60 s). Keep it above the jobs' `fetch_timeout`.
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.options.visibility_timeout = d;
        self
    }

    /// Approximate bound on each stream's length (default 1,000,000): past it the oldest
    /// requests are trimmed (their keys are refreshed by the next reader once their claims
    /// expire).
    pub fn max_len(mut self, n: u64) -> Self {
        self.options.max_len = n;
        self
    }

    /// Approximate bound on each dead-letter stream's length (default 100,000).
    pub fn dead_letter_max_len(mut self, n: u64) -> Self {
        self.options.dead_letter_max_len = n;
        self
    }

    /// Messages larger than this are not decoded; they are dead-lettered (default 1 MiB).
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.options.max_message_bytes = n;
        self
    }

    /// Bound on one command, waiting for a reconnection included (default 1 s). Bounds
    /// `enqueue`.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.options.conn.command_timeout = timeout;
        self
    }

    /// Bound on one connection attempt (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.conn.connect_timeout = timeout;
        self
    }

    /// Builds the queue. Does not connect: the first call does.
    pub fn build(self) -> Result<RedisQueue> {
        let o = self.options;
        o.conn.validate()?;
        if let Some(prefix) = &self.prefix {
            crate::key::validate_prefix(prefix).map_err(|e| Error::config(e.to_string()))?;
        }
        if self.queues.is_empty() {
            return Err(Error::config("a RedisQueue drains at least one queue"));
        }
        for name in self.queues.iter().chain([&self.group]) {
            validate_name(name).map_err(Error::config)?;
        }
        if o.poll_interval.is_zero() || o.visibility_timeout.is_zero() {
            return Err(Error::config(
                "poll_interval and visibility_timeout must be greater than zero",
            ));
        }
        let consumer = self
            .consumer
            .unwrap_or_else(|| format!("{}-{:08x}", std::process::id(), fastrand::u32(..)));
        validate_name(&consumer).map_err(Error::config)?;
        let client = match self.source {
            Source::Url(url) => redis_support::open_client(&url)?,
            Source::Client(client) => *client,
        };
        let conn = Conn::lazy(client.clone(), o.conn, Duration::ZERO)?;
        let blocking = Conn::lazy(client, o.conn, o.poll_interval)?;
        let mut seen = HashSet::new();
        let names: Vec<String> = self
            .queues
            .into_iter()
            .filter(|name| seen.insert(name.clone()))
            .collect();
        Ok(RedisQueue {
            inner: Arc::new(Inner {
                conn,
                blocking,
                read_lock: tokio::sync::Mutex::new(ReadState::default()),
                explicit_prefix: self.prefix,
                bound: OnceLock::new(),
                names,
                group: self.group,
                consumer,
                groups_ready: AtomicBool::new(false),
                options: o,
                enqueued: AtomicU64::new(0),
                dead_letter: Script::new(DEAD_LETTER_LUA),
                hand_back: Script::new(HAND_BACK_LUA),
                acks: std::sync::Mutex::new(Vec::new()),
                ack_flush: tokio::sync::Mutex::new(()),
            }),
        })
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

fn stream_key(prefix: &str, name: &str) -> String {
    format!("{{{prefix}:queue}}:stream:{name}")
}

fn dead_key(prefix: &str, name: &str) -> String {
    format!("{{{prefix}:queue}}:dead:{name}")
}

/// One stream entry: id and field/value pairs (`None` for an entry deleted since delivery).
type RawEntry = (String, Option<Vec<(Vec<u8>, Vec<u8>)>>);

impl RedisQueue {
    /// A queue at `url` with the default options, draining the `"default"` queue.
    pub fn from_url(url: &str) -> Result<RedisQueue> {
        Self::builder(url).build()
    }

    /// Configures a queue at `url` (`redis://`, `rediss://`, `redis+unix://`, ...).
    pub fn builder(url: &str) -> RedisQueueBuilder {
        RedisQueueBuilder::new(Source::Url(url.to_owned()))
    }

    /// Configures a queue on a `redis::Client` the application built. The queue opens two
    /// connections from it: a multiplexed one and one for blocking reads.
    pub fn from_client(client: redis::Client) -> RedisQueueBuilder {
        // A `rediss://` client needs rustls' crypto provider before it connects.
        redis_support::install_crypto_provider();
        RedisQueueBuilder::new(Source::Client(Box::new(client)))
    }

    /// The prefix and streams in use: those of the client the queue was bound to, else (a
    /// queue used on its own) the builder's prefix or `"cacheback"`.
    fn bound(&self) -> &Bound {
        let inner = &*self.inner;
        inner.bound.get_or_init(|| {
            let prefix = inner.explicit_prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
            Bound::new(prefix, &inner.names)
        })
    }

    /// The prefix the queue's streams live under.
    pub fn prefix(&self) -> &str {
        &self.bound().prefix
    }

    fn do_bind_prefix(&self, prefix: &str) -> Result<()> {
        let inner = &*self.inner;
        let wanted = inner.explicit_prefix.as_deref().unwrap_or(prefix);
        let bound = inner.bound.get_or_init(|| Bound::new(wanted, &inner.names));
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

    /// Requests in the stream of `queue` not yet acknowledged (waiting or being processed).
    pub async fn len(&self, queue: &str) -> Result<u64> {
        let mut cmd = redis::cmd("XLEN");
        cmd.arg(stream_key(self.prefix(), queue));
        self.inner
            .conn
            .query(&cmd, "XLEN")
            .await
            .map_err(Failure::into_queue)
    }

    /// Requests of `queue` delivered to a worker and not yet acknowledged.
    pub async fn pending(&self, queue: &str) -> Result<u64> {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(stream_key(self.prefix(), queue))
            .arg(&self.inner.group);
        match self.inner.conn.query::<Value>(&cmd, "XPENDING").await {
            Ok(Value::Array(items)) => Ok(items.first().and_then(u64_of).unwrap_or(0)),
            Ok(_) => Ok(0),
            Err(e) if e.code() == Some("NOGROUP") => Ok(0),
            Err(e) => Err(e.into_queue()),
        }
    }

    /// The newest `count` dead letters of `queue`, newest first.
    pub async fn dead_letters(&self, queue: &str, count: usize) -> Result<Vec<RedisDeadLetter>> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(dead_key(self.prefix(), queue))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count.max(1));
        let reply: Value = self
            .inner
            .conn
            .query(&cmd, "XREVRANGE")
            .await
            .map_err(Failure::into_queue)?;
        let limit = self.inner.options.max_message_bytes;
        Ok(parse_entries(reply)
            .into_iter()
            .map(|(id, fields)| {
                let fields = fields.unwrap_or_default();
                let text = |name: &str| {
                    field(&fields, name).map(|v| String::from_utf8_lossy(v).into_owned())
                };
                let message = field(&fields, "m").map(<[u8]>::to_vec);
                RedisDeadLetter {
                    reason: text("reason").unwrap_or_default(),
                    attempt: text("attempt").and_then(|a| a.parse().ok()).unwrap_or(0),
                    source_id: text("id").unwrap_or_default(),
                    job: text("job").filter(|j| !j.is_empty()),
                    request: message
                        .as_deref()
                        .and_then(|m| RefreshRequest::decode(m, limit).ok()),
                    message,
                    id,
                }
            })
            .collect())
    }

    async fn do_enqueue(&self, request: RefreshRequest) -> std::result::Result<(), EnqueueError> {
        let inner = &*self.inner;
        validate_name(&request.queue)
            .map_err(|m| EnqueueError::Unavailable(Error::queue(BACKEND, m)))?;
        let bytes = request.encode().map_err(EnqueueError::Unavailable)?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream_key(self.prefix(), &request.queue))
            .arg("MAXLEN")
            .arg("~")
            .arg(inner.options.max_len)
            .arg("*")
            .arg("m")
            .arg(bytes);
        let _: Value = inner
            .conn
            .query(&cmd, "XADD")
            .await
            .map_err(|e| EnqueueError::Unavailable(e.into_queue()))?;
        inner.enqueued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

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

    async fn do_receive(&self, max: usize) -> Result<Vec<Delivery>> {
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
        self.read_new(max).await
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
            let reply: Value = inner.conn.query(&cmd, "XAUTOCLAIM").await?;
            let Value::Array(mut parts) = reply else {
                continue;
            };
            if parts.len() < 2 {
                continue;
            }
            *cursor = bytes_of(parts[0].clone())
                .and_then(|c| String::from_utf8(c).ok())
                .unwrap_or_else(|| "0-0".to_owned());
            let entries: Vec<RawEntry> = parse_entry_list(parts.swap_remove(1))
                .into_iter()
                .filter(|(_, fields)| fields.is_some())
                .collect();
            if entries.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for (id, _) in &entries {
                pipe.cmd("XPENDING")
                    .arg(&stream.key)
                    .arg(&inner.group)
                    .arg(id)
                    .arg(id)
                    .arg(1);
            }
            let counts: Vec<Value> = inner.conn.pipeline(&pipe, "XPENDING").await?;
            for ((id, fields), count) in entries.into_iter().zip(counts) {
                let attempt = delivery_count(count).unwrap_or(2);
                debug!(stream = %stream.key, id = %id, attempt, "took over an unacknowledged message");
                out.push(self.delivery(stream, id, fields.unwrap_or_default(), attempt));
            }
        }
        Ok(out)
    }

    async fn read_new(&self, max: usize) -> std::result::Result<Vec<Delivery>, Failure> {
        let inner = &*self.inner;
        let block = u64::try_from(inner.options.poll_interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&inner.group)
            .arg(&inner.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(block)
            .arg("STREAMS");
        let streams = &self.bound().streams;
        for stream in streams {
            cmd.arg(&stream.key);
        }
        for _ in streams {
            cmd.arg(">");
        }
        let reply: Value = inner.blocking.query(&cmd, "XREADGROUP").await?;
        let mut out = Vec::new();
        for (key, entries) in parse_streams(reply) {
            let Some(stream) = streams.iter().find(|s| s.key.as_bytes() == key) else {
                continue;
            };
            for (id, fields) in entries {
                out.push(self.delivery(stream, id, fields.unwrap_or_default(), 1));
            }
        }
        Ok(out)
    }

    fn delivery(
        &self,
        stream: &Stream,
        id: String,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        attempt: u32,
    ) -> Delivery {
        // Deliveries before the message was handed back by a stopping worker (see
        // `hand_back_held`): the delivery limit counts them too.
        let before = field(&fields, "a")
            .and_then(|a| std::str::from_utf8(a).ok()?.parse::<u32>().ok())
            .unwrap_or(0);
        let attempt = attempt.saturating_add(before);
        let message = match field(&fields, "m") {
            Some(bytes) => RefreshRequest::decode(bytes, self.inner.options.max_message_bytes),
            None => Err(MalformedMessage::new(
                "stream entry has no `m` field (not written by cacheback)",
            )),
        };
        Delivery::new(
            message,
            attempt,
            Receipt::new(format!("{}/{id}", stream.name)),
        )
    }

    fn stream_of<'a>(&'a self, receipt: &'a Receipt) -> Result<(String, &'a str, &'a str)> {
        let (name, id) = receipt
            .id()
            .rsplit_once('/')
            .ok_or_else(|| Error::queue(BACKEND, "not a RedisQueue receipt"))?;
        Ok((stream_key(self.prefix(), name), name, id))
    }

    /// Acknowledges by group commit: the ack joins a buffer, and whoever holds the flush lock
    /// sends every buffered ack in one round trip (`XACK` + `XDEL` with many ids per stream).
    /// Under load a worker's concurrent refreshes share one round trip; alone, an ack costs
    /// one, as before.
    async fn do_ack(&self, delivery: &Delivery) -> Result<()> {
        let inner = &*self.inner;
        let (key, _, id) = self.stream_of(&delivery.receipt)?;
        let (done, mut result) = tokio::sync::oneshot::channel();
        inner.pending_acks().push(PendingAck {
            key,
            id: id.to_owned(),
            done,
        });
        let flushing = inner.ack_flush.lock().await;
        match result.try_recv() {
            // A previous holder of the lock sent it.
            Ok(outcome) => return outcome,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                return Err(Error::queue(
                    BACKEND,
                    "the acknowledgement was interrupted; the message may be redelivered",
                ));
            }
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
        }
        // Ours is still buffered (only lock holders take from the buffer): send it all.
        let batch = std::mem::take(&mut *inner.pending_acks());
        let outcome = self.flush_acks(&batch).await;
        for ack in batch {
            let _ = ack.done.send(outcome.clone());
        }
        drop(flushing);
        result.await.unwrap_or(outcome)
    }

    async fn flush_acks(&self, batch: &[PendingAck]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut by_stream: Vec<(&str, Vec<&str>)> = Vec::new();
        for ack in batch {
            match by_stream.iter_mut().find(|(key, _)| *key == ack.key) {
                Some((_, ids)) => ids.push(&ack.id),
                None => by_stream.push((&ack.key, vec![&ack.id])),
            }
        }
        let mut pipe = redis::pipe();
        for (key, ids) in &by_stream {
            pipe.cmd("XACK")
                .arg(*key)
                .arg(&self.inner.group)
                .arg(ids)
                .ignore()
                .cmd("XDEL")
                .arg(*key)
                .arg(ids)
                .ignore();
        }
        let _: Value = self
            .inner
            .conn
            .pipeline(&pipe, "XACK")
            .await
            .map_err(Failure::into_queue)?;
        Ok(())
    }

    /// Hands the messages this consumer holds back to their streams (see the trait method).
    async fn do_hand_back_held(&self) -> Result<u64> {
        let inner = &*self.inner;
        // A receive dropped while its `XREADGROUP ... BLOCK` waited is still running on the
        // blocking connection, and Redis may yet give it messages. A PING sent behind it is
        // answered only once it has returned, so whatever it took is pending by then.
        if let Err(e) = inner
            .blocking
            .query::<Value>(&redis::cmd("PING"), "PING")
            .await
        {
            debug!(error = %crate::error::Chain(&e), "no answer behind the blocking read");
        }
        let mut handed = 0;
        for stream in &self.bound().streams {
            loop {
                let held = self.held(stream).await?;
                if held.is_empty() {
                    break;
                }
                let mut invocation = inner.hand_back.key(&stream.key);
                invocation.arg(&inner.group).arg(inner.options.max_len);
                for (id, deliveries) in &held {
                    invocation.arg(id).arg(*deliveries);
                }
                let n: u64 = inner
                    .conn
                    .script(&invocation, "hand-back script")
                    .await
                    .map_err(Failure::into_queue)?;
                handed += n;
                if held.len() < HAND_BACK_PAGE {
                    break;
                }
            }
        }
        Ok(handed)
    }

    /// The messages of `stream` pending for this consumer, with their delivery counts.
    async fn held(&self, stream: &Stream) -> Result<Vec<(String, u64)>> {
        let inner = &*self.inner;
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&stream.key)
            .arg(&inner.group)
            .arg("-")
            .arg("+")
            .arg(HAND_BACK_PAGE)
            .arg(&inner.consumer);
        let reply: Value = match inner.conn.query(&cmd, "XPENDING").await {
            Ok(reply) => reply,
            Err(e) if e.code() == Some("NOGROUP") => return Ok(Vec::new()),
            Err(e) => return Err(e.into_queue()),
        };
        let Value::Array(rows) = reply else {
            return Ok(Vec::new());
        };
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let Value::Array(row) = row else {
                    return None;
                };
                let id = String::from_utf8(bytes_of(row.first()?.clone())?).ok()?;
                Some((id, row.get(3).and_then(u64_of).unwrap_or(1)))
            })
            .collect())
    }

    async fn do_dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        let inner = &*self.inner;
        let (key, name, id) = self.stream_of(&delivery.receipt)?;
        let job = delivery
            .message
            .as_ref()
            .map(|r| r.job.as_str())
            .unwrap_or("");
        let mut invocation = inner.dead_letter.key(&key);
        invocation
            .key(dead_key(self.prefix(), name))
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

fn field<'a>(fields: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k.as_slice() == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

/// The delivery count in an `XPENDING key group id id 1` reply.
fn delivery_count(reply: Value) -> Option<u32> {
    let Value::Array(rows) = reply else {
        return None;
    };
    let Value::Array(row) = rows.into_iter().next()? else {
        return None;
    };
    row.get(3)
        .and_then(u64_of)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// `XREADGROUP` reply: (stream key, entries) per stream, RESP2 array or RESP3 map.
fn parse_streams(reply: Value) -> Vec<(Vec<u8>, Vec<RawEntry>)> {
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
        .filter_map(|(key, entries)| Some((bytes_of(key)?, parse_entry_list(entries))))
        .collect()
}

/// A list of stream entries (`XRANGE`, `XAUTOCLAIM`, one stream of `XREADGROUP`).
fn parse_entry_list(value: Value) -> Vec<RawEntry> {
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
            let fields = match parts.next() {
                Some(Value::Array(flat)) => {
                    let mut pairs = Vec::with_capacity(flat.len() / 2);
                    let mut flat = flat.into_iter();
                    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                        if let (Some(k), Some(v)) = (bytes_of(k), bytes_of(v)) {
                            pairs.push((k, v));
                        }
                    }
                    Some(pairs)
                }
                Some(Value::Map(map)) => Some(
                    map.into_iter()
                        .filter_map(|(k, v)| Some((bytes_of(k)?, bytes_of(v)?)))
                        .collect(),
                ),
                _ => None,
            };
            Some((id, fields))
        })
        .collect()
}

/// `XRANGE`-style reply of a whole stream.
fn parse_entries(reply: Value) -> Vec<RawEntry> {
    parse_entry_list(reply)
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
    fn streams_of_a_prefix_share_a_hash_tag() {
        assert_eq!(stream_key("app", "default"), "{app:queue}:stream:default");
        assert_eq!(dead_key("app", "default"), "{app:queue}:dead:default");
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("reports-2").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name("a{b}").is_err());
    }

    #[test]
    fn replies_parse_in_both_protocols() {
        let entry = |id: &str| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"m".to_vec()),
                    Value::BulkString(vec![1, 2]),
                ]),
            ])
        };
        let resp2 = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"k".to_vec()),
            Value::Array(vec![entry("1-0"), entry("2-0")]),
        ])]);
        let parsed = parse_streams(resp2);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, b"k");
        assert_eq!(parsed[0].1[1].0, "2-0");
        let resp3 = Value::Map(vec![(
            Value::BulkString(b"k".to_vec()),
            Value::Array(vec![entry("3-0")]),
        )]);
        assert_eq!(parse_streams(resp3)[0].1[0].0, "3-0");
        assert!(parse_streams(Value::Nil).is_empty());
        let deleted = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"4-0".to_vec()),
            Value::Nil,
        ])]);
        assert_eq!(parse_entry_list(deleted), vec![("4-0".to_owned(), None)]);
    }
}
