//! Observability: the events hook and the per-job metric handles. The metric names are listed
//! in the crate docs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Histogram, counter, histogram};

use crate::clock::Timestamp;
use crate::error::Error;
use crate::tally::Tally;

/// Something that happened to a key, delivered to the hook set with
/// [`CachebackBuilder::on_event`](crate::CachebackBuilder::on_event).
///
/// The hook runs inline on the task that caused the event: keep it quick and non-blocking.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A refresh stored a new value.
    Refreshed {
        /// Job name.
        job: Arc<str>,
        /// Key text.
        key: String,
        /// How long the fetch took.
        fetch_duration: Duration,
        /// The new generation.
        generation: u64,
    },
    /// A refresh failed; the old value is kept.
    RefreshFailed {
        /// Job name.
        job: Arc<str>,
        /// Key text.
        key: String,
        /// Why.
        error: Error,
        /// Consecutive failures of this key, this one included.
        failures: u32,
        /// Readers do not trigger another refresh before this.
        retry_after: Timestamp,
    },
    /// A refresh's result was not stored because the key was written after it was requested.
    RefreshDiscarded {
        /// Job name.
        job: Arc<str>,
        /// Key text.
        key: String,
    },
    /// A refresh request was dropped because the queue was full.
    EnqueueDropped {
        /// Job name.
        job: Arc<str>,
        /// Key text.
        key: String,
    },
    /// A read was answered without the cache: its value was fetched but not stored, because
    /// the store could not be reached or the value is over the size limit (status
    /// [`Status::Bypassed`](crate::Status::Bypassed)). Emitted once per fetch.
    CacheBypassed {
        /// Job name.
        job: Arc<str>,
        /// Key text.
        key: String,
        /// Why the cache was not used.
        error: Error,
    },
    /// A stored entry could not be read as the job's value (another schema version, another
    /// codec, another type, corrupt bytes): it was read as a miss. Processes of one fleet
    /// built with different codecs or value types cause this on every read: fix the build.
    EntryUndecodable {
        /// Job name.
        job: Arc<str>,
        /// Key text.
        key: String,
        /// Why it did not decode.
        reason: String,
    },
    /// A message could not be processed and was dead-lettered.
    DeadLettered {
        /// Job name, when the message named one.
        job: Option<String>,
        /// Why.
        reason: String,
    },
}

/// The events hook.
pub(crate) type EventHook = Arc<dyn Fn(&Event) + Send + Sync>;

/// Per-job metric handles, registered once so the read path does no label lookups.
#[derive(Clone)]
pub(crate) struct JobMetrics {
    pub(crate) hit: Counter,
    pub(crate) stale: Counter,
    pub(crate) stale_refetched: Counter,
    pub(crate) miss: Counter,
    pub(crate) miss_fetched: Counter,
    pub(crate) bypassed: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) claim_won: Counter,
    pub(crate) claim_held: Counter,
    pub(crate) claim_backing_off: Counter,
    pub(crate) refresh_ok: Counter,
    pub(crate) refresh_failed: Counter,
    pub(crate) refresh_skipped: Counter,
    pub(crate) refresh_discarded: Counter,
    pub(crate) enqueue_dropped: Counter,
    pub(crate) fallback_local: Counter,
    pub(crate) fallback_sync: Counter,
    pub(crate) fallback_skip: Counter,
    pub(crate) decode_errors: Counter,
    pub(crate) fetch_duration: Histogram,
    pub(crate) queue_lag: Histogram,
    pub(crate) served_age: Histogram,
    /// This process's counts, when the client keeps them (`fleet_stats`).
    pub(crate) tally: Option<Arc<Tally>>,
    job: Arc<str>,
}

impl fmt::Debug for JobMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobMetrics")
            .field("job", &self.job)
            .finish()
    }
}

impl JobMetrics {
    pub(crate) fn new(job: &Arc<str>) -> Self {
        let j = || metrics::SharedString::from(job.to_string());
        let reads = |status: &'static str| counter!("cacheback_reads_total", "job" => j(), "status" => status);
        let claims = |outcome: &'static str| counter!("cacheback_claims_total", "job" => j(), "outcome" => outcome);
        let refreshes = |outcome: &'static str| counter!("cacheback_refreshes_total", "job" => j(), "outcome" => outcome);
        let fallbacks = |mode: &'static str| counter!("cacheback_fallbacks_total", "job" => j(), "mode" => mode);
        JobMetrics {
            hit: reads("hit"),
            stale: reads("stale"),
            stale_refetched: reads("stale_refetched"),
            miss: reads("miss"),
            miss_fetched: reads("miss_fetched"),
            bypassed: reads("bypassed"),
            coalesced: counter!("cacheback_coalesced_waiters_total", "job" => j()),
            claim_won: claims("won"),
            claim_held: claims("held"),
            claim_backing_off: claims("backing_off"),
            refresh_ok: refreshes("ok"),
            refresh_failed: refreshes("failed"),
            refresh_skipped: refreshes("skipped"),
            refresh_discarded: refreshes("discarded"),
            enqueue_dropped: counter!("cacheback_enqueue_dropped_total", "job" => j()),
            fallback_local: fallbacks("local"),
            fallback_sync: fallbacks("sync"),
            fallback_skip: fallbacks("skip"),
            decode_errors: counter!("cacheback_decode_errors_total", "job" => j()),
            fetch_duration: histogram!("cacheback_fetch_duration_seconds", "job" => j()),
            queue_lag: histogram!("cacheback_queue_lag_seconds", "job" => j()),
            served_age: histogram!("cacheback_served_age_seconds", "job" => j()),
            tally: None,
            job: Arc::clone(job),
        }
    }

    /// Runs `count` on this process's tally, when the client keeps one.
    #[inline]
    pub(crate) fn tally(&self, count: impl FnOnce(&Tally)) {
        if let Some(tally) = &self.tally {
            count(tally);
        }
    }

    pub(crate) fn store_error(&self, op: &'static str) {
        counter!("cacheback_store_errors_total", "job" => self.job.to_string(), "op" => op)
            .increment(1);
    }
}

/// Counts a dead letter (`job` is `"unknown"` when the message named none).
pub(crate) fn dead_letter_metric(job: Option<&str>, reason_kind: &'static str) {
    counter!(
        "cacheback_dead_letters_total",
        "job" => job.unwrap_or("unknown").to_owned(),
        "reason" => reason_kind
    )
    .increment(1);
}
