//! Bursts: many readers of one key at once cause one refresh or share one fetch, and a fetch
//! shared by waiters survives a waiter's cancellation and fails them all when it panics.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;

use super::fixture::{Fx, LIFETIME, Mode, policy, text};
use super::{Behaviour, ClientSuite};
use crate::client::Status;
use crate::error::Error;
use crate::observe::Event;

pub(super) const BEHAVIOURS: &[Behaviour] = &[
    (
        "64 concurrent stale readers get the stale value at once and cause one refresh",
        |s| Box::pin(concurrent_stale_readers_cause_one_refresh(s)),
    ),
    ("64 concurrent misses of one key share one fetch", |s| {
        Box::pin(concurrent_misses_share_one_fetch(s))
    }),
    (
        "a panicking shared fetch fails every waiter instead of hanging them",
        |s| Box::pin(a_panicking_shared_fetch_fails_every_waiter(s)),
    ),
    ("a cancelled waiter does not cancel the shared fetch", |s| {
        Box::pin(a_cancelled_waiter_does_not_cancel_the_fetch(s))
    }),
];

const READERS: usize = 64;

/// Gives readers spawned a moment ago the chance to reach the fetch in flight (and join it)
/// before it is let through. Nothing depends on all of them making it: a reader that comes
/// later finds the stored value (or the recorded failure), and one fetch is all there may be
/// either way; the more of them join, the more the check proves.
async fn let_readers_catch_up() {
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
}

async fn concurrent_stale_readers_cause_one_refresh(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    squares.set(7, "old".to_owned()).await.expect("set works");
    fx.clock.advance(LIFETIME + Duration::from_secs(1));
    fx.upstream.close_gate();
    fx.start_worker();
    let barrier = Arc::new(Barrier::new(READERS));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (squares, barrier) = (squares.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                squares.get_with_status(7).await
            })
        })
        .collect();
    let mut triggered = 0;
    for reader in readers {
        let read = reader
            .await
            .expect("a reader does not panic")
            .expect("the read works");
        assert_eq!(
            (read.status, text(read.value.as_ref())),
            (Status::Stale, Some("old"))
        );
        triggered += usize::from(read.refresh_triggered);
    }
    // Every reader has its answer while the refresh's fetch is held at the gate.
    assert_eq!(triggered, 1, "exactly one reader triggers the refresh");
    // (Through a near cache the claim and the enqueue finish in the background.)
    // A worker may receive the request before the enqueue's reply reaches the client.
    fx.upstream.called(1, "the worker's fetch starts").await;
    fx.enqueued(1, "exactly one refresh enqueued").await;
    fx.upstream.open_gate();
    fx.event("the refresh lands", |e| {
        matches!(e, Event::Refreshed { .. })
    })
    .await;
    assert_eq!(fx.upstream.calls(), 1, "exactly one fetch");
    assert_eq!(fx.queue.enqueued(), 1, "and no second refresh enqueued");
    let after = fx.read_written(&squares, 7, "value 7 #1").await;
    assert_eq!(
        (after.status, text(after.value.as_ref())),
        (Status::Hit, Some("value 7 #1"))
    );
    fx.stop_workers().await;
}

async fn concurrent_misses_share_one_fetch(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    fx.upstream.close_gate();
    let barrier = Arc::new(Barrier::new(READERS + 1));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (squares, barrier) = (squares.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                squares.get_with_status(8).await
            })
        })
        .collect();
    barrier.wait().await;
    fx.upstream.called(1, "the first miss fetches").await;
    let_readers_catch_up().await;
    fx.upstream.open_gate();
    for reader in readers {
        let read = reader
            .await
            .expect("a reader does not panic")
            .expect("the read works");
        // A reader that came after the fetch landed finds it stored: a hit is fine, a second
        // fetch is not.
        assert!(
            matches!(read.status, Status::MissFetched | Status::Hit),
            "{read:?}"
        );
        assert_eq!(text(read.value.as_ref()), Some("value 8 #1"));
    }
    assert_eq!(fx.upstream.calls(), 1, "concurrent misses share one fetch");
}

async fn a_panicking_shared_fetch_fails_every_waiter(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    fx.upstream.set_mode(Mode::Panic);
    fx.upstream.close_gate();
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let squares = squares.clone();
            tokio::spawn(async move { squares.get(17).await })
        })
        .collect();
    fx.upstream.called(1, "the first miss fetches").await;
    let_readers_catch_up().await;
    fx.upstream.open_gate();
    let mut panicked = 0;
    for reader in readers {
        let err = reader
            .await
            .expect("a reader does not panic")
            .expect_err("the fetch panicked");
        let cause = match &err {
            // A reader that came after the failure was recorded backs off, naming it.
            Error::BackingOff {
                last: Some(last), ..
            } => &**last,
            other => other,
        };
        assert!(
            matches!(cause, Error::FetchPanicked { .. })
                && cause.to_string().contains("upstream exploded"),
            "a waiter gets the panic as an error: {err:?}"
        );
        panicked += usize::from(matches!(err, Error::FetchPanicked { .. }));
    }
    assert!(panicked >= 1, "the fetch's own reader gets FetchPanicked");
    assert_eq!(fx.upstream.calls(), 1, "the waiters shared the one fetch");
}

async fn a_cancelled_waiter_does_not_cancel_the_fetch(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    fx.upstream.close_gate();
    let first = {
        let squares = squares.clone();
        tokio::spawn(async move { squares.get(18).await })
    };
    fx.upstream.called(1, "the first miss fetches").await;
    let second = {
        let squares = squares.clone();
        tokio::spawn(async move { squares.get(18).await })
    };
    let_readers_catch_up().await;
    first.abort();
    assert!(
        first
            .await
            .expect_err("the first reader was aborted")
            .is_cancelled(),
        "the first reader is cancelled"
    );
    fx.upstream.open_gate();
    let value = second
        .await
        .expect("the second reader does not panic")
        .expect("the read works");
    // Had the cancellation cancelled the fetch, the second reader would have fetched again.
    assert_eq!(*value, "value 18 #1");
    assert_eq!(fx.upstream.calls(), 1);
    let after = squares.get_with_status(18).await.expect("the read works");
    assert_eq!(after.status, Status::Hit, "the shared fetch was stored");
}
