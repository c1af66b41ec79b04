//! [`LocalQueue`]: a bounded in-process channel.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::{self, BoxFuture};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::queue::{Delivery, EnqueueError, Queue, Receipt, RefreshRequest};

/// How many dead letters a [`LocalQueue`] keeps for inspection (oldest dropped first).
const DEAD_LETTERS_KEPT: usize = 1000;

/// The embedded default queue: a bounded in-memory channel drained by the in-process worker.
///
/// When full, [`enqueue`](Queue::enqueue) fails at once with [`EnqueueError::Full`] and the
/// drop is counted ([`LocalQueue::dropped`]); the reader releases its claim, so the next read of
/// the key triggers again. Messages are not durable: requests still queued when the process
/// exits are lost, and their keys are refreshed by the next reader once their claims expire.
/// All jobs share one channel, whatever their [`Policy::queue`](crate::Policy::queue).
///
/// ```
/// use cacheback::LocalQueue;
///
/// let queue = LocalQueue::new(10_000);
/// assert_eq!(queue.capacity(), 10_000);
/// ```
#[derive(Clone)]
pub struct LocalQueue {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<RefreshRequest>,
    rx: tokio::sync::Mutex<mpsc::Receiver<RefreshRequest>>,
    capacity: usize,
    enqueued: AtomicU64,
    dropped: AtomicU64,
    dead_letters: Mutex<VecDeque<DeadLetter>>,
}

/// A message the worker could not process, with the reason.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The request, when it decoded.
    pub request: Option<RefreshRequest>,
    /// Why it was dead-lettered.
    pub reason: String,
}

impl LocalQueue {
    /// A queue holding at most `capacity` pending requests (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        LocalQueue {
            inner: Arc::new(Inner {
                tx,
                rx: tokio::sync::Mutex::new(rx),
                capacity,
                enqueued: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                dead_letters: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// The bound on pending requests.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Requests waiting to be received.
    pub fn len(&self) -> usize {
        self.inner.capacity - self.inner.tx.capacity()
    }

    /// Whether no request is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Requests accepted so far.
    pub fn enqueued(&self) -> u64 {
        self.inner.enqueued.load(Ordering::Relaxed)
    }

    /// Requests dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// The most recent dead letters (up to 1,000), oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters_lock().iter().cloned().collect()
    }

    fn dead_letters_lock(&self) -> std::sync::MutexGuard<'_, VecDeque<DeadLetter>> {
        self.inner
            .dead_letters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for LocalQueue {
    /// A queue of 10,000 pending requests.
    fn default() -> Self {
        LocalQueue::new(10_000)
    }
}

impl fmt::Debug for LocalQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalQueue")
            .field("capacity", &self.inner.capacity)
            .field("len", &self.len())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Queue for LocalQueue {
    fn backend(&self) -> &'static str {
        "local"
    }

    fn in_process(&self) -> bool {
        true
    }

    fn enqueue(
        &self,
        request: RefreshRequest,
    ) -> BoxFuture<'_, std::result::Result<(), EnqueueError>> {
        let result = match self.inner.tx.try_send(request) {
            Ok(()) => {
                self.inner.enqueued.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                Err(EnqueueError::Full)
            }
            // Unreachable while `self` holds the receiver, but never panic on it.
            Err(mpsc::error::TrySendError::Closed(_)) => Err(EnqueueError::Unavailable(
                Error::queue("local", "local queue receiver is closed"),
            )),
        };
        Box::pin(future::ready(result))
    }

    fn receive(&self, max: usize) -> BoxFuture<'_, Result<Vec<Delivery>>> {
        Box::pin(async move {
            let mut rx = self.inner.rx.lock().await;
            let mut batch = Vec::with_capacity(max.clamp(1, 256));
            // `recv_many` is cancel-safe: a dropped call leaves every message in the channel.
            rx.recv_many(&mut batch, max.max(1)).await;
            Ok(batch
                .into_iter()
                .map(|request| Delivery::new(Ok(request), 1, Receipt::new("")))
                .collect())
        })
    }

    fn ack<'a>(&'a self, _delivery: &'a Delivery) -> BoxFuture<'a, Result<()>> {
        Box::pin(future::ready(Ok(())))
    }

    fn dead_letter<'a>(
        &'a self,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        let mut letters = self.dead_letters_lock();
        if letters.len() == DEAD_LETTERS_KEPT {
            letters.pop_front();
        }
        letters.push_back(DeadLetter {
            request: delivery.message.as_ref().ok().cloned(),
            reason: reason.to_owned(),
        });
        drop(letters);
        Box::pin(future::ready(Ok(())))
    }
}
