//! Values in and out of the store: the write of a fetched value (encoded for byte stores,
//! size-checked, with its windows) and the reading of an entry as a job's value (the hit path).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::Codec;
use crate::engine::Core;
use crate::engine::registry::JobEntry;
use crate::entry::{Entry, EntryMeta, Payload, Repr};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::key::Key;
use crate::store::{Put, PutCondition, PutOutcome};

/// Writes a value under `condition`, refusing it when it is over the size limit.
pub(crate) async fn store_value<J: Job>(
    core: &Core,
    job: &JobEntry<J>,
    key: Key<'_>,
    value: Arc<J::Value>,
    fetch_duration: Duration,
    condition: PutCondition,
) -> Result<PutOutcome> {
    let put = prepare_put(core, job, value, fetch_duration, condition)?;
    core.put(key, put).await
}

/// The write of a fetched value: encoded (for byte stores), size-checked, with its windows.
pub(crate) fn prepare_put<J: Job>(
    core: &Core,
    job: &JobEntry<J>,
    value: Arc<J::Value>,
    fetch_duration: Duration,
    condition: PutCondition,
) -> Result<Put> {
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
    let now = core.clock.now();
    let windows = job.policy.windows(now, fastrand::f64());
    let mut meta = EntryMeta::new(now, windows.fresh_until, windows.stale_until);
    meta.fetch_duration = fetch_duration;
    meta.schema_version = job.policy.schema_version;
    meta.size = u32::try_from(size).unwrap_or(u32::MAX);
    let ttl = windows.stale_until.since(now);
    Ok(Put::new(Entry::new(meta, payload), condition, ttl))
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
