//! W1 on a Redis Cluster of the harness (3 masters on loopback) next to the run's one
//! `redis-server`, in the same run: one key (one master serves every read), and 1,000 keys
//! spread over the slots (how throughput scales from one Redis to 3 masters).

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cacheback::JobHandle;
use cacheback_test_support::{RedisCluster, RedisServer};

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

/// CPU seconds each node has used so far.
fn nodes_cpu(cluster: &RedisCluster) -> Result<Vec<f64>, String> {
    cluster
        .nodes()
        .iter()
        .map(crate::redis_cost::server_cpu_seconds)
        .collect()
}

/// What the trials measured.
struct Trials {
    /// Reads per second on the cluster, then on one Redis.
    rates: [Vec<f64>; 2],
    /// Redis commands per read on the cluster (first trial).
    commands_per_read: f64,
    /// Redis CPU seconds of one Redis for the reads of a trial, summed over the trials.
    one_cpu_s: f64,
    /// The same for the cluster's busiest node.
    busiest_node_cpu_s: f64,
}

/// A warm-up, then `TRIALS` interleaved throughput passes of the cluster's reads and one
/// Redis's; each one's reads per second, the cluster's commands per read (first trial), and
/// the CPU time the servers spent on them (one Redis; the cluster's busiest node).
async fn trials<C: HitRead, S: HitRead>(
    cluster: &RedisCluster,
    one: &RedisServer,
    on_cluster: &C,
    on_one: &S,
    tasks: usize,
    reads: u64,
) -> Result<Trials, String> {
    throughput(on_cluster, tasks, reads / 10).await;
    throughput(on_one, tasks, reads / 10).await;
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut commands_per_read = f64::NAN;
    let mut nodes_cpu_s = vec![0.0; cluster.nodes().len()];
    let mut one_cpu_s = 0.0;
    for trial in 0..TRIALS {
        // CPU read outside the command counts, so that they count no `INFO cpu`.
        let cpu_before = nodes_cpu(cluster)?;
        let before = cluster_commands(cluster)?;
        rates[0].push(throughput(on_cluster, tasks, reads).await);
        let after = cluster_commands(cluster)?;
        let cpu_after = nodes_cpu(cluster)?;
        for (total, (b, a)) in nodes_cpu_s
            .iter_mut()
            .zip(cpu_before.iter().zip(&cpu_after))
        {
            *total += (a - b).max(0.0);
        }
        if trial == 0 {
            // Each node counts the first INFO in the second one's figures.
            let inspection = cluster.nodes().len() as u64;
            let done = (reads / tasks as u64) * tasks as u64;
            commands_per_read = (after - before - inspection) as f64 / done as f64;
        }
        let cpu_before = crate::redis_cost::server_cpu_seconds(one)?;
        rates[1].push(throughput(on_one, tasks, reads).await);
        one_cpu_s += (crate::redis_cost::server_cpu_seconds(one)? - cpu_before).max(0.0);
    }
    Ok(Trials {
        rates,
        commands_per_read,
        one_cpu_s,
        busiest_node_cpu_s: nodes_cpu_s.into_iter().fold(0.0, f64::max),
    })
}

/// W1 on a 3-master Redis Cluster next to one Redis, in the same run.
pub(crate) fn cluster(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let one = ctx.redis()?;
    let one_url = one.url();
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
        records.push(rt.block_on(pass(cluster, one, "one key", &a, &b, tasks, reads))?);
    }
    let (a, b) = (SpreadHit::new(&on_cluster), SpreadHit::new(&on_one));
    records.push(rt.block_on(pass(
        cluster,
        one,
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
    one_redis: &RedisServer,
    keys: &str,
    on_cluster: &C,
    on_one: &S,
    tasks: usize,
    reads: u64,
) -> Result<Record, String> {
    let Trials {
        rates,
        commands_per_read,
        one_cpu_s,
        busiest_node_cpu_s,
    } = trials(cluster, one_redis, on_cluster, on_one, tasks, reads).await?;
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
    // The servers' own CPU per read: one Redis, and the cluster's busiest node. Not a
    // projection of the cluster's capacity: a server's CPU per command falls as its batches
    // grow (more commands per read of its socket), so a node serving a third of the reads
    // pays more per read than one Redis serving them all.
    let trial_reads = (TRIALS as u64 * (reads / tasks as u64) * tasks as u64) as f64;
    let one_us = one_cpu_s * 1e6 / trial_reads;
    let busiest_us = busiest_node_cpu_s * 1e6 / trial_reads;
    r.figure("one_redis_cpu_us_per_read", stats::round3(one_us));
    r.figure("busiest_node_cpu_us_per_read", stats::round3(busiest_us));
    r.baseline = Some(baseline(&ONE_REDIS, &one, ratio));
    r.summary = format!(
        "{} (one Redis {}, cluster ÷ one {}); p50/p99 {}/{}; {} Redis commands per read; \
         server CPU per read: one Redis {:.2} µs, the cluster's busiest node {:.2} µs",
        report::rate(ours.rate.median),
        report::rate(one.rate.median),
        report::times(ratio),
        report::micros(ours.p50_us()),
        report::micros(stats::ns_to_us(ours.latency.value_at_quantile(0.99))),
        stats::round3(commands_per_read),
        one_us,
        busiest_us,
    );
    // Concurrent readers of one key share `GET`s, so under load a hit costs a fraction.
    r.check(
        "at most 1 Redis command per hit on the cluster (exactly 1 for a lone reader)",
        format!("{commands_per_read:.3}"),
        if tasks == 1 {
            (commands_per_read - 1.0).abs() < 0.001
        } else {
            commands_per_read <= 1.001
        },
    );
    r.latencies = Some(ours.latency);
    Ok(r)
}
