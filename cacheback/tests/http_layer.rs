//! The HTTP layer on the memory store, through real HTTP: a hyper client against an axum
//! router served on loopback. Freshness runs on a `TestClock`; background refreshes are
//! waited for with bounded polling.

mod http_support;
mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use cacheback::clock::TestClock;
use cacheback::http::{CachebackLayer, CachebackLayerBuilder};
use cacheback::{Cacheback, Event, Policy};
use http_support::{Client, Open, Origin, Reply, serve};
use support::eventually;

const SECOND: Duration = Duration::from_secs(1);

struct Fixture {
    clock: TestClock,
    /// Refreshes that failed (events).
    failures: Arc<AtomicUsize>,
    origin: Arc<Origin>,
    client: Client,
    cache: Cacheback,
    layer: CachebackLayer,
    /// Requests that, when first polled, were left waiting (see [`park`]).
    parked: Arc<AtomicUsize>,
}

/// Counts the requests whose first poll leaves them waiting. With the memory store a read is
/// answered, or has started or joined its key's fetch, within that first poll: a request
/// counted here waits on a fetch.
async fn park(State(parked): State<Arc<AtomicUsize>>, request: Request, next: Next) -> Response {
    let mut answer = std::pin::pin!(next.run(request));
    match std::future::poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx))).await {
        Poll::Ready(response) => response,
        Poll::Pending => {
            parked.fetch_add(1, Ordering::SeqCst);
            answer.await
        }
    }
}

/// A memory client on a test clock, the layer as `configure` makes it, the origin's routes
/// served with the layer.
async fn fixture(
    reply: Reply,
    configure: impl FnOnce(CachebackLayerBuilder) -> CachebackLayerBuilder,
) -> Fixture {
    let clock = TestClock::new();
    let failures = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&failures);
    let cache = Cacheback::builder()
        .clock(clock.clone())
        .on_event(move |event| {
            if matches!(event, Event::RefreshFailed { .. }) {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build()
        .unwrap();
    let origin = Origin::new(reply);
    let layer = configure(CachebackLayer::builder(&cache).name("pages"))
        .build(origin.routes())
        .unwrap();
    let parked = Arc::new(AtomicUsize::new(0));
    let app =
        origin
            .routes()
            .route_layer(layer.clone())
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&parked),
                park,
            ));
    let addr = serve(app).await;
    Fixture {
        clock,
        failures,
        origin,
        client: Client::new(addr),
        cache,
        layer,
        parked,
    }
}

/// The next `len` bytes of a body that may not end.
async fn read_exactly(open: &mut Open, len: usize) -> Vec<u8> {
    let mut read = Vec::new();
    while read.len() < len {
        let chunk = open.chunk().await.expect("more of the body");
        read.extend_from_slice(&chunk);
    }
    read
}

/// Bytes that are not UTF-8, `len` of them.
fn binary(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

async fn settle(origin: &Origin, calls: usize) {
    eventually(&format!("{calls} origin calls"), 5 * SECOND, || async {
        origin.calls() >= calls
    })
    .await;
}

#[tokio::test]
async fn a_miss_is_fetched_then_served_fresh_with_age_and_status() {
    let fx = fixture(Reply::ok("max-age=60"), |b| b).await;
    let first = fx.client.get("/page?b=2&a=1").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "v1");
    assert_eq!(
        first.cache_status(),
        "cacheback; fwd=miss; fwd-status=200; ttl=60; stored"
    );
    assert_eq!(first.age(), Some(0));

    fx.clock.advance(10 * SECOND);
    let second = fx.client.get("/page?a=1&b=2").await;
    assert_eq!(
        second.cache_status(),
        "cacheback; hit; ttl=50",
        "one key per resource"
    );
    assert_eq!(second.age(), Some(10));
    assert_eq!(second.body, "v1");
    assert_eq!(fx.origin.calls(), 1);

    let head = fx.client.send("HEAD", "/page?a=1&b=2", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert!(
        head.cache_status().contains("fwd=miss"),
        "HEAD has its own key"
    );
    let head = fx.client.send("HEAD", "/page?a=1&b=2", &[]).await;
    assert!(
        head.cache_status().contains("hit"),
        "{}",
        head.cache_status()
    );

    let post = fx.client.send("POST", "/page", &[]).await;
    assert_eq!(post.cache_status(), "cacheback; fwd=method");
    assert_eq!(fx.origin.calls(), 3);
}

#[tokio::test]
async fn the_origin_sees_only_what_the_key_holds() {
    let fx = fixture(Reply::ok("max-age=60"), |b| {
        b.key_header(axum::http::header::HOST)
    })
    .await;
    fx.client
        .send(
            "GET",
            "/p",
            &[("cookie", "session=secret"), ("x-trace", "1")],
        )
        .await;
    let seen = fx.origin.seen.lock().unwrap()[0].clone();
    assert!(
        seen.get("cookie").is_none() && seen.get("x-trace").is_none(),
        "{seen:?}"
    );
    assert!(seen.get("host").is_some(), "key headers are sent");

    // A request with credentials goes past the cache, as it came.
    let private = fx
        .client
        .send("GET", "/p", &[("authorization", "Bearer t")])
        .await;
    assert_eq!(private.cache_status(), "cacheback; fwd=bypass");
    let seen = fx.origin.seen.lock().unwrap()[1].clone();
    assert_eq!(seen["authorization"], "Bearer t");
}

#[tokio::test]
async fn windows_come_from_cache_control_and_the_policy_fills_in() {
    let fx = fixture(
        Reply::ok("max-age=60, s-maxage=10, stale-while-revalidate=20"),
        |b| b,
    )
    .await;
    fx.client.get("/w").await;
    fx.clock.advance(5 * SECOND);
    assert_eq!(
        fx.client.get("/w").await.cache_status(),
        "cacheback; hit; ttl=5"
    );
    fx.clock.advance(10 * SECOND);
    let stale = fx.client.get("/w").await;
    assert_eq!(
        stale.cache_status(),
        "cacheback; hit; ttl=-5; detail=stale-while-revalidate",
        "s-maxage wins over max-age"
    );
    settle(&fx.origin, 2).await;
    fx.clock.advance(31 * SECOND);
    assert!(
        fx.client
            .get("/w")
            .await
            .cache_status()
            .contains("fwd=miss"),
        "past 10 + 20 s"
    );

    // No Cache-Control: the layer's policy.
    let fx = fixture(Reply::ok("public"), |b| {
        b.policy(Policy::default().lifetime(7 * SECOND).stale_ttl(3 * SECOND))
    })
    .await;
    fx.client.get("/d").await;
    fx.clock.advance(8 * SECOND);
    assert!(
        fx.client
            .get("/d")
            .await
            .cache_status()
            .contains("stale-while-revalidate")
    );
    settle(&fx.origin, 2).await;
    fx.clock.advance(11 * SECOND);
    assert!(
        fx.client
            .get("/d")
            .await
            .cache_status()
            .contains("fwd=miss")
    );
}

#[tokio::test]
async fn a_stale_burst_of_64_requests_makes_one_origin_call() {
    let fx = fixture(Reply::ok("max-age=10, stale-while-revalidate=60"), |b| b).await;
    fx.client.get("/hot").await;
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
    settle(&fx.origin, 2).await;
    eventually("the refreshed response", 5 * SECOND, || async {
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
async fn uncacheable_responses_go_past_the_cache() {
    let big = Bytes::from(vec![b'x'; 2048]);
    let cases = [
        (Reply::ok("no-store"), "no-store"),
        (Reply::ok("private, max-age=60"), "private"),
        (
            Reply::ok("max-age=60").header("set-cookie", "id=1"),
            "set-cookie",
        ),
        (Reply::ok("max-age=60").header("vary", "*"), "vary-star"),
        (
            Reply {
                status: StatusCode::FOUND,
                ..Reply::ok("max-age=60")
            },
            "status",
        ),
        (
            Reply {
                body: big,
                ..Reply::ok("max-age=60")
            },
            "body-too-large",
        ),
    ];
    for (reply, reason) in cases {
        let fx = fixture(reply.clone(), |b| b.max_body_bytes(1024)).await;
        let first = fx.client.get("/u").await;
        assert_eq!(first.status, reply.status, "{reason}");
        assert_eq!(
            first.body, reply.body,
            "{reason}: the response itself is served"
        );
        assert_eq!(
            first.cache_status(),
            format!("cacheback; fwd=miss; detail={reason}")
        );
        let second = fx.client.get("/u").await;
        assert_eq!(
            second.cache_status(),
            format!("cacheback; fwd=bypass; detail={reason}"),
            "hit-for-pass"
        );
        assert_eq!(
            fx.origin.calls(),
            2,
            "{reason}: never served from the cache; the first request got the fetch's answer"
        );
        if reason == "set-cookie" {
            assert_eq!(
                second.headers["set-cookie"], "id=1",
                "each request gets its own"
            );
        }
    }
}

#[tokio::test]
async fn each_variant_of_a_vary_response_has_its_own_entry() {
    let reply = Reply {
        echo: Some("accept-language"),
        ..Reply::ok("max-age=60").header("vary", "Accept-Language")
    };
    let fx = fixture(reply, |b| b).await;
    let fr = fx
        .client
        .send("GET", "/v", &[("accept-language", "fr")])
        .await;
    assert_eq!(fr.body, "v1 fr");
    assert!(
        fr.cache_status().contains("fwd=vary-miss"),
        "{}",
        fr.cache_status()
    );
    let de = fx
        .client
        .send("GET", "/v", &[("accept-language", "de")])
        .await;
    assert_eq!(de.body, "v1 de");
    let fr_again = fx
        .client
        .send("GET", "/v", &[("accept-language", "fr")])
        .await;
    assert_eq!(
        (fr_again.body.as_ref(), fr_again.cache_status()),
        (&b"v1 fr"[..], "cacheback; hit; ttl=60")
    );
    let none = fx.client.get("/v").await;
    assert_eq!(none.body, "v1");
    // The URL's first fetch learnt the Vary, then one fetch per variant.
    assert_eq!(fx.origin.calls(), 4);
}

#[tokio::test]
async fn a_failing_origin_is_covered_by_stale_if_error() {
    let fx = fixture(
        Reply::ok("max-age=10, stale-while-revalidate=10, stale-if-error=100"),
        |b| b,
    )
    .await;
    fx.client.get("/f").await;
    fx.origin.set(Reply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: Bytes::from_static(b"down"),
        ..Reply::ok("no-store")
    });
    fx.clock.advance(15 * SECOND);
    let stale = fx.client.get("/f").await;
    assert_eq!(stale.body, "v1");
    assert!(stale.cache_status().contains("stale-while-revalidate"));
    settle(&fx.origin, 2).await;
    // Past the 10 s stale window the failed refresh's stale-if-error keeps it servable.
    fx.clock.advance(35 * SECOND);
    let covered = fx.client.get("/f").await;
    assert_eq!(
        (covered.status, covered.body.as_ref()),
        (StatusCode::OK, &b"v1"[..])
    );
    assert_eq!(
        covered.cache_status(),
        "cacheback; hit; ttl=-40; detail=stale-if-error"
    );
    // Past stale-if-error (110 s after it was fetched): the origin's own error.
    fx.clock.advance(70 * SECOND);
    let gone = fx.client.get("/f").await;
    assert_eq!(
        (gone.status, gone.body.as_ref()),
        (StatusCode::SERVICE_UNAVAILABLE, &b"down"[..])
    );
    assert_eq!(gone.cache_status(), "cacheback; fwd=miss; fwd-status=503");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_origin_is_covered_by_stale_if_error() {
    let fx = fixture(
        Reply::ok("max-age=10, stale-while-revalidate=10, stale-if-error=100"),
        |b| b.policy(Policy::default().fetch_timeout(2 * SECOND)),
    )
    .await;
    fx.client.get("/h").await;
    fx.origin.set(Reply {
        hang: true,
        ..Reply::ok("max-age=10")
    });
    fx.clock.advance(15 * SECOND);
    let stale = fx.client.get("/h").await;
    assert_eq!(stale.body, "v1", "served at once while the refresh hangs");
    settle(&fx.origin, 2).await;
    // Paused tokio time runs ahead to the hung fetch's 2 s timeout: the refresh fails.
    eventually("the hung refresh to time out", 60 * SECOND, || async {
        fx.failures.load(Ordering::SeqCst) == 1
    })
    .await;
    fx.clock.advance(35 * SECOND);
    let covered = fx.client.get("/h").await;
    assert_eq!(
        (covered.status, covered.body.as_ref()),
        (StatusCode::OK, &b"v1"[..])
    );
    assert!(covered.cache_status().contains("detail=stale-if-error"));
}

#[tokio::test]
async fn validators_answer_304() {
    let fx = fixture(
        Reply::ok("max-age=60")
            .header("etag", "\"v1\"")
            .header("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
        |b| b,
    )
    .await;
    fx.client.get("/c").await;
    let same = fx
        .client
        .send("GET", "/c", &[("if-none-match", "W/\"v1\"")])
        .await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    assert!(same.body.is_empty());
    assert_eq!(same.headers["etag"], "\"v1\"");
    assert_eq!(same.cache_status(), "cacheback; hit; ttl=60");
    assert!(same.age().is_some());
    let other = fx
        .client
        .send("GET", "/c", &[("if-none-match", "\"v0\"")])
        .await;
    assert_eq!(
        (other.status, other.body.as_ref()),
        (StatusCode::OK, &b"v1"[..])
    );
    let since = fx
        .client
        .send(
            "GET",
            "/c",
            &[("if-modified-since", "Thu, 22 Oct 2015 07:28:00 GMT")],
        )
        .await;
    assert_eq!(since.status, StatusCode::NOT_MODIFIED);
    let older = fx
        .client
        .send(
            "GET",
            "/c",
            &[("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT")],
        )
        .await;
    assert_eq!(older.status, StatusCode::OK);
    assert_eq!(fx.origin.calls(), 1);
}

#[tokio::test]
async fn a_requests_no_cache_is_honoured_only_when_configured() {
    let fx = fixture(Reply::ok("max-age=60"), |b| b).await;
    fx.client.get("/n").await;
    let ignored = fx
        .client
        .send("GET", "/n", &[("cache-control", "no-cache")])
        .await;
    assert_eq!(ignored.cache_status(), "cacheback; hit; ttl=60");
    assert_eq!(fx.origin.calls(), 1, "a client cannot force origin calls");

    let fx = fixture(Reply::ok("max-age=60"), |b| b.honour_no_cache(true)).await;
    fx.client.get("/n").await;
    fx.origin.body(b"v2");
    let forced = fx
        .client
        .send("GET", "/n", &[("cache-control", "no-cache")])
        .await;
    assert_eq!(forced.body, "v2");
    assert_eq!(
        forced.cache_status(),
        "cacheback; fwd=request; fwd-status=200; ttl=60; stored"
    );
    assert_eq!(fx.client.get("/n").await.body, "v2", "and stored");
}

#[tokio::test]
async fn binary_bodies_come_back_byte_for_byte() {
    let body: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let fx = fixture(
        Reply {
            body: Bytes::from(body.clone()),
            ..Reply::ok("max-age=60").header("content-type", "application/octet-stream")
        },
        |b| b,
    )
    .await;
    assert_eq!(fx.client.get("/b").await.body, body);
    let hit = fx.client.get("/b").await;
    assert!(hit.cache_status().contains("hit"));
    assert_eq!(hit.body, body);
    assert_eq!(hit.headers["content-type"], "application/octet-stream");
}

#[tokio::test]
async fn invalidate_marks_a_page_stale_and_refreshes_it() {
    let fx = fixture(Reply::ok("max-age=60, stale-while-revalidate=60"), |b| b).await;
    fx.client.get("/i").await;
    fx.origin.body(b"v2");
    let request = axum::http::Request::get("/i").body(()).unwrap();
    assert!(fx.layer.invalidate(&request).await.unwrap());
    settle(&fx.origin, 2).await;
    eventually("the refreshed page", 5 * SECOND, || async {
        fx.client.get("/i").await.body == "v2"
    })
    .await;
    assert!(
        CachebackLayer::builder(&fx.cache)
            .name("pages")
            .build(fx.origin.routes())
            .is_err(),
        "a second layer with the same name is refused"
    );
}

#[tokio::test]
async fn an_endless_uncacheable_stream_flows_through_on_one_origin_call() {
    let event = Bytes::from_static(b"data: 1\n\n");
    let reply = Reply::ok("no-store")
        .header("content-type", "text/event-stream")
        .streamed(vec![event.clone()], true);
    let fx = fixture(reply, |b| b).await;
    let mut events = fx.client.open("GET", "/events", &[]).await;
    assert_eq!(events.status, StatusCode::OK);
    assert_eq!(events.headers["content-type"], "text/event-stream");
    assert_eq!(
        events.cache_status(),
        "cacheback; fwd=miss; detail=no-store"
    );
    assert_eq!(read_exactly(&mut events, event.len()).await, event);
    assert_eq!(
        fx.origin.calls(),
        1,
        "the fetch's response is the request's"
    );

    // Hit-for-pass: the next request goes to the inner service, streaming too.
    let mut again = fx.client.open("GET", "/events", &[]).await;
    assert_eq!(
        again.cache_status(),
        "cacheback; fwd=bypass; detail=no-store"
    );
    assert_eq!(read_exactly(&mut again, event.len()).await, event);
    assert_eq!(fx.origin.calls(), 2);
    assert_eq!(fx.failures.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_body_over_the_limit_streams_through_whole_on_one_origin_call() {
    let body = binary(3000);
    assert!(std::str::from_utf8(&body).is_err());
    let chunks: Vec<Bytes> = body.chunks(300).map(Bytes::copy_from_slice).collect();
    let reply = Reply::ok("max-age=60")
        .header("content-type", "application/octet-stream")
        .streamed(chunks.clone(), false);
    let fx = fixture(reply, |b| b.max_body_bytes(1024)).await;
    let first = fx.client.get("/big").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.cache_status(),
        "cacheback; fwd=miss; detail=body-too-large"
    );
    assert!(first.headers.get("content-length").is_none(), "chunked");
    assert_eq!(first.body, body, "the bytes the fetch read, then the rest");
    assert_eq!(fx.origin.calls(), 1);
    let second = fx.client.get("/big").await;
    assert_eq!(
        second.cache_status(),
        "cacheback; fwd=bypass; detail=body-too-large",
        "nothing stored"
    );
    assert_eq!(second.body, body);
    assert_eq!(fx.origin.calls(), 2);

    // Declared too large: not read by the fetch at all, and served whole.
    let reply = Reply::ok("max-age=60")
        .header("content-length", &body.len().to_string())
        .streamed(chunks, false);
    let fx = fixture(reply, |b| b.max_body_bytes(1024)).await;
    let first = fx.client.get("/declared").await;
    assert_eq!(
        first.cache_status(),
        "cacheback; fwd=miss; detail=body-too-large"
    );
    assert_eq!(first.headers["content-length"], "3000");
    assert_eq!(first.body, body);
    assert_eq!(fx.origin.calls(), 1);
}

#[tokio::test]
async fn a_response_that_sets_a_cookie_costs_its_request_one_origin_call() {
    let body = binary(600);
    let reply = Reply {
        body: Bytes::from(body.clone()),
        ..Reply::ok("max-age=60").header("set-cookie", "id=1")
    };
    let fx = fixture(reply, |b| b).await;
    let first = fx.client.get("/cookie").await;
    assert_eq!(
        first.cache_status(),
        "cacheback; fwd=miss; detail=set-cookie"
    );
    assert_eq!(first.headers["set-cookie"], "id=1");
    assert_eq!(first.body, body);
    assert_eq!(fx.origin.calls(), 1);
    let second = fx.client.get("/cookie").await;
    assert_eq!(
        second.cache_status(),
        "cacheback; fwd=bypass; detail=set-cookie"
    );
    assert_eq!((second.body, fx.origin.calls()), (Bytes::from(body), 2));
}

#[tokio::test]
async fn requests_that_joined_an_uncacheable_fetch_go_to_the_inner_service() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    // The origin appends the request's `x-request`: the fetch's rebuilt request has none.
    let reply = Reply {
        echo: Some("x-request"),
        ..Reply::ok("no-store")
    };
    let gated = Reply {
        gate: Some(Arc::clone(&gate)),
        ..reply.clone()
    };
    let fx = fixture(gated, |b| b).await;
    let client = fx.client.clone();
    let first = tokio::spawn(async move { client.send("GET", "/c", &[("x-request", "0")]).await });
    eventually("the fetch to reach the origin", 5 * SECOND, || async {
        fx.origin.calls() == 1
    })
    .await;
    fx.origin.set(reply);
    let joined: Vec<_> = (1..8)
        .map(|i| {
            let client = fx.client.clone();
            tokio::spawn(async move {
                let value = i.to_string();
                client.send("GET", "/c", &[("x-request", &value)]).await
            })
        })
        .collect();
    eventually("8 requests waiting on one fetch", 5 * SECOND, || async {
        fx.parked.load(Ordering::SeqCst) == 8
    })
    .await;
    assert_eq!(fx.origin.calls(), 1, "the others wait for the fetch");
    gate.add_permits(1);

    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.body, "v1",
        "the fetch's response, handed to its request"
    );
    assert_eq!(first.cache_status(), "cacheback; fwd=miss; detail=no-store");
    for (i, request) in joined.into_iter().enumerate() {
        let got = request.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(
            got.body,
            format!("v1 {}", i + 1),
            "its own request, forwarded"
        );
        assert_eq!(got.cache_status(), "cacheback; fwd=miss; detail=no-store");
    }
    assert_eq!(fx.origin.calls(), 8, "one call per request");
}

#[tokio::test]
async fn head_of_an_uncacheable_stream_has_no_body() {
    let reply = Reply::ok("no-store").streamed(vec![Bytes::from_static(b"data: 1\n\n")], true);
    let fx = fixture(reply, |b| b).await;
    let head = fx.client.send("HEAD", "/events", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.cache_status(), "cacheback; fwd=miss; detail=no-store");
    assert_eq!(fx.origin.calls(), 1);

    let again = fx.client.send("HEAD", "/events", &[]).await;
    assert!(again.body.is_empty());
    assert_eq!(
        again.cache_status(),
        "cacheback; fwd=bypass; detail=no-store"
    );
    assert_eq!(fx.origin.calls(), 2);
}

#[tokio::test]
async fn a_refresh_that_finds_an_uncacheable_stream_lets_it_go() {
    let fx = fixture(Reply::ok("max-age=10, stale-while-revalidate=60"), |b| {
        b.policy(Policy::default().fetch_timeout(600 * SECOND))
    })
    .await;
    fx.client.get("/r").await;
    fx.origin
        .set(Reply::ok("no-store").streamed(vec![Bytes::from_static(b"data: 1\n\n")], true));
    fx.clock.advance(15 * SECOND);
    let stale = fx.client.get("/r").await;
    assert_eq!(stale.body, "v1");
    assert!(stale.cache_status().contains("stale-while-revalidate"));
    settle(&fx.origin, 2).await;
    // The refresh reads no body (it would wait 600 s for this one) and holds none.
    eventually("the refresh to let the stream go", 5 * SECOND, || async {
        fx.origin.streams_dropped() == 1
    })
    .await;
    eventually("the URL marked pass", 5 * SECOND, || async {
        let open = fx.client.open("GET", "/r", &[]).await;
        open.cache_status() == "cacheback; fwd=bypass; detail=no-store"
    })
    .await;
    assert_eq!(fx.failures.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_request_with_credentials_gets_the_origins_answer_to_itself() {
    // The origin appends the request's cookie: a private page made for whoever asks.
    let reply = Reply {
        echo: Some("cookie"),
        ..Reply::ok("private")
    };
    let fx = fixture(reply, |b| b).await;
    let got = fx
        .client
        .send("GET", "/me", &[("cookie", "session=alice")])
        .await;
    assert_eq!(
        got.body, "v1 session=alice",
        "not the rebuilt request's answer"
    );
    assert_eq!(got.cache_status(), "cacheback; fwd=miss; detail=private");
    // The fetch's response (to the request without the cookie) was dropped, not handed on.
    assert_eq!(fx.origin.calls(), 2);
    // Without credentials, the fetch's own response answers: one call.
    let anonymous = fx.client.get("/other").await;
    assert_eq!(anonymous.body, "v1");
    assert_eq!(fx.origin.calls(), 3);
}
