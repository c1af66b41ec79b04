//! The near cache in front of a real Redis: hits cost no command, writes anywhere drop the
//! copies everywhere, a lost subscription or a missed announcement never keeps an overwritten
//! value in use (past the near TTL), copies stand in while Redis is down, and stale copies are
//! still refreshed exactly once across clients.
//!
//! Each client here has its own connections and its own subscription, as a process of a fleet
//! has; freshness and the near TTL run on a shared `TestClock`, and waits for Redis round trips
//! are bounded polls.

#![cfg(feature = "redis")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cacheback::clock::TestClock;
use cacheback::worker::WorkerOptions;
use cacheback::{
    Cacheback, Job, JobHandle, NearCache, Policy, RedisQueue, RedisStore, Status, StoreFallback,
    Worker,
};
use support::{RedisServer, eventually, unique_prefix};
use tokio_util::sync::CancellationToken;

const LIFETIME: Duration = Duration::from_secs(60);
const NEAR_TTL: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Upstream {
    calls: AtomicU64,
}

struct Squares(Arc<Upstream>);

impl Job for Squares {
    type Args = u64;
    type Value = String;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        "squares"
    }

    fn policy(&self) -> Policy {
        Policy::default()
            .lifetime(LIFETIME)
            .stale_ttl(Duration::from_secs(3600))
    }

    async fn fetch(&self, n: u64) -> Result<String, std::io::Error> {
        let call = self.0.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(format!("{} #{call}", n * n))
    }
}

/// One Redis and the clients ("processes") on it, sharing a prefix, a clock and an upstream.
struct Fleet {
    server: RedisServer,
    prefix: String,
    clock: TestClock,
    upstream: Arc<Upstream>,
}

impl Fleet {
    fn new() -> Option<Fleet> {
        Some(Fleet {
            server: RedisServer::start()?,
            prefix: unique_prefix("near"),
            clock: TestClock::new(),
            upstream: Arc::new(Upstream::default()),
        })
    }

    fn store(&self, announce: bool) -> RedisStore {
        RedisStore::builder(&self.server.url())
            .command_timeout(Duration::from_millis(300))
            .connect_timeout(Duration::from_millis(300))
            .announce_changes(announce)
            .build()
            .unwrap()
    }

    fn queue(&self) -> RedisQueue {
        RedisQueue::builder(&self.server.url())
            .poll_interval(Duration::from_millis(50))
            .build()
            .unwrap()
    }

    /// A client; with `near`, a near cache in front of its store.
    fn client(&self, near: bool, announce: bool) -> JobHandle<Squares> {
        let mut builder = Cacheback::builder()
            .prefix(self.prefix.clone())
            .clock(self.clock.clone())
            .store(self.store(announce))
            .queue(self.queue())
            .store_fallback(StoreFallback::Fetch);
        if near {
            builder = builder.near_cache(NearCache::new().ttl(NEAR_TTL));
        }
        builder
            .build()
            .unwrap()
            .job(Squares(Arc::clone(&self.upstream)))
    }

    /// Reads `n` until a read is answered by the near cache (no `GET` reaches Redis), which
    /// also waits for the subscription to be live.
    async fn served_near(&self, job: &JobHandle<Squares>, n: u64) {
        eventually("a read answered by the near cache", WAIT, || async {
            job.get(n).await.unwrap();
            let gets = self.server.command_calls("get");
            job.get(n).await.unwrap();
            self.server.command_calls("get") == gets
        })
        .await;
    }
}

async fn value(job: &JobHandle<Squares>, n: u64) -> String {
    job.get(n).await.unwrap().as_str().to_owned()
}

#[tokio::test]
async fn near_hits_cost_no_redis_command() {
    let Some(fleet) = Fleet::new() else { return };
    let job = fleet.client(true, true);
    job.set(7, "49".to_owned()).await.unwrap();
    fleet.served_near(&job, 7).await;
    let pings = fleet.server.command_calls("ping");
    let total = fleet.server.total_commands();
    for _ in 0..1_000 {
        let read = job.get_with_status(7).await.unwrap();
        assert_eq!(
            (read.status, read.value.as_deref().map(String::as_str)),
            (Status::Hit, Some("49"))
        );
    }
    // The INFO that counted and the one that counts; the subscription's once-a-second PING
    // may land in between; nothing else.
    let pinged = fleet.server.command_calls("ping") - pings;
    assert_eq!(fleet.server.total_commands() - total - pinged, 2);
}

#[tokio::test]
async fn a_write_anywhere_drops_the_copies_everywhere() {
    let Some(fleet) = Fleet::new() else { return };
    let (a, b) = (fleet.client(true, true), fleet.client(true, true));
    a.set(3, "old".to_owned()).await.unwrap();
    fleet.served_near(&a, 3).await;
    fleet.served_near(&b, 3).await;

    b.set(3, "new".to_owned()).await.unwrap();
    assert_eq!(
        value(&b, 3).await,
        "new",
        "the writer reads its own write at once"
    );
    eventually("the other client drops its copy", WAIT, || async {
        value(&a, 3).await == "new"
    })
    .await;

    a.invalidate(3).await.unwrap();
    eventually("an invalidation reaches the other client", WAIT, || async {
        b.get_with_status(3).await.unwrap().status == Status::Stale
    })
    .await;

    a.delete(3).await.unwrap();
    eventually("a delete reaches the other client", WAIT, || async {
        b.get_cached(3).await.unwrap().is_none()
    })
    .await;
}

#[tokio::test]
async fn a_lost_subscription_flushes_the_near_cache() {
    let Some(fleet) = Fleet::new() else { return };
    let reader = fleet.client(true, true);
    // Writes from here are never announced: only the flush can make the reader see them.
    let silent = fleet.client(false, false);
    silent.set(5, "before".to_owned()).await.unwrap();
    fleet.served_near(&reader, 5).await;

    let mut admin = fleet
        .server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1, "the reader's subscription");
    silent.set(5, "after".to_owned()).await.unwrap();

    eventually("the reader stops serving its copy", WAIT, || async {
        value(&reader, 5).await == "after"
    })
    .await;
    // And the tier is rebuilt once the subscription is back.
    fleet.served_near(&reader, 5).await;
    assert_eq!(value(&reader, 5).await, "after");
}

#[tokio::test]
async fn a_missed_announcement_is_bounded_by_the_near_ttl() {
    let Some(fleet) = Fleet::new() else { return };
    let reader = fleet.client(true, true);
    let silent = fleet.client(false, false);
    silent.set(9, "before".to_owned()).await.unwrap();
    fleet.served_near(&reader, 9).await;

    silent.set(9, "after".to_owned()).await.unwrap();
    for _ in 0..100 {
        assert_eq!(
            value(&reader, 9).await,
            "before",
            "without the announcement the copy is served until its near TTL"
        );
    }
    fleet.clock.advance(NEAR_TTL);
    assert_eq!(value(&reader, 9).await, "after");
}

#[tokio::test]
async fn copies_stand_in_while_redis_is_down() {
    let Some(mut fleet) = Fleet::new() else {
        return;
    };
    let job = fleet.client(true, true);
    job.set(2, "cached".to_owned()).await.unwrap();
    fleet.served_near(&job, 2).await;
    let calls = fleet.upstream.calls.load(Ordering::SeqCst);

    fleet.server.stop();
    // A copy's own near TTL does not matter while the store cannot be read.
    fleet.clock.advance(NEAR_TTL * 2);
    for _ in 0..10 {
        let read = job.get_with_status(2).await.unwrap();
        assert_eq!(
            (read.status, read.value.as_deref().map(String::as_str)),
            (Status::Hit, Some("cached"))
        );
    }
    fleet.clock.advance(LIFETIME);
    let read = job.get_with_status(2).await.unwrap();
    assert_eq!(
        (read.status, read.value.as_deref().map(String::as_str)),
        (Status::Stale, Some("cached")),
        "served as its windows say"
    );
    assert_eq!(
        fleet.upstream.calls.load(Ordering::SeqCst),
        calls,
        "no fallback fetch for a key the near cache holds"
    );
    // A key it never read follows the store fallback.
    let read = job.get_with_status(4).await.unwrap();
    assert_eq!(read.status, Status::Bypassed);

    fleet.server.restart();
    job.set(2, "back".to_owned()).await.unwrap();
    fleet.served_near(&job, 2).await;
    assert_eq!(value(&job, 2).await, "back");
}

#[tokio::test]
async fn stale_copies_are_refreshed_once_across_clients() {
    let Some(fleet) = Fleet::new() else { return };
    let clients: Vec<_> = (0..4).map(|_| fleet.client(true, true)).collect();
    clients[0].set(6, "36 #0".to_owned()).await.unwrap();
    for client in &clients {
        fleet.served_near(client, 6).await;
    }
    fleet.clock.advance(LIFETIME + Duration::from_secs(1));

    let reads = clients.iter().flat_map(|client| {
        (0..16).map(move |_| async move { client.get_with_status(6).await.unwrap() })
    });
    let reads = futures_util::future::join_all(reads).await;
    assert!(
        reads.iter().all(|r| r.status == Status::Stale
            && r.value.as_deref().map(String::as_str) == Some("36 #0")),
        "every reader got the stale copy"
    );
    assert_eq!(fleet.upstream.calls.load(Ordering::SeqCst), 0);

    // One worker drains the queue: exactly one refresh ran.
    let worker_client = Cacheback::builder()
        .prefix(fleet.prefix.clone())
        .clock(fleet.clock.clone())
        .store(fleet.store(true))
        .queue(fleet.queue())
        .build()
        .unwrap();
    worker_client.job(Squares(Arc::clone(&fleet.upstream)));
    let worker = Worker::builder(&worker_client)
        .options(WorkerOptions::default())
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    for client in &clients {
        eventually("every client sees the refreshed value", WAIT, || async {
            value(client, 6).await == "36 #1"
        })
        .await;
    }
    stop.cancel();
    running.await.unwrap();
    assert_eq!(
        fleet.upstream.calls.load(Ordering::SeqCst),
        1,
        "one refresh"
    );
}
