//! Consuming: a batch from each route's pull consumer, the deliveries handed out and not yet
//! settled (by receipt), double acks, and hand-back (negative acks).

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::pull::Batch;
use async_nats::jetstream::message::Acker;
use futures_util::StreamExt;
use tracing::debug;

use super::link::{BACKEND, failure, timed_out};
use super::{NatsQueue, lock};
use crate::error::{Error, Result};
use crate::queue::{Delivery, Receipt, RefreshRequest};

/// A delivery handed out and not yet acknowledged or dead-lettered.
pub(crate) struct Held {
    acker: Acker,
    pub(crate) route: String,
    pub(crate) data: Vec<u8>,
    pub(crate) attempt: u32,
}

/// The pull in progress, kept across receives: a receive dropped while it waited leaves it
/// here, and the next receive (or the hand-back) takes what it brings.
#[derive(Default)]
pub(crate) struct Pulling {
    /// Where the next pull goes, round-robin over the routes.
    next_route: usize,
    current: Option<(String, Batch)>,
}

impl NatsQueue {
    /// Each route's share of the poll interval (never less than 10 ms).
    fn pull_share(&self) -> Duration {
        let routes = u32::try_from(self.inner.routes.len().max(1)).unwrap_or(u32::MAX);
        (self.inner.options.poll_interval / routes).max(Duration::from_millis(10))
    }

    pub(super) async fn do_receive(&self, max: usize) -> Result<Vec<Delivery>> {
        let max = max.max(1);
        let mut pulling = self.inner.receiving.lock().await;
        let link = self.link().await?;
        let routes = &self.inner.routes;
        let mut out = Vec::new();
        for _ in 0..routes.len() {
            if out.len() >= max {
                break;
            }
            if pulling.current.is_none() {
                let route = &routes[pulling.next_route % routes.len()];
                pulling.next_route = pulling.next_route.wrapping_add(1);
                let consumer = self.consumer(&link, route).await?;
                let batch = consumer
                    .batch()
                    .max_messages(max - out.len())
                    .expires(self.pull_share())
                    .messages()
                    .await;
                let batch = match batch {
                    Ok(batch) => batch,
                    Err(e) => {
                        link.forget_setup().await;
                        return Err(failure(format!("could not pull from `{route}`"), e));
                    }
                };
                pulling.current = Some((route.clone(), batch));
            }
            let Some((route, batch)) = pulling.current.as_mut() else {
                break;
            };
            let route = route.clone();
            // Cancel-safe: the batch stays in `pulling` until it ends.
            while out.len() < max {
                match batch.next().await {
                    Some(Ok(message)) => out.push(self.hold(message, &route)),
                    None => {
                        pulling.current = None;
                        break;
                    }
                    Some(Err(e)) => {
                        pulling.current = None;
                        // The consumer or stream may be gone (a server that lost its storage):
                        // the next receive makes sure they exist.
                        link.forget_setup().await;
                        if out.is_empty() {
                            return Err(failure(format!("could not pull from `{route}`"), e));
                        }
                        // What was taken is handed out; the error shows on the next receive.
                        debug!(error = %e, "pull ended early");
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Records a message as held and turns it into the trait's [`Delivery`].
    fn hold(&self, message: async_nats::jetstream::Message, route: &str) -> Delivery {
        let attempt = message
            .info()
            .ok()
            .and_then(|info| u32::try_from(info.delivered).ok())
            .unwrap_or(1)
            .max(1);
        let (message, acker) = message.split();
        let data = message.payload.to_vec();
        let decoded = RefreshRequest::decode(&data, self.inner.options.max_message_bytes);
        let receipt = self.inner.receipts.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.held).insert(
            receipt,
            Held {
                acker,
                route: route.to_owned(),
                data,
                attempt,
            },
        );
        Delivery::new(decoded, attempt, Receipt::new(receipt.to_string()))
    }

    /// The receipt's number, or an error for a receipt of another queue.
    pub(super) fn receipt_id(delivery: &Delivery) -> Result<u64> {
        delivery
            .receipt
            .id()
            .parse()
            .map_err(|_| Error::queue(BACKEND, "not a NatsQueue receipt"))
    }

    pub(super) async fn do_ack(&self, delivery: &Delivery) -> Result<()> {
        let id = Self::receipt_id(delivery)?;
        let Some(held) = lock(&self.inner.held).remove(&id) else {
            return Ok(()); // settled already
        };
        let timeout = self.inner.options.command_timeout;
        match tokio::time::timeout(timeout, held.acker.double_ack()).await {
            Ok(Ok(())) => Ok(()),
            // Not acknowledged: the server delivers it again after `ack_wait`.
            Ok(Err(e)) => Err(Error::queue(
                BACKEND,
                format!("could not acknowledge a delivery (it is delivered again): {e}"),
            )),
            Err(_) => Err(timed_out("acknowledging a delivery", timeout)),
        }
    }

    /// Negatively acknowledges every held delivery, and what the pull in progress still
    /// brings (waiting for it to end): the server delivers them again at once.
    pub(super) async fn do_hand_back_held(&self) -> Result<u64> {
        let mut pulling = self.inner.receiving.lock().await;
        if let Some((route, mut batch)) = pulling.current.take() {
            let bound = self.pull_share() + self.inner.options.command_timeout;
            let _ = tokio::time::timeout(bound, async {
                while let Some(message) = batch.next().await {
                    if let Ok(message) = message {
                        self.hold(message, &route);
                    }
                }
            })
            .await;
        }
        drop(pulling);
        let held: Vec<Held> = lock(&self.inner.held).drain().map(|(_, h)| h).collect();
        let mut handed = 0;
        for h in held {
            match h.acker.ack_with(AckKind::Nak(None)).await {
                Ok(()) => handed += 1,
                Err(e) => {
                    debug!(error = %e, "a hand-back was not sent; it comes back after ack_wait")
                }
            }
        }
        if handed > 0
            && let Ok(link) = self.link().await
        {
            let timeout = self.inner.options.command_timeout;
            let _ = tokio::time::timeout(timeout, link.client.flush()).await;
        }
        Ok(handed)
    }
}
