//! `RedisStore` and `RedisQueue` on a real local Redis Cluster: 3 masters with a replica each,
//! started once for this binary (`harness = false`) and shared by its tests, which run one
//! after the other (the last ones reshard it and kill a master).
//!
//! - The store, queue and client suites pass on the cluster; a hit is one `GET`, and
//!   concurrent readers of one key share `GET`s; the queue's
//!   shards spread over the masters, and its names, stats and dead letters (paged, found,
//!   replayed, removed) are read over every shard; a near cache is refused clearly.
//! - 4 reader processes × 16 readers on one stale key, a worker process: exactly one fetch per
//!   stale event (the processes count fetches on a plain `redis-server` beside the cluster).
//! - Slots resharded with `redis-cli --cluster reshard` while stale keys are being refreshed:
//!   reads recover, every key is refreshed once, none is lost.
//! - A master killed (`kill -9`) while stale keys are being refreshed: its replica is
//!   promoted, read errors stop once it is, and every key is refreshed.

#![cfg(all(feature = "redis", feature = "testing"))]

mod support;

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cacheback::clock::{TestClock, Timestamp};
use cacheback::queue::{Queue, RefreshRequest};
use cacheback::store::{ClaimToken, Entry, EntryMeta, Key, Payload, Put, PutCondition, Store};
use cacheback::{
    Cacheback, NearCache, Policy, RedisQueue, RedisStore, Status, StoreFallback, job_fn, testing,
};
use cacheback_test_support::{RedisCluster, runner};
use support::fleet::{self, QueueKind};
use support::{RedisServer, unique_prefix};

/// What the tests share: the cluster, and a plain Redis for the fleet's bookkeeping.
struct Fixture {
    cluster: Mutex<RedisCluster>,
    url: String,
    control: RedisServer,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn store_conforms(fx: &Fixture) {
    runtime().block_on(async {
        let store = RedisStore::from_url(&fx.url).unwrap();
        testing::store_suite(&store).await;
        // The builder taking nodes is the same store.
        let nodes = fx.cluster.lock().unwrap().node_urls();
        let store = RedisStore::cluster(nodes).build().unwrap();
        testing::store_suite(&store).await;
        store.ping().await.unwrap();
        // A cluster's masters answer INFO each: read, nothing to warn about.
        assert_eq!(store.eviction_warning().await.unwrap(), None);
    });
}

fn queue_conforms_with_and_without_shards(fx: &Fixture) {
    runtime().block_on(async {
        for shards in [8, 1] {
            let queue = RedisQueue::builder(&fx.url)
                .prefix(unique_prefix("suite"))
                .shards(shards)
                .poll_interval(Duration::from_millis(50))
                .build()
                .unwrap();
            testing::queue_suite(&queue).await;
        }
    });
}

fn clients_on_a_cluster_behave(fx: &Fixture) {
    let url = fx.url.clone();
    runtime().block_on(async move {
        let store = RedisStore::from_url(&url).unwrap();
        testing::ClientSuite::new(Arc::new(store))
            .queues(move || {
                RedisQueue::builder(&url)
                    .poll_interval(Duration::from_millis(50))
                    .build()
                    .unwrap()
            })
            .run()
            .await;
    });
}

/// A read is one `GET`, to one master, and the cluster sees nothing else.
fn a_read_is_exactly_one_get(fx: &Fixture) {
    let cluster = fx.cluster.lock().unwrap();
    runtime().block_on(async {
        let store = RedisStore::from_url(&fx.url).unwrap();
        let key = Key::new("onecmd", "job", 42);
        let now = Timestamp::now();
        let meta = EntryMeta::new(
            now,
            now.saturating_add(Duration::from_secs(60)),
            now.saturating_add(Duration::from_secs(120)),
        );
        let entry = Entry::new(meta, Payload::encoded(1, vec![7; 100].into()));
        let put = Put::new(entry, PutCondition::Always, Duration::from_secs(120));
        store.put(key, put).await.unwrap();
        store.get(key).await.unwrap().unwrap();
        // Per node, the calls of every command but the inspection's own (`INFO`) and the
        // replication's heartbeats (`REPLCONF ACK`, `PING` to replicas).
        let counts = || -> Vec<HashMap<String, u64>> {
            cluster
                .nodes()
                .iter()
                .map(|node| {
                    node.command_stats()
                        .unwrap()
                        .into_iter()
                        .filter(|(cmd, _)| !["info", "replconf", "ping"].contains(&cmd.as_str()))
                        .collect()
                })
                .collect()
        };
        let before = counts();
        for _ in 0..100 {
            let entry = store.get(key).await.unwrap().unwrap();
            assert_eq!(entry.meta.generation, 1);
        }
        let after = counts();
        let mut gets = Vec::new();
        for (node, (after, before)) in after.iter().zip(&before).enumerate() {
            for (cmd, calls) in after {
                let delta = calls - before.get(cmd).copied().unwrap_or(0);
                if delta > 0 {
                    assert_eq!(
                        cmd, "get",
                        "node {node}: {delta} calls of {cmd} on the read path"
                    );
                    gets.push(delta);
                }
            }
        }
        assert_eq!(gets, [100], "one GET per read, all to the key's master");

        // 100 readers of the key from one task: the first sends its `GET`, the 99 that asked
        // meanwhile share the next one, and each reader gets the entry. (Two `GET`s; the
        // cluster client may send one again when a reply is slow on a loaded machine.)
        let before = counts();
        let reads = (0..100).map(|_| store.get(key));
        for entry in futures_util::future::join_all(reads).await {
            assert_eq!(entry.unwrap().unwrap().meta.generation, 1);
        }
        let after = counts();
        let gets: Vec<u64> = after
            .iter()
            .zip(&before)
            .map(|(after, before)| {
                after.get("get").copied().unwrap_or(0) - before.get("get").copied().unwrap_or(0)
            })
            .filter(|&delta| delta > 0)
            .collect();
        assert_eq!(gets.len(), 1, "all to the key's master: {gets:?}");
        assert!(
            (2..=4).contains(&gets[0]),
            "100 concurrent readers of one key sent {} GETs",
            gets[0]
        );
    });
}

/// The stream shards of one busy queue land on every master, and one worker drains them all.
fn a_busy_queue_spreads_over_the_masters(fx: &Fixture) {
    let cluster = fx.cluster.lock().unwrap();
    // A fixed prefix: where its 8 shards land is fixed too (every master gets some).
    let prefix = "spread";
    let shards: Vec<String> = (0..8)
        .map(|i| match i {
            0 => format!("{{{prefix}:queue}}"),
            _ => format!("{{{prefix}:queue:{i}}}"),
        })
        .collect();
    let owners: HashSet<usize> = shards
        .iter()
        .map(|tag| cluster.master_of(cluster.slot_of(tag)).unwrap())
        .collect();
    assert_eq!(
        owners.len(),
        3,
        "the shards of `{prefix}` cover the 3 masters"
    );
    runtime().block_on(async {
        let queue = RedisQueue::builder(&fx.url)
            .prefix(prefix)
            .poll_interval(Duration::from_millis(50))
            .build()
            .unwrap();
        assert_eq!(queue.shards(), 8, "8 shards by default on a cluster");
        let request = |n: u64, name: &str| RefreshRequest {
            job: "spread".to_owned(),
            key: format!("{prefix}:spread:{n:032x}"),
            args: n.to_be_bytes().to_vec(),
            codec: 1,
            token: ClaimToken::random(),
            generation: n,
            enqueued_at: Timestamp::from_millis(T0),
            prior_failures: 0,
            queue: name.to_owned(),
        };
        for n in 0..80u64 {
            queue.enqueue(request(n, "default")).await.unwrap();
        }
        assert_eq!(queue.len("default").await.unwrap(), 80);
        // A queue with one request is on one shard, on one master: the names are scanned on
        // every shard's master.
        queue.enqueue(request(999, "lonely")).await.unwrap();
        assert_eq!(queue.queue_names().await.unwrap(), ["default", "lonely"]);
        let stats = queue.stats("default").await.unwrap();
        assert_eq!((stats.depth, stats.dead_letters), (80, 0));
        let per_node: Vec<u64> = cluster
            .nodes()
            .iter()
            .map(|node| {
                shards
                    .iter()
                    .map(|tag| {
                        let key = format!("{tag}:stream:default");
                        node.query::<u64>(&["XLEN", &key]).unwrap_or(0)
                    })
                    .sum()
            })
            .collect();
        assert_eq!(per_node.iter().sum::<u64>(), 80, "{per_node:?}");
        assert_eq!(
            per_node.iter().filter(|&&n| n > 0).count(),
            3,
            "every master holds requests: {per_node:?}"
        );
        // Every tenth request is dead-lettered, the rest acknowledged.
        let mut seen = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.len() < 80 {
            assert!(Instant::now() < deadline, "drained {} of 80", seen.len());
            for delivery in queue.receive(32).await.unwrap() {
                let request = delivery.message.as_ref().unwrap();
                seen.insert(request.args.clone());
                if request.generation % 10 == 0 {
                    queue.dead_letter(&delivery, "tenth").await.unwrap();
                } else {
                    queue.ack(&delivery).await.unwrap();
                }
            }
        }
        assert_eq!(queue.len("default").await.unwrap(), 0);
        assert_eq!(queue.pending("default").await.unwrap(), 0);
        let stats = queue.stats("default").await.unwrap();
        assert_eq!((stats.depth, stats.dead_letters), (0, 8));
        assert_eq!(stats.groups.len(), 1, "one group over the 8 shards");

        // Paged through every shard, in order, each dead letter once.
        let mut ids: Vec<String> = Vec::new();
        loop {
            let page = queue
                .dead_letter_page("default", ids.last().map(String::as_str), 3)
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            ids.extend(page.into_iter().map(|letter| letter.id));
        }
        let order = |id: &str| {
            let (shard, stream_id) = id.split_once('/').unwrap();
            let (ms, seq) = stream_id.split_once('-').unwrap();
            let number = |s: &str| s.parse::<u64>().unwrap();
            (number(ms), number(seq), number(shard))
        };
        assert_eq!(ids.len(), 8, "{ids:?}");
        assert!(
            ids.windows(2).all(|w| order(&w[0]) < order(&w[1])),
            "{ids:?}"
        );
        let found = queue.find_dead_letter("default", &ids[3]).await.unwrap();
        assert_eq!(found.map(|letter| letter.reason), Some("tenth".to_owned()));
        assert_eq!(
            queue.replay_dead_letter("default", &ids[3]).await.unwrap(),
            cacheback::queue::Replay::Replayed
        );
        assert_eq!(queue.len("default").await.unwrap(), 1, "back on its shard");
        assert_eq!(queue.remove_dead_letters("default", &ids).await.unwrap(), 7);
        assert_eq!(queue.stats("default").await.unwrap().dead_letters, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while queue.len("default").await.unwrap() > 0 {
            assert!(
                Instant::now() < deadline,
                "the replayed request is delivered"
            );
            for delivery in queue.receive(32).await.unwrap() {
                queue.ack(&delivery).await.unwrap();
            }
        }
    });
}

fn a_near_cache_is_refused_on_a_cluster(fx: &Fixture) {
    runtime().block_on(async {
        let built = Cacheback::builder()
            .prefix(unique_prefix("near"))
            .store(RedisStore::from_url(&fx.url).unwrap())
            .near_cache(NearCache::new())
            .build();
        let Err(err) = built else {
            panic!("a near cache on a cluster store is refused");
        };
        assert!(err.to_string().contains("Redis Cluster"), "{err}");
    });
}

/// A child process of the fleet test: a reader process or a worker process.
fn child_process(_: &Fixture) {}

fn four_reader_processes_make_exactly_one_fetch(fx: &Fixture) {
    fleet::exactly_one_fetch_on(
        &fx.control,
        &fx.url,
        QueueKind::Redis,
        &unique_prefix("fleet"),
    );
}

const T0: u64 = 1_704_067_200_000;
const LIFETIME: Duration = Duration::from_secs(60);
const KEYS: u64 = 100;

/// What a run of stale reads through a fault saw.
#[derive(Debug)]
struct Survived {
    read_errors: usize,
    /// From the fault's start to the last failed read.
    errors_for: Duration,
    /// From the fault's start to every key refreshed.
    refreshed_after: Duration,
    /// Fetches per key, at most.
    max_fetches: u32,
}

/// `KEYS` keys written at `T0` and read once each when stale (each read claims its key and
/// enqueues its refresh, which takes 300 ms); then `fault` runs on another thread while this
/// one keeps reading the keys that are not fresh yet, its clock following real time, until all
/// are fresh and the fault is over.
/// Reads fail rather than fall back to a fetch (`StoreFallback::Fail`), so failed reads are
/// counted and fetches are only the refreshes'. Ends with a round of reads of every key: all
/// succeed, all fresh.
fn stale_keys_survive(
    fx: &Fixture,
    prefix: &str,
    fault: impl FnOnce(&mut RedisCluster) + Send,
) -> Survived {
    let rt = runtime();
    let clock = TestClock::at(Timestamp::from_millis(T0));
    let fetches: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let counted = Arc::clone(&fetches);
    let (_cache, job) = rt.block_on(async {
        let cache = Cacheback::builder()
            .prefix(prefix)
            .clock(clock.clone())
            .store(
                RedisStore::builder(&fx.url)
                    .command_timeout(Duration::from_millis(500))
                    .build()
                    .unwrap(),
            )
            .queue(
                RedisQueue::builder(&fx.url)
                    .command_timeout(Duration::from_millis(500))
                    .poll_interval(Duration::from_millis(50))
                    .visibility_timeout(Duration::from_secs(3))
                    .build()
                    .unwrap(),
            )
            .store_fallback(StoreFallback::Fail)
            .in_process_worker(true)
            .build()
            .unwrap();
        let policy = Policy::default()
            .lifetime(LIFETIME)
            .stale_ttl(Duration::from_secs(3600))
            .refresh_timeout(Duration::from_secs(3));
        let job = cache.job(job_fn("slow", policy, move |n: u64| {
            let counted = Arc::clone(&counted);
            async move {
                *counted.lock().unwrap().entry(n).or_insert(0) += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, std::io::Error>(format!("fresh {n}"))
            }
        }));
        for n in 0..KEYS {
            job.set(n, "old".to_owned()).await.unwrap();
        }
        (cache, job)
    });
    let stale_at = Timestamp::from_millis(T0).saturating_add(LIFETIME);
    clock.set(stale_at);
    let is_fresh = |value: Option<&Arc<String>>| value.is_some_and(|v| v.starts_with("fresh"));
    rt.block_on(async {
        for n in 0..KEYS {
            let read = job.get_with_status(n).await.unwrap();
            assert_eq!(read.status, Status::Stale, "key {n}");
        }
    });
    let started = Instant::now();
    let (mut errors, mut last_error) = (0, None);
    std::thread::scope(|scope| {
        let faulted = scope.spawn(|| fault(&mut fx.cluster.lock().unwrap()));
        rt.block_on(async {
            let mut fresh = HashSet::new();
            while fresh.len() < KEYS as usize || !faulted.is_finished() {
                assert!(
                    started.elapsed() < Duration::from_secs(90),
                    "after 90 s, {} of {KEYS} keys are fresh; {errors} reads failed",
                    fresh.len()
                );
                let waiting: Vec<u64> = (0..KEYS).filter(|n| !fresh.contains(n)).collect();
                for n in waiting {
                    match job.get_with_status(n).await {
                        Ok(read) if is_fresh(read.value.as_ref()) => {
                            fresh.insert(n);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            errors += 1;
                            last_error = Some(started.elapsed());
                        }
                    }
                }
                // Pacing of the polling loop, not a wait for an outcome; the clock follows
                // real time, so claims lost with the fault expire after their refresh timeout.
                tokio::time::sleep(Duration::from_millis(20)).await;
                clock.set(stale_at.saturating_add(started.elapsed()));
            }
        });
        faulted.join().expect("the fault ran");
    });
    let refreshed_after = started.elapsed();
    rt.block_on(async {
        for n in 0..KEYS {
            let read = job.get_with_status(n).await.unwrap();
            assert_eq!(read.status, Status::Hit, "key {n} after the fault");
            assert_eq!(**read.value.as_ref().unwrap(), format!("fresh {n}"));
        }
    });
    let fetches = fetches.lock().unwrap();
    assert_eq!(fetches.len(), KEYS as usize, "every key was fetched");
    Survived {
        read_errors: errors,
        errors_for: last_error.unwrap_or_default(),
        refreshed_after,
        max_fetches: fetches.values().copied().max().unwrap_or(0),
    }
}

/// Slots the reshard test moves (about 2 s of `redis-cli --cluster reshard` here).
const RESHARDED: u16 = 1_000;

/// A prefix whose queue's first shard lies among the first [`RESHARDED`] slots of its master,
/// so that resharding that master's lowest slots moves it (and the entries in those slots).
fn prefix_near_the_start_of_a_master(cluster: &RedisCluster) -> (String, usize) {
    for _ in 0..10_000 {
        let prefix = unique_prefix("reshard");
        let slot = cluster.slot_of(&format!("{{{prefix}:queue}}"));
        let owner = cluster.master_of(slot).unwrap();
        let below: u16 = cluster
            .slots_of(owner)
            .unwrap()
            .iter()
            .filter(|&&(a, _)| a <= slot)
            .map(|&(a, b)| b.min(slot) - a + 1)
            .sum();
        if below <= RESHARDED {
            return (prefix, owner);
        }
    }
    panic!("no prefix found near the start of a master");
}

fn slots_resharded_mid_refresh_lose_nothing(fx: &Fixture) {
    let (prefix, from) = prefix_near_the_start_of_a_master(&fx.cluster.lock().unwrap());
    let to = fx
        .cluster
        .lock()
        .unwrap()
        .masters()
        .unwrap()
        .into_iter()
        .find(|&m| m != from)
        .unwrap();
    let survived = stale_keys_survive(fx, &prefix, |cluster| {
        cluster.reshard(from, to, RESHARDED).unwrap();
    });
    eprintln!("{RESHARDED} slots resharded mid-refresh: {survived:?}");
    assert_eq!(
        survived.max_fetches, 1,
        "a claim moves with its entry: one fetch per key"
    );
    assert_eq!(
        survived.read_errors, 0,
        "reads follow MOVED and ASK: none fails while slots move"
    );
    let cluster = fx.cluster.lock().unwrap();
    let slot = cluster.slot_of(&format!("{{{prefix}:queue}}"));
    assert_eq!(
        cluster.master_of(slot).unwrap(),
        to,
        "the queue's slot moved"
    );
}

fn a_master_killed_mid_refresh_is_replaced_and_loses_nothing(fx: &Fixture) {
    let prefix = unique_prefix("failover");
    let victim = {
        let cluster = fx.cluster.lock().unwrap();
        cluster
            .master_of(cluster.slot_of(&format!("{{{prefix}:queue}}")))
            .unwrap()
    };
    let mut healthy_after = Duration::ZERO;
    let survived = stale_keys_survive(fx, &prefix, |cluster| {
        let killed = Instant::now();
        cluster.kill(victim); // SIGKILL
        cluster
            .wait_until_healthy(Duration::from_secs(30))
            .expect("a replica takes over");
        healthy_after = killed.elapsed();
    });
    eprintln!("master killed mid-refresh, healthy again after {healthy_after:?}: {survived:?}");
    assert!(
        survived.errors_for <= healthy_after + Duration::from_secs(2),
        "reads fail only until the replica took over: {survived:?}"
    );
    // A refresh request or claim the dead master had not replicated yet is retried after the
    // refresh timeout, a refresh that could not write after the visibility timeout: a key may
    // be fetched again, never left stale.
    assert!(survived.max_fetches <= 3, "{survived:?}");
    assert!(
        survived.refreshed_after < Duration::from_secs(30),
        "every key refreshed within the refresh and visibility timeouts after the failover: \
         {survived:?}"
    );
}

fn main() -> ExitCode {
    if fleet::child_main() {
        return ExitCode::SUCCESS;
    }
    let tests: &[runner::Test<Fixture>] = &[
        ("child_process", child_process),
        ("store_conforms", store_conforms),
        (
            "queue_conforms_with_and_without_shards",
            queue_conforms_with_and_without_shards,
        ),
        ("clients_on_a_cluster_behave", clients_on_a_cluster_behave),
        ("a_read_is_exactly_one_get", a_read_is_exactly_one_get),
        (
            "a_busy_queue_spreads_over_the_masters",
            a_busy_queue_spreads_over_the_masters,
        ),
        (
            "a_near_cache_is_refused_on_a_cluster",
            a_near_cache_is_refused_on_a_cluster,
        ),
        (
            "four_reader_processes_make_exactly_one_fetch",
            four_reader_processes_make_exactly_one_fetch,
        ),
        (
            "slots_resharded_mid_refresh_lose_nothing",
            slots_resharded_mid_refresh_lose_nothing,
        ),
        // Last: it leaves a master dead.
        (
            "a_master_killed_mid_refresh_is_replaced_and_loses_nothing",
            a_master_killed_mid_refresh_is_replaced_and_loses_nothing,
        ),
    ];
    let selected = runner::select(tests);
    if selected.is_empty() {
        return ExitCode::SUCCESS;
    }
    let Some(cluster) = RedisCluster::builder().masters(3).replicas(1).start() else {
        return ExitCode::SUCCESS;
    };
    let Some(control) = RedisServer::start() else {
        return ExitCode::SUCCESS;
    };
    let fixture = Fixture {
        url: cluster.url(),
        cluster: Mutex::new(cluster),
        control,
    };
    runner::run(&fixture, &selected)
}
