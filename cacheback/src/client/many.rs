//! Batch reads: many args of one job in one call, their entries read in one round trip.

use std::sync::Arc;

use futures_util::future::{BoxFuture, Either, join, join_all};

use crate::client::coalesce::AnyValue;
use crate::client::handle::{Args, Classified, JobHandle, Mode, Value};
use crate::client::lookup::{Lookup, Status};
use crate::client::trigger::Asked;
use crate::engine::registry::JobEntry;
use crate::engine::{Core, backoff, fetch, tags};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::key::Key;
use crate::store::PutCondition;

/// A read that still needs the store: its place in the answer, its args and its digest.
type Pending<J> = (usize, Args<J>, u128);

/// A missing key to fetch with the batch: its place in the answer, its args, its digest and
/// the generation it was missing at.
type Missing<J> = (usize, Args<J>, u128, u64);

/// A read that goes on as a single read: its place in the answer, and the rest of it.
type Later<'a, J> = (usize, BoxFuture<'a, Result<Lookup<Value<J>>>>);

/// A batch read under way: the answers so far (in the order asked), the reads that go on as
/// single reads, the misses to fetch together and the refreshes to trigger together.
struct Batch<'a, J: Job> {
    answers: Vec<Option<Result<Lookup<Value<J>>>>>,
    slow: Vec<Later<'a, J>>,
    missing: Vec<Missing<J>>,
    asked: Vec<Asked<J>>,
}

impl<J: Job> Default for Batch<'_, J> {
    fn default() -> Self {
        Batch {
            answers: Vec::new(),
            slow: Vec::new(),
            missing: Vec::new(),
            asked: Vec::new(),
        }
    }
}

impl<J: Job> JobHandle<J> {
    /// Reads many args at once, each as [`get_with_status`](Self::get_with_status) would, and
    /// returns their answers in the order given (one failed key does not fail the others).
    ///
    /// Keys the process answers by itself (the memory store, copies of a
    /// [near cache](crate::CachebackBuilder::near_cache)) cost no round trip; the entries of all
    /// the others are read from the store together (one `MGET` on Redis). Hits and stale values
    /// are answered from that one read. With a remote store, the refreshes of the stale keys
    /// (and of missing keys not fetched) are triggered together after the answer, in the
    /// background: one claim call for all of them (one script on Redis), one read of the keys
    /// claimed, one queue call for their requests (one pipeline on Redis); each key still gets
    /// at most one refresh, as with single reads. The missing keys are fetched together, with
    /// one call of the job's [`fetch_many`](Job::fetch_many) (keys another read of this process
    /// is fetching already wait for that fetch instead), and stored as single fetches are;
    /// without [`Policy::fetch_on_miss`](crate::Policy::fetch_on_miss) they are answered empty
    /// while one refresh each is enqueued.
    ///
    /// ```
    /// # use cacheback::{Cacheback, job_fn, Policy};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cacheback::Result<()> {
    /// let cache = Cacheback::builder().build()?;
    /// let squares = cache.job(job_fn("squares", Policy::default(), |n: u64| async move {
    ///     Ok::<_, std::io::Error>(n * n)
    /// }));
    /// let answers = squares.get_many([2, 3, 4]).await;
    /// let values: Vec<u64> = answers
    ///     .into_iter()
    ///     .map(|answer| *answer.unwrap().value.unwrap())
    ///     .collect();
    /// assert_eq!(values, [4, 9, 16]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_many(
        &self,
        args: impl IntoIterator<Item = Args<J>>,
    ) -> Vec<Result<Lookup<Value<J>>>> {
        let core = self.core();
        let mut batch = Batch::default();
        let mut pending: Vec<Pending<J>> = Vec::new();
        let fetches = self.fetches_misses(Mode::Policy);
        let now = core.now();
        for (i, args) in args.into_iter().enumerate() {
            batch.answers.push(None);
            let digest = match self.digest(&args) {
                Ok(digest) => digest,
                Err(error) => {
                    batch.answers[i] = Some(Err(error));
                    continue;
                }
            };
            let key = Key::new(&core.prefix, &self.job.name, digest);
            let Some(memory) = &core.memory else {
                // A remote store: a near copy answers, anything else is read with the rest.
                match core
                    .near
                    .as_deref()
                    .map(|near| self.near_read(near, key, now))
                {
                    None | Some(Classified::Missing { .. }) => pending.push((i, args, digest)),
                    Some(read) => self.settle(&mut batch, i, args, digest, read),
                }
                continue;
            };
            let read = self.memory_read(memory, key, now);
            if let Classified::Missing { generation, .. } = read
                && fetches
            {
                batch.missing.push((i, args, digest, generation));
                continue;
            }
            match self.answer_memory(memory, key, args, read, Mode::Policy) {
                Either::Left(answer) => batch.answers[i] = Some(answer),
                Either::Right(later) => batch.slow.push((i, later)),
            }
        }
        self.read_pending(pending, &mut batch).await;
        let Batch {
            mut answers,
            slow,
            missing,
            asked,
        } = batch;
        self.trigger_many_in_background(asked, now);
        let (places, reads): (Vec<usize>, Vec<_>) = slow.into_iter().unzip();
        let (read, fetched) = join(join_all(reads), self.fetch_missing(missing)).await;
        for (i, answer) in places.into_iter().zip(read).chain(fetched) {
            answers[i] = Some(answer);
        }
        answers
            .into_iter()
            .map(|answer| answer.expect("every read was answered"))
            .collect()
    }

    /// Answers one read of a batch of a remote store from what was read: a hit now; a stale
    /// value now, its refresh asked for with the batch's (see
    /// [`trigger_many_in_background`](Self::trigger_many_in_background)), and a miss that is
    /// not fetched likewise; a miss to fetch joins the batch fetch; the rest goes on as a
    /// single read would.
    fn settle<'a>(
        &'a self,
        batch: &mut Batch<'a, J>,
        i: usize,
        args: Args<J>,
        digest: u128,
        read: Classified<Value<J>>,
    ) {
        let answer = match read {
            Classified::Hit(lookup) => lookup,
            Classified::Stale { value, meta, now } if !self.refetch(Mode::Policy, now, &meta) => {
                let asks = self.hint_says_claim(digest, now);
                if asks {
                    batch.asked.push((digest, args, meta.generation));
                }
                self.stale_lookup(value, &meta, now, asks)
            }
            Classified::Missing { generation, .. } if self.fetches_misses(Mode::Policy) => {
                batch.missing.push((i, args, digest, generation));
                return;
            }
            Classified::Missing { generation, now } => {
                let asks = self.hint_says_claim(digest, now);
                if asks {
                    batch.asked.push((digest, args, generation));
                }
                self.miss_lookup(asks)
            }
            read => {
                let rest = self.finish(args, digest, read, Mode::Policy);
                batch.slow.push((i, Box::pin(rest)));
                return;
            }
        };
        batch.answers[i] = Some(Ok(answer));
    }

    /// Reads the entries of `pending` in one store call and settles each read with what it
    /// found; when the store cannot be read, each goes on as a single read would.
    async fn read_pending<'a>(&'a self, pending: Vec<Pending<J>>, batch: &mut Batch<'a, J>) {
        if pending.is_empty() {
            return;
        }
        let core = self.core();
        let keys: Vec<Key<'_>> = pending
            .iter()
            .map(|&(_, _, digest)| Key::new(&core.prefix, &self.job.name, digest))
            .collect();
        let near = core.near.as_deref();
        let tickets: Vec<_> = pending
            .iter()
            .map(|&(_, _, digest)| near.and_then(|near| Some((near, near.ticket(digest)?))))
            .collect();
        match core.store.get_many(&keys).await {
            Ok(entries) => {
                let now = core.now();
                let reads = pending
                    .into_iter()
                    .zip(entries)
                    .zip(keys.iter().zip(tickets));
                for (((i, args, digest), entry), (&key, ticket)) in reads {
                    let entry = tags::judge(core, entry).await;
                    let read = self.classify(key, entry, now, ticket);
                    self.settle(batch, i, args, digest, read);
                }
            }
            Err(error) => {
                for ((i, args, digest), &key) in pending.into_iter().zip(&keys) {
                    let error = error.clone();
                    let copy = near.and_then(|near| near.get_any(digest));
                    let rest: BoxFuture<'_, _> = match copy {
                        Some(copy) => {
                            Box::pin(self.serve_near_copy(key, args, copy, error, Mode::Policy))
                        }
                        None => {
                            Box::pin(self.read_without_store(args, digest, error, Mode::Policy))
                        }
                    };
                    batch.slow.push((i, rest));
                }
            }
        }
    }

    /// Fetches the `missing` keys with one call of the job's `fetch_many` (through the
    /// coalescer: keys in flight already join their fetch), and stores each value as a single
    /// fetch would. Returns each key's place in the answer and its answer.
    async fn fetch_missing(
        &self,
        missing: Vec<Missing<J>>,
    ) -> Vec<(usize, Result<Lookup<Value<J>>>)> {
        if missing.is_empty() {
            return Vec::new();
        }
        let (core, job) = (Arc::clone(self.core()), Arc::clone(&self.job));
        let digests: Vec<u128> = missing.iter().map(|&(_, _, digest, _)| digest).collect();
        let keys: Vec<(Args<J>, u128, u64)> = missing
            .iter()
            .map(|(_, args, digest, generation)| (args.clone(), *digest, *generation))
            .collect();
        let results = self
            .reads()
            .coalescer
            .run_many(&digests, &self.core().tasks, move |places| {
                let batch = places.into_iter().map(|p| keys[p].clone()).collect();
                Box::pin(Self::fetch_many_and_store(core, job, batch))
            })
            .await;
        missing
            .into_iter()
            .zip(results)
            .map(|((i, ..), (result, joined))| {
                if joined {
                    self.job.metrics.coalesced.increment(1);
                }
                let answer = result.and_then(|any| {
                    any.downcast()
                        .map_err(|_| Error::codec("batch fetch produced a value of another type"))
                });
                (
                    i,
                    answer.map(|fetched| self.fetched(&fetched, Status::MissFetched)),
                )
            })
            .collect()
    }

    /// The body of a batch fetch, run in its own task: keys that back off are refused, the rest
    /// fetched with one `fetch_many`, each value stored under its generation.
    async fn fetch_many_and_store(
        core: Arc<Core>,
        job: Arc<JobEntry<J>>,
        batch: Vec<(Args<J>, u128, u64)>,
    ) -> Vec<Result<AnyValue>> {
        let now = core.now();
        let befores = join_all(batch.iter().map(|&(_, digest, _)| {
            let key = Key::new(&core.prefix, &job.name, digest);
            backoff::before_fetch(&core, &job, key, now, true)
        }))
        .await;
        let asked: Vec<Args<J>> = batch
            .iter()
            .zip(&befores)
            .filter(|(_, before)| before.is_ok())
            .map(|((args, ..), _)| args.clone())
            .collect();
        let tag_clock = tags::clock_before_fetch(&core, &job).await;
        let (fetched, took) = fetch::run_fetch_many(&job, asked).await;
        let mut fetched = fetched.into_iter();
        let kept = batch
            .iter()
            .zip(befores)
            .map(|((args, digest, generation), before)| {
                let (digest, generation) = (*digest, *generation);
                let fetched = before.as_ref().ok().and_then(|_| fetched.next());
                let (core, job) = (&core, &job);
                async move {
                    let before = before?;
                    let key = Key::new(&core.prefix, &job.name, digest);
                    match fetched {
                        Some(Ok(value)) => {
                            backoff::record_success(core, job, key, before).await;
                            let condition = Some(PutCondition::IfGeneration(generation));
                            let fetched = (value, took, tag_clock);
                            Ok(
                                Self::keep_fetched(core, job, key, args, fetched, condition, None)
                                    .await,
                            )
                        }
                        Some(Err(error)) => {
                            backoff::record_failure(core, job, key, before, &error, true).await;
                            Err(error)
                        }
                        None => Err(Error::fetch(&job.name, "the batch fetch gave no result")),
                    }
                }
            });
        join_all(kept.collect::<Vec<_>>()).await
    }
}
