//! W1 on a Redis Cluster of the harness (3 masters on loopback) next to the run's one
//! `redis-server`, in the same run: one key (one master serves every read), and 1,000 keys
//! spread over the slots (how throughput scales from one Redis to 3 masters).

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cacheback::JobHandle;
use cacheback_test_support::RedisCluster;

use super::{
    BaselineName, CachebackHit, HitRead, KEY, Measured, TRIALS, baseline, expect_fresh_hit,
    hit_job, latencies, throughput, w1_record,
};
use crate::report::{self, Record};
use crate::stats;
use crate::value::BenchJob;
use crate::workloads::{Ctx, runtime};

/// Keys read in turn by the spread variant.
const SPREAD_KEYS: u64 = 1_000;

/// The baseline of W1 on the cluster: the same reads on one Redis.
const ONE_REDIS: BaselineName = BaselineName {
    name: "cacheback on the run's one redis-server, same reads",
    ratio_of: "ops/s, cluster ÷ one Redis",
};

/// `JobHandle::get` of [`SPREAD_KEYS`] fresh keys in turn (their slots spread over the
/// masters).
#[derive(Clone)]
struct SpreadHit {
    handle: JobHandle<BenchJob>,
    next: Arc<AtomicU64>,
}

impl HitRead for SpreadHit {
    fn read(&self) -> impl Future<Output = ()> + Send + '_ {
        let key = self.next.fetch_add(1, Ordering::Relaxed) % SPREAD_KEYS;
        let read = self.handle.get(black_box(key));
        async move {
            black_box(read.await.ok());
        }
    }
}

impl SpreadHit {
    fn new(handle: &JobHandle<BenchJob>) -> Self {
        SpreadHit {
            handle: handle.clone(),
            next: Arc::default(),
        }
    }
}

/// A client on `url` whose `KEY` and spread keys are fresh hits.
async fn subject(url: &str) -> Result<JobHandle<BenchJob>, String> {
    let store = cacheback::RedisStore::from_url(url).map_err(|e| e.to_string())?;
    let client = cacheback::Cacheback::builder()
        .store(store)
        .prefix("w1cluster")
        .build()
        .map_err(|e| e.to_string())?;
    let (policy, fetcher) = hit_job();
    let handle = client.job(BenchJob { fetcher, policy });
    for key in (0..SPREAD_KEYS).chain([KEY]) {
        handle.get(key).await.map_err(|e| e.to_string())?;
    }
    expect_fresh_hit(&handle).await?;
    Ok(handle)
}

/// Calls of every command on every node (`INFO commandstats`).
fn cluster_commands(cluster: &RedisCluster) -> Result<u64, String> {
    let mut total = 0;
    for node in cluster.nodes() {
        let stats = node.command_stats().map_err(|e| e.to_string())?;
        total += stats.iter().map(|(_, calls)| calls).sum::<u64>();
    }
    Ok(total)
}

/// A warm-up, then `TRIALS` interleaved throughput passes of the cluster's reads and one
/// Redis's; each one's reads per second, and the cluster's commands per read (first trial).
async fn trials<C: HitRead, S: HitRead>(
    cluster: &RedisCluster,
    on_cluster: &C,
    on_one: &S,
    tasks: usize,
    reads: u64,
) -> Result<([Vec<f64>; 2], f64), String> {
    throughput(on_cluster, tasks, reads / 10).await;
    throughput(on_one, tasks, reads / 10).await;
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut commands_per_read = f64::NAN;
    for trial in 0..TRIALS {
        let before = cluster_commands(cluster)?;
        rates[0].push(throughput(on_cluster, tasks, reads).await);
        let after = cluster_commands(cluster)?;
        if trial == 0 {
            // Each node counts the first INFO in the second one's figures.
            let inspection = cluster.nodes().len() as u64;
            let done = (reads / tasks as u64) * tasks as u64;
            commands_per_read = (after - before - inspection) as f64 / done as f64;
        }
        rates[1].push(throughput(on_one, tasks, reads).await);
    }
    Ok((rates, commands_per_read))
}

/// W1 on a 3-master Redis Cluster next to one Redis, in the same run.
pub(crate) fn cluster(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let one_url = ctx.redis()?.url();
    let cluster = ctx.cluster()?;
    let reads: u64 = ctx.scale.pick(100_000, 2_000);
    let rt = runtime();
    let (on_cluster, on_one) = rt.block_on(async {
        Ok::<_, String>((subject(&cluster.url()).await?, subject(&one_url).await?))
    })?;
    let mut records = Vec::new();
    for tasks in [1usize, 64] {
        let (a, b) = (
            CachebackHit(on_cluster.clone()),
            CachebackHit(on_one.clone()),
        );
        records.push(rt.block_on(pass(cluster, "one key", &a, &b, tasks, reads))?);
    }
    let (a, b) = (SpreadHit::new(&on_cluster), SpreadHit::new(&on_one));
    records.push(rt.block_on(pass(
        cluster,
        "1,000 keys over the slots",
        &a,
        &b,
        64,
        reads,
    ))?);
    Ok(records)
}

/// One variant: throughput trials, latency passes and the record.
async fn pass<C: HitRead, S: HitRead>(
    cluster: &RedisCluster,
    keys: &str,
    on_cluster: &C,
    on_one: &S,
    tasks: usize,
    reads: u64,
) -> Result<Record, String> {
    let (rates, commands_per_read) = trials(cluster, on_cluster, on_one, tasks, reads).await?;
    let ours =
        Measured::new(&rates[0], latencies(on_cluster, tasks, reads).await).ok_or("no trials")?;
    let one = Measured::new(&rates[1], latencies(on_one, tasks, reads).await).ok_or("no trials")?;
    let ratio = ours.rate.median / one.rate.median;
    let store = format!("Redis Cluster (3 masters), {keys}");
    let mut r = w1_record(&store, tasks, reads, &ours).param(
        "cluster",
        "3 masters without replicas, redis-server on loopback, --save '' --appendonly no",
    );
    r.figure("redis_commands_per_read", stats::round3(commands_per_read));
    r.baseline = Some(baseline(&ONE_REDIS, &one, ratio));
    r.summary = format!(
        "{} (one Redis {}, cluster ÷ one {}); p50/p99 {}/{}; {} Redis commands per read",
        report::rate(ours.rate.median),
        report::rate(one.rate.median),
        report::times(ratio),
        report::micros(ours.p50_us()),
        report::micros(stats::ns_to_us(ours.latency.value_at_quantile(0.99))),
        stats::round3(commands_per_read),
    );
    r.check(
        "exactly 1 Redis command per hit on the cluster",
        format!("{commands_per_read:.3}"),
        (commands_per_read - 1.0).abs() < 0.001,
    );
    r.latencies = Some(ours.latency);
    Ok(r)
}
