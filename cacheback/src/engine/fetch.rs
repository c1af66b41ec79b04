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

/// Runs the job's `fetch_many` for `args` under one `fetch_timeout`, catching panics. Returns
/// one result per args (a failure of the whole batch fails each of them) and how long the
/// batch took.
pub(crate) async fn run_fetch_many<J: Job>(
    job: &JobEntry<J>,
    args: Vec<J::Args>,
) -> (Vec<Result<J::Value>>, Duration) {
    let started = tokio::time::Instant::now();
    let timeout = job.policy.fetch_timeout;
    let asked = args.len();
    let fetch = AssertUnwindSafe(job.job.fetch_many(args)).catch_unwind();
    let whole: Result<Vec<Result<J::Value>>> = match tokio::time::timeout(timeout, fetch)
        .instrument(info_span!("cacheback.fetch_many", job = %job.name, keys = asked))
        .await
    {
        Ok(Ok(results)) if results.len() == asked => Ok(results
            .into_iter()
            .map(|r| r.map_err(|e| Error::fetch(&job.name, e)))
            .collect()),
        Ok(Ok(results)) => Err(Error::fetch(
            &job.name,
            format!(
                "fetch_many returned {} results for {asked} args",
                results.len()
            ),
        )),
        Ok(Err(panic)) => Err(Error::FetchPanicked {
            job: Arc::clone(&job.name),
            message: panic_message(&*panic),
        }),
        Err(_) => Err(Error::Timeout {
            what: format!("fetch_many of job `{}`", job.name),
            after: timeout,
        }),
    };
    let elapsed = started.elapsed();
    job.metrics.fetch_duration.record(elapsed.as_secs_f64());
    let results = match whole {
        Ok(results) => results,
        Err(error) => (0..asked).map(|_| Err(error.clone())).collect(),
    };
    (results, elapsed)
}
