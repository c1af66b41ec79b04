//! Backoff of failing synchronous fetches (a miss with `fetch_on_miss`, a value stale beyond
//! `stale_threshold`): the failure is recorded in the key's claim record, shared by the fleet
//! on a remote store, and readers get [`Error::BackingOff`] until `retry_after` instead of
//! calling the upstream once per read.
//!
//! The store keeps only counts and times; the failure itself is remembered by the process that
//! saw it (a small bounded map), so its readers get the upstream's error as the cause, and a
//! process whose store is down still backs off on its own failures.

use std::sync::Arc;

use quick_cache::sync::Cache;

use crate::clock::Timestamp;
use crate::engine::Core;
use crate::engine::registry::JobEntry;
use crate::error::{Chain, Error};
use crate::key::Key;
use crate::store::{ClaimToken, Release};

/// Keys whose last failure this process remembers.
const REMEMBERED: usize = 4096;

/// The last failure of a key's synchronous fetch, as this process saw it.
#[derive(Clone)]
pub(crate) struct Failure {
    error: Arc<Error>,
    failures: u32,
    retry_after: Timestamp,
}

/// Failures of synchronous fetches seen by this process, by key digest.
pub(crate) struct RecentFailures {
    map: Cache<u128, Failure>,
}

impl Default for RecentFailures {
    fn default() -> Self {
        RecentFailures {
            map: Cache::new(REMEMBERED),
        }
    }
}

/// What a synchronous fetch found before calling the upstream.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Before {
    /// Consecutive failures recorded for the key so far.
    pub(crate) failures: u32,
}

/// Refuses the fetch while the key backs off; otherwise says how many failures came before.
/// `use_store` is false when the store is known to be unreachable (only this process's memory
/// is asked then).
pub(crate) async fn before_fetch<J>(
    core: &Core,
    job: &JobEntry<J>,
    key: Key<'_>,
    now: Timestamp,
    use_store: bool,
) -> Result<Before, Error> {
    if !job.policy.miss_backoff {
        return Ok(Before::default());
    }
    let local = core.recent_failures.map.get(&key.digest());
    let remembered = local
        .as_ref()
        .map_or((0, None), |f| (f.failures, Some(f.retry_after)));
    let (failures, retry_after) = if use_store {
        // When the store cannot say, this process's memory is all there is.
        core.store
            .claim_state(key, now)
            .await
            .map_or(remembered, |state| (state.failures, state.retry_after))
    } else {
        remembered
    };
    match retry_after {
        Some(retry_after) if retry_after > now => {
            Err(backing_off(core, job, key, failures, retry_after))
        }
        _ => Ok(Before { failures }),
    }
}

/// The error of a read refused because its key backs off until `retry_after` (counted), with
/// the last failure this process saw as its cause.
pub(crate) fn backing_off<J>(
    core: &Core,
    job: &JobEntry<J>,
    key: Key<'_>,
    failures: u32,
    retry_after: Timestamp,
) -> Error {
    job.metrics.claim_backing_off.increment(1);
    Error::BackingOff {
        job: Arc::clone(&job.name),
        failures,
        retry_after,
        last: core.recent_failures.map.get(&key.digest()).map(|f| f.error),
    }
}

/// Records a failed synchronous fetch: in this process, and in the store (unless it is known
/// to be unreachable) so the whole fleet backs off.
pub(crate) async fn record_failure<J>(
    core: &Core,
    job: &JobEntry<J>,
    key: Key<'_>,
    before: Before,
    error: &Error,
    use_store: bool,
) {
    if !job.policy.miss_backoff {
        return;
    }
    let failures = before.failures.saturating_add(1);
    let now = core.now();
    let backoff = job.policy.retry_backoff;
    let retry_after = now.saturating_add(backoff.delay(failures, fastrand::f64()));
    tracing::warn!(
        job = %job.name,
        key = %key,
        error = %Chain(error),
        failures,
        %retry_after,
        "synchronous fetch failed; reads of the key back off until retry_after"
    );
    core.recent_failures.map.insert(
        key.digest(),
        Failure {
            error: Arc::new(error.clone()),
            failures,
            retry_after,
        },
    );
    if use_store {
        let forget_at = retry_after.saturating_add(backoff.max);
        let how = Release::Failed {
            failures,
            retry_after,
            forget_at,
        };
        // A token that owns no claim: only the failure state is written.
        if let Err(e) = core.store.release(key, ClaimToken::from_u128(0), how).await {
            job.metrics.store_error("release");
            tracing::warn!(error = %Chain(&e), "could not record the failed fetch in the store");
        }
    }
}

/// Clears a key's failure state after a successful synchronous fetch that followed failures.
pub(crate) async fn record_success<J>(
    core: &Core,
    job: &JobEntry<J>,
    key: Key<'_>,
    before: Before,
) {
    core.recent_failures.map.remove(&key.digest());
    if before.failures > 0
        && let Err(e) = core
            .store
            .release(key, ClaimToken::from_u128(0), Release::Refreshed)
            .await
    {
        job.metrics.store_error("release");
        tracing::warn!(error = %Chain(&e), "could not clear the key's failure state");
    }
}
