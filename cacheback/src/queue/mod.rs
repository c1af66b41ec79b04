//! Queues: how refresh requests reach workers.
//!
//! A [`Queue`] carries [`RefreshRequest`]s from the reader that won a key's claim to a
//! [`Worker`](crate::Worker). The trait assumes only what every transport offers (a bounded
//! send that can fail fast, a receive that hands out deliveries with a delivery count, an ack,
//! and a dead-letter destination), so Redis Streams, NATS JetStream and AMQP all fit.
//!
//! | queue | feature | for |
//! |---|---|---|
//! | [`LocalQueue`](crate::LocalQueue) | — | one process: a bounded in-memory channel drained by an in-process worker |
//! | `RedisQueue` | `redis` | a fleet: Redis Streams with consumer groups, drained by worker processes |
//! | `AmqpQueue` | `amqp` | a fleet on RabbitMQ: a quorum queue per route, publisher confirms, a dead-letter queue; a dead worker's requests come back at once |
//! | `NatsQueue` | `nats` | a fleet on NATS JetStream: a work-queue stream, durable pull consumers, a dead-letter stream, duplicate enqueues dropped |

use std::any::Any;
use std::fmt;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::store::ClaimToken;

#[cfg(feature = "amqp")]
pub(crate) mod amqp;
#[cfg(any(feature = "amqp", feature = "nats"))]
mod binding;
pub(crate) mod local;
#[cfg(feature = "nats")]
pub(crate) mod nats;
#[cfg(feature = "redis")]
pub(crate) mod redis;

#[cfg(feature = "amqp")]
pub use self::amqp::{AmqpDeadLetter, AmqpQueueBuilder};
#[cfg(feature = "nats")]
pub use self::nats::{NatsDeadLetter, NatsQueueBuilder};
#[cfg(feature = "redis")]
pub use self::redis::{
    ConsumerStats, GroupStats, QueueStats, RedisDeadLetter, RedisQueueBuilder, Replay,
};
pub use local::DeadLetter;

/// The default bound on an encoded [`RefreshRequest`]: args are small by nature, and a
/// larger message is refused before it is decoded.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Envelope version of encoded refresh requests.
const MESSAGE_VERSION: u8 = 1;

/// A request to refresh one key, from the reader that won its claim to a worker.
///
/// This is a wire format: fields are only added together with a new message version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRequest {
    /// The job's registered name.
    pub job: String,
    /// The key's text form; the worker re-derives it from `args` and refuses a mismatch.
    pub key: String,
    /// The job's args, encoded with the codec `codec`.
    pub args: Vec<u8>,
    /// The [`Codec`](crate::Codec) id of `args`.
    pub codec: u8,
    /// The claim this refresh holds; released with it when done.
    pub token: ClaimToken,
    /// The key's generation when the refresh was requested: the write only happens if it is
    /// still current.
    pub generation: u64,
    /// When the request was enqueued (for queue-lag metrics).
    pub enqueued_at: Timestamp,
    /// Consecutive failures of the key's refreshes before this one (for backoff).
    pub prior_failures: u32,
    /// The queue (stream) the job routes to.
    pub queue: String,
}

impl RefreshRequest {
    /// Encodes the request for a byte transport: a version byte, then postcard.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = vec![MESSAGE_VERSION];
        out.extend(postcard::to_stdvec(self).map_err(Error::codec)?);
        Ok(out)
    }

    /// Decodes a request, refusing anything over `limit` bytes before decoding it.
    pub fn decode(bytes: &[u8], limit: usize) -> std::result::Result<Self, MalformedMessage> {
        if bytes.len() > limit {
            return Err(MalformedMessage::new(format!(
                "message is {} bytes, over the limit of {limit} bytes",
                bytes.len()
            )));
        }
        match bytes.split_first() {
            None => Err(MalformedMessage::new("empty message")),
            Some((&MESSAGE_VERSION, rest)) => postcard::from_bytes(rest)
                .map_err(|e| MalformedMessage::new(format!("message does not decode: {e}"))),
            Some((v, _)) => Err(MalformedMessage::new(format!(
                "unknown message version {v}"
            ))),
        }
    }
}

/// Why a received message is not a usable [`RefreshRequest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed refresh message: {reason}")]
pub struct MalformedMessage {
    reason: String,
}

impl MalformedMessage {
    /// A malformed-message error with a reason.
    pub fn new(reason: impl Into<String>) -> Self {
        MalformedMessage {
            reason: reason.into(),
        }
    }

    /// Why the message was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A backend's handle on one delivered message, used to ack or dead-letter it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt(String);

impl Receipt {
    /// A receipt with the backend's message id.
    pub fn new(id: impl Into<String>) -> Self {
        Receipt(id.into())
    }

    /// The backend's message id.
    pub fn id(&self) -> &str {
        &self.0
    }
}

/// One message handed to a worker.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Delivery {
    /// The request, or why the message could not be decoded (the worker dead-letters those).
    pub message: std::result::Result<RefreshRequest, MalformedMessage>,
    /// How many times this message has been delivered, this time included (1 = first).
    pub attempt: u32,
    /// The backend's handle for ack / dead-letter.
    pub receipt: Receipt,
}

impl Delivery {
    /// A delivery from its parts.
    pub fn new(
        message: std::result::Result<RefreshRequest, MalformedMessage>,
        attempt: u32,
        receipt: Receipt,
    ) -> Self {
        Delivery {
            message,
            attempt,
            receipt,
        }
    }
}

/// Why [`Queue::enqueue`] did not accept a request.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// The queue is at capacity; the request was dropped (the reader releases the claim, so the
    /// next read triggers again).
    #[error("queue is full")]
    Full,
    /// The queue cannot be reached; the reader falls back as configured.
    #[error("queue unavailable")]
    Unavailable(#[source] Error),
}

/// How refresh requests reach workers.
///
/// Contract:
/// - `enqueue` never waits for room: when the queue is full it fails with
///   [`EnqueueError::Full`] at once; when the backend is down it fails within its timeout.
/// - `receive` waits until at least one message is available or the backend's poll period ends
///   (then it may return an empty batch). It must be cancel-safe: dropping the future loses no
///   message.
/// - A received message stays owned by the receiver until `ack` or `dead_letter`; a backend
///   with redelivery (Redis Streams, NATS, AMQP) redelivers an unacknowledged message to
///   another worker after its visibility timeout, counting `attempt` up.
/// - `dead_letter` moves the message, with the reason, where operators can inspect or replay
///   it, and acknowledges it.
pub trait Queue: Any + Send + Sync + fmt::Debug {
    /// A short name for errors and metrics (`"local"`, `"redis"`).
    fn backend(&self) -> &'static str;

    /// Adopts the key prefix of the client (or worker) the queue serves, called once by every
    /// [`CachebackBuilder::build`](crate::CachebackBuilder::build) and
    /// [`WorkerBuilder::build`](crate::worker::WorkerBuilder::build) the queue is given to. A queue
    /// that keeps its messages under a prefix (so that applications sharing a broker stay
    /// apart) takes the client's when it was built without one, and refuses a client whose
    /// prefix differs from its own with [`Error::Config`]. The default accepts any prefix.
    fn bind_prefix(&self, prefix: &str) -> Result<()> {
        let _ = prefix;
        Ok(())
    }

    /// Whether an enqueue completes in this process at once, with nothing to wait for or
    /// confirm (an in-memory channel). A stale read of the in-process store then answers
    /// first and hands its request to such a queue right after; to any other queue it hands
    /// the request before answering, so a read that says it started a refresh was confirmed
    /// by the broker. The default is `false`.
    fn in_process(&self) -> bool {
        false
    }

    /// Checks that the queue answers (one round trip for a remote queue), for readiness
    /// probes and start-up checks; the error says why not. The default, for in-process queues,
    /// always answers.
    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(futures_util::future::ready(Ok(())))
    }

    /// Sends a request.
    fn enqueue(
        &self,
        request: RefreshRequest,
    ) -> BoxFuture<'_, std::result::Result<(), EnqueueError>>;

    /// Sends several requests: what [`enqueue`](Queue::enqueue) of each returns, in the order
    /// given. Backends that can send many in one round trip (a Redis pipeline) override this;
    /// the default makes the calls concurrently.
    fn enqueue_many(
        &self,
        requests: Vec<RefreshRequest>,
    ) -> BoxFuture<'_, Vec<std::result::Result<(), EnqueueError>>> {
        Box::pin(futures_util::future::join_all(
            requests.into_iter().map(|request| self.enqueue(request)),
        ))
    }

    /// Receives up to `max` deliveries.
    fn receive(&self, max: usize) -> BoxFuture<'_, Result<Vec<Delivery>>>;

    /// Acknowledges a processed delivery.
    fn ack<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<()>>;

    /// Moves a delivery to the dead letters with `reason`, and acknowledges it.
    fn dead_letter<'a>(
        &'a self,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<()>>;

    /// Hands every message this receiver still holds (delivered, neither acknowledged nor
    /// dead-lettered) back to the queue, so that other workers get them at once rather than
    /// after the visibility timeout, and returns how many. A [`Worker`](crate::Worker) calls
    /// it once when it stops, after its refreshes finished or were abandoned, which makes a
    /// rolling deploy delay no refresh; it includes messages a receive that was dropped while
    /// it waited had already taken. Handed-back messages keep counting their deliveries.
    ///
    /// The default does nothing: right for queues whose dropped receives hold nothing (the
    /// contract of [`receive`](Queue::receive)) and that redeliver what a stopped consumer
    /// held by themselves.
    fn hand_back_held(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(futures_util::future::ready(Ok(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RefreshRequest {
        RefreshRequest {
            job: "tweets".into(),
            key: "app:tweets:00".into(),
            args: vec![1, 2, 3],
            codec: 1,
            token: ClaimToken::from_u128(7),
            generation: 3,
            enqueued_at: Timestamp::from_millis(99),
            prior_failures: 1,
            queue: "default".into(),
        }
    }

    #[test]
    fn messages_round_trip_and_bad_ones_are_named() {
        let bytes = request().encode().unwrap();
        assert_eq!(
            RefreshRequest::decode(&bytes, MAX_MESSAGE_BYTES).unwrap(),
            request()
        );
        assert_eq!(
            RefreshRequest::decode(&bytes, 3).unwrap_err().reason(),
            format!(
                "message is {} bytes, over the limit of 3 bytes",
                bytes.len()
            )
        );
        assert_eq!(
            RefreshRequest::decode(&[], 10).unwrap_err().reason(),
            "empty message"
        );
        assert!(
            RefreshRequest::decode(&[9, 1], 10)
                .unwrap_err()
                .reason()
                .contains("unknown message version 9")
        );
        assert!(
            RefreshRequest::decode(&bytes[..bytes.len() - 3], MAX_MESSAGE_BYTES)
                .unwrap_err()
                .reason()
                .contains("does not decode")
        );
    }
}
