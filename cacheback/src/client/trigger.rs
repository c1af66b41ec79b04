//! Triggering a refresh: take the key's claim (once per hint window per process for a remote
//! store) and, if won, enqueue one refresh request, or fall back when the queue is down.

use std::sync::Arc;

use futures_util::future::join_all;
use tracing::{Instrument, debug_span, warn};

use crate::client::QueueFallback;
use crate::client::handle::{Args, JobHandle};
use crate::client::hints::ClaimHints;
use crate::clock::Timestamp;
use crate::engine::refresh::{self, Claimed, ReadBefore};
use crate::error::{Chain, Error, Result};
use crate::job::Job;
use crate::key::Key;
use crate::observe::Event;
use crate::queue::{EnqueueError, RefreshRequest};
use crate::store::{ClaimOutcome, ClaimToken, Release};

impl<J: Job> JobHandle<J> {
    /// Triggers a refresh for a read that serves a stale value or nothing: with the in-process
    /// store the claim is decided at once (no round trip to wait for); with a remote store the
    /// read never waits for the claim's and the enqueue's round trips, which finish in the
    /// background. Returns whether a refresh was enqueued (in-process) or asked for (remote).
    pub(super) async fn trigger_for_read(
        &self,
        key: Key<'_>,
        args: &Args<J>,
        generation: u64,
        now: Timestamp,
    ) -> bool {
        if self.core().memory.is_some() {
            self.trigger_on_read(key, args, generation, now).await
        } else {
            self.trigger_in_background(key, args, generation, now)
        }
    }

    /// [`trigger`](Self::trigger) for a read: with a remote store, asks for the claim at most
    /// once per hint window per process (see `client::hints`). Returns whether a refresh was
    /// enqueued or run.
    pub(super) async fn trigger_on_read(
        &self,
        key: Key<'_>,
        args: &Args<J>,
        generation: u64,
        now: Timestamp,
    ) -> bool {
        if !self.hint_says_claim(key.digest(), now) {
            return false;
        }
        let started = self.trigger(key, args, generation, now, true).await;
        if started == Trigger::Retry {
            self.forget_hint(key.digest());
        }
        started == Trigger::Started
    }

    /// Whether this read should ask the store for the claim of `digest`: always with an
    /// in-process store, else when no other read of this process asked within the hint window
    /// (the hint is then set; a read told no is counted as finding the claim held).
    pub(super) fn hint_says_claim(&self, digest: u128, now: Timestamp) -> bool {
        let Some(hints) = &self.reads().claim_hints else {
            return true;
        };
        let window = ClaimHints::window(self.job.policy.lifetime);
        let ask = hints.should_claim(digest, now, window);
        if !ask {
            self.job.metrics.claim_held.increment(1);
        }
        ask
    }

    /// Forgets the hint of `digest`: nothing started, the next read asks again.
    fn forget_hint(&self, digest: u128) {
        if let Some(hints) = &self.reads().claim_hints {
            hints.forget(digest);
        }
    }

    /// [`trigger_on_read`](Self::trigger_on_read) without waiting for it, for a read of a
    /// remote store: its reader must not pay for the claim's round trips. Returns whether
    /// this read asked for the refresh (the claim itself is decided in the background). While
    /// an attempt is in flight its hint keeps the other reads of the key from starting one, so
    /// an outage costs at most one attempt at a time per key; when nothing started (the store
    /// or queue is down, the queue is full) the hint is forgotten and the next read tries
    /// again.
    pub(super) fn trigger_in_background(
        &self,
        key: Key<'_>,
        args: &Args<J>,
        generation: u64,
        now: Timestamp,
    ) -> bool {
        let digest = key.digest();
        if !self.hint_says_claim(digest, now) {
            return false;
        }
        let (this, args) = (self.clone(), args.clone());
        self.core().tasks.spawn(async move {
            let key = Key::new(&this.core().prefix, &this.job.name, digest);
            if this.trigger(key, &args, generation, now, true).await == Trigger::Retry {
                this.forget_hint(digest);
            }
        });
        true
    }

    /// Triggers the refreshes a batch read asked for (each key's hint already said so, see
    /// [`hint_says_claim`](Self::hint_says_claim)), in the background: the claims of all the
    /// keys in one store call, one read of the entries claimed (the stale events may be over
    /// already), and one queue call for all their requests. Each key ends as
    /// [`trigger_in_background`](Self::trigger_in_background) would leave it.
    pub(super) fn trigger_many_in_background(&self, asked: Vec<Asked<J>>, now: Timestamp) {
        if asked.is_empty() {
            return;
        }
        let this = self.clone();
        self.core()
            .tasks
            .spawn(async move { this.trigger_many(asked, now).await });
    }

    async fn trigger_many(&self, asked: Vec<Asked<J>>, now: Timestamp) {
        let core = self.core();
        let job = &*self.job;
        let keys: Vec<Key<'_>> = asked
            .iter()
            .map(|&(digest, ..)| Key::new(&core.prefix, &job.name, digest))
            .collect();
        let outcomes = core
            .store
            .claim_many(&keys, now, job.policy.refresh_timeout)
            .instrument(debug_span!("cacheback.claim_many", keys = keys.len()))
            .await;
        let mut decided: Vec<Option<Trigger>> = vec![None; asked.len()];
        let mut won = Vec::new();
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match self.won(outcome) {
                Ok(claim) => won.push((i, claim)),
                Err(refused) => decided[i] = Some(refused),
            }
        }
        let won_keys: Vec<Key<'_>> = won.iter().map(|&(i, _)| keys[i]).collect();
        // As in `after_claim`: a failed read goes on with the refresh.
        let current = match won_keys.is_empty() {
            true => Ok(Vec::new()),
            false => core.store.get_many(&won_keys).await,
        };
        let mut requests = Vec::new();
        let mut sent = Vec::new();
        for (j, &(i, (token, failures))) in won.iter().enumerate() {
            let (_, args, generation) = &asked[i];
            let entry = current
                .as_ref()
                .ok()
                .and_then(|entries| entries.get(j)?.as_ref());
            if entry.is_some_and(|entry| entry.meta.generation != *generation) {
                decided[i] = Some(self.written_since(keys[i], token).await);
                continue;
            }
            let claimed = self.claimed(*generation, token, failures);
            match self.request(keys[i], args, claimed, now) {
                Ok(request) => {
                    requests.push(request);
                    sent.push((i, claimed));
                }
                Err(error) => decided[i] = Some(self.unencodable(keys[i], token, &error).await),
            }
        }
        let results = core.queue.enqueue_many(requests).await;
        let after = sent.iter().zip(results).map(|(&(i, claimed), result)| {
            let (key, args) = (keys[i], &asked[i].1);
            async move { (i, self.after_enqueue(key, args, claimed, result).await) }
        });
        for (i, trigger) in join_all(after).await {
            decided[i] = Some(trigger);
        }
        for ((digest, ..), decided) in asked.iter().zip(decided) {
            self.settle_hint(*digest, now, decided.unwrap_or(Trigger::Retry));
        }
    }

    /// Records what a read's trigger decided in the key's hint: the next reads of the window
    /// ask again only when nothing started and nothing holds the key.
    fn settle_hint(&self, digest: u128, now: Timestamp, decided: Trigger) {
        let Some(hints) = &self.reads().claim_hints else {
            return;
        };
        if decided == Trigger::Retry {
            hints.forget(digest);
        } else {
            hints.note(digest, now, ClaimHints::window(self.job.policy.lifetime));
        }
    }

    /// Takes the key's claim and, if won, enqueues one refresh. Never fails the
    /// read.
    ///
    /// A read saw the entry at `generation` before asking for the claim; a refresh may have
    /// landed in between (and released its claim), so with `recheck` the winner reads the entry
    /// again and lets the claim go when it has been written since: the stale event it saw is
    /// already over, and enqueueing would only make a worker skip the request.
    pub(super) async fn trigger(
        &self,
        key: Key<'_>,
        args: &Args<J>,
        generation: u64,
        now: Timestamp,
        recheck: bool,
    ) -> Trigger {
        let core = self.core();
        let job = &*self.job;
        let outcome = core
            .store
            .claim(key, now, job.policy.refresh_timeout)
            .instrument(debug_span!("cacheback.claim"))
            .await;
        self.trigger_claimed(key, args, generation, now, recheck, outcome)
            .await
    }

    /// The rest of [`trigger`](Self::trigger) once the store has answered the claim (asked
    /// for alone, or with the write that made the key stale).
    pub(super) async fn trigger_claimed(
        &self,
        key: Key<'_>,
        args: &Args<J>,
        generation: u64,
        now: Timestamp,
        recheck: bool,
        outcome: Result<ClaimOutcome>,
    ) -> Trigger {
        let decided = match self.won(outcome) {
            Ok((token, failures)) => {
                self.after_claim(key, args, generation, now, recheck, token, failures)
                    .await
            }
            Err(refused) => refused,
        };
        if decided != Trigger::Retry
            && let Some(hints) = &self.reads().claim_hints
        {
            let window = ClaimHints::window(self.job.policy.lifetime);
            hints.note(key.digest(), now, window);
        }
        decided
    }

    /// The rest of [`trigger`](Self::trigger) once the claim is won: check the entry was not
    /// written meanwhile (with `recheck`), then enqueue the refresh, or fall back.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn after_claim(
        &self,
        key: Key<'_>,
        args: &Args<J>,
        generation: u64,
        now: Timestamp,
        recheck: bool,
        token: ClaimToken,
        failures: u32,
    ) -> Trigger {
        let core = self.core();
        let current = match &core.memory {
            _ if !recheck => Ok(None),
            Some(memory) => Ok(memory.get_sync(key)),
            None => core.store.get(key).await,
        };
        if let Ok(Some(current)) = current
            && current.meta.generation != generation
        {
            return self.written_since(key, token).await;
        }
        let claimed = self.claimed(generation, token, failures);
        let request = match self.request(key, args, claimed, now) {
            Ok(request) => request,
            Err(error) => return self.unencodable(key, token, &error).await,
        };
        let sent = core.queue.enqueue(request).await;
        self.after_enqueue(key, args, claimed, sent).await
    }

    /// A won claim of a key whose entry was written since the read saw it: the stale event is
    /// over, the claim is let go of.
    async fn written_since(&self, key: Key<'_>, token: ClaimToken) -> Trigger {
        let job = &*self.job;
        refresh::release(self.core(), job, key, token, Release::Abandoned).await;
        job.metrics.claim_held.increment(1);
        Trigger::Taken
    }

    /// A won claim that goes on to a refresh (counted as such).
    fn claimed(&self, generation: u64, token: ClaimToken, failures: u32) -> Claimed {
        self.job.metrics.claim_won.increment(1);
        Claimed {
            token,
            generation,
            prior_failures: failures,
        }
    }

    /// A won claim whose request could not be encoded: let go of, nothing started.
    async fn unencodable(&self, key: Key<'_>, token: ClaimToken, error: &Error) -> Trigger {
        warn!(error = %Chain(error), "could not encode the refresh request");
        refresh::release(self.core(), &self.job, key, token, Release::Abandoned).await;
        Trigger::Retry
    }

    /// What the queue said to a claimed key's request: started, dropped (the queue is full:
    /// the claim is let go of) or the queue is down (fall back).
    async fn after_enqueue(
        &self,
        key: Key<'_>,
        args: &Args<J>,
        claimed: Claimed,
        sent: std::result::Result<(), EnqueueError>,
    ) -> Trigger {
        let core = self.core();
        let job = &*self.job;
        match sent {
            Ok(()) => Trigger::Started,
            Err(EnqueueError::Full) => {
                job.metrics.enqueue_dropped.increment(1);
                warn!(job = %job.name, "refresh queue is full; dropped the refresh (the next read retries)");
                refresh::release(core, job, key, claimed.token, Release::Abandoned).await;
                // Forgotten before the event: whoever sees the drop reported finds the next
                // read free to try again.
                self.forget_hint(key.digest());
                core.emit(|| Event::EnqueueDropped {
                    job: Arc::clone(&job.name),
                    key: key.text(),
                });
                Trigger::Retry
            }
            Err(error) => self.fall_back(key, args, claimed, error).await,
        }
    }

    pub(super) async fn fall_back(
        &self,
        key: Key<'_>,
        args: &Args<J>,
        claimed: Claimed,
        error: EnqueueError,
    ) -> Trigger {
        let core = self.core();
        let job = &*self.job;
        match self.reads().queue_fallback {
            QueueFallback::LocalRefresh => {
                job.metrics.fallback_local.increment(1);
                warn!(error = %Chain(&error), "queue unavailable; refreshing in this process");
                let (core, job, args, digest) = (
                    Arc::clone(core),
                    Arc::clone(&self.job),
                    args.clone(),
                    key.digest(),
                );
                self.core().tasks.spawn(async move {
                    refresh::refresh_claimed(
                        &core,
                        &job,
                        args,
                        digest,
                        claimed,
                        ReadBefore::Unread,
                    )
                    .await;
                });
                Trigger::Started
            }
            QueueFallback::SyncRefresh => {
                job.metrics.fallback_sync.increment(1);
                warn!(error = %Chain(&error), "queue unavailable; refreshing before answering");
                let (args, digest) = (args.clone(), key.digest());
                refresh::refresh_claimed(core, job, args, digest, claimed, ReadBefore::Unread)
                    .await;
                Trigger::Started
            }
            QueueFallback::Skip => {
                job.metrics.fallback_skip.increment(1);
                warn!(error = %Chain(&error), "queue unavailable; refresh skipped");
                refresh::release(core, job, key, claimed.token, Release::Abandoned).await;
                Trigger::Retry
            }
        }
    }

    pub(super) fn request(
        &self,
        key: Key<'_>,
        args: &Args<J>,
        claimed: Claimed,
        now: Timestamp,
    ) -> Result<RefreshRequest> {
        let core = self.core();
        Ok(RefreshRequest {
            job: self.job.name.to_string(),
            key: key.text(),
            args: core.codec.encode(args)?,
            codec: core.codec.id(),
            token: claimed.token,
            generation: claimed.generation,
            enqueued_at: now,
            prior_failures: claimed.prior_failures,
            queue: self.job.policy.queue.to_string(),
        })
    }
}

/// A refresh a batch read asked for: the key's digest, its args and the generation the read
/// saw.
pub(super) type Asked<J> = (u128, Args<J>, u64);

/// What [`JobHandle::trigger`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trigger {
    /// Won the claim; the refresh is enqueued (or runs in this process).
    Started,
    /// The claim is taken: a refresh is under way elsewhere, or failures are backing off.
    Taken,
    /// Nothing started and nothing holds the key (a store error, a dropped request): the next
    /// read should try again.
    Retry,
}
