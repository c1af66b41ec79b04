//! [`JobHandle`]: every operation on one job's keys. This file holds the handle and the hit
//! path (a read answered from the store without awaiting anything slower); the other paths
//! live beside it: `miss.rs` (misses, synchronous fetches, store outages), `trigger.rs`
//! (claims and refresh requests), `write.rs` (refresh, set, delete, invalidate, peek, warm).

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{self, BoxFuture, Either};
use tracing::warn;

use crate::client::lookup::{Lookup, Status};
use crate::client::{Cacheback, ReadState};
use crate::clock::Timestamp;
use crate::engine::Core;
use crate::engine::near::{NearTier, Ticket};
use crate::engine::registry::JobEntry;
use crate::engine::tags;
use crate::engine::value::decode_payload;
use crate::entry::{Entry, EntryMeta};
use crate::error::{Chain, Error, Result};
use crate::job::Job;
use crate::key::{self, Key};
use crate::observe::Event;
use crate::policy::Freshness;
use crate::store::memory::{MemRead, MemoryStore};
use crate::store::{ClaimOutcome, ClaimToken};
use crate::tags::Verdict;
use crate::tally::Count;

use super::trigger::Trigger;

/// What a read may wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Always a value: a miss is fetched (`get`).
    Fetch,
    /// Never wait for the upstream: a miss, a value stale beyond the threshold and a store
    /// outage answer with what the cache has, or nothing (`get_cached`).
    Cached,
    /// As the job's policy says (`get_with_status`).
    Policy,
}

/// An answer available now, or a future for it.
pub(super) type NowOrLater<'a, T> = Either<Result<T>, BoxFuture<'a, Result<T>>>;

/// What a read returns: a future complete at once, or one for the rest of the read.
type Answer<'a, T> = Either<future::Ready<Result<T>>, BoxFuture<'a, Result<T>>>;

/// What the first step of a read found.
enum First<V> {
    /// A fresh hit of the in-process store, counted: the value and its age in milliseconds.
    Hit(Arc<V>, u64),
    /// The in-process store's entry of the key (if any) at `now`: not a fresh live hit.
    Read {
        digest: u128,
        now: Timestamp,
        entry: Option<Entry>,
    },
    /// Nothing read: no in-process store, or args that do not digest.
    Unread,
}

/// The answer to a fresh hit `age_ms` old.
#[inline]
fn hit_lookup<V>(value: Arc<V>, age_ms: u64) -> Lookup<V> {
    Lookup {
        value: Some(value),
        status: Status::Hit,
        age: Some(Duration::from_millis(age_ms)),
        refresh_triggered: false,
    }
}

/// A read entry, sorted by what answering it takes.
pub(super) enum Classified<V> {
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

/// A job registered with a [`Cacheback`] client: read, write, invalidate and warm its keys.
///
/// Cheap to clone. Get one from [`Cacheback::job`].
pub struct JobHandle<J: Job> {
    pub(super) client: Cacheback,
    pub(super) job: Arc<JobEntry<J>>,
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

pub(super) type Value<J> = <J as Job>::Value;
pub(super) type Args<J> = <J as Job>::Args;

impl<J: Job> JobHandle<J> {
    pub(crate) fn new(client: Cacheback, job: Arc<JobEntry<J>>) -> Self {
        JobHandle { client, job }
    }

    pub(super) fn core(&self) -> &Arc<Core> {
        self.client.core()
    }

    pub(super) fn reads(&self) -> &ReadState {
        self.client.reads()
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

    #[inline]
    pub(super) fn digest(&self, args: &Args<J>) -> Result<u128> {
        key::digest_seeded(self.job.seed, args).map_err(|e| Error::Key {
            message: e.to_string(),
        })
    }

    /// Reads the value of `args`, always with a value: Fresh values at once; Stale values at
    /// once while one refresh runs in the background (or, stale beyond
    /// [`Policy::stale_threshold`](crate::Policy::stale_threshold), fetched first); a miss is
    /// fetched before this returns, once per key however many callers wait for it (whatever
    /// [`Policy::fetch_on_miss`](crate::Policy::fetch_on_miss) says: use
    /// [`get_cached`](Self::get_cached) to never wait).
    ///
    /// Errors only when a synchronous fetch fails (or backs off after failing), the args
    /// cannot be hashed, or the store is down and the client is configured with
    /// [`StoreFallback::Fail`](crate::StoreFallback::Fail). A refresh that cannot be queued
    /// never fails a read.
    #[inline]
    pub fn get(&self, args: Args<J>) -> impl Future<Output = Result<Arc<Value<J>>>> + Send + '_ {
        match self.first_read(&args) {
            First::Hit(hit, _) => Either::Left(future::ready(Ok(hit))),
            first => self.get_read(args, first),
        }
    }

    /// [`get`](Self::get) past a fresh in-process hit.
    #[inline(never)]
    fn get_read(&self, args: Args<J>, first: First<Value<J>>) -> Answer<'_, Arc<Value<J>>> {
        let name = &self.job.name;
        let value = move |lookup: Result<Lookup<Value<J>>>| match lookup {
            Ok(Lookup {
                value: Some(value), ..
            }) => Ok(value),
            Ok(_) => Err(no_value(name)),
            Err(error) => Err(error),
        };
        match self.lookup_after(args, first, Mode::Fetch) {
            Either::Left(now) => Either::Left(future::ready(value(now))),
            Either::Right(later) => {
                Either::Right(Box::pin(async move { value(later.await) }) as BoxFuture<'_, _>)
            }
        }
    }

    /// Reads the value of `args` if the cache has one, never waiting for the upstream: Fresh
    /// and Stale values are returned at once (a Stale one triggers its refresh); a miss
    /// returns `None` and triggers a refresh, so a later read finds the value. With the store
    /// unreachable it returns `None`.
    pub fn get_cached(
        &self,
        args: Args<J>,
    ) -> impl Future<Output = Result<Option<Arc<Value<J>>>>> + Send + '_ {
        match self.first_read(&args) {
            First::Hit(hit, _) => Either::Left(future::ready(Ok(Some(hit)))),
            first => self.get_cached_read(args, first),
        }
    }

    /// [`get_cached`](Self::get_cached) past a fresh in-process hit.
    #[inline(never)]
    fn get_cached_read(
        &self,
        args: Args<J>,
        first: First<Value<J>>,
    ) -> Answer<'_, Option<Arc<Value<J>>>> {
        match self.lookup_after(args, first, Mode::Cached) {
            Either::Left(now) => Either::Left(future::ready(now.map(|lookup| lookup.value))),
            Either::Right(later) => {
                Either::Right(
                    Box::pin(async move { later.await.map(|lookup| lookup.value) })
                        as BoxFuture<'_, _>,
                )
            }
        }
    }

    /// Reads `args` as the job's policy says (a miss is fetched when
    /// [`Policy::fetch_on_miss`](crate::Policy::fetch_on_miss) is on, else answered with no
    /// value while a refresh is triggered), with how the read was answered, the value's age and
    /// whether a refresh was triggered: for logs, metrics and response headers.
    ///
    /// With an in-process store, a Fresh hit is answered when this is called, and the returned
    /// future is already complete: the hit path allocates nothing and runs no state machine.
    pub fn get_with_status(
        &self,
        args: Args<J>,
    ) -> impl Future<Output = Result<Lookup<Value<J>>>> + Send + '_ {
        match self.first_read(&args) {
            First::Hit(hit, age_ms) => Either::Left(future::ready(Ok(hit_lookup(hit, age_ms)))),
            first => self.get_with_status_read(args, first),
        }
    }

    /// [`get_with_status`](Self::get_with_status) past a fresh in-process hit.
    #[inline(never)]
    fn get_with_status_read(
        &self,
        args: Args<J>,
        first: First<Value<J>>,
    ) -> Answer<'_, Lookup<Value<J>>> {
        match self.lookup_after(args, first, Mode::Policy) {
            Either::Left(now) => Either::Left(future::ready(now)),
            Either::Right(later) => Either::Right(later),
        }
    }

    /// The first step of a read: with the in-process store, its entry of the key, read once;
    /// a fresh hit (counted) comes back as two words, without any structure built around
    /// it. Inlined into the caller, so a hit moves nothing between functions.
    #[inline]
    fn first_read(&self, args: &Args<J>) -> First<Value<J>> {
        let core = self.core();
        let Some(memory) = &core.memory else {
            return First::Unread;
        };
        let Ok(digest) = self.digest(args) else {
            return First::Unread;
        };
        let key = Key::new(&core.prefix, &self.job.name, digest);
        let now = core.now();
        let policy = &self.job.policy;
        let fresh_wanted = policy.early_refresh.is_none();
        match memory.read(key, now, policy.schema_version, fresh_wanted) {
            MemRead::Fresh { value, fetched_at } => {
                First::Hit(value, self.count_hit(fetched_at, now))
            }
            MemRead::Entry(entry) => First::Read { digest, now, entry },
        }
    }

    /// The rest of a read whose first step found `first`.
    fn lookup_after(
        &self,
        args: Args<J>,
        first: First<Value<J>>,
        mode: Mode,
    ) -> NowOrLater<'_, Lookup<Value<J>>> {
        let core = self.core();
        match (first, &core.memory) {
            (First::Hit(value, age_ms), _) => Either::Left(Ok(hit_lookup(value, age_ms))),
            (First::Read { digest, now, entry }, Some(memory)) => {
                let key = Key::new(&core.prefix, &self.job.name, digest);
                let read = self.judge_memory(key, entry, now);
                self.answer_memory(memory, key, args, read, mode)
            }
            _ => self.lookup(args, mode),
        }
    }

    /// A read answered now (an in-process hit, or an error) or a future for the rest.
    #[inline]
    pub(super) fn lookup(&self, args: Args<J>, mode: Mode) -> NowOrLater<'_, Lookup<Value<J>>> {
        let core = self.core();
        let digest = match self.digest(&args) {
            Ok(digest) => digest,
            Err(error) => return Either::Left(Err(error)),
        };
        let key = Key::new(&core.prefix, &self.job.name, digest);
        let Some(memory) = &core.memory else {
            if let Some(near) = &core.near {
                return self.lookup_near(near, key, args, mode);
            }
            return Either::Right(Box::pin(self.get_remote(args, digest, mode)) as BoxFuture<'_, _>);
        };
        let now = core.now();
        let read = self.memory_read(memory, key, now);
        self.answer_memory(memory, key, args, read, mode)
    }

    /// A read of the in-process store, classified (and counted, if it is a hit): a fresh live
    /// value is taken as it is; anything else is judged against its tags' states.
    #[inline]
    pub(super) fn memory_read(
        &self,
        memory: &MemoryStore,
        key: Key<'_>,
        now: Timestamp,
    ) -> Classified<Value<J>> {
        let policy = &self.job.policy;
        let fresh_wanted = policy.early_refresh.is_none();
        match memory.read(key, now, policy.schema_version, fresh_wanted) {
            MemRead::Fresh { value, fetched_at } => {
                Classified::Hit(self.hit(value, fetched_at, now))
            }
            MemRead::Entry(entry) => self.judge_memory(key, entry, now),
        }
    }

    /// An entry of the in-process store that is not a fresh live hit, judged against its tags'
    /// states and classified (counted, if it is a hit after all).
    fn judge_memory(
        &self,
        key: Key<'_>,
        mut entry: Option<Entry>,
        now: Timestamp,
    ) -> Classified<Value<J>> {
        if let Some(tagged) = entry.as_ref().and_then(|e| e.tags.as_deref()) {
            let verdict = tags::verdict_now(self.core(), tagged, now);
            entry = entry.map(|e| tags::judged(e, verdict.unwrap_or(Verdict::Current), now));
        }
        self.classify(key, entry, now, None)
    }

    /// The answer to a read of the in-process store: a hit now, a stale value now (the claim
    /// decided here), anything else in a future.
    #[inline]
    pub(super) fn answer_memory(
        &self,
        memory: &MemoryStore,
        key: Key<'_>,
        args: Args<J>,
        read: Classified<Value<J>>,
        mode: Mode,
    ) -> NowOrLater<'_, Lookup<Value<J>>> {
        match read {
            Classified::Hit(lookup) => Either::Left(Ok(lookup)),
            Classified::Stale { value, meta, now } if !self.refetch(mode, now, &meta) => {
                self.stale_now(memory, key, args, value, meta, now)
            }
            slow => Either::Right(
                Box::pin(self.finish(args, key.digest(), slow, mode)) as BoxFuture<'_, _>
            ),
        }
    }

    /// A read through the near cache: a copy answers as the memory store would (a Fresh hit
    /// now; a stale copy triggers the key's fleet-wide claim), anything else reads the store.
    #[inline]
    fn lookup_near(
        &self,
        near: &NearTier,
        key: Key<'_>,
        args: Args<J>,
        mode: Mode,
    ) -> NowOrLater<'_, Lookup<Value<J>>> {
        let now = self.core().now();
        let digest = key.digest();
        match self.near_read(near, key, now) {
            Classified::Hit(lookup) => Either::Left(Ok(lookup)),
            read @ (Classified::Stale { .. } | Classified::FreshMaybeEarly { .. }) => {
                Either::Right(Box::pin(self.finish(args, digest, read, mode)) as BoxFuture<'_, _>)
            }
            Classified::Missing { .. } => {
                Either::Right(Box::pin(self.get_remote(args, digest, mode)) as BoxFuture<'_, _>)
            }
        }
    }

    /// The near cache's copy of `key`, classified as a read of it; `Missing` when there is no
    /// copy to answer with (none, or its tags' states are due to be read again): the store
    /// must be read.
    #[inline]
    pub(super) fn near_read(
        &self,
        near: &NearTier,
        key: Key<'_>,
        now: Timestamp,
    ) -> Classified<Value<J>> {
        let Some(copy) = near.get(key.digest(), now) else {
            return Classified::Missing { generation: 0, now };
        };
        match copy.tags.as_deref() {
            None => self.classify(key, Some(copy), now, None),
            Some(tagged) => match tags::verdict_now(self.core(), tagged, now) {
                Some(verdict) => {
                    self.classify(key, Some(tags::judged(copy, verdict, now)), now, None)
                }
                None => Classified::Missing { generation: 0, now },
            },
        }
    }

    /// Whether a stale value must be fetched again before this read returns (stale beyond the
    /// threshold, and the read may wait).
    #[inline]
    pub(super) fn refetch(&self, mode: Mode, now: Timestamp, meta: &EntryMeta) -> bool {
        mode != Mode::Cached && self.job.policy.threshold_exceeded(now, meta.fresh_until)
    }

    /// Whether a miss is fetched before this read returns.
    pub(super) fn fetches_misses(&self, mode: Mode) -> bool {
        match mode {
            Mode::Fetch => true,
            Mode::Cached => false,
            Mode::Policy => self.job.policy.fetch_on_miss,
        }
    }

    /// A stale read of an in-process store: the claim is decided here. The reader that wins
    /// it hands the refresh request to an in-process queue in a task of the client after
    /// answering; to any other queue (or with [`QueueFallback::SyncRefresh`], or outside a
    /// tokio runtime) it enqueues in a boxed future before answering.
    pub(super) fn stale_now(
        &self,
        memory: &MemoryStore,
        key: Key<'_>,
        args: Args<J>,
        value: Arc<Value<J>>,
        meta: EntryMeta,
        now: Timestamp,
    ) -> NowOrLater<'_, Lookup<Value<J>>> {
        let job = &*self.job;
        let outcome = Ok(memory.claim_sync(key, now, job.policy.refresh_timeout));
        let stale =
            move |refresh_triggered| self.stale_lookup(value, &meta, now, refresh_triggered);
        match self.won(outcome) {
            Ok((token, failures)) => {
                let digest = key.digest();
                // With an in-process queue the winner answers at once and hands the request
                // over to a task, unless the policy says a refresh the queue refuses runs
                // before the answer. The task holds only what the request needs; the rest of
                // the work is boxed when it first runs, not here.
                if self.reads().hand_off_after_answer
                    && let Ok(runtime) = tokio::runtime::Handle::try_current()
                {
                    let (this, generation) = (self.clone(), meta.generation);
                    let hand_off = async move {
                        let key = Key::new(&this.core().prefix, &this.job.name, digest);
                        let after =
                            this.after_claim(key, &args, generation, now, true, token, failures);
                        Box::pin(after).await;
                    };
                    self.core().tasks.spawn_on(hand_off, &runtime);
                    return Either::Left(Ok(stale(true)));
                }
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
    pub(super) fn won(
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
    pub(super) async fn get_remote(
        &self,
        args: Args<J>,
        digest: u128,
        mode: Mode,
    ) -> Result<Lookup<Value<J>>> {
        let core = self.core();
        let key = Key::new(&core.prefix, &self.job.name, digest);
        let near = core.near.as_deref();
        let ticket = near.and_then(|near| Some((near, near.ticket(digest)?)));
        match core.store.get(key).await {
            Ok(entry) => {
                match self.classify(key, tags::judge(core, entry).await, core.now(), ticket) {
                    Classified::Hit(lookup) => Ok(lookup),
                    slow => self.finish(args, digest, slow, mode).await,
                }
            }
            Err(error) => match near.and_then(|near| near.get_any(digest)) {
                Some(copy) => self.serve_near_copy(key, args, copy, error, mode).await,
                None => self.read_without_store(args, digest, error, mode).await,
            },
        }
    }

    /// The store could not be read, and the near cache holds a copy: serve it as its windows
    /// say (without a synchronous fetch), or follow the fallback once they have passed.
    pub(super) async fn serve_near_copy(
        &self,
        key: Key<'_>,
        args: Args<J>,
        copy: Entry,
        error: Error,
        mode: Mode,
    ) -> Result<Lookup<Value<J>>> {
        let digest = key.digest();
        self.job.metrics.store_error("get");
        warn!(job = %self.job.name, error = %Chain(&error), "store unreachable; serving this process's near copy");
        let now = self.core().now();
        // Judged by what this process knows of its tags: the store cannot say more now.
        let copy = match copy.tags.as_deref() {
            Some(tagged) => {
                let verdict = self.core().tags.best_known(tagged);
                tags::judged(copy, verdict, now)
            }
            None => copy,
        };
        match self.classify(key, Some(copy), now, None) {
            Classified::Hit(lookup) => Ok(lookup),
            read @ (Classified::Stale { .. } | Classified::FreshMaybeEarly { .. }) => {
                // No synchronous refetch past the stale threshold: the upstream is what the
                // copy stands in for.
                self.finish(args, digest, read, Mode::Cached).await
            }
            Classified::Missing { .. } => self.read_without_store(args, digest, error, mode).await,
        }
    }

    /// Sorts a read entry into a plain hit (answered now) and the paths that need more work.
    #[inline]
    ///
    /// With `keep`, a value read from the store is also kept in the near cache.
    pub(super) fn classify(
        &self,
        key: Key<'_>,
        entry: Option<Entry>,
        now: Timestamp,
        keep: Option<(&NearTier, Ticket)>,
    ) -> Classified<Value<J>> {
        let job = &*self.job;
        let Some(Entry {
            meta,
            payload,
            tags,
            ..
        }) = entry
        else {
            return Classified::Missing { generation: 0, now };
        };
        if tags.is_some() && !job.tags_seen() {
            // Its next fetch here reads the tag clock first.
            job.saw_tags();
        }
        match decode_payload(self.core(), job, &meta, payload) {
            Ok(Some(value)) => {
                if let Some((near, ticket)) = keep {
                    let copy = Arc::clone(&value) as Arc<dyn Any + Send + Sync>;
                    near.keep(ticket, key.digest(), meta, copy, tags, now);
                }
                self.sort(value, meta, now)
            }
            Ok(None) => Classified::Missing {
                generation: meta.generation,
                now,
            },
            Err(reason) => {
                job.metrics.decode_errors.increment(1);
                warn!(job = %job.name, key = %key, reason, "entry does not decode; reading it as a miss");
                self.core().emit(|| Event::EntryUndecodable {
                    job: Arc::clone(&job.name),
                    key: key.text(),
                    reason: reason.clone(),
                });
                Classified::Missing {
                    generation: meta.generation,
                    now,
                }
            }
        }
    }

    /// A fresh hit on a value fetched at `fetched_at`, counted.
    #[inline]
    fn hit(&self, value: Arc<Value<J>>, fetched_at: Timestamp, now: Timestamp) -> Lookup<Value<J>> {
        hit_lookup(value, self.count_hit(fetched_at, now))
    }

    /// Counts a fresh hit at `now` on a value fetched at `fetched_at`; its age in milliseconds.
    #[inline]
    fn count_hit(&self, fetched_at: Timestamp, now: Timestamp) -> u64 {
        let age = now.since(fetched_at);
        let metrics = &self.job.metrics;
        metrics.hit.increment(1);
        metrics.tally(|t| t.served(Count::Hit, age));
        crate::clock::duration_millis(age)
    }

    /// Sorts a decoded value by its freshness at `now`.
    #[inline]
    fn sort(&self, value: Arc<Value<J>>, meta: EntryMeta, now: Timestamp) -> Classified<Value<J>> {
        let job = &*self.job;
        match meta.freshness(now) {
            Freshness::Fresh if job.policy.early_refresh.is_none() => {
                Classified::Hit(self.hit(value, meta.fetched_at, now))
            }
            Freshness::Fresh => Classified::FreshMaybeEarly { value, meta, now },
            Freshness::Stale => Classified::Stale { value, meta, now },
            Freshness::Expired => Classified::Missing {
                generation: meta.generation,
                now,
            },
        }
    }
}

/// Every path of a fetching read yields a value; never panic over it anyway. Out of line, so
/// that the hit path stays small.
#[cold]
#[inline(never)]
fn no_value(name: &str) -> Error {
    Error::config(format!("job `{name}`: a fetching read found no value"))
}
