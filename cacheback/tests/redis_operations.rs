//! What operators read and do on a Redis deployment, each test on its own spawned
//! `redis-server`: a queue's stats (depth, oldest request, groups, consumers), dead letters
//! found, paged, replayed exactly once and removed, and the fleet's counts published by
//! `StatsPublisher` and read back by `FleetStatsReader`.

#![cfg(feature = "redis")]

mod support;

use std::time::Duration;

use cacheback::clock::{Clock, TestClock, Timestamp};
use cacheback::fleet_stats::{FleetStatsReader, StatsPublisher};
use cacheback::queue::Replay;
use cacheback::{Cacheback, Job, Policy, RedisQueue, RedisStore, Status, Worker};
use support::{RedisServer, eventually, unique_prefix};
use tokio_util::sync::CancellationToken;

const WITHIN: Duration = Duration::from_secs(20);

#[derive(Debug)]
struct Echo;

impl Job for Echo {
    type Args = u32;
    type Value = u32;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        "echo"
    }

    fn policy(&self) -> Policy {
        Policy::default()
            .lifetime(Duration::from_secs(60))
            .fetch_on_miss(false)
    }

    async fn fetch(&self, n: u32) -> Result<u32, std::io::Error> {
        Ok(n)
    }
}

fn client(url: &str, prefix: &str, fleet_stats: bool) -> (Cacheback, RedisQueue) {
    sharded_client(url, prefix, fleet_stats, 1)
}

fn sharded_client(
    url: &str,
    prefix: &str,
    fleet_stats: bool,
    shards: usize,
) -> (Cacheback, RedisQueue) {
    let queue = RedisQueue::builder(url)
        .poll_interval(Duration::from_millis(50))
        .shards(shards)
        .build()
        .unwrap();
    let cache = Cacheback::builder()
        .prefix(prefix)
        .store(RedisStore::from_url(url).unwrap())
        .queue(queue.clone())
        .fleet_stats(fleet_stats)
        .build()
        .unwrap();
    (cache, queue)
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_stats_and_dead_letters_one_by_one() {
    stats_and_dead_letters(1).await;
}

/// The same on a queue spread over 3 streams: counts add up over the shards, a group and a
/// consumer seen on several shards are one, dead-letter ids name their shard, pages go
/// through every shard in order.
#[tokio::test(flavor = "multi_thread")]
async fn queue_stats_and_dead_letters_over_shards() {
    stats_and_dead_letters(3).await;
}

async fn stats_and_dead_letters(shards: usize) {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (url, prefix) = (server.url(), unique_prefix("ops"));
    let client = |fleet_stats| sharded_client(&url, &prefix, fleet_stats, shards);
    // An id no dead letter has.
    let absent = if shards == 1 { "1-0" } else { "0/1-0" };
    let (web, queue) = client(false);
    assert!(queue.queue_names().await.unwrap().is_empty());
    let echo = web.job(Echo);
    for n in 0..3 {
        assert_eq!(echo.get_with_status(n).await.unwrap().status, Status::Miss);
    }
    // A read of a remote store enqueues its refresh in the background, after it answers.
    eventually("three requests enqueued", WITHIN, || async {
        queue.stats("default").await.unwrap().depth == 3
    })
    .await;
    assert_eq!(queue.queue_names().await.unwrap(), ["default"]);
    let stats = queue.stats("default").await.unwrap();
    assert_eq!((stats.depth, stats.dead_letters), (3, 0));
    assert!(stats.groups.is_empty(), "no worker yet: {stats:?}");
    let oldest = stats.oldest_enqueued_at.expect("an oldest request");
    assert!(Timestamp::now().since(oldest) < Duration::from_secs(60));

    // A worker that does not know `echo` dead-letters the three requests.
    let (worker_client, _) = client(false);
    let stop = CancellationToken::new();
    let worker = Worker::builder(&worker_client).build().unwrap();
    let task = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    eventually("three dead letters", WITHIN, || async {
        queue.stats("default").await.unwrap().dead_letters == 3
    })
    .await;
    let stats = queue.stats("default").await.unwrap();
    assert_eq!(stats.depth, 0);
    assert_eq!(stats.oldest_enqueued_at, None);
    let group = &stats.groups[0];
    assert_eq!(
        (group.name.as_str(), group.pending),
        ("cacheback-workers", 0)
    );
    assert_eq!(group.consumers.len(), 1);
    assert_eq!(group.consumers[0].pending, 0);

    // Paged oldest first, resumable from the last id of a page.
    let first = queue.dead_letter_page("default", None, 2).await.unwrap();
    let rest = queue
        .dead_letter_page("default", Some(&first[1].id), 2)
        .await
        .unwrap();
    assert_eq!((first.len(), rest.len()), (2, 1));
    let newest = queue.dead_letters("default", 1).await.unwrap();
    assert_eq!(rest[0].id, newest[0].id, "pages go oldest to newest");
    let found = queue
        .find_dead_letter("default", &first[0].id)
        .await
        .unwrap()
        .expect("found by id");
    assert_eq!(found.job.as_deref(), Some("echo"));
    assert!(found.reason.contains("unknown job"), "{}", found.reason);
    assert!(
        queue
            .find_dead_letter("default", absent)
            .await
            .unwrap()
            .is_none()
    );
    if shards > 1 {
        assert!(first.iter().chain(&rest).all(|l| l.id.contains('/')));
        let refused = queue.find_dead_letter("default", "1-0").await.unwrap_err();
        assert!(
            refused.to_string().contains("<shard>/<stream id>"),
            "{refused}"
        );
        let shard_9 = ["9/1-0".to_owned()];
        let refused = queue.remove_dead_letters("default", &shard_9).await;
        assert!(refused.is_err(), "shard 9 of 3");
    }

    // Now the worker knows `echo`: a replayed dead letter is refreshed, and only once.
    stop.cancel();
    task.await.unwrap();
    worker_client.job(Echo);
    let stop = CancellationToken::new();
    let worker = Worker::builder(&worker_client).build().unwrap();
    let task = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    assert_eq!(
        queue
            .replay_dead_letter("default", &first[0].id)
            .await
            .unwrap(),
        Replay::Replayed
    );
    assert_eq!(
        queue
            .replay_dead_letter("default", &first[0].id)
            .await
            .unwrap(),
        Replay::NotFound
    );
    let request = found.request.expect("the request decodes");
    let args: u32 = postcard::from_bytes(&request.args).unwrap();
    eventually("the replayed refresh is written", WITHIN, || async {
        echo.peek(args).await.unwrap().is_some()
    })
    .await;
    assert_eq!(queue.stats("default").await.unwrap().dead_letters, 2);

    // Removed for good.
    let ids = [first[1].id.clone(), rest[0].id.clone(), absent.to_owned()];
    assert_eq!(queue.remove_dead_letters("default", &ids).await.unwrap(), 2);
    assert_eq!(queue.stats("default").await.unwrap().dead_letters, 0);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn published_counts_add_up_across_processes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (url, prefix) = (server.url(), unique_prefix("stats"));
    let (without, _) = client(&url, &prefix, false);
    let refused = StatsPublisher::builder(&without, &url).build().unwrap_err();
    assert!(
        refused.to_string().contains("fleet_stats(true)"),
        "{refused}"
    );

    let clock = TestClock::at(Timestamp::now());
    let build = || {
        Cacheback::builder()
            .prefix(&prefix)
            .clock(clock.clone())
            .store(RedisStore::from_url(&url).unwrap())
            .queue(RedisQueue::from_url(&url).unwrap())
            .in_process_worker(false)
            .fleet_stats(true)
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    let (echo_a, echo_b) = (a.job(Echo), b.job(Echo));
    echo_a.set(7, 7).await.unwrap();
    for _ in 0..3 {
        assert_eq!(echo_a.get_with_status(7).await.unwrap().status, Status::Hit);
    }
    assert_eq!(
        echo_b.get_with_status(8).await.unwrap().status,
        Status::Miss
    );
    clock.advance(Duration::from_secs(90));
    assert_eq!(
        echo_b.get_with_status(7).await.unwrap().status,
        Status::Stale
    );

    let mut pa = StatsPublisher::builder(&a, &url)
        .process_id("a")
        .build()
        .unwrap();
    let mut pb = StatsPublisher::builder(&b, &url)
        .process_id("b")
        .build()
        .unwrap();
    pa.publish().await.unwrap();
    pb.publish().await.unwrap();
    pa.publish().await.unwrap(); // nothing new: nothing added
    let reader = FleetStatsReader::from_url(&url, &prefix).unwrap();
    let stats = reader.read(clock.now()).await.unwrap();
    let ids: Vec<&str> = stats.processes.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    let echo = &stats.jobs[0];
    assert_eq!(echo.job, "echo");
    assert_eq!((echo.hits, echo.stale, echo.misses), (3, 1, 1));
    assert_eq!(
        echo.served_age,
        [3, 0, 0, 1, 0, 0],
        "hits under 1 s, the stale read 90 s old"
    );

    // Counts since the last publication only.
    echo_a.get_with_status(7).await.unwrap();
    pa.publish().await.unwrap();
    let stats = reader.read(clock.now()).await.unwrap();
    assert_eq!(
        stats.jobs[0].hits, 3,
        "a stale read now: {:?}",
        stats.jobs[0]
    );
    assert_eq!(stats.jobs[0].stale, 2);

    // A stopped publisher leaves the live processes.
    let stop = CancellationToken::new();
    stop.cancel();
    pb.run_until(stop.cancelled_owned()).await;
    let stats = reader.read(clock.now()).await.unwrap();
    assert_eq!(stats.processes.len(), 1);
}
