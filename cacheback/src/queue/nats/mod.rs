//! [`NatsQueue`]: refresh requests on a NATS JetStream work-queue stream (feature `nats`).
//!
//! The files: this one holds the queue, its enqueue and names; `builder.rs` the options;
//! `link.rs` the connection, streams and consumers; `consume.rs` receive, ack and hand-back;
//! `dead_letters.rs` dead letters.

mod builder;
mod consume;
mod dead_letters;
mod link;

pub use self::builder::NatsQueueBuilder;
pub use self::dead_letters::NatsDeadLetter;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::message::PublishMessage;
use futures_util::future::BoxFuture;

use self::builder::{Options, validate_token};
use self::consume::{Held, Pulling};
use self::link::{BACKEND, LinkState, failure, timed_out};
use crate::error::{Error, Result};
use crate::queue::binding::{PrefixBinding, validate_route};
use crate::queue::{Delivery, EnqueueError, Queue, RefreshRequest};

/// A refresh queue on NATS JetStream, shared by the web processes (which enqueue) and the
/// worker processes (which consume it).
///
/// # Layout
///
/// | JetStream | holds |
/// |---|---|
/// | stream `<prefix>-queue`, subjects `<prefix>.queue.>` | work-queue retention (a message is gone once acknowledged), file storage, `max_msgs` with `discard: new`, a duplicate window: one message per request on `<prefix>.queue.<route>`, [`RefreshRequest::encode`](crate::queue::RefreshRequest::encode), with `Nats-Msg-Id` = the key and its claim token |
/// | durable pull consumer `<group>-<route>` | one per worker pool and route: explicit acks, `ack_wait` (the visibility timeout), `max_deliver` |
/// | stream `<prefix>-dead`, subjects `<prefix>.dead.>` | dead letters on `<prefix>.dead.<route>`: the original bytes with headers `Cacheback-Reason`, `Cacheback-Attempt`, `Cacheback-Queue`, `Cacheback-Job` |
///
/// # Delivery
///
/// - `enqueue` publishes and waits for the stream's ack, bounded by the command timeout;
///   while the client is disconnected it fails at once ([`EnqueueError::Unavailable`]). A
///   full stream refuses the message: [`EnqueueError::Full`]. The same request enqueued again
///   within the duplicate window is dropped by the server.
/// - `receive` pulls a batch from each route's consumer (waiting up to the poll interval in
///   all); [`Delivery::attempt`] is the server's delivery count.
/// - `ack` is a double ack (the server confirms it). A message not acknowledged within
///   `ack_wait` (its worker died, or a receive was dropped while messages were on their way)
///   is delivered again, to any worker of the pool.
/// - `dead_letter` publishes the message with its reason to the dead-letter stream, then
///   acknowledges it; [`NatsQueue::dead_letters`] reads them back.
/// - `hand_back_held` negatively acknowledges what this process holds: the server delivers it
///   again at once.
/// - The client reconnects by itself when the connection drops; the first connection is made
///   on first use, pausing (100 ms doubling up to
///   [`NatsQueueBuilder::max_reconnect_delay`]) between failed attempts.
///
/// ```no_run
/// use cacheback::{Cacheback, NatsQueue, RedisStore};
///
/// # async fn run() -> cacheback::Result<()> {
/// // No `.prefix(...)`: the queue takes the client's prefix.
/// let queue = NatsQueue::from_url("nats://127.0.0.1:4222")?;
/// let cache = Cacheback::builder()
///     .prefix("shop")
///     .store(RedisStore::from_url("redis://127.0.0.1:6379")?)
///     .queue(queue)
///     .build()?;
/// # let _ = cache;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct NatsQueue {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    prefix: PrefixBinding,
    group: String,
    /// The routes this process consumes.
    routes: Vec<String>,
    options: Options,
    link: tokio::sync::Mutex<LinkState>,
    /// The pull in progress; one receive at a time.
    receiving: tokio::sync::Mutex<Pulling>,
    /// Deliveries handed out and not yet settled, by receipt.
    held: std::sync::Mutex<HashMap<u64, Held>>,
    receipts: AtomicU64,
    enqueued: AtomicU64,
}

impl fmt::Debug for NatsQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("NatsQueue")
            .field("prefix", &inner.prefix.current())
            .field("group", &inner.group)
            .field("queues", &inner.routes)
            .field("options", &inner.options)
            .finish_non_exhaustive()
    }
}

impl NatsQueue {
    fn new(
        url: String,
        prefix: Option<String>,
        group: String,
        routes: Vec<String>,
        options: Options,
    ) -> Self {
        NatsQueue {
            inner: Arc::new(Inner {
                url,
                prefix: PrefixBinding::new("NatsQueue", prefix),
                group,
                routes,
                options,
                link: tokio::sync::Mutex::new(LinkState::default()),
                receiving: tokio::sync::Mutex::new(Pulling::default()),
                held: std::sync::Mutex::new(HashMap::new()),
                receipts: AtomicU64::new(1),
                enqueued: AtomicU64::new(0),
            }),
        }
    }

    /// A queue at `url` with the default options, consuming the `"default"` route.
    ///
    /// ```no_run
    /// # fn main() -> cacheback::Result<()> {
    /// let queue = cacheback::NatsQueue::from_url("nats://app:secret@nats.internal:4222")?;
    /// # let _ = queue;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_url(url: &str) -> Result<NatsQueue> {
        Self::builder(url).build()
    }

    /// Configures a queue at `url`: `nats://[user:pass@]host:port`, `tls://...`.
    ///
    /// ```no_run
    /// # fn main() -> cacheback::Result<()> {
    /// let queue = cacheback::NatsQueue::builder("nats://127.0.0.1:4222")
    ///     .group("workers")
    ///     .build()?;
    /// # let _ = queue;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(url: &str) -> NatsQueueBuilder {
        NatsQueueBuilder::new(url)
    }

    /// The prefix the queue's streams and subjects start with: that of the client it was bound
    /// to, else (a queue used on its own) the builder's or `"cacheback"`.
    ///
    /// ```no_run
    /// # fn main() -> cacheback::Result<()> {
    /// let queue = cacheback::NatsQueue::builder("nats://127.0.0.1:4222")
    ///     .prefix("shop")
    ///     .build()?;
    /// assert_eq!(queue.prefix(), "shop");
    /// # Ok(())
    /// # }
    /// ```
    pub fn prefix(&self) -> &str {
        self.inner.prefix.get()
    }

    /// Requests this handle enqueued (and the server stored) so far.
    ///
    /// ```no_run
    /// # fn main() -> cacheback::Result<()> {
    /// let queue = cacheback::NatsQueue::from_url("nats://127.0.0.1:4222")?;
    /// assert_eq!(queue.enqueued(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn enqueued(&self) -> u64 {
        self.inner.enqueued.load(Ordering::Relaxed)
    }

    /// Checks that the server answers (connecting if needed, then one round trip), for
    /// readiness probes.
    ///
    /// ```no_run
    /// # async fn probe(queue: cacheback::NatsQueue) {
    /// if let Err(e) = queue.ping().await {
    ///     eprintln!("not ready: {e}");
    /// }
    /// # }
    /// ```
    pub async fn ping(&self) -> Result<()> {
        let link = self.link().await?;
        let timeout = self.inner.options.command_timeout;
        match tokio::time::timeout(timeout, link.client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(failure("the server did not answer a ping", e)),
            Err(_) => Err(timed_out("ping", timeout)),
        }
    }

    async fn do_enqueue(&self, request: RefreshRequest) -> std::result::Result<(), EnqueueError> {
        let unavailable = EnqueueError::Unavailable;
        validate_route(&request.queue)
            .and_then(|()| validate_token(&request.queue, "queue name"))
            .map_err(|m| unavailable(Error::queue(BACKEND, m)))?;
        let bytes = request.encode().map_err(unavailable)?;
        let link = self.link().await.map_err(unavailable)?;
        link.check_connected().map_err(unavailable)?;
        self.ensure_streams(&link).await.map_err(unavailable)?;
        // One id per claim: a retried enqueue of the same claim is a duplicate.
        let id = format!("{}/{}", request.key, request.token);
        let publish = PublishMessage::build().payload(bytes.into()).message_id(id);
        let subject = self.subject("queue", &request.queue);
        match self.publish(&link, subject, publish).await {
            Ok(()) => {
                self.inner.enqueued.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if is_full(&e) => Err(EnqueueError::Full),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// `<prefix>.<kind>.<route>`.
    fn subject(&self, kind: &str, route: &str) -> String {
        format!("{}.{kind}.{route}", self.prefix())
    }

    fn do_bind_prefix(&self, prefix: &str) -> Result<()> {
        validate_token(prefix, "prefix").map_err(Error::config)?;
        self.inner.prefix.bind(prefix)
    }
}

/// Whether a publish failed because the stream is at its bound (`discard: new`).
fn is_full(error: &Error) -> bool {
    let text = crate::error::Chain(error).to_string();
    text.contains("maximum messages exceeded") || text.contains("maximum bytes exceeded")
}

impl Queue for NatsQueue {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn bind_prefix(&self, prefix: &str) -> Result<()> {
        self.do_bind_prefix(prefix)
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(NatsQueue::ping(self))
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

/// Locks a map that a panic cannot leave half-updated (inserts and removals only).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_with_a_dot_are_refused_and_names_follow_the_prefix() {
        let queue = NatsQueue::from_url("nats://127.0.0.1:4222").unwrap();
        assert!(queue.bind_prefix("a.b").is_err());
        queue.bind_prefix("shop").unwrap();
        assert_eq!(queue.subject("queue", "default"), "shop.queue.default");
        assert!(is_full(&Error::queue(
            BACKEND,
            "publish failed: maximum messages exceeded"
        )));
    }
}
