//! [`AmqpQueueBuilder`]: the options of an [`AmqpQueue`] and their checks.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use lapin::uri::AMQPUri;

use super::AmqpQueue;
use crate::error::{Error, Result};
use crate::queue::MAX_MESSAGE_BYTES;
use crate::queue::binding::validate_route;

/// Default bound on each route's queue (`x-max-length`, with `x-overflow=reject-publish`).
pub(crate) const DEFAULT_MAX_LEN: u64 = 1_000_000;
/// Default broker-side delivery limit (`x-delivery-limit`): a backstop behind the worker's own
/// `max_deliveries` (default 5), which dead-letters first with a better reason.
pub(crate) const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// The options of an [`AmqpQueue`], fixed at `build()`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub(crate) prefetch: Option<u16>,
    pub(crate) delivery_limit: u32,
    pub(crate) max_len: Option<u64>,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) max_reconnect_delay: Duration,
    pub(crate) max_message_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefetch: None,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            max_len: Some(DEFAULT_MAX_LEN),
            command_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            poll_interval: Duration::from_secs(1),
            max_reconnect_delay: Duration::from_secs(5),
            max_message_bytes: MAX_MESSAGE_BYTES,
        }
    }
}

/// Builds an [`AmqpQueue`].
///
/// ```no_run
/// use cacheback::AmqpQueue;
/// use std::time::Duration;
///
/// # fn main() -> cacheback::Result<()> {
/// let queue = AmqpQueue::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .queues(["default", "reports"])
///     .prefetch(32)
///     .delivery_limit(10)
///     .command_timeout(Duration::from_millis(500))
///     .build()?;
/// # let _ = queue;
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct AmqpQueueBuilder {
    url: String,
    prefix: Option<String>,
    queues: Vec<String>,
    options: Options,
}

impl fmt::Debug for AmqpQueueBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: it is not shown.
        f.debug_struct("AmqpQueueBuilder")
            .field("prefix", &self.prefix)
            .field("queues", &self.queues)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl AmqpQueueBuilder {
    pub(super) fn new(url: &str) -> Self {
        AmqpQueueBuilder {
            url: url.to_owned(),
            prefix: None,
            queues: vec!["default".to_owned()],
            options: Options::default(),
        }
    }

    /// The prefix naming this application's queues on a shared broker. Default: the prefix of
    /// the client the queue is given to, which is what a queue should use; a client whose
    /// prefix differs from one set here refuses the queue at `build()`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The routes ([`Policy::queue`](crate::Policy::queue)) this process consumes (default
    /// `["default"]`). Enqueueing works for every route whatever this is set to.
    pub fn queues<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = names.into_iter().map(Into::into).collect();
        self
    }

    /// Messages the broker sends this consumer ahead of their acks, per route (`basic.qos`).
    /// Default: the `max` of the first receive, which for a [`Worker`](crate::Worker) is its
    /// concurrency (capped by its batch), so a worker never holds messages it cannot start.
    pub fn prefetch(mut self, n: u16) -> Self {
        self.options.prefetch = Some(n);
        self
    }

    /// The broker's delivery limit (`x-delivery-limit`, default 20): a message delivered more
    /// often goes to the dead-letter queue with the broker's reason `delivery_limit`. Keep it
    /// above the worker's [`max_deliveries`](crate::WorkerOptions::max_deliveries), which
    /// dead-letters first and says why. Part of the queue's declaration: every process of a
    /// prefix must use the same value.
    pub fn delivery_limit(mut self, n: u32) -> Self {
        self.options.delivery_limit = n;
        self
    }

    /// Bound on each route's queue (default 1,000,000, `x-max-length` with
    /// `x-overflow=reject-publish`): past it the broker refuses new requests and `enqueue`
    /// fails with [`EnqueueError::Full`](crate::queue::EnqueueError::Full). `None` leaves the
    /// queue unbounded. Part of the queue's declaration, like the delivery limit.
    pub fn max_len(mut self, n: Option<u64>) -> Self {
        self.options.max_len = n;
        self
    }

    /// Bound on one broker operation: a publish and its confirm, an ack, a declaration
    /// (default 1 s). Bounds `enqueue` when the broker hangs.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.options.command_timeout = timeout;
        self
    }

    /// Bound on one connection attempt (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// Longest wait of one receive for new messages (default 1 s).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.options.poll_interval = d;
        self
    }

    /// Longest pause between reconnection attempts while the broker is away (default 5 s;
    /// the pause doubles from 100 ms). Calls made during a pause fail at once.
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
    pub fn build(self) -> Result<AmqpQueue> {
        let o = self.options;
        let uri: AMQPUri = self.url.parse().map_err(|_| {
            // The parser's message may quote the URL, password included: not shown.
            Error::config(
                "invalid AMQP URL (expected amqp://user:pass@host:port/vhost or amqps://...)",
            )
        })?;
        if let Some(prefix) = &self.prefix {
            crate::key::validate_prefix(prefix).map_err(|e| Error::config(e.to_string()))?;
        }
        if self.queues.is_empty() {
            return Err(Error::config("an AmqpQueue consumes at least one queue"));
        }
        for name in &self.queues {
            validate_route(name).map_err(Error::config)?;
        }
        if [o.command_timeout, o.connect_timeout, o.poll_interval]
            .iter()
            .any(Duration::is_zero)
        {
            return Err(Error::config(
                "AmqpQueue timeouts and poll_interval must be greater than zero",
            ));
        }
        if o.prefetch == Some(0) || o.delivery_limit == 0 || o.max_len == Some(0) {
            return Err(Error::config(
                "AmqpQueue prefetch, delivery_limit and max_len must be at least 1",
            ));
        }
        let mut seen = HashSet::new();
        let routes = self
            .queues
            .into_iter()
            .filter(|name| seen.insert(name.clone()))
            .collect();
        Ok(AmqpQueue::new(uri, self.prefix, routes, o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_names_are_checked_without_showing_the_password() {
        let e = AmqpQueue::builder("http://u:secret@h")
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid AMQP URL") && !e.contains("secret"),
            "{e}"
        );
        assert!(AmqpQueue::builder("amqp://u:p@h/v").build().is_ok());
        assert!(AmqpQueue::builder("amqps://u:p@h:5671/v").build().is_ok());
        let bad_route = AmqpQueue::builder("amqp://h").queues(["a b"]).build();
        assert!(bad_route.unwrap_err().to_string().contains("`a b`"));
        assert!(AmqpQueue::builder("amqp://h").prefetch(0).build().is_err());
    }
}
