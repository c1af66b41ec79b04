//! Running a job's fetch: under its `fetch_timeout`, with panics caught.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tracing::{Instrument, info_span};

use crate::engine::registry::JobEntry;
use crate::error::{Error, Result, panic_message};
use crate::job::Job;

/// Runs the job's fetch under its `fetch_timeout`, catching panics. Returns the value and how
/// long the fetch took.
pub(crate) async fn run_fetch<J: Job>(
    job: &JobEntry<J>,
    args: J::Args,
) -> Result<(J::Value, Duration)> {
    let started = tokio::time::Instant::now();
    let timeout = job.policy.fetch_timeout;
    let fetch = AssertUnwindSafe(job.job.fetch(args)).catch_unwind();
    let result = match tokio::time::timeout(timeout, fetch)
        .instrument(info_span!("cacheback.fetch", job = %job.name))
        .await
    {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(e))) => Err(Error::fetch(&job.name, e)),
        Ok(Err(panic)) => Err(Error::FetchPanicked {
            job: Arc::clone(&job.name),
            message: panic_message(&*panic),
        }),
        Err(_) => Err(Error::Timeout {
            what: format!("fetch of job `{}`", job.name),
            after: timeout,
        }),
    };
    let elapsed = started.elapsed();
    job.metrics.fetch_duration.record(elapsed.as_secs_f64());
    result.map(|value| (value, elapsed))
}
