//! [`RedisStore`]: entries, claims and failure state in Redis, shared by a fleet (feature
//! `redis`).
//!
//! The files: this one holds the store and its operations, `builder.rs` its builder and
//! constructors, `scripts.rs` the Lua scripts with their arguments and decoded replies,
//! `layout.rs` key names, records and times as text,
//! `reads.rs` single reads, batched into one `MGET` while others are in flight, `changes.rs`
//! the announcement of writes and the subscription that watches them.

mod builder;
mod changes;
mod layout;
mod reads;
mod scripts;

pub use self::builder::RedisStoreBuilder;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, join_all};
use redis::{Client, ScriptInvocation, Value};
use tracing::{debug, warn};

use self::layout::{
    HEAD_LEN, claim_key, clamp_u32, entry_key, fail_key, failure_record, parse_claim,
    parse_failure, parse_tag_record, tag_clock_key, tag_key, time_text, undecodable,
};
use self::reads::{Reads, get_many};
use self::scripts::{AfterPut, ClaimReply, PutReply, ReleaseMode, Scripts};
use crate::clock::Timestamp;
use crate::entry::{Entry, decode_envelope, encode_envelope};
use crate::error::{Chain, Error, Result};
use crate::key::Key;
use crate::redis_support::{self, BACKEND, Conn, ConnOptions, Failure, px, u64_of};
use crate::store::{
    Changes, ClaimOutcome, ClaimState, ClaimToken, Put, PutCondition, PutOutcome, Release, Store,
    TagStates,
};
use crate::tags::{TagAction, TagState};

/// Default limit on an entry read back from Redis (value plus the 48-byte header).
pub(crate) const DEFAULT_MAX_ENTRY_BYTES: usize = 64 << 20;

/// Keys per run of the claim script when many keys are claimed at once: a bigger batch runs as
/// several scripts (sent together), so that no one script keeps Redis busy for long.
const CLAIMS_PER_SCRIPT: usize = 128;

/// Default extra time Redis keeps entries and claims past their own end (clock skew between
/// processes, and a last chance for `stale_if_error`).
pub(crate) const DEFAULT_EXPIRY_GRACE: Duration = Duration::from_secs(60);

/// A store in Redis, shared by every web process and worker of a fleet.
///
/// # Layout
///
/// For a key whose text is `app:job:0123…` (see [`Key`](crate::store::Key)):
///
/// | Redis key | holds | expiry |
/// |---|---|---|
/// | `{app:job:0123…}` | the entry envelope (a 48-byte header with the windows and the generation, then the value) | `PX` = until `stale_until` + grace |
/// | `{app:job:0123…}:c` | the claim: `<32-hex token>:<until ms>` | `PX` = refresh timeout + grace |
/// | `{app:job:0123…}:f` | failure state: `<failures>:<retry_after ms>:<forget_at ms>` | see [`Release::Failed`](crate::store::Release::Failed) |
/// | `{app:tags}:clock` | the prefix's tag clock, bumped by every tag invalidation | none |
/// | `{app:tags}:t:<tag>` | a tag's record: `<invalidated>:<deleted>` tag clock values | none (one small key per tag ever invalidated) |
///
/// The whole key text is the hash tag, so an entry, its claim and its failure state share a
/// Redis Cluster slot and every script touches one slot. Times inside values are the callers'
/// (a [`Clock`](crate::clock::Clock)), written as 20-digit zero-padded decimals so that scripts
/// compare them exactly as strings (Lua numbers are doubles and lose precision past 2^53);
/// the `PX` expiries only reclaim memory, they never decide freshness or claim ownership.
///
/// # Commands
///
/// - `get`: one plain `GET` of the entry key, and nothing else. Under load, reads share
///   commands: while two reads of the store are on their way (on one Redis; not on a
///   cluster), further reads wait for one of them to return and then go out together in one
///   `MGET` that names each key once (a `GET` when they all read one key), so a burst of
///   reads costs Redis one command per batch and each key once per batch. On a cluster, only
///   readers of one key share: while a `GET` of a key is on its way, further reads of it wait
///   for it and then share the next `GET`. `get_many`: one `MGET`.
/// - `put`: a script (`put.lua`) that reads the current generation at byte offset 8 of the
///   stored envelope (8 bytes, big-endian, compared and incremented as a byte string), checks
///   the condition, writes the new envelope with `SET ... PX` and stamps the new generation into
///   it. The envelope layout is passed to the script with every call. `put_and_release` and
///   `put_and_claim` are the same script, which then also releases or (once written) takes
///   the key's claim.
/// - `claim` / `release`: scripts (`claim.lua`, `release.lua`) over the claim and failure keys;
///   `release` deletes the claim only if the token matches.
/// - `claim_state`: one `MGET` of the claim and failure keys.
/// - `bump_tag`: a script (`tag.lua`): `INCR` of the tag clock, `SET` of the tag's record, and
///   its announcement; `tag_states`: one `MGET` of the clock and the tags' records. A read of
///   an untagged entry never touches them.
///
/// Bytes at an entry key that are not a valid envelope (corruption, another program, an entry
/// over [`RedisStoreBuilder::max_entry_bytes`](crate::store::RedisStoreBuilder::max_entry_bytes)) are returned as an entry that no job can decode,
/// so the client reads it as a miss, counts it in `cacheback_decode_errors_total`, and the next
/// refresh overwrites it. Its generation is read the same way the `put` script reads it (offset
/// 8 when the bytes start with the envelope magic and version and are long enough, else 0), so
/// that refresh's generation-checked write succeeds.
///
/// Connects lazily (a process starts even while Redis is down: its reads then follow the
/// client's [`StoreFallback`](crate::StoreFallback)), reconnects by itself, and bounds every
/// call with a timeout.
///
/// ```no_run
/// use cacheback::{Cacheback, RedisQueue, RedisStore};
/// use std::time::Duration;
///
/// # fn main() -> cacheback::Result<()> {
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .command_timeout(Duration::from_millis(250))
///     .build()?;
/// let queue = RedisQueue::from_url("redis://127.0.0.1:6379")?;
/// let cache = Cacheback::builder()
///     .prefix("myapp")
///     .store(store)
///     .queue(queue)
///     .build()?;
/// # let _ = cache;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    /// What a subscription to the announced changes connects with (`None` for a store on an
    /// application's connection manager, which cannot open a second connection).
    watcher: Option<(Client, ConnOptions)>,
    /// Whether writes are announced on the prefix's changes channel.
    announce: bool,
    /// Whether Redis's eviction settings were looked at (once, at the first claim).
    eviction_checked: Arc<AtomicBool>,
    max_entry_bytes: usize,
    expiry_grace: Duration,
    scripts: Scripts,
    /// Single reads, batched while others are in flight (on a cluster, readers of one key only).
    reads: Arc<Reads>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("conn", &self.conn)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .field("expiry_grace", &self.expiry_grace)
            .finish()
    }
}

impl RedisStore {
    /// Checks that Redis answers (`PING`), for readiness probes.
    pub async fn ping(&self) -> Result<()> {
        let reply: Value = self
            .conn
            .query(&redis::cmd("PING"), "PING")
            .await
            .map_err(Failure::into_store)?;
        match reply {
            Value::SimpleString(_) | Value::Okay | Value::BulkString(_) => Ok(()),
            other => Err(Failure::protocol("PING", format!("{other:?}")).into_store()),
        }
    }

    /// Whether this Redis may evict cacheback's claim keys, read from `INFO memory`: a
    /// warning with the settings that are safe, or `None`. Logged once per store at the
    /// first claim; call it at start-up to fail a deployment check instead.
    ///
    /// Claim keys carry a TTL and are written once and rarely read, so any eviction policy
    /// picks them early. A claim evicted during a refresh lets the next reader enqueue a
    /// second refresh of the same stale entry; a worker process already refreshing the key
    /// then skips it, so the cost is at most one extra fetch per worker process, not a storm.
    pub async fn eviction_warning(&self) -> Result<Option<String>> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("memory");
        let reply: Value = self
            .conn
            .query(&cmd, "INFO")
            .await
            .map_err(Failure::into_store)?;
        // One Redis answers with its text; a cluster with each master's, by address.
        let infos: Vec<Vec<u8>> = match reply {
            Value::Map(nodes) => nodes
                .into_iter()
                .filter_map(|(_, info)| redis_support::bytes_of(info))
                .collect(),
            other => redis_support::bytes_of(other).into_iter().collect(),
        };
        if infos.is_empty() {
            return Err(Failure::protocol("INFO", "no text in the reply").into_store());
        }
        Ok(infos.iter().find_map(|info| {
            let info = String::from_utf8_lossy(info);
            let field = |name: &str| {
                info.lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                    .map(str::trim)
            };
            let maxmemory = field("maxmemory")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            eviction_warning(maxmemory, field("maxmemory_policy").unwrap_or("noeviction"))
        }))
    }

    async fn check_eviction_once(&self) {
        if self.eviction_checked.swap(true, Ordering::Relaxed) {
            return;
        }
        match self.eviction_warning().await {
            Ok(Some(warning)) => warn!("{warning}"),
            Ok(None) => {}
            // Managed Redis services may refuse INFO: nothing to say then.
            Err(e) => debug!(error = %Chain(&e), "could not read Redis's eviction settings"),
        }
    }

    fn decode(&self, key: Key<'_>, bytes: Bytes) -> Entry {
        // Keep what `undecodable` needs, rather than a second handle on the bytes (cloning a
        // `Vec`-backed `Bytes` allocates).
        let mut head = [0u8; HEAD_LEN];
        let n = bytes.len().min(HEAD_LEN);
        head[..n].copy_from_slice(&bytes[..n]);
        let len = bytes.len();
        match decode_envelope(bytes, self.max_entry_bytes) {
            Ok(entry) => entry,
            Err(error) => {
                debug!(key = %key, error = %Chain(&error), "entry is not a valid envelope");
                undecodable(&head[..n], len)
            }
        }
    }

    async fn do_get(&self, key: Key<'_>) -> Result<Option<Entry>> {
        let raw = if self.conn.is_cluster() {
            self.reads.get_on_cluster(entry_key(key)).await?
        } else {
            self.reads.get(entry_key(key)).await?
        };
        Ok(raw.map(|bytes| self.decode(key, bytes)))
    }

    /// One `MGET` of the entries of `keys`.
    async fn do_get_many(&self, keys: &[Key<'_>]) -> Result<Vec<Option<Entry>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<Vec<u8>> = keys.iter().map(|&key| entry_key(key)).collect();
        let raws = get_many(&self.conn, names.iter().map(Vec::as_slice)).await?;
        Ok(keys
            .iter()
            .zip(raws)
            .map(|(&key, raw)| raw.map(|bytes| self.decode(key, bytes)))
            .collect())
    }

    /// Runs one of the store's scripts and decodes its reply.
    async fn run<T>(
        &self,
        invocation: ScriptInvocation<'_>,
        what: &'static str,
        decode: fn(Value) -> std::result::Result<T, String>,
    ) -> Result<T> {
        let reply: Value = self
            .conn
            .script(&invocation, what)
            .await
            .map_err(Failure::into_store)?;
        decode(reply).map_err(|message| Failure::protocol(what, message).into_store())
    }

    /// `put`, or with `release` the put-and-release script.
    async fn do_put(
        &self,
        key: Key<'_>,
        put: Put,
        release: Option<ClaimToken>,
    ) -> Result<PutOutcome> {
        let then = release.map_or(AfterPut::Nothing, AfterPut::Release);
        let invocation = self.put_invocation(key, put, then)?;
        let reply = self.run(invocation, "put script", PutReply::decode).await?;
        Ok(put_outcome(reply))
    }

    /// The put-and-claim script: the claim is asked for only once the entry is written.
    async fn do_put_and_claim(
        &self,
        key: Key<'_>,
        put: Put,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<(PutOutcome, Option<ClaimOutcome>)> {
        self.check_eviction_once().await;
        let token = ClaimToken::random();
        let (now_text, until, px) = self.claim_terms(now, ttl);
        let then = AfterPut::Claim {
            token,
            now: &now_text,
            until: &until,
            px,
        };
        let invocation = self.put_invocation(key, put, then)?;
        let what = "put-and-claim script";
        let (reply, claim) = self
            .run(invocation, what, PutReply::decode_with_claim)
            .await?;
        Ok((put_outcome(reply), claim.map(|c| claim_outcome(c, token))))
    }

    /// What a claim at `now` for `ttl` tells the scripts: `now` and the claim's end as
    /// [`time_text`], and the claim key's PX expiry.
    fn claim_terms(&self, now: Timestamp, ttl: Duration) -> (String, String, u64) {
        let until = now.saturating_add(ttl);
        let px = px(ttl.saturating_add(self.expiry_grace));
        (time_text(now), time_text(until), px)
    }

    /// The `put` script's call for `put`, then `then`.
    fn put_invocation(
        &self,
        key: Key<'_>,
        put: Put,
        then: AfterPut<'_>,
    ) -> Result<ScriptInvocation<'_>> {
        let Put {
            entry,
            condition,
            ttl,
        } = put;
        let envelope = encode_envelope(&entry).ok_or_else(|| {
            Error::store(
                BACKEND,
                "the redis store holds bytes: it cannot store a live object",
            )
        })?;
        let expected = match condition {
            PutCondition::Always => None,
            PutCondition::IfGeneration(g) => Some(g),
        };
        let px = px(ttl.saturating_add(self.expiry_grace));
        let channel = self.announce.then(|| changes::channel(key.prefix()));
        let announce = channel.as_deref().map(|c| (c, entry.is_tombstone()));
        Ok(self
            .scripts
            .put(key, expected, envelope, px, announce, then))
    }

    async fn do_claim(&self, key: Key<'_>, now: Timestamp, ttl: Duration) -> Result<ClaimOutcome> {
        let mut outcomes = self.claim_group(&[key], now, ttl).await?;
        Ok(outcomes.remove(0))
    }

    /// The claims of `keys`, one script per group: [`CLAIMS_PER_SCRIPT`] keys on one Redis; on
    /// a cluster one key per script, as a script's keys must share a hash slot (the scripts go
    /// out together on the connection all the same).
    async fn do_claim_many(
        &self,
        keys: &[Key<'_>],
        now: Timestamp,
        ttl: Duration,
    ) -> Vec<Result<ClaimOutcome>> {
        let size = if self.conn.is_cluster() {
            1
        } else {
            CLAIMS_PER_SCRIPT
        };
        let groups = join_all(
            keys.chunks(size)
                .map(|group| self.claim_group(group, now, ttl)),
        )
        .await;
        let mut outcomes = Vec::with_capacity(keys.len());
        for (result, group) in groups.into_iter().zip(keys.chunks(size)) {
            match result {
                Ok(group) => outcomes.extend(group.into_iter().map(Ok)),
                Err(error) => outcomes.extend(group.iter().map(|_| Err(error.clone()))),
            }
        }
        outcomes
    }

    /// One run of the claim script over `keys` (in one hash slot on a cluster).
    async fn claim_group(
        &self,
        keys: &[Key<'_>],
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Vec<ClaimOutcome>> {
        self.check_eviction_once().await;
        let claims: Vec<(Key<'_>, ClaimToken)> = keys
            .iter()
            .map(|&key| (key, ClaimToken::random()))
            .collect();
        let (now_text, until, px) = self.claim_terms(now, ttl);
        let invocation = self.scripts.claim(&claims, &now_text, &until, px);
        let what = "claim script";
        let reply: Value = self
            .conn
            .script(&invocation, what)
            .await
            .map_err(Failure::into_store)?;
        let replies = ClaimReply::decode_many(reply, claims.len())
            .map_err(|message| Failure::protocol(what, message).into_store())?;
        Ok(replies
            .into_iter()
            .zip(claims)
            .map(|(reply, (_, token))| claim_outcome(reply, token))
            .collect())
    }

    async fn do_release(&self, key: Key<'_>, token: ClaimToken, release: Release) -> Result<()> {
        let (mode, record, keep) = match release {
            Release::Refreshed => (ReleaseMode::Refreshed, String::new(), Duration::ZERO),
            Release::Abandoned => (ReleaseMode::Abandoned, String::new(), Duration::ZERO),
            Release::Failed {
                failures,
                retry_after,
                forget_at,
            } => {
                // No `now` here: `retry_after` is at most one backoff ahead of the caller's
                // clock and `forget_at` a maximal backoff after it, so twice their distance
                // outlives `forget_at`; scripts compare `forget_at` with callers' clocks.
                let keep = forget_at.since(retry_after).saturating_mul(2);
                let record = failure_record(failures, retry_after, forget_at);
                (ReleaseMode::Failed, record, keep)
            }
        };
        let px = px(keep.saturating_add(self.expiry_grace));
        let invocation = self.scripts.release(key, token, mode, (&record, px));
        self.run(invocation, "release script", |_| Ok(())).await
    }

    async fn do_tag_states(&self, prefix: &str, tags: &[&str]) -> Result<TagStates> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(tag_clock_key(prefix));
        for tag in tags {
            cmd.arg(tag_key(prefix, tag));
        }
        let reply: Vec<Option<Vec<u8>>> = self
            .conn
            .query(&cmd, "MGET")
            .await
            .map_err(Failure::into_store)?;
        if reply.len() != tags.len() + 1 {
            let message = format!("{} replies to {} keys", reply.len(), tags.len() + 1);
            return Err(Failure::protocol("MGET", message).into_store());
        }
        let mut reply = reply.into_iter();
        let clock = reply
            .next()
            .flatten()
            .and_then(|c| std::str::from_utf8(&c).ok()?.parse().ok())
            .unwrap_or(0);
        let states = reply
            .map(|record| record.map_or_else(TagState::default, |r| parse_tag_record(&r)))
            .collect();
        Ok(TagStates::new(clock, states))
    }

    async fn do_bump_tag(&self, prefix: &str, tag: &str, action: TagAction) -> Result<TagState> {
        let channel = self.announce.then(|| changes::channel(prefix));
        let invocation =
            self.scripts
                .tag(prefix, tag, action == TagAction::Delete, channel.as_deref());
        self.run(invocation, "tag script", |reply| {
            let Value::Array(items) = &reply else {
                return Err(format!("{reply:?}"));
            };
            match items.as_slice() {
                [invalidated, deleted] => match (u64_of(invalidated), u64_of(deleted)) {
                    (Some(i), Some(d)) => Ok(TagState::new(i, d)),
                    _ => Err(format!("{reply:?}")),
                },
                _ => Err(format!("{reply:?}")),
            }
        })
        .await
    }

    async fn do_claim_state(&self, key: Key<'_>, now: Timestamp) -> Result<ClaimState> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(claim_key(key)).arg(fail_key(key));
        let reply: Vec<Option<String>> = self
            .conn
            .query(&cmd, "MGET")
            .await
            .map_err(Failure::into_store)?;
        let mut reply = reply.into_iter();
        let (claim, fail) = (reply.next().flatten(), reply.next().flatten());
        let mut state = ClaimState {
            claim: claim.and_then(|record| parse_claim(&record, now)),
            ..ClaimState::default()
        };
        if let Some((failures, retry_after)) = fail.and_then(|record| parse_failure(&record, now)) {
            state.failures = failures;
            state.retry_after = Some(retry_after);
        }
        Ok(state)
    }
}

/// What a `put` script's reply says of the write.
fn put_outcome(reply: PutReply) -> PutOutcome {
    match reply {
        PutReply::Written(generation) => PutOutcome::Written { generation },
        PutReply::Discarded(current) => PutOutcome::Discarded { current },
    }
}

/// What a claim's reply says, for the claim `token` asked for.
fn claim_outcome(reply: ClaimReply, token: ClaimToken) -> ClaimOutcome {
    match reply {
        ClaimReply::Won { failures } => ClaimOutcome::Won {
            token,
            failures: clamp_u32(failures),
        },
        ClaimReply::Held { until } => ClaimOutcome::Held {
            until: Timestamp::from_millis(until),
        },
        ClaimReply::BackingOff {
            retry_after,
            failures,
        } => ClaimOutcome::BackingOff {
            retry_after: Timestamp::from_millis(retry_after),
            failures: clamp_u32(failures),
        },
    }
}

/// The warning for Redis memory settings that let claims be evicted, if they do.
fn eviction_warning(maxmemory: u64, policy: &str) -> Option<String> {
    if maxmemory == 0 || policy == "noeviction" {
        return None;
    }
    Some(format!(
        "Redis evicts keys when it reaches maxmemory ({maxmemory} bytes, maxmemory-policy \
         `{policy}`): refresh claims may be evicted while their refresh runs, and each evicted \
         claim can cost one more fetch of a stale key per worker process. Safe settings: \
         maxmemory-policy noeviction, or no maxmemory limit"
    ))
}

impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(RedisStore::ping(self))
    }

    fn watch(&self, prefix: &str) -> Option<Changes> {
        let (client, options) = self.watcher.clone()?;
        Some(changes::watch(client, options, prefix))
    }

    fn get<'a>(&'a self, key: Key<'a>) -> BoxFuture<'a, Result<Option<Entry>>> {
        Box::pin(self.do_get(key))
    }

    fn get_many<'a>(&'a self, keys: &'a [Key<'a>]) -> BoxFuture<'a, Result<Vec<Option<Entry>>>> {
        Box::pin(self.do_get_many(keys))
    }

    fn put<'a>(&'a self, key: Key<'a>, put: Put) -> BoxFuture<'a, Result<PutOutcome>> {
        Box::pin(self.do_put(key, put, None))
    }

    fn put_and_release<'a>(
        &'a self,
        key: Key<'a>,
        put: Put,
        token: ClaimToken,
    ) -> BoxFuture<'a, Result<PutOutcome>> {
        Box::pin(self.do_put(key, put, Some(token)))
    }

    fn claim<'a>(
        &'a self,
        key: Key<'a>,
        now: Timestamp,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<ClaimOutcome>> {
        Box::pin(self.do_claim(key, now, ttl))
    }

    fn put_and_claim<'a>(
        &'a self,
        key: Key<'a>,
        put: Put,
        now: Timestamp,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(PutOutcome, Option<ClaimOutcome>)>> {
        Box::pin(self.do_put_and_claim(key, put, now, ttl))
    }

    fn claim_many<'a>(
        &'a self,
        keys: &'a [Key<'a>],
        now: Timestamp,
        ttl: Duration,
    ) -> BoxFuture<'a, Vec<Result<ClaimOutcome>>> {
        Box::pin(self.do_claim_many(keys, now, ttl))
    }

    fn release<'a>(
        &'a self,
        key: Key<'a>,
        token: ClaimToken,
        release: Release,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.do_release(key, token, release))
    }

    fn claim_state<'a>(
        &'a self,
        key: Key<'a>,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<ClaimState>> {
        Box::pin(self.do_claim_state(key, now))
    }

    fn tag_states<'a>(
        &'a self,
        prefix: &'a str,
        tags: &'a [&'a str],
    ) -> BoxFuture<'a, Result<TagStates>> {
        Box::pin(self.do_tag_states(prefix, tags))
    }

    fn bump_tag<'a>(
        &'a self,
        prefix: &'a str,
        tag: &'a str,
        action: TagAction,
    ) -> BoxFuture<'a, Result<TagState>> {
        Box::pin(self.do_bump_tag(prefix, tag, action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_settings_that_evict_are_warned_about() {
        assert_eq!(eviction_warning(0, "allkeys-lru"), None);
        assert_eq!(eviction_warning(1 << 20, "noeviction"), None);
        let warning = eviction_warning(1 << 20, "volatile-ttl").unwrap();
        assert!(warning.contains("`volatile-ttl`"), "{warning}");
        assert!(warning.contains("noeviction"), "{warning}");
    }
}
