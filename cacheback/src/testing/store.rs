use std::time::Duration;

use bytes::Bytes;

use crate::clock::Timestamp;
use crate::entry::{Entry, EntryMeta, Payload};
use crate::key::Key;
use crate::store::{
    ClaimOutcome, EntryTags, Put, PutCondition, PutOutcome, Release, Store, TagAction, TagState,
};

const PREFIX: &str = "conformance";
const JOB: &str = "suite";
const NOW: Timestamp = Timestamp::from_millis(1_704_067_200_000);
const TTL: Duration = Duration::from_secs(60);

fn key(digest: u128) -> Key<'static> {
    Key::new(PREFIX, JOB, digest)
}

fn fresh_key() -> Key<'static> {
    key(fastrand::u128(..))
}

fn meta(offset_ms: u64) -> EntryMeta {
    let at = NOW.saturating_add(Duration::from_millis(offset_ms));
    let mut m = EntryMeta::new(
        at,
        at.saturating_add(Duration::from_secs(10)),
        at.saturating_add(Duration::from_secs(100)),
    );
    m.fetch_duration = Duration::from_millis(250);
    m.schema_version = 3;
    m.size = 5;
    m
}

fn value_entry(value: &str, offset_ms: u64) -> Entry {
    let payload = Payload::encoded(1, Bytes::copy_from_slice(value.as_bytes()));
    let mut m = meta(offset_ms);
    m.size = u32::try_from(value.len()).unwrap_or(u32::MAX);
    Entry::new(m, payload)
}

fn tombstone() -> Entry {
    let until = NOW.saturating_add(TTL);
    Entry::new(EntryMeta::new(NOW, until, until), Payload::tombstone())
}

fn value_of(entry: &Entry) -> String {
    assert!(
        !entry.is_tombstone(),
        "expected a value, the store returned a tombstone"
    );
    let (codec, bytes) = entry
        .payload
        .as_encoded()
        .expect("expected the encoded value the store was given");
    assert_eq!(
        codec, 1,
        "store returned another codec id than it was given"
    );
    String::from_utf8(bytes.to_vec()).expect("store returned other bytes than it was given")
}

async fn put(store: &dyn Store, k: Key<'_>, entry: Entry, condition: PutCondition) -> PutOutcome {
    store
        .put(k, Put::new(entry, condition, TTL))
        .await
        .unwrap_or_else(|e| panic!("put failed: {e}"))
}

async fn get(store: &dyn Store, k: Key<'_>) -> Option<Entry> {
    store
        .get(k)
        .await
        .unwrap_or_else(|e| panic!("get failed: {e}"))
}

async fn claim(store: &dyn Store, k: Key<'_>, now: Timestamp) -> ClaimOutcome {
    store
        .claim(k, now, TTL)
        .await
        .unwrap_or_else(|e| panic!("claim failed: {e}"))
}

async fn release(store: &dyn Store, k: Key<'_>, outcome: &ClaimOutcome, how: Release) {
    let ClaimOutcome::Won { token, .. } = outcome else {
        panic!("release of a claim that was not won: {outcome:?}");
    };
    store
        .release(k, *token, how)
        .await
        .unwrap_or_else(|e| panic!("release failed: {e}"));
}

/// Runs the [`Store`] conformance suite against `store`. Panics on the first violation.
pub async fn store_suite(store: &dyn Store) {
    missing_keys_are_none(store).await;
    writes_assign_generations(store).await;
    conditional_writes(store).await;
    tombstones_keep_the_generation(store).await;
    claims_are_exclusive_and_expire(store).await;
    release_checks_the_token(store).await;
    failures_back_off_and_clear(store).await;
    put_and_release_frees_the_owners_claim(store).await;
    put_and_claim_claims_only_what_it_writes(store).await;
    concurrent_claims_have_one_winner(store).await;
    claims_of_many_keys_are_each_decided_alone(store).await;
    entries_keep_their_tags(store).await;
    tag_bumps_move_one_clock(store).await;
}

async fn missing_keys_are_none(store: &dyn Store) {
    let k = fresh_key();
    assert!(
        get(store, k).await.is_none(),
        "a missing key must read as None"
    );
    let state = store
        .claim_state(k, NOW)
        .await
        .unwrap_or_else(|e| panic!("claim_state failed: {e}"));
    assert_eq!(state.claim, None, "a missing key has no claim");
    assert_eq!(state.failures, 0, "a missing key has no failures");
}

async fn writes_assign_generations(store: &dyn Store) {
    let k = fresh_key();
    let first = value_entry("one", 0);
    assert_eq!(
        put(store, k, first.clone(), PutCondition::Always).await,
        PutOutcome::Written { generation: 1 },
        "the first write of a key gets generation 1"
    );
    let read = get(store, k).await.expect("a written key must be readable");
    assert_eq!(
        read.meta.generation, 1,
        "get must return the assigned generation"
    );
    let expected = EntryMeta {
        generation: 1,
        ..first.meta
    };
    assert_eq!(read.meta, expected, "metadata must round-trip unchanged");
    assert_eq!(
        value_of(&read),
        "one",
        "the value must round-trip unchanged"
    );
    assert_eq!(
        put(store, k, value_entry("two", 1), PutCondition::Always).await,
        PutOutcome::Written { generation: 2 },
        "every write bumps the generation"
    );
    assert_eq!(value_of(&get(store, k).await.expect("written")), "two");
}

async fn conditional_writes(store: &dyn Store) {
    let k = fresh_key();
    assert_eq!(
        put(store, k, value_entry("a", 0), PutCondition::IfGeneration(5)).await,
        PutOutcome::Discarded { current: 0 },
        "IfGeneration(n>0) on a missing key must be discarded"
    );
    assert!(
        get(store, k).await.is_none(),
        "a discarded write must not create the key"
    );
    assert_eq!(
        put(store, k, value_entry("a", 0), PutCondition::IfGeneration(0)).await,
        PutOutcome::Written { generation: 1 },
        "IfGeneration(0) on a missing key must write"
    );
    put(store, k, value_entry("b", 1), PutCondition::Always).await;
    assert_eq!(
        put(
            store,
            k,
            value_entry("late", 2),
            PutCondition::IfGeneration(1)
        )
        .await,
        PutOutcome::Discarded { current: 2 },
        "a write conditioned on an old generation must be discarded"
    );
    assert_eq!(
        value_of(&get(store, k).await.expect("written")),
        "b",
        "a discarded write must leave the entry unchanged"
    );
    assert_eq!(
        put(store, k, value_entry("c", 3), PutCondition::IfGeneration(2)).await,
        PutOutcome::Written { generation: 3 },
        "a write conditioned on the current generation must write"
    );
}

async fn tombstones_keep_the_generation(store: &dyn Store) {
    let k = fresh_key();
    put(store, k, value_entry("v", 0), PutCondition::Always).await;
    assert_eq!(
        put(store, k, tombstone(), PutCondition::Always).await,
        PutOutcome::Written { generation: 2 },
        "a tombstone is a write"
    );
    let read = get(store, k).await.expect("a tombstone must be readable");
    assert!(
        read.is_tombstone(),
        "a tombstone must read back as a tombstone"
    );
    assert_eq!(read.meta.generation, 2);
    assert_eq!(
        put(
            store,
            k,
            value_entry("late", 1),
            PutCondition::IfGeneration(1)
        )
        .await,
        PutOutcome::Discarded { current: 2 },
        "a refresh from before the delete must not resurrect the key"
    );
}

async fn claims_are_exclusive_and_expire(store: &dyn Store) {
    let k = fresh_key();
    let won = claim(store, k, NOW).await;
    assert!(
        matches!(won, ClaimOutcome::Won { failures: 0, .. }),
        "the first claim must win, got {won:?}"
    );
    let held = claim(store, k, NOW.saturating_add(Duration::from_secs(1))).await;
    assert!(
        matches!(held, ClaimOutcome::Held { .. }),
        "a second claim while the first is live must be held, got {held:?}"
    );
    let state = store.claim_state(k, NOW).await.expect("claim_state");
    assert!(state.claim.is_some(), "claim_state must show a live claim");
    let after = claim(store, k, NOW.saturating_add(TTL)).await;
    match (won, after) {
        (ClaimOutcome::Won { token: a, .. }, ClaimOutcome::Won { token: b, .. }) => {
            assert_ne!(a, b, "a re-taken claim must have a new token");
        }
        _ => panic!("a claim must be winnable again once its TTL passed, got {after:?}"),
    }
}

async fn release_checks_the_token(store: &dyn Store) {
    let k = fresh_key();
    let first = claim(store, k, NOW).await;
    // Someone whose claim expired and was re-taken must not free the new owner's claim.
    let stale_owner = ClaimOutcome::Won {
        token: crate::store::ClaimToken::random(),
        failures: 0,
    };
    release(store, k, &stale_owner, Release::Abandoned).await;
    assert!(
        matches!(claim(store, k, NOW).await, ClaimOutcome::Held { .. }),
        "release with another token must leave the claim in place"
    );
    release(store, k, &first, Release::Abandoned).await;
    assert!(
        matches!(claim(store, k, NOW).await, ClaimOutcome::Won { .. }),
        "release by the owner must free the claim"
    );
}

async fn failures_back_off_and_clear(store: &dyn Store) {
    let k = fresh_key();
    let won = claim(store, k, NOW).await;
    let retry_after = NOW.saturating_add(Duration::from_secs(10));
    let failed = Release::Failed {
        failures: 1,
        retry_after,
        forget_at: NOW.saturating_add(Duration::from_secs(600)),
    };
    release(store, k, &won, failed).await;
    let backing = claim(store, k, NOW.saturating_add(Duration::from_secs(5))).await;
    assert_eq!(
        backing,
        ClaimOutcome::BackingOff {
            retry_after,
            failures: 1
        },
        "claims before retry_after must back off"
    );
    let state = store.claim_state(k, NOW).await.expect("claim_state");
    assert_eq!((state.failures, state.retry_after), (1, Some(retry_after)));
    let retry = claim(store, k, retry_after).await;
    assert!(
        matches!(retry, ClaimOutcome::Won { failures: 1, .. }),
        "at retry_after the claim must be winnable and report the failure count, got {retry:?}"
    );
    release(store, k, &retry, Release::Abandoned).await;
    let again = claim(store, k, retry_after).await;
    assert!(
        matches!(again, ClaimOutcome::Won { failures: 1, .. }),
        "an abandoned refresh must keep the failure count, got {again:?}"
    );
    release(store, k, &again, Release::Refreshed).await;
    let cleared = claim(store, k, retry_after).await;
    assert!(
        matches!(cleared, ClaimOutcome::Won { failures: 0, .. }),
        "a successful refresh must clear the failure state, got {cleared:?}"
    );

    // A failure recorded after the claim expired is still recorded.
    let k = fresh_key();
    let lost = ClaimOutcome::Won {
        token: crate::store::ClaimToken::random(),
        failures: 0,
    };
    release(store, k, &lost, failed).await;
    assert!(
        matches!(claim(store, k, NOW).await, ClaimOutcome::BackingOff { .. }),
        "failure state must be recorded even without a live claim"
    );
}

async fn put_and_claim_claims_only_what_it_writes(store: &dyn Store) {
    let k = fresh_key();
    let put = |text: &str, condition| Put::new(value_entry(text, 0), condition, TTL);
    let put_and_claim = |p: Put| async move {
        store
            .put_and_claim(k, p, NOW, TTL)
            .await
            .unwrap_or_else(|e| panic!("put_and_claim failed: {e}"))
    };
    // Written: the claim is taken, as `claim` would take it.
    let (written, won) = put_and_claim(put("one", PutCondition::IfGeneration(0))).await;
    assert_eq!(written, PutOutcome::Written { generation: 1 });
    assert_eq!(value_of(&get(store, k).await.expect("written")), "one");
    let Some(won @ ClaimOutcome::Won { failures: 0, .. }) = won else {
        panic!("the write's claim must win, got {won:?}");
    };
    assert!(
        matches!(claim(store, k, NOW).await, ClaimOutcome::Held { .. }),
        "the claim taken with the write holds the key"
    );
    // Written while another claim holds the key: the write happens, the claim is refused.
    let (written, held) = put_and_claim(put("two", PutCondition::Always)).await;
    assert_eq!(written, PutOutcome::Written { generation: 2 });
    assert!(
        matches!(held, Some(ClaimOutcome::Held { .. })),
        "a held claim is not taken again, got {held:?}"
    );
    release(store, k, &won, Release::Abandoned).await;
    // Discarded: nothing written, nothing claimed.
    let (discarded, none) = put_and_claim(put("late", PutCondition::IfGeneration(1))).await;
    assert_eq!(discarded, PutOutcome::Discarded { current: 2 });
    assert_eq!(none, None, "a discarded write asks for no claim");
    let state = store
        .claim_state(k, NOW)
        .await
        .unwrap_or_else(|e| panic!("claim_state failed: {e}"));
    assert_eq!(
        state.claim, None,
        "a discarded write leaves the key unclaimed"
    );
    // A key backing off after a failure: written, the claim says so.
    let won = claim(store, k, NOW).await;
    let retry_after = NOW.saturating_add(Duration::from_secs(30));
    let failed = Release::Failed {
        failures: 1,
        retry_after,
        forget_at: NOW.saturating_add(Duration::from_secs(600)),
    };
    release(store, k, &won, failed).await;
    let (written, backing_off) = put_and_claim(put("three", PutCondition::Always)).await;
    assert_eq!(written, PutOutcome::Written { generation: 3 });
    assert!(
        matches!(
            backing_off,
            Some(ClaimOutcome::BackingOff { failures: 1, .. })
        ),
        "the write's claim backs off like any claim, got {backing_off:?}"
    );
}

async fn put_and_release_frees_the_owners_claim(store: &dyn Store) {
    let k = fresh_key();
    let won = claim(store, k, NOW).await;
    let failed = Release::Failed {
        failures: 2,
        retry_after: NOW,
        forget_at: NOW.saturating_add(Duration::from_secs(600)),
    };
    release(store, k, &won, failed).await;
    let won = claim(store, k, NOW).await;
    let ClaimOutcome::Won { token, .. } = won else {
        panic!("a claim at retry_after must win, got {won:?}");
    };
    let outcome = store
        .put_and_release(
            k,
            Put::new(value_entry("v", 0), PutCondition::IfGeneration(0), TTL),
            token,
        )
        .await
        .unwrap_or_else(|e| panic!("put_and_release failed: {e}"));
    assert_eq!(
        outcome,
        PutOutcome::Written { generation: 1 },
        "put_and_release writes"
    );
    assert_eq!(value_of(&get(store, k).await.expect("written")), "v");
    let next = claim(store, k, NOW).await;
    assert!(
        matches!(next, ClaimOutcome::Won { failures: 0, .. }),
        "put_and_release must free the claim and clear the failures, got {next:?}"
    );
    // A discarded write still releases (the fetch succeeded), and another owner's claim stays.
    let ClaimOutcome::Won { token: owner, .. } = next else {
        unreachable!()
    };
    let stranger = crate::store::ClaimToken::random();
    let outcome = store
        .put_and_release(
            k,
            Put::new(value_entry("late", 1), PutCondition::IfGeneration(0), TTL),
            stranger,
        )
        .await
        .unwrap_or_else(|e| panic!("put_and_release failed: {e}"));
    assert_eq!(outcome, PutOutcome::Discarded { current: 1 });
    assert!(
        matches!(claim(store, k, NOW).await, ClaimOutcome::Held { .. }),
        "put_and_release with another token must leave the claim in place"
    );
    let _ = token;
    release(
        store,
        k,
        &ClaimOutcome::Won {
            token: owner,
            failures: 0,
        },
        Release::Abandoned,
    )
    .await;
}

async fn concurrent_claims_have_one_winner(store: &dyn Store) {
    let k = fresh_key();
    let claims = (0..64).map(|_| claim(store, k, NOW));
    let outcomes = futures_util::future::join_all(claims).await;
    let winners = outcomes
        .iter()
        .filter(|o| matches!(o, ClaimOutcome::Won { .. }))
        .count();
    assert_eq!(
        winners, 1,
        "64 concurrent claims must have exactly one winner"
    );
}

async fn claims_of_many_keys_are_each_decided_alone(store: &dyn Store) {
    let outcomes = store.claim_many(&[], NOW, TTL).await;
    assert!(outcomes.is_empty(), "no keys, no outcomes");
    let (free, held, backing) = (fresh_key(), fresh_key(), fresh_key());
    let holder = claim(store, held, NOW).await;
    let failed = claim(store, backing, NOW).await;
    let retry_after = NOW.saturating_add(Duration::from_secs(10));
    let failure = Release::Failed {
        failures: 2,
        retry_after,
        forget_at: NOW.saturating_add(Duration::from_secs(600)),
    };
    release(store, backing, &failed, failure).await;
    // More keys than one round of a batching backend takes at once.
    let mut keys = vec![held, free, backing];
    keys.extend((0..300).map(|_| fresh_key()));
    let outcomes: Vec<ClaimOutcome> = store
        .claim_many(&keys, NOW, TTL)
        .await
        .into_iter()
        .map(|o| o.unwrap_or_else(|e| panic!("claim_many failed: {e}")))
        .collect();
    assert_eq!(outcomes.len(), keys.len(), "one outcome per key");
    let ClaimOutcome::Won { token, .. } = holder else {
        panic!("the first claim must win, got {holder:?}");
    };
    assert!(
        matches!(outcomes[0], ClaimOutcome::Held { .. }),
        "a held key stays held, got {:?}",
        outcomes[0]
    );
    assert_eq!(
        outcomes[2],
        ClaimOutcome::BackingOff {
            retry_after,
            failures: 2
        },
        "a key backing off says so"
    );
    let mut tokens = std::collections::HashSet::from([token]);
    for (n, outcome) in outcomes
        .iter()
        .enumerate()
        .filter(|&(n, _)| n != 0 && n != 2)
    {
        match outcome {
            ClaimOutcome::Won { token, failures: 0 } => {
                assert!(
                    tokens.insert(*token),
                    "key {n}: every claim has its own token"
                );
            }
            other => panic!("key {n} was free: it must be won, got {other:?}"),
        }
    }
    for (n, &k) in keys.iter().enumerate().skip(1).step_by(50) {
        assert!(
            matches!(claim(store, k, NOW).await, ClaimOutcome::Held { .. }),
            "key {n}: a claim taken in a batch is held like any other"
        );
    }
    // The same key twice in one batch, and in concurrent batches: one winner.
    let twice = fresh_key();
    let batches = (0..8).map(|_| store.claim_many(std::slice::from_ref(&twice), NOW, TTL));
    let mut outcomes = futures_util::future::join_all(batches).await;
    outcomes.push(store.claim_many(&[twice, twice], NOW, TTL).await);
    let winners = outcomes
        .into_iter()
        .flatten()
        .filter(|o| matches!(o, Ok(ClaimOutcome::Won { .. })))
        .count();
    assert_eq!(
        winners, 1,
        "a key claimed in several batches has one winner"
    );
}

async fn entries_keep_their_tags(store: &dyn Store) {
    let k = fresh_key();
    let tags =
        EntryTags::new(7, vec!["user:1".to_owned(), "org:2".to_owned()]).expect("valid tags");
    let entry = value_entry("tagged", 0).with_tags(Some(std::sync::Arc::new(tags.clone())));
    put(store, k, entry, PutCondition::Always).await;
    let read = get(store, k).await.expect("the entry was written");
    assert_eq!(value_of(&read), "tagged");
    assert_eq!(
        read.tags.as_deref(),
        Some(&tags),
        "the store must keep an entry's tags"
    );
}

async fn tag_bumps_move_one_clock(store: &dyn Store) {
    let prefix = format!("conformance-tags-{:016x}", fastrand::u64(..));
    let states = |tags: &'static [&'static str]| {
        let prefix = prefix.clone();
        async move {
            store
                .tag_states(&prefix, tags)
                .await
                .unwrap_or_else(|e| panic!("tag_states failed: {e}"))
        }
    };
    let bump = |tag: &'static str, action| {
        let prefix = prefix.clone();
        async move { store.bump_tag(&prefix, tag, action).await }
    };
    let untouched = states(&["a", "b"]).await;
    assert_eq!(untouched.clock, 0, "a prefix never bumped has clock 0");
    assert_eq!(untouched.states, [TagState::default(); 2]);
    if bump("a", TagAction::Invalidate).await.is_err() {
        // A store without tags: nothing is ever invalidated.
        assert_eq!(states(&["a"]).await.states, [TagState::default()]);
        return;
    }
    let b = bump("b", TagAction::Delete).await.expect("bump_tag works");
    assert_eq!(
        b,
        TagState::new(2, 2),
        "each bump takes the next clock value"
    );
    let a = bump("a", TagAction::Delete).await.expect("bump_tag works");
    assert_eq!(a, TagState::new(3, 3));
    let a = bump("a", TagAction::Invalidate)
        .await
        .expect("bump_tag works");
    assert_eq!(
        a,
        TagState::new(4, 3),
        "an invalidation keeps the last deletion"
    );
    let read = states(&["a", "b", "c"]).await;
    assert_eq!(read.clock, 4);
    assert_eq!(
        read.states,
        [
            TagState::new(4, 3),
            TagState::new(2, 2),
            TagState::default()
        ]
    );
    let bumps = (0..20).map(|_| bump("c", TagAction::Invalidate));
    let mut clocks: Vec<u64> = futures_util::future::join_all(bumps)
        .await
        .into_iter()
        .map(|r| r.expect("bump_tag works").invalidated)
        .collect();
    clocks.sort_unstable();
    assert_eq!(
        clocks,
        (5..25).collect::<Vec<_>>(),
        "concurrent bumps take distinct values"
    );
    assert_eq!(states(&["c"]).await.states, [TagState::new(24, 0)]);
}
