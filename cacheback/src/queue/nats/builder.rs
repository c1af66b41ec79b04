//! [`NatsQueueBuilder`]: the options of a [`NatsQueue`] and their checks.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use super::NatsQueue;
use crate::error::{Error, Result};
use crate::queue::MAX_MESSAGE_BYTES;
use crate::queue::binding::validate_route;

/// The options of a [`NatsQueue`], fixed at `build()`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub(crate) ack_wait: Duration,
    pub(crate) max_deliver: u32,
    pub(crate) max_len: Option<u64>,
    pub(crate) dead_letter_max_len: u64,
    pub(crate) duplicate_window: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) max_reconnect_delay: Duration,
    pub(crate) max_message_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ack_wait: Duration::from_secs(60),
            max_deliver: 20,
            max_len: Some(1_000_000),
            dead_letter_max_len: 100_000,
            duplicate_window: Duration::from_secs(120),
            command_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            poll_interval: Duration::from_secs(1),
            max_reconnect_delay: Duration::from_secs(5),
            max_message_bytes: MAX_MESSAGE_BYTES,
        }
    }
}

/// Builds a [`NatsQueue`].
///
/// ```no_run
/// use cacheback::NatsQueue;
/// use std::time::Duration;
///
/// # fn main() -> cacheback::Result<()> {
/// let queue = NatsQueue::builder("nats://127.0.0.1:4222")
///     .queues(["default", "reports"])
///     .group("report-workers")
///     .ack_wait(Duration::from_secs(120))
///     .build()?;
/// # let _ = queue;
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct NatsQueueBuilder {
    url: String,
    prefix: Option<String>,
    group: String,
    queues: Vec<String>,
    options: Options,
}

impl fmt::Debug for NatsQueueBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold credentials: it is not shown.
        f.debug_struct("NatsQueueBuilder")
            .field("prefix", &self.prefix)
            .field("group", &self.group)
            .field("queues", &self.queues)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl NatsQueueBuilder {
    pub(super) fn new(url: &str) -> Self {
        NatsQueueBuilder {
            url: url.to_owned(),
            prefix: None,
            group: "cacheback-workers".to_owned(),
            queues: vec!["default".to_owned()],
            options: Options::default(),
        }
    }

    /// The prefix naming this application's streams and subjects. Default: the prefix of the
    /// client the queue is given to; a client whose prefix differs from one set here refuses
    /// the queue at `build()`. No `.` (NATS stream names cannot hold one).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The worker pool: its durable consumer per route is `<group>-<route>` (default
    /// `"cacheback-workers"`). A work-queue stream gives each message to one consumer, so one
    /// pool consumes a route.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// The routes ([`Policy::queue`](crate::Policy::queue)) this process consumes (default
    /// `["default"]`). Enqueueing works for every route whatever this is set to. No `.`.
    pub fn queues<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = names.into_iter().map(Into::into).collect();
        self
    }

    /// How long a delivered message may stay unacknowledged before the server delivers it
    /// again (default 60 s): the visibility timeout. Keep it above the jobs' `fetch_timeout`.
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.options.ack_wait = d;
        self
    }

    /// The consumer's `max_deliver` (default 20): the server stops delivering a message after
    /// that many attempts. A backstop behind the worker's own
    /// [`max_deliveries`](crate::WorkerOptions::max_deliveries), which dead-letters first.
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.options.max_deliver = n;
        self
    }

    /// Bound on the requests a prefix's stream holds (default 1,000,000, `discard: new`): past
    /// it `enqueue` fails with [`EnqueueError::Full`](crate::queue::EnqueueError::Full). `None`
    /// leaves it unbounded. Applies when the stream is created.
    pub fn max_len(mut self, n: Option<u64>) -> Self {
        self.options.max_len = n;
        self
    }

    /// Bound on the dead-letter stream (default 100,000; the oldest go first).
    pub fn dead_letter_max_len(mut self, n: u64) -> Self {
        self.options.dead_letter_max_len = n;
        self
    }

    /// The stream's duplicate window (default 2 min): a request enqueued again within it (same
    /// key, same claim) is dropped by the server (`Nats-Msg-Id`).
    pub fn duplicate_window(mut self, d: Duration) -> Self {
        self.options.duplicate_window = d;
        self
    }

    /// Bound on one server round trip: a publish and its ack, an ack, a stream call (default
    /// 1 s). Bounds `enqueue`.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.options.command_timeout = timeout;
        self
    }

    /// Bound on the first connection (default 1 s); later reconnections are the client's.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// Longest wait of one receive for new messages (default 1 s).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.options.poll_interval = d;
        self
    }

    /// Longest pause between connection attempts while the server is away (default 5 s).
    pub fn max_reconnect_delay(mut self, d: Duration) -> Self {
        self.options.max_reconnect_delay = d;
        self
    }

    /// Messages larger than this are not decoded; they are dead-lettered (default 1 MiB).
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.options.max_message_bytes = n;
        self
    }

    /// Builds the queue. Does not connect: the first call does.
    pub fn build(self) -> Result<NatsQueue> {
        let o = self.options;
        let url = self.url.trim();
        if !["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(Error::config(
                "invalid NATS URL (expected nats://[user:pass@]host:port or tls://...)",
            ));
        }
        if let Some(prefix) = &self.prefix {
            crate::key::validate_prefix(prefix).map_err(|e| Error::config(e.to_string()))?;
            validate_token(prefix, "prefix").map_err(Error::config)?;
        }
        if self.queues.is_empty() {
            return Err(Error::config("a NatsQueue consumes at least one queue"));
        }
        for name in &self.queues {
            validate_route(name).map_err(Error::config)?;
            validate_token(name, "queue name").map_err(Error::config)?;
        }
        validate_route(&self.group)
            .and_then(|()| validate_token(&self.group, "group"))
            .map_err(Error::config)?;
        let durations = [
            o.ack_wait,
            o.command_timeout,
            o.connect_timeout,
            o.poll_interval,
            o.duplicate_window,
        ];
        if durations.iter().any(Duration::is_zero) {
            return Err(Error::config(
                "NatsQueue timeouts, ack_wait, poll_interval and duplicate_window must be \
                 greater than zero",
            ));
        }
        if o.max_deliver == 0 || o.max_len == Some(0) || o.dead_letter_max_len == 0 {
            return Err(Error::config(
                "NatsQueue max_deliver, max_len and dead_letter_max_len must be at least 1",
            ));
        }
        let mut seen = HashSet::new();
        let routes = self
            .queues
            .into_iter()
            .filter(|name| seen.insert(name.clone()))
            .collect();
        Ok(NatsQueue::new(
            url.to_owned(),
            self.prefix,
            self.group,
            routes,
            o,
        ))
    }
}

/// Names that become one subject token and part of stream and consumer names: no `.`.
pub(crate) fn validate_token(name: &str, what: &str) -> std::result::Result<(), String> {
    if name.contains('.') {
        Err(format!(
            "NATS {what} `{name}` may not hold a `.` (it names streams and consumers)"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_names_are_checked() {
        assert!(NatsQueue::builder("nats://127.0.0.1:4222").build().is_ok());
        assert!(NatsQueue::builder("tls://u:p@h:4222").build().is_ok());
        let e = NatsQueue::builder("http://u:secret@h").build().unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(
            NatsQueue::builder("nats://h")
                .queues(["a.b"])
                .build()
                .is_err()
        );
        assert!(
            NatsQueue::builder("nats://h")
                .prefix("a.b")
                .build()
                .is_err()
        );
        assert!(
            NatsQueue::builder("nats://h")
                .ack_wait(Duration::ZERO)
                .build()
                .is_err()
        );
    }
}
