//! The slow upstream (the seed's fictional `twitter` library) and the job that wraps it.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cacheback::{Job, Policy};
use serde::{Deserialize, Serialize};

/// One fake tweet. `fetched_at_ms` (Unix milliseconds) lets a reader tell versions apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tweet {
    pub(crate) id: u64,
    pub(crate) text: String,
    pub(crate) fetched_at_ms: u64,
}

/// The fictional `twitter` library of the seed: slow, and counting its calls.
#[derive(Debug)]
pub(crate) struct Upstream {
    delay: Duration,
    calls: AtomicUsize,
}

impl Upstream {
    pub(crate) fn new(delay: Duration) -> Self {
        Upstream {
            delay,
            calls: AtomicUsize::new(0),
        }
    }

    /// How many times `fetch_user_tweets` has been called (counted when a call starts).
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The expensive read: takes `delay`, returns a few tweets stamped with the fetch time.
    pub(crate) async fn fetch_user_tweets(&self, user: &str) -> Vec<Tweet> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::info!(user, call, delay = ?self.delay, "upstream: fetch_user_tweets started");
        tokio::time::sleep(self.delay).await;
        let now = unix_millis();
        let stamp = clock_time(now);
        let texts = [
            "my service answers every read from cache now",
            "stale-while-revalidate is underrated",
            "nobody waited for this tweet",
        ];
        tracing::info!(user, call, "upstream: fetch_user_tweets done");
        texts
            .iter()
            .zip(1..)
            .map(|(text, n)| Tweet {
                id: call as u64 * 100 + n,
                text: format!("@{user}: {text} (fetched {stamp} UTC, upstream call #{call})"),
                fetched_at_ms: now,
            })
            .collect()
    }
}

/// The seed's `class UserTweets(AsyncCacheJob)`: `fetch` is the slow call, and the policy says
/// how long its result is fresh and that a miss must not wait for it.
#[derive(Debug)]
pub(crate) struct UserTweets {
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) lifetime: Duration,
}

impl Job for UserTweets {
    type Args = String;
    type Value = Vec<Tweet>;
    type Error = Infallible;

    fn name(&self) -> &str {
        "user_tweets"
    }

    fn policy(&self) -> Policy {
        Policy::default()
            .lifetime(self.lifetime)
            // Like the seed: a miss returns an empty list at once and fetches in the background.
            .fetch_on_miss(false)
            .fetch_timeout(
                self.upstream
                    .delay
                    .saturating_mul(2)
                    .max(Duration::from_secs(30)),
            )
    }

    async fn fetch(&self, user: String) -> Result<Vec<Tweet>, Infallible> {
        Ok(self.upstream.fetch_user_tweets(&user).await)
    }
}

pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
fn clock_time(unix_ms: u64) -> String {
    let secs = unix_ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        unix_ms % 1000
    )
}
