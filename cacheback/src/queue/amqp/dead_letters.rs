//! Dead letters: a message that cannot be processed is published, with its reason in headers,
//! to its route's dead-letter queue, then acknowledged. [`AmqpQueue::dead_letters`] reads them
//! back without removing them.

use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, FieldTable};
use tracing::debug;

use super::consume::{header_str, header_u64};
use super::link::{dead_name, failure, long_string, short, timed_out};
use super::{AmqpQueue, Published, lock};
use crate::error::{Error, Result};
use crate::queue::{Delivery, RefreshRequest};

const REASON_HEADER: &str = "x-cacheback-reason";
const ATTEMPT_HEADER: &str = "x-cacheback-attempt";
const QUEUE_HEADER: &str = "x-cacheback-queue";
const JOB_HEADER: &str = "x-cacheback-job";
/// Set by the broker when it dead-letters a message itself (the delivery limit).
const BROKER_REASON_HEADER: &str = "x-first-death-reason";

/// A message in a dead-letter queue ([`AmqpQueue::dead_letters`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AmqpDeadLetter {
    /// Why it was dead-lettered: the worker's reason, or `broker: <reason>` when the broker
    /// dead-lettered it (`broker: delivery_limit`).
    pub reason: String,
    /// The delivery it was dead-lettered at (0 when the broker did it).
    pub attempt: u32,
    /// The route it came from.
    pub queue: String,
    /// The job name, when the message decoded.
    pub job: Option<String>,
    /// The original message bytes.
    pub message: Vec<u8>,
    /// The decoded request, when the message decodes.
    pub request: Option<RefreshRequest>,
}

impl AmqpQueue {
    pub(super) async fn do_dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        let id = Self::receipt_id(delivery)?;
        let Some((route, data, attempt)) = lock(&self.inner.held)
            .get(&id)
            .map(|h| (h.route.clone(), h.data.clone(), h.attempt))
        else {
            debug!(receipt = id, "dead-lettering a delivery no longer held");
            return Ok(());
        };
        let mut headers = FieldTable::default();
        headers.insert(short(REASON_HEADER), long_string(reason));
        headers.insert(
            short(ATTEMPT_HEADER),
            AMQPValue::LongLongInt(i64::from(attempt)),
        );
        headers.insert(short(QUEUE_HEADER), long_string(&route));
        if let Ok(request) = &delivery.message {
            headers.insert(short(JOB_HEADER), long_string(&request.job));
        }
        let link = self.link().await?;
        self.declare(&link, &route).await?;
        let dead = dead_name(self.prefix(), &route);
        match self.publish(&link, &dead, &data, Some(headers)).await? {
            Published::Confirmed => {}
            Published::Refused => {
                return Err(Error::queue(
                    super::link::BACKEND,
                    format!("the broker refused a dead letter for `{dead}`"),
                ));
            }
        }
        // If the channel died since, this does nothing and the broker redelivers the message,
        // which is then dead-lettered again: a dead letter may be stored twice, never lost.
        self.do_ack(delivery).await
    }

    /// Up to `count` dead letters of `route`, oldest first, left in place: they are fetched on
    /// a channel of their own, which is closed without acknowledging them.
    ///
    /// ```no_run
    /// # async fn show(queue: cacheback::AmqpQueue) -> cacheback::Result<()> {
    /// for letter in queue.dead_letters("default", 10).await? {
    ///     println!("{:?}: {}", letter.job, letter.reason);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn dead_letters(&self, route: &str, count: usize) -> Result<Vec<AmqpDeadLetter>> {
        let link = self.link().await?;
        self.declare(&link, route).await?;
        let dead = dead_name(self.prefix(), route);
        let timeout = self.inner.options.command_timeout;
        let limit = self.inner.options.max_message_bytes;
        let read = async {
            let channel = link.connection.create_channel().await?;
            let mut out = Vec::new();
            while out.len() < count {
                let got = channel
                    .basic_get(short(&dead), BasicGetOptions { no_ack: false })
                    .await?;
                let Some(got) = got else { break };
                out.push(letter(&got.delivery, route, limit));
            }
            // Unacknowledged, they go back to the queue.
            let _ = channel.close(200, short("read")).await;
            Ok::<_, lapin::Error>(out)
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| timed_out("reading dead letters", timeout))?
            .map_err(|e| failure(format!("could not read the dead letters of `{dead}`"), e))
    }

    /// Dead letters waiting in `route`'s dead-letter queue.
    ///
    /// ```no_run
    /// # async fn show(queue: cacheback::AmqpQueue) -> cacheback::Result<()> {
    /// assert_eq!(queue.dead_letter_count("default").await?, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn dead_letter_count(&self, route: &str) -> Result<u64> {
        let link = self.link().await?;
        self.declare(&link, route).await?;
        self.count(&dead_name(self.prefix(), route)).await
    }
}

fn letter(delivery: &lapin::message::Delivery, route: &str, limit: usize) -> AmqpDeadLetter {
    let empty = FieldTable::default();
    let headers = delivery.properties.headers().as_ref().unwrap_or(&empty);
    let reason = header_str(headers, REASON_HEADER)
        .or_else(|| header_str(headers, BROKER_REASON_HEADER).map(|r| format!("broker: {r}")))
        .unwrap_or_else(|| "dead-lettered by the broker".to_owned());
    AmqpDeadLetter {
        reason,
        attempt: header_u64(headers, ATTEMPT_HEADER)
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(0),
        queue: header_str(headers, QUEUE_HEADER).unwrap_or_else(|| route.to_owned()),
        job: header_str(headers, JOB_HEADER),
        request: RefreshRequest::decode(&delivery.data, limit).ok(),
        message: delivery.data.clone(),
    }
}
