//! Claims and failure state: `claim`, `release` and `claim_state` over a key's control record,
//! each a read followed by an `add` or a compare-and-swap, tried again when another writer got
//! there first.

use std::time::Duration;

use super::conn::Write;
use super::failure::Failure;
use super::keys::control_key;
use super::record::{Failures, Record, exptime, longer};
use super::{MAX_ATTEMPTS, MemcachedStore};
use crate::clock::Timestamp;
use crate::error::Result;
use crate::key::Key;
use crate::store::{ClaimOutcome, ClaimState, ClaimToken, Release};

impl MemcachedStore {
    pub(super) async fn do_claim(
        &self,
        key: Key<'_>,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<ClaimOutcome> {
        const WHAT: &str = "claim";
        let name = control_key(key);
        let token = ClaimToken::random();
        for _ in 0..MAX_ATTEMPTS {
            let item = self
                .pool
                .get(WHAT, &name)
                .await
                .map_err(Failure::into_store)?;
            let record = item
                .as_ref()
                .map(|i| Record::parse(&i.data))
                .unwrap_or_default();
            let failures = record.remembered_failures(now);
            if let Some(f) = failures
                && f.retry_after > now
            {
                return Ok(ClaimOutcome::BackingOff {
                    retry_after: f.retry_after,
                    failures: f.count,
                });
            }
            if let Some((_, until)) = record.live_claim(now) {
                return Ok(ClaimOutcome::Held { until });
            }
            let claimed = Record {
                claim: Some((token, now.saturating_add(ttl))),
                failures,
            };
            // Kept until the claim ends and the failure state may be forgotten, plus grace.
            let keep = failures.map_or(ttl, |f| f.forget_at.since(now).max(ttl));
            let exptime = exptime(keep.saturating_add(self.expiry_grace));
            let write = item.map_or(Write::Add, |i| Write::Cas(i.cas));
            let encoded = claimed.encode();
            let written = self.pool.set(WHAT, &name, &encoded, write, exptime).await;
            if written.map_err(Failure::into_store)? {
                return Ok(ClaimOutcome::Won {
                    token,
                    failures: failures.map_or(0, |f| f.count),
                });
            }
            // Another claim or release landed in between: look again.
        }
        Err(contention(WHAT))
    }

    pub(super) async fn do_release(
        &self,
        key: Key<'_>,
        token: ClaimToken,
        release: Release,
    ) -> Result<()> {
        const WHAT: &str = "release";
        let name = control_key(key);
        for _ in 0..MAX_ATTEMPTS {
            let item = self
                .pool
                .get(WHAT, &name)
                .await
                .map_err(Failure::into_store)?;
            let record = item
                .as_ref()
                .map(|i| Record::parse(&i.data))
                .unwrap_or_default();
            let (released, keep) = released(record, token, release);
            let done = match item {
                // Nothing to change: another owner's claim, no failure state to touch.
                _ if released == record => Ok(true),
                Some(item) if released.is_empty() => self.pool.delete(WHAT, &name, item.cas).await,
                Some(item) => {
                    // Keep what the item already had to live (another owner's claim) and what
                    // a new failure state needs.
                    let left = item.ttl.map_or(0, |secs| secs.max(1));
                    let exptime = match keep {
                        Some(keep) => longer(left, exptime(keep.saturating_add(self.expiry_grace))),
                        None => left,
                    };
                    let encoded = released.encode();
                    self.pool
                        .set(WHAT, &name, &encoded, Write::Cas(item.cas), exptime)
                        .await
                }
                None => {
                    let keep = keep.unwrap_or(Duration::ZERO);
                    let exptime = exptime(keep.saturating_add(self.expiry_grace));
                    let encoded = released.encode();
                    self.pool
                        .set(WHAT, &name, &encoded, Write::Add, exptime)
                        .await
                }
            };
            if done.map_err(Failure::into_store)? {
                return Ok(());
            }
        }
        Err(contention(WHAT))
    }

    pub(super) async fn do_claim_state(&self, key: Key<'_>, now: Timestamp) -> Result<ClaimState> {
        let name = control_key(key);
        let item = self
            .pool
            .get("claim_state", &name)
            .await
            .map_err(Failure::into_store)?;
        let record = item.map(|i| Record::parse(&i.data)).unwrap_or_default();
        let mut state = ClaimState {
            claim: record.live_claim(now),
            ..ClaimState::default()
        };
        if let Some(f) = record.remembered_failures(now) {
            state.failures = f.count;
            state.retry_after = Some(f.retry_after);
        }
        Ok(state)
    }
}

/// The record after `release` by `token`, and how long a new failure state must be kept.
///
/// The claim goes only if `token` owns it; the failure state is cleared, kept or replaced
/// whoever owns the claim. No `now` here: `retry_after` is at most one backoff ahead of the
/// caller's clock and `forget_at` a maximal backoff after it, so twice their distance outlives
/// `forget_at` (the Redis store keeps its failure keys as long).
fn released(record: Record, token: ClaimToken, release: Release) -> (Record, Option<Duration>) {
    let mut released = record;
    if record.claim.is_some_and(|(owner, _)| owner == token) {
        released.claim = None;
    }
    let mut keep = None;
    match release {
        Release::Refreshed => released.failures = None,
        Release::Failed {
            failures,
            retry_after,
            forget_at,
        } => {
            released.failures = Some(Failures {
                count: failures,
                retry_after,
                forget_at,
            });
            keep = Some(forget_at.since(retry_after).saturating_mul(2));
        }
        Release::Abandoned => {}
    }
    (released, keep)
}

fn contention(what: &'static str) -> crate::error::Error {
    Failure::Contention {
        what,
        attempts: MAX_ATTEMPTS,
    }
    .into_store()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_frees_only_its_own_claim_and_always_records_the_outcome() {
        let (mine, theirs) = (ClaimToken::from_u128(1), ClaimToken::from_u128(2));
        let until = Timestamp::from_millis(500);
        let old = Failures {
            count: 1,
            retry_after: Timestamp::from_millis(10),
            forget_at: Timestamp::from_millis(20),
        };
        let held_by = |token| Record {
            claim: Some((token, until)),
            failures: Some(old),
        };
        let (released, keep) = released(held_by(mine), mine, Release::Abandoned);
        assert_eq!(
            (released, keep),
            (
                Record {
                    claim: None,
                    failures: Some(old)
                },
                None
            )
        );
        let (released, _) = self::released(held_by(theirs), mine, Release::Refreshed);
        assert_eq!(released.claim, Some((theirs, until)), "not ours to free");
        assert_eq!(released.failures, None, "the refresh succeeded");
        let failed = Release::Failed {
            failures: 2,
            retry_after: Timestamp::from_millis(100),
            forget_at: Timestamp::from_millis(400),
        };
        let (released, keep) = self::released(Record::default(), mine, failed);
        assert_eq!(released.failures.map(|f| f.count), Some(2));
        assert_eq!(keep, Some(Duration::from_millis(600)));
    }
}
