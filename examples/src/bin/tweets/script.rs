//! The script's machinery: sends the requests (one at a time or in a burst), prints one table
//! row per request, and watches the cache with side-effect-free `peek`s. The story it tells is
//! in `story.rs`.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::BoxError;
use crate::client::{HttpClient, Reply, all_at_once, fetch, fetch_all_at_once, http_client};
use crate::server::Server;
use crate::table::{Latency, Row, Secs, Summary, tally};
use crate::upstream::{Tweet, unix_millis};

/// A script in progress: the connection to the server and what it has observed so far.
pub(crate) struct Script<'a> {
    pub(crate) server: &'a Server,
    client: HttpClient,
    pub(crate) url: String,
    pub(crate) user: String,
    started: Instant,
    started_unix_ms: u64,
    requests: usize,
    latencies: Vec<Duration>,
    statuses: Vec<String>,
    newest_seen: Option<u64>,
}

impl<'a> Script<'a> {
    pub(crate) fn new(server: &'a Server, user: &str) -> Self {
        Script {
            server,
            client: http_client(),
            url: format!("http://{}/tweets/{user}", server.addr),
            user: user.to_owned(),
            started: Instant::now(),
            started_unix_ms: unix_millis(),
            requests: 0,
            latencies: Vec::new(),
            statuses: Vec::new(),
            newest_seen: None,
        }
    }

    /// `hit`, `stale`, `miss` as the server said, or `refreshed` for a hit whose tweets are
    /// newer than any an earlier request saw (the background refresh landed).
    fn label(&mut self, reply: &Reply) -> String {
        let fetched = reply.fetched_at_ms();
        let newer = matches!((self.newest_seen, fetched), (Some(seen), Some(now)) if now > seen);
        if let Some(now) = fetched {
            self.newest_seen = Some(self.newest_seen.map_or(now, |seen| seen.max(now)));
        }
        if newer && reply.cache == "hit" {
            "refreshed".to_owned()
        } else {
            reply.cache.clone()
        }
    }

    /// The tweets served: how many, and when upstream produced them (seconds into the demo).
    fn tweets(&self, reply: &Reply) -> String {
        match reply.fetched_at_ms() {
            None => "none".to_owned(),
            Some(ms) => format!(
                "{}, fetched at {:.1} s",
                reply.tweets.len(),
                ms.saturating_sub(self.started_unix_ms) as f64 / 1e3
            ),
        }
    }

    fn at(&self) -> String {
        format!("{:.2} s", self.started.elapsed().as_secs_f64())
    }

    fn age(age: Option<u64>) -> String {
        age.map_or_else(|| "-".to_owned(), |a| format!("{a} s"))
    }

    pub(crate) fn step(&self, title: &str, explanation: &str) {
        println!();
        println!("  ▶ {title}");
        for line in explanation.lines() {
            println!("    {line}");
        }
    }

    pub(crate) fn note(&self, text: &str) {
        println!("    ⋯ {text}");
    }

    /// Opens `n` keep-alive connections (as browsers or a proxy would hold), so that the
    /// latencies in the table are the cache's, not TCP handshakes'. Not counted as requests.
    pub(crate) async fn open_connections(&self, n: usize) -> Result<(), BoxError> {
        let url = format!("http://{}/", self.server.addr);
        all_at_once(n, || {
            let (client, url) = (self.client.clone(), url.clone());
            async move {
                let response = client.get(url.parse()?).await?;
                response.into_body().collect().await?;
                Ok(())
            }
        })
        .await?;
        Ok(())
    }

    /// One request, printed as one row.
    pub(crate) async fn request(&mut self, what: &str) -> Result<Reply, BoxError> {
        let at = self.at();
        let reply = fetch(&self.client, &self.url).await?;
        self.requests += 1;
        self.latencies.push(reply.latency);
        let label = self.label(&reply);
        let mut tweets = self.tweets(&reply);
        if reply.refresh_triggered {
            tweets.push_str("  ← queued a refresh");
        }
        Row {
            number: &self.requests.to_string(),
            at: &at,
            request: what,
            cache: &label,
            latency: &Latency(reply.latency).to_string(),
            upstream: &reply.upstream_calls.to_string(),
            age: &Self::age(reply.age),
            tweets: &tweets,
        }
        .print();
        self.statuses.push(label);
        Ok(reply)
    }

    /// `n` requests released at the same instant, printed as one row.
    pub(crate) async fn burst(&mut self, n: usize, what: &str) -> Result<Vec<Reply>, BoxError> {
        let at = self.at();
        let replies = fetch_all_at_once(&self.client, &self.url, n).await?;
        let first = self.requests + 1;
        self.requests += n;
        let mut labels: Vec<String> = Vec::with_capacity(n);
        for reply in &replies {
            self.latencies.push(reply.latency);
            labels.push(self.label(reply));
        }
        let slowest = replies.iter().map(|r| r.latency).max().unwrap_or_default();
        let upstream = replies.iter().map(|r| r.upstream_calls).max().unwrap_or(0);
        let age = replies.iter().filter_map(|r| r.age).max();
        let triggered = replies.iter().filter(|r| r.refresh_triggered).count();
        let tweets = replies
            .iter()
            .max_by_key(|r| r.fetched_at_ms())
            .map(|r| self.tweets(r))
            .unwrap_or_default();
        Row {
            number: &format!("{first}–{}", self.requests),
            at: &at,
            request: what,
            cache: &tally(&labels, " ×"),
            latency: &format!("≤ {}", Latency(slowest)),
            upstream: &upstream.to_string(),
            age: &Self::age(age),
            tweets: &tweets,
        }
        .print();
        println!(
            "{:>5}  {:>7}  {triggered} of the {n} queued the refresh; the others found it already \
             claimed",
            "", ""
        );
        self.statuses.extend(labels);
        Ok(replies)
    }

    /// Polls the cache itself (`peek`: no side effects, no upstream call) until `done` holds.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(Option<&cacheback::Peek<Vec<Tweet>>>) -> bool,
    ) -> Result<Duration, BoxError> {
        let started = Instant::now();
        loop {
            let peek = self.server.tweets.peek(self.user.clone()).await?;
            if done(peek.as_ref()) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                return Err(format!("gave up waiting for {what} after {}", Secs(limit)).into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What the script observed.
    pub(crate) fn into_summary(self) -> Summary {
        Summary {
            requests: self.requests,
            upstream_calls: self.server.upstream.calls(),
            latencies: self.latencies,
            statuses: self.statuses,
        }
    }
}
