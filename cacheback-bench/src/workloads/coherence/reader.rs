//! A reader process of N3 and N4 (`__child coherence-reader`): listens the way its plan says,
//! reads its keys, says it is ready, and notes the wall-clock time at which each invalidation
//! of a hot key reaches it, until its stdin closes; then writes the receipts to its file and
//! prints its report.
//!
//! The cacheback reader is a client with a near cache in front of `RedisStore` (announcements
//! timed on their way into the near tier, `announced.rs`). The others are one RESP3
//! connection of redis-rs with a push sender: the time is taken in the sender, as the
//! connection's driver parses the push.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cacheback::store::Change;
use cacheback::{Cacheback, JobHandle, NearCache, RedisStore};
use redis::aio::MultiplexedConnection;
use redis::{IntoConnectionInfo as _, ProtocolVersion, PushInfo, PushKind, Value};
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::announced::Announced;
use super::writer::COMMAND_TIMEOUT;
use super::{
    Hot, Mode, READY, ReaderPlan, digest_of_entry_key, encode_receipts, key_of_payload,
    raw_channel, raw_key, raw_key_prefix, unix_ns,
};

/// Keys read per `get_many` / `MGET` while the reader sets up.
const READ_BATCH: usize = 100;

/// The reader process's `main`.
pub(crate) fn main(plan: ReaderPlan) -> Result<(), String> {
    crate::workloads::runtime().block_on(run(plan))
}

/// What a reader notes, shared with whatever hears the invalidations.
#[derive(Debug, Default)]
struct Log {
    /// (key, Unix ns) of each invalidation of a hot key.
    receipts: Mutex<Vec<(u32, u64)>>,
    unknown: AtomicU64,
    lost: AtomicU64,
    rearmed: AtomicU64,
}

impl Log {
    fn receipts(&self) -> std::sync::MutexGuard<'_, Vec<(u32, u64)>> {
        self.receipts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Notes invalidations, and asks for a key to be read again when the plan says so.
struct Ears {
    plan: ReaderPlan,
    log: Arc<Log>,
    rearm: UnboundedSender<u64>,
}

impl Ears {
    /// An invalidation of `key` (`None`: of nothing the reader knows) heard at `at_ns`.
    fn heard(&self, key: Option<u64>, at_ns: u64) {
        match key.filter(|&k| k < self.plan.keys) {
            Some(key) => {
                self.log.receipts().push((key as u32, at_ns));
                if self.plan.rearm && self.plan.owns(key) {
                    let _ = self.rearm.send(key);
                }
            }
            None => {
                self.log.unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What keeps listening until the reader stops.
enum Listening {
    Cacheback {
        client: Cacheback,
        handle: JobHandle<Hot>,
    },
    Redis {
        conn: MultiplexedConnection,
        /// Key names by number.
        names: Arc<Vec<Vec<u8>>>,
    },
}

async fn run(plan: ReaderPlan) -> Result<(), String> {
    let log = Arc::new(Log::default());
    let (rearm, asked) = unbounded_channel();
    let ears = Ears {
        plan: plan.clone(),
        log: Arc::clone(&log),
        rearm,
    };
    let listening = match plan.mode {
        Mode::Cacheback => cacheback(&plan, ears).await?,
        Mode::Pubsub | Mode::Tracking | Mode::Bcast => raw(&plan, ears).await?,
    };
    let rearming = tokio::spawn(rearm_loop(listening.reader(), asked, Arc::clone(&log)));
    println!("{READY}");
    stdin_closed().await;
    rearming.abort();
    if let Listening::Cacheback { client, .. } = listening {
        client.shutdown(Duration::from_secs(5)).await;
    }
    let receipts = std::mem::take(&mut *log.receipts());
    std::fs::write(&plan.out, encode_receipts(&receipts))
        .map_err(|e| format!("cannot write {}: {e}", plan.out.display()))?;
    println!(
        "{}",
        json!({
            "receipts": receipts.len(),
            "unknown": log.unknown.load(Ordering::Relaxed),
            "lost": log.lost.load(Ordering::Relaxed),
            "rearmed": log.rearmed.load(Ordering::Relaxed),
        })
    );
    Ok(())
}

/// cacheback's reader: a client with a near cache holding a copy of each of its keys.
async fn cacheback(plan: &ReaderPlan, ears: Ears) -> Result<Listening, String> {
    // Digest → key number, known before the first measured write (the writes start after
    // every reader said it is ready).
    let digests: Arc<OnceLock<HashMap<u128, u64>>> = Arc::new(OnceLock::new());
    let seen = {
        let digests = Arc::clone(&digests);
        move |change: &Change| {
            let at_ns = unix_ns();
            match *change {
                Change::Written { digest, .. } => {
                    let key = digests.get().and_then(|d| d.get(&digest)).copied();
                    ears.heard(key, at_ns);
                }
                Change::Lost => {
                    ears.log.lost.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    };
    let store = RedisStore::builder(&plan.url)
        .command_timeout(COMMAND_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build the reader's store: {e}"))?;
    let client = Cacheback::builder()
        .prefix(plan.prefix.as_str())
        .shared_store(Arc::new(Announced::new(store, Arc::new(seen))))
        .near_cache(NearCache::new().max_entries(plan.keys.max(1) * 2))
        .in_process_worker(false)
        .build()
        .map_err(|e| format!("cannot build the reader's client: {e}"))?;
    let handle = client.job(Hot);
    let mut by_digest = HashMap::new();
    for i in 0..plan.keys {
        let key = handle.key(&i).map_err(|e| e.to_string())?;
        let digest = digest_of_entry_key(&key).ok_or_else(|| format!("a key `{key}`"))?;
        by_digest.insert(digest, i);
    }
    let _ = digests.set(by_digest);
    for _ in 0..2_000 {
        if client.near_cache_live() == Some(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if client.near_cache_live() != Some(true) {
        return Err("the near cache never went live (cannot subscribe to Redis?)".to_owned());
    }
    for batch in plan.own_keys().chunks(READ_BATCH) {
        for read in handle.get_many(batch.iter().copied()).await {
            read.map_err(|e| format!("a first read failed: {e}"))?;
        }
    }
    Ok(Listening::Cacheback { client, handle })
}

/// A raw reader: one RESP3 connection that subscribes or turns tracking on, then reads its
/// keys (which is what tracking in its default mode needs).
async fn raw(plan: &ReaderPlan, ears: Ears) -> Result<Listening, String> {
    let names: Vec<Vec<u8>> = if plan.entries {
        entry_names(plan)?
    } else {
        (0..plan.keys)
            .map(|i| raw_key(&plan.prefix, i).into_bytes())
            .collect()
    };
    let by_name: HashMap<Vec<u8>, u64> = names.iter().cloned().zip(0..).collect();
    let bulk = |v: &Value| match v {
        Value::BulkString(b) => Some(b.clone()),
        _ => None,
    };
    let sender = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
        let at_ns = unix_ns();
        match push.kind {
            PushKind::Message => {
                let key = push.data.get(1).and_then(bulk);
                ears.heard(key.as_deref().and_then(key_of_payload), at_ns);
            }
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        let key = bulk(key).and_then(|k| by_name.get(&k).copied());
                        ears.heard(key, at_ns);
                    }
                }
                // A flush of the whole database, or something new: not a key.
                _ => ears.heard(None, at_ns),
            },
            PushKind::Disconnection => {
                ears.log.lost.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        Ok(())
    };
    let info = plan
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("a Redis URL `{}`: {e}", plan.url))?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings))
        .map_err(|e| format!("a Redis client: {e}"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_push_sender(sender)
        .set_response_timeout(Some(COMMAND_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("cannot connect to Redis with RESP3: {e}"))?;
    let on = |what: &str, e: redis::RedisError| format!("{what} failed: {e}");
    match plan.mode {
        Mode::Pubsub => conn
            .subscribe(raw_channel(&plan.prefix))
            .await
            .map_err(|e| on("SUBSCRIBE", e))?,
        Mode::Tracking => redis::cmd("CLIENT")
            .arg(&["TRACKING", "ON"][..])
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| on("CLIENT TRACKING ON", e))?,
        Mode::Bcast => {
            let prefix = if plan.entries {
                format!("{{{}:{}:", plan.prefix, cacheback::Job::name(&Hot))
            } else {
                raw_key_prefix(&plan.prefix)
            };
            redis::cmd("CLIENT")
                .arg(&["TRACKING", "ON", "BCAST", "PREFIX"][..])
                .arg(prefix)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| on("CLIENT TRACKING ON BCAST", e))?;
        }
        Mode::Cacheback => return Err("a cacheback reader listens through its client".to_owned()),
    }
    for batch in plan.own_keys().chunks(READ_BATCH) {
        let keys: Vec<&[u8]> = batch
            .iter()
            .map(|&i| names[i as usize].as_slice())
            .collect();
        redis::cmd("MGET")
            .arg(keys)
            .query_async::<Vec<Option<Vec<u8>>>>(&mut conn)
            .await
            .map_err(|e| on("MGET", e))?;
    }
    Ok(Listening::Redis {
        conn,
        names: Arc::new(names),
    })
}

/// The Redis names of the [`Hot`] job's entries under the plan's prefix: `{<key text>}`, as
/// `RedisStore` stores them (a client that never connects derives them).
fn entry_names(plan: &ReaderPlan) -> Result<Vec<Vec<u8>>, String> {
    let store = RedisStore::from_url(&plan.url).map_err(|e| e.to_string())?;
    let client = Cacheback::builder()
        .prefix(plan.prefix.as_str())
        .store(store)
        .in_process_worker(false)
        .build()
        .map_err(|e| e.to_string())?;
    let handle = client.job(Hot);
    (0..plan.keys)
        .map(|i| {
            let key = handle.key(&i).map_err(|e| e.to_string())?;
            Ok(format!("{{{key}}}").into_bytes())
        })
        .collect()
}

/// How a key is read again.
enum Reread {
    Cacheback(JobHandle<Hot>),
    Redis(MultiplexedConnection, Arc<Vec<Vec<u8>>>),
}

impl Listening {
    fn reader(&self) -> Reread {
        match self {
            Listening::Cacheback { handle, .. } => Reread::Cacheback(handle.clone()),
            Listening::Redis { conn, names } => Reread::Redis(conn.clone(), Arc::clone(names)),
        }
    }
}

/// Reads each key asked for again, each read in a task of its own (a cacheback `get`, which
/// keeps a new near copy; or a `GET` on the tracking connection, which tracks the key again).
async fn rearm_loop(reread: Reread, mut asked: UnboundedReceiver<u64>, log: Arc<Log>) {
    while let Some(key) = asked.recv().await {
        let log = Arc::clone(&log);
        match &reread {
            Reread::Cacheback(handle) => {
                let handle = handle.clone();
                tokio::spawn(async move {
                    if handle.get(key).await.is_ok() {
                        log.rearmed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            Reread::Redis(conn, names) => {
                let (mut conn, names) = (conn.clone(), Arc::clone(names));
                tokio::spawn(async move {
                    let read = redis::cmd("GET")
                        .arg(names[key as usize].as_slice())
                        .query_async::<Option<Vec<u8>>>(&mut conn)
                        .await;
                    if read.is_ok() {
                        log.rearmed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        }
    }
}

/// Resolves when something arrives on stdin or it closes: the harness's signal to stop.
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read(&mut [0u8; 1]);
        let _ = tx.send(());
    });
    let _ = rx.await;
}
