//! Acknowledgements by group commit: an ack joins a buffer, and whoever holds the flush lock
//! sends every buffered ack in one round trip (`XACK` + `XDEL` with many ids per stream; one
//! pipeline per shard, sent at the same time, since a pipeline stays in one cluster slot).
//! Under load a worker's concurrent refreshes share one round trip; alone, an ack costs one.

use redis::Value;

use super::{Inner, RedisQueue};
use crate::error::{Error, Result};
use crate::queue::Delivery;
use crate::redis_support::{BACKEND, Failure};

/// An acknowledgement waiting for the next flush.
pub(super) struct PendingAck {
    shard: usize,
    key: String,
    id: String,
    done: tokio::sync::oneshot::Sender<Result<()>>,
}

impl Inner {
    fn pending_acks(&self) -> std::sync::MutexGuard<'_, Vec<PendingAck>> {
        // Pushing or taking a `Vec` cannot leave it half-updated: a poisoned lock is fine.
        self.acks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RedisQueue {
    /// Acknowledges `delivery` (`XACK` + `XDEL`), in the next round trip of acks.
    pub(super) async fn do_ack(&self, delivery: &Delivery) -> Result<()> {
        let inner = &*self.inner;
        let (key, shard, _, id) = self.stream_of(&delivery.receipt)?;
        let (done, mut result) = tokio::sync::oneshot::channel();
        inner.pending_acks().push(PendingAck {
            shard,
            key,
            id: id.to_owned(),
            done,
        });
        let flushing = inner.ack_flush.lock().await;
        match result.try_recv() {
            // A previous holder of the lock sent it.
            Ok(outcome) => return outcome,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                return Err(Error::queue(
                    BACKEND,
                    "the acknowledgement was interrupted; the message may be redelivered",
                ));
            }
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
        }
        // Ours is still buffered (only lock holders take from the buffer): send it all.
        let batch = std::mem::take(&mut *inner.pending_acks());
        let outcome = self.flush_acks(&batch).await;
        for ack in batch {
            let _ = ack.done.send(outcome.clone());
        }
        drop(flushing);
        result.await.unwrap_or(outcome)
    }

    async fn flush_acks(&self, batch: &[PendingAck]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut by_stream: Vec<(usize, &str, Vec<&str>)> = Vec::new();
        for ack in batch {
            match by_stream.iter_mut().find(|(_, key, _)| *key == ack.key) {
                Some((_, _, ids)) => ids.push(&ack.id),
                None => by_stream.push((ack.shard, &ack.key, vec![&ack.id])),
            }
        }
        let mut pipes: Vec<(usize, redis::Pipeline)> = Vec::new();
        for (shard, key, ids) in &by_stream {
            let at = match pipes.iter().position(|(s, _)| s == shard) {
                Some(at) => at,
                None => {
                    pipes.push((*shard, redis::pipe()));
                    pipes.len() - 1
                }
            };
            let pipe = &mut pipes[at].1;
            pipe.cmd("XACK")
                .arg(*key)
                .arg(&self.inner.group)
                .arg(ids)
                .ignore()
                .cmd("XDEL")
                .arg(*key)
                .arg(ids)
                .ignore();
        }
        let sent = futures_util::future::join_all(
            pipes
                .iter()
                .map(|(_, pipe)| self.inner.conn.pipeline::<Value>(pipe, "XACK")),
        )
        .await;
        sent.into_iter()
            .try_for_each(|result| result.map(drop))
            .map_err(Failure::into_queue)
    }
}
