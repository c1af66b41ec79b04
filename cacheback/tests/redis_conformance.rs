//! `RedisStore` and `RedisQueue` pass the Store and Queue conformance suites, over TCP and a
//! unix socket, and the store's hit path is one Redis command.

#![cfg(all(feature = "redis", feature = "testing"))]

mod support;

use std::time::Duration;

use cacheback::clock::Timestamp;
use cacheback::store::{Entry, EntryMeta, Key, Payload, Store};
use cacheback::store::{Put, PutCondition};
use cacheback::{RedisQueue, RedisStore, testing};
use support::{RedisServer, unique_prefix};

#[tokio::test]
async fn redis_store_conforms() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::from_url(&server.url()).unwrap();
    testing::store_suite(&store).await;
}

#[tokio::test]
async fn clients_on_a_redis_store_behave() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::from_url(&server.url()).unwrap();
    testing::client_suite(std::sync::Arc::new(store)).await;
}

#[tokio::test]
async fn redis_store_conforms_over_a_unix_socket() {
    let Some(server) = RedisServer::start_unix() else {
        return;
    };
    assert!(server.url().starts_with("redis+unix://"));
    let store = RedisStore::from_url(&server.url()).unwrap();
    testing::store_suite(&store).await;
    // `unix://` spells the same thing.
    let path = server.socket().unwrap().display().to_string();
    let store = RedisStore::from_url(&format!("unix://{path}")).unwrap();
    testing::store_suite(&store).await;
}

#[tokio::test]
async fn redis_store_and_queue_conform_over_tls() {
    let Some(server) = RedisServer::start_tls() else {
        return;
    };
    assert!(server.url().starts_with("rediss://"));
    // The server's certificate is signed by a throwaway CA, so the client is built with it
    // (`from_client`); with a publicly trusted certificate `from_url("rediss://...")` is all.
    let store = RedisStore::from_client(server.client()).build().unwrap();
    testing::store_suite(&store).await;
    let queue = RedisQueue::from_client(server.client())
        .prefix(unique_prefix("tls"))
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    testing::queue_suite(&queue).await;
    // Without the CA, the certificate is refused: an error, not a hang or a panic.
    let untrusting = RedisStore::builder(&server.url())
        .command_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let err = untrusting.ping().await.unwrap_err();
    assert!(
        matches!(
            err,
            cacheback::Error::Store {
                backend: "redis",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn passwords_and_acl_users_in_the_url_work() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let _: () = server.cmd(&[
        "ACL", "SETUSER", "app", "on", ">s3cret", "~*", "&*", "+@all",
    ]);
    let url = format!("redis://app:s3cret@127.0.0.1:{}", server.port());
    let store = RedisStore::from_url(&url).unwrap();
    testing::store_suite(&store).await;
    let wrong =
        RedisStore::from_url(&format!("redis://app:nope@127.0.0.1:{}", server.port())).unwrap();
    let err = wrong.ping().await.unwrap_err();
    assert!(matches!(err, cacheback::Error::Store { .. }));
    assert!(
        !format!("{err:?} {err}").contains("nope"),
        "the password is never shown"
    );
    assert!(RedisStore::from_url("http://nope").is_err());
}

#[tokio::test]
async fn redis_queue_conforms() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let queue = RedisQueue::builder(&server.url())
        .prefix(unique_prefix("suite"))
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    testing::queue_suite(&queue).await;
}

#[tokio::test]
async fn a_read_is_exactly_one_get() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::from_url(&server.url()).unwrap();
    let key = Key::new("onecmd", "job", 42);
    let now = Timestamp::now();
    let meta = EntryMeta::new(
        now,
        now.saturating_add(Duration::from_secs(60)),
        now.saturating_add(Duration::from_secs(120)),
    );
    let entry = Entry::new(meta, Payload::encoded(1, vec![7; 100].into()));
    store
        .put(
            key,
            Put::new(entry, PutCondition::Always, Duration::from_secs(120)),
        )
        .await
        .unwrap();
    // Warm the connection, then count.
    store.get(key).await.unwrap().unwrap();
    let (gets, total) = (server.command_calls("get"), server.total_commands());
    for _ in 0..100 {
        let entry = store.get(key).await.unwrap().unwrap();
        assert_eq!(entry.meta.generation, 1);
    }
    assert_eq!(server.command_calls("get") - gets, 100, "one GET per read");
    // Between the two `INFO stats`: the first one itself, 100 GETs and one
    // `INFO commandstats`; nothing else.
    assert_eq!(
        server.total_commands() - total,
        102,
        "no command but GET on the read path"
    );
}

#[tokio::test]
async fn entries_expire_in_redis_after_their_ttl_plus_grace() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::builder(&server.url())
        .expiry_grace(Duration::from_secs(7))
        .build()
        .unwrap();
    let key = Key::new("ttl", "job", 1);
    let now = Timestamp::now();
    let meta = EntryMeta::new(now, now, now.saturating_add(Duration::from_secs(30)));
    let entry = Entry::new(meta, Payload::tombstone());
    store
        .put(
            key,
            Put::new(entry, PutCondition::Always, Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let pttl: i64 = server.cmd(&["PTTL", &format!("{{{key}}}")]);
    assert!(
        (36_000..=37_000).contains(&pttl),
        "PX must be ttl + grace, got {pttl} ms"
    );
}
