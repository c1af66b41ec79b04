//! [`RedisStore`]: entries, claims and failure state in Redis, shared by a fleet (feature
//! `redis`).
//!
//! # Layout
//!
//! For a key whose text is `app:job:0123…` (see [`Key`]):
//!
//! | Redis key | holds | expiry |
//! |---|---|---|
//! | `{app:job:0123…}` | the entry envelope ([`encode_envelope`]) | `PX` = until `stale_until` + grace |
//! | `{app:job:0123…}:c` | the claim: `<32-hex token>:<until ms>` | `PX` = refresh timeout + grace |
//! | `{app:job:0123…}:f` | failure state: `<failures>:<retry_after ms>:<forget_at ms>` | see [`Release::Failed`] |
//!
//! The whole key text is the hash tag, so an entry, its claim and its failure state share a
//! Redis Cluster slot and every script touches one slot. Times inside values are the callers'
//! (a [`Clock`](crate::Clock)), written as 20-digit zero-padded decimals so that scripts
//! compare them exactly as strings (Lua numbers are doubles and lose precision past 2^53);
//! the `PX` expiries only reclaim memory, they never decide freshness or claim ownership.
//!
//! # Commands
//!
//! - `get`: one plain `GET` of the entry key, and nothing else.
//! - `put`: a script that reads the current generation at byte offset 8 of the stored envelope
//!   (8 bytes, big-endian, compared and incremented as a byte string), checks the condition,
//!   writes the new envelope with `SET ... PX` and stamps the new generation into it.
//! - `claim` / `release`: scripts over the claim and failure keys; `release` deletes the claim
//!   only if the token matches.
//! - `claim_state`: one `MGET` of the claim and failure keys.
//!
//! Bytes at an entry key that are not a valid envelope (corruption, another program, an entry
//! over [`RedisStoreBuilder::max_entry_bytes`]) are returned as an entry that no job can decode,
//! so the client reads it as a miss, counts it in `cacheback_decode_errors_total`, and the next
//! refresh overwrites it. Its generation is read the same way the `put` script reads it (offset
//! 8 when the bytes start with the envelope magic and version and are long enough, else 0), so
//! that refresh's generation-checked write succeeds.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;
use redis::{Client, Script, Value};
use tracing::{debug, warn};

use crate::clock::Timestamp;
use crate::entry::{
    ENVELOPE_HEADER_LEN, Entry, EntryMeta, Payload, decode_envelope, encode_envelope,
};
use crate::error::{Chain, Error, Result};
use crate::key::Key;
use crate::redis_support::{
    self, BACKEND, Conn, ConnOptions, Failure, bytes_of, int_of, px, u64_of,
};
use crate::store::{
    ClaimOutcome, ClaimState, ClaimToken, Put, PutCondition, PutOutcome, Release, Store,
};

/// Default limit on an entry read back from Redis (value plus the 48-byte header).
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 64 << 20;

/// Default extra time Redis keeps entries and claims past their own end (clock skew between
/// processes, and a last chance for `stale_if_error`).
pub const DEFAULT_EXPIRY_GRACE: Duration = Duration::from_secs(60);

/// The envelope's first bytes: magic `CB`, format version 1.
const ENVELOPE_PREFIX: &[u8] = b"CB\x01";

/// `put` (and `put_and_release`): KEYS[1] = entry; ARGV[1] = "" (always) or the expected
/// generation as 8 big-endian bytes; ARGV[2] = the envelope; ARGV[3] = PX. Returns
/// {1, new generation} or {0, current generation}, generations as 8-byte strings.
/// With KEYS[2] = claim, KEYS[3] = fail and ARGV[4] = a token, it then also releases a
/// successful refresh's claim (if the token owns it) and clears the failure state, written or
/// discarded alike: one round trip instead of two.
const PUT_LUA: &str = r"
local function release()
  if #KEYS == 3 then
    local c = redis.call('GET', KEYS[2])
    if c and string.sub(c, 1, 32) == ARGV[4] then
      redis.call('DEL', KEYS[2])
    end
    redis.call('DEL', KEYS[3])
  end
end
local cur = redis.call('GET', KEYS[1])
local gen = '\0\0\0\0\0\0\0\0'
if cur and #cur >= 48 and string.sub(cur, 1, 3) == 'CB\1' then
  gen = string.sub(cur, 9, 16)
end
if ARGV[1] ~= '' and ARGV[1] ~= gen then
  release()
  return {0, gen}
end
local b = {string.byte(gen, 1, 8)}
local i = 8
while i >= 1 do
  if b[i] == 255 then
    b[i] = 0
    i = i - 1
  else
    b[i] = b[i] + 1
    break
  end
end
local new = string.char(unpack(b))
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SETRANGE', KEYS[1], 8, new)
release()
return {1, new}
";

/// `claim`: KEYS = claim, fail; ARGV = now, new token, until, PX (times as 20-digit strings).
/// Returns {0, failures} (won), {1, until} (held) or {2, retry_after, failures} (backing off).
const CLAIM_LUA: &str = r"
local now = ARGV[1]
local failures = '0'
local f = redis.call('GET', KEYS[2])
if f then
  local n, retry, forget = string.match(f, '^(%d+):(%d+):(%d+)$')
  if n and forget > now then
    failures = n
    if retry > now then
      return {2, retry, n}
    end
  end
end
local c = redis.call('GET', KEYS[1])
if c then
  local held_until = string.sub(c, 34)
  if held_until > now then
    return {1, held_until}
  end
end
redis.call('SET', KEYS[1], ARGV[2] .. ':' .. ARGV[3], 'PX', ARGV[4])
return {0, failures}
";

/// `release`: KEYS = claim, fail; ARGV = token, mode (r|f|a), failure record, PX.
const RELEASE_LUA: &str = r"
local c = redis.call('GET', KEYS[1])
if c and string.sub(c, 1, 32) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
if ARGV[2] == 'r' then
  redis.call('DEL', KEYS[2])
elseif ARGV[2] == 'f' then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
end
return 1
";

/// A store in Redis, shared by every web process and worker of a fleet. See the
/// [module docs](self) for the layout and the commands it sends.
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
    /// Whether Redis's eviction settings were looked at (once, at the first claim).
    eviction_checked: Arc<AtomicBool>,
    max_entry_bytes: usize,
    expiry_grace: Duration,
    scripts: Scripts,
}

#[derive(Clone)]
struct Scripts {
    put: Script,
    claim: Script,
    release: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            put: Script::new(PUT_LUA),
            claim: Script::new(CLAIM_LUA),
            release: Script::new(RELEASE_LUA),
        }
    }
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

enum Source {
    Url(String),
    Client(Box<Client>),
    Manager(Box<ConnectionManager>),
}

/// Builds a [`RedisStore`].
#[must_use]
pub struct RedisStoreBuilder {
    source: Source,
    options: ConnOptions,
    max_entry_bytes: usize,
    expiry_grace: Duration,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("options", &self.options)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .field("expiry_grace", &self.expiry_grace)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    fn new(source: Source) -> Self {
        RedisStoreBuilder {
            source,
            options: ConnOptions::default(),
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            expiry_grace: DEFAULT_EXPIRY_GRACE,
        }
    }

    /// Bound on one call, waiting for a reconnection included (default 1 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.options.command_timeout = timeout;
        self
    }

    /// Bound on one connection attempt (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// Entries read back larger than this are not decoded: they read as a miss (default
    /// 64 MiB). Keep it above the client's
    /// [`max_value_bytes`](crate::CachebackBuilder::max_value_bytes) plus 48 bytes.
    pub fn max_entry_bytes(mut self, limit: usize) -> Self {
        self.max_entry_bytes = limit;
        self
    }

    /// How much longer than needed Redis keeps an entry or a claim before expiring it
    /// (default 60 s): covers clock skew between the processes of a fleet.
    pub fn expiry_grace(mut self, grace: Duration) -> Self {
        self.expiry_grace = grace;
        self
    }

    /// Builds the store. Does not connect: the first call does.
    pub fn build(self) -> Result<RedisStore> {
        self.options.validate()?;
        if self.max_entry_bytes < ENVELOPE_HEADER_LEN {
            return Err(Error::config(format!(
                "max_entry_bytes must be at least {ENVELOPE_HEADER_LEN}"
            )));
        }
        let conn = match self.source {
            Source::Url(url) => Conn::lazy(
                redis_support::open_client(&url)?,
                self.options,
                Duration::ZERO,
            )?,
            Source::Client(client) => Conn::lazy(*client, self.options, Duration::ZERO)?,
            Source::Manager(manager) => Conn::from_manager(*manager, self.options),
        };
        Ok(RedisStore {
            conn,
            eviction_checked: Arc::new(AtomicBool::new(false)),
            max_entry_bytes: self.max_entry_bytes,
            expiry_grace: self.expiry_grace,
            scripts: Scripts::new(),
        })
    }
}

impl RedisStore {
    /// A store at `url` with the default options: `redis://host:port/db`, `rediss://` (TLS),
    /// `redis://user:password@host`, `redis+unix:///path/to/socket` or `unix:///path`.
    pub fn from_url(url: &str) -> Result<RedisStore> {
        Self::builder(url).build()
    }

    /// Configures a store at `url` (see [`RedisStore::from_url`]).
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Source::Url(url.to_owned()))
    }

    /// Configures a store on a `redis::Client` the application built (custom TLS, ...).
    pub fn from_client(client: redis::Client) -> RedisStoreBuilder {
        // A `rediss://` client needs rustls' crypto provider before it connects.
        redis_support::install_crypto_provider();
        RedisStoreBuilder::new(Source::Client(Box::new(client)))
    }

    /// Configures a store on an existing `redis::aio::ConnectionManager` (shared with the
    /// application's own Redis traffic). Its own timeouts and reconnection settings apply, and
    /// the builder's timeouts bound every call on top.
    pub fn from_connection_manager(manager: ConnectionManager) -> RedisStoreBuilder {
        redis_support::install_crypto_provider();
        RedisStoreBuilder::new(Source::Manager(Box::new(manager)))
    }

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
        let info: String = self
            .conn
            .query(&cmd, "INFO")
            .await
            .map_err(Failure::into_store)?;
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let maxmemory = field("maxmemory")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(eviction_warning(
            maxmemory,
            field("maxmemory_policy").unwrap_or("noeviction"),
        ))
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
        let mut head = [0u8; 16];
        let n = bytes.len().min(16);
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
        let mut cmd = redis::cmd("GET");
        cmd.arg(entry_key(key));
        let reply: Value = self
            .conn
            .query(&cmd, "GET")
            .await
            .map_err(Failure::into_store)?;
        match reply {
            Value::Nil => Ok(None),
            Value::BulkString(b) => Ok(Some(self.decode(key, Bytes::from(b)))),
            other => Err(Failure::protocol("GET", format!("{other:?}")).into_store()),
        }
    }

    /// `put`, or with `release` the put-and-release script.
    async fn do_put(
        &self,
        key: Key<'_>,
        put: Put,
        release: Option<ClaimToken>,
    ) -> Result<PutOutcome> {
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
        let expected: Vec<u8> = match condition {
            PutCondition::Always => Vec::new(),
            PutCondition::IfGeneration(g) => g.to_be_bytes().to_vec(),
        };
        let mut invocation = self.scripts.put.key(entry_key(key));
        if release.is_some() {
            invocation.key(claim_key(key)).key(fail_key(key));
        }
        invocation
            .arg(expected)
            .arg(envelope)
            .arg(px(ttl.saturating_add(self.expiry_grace)));
        if let Some(token) = release {
            invocation.arg(token.to_string());
        }
        let reply: Vec<Value> = self
            .conn
            .script(&invocation, "put script")
            .await
            .map_err(Failure::into_store)?;
        let (written, generation) = match <[Value; 2]>::try_from(reply) {
            Ok([flag, generation]) => (int_of(&flag), bytes_of(generation)),
            Err(other) => {
                return Err(Failure::protocol("put script", format!("{other:?}")).into_store());
            }
        };
        let generation = generation
            .and_then(|g| <[u8; 8]>::try_from(g).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| Failure::protocol("put script", "bad generation").into_store())?;
        match written {
            Some(1) => Ok(PutOutcome::Written { generation }),
            Some(0) => Ok(PutOutcome::Discarded {
                current: generation,
            }),
            other => Err(Failure::protocol("put script", format!("flag {other:?}")).into_store()),
        }
    }

    async fn do_claim(&self, key: Key<'_>, now: Timestamp, ttl: Duration) -> Result<ClaimOutcome> {
        self.check_eviction_once().await;
        let token = ClaimToken::random();
        let until = now.saturating_add(ttl);
        let mut invocation = self.scripts.claim.key(claim_key(key));
        invocation
            .key(fail_key(key))
            .arg(time_text(now))
            .arg(token.to_string())
            .arg(time_text(until))
            .arg(px(ttl.saturating_add(self.expiry_grace)));
        let reply: Vec<Value> = self
            .conn
            .script(&invocation, "claim script")
            .await
            .map_err(Failure::into_store)?;
        let bad = |what: &str| Failure::protocol("claim script", what.to_owned()).into_store();
        let mut reply = reply.into_iter();
        let flag = reply.next().as_ref().and_then(int_of);
        let mut number = || reply.next().as_ref().and_then(u64_of);
        match flag {
            Some(0) => Ok(ClaimOutcome::Won {
                token,
                failures: number().map_or(0, clamp_u32),
            }),
            Some(1) => Ok(ClaimOutcome::Held {
                until: Timestamp::from_millis(number().ok_or_else(|| bad("claim expiry"))?),
            }),
            Some(2) => {
                let retry_after = Timestamp::from_millis(number().ok_or_else(|| bad("retry"))?);
                Ok(ClaimOutcome::BackingOff {
                    retry_after,
                    failures: number().map_or(0, clamp_u32),
                })
            }
            _ => Err(bad("flag")),
        }
    }

    async fn do_release(&self, key: Key<'_>, token: ClaimToken, release: Release) -> Result<()> {
        let (mode, record, keep) = match release {
            Release::Refreshed => ("r", String::new(), Duration::ZERO),
            Release::Abandoned => ("a", String::new(), Duration::ZERO),
            Release::Failed {
                failures,
                retry_after,
                forget_at,
            } => {
                // No `now` here: `retry_after` is at most one backoff ahead of the caller's
                // clock and `forget_at` a maximal backoff after it, so twice their distance
                // outlives `forget_at`; scripts compare `forget_at` with callers' clocks.
                let keep = forget_at.since(retry_after).saturating_mul(2);
                let record = format!(
                    "{failures}:{}:{}",
                    time_text(retry_after),
                    time_text(forget_at)
                );
                ("f", record, keep)
            }
        };
        let mut invocation = self.scripts.release.key(claim_key(key));
        invocation
            .key(fail_key(key))
            .arg(token.to_string())
            .arg(mode)
            .arg(record)
            .arg(px(keep.saturating_add(self.expiry_grace)));
        let _: Value = self
            .conn
            .script(&invocation, "release script")
            .await
            .map_err(Failure::into_store)?;
        Ok(())
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
        let mut state = ClaimState::default();
        if let Some(claim) = claim
            && let Some((token, until)) = claim.split_once(':')
            && let (Ok(token), Ok(until)) = (u128::from_str_radix(token, 16), until.parse())
        {
            let until = Timestamp::from_millis(until);
            if until > now {
                state.claim = Some((ClaimToken::from_u128(token), until));
            }
        }
        if let Some(fail) = fail {
            let mut parts = fail.split(':').map(str::parse::<u64>);
            if let (Some(Ok(failures)), Some(Ok(retry)), Some(Ok(forget))) =
                (parts.next(), parts.next(), parts.next())
                && Timestamp::from_millis(forget) > now
            {
                state.failures = clamp_u32(failures);
                state.retry_after = Some(Timestamp::from_millis(retry));
            }
        }
        Ok(state)
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

/// The entry for bytes (`head`: their first 16 bytes; `len`: their length) that are not a
/// valid envelope: no job decodes it (codec id 0 is no
/// codec), it is already expired (so `invalidate` leaves it alone), and its generation is the
/// one the `put` script sees in the same bytes.
fn undecodable(head: &[u8], len: usize) -> Entry {
    let generation =
        if len >= ENVELOPE_HEADER_LEN && head.len() >= 16 && head.starts_with(ENVELOPE_PREFIX) {
            let mut g = [0u8; 8];
            g.copy_from_slice(&head[8..16]);
            u64::from_be_bytes(g)
        } else {
            0
        };
    let mut meta = EntryMeta::new(Timestamp::EPOCH, Timestamp::EPOCH, Timestamp::EPOCH);
    meta.generation = generation;
    Entry::new(
        meta,
        Payload::Encoded {
            codec: 0,
            bytes: Bytes::new(),
        },
    )
}

/// `{<key text>}<suffix>`, written by hand: this runs on every read (`format!` of the 32 hex
/// digits costs about as much as the rest of the key handling together).
fn tagged(key: Key<'_>, suffix: &str) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let (prefix, job) = (key.prefix().as_bytes(), key.job().as_bytes());
    let mut out = Vec::with_capacity(prefix.len() + job.len() + 36 + suffix.len());
    out.push(b'{');
    out.extend_from_slice(prefix);
    out.push(b':');
    out.extend_from_slice(job);
    out.push(b':');
    let digest = key.digest();
    for shift in (0..32).rev() {
        out.push(HEX[((digest >> (shift * 4)) & 0xf) as usize]);
    }
    out.push(b'}');
    out.extend_from_slice(suffix.as_bytes());
    out
}

fn entry_key(key: Key<'_>) -> Vec<u8> {
    tagged(key, "")
}

fn claim_key(key: Key<'_>) -> Vec<u8> {
    tagged(key, ":c")
}

fn fail_key(key: Key<'_>) -> Vec<u8> {
    tagged(key, ":f")
}

/// A timestamp as 20 zero-padded digits: compares as a string the way it compares as a number.
fn time_text(t: Timestamp) -> String {
    format!("{:020}", t.as_millis())
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(RedisStore::ping(self))
    }

    fn get<'a>(&'a self, key: Key<'a>) -> BoxFuture<'a, Result<Option<Entry>>> {
        Box::pin(self.do_get(key))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        for digest in [
            0,
            0xabc,
            u128::MAX,
            0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        ] {
            let key = Key::new("app", "job.v2", digest);
            let text = key.to_string();
            assert_eq!(entry_key(key), format!("{{{text}}}").into_bytes());
            assert_eq!(claim_key(key), format!("{{{text}}}:c").into_bytes());
            assert_eq!(fail_key(key), format!("{{{text}}}:f").into_bytes());
        }
    }

    #[test]
    fn only_settings_that_evict_are_warned_about() {
        assert_eq!(eviction_warning(0, "allkeys-lru"), None);
        assert_eq!(eviction_warning(1 << 20, "noeviction"), None);
        let warning = eviction_warning(1 << 20, "volatile-ttl").unwrap();
        assert!(warning.contains("`volatile-ttl`"), "{warning}");
        assert!(warning.contains("noeviction"), "{warning}");
    }

    #[test]
    fn times_compare_as_text() {
        let (a, b) = (Timestamp::from_millis(999), Timestamp::from_millis(1000));
        assert!(time_text(a) < time_text(b));
        assert!(time_text(Timestamp::MAX) > time_text(b));
        assert_eq!(time_text(Timestamp::MAX).len(), 20);
    }

    #[test]
    fn garbage_has_the_generation_the_script_sees() {
        assert_eq!(undecodable(b"garbage", 7).meta.generation, 0);
        let mut header = [0u8; ENVELOPE_HEADER_LEN];
        header[..3].copy_from_slice(ENVELOPE_PREFIX);
        header[15] = 7;
        header[4] = 0xff; // unknown flags: not a valid envelope, but the header is readable
        assert_eq!(undecodable(&header[..16], 48).meta.generation, 7);
        assert_eq!(
            undecodable(&header[..16], 47).meta.generation,
            0,
            "too short"
        );
        assert!(!undecodable(&header[..16], 48).is_tombstone());
    }
}
