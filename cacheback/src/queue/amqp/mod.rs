//! [`AmqpQueue`]: refresh requests on RabbitMQ (AMQP 0-9-1) quorum queues (feature `amqp`).
//!
//! The files: this one holds the queue, its enqueue and the publishing both it and dead
//! letters use; `builder.rs` the options; `link.rs` the connection, reconnection and queue
//! declarations; `consume.rs` receive, ack and hand-back; `dead_letters.rs` dead letters.

mod builder;
mod consume;
mod dead_letters;
mod link;

pub use self::builder::AmqpQueueBuilder;
pub use self::dead_letters::AmqpDeadLetter;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Confirmation, ExchangeKind};

use self::builder::Options;
use self::consume::{Held, Receiver};
use self::link::{BACKEND, LinkState, failure, queue_name, short, timed_out};
use crate::error::{Error, Result};
use crate::queue::binding::{PrefixBinding, validate_route};
use crate::queue::{Delivery, EnqueueError, Queue, RefreshRequest};

/// A refresh queue on RabbitMQ, shared by the web processes (which enqueue) and the worker
/// processes (which consume it).
///
/// # Layout
///
/// Each route ([`Policy::queue`](crate::Policy::queue)) has two durable **quorum** queues,
/// declared (with the same arguments) by whichever process uses the route first:
///
/// | queue | holds |
/// |---|---|
/// | `<prefix>:queue:<route>` | one persistent message per request: [`RefreshRequest::encode`](crate::queue::RefreshRequest::encode); `x-delivery-limit`, `x-max-length` + `x-overflow=reject-publish`, dead letters to the queue below |
/// | `<prefix>:dead:<route>` | dead letters: the original bytes, with headers `x-cacheback-reason`, `x-cacheback-attempt`, `x-cacheback-queue` and `x-cacheback-job` (or the broker's `x-first-death-reason` when it hit the delivery limit) |
///
/// # Delivery
///
/// - `enqueue` publishes through the default exchange, `mandatory`, with publisher confirms,
///   bounded by the command timeout: a broker that is down or hangs is
///   [`EnqueueError::Unavailable`]; a queue at its bound refuses the message (a negative
///   confirm), which is [`EnqueueError::Full`].
/// - `receive` consumes each route with manual acks and a prefetch of the worker's
///   concurrency ([`AmqpQueueBuilder::prefetch`]). [`Delivery::attempt`] is the broker's
///   `x-delivery-count` + 1.
/// - `ack` acknowledges on the channel the message came on. When that channel or its
///   connection died meanwhile, the broker has already put the message back for another
///   consumer: the ack does nothing (it is never sent on a newer channel).
/// - `dead_letter` publishes the message with its reason to the dead-letter queue (confirmed),
///   then acknowledges it; [`AmqpQueue::dead_letters`] reads them back.
/// - A consumer that dies (its connection closes) has its unacknowledged messages redelivered
///   by the broker at once, to another consumer: there is no visibility timeout to wait for,
///   so a slow refresh is never run twice. `hand_back_held` closes the consuming channel,
///   which returns what it held (delivered or prefetched) the same way.
/// - When the connection goes away the next call reconnects, pausing (100 ms doubling up to
///   [`AmqpQueueBuilder::max_reconnect_delay`]) between failed attempts; calls during a pause
///   fail at once.
///
/// ```no_run
/// use cacheback::{AmqpQueue, Cacheback, RedisStore};
///
/// # async fn run() -> cacheback::Result<()> {
/// // No `.prefix(...)`: the queue takes the client's prefix.
/// let queue = AmqpQueue::from_url("amqp://guest:guest@127.0.0.1:5672/%2f")?;
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
pub struct AmqpQueue {
    inner: Arc<Inner>,
}

struct Inner {
    uri: AMQPUri,
    prefix: PrefixBinding,
    /// The routes this process consumes.
    routes: Vec<String>,
    options: Options,
    link: tokio::sync::Mutex<LinkState>,
    /// The consuming channel; one receive at a time.
    receiver: tokio::sync::Mutex<Option<Receiver>>,
    /// Deliveries handed out and not yet settled, by receipt.
    held: std::sync::Mutex<HashMap<u64, Held>>,
    /// The consuming channel deliveries may still be acknowledged on (0: none).
    receiving: AtomicU64,
    /// Counts receipts and consuming channels.
    ids: AtomicU64,
    enqueued: AtomicU64,
}

impl fmt::Debug for AmqpQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        // The URI holds the password: only where it points is shown.
        f.debug_struct("AmqpQueue")
            .field("host", &inner.uri.authority.host)
            .field("vhost", &inner.uri.vhost)
            .field("prefix", &inner.prefix.current())
            .field("queues", &inner.routes)
            .field("options", &inner.options)
            .finish_non_exhaustive()
    }
}

/// How the broker answered a publish.
enum Published {
    Confirmed,
    /// Refused (a negative confirm): the queue is at its bound.
    Refused,
}

impl AmqpQueue {
    fn new(uri: AMQPUri, prefix: Option<String>, routes: Vec<String>, options: Options) -> Self {
        AmqpQueue {
            inner: Arc::new(Inner {
                uri,
                prefix: PrefixBinding::new("AmqpQueue", prefix),
                routes,
                options,
                link: tokio::sync::Mutex::new(LinkState::default()),
                receiver: tokio::sync::Mutex::new(None),
                held: std::sync::Mutex::new(HashMap::new()),
                receiving: AtomicU64::new(0),
                ids: AtomicU64::new(1),
                enqueued: AtomicU64::new(0),
            }),
        }
    }

    /// A queue at `url` with the default options, consuming the `"default"` route.
    ///
    /// ```no_run
    /// # fn main() -> cacheback::Result<()> {
    /// // The vhost is the URL's path, percent-encoded (`%2f` is the default vhost `/`).
    /// let queue = cacheback::AmqpQueue::from_url("amqps://app:secret@mq.internal/shop")?;
    /// # let _ = queue;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_url(url: &str) -> Result<AmqpQueue> {
        Self::builder(url).build()
    }

    /// Configures a queue at `url`: `amqp://user:pass@host:port/vhost` or `amqps://...`
    /// (TLS, verified against the system's roots).
    ///
    /// ```no_run
    /// # fn main() -> cacheback::Result<()> {
    /// let queue = cacheback::AmqpQueue::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
    ///     .prefetch(16)
    ///     .build()?;
    /// # let _ = queue;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(url: &str) -> AmqpQueueBuilder {
        AmqpQueueBuilder::new(url)
    }

    /// The prefix the queue's names start with: that of the client it was bound to, else
    /// (a queue used on its own) the builder's or `"cacheback"`.
    ///
    /// ```no_run
    /// # fn main() -> cacheback::Result<()> {
    /// let queue = cacheback::AmqpQueue::builder("amqp://127.0.0.1").prefix("shop").build()?;
    /// assert_eq!(queue.prefix(), "shop");
    /// # Ok(())
    /// # }
    /// ```
    pub fn prefix(&self) -> &str {
        self.inner.prefix.get()
    }

    /// Requests this handle enqueued (and the broker confirmed) so far.
    ///
    /// ```no_run
    /// # fn main() -> cacheback::Result<()> {
    /// let queue = cacheback::AmqpQueue::from_url("amqp://127.0.0.1")?;
    /// assert_eq!(queue.enqueued(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn enqueued(&self) -> u64 {
        self.inner.enqueued.load(Ordering::Relaxed)
    }

    /// Checks that the broker answers (connecting if needed, then one round trip), for
    /// readiness probes.
    ///
    /// ```no_run
    /// # async fn probe(queue: cacheback::AmqpQueue) {
    /// if let Err(e) = queue.ping().await {
    ///     eprintln!("not ready: {e}");
    /// }
    /// # }
    /// ```
    pub async fn ping(&self) -> Result<()> {
        let link = self.link().await?;
        let timeout = self.inner.options.command_timeout;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let round_trip = link.publish.exchange_declare(
            short("amq.direct"),
            ExchangeKind::Direct,
            passive,
            FieldTable::default(),
        );
        match tokio::time::timeout(timeout, round_trip).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(failure("the broker did not answer a ping", e)),
            Err(_) => {
                self.invalidate(link.generation).await;
                Err(timed_out("ping", timeout))
            }
        }
    }

    /// Requests of `route` waiting to be delivered (not counting those delivered and not yet
    /// acknowledged).
    ///
    /// ```no_run
    /// # async fn show(queue: cacheback::AmqpQueue) -> cacheback::Result<()> {
    /// println!("{} refreshes waiting", queue.len("default").await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn len(&self, route: &str) -> Result<u64> {
        self.count(&queue_name(self.prefix(), route)).await
    }

    async fn do_enqueue(&self, request: RefreshRequest) -> std::result::Result<(), EnqueueError> {
        let unavailable = EnqueueError::Unavailable;
        validate_route(&request.queue).map_err(|m| unavailable(Error::queue(BACKEND, m)))?;
        let bytes = request.encode().map_err(unavailable)?;
        let link = self.link().await.map_err(unavailable)?;
        self.declare(&link, &request.queue)
            .await
            .map_err(unavailable)?;
        let queue = queue_name(self.prefix(), &request.queue);
        match self.publish(&link, &queue, &bytes, None).await {
            Ok(Published::Confirmed) => {
                self.inner.enqueued.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(Published::Refused) => Err(EnqueueError::Full),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Publishes a persistent message to `queue` through the default exchange and waits for
    /// the broker's confirm, within the command timeout.
    async fn publish(
        &self,
        link: &link::Link,
        queue: &str,
        bytes: &[u8],
        headers: Option<FieldTable>,
    ) -> Result<Published> {
        let timeout = self.inner.options.command_timeout;
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(headers) = headers {
            properties = properties.with_headers(headers);
        }
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirmed = async {
            link.publish
                .basic_publish(short(""), short(queue), options, bytes, properties)
                .await?
                .await
        };
        match tokio::time::timeout(timeout, confirmed).await {
            Ok(Ok(Confirmation::Ack(None))) => Ok(Published::Confirmed),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(Error::queue(
                BACKEND,
                format!("the broker returned a message for `{queue}`: no such queue"),
            )),
            Ok(Ok(Confirmation::Nack(_))) => Ok(Published::Refused),
            Ok(Ok(Confirmation::NotRequested)) => Err(Error::queue(
                BACKEND,
                "publisher confirms are off on the publishing channel",
            )),
            Ok(Err(e)) => Err(failure(format!("could not publish to `{queue}`"), e)),
            Err(_) => {
                // A broker that does not confirm in time is not trusted with the next one.
                self.invalidate(link.generation).await;
                Err(timed_out(&format!("publishing to `{queue}`"), timeout))
            }
        }
    }

    /// Messages ready in `queue` (a passive declaration).
    async fn count(&self, queue: &str) -> Result<u64> {
        let link = self.link().await?;
        let timeout = self.inner.options.command_timeout;
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = async {
            let channel = link.connection.create_channel().await?;
            let q = channel
                .queue_declare(short(queue), passive, FieldTable::default())
                .await;
            let _ = channel.close(200, short("counted")).await;
            q
        };
        match tokio::time::timeout(timeout, declared).await {
            Ok(Ok(q)) => Ok(u64::from(q.message_count())),
            Ok(Err(e)) => Err(failure(
                format!("could not count the messages of `{queue}`"),
                e,
            )),
            Err(_) => Err(timed_out("counting messages", timeout)),
        }
    }
}

impl Queue for AmqpQueue {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn bind_prefix(&self, prefix: &str) -> Result<()> {
        self.inner.prefix.bind(prefix)
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(AmqpQueue::ping(self))
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

/// Locks a map or set that a panic cannot leave half-updated (inserts and removals only).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::link::dead_name;
    use super::*;

    #[test]
    fn names_and_debug_keep_to_the_prefix_and_hide_the_password() {
        assert_eq!(queue_name("app", "default"), "app:queue:default");
        assert_eq!(dead_name("app", "default"), "app:dead:default");
        let queue = AmqpQueue::from_url("amqp://user:secret@broker:5672/shop").unwrap();
        let shown = format!("{queue:?}");
        assert!(
            !shown.contains("secret") && shown.contains("broker"),
            "{shown}"
        );
        queue.bind_prefix("web").unwrap();
        assert_eq!(queue.prefix(), "web");
        assert!(queue.bind_prefix("other").is_err());
    }
}
