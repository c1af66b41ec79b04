//! Announced changes: every write's script publishes the key's digest and new generation on
//! the prefix's channel, and [`watch`] turns a subscription to that channel into the
//! [`Change`]s a near cache applies.
//!
//! Pub/sub rather than Redis client-side caching (`CLIENT TRACKING`): the announcement comes
//! from the write itself, inside its script, so it carries the new generation (a copy that
//! is already as new is kept) and needs no RESP3, no per-connection tracking state to rebuild
//! after every reconnection of the multiplexed connection, and no server memory per key read.
//! The cost is that every process watching a prefix hears of every write under it, read by it
//! or not (`SCALING.md` in the repository works out where that stops paying).

use std::time::Duration;

use futures_util::StreamExt;
use redis::Client;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tracing::{debug, warn};

use crate::error::Chain;
use crate::redis_support::{ConnOptions, Failure};
use crate::store::{Change, Changes};

/// The channel a prefix's writes are announced on.
pub(super) fn channel(prefix: &str) -> String {
    format!("cacheback:changes:{prefix}")
}

/// An announcement: a byte (1 for a delete), the 16-byte digest, then the 8-byte generation,
/// both big-endian.
const MESSAGE_LEN: usize = 25;

/// The first byte of a tag's announcement, followed by the tag's 16-byte digest and its record
/// as text (`<invalidated>:<deleted>`).
pub(super) const TAG_MARKER: u8 = 2;

/// How often an idle subscription is checked with a `PING` (a connection that died without
/// closing would otherwise go unnoticed until the next write).
const PING_EVERY: Duration = Duration::from_secs(1);

/// The first and the longest wait before subscribing again.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Decodes an announcement.
pub(super) fn decode(message: &[u8]) -> Option<Change> {
    if message.first() == Some(&TAG_MARKER) && message.len() > 17 {
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&message[1..17]);
        let state = super::layout::tag_record(&message[17..])?;
        return Some(Change::Tagged {
            tag: u128::from_be_bytes(tag),
            state,
        });
    }
    if message.len() != MESSAGE_LEN {
        return None;
    }
    let deleted = match message[0] {
        0 => false,
        1 => true,
        _ => return None,
    };
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&message[1..17]);
    let mut generation = [0u8; 8];
    generation.copy_from_slice(&message[17..]);
    Some(Change::Written {
        digest: u128::from_be_bytes(digest),
        generation: u64::from_be_bytes(generation),
        deleted,
    })
}

/// Subscribes to `prefix`'s changes in a task of its own, which subscribes again whenever the
/// subscription is lost and stops when the returned stream is dropped.
pub(super) fn watch(client: Client, options: ConnOptions, prefix: &str) -> Changes {
    let (tx, mut rx) = unbounded_channel();
    let channel = channel(prefix);
    tokio::spawn(async move {
        let mut wait = RETRY_FIRST;
        loop {
            let watched = tokio::select! {
                () = tx.closed() => return,
                watched = subscription(&client, options, &channel, &tx) => watched,
            };
            if watched {
                // It was live: whatever ended it, try again soon.
                wait = RETRY_FIRST;
                if tx.send(Change::Lost).is_err() {
                    return;
                }
            }
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(RETRY_MAX);
        }
    });
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// One subscription, from connecting to its loss. Returns whether it was ever live (then the
/// caller announces its loss).
async fn subscription(
    client: &Client,
    options: ConnOptions,
    channel: &str,
    tx: &UnboundedSender<Change>,
) -> bool {
    let connected = tokio::time::timeout(options.connect_timeout, async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    })
    .await;
    let pubsub = match connected {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(error)) => {
            let error = Failure::Redis {
                what: "SUBSCRIBE",
                source: error,
            }
            .into_store();
            debug!(error = %Chain(&error), "cannot subscribe to announced changes yet");
            return false;
        }
        Err(_) => {
            debug!("cannot subscribe to announced changes yet: timed out");
            return false;
        }
    };
    if tx.send(Change::Watching).is_err() {
        return true;
    }
    let (mut sink, mut messages) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    warn!("the subscription to announced changes was lost; the near cache is flushed");
                    return true;
                };
                let change = decode(message.get_payload_bytes()).unwrap_or_else(|| {
                    warn!(channel, "an announcement on the changes channel is not one; flushing the near cache");
                    Change::Lost
                });
                let flushed = change == Change::Lost;
                if tx.send(change).is_err() || (flushed && tx.send(Change::Watching).is_err()) {
                    return true;
                }
            }
            _ = ping.tick() => {
                let pong = tokio::time::timeout(options.command_timeout, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    warn!("the subscription to announced changes stopped answering; the near cache is flushed");
                    return true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_decode_and_others_do_not() {
        let mut message = vec![1];
        message.extend_from_slice(&0x0102_u128.to_be_bytes());
        message.extend_from_slice(&7u64.to_be_bytes());
        assert_eq!(
            decode(&message),
            Some(Change::Written {
                digest: 0x0102,
                generation: 7,
                deleted: true,
            })
        );
        assert_eq!(decode(&message[..24]), None);
        message[0] = 2;
        assert_eq!(decode(&message), None);
        assert_eq!(decode(b""), None);
        let mut tagged = vec![TAG_MARKER];
        tagged.extend_from_slice(&5u128.to_be_bytes());
        tagged.extend_from_slice(b"9:4");
        assert_eq!(
            decode(&tagged),
            Some(Change::Tagged {
                tag: 5,
                state: crate::tags::TagState::new(9, 4),
            })
        );
        tagged.truncate(18);
        assert_eq!(decode(&tagged), None);
        assert_eq!(channel("app"), "cacheback:changes:app");
    }
}
