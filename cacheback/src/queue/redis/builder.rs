//! Building a [`RedisQueue`]: where it connects (a URL, a cluster's nodes, the application's
//! own client) and the settings of [`RedisQueueBuilder`].

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::{Client, Script};

use super::receive::ReadState;
use super::{
    DEFAULT_CLUSTER_SHARDS, DEFAULT_DEAD_LETTER_MAX_LEN, DEFAULT_MAX_LEN, DEFAULT_POLL_INTERVAL,
    DEFAULT_VISIBILITY_TIMEOUT, Inner, MAX_SHARDS, Options, RedisQueue, validate_name,
};
use super::{dead_letters, hand_back};
use crate::error::{Error, Result};
use crate::queue::MAX_MESSAGE_BYTES;
use crate::redis_support::{self, Conn, ConnOptions};

enum Source {
    Url(String),
    Cluster(Vec<String>),
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
    /// `None`: 1 on one Redis, [`DEFAULT_CLUSTER_SHARDS`] on a cluster.
    shards: Option<usize>,
    options: Options,
}

impl fmt::Debug for RedisQueueBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueueBuilder")
            .field("prefix", &self.prefix)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("queues", &self.queues)
            .field("shards", &self.shards)
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
            shards: None,
            options: Options {
                conn: ConnOptions::default(),
                poll_interval: DEFAULT_POLL_INTERVAL,
                visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
                max_len: DEFAULT_MAX_LEN,
                dead_letter_max_len: DEFAULT_DEAD_LETTER_MAX_LEN,
                max_message_bytes: MAX_MESSAGE_BYTES,
                shards: 1,
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

    /// How many streams each queue is spread over (default: 1 on one Redis, 8 on a Redis
    /// Cluster; at most 1024). On a cluster the shards land in different slots, so one busy
    /// queue does not load one master alone. Every process of a fleet must use the same
    /// number: requests go to every shard in turn, and a worker drains the shards it knows of.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = Some(n);
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
        let mut o = self.options;
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
        let target = match self.source {
            Source::Url(url) => redis_support::open(&url)?,
            Source::Cluster(nodes) => redis_support::open_cluster(nodes)?,
            Source::Client(client) => redis_support::Target::Single(client),
        };
        o.shards = self.shards.unwrap_or(if target.is_cluster() {
            DEFAULT_CLUSTER_SHARDS
        } else {
            1
        });
        if !(1..=MAX_SHARDS).contains(&o.shards) {
            return Err(Error::config(format!(
                "a RedisQueue has 1 to {MAX_SHARDS} shards, not {}",
                o.shards
            )));
        }
        let conn = Conn::lazy(target.clone(), o.conn, Duration::ZERO)?;
        let blocking = Conn::lazy(target, o.conn, o.poll_interval)?;
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
                next_shard: AtomicU64::new(0),
                dead_letter: Script::new(dead_letters::DEAD_LETTER_LUA),
                hand_back: Script::new(hand_back::HAND_BACK_LUA),
                acks: std::sync::Mutex::new(Vec::new()),
                ack_flush: tokio::sync::Mutex::new(()),
            }),
        })
    }
}

impl RedisQueue {
    /// A queue at `url` with the default options, draining the `"default"` queue.
    pub fn from_url(url: &str) -> Result<RedisQueue> {
        Self::builder(url).build()
    }

    /// Configures a queue at `url` (`redis://`, `rediss://`, `redis+unix://`, ..., or
    /// `redis+cluster://host:port,host:port` for a Redis Cluster).
    pub fn builder(url: &str) -> RedisQueueBuilder {
        RedisQueueBuilder::new(Source::Url(url.to_owned()))
    }

    /// Configures a queue on a Redis Cluster, discovered from `nodes` (`redis://host:port`
    /// URLs of any of its nodes); see the layout in [`RedisQueue`] for its shards.
    ///
    /// ```no_run
    /// use cacheback::RedisQueue;
    ///
    /// # fn main() -> cacheback::Result<()> {
    /// let queue = RedisQueue::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
    ///     .shards(16)
    ///     .build()?;
    /// # let _ = queue;
    /// # Ok(())
    /// # }
    /// ```
    pub fn cluster<I, S>(nodes: I) -> RedisQueueBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisQueueBuilder::new(Source::Cluster(nodes.into_iter().map(Into::into).collect()))
    }

    /// Configures a queue on a `redis::Client` the application built. The queue opens two
    /// connections from it: a multiplexed one and one for blocking reads.
    pub fn from_client(client: redis::Client) -> RedisQueueBuilder {
        // A `rediss://` client needs rustls' crypto provider before it connects.
        redis_support::install_crypto_provider();
        RedisQueueBuilder::new(Source::Client(Box::new(client)))
    }
}
