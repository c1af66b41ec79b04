//! The queue between readers and workers: a queue that is down or full never fails a read, and
//! what a worker cannot run (an unknown job, args that do not decode, a key derived
//! differently) is dead-lettered with the reason while the worker goes on.

use std::sync::Arc;

use super::counters::Counters;
use super::fixture::{Fx, LIFETIME, eventually, is_fresh, policy, text};
use super::recorded::Unavailable;
use super::{Behaviour, ClientSuite};
use crate::client::{QueueFallback, Status};
use crate::clock::Timestamp;
use crate::codec::Codec;
use crate::observe::Event;
use crate::queue::{Queue, RefreshRequest};
use crate::store::ClaimToken;

pub(super) const BEHAVIOURS: &[Behaviour] = &[
    (
        "an unavailable queue falls back to a refresh in a background task",
        |s| {
            Box::pin(an_unavailable_queue_falls_back(
                s,
                QueueFallback::LocalRefresh,
            ))
        },
    ),
    (
        "an unavailable queue falls back to a refresh before the read answers",
        |s| {
            Box::pin(an_unavailable_queue_falls_back(
                s,
                QueueFallback::SyncRefresh,
            ))
        },
    ),
    (
        "a full queue drops the refresh, counts it, and the next read triggers again",
        |s| Box::pin(a_full_queue_drops_and_the_next_read_retriggers(s)),
    ),
    (
        "a job the worker does not know is dead-lettered with the reason, and the worker goes on",
        |s| Box::pin(unknown_jobs_are_dead_lettered(s)),
    ),
    (
        "requests whose args do not decode or whose key differs are dead-lettered with the reason",
        |s| Box::pin(malformed_and_mismatched_requests_are_dead_lettered(s)),
    ),
];

async fn an_unavailable_queue_falls_back(suite: ClientSuite, fallback: QueueFallback) {
    let mut fx = Fx::with(&suite, |b| {
        b.shared_queue(Arc::new(Unavailable))
            .queue_fallback(fallback)
    })
    .await;
    let squares = fx.job("squares", policy());
    squares.set(20, "old".to_owned()).await.expect("set works");
    fx.clock.advance(LIFETIME);
    let read = squares
        .get_with_status(20)
        .await
        .expect("the read still works");
    assert_eq!(
        (read.status, text(read.value.as_ref())),
        (Status::Stale, Some("old"))
    );
    assert!(read.refresh_triggered, "refreshed in this process instead");
    fx.event("the key is refreshed", |e| {
        matches!(e, Event::Refreshed { .. })
    })
    .await;
    assert_eq!(fx.upstream.calls(), 1);
    let after = squares.get_with_status(20).await.expect("the read works");
    assert_eq!(
        (after.status, text(after.value.as_ref())),
        (Status::Hit, Some("value 20 #1"))
    );
}

async fn a_full_queue_drops_and_the_next_read_retriggers(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let counters = Counters::default();
    let squares = counters.record(|| fx.job("squares", policy()));
    squares.set(21, "a".to_owned()).await.expect("set works");
    squares.set(22, "b".to_owned()).await.expect("set works");
    fx.clock.advance(LIFETIME);
    assert!(
        squares
            .get_with_status(21)
            .await
            .expect("the read works")
            .refresh_triggered
    );
    eventually("the refresh is enqueued", || async {
        fx.queue.enqueued() == 1
    })
    .await;
    fx.queue.set_full(true);
    let dropped = squares
        .get_with_status(22)
        .await
        .expect("a full queue never fails a read");
    assert_eq!(text(dropped.value.as_ref()), Some("b"));
    // With a remote store the read asks in the background, and cannot know it was dropped.
    assert!(
        fx.background_claims() || !dropped.refresh_triggered,
        "the refresh was dropped"
    );
    fx.event("the drop is reported", |e| {
        matches!(e, Event::EnqueueDropped { .. })
    })
    .await;
    assert_eq!(fx.queue.refused_full(), 1);
    assert_eq!(
        counters.get("cacheback_enqueue_dropped_total"),
        1,
        "the drop is counted"
    );
    // The claim was released: the next read tries again (and, the queue still full, drops).
    squares.get_with_status(22).await.expect("the read works");
    fx.event("the next read tried again", |e| {
        matches!(e, Event::EnqueueDropped { .. })
    })
    .await;
    assert_eq!(fx.queue.refused_full(), 2, "the next read tried again");
    fx.queue.set_full(false);
    let read = squares.get_with_status(22).await.expect("the read works");
    assert!(
        read.refresh_triggered,
        "with room again, the refresh is enqueued"
    );
    eventually("the refresh is enqueued", || async {
        fx.queue.enqueued() == 2
    })
    .await;
}

async fn unknown_jobs_are_dead_lettered(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    // A job only the web client knows (a deploy mismatch), and a good one behind it.
    let web = fx.web.clone();
    let unknown = fx.job_on(&web, "not-on-the-worker", policy().fetch_on_miss(false));
    assert!(
        unknown
            .get_with_status(27)
            .await
            .expect("the read works")
            .refresh_triggered
    );
    let squares = fx.job("squares", policy().fetch_on_miss(false));
    assert!(
        squares
            .get_with_status(28)
            .await
            .expect("the read works")
            .refresh_triggered
    );
    fx.start_worker();
    let Event::DeadLettered { job, reason } = fx
        .event("the unknown job is dead-lettered", |e| {
            matches!(e, Event::DeadLettered { .. })
        })
        .await
    else {
        unreachable!("matched above")
    };
    assert_eq!(job.as_deref(), Some("not-on-the-worker"));
    assert!(
        reason.contains("unknown job `not-on-the-worker`"),
        "{reason}"
    );
    eventually("the worker went on and refreshed the good request", || {
        is_fresh(&squares, 28)
    })
    .await;
    fx.settled("both requests are done with").await;
    let letters = fx.queue.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let request = letters[0].request.as_ref().expect("the request is kept");
    assert_eq!(request.job, "not-on-the-worker");
    assert!(letters[0].reason.contains("unknown job"), "{letters:?}");
    let reports = fx.stop_workers().await;
    assert_eq!((reports[0].processed, reports[0].dead_lettered), (1, 1));
}

async fn malformed_and_mismatched_requests_are_dead_lettered(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    fx.start_worker();
    let bad_args = RefreshRequest {
        job: "squares".to_owned(),
        key: squares.key(&29).expect("the key derives"),
        args: vec![0xff, 0xff, 0xff],
        codec: Codec::Postcard.id(),
        token: ClaimToken::random(),
        generation: 0,
        enqueued_at: Timestamp::EPOCH,
        prior_failures: 0,
        queue: "default".to_owned(),
    };
    fx.queue
        .enqueue(bad_args.clone())
        .await
        .expect("the queue accepts it");
    let reason = dead_lettered(&mut fx, "args that do not decode").await;
    assert!(reason.contains("args do not decode"), "{reason}");
    // Another prefix: a web process configured differently from its workers.
    let mismatched = RefreshRequest {
        args: Codec::Postcard.encode(&29u64).expect("args encode"),
        key: "otherapp:squares:00000000000000000000000000000000".to_owned(),
        ..bad_args
    };
    fx.queue
        .enqueue(mismatched)
        .await
        .expect("the queue accepts it");
    let reason = dead_lettered(&mut fx, "a key derived differently").await;
    assert!(reason.contains("key mismatch"), "{reason}");
    assert_eq!(fx.queue.dead_letters().len(), 2);
    assert_eq!(
        fx.upstream.calls(),
        0,
        "nothing was fetched for bad requests"
    );
    fx.stop_workers().await;
}

async fn dead_lettered(fx: &mut Fx, what: &str) -> String {
    match fx
        .event(what, |e| matches!(e, Event::DeadLettered { .. }))
        .await
    {
        Event::DeadLettered { reason, .. } => reason,
        _ => unreachable!("matched above"),
    }
}
