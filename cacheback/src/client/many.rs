//! Batch reads: many args of one job in one call, their entries read in one round trip.

use futures_util::future::{BoxFuture, Either, join_all};

use crate::client::handle::{Args, Classified, JobHandle, Mode, Value};
use crate::client::lookup::Lookup;
use crate::engine::tags;
use crate::error::Result;
use crate::job::Job;
use crate::key::Key;

/// A read that still needs the store: its place in the answer, its args and its digest.
type Pending<J> = (usize, Args<J>, u128);

/// A read that goes on as a single read: its place in the answer, and the rest of it.
type Later<'a, J> = (usize, BoxFuture<'a, Result<Lookup<Value<J>>>>);

impl<J: Job> JobHandle<J> {
    /// Reads many args at once, each as [`get_with_status`](Self::get_with_status) would, and
    /// returns their answers in the order given (one failed key does not fail the others).
    ///
    /// Keys the process answers by itself (the memory store, copies of a
    /// [near cache](crate::CachebackBuilder::near_cache)) cost no round trip; the entries of all
    /// the others are read from the store together (one `MGET` on Redis). Hits are answered from
    /// that one read; stale and missing keys then go on concurrently, each as a single read
    /// would (one refresh per stale key, misses fetched with the job's coalesced fetch, or
    /// answered empty without [`Policy::fetch_on_miss`](crate::Policy::fetch_on_miss)).
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
        let mut answers: Vec<Option<Result<Lookup<Value<J>>>>> = Vec::new();
        let mut slow: Vec<Later<'_, J>> = Vec::new();
        let mut pending: Vec<Pending<J>> = Vec::new();
        let now = core.clock.now();
        for (i, args) in args.into_iter().enumerate() {
            answers.push(None);
            let digest = match self.digest(&args) {
                Ok(digest) => digest,
                Err(error) => {
                    answers[i] = Some(Err(error));
                    continue;
                }
            };
            let in_process = core.memory.is_some()
                || core
                    .near
                    .as_ref()
                    .is_some_and(|near| near.get(digest, now).is_some());
            if !in_process {
                pending.push((i, args, digest));
                continue;
            }
            match self.lookup(args, Mode::Policy) {
                Either::Left(answer) => answers[i] = Some(answer),
                Either::Right(later) => slow.push((i, later)),
            }
        }
        self.read_pending(pending, &mut answers, &mut slow).await;
        let (places, reads): (Vec<usize>, Vec<_>) = slow.into_iter().unzip();
        for (i, answer) in places.into_iter().zip(join_all(reads).await) {
            answers[i] = Some(answer);
        }
        answers
            .into_iter()
            .map(|answer| answer.expect("every read was answered"))
            .collect()
    }

    /// Reads the entries of `pending` in one store call: hits go into `answers`, the rest into
    /// `slow` to go on as single reads do.
    async fn read_pending<'a>(
        &'a self,
        pending: Vec<Pending<J>>,
        answers: &mut [Option<Result<Lookup<Value<J>>>>],
        slow: &mut Vec<Later<'a, J>>,
    ) {
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
                let now = core.clock.now();
                let reads = pending
                    .into_iter()
                    .zip(entries)
                    .zip(keys.iter().zip(tickets));
                for (((i, args, digest), entry), (&key, ticket)) in reads {
                    let entry = tags::judge(core, entry).await;
                    match self.classify(key, entry, now, ticket) {
                        Classified::Hit(lookup) => answers[i] = Some(Ok(lookup)),
                        read => {
                            let rest = self.finish(args, digest, read, Mode::Policy);
                            slow.push((i, Box::pin(rest)));
                        }
                    }
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
                    slow.push((i, rest));
                }
            }
        }
    }
}
