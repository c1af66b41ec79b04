//! N4: 16 reader processes on one Redis, one writer (cacheback's `set`) at rising write rates
//! (1,000, 5,000, 10,000 and 20,000 writes/s, then as fast as 64 writes in flight go), 3 s a
//! step, over 16,000 hot keys written in turn. Per step: Redis's CPU per second and per write,
//! bytes and invalidations out, and whether they keep up (propagation p50/p99). Four fleets,
//! one after the other:
//!
//! - nobody listening (announcements off): the writes alone, each step's baseline;
//! - pub/sub, every process holding every key in its near cache: announcements alone, each
//!   write told to all 16 (what SCALING.md's table is about);
//! - pub/sub, each process holding a disjoint 1/16 of the keys and reading a key again as soon
//!   as it is told of its write (a `GET`, a new near copy);
//! - client tracking (default mode), the same disjoint reads on RESP3 connections tracking
//!   cacheback's entry keys, the writer's announcements off: each write told to the one
//!   process that read the key, which reads it again (a `GET`, tracked again). Tracking's best
//!   case, with the same work per write as the fleet above but for the invalidations.

use std::time::{Duration, Instant};

use cacheback_test_support::RedisServer;
use serde_json::json;

use super::counters::{Counters, Spent};
use super::writer::{Pace, Writer, drive};
use super::{Delays, Mode, ReaderPlan, Readers, match_receipts};
use crate::report::{self, Baseline, Record};
use crate::stats;
use crate::workloads::{Ctx, runtime};

/// Who listens to the writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fleet {
    /// Nobody: cacheback's writes with announcements off.
    Nobody,
    /// Every process holds every key; announcements on.
    PubsubAll,
    /// Each process holds its 1/P of the keys and reads them again when told; announcements on.
    PubsubDisjoint,
    /// Each process tracks its 1/P of the keys (`CLIENT TRACKING ON`) and reads them again
    /// when told; announcements off.
    TrackingDisjoint,
}

impl Fleet {
    fn name(self) -> &'static str {
        match self {
            Fleet::Nobody => "nobody",
            Fleet::PubsubAll => "pubsub-all",
            Fleet::PubsubDisjoint => "pubsub-disjoint",
            Fleet::TrackingDisjoint => "tracking-disjoint",
        }
    }

    fn variant(self, processes: u64) -> String {
        match self {
            Fleet::Nobody => "nobody listening (announcements off)".to_owned(),
            Fleet::PubsubAll => {
                format!("pub/sub, {processes} processes each holding every key")
            }
            Fleet::PubsubDisjoint => format!(
                "pub/sub, {processes} processes each holding 1/{processes} of the keys, re-read \
                 when told"
            ),
            Fleet::TrackingDisjoint => format!(
                "client tracking (default mode), {processes} processes each reading \
                 1/{processes} of the keys, re-read when told"
            ),
        }
    }

    fn subject(self) -> &'static str {
        match self {
            Fleet::TrackingDisjoint => "Redis client tracking",
            _ => "cacheback",
        }
    }

    /// Whether the writer's store announces its writes.
    fn announces(self) -> bool {
        matches!(self, Fleet::PubsubAll | Fleet::PubsubDisjoint)
    }

    /// Processes told of each write.
    fn told(self, processes: u64) -> u64 {
        match self {
            Fleet::Nobody => 0,
            Fleet::PubsubAll | Fleet::PubsubDisjoint => processes,
            Fleet::TrackingDisjoint => 1,
        }
    }
}

/// How big a run is.
#[derive(Debug, Clone)]
struct Size {
    processes: u64,
    keys: u64,
    /// Writes a second per step (`None`: as fast as they go).
    rates: Vec<Option<f64>>,
    step: Duration,
    in_flight: usize,
    drain: Duration,
}

/// What one step of one fleet measured.
#[derive(Debug)]
struct Step {
    rate: Option<f64>,
    writes: u64,
    took: Duration,
    spent: Spent,
}

/// A fleet's steps and what its readers heard, per step.
struct Run {
    steps: Vec<Step>,
    delays: Vec<Delays>,
    unmatched: u64,
    repeated: u64,
    lost: u64,
    rearmed: u64,
    tracking_items: u64,
    /// Memory Redis took for the readers: their connections (and subscriptions or tracking
    /// table), from before they started until they were ready.
    readers_memory: u64,
}

/// N4: announcement fan-out to 16 processes at rising write rates, next to client tracking's
/// best case.
pub(crate) fn fanout(ctx: &Ctx) -> Result<Vec<Record>, String> {
    // A server of its own, so that its counters count these writes alone.
    let server =
        RedisServer::try_start().map_err(|e| format!("cannot start a redis-server for N4: {e}"))?;
    let size = Size {
        processes: ctx.scale.pick(16, 2),
        keys: ctx.scale.pick(16_000, 200),
        rates: ctx.scale.pick(
            vec![
                Some(1_000.0),
                Some(5_000.0),
                Some(10_000.0),
                Some(20_000.0),
                None,
            ],
            vec![Some(1_000.0)],
        ),
        step: ctx
            .scale
            .pick(Duration::from_secs(3), Duration::from_millis(200)),
        in_flight: ctx.scale.pick(64, 8),
        drain: ctx
            .scale
            .pick(Duration::from_millis(500), Duration::from_millis(50)),
    };
    let rt = runtime();
    let mut info = rt
        .block_on(server.client().get_multiplexed_async_connection())
        .map_err(|e| format!("cannot connect to N4's Redis: {e}"))?;
    let quiet = run_fleet(&rt, &server, &mut info, Fleet::Nobody, &size)?;
    let mut records = Vec::new();
    for fleet in [
        Fleet::PubsubAll,
        Fleet::PubsubDisjoint,
        Fleet::TrackingDisjoint,
    ] {
        let run = run_fleet(&rt, &server, &mut info, fleet, &size)?;
        for n in 0..run.steps.len() {
            records.push(record(fleet, &run, n, &quiet, &size));
        }
    }
    Ok(records)
}

/// Starts `fleet`'s readers, runs every step, stops them and matches what they heard.
fn run_fleet(
    rt: &tokio::runtime::Runtime,
    server: &RedisServer,
    info: &mut redis::aio::MultiplexedConnection,
    fleet: Fleet,
    size: &Size,
) -> Result<Run, String> {
    let prefix = format!("n4-{}-{}", fleet.name(), std::process::id());
    let url = server.url();
    let writer = rt.block_on(async { Writer::cacheback(&url, &prefix, fleet.announces()) })?;
    rt.block_on(writer.fill(size.keys))?;
    let reader = |mode, disjoint, index| ReaderPlan {
        url: url.clone(),
        prefix: prefix.clone(),
        mode,
        keys: size.keys,
        readers: size.processes,
        index,
        disjoint,
        rearm: disjoint,
        entries: mode == Mode::Tracking,
        out: server.dir().join(format!("{prefix}-{index}.bin")),
    };
    let plans: Vec<ReaderPlan> = (0..size.processes)
        .filter_map(|index| match fleet {
            Fleet::Nobody => None,
            Fleet::PubsubAll => Some(reader(Mode::Cacheback, false, index)),
            Fleet::PubsubDisjoint => Some(reader(Mode::Cacheback, true, index)),
            Fleet::TrackingDisjoint => Some(reader(Mode::Tracking, true, index)),
        })
        .collect();
    let unread = rt.block_on(Counters::read(info))?;
    let mut readers = Readers::start(plans)?;
    readers.ready(Duration::from_secs(120))?;
    let ready = rt.block_on(Counters::read(info))?;
    let mut steps = Vec::new();
    let mut stamps = Vec::new();
    for (n, &rate) in size.rates.iter().enumerate() {
        let pace = Pace {
            first: stamps.len() as u64,
            keys: size.keys,
            rate,
            writes: None,
            duration: Some(size.step),
            in_flight: size.in_flight,
            step: n,
        };
        let (spent, written, took) = rt.block_on(async {
            let before = Counters::read(info).await?;
            let t = Instant::now();
            let written = drive(&writer, &pace).await?;
            let took = t.elapsed();
            // Invalidations still queued for slow readers are this step's too.
            tokio::time::sleep(size.drain).await;
            let after = Counters::read(info).await?;
            Ok::<_, String>((before.until(&after), written, took))
        })?;
        steps.push(Step {
            rate,
            writes: written.len() as u64,
            took,
            spent,
        });
        stamps.extend(written);
    }
    let heard = readers.finish(Duration::from_secs(60))?;
    rt.block_on(writer.shutdown());
    let receipts: Vec<Vec<(u32, u64)>> = heard.iter().map(|h| h.receipts.clone()).collect();
    let matched = match_receipts(&stamps, steps.len(), &receipts);
    Ok(Run {
        steps,
        delays: matched.delays,
        unmatched: matched.unmatched + heard.iter().map(|h| h.report.unknown).sum::<u64>(),
        repeated: matched.repeated,
        lost: heard.iter().map(|h| h.report.lost).sum(),
        rearmed: heard.iter().map(|h| h.report.rearmed).sum(),
        tracking_items: ready.tracking_items,
        readers_memory: ready.used_memory.saturating_sub(unread.used_memory),
    })
}

/// `1,000 writes/s` or `as fast as it goes`.
fn rate_text(rate: Option<f64>) -> String {
    rate.map_or("as fast as it goes".to_owned(), |r| {
        format!("{} writes/s", thousands(r.round() as u64))
    })
}

/// `20,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// The record of step `n` of `fleet`, against the same step with nobody listening.
fn record(fleet: Fleet, run: &Run, n: usize, quiet: &Run, size: &Size) -> Record {
    let step = &run.steps[n];
    let delays = &run.delays[n];
    let secs = step.took.as_secs_f64().max(1e-9);
    let told = fleet.told(size.processes);
    let expected = step.writes * told;
    let (cpu, bytes) = (
        step.spent.cpu_us_per(step.writes),
        step.spent.bytes_per(step.writes),
    );
    let base = &quiet.steps[n];
    let (base_cpu, base_bytes) = (
        base.spent.cpu_us_per(base.writes),
        base.spent.bytes_per(base.writes),
    );
    // Redis's price of one invalidation: what a write cost over the same write told to nobody,
    // per process told.
    let per_message_cpu = (cpu - base_cpu) / told.max(1) as f64;
    let per_message_bytes = (bytes - base_bytes) / told.max(1) as f64;
    let achieved = step.writes as f64 / secs;
    let cpu_per_s = step.spent.cpu_s / secs;
    let heard = delays.len() as u64;
    let p99 = delays.after_reply_us(0.99);
    let variant = format!(
        "{}, {}",
        fleet.variant(size.processes),
        rate_text(step.rate)
    );
    let mut r = Record::new("N4", variant, fleet.subject())
        .param("fleet", fleet.name())
        .param("processes", size.processes)
        .param("hot_keys", size.keys)
        .param(
            "target_writes_per_s",
            step.rate.map_or(json!("max"), |r| json!(r)),
        )
        .param("step_s", size.step.as_secs_f64())
        .param("writes_in_flight", size.in_flight as u64)
        .param(
            "how",
            "one writer (cacheback set, 64 in flight at most) writes the hot keys in turn; \
             reader processes each a cacheback client with a near cache (pub/sub) or a RESP3 \
             connection with CLIENT TRACKING ON reading cacheback's entry keys (tracking); \
             Redis counters (INFO cpu, INFO stats) around each step and its 0.5 s drain",
        );
    r.figure("writes", step.writes);
    r.figure("writes_per_s", stats::round3(achieved));
    r.figure("redis_cpu_s_per_s", stats::round3(cpu_per_s));
    r.figure("redis_cpu_us_per_write", stats::round3(cpu));
    r.figure(
        "redis_bytes_out_per_s",
        stats::round3(step.spent.net_out_bytes as f64 / secs),
    );
    r.figure("redis_bytes_out_per_write", stats::round3(bytes));
    r.figure(
        "redis_commands_per_write",
        stats::round3(step.spent.commands_per(step.writes)),
    );
    r.figure("invalidations_heard", heard);
    r.figure("invalidations_expected", expected);
    r.figure("invalidations_per_s", stats::round3(heard as f64 / secs));
    r.figure(
        "redis_cpu_us_extra_per_write",
        stats::round3(cpu - base_cpu),
    );
    r.figure(
        "redis_cpu_us_per_invalidation",
        stats::round3(per_message_cpu),
    );
    r.figure(
        "redis_bytes_out_per_invalidation",
        stats::round3(per_message_bytes),
    );
    r.figure("propagation", delays.json());
    r.figure("unmatched", run.unmatched);
    r.figure("repeated", run.repeated);
    r.figure("subscriptions_lost", run.lost);
    r.figure("rereads", run.rearmed);
    r.figure("redis_memory_for_readers_bytes", run.readers_memory);
    if fleet == Fleet::TrackingDisjoint {
        r.figure("tracking_table_items", run.tracking_items);
    }
    r.baseline = Some(Baseline {
        name: "the same step with nobody listening (announcements off)".to_owned(),
        figures: json!({
            "writes_per_s": stats::round3(base.writes as f64 / base.took.as_secs_f64().max(1e-9)),
            "redis_cpu_us_per_write": stats::round3(base_cpu),
            "redis_bytes_out_per_write": stats::round3(base_bytes),
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
        ratio: stats::round3(cpu / base_cpu.max(1e-9)),
        ratio_of: "Redis CPU per write".to_owned(),
    });
    r.summary = format!(
        "{} writes/s; Redis {:.2} s CPU/s, {cpu:.1} µs/write ({base_cpu:.1} with nobody \
         listening: {:+.1} µs a write, {per_message_cpu:+.2} µs and {per_message_bytes:+.0} B \
         per process told); {} invalidations/s, heard {heard}/{expected}; from the reply {}",
        thousands(achieved.round() as u64),
        cpu_per_s,
        cpu - base_cpu,
        thousands((heard as f64 / secs).round() as u64),
        delays.summary(),
    );
    r.check(
        "every process told is told",
        format!("{heard}/{expected}"),
        heard == expected && run.lost == 0,
    );
    r.check(
        "invalidations keep up: p99 < 5 ms",
        report::micros(p99),
        p99 < 5_000.0,
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_well() {
        assert_eq!(rate_text(Some(20_000.0)), "20,000 writes/s");
        assert_eq!(rate_text(Some(1_000.0)), "1,000 writes/s");
        assert_eq!(rate_text(None), "as fast as it goes");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
