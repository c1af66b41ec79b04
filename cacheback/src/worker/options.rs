//! [`WorkerOptions`]: how a worker runs (its concurrency and how it adapts, batches, delivery
//! limits, draining), with their defaults and checks.

use std::time::Duration;

use crate::error::{Error, Result};

/// How a [`Worker`](super::Worker) runs.
///
/// **Concurrency adapts.** A worker starts with [`concurrency`](Self::concurrency) refreshes at
/// a time and doubles it, up to [`max_concurrency`](Self::max_concurrency), whenever a request
/// it receives while every refresh slot is taken has waited in the queue longer than
/// [`grow_after`](Self::grow_after) — unless the runtime is busy (a refresh task started more
/// than 5 ms after it was spawned: the fetches are not I/O-bound, and more of them at once would
/// slow every read down). It never shrinks while the worker runs. To fix the concurrency, set
/// `max_concurrency` to `concurrency`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// Refreshes run at the same time to start with (default 16).
    pub concurrency: usize,
    /// The most refreshes run at the same time once grown (default 512; never below
    /// `concurrency`).
    pub max_concurrency: usize,
    /// How long a request may wait in the queue, while every refresh slot is taken, before the
    /// worker grows its concurrency (default 20 ms).
    pub grow_after: Duration,
    /// Messages taken from the queue per receive, at most (default 32).
    pub batch: usize,
    /// A message delivered more often than this is dead-lettered (default 5).
    pub max_deliveries: u32,
    /// On shutdown, how long in-flight refreshes may take to finish before they are
    /// abandoned (left for redelivery) (default 30 s).
    pub drain_timeout: Duration,
    /// Pause after a failed receive before trying again (default 1 s).
    pub receive_retry: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            concurrency: 16,
            max_concurrency: 512,
            grow_after: Duration::from_millis(20),
            batch: 32,
            max_deliveries: 5,
            drain_timeout: Duration::from_secs(30),
            receive_retry: Duration::from_secs(1),
        }
    }
}

impl WorkerOptions {
    /// Sets [`WorkerOptions::concurrency`].
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Sets [`WorkerOptions::max_concurrency`].
    #[must_use]
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }

    /// Sets [`WorkerOptions::grow_after`].
    #[must_use]
    pub fn grow_after(mut self, d: Duration) -> Self {
        self.grow_after = d;
        self
    }

    /// Sets [`WorkerOptions::batch`].
    #[must_use]
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }

    /// Sets [`WorkerOptions::max_deliveries`].
    #[must_use]
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n;
        self
    }

    /// Sets [`WorkerOptions::drain_timeout`].
    #[must_use]
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// Sets [`WorkerOptions::receive_retry`].
    #[must_use]
    pub fn receive_retry(mut self, d: Duration) -> Self {
        self.receive_retry = d;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.concurrency == 0 {
            return Err(Error::config("worker concurrency must be at least 1"));
        }
        if self.batch == 0 {
            return Err(Error::config("worker batch must be at least 1"));
        }
        if self.max_deliveries == 0 {
            return Err(Error::config("worker max_deliveries must be at least 1"));
        }
        Ok(())
    }
}
