//! Beyond WORKLOADS.md, on the run's `redis-server`: how fast a write reaches the near caches of
//! other clients (`N1`), and what a batch read saves (`N2`).
//!
//! N1: 4 clients, each with its own connections and its own subscription (as 4 processes
//! have), hold near copies of one key; one of them writes it, and the 3 others read it in tight
//! loops until they see the new value: the time from the write's return to each reader no
//! longer serving its old copy, over many writes.
//!
//! N2: `get_many` of 100 fresh keys against 100 `get`s one after the other and 100 `get`s at
//! once, on the same client: time per call and Redis commands per call. Then 100 stale keys
//! (past their lifetime by the client's clock), with a Redis queue: `get_many` against 100 `get`s at once, the time to
//! answer, the time until their 100 refreshes are on the queue, and the Redis commands.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cacheback::clock::TestClock;
use cacheback::{Cacheback, Job, JobHandle, NearCache, Policy};
use futures_util::future::join_all;

use crate::report::{self, Record};
use crate::stats::{self, Spread};
use crate::workloads::{Ctx, runtime};

/// A job whose values the benchmark sets itself.
struct Squares;

impl Job for Squares {
    type Args = u64;
    type Value = u64;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        "squares"
    }

    fn policy(&self) -> Policy {
        Policy::default().lifetime(Duration::from_secs(3600))
    }

    async fn fetch(&self, n: u64) -> Result<u64, std::io::Error> {
        Ok(n * n)
    }
}

const READERS: usize = 3;

fn client(url: &str, prefix: &str, near: bool) -> Result<(Cacheback, JobHandle<Squares>), String> {
    let mut builder = Cacheback::builder()
        .prefix(prefix)
        .store(cacheback::RedisStore::from_url(url).map_err(|e| e.to_string())?)
        .in_process_worker(false);
    if near {
        builder = builder.near_cache(NearCache::new());
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let handle = client.job(Squares);
    Ok((client, handle))
}

/// Waits (bounded) for a client's near cache to go live.
pub(crate) async fn live(client: &Cacheback) -> Result<(), String> {
    for _ in 0..1_000 {
        if client.near_cache_live() == Some(true) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err("a near cache never went live".to_owned())
}

/// N1: invalidation propagation between near caches.
pub(crate) fn propagation(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let url = ctx.redis()?.url();
    let writes: u64 = ctx.scale.pick(1_000, 100);
    let prefix = format!("n1-{}", std::process::id());
    let hist = runtime().block_on(async {
        let (writer_client, writer) = client(&url, &prefix, true)?;
        let mut readers = Vec::new();
        for _ in 0..READERS {
            readers.push(client(&url, &prefix, true)?);
        }
        live(&writer_client).await?;
        for (c, _) in &readers {
            live(c).await?;
        }
        writer.set(7, 0).await.map_err(|e| e.to_string())?;
        let mut hist = stats::latency_histogram();
        for i in 1..=writes {
            for (_, reader) in &readers {
                // Every reader holds a copy of the previous value.
                reader.get(7).await.map_err(|e| e.to_string())?;
            }
            writer.set(7, i).await.map_err(|e| e.to_string())?;
            let written = Instant::now();
            let seen = readers.iter().map(|(_, reader)| async move {
                let deadline = written + Duration::from_secs(5);
                loop {
                    if *reader.get(7).await.map_err(|e| e.to_string())? == i {
                        return Ok(written.elapsed());
                    }
                    if Instant::now() > deadline {
                        return Err(format!("write {i} not seen within 5 s"));
                    }
                    tokio::task::yield_now().await;
                }
            });
            for took in join_all(seen).await {
                stats::record(&mut hist, took?);
            }
        }
        Ok::<_, String>(hist)
    })?;
    let p50 = stats::ns_to_us(hist.value_at_quantile(0.5));
    let p99 = stats::ns_to_us(hist.value_at_quantile(0.99));
    let mut r = Record::new("N1", "near cache, invalidation propagation", "cacheback")
        .param("writes", writes)
        .param("readers", READERS as u64)
        .param(
            "how",
            "4 clients with near caches (own connections and subscriptions) on one Redis; one \
             sets the key, 3 read it in tight loops until they see the new value",
        );
    r.figure("propagation", stats::latency_figures(&hist));
    r.summary = format!(
        "write to every other near cache: p50 {}, p99 {}, max {} over {writes} writes × {READERS} readers",
        report::micros(p50),
        report::micros(p99),
        report::micros(stats::ns_to_us(hist.max())),
    );
    r.check(
        "propagation p99 < 5 ms on loopback",
        report::micros(p99),
        p99 < 5_000.0,
    );
    r.latencies = Some(hist);
    Ok(vec![r])
}

/// N2: `get_many` of 100 keys against 100 `get`s.
pub(crate) fn batch(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let server = ctx.redis()?;
    let url = server.url();
    let rounds: usize = ctx.scale.pick(200, 20);
    let prefix = format!("n2-{}", std::process::id());
    let keys: Vec<u64> = (0..100).collect();
    let (many, one_by_one, at_once, commands) = runtime().block_on(async {
        let (_client, squares) = client(&url, &prefix, false)?;
        for &n in &keys {
            squares.set(n, n * n).await.map_err(|e| e.to_string())?;
        }
        let squares = Arc::new(squares);
        let mut times: [Vec<f64>; 3] = Default::default();
        let before = server.total_commands();
        let answers = squares.get_many(keys.iter().copied()).await;
        let commands = server.total_commands() - before - 1;
        if answers.iter().any(|a| a.is_err()) {
            return Err("a batch read failed".to_owned());
        }
        for _ in 0..rounds {
            let t = Instant::now();
            let _ = squares.get_many(keys.iter().copied()).await;
            times[0].push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            for &n in &keys {
                let _ = squares.get(n).await;
            }
            times[1].push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let _ = join_all(keys.iter().map(|&n| squares.get(n))).await;
            times[2].push(t.elapsed().as_secs_f64() * 1e6);
        }
        let [a, b, c] = times;
        let spread = |v: Vec<f64>| Spread::of(&v).ok_or("no rounds");
        Ok::<_, String>((spread(a)?, spread(b)?, spread(c)?, commands))
    })?;
    let mut r = Record::new("N2", "batch read of 100 keys, Redis", "cacheback")
        .param("rounds", rounds as u64)
        .param("keys", keys.len() as u64);
    r.figure("get_many_us", many.json());
    r.figure("sequential_gets_us", one_by_one.json());
    r.figure("concurrent_gets_us", at_once.json());
    r.figure("redis_commands_per_get_many", commands);
    r.summary = format!(
        "get_many {} per call ({commands} Redis command); 100 gets one by one {}; 100 gets at once {}",
        report::micros(many.median),
        report::micros(one_by_one.median),
        report::micros(at_once.median),
    );
    r.check(
        "one Redis command per get_many of 100 fresh keys",
        commands.to_string(),
        commands == 1,
    );
    r.check(
        "get_many faster than 100 concurrent gets",
        report::times(at_once.median / many.median),
        many.median < at_once.median,
    );
    Ok(vec![r])
}

/// What triggering the refreshes of 100 stale keys cost one way of reading them: the read's
/// time, the time until the 100 requests were on the queue, the commands Redis processed
/// (those the claim script runs included) and the claim scripts run.
struct StaleRound {
    read_us: f64,
    enqueued_us: f64,
    commands: u64,
    scripts: u64,
}

/// Writes 100 keys from `first` and lets them go stale (the client's clock moves on by their
/// lifetime), then reads them with `read` and waits until their 100 refreshes are on the
/// queue.
async fn stale_round<F>(
    (server, clock): (&cacheback_test_support::RedisServer, &TestClock),
    squares: &JobHandle<Squares>,
    queue: &cacheback::RedisQueue,
    first: u64,
    read: F,
) -> Result<StaleRound, String>
where
    F: AsyncFnOnce(Vec<u64>) -> bool,
{
    let keys: Vec<u64> = (first..first + 100).collect();
    for &n in &keys {
        squares.set(n, n * n).await.map_err(|e| e.to_string())?;
    }
    clock.advance(Squares.policy().lifetime);
    let expected = queue.enqueued() + 100;
    let scripts = server.command_calls("evalsha");
    let before = server.total_commands();
    let t = Instant::now();
    if !read(keys).await {
        return Err("a read did not serve its stale value and ask for its refresh".to_owned());
    }
    let read_us = t.elapsed().as_secs_f64() * 1e6;
    while queue.enqueued() < expected {
        if t.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "{} refreshes never enqueued",
                expected - queue.enqueued()
            ));
        }
        tokio::task::yield_now().await;
    }
    let enqueued_us = t.elapsed().as_secs_f64() * 1e6;
    // Less the `INFO`s that counted first.
    let commands = server.total_commands() - before - 1;
    let scripts = server.command_calls("evalsha") - scripts;
    Ok(StaleRound {
        read_us,
        enqueued_us,
        commands,
        scripts,
    })
}

/// N2, stale keys: `get_many` of 100 stale keys against 100 stale `get`s at once, each with
/// a Redis queue: the answer, the time until every refresh is enqueued, and the Redis commands.
pub(crate) fn stale_batch(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let server = ctx.redis()?;
    let url = server.url();
    let rounds: u64 = ctx.scale.pick(50, 5);
    let prefix = format!("n2s-{}", std::process::id());
    let results = runtime().block_on(async {
        let store = cacheback::RedisStore::from_url(&url).map_err(|e| e.to_string())?;
        let queue = cacheback::RedisQueue::from_url(&url).map_err(|e| e.to_string())?;
        let clock = TestClock::at(cacheback::clock::Timestamp::now());
        let client = Cacheback::builder()
            .prefix(prefix.as_str())
            .clock(clock.clone())
            .store(store)
            .queue(queue.clone())
            .in_process_worker(false)
            .build()
            .map_err(|e| e.to_string())?;
        let squares = client.job(Squares);
        let at = (server, &clock);
        let asked = |a: &cacheback::Result<cacheback::Lookup<u64>>| {
            a.as_ref().is_ok_and(|a| a.refresh_triggered)
        };
        let mut many = Vec::new();
        let mut singles = Vec::new();
        for round in 0..rounds {
            let first = round * 200;
            many.push(
                stale_round(at, &squares, &queue, first, async |keys: Vec<u64>| {
                    squares.get_many(keys).await.iter().all(asked)
                })
                .await?,
            );
            singles.push(
                stale_round(at, &squares, &queue, first + 100, async |keys: Vec<u64>| {
                    let reads = keys.into_iter().map(|n| squares.get_with_status(n));
                    join_all(reads).await.iter().all(asked)
                })
                .await?,
            );
        }
        Ok::<_, String>((many, singles))
    })?;
    let (many, singles) = results;
    let spread = |rounds: &[StaleRound], f: fn(&StaleRound) -> f64| {
        Spread::of(&rounds.iter().map(f).collect::<Vec<_>>()).ok_or("no rounds")
    };
    // The median round (the first one also loads the claim script).
    let most = |rounds: &[StaleRound], f: fn(&StaleRound) -> u64| {
        let mut counts: Vec<u64> = rounds.iter().map(f).collect();
        counts.sort_unstable();
        counts.get(counts.len() / 2).copied().unwrap_or(0)
    };
    let (many_read, many_enqueued) = (
        spread(&many, |r| r.read_us)?,
        spread(&many, |r| r.enqueued_us)?,
    );
    let (single_read, single_enqueued) = (
        spread(&singles, |r| r.read_us)?,
        spread(&singles, |r| r.enqueued_us)?,
    );
    let (many_commands, single_commands) =
        (most(&many, |r| r.commands), most(&singles, |r| r.commands));
    let (many_scripts, single_scripts) =
        (most(&many, |r| r.scripts), most(&singles, |r| r.scripts));
    let mut r = Record::new(
        "N2",
        "batch read of 100 stale keys, Redis queue",
        "cacheback",
    )
    .param("rounds", rounds)
    .param("keys", 100);
    r.figure("get_many_read_us", many_read.json());
    r.figure("get_many_all_enqueued_us", many_enqueued.json());
    r.figure("get_many_redis_commands", many_commands);
    r.figure("get_many_claim_scripts", many_scripts);
    r.figure("concurrent_gets_read_us", single_read.json());
    r.figure("concurrent_gets_all_enqueued_us", single_enqueued.json());
    r.figure("concurrent_gets_redis_commands", single_commands);
    r.figure("concurrent_gets_claim_scripts", single_scripts);
    r.summary = format!(
        "get_many answers in {}, all 100 refreshes enqueued after {} ({many_scripts} claim \
         script, {many_commands} Redis commands with the scripts' own); 100 gets at once answer \
         in {}, enqueued after {} ({single_scripts} claim scripts, {single_commands} commands)",
        report::micros(many_read.median),
        report::micros(many_enqueued.median),
        report::micros(single_read.median),
        report::micros(single_enqueued.median),
    );
    r.check(
        "one claim script for the 100 stale keys of a get_many",
        many_scripts.to_string(),
        many_scripts == 1,
    );
    r.check(
        "every refresh enqueued sooner than with 100 gets at once",
        report::times(single_enqueued.median / many_enqueued.median),
        many_enqueued.median < single_enqueued.median,
    );
    Ok(vec![r])
}
