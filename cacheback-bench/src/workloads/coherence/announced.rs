//! `RedisStore` as a reader process's client uses it, with one addition: every announcement
//! the store hands the client's near tier is shown to a callback first. The near tier applies
//! it (drops the copy) in the same step, so the callback's clock reading is when the reader's
//! near copy went. Everything else is the real store, call for call.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cacheback::RedisStore;
use cacheback::clock::Timestamp;
use cacheback::store::{
    Change, Changes, ClaimOutcome, ClaimState, ClaimToken, Entry, Key, Put, PutOutcome, Release,
    Store, TagAction, TagState, TagStates,
};
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;

/// What sees each announcement before the near tier applies it.
pub(super) type Seen = Arc<dyn Fn(&Change) + Send + Sync>;

/// A `RedisStore` whose announcements pass `seen` on their way to the near cache.
pub(super) struct Announced {
    inner: RedisStore,
    seen: Seen,
}

impl Announced {
    /// `inner`, with its announcements shown to `seen`.
    pub(super) fn new(inner: RedisStore, seen: Seen) -> Self {
        Announced { inner, seen }
    }
}

impl fmt::Debug for Announced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Announced")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Store for Announced {
    fn backend(&self) -> &'static str {
        Store::backend(&self.inner)
    }

    fn ping(&self) -> BoxFuture<'_, cacheback::Result<()>> {
        Store::ping(&self.inner)
    }

    fn watch(&self, prefix: &str) -> Option<Changes> {
        let seen = Arc::clone(&self.seen);
        let changes = Store::watch(&self.inner, prefix)?;
        Some(changes.inspect(move |change| seen(change)).boxed())
    }

    fn get<'a>(&'a self, key: Key<'a>) -> BoxFuture<'a, cacheback::Result<Option<Entry>>> {
        Store::get(&self.inner, key)
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [Key<'a>],
    ) -> BoxFuture<'a, cacheback::Result<Vec<Option<Entry>>>> {
        Store::get_many(&self.inner, keys)
    }

    fn put<'a>(&'a self, key: Key<'a>, put: Put) -> BoxFuture<'a, cacheback::Result<PutOutcome>> {
        Store::put(&self.inner, key, put)
    }

    fn claim<'a>(
        &'a self,
        key: Key<'a>,
        now: Timestamp,
        ttl: Duration,
    ) -> BoxFuture<'a, cacheback::Result<ClaimOutcome>> {
        Store::claim(&self.inner, key, now, ttl)
    }

    fn claim_many<'a>(
        &'a self,
        keys: &'a [Key<'a>],
        now: Timestamp,
        ttl: Duration,
    ) -> BoxFuture<'a, Vec<cacheback::Result<ClaimOutcome>>> {
        Store::claim_many(&self.inner, keys, now, ttl)
    }

    fn release<'a>(
        &'a self,
        key: Key<'a>,
        token: ClaimToken,
        release: Release,
    ) -> BoxFuture<'a, cacheback::Result<()>> {
        Store::release(&self.inner, key, token, release)
    }

    fn put_and_release<'a>(
        &'a self,
        key: Key<'a>,
        put: Put,
        token: ClaimToken,
    ) -> BoxFuture<'a, cacheback::Result<PutOutcome>> {
        Store::put_and_release(&self.inner, key, put, token)
    }

    fn claim_state<'a>(
        &'a self,
        key: Key<'a>,
        now: Timestamp,
    ) -> BoxFuture<'a, cacheback::Result<ClaimState>> {
        Store::claim_state(&self.inner, key, now)
    }

    fn tag_states<'a>(
        &'a self,
        prefix: &'a str,
        tags: &'a [&'a str],
    ) -> BoxFuture<'a, cacheback::Result<TagStates>> {
        Store::tag_states(&self.inner, prefix, tags)
    }

    fn bump_tag<'a>(
        &'a self,
        prefix: &'a str,
        tag: &'a str,
        action: TagAction,
    ) -> BoxFuture<'a, cacheback::Result<TagState>> {
        Store::bump_tag(&self.inner, prefix, tag, action)
    }
}
