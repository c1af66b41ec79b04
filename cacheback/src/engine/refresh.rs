//! Refreshing a claimed key: decode a request (worker side), skip it if the key moved on, fetch,
//! write if the generation still matches, record failures, release the claim. Run by workers
//! and by a reader's local fallback when the queue is down.

use std::sync::Arc;

use tracing::{Instrument, debug, info_span, warn};

use crate::clock::Timestamp;
use crate::codec::Codec;
use crate::engine::Core;
use crate::engine::fetch::run_fetch;
use crate::engine::registry::{JobEntry, Processed, RefreshOutcome};
use crate::engine::tags::clock_before_fetch;
use crate::engine::value::{Fetched, prepare_put, stale_if_error_until};
use crate::entry::Entry;
use crate::error::{Chain, Error};
use crate::job::Job;
use crate::key::{self, Key};
use crate::observe::Event;
use crate::queue::RefreshRequest;
use crate::store::{ClaimToken, Put, PutCondition, PutOutcome, Release};
use crate::tally::Count;

/// The key's entry before a refresh, when the worker read it for the whole batch of requests
/// it received (one store call instead of one per refresh).
#[derive(Debug, Default)]
pub(crate) enum ReadBefore {
    /// Not read: the refresh reads the entry itself.
    #[default]
    Unread,
    /// Read just before, while no refresh of the key ran in this process.
    Read(Option<Entry>),
}

/// Turns a received request back into typed args and runs it (worker side).
pub(crate) async fn process_request<J: Job>(
    core: Arc<Core>,
    job: Arc<JobEntry<J>>,
    request: RefreshRequest,
    before: ReadBefore,
) -> Processed {
    // The requester encodes args with its codec and reads values with it: a worker that
    // would write values in another codec feeds it entries it cannot read, and every read
    // would enqueue again. Refuse it loudly instead.
    if request.codec != core.codec.id() {
        return Processed::Rejected {
            reason: format!(
                "codec mismatch: the request was made by a process using {}, this worker uses \
                 {}; values it writes could not be read there. Build every process of the \
                 fleet with the same codec",
                Codec::name_of(request.codec),
                core.codec.name()
            ),
            kind: "codec_mismatch",
        };
    }
    let codec = core.codec;
    let args: J::Args = match codec.decode(&request.args) {
        Ok(args) => args,
        Err(e) => {
            return Processed::Rejected {
                reason: format!("args do not decode for job `{}`: {e}", job.name),
                kind: "malformed",
            };
        }
    };
    let digest = match key::digest(&core.prefix, &job.name, &args) {
        Ok(d) => d,
        Err(e) => {
            return Processed::Rejected {
                reason: format!("no key for args of job `{}`: {e}", job.name),
                kind: "malformed",
            };
        }
    };
    let key = Key::new(&core.prefix, &job.name, digest);
    let text = key.text();
    if text != request.key {
        return Processed::Rejected {
            reason: format!(
                "key mismatch: the message names `{}` but this worker derives `{text}` \
                 (do the web processes and the worker use the same prefix?)",
                request.key
            ),
            kind: "key_mismatch",
        };
    }
    let lag = core.now().since(request.enqueued_at);
    job.metrics.queue_lag.record(lag.as_secs_f64());
    job.metrics.tally(|t| t.lag(lag));
    let claimed = Claimed {
        token: request.token,
        generation: request.generation,
        prior_failures: request.prior_failures,
    };
    Processed::Done(refresh_claimed(&core, &job, args, digest, claimed, before).await)
}

/// What a refresh holds while it runs: the claim and the generation it may overwrite.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claimed {
    pub(crate) token: ClaimToken,
    pub(crate) generation: u64,
    pub(crate) prior_failures: u32,
}

/// Runs one claimed refresh: skip if the key moved on, fetch, write if the generation still
/// matches, record failures, release the claim.
pub(crate) async fn refresh_claimed<J: Job>(
    core: &Core,
    job: &JobEntry<J>,
    args: J::Args,
    digest: u128,
    claimed: Claimed,
    before: ReadBefore,
) -> RefreshOutcome {
    let key = Key::new(&core.prefix, &job.name, digest);
    let span = info_span!("cacheback.refresh", job = %job.name, key = %key);
    async move {
        // Another request for the key may be running here (its claim was lost and re-taken):
        // wait for it, and the check below skips this one once it has written.
        let running = core.running.enter(digest).await;
        // A backlog can hold requests for keys that were written since: don't redo their work.
        // The worker's read of the batch stands in for this one unless a refresh of the key ran
        // here meanwhile. (Should one have run and finished between that read and this point
        // without this one waiting for it, the fetch below is spent for nothing: the write is
        // conditional on the generation, so it is discarded, never stored twice.)
        let current = match before {
            ReadBefore::Read(entry) if !running.waited() => Ok(entry),
            _ => core.store.get(key).await,
        };
        if let Ok(Some(current)) = &current
            && current.tags.is_some()
        {
            // The value being replaced is tagged: read the tag clock before the fetch.
            job.saw_tags();
        }
        if let Ok(Some(current)) = current
            && current.meta.generation != claimed.generation
        {
            debug!(
                current = current.meta.generation,
                requested = claimed.generation,
                "skipped: key changed since the request"
            );
            job.metrics.refresh_skipped.increment(1);
            release(core, job, key, claimed.token, Release::Abandoned).await;
            return RefreshOutcome::Skipped;
        }
        let tag_clock = clock_before_fetch(core, job).await;
        let fetched = run_fetch(job, args.clone()).await;
        // The write and the claim's release go together (one round trip where the store can).
        let stored = match fetched.and_then(|(value, took)| {
            let condition = PutCondition::IfGeneration(claimed.generation);
            let fetched = Fetched {
                args: &args,
                value: Arc::new(value),
                took,
                tag_clock,
            };
            Ok((prepare_put(core, job, fetched, condition)?, took))
        }) {
            Ok((put, took)) => core
                .put_and_release(key, put, claimed.token)
                .await
                .map(|outcome| (outcome, took)),
            Err(e) => Err(e),
        };
        match stored {
            Ok((PutOutcome::Written { generation }, took)) => {
                job.metrics.refresh_ok.increment(1);
                job.metrics.tally(|t| t.count(Count::RefreshOk));
                core.emit(|| Event::Refreshed {
                    job: Arc::clone(&job.name),
                    key: key.text(),
                    fetch_duration: took,
                    generation,
                });
                RefreshOutcome::Refreshed
            }
            Ok((PutOutcome::Discarded { current }, _)) => {
                debug!(
                    current,
                    requested = claimed.generation,
                    "discarded: key written during the refresh"
                );
                job.metrics.refresh_discarded.increment(1);
                core.emit(|| Event::RefreshDiscarded {
                    job: Arc::clone(&job.name),
                    key: key.text(),
                });
                RefreshOutcome::Discarded
            }
            Err(error) => {
                record_failure(core, job, key, claimed, error).await;
                RefreshOutcome::Failed
            }
        }
    }
    .instrument(span)
    .await
}

async fn record_failure<J: Job>(
    core: &Core,
    job: &JobEntry<J>,
    key: Key<'_>,
    claimed: Claimed,
    error: Error,
) {
    let failures = claimed.prior_failures.saturating_add(1);
    let now = core.now();
    let backoff = job.policy.retry_backoff;
    let retry_after = now.saturating_add(backoff.delay(failures, fastrand::f64()));
    warn!(error = %Chain(&error), failures, "refresh failed; keeping the old value");
    job.metrics.refresh_failed.increment(1);
    job.metrics.tally(|t| t.count(Count::RefreshFailed));
    // The value's own lifespan says whether it may be served longer (a job can give each
    // value its own), so the entry is read even when the policy has no `stale_if_error`.
    extend_for_error(core, job, key, claimed.generation, now).await;
    let forget_at = retry_after.saturating_add(backoff.max);
    release(
        core,
        job,
        key,
        claimed.token,
        Release::Failed {
            failures,
            retry_after,
            forget_at,
        },
    )
    .await;
    core.emit(|| Event::RefreshFailed {
        job: Arc::clone(&job.name),
        key: key.text(),
        error,
        failures,
        retry_after,
    });
}

/// `stale_if_error`: lets the old value be served longer than `stale_ttl` would.
async fn extend_for_error<J: Job>(
    core: &Core,
    job: &JobEntry<J>,
    key: Key<'_>,
    generation: u64,
    now: Timestamp,
) {
    let Ok(Some(current)) = core.store.get(key).await else {
        return;
    };
    if current.is_tombstone() || current.meta.generation != generation {
        return;
    }
    let Some(until) = stale_if_error_until(core, job, &current) else {
        return;
    };
    if until <= current.meta.stale_until {
        return;
    }
    let mut meta = current.meta;
    meta.stale_until = until;
    let put = Put::new(
        Entry::new(meta, current.payload).with_tags(current.tags),
        PutCondition::IfGeneration(generation),
        until.since(now),
    );
    if let Err(e) = core.put(key, put).await {
        job.metrics.store_error("put");
        warn!(error = %Chain(&e), "could not extend the entry for stale_if_error");
    }
}

pub(crate) async fn release<J>(
    core: &Core,
    job: &JobEntry<J>,
    key: Key<'_>,
    token: ClaimToken,
    how: Release,
) {
    if let Err(e) = core.store.release(key, token, how).await {
        job.metrics.store_error("release");
        // Not fatal: the claim expires after `refresh_timeout` on its own.
        warn!(error = %Chain(&e), "could not release the refresh claim; it will expire on its own");
    }
}
