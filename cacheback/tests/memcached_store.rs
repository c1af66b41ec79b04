//! `MemcachedStore` against a real memcached: the Store conformance suite and the client suite,
//! concurrent readers of one key sharing commands, key names memcached would refuse, the item
//! size limit, expiry times, compare-and-swap under concurrent writers, and plain-words errors
//! through a memcached restart.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cacheback::clock::Timestamp;
use cacheback::store::{
    ClaimOutcome, Entry, EntryMeta, Key, Payload, Put, PutCondition, PutOutcome, Store,
};
use cacheback::{Error, MemcachedStore, testing};
use support::MemcachedServer;

const MIB: usize = 1 << 20;

fn entry(value: Vec<u8>) -> Entry {
    let now = Timestamp::now();
    let meta = EntryMeta::new(
        now,
        now.saturating_add(Duration::from_secs(60)),
        now.saturating_add(Duration::from_secs(120)),
    );
    Entry::new(meta, Payload::encoded(1, value.into()))
}

fn value_of(entry: &Entry) -> Vec<u8> {
    match entry.payload.as_encoded() {
        Some((_, bytes)) => bytes.to_vec(),
        None => panic!("expected bytes, got {:?}", entry.payload),
    }
}

async fn put(
    store: &MemcachedStore,
    key: Key<'_>,
    value: Vec<u8>,
) -> cacheback::Result<PutOutcome> {
    let put = Put::new(entry(value), PutCondition::Always, Duration::from_secs(120));
    store.put(key, put).await
}

async fn read(store: &MemcachedStore, key: Key<'_>) -> Option<Vec<u8>> {
    store.get(key).await.unwrap().map(|e| value_of(&e))
}

#[tokio::test]
async fn memcached_store_conforms() {
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    let store = MemcachedStore::from_url(&server.url()).unwrap();
    testing::store_suite(&store).await;
}

#[tokio::test]
async fn clients_on_a_memcached_store_behave() {
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    let store = MemcachedStore::from_url(&server.url()).unwrap();
    testing::client_suite(Arc::new(store)).await;
}

#[tokio::test]
async fn a_read_is_exactly_one_mg() {
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    let store = MemcachedStore::from_url(&server.url()).unwrap();
    let key = Key::new("onecmd", "job", 42);
    put(&store, key, vec![7; 100]).await.unwrap();
    let (gets, sets) = (
        server.stat("cmd_get").unwrap(),
        server.stat("cmd_set").unwrap(),
    );
    for _ in 0..100 {
        let entry = store.get(key).await.unwrap().unwrap();
        assert_eq!(entry.meta.generation, 1);
    }
    assert_eq!(
        server.stat("cmd_get").unwrap() - gets,
        100,
        "one mg per read"
    );
    assert_eq!(
        server.stat("cmd_set").unwrap(),
        sets,
        "no write on the read path"
    );
    // A key cacheback builds is stored under its own text.
    let reply = server.cmd(&format!("mg {key} s")).unwrap();
    assert!(reply.starts_with("HD s"), "{reply}");
}

#[tokio::test]
async fn concurrent_readers_of_one_key_share_commands_and_each_gets_the_entry() {
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    let store = MemcachedStore::from_url(&server.url()).unwrap();
    let key = |n: u8| Key::new("hot", "job", u128::from(n));
    for n in 0..4 {
        put(&store, key(n), vec![n; 100]).await.unwrap();
    }
    read(&store, key(0)).await;
    // 100 readers of one key from one task: the first sends its `mg`, the 99 that asked
    // meanwhile share the next one, and each reader gets the entry.
    let gets = server.stat("cmd_get").unwrap();
    let reads = (0..100).map(|_| read(&store, key(1)));
    for value in futures_util::future::join_all(reads).await {
        assert_eq!(value, Some(vec![1; 100]));
    }
    assert_eq!(server.stat("cmd_get").unwrap() - gets, 2);

    // Readers of four keys and a missing one, interleaved: two commands per key, and each
    // reader gets its own key's entry.
    let asked = |i: u8| if i % 5 == 4 { 200 } else { i % 5 };
    let gets = server.stat("cmd_get").unwrap();
    let reads = (0..100).map(|i| read(&store, key(asked(i))));
    for (i, value) in (0..100).zip(futures_util::future::join_all(reads).await) {
        match asked(i) {
            200 => assert_eq!(value, None, "read {i}"),
            n => assert_eq!(value, Some(vec![n; 100]), "read {i}"),
        }
    }
    assert_eq!(server.stat("cmd_get").unwrap() - gets, 2 * 5);

    // Sequential reads are each a command of their own: no reply is reused later.
    let gets = server.stat("cmd_get").unwrap();
    put(&store, key(1), vec![9; 10]).await.unwrap();
    assert_eq!(read(&store, key(1)).await, Some(vec![9; 10]));
    assert_eq!(
        server.stat("cmd_get").unwrap() - gets,
        2,
        "the put's mg and the read's"
    );
}

#[tokio::test]
async fn readers_waiting_behind_one_that_gives_up_still_get_the_entry() {
    use futures_util::FutureExt;
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    let store = MemcachedStore::from_url(&server.url()).unwrap();
    let key = Key::new("giveup", "job", 1);
    put(&store, key, vec![5; 10]).await.unwrap();
    // The first reader sends its command and is dropped before the reply; two readers wait
    // for the next command meanwhile. They still get the entry.
    let mut first = Box::pin(store.get(key));
    assert!((&mut first).now_or_never().is_none());
    let waiting = futures_util::future::join(store.get(key), store.get(key));
    let mut waiting = Box::pin(waiting);
    assert!((&mut waiting).now_or_never().is_none());
    drop(first);
    let (a, b) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting readers were not stranded");
    assert_eq!(value_of(&a.unwrap().unwrap()), vec![5; 10]);
    assert_eq!(value_of(&b.unwrap().unwrap()), vec![5; 10]);
    // And the key is free again: a lone read is one command.
    let gets = server.stat("cmd_get").unwrap();
    assert_eq!(read(&store, key).await, Some(vec![5; 10]));
    assert_eq!(server.stat("cmd_get").unwrap() - gets, 1);
}

#[tokio::test]
async fn keys_memcached_would_refuse_are_hashed_and_work() {
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    let store = MemcachedStore::from_url(&server.url()).unwrap();
    let long_job = "j".repeat(300);
    let keys = [
        Key::new("app", &long_job, 1),
        // Same first 250 bytes, another digest: must not share an item.
        Key::new("app", &long_job, 2),
        Key::new("app", "with space", 1),
        Key::new("app", "new\nline\r\nmg x v", 1),
        Key::new("app", "ünïcode", 1),
    ];
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            put(&store, *key, vec![u8::try_from(i).unwrap(); 10])
                .await
                .unwrap(),
            PutOutcome::Written { generation: 1 },
            "{key:?}"
        );
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            read(&store, *key).await,
            Some(vec![u8::try_from(i).unwrap(); 10])
        );
        let now = Timestamp::now();
        let ttl = Duration::from_secs(10);
        assert!(matches!(
            store.claim(*key, now, ttl).await.unwrap(),
            ClaimOutcome::Won { .. }
        ));
        assert!(matches!(
            store.claim(*key, now, ttl).await.unwrap(),
            ClaimOutcome::Held { .. }
        ));
    }
    // Five entries and five control records, nothing else (no key was cut into another).
    assert_eq!(server.stat("curr_items").unwrap(), 10);
    assert_eq!(
        server.cmd(&format!("mg {} s", keys[0])).unwrap(),
        "CLIENT_ERROR bad command line format"
    );
}

#[tokio::test]
async fn oversized_values_are_refused_before_sending() {
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    let store = MemcachedStore::from_url(&server.url()).unwrap();
    let key = Key::new("size", "job", 1);
    let err = put(&store, key, vec![1; MIB]).await.unwrap_err();
    let Error::TooLarge { job, size, limit } = &err else {
        panic!("expected TooLarge, got {err}");
    };
    assert_eq!((&**job, *size), ("job", MIB));
    assert!(
        (MIB - 400..MIB).contains(limit),
        "the limit is memcached's 1 MiB less the envelope, the key and memcached's overhead: {limit}"
    );
    assert!(err.to_string().contains("over the limit"), "{err}");
    let limit = *limit;
    let sets = server.stat("cmd_set").unwrap();
    assert!(matches!(
        put(&store, key, vec![1; limit + 1]).await,
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(
        server.stat("cmd_set").unwrap(),
        sets,
        "refused before sending"
    );
    // The largest value the store accepts, memcached accepts too.
    assert!(put(&store, key, vec![2; limit]).await.is_ok());
    assert_eq!(read(&store, key).await, Some(vec![2; limit]));
}

#[tokio::test]
async fn the_item_size_limit_follows_the_servers() {
    let Some(server) = MemcachedServer::builder().arg("-I").arg("2m").start() else {
        return;
    };
    let key = Key::new("size", "job", 2);
    let value = vec![3; 3 * MIB / 2];
    let default = MemcachedStore::from_url(&server.url()).unwrap();
    assert!(matches!(
        put(&default, key, value.clone()).await,
        Err(Error::TooLarge { .. })
    ));
    let matching = MemcachedStore::builder(&server.url())
        .max_item_bytes(2 * MIB)
        .build()
        .unwrap();
    put(&matching, key, value.clone()).await.unwrap();
    assert_eq!(read(&matching, key).await, Some(value));
}

/// Seconds left before `name` expires, from `mg <name> t` (-1: never).
fn ttl_of(server: &MemcachedServer, name: &str) -> i64 {
    let reply = server.cmd(&format!("mg {name} t")).unwrap();
    reply
        .strip_prefix("HD t")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("mg {name} t: {reply}"))
}

#[tokio::test]
async fn items_expire_after_their_ttl_plus_grace() {
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    let store = MemcachedStore::builder(&server.url())
        .expiry_grace(Duration::from_secs(7))
        .build()
        .unwrap();
    let key = Key::new("ttl", "job", 1);
    let ttl = Duration::from_millis(29_500);
    store
        .put(key, Put::new(entry(vec![1]), PutCondition::Always, ttl))
        .await
        .unwrap();
    assert!(
        (36..=37).contains(&ttl_of(&server, &key.to_string())),
        "rounded up: 36.5 s -> 37"
    );
    let now = Timestamp::now();
    store
        .claim(key, now, Duration::from_secs(10))
        .await
        .unwrap();
    assert!((16..=17).contains(&ttl_of(&server, &format!("{key}:c"))));
    // Past memcached's 30-day limit on relative expiry: no expiry rather than an absolute time.
    let long = Duration::from_secs(40 * 24 * 3600);
    store
        .put(key, Put::new(entry(vec![1]), PutCondition::Always, long))
        .await
        .unwrap();
    assert_eq!(ttl_of(&server, &key.to_string()), -1);
}

#[tokio::test]
async fn concurrent_writers_get_distinct_generations() {
    let Some(server) = MemcachedServer::start() else {
        return;
    };
    let store = MemcachedStore::from_url(&server.url()).unwrap();
    let key = Key::new("cas", "job", 1);
    let writes = (0..16).map(|i| put(&store, key, vec![i; 10]));
    let mut generations: Vec<u64> = futures_util::future::join_all(writes)
        .await
        .into_iter()
        .map(|outcome| match outcome.unwrap() {
            PutOutcome::Written { generation } => generation,
            other => panic!("an unconditional write was {other:?}"),
        })
        .collect();
    generations.sort_unstable();
    assert_eq!(
        generations,
        (1..=16).collect::<Vec<_>>(),
        "every write its own generation"
    );
    let conditional = (0..16).map(|i| {
        let put = Put::new(
            entry(vec![i]),
            PutCondition::IfGeneration(16),
            Duration::from_secs(60),
        );
        store.put(key, put)
    });
    let outcomes = futures_util::future::join_all(conditional).await;
    let written = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(PutOutcome::Written { generation: 17 })))
        .count();
    let discarded = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(PutOutcome::Discarded { current: 17 })))
        .count();
    assert_eq!((written, discarded), (1, 15), "{outcomes:?}");
}

#[tokio::test]
async fn a_restart_mid_run_gives_clear_errors_then_recovers() {
    let Some(mut server) = MemcachedServer::start() else {
        return;
    };
    let store = MemcachedStore::builder(&server.url())
        .command_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let key = Key::new("restart", "job", 1);
    put(&store, key, vec![1]).await.unwrap();
    let now = Timestamp::now();
    let ttl = Duration::from_secs(30);
    assert!(matches!(
        store.claim(key, now, ttl).await.unwrap(),
        ClaimOutcome::Won { .. }
    ));

    // Restarted while the store holds idle connections to the old process: the next call
    // finds its connection dead and goes on with a new one.
    server.restart();
    assert_eq!(
        store.get(key).await.unwrap().map(|e| e.meta.generation),
        None,
        "data is lost"
    );

    server.stop();
    let refused = "memcached store error: cannot connect to memcached: connection refused: \
                   nothing accepts connections at the memcached address";
    assert_eq!(store.ping().await.unwrap_err().to_string(), refused);
    assert_eq!(store.get(key).await.unwrap_err().to_string(), refused);
    assert_eq!(
        put(&store, key, vec![2]).await.unwrap_err().to_string(),
        refused
    );
    let err = store.claim(key, now, ttl).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Store {
                backend: "memcached",
                ..
            }
        ),
        "{err:?}"
    );

    server.restart();
    store.ping().await.unwrap();
    assert_eq!(
        put(&store, key, vec![3]).await.unwrap(),
        PutOutcome::Written { generation: 1 }
    );
    assert_eq!(read(&store, key).await, Some(vec![3]));
    assert!(matches!(
        store.claim(key, now, ttl).await.unwrap(),
        ClaimOutcome::Won { .. }
    ));
}

#[tokio::test]
async fn a_server_that_does_not_answer_times_out() {
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("memcache://{}", silent.local_addr().unwrap());
    let store = MemcachedStore::builder(&url)
        .command_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = store.get(Key::new("silent", "job", 1)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "memcached store error: memcached get timed out after 200ms"
    );
    let err = store.ping().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "memcached store error: memcached ping timed out after 200ms"
    );
}
