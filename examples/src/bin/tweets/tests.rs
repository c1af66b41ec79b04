//! The demo's claims, checked on short timings (statuses and upstream call counts only).

use std::time::Duration;

use cacheback::Freshness;

use crate::client::{HttpClient, Reply, fetch, fetch_all_at_once, http_client};
use crate::parse_duration;
use crate::script::Script;
use crate::server::{Server, ServerConfig, start_server};
use crate::story::{self, ScriptConfig};

const POLL: Duration = Duration::from_millis(5);
const MAX_POLLS: usize = 400; // 2 s at most

async fn server(delay_ms: u64, lifetime_ms: u64) -> Server {
    start_server(ServerConfig {
        port: 0,
        upstream_delay: Duration::from_millis(delay_ms),
        lifetime: Duration::from_millis(lifetime_ms),
    })
    .await
    .expect("server starts")
}

/// Requests `url` until `done` accepts a reply, checking every other reply with `meanwhile`.
async fn poll_until(
    client: &HttpClient,
    url: &str,
    done: impl Fn(&Reply) -> bool,
    meanwhile: impl Fn(&Reply),
) -> Reply {
    for _ in 0..MAX_POLLS {
        let reply = fetch(client, url).await.expect("poll");
        if done(&reply) {
            return reply;
        }
        meanwhile(&reply);
        tokio::time::sleep(POLL).await;
    }
    panic!("gave up polling {url}");
}

/// Waits (without side effects) until the user's value is stale.
async fn until_stale(server: &Server, user: &str) {
    for _ in 0..MAX_POLLS {
        let peek = server.tweets.peek(user.to_owned()).await.expect("peek");
        if peek.is_some_and(|p| p.freshness == Freshness::Stale) {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("the value never went stale");
}

/// The script's key claims, checked on statuses and upstream call counts only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn miss_then_one_fetch_then_one_refresh_for_a_stale_burst() {
    let server = server(50, 400).await;
    let client = http_client();
    let url = format!("http://{}/tweets/alice", server.addr);

    // 1. Cold: a miss with empty tweets, answered without waiting for upstream.
    let first = fetch(&client, &url).await.expect("first request");
    assert_eq!(first.cache, "miss");
    assert!(first.tweets.is_empty());
    assert!(first.refresh_triggered);

    // 2 + 3. Poll until the background fetch lands: misses meanwhile start no fetch.
    let hit = poll_until(
        &client,
        &url,
        |reply| reply.cache == "hit",
        |reply| {
            assert!(reply.upstream_calls <= 1, "a miss started a second fetch");
            assert_eq!(reply.cache, "miss");
            assert!(
                !reply.refresh_triggered,
                "the claim must stop a second trigger"
            );
        },
    )
    .await;
    assert_eq!(hit.tweets.len(), 3);
    assert_eq!(server.upstream.calls(), 1);

    // 4. Once the value is stale, a concurrent burst: all served, exactly one refresh.
    until_stale(&server, "alice").await;
    let replies = fetch_all_at_once(&client, &url, 20).await.expect("burst");
    assert!(
        replies
            .iter()
            .all(|r| (r.cache == "stale" || r.cache == "hit") && r.tweets.len() == 3),
        "every reader of a stale value is served a value: {replies:?}"
    );
    assert!(replies.iter().any(|r| r.cache == "stale"));
    assert_eq!(
        replies.iter().filter(|r| r.refresh_triggered).count(),
        1,
        "exactly one reader triggers the refresh"
    );

    // 5. Poll until the refresh lands: exactly one extra upstream call.
    let refreshed = poll_until(
        &client,
        &url,
        |reply| reply.cache == "hit" && reply.fetched_at_ms() > hit.fetched_at_ms(),
        |_| {},
    )
    .await;
    assert_eq!(refreshed.upstream_calls, 2);
    assert_eq!(server.upstream.calls(), 2);
    server.shutdown().await;
}

/// The scripted tour itself runs to the end on short timings.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_script_runs_to_the_end() {
    let server = server(40, 300).await;
    let config = ScriptConfig {
        upstream_delay: Duration::from_millis(40),
        lifetime: Duration::from_millis(300),
        burst: 10,
    };
    let summary = story::tell(Script::new(&server, "bob"), &config)
        .await
        .expect("script");
    assert_eq!(summary.requests, 18);
    assert_eq!(summary.upstream_calls, 2);
    assert_eq!(summary.statuses.first().map(String::as_str), Some("miss"));
    assert_eq!(
        summary.statuses.iter().rev().nth(1).map(String::as_str),
        Some("refreshed")
    );
    assert_eq!(summary.statuses.last().map(String::as_str), Some("hit"));
    server.shutdown().await;
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
    assert!(parse_duration("soon").is_err());
    assert!(parse_duration("-1s").is_err());
}
