//! A queue wrapper that counts what crossed the queue, whatever the queue: the suite's
//! behaviours check "exactly one refresh was enqueued" and "the worker dead-lettered it, with
//! this reason" on any backend. It can also be told to answer as a full queue does. And
//! [`Unavailable`], a queue whose backend is down.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::{self, BoxFuture};

use super::fixture::lock;
use crate::error::{Error, Result};
use crate::queue::{Delivery, EnqueueError, Queue, RefreshRequest};

/// A dead letter, as the worker handed it to the queue.
#[derive(Debug, Clone)]
pub(super) struct Letter {
    /// The request, when the message decoded.
    pub(super) request: Option<RefreshRequest>,
    pub(super) reason: String,
}

/// The suite's queue: the backend's queue, with counts of what went through it.
pub(super) struct Recorded {
    inner: Arc<dyn Queue>,
    enqueued: AtomicU64,
    refused_full: AtomicU64,
    acked: AtomicU64,
    dead_letters: Mutex<Vec<Letter>>,
    /// When set, enqueues are refused with [`EnqueueError::Full`] without reaching `inner`.
    full: AtomicBool,
}

impl fmt::Debug for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorded")
            .field("inner", &self.inner)
            .field("enqueued", &self.enqueued())
            .field("acked", &self.acked.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Recorded {
    pub(super) fn new(inner: Arc<dyn Queue>) -> Self {
        Recorded {
            inner,
            enqueued: AtomicU64::new(0),
            refused_full: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            dead_letters: Mutex::new(Vec::new()),
            full: AtomicBool::new(false),
        }
    }

    /// Requests the queue accepted (counted when sent, so never behind what a worker saw).
    pub(super) fn enqueued(&self) -> u64 {
        self.enqueued.load(Ordering::SeqCst)
    }

    /// Requests refused because the queue was full.
    pub(super) fn refused_full(&self) -> u64 {
        self.refused_full.load(Ordering::SeqCst)
    }

    /// The dead letters so far, oldest first.
    pub(super) fn dead_letters(&self) -> Vec<Letter> {
        lock(&self.dead_letters).clone()
    }

    /// Whether every accepted request was acknowledged or dead-lettered.
    pub(super) fn settled(&self) -> bool {
        let done = self.acked.load(Ordering::SeqCst) + lock(&self.dead_letters).len() as u64;
        done >= self.enqueued()
    }

    /// From now on, answer enqueues as a full queue does (or, with `false`, stop).
    pub(super) fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::SeqCst);
    }
}

impl Queue for Recorded {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn bind_prefix(&self, prefix: &str) -> Result<()> {
        self.inner.bind_prefix(prefix)
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.ping()
    }

    fn enqueue(
        &self,
        request: RefreshRequest,
    ) -> BoxFuture<'_, std::result::Result<(), EnqueueError>> {
        Box::pin(async move {
            if self.full.load(Ordering::SeqCst) {
                self.refused_full.fetch_add(1, Ordering::SeqCst);
                return Err(EnqueueError::Full);
            }
            // Counted before it is sent: a worker may receive the request (and a test see it
            // handled) before the reply to the enqueue comes back.
            self.enqueued.fetch_add(1, Ordering::SeqCst);
            let result = self.inner.enqueue(request).await;
            match &result {
                Ok(()) => {}
                Err(EnqueueError::Full) => {
                    self.enqueued.fetch_sub(1, Ordering::SeqCst);
                    self.refused_full.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => {
                    self.enqueued.fetch_sub(1, Ordering::SeqCst);
                }
            }
            result
        })
    }

    fn receive(&self, max: usize) -> BoxFuture<'_, Result<Vec<Delivery>>> {
        self.inner.receive(max)
    }

    fn ack<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.inner.ack(delivery).await?;
            self.acked.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.inner.dead_letter(delivery, reason).await?;
            lock(&self.dead_letters).push(Letter {
                request: delivery.message.as_ref().ok().cloned(),
                reason: reason.to_owned(),
            });
            Ok(())
        })
    }

    fn hand_back_held(&self) -> BoxFuture<'_, Result<u64>> {
        self.inner.hand_back_held()
    }
}

/// A queue whose backend is down: every enqueue fails as unavailable, and nothing is ever
/// received.
#[derive(Debug)]
pub(super) struct Unavailable;

impl Queue for Unavailable {
    fn backend(&self) -> &'static str {
        "unavailable"
    }

    fn enqueue(&self, _: RefreshRequest) -> BoxFuture<'_, std::result::Result<(), EnqueueError>> {
        Box::pin(future::ready(Err(EnqueueError::Unavailable(Error::queue(
            "unavailable",
            "the suite's queue is down",
        )))))
    }

    fn receive(&self, _: usize) -> BoxFuture<'_, Result<Vec<Delivery>>> {
        Box::pin(future::pending())
    }

    fn ack<'a>(&'a self, _: &'a Delivery) -> BoxFuture<'a, Result<()>> {
        Box::pin(future::ready(Ok(())))
    }

    fn dead_letter<'a>(&'a self, _: &'a Delivery, _: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(future::ready(Ok(())))
    }
}
