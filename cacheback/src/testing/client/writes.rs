//! Writes and explicit operations: `refresh`, `set`, `peek`, `delete`, `invalidate`,
//! `refresh_async`, `refresh_many`; keys of different jobs; values over the size limit and
//! entries that do not decode.

use super::counters::Counters;
use super::fixture::{Fx, Mode, SuiteJob, eventually, is_fresh, policy, text};
use super::{Behaviour, ClientSuite};
use crate::client::{JobHandle, Status};
use crate::error::Error;
use crate::job::job_fn;
use crate::observe::Event;
use crate::policy::Freshness;

pub(super) const BEHAVIOURS: &[Behaviour] = &[
    (
        "refresh fetches and stores, set stores without fetching, peek shows the metadata, \
         delete removes",
        |s| Box::pin(refresh_set_peek_delete(s)),
    ),
    (
        "invalidate keeps serving the old value and enqueues one refresh; refresh_async also \
         refreshes a missing key",
        |s| Box::pin(invalidate_is_soft(s)),
    ),
    (
        "jobs with the same args never collide, and a worker writes the key the reader reads",
        |s| Box::pin(jobs_with_the_same_args_do_not_collide(s)),
    ),
    ("refresh_many reports progress and failures", |s| {
        Box::pin(refresh_many_reports_progress_and_failures(s))
    }),
    (
        "a value over the size limit is refused with the sizes and the old entry kept",
        |s| Box::pin(an_oversized_value_is_refused_and_the_old_entry_kept(s)),
    ),
    (
        "a fetched value over the size limit is served, bypassing the cache, and says so",
        |s| Box::pin(an_oversized_fetched_value_bypasses_the_cache(s)),
    ),
    (
        "an entry that does not decode reads as a miss, is counted, and is overwritten",
        |s| Box::pin(an_undecodable_entry_reads_as_a_miss(s)),
    ),
];

async fn refresh_set_peek_delete(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    let value = squares.refresh(11).await.expect("refresh works");
    assert_eq!(*value, "value 11 #1");
    assert_eq!(fx.upstream.calls(), 1);
    let peek = squares
        .peek(11)
        .await
        .expect("peek works")
        .expect("refresh stores");
    assert_eq!(text(peek.value.as_ref()), Some("value 11 #1"));
    assert_eq!(peek.meta.generation, 1);
    assert_eq!(peek.freshness, Freshness::Fresh);
    assert!(
        peek.claim.claim.is_none(),
        "no claim left: {:?}",
        peek.claim
    );
    assert!(
        peek.key.starts_with(&format!("{}:squares:", fx.prefix)),
        "{}",
        peek.key
    );
    assert_eq!(peek.key, squares.key(&11).expect("the key derives"));
    let read = squares.get_with_status(11).await.expect("the read works");
    assert_eq!(read.status, Status::Hit);

    squares.set(11, "set".to_owned()).await.expect("set works");
    assert_eq!(fx.upstream.calls(), 1, "set does not fetch");
    let peek = squares
        .peek(11)
        .await
        .expect("peek works")
        .expect("set stores");
    assert_eq!(text(peek.value.as_ref()), Some("set"));
    assert_eq!(
        peek.meta.generation, 2,
        "every write moves the generation on"
    );
    assert!(
        peek.claim.claim.is_none(),
        "set takes no claim: {:?}",
        peek.claim
    );

    squares.delete(11).await.expect("delete works");
    assert!(
        squares.peek(11).await.expect("peek works").is_none(),
        "delete removes"
    );
    let after = squares.get_with_status(11).await.expect("the read works");
    assert_eq!(after.status, Status::MissFetched);
    for _ in 0..2 {
        squares
            .delete(12)
            .await
            .expect("deleting a missing key is not an error");
    }
}

async fn invalidate_is_soft(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    squares.set(13, "old".to_owned()).await.expect("set works");
    fx.upstream.close_gate();
    fx.start_worker();
    assert!(
        squares.invalidate(13).await.expect("invalidate works"),
        "one refresh enqueued"
    );
    assert_eq!(fx.queue.enqueued(), 1);
    let during = squares.get_with_status(13).await.expect("the read works");
    assert_eq!(
        (during.status, text(during.value.as_ref())),
        (Status::Stale, Some("old")),
        "the old value keeps being served"
    );
    assert!(
        !during.refresh_triggered,
        "the invalidation's refresh is already claimed"
    );
    fx.upstream.called(1, "the worker's fetch starts").await;
    fx.upstream.open_gate();
    fx.event("the refresh lands", |e| {
        matches!(e, Event::Refreshed { .. })
    })
    .await;
    let after = fx.read_written(&squares, 13, "value 13 #1").await;
    assert_eq!(
        (after.status, text(after.value.as_ref())),
        (Status::Hit, Some("value 13 #1"))
    );

    let missing = squares.invalidate(14).await.expect("invalidate works");
    assert!(!missing, "a missing key: nothing to invalidate");
    assert_eq!(fx.queue.enqueued(), 1);
    assert!(
        squares
            .refresh_async(14)
            .await
            .expect("refresh_async works"),
        "refresh_async, unlike invalidate, also refreshes a missing key"
    );
    fx.event("the refresh lands", |e| {
        matches!(e, Event::Refreshed { .. })
    })
    .await;
    let read = squares.get_with_status(14).await.expect("the read works");
    assert_eq!(read.status, Status::Hit);
    fx.stop_workers().await;
}

async fn jobs_with_the_same_args_do_not_collide(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let a = fx.job("job_a", policy().fetch_on_miss(false));
    let b = fx.job("job_b", policy());
    b.set(10, "from b".to_owned()).await.expect("set works");
    let key = |h: &JobHandle<SuiteJob>| h.key(&10).expect("the key derives");
    assert_ne!(key(&a), key(&b), "two jobs, two keys");
    assert_eq!(key(&a), key(&a), "one job, one key");
    assert!(
        a.get_cached(10).await.expect("the read works").is_none(),
        "b's value is not a's"
    );
    fx.start_worker();
    eventually("the worker refreshed a's key", || is_fresh(&a, 10)).await;
    let from_a = a.get_cached(10).await.expect("the read works");
    assert_eq!(text(from_a.as_ref()), Some("value 10 #1"));
    assert_eq!(*b.get(10).await.expect("the read works"), "from b");
    a.set(1, "from a".to_owned()).await.expect("set works");
    let from_b = b.get_with_status(1).await.expect("the read works");
    assert_eq!(from_b.status, Status::MissFetched, "a's value is not b's");
    assert_eq!(*a.get(1).await.expect("the read works"), "from a");
    fx.stop_workers().await;
}

async fn refresh_many_reports_progress_and_failures(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let squares = fx.job("squares", policy());
    let mut seen = Vec::new();
    let report = squares.refresh_many(0..20, 4, |p| seen.push(p.done)).await;
    assert_eq!((report.refreshed, report.failed), (20, 0));
    assert_eq!(
        seen,
        (1..=20).collect::<Vec<_>>(),
        "progress after each key"
    );
    assert_eq!(fx.upstream.calls(), 20);
    fx.upstream.set_mode(Mode::Fail);
    let report = squares.refresh_many(vec![1, 2, 3], 2, |_| {}).await;
    assert_eq!((report.failed, report.failures.len()), (3, 3));
    let kept = squares.get(1).await.expect("the read works");
    assert_eq!(*kept, "value 1 #2", "a failed refresh keeps the old value");
}

async fn an_oversized_value_is_refused_and_the_old_entry_kept(suite: ClientSuite) {
    let mut fx = Fx::with(&suite, |b| b.max_value_bytes(64)).await;
    let squares = fx.job("squares", policy());
    squares
        .set(24, "small".to_owned())
        .await
        .expect("set works");
    let err = squares
        .set(24, "x".repeat(100))
        .await
        .expect_err("a value over the limit is refused");
    assert!(
        matches!(
            err,
            Error::TooLarge {
                size: 101,
                limit: 64,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "value of job `squares` is 101 bytes, over the limit of 64 bytes"
    );
    assert_eq!(
        *squares.get(24).await.expect("the read works"),
        "small",
        "old entry kept"
    );
}

async fn an_oversized_fetched_value_bypasses_the_cache(suite: ClientSuite) {
    let mut fx = Fx::with(&suite, |b| b.max_value_bytes(64)).await;
    let squares = fx.job("squares", policy());
    fx.upstream.pad(500);
    let lookup = squares.get_with_status(500).await.expect("the read works");
    assert_eq!(
        lookup.status,
        Status::Bypassed,
        "not a miss: the cache was bypassed"
    );
    assert!(lookup.value.is_some(), "the value is served");
    let Event::CacheBypassed { error, .. } = fx
        .event("the bypass is reported", |e| {
            matches!(e, Event::CacheBypassed { .. })
        })
        .await
    else {
        unreachable!("matched above")
    };
    assert!(
        matches!(error, Error::TooLarge { .. }),
        "the event says why: {error}"
    );
    let peek = squares.peek(500).await.expect("peek works");
    assert!(peek.is_none_or(|p| p.value.is_none()), "nothing was stored");
    fx.upstream.pad(0);
    let small = squares.get_with_status(5).await.expect("the read works");
    assert_eq!(
        small.status,
        Status::MissFetched,
        "values under the limit are cached"
    );
}

async fn an_undecodable_entry_reads_as_a_miss(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    // Two deployments disagree on the job's value type (a botched rolling deploy).
    let old = fx.client_builder().build().expect("the old client builds");
    let typed = old.job(job_fn("squares", policy(), |n: u64| async move {
        Ok::<_, std::io::Error>(n)
    }));
    typed.set(23, 23).await.expect("set works");
    let counters = Counters::default();
    let squares = counters.record(|| fx.job("squares", policy()));
    let read = squares.get_with_status(23).await.expect("the read works");
    assert_eq!(
        read.status,
        Status::MissFetched,
        "an entry that does not decode is a miss"
    );
    assert_eq!(text(read.value.as_ref()), Some("value 23 #1"));
    assert_eq!(
        counters.get("cacheback_decode_errors_total"),
        1,
        "and it is counted"
    );
    fx.event("the entry is reported", |e| {
        matches!(e, Event::EntryUndecodable { .. })
    })
    .await;
    let after = squares.get_with_status(23).await.expect("the read works");
    assert_eq!(after.status, Status::Hit, "the fetch overwrote it");
}
