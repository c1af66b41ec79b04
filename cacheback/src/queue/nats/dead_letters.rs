//! Dead letters: a message that cannot be processed is published, with its reason in headers,
//! to the dead-letter stream, then acknowledged. [`NatsQueue::dead_letters`] reads them back.

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use tracing::debug;

use super::link::failure;
use super::{NatsQueue, lock};
use crate::error::Result;
use crate::queue::{Delivery, RefreshRequest};

const REASON_HEADER: &str = "Cacheback-Reason";
const ATTEMPT_HEADER: &str = "Cacheback-Attempt";
const QUEUE_HEADER: &str = "Cacheback-Queue";
const JOB_HEADER: &str = "Cacheback-Job";

/// A message in the dead-letter stream ([`NatsQueue::dead_letters`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NatsDeadLetter {
    /// The dead letter's sequence in the dead-letter stream.
    pub sequence: u64,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The delivery it was dead-lettered at.
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

/// Header values are one line.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

impl NatsQueue {
    pub(super) async fn do_dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        let id = Self::receipt_id(delivery)?;
        let Some((route, data, attempt)) = lock(&self.inner.held)
            .get(&id)
            .map(|h| (h.route.clone(), h.data.clone(), h.attempt))
        else {
            debug!(receipt = id, "dead-lettering a delivery no longer held");
            return Ok(());
        };
        let mut headers = HeaderMap::new();
        headers.insert(REASON_HEADER, one_line(reason).as_str());
        headers.insert(ATTEMPT_HEADER, attempt.to_string().as_str());
        headers.insert(QUEUE_HEADER, route.as_str());
        if let Ok(request) = &delivery.message {
            headers.insert(JOB_HEADER, one_line(&request.job).as_str());
        }
        let link = self.link().await?;
        link.check_connected()?;
        self.ensure_streams(&link).await?;
        let publish = PublishMessage::build()
            .payload(data.into())
            .headers(headers);
        self.publish(&link, self.subject("dead", &route), publish)
            .await?;
        // If this ack is lost, the message is delivered and dead-lettered again: a dead letter
        // may be stored twice, never lost.
        self.do_ack(delivery).await
    }

    /// Up to `count` dead letters of `route`, oldest first (read by sequence; left in place).
    ///
    /// ```no_run
    /// # async fn show(queue: cacheback::NatsQueue) -> cacheback::Result<()> {
    /// for letter in queue.dead_letters("default", 10).await? {
    ///     println!("{:?}: {}", letter.job, letter.reason);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn dead_letters(&self, route: &str, count: usize) -> Result<Vec<NatsDeadLetter>> {
        let link = self.link().await?;
        self.ensure_streams(&link).await?;
        let name = self.stream_name("dead");
        let mut stream = link
            .js
            .get_stream(&name)
            .await
            .map_err(|e| failure(format!("could not find stream `{name}`"), e))?;
        let state = stream
            .info()
            .await
            .map_err(|e| failure(format!("could not read stream `{name}`"), e))?
            .state
            .clone();
        let subject = self.subject("dead", route);
        let limit = self.inner.options.max_message_bytes;
        let mut out = Vec::new();
        let mut sequence = state.first_sequence.max(1);
        while out.len() < count && state.messages > 0 && sequence <= state.last_sequence {
            // A sequence may be gone (trimmed); that is not an error here.
            if let Ok(message) = stream.get_raw_message(sequence).await
                && message.subject.as_str() == subject
            {
                let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
                out.push(NatsDeadLetter {
                    sequence,
                    reason: header(REASON_HEADER).unwrap_or_default(),
                    attempt: header(ATTEMPT_HEADER)
                        .and_then(|a| a.parse().ok())
                        .unwrap_or(0),
                    queue: header(QUEUE_HEADER).unwrap_or_else(|| route.to_owned()),
                    job: header(JOB_HEADER),
                    request: RefreshRequest::decode(&message.payload, limit).ok(),
                    message: message.payload.to_vec(),
                });
            }
            sequence += 1;
        }
        Ok(out)
    }
}
