//! `RedisStore` and `RedisQueue` pass the Store and Queue conformance suites, over TCP and a
//! unix socket, clients on them pass the client suite, the store's hit path is one Redis
//! command, a stale burst in one process costs Redis one claim script, and so do the stale
//! keys of one batch read.

#![cfg(all(feature = "redis", feature = "testing"))]

mod support;

use std::time::Duration;

use cacheback::clock::{TestClock, Timestamp};
use cacheback::store::{Entry, EntryMeta, Key, Payload, Store};
use cacheback::store::{Put, PutCondition};
use cacheback::{Cacheback, Policy, RedisQueue, RedisStore, Status, job_fn, testing};
use support::{RedisServer, eventually, unique_prefix};

/// How long a test waits for what a read finishes in the background.
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn redis_store_conforms() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::from_url(&server.url()).unwrap();
    testing::store_suite(&store).await;
}

/// A fleet's set-up: Redis store, Redis queue, workers fed by the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_a_redis_store_and_queue_behave() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::from_url(&server.url()).unwrap();
    let url = server.url();
    // Built without a prefix, each queue adopts the prefix of the behaviour it serves.
    testing::ClientSuite::new(std::sync::Arc::new(store))
        .queues(move || {
            RedisQueue::builder(&url)
                .poll_interval(Duration::from_millis(50))
                .build()
                .unwrap()
        })
        .run()
        .await;
}

/// The same fleet, every behaviour's main client reading through a near cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_a_near_cache_on_a_redis_store_behave() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::from_url(&server.url()).unwrap();
    let url = server.url();
    testing::ClientSuite::new(std::sync::Arc::new(store))
        .queues(move || {
            RedisQueue::builder(&url)
                .poll_interval(Duration::from_millis(50))
                .build()
                .unwrap()
        })
        .near_cache(cacheback::NearCache::new())
        .run()
        .await;
}

/// One process on a Redis store, with in-process queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_a_redis_store_with_local_queues_behave() {
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

/// Writes entry `n` of a batch test: its payload is `n`'s bytes.
async fn put_numbered(store: &RedisStore, prefix: &str, n: u32) {
    let now = Timestamp::now();
    let meta = EntryMeta::new(
        now,
        now.saturating_add(Duration::from_secs(60)),
        now.saturating_add(Duration::from_secs(120)),
    );
    let bytes = n.to_be_bytes().to_vec();
    let entry = Entry::new(meta, Payload::encoded(1, bytes.into()));
    let put = Put::new(entry, PutCondition::Always, Duration::from_secs(120));
    store
        .put(Key::new(prefix, "job", u128::from(n)), put)
        .await
        .unwrap();
}

/// The number a read entry of a batch test carries.
fn number_of(entry: &Entry) -> u32 {
    let (_, bytes) = entry.payload.as_encoded().unwrap();
    u32::from_be_bytes(bytes[..].try_into().unwrap())
}

#[tokio::test]
async fn concurrent_reads_share_commands_and_each_gets_its_own_entry() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::from_url(&server.url()).unwrap();
    const N: u32 = 300;
    for n in 0..N {
        put_numbered(&store, "batch", n).await;
    }
    store.get(Key::new("batch", "job", 0)).await.unwrap();
    let commands = || server.command_calls("get") + server.command_calls("mget");
    let before = commands();
    // One task polls them all: two go out at once, the rest wait and go out together.
    let reads = (0..N).map(|n| store.get(Key::new("batch", "job", u128::from(n))));
    let entries = futures_util::future::join_all(reads).await;
    for (n, entry) in (0..N).zip(entries) {
        assert_eq!(number_of(&entry.unwrap().unwrap()), n, "read {n}");
    }
    let sent = commands() - before;
    assert!(sent <= 6, "{N} concurrent reads sent {sent} commands");
    // A missing key in a batch is a miss, the others still entries.
    let keys = [7u128, 1_000_000, 8];
    let reads = keys.map(|n| store.get(Key::new("batch", "job", n)));
    let [a, missing, b] = futures_util::future::join_all(reads)
        .await
        .try_into()
        .ok()
        .unwrap();
    assert_eq!(number_of(&a.unwrap().unwrap()), 7);
    assert!(missing.unwrap().is_none());
    assert_eq!(number_of(&b.unwrap().unwrap()), 8);
}

/// The server's `keyspace_hits`: one per key a command found.
fn keyspace_hits(server: &RedisServer) -> u64 {
    let info: String = server.cmd(&["INFO", "stats"]);
    info.lines()
        .find_map(|line| line.strip_prefix("keyspace_hits:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO stats has keyspace_hits")
}

#[tokio::test]
async fn a_batch_asks_redis_for_each_key_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::from_url(&server.url()).unwrap();
    for n in 0..4 {
        put_numbered(&store, "hot", n).await;
    }
    let key = |n: u32| Key::new("hot", "job", u128::from(n));
    store.get(key(0)).await.unwrap();
    let (gets, mgets, hits) = (
        server.command_calls("get"),
        server.command_calls("mget"),
        keyspace_hits(&server),
    );
    // 100 readers of one key from one task: two go out at once, the 98 that wait share one
    // `GET`, and each reader gets the entry.
    let reads = (0..100).map(|_| store.get(key(1)));
    for entry in futures_util::future::join_all(reads).await {
        assert_eq!(number_of(&entry.unwrap().unwrap()), 1);
    }
    assert_eq!(server.command_calls("get") - gets, 3);
    assert_eq!(server.command_calls("mget") - mgets, 0);
    assert_eq!(keyspace_hits(&server) - hits, 3);

    // 100 readers of four keys (and one missing key), interleaved: the waiting 98 share one
    // `MGET` that names each of the five keys once, and each reader gets its own key's entry.
    let asked = |i: u32| if i % 5 == 4 { 1_000 } else { i % 5 };
    let (mgets, hits) = (server.command_calls("mget"), keyspace_hits(&server));
    let reads = (0..100).map(|i| store.get(key(asked(i))));
    for (i, entry) in (0..100).zip(futures_util::future::join_all(reads).await) {
        match asked(i) {
            1_000 => assert!(entry.unwrap().is_none(), "read {i}"),
            n => assert_eq!(number_of(&entry.unwrap().unwrap()), n, "read {i}"),
        }
    }
    assert_eq!(server.command_calls("mget") - mgets, 1);
    // The two sent alone, and the four keys that exist once each in the `MGET`.
    assert_eq!(keyspace_hits(&server) - hits, 2 + 4);
}

#[tokio::test]
async fn readers_that_give_up_leave_no_batched_reader_waiting() {
    use futures_util::FutureExt;
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::from_url(&server.url()).unwrap();
    for n in 0..4 {
        put_numbered(&store, "giveup", n).await;
    }
    let key = |n: u32| Key::new("giveup", "job", u128::from(n));
    store.get(key(0)).await.unwrap();
    // Two reads take the two places in flight and are dropped before their replies; a third
    // waits for a place meanwhile. It still gets its entry.
    let mut first = Box::pin(store.get(key(1)));
    let mut second = Box::pin(store.get(key(2)));
    assert!((&mut first).now_or_never().is_none());
    assert!((&mut second).now_or_never().is_none());
    let mut waiting = Box::pin(store.get(key(3)));
    assert!((&mut waiting).now_or_never().is_none());
    drop((first, second));
    let entry = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting read was not stranded")
        .unwrap()
        .unwrap();
    assert_eq!(number_of(&entry), 3);
    // And the places were given back: reads go on.
    assert_eq!(number_of(&store.get(key(0)).await.unwrap().unwrap()), 0);
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

/// 64 concurrent stale reads of one key in one process: one reader enqueues the refresh, and
/// the others know the claim is in flight, so the burst costs Redis 64 `GET`s and one claim
/// script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_burst_costs_one_claim_script() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (clock, queue, squares) = stale_squares(&server, "burst");
    let lifetime = SQUARES_LIFETIME;
    squares.set(5, 0).await.unwrap();
    // Another stale key read once first, so Redis has loaded the claim script before the count.
    squares.set(50, 0).await.unwrap();
    clock.advance(lifetime);
    assert!(squares.get_with_status(50).await.unwrap().refresh_triggered);
    // A read never waits for the claim: it finishes in the background.
    until_queued(&queue, 1, "the first key's refresh is enqueued").await;
    let claims_before = server.command_calls("evalsha");
    let reads = (0..64).map(|_| {
        let squares = squares.clone();
        tokio::spawn(async move { squares.get_with_status(5).await.unwrap() })
    });
    let mut triggered = 0;
    for read in futures_util::future::join_all(reads).await {
        let read = read.unwrap();
        assert_eq!(
            (read.status, read.value.as_deref()),
            (Status::Stale, Some(&0))
        );
        triggered += usize::from(read.refresh_triggered);
    }
    assert_eq!(triggered, 1, "exactly one reader asks for the refresh");
    until_queued(&queue, 2, "the burst's refresh is enqueued").await;
    assert_eq!(
        server.command_calls("evalsha") - claims_before,
        1,
        "one claim script for the whole burst"
    );
    assert_eq!(
        queue.len("default").await.unwrap(),
        2,
        "one message per key"
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

/// `get_many` of 100 fresh keys reads them with one `MGET`, and nothing else.
#[tokio::test]
async fn get_many_of_100_keys_is_one_mget() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let cache = Cacheback::builder()
        .prefix(unique_prefix("many"))
        .store(RedisStore::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    let squares = cache.job(job_fn("squares", Policy::default(), |n: u64| async move {
        Ok::<_, std::io::Error>(n * n)
    }));
    for n in 0..100u64 {
        squares.set(n, n * n).await.unwrap();
    }
    let total = server.total_commands();
    let answers = squares.get_many(0..100u64).await;
    // The INFO that counted, one MGET, and the INFO that counts.
    assert_eq!(
        server.total_commands() - total,
        2,
        "one command for 100 keys"
    );
    for (n, answer) in (0..100u64).zip(answers) {
        let answer = answer.unwrap();
        assert_eq!(answer.status, Status::Hit);
        assert_eq!(*answer.value.unwrap(), n * n);
    }
    assert_eq!(server.command_calls("mget"), 1);
}

/// `get_many` of 100 stale keys answers them all at once, then claims them with one run of the
/// claim script, reads the claimed entries again with one `MGET` and enqueues their 100
/// refreshes in one pipeline; a second `get_many` of the same keys asks Redis for nothing but
/// their entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_stale_keys_is_claimed_with_one_script() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (clock, queue, squares) = stale_squares(&server, "many-stale");
    let lifetime = SQUARES_LIFETIME;
    for n in 0..=100u64 {
        squares.set(n, 0).await.unwrap();
    }
    clock.advance(lifetime);
    // One stale key read alone first, so Redis has loaded the claim script before the count.
    assert!(
        squares
            .get_with_status(100)
            .await
            .unwrap()
            .refresh_triggered
    );
    until_queued(&queue, 1, "the first key's refresh is enqueued").await;
    let before = |command: &str| server.command_calls(command);
    let (scripts, mgets, xadds) = (before("evalsha"), before("mget"), before("xadd"));
    let stats_before = server.command_stats().unwrap();
    let answers = squares.get_many(0..100u64).await;
    for (n, answer) in answers.into_iter().enumerate() {
        let answer = answer.unwrap();
        assert_eq!(
            (
                answer.status,
                answer.value.as_deref(),
                answer.refresh_triggered
            ),
            (Status::Stale, Some(&0), true),
            "key {n}"
        );
    }
    until_queued(&queue, 101, "the batch's refreshes are enqueued").await;
    assert_eq!(
        server.command_calls("evalsha") - scripts,
        1,
        "one claim script for 100 keys; commands before the batch: {stats_before:?}, after: {:?}",
        server.command_stats().unwrap()
    );
    assert_eq!(
        server.command_calls("mget") - mgets,
        2,
        "one read of the batch, one of the claimed entries"
    );
    assert_eq!(server.command_calls("xadd") - xadds, 100);

    // The claims are held: the next batch asks for nothing more.
    let answers = squares.get_many(0..100u64).await;
    assert!(answers.iter().all(|a| {
        let a = a.as_ref().unwrap();
        a.status == Status::Stale && !a.refresh_triggered
    }));
    assert_eq!(server.command_calls("evalsha") - scripts, 1);
    assert_eq!(server.command_calls("mget") - mgets, 3);
    assert_eq!(
        queue.len("default").await.unwrap(),
        101,
        "one message per key"
    );
}

/// A worker that receives a batch of requests reads their entries with one `MGET` (the check
/// that a key was not written since its request), instead of one `GET` per refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reads_the_entries_of_a_batch_with_one_mget() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let queue = RedisQueue::builder(&server.url())
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let client = Cacheback::builder()
        .prefix(unique_prefix("batch-read"))
        .store(RedisStore::from_url(&server.url()).unwrap())
        .queue(queue.clone())
        .in_process_worker(false)
        .build()
        .unwrap();
    let squares = client.job(job_fn(
        "squares",
        Policy::default().lifetime(Duration::from_secs(60)),
        |n: u64| async move { Ok::<_, std::io::Error>(n * n) },
    ));
    const N: u64 = 64;
    for n in 0..N {
        assert!(squares.refresh_async(n).await.unwrap(), "key {n} enqueued");
    }
    let (gets, mgets) = (server.command_calls("get"), server.command_calls("mget"));
    let worker = cacheback::Worker::builder(&client)
        .options(
            cacheback::WorkerOptions::default()
                .concurrency(N as usize)
                .batch(N as usize),
        )
        .build()
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    // Waits with `XLEN` (not `GET`): the stream is empty once every request was acknowledged.
    until_queued(&queue, 0, "every request processed and acknowledged").await;
    stop.cancel();
    assert_eq!(running.await.unwrap().processed, N);
    // Each put-and-release script reads the claim and the entry (`GET`s inside the script);
    // a refresh that read its entry alone would add one `GET` more (a batch of one does).
    let own_gets = server.command_calls("get") - gets - 2 * N;
    assert!(own_gets <= 4, "{own_gets} refreshes read their entry alone");
    assert!(
        server.command_calls("mget") > mgets,
        "the batch was read with MGET"
    );
    for n in 0..N {
        let peek = squares.peek(n).await.unwrap().expect("refreshed");
        assert_eq!(peek.value.as_deref(), Some(&(n * n)));
    }
}

/// How long the `squares` of [`stale_squares`] stay fresh.
const SQUARES_LIFETIME: Duration = Duration::from_secs(10);

/// A client on `server`'s store and queue with a test clock and no in-process worker, and its
/// `squares` job: for tests that make keys stale and count what their reads cost Redis.
fn stale_squares(
    server: &RedisServer,
    prefix: &str,
) -> (
    TestClock,
    RedisQueue,
    cacheback::JobHandle<impl cacheback::Job<Args = u64, Value = u64>>,
) {
    let clock = TestClock::new();
    let queue = RedisQueue::from_url(&server.url()).unwrap();
    let client = Cacheback::builder()
        .prefix(unique_prefix(prefix))
        .clock(clock.clone())
        .store(RedisStore::from_url(&server.url()).unwrap())
        .queue(queue.clone())
        .in_process_worker(false)
        .build()
        .unwrap();
    let squares = client.job(job_fn(
        "squares",
        Policy::default().lifetime(SQUARES_LIFETIME),
        |n: u64| async move { Ok::<_, std::io::Error>(n * n) },
    ));
    (clock, queue, squares)
}

/// Waits until the `default` queue holds `n` requests (`XLEN`, no `GET`).
async fn until_queued(queue: &RedisQueue, n: u64, what: &str) {
    eventually(what, WAIT, || {
        let queue = queue.clone();
        async move { queue.len("default").await.unwrap() == n }
    })
    .await;
}
