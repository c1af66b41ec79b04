//! A metrics recorder that keeps the counters of the jobs registered under it, for the
//! behaviours that are counted (a corrupt entry reads as a miss *and is counted*).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

use super::fixture::lock;

/// Counters by metric name (labels summed), of the handles registered under it.
#[derive(Debug, Default)]
pub(super) struct Counters {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl Counters {
    /// Runs `register` (a job's registration) with this recorder, so the job's counters count
    /// here.
    pub(super) fn record<T>(&self, register: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(self, register)
    }

    /// The count of the counter `name` (0 if it was never registered).
    pub(super) fn get(&self, name: &str) -> u64 {
        lock(&self.counters)
            .get(name)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let counter = Arc::clone(
            lock(&self.counters)
                .entry(key.name().to_owned())
                .or_default(),
        );
        Counter::from_arc(counter)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
