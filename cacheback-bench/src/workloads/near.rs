//! Beyond WORKLOADS.md, on the run's `redis-server`: how fast a write reaches the near caches of
//! other clients (`N1`), and what a batch read saves (`N2`).
//!
//! N1: 4 clients, each with its own connections and its own subscription (as 4 processes
//! have), hold near copies of one key; one of them writes it, and the 3 others read it in tight
//! loops until they see the new value: the time from the write's return to each reader no
//! longer serving its old copy, over many writes.
//!
//! N2: `get_many` of 100 fresh keys against 100 `get`s one after the other and 100 `get`s at
//! once, on the same client: time per call and Redis commands per call.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
async fn live(client: &Cacheback) -> Result<(), String> {
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
