//! Writes and the rest: `refresh`, `set`, `delete`, `invalidate`, `refresh_async`, `peek` and
//! `refresh_many`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::client::handle::{Args, JobHandle, Value};
use crate::client::lookup::{Peek, WarmProgress, WarmReport};
use crate::client::trigger::Trigger;
use crate::clock::Timestamp;
use crate::engine::{fetch, refresh, tags, value};
use crate::entry::{Entry, EntryMeta};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::key::Key;
use crate::policy::Freshness;
use crate::store::{Put, PutCondition, PutOutcome, Release};

impl<J: Job> JobHandle<J> {
    /// Fetches now, stores the value (whatever the key held) and returns it: for warming and
    /// cron jobs. Not coalesced with readers' fetches.
    pub async fn refresh(&self, args: Args<J>) -> Result<Arc<Value<J>>> {
        let core = self.core();
        let job = &*self.job;
        let digest = self.digest(&args)?;
        let tag_clock = tags::clock_before_fetch(core, job).await;
        let (value, took) = fetch::run_fetch(job, args.clone()).await?;
        let value = Arc::new(value);
        let key = Key::new(&core.prefix, &job.name, digest);
        let fetched = value::Fetched {
            args: &args,
            value: Arc::clone(&value),
            took,
            tag_clock,
        };
        value::store_value(core, job, key, fetched, PutCondition::Always).await?;
        refresh::release(
            core,
            job,
            key,
            crate::store::ClaimToken::from_u128(0),
            Release::Refreshed,
        )
        .await;
        Ok(value)
    }

    /// Stores a value computed elsewhere, Fresh for `lifetime`, without fetching. A refresh
    /// that was requested before this write will not overwrite it.
    pub async fn set(&self, args: Args<J>, value: Value<J>) -> Result<()> {
        let core = self.core();
        let digest = self.digest(&args)?;
        let key = Key::new(&core.prefix, &self.job.name, digest);
        let value = Arc::new(value);
        // An untagged value needs no tag clock (and costs no read of it).
        let tag_clock = if self.job.job.tags(&args, &value).is_empty() {
            0
        } else {
            self.job.saw_tags();
            tags::clock_before_fetch(core, &self.job).await
        };
        let fetched = value::Fetched {
            args: &args,
            value,
            took: Duration::ZERO,
            tag_clock,
        };
        value::store_value(core, &self.job, key, fetched, PutCondition::Always).await?;
        Ok(())
    }

    /// Removes the value of `args` (hard invalidation). Deleting a missing key is not an error.
    /// A tombstone is kept for the client's `tombstone_ttl` so that a refresh requested before
    /// the delete cannot bring the value back.
    pub async fn delete(&self, args: Args<J>) -> Result<()> {
        let core = self.core();
        let digest = self.digest(&args)?;
        let key = Key::new(&core.prefix, &self.job.name, digest);
        let tombstone = self.tombstone(core.now());
        core.put(
            key,
            Put::new(tombstone, PutCondition::Always, core.tombstone_ttl),
        )
        .await?;
        Ok(())
    }

    /// A tombstone written at `now`, kept for the client's `tombstone_ttl`.
    pub(super) fn tombstone(&self, now: Timestamp) -> Entry {
        let until = now.saturating_add(self.core().tombstone_ttl);
        Entry::new(
            EntryMeta::new(now, until, until),
            crate::entry::Payload::tombstone(),
        )
    }

    /// Soft invalidation: marks a present value stale (it keeps being served) and enqueues one
    /// refresh. Returns whether a refresh was enqueued; a missing key enqueues nothing.
    ///
    /// Present or not, the key's generation moves on: a value fetched for a request made
    /// before this call (a queued refresh, a synchronous miss still running) is never stored
    /// Fresh after it.
    pub async fn invalidate(&self, args: Args<J>) -> Result<bool> {
        self.mark_stale(args, false).await
    }

    /// Like [`invalidate`](Self::invalidate), but also enqueues a refresh when the key has no
    /// value (django-cacheback's `async_refresh`). Returns whether a refresh was enqueued.
    pub async fn refresh_async(&self, args: Args<J>) -> Result<bool> {
        self.mark_stale(args, true).await
    }

    pub(super) async fn mark_stale(&self, args: Args<J>, even_if_missing: bool) -> Result<bool> {
        let core = self.core();
        let digest = self.digest(&args)?;
        let key = Key::new(&core.prefix, &self.job.name, digest);
        // Optimistic loop: another writer may move the generation between read and write.
        for _ in 0..8 {
            let now = core.now();
            let current = core.store.get(key).await?;
            let live = current
                .as_ref()
                .filter(|e| !e.is_tombstone() && e.meta.freshness(now) != Freshness::Expired);
            let Some(entry) = live else {
                // Nothing to serve, but a fetch requested before this call (a refresh, a
                // synchronous miss) may still be running: move the generation on with a
                // tombstone, so that fetch's generation-checked write is discarded.
                let seen = current.map_or(0, |e| e.meta.generation);
                let fence = Put::new(
                    self.tombstone(now),
                    PutCondition::IfGeneration(seen),
                    core.tombstone_ttl,
                );
                if !even_if_missing {
                    match core.put(key, fence).await? {
                        PutOutcome::Written { .. } => return Ok(false),
                        PutOutcome::Discarded { .. } => continue,
                    }
                }
                return match self.fence_and_claim(key, &args, fence, now).await? {
                    Some(started) => Ok(started),
                    None => continue,
                };
            };
            let mut meta = entry.meta;
            meta.fresh_until = meta.fresh_until.min(now);
            let ttl = meta.stale_until.since(now);
            let put = Put::new(
                Entry::new(meta, entry.payload.clone()).with_tags(entry.tags.clone()),
                PutCondition::IfGeneration(meta.generation),
                ttl,
            );
            if let Some(started) = self.fence_and_claim(key, &args, put, now).await? {
                return Ok(started);
            }
        }
        Err(Error::store(
            core.store.backend(),
            "invalidate kept racing concurrent writes of the key; gave up after 8 attempts",
        ))
    }

    /// Writes `put` (which moves the key's generation on) and, once written, takes the key's
    /// claim in the same store call and enqueues the refresh. `None` when the write's
    /// generation condition failed (nothing was written or claimed); else whether a refresh
    /// started.
    async fn fence_and_claim(
        &self,
        key: Key<'_>,
        args: &Args<J>,
        put: Put,
        now: Timestamp,
    ) -> Result<Option<bool>> {
        let ttl = self.job.policy.refresh_timeout;
        let (written, claim) = self.core().put_and_claim(key, put, now, ttl).await?;
        let (PutOutcome::Written { generation }, Some(claim)) = (written, claim) else {
            return Ok(None);
        };
        let started = self
            .trigger_claimed(key, args, generation, now, false, Ok(claim))
            .await;
        Ok(Some(started == Trigger::Started))
    }

    /// The entry of `args` with its metadata and claim state, without any side effect
    /// (django-cacheback's `raw_get`). `None` when the key has no entry (or was deleted).
    pub async fn peek(&self, args: Args<J>) -> Result<Option<Peek<Value<J>>>> {
        let core = self.core();
        let digest = self.digest(&args)?;
        let key = Key::new(&core.prefix, &self.job.name, digest);
        let read = core.store.get(key).await?;
        let Some(entry) = tags::judge(core, read).await else {
            return Ok(None);
        };
        if entry.is_tombstone() {
            return Ok(None);
        }
        let now = core.now();
        let claim = core.store.claim_state(key, now).await?;
        let (value, decode_error) = match value::decode_value(core, &self.job, &entry) {
            Ok(value) => (value, None),
            Err(reason) => (None, Some(reason)),
        };
        Ok(Some(Peek {
            value,
            decode_error,
            meta: entry.meta,
            freshness: entry.meta.freshness(now),
            claim,
            key: key.text(),
        }))
    }

    /// Refreshes many keys with at most `concurrency` fetches at a time, calling `progress`
    /// after each one. Failures do not stop the others; they are reported.
    ///
    /// ```
    /// # use cacheback::{Cacheback, job_fn, Policy};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cacheback::Result<()> {
    /// # let cache = Cacheback::builder().build()?;
    /// let double = cache.job(job_fn("double", Policy::default(), |n: u32| async move {
    ///     Ok::<_, std::io::Error>(n * 2)
    /// }));
    /// let report = double
    ///     .refresh_many(0..100, 8, |p| {
    ///         if p.done % 50 == 0 {
    ///             println!("{}/{:?} warmed", p.done, p.total);
    ///         }
    ///     })
    ///     .await;
    /// assert_eq!(report.refreshed, 100);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn refresh_many<I>(
        &self,
        args: I,
        concurrency: usize,
        mut progress: impl FnMut(&WarmProgress),
    ) -> WarmReport<Args<J>>
    where
        I: IntoIterator<Item = Args<J>>,
    {
        let iter = args.into_iter();
        let total = match iter.size_hint() {
            (low, Some(high)) if low == high => Some(low),
            _ => None,
        };
        let mut results = futures_util::stream::iter(iter)
            .map(|args| async move {
                let result = self.refresh(args.clone()).await;
                (args, result)
            })
            .buffer_unordered(concurrency.max(1));
        let mut report = WarmReport {
            refreshed: 0,
            failures: Vec::new(),
            failed: 0,
        };
        let mut state = WarmProgress {
            done: 0,
            failed: 0,
            total,
        };
        while let Some((args, result)) = results.next().await {
            state.done += 1;
            match result {
                Ok(_) => report.refreshed += 1,
                Err(error) => {
                    state.failed += 1;
                    report.failed += 1;
                    if report.failures.len() < 100 {
                        report.failures.push((args, error));
                    }
                }
            }
            progress(&state);
        }
        report
    }
}
