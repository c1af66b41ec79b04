//! The story the demo tells, one function per chapter: cold cache, while the fetch runs, fresh
//! hits, a stale burst, refreshed.

use std::time::Duration;

use cacheback::Freshness;

use crate::BoxError;
use crate::script::Script;
use crate::table::{Row, Secs, Summary};

/// The script's knobs (the smoke test shrinks them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScriptConfig {
    pub(crate) upstream_delay: Duration,
    pub(crate) lifetime: Duration,
    pub(crate) burst: usize,
}

/// Tells the whole story against a running server and prints the summary.
pub(crate) async fn tell(script: Script<'_>, config: &ScriptConfig) -> Result<Summary, BoxError> {
    let mut story = Story {
        script,
        config: *config,
        // How long any one wait may take before the demo gives up.
        patience: config.upstream_delay.saturating_mul(3)
            + config.lifetime
            + Duration::from_secs(10),
    };
    story.script.open_connections(config.burst).await?;
    story.introduce();
    story.cold_cache().await?;
    story.while_the_fetch_runs().await?;
    let upstream_calls = story.fresh_hits().await?;
    story.stale_burst(upstream_calls).await?;
    story.refreshed().await?;
    let summary = story.script.into_summary();
    summary.print(config.upstream_delay);
    Ok(summary)
}

struct Story<'a> {
    script: Script<'a>,
    config: ScriptConfig,
    patience: Duration,
}

impl Story<'_> {
    fn introduce(&self) {
        let (url, user) = (&self.script.url, &self.script.user);
        println!("cacheback demo: GET {url}  (in-memory store, in-process refresh worker)");
        println!(
            "The upstream call fetch_user_tweets(\"{user}\") takes {}. Its result is fresh for {} \
             (lifetime),\nthen stale: still served at once while one background refresh replaces \
             it.",
            Secs(self.config.upstream_delay),
            Secs(self.config.lifetime),
        );
        println!();
        println!(
            "x-cache: the server's answer (\"refreshed\": a hit with newer tweets than any earlier \
             reply).\nlatency: measured by the client over keep-alive connections. upstream: calls \
             so far. age: Age header."
        );
        println!();
        Row::print_heading();
    }

    /// 1. The first request is a miss: an empty answer at once, one background fetch queued.
    async fn cold_cache(&mut self) -> Result<(), BoxError> {
        let user = self.script.user.clone();
        self.script.step(
            "1. Cold cache",
            &format!(
                "Nobody has asked for {user} yet: the reader gets an empty list at once, and ONE \
                 background\nfetch is queued (fetch_on_miss = false, like the original \
                 django-async-cache)."
            ),
        );
        self.script
            .request(&format!("first request for {user}"))
            .await?;
        Ok(())
    }

    /// 2. Misses while that fetch runs start no second one (the claim).
    async fn while_the_fetch_runs(&mut self) -> Result<(), BoxError> {
        let delay = self.config.upstream_delay;
        self.script.step(
            "2. While the fetch runs",
            &format!(
                "Readers still get an instant (empty) answer. The refresh claim stops them from \
                 queueing\na second {} fetch: upstream calls stay at 1.",
                Secs(delay)
            ),
        );
        for _ in 0..3 {
            tokio::time::sleep(delay / 4).await;
            self.script.request("while the fetch runs").await?;
        }
        let waited = self
            .script
            .wait_for("the background fetch", self.patience, |peek| {
                peek.is_some_and(|p| p.value.is_some())
            })
            .await?;
        self.script.note(&format!(
            "{} later the background fetch lands in the cache",
            Secs(waited)
        ));
        Ok(())
    }

    /// 3. Hits, until the value goes stale. Returns the upstream calls made so far.
    async fn fresh_hits(&mut self) -> Result<usize, BoxError> {
        self.script.step(
            "3. Fresh hits",
            "Every read is now served from the cache, in microseconds, without calling upstream.",
        );
        self.script.request("after the fetch landed").await?;
        let before = self.script.request("again").await?;
        let waited = self
            .script
            .wait_for("the tweets to go stale", self.patience, |peek| {
                peek.is_some_and(|p| p.freshness == Freshness::Stale)
            })
            .await?;
        self.script.note(&format!(
            "{} later the tweets are older than their {} lifetime: stale",
            Secs(waited),
            Secs(self.config.lifetime)
        ));
        Ok(before.upstream_calls)
    }

    /// 4. A burst of readers of the stale value: all served at once, exactly one refresh.
    async fn stale_burst(&mut self, upstream_calls: usize) -> Result<(), BoxError> {
        let burst = self.config.burst;
        let user = self.script.user.clone();
        let fetched_at = self
            .script
            .server
            .tweets
            .peek(user)
            .await?
            .map(|p| p.meta.fetched_at);
        self.script.step(
            &format!("4. Stale, and {burst} readers at once"),
            &format!(
                "All of them get the stale tweets immediately, and exactly ONE refresh runs in \
                 the background\n(upstream calls: {upstream_calls} → {}).",
                upstream_calls + 1
            ),
        );
        self.script
            .burst(burst, &format!("{burst} at once"))
            .await?;
        let waited = self
            .script
            .wait_for("the background refresh", self.patience, |peek| {
                peek.is_some_and(|p| Some(p.meta.fetched_at) != fetched_at)
            })
            .await?;
        self.script.note(&format!(
            "{} later the refresh lands; nobody waited for it",
            Secs(waited)
        ));
        Ok(())
    }

    /// 5. The next readers get the newer tweets, from the cache.
    async fn refreshed(&mut self) -> Result<(), BoxError> {
        self.script.step(
            "5. Refreshed",
            "The next reader gets the newer tweets, straight from the cache.",
        );
        self.script.request("after the refresh landed").await?;
        self.script.request("again").await?;
        Ok(())
    }
}
