//! Reads of single entries, batched under load: while [`IN_FLIGHT`] reads of a store are
//! already on their way to one Redis, a further read waits for one of them to come back, and
//! every read that waited meanwhile goes out together in one `MGET`. A lone read is a plain
//! `GET` with nothing added; a burst of reads costs Redis (and this process) one command per
//! batch rather than one per read, and each key once per batch however many of its readers
//! waited (a hot key's burst is one `GET`). On a Redis Cluster, where the keys of a batch
//! live in different slots, only readers of one key share commands (`store/same_key.rs`):
//! while a `GET` of a key is on its way, further reads of it wait and share the next one.
//!
//! A batch runs in a task of its own, so a reader that gives up (its future dropped) never
//! strands the readers batched after it; a waiter that gives up simply does not take its reply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use redis::Value;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::redis_support::{Conn, Failure};
use crate::store::same_key::{SameKey, Turn};

/// Reads sent at once before further reads wait to be batched.
const IN_FLIGHT: usize = 2;

/// The most keys in one `MGET`: a bigger backlog goes out as several batches, one after the
/// other, so that no one command keeps Redis busy for long.
const PER_BATCH: usize = 256;

/// An entry key's bytes as Redis returned them (`None`: no such key).
pub(super) type Raw = Option<Bytes>;

/// The reads of one store (shared by its clones).
pub(super) struct Reads {
    conn: Conn,
    state: Mutex<State>,
    /// On a cluster: the keys being read, with the readers waiting for their next `GET`.
    same_key: SameKey<Result<Raw>>,
}

#[derive(Default)]
struct State {
    /// Reads (or batches) on their way to Redis.
    in_flight: usize,
    /// Reads waiting for the next batch.
    waiting: Vec<Waiter>,
}

struct Waiter {
    key: Vec<u8>,
    reply: oneshot::Sender<Result<Raw>>,
}

/// A place among the reads in flight; giving it back sends the reads that waited for it.
struct Slot {
    reads: Arc<Reads>,
}

impl Reads {
    /// The reads of a store on `conn` (one Redis).
    pub(super) fn new(conn: Conn) -> Self {
        Reads {
            conn,
            state: Mutex::default(),
            same_key: SameKey::default(),
        }
    }

    /// Reads the entry key `key`: at once when few reads are in flight, else in the next batch.
    pub(super) async fn get(self: &Arc<Self>, key: Vec<u8>) -> Result<Raw> {
        let waiting = {
            let mut state = self.lock();
            if state.in_flight < IN_FLIGHT {
                state.in_flight += 1;
                Err(key)
            } else {
                let (reply, waiting) = oneshot::channel();
                state.waiting.push(Waiter { key, reply });
                Ok(waiting)
            }
        };
        let waiting = match waiting {
            Ok(waiting) => waiting,
            Err(key) => {
                let slot = Slot {
                    reads: Arc::clone(self),
                };
                let read = get_one(&self.conn, &key).await;
                drop(slot);
                return read;
            }
        };
        waiting.await.unwrap_or_else(|_| {
            Err(
                Failure::protocol("MGET", "the batch of reads was dropped with its runtime")
                    .into_store(),
            )
        })
    }

    /// Reads the entry key `key` on a cluster: at once when no read of the key is on its way,
    /// else in the `GET` sent when that read returns, shared with the key's other readers.
    pub(super) async fn get_on_cluster(self: &Arc<Self>, key: Vec<u8>) -> Result<Raw> {
        match self.same_key.turn(&key) {
            Turn::Wait(reply) => match reply.await {
                Ok(reply) => reply,
                // The key was given up before a command went out for this reader.
                Err(_) => get_one(&self.conn, &key).await,
            },
            Turn::Send => {
                let sending = Sending { reads: self, key };
                get_one(&self.conn, &sending.key).await
            }
        }
    }

    /// Sends the next `GET` of `key` for its readers that waited while one was in flight (from
    /// a task of its own; the connection bounds it with its command timeout), or frees the key
    /// when none did.
    fn hand_on(self: &Arc<Self>, key: Vec<u8>) {
        let waiting = self.same_key.done(&key);
        if waiting.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to send it from (it is going away): the waiters read on their own.
            self.same_key.abandon(&key);
            return;
        };
        let reads = Arc::clone(self);
        runtime.spawn(async move {
            let reply = get_one(&reads.conn, &key).await;
            reads.hand_on(key);
            for waiter in waiting {
                let _ = waiter.send(reply.clone());
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A cluster reader's `GET` of a key in flight; when it is over (or given up), the readers
/// that waited meanwhile get the next one.
struct Sending<'r> {
    reads: &'r Arc<Reads>,
    key: Vec<u8>,
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.reads.hand_on(std::mem::take(&mut self.key));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.reads.lock();
        if state.waiting.is_empty() {
            state.in_flight -= 1;
            return;
        }
        let take = state.waiting.len().min(PER_BATCH);
        let batch: Vec<Waiter> = state.waiting.drain(..take).collect();
        drop(state);
        // The place passes on to the batch, which gives it back when it is done.
        let slot = Slot {
            reads: Arc::clone(&self.reads),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(send(batch, slot));
            }
            // No runtime to send them from (it is going away): the waiters get an error and
            // the place is given back (by `slot`'s own drop, which finds no one waiting or
            // fails the next ones the same way).
            Err(_) => drop(batch),
        }
    }
}

/// Sends a batch: one `GET` when its readers all want one key, else one `MGET` of each of its
/// keys once, and hands each waiter its reply (all of them the error, if the command failed).
///
/// Readers of the same key share one reply: each of them was waiting before the command went
/// out, so the reply is as recent as one they had sent themselves.
async fn send(batch: Vec<Waiter>, slot: Slot) {
    let (keys, places) = distinct_keys(&batch);
    let replies = if let [one] = keys.as_slice() {
        get_one(&slot.reads.conn, one).await.map(|raw| vec![raw])
    } else {
        get_many(&slot.reads.conn, keys.iter().copied()).await
    };
    drop(slot);
    match replies {
        Ok(replies) => {
            for (waiter, place) in batch.into_iter().zip(places) {
                let _ = waiter.reply.send(Ok(replies[place].clone()));
            }
        }
        Err(error) => {
            for waiter in batch {
                let _ = waiter.reply.send(Err(error.clone()));
            }
        }
    }
}

/// The distinct keys of `batch` in the order first asked, and for each waiter the place of its
/// key among them.
fn distinct_keys(batch: &[Waiter]) -> (Vec<&[u8]>, Vec<usize>) {
    let Some(first) = batch.first() else {
        return (Vec::new(), Vec::new());
    };
    // A hot key's readers are the common batch: all of one key needs no map.
    if batch.iter().all(|waiter| waiter.key == first.key) {
        return (vec![first.key.as_slice()], vec![0; batch.len()]);
    }
    let mut keys = Vec::with_capacity(batch.len());
    let mut seen: HashMap<&[u8], usize> = HashMap::with_capacity(batch.len());
    let places = batch
        .iter()
        .map(|waiter| {
            *seen.entry(waiter.key.as_slice()).or_insert_with(|| {
                keys.push(waiter.key.as_slice());
                keys.len() - 1
            })
        })
        .collect();
    (keys, places)
}

/// One `GET`.
pub(super) async fn get_one(conn: &Conn, key: &[u8]) -> Result<Raw> {
    let mut cmd = redis::cmd("GET");
    cmd.arg(key);
    let reply: Value = conn.query(&cmd, "GET").await.map_err(Failure::into_store)?;
    raw_of("GET", reply)
}

/// One `MGET` of `keys` (at least one), the replies in their order.
pub(super) async fn get_many<'k>(
    conn: &Conn,
    keys: impl ExactSizeIterator<Item = &'k [u8]>,
) -> Result<Vec<Raw>> {
    let asked = keys.len();
    let mut cmd = redis::cmd("MGET");
    for key in keys {
        cmd.arg(key);
    }
    let reply: Value = conn
        .query(&cmd, "MGET")
        .await
        .map_err(Failure::into_store)?;
    let Value::Array(values) = reply else {
        return Err(Failure::protocol("MGET", format!("{reply:?}")).into_store());
    };
    if values.len() != asked {
        let message = format!("{} replies to {asked} keys", values.len());
        return Err(Failure::protocol("MGET", message).into_store());
    }
    values
        .into_iter()
        .map(|value| raw_of("MGET", value))
        .collect()
}

/// An entry key's reply: its bytes, or `None`.
fn raw_of(what: &'static str, value: Value) -> Result<Raw, Error> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(Bytes::from(bytes))),
        other => Err(Failure::protocol(what, format!("{other:?}")).into_store()),
    }
}
