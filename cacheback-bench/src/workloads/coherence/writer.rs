//! The writer of N3 and N4, in the harness process: writes hot keys in turn at a set pace and
//! notes, for each write, when it was sent and when its reply came.

use std::time::Duration;

use cacheback::{Cacheback, JobHandle, RedisStore};
use futures_util::stream::{FuturesUnordered, StreamExt as _, TryStreamExt as _};
use redis::aio::MultiplexedConnection;

use super::{Hot, Stamp, raw_channel, raw_key, raw_payload, unix_ns};

/// What a raw write stores: 100 bytes, about the size of cacheback's entry of the bench's value.
const RAW_VALUE: [u8; 100] = [b'v'; 100];

/// How long any one command may take, waiting included: long enough for a machine saturated on
/// purpose (N4's fastest step).
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How the writer writes a hot key.
pub(super) enum Writer {
    /// `JobHandle::set` of a cacheback client without a near cache, on a `RedisStore` that
    /// announces its writes or not: one script per write (with its `PUBLISH` when announcing).
    Cacheback {
        client: Cacheback,
        handle: JobHandle<Hot>,
    },
    /// `SET <prefix>:k:<i>` of 100 bytes, pipelined with a `PUBLISH` of 24 bytes on the
    /// prefix's channel when `publish`.
    Raw {
        conn: MultiplexedConnection,
        prefix: String,
        publish: bool,
    },
}

impl Writer {
    /// A cacheback client writing under `prefix` (built inside a Tokio runtime).
    pub(super) fn cacheback(url: &str, prefix: &str, announce: bool) -> Result<Writer, String> {
        let store = RedisStore::builder(url)
            .announce_changes(announce)
            .command_timeout(COMMAND_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the writer's store: {e}"))?;
        let client = Cacheback::builder()
            .prefix(prefix)
            .store(store)
            .in_process_worker(false)
            .build()
            .map_err(|e| format!("cannot build the writer's client: {e}"))?;
        let handle = client.job(Hot);
        Ok(Writer::Cacheback { client, handle })
    }

    /// A raw writer under `prefix` on a connection of `client`.
    pub(super) async fn raw(
        client: &redis::Client,
        prefix: &str,
        publish: bool,
    ) -> Result<Writer, String> {
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(COMMAND_TIMEOUT));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("the writer cannot connect to Redis: {e}"))?;
        Ok(Writer::Raw {
            conn,
            prefix: prefix.to_owned(),
            publish,
        })
    }

    /// Writes hot key `key` once.
    pub(super) async fn write(&self, key: u64) -> Result<(), String> {
        match self {
            Writer::Cacheback { handle, .. } => handle
                .set(key, crate::value::Value::new(key))
                .await
                .map_err(|e| format!("a write failed: {e}")),
            Writer::Raw {
                conn,
                prefix,
                publish,
            } => {
                let mut conn = conn.clone();
                let mut pipe = redis::pipe();
                pipe.cmd("SET")
                    .arg(raw_key(prefix, key))
                    .arg(&RAW_VALUE[..])
                    .ignore();
                if *publish {
                    pipe.cmd("PUBLISH")
                        .arg(raw_channel(prefix))
                        .arg(&raw_payload(key)[..])
                        .ignore();
                }
                pipe.query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| format!("a write failed: {e}"))
            }
        }
    }

    /// Writes every key of `0..keys` once (64 at a time), so that readers find them.
    pub(super) async fn fill(&self, keys: u64) -> Result<(), String> {
        futures_util::stream::iter(0..keys)
            .map(|key| self.write(key))
            .buffer_unordered(64)
            .try_collect::<()>()
            .await
    }

    /// Stops the cacheback client, if any.
    pub(super) async fn shutdown(self) {
        if let Writer::Cacheback { client, .. } = self {
            client.shutdown(Duration::from_secs(5)).await;
        }
    }
}

/// How a stretch of writes goes: write number `j` (from `first` on) writes key `j % keys`, at
/// `rate` writes a second (`None`: as fast as `in_flight` concurrent writes go), until `writes`
/// were sent or `duration` passed, whichever comes first.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    pub(super) first: u64,
    pub(super) keys: u64,
    pub(super) rate: Option<f64>,
    pub(super) writes: Option<u64>,
    pub(super) duration: Option<Duration>,
    pub(super) in_flight: usize,
    /// The step the writes are counted in.
    pub(super) step: usize,
}

/// Writes as `pace` says; returns every write's stamp, in the order they were sent.
pub(super) async fn drive(writer: &Writer, pace: &Pace) -> Result<Vec<Stamp>, String> {
    let start = tokio::time::Instant::now();
    let in_flight = pace.in_flight.max(1);
    let mut pending = FuturesUnordered::new();
    let mut stamps = Vec::new();
    let mut sent: u64 = 0;
    loop {
        let elapsed = start.elapsed();
        let open =
            pace.writes.is_none_or(|w| sent < w) && pace.duration.is_none_or(|d| elapsed < d);
        // Writes due by now: the first at once, then one every 1/rate seconds.
        let due = pace
            .rate
            .map_or(u64::MAX, |r| (r * elapsed.as_secs_f64()) as u64 + 1);
        if open && sent < due && pending.len() < in_flight {
            let key = (pace.first + sent) % pace.keys.max(1);
            let step = pace.step;
            let sent_ns = unix_ns();
            pending.push(async move {
                writer.write(key).await?;
                Ok::<_, String>(Stamp {
                    key: u32::try_from(key).map_err(|_| "too many keys")?,
                    sent_ns,
                    reply_ns: unix_ns(),
                    step,
                })
            });
            sent += 1;
            continue;
        }
        if !open && pending.is_empty() {
            break;
        }
        let next_due = match pace.rate {
            Some(rate) if open && sent >= due => {
                Some(start + Duration::from_secs_f64(sent as f64 / rate))
            }
            _ => None,
        };
        tokio::select! {
            Some(done) = pending.next(), if !pending.is_empty() => stamps.push(done?),
            () = tokio::time::sleep_until(next_due.unwrap_or(start)), if next_due.is_some() => {}
            else => return Err("the writer had nothing to wait for (a bug)".to_owned()),
        }
    }
    stamps.sort_by_key(|s| s.sent_ns);
    Ok(stamps)
}
