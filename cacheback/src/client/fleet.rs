//! One synchronous fetch per key across a fleet ([`Policy::fleet_coalescing`]): before it
//! calls the upstream, the process's coalesced fetch takes the key's claim in the shared
//! store. A process that finds the claim held waits for the holder's write, polling the
//! store, and serves that value; it fetches itself only when the holder gives up (its fetch
//! failed, or its claim expired with a crashed process) or the wait reaches `fetch_timeout`.
//!
//! [`Policy::fleet_coalescing`]: crate::Policy::fleet_coalescing

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use crate::engine::backoff::{self, Before};
use crate::engine::registry::JobEntry;
use crate::engine::{Core, tags, value};
use crate::error::{Chain, Result};
use crate::job::Job;
use crate::key::Key;
use crate::policy::Freshness;
use crate::store::{ClaimOutcome, ClaimToken, Release};

/// The first pause between two looks at a key another process is fetching; each pause
/// doubles up to [`LONGEST_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(2);
/// The longest pause between two looks.
const LONGEST_POLL: Duration = Duration::from_millis(25);

/// What a process does about a key it has to fetch synchronously.
pub(super) enum Turn<V> {
    /// Fetch it: holding the key's claim (`token`, released with the write), or without one
    /// when none could be had.
    Fetch {
        before: Before,
        token: Option<ClaimToken>,
    },
    /// Another process fetched it: its value.
    Written(Arc<V>),
}

/// Takes the key's claim, or waits for the process holding it to write the key (`seen`: the
/// generation the reader found). Refuses, as [`backoff::before_fetch`] does, while the key
/// backs off and the job backs off misses.
pub(super) async fn take_turn<J: Job>(
    core: &Core,
    job: &JobEntry<J>,
    key: Key<'_>,
    seen: u64,
) -> Result<Turn<J::Value>> {
    let policy = &job.policy;
    let deadline = Instant::now() + policy.fetch_timeout;
    let mut pause = FIRST_POLL;
    let mut waited = false;
    loop {
        let now = core.now();
        match core.store.claim(key, now, policy.fetch_timeout).await {
            Ok(ClaimOutcome::Won { token, failures }) => {
                // The holder may have written and let go between the last look and the claim.
                if waited && let Some(value) = written(core, job, key, seen, Freshness::Stale).await
                {
                    release(core, job, key, token).await;
                    return Ok(Turn::Written(value));
                }
                let before = Before { failures };
                let token = Some(token);
                return Ok(Turn::Fetch { before, token });
            }
            Ok(ClaimOutcome::BackingOff {
                retry_after,
                failures,
            }) => {
                if policy.miss_backoff {
                    return Err(backoff::backing_off(core, job, key, failures, retry_after));
                }
                // A failed refresh is backing off, and misses do not: fetch, unclaimed.
                let before = Before { failures };
                return Ok(Turn::Fetch {
                    before,
                    token: None,
                });
            }
            Ok(ClaimOutcome::Held { .. }) => {}
            Err(error) => {
                job.metrics.store_error("claim");
                warn!(job = %job.name, key = %key, error = %Chain(&error), "could not claim a key before fetching it; fetching unclaimed");
                let before = backoff::before_fetch(core, job, key, now, false).await?;
                return Ok(Turn::Fetch {
                    before,
                    token: None,
                });
            }
        }
        if Instant::now() + pause > deadline {
            warn!(job = %job.name, key = %key, "another process's fetch of the key did not finish within fetch_timeout; fetching it here too");
            return Ok(Turn::Fetch {
                before: Before::default(),
                token: None,
            });
        }
        tokio::time::sleep(pause).await;
        waited = true;
        pause = (pause * 2).min(LONGEST_POLL);
        if let Some(value) = written(core, job, key, seen, Freshness::Stale).await {
            job.metrics.coalesced.increment(1);
            return Ok(Turn::Written(value));
        }
    }
}

/// The key's value if it was written since the reader saw generation `seen` and is at least
/// as fresh as `least` (`Stale`: still servable); an unreadable store or entry reads as not
/// written.
pub(super) async fn written<J: Job>(
    core: &Core,
    job: &JobEntry<J>,
    key: Key<'_>,
    seen: u64,
    least: Freshness,
) -> Option<Arc<J::Value>> {
    let read = core.store.get(key).await.ok()?;
    let entry = tags::judge(core, read).await?;
    let moved = entry.meta.generation != seen;
    let fresh_enough = match entry.meta.freshness(core.now()) {
        Freshness::Fresh => true,
        Freshness::Stale => least != Freshness::Fresh,
        _ => false,
    };
    if !(moved && fresh_enough) {
        return None;
    }
    value::decode_value(core, job, &entry).ok().flatten()
}

/// Lets go of a claim whose fetch did not write (it failed, or its value could not be
/// stored), keeping the key's failure state: the next waiter takes the claim and tries.
pub(super) async fn release<J>(core: &Core, job: &JobEntry<J>, key: Key<'_>, token: ClaimToken) {
    if let Err(error) = core.store.release(key, token, Release::Abandoned).await {
        job.metrics.store_error("release");
        warn!(job = %job.name, key = %key, error = %Chain(&error), "could not release a fetch's claim; it expires after fetch_timeout");
    }
}
