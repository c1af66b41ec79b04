//! Values in and out of the store: the write of a fetched value (encoded for byte stores,
//! size-checked, with its windows) and the reading of an entry as a job's value (the hit path).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::codec::Codec;
use crate::engine::Core;
use crate::engine::registry::JobEntry;
use crate::entry::{Entry, EntryMeta, Payload, Repr};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::key::Key;
use crate::store::{Put, PutCondition, PutOutcome};

/// A value to write: what it was fetched for, the value, how long the fetch took, and the tag
/// clock read before it started.
pub(crate) struct Fetched<'a, J: Job> {
    pub(crate) args: &'a J::Args,
    pub(crate) value: Arc<J::Value>,
    pub(crate) took: Duration,
    pub(crate) tag_clock: u64,
}

/// Writes a value under `condition`, refusing it when it is over the size limit.
pub(crate) async fn store_value<J: Job>(
    core: &Core,
    job: &JobEntry<J>,
    key: Key<'_>,
    fetched: Fetched<'_, J>,
    condition: PutCondition,
) -> Result<PutOutcome> {
    let put = prepare_put(core, job, fetched, condition)?;
    core.put(key, put).await
}

/// The write of a fetched value: encoded (for byte stores), size-checked, with its windows
/// and its tags.
pub(crate) fn prepare_put<J: Job>(
    core: &Core,
    job: &JobEntry<J>,
    fetched: Fetched<'_, J>,
    condition: PutCondition,
) -> Result<Put> {
    let Fetched {
        args,
        value,
        took: fetch_duration,
        tag_clock,
    } = fetched;
    let tags = job
        .job
        .tags(args, &value)
        .into_entry_tags(tag_clock)
        .map_err(|reason| Error::InvalidTag {
            message: format!("job `{}` gave a value invalid tags: {reason}", job.name),
        })?;
    if tags.is_some() {
        job.saw_tags();
    }
    let lifespan = job.job.lifespan(&value, &job.policy);
    let (payload, size) = if core.memory.is_some() {
        let size = core.codec.encoded_len(&*value)?;
        check_size(core, job, size)?;
        (Payload::live(value as Arc<dyn Any + Send + Sync>), size)
    } else {
        let bytes = core.codec.encode(&*value)?;
        check_size(core, job, bytes.len())?;
        let size = bytes.len();
        (Payload::encoded(core.codec.id(), bytes.into()), size)
    };
    let now = core.now();
    let windows = job.policy.windows_of(lifespan, now, fastrand::f64());
    let mut meta = EntryMeta::new(now, windows.fresh_until, windows.stale_until);
    meta.fetch_duration = fetch_duration;
    meta.schema_version = job.policy.schema_version;
    meta.size = u32::try_from(size).unwrap_or(u32::MAX);
    // A value whose own lifespan is zero is still written (stale, or expired, at once), and
    // stores must never be asked to keep something for no time at all.
    let ttl = windows.stale_until.since(now).max(MIN_TTL);
    Ok(Put::new(
        Entry::new(meta, payload).with_tags(tags),
        condition,
        ttl,
    ))
}

/// The shortest time a store is asked to keep an entry.
const MIN_TTL: Duration = Duration::from_millis(1);

/// The `stale_until` that a failed refresh may extend `entry` to ([`Lifespan::stale_if_error`]
/// of the value's own lifespan), or `None` when its lifespan has none or it does not decode.
pub(crate) fn stale_if_error_until<J: Job>(
    core: &Core,
    job: &JobEntry<J>,
    entry: &Entry,
) -> Option<Timestamp> {
    let value = decode_value(core, job, entry).ok().flatten()?;
    job.job
        .lifespan(&value, &job.policy)
        .stale_if_error_until(entry.meta.fresh_until)
}

fn check_size<J>(core: &Core, job: &JobEntry<J>, size: usize) -> Result<()> {
    if size > core.max_value_bytes {
        return Err(Error::TooLarge {
            job: Arc::clone(&job.name),
            size,
            limit: core.max_value_bytes,
        });
    }
    Ok(())
}

/// Reads a stored entry as this job's value: `Ok(None)` for a tombstone, `Err(reason)` when
/// the entry cannot be this job's value (another schema, codec or type; corrupt bytes).
pub(crate) fn decode_value<J: Job>(
    core: &Core,
    job: &JobEntry<J>,
    entry: &Entry,
) -> std::result::Result<Option<Arc<J::Value>>, String> {
    decode_payload(core, job, &entry.meta, entry.payload.clone())
}

/// [`decode_value`] taking the payload by value, so a live object is handed over without
/// touching its reference count (the hit path).
#[inline]
pub(crate) fn decode_payload<J: Job>(
    core: &Core,
    job: &JobEntry<J>,
    meta: &EntryMeta,
    payload: Payload,
) -> std::result::Result<Option<Arc<J::Value>>, String> {
    if meta.schema_version != job.policy.schema_version && !payload.is_tombstone() {
        return Err(format!(
            "entry has schema version {}, job expects {}",
            meta.schema_version, job.policy.schema_version
        ));
    }
    match payload.0 {
        Repr::Tombstone => Ok(None),
        Repr::Live(any) => any
            .downcast::<J::Value>()
            .map(Some)
            .map_err(|_| "entry holds a value of another type".to_owned()),
        Repr::Encoded { codec, bytes } => {
            if codec != core.codec.id() {
                return Err(format!(
                    "entry was written with {}, this client uses {}: every process of a fleet \
                     must use the same codec",
                    Codec::name_of(codec),
                    core.codec.name()
                ));
            }
            core.codec
                .decode::<J::Value>(&bytes)
                .map(|v| Some(Arc::new(v)))
                .map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::LocalQueue;
    use crate::client::Cacheback;
    use crate::clock::{Clock, TestClock};
    use crate::engine::refresh::{Claimed, ReadBefore, refresh_claimed};
    use crate::engine::registry::RefreshOutcome;
    use crate::observe::JobMetrics;
    use crate::policy::{Lifespan, Policy};
    use crate::store::ClaimOutcome;

    /// A value that says how long it lives: `(fresh secs, stale secs, stale-if-error secs)`;
    /// its fetch fails when the args are negative.
    struct SelfTimed;

    impl Job for SelfTimed {
        type Args = i64;
        type Value = (u64, u64, Option<u64>);
        type Error = std::io::Error;

        fn name(&self) -> &str {
            "self_timed"
        }

        fn policy(&self) -> Policy {
            Policy::default()
                .lifetime(Duration::from_secs(600))
                .stale_ttl(Duration::from_secs(600))
        }

        async fn fetch(&self, args: i64) -> Result<Self::Value, std::io::Error> {
            match u64::try_from(args) {
                Ok(secs) => Ok((secs, secs, None)),
                Err(_) => Err(std::io::Error::other("upstream down")),
            }
        }

        fn lifespan(&self, value: &Self::Value, _policy: &Policy) -> Lifespan {
            let (fresh, stale, if_error) = *value;
            let lifespan = Lifespan::new(Duration::from_secs(fresh), Duration::from_secs(stale));
            match if_error {
                Some(extra) => lifespan.with_stale_if_error(Duration::from_secs(extra)),
                None => lifespan,
            }
        }
    }

    /// The job as the registry holds it, for the engine's functions.
    fn entry(cache: &Cacheback) -> JobEntry<SelfTimed> {
        let name: Arc<str> = Arc::from("self_timed");
        JobEntry {
            job: SelfTimed,
            seed: crate::key::job_seed(cache.prefix(), &name),
            policy: SelfTimed.policy(),
            metrics: JobMetrics::new(&name),
            name,
            tagged: Default::default(),
        }
    }

    fn client(clock: &TestClock) -> Cacheback {
        Cacheback::builder()
            .clock(clock.clone())
            .queue(LocalQueue::new(16))
            .in_process_worker(false)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_written_value_lives_for_its_own_lifespan_not_the_policys() {
        let clock = TestClock::new();
        let cache = client(&clock);
        let job = cache.job(SelfTimed);
        let t0 = clock.now();
        job.set(1, (5, 7, None)).await.unwrap();
        let meta = job.peek(1).await.unwrap().unwrap().meta;
        assert_eq!(meta.fresh_until, t0.saturating_add(Duration::from_secs(5)));
        assert_eq!(meta.stale_until, t0.saturating_add(Duration::from_secs(12)));

        // A zero lifespan is written (it is Stale, or gone, at once), never refused.
        job.set(2, (0, 0, None)).await.unwrap();
        let fetched = Fetched {
            args: &2,
            value: Arc::new((0, 0, None)),
            took: Duration::ZERO,
            tag_clock: 0,
        };
        let put = prepare_put(cache.core(), &entry(&cache), fetched, PutCondition::Always).unwrap();
        assert_eq!(put.ttl, MIN_TTL);
    }

    #[tokio::test]
    async fn a_failed_refresh_extends_by_the_values_own_stale_if_error() {
        let clock = TestClock::new();
        let cache = client(&clock);
        let job = cache.job(SelfTimed);
        let core = Arc::clone(cache.core());
        let entry_of_job = entry(&cache);
        let t0 = clock.now();
        let digest = crate::key::digest_seeded(entry_of_job.seed, &-1i64).unwrap();
        let key = Key::new(&core.prefix, &entry_of_job.name, digest);
        // Stored under the args whose fetch fails: fresh 10 s, stale 10 s, +100 s on errors.
        job.set(-1, (10, 10, Some(100))).await.unwrap();
        let entry = core.store.get(key).await.unwrap().unwrap();
        assert_eq!(
            stale_if_error_until(&core, &entry_of_job, &entry),
            Some(t0.saturating_add(Duration::from_secs(120)))
        );

        clock.advance(Duration::from_secs(15));
        let ClaimOutcome::Won { token, .. } = core
            .store
            .claim(key, clock.now(), Duration::from_secs(60))
            .await
            .unwrap()
        else {
            panic!("the claim of a stale key is free");
        };
        let claimed = Claimed {
            token,
            generation: entry.meta.generation,
            prior_failures: 0,
        };
        let before = ReadBefore::Unread;
        let outcome = refresh_claimed(&core, &entry_of_job, -1, digest, claimed, before).await;
        assert_eq!(outcome, RefreshOutcome::Failed);
        let after = core.store.get(key).await.unwrap().unwrap();
        assert_eq!(
            after.meta.stale_until,
            t0.saturating_add(Duration::from_secs(120)),
            "the policy has no stale_if_error: the value's own 100 s were applied"
        );
    }
}
