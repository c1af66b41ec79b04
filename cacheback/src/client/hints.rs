//! Process-local claim hints: what this process already knows about a key's refresh claim, so
//! that a burst of stale reads of one key costs the shared store one claim, not one per reader.
//!
//! With a remote store (Redis), every stale read asks the store for the key's claim: 64
//! concurrent readers of a stale key in one process would send 64 claim scripts, queue behind
//! each other on the connection, and all but one learn "held". The hints remember, for a short
//! window, that this process has a claim request in flight or has just learned the claim is
//! taken (won, held by another process, or backing off after a failure), and let the other
//! readers of the process serve the stale value without asking.
//!
//! The window is short (at most [`WINDOW`], and a quarter of the job's lifetime) and only read
//! paths consult it: a refresh completed elsewhere is picked up at the latest one window later,
//! and explicit `invalidate`/`refresh_async` calls always ask the store (and set the hint with
//! what they learned). Outcomes that mean "the
//! next read should try again" (a store error, a refresh dropped by a full queue) forget the
//! hint at once. In-process stores need none of this: their claim is as cheap as the hint.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use crate::clock::Timestamp;

/// The longest a hint suppresses claim requests.
pub(crate) const WINDOW: Duration = Duration::from_millis(100);

/// Hints are purged of expired entries once the map grows past this many keys.
const PURGE_AT: usize = 4096;

/// The claim hints of one client.
#[derive(Debug, Default)]
pub(crate) struct ClaimHints {
    until: RwLock<HashMap<u128, Timestamp>>,
}

impl ClaimHints {
    /// Whether a read of `digest` at `now` should ask the store for the claim. When it should,
    /// the hint is set for `window` (the request is now in flight): concurrent readers of this
    /// process skip it.
    pub(crate) fn should_claim(&self, digest: u128, now: Timestamp, window: Duration) -> bool {
        // Every reader of a stale key but the first finds its hint: under the shared lock.
        if self.read().get(&digest).is_some_and(|&u| u > now) {
            return false;
        }
        let mut until = self.lock();
        if until.get(&digest).is_some_and(|&u| u > now) {
            return false;
        }
        if until.len() >= PURGE_AT {
            until.retain(|_, u| *u > now);
        }
        until.insert(digest, now.saturating_add(window));
        true
    }

    /// Notes that the claim of `digest` was just decided (an `invalidate` or `refresh_async`
    /// took it, or found it taken): reads of this process skip asking for `window`.
    pub(crate) fn note(&self, digest: u128, now: Timestamp, window: Duration) {
        self.lock().insert(digest, now.saturating_add(window));
    }

    /// Forgets the hint of `digest`: the next read asks the store again.
    pub(crate) fn forget(&self, digest: u128) {
        self.lock().remove(&digest);
    }

    /// The hint window of a job whose entries stay fresh for `lifetime`.
    pub(crate) fn window(lifetime: Duration) -> Duration {
        WINDOW.min(lifetime / 4)
    }

    fn lock(&self) -> RwLockWriteGuard<'_, HashMap<u128, Timestamp>> {
        self.until.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<u128, Timestamp>> {
        self.until.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn one_claim_per_window_then_again() {
        let hints = ClaimHints::default();
        let t0 = Timestamp::from_millis(1_000);
        assert!(hints.should_claim(7, t0, 100 * MS));
        assert!(!hints.should_claim(7, t0, 100 * MS), "in flight");
        assert!(!hints.should_claim(7, t0.saturating_add(99 * MS), 100 * MS));
        assert!(hints.should_claim(8, t0, 100 * MS), "other keys unaffected");
        assert!(
            hints.should_claim(7, t0.saturating_add(100 * MS), 100 * MS),
            "window over"
        );
    }

    #[test]
    fn forgetting_lets_the_next_read_claim() {
        let hints = ClaimHints::default();
        let t0 = Timestamp::from_millis(1_000);
        assert!(hints.should_claim(7, t0, 100 * MS));
        hints.forget(7);
        assert!(hints.should_claim(7, t0, 100 * MS));
    }

    #[test]
    fn expired_hints_are_purged() {
        let hints = ClaimHints::default();
        let t0 = Timestamp::from_millis(1_000);
        for d in 0..PURGE_AT as u128 {
            assert!(hints.should_claim(d, t0, MS));
        }
        assert!(hints.should_claim(u128::MAX, t0.saturating_add(2 * MS), MS));
        assert_eq!(hints.lock().len(), 1, "only the live hint is left");
    }

    #[test]
    fn the_window_is_short_for_short_lifetimes() {
        assert_eq!(ClaimHints::window(Duration::from_secs(600)), WINDOW);
        assert_eq!(ClaimHints::window(40 * MS), 10 * MS);
    }
}
