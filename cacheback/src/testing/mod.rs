//! Conformance suites that every [`Store`] and [`Queue`] implementation must pass
//! (feature `testing`).
//!
//! Each suite is an `async fn` that exercises the trait's documented contract and panics with a
//! message naming the violated rule. Backends run them from their own tests, against a real
//! server:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use cacheback::{LocalQueue, MemoryStore, testing};
//!
//! testing::store_suite(&MemoryStore::new()).await;
//! testing::queue_suite(&LocalQueue::new(100)).await;
//! # }
//! ```
//!
//! [`ClientSuite`] (or [`client_suite`], its shortcut with in-process queues) runs every client
//! behaviour that must hold whatever the store (reads and freshness windows, bursts and
//! coalesced fetches, writes, generation fencing, failures and backoff, full and unavailable
//! queues, dead letters) through real clients and workers on a given store, and, optionally,
//! a given kind of queue.
//!
//! The suites use random key digests (and the client suite prefixes of its own), so they can
//! share a store with other data; the queue suite needs a queue that starts empty.

mod client;
mod queue;
mod store;

pub use client::{ClientSuite, client_suite};
pub use queue::queue_suite;
pub use store::store_suite;

#[cfg(doc)]
use crate::{queue::Queue, store::Store};
