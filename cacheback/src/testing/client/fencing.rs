//! Generations fence late results: a refresh or a synchronous fetch requested before a `set`,
//! `delete` or `invalidate` never stores its value over it.

use super::fixture::{Fx, LIFETIME, SuiteJob, policy, text};
use super::{Behaviour, ClientSuite};
use crate::client::{JobHandle, Status};
use crate::observe::Event;

pub(super) const BEHAVIOURS: &[Behaviour] = &[
    ("a late refresh never overwrites a set", |s| {
        Box::pin(a_late_refresh_never_overwrites(s, false))
    }),
    ("a late refresh never resurrects a deleted key", |s| {
        Box::pin(a_late_refresh_never_overwrites(s, true))
    }),
    (
        "invalidate of a missing key fences a synchronous miss fetch in flight",
        |s| Box::pin(invalidate_fences_a_miss_fetch_in_flight(s, false)),
    ),
    (
        "invalidate of a deleted key fences a synchronous miss fetch in flight",
        |s| Box::pin(invalidate_fences_a_miss_fetch_in_flight(s, true)),
    ),
    (
        "invalidate of a missing key fences a refresh queued before it",
        |s| Box::pin(invalidate_fences_a_queued_refresh_of_a_missing_key(s)),
    ),
];

/// Whether the key of `n` holds a value (Fresh or Stale), looked at without side effects.
async fn holds_value(job: &JobHandle<SuiteJob>, n: u64) -> bool {
    let peek = job.peek(n).await.expect("peek works");
    peek.is_some_and(|p| p.value.is_some())
}

async fn a_late_refresh_never_overwrites(suite: ClientSuite, delete: bool) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    squares.set(19, "old".to_owned()).await.expect("set works");
    fx.clock.advance(LIFETIME);
    fx.upstream.close_gate();
    fx.start_worker();
    let read = squares.get_with_status(19).await.expect("the read works");
    assert!(read.refresh_triggered, "the stale read enqueues a refresh");
    fx.upstream.called(1, "the worker's fetch starts").await;
    if delete {
        squares.delete(19).await.expect("delete works");
    } else {
        squares
            .set(19, "newer".to_owned())
            .await
            .expect("set works");
    }
    fx.upstream.open_gate();
    fx.event("the late refresh is discarded", |e| {
        matches!(e, Event::RefreshDiscarded { .. })
    })
    .await;
    fx.settled("the refresh is acknowledged").await;
    let peek = squares.peek(19).await.expect("peek works");
    if delete {
        assert!(
            peek.is_none(),
            "the late refresh must not resurrect a deleted key"
        );
    } else {
        let peek = peek.expect("the set value is kept");
        assert_eq!(
            text(peek.value.as_ref()),
            Some("newer"),
            "the late refresh must not overwrite a set"
        );
    }
    fx.stop_workers().await;
}

/// A synchronous miss fetch that began before `invalidate` (of a key that has no value, or
/// whose value was deleted) must not be stored Fresh after it.
async fn invalidate_fences_a_miss_fetch_in_flight(suite: ClientSuite, deleted_first: bool) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    if deleted_first {
        squares.set(1, "old".to_owned()).await.expect("set works");
        squares.delete(1).await.expect("delete works");
    }
    fx.upstream.close_gate();
    let reader = {
        let squares = squares.clone();
        tokio::spawn(async move { squares.get_with_status(1).await })
    };
    fx.upstream.called(1, "the miss fetches").await;
    let enqueued = squares.invalidate(1).await.expect("invalidate works");
    assert!(
        !enqueued,
        "invalidate of a key without a value enqueues nothing"
    );
    fx.upstream.open_gate();
    let lookup = reader
        .await
        .expect("the reader does not panic")
        .expect("the read works");
    assert!(lookup.value.is_some(), "the reader gets its value");
    assert!(
        !holds_value(&squares, 1).await,
        "the value fetched before the invalidation was stored after it"
    );
    let again = squares.get_with_status(1).await.expect("the read works");
    assert_eq!(again.status, Status::MissFetched);
}

/// A refresh enqueued for a missing key before `invalidate` must not land afterwards.
async fn invalidate_fences_a_queued_refresh_of_a_missing_key(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy().fetch_on_miss(false));
    fx.upstream.close_gate();
    fx.start_worker();
    let first = squares.get_with_status(2).await.expect("the read works");
    assert_eq!(first.status, Status::Miss);
    assert!(first.refresh_triggered, "the miss enqueues");
    fx.upstream.called(1, "the worker's fetch starts").await;
    squares.invalidate(2).await.expect("invalidate works");
    fx.upstream.open_gate();
    fx.event("the refresh ends", |e| {
        matches!(e, Event::RefreshDiscarded { .. } | Event::Refreshed { .. })
    })
    .await;
    assert!(
        !holds_value(&squares, 2).await,
        "the refresh requested before the invalidation was stored"
    );
    fx.stop_workers().await;
}
