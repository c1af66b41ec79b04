//! W6, the peers on W2 and W4: moka `get_with` + TTL, cached's plain `#[cached]` + TTL,
//! cached's stale-while-revalidate recipe and amalgam-cache, on the same fetch and values (see
//! `peers/` for exactly what each does). Each peer record is compared with cacheback's record of the same
//! workload from this run (W2/W4 ran first); if that is missing, cacheback is run here too.

use std::sync::Arc;

use cacheback::Policy;

use crate::peers::{Lifetime, Subject, W2_LIFETIME, W4_LIFETIME};
use crate::report::{self, Record};
use crate::value::{ClientSetup, Fetcher, memory_client};
use crate::workloads::{Ctx, runtime, w2, w4};

#[derive(Debug, Clone, Copy)]
enum Peer {
    Moka,
    CachedPlain,
    CachedSwr,
    Amalgam,
}

const PEERS: [Peer; 4] = [
    Peer::Moka,
    Peer::CachedPlain,
    Peer::CachedSwr,
    Peer::Amalgam,
];

async fn subject(peer: Peer, w2: bool, fetcher: &Arc<Fetcher>) -> Result<Arc<Subject>, String> {
    let lifetime = if w2 { Lifetime::W2 } else { Lifetime::W4 };
    let duration = if w2 { W2_LIFETIME } else { W4_LIFETIME };
    Ok(Arc::new(match peer {
        Peer::Moka => Subject::moka(duration, Arc::clone(fetcher)),
        Peer::CachedPlain => Subject::cached(false, lifetime, Arc::clone(fetcher)).await,
        Peer::CachedSwr => Subject::cached(true, lifetime, Arc::clone(fetcher)).await,
        Peer::Amalgam => Subject::amalgam(duration, Arc::clone(fetcher))?,
    }))
}

async fn cacheback(w2: bool, fetcher: &Arc<Fetcher>) -> Arc<Subject> {
    let lifetime = if w2 { W2_LIFETIME } else { W4_LIFETIME };
    let mut setup = ClientSetup::new(Policy::default().lifetime(lifetime));
    if !w2 {
        setup.worker = Some(w4::WORKER_CONCURRENCY);
    }
    let (handle, queue) = memory_client(&setup, Arc::clone(fetcher), None);
    Arc::new(Subject::Cacheback {
        handle,
        queue: queue.into(),
    })
}

pub(crate) fn peers(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let rt = runtime();
    let trials = ctx.scale.pick(10, 3);
    let length = w4::duration(ctx.scale);
    let mut records = Vec::new();

    // W2.
    let mut ours = ctx.find("W2", "memory, one process", "cacheback");
    if ours.is_none() {
        let fetcher = Fetcher::new(w2::FETCH);
        let s = rt.block_on(cacheback(true, &fetcher));
        let r = rt.block_on(w2::burst(s, &fetcher, trials, "memory, one process"))?;
        records.push(r.clone());
        ours = Some(r);
    }
    let ours_w2 = ours.expect("measured above");
    for peer in PEERS {
        let fetcher = Fetcher::new(w2::FETCH);
        let s = rt.block_on(subject(peer, true, &fetcher))?;
        let mut r = rt.block_on(w2::burst(s, &fetcher, trials, "memory, one process"))?;
        compare(
            &mut r,
            &ours_w2,
            "reader_latency/p99_us",
            "fetches_per_event/max",
            true,
        );
        records.push(r);
    }

    // W4, cold start and prewarmed.
    for prewarm in [false, true] {
        let variant = if prewarm {
            "memory, prewarmed"
        } else {
            "memory, cold start"
        };
        let mut ours = ctx.find("W4", variant, "cacheback");
        if ours.is_none() {
            let fetcher = Fetcher::new(w4::FETCH);
            let s = rt.block_on(cacheback(false, &fetcher));
            let r = rt.block_on(w4::mixed(s, &fetcher, length, prewarm, variant))?;
            records.push(r.clone());
            ours = Some(r);
        }
        let ours = ours.expect("measured above");
        for peer in PEERS {
            let fetcher = Fetcher::new(w4::FETCH);
            let s = rt.block_on(subject(peer, false, &fetcher))?;
            let mut r = rt.block_on(w4::mixed(s, &fetcher, length, prewarm, variant))?;
            // Cold start is dominated by misses, which every cache answers by waiting for the
            // fetch: the target is about reads during a refresh, so it is decided when prewarmed.
            compare(
                &mut r,
                &ours,
                "read_latency/p99_us",
                "fetch_calls_per_refresh_event",
                prewarm,
            );
            records.push(r);
        }
    }
    for r in &mut records {
        r.workload = "W6";
    }
    Ok(records)
}

/// W6 on Redis: amalgam-cache with its Redis L2, backplane and distributed locker on W2 (one
/// process; 4 processes already serving the key, and 4 that never read it) and W4 (cold start
/// and prewarmed), each compared with cacheback's record of the same workload in this run when
/// there is one (`-- W2 W4 W6` runs them all).
#[cfg(feature = "redis")]
pub(crate) fn redis(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let url = ctx.redis()?.url();
    let rt = runtime();
    let trials = ctx.scale.pick(10, 3);
    let length = w4::duration(ctx.scale);
    let pid = std::process::id();
    let mut records = Vec::new();

    let fetcher = Fetcher::new(w2::FETCH);
    let prefix = format!("w6-w2-{pid}");
    let s = rt.block_on(Subject::amalgam_redis(
        &url,
        &prefix,
        W2_LIFETIME,
        Arc::clone(&fetcher),
    ))?;
    let mut r = rt.block_on(w2::burst(
        Arc::new(s),
        &fetcher,
        trials,
        "Redis, one process",
    ))?;
    if let Some(ours) = ctx.find("W2", "Redis, one process", "cacheback") {
        compare(
            &mut r,
            &ours,
            "reader_latency/p99_us",
            "fetches_per_event/max",
            true,
        );
    }
    records.push(r);

    for (serving, ours) in [
        (
            true,
            "Redis + near cache, 4 processes × 16 readers + a worker process",
        ),
        (false, "Redis, 4 processes × 16 readers + a worker process"),
    ] {
        let mut r = w2::amalgam_fleet(&url, trials, serving)?;
        if let Some(ours) = ctx.find("W2", ours, "cacheback") {
            compare(
                &mut r,
                &ours,
                "reader_latency/p99_us",
                "fetches_per_event/max",
                true,
            );
        }
        records.push(r);
    }

    for (variant, prewarm) in [("Redis, cold start", false), ("Redis, prewarmed", true)] {
        let fetcher = Fetcher::new(w4::FETCH);
        let prefix = format!("w6-w4-{prewarm}-{pid}");
        let s = rt.block_on(Subject::amalgam_redis(
            &url,
            &prefix,
            W4_LIFETIME,
            Arc::clone(&fetcher),
        ))?;
        let mut r = rt.block_on(w4::mixed(Arc::new(s), &fetcher, length, prewarm, variant))?;
        // amalgam serves from its memory L1 in front of Redis: compare with cacheback's near
        // cache in front of Redis when the run measured it, else with Redis alone.
        let near = variant.replace("Redis,", "Redis + near cache,");
        let ours = ctx
            .find("W4", &near, "cacheback")
            .or_else(|| ctx.find("W4", variant, "cacheback"));
        if let Some(ours) = ours {
            compare(
                &mut r,
                &ours,
                "read_latency/p99_us",
                "fetch_calls_per_refresh_event",
                prewarm,
            );
        }
        records.push(r);
    }
    for r in &mut records {
        r.workload = "W6";
    }
    Ok(records)
}

/// Decides W6's target for one peer: cacheback's reader p99 ≥ 50× lower, with no more fetches.
fn compare(peer: &mut Record, ours: &Record, p99_path: &str, fetch_path: &str, decide: bool) {
    let (Some(our_p99), Some(their_p99)) = (ours.number(p99_path), peer.number(p99_path)) else {
        return;
    };
    let (Some(our_fetches), Some(their_fetches)) =
        (ours.number(fetch_path), peer.number(fetch_path))
    else {
        return;
    };
    let ratio = their_p99 / our_p99;
    peer.figure("cacheback_p99_us_same_run", our_p99);
    peer.figure("cacheback_variant_same_run", ours.variant.clone());
    peer.figure(
        "peer_p99_over_cacheback_p99",
        (ratio * 1000.0).round() / 1000.0,
    );
    if !decide {
        return;
    }
    peer.check(
        &format!(
            "cacheback's reader p99 ≥ 50× lower than this peer's, with no more fetches ({})",
            peer.workload
        ),
        format!(
            "p99 {} vs cacheback ({}) {} = {}; fetches {} vs cacheback {}",
            report::micros(their_p99),
            ours.variant,
            report::micros(our_p99),
            report::times(ratio),
            their_fetches,
            our_fetches
        ),
        ratio >= 50.0 && our_fetches <= their_fetches,
    );
}
