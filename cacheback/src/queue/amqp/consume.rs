//! Consuming: one channel with a consumer per route, the deliveries handed out and not yet
//! settled (by receipt), acks on the channel a delivery came on, and hand-back.

use std::sync::atomic::Ordering;

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::stream::SelectAll;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, Channel, Consumer};
use tracing::debug;

use super::AmqpQueue;
use super::link::{BACKEND, Link, failure, queue_name, short, timed_out};
use crate::error::{Error, Result};
use crate::queue::{Delivery, Receipt, RefreshRequest};

/// The consuming channel and its consumers (one per route).
pub(crate) struct Receiver {
    /// This channel's id among the queue's consuming channels.
    id: u64,
    link_generation: u64,
    channel: Channel,
    consumers: SelectAll<Consumer>,
}

/// A delivery handed out and not yet acknowledged or dead-lettered.
pub(crate) struct Held {
    acker: Acker,
    /// The consuming channel it came on.
    channel: u64,
    pub(crate) route: String,
    pub(crate) data: Vec<u8>,
    pub(crate) attempt: u32,
}

impl AmqpQueue {
    pub(super) async fn do_receive(&self, max: usize) -> Result<Vec<Delivery>> {
        let max = max.max(1);
        let mut slot = self.inner.receiver.lock().await;
        let link = self.link().await?;
        let stale = slot.as_ref().is_none_or(|r| {
            r.link_generation != link.generation || !r.channel.status().connected()
        });
        if stale {
            *slot = None;
            *slot = Some(self.open_receiver(&link, max).await?);
        }
        let Some(receiver) = slot.as_mut() else {
            return Ok(Vec::new());
        };
        let poll = self.inner.options.poll_interval;
        // Cancel-safe: a delivery stays in the consumer's buffer until `next` returns it.
        let first = match tokio::time::timeout(poll, receiver.consumers.next()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(Some(Ok(delivery))) => delivery,
            Ok(Some(Err(e))) => {
                *slot = None;
                return Err(failure("consuming failed", e));
            }
            Ok(None) => {
                *slot = None;
                return Err(Error::queue(BACKEND, "the broker cancelled the consumer"));
            }
        };
        let id = receiver.id;
        let mut out = vec![self.hold(first, id)];
        while out.len() < max {
            match receiver.consumers.next().now_or_never() {
                Some(Some(Ok(delivery))) => out.push(self.hold(delivery, id)),
                // Nothing more buffered; an error shows on the next receive.
                _ => break,
            }
        }
        Ok(out)
    }

    /// Opens a consuming channel: the prefetch, then a consumer per route.
    async fn open_receiver(&self, link: &Link, max: usize) -> Result<Receiver> {
        let o = &self.inner.options;
        let prefetch = o
            .prefetch
            .unwrap_or_else(|| u16::try_from(max).unwrap_or(u16::MAX));
        for route in &self.inner.routes {
            self.declare(link, route).await?;
        }
        let id = self.inner.ids.fetch_add(1, Ordering::Relaxed);
        let open = async {
            let channel = link.connection.create_channel().await?;
            channel
                .basic_qos(prefetch, BasicQosOptions { global: false })
                .await?;
            let mut consumers = SelectAll::new();
            for route in &self.inner.routes {
                let tag = format!("cacheback-{}-{id}-{route}", std::process::id());
                let queue = queue_name(self.prefix(), route);
                let consumer = channel
                    .basic_consume(
                        short(&queue),
                        short(&tag),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                consumers.push(consumer);
            }
            Ok::<_, lapin::Error>((channel, consumers))
        };
        let (channel, consumers) = tokio::time::timeout(o.command_timeout, open)
            .await
            .map_err(|_| timed_out("starting the consumers", o.command_timeout))?
            .map_err(|e| failure("could not start the consumers", e))?;
        // Deliveries of an older channel can no longer be acknowledged: forget them.
        super::lock(&self.inner.held).retain(|_, held| held.channel == id);
        self.inner.receiving.store(id, Ordering::Release);
        debug!(channel = id, prefetch, "consuming");
        Ok(Receiver {
            id,
            link_generation: link.generation,
            channel,
            consumers,
        })
    }

    /// Records a delivery as held and turns it into the trait's [`Delivery`].
    fn hold(&self, delivery: lapin::message::Delivery, channel: u64) -> Delivery {
        let route = delivery
            .routing_key
            .as_str()
            .rsplit_once(':')
            .map_or("", |(_, route)| route)
            .to_owned();
        let prior = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| header_u64(h, "x-delivery-count"));
        let attempt = match prior {
            Some(n) => u32::try_from(n.saturating_add(1)).unwrap_or(u32::MAX),
            None if delivery.redelivered => 2,
            None => 1,
        };
        let message = RefreshRequest::decode(&delivery.data, self.inner.options.max_message_bytes);
        let receipt = self.inner.ids.fetch_add(1, Ordering::Relaxed);
        super::lock(&self.inner.held).insert(
            receipt,
            Held {
                acker: delivery.acker,
                channel,
                route,
                data: delivery.data,
                attempt,
            },
        );
        Delivery::new(message, attempt, Receipt::new(receipt.to_string()))
    }

    /// The receipt's number, or an error for a receipt of another queue.
    pub(super) fn receipt_id(delivery: &Delivery) -> Result<u64> {
        delivery
            .receipt
            .id()
            .parse()
            .map_err(|_| Error::queue(BACKEND, "not an AmqpQueue receipt"))
    }

    pub(super) async fn do_ack(&self, delivery: &Delivery) -> Result<()> {
        let id = Self::receipt_id(delivery)?;
        let Some(held) = super::lock(&self.inner.held).remove(&id) else {
            return Ok(()); // settled already, or its channel is gone
        };
        if held.channel != self.inner.receiving.load(Ordering::Acquire) || !held.acker.usable() {
            // Its channel died: the broker has put the message back for another consumer.
            // Acknowledging it elsewhere would be wrong (tags belong to their channel).
            debug!(
                receipt = id,
                "not acknowledging a delivery of a closed channel"
            );
            return Ok(());
        }
        let timeout = self.inner.options.command_timeout;
        match tokio::time::timeout(timeout, held.acker.ack(BasicAckOptions::default())).await {
            Ok(Ok(_)) => Ok(()),
            // An ack has no reply: it fails only when its channel or connection is closing,
            // and the broker puts the message back then. Same as above, found out later.
            Ok(Err(e)) => {
                debug!(receipt = id, error = %e, "the delivery's channel closed before its ack");
                Ok(())
            }
            Err(_) => Err(timed_out("acknowledging a delivery", timeout)),
        }
    }

    /// Closes the consuming channel: the broker puts back every message it held, delivered
    /// or prefetched, for the other consumers.
    pub(super) async fn do_hand_back_held(&self) -> Result<u64> {
        let mut slot = self.inner.receiver.lock().await;
        let Some(mut receiver) = slot.take() else {
            return Ok(0);
        };
        self.inner.receiving.store(0, Ordering::Release);
        let mut buffered = 0;
        while let Some(Some(Ok(_))) = receiver.consumers.next().now_or_never() {
            buffered += 1;
        }
        let held = {
            let mut held = super::lock(&self.inner.held);
            let before = held.len();
            held.retain(|_, h| h.channel != receiver.id);
            before - held.len()
        };
        let timeout = self.inner.options.command_timeout;
        match tokio::time::timeout(timeout, receiver.channel.close(200, short("handing back")))
            .await
        {
            Ok(Ok(())) => Ok(held as u64 + buffered),
            // Closed already (its connection died): the broker has put everything back.
            Ok(Err(e)) => {
                debug!(error = %e, "the consuming channel was already closed");
                Ok(held as u64 + buffered)
            }
            Err(_) => Err(timed_out("closing the consuming channel", timeout)),
        }
    }
}

/// An integer header, whichever integer type the broker chose.
pub(crate) fn header_u64(headers: &FieldTable, name: &str) -> Option<u64> {
    match headers.inner().get(name)? {
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// A text header.
pub(crate) fn header_str(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
