//! [`JobHandle`]: every operation on one job's keys.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use futures_util::StreamExt;
use futures_util::future::{self, BoxFuture, Either};
use tracing::{Instrument, debug_span, warn};

use crate::client::backoff;
use crate::client::coalesce::AnyValue;
use crate::client::hints::ClaimHints;
use crate::client::refresh::{self, Claimed};
use crate::client::registry::JobEntry;
use crate::client::{Cacheback, Core, QueueFallback, StoreFallback};
use crate::clock::Timestamp;
use crate::entry::{Entry, EntryMeta};
use crate::error::{Chain, Error, Result};
use crate::job::Job;
use crate::key::{self, Key};
use crate::observe::Event;
use crate::policy::Freshness;
use crate::queue::{EnqueueError, RefreshRequest};
use crate::store::{ClaimOutcome, ClaimState, ClaimToken, Put, PutCondition, PutOutcome, Release};

/// The result of a synchronous (coalesced) fetch: the value, and why it was not cached, if it
/// was not.
struct Fetched<V> {
    value: Arc<V>,
    uncached: Option<Error>,
}

/// An answer available now, or a future for it.
type NowOrLater<'a, T> = Either<Result<T>, BoxFuture<'a, Result<T>>>;

/// A read entry, sorted by what answering it takes.
enum Classified<V> {
    Hit(Lookup<V>),
    FreshMaybeEarly {
        value: Arc<V>,
        meta: EntryMeta,
        now: Timestamp,
    },
    Stale {
        value: Arc<V>,
        meta: EntryMeta,
        now: Timestamp,
    },
    Missing {
        generation: u64,
        now: Timestamp,
    },
}

/// How a read was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// A Fresh value from the store.
    Hit,
    /// A Stale value served at once; a refresh was triggered unless one already runs.
    Stale,
    /// The value was stale beyond `stale_threshold`, so it was fetched synchronously.
    StaleRefetched,
    /// No value; a refresh was triggered (`fetch_on_miss = false`).
    Miss,
    /// No value, so it was fetched synchronously (`fetch_on_miss = true`).
    MissFetched,
    /// The read did not go through the cache: the value was fetched synchronously but could
    /// not be stored (the store is unreachable, or the value is over the size limit). An
    /// [`Event::CacheBypassed`] says why; the next read fetches again.
    Bypassed,
}

impl Status {
    /// A stable lowercase label: `hit`, `stale`, `stale_refetched`, `miss`, `miss_fetched`,
    /// `bypassed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Bypassed => "bypassed",
            Status::Hit => "hit",
            Status::Stale => "stale",
            Status::StaleRefetched => "stale_refetched",
            Status::Miss => "miss",
            Status::MissFetched => "miss_fetched",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer of [`JobHandle::get_with_status`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Lookup<V> {
    /// The value, if there was one to serve.
    pub value: Option<Arc<V>>,
    /// How the read was answered.
    pub status: Status,
    /// How long ago the served value was fetched.
    pub age: Option<Duration>,
    /// Whether this read enqueued (or ran) a refresh.
    pub refresh_triggered: bool,
}

/// An entry as [`JobHandle::peek`] sees it, with no side effects.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Peek<V> {
    /// The value, if it decodes.
    pub value: Option<Arc<V>>,
    /// Why the value did not decode, if it did not.
    pub decode_error: Option<String>,
    /// The entry's metadata.
    pub meta: EntryMeta,
    /// The entry's state now.
    pub freshness: Freshness,
    /// The key's claim and failure state.
    pub claim: ClaimState,
    /// The key's text.
    pub key: String,
}

/// Progress of [`JobHandle::refresh_many`], passed to its callback after each key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmProgress {
    /// Keys finished (refreshed or failed).
    pub done: usize,
    /// Keys that failed.
    pub failed: usize,
    /// Total number of keys, when the iterator knew it.
    pub total: Option<usize>,
}

/// The result of [`JobHandle::refresh_many`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WarmReport<A> {
    /// Keys refreshed.
    pub refreshed: usize,
    /// Keys that failed, with their errors (the first 100).
    pub failures: Vec<(A, Error)>,
    /// Total keys that failed (may exceed `failures.len()`).
    pub failed: usize,
}

/// A job registered with a [`Cacheback`] client: read, write, invalidate and warm its keys.
///
/// Cheap to clone. Get one from [`Cacheback::job`].
pub struct JobHandle<J: Job> {
    client: Cacheback,
    job: Arc<JobEntry<J>>,
}

impl<J: Job> Clone for JobHandle<J> {
    fn clone(&self) -> Self {
        JobHandle {
            client: self.client.clone(),
            job: Arc::clone(&self.job),
        }
    }
}

impl<J: Job> fmt::Debug for JobHandle<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("job", &self.job.name)
            .field("policy", &self.job.policy)
            .finish()
    }
}

type Value<J> = <J as Job>::Value;
type Args<J> = <J as Job>::Args;

impl<J: Job> JobHandle<J> {
    pub(crate) fn new(client: Cacheback, job: Arc<JobEntry<J>>) -> Self {
        JobHandle { client, job }
    }

    fn core(&self) -> &Arc<Core> {
        self.client.core()
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.job.name
    }

    /// The job's policy (as read once at registration).
    pub fn policy(&self) -> &crate::Policy {
        &self.job.policy
    }

    /// The job itself.
    pub fn job(&self) -> &J {
        &self.job.job
    }

    /// The client this handle belongs to.
    pub fn client(&self) -> &Cacheback {
        &self.client
    }

    /// The store key of `args`, as text (`prefix:job:digest`).
    pub fn key(&self, args: &Args<J>) -> Result<String> {
        Ok(Key::new(&self.core().prefix, &self.job.name, self.digest(args)?).to_string())
    }

    fn digest(&self, args: &Args<J>) -> Result<u128> {
        key::digest_seeded(self.job.seed, args).map_err(|e| Error::Key {
            message: e.to_string(),
        })
    }

    /// Reads the value of `args` (SPEC §3): Fresh values at once; Stale values at once while one
    /// refresh runs in the background; misses fetched synchronously (coalesced) or, with
    /// `fetch_on_miss = false`, answered with `None` while a refresh is enqueued.
    ///
    /// Errors only when a synchronous fetch fails, the args cannot be hashed, or the store is
    /// down and the client is configured with [`StoreFallback::Fail`]. A refresh that cannot be
    /// queued never fails a read.
    pub fn get(
        &self,
        args: Args<J>,
    ) -> impl Future<Output = Result<Option<Arc<Value<J>>>>> + Send + '_ {
        match self.lookup(args) {
            Either::Left(now) => Either::Left(future::ready(now.map(|lookup| lookup.value))),
            Either::Right(later) => {
                Either::Right(
                    Box::pin(async move { later.await.map(|lookup| lookup.value) })
                        as BoxFuture<'_, _>,
                )
            }
        }
    }

    /// Like [`get`](Self::get), with how the read was answered, the value's age and whether a
    /// refresh was triggered.
    ///
    /// With an in-process store, a Fresh hit is answered when this is called, and the returned
    /// future is already complete: the hit path allocates nothing and runs no state machine.
    pub fn get_with_status(
        &self,
        args: Args<J>,
    ) -> impl Future<Output = Result<Lookup<Value<J>>>> + Send + '_ {
        match self.lookup(args) {
            Either::Left(now) => Either::Left(future::ready(now)),
            Either::Right(later) => Either::Right(later),
        }
    }

    /// A read answered now (an in-process hit, or an error) or a future for the rest.
    #[inline]
    fn lookup(&self, args: Args<J>) -> NowOrLater<'_, Lookup<Value<J>>> {
        let core = self.core();
        let digest = match self.digest(&args) {
            Ok(digest) => digest,
            Err(error) => return Either::Left(Err(error)),
        };
        let key = Key::new(&core.prefix, &self.job.name, digest);
        match core.store.get_now(key) {
            Some(Ok(entry)) => match self.classify(key, entry, core.clock.now()) {
                Classified::Hit(lookup) => Either::Left(Ok(lookup)),
                Classified::Stale { value, meta, now }
                    if !self.job.policy.threshold_exceeded(now, meta.fresh_until) =>
                {
                    self.stale_now(key, args, value, meta, now)
                }
                slow => {
                    Either::Right(Box::pin(self.finish(args, digest, slow)) as BoxFuture<'_, _>)
                }
            },
            Some(Err(error)) => Either::Right(
                Box::pin(self.read_without_store(args, digest, error)) as BoxFuture<'_, _>,
            ),
            None => Either::Right(Box::pin(self.get_remote(args, digest)) as BoxFuture<'_, _>),
        }
    }

    /// A stale read of an in-process store, answered without awaiting when the claim is
    /// already taken (the common case: every reader of a stale key but the first). The reader
    /// that wins the claim goes on to enqueue the refresh in a boxed future.
    fn stale_now(
        &self,
        key: Key<'_>,
        args: Args<J>,
        value: Arc<Value<J>>,
        meta: EntryMeta,
        now: Timestamp,
    ) -> NowOrLater<'_, Lookup<Value<J>>> {
        let core = self.core();
        let job = &*self.job;
        let Some(outcome) = core.store.claim_now(key, now, job.policy.refresh_timeout) else {
            let read = Classified::Stale { value, meta, now };
            return Either::Right(
                Box::pin(self.finish(args, key.digest(), read)) as BoxFuture<'_, _>
            );
        };
        let age = now.since(meta.fetched_at);
        let stale = move |refresh_triggered| {
            job.metrics.stale.increment(1);
            job.metrics.served_age.record(age.as_secs_f64());
            Lookup {
                value: Some(value),
                status: Status::Stale,
                age: Some(age),
                refresh_triggered,
            }
        };
        match self.won(outcome) {
            Ok((token, failures)) => {
                let digest = key.digest();
                Either::Right(Box::pin(async move {
                    let key = Key::new(&self.core().prefix, &self.job.name, digest);
                    let started = self
                        .after_claim(key, &args, meta.generation, now, true, token, failures)
                        .await;
                    Ok(stale(started == Trigger::Started))
                }) as BoxFuture<'_, _>)
            }
            Err(_) => Either::Left(Ok(stale(false))),
        }
    }

    /// A won claim's token and the key's prior failures; or, counted (and logged on error),
    /// what the refused claim means for the caller.
    fn won(
        &self,
        outcome: Result<ClaimOutcome>,
    ) -> std::result::Result<(ClaimToken, u32), Trigger> {
        let job = &*self.job;
        match outcome {
            Ok(ClaimOutcome::Won { token, failures }) => Ok((token, failures)),
            Ok(ClaimOutcome::Held { .. }) => {
                job.metrics.claim_held.increment(1);
                Err(Trigger::Taken)
            }
            Ok(ClaimOutcome::BackingOff { .. }) => {
                job.metrics.claim_backing_off.increment(1);
                Err(Trigger::Taken)
            }
            Err(error) => {
                job.metrics.store_error("claim");
                warn!(error = %Chain(&error), "could not claim the refresh; the next read will try again");
                Err(Trigger::Retry)
            }
        }
    }

    /// The read path of stores that must be awaited.
    async fn get_remote(&self, args: Args<J>, digest: u128) -> Result<Lookup<Value<J>>> {
        let core = self.core();
        let key = Key::new(&core.prefix, &self.job.name, digest);
        match core.store.get(key).await {
            Ok(entry) => match self.classify(key, entry, core.clock.now()) {
                Classified::Hit(lookup) => Ok(lookup),
                slow => self.finish(args, digest, slow).await,
            },
            Err(error) => self.read_without_store(args, digest, error).await,
        }
    }

    /// Sorts a read entry into a plain hit (answered now) and the paths that need more work.
    #[inline]
    fn classify(&self, key: Key<'_>, entry: Option<Entry>, now: Timestamp) -> Classified<Value<J>> {
        let job = &*self.job;
        let Some(Entry { meta, payload, .. }) = entry else {
            return Classified::Missing { generation: 0, now };
        };
        match refresh::decode_payload(self.core(), job, &meta, payload) {
            Ok(Some(value)) => match meta.freshness(now) {
                Freshness::Fresh if job.policy.early_refresh.is_none() => {
                    job.metrics.hit.increment(1);
                    Classified::Hit(Lookup {
                        value: Some(value),
                        status: Status::Hit,
                        age: Some(now.since(meta.fetched_at)),
                        refresh_triggered: false,
                    })
                }
                Freshness::Fresh => Classified::FreshMaybeEarly { value, meta, now },
                Freshness::Stale => Classified::Stale { value, meta, now },
                Freshness::Expired => Classified::Missing {
                    generation: meta.generation,
                    now,
                },
            },
            Ok(None) => Classified::Missing {
                generation: meta.generation,
                now,
            },
            Err(reason) => {
                job.metrics.decode_errors.increment(1);
                warn!(job = %job.name, key = %key, reason, "entry does not decode; reading it as a miss");
                self.core().emit(|| Event::EntryUndecodable {
                    job: Arc::clone(&job.name),
                    key: key.to_string(),
                    reason: reason.clone(),
                });
                Classified::Missing {
                    generation: meta.generation,
                    now,
                }
            }
        }
    }

    /// Everything but a plain hit.
    async fn finish(
        &self,
        args: Args<J>,
        digest: u128,
        read: Classified<Value<J>>,
    ) -> Result<Lookup<Value<J>>> {
        let job = &*self.job;
        let key = Key::new(&self.core().prefix, &job.name, digest);
        let span = debug_span!("cacheback.get", job = %job.name, key = %key);
        async move {
            match read {
                Classified::Hit(lookup) => Ok(lookup),
                Classified::FreshMaybeEarly { value, meta, now } => {
                    job.metrics.hit.increment(1);
                    let refresh_triggered = self.maybe_refresh_early(key, &args, &meta, now).await;
                    Ok(Lookup {
                        value: Some(value),
                        status: Status::Hit,
                        age: Some(now.since(meta.fetched_at)),
                        refresh_triggered,
                    })
                }
                Classified::Stale { value, meta, now } => {
                    self.serve_stale(key, args, value, meta, now).await
                }
                Classified::Missing { generation, now } => {
                    self.serve_miss(key, args, generation, now).await
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn serve_stale(
        &self,
        key: Key<'_>,
        args: Args<J>,
        value: Arc<Value<J>>,
        meta: EntryMeta,
        now: Timestamp,
    ) -> Result<Lookup<Value<J>>> {
        let job = &*self.job;
        let age = now.since(meta.fetched_at);
        if job.policy.threshold_exceeded(now, meta.fresh_until) {
            let condition = Some(PutCondition::IfGeneration(meta.generation));
            match self.fetch_coalesced(key.digest(), args, condition).await {
                Ok(fresh) => return Ok(self.fetched(&fresh, Status::StaleRefetched)),
                Err(error) => {
                    // stale-if-error: a value we have beats an error.
                    warn!(error = %Chain(&error), "synchronous refetch of a stale value failed; serving the stale value");
                }
            }
        } else {
            let triggered = self.trigger_on_read(key, &args, meta.generation, now).await;
            job.metrics.stale.increment(1);
            job.metrics.served_age.record(age.as_secs_f64());
            return Ok(Lookup {
                value: Some(value),
                status: Status::Stale,
                age: Some(age),
                refresh_triggered: triggered,
            });
        }
        job.metrics.stale.increment(1);
        job.metrics.served_age.record(age.as_secs_f64());
        Ok(Lookup {
            value: Some(value),
            status: Status::Stale,
            age: Some(age),
            refresh_triggered: false,
        })
    }

    async fn serve_miss(
        &self,
        key: Key<'_>,
        args: Args<J>,
        generation: u64,
        now: Timestamp,
    ) -> Result<Lookup<Value<J>>> {
        let job = &*self.job;
        if job.policy.fetch_on_miss {
            let condition = Some(PutCondition::IfGeneration(generation));
            let fetched = self.fetch_coalesced(key.digest(), args, condition).await?;
            Ok(self.fetched(&fetched, Status::MissFetched))
        } else {
            let triggered = self.trigger_on_read(key, &args, generation, now).await;
            job.metrics.miss.increment(1);
            Ok(Lookup {
                value: None,
                status: Status::Miss,
                age: None,
                refresh_triggered: triggered,
            })
        }
    }

    /// The store could not be read: follow [`StoreFallback`].
    async fn read_without_store(
        &self,
        args: Args<J>,
        digest: u128,
        error: Error,
    ) -> Result<Lookup<Value<J>>> {
        self.job.metrics.store_error("get");
        match self.core().store_fallback {
            StoreFallback::Fail => Err(error),
            StoreFallback::Fetch => {
                warn!(job = %self.job.name, error = %Chain(&error), "store unreachable; fetching without the cache");
                let fetched = self.fetch_coalesced(digest, args, None).await?;
                Ok(self.fetched(&fetched, Status::Bypassed))
            }
        }
    }

    /// The answer of a read whose value was fetched synchronously: `status`, unless the value
    /// could not be cached.
    fn fetched(&self, fetched: &Fetched<Value<J>>, status: Status) -> Lookup<Value<J>> {
        let metrics = &self.job.metrics;
        let status = match (&fetched.uncached, status) {
            (Some(_), _) => Status::Bypassed,
            (None, status) => status,
        };
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

    async fn maybe_refresh_early(
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
            && self.trigger_on_read(key, args, meta.generation, now).await
    }

    /// One fetch per key per process: runs (or joins) the fetch in a task and, when
    /// `condition` is given, stores the value under it (`None`: the store is unreachable).
    async fn fetch_coalesced(
        &self,
        digest: u128,
        args: Args<J>,
        condition: Option<PutCondition>,
    ) -> Result<Arc<Fetched<Value<J>>>> {
        let core = Arc::clone(self.core());
        let job = Arc::clone(&self.job);
        let (result, joined) = self
            .core()
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
    async fn fetch_and_store(
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
            && let Ok(Some(entry)) = core.store.get(key).await
            && entry.meta.generation != seen
            && entry.meta.freshness(core.clock.now()) == Freshness::Fresh
            && let Ok(Some(value)) = refresh::decode_value(&core, &job, &entry)
        {
            return Ok(Arc::new(Fetched {
                value,
                uncached: None,
            }) as AnyValue);
        }
        let use_store = condition.is_some();
        let before = backoff::before_fetch(&core, &job, key, core.clock.now(), use_store).await?;
        let (value, took) = match refresh::run_fetch(&job, args).await {
            Ok(fetched) => fetched,
            Err(error) => {
                backoff::record_failure(&core, &job, key, before, &error, use_store).await;
                return Err(error);
            }
        };
        backoff::record_success(&core, &job, key, before).await;
        let value = Arc::new(value);
        let uncached = match condition {
            None => Some(Error::store(
                core.store.backend(),
                "the store is unreachable; the value was fetched without the cache",
            )),
            Some(condition) => {
                match refresh::store_value(&core, &job, key, Arc::clone(&value), took, condition)
                    .await
                {
                    Ok(_) => None,
                    Err(error) => {
                        if !matches!(error, Error::TooLarge { .. }) {
                            job.metrics.store_error("put");
                        }
                        Some(error)
                    }
                }
            }
        };
        if let Some(error) = &uncached {
            warn!(job = %job.name, key = %key, error = %Chain(error), "fetched value not cached");
            core.emit(|| Event::CacheBypassed {
                job: Arc::clone(&job.name),
                key: key.to_string(),
                error: error.clone(),
            });
        }
        Ok(Arc::new(Fetched { value, uncached }) as AnyValue)
    }

    /// [`trigger`](Self::trigger) for a read: with a remote store, asks for the claim at most
    /// once per hint window per process (see `client::hints`). Returns whether a refresh was
    /// enqueued or run.
    async fn trigger_on_read(
        &self,
        key: Key<'_>,
        args: &Args<J>,
        generation: u64,
        now: Timestamp,
    ) -> bool {
        let Some(hints) = &self.core().claim_hints else {
            return self.trigger(key, args, generation, now, true).await == Trigger::Started;
        };
        let window = ClaimHints::window(self.job.policy.lifetime);
        if !hints.should_claim(key.digest(), now, window) {
            self.job.metrics.claim_held.increment(1);
            return false;
        }
        match self.trigger(key, args, generation, now, true).await {
            Trigger::Started => true,
            Trigger::Taken => false,
            Trigger::Retry => {
                hints.forget(key.digest());
                false
            }
        }
    }

    /// Takes the key's claim and, if won, enqueues one refresh (SPEC §3.5). Never fails the
    /// read.
    ///
    /// A read saw the entry at `generation` before asking for the claim; a refresh may have
    /// landed in between (and released its claim), so with `recheck` the winner reads the entry
    /// again and lets the claim go when it has been written since: the stale event it saw is
    /// already over, and enqueueing would only make a worker skip the request.
    async fn trigger(
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
        let (token, failures) = match self.won(outcome) {
            Ok(won) => won,
            Err(refused) => return refused,
        };
        self.after_claim(key, args, generation, now, recheck, token, failures)
            .await
    }

    /// The rest of [`trigger`](Self::trigger) once the claim is won: check the entry was not
    /// written meanwhile (with `recheck`), then enqueue the refresh, or fall back.
    #[allow(clippy::too_many_arguments)]
    async fn after_claim(
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
        let job = &*self.job;
        let current = match core.store.get_now(key) {
            _ if !recheck => Ok(None),
            Some(now) => now,
            None => core.store.get(key).await,
        };
        if let Ok(Some(current)) = current
            && current.meta.generation != generation
        {
            refresh::release(core, job, key, token, Release::Abandoned).await;
            job.metrics.claim_held.increment(1);
            return Trigger::Taken;
        }
        job.metrics.claim_won.increment(1);
        let claimed = Claimed {
            token,
            generation,
            prior_failures: failures,
        };
        let request = match self.request(key, args, claimed, now) {
            Ok(request) => request,
            Err(error) => {
                warn!(error = %Chain(&error), "could not encode the refresh request");
                refresh::release(core, job, key, token, Release::Abandoned).await;
                return Trigger::Retry;
            }
        };
        match core.queue.enqueue(request).await {
            Ok(()) => Trigger::Started,
            Err(EnqueueError::Full) => {
                job.metrics.enqueue_dropped.increment(1);
                warn!(job = %job.name, "refresh queue is full; dropped the refresh (the next read retries)");
                refresh::release(core, job, key, token, Release::Abandoned).await;
                core.emit(|| Event::EnqueueDropped {
                    job: Arc::clone(&job.name),
                    key: key.to_string(),
                });
                Trigger::Retry
            }
            Err(error) => self.fall_back(key, args, claimed, error).await,
        }
    }

    async fn fall_back(
        &self,
        key: Key<'_>,
        args: &Args<J>,
        claimed: Claimed,
        error: EnqueueError,
    ) -> Trigger {
        let core = self.core();
        let job = &*self.job;
        match core.queue_fallback {
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
                    refresh::refresh_claimed(&core, &job, args, digest, claimed).await;
                });
                Trigger::Started
            }
            QueueFallback::SyncRefresh => {
                job.metrics.fallback_sync.increment(1);
                warn!(error = %Chain(&error), "queue unavailable; refreshing before answering");
                refresh::refresh_claimed(core, job, args.clone(), key.digest(), claimed).await;
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

    fn request(
        &self,
        key: Key<'_>,
        args: &Args<J>,
        claimed: Claimed,
        now: Timestamp,
    ) -> Result<RefreshRequest> {
        let core = self.core();
        Ok(RefreshRequest {
            job: self.job.name.to_string(),
            key: key.to_string(),
            args: core.codec.encode(args)?,
            codec: core.codec.id(),
            token: claimed.token,
            generation: claimed.generation,
            enqueued_at: now,
            prior_failures: claimed.prior_failures,
            queue: self.job.policy.queue.to_string(),
        })
    }

    /// Fetches now, stores the value (whatever the key held) and returns it: for warming and
    /// cron jobs. Not coalesced with readers' fetches.
    pub async fn refresh(&self, args: Args<J>) -> Result<Arc<Value<J>>> {
        let core = self.core();
        let job = &*self.job;
        let digest = self.digest(&args)?;
        let (value, took) = refresh::run_fetch(job, args).await?;
        let value = Arc::new(value);
        let key = Key::new(&core.prefix, &job.name, digest);
        refresh::store_value(
            core,
            job,
            key,
            Arc::clone(&value),
            took,
            PutCondition::Always,
        )
        .await?;
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
        refresh::store_value(
            core,
            &self.job,
            key,
            Arc::new(value),
            Duration::ZERO,
            PutCondition::Always,
        )
        .await?;
        Ok(())
    }

    /// Removes the value of `args` (hard invalidation). Deleting a missing key is not an error.
    /// A tombstone is kept for the client's `tombstone_ttl` so that a refresh requested before
    /// the delete cannot bring the value back.
    pub async fn delete(&self, args: Args<J>) -> Result<()> {
        let core = self.core();
        let digest = self.digest(&args)?;
        let key = Key::new(&core.prefix, &self.job.name, digest);
        let tombstone = self.tombstone(core.clock.now());
        core.store
            .put(
                key,
                Put::new(tombstone, PutCondition::Always, core.tombstone_ttl),
            )
            .await?;
        Ok(())
    }

    /// A tombstone written at `now`, kept for the client's `tombstone_ttl`.
    fn tombstone(&self, now: Timestamp) -> Entry {
        let until = now.saturating_add(self.core().tombstone_ttl);
        Entry::new(
            EntryMeta::new(now, until, until),
            crate::entry::Payload::Tombstone,
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

    async fn mark_stale(&self, args: Args<J>, even_if_missing: bool) -> Result<bool> {
        let core = self.core();
        let digest = self.digest(&args)?;
        let key = Key::new(&core.prefix, &self.job.name, digest);
        // Optimistic loop: another writer may move the generation between read and write.
        for _ in 0..8 {
            let now = core.clock.now();
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
                let PutOutcome::Written { generation } = core.store.put(key, fence).await? else {
                    continue;
                };
                return Ok(even_if_missing
                    && self.trigger(key, &args, generation, now, false).await == Trigger::Started);
            };
            let mut meta = entry.meta;
            meta.fresh_until = meta.fresh_until.min(now);
            let ttl = meta.stale_until.since(now);
            let put = Put::new(
                Entry::new(meta, entry.payload.clone()),
                PutCondition::IfGeneration(meta.generation),
                ttl,
            );
            if let PutOutcome::Written { generation } = core.store.put(key, put).await? {
                return Ok(
                    self.trigger(key, &args, generation, now, false).await == Trigger::Started
                );
            }
        }
        Err(Error::store(
            core.store.backend(),
            "invalidate kept racing concurrent writes of the key; gave up after 8 attempts",
        ))
    }

    /// The entry of `args` with its metadata and claim state, without any side effect
    /// (django-cacheback's `raw_get`). `None` when the key has no entry (or was deleted).
    pub async fn peek(&self, args: Args<J>) -> Result<Option<Peek<Value<J>>>> {
        let core = self.core();
        let digest = self.digest(&args)?;
        let key = Key::new(&core.prefix, &self.job.name, digest);
        let Some(entry) = core.store.get(key).await? else {
            return Ok(None);
        };
        if entry.is_tombstone() {
            return Ok(None);
        }
        let now = core.clock.now();
        let claim = core.store.claim_state(key, now).await?;
        let (value, decode_error) = match refresh::decode_value(core, &self.job, &entry) {
            Ok(value) => (value, None),
            Err(reason) => (None, Some(reason)),
        };
        Ok(Some(Peek {
            value,
            decode_error,
            meta: entry.meta,
            freshness: entry.meta.freshness(now),
            claim,
            key: key.to_string(),
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

/// What [`JobHandle::trigger`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// Won the claim; the refresh is enqueued (or runs in this process).
    Started,
    /// The claim is taken: a refresh is under way elsewhere, or failures are backing off.
    Taken,
    /// Nothing started and nothing holds the key (a store error, a dropped request): the next
    /// read should try again.
    Retry,
}
