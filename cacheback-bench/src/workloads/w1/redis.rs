//! W1 on the Redis store (a `redis-server` of the harness on loopback): cacheback next to raw
//! redis-rs `GET` of the same key, and cacheback with a near cache next to cacheback without.

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;

use cacheback::JobHandle;

use super::{
    AmalgamHit, BaselineName, CachebackHit, HitRead, KEY, Measured, TRIALS, amalgam_fill,
    amalgam_record, baseline, expect_fresh_hit, hit_job, latencies, throughput, w1_record,
};
use crate::report::{self, Record};
use crate::stats::{self, Spread};
use crate::value::BenchJob;
use crate::workloads::{Ctx, runtime};

/// The baseline of W1 on the Redis store.
const RAW_GET: BaselineName = BaselineName {
    name: "redis-rs GET of the same key, ConnectionManager",
    ratio_of: "ops/s, cacheback ÷ raw GET",
};

/// Sums the `calls` of every command in `INFO commandstats`.
fn redis_commands(server: &cacheback_test_support::RedisServer) -> Result<u64, String> {
    let stats = server.command_stats().map_err(|e| e.to_string())?;
    Ok(stats.iter().map(|(_, calls)| calls).sum())
}

/// Raw redis-rs `GET` of one key (cacheback's entry) on a `ConnectionManager`.
#[derive(Clone)]
struct RedisGet(redis::aio::ConnectionManager, Arc<str>);

impl HitRead for RedisGet {
    fn read(&self) -> impl Future<Output = ()> + Send + '_ {
        let mut conn = self.0.clone();
        async move {
            let reply: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&*self.1)
                .query_async(&mut conn)
                .await
                .ok()
                .flatten();
            black_box(reply);
        }
    }
}

impl RedisGet {
    /// A `ConnectionManager` to `url` that GETs the very key cacheback stored its entry under.
    async fn of_entry(url: &str) -> Result<Self, String> {
        let redis_client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut conn = redis::aio::ConnectionManager::new(redis_client)
            .await
            .map_err(|e| e.to_string())?;
        let entry_key = string_key(&mut conn).await?;
        Ok(RedisGet(conn, Arc::from(entry_key)))
    }

    /// The size of the entry, in bytes (`STRLEN`).
    async fn entry_bytes(&self) -> redis::RedisResult<u64> {
        let mut c = self.0.clone();
        redis::cmd("STRLEN").arg(&*self.1).query_async(&mut c).await
    }
}

/// The last of the server's keys (`KEYS *`) that holds a string: cacheback's entry, the server
/// having been flushed before cacheback wrote it.
async fn string_key(conn: &mut redis::aio::ConnectionManager) -> Result<String, String> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    let mut entry_key = None;
    for k in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(conn)
            .await
            .map_err(|e| e.to_string())?;
        if kind == "string" {
            entry_key = Some(k);
        }
    }
    entry_key.ok_or_else(|| "no string key holds cacheback's entry".to_owned())
}

/// W1 on the Redis store (a `redis-server` of the harness on loopback), next to raw redis-rs
/// `GET` of the same key (the same bytes) on a `ConnectionManager` (the kind of connection
/// `RedisStore` uses), at equal concurrency; commands per read from `INFO commandstats`.
pub(crate) fn redis(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let server = ctx.redis()?;
    server
        .query::<()>(&["FLUSHALL"])
        .map_err(|e| e.to_string())?;
    let url = server.url();
    let reads: u64 = ctx.scale.pick(100_000, 2_000);
    let rt = runtime();
    let (handle, raw) = rt.block_on(redis_subjects(&url))?;
    let entry_bytes = rt.block_on(raw.entry_bytes()).map_err(|e| e.to_string())?;
    let ours = CachebackHit(handle);
    let mut records = Vec::new();
    for tasks in [1usize, 64] {
        let (rates, commands_per_read) =
            rt.block_on(redis_trials(server, &ours, &raw, tasks, reads))?;
        let hists = rt.block_on(async {
            (
                latencies(&ours, tasks, reads).await,
                latencies(&raw, tasks, reads).await,
            )
        });
        let cb = Measured::new(&rates[0], hists.0).ok_or("no trials")?;
        let raw_get = Measured::new(&rates[1], hists.1).ok_or("no trials")?;
        let run = RedisPass {
            tasks,
            reads,
            entry_bytes,
            commands_per_read,
        };
        records.push(redis_record(&run, cb, &raw_get));
    }
    let near = CachebackHit(rt.block_on(near_subject(server, &url))?);
    for tasks in [1usize, 64] {
        let (rates, commands_per_read) =
            rt.block_on(redis_trials(server, &near, &ours, tasks, reads))?;
        let hists = rt.block_on(async {
            (
                latencies(&near, tasks, reads).await,
                latencies(&ours, tasks, reads).await,
            )
        });
        let with_near = Measured::new(&rates[0], hists.0).ok_or("no trials")?;
        let without = Measured::new(&rates[1], hists.1).ok_or("no trials")?;
        records.push(near_record(
            tasks,
            reads,
            with_near,
            &without,
            commands_per_read,
        ));
    }
    match ctx.memcached() {
        Ok(mc) => records.extend(memcached(&rt, mc, &ours, reads)?),
        Err(e) => records.push(crate::report::not_measured("W1", "memcached", &e)),
    }
    let peer = AmalgamHit(rt.block_on(amalgam_subject(&url))?);
    for tasks in [1usize, 64] {
        let (rates, commands_per_read) =
            rt.block_on(redis_trials(server, &peer, &near, tasks, reads))?;
        let hists = rt.block_on(async {
            (
                latencies(&peer, tasks, reads).await,
                latencies(&near, tasks, reads).await,
            )
        });
        let am = Measured::new(&rates[0], hists.0).ok_or("no trials")?;
        let with_near = Measured::new(&rates[1], hists.1).ok_or("no trials")?;
        let variant = format!(
            "Redis (L1 + Redis L2), {tasks} task{}",
            if tasks == 1 { "" } else { "s" }
        );
        let mut r = amalgam_record(
            variant,
            tasks,
            reads,
            &am,
            None,
            &with_near,
            "cacheback + near cache",
        )
        .param("what_it_does", crate::peers::amalgam::DESCRIBE_REDIS);
        r.figure("redis_commands_per_read", stats::round3(commands_per_read));
        r.summary = format!(
            "{}; {} Redis commands per read",
            r.summary,
            stats::round3(commands_per_read)
        );
        records.push(r);
    }
    Ok(records)
}

/// The baseline of W1 on memcached: cacheback on the run's Redis.
const ON_REDIS: BaselineName = BaselineName {
    name: "cacheback on the run's Redis (RedisStore), same client settings",
    ratio_of: "ops/s, memcached ÷ Redis",
};

/// W1 with cacheback on `MemcachedStore` (the run's memcached), interleaved with cacheback on
/// the run's Redis (`on_redis`); memcached get commands per read from its `stats`.
fn memcached(
    rt: &tokio::runtime::Runtime,
    server: &cacheback_test_support::MemcachedServer,
    on_redis: &CachebackHit,
    reads: u64,
) -> Result<Vec<Record>, String> {
    let ours = CachebackHit(rt.block_on(async {
        let store =
            cacheback::MemcachedStore::from_url(&server.url()).map_err(|e| e.to_string())?;
        let client = cacheback::Cacheback::builder()
            .store(store)
            .prefix("w1")
            .build()
            .map_err(|e| e.to_string())?;
        let (policy, fetcher) = hit_job();
        let handle = client.job(BenchJob { fetcher, policy });
        handle.get(KEY).await.map_err(|e| e.to_string())?;
        expect_fresh_hit(&handle).await?;
        Ok::<_, String>(handle)
    })?);
    let gets = || server.stat("cmd_get").map_err(|e| e.to_string());
    let mut records = Vec::new();
    for tasks in [1usize, 64] {
        rt.block_on(throughput(&ours, tasks, reads / 10));
        rt.block_on(throughput(on_redis, tasks, reads / 10));
        let mut rates: [Vec<f64>; 2] = Default::default();
        let mut gets_per_read = f64::NAN;
        for trial in 0..TRIALS {
            let before = gets()?;
            rates[0].push(rt.block_on(throughput(&ours, tasks, reads)));
            if trial == 0 {
                let per_task = reads / tasks as u64;
                gets_per_read = (gets()? - before) as f64 / (per_task * tasks as u64) as f64;
            }
            rates[1].push(rt.block_on(throughput(on_redis, tasks, reads)));
        }
        let hists = rt.block_on(async {
            (
                latencies(&ours, tasks, reads).await,
                latencies(on_redis, tasks, reads).await,
            )
        });
        let mc = Measured::new(&rates[0], hists.0).ok_or("no trials")?;
        let redis = Measured::new(&rates[1], hists.1).ok_or("no trials")?;
        let ratio = mc.rate.median / redis.rate.median;
        let mut r = w1_record("memcached", tasks, reads, &mc)
            .param("store", "MemcachedStore, default options")
            .param("memcached", "memcached on loopback, started by the harness");
        r.figure("memcached_gets_per_read", stats::round3(gets_per_read));
        r.baseline = Some(baseline(&ON_REDIS, &redis, ratio));
        r.summary = format!(
            "{} (on Redis {}); p50/p99 {}/{} (on Redis p50 {}); {} memcached gets per read",
            report::rate(mc.rate.median),
            report::rate(redis.rate.median),
            report::micros(mc.p50_us()),
            report::micros(stats::ns_to_us(mc.latency.value_at_quantile(0.99))),
            report::micros(redis.p50_us()),
            stats::round3(gets_per_read),
        );
        // Concurrent readers of one key share `mg`s, so under load a hit costs a fraction.
        r.check(
            "at most 1 memcached get per hit (exactly 1 for a lone reader)",
            format!("{gets_per_read:.3}"),
            if tasks == 1 {
                (gets_per_read - 1.0).abs() < 0.001
            } else {
                gets_per_read <= 1.001
            },
        );
        r.latencies = Some(mc.latency);
        records.push(r);
    }
    Ok(records)
}

/// amalgam-cache on the same Redis (L1 + L2 + backplane + locker), `KEY` written through it.
async fn amalgam_subject(url: &str) -> Result<crate::peers::amalgam::AmalgamCache, String> {
    let cache =
        crate::peers::amalgam::redis(url, "w1amalgam", std::time::Duration::from_secs(3600))
            .await?;
    amalgam_fill(&cache, &std::sync::Arc::new(crate::value::Value::new(KEY))).await?;
    Ok(cache)
}

/// A client with a near cache on the same Redis and key, once its copy serves the reads.
async fn near_subject(
    server: &cacheback_test_support::RedisServer,
    url: &str,
) -> Result<JobHandle<BenchJob>, String> {
    let store = cacheback::RedisStore::from_url(url).map_err(|e| e.to_string())?;
    let client = cacheback::Cacheback::builder()
        .store(store)
        .prefix("w1")
        .near_cache(cacheback::NearCache::new())
        .build()
        .map_err(|e| e.to_string())?;
    let (policy, fetcher) = hit_job();
    let handle = client.job(BenchJob { fetcher, policy });
    for _ in 0..1_000 {
        if client.near_cache_live() == Some(true) {
            handle.get(KEY).await.map_err(|e| e.to_string())?;
            let before = redis_commands(server)?;
            expect_fresh_hit(&handle).await?;
            if redis_commands(server)? == before + 1 {
                return Ok(handle);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Err("the near cache never served the key".to_owned())
}

/// The baseline of W1 with a near cache: cacheback on the same Redis without one.
const WITHOUT_NEAR: BaselineName = BaselineName {
    name: "cacheback on the same Redis without a near cache",
    ratio_of: "ops/s, with ÷ without",
};

/// The record of W1 on Redis with a near cache.
fn near_record(
    tasks: usize,
    reads: u64,
    near: Measured,
    without: &Measured,
    commands_per_read: f64,
) -> Record {
    let ratio = near.rate.median / without.rate.median;
    let mut r = w1_record("Redis + near cache", tasks, reads, &near).param(
        "near_cache",
        "NearCache::new(): 10,000 copies, 10 s near TTL",
    );
    r.figure("redis_commands_per_read", stats::round3(commands_per_read));
    r.baseline = Some(baseline(&WITHOUT_NEAR, without, ratio));
    r.summary = format!(
        "{} (without near cache {}); p50/p99 {}/{}; {} Redis commands per read",
        report::rate(near.rate.median),
        report::rate(without.rate.median),
        report::micros(near.p50_us()),
        report::micros(stats::ns_to_us(near.latency.value_at_quantile(0.99))),
        stats::round3(commands_per_read),
    );
    r.check(
        "no Redis command per near hit",
        format!("{:.3}", commands_per_read),
        commands_per_read < 0.001,
    );
    if tasks == 64 {
        r.check(
            "≥ 10× cacheback's Redis hit throughput (same run)",
            report::times(ratio),
            ratio >= 10.0,
        );
    }
    r.latencies = Some(near.latency);
    r
}

/// A Redis client whose `KEY` is a fresh hit, and the raw `GET` of its entry.
async fn redis_subjects(url: &str) -> Result<(JobHandle<BenchJob>, RedisGet), String> {
    let store = cacheback::RedisStore::from_url(url).map_err(|e| e.to_string())?;
    let client = cacheback::Cacheback::builder()
        .store(store)
        .prefix("w1")
        .build()
        .map_err(|e| e.to_string())?;
    let (policy, fetcher) = hit_job();
    let handle = client.job(BenchJob { fetcher, policy });
    handle.get(KEY).await.map_err(|e| e.to_string())?;
    expect_fresh_hit(&handle).await?;
    Ok((handle, RedisGet::of_entry(url).await?))
}

/// A warm-up, then `TRIALS` throughput passes of cacheback and raw `GET`, interleaved; each
/// one's reads per second, and the Redis commands per cacheback read of the first trial.
async fn redis_trials<A: HitRead, R: HitRead>(
    server: &cacheback_test_support::RedisServer,
    ours: &A,
    raw: &R,
    tasks: usize,
    reads: u64,
) -> Result<([Vec<f64>; 2], f64), String> {
    throughput(ours, tasks, reads / 10).await;
    throughput(raw, tasks, reads / 10).await;
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut commands_per_read = f64::NAN;
    for trial in 0..TRIALS {
        let before = redis_commands(server)?;
        rates[0].push(throughput(ours, tasks, reads).await);
        let after = redis_commands(server)?;
        if trial == 0 {
            // The first INFO is counted in the second one's figures.
            let per_task = reads / tasks as u64;
            commands_per_read = (after - before - 1) as f64 / (per_task * tasks as u64) as f64;
        }
        rates[1].push(throughput(raw, tasks, reads).await);
    }
    Ok((rates, commands_per_read))
}

/// What a Redis record says of its pass besides the measurements.
struct RedisPass {
    /// Concurrent reader tasks.
    tasks: usize,
    /// Reads per throughput trial and per latency pass.
    reads: u64,
    /// The size of cacheback's entry in Redis.
    entry_bytes: u64,
    /// Redis commands per cacheback read (first trial).
    commands_per_read: f64,
}

/// The record of W1 on the Redis store: raw `GET` is the baseline.
fn redis_record(pass: &RedisPass, cb: Measured, raw: &Measured) -> Record {
    let commands_per_read = pass.commands_per_read;
    let ratio = cb.rate.median / raw.rate.median;
    let mut r = w1_record("Redis", pass.tasks, pass.reads, &cb)
        .param(
            "redis",
            "redis-server on loopback, --save '' --appendonly no",
        )
        .param("entry_bytes", pass.entry_bytes);
    r.figure("redis_commands_per_read", stats::round3(commands_per_read));
    r.baseline = Some(baseline(&RAW_GET, raw, ratio));
    r.summary = redis_summary(&cb, raw, commands_per_read);
    redis_checks(&mut r, pass, cb.rate, ratio);
    r.latencies = Some(cb.latency);
    r
}

/// The table line of W1 on the Redis store.
fn redis_summary(cb: &Measured, raw: &Measured, commands_per_read: f64) -> String {
    format!(
        "{} (raw GET {}); p50/p99 {}/{} (raw p50 {}); {} Redis commands per read",
        report::rate(cb.rate.median),
        report::rate(raw.rate.median),
        report::micros(cb.p50_us()),
        report::micros(stats::ns_to_us(cb.latency.value_at_quantile(0.99))),
        report::micros(raw.p50_us()),
        stats::round3(commands_per_read),
    )
}

/// The targets of W1 on the Redis store; `ratio` is cacheback's throughput ÷ raw `GET`'s.
fn redis_checks(r: &mut Record, pass: &RedisPass, cb: Spread, ratio: f64) {
    // Concurrent hits share `MGET`s, so under load a hit costs a fraction of a command.
    r.check(
        "at most 1 Redis command per hit (exactly 1 for a lone reader)",
        format!("{:.3}", pass.commands_per_read),
        if pass.tasks == 1 {
            (pass.commands_per_read - 1.0).abs() < 0.001
        } else {
            pass.commands_per_read <= 1.001
        },
    );
    r.check(
        "≥ 0.9× raw redis-rs GET throughput at equal concurrency",
        report::times(ratio),
        ratio >= 0.9,
    );
    if pass.tasks == 64 {
        r.check(
            "≥ 0.95× raw redis-rs GET throughput with 64 tasks",
            report::times(ratio),
            ratio >= 0.95,
        );
    }
    if pass.tasks == 64 {
        r.check(
            "with 64 concurrent tasks ≥ 100,000 reads/s on 2 cores",
            report::rate(cb.median),
            cb.median >= 100_000.0,
        );
    }
}
