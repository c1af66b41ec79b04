//! Failing upstreams: a failed or panicking refresh keeps the old value and backs off for every
//! client of the store, `stale_if_error` extends serving, failing misses back off.

use std::time::Duration;

use super::counters::Counters;
use super::fixture::{Fx, LIFETIME, Mode, STALE_TTL, SuiteJob, eventually, policy, text};
use super::{Behaviour, ClientSuite};
use crate::client::{JobHandle, Status};
use crate::clock::Clock;
use crate::error::Error;
use crate::observe::Event;

pub(super) const BEHAVIOURS: &[Behaviour] = &[
    (
        "a failed refresh keeps the value and backs off, for every client of the store",
        |s| Box::pin(a_failed_refresh_keeps_the_value_and_backs_off(s)),
    ),
    (
        "a panicking refresh is a failure, the value is kept and the worker goes on",
        |s| Box::pin(a_panicking_refresh_is_a_failure(s)),
    ),
    ("stale_if_error extends serving while refreshes fail", |s| {
        Box::pin(stale_if_error_extends_serving(s))
    }),
    ("a failing miss backs off", |s| {
        Box::pin(a_failing_miss_backs_off(s, true))
    }),
    (
        "a failing miss without miss_backoff calls the upstream every time",
        |s| Box::pin(a_failing_miss_backs_off(s, false)),
    ),
];

fn is_failed(e: &Event) -> bool {
    matches!(e, Event::RefreshFailed { .. })
}

fn is_refreshed(e: &Event) -> bool {
    matches!(e, Event::Refreshed { .. })
}

async fn a_failed_refresh_keeps_the_value_and_backs_off(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    squares.set(15, "old".to_owned()).await.expect("set works");
    fx.clock.advance(LIFETIME);
    fx.upstream.set_mode(Mode::Fail);
    fx.start_worker();
    let read = squares.get_with_status(15).await.expect("the read works");
    assert!(read.refresh_triggered);
    let Event::RefreshFailed {
        failures,
        error,
        retry_after,
        ..
    } = fx.event("the refresh fails", is_failed).await
    else {
        unreachable!("matched by is_failed")
    };
    assert_eq!((failures, error.kind()), (1, "fetch"), "{error}");
    let first_retry = fx.clock.now().saturating_add(Duration::from_secs(1));
    assert_eq!(retry_after, first_retry);
    fx.settled("the failed refresh is acknowledged").await;
    for _ in 0..5 {
        let read = squares.get_with_status(15).await.expect("the read works");
        assert_eq!(
            text(read.value.as_ref()),
            Some("old"),
            "the old value is kept"
        );
        assert!(!read.refresh_triggered, "no retry before retry_after");
    }
    let peek = squares.peek(15).await.expect("peek works").expect("kept");
    assert_eq!(
        (peek.claim.failures, peek.claim.retry_after),
        (1, Some(first_retry))
    );
    // Another client of the store (another process) sees the same backoff.
    let other = fx.client_builder().build().expect("another client builds");
    let counters = Counters::default();
    let other = counters.record(|| fx.job_on(&other, "squares", policy()));
    let read = other.get_with_status(15).await.expect("the read works");
    assert_eq!(
        (read.status, text(read.value.as_ref())),
        (Status::Stale, Some("old"))
    );
    if fx.background_claims() {
        // The read asked in the background; the store refuses the claim while the key backs
        // off.
        eventually("the other client's claim is refused", || async {
            counters.get("cacheback_claims_total") == 1
        })
        .await;
    } else {
        assert!(
            !read.refresh_triggered,
            "no retry before retry_after, in any process"
        );
    }
    assert_eq!((fx.queue.enqueued(), fx.upstream.calls()), (1, 1));
    the_retry_backs_off_longer_then_recovers(&mut fx, &squares, &other).await;
    fx.stop_workers().await;
}

/// After the first failure's backoff: the retry (from any client) fails again and backs off
/// twice as long; then a success resets the failures.
async fn the_retry_backs_off_longer_then_recovers(
    fx: &mut Fx,
    squares: &JobHandle<SuiteJob>,
    other: &JobHandle<SuiteJob>,
) {
    fx.clock.advance(Duration::from_secs(1));
    assert!(triggers(other, 15).await, "retry_after passed: retry");
    let Event::RefreshFailed {
        failures,
        retry_after,
        ..
    } = fx.event("the retry fails", is_failed).await
    else {
        unreachable!("matched by is_failed")
    };
    assert_eq!(failures, 2);
    assert_eq!(
        retry_after.since(fx.clock.now()),
        Duration::from_secs(2),
        "backoff doubles"
    );
    fx.upstream.set_mode(Mode::Ok);
    fx.clock.advance(Duration::from_secs(2));
    assert!(triggers(squares, 15).await, "retry_after passed: retry");
    fx.event("the retry succeeds", is_refreshed).await;
    let peek = squares.peek(15).await.expect("peek works");
    let failures = peek.expect("refreshed").claim.failures;
    assert_eq!(failures, 0, "a success resets the failures");
}

/// Whether a read of `n` triggered a refresh.
async fn triggers(job: &JobHandle<SuiteJob>, n: u64) -> bool {
    let read = job.get_with_status(n).await.expect("the read works");
    read.refresh_triggered
}

async fn a_panicking_refresh_is_a_failure(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    squares.set(16, "old".to_owned()).await.expect("set works");
    fx.clock.advance(LIFETIME);
    fx.upstream.set_mode(Mode::Panic);
    fx.start_worker();
    assert!(
        squares
            .get_with_status(16)
            .await
            .expect("the read works")
            .refresh_triggered
    );
    let Event::RefreshFailed { error, .. } = fx.event("the refresh fails", is_failed).await else {
        unreachable!("matched by is_failed")
    };
    assert_eq!(error.kind(), "panic", "{error}");
    let read = squares.get_with_status(16).await.expect("the read works");
    assert_eq!(
        text(read.value.as_ref()),
        Some("old"),
        "the old value is kept"
    );
    // The worker survived the panic: the retry after the backoff is refreshed.
    fx.upstream.set_mode(Mode::Ok);
    fx.clock.advance(Duration::from_secs(1));
    assert!(
        squares
            .get_with_status(16)
            .await
            .expect("the read works")
            .refresh_triggered
    );
    fx.event("the retry succeeds", is_refreshed).await;
    let reports = fx.stop_workers().await;
    assert_eq!(reports[0].processed, 2, "{reports:?}");
}

async fn stale_if_error_extends_serving(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let policy = policy()
        .fetch_on_miss(false)
        .stale_if_error(Duration::from_secs(1000));
    let squares = fx.job("squares", policy);
    squares.set(25, "old".to_owned()).await.expect("set works");
    fx.clock
        .advance(LIFETIME + STALE_TTL - Duration::from_secs(1));
    fx.upstream.set_mode(Mode::Fail);
    fx.start_worker();
    assert!(
        squares
            .get_with_status(25)
            .await
            .expect("the read works")
            .refresh_triggered
    );
    fx.event("the refresh fails", is_failed).await;
    fx.settled("the failed refresh is acknowledged").await;
    fx.clock.advance(Duration::from_secs(500));
    let read = squares.get_with_status(25).await.expect("the read works");
    assert_eq!(
        (read.status, text(read.value.as_ref())),
        (Status::Stale, Some("old")),
        "served past stale_ttl thanks to stale_if_error"
    );
    fx.clock.advance(Duration::from_secs(501));
    let read = squares.get_with_status(25).await.expect("the read works");
    assert_eq!(
        (read.status, read.value),
        (Status::Miss, None),
        "but not forever"
    );
    fx.stop_workers().await;
}

/// Reads of a key whose synchronous fetch fails call the upstream once per backoff window
/// (or, with `miss_backoff` off, once per read).
async fn a_failing_miss_backs_off(suite: ClientSuite, backoff: bool) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy().miss_backoff(backoff));
    fx.upstream.set_mode(Mode::Fail);
    let mut errors = Vec::new();
    for _ in 0..5 {
        errors.push(
            squares
                .get(3)
                .await
                .expect_err("a failing fetch fails the read"),
        );
    }
    if !backoff {
        assert_eq!(fx.upstream.calls(), 5, "one call per read");
        return;
    }
    assert_eq!(fx.upstream.calls(), 1, "one call per window");
    assert!(matches!(errors[0], Error::Fetch { .. }), "{:?}", errors[0]);
    for error in &errors[1..] {
        let Error::BackingOff { failures, last, .. } = error else {
            panic!("expected BackingOff, got {error}");
        };
        assert_eq!(*failures, 1);
        assert!(
            last.as_ref()
                .is_some_and(|l| l.to_string().contains("upstream is down")),
            "the last failure is the cause"
        );
    }
    // The first retry is due after 1 s; it fails again, and the next window is 2 s.
    fx.clock.advance(Duration::from_millis(1001));
    let _ = squares.get(3).await.expect_err("still failing");
    let _ = squares.get(3).await.expect_err("still backing off");
    assert_eq!(fx.upstream.calls(), 2, "one call per window");
    fx.clock.advance(Duration::from_millis(2001));
    fx.upstream.set_mode(Mode::Ok);
    let recovered = squares
        .get_with_status(3)
        .await
        .expect("the upstream is back");
    assert_eq!(recovered.status, Status::MissFetched);
    assert_eq!(fx.upstream.calls(), 3);
}
