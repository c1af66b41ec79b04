//! Tags: `invalidate_tag` and `delete_tag` act on every entry carrying the tag, with the
//! meaning of `invalidate` and `delete` per key, and fence fetches in flight.

use super::fixture::{Fx, SuiteJob, eventually, is_fresh, policy, text};
use super::{Behaviour, ClientSuite};
use crate::client::{JobHandle, Status};
use crate::error::Error;
use crate::policy::Freshness;

pub(super) const BEHAVIOURS: &[Behaviour] = &[
    (
        "invalidate_tag serves tagged entries stale, refreshes each once, leaves others alone",
        |s| Box::pin(invalidate_tag_refreshes_each_tagged_entry_once(s)),
    ),
    ("delete_tag makes tagged entries missing", |s| {
        Box::pin(delete_tag_makes_tagged_entries_missing(s))
    }),
    (
        "a fetch in flight across invalidate_tag is not stored Fresh",
        |s| Box::pin(a_fetch_in_flight_across_invalidate_tag_is_not_fresh(s)),
    ),
    ("a refreshed value carries its own tags", |s| {
        Box::pin(a_refreshed_value_carries_its_own_tags(s))
    }),
    ("invalid tags are refused with a clear error", |s| {
        Box::pin(invalid_tags_are_refused(s))
    }),
];

/// For a store that keeps no tags.
pub(super) const WITHOUT_TAGS: &[Behaviour] = &[(
    "a store without tags refuses invalidate_tag and still caches tagged values",
    |s| Box::pin(a_store_without_tags_refuses_clearly(s)),
)];

async fn a_store_without_tags_refuses_clearly(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let tagged = fx.tagged_job("tagged", policy());
    assert_eq!(
        tagged
            .get_with_status(1)
            .await
            .expect("the read works")
            .status,
        Status::MissFetched
    );
    assert_eq!(
        status(&tagged, 1).await,
        Status::Hit,
        "the tagged value is cached"
    );
    for error in [
        fx.web.invalidate_tag("all").await.unwrap_err(),
        fx.web.delete_tag("all").await.unwrap_err(),
    ] {
        assert!(matches!(error, Error::Store { .. }), "{error}");
        assert!(
            error.to_string().contains("does not support tags"),
            "{error}"
        );
    }
    assert_eq!(status(&tagged, 1).await, Status::Hit);
}

async fn status(job: &JobHandle<SuiteJob>, n: u64) -> Status {
    job.get_with_status(n).await.expect("the read works").status
}

async fn invalidate_tag_refreshes_each_tagged_entry_once(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let tagged = fx.tagged_job("tagged", policy());
    let plain = fx.job("plain", policy());
    for n in 1..=4 {
        tagged.get(n).await.expect("the miss is fetched");
    }
    plain.get(1).await.expect("the miss is fetched");
    assert_eq!(fx.upstream.calls(), 5);
    fx.start_worker();

    fx.web
        .invalidate_tag("parity:1")
        .await
        .expect("invalidate_tag works");
    for n in [2, 4] {
        assert_eq!(
            status(&tagged, n).await,
            Status::Hit,
            "{n} is not tagged parity:1"
        );
    }
    assert_eq!(
        status(&plain, 1).await,
        Status::Hit,
        "an untagged entry is untouched"
    );
    for n in [1, 3] {
        let first = tagged.get_with_status(n).await.expect("the read works");
        assert_eq!(first.status, Status::Stale, "{n} is served stale at once");
        assert!(first.value.is_some());
        // More readers of the stale value: still one refresh.
        for _ in 0..5 {
            tagged.get_with_status(n).await.expect("the read works");
        }
    }
    fx.upstream
        .called(7, "both tagged entries are refreshed")
        .await;
    fx.settled("the refreshes are acknowledged").await;
    for n in [1, 3] {
        eventually("the refreshed value is read Fresh", || async {
            status(&tagged, n).await == Status::Hit
        })
        .await;
    }
    assert_eq!(
        fx.upstream.calls(),
        7,
        "each invalidated entry is refreshed exactly once"
    );
    assert_eq!(
        fx.queue.enqueued(),
        2,
        "one refresh request per invalidated entry"
    );
    fx.stop_workers().await;
}

async fn delete_tag_makes_tagged_entries_missing(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let tagged = fx.tagged_job("tagged", policy().fetch_on_miss(false));
    tagged.set(1, "one".to_owned()).await.expect("set works");
    tagged.set(2, "two".to_owned()).await.expect("set works");
    let plain = fx.job("plain", policy());
    plain.set(1, "plain".to_owned()).await.expect("set works");

    fx.web
        .delete_tag("parity:1")
        .await
        .expect("delete_tag works");
    assert!(
        tagged.peek(1).await.expect("peek works").is_none(),
        "a deleted entry has nothing to show"
    );
    let read = tagged.get_with_status(1).await.expect("the read works");
    assert_eq!(read.status, Status::Miss, "the tagged entry is gone");
    assert!(read.value.is_none());
    assert_eq!(
        status(&tagged, 2).await,
        Status::Hit,
        "2 is not tagged parity:1"
    );
    assert_eq!(
        status(&plain, 1).await,
        Status::Hit,
        "an untagged entry is untouched"
    );

    // A value fetched after the deletion is served again.
    let fresh = tagged.get(1).await.expect("the miss is fetched");
    assert!(fresh.starts_with("value 1 #"), "{fresh}");
    assert_eq!(status(&tagged, 1).await, Status::Hit);
}

async fn a_fetch_in_flight_across_invalidate_tag_is_not_fresh(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let tagged = fx.tagged_job("tagged", policy());
    fx.upstream.close_gate();
    let reader = {
        let tagged = tagged.clone();
        tokio::spawn(async move { tagged.get_with_status(5).await })
    };
    fx.upstream.called(1, "the miss fetches").await;
    fx.web
        .invalidate_tag("all")
        .await
        .expect("invalidate_tag works");
    fx.upstream.open_gate();
    let lookup = reader
        .await
        .expect("the reader does not panic")
        .expect("the read works");
    assert_eq!(
        lookup.status,
        Status::MissFetched,
        "the reader gets its value"
    );
    let peek = tagged
        .peek(5)
        .await
        .expect("peek works")
        .expect("it was stored");
    assert_eq!(
        peek.freshness,
        Freshness::Stale,
        "a value fetched before invalidate_tag was stored Fresh after it"
    );
    assert_eq!(status(&tagged, 5).await, Status::Stale);
}

async fn a_refreshed_value_carries_its_own_tags(suite: ClientSuite) {
    let mut fx = Fx::new(&suite).await;
    let tagged = fx.tagged_job("tagged", policy());
    let first = tagged.get(7).await.expect("the miss is fetched");
    assert_eq!(first.as_str(), "value 7 #1");
    let second = tagged.refresh(7).await.expect("refresh works");
    assert_eq!(second.as_str(), "value 7 #2");

    fx.web
        .invalidate_tag("call:1")
        .await
        .expect("invalidate_tag works");
    assert!(
        is_fresh(&tagged, 7).await,
        "the tag of the value that was replaced no longer applies"
    );
    fx.web
        .invalidate_tag("call:2")
        .await
        .expect("invalidate_tag works");
    let read = tagged.get_with_status(7).await.expect("the read works");
    assert_eq!(
        read.status,
        Status::Stale,
        "the new value's own tag applies"
    );
    assert_eq!(text(read.value.as_ref()), Some("value 7 #2"));
}

async fn invalid_tags_are_refused(suite: ClientSuite) {
    let fx = Fx::new(&suite).await;
    for bad in ["", "two words", "{slot}"] {
        let error = fx
            .web
            .invalidate_tag(bad)
            .await
            .expect_err("an invalid tag is refused");
        assert!(matches!(error, Error::InvalidTag { .. }), "{error}");
        assert!(fx.web.delete_tag(bad).await.is_err());
    }
    let long = "x".repeat(129);
    let error = fx.web.invalidate_tag(&long).await.unwrap_err();
    assert!(error.to_string().contains("129 bytes"), "{error}");
}
