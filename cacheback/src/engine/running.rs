//! One refresh of a key at a time per process.
//!
//! The store's claim makes a stale key cause one refresh across the fleet, as long as the
//! claim lives. A claim can vanish early (a Redis under `maxmemory` evicts it, an operator
//! deletes it), and the next reader then enqueues a second request for the same stale entry.
//! A worker that is already refreshing the key makes that second request wait for the first;
//! by then the key has a new generation, so the request is skipped instead of fetching again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OwnedMutexGuard;

type KeyLock = Arc<tokio::sync::Mutex<()>>;

/// Per-key async locks, held while a refresh of the key runs in this process.
#[derive(Default)]
pub(crate) struct Running {
    locks: Mutex<HashMap<u128, KeyLock>>,
}

/// Proof that this task runs the key's only refresh in this process; dropping it lets the next
/// one start.
pub(crate) struct RunningGuard<'a> {
    running: &'a Running,
    digest: u128,
    lock: KeyLock,
    guard: Option<OwnedMutexGuard<()>>,
    waited: bool,
}

impl RunningGuard<'_> {
    /// Whether another refresh of the key ran here first (this one waited for it).
    pub(crate) fn waited(&self) -> bool {
        self.waited
    }
}

impl Running {
    fn map(&self) -> MutexGuard<'_, HashMap<u128, KeyLock>> {
        // Map operations cannot be left half-done by a panic: a poisoned lock is fine to use.
        self.locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until no other refresh of `digest` runs in this process, then holds the key.
    pub(crate) async fn enter(&self, digest: u128) -> RunningGuard<'_> {
        let lock = Arc::clone(self.map().entry(digest).or_default());
        let (guard, waited) = match Arc::clone(&lock).try_lock_owned() {
            Ok(guard) => (guard, false),
            Err(_) => (Arc::clone(&lock).lock_owned().await, true),
        };
        RunningGuard {
            running: self,
            digest,
            lock,
            guard: Some(guard),
            waited,
        }
    }

    /// Whether a refresh of `digest` runs (or waits to) in this process now.
    pub(crate) fn is_running(&self, digest: u128) -> bool {
        self.map().contains_key(&digest)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.running.map();
        // Clones of the lock are only made under the map's lock: two references (the map's
        // and this one) mean nobody else waits for the key.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_refresh_of_a_key_waits_for_the_first() {
        let running = Arc::new(Running::default());
        let first = running.enter(7).await;
        assert!(!first.waited() && running.is_running(7) && !running.is_running(9));
        let other_key = running.enter(8).await;
        let waiter = {
            let running = Arc::clone(&running);
            tokio::spawn(async move { running.enter(7).await.waited() })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the second refresh must wait");
        drop(first);
        assert!(waiter.await.unwrap(), "and it says it waited");
        drop(other_key);
        assert_eq!(running.len(), 0, "no lock is left behind");
        assert!(!running.is_running(7));
    }
}
