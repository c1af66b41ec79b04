//! The HTTP layer on Redis (`RedisStore` + `RedisQueue` drained by the client's in-process worker), on a
//! spawned `redis-server`, through real HTTP: responses stored as bytes, one revalidation per
//! stale burst, `stale-if-error`, entries that do not decode read as misses, and uncacheable
//! streams handed to the request whose fetch found them (a refresh from the queue drops them).

mod http_support;
mod support;

use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use cacheback::clock::TestClock;
use cacheback::http::CachebackLayer;
use cacheback::{Cacheback, RedisQueue, RedisStore};
use http_support::{Client, Origin, Reply, serve};
use redis::AsyncCommands;
use support::{RedisServer, eventually, unique_prefix};

const SECOND: Duration = Duration::from_secs(1);

struct Fixture {
    clock: TestClock,
    origin: std::sync::Arc<Origin>,
    client: Client,
    redis: redis::aio::MultiplexedConnection,
    prefix: String,
    _server: RedisServer,
}

async fn fixture(reply: Reply) -> Option<Fixture> {
    let server = RedisServer::start()?;
    let clock = TestClock::new();
    let prefix = unique_prefix("http");
    let cache = Cacheback::builder()
        .clock(clock.clone())
        .prefix(prefix.clone())
        .store(RedisStore::from_url(&server.url()).unwrap())
        .queue(RedisQueue::from_url(&server.url()).unwrap())
        // Refreshes through the Redis stream, run by this process's worker.
        .in_process_worker(true)
        .build()
        .unwrap();
    let origin = Origin::new(reply);
    let layer = CachebackLayer::builder(&cache)
        .name("pages")
        .build(origin.routes())
        .unwrap();
    let addr = serve(origin.routes().layer(layer)).await;
    let redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    Some(Fixture {
        clock,
        origin,
        client: Client::new(addr),
        redis,
        prefix,
        _server: server,
    })
}

impl Fixture {
    /// The Redis keys of the layer's entries.
    async fn entry_keys(&mut self) -> Vec<String> {
        let pattern = format!("{{{}:pages:*}}", self.prefix);
        let keys: Vec<String> = self.redis.keys(pattern).await.unwrap();
        keys.into_iter().filter(|k| k.ends_with('}')).collect()
    }
}

#[tokio::test]
async fn a_stale_burst_of_64_requests_makes_one_origin_call_on_redis() {
    let Some(fx) = fixture(Reply::ok("max-age=10, stale-while-revalidate=60")).await else {
        return;
    };
    let first = fx.client.get("/hot").await;
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    assert!(fx.client.get("/hot").await.cache_status().contains("hit"));
    fx.origin.body(b"v2");
    fx.clock.advance(15 * SECOND);
    let burst: Vec<_> = (0..64)
        .map(|_| {
            let client = fx.client.clone();
            tokio::spawn(async move { client.get("/hot").await })
        })
        .collect();
    for request in burst {
        let got = request.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert!(got.cache_status().contains("hit"), "{}", got.cache_status());
    }
    eventually("the refreshed response", 10 * SECOND, || async {
        fx.client.get("/hot").await.body == "v2"
    })
    .await;
    assert_eq!(
        fx.origin.calls(),
        2,
        "one fetch, one revalidation for 64 stale reads"
    );
}

#[tokio::test]
async fn binary_bodies_and_headers_survive_redis_byte_for_byte() {
    let body: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let reply = Reply {
        body: Bytes::from(body.clone()),
        ..Reply::ok("max-age=60")
            .header("content-type", "image/x-test")
            .header("x-many", "1")
            .header("x-many", "2")
    };
    let Some(fx) = fixture(reply).await else {
        return;
    };
    assert_eq!(fx.client.get("/b").await.body, body);
    let hit = fx.client.get("/b").await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(hit.body, body);
    assert_eq!(hit.headers["content-type"], "image/x-test");
    assert_eq!(hit.headers.get_all("x-many").iter().count(), 2);
    assert_eq!(fx.origin.calls(), 1);
}

#[tokio::test]
async fn a_failing_origin_is_covered_by_stale_if_error_on_redis() {
    let reply = Reply::ok("max-age=10, stale-while-revalidate=10, stale-if-error=100");
    let Some(fx) = fixture(reply).await else {
        return;
    };
    fx.client.get("/f").await;
    fx.origin.set(Reply {
        status: StatusCode::BAD_GATEWAY,
        ..Reply::ok("no-store")
    });
    fx.clock.advance(15 * SECOND);
    assert_eq!(fx.client.get("/f").await.body, "v1");
    eventually("the failed revalidation", 10 * SECOND, || async {
        fx.origin.calls() == 2
    })
    .await;
    fx.clock.advance(35 * SECOND);
    eventually("stale-if-error to be applied", 10 * SECOND, || async {
        fx.client
            .get("/f")
            .await
            .cache_status()
            .contains("stale-if-error")
    })
    .await;
    assert_eq!(fx.client.get("/f").await.body, "v1");
}

#[tokio::test]
async fn old_and_corrupt_stored_responses_read_as_misses() {
    let Some(mut fx) = fixture(Reply::ok("max-age=60")).await else {
        return;
    };
    fx.client.get("/old").await;
    let keys = fx.entry_keys().await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    // Written by an older layer: the same envelope with another schema version.
    let bytes: Vec<u8> = fx.redis.get(&keys[0]).await.unwrap();
    let mut entry = cacheback::__fuzz::decode_envelope(bytes.into(), 1 << 20).unwrap();
    entry.meta.schema_version = 0;
    let old = cacheback::__fuzz::encode_envelope(&entry).unwrap();
    let _: () = redis::cmd("SET")
        .arg(&keys[0])
        .arg(old)
        .arg("KEEPTTL")
        .query_async(&mut fx.redis)
        .await
        .unwrap();
    fx.origin.body(b"v2");
    let after_old = fx.client.get("/old").await;
    assert_eq!(after_old.body, "v2");
    assert!(
        after_old.cache_status().contains("fwd=miss"),
        "{}",
        after_old.cache_status()
    );

    // Corrupt bytes where the response was.
    let _: () = fx.redis.set(&keys[0], b"\x00garbage\xff").await.unwrap();
    fx.origin.body(b"v3");
    let after_corrupt = fx.client.get("/old").await;
    assert_eq!(after_corrupt.body, "v3");
    assert!(after_corrupt.cache_status().contains("fwd=miss"));
    assert!(
        fx.client.get("/old").await.cache_status().contains("hit"),
        "stored again"
    );
    assert_eq!(fx.origin.calls(), 3);
}

#[tokio::test]
async fn an_uncacheable_stream_is_handed_on_and_a_refresh_from_the_queue_drops_it() {
    let Some(fx) = fixture(Reply::ok("max-age=10, stale-while-revalidate=60")).await else {
        return;
    };
    let event = Bytes::from_static(b"data: 1\n\n");
    fx.client.get("/r").await;
    fx.origin
        .set(Reply::ok("no-store").streamed(vec![event.clone()], true));

    // A miss: the fetch's response is the request's, streaming.
    let mut events = fx.client.open("GET", "/events", &[]).await;
    assert_eq!(
        events.cache_status(),
        "cacheback; fwd=miss; detail=no-store"
    );
    assert_eq!(events.chunk().await.as_ref(), Some(&event));
    assert_eq!(fx.origin.calls(), 2);
    let again = fx.client.open("GET", "/events", &[]).await;
    assert_eq!(
        again.cache_status(),
        "cacheback; fwd=bypass; detail=no-store"
    );
    assert_eq!(fx.origin.calls(), 3);

    // A refresh through the Redis stream has no request to hand it to: it lets it go (the
    // two streams above are still being read).
    fx.clock.advance(15 * SECOND);
    let stale = fx.client.get("/r").await;
    assert!(stale.cache_status().contains("stale-while-revalidate"));
    eventually("the refresh to let the stream go", 10 * SECOND, || async {
        fx.origin.calls() == 4 && fx.origin.streams_dropped() == 1
    })
    .await;
    eventually("the URL marked pass", 10 * SECOND, || async {
        let open = fx.client.open("GET", "/r", &[]).await;
        open.cache_status() == "cacheback; fwd=bypass; detail=no-store"
    })
    .await;
}

/// A layer in its own "process" (client, store connection, HTTP server) on `server`.
async fn process(server: &RedisServer, prefix: &str, origin: &std::sync::Arc<Origin>) -> Client {
    let cache = Cacheback::builder()
        .prefix(prefix)
        .store(RedisStore::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    let layer = CachebackLayer::builder(&cache)
        .name("pages")
        .build(origin.routes())
        .unwrap();
    Client::new(serve(origin.routes().layer(layer)).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_url_costs_the_origin_one_call_across_two_processes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("httpfleet");
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let origin = Origin::new(Reply {
        gate: Some(std::sync::Arc::clone(&gate)),
        ..Reply::ok("max-age=60")
    });
    let (a, b) = (
        process(&server, &prefix, &origin).await,
        process(&server, &prefix, &origin).await,
    );
    let burst = |client: &Client| {
        (0..32)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.get("/cold").await })
            })
            .collect::<Vec<_>>()
    };
    // A's fetch reaches the origin (and waits at its gate), holding the URL's claim.
    let from_a = burst(&a);
    eventually("A's fetch at the origin", 10 * SECOND, || async {
        origin.calls() == 1
    })
    .await;
    // B's fetch finds the claim held and polls for A's write: two more claim scripts.
    let scripts = server.command_calls("evalsha");
    let from_b = burst(&b);
    eventually("B waiting for A's fetch", 10 * SECOND, || async {
        server.command_calls("evalsha") >= scripts + 2
    })
    .await;
    assert_eq!(origin.calls(), 1, "B did not call the origin itself");
    gate.add_permits(1);
    for request in from_a.into_iter().chain(from_b) {
        let got = request.await.unwrap();
        assert_eq!(
            (got.status, got.body.as_ref()),
            (StatusCode::OK, &b"v1"[..])
        );
        let status = got.cache_status();
        assert!(status.contains("fwd=miss"), "{status}");
    }
    assert_eq!(
        origin.calls(),
        1,
        "one origin call for 64 requests in 2 processes"
    );
}
