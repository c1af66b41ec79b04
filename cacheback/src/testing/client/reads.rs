//! Reads: misses (fetched, or answered empty while the worker fills the key), fresh hits, and
//! the edges of the freshness windows.

use std::collections::BTreeSet;
use std::time::Duration;

use super::fixture::{Fx, LIFETIME, STALE_TTL, policy, text};
use super::{Behaviour, ClientSuite};
use crate::client::Status;
use crate::clock::Clock;
use crate::policy::Freshness;

pub(super) const BEHAVIOURS: &[Behaviour] = &[
    (
        "a miss fetches once and stores the value fresh for its lifetime",
        |s| Box::pin(a_miss_fetches_once_and_stores_fresh(s)),
    ),
    (
        "a miss without fetch_on_miss answers empty, enqueues one refresh, and a worker fills \
         the key",
        |s| Box::pin(a_miss_without_fetch_enqueues_one_refresh(s)),
    ),
    ("a fresh hit fetches and enqueues nothing", |s| {
        Box::pin(a_fresh_hit_fetches_and_enqueues_nothing(s))
    }),
    ("the stale threshold is exclusive", |s| {
        Box::pin(the_stale_threshold_is_exclusive(s))
    }),
    ("past stale_ttl a key is a miss", |s| {
        Box::pin(past_stale_ttl_is_a_miss(s))
    }),
    ("jitter only shortens lifetimes, within its fraction", |s| {
        Box::pin(jitter_spreads_expiry_within_bounds(s))
    }),
    (
        "get_many answers every key as a single read would, in order",
        |s| Box::pin(get_many_answers_every_key_as_a_single_read_would(s)),
    ),
    (
        "get_many fetches its missing keys with one fetch_many, joined by single reads",
        |s| Box::pin(get_many_fetches_missing_keys_in_one_batch(s)),
    ),
];

async fn a_miss_fetches_once_and_stores_fresh(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    let t0 = fx.clock.now();
    let first = squares.get_with_status(3).await.expect("the read works");
    assert_eq!(first.status, Status::MissFetched);
    assert_eq!(text(first.value.as_ref()), Some("value 3 #1"));
    let second = squares.get_with_status(3).await.expect("the read works");
    assert_eq!(second.status, Status::Hit);
    assert_eq!(
        fx.upstream.calls(),
        1,
        "one fetch for the miss, none for the hit"
    );
    let peek = squares.peek(3).await.expect("peek works").expect("stored");
    assert_eq!(peek.freshness, Freshness::Fresh);
    assert_eq!(peek.meta.fetched_at, t0);
    assert_eq!(peek.meta.fresh_until.since(peek.meta.fetched_at), LIFETIME);
    assert_eq!(
        peek.meta.stale_until.since(peek.meta.fresh_until),
        STALE_TTL
    );
    fx.clock.advance(LIFETIME - Duration::from_millis(1));
    let hit = squares.get_with_status(3).await.expect("the read works");
    assert_eq!(
        hit.status,
        Status::Hit,
        "fresh until the end of its lifetime"
    );
    fx.clock.advance(Duration::from_millis(1));
    let stale = squares.get_with_status(3).await.expect("the read works");
    assert_eq!(
        stale.status,
        Status::Stale,
        "stale from the end of its lifetime"
    );
    assert_eq!(fx.upstream.calls(), 1);
}

async fn a_miss_without_fetch_enqueues_one_refresh(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy().fetch_on_miss(false));
    let first = squares.get_with_status(4).await.expect("the read works");
    assert_eq!((first.status, first.value.is_none()), (Status::Miss, true));
    assert!(first.refresh_triggered, "the miss enqueues a refresh");
    let second = squares.get_with_status(4).await.expect("the read works");
    assert_eq!(second.status, Status::Miss);
    assert!(
        !second.refresh_triggered,
        "a second read while the refresh is claimed enqueues nothing"
    );
    fx.enqueued(1, "exactly one refresh enqueued").await;
    assert_eq!(fx.upstream.calls(), 0, "the reader never fetches");

    fx.start_worker();
    fx.event("the worker refreshes the key", |e| {
        matches!(e, crate::Event::Refreshed { .. })
    })
    .await;
    let next = squares.get_with_status(4).await.expect("the read works");
    assert_eq!(
        next.status,
        Status::Hit,
        "the worker wrote the key the reader reads"
    );
    assert_eq!(text(next.value.as_ref()), Some("value 4 #1"));
    assert_eq!(fx.upstream.calls(), 1);
    fx.settled("the refresh is acknowledged").await;
    let reports = fx.stop_workers().await;
    assert_eq!(reports[0].processed, 1, "{reports:?}");
}

async fn a_fresh_hit_fetches_and_enqueues_nothing(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    squares.set(6, "six".to_owned()).await.expect("set works");
    for _ in 0..10 {
        let hit = squares.get_with_status(6).await.expect("the read works");
        assert_eq!(
            (hit.status, text(hit.value.as_ref())),
            (Status::Hit, Some("six"))
        );
        assert!(!hit.refresh_triggered);
    }
    assert_eq!(fx.upstream.calls(), 0);
    assert_eq!(fx.queue.enqueued(), 0);
}

async fn the_stale_threshold_is_exclusive(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let threshold = Duration::from_secs(30);
    let squares = fx.job("squares", policy().stale_threshold(threshold));
    squares.set(9, "old".to_owned()).await.expect("set works");
    fx.clock.advance(LIFETIME + threshold);
    let at = squares.get_with_status(9).await.expect("the read works");
    assert_eq!(
        (at.status, text(at.value.as_ref())),
        (Status::Stale, Some("old")),
        "exactly at the threshold: serve stale"
    );
    assert_eq!(fx.upstream.calls(), 0);
    fx.clock.advance(Duration::from_millis(1));
    let beyond = squares.get_with_status(9).await.expect("the read works");
    assert_eq!(
        beyond.status,
        Status::StaleRefetched,
        "beyond it: fetch first"
    );
    assert_eq!(text(beyond.value.as_ref()), Some("value 9 #1"));
    assert_eq!(fx.upstream.calls(), 1);
    let after = squares.get_with_status(9).await.expect("the read works");
    assert_eq!(after.status, Status::Hit, "the refetched value was stored");
}

async fn past_stale_ttl_is_a_miss(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy().fetch_on_miss(false));
    squares.set(10, "old".to_owned()).await.expect("set works");
    fx.clock
        .advance(LIFETIME + STALE_TTL - Duration::from_millis(1));
    let last = squares.get_with_status(10).await.expect("the read works");
    assert_eq!(
        last.status,
        Status::Stale,
        "served until the end of stale_ttl"
    );
    fx.clock.advance(Duration::from_millis(1));
    let expired = squares.get_with_status(10).await.expect("the read works");
    assert_eq!((expired.status, expired.value), (Status::Miss, None));
}

async fn jitter_spreads_expiry_within_bounds(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy().jitter(0.5));
    let mut lifetimes = BTreeSet::new();
    for n in 0..50 {
        squares.set(n, "v".to_owned()).await.expect("set works");
        let meta = squares
            .peek(n)
            .await
            .expect("peek works")
            .expect("stored")
            .meta;
        let lifetime = meta.fresh_until.since(meta.fetched_at);
        assert!(
            lifetime <= LIFETIME && lifetime >= LIFETIME / 2,
            "a jittered lifetime of {lifetime:?}"
        );
        lifetimes.insert(lifetime);
    }
    assert!(lifetimes.len() > 10, "expiries are spread: {lifetimes:?}");
}

async fn get_many_answers_every_key_as_a_single_read_would(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    squares.set(1, "stale".to_owned()).await.expect("set works");
    fx.clock.advance(LIFETIME);
    squares.set(2, "fresh".to_owned()).await.expect("set works");
    // Read twice: the second time through whatever the first one kept (a near cache's copies).
    for round in 0..2 {
        let answers = squares.get_many([2, 1, 3, 2]).await;
        let seen: Vec<_> = answers
            .iter()
            .map(|a| {
                let a = a.as_ref().expect("every read works");
                (a.status, text(a.value.as_ref()).map(str::to_owned))
            })
            .collect();
        let fetched = (
            if round == 0 {
                Status::MissFetched
            } else {
                Status::Hit
            },
            Some("value 3 #1".to_owned()),
        );
        assert_eq!(
            seen,
            [
                (Status::Hit, Some("fresh".to_owned())),
                (Status::Stale, Some("stale".to_owned())),
                fetched,
                (Status::Hit, Some("fresh".to_owned())),
            ],
            "round {round}"
        );
    }
    assert_eq!(fx.upstream.calls(), 1, "one fetch, for the missing key");
    fx.start_worker();
    fx.upstream.called(2, "the stale key's refresh runs").await;
    fx.enqueued(1, "one refresh for the stale key").await;
    fx.stop_workers().await;
}

async fn get_many_fetches_missing_keys_in_one_batch(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    squares.set(14, "kept".to_owned()).await.expect("set works");
    fx.upstream.close_gate();
    // A single read of 12 is fetching when the batch starts: the batch does not ask for it.
    let single = tokio::spawn({
        let squares = squares.clone();
        async move { squares.get(12).await }
    });
    fx.upstream
        .called(1, "the single read's fetch starts")
        .await;
    let batch = tokio::spawn({
        let squares = squares.clone();
        async move { squares.get_many([10, 11, 12, 13, 14, 11]).await }
    });
    fx.upstream.called(4, "the batch's fetches start").await;
    // A single read of a key of the batch waits for the batch.
    let joiner = tokio::spawn({
        let squares = squares.clone();
        async move { squares.get(13).await }
    });
    fx.upstream.open_gate();
    let answers = batch.await.expect("the batch does not panic");
    let seen: Vec<_> = answers
        .iter()
        .map(|a| {
            let a = a.as_ref().expect("every read works");
            (a.status, text(a.value.as_ref()).map(str::to_owned))
        })
        .collect();
    let fetched = |v: &str| (Status::MissFetched, Some(v.to_owned()));
    assert_eq!(
        seen[..5],
        [
            fetched("value 10 #2"),
            fetched("value 11 #3"),
            fetched("value 12 #1"),
            fetched("value 13 #4"),
            (Status::Hit, Some("kept".to_owned())),
        ]
    );
    assert_eq!(seen[5], seen[1], "a key asked twice is fetched once");
    assert_eq!(
        fx.upstream.batches(),
        [3],
        "one batch, of the keys nobody was fetching"
    );
    let single = single.await.expect("no panic").expect("the read works");
    let joined = joiner.await.expect("no panic").expect("the read works");
    assert_eq!(
        (single.as_str(), joined.as_str()),
        ("value 12 #1", "value 13 #4")
    );
    assert_eq!(fx.upstream.calls(), 4, "one fetch per key");
    let again = squares.get_many([10, 11, 12, 13]).await;
    assert!(
        again
            .iter()
            .all(|a| a.as_ref().is_ok_and(|a| a.status == Status::Hit)),
        "the batch's values were stored: {again:?}"
    );
}
