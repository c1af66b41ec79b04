//! Beyond WORKLOADS.md: `invalidate_tag` over many tagged entries (`T1`): what the call costs,
//! and how long until every entry is seen stale by a reader.
//!
//! Memory: one client sets the entries (each tagged `all` and `group:<n % 100>`), calls
//! `invalidate_tag("all")`, then reads every key once: each read must be Stale. Redis + near
//! cache: one client (no near cache) sets the entries and calls `invalidate_tag`; another,
//! with a near cache holding a copy of every entry, reads the keys in passes until each has
//! read Stale once. Stale reads enqueue their refresh (nobody drains the queue), as they
//! would in a service.

use std::time::{Duration, Instant};

use cacheback::{Cacheback, Job, JobHandle, LocalQueue, Policy, Status, Tags};

use crate::report::{self, Record};
use crate::workloads::{Ctx, runtime};

/// A job whose values the benchmark sets itself, tagged `all` and `group:<n % 100>`.
struct Tagged;

impl Job for Tagged {
    type Args = u64;
    type Value = u64;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        "tagged"
    }

    fn policy(&self) -> Policy {
        Policy::default().lifetime(Duration::from_secs(3600))
    }

    async fn fetch(&self, n: u64) -> Result<u64, std::io::Error> {
        Ok(n)
    }

    fn tags(&self, n: &u64, _: &u64) -> Tags {
        Tags::new().with("all").with(format!("group:{}", n % 100))
    }
}

fn entries(ctx: &Ctx) -> u64 {
    ctx.scale.pick(10_000, 1_000)
}

fn record(variant: &str, n: u64, call: Duration, all_stale: Duration, passes: u32) -> Record {
    let call_us = call.as_secs_f64() * 1e6;
    let stale_us = all_stale.as_secs_f64() * 1e6;
    let mut r = Record::new("T1", format!("invalidate_tag, {variant}"), "cacheback")
        .param("entries", n)
        .param("tags_per_entry", 2u64);
    r.figure("call_us", call_us);
    r.figure("all_seen_stale_us", stale_us);
    r.figure("read_passes", u64::from(passes));
    r.summary = format!(
        "invalidate_tag over {n} entries: call {}; all {n} seen stale {} after it returned \
         ({passes} read pass{})",
        report::micros(call_us),
        report::micros(stale_us),
        if passes == 1 { "" } else { "es" },
    );
    r.check(
        "the call does constant work (under 1 ms)",
        report::micros(call_us),
        call_us < 1_000.0,
    );
    r
}

/// Reads the keys in passes until every one has read Stale once; the passes it took.
async fn until_all_stale(job: &JobHandle<Tagged>, n: u64, since: Instant) -> Result<u32, String> {
    let mut pending: Vec<u64> = (0..n).collect();
    let mut passes = 0;
    while !pending.is_empty() {
        if since.elapsed() > Duration::from_secs(30) {
            return Err(format!("{} entries never read stale", pending.len()));
        }
        passes += 1;
        let mut left = Vec::new();
        for k in pending {
            let read = job.get_with_status(k).await.map_err(|e| e.to_string())?;
            if read.status != Status::Stale {
                left.push(k);
            }
        }
        pending = left;
    }
    Ok(passes)
}

/// T1 on the memory store.
pub(crate) fn memory(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let n = entries(ctx);
    runtime().block_on(async {
        let cache = Cacheback::builder()
            .prefix("t1")
            .queue(LocalQueue::new(2 * n as usize))
            .in_process_worker(false)
            .build()
            .map_err(|e| e.to_string())?;
        let job = cache.job(Tagged);
        for k in 0..n {
            job.set(k, k).await.map_err(|e| e.to_string())?;
        }
        let t = Instant::now();
        cache
            .invalidate_tag("all")
            .await
            .map_err(|e| e.to_string())?;
        let call = t.elapsed();
        let after = Instant::now();
        let passes = until_all_stale(&job, n, after).await?;
        Ok(vec![record(
            "memory store",
            n,
            call,
            after.elapsed(),
            passes,
        )])
    })
}

/// T1 on Redis, read through another client's near cache.
#[cfg(feature = "redis")]
pub(crate) fn redis(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let url = ctx.redis()?.url();
    let n = entries(ctx);
    let prefix = format!("t1-{}", std::process::id());
    let client = |near: bool| -> Result<(Cacheback, JobHandle<Tagged>), String> {
        let store = cacheback::RedisStore::from_url(&url).map_err(|e| e.to_string())?;
        let queue = cacheback::RedisQueue::from_url(&url).map_err(|e| e.to_string())?;
        let mut builder = Cacheback::builder()
            .prefix(prefix.as_str())
            .store(store)
            .queue(queue)
            .in_process_worker(false);
        if near {
            builder = builder.near_cache(cacheback::NearCache::new().max_entries(2 * n));
        }
        let cache = builder.build().map_err(|e| e.to_string())?;
        let job = cache.job(Tagged);
        Ok((cache, job))
    };
    runtime().block_on(async {
        let (writer_client, writer) = client(false)?;
        let (reader_client, reader) = client(true)?;
        for _ in 0..1_000 {
            if reader_client.near_cache_live() == Some(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for k in 0..n {
            writer.set(k, k).await.map_err(|e| e.to_string())?;
        }
        for k in 0..n {
            // The reader holds a copy of every entry.
            reader.get(k).await.map_err(|e| e.to_string())?;
        }
        let t = Instant::now();
        writer_client
            .invalidate_tag("all")
            .await
            .map_err(|e| e.to_string())?;
        let call = t.elapsed();
        let after = Instant::now();
        let passes = until_all_stale(&reader, n, after).await?;
        let mut r = record(
            "Redis, read through another client's near cache",
            n,
            call,
            after.elapsed(),
            passes,
        );
        r.check(
            "every entry seen stale within 1 s",
            report::micros(after.elapsed().as_secs_f64() * 1e6),
            after.elapsed() < Duration::from_secs(1),
        );
        Ok(vec![r])
    })
}
