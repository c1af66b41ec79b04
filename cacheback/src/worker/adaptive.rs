//! Adaptive concurrency: a worker starts with [`WorkerOptions::concurrency`] refreshes at a time
//! and doubles it, up to [`WorkerOptions::max_concurrency`], while requests wait in the queue and
//! the runtime keeps up.
//!
//! Two signals decide a growth step, both cheap and local to the worker:
//! - **requests wait**: a request received while every permit is taken is older than
//!   [`WorkerOptions::grow_after`] (its age is the client clock's `now` minus the time it was
//!   enqueued), so the worker falls behind its queue;
//! - **the fetches are I/O-bound**: the last refresh task started within [`RUNTIME_LAG`] of being
//!   spawned. A runtime busy with CPU-bound work starts tasks late, and more of them at once would
//!   only slow every read down; then the worker does not grow.
//!
//! The concurrency never shrinks while the worker runs: a permit is only a count, and a worker
//! with nothing to do holds no fetch open.
//!
//! [`WorkerOptions::concurrency`]: super::WorkerOptions::concurrency
//! [`WorkerOptions::max_concurrency`]: super::WorkerOptions::max_concurrency
//! [`WorkerOptions::grow_after`]: super::WorkerOptions::grow_after

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::info;

use crate::clock::Timestamp;

/// A refresh task that starts later than this after being spawned means the runtime is busy:
/// the worker does not grow then.
pub(super) const RUNTIME_LAG: Duration = Duration::from_millis(5);

/// The permits of a worker's refreshes and the rule that adds to them.
#[derive(Debug)]
pub(super) struct Concurrency {
    permits: Arc<Semaphore>,
    limit: AtomicUsize,
    max: usize,
    grow_after: Duration,
    lagging: AtomicBool,
}

impl Concurrency {
    /// Starts at `start` permits, grows up to `max` (at least `start`).
    pub(super) fn new(start: usize, max: usize, grow_after: Duration) -> Self {
        Concurrency {
            permits: Arc::new(Semaphore::new(start)),
            limit: AtomicUsize::new(start),
            max: max.max(start),
            grow_after,
            lagging: AtomicBool::new(false),
        }
    }

    /// The semaphore refreshes take their permits from.
    pub(super) fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    /// Refreshes allowed at the same time now.
    pub(super) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Records how late a refresh task started after being spawned.
    pub(super) fn started_after(&self, lag: Duration) {
        self.lagging.store(lag > RUNTIME_LAG, Ordering::Relaxed);
    }

    /// Considers one received request, enqueued at `enqueued_at`, at `now`: when every permit is
    /// taken, the request waited longer than `grow_after` and the runtime keeps up, doubles the
    /// limit (up to the maximum). Returns the new limit if it grew.
    pub(super) fn on_received(&self, enqueued_at: Timestamp, now: Timestamp) -> Option<usize> {
        let limit = self.limit();
        if limit >= self.max
            || self.permits.available_permits() > 0
            || now.since(enqueued_at) < self.grow_after
            || self.lagging.load(Ordering::Relaxed)
        {
            return None;
        }
        let grown = limit.saturating_mul(2).min(self.max);
        // One grower at a time: a lost race means another delivery grew it already.
        self.limit
            .compare_exchange(limit, grown, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        self.permits.add_permits(grown - limit);
        info!(
            from = limit,
            to = grown,
            "refresh requests wait in the queue; worker concurrency grows"
        );
        Some(grown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROW_AFTER: Duration = Duration::from_millis(20);

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn grows_only_when_every_permit_is_taken_and_the_request_waited() {
        let c = Concurrency::new(2, 8, GROW_AFTER);
        assert_eq!(c.on_received(at(0), at(1_000)), None, "permits are free");
        let held: Vec<_> = (0..2)
            .map(|_| Arc::clone(c.permits()).try_acquire_owned().unwrap())
            .collect();
        assert_eq!(c.on_received(at(990), at(1_000)), None, "a young request");
        assert_eq!(c.on_received(at(980), at(1_000)), Some(4), "waited 20 ms");
        assert_eq!(c.permits().available_permits(), 2);
        drop(held);
        assert_eq!(c.limit(), 4);
    }

    #[test]
    fn doubles_up_to_the_maximum_then_stops() {
        let c = Concurrency::new(3, 10, GROW_AFTER);
        let mut held = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..5 {
            while let Ok(p) = Arc::clone(c.permits()).try_acquire_owned() {
                held.push(p);
            }
            seen.push(c.on_received(at(0), at(1_000)));
        }
        assert_eq!(seen, [Some(6), Some(10), None, None, None]);
        assert_eq!(held.len(), 10);
    }

    #[test]
    fn a_lagging_runtime_does_not_grow() {
        let c = Concurrency::new(1, 8, GROW_AFTER);
        let _held = Arc::clone(c.permits()).try_acquire_owned().unwrap();
        c.started_after(Duration::from_millis(50));
        assert_eq!(c.on_received(at(0), at(1_000)), None);
        c.started_after(Duration::from_micros(100));
        assert_eq!(c.on_received(at(0), at(1_000)), Some(2));
    }

    #[test]
    fn a_maximum_below_the_start_is_the_start() {
        let c = Concurrency::new(16, 4, GROW_AFTER);
        let _held: Vec<_> = (0..16)
            .map(|_| Arc::clone(c.permits()).try_acquire_owned().unwrap())
            .collect();
        assert_eq!(c.on_received(at(0), at(1_000)), None);
        assert_eq!(c.limit(), 16);
    }
}
