//! The read paths that need more than one store read: stale values (served at once, or
//! refetched past `stale_threshold`), misses, and reads while the store is unreachable; the
//! coalesced synchronous fetch they share.

use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, debug_span, warn};

use crate::client::StoreFallback;
use crate::client::coalesce::AnyValue;
use crate::client::fleet::{self, Turn};
use crate::client::handle::{Args, Classified, JobHandle, Mode, Value};
use crate::client::lookup::{Lookup, Status};
use crate::clock::Timestamp;
use crate::engine::registry::JobEntry;
use crate::engine::{Core, backoff, fetch, tags, value};
use crate::entry::EntryMeta;
use crate::error::{Chain, Error, Result};
use crate::job::Job;
use crate::key::Key;
use crate::observe::Event;
use crate::policy::Freshness;
use crate::store::{ClaimToken, PutCondition};
use crate::tally::Count;

/// The result of a synchronous (coalesced) fetch: the value, and why it was not cached, if it
/// was not.
pub(super) struct Fetched<V> {
    value: Arc<V>,
    uncached: Option<Error>,
}

impl<J: Job> JobHandle<J> {
    /// Everything but a plain hit.
    pub(super) async fn finish(
        &self,
        args: Args<J>,
        digest: u128,
        read: Classified<Value<J>>,
        mode: Mode,
    ) -> Result<Lookup<Value<J>>> {
        let job = &*self.job;
        let key = Key::new(&self.core().prefix, &job.name, digest);
        let span = debug_span!("cacheback.get", job = %job.name, key = %key);
        async move {
            match read {
                Classified::Hit(lookup) => Ok(lookup),
                Classified::FreshMaybeEarly { value, meta, now } => {
                    job.metrics.hit.increment(1);
                    job.metrics
                        .tally(|t| t.served(Count::Hit, now.since(meta.fetched_at)));
                    let refresh_triggered = self.maybe_refresh_early(key, &args, &meta, now).await;
                    Ok(Lookup {
                        value: Some(value),
                        status: Status::Hit,
                        age: Some(now.since(meta.fetched_at)),
                        refresh_triggered,
                    })
                }
                Classified::Stale { value, meta, now } => {
                    self.serve_stale(key, args, value, meta, now, mode).await
                }
                Classified::Missing { generation, now } => {
                    self.serve_miss(key, args, generation, now, mode).await
                }
            }
        }
        .instrument(span)
        .await
    }

    pub(super) async fn serve_stale(
        &self,
        key: Key<'_>,
        args: Args<J>,
        value: Arc<Value<J>>,
        meta: EntryMeta,
        now: Timestamp,
        mode: Mode,
    ) -> Result<Lookup<Value<J>>> {
        if self.refetch(mode, now, &meta) {
            let condition = Some(PutCondition::IfGeneration(meta.generation));
            match self.fetch_coalesced(key.digest(), args, condition).await {
                Ok(fresh) => return Ok(self.fetched(&fresh, Status::StaleRefetched)),
                Err(error) => {
                    // stale-if-error: a value we have beats an error.
                    warn!(error = %Chain(&error), "synchronous refetch of a stale value failed; serving the stale value");
                }
            }
        } else {
            let triggered = self
                .trigger_for_read(key, &args, meta.generation, now)
                .await;
            return Ok(self.stale_lookup(value, &meta, now, triggered));
        }
        Ok(self.stale_lookup(value, &meta, now, false))
    }

    /// The answer of a read that serves a stale value (counted as such).
    pub(super) fn stale_lookup(
        &self,
        value: Arc<Value<J>>,
        meta: &EntryMeta,
        now: Timestamp,
        refresh_triggered: bool,
    ) -> Lookup<Value<J>> {
        let metrics = &self.job.metrics;
        let age = now.since(meta.fetched_at);
        metrics.stale.increment(1);
        metrics.served_age.record(age.as_secs_f64());
        metrics.tally(|t| t.served(Count::Stale, age));
        Lookup {
            value: Some(value),
            status: Status::Stale,
            age: Some(age),
            refresh_triggered,
        }
    }

    /// The answer of a read that finds nothing and does not fetch (counted as a miss).
    pub(super) fn miss_lookup(&self, refresh_triggered: bool) -> Lookup<Value<J>> {
        let metrics = &self.job.metrics;
        metrics.miss.increment(1);
        metrics.tally(|t| t.count(Count::Miss));
        Lookup {
            value: None,
            status: Status::Miss,
            age: None,
            refresh_triggered,
        }
    }

    pub(super) async fn serve_miss(
        &self,
        key: Key<'_>,
        args: Args<J>,
        generation: u64,
        now: Timestamp,
        mode: Mode,
    ) -> Result<Lookup<Value<J>>> {
        if self.fetches_misses(mode) {
            let condition = Some(PutCondition::IfGeneration(generation));
            let fetched = self.fetch_coalesced(key.digest(), args, condition).await?;
            Ok(self.fetched(&fetched, Status::MissFetched))
        } else {
            let triggered = self.trigger_for_read(key, &args, generation, now).await;
            Ok(self.miss_lookup(triggered))
        }
    }

    /// The store could not be read: follow [`StoreFallback`].
    pub(super) async fn read_without_store(
        &self,
        args: Args<J>,
        digest: u128,
        error: Error,
        mode: Mode,
    ) -> Result<Lookup<Value<J>>> {
        let job = &*self.job;
        job.metrics.store_error("get");
        match self.reads().store_fallback {
            StoreFallback::Fail => Err(error),
            StoreFallback::Fetch if mode == Mode::Cached => {
                // A read that never waits for the upstream has nothing to answer with.
                warn!(job = %job.name, error = %Chain(&error), "store unreachable; no cached value to serve");
                job.metrics.bypassed.increment(1);
                let key = Key::new(&self.core().prefix, &job.name, digest);
                self.core().emit(|| Event::CacheBypassed {
                    job: Arc::clone(&job.name),
                    key: key.text(),
                    error,
                });
                Ok(Lookup {
                    value: None,
                    status: Status::Bypassed,
                    age: None,
                    refresh_triggered: false,
                })
            }
            StoreFallback::Fetch => {
                warn!(job = %self.job.name, error = %Chain(&error), "store unreachable; fetching without the cache");
                let fetched = self.fetch_coalesced(digest, args, None).await?;
                Ok(self.fetched(&fetched, Status::Bypassed))
            }
        }
    }

    /// The answer of a read whose value was fetched synchronously: `status`, unless the value
    /// could not be cached.
    pub(super) fn fetched(&self, fetched: &Fetched<Value<J>>, status: Status) -> Lookup<Value<J>> {
        let metrics = &self.job.metrics;
        let status = match (&fetched.uncached, status) {
            (Some(_), _) => Status::Bypassed,
            (None, status) => status,
        };
        metrics.tally(|t| t.count(Count::Miss));
        match status {
            Status::Bypassed => metrics.bypassed.increment(1),
            Status::StaleRefetched => metrics.stale_refetched.increment(1),
            _ => metrics.miss_fetched.increment(1),
        }
        Lookup {
            value: Some(Arc::clone(&fetched.value)),
            status,
            age: Some(Duration::ZERO),
            refresh_triggered: status == Status::StaleRefetched,
        }
    }

    pub(super) async fn maybe_refresh_early(
        &self,
        key: Key<'_>,
        args: &Args<J>,
        meta: &EntryMeta,
        now: Timestamp,
    ) -> bool {
        let p =
            self.job
                .policy
                .early_refresh_probability(now, meta.fresh_until, meta.fetch_duration);
        p > 0.0
            && fastrand::f64() < p
            && self.trigger_for_read(key, args, meta.generation, now).await
    }

    /// One fetch per key per process: runs (or joins) the fetch in a task and, when
    /// `condition` is given, stores the value under it (`None`: the store is unreachable).
    pub(super) async fn fetch_coalesced(
        &self,
        digest: u128,
        args: Args<J>,
        condition: Option<PutCondition>,
    ) -> Result<Arc<Fetched<Value<J>>>> {
        let core = Arc::clone(self.core());
        let job = Arc::clone(&self.job);
        let (result, joined) = self
            .reads()
            .coalescer
            .run(digest, &self.core().tasks, move || {
                Box::pin(Self::fetch_and_store(core, job, digest, args, condition))
            })
            .await;
        if joined {
            self.job.metrics.coalesced.increment(1);
        }
        result.and_then(|any| {
            any.downcast::<Fetched<Value<J>>>()
                .map_err(|_| Error::codec("coalesced fetch produced a value of another type"))
        })
    }

    /// The body of a coalesced fetch, run in its own task.
    pub(super) async fn fetch_and_store(
        core: Arc<Core>,
        job: Arc<JobEntry<J>>,
        digest: u128,
        args: Args<J>,
        condition: Option<PutCondition>,
    ) -> Result<AnyValue> {
        let key = Key::new(&core.prefix, &job.name, digest);
        // Double-check: a caller that read the store just before another fetch of the key
        // landed, and reached the coalescer just after that fetch left it, finds the fresh
        // value here instead of fetching a second time.
        if let Some(PutCondition::IfGeneration(seen)) = condition
            && let Some(value) = fleet::written(&core, &job, key, seen, Freshness::Fresh).await
        {
            return Ok(Arc::new(Fetched {
                value,
                uncached: None,
            }) as AnyValue);
        }
        let use_store = condition.is_some();
        let (before, token) = match condition {
            Some(PutCondition::IfGeneration(seen))
                if job.policy.fleet_coalescing && core.memory.is_none() =>
            {
                match fleet::take_turn(&core, &job, key, seen).await? {
                    Turn::Fetch { before, token } => (before, token),
                    Turn::Written(value) => {
                        let uncached = None;
                        return Ok(Arc::new(Fetched { value, uncached }) as AnyValue);
                    }
                }
            }
            _ => {
                let now = core.now();
                let before = backoff::before_fetch(&core, &job, key, now, use_store).await?;
                (before, None)
            }
        };
        let tag_clock = if use_store {
            tags::clock_before_fetch(&core, &job).await
        } else {
            0
        };
        let (value, took) = match fetch::run_fetch(&job, args.clone()).await {
            Ok(fetched) => fetched,
            Err(error) => {
                backoff::record_failure(&core, &job, key, before, &error, use_store).await;
                if let Some(token) = token {
                    fleet::release(&core, &job, key, token).await;
                }
                return Err(error);
            }
        };
        backoff::record_success(&core, &job, key, before).await;
        let fetched = (value, took, tag_clock);
        Ok(Self::keep_fetched(&core, &job, key, &args, fetched, condition, token).await)
    }

    /// Stores a value fetched for `args` (with how long the fetch took and the tag clock read
    /// before it) under `condition` (`None`: the store is unreachable), and says so when it
    /// could not be cached. A fetch that holds the key's claim (`token`) releases it with the
    /// write (one round trip), or lets it go when the value cannot be stored.
    pub(super) async fn keep_fetched(
        core: &Arc<Core>,
        job: &Arc<JobEntry<J>>,
        key: Key<'_>,
        args: &Args<J>,
        (value, took, tag_clock): (Value<J>, Duration, u64),
        condition: Option<PutCondition>,
        token: Option<ClaimToken>,
    ) -> AnyValue {
        let value = Arc::new(value);
        let uncached = match condition {
            None => Some(Error::store(
                core.store.backend(),
                "the store is unreachable; the value was fetched without the cache",
            )),
            Some(condition) => {
                let fetched = value::Fetched {
                    args,
                    value: Arc::clone(&value),
                    took,
                    tag_clock,
                };
                let written = match (value::prepare_put(core, job, fetched, condition), token) {
                    (Ok(put), Some(token)) => core.put_and_release(key, put, token).await,
                    (Ok(put), None) => core.put(key, put).await,
                    (Err(error), token) => {
                        if let Some(token) = token {
                            fleet::release(core, job, key, token).await;
                        }
                        Err(error)
                    }
                };
                Self::count_write_error(job, written.err())
            }
        };
        Self::report_uncached(core, job, key, uncached.as_ref());
        Arc::new(Fetched { value, uncached }) as AnyValue
    }

    /// Counts a failed write of a fetched value as a store error, unless the value itself was
    /// refused (too large, invalid tags).
    fn count_write_error(job: &JobEntry<J>, error: Option<Error>) -> Option<Error> {
        if let Some(error) = &error
            && !matches!(error, Error::TooLarge { .. } | Error::InvalidTag { .. })
        {
            job.metrics.store_error("put");
        }
        error
    }

    /// Says why a fetched value was not cached, if it was not.
    fn report_uncached(core: &Core, job: &JobEntry<J>, key: Key<'_>, uncached: Option<&Error>) {
        let Some(error) = uncached else {
            return;
        };
        warn!(job = %job.name, key = %key, error = %Chain(error), "fetched value not cached");
        core.emit(|| Event::CacheBypassed {
            job: Arc::clone(&job.name),
            key: key.text(),
            error: error.clone(),
        });
    }
}
