//! N3: one writer, 4 reader processes, 1,000 writes of distinct hot keys that every reader
//! has read, one every 2 ms, heard four ways in the same run (see [`Mode`]): the time from each
//! write's reply to each reader hearing of it, and Redis's CPU and bytes sent per write next to
//! the same writes with nobody listening (cacheback's `set` with announcements off for
//! cacheback's way, a plain `SET` for the raw ones), so that what is left is the price of
//! telling the readers.

use std::time::Duration;

use cacheback_test_support::RedisServer;
use serde_json::json;

use super::counters::{Counters, Spent};
use super::writer::{Pace, Writer, drive};
use super::{Heard, Mode, ReaderPlan, Readers, Stamp, match_receipts};
use crate::report::{self, Baseline, Record};
use crate::stats;
use crate::workloads::{Ctx, runtime};

/// The four ways, in the order they run, with what each record says it is.
const WAYS: [(Mode, &str, &str); 4] = [
    (
        Mode::Cacheback,
        "cacheback: announcement from the write script to near caches",
        "cacheback",
    ),
    (
        Mode::Pubsub,
        "raw pub/sub: SET + PUBLISH of 24 bytes, SUBSCRIBE",
        "Redis pub/sub",
    ),
    (
        Mode::Tracking,
        "client tracking, default mode: CLIENT TRACKING ON, keys read",
        "Redis client tracking",
    ),
    (
        Mode::Bcast,
        "client tracking, broadcast: CLIENT TRACKING ON BCAST PREFIX",
        "Redis client tracking",
    ),
];

/// How big a run is.
#[derive(Debug, Clone, Copy)]
struct Size {
    /// Writes per pass, each of a key of its own.
    writes: u64,
    /// Reader processes.
    readers: u64,
    /// Time between two writes.
    spacing: Duration,
    /// Wait after the last write before Redis's counters are read again.
    drain: Duration,
}

/// One pass of writes: what Redis spent on them, the writes and what the readers heard.
struct Pass {
    spent: Spent,
    stamps: Vec<Stamp>,
    heard: Vec<Heard>,
    /// Redis's counters just before the writes (the tracking table's size).
    before: Counters,
}

/// N3: invalidation propagation, cacheback's announcements against raw pub/sub and client
/// tracking, 4 reader processes.
pub(crate) fn propagation(ctx: &Ctx) -> Result<Vec<Record>, String> {
    // A server of its own, so that its counters count these writes alone.
    let server =
        RedisServer::try_start().map_err(|e| format!("cannot start a redis-server for N3: {e}"))?;
    let size = Size {
        writes: ctx.scale.pick(1_000, 50),
        readers: ctx.scale.pick(4, 2),
        spacing: ctx
            .scale
            .pick(Duration::from_millis(2), Duration::from_millis(1)),
        drain: ctx
            .scale
            .pick(Duration::from_millis(200), Duration::from_millis(50)),
    };
    let rt = runtime();
    let pid = std::process::id();
    let client = server.client();
    let mut info = rt
        .block_on(client.get_multiplexed_async_connection())
        .map_err(|e| format!("cannot connect to N3's Redis: {e}"))?;
    // A pass heard `mode`'s way; `None`: nobody listens to cacheback's writes (announcements
    // off), or to raw `SET`s (`raw`).
    let mut pass_of = |name: &str, mode: Option<Mode>, raw: bool| -> Result<Pass, String> {
        let prefix = format!("n3-{name}-{pid}");
        let writer = rt.block_on(async {
            match mode {
                None if !raw => Writer::cacheback(&server.url(), &prefix, false),
                Some(Mode::Cacheback) => Writer::cacheback(&server.url(), &prefix, true),
                Some(Mode::Pubsub) => Writer::raw(&client, &prefix, true).await,
                None | Some(Mode::Tracking | Mode::Bcast) => {
                    Writer::raw(&client, &prefix, false).await
                }
            }
        })?;
        let readers = match mode {
            None => Vec::new(),
            Some(mode) => (0..size.readers)
                .map(|index| ReaderPlan {
                    url: server.url(),
                    prefix: prefix.clone(),
                    mode,
                    keys: size.writes,
                    readers: size.readers,
                    index,
                    disjoint: false,
                    rearm: false,
                    entries: false,
                    out: server.dir().join(format!("{prefix}-{index}.bin")),
                })
                .collect(),
        };
        let pass = one_pass(&rt, &mut info, &writer, readers, size);
        rt.block_on(writer.shutdown());
        pass
    };
    // The same writes with nobody listening, cacheback's and raw.
    let quiet_cacheback = pass_of("quiet-cacheback", None, false)?;
    let quiet_raw = pass_of("quiet-raw", None, true)?;
    let mut records = Vec::new();
    for (mode, variant, subject) in WAYS {
        let pass = pass_of(mode.arg(), Some(mode), true)?;
        let quiet = match mode {
            Mode::Cacheback => (&quiet_cacheback, "cacheback set, announcements off"),
            _ => (&quiet_raw, "SET"),
        };
        records.push(record(variant, subject, mode, &pass, quiet, size));
    }
    Ok(records)
}

/// Fills the keys, starts the readers and waits until they are ready, then writes every key
/// once at the run's pace, waits for the stragglers, and stops the readers.
fn one_pass(
    rt: &tokio::runtime::Runtime,
    info: &mut redis::aio::MultiplexedConnection,
    writer: &Writer,
    readers: Vec<ReaderPlan>,
    size: Size,
) -> Result<Pass, String> {
    rt.block_on(writer.fill(size.writes))?;
    let mut readers = Readers::start(readers)?;
    readers.ready(Duration::from_secs(60))?;
    let pace = Pace {
        first: 0,
        keys: size.writes,
        rate: Some(1.0 / size.spacing.as_secs_f64()),
        writes: Some(size.writes),
        duration: None,
        in_flight: 1,
        step: 0,
    };
    let (before, stamps, after) = rt.block_on(async {
        let before = Counters::read(info).await?;
        let stamps = drive(writer, &pace).await?;
        tokio::time::sleep(size.drain).await;
        let after = Counters::read(info).await?;
        Ok::<_, String>((before, stamps, after))
    })?;
    let heard = readers.finish(Duration::from_secs(30))?;
    Ok(Pass {
        spent: before.until(&after),
        stamps,
        heard,
        before,
    })
}

/// The record of one way: propagation and Redis's cost per write, against the same writes with
/// nobody listening.
fn record(
    variant: &str,
    subject: &str,
    mode: Mode,
    pass: &Pass,
    (quiet, quiet_name): (&Pass, &str),
    size: Size,
) -> Record {
    let receipts: Vec<Vec<(u32, u64)>> = pass.heard.iter().map(|h| h.receipts.clone()).collect();
    let matched = match_receipts(&pass.stamps, 1, &receipts);
    let delays = &matched.delays[0];
    let writes = pass.stamps.len() as u64;
    let expected = writes * size.readers;
    let lost: u64 = pass.heard.iter().map(|h| h.report.lost).sum();
    let unknown: u64 = pass.heard.iter().map(|h| h.report.unknown).sum();
    let (cpu, bytes) = (pass.spent.cpu_us_per(writes), pass.spent.bytes_per(writes));
    let quiet_writes = quiet.stamps.len() as u64;
    let (quiet_cpu, quiet_bytes) = (
        quiet.spent.cpu_us_per(quiet_writes),
        quiet.spent.bytes_per(quiet_writes),
    );
    // What telling one reader of one write cost, over the writes alone.
    let per_reader_cpu = (cpu - quiet_cpu) / size.readers as f64;
    let per_reader_bytes = (bytes - quiet_bytes) / size.readers as f64;
    let mut r = Record::new("N3", variant, subject)
        .param("writes", writes)
        .param("reader_processes", size.readers)
        .param("spacing_ms", size.spacing.as_secs_f64() * 1e3)
        .param(
            "how",
            "one writer (the harness process) writes each of its keys once, one write every \
             spacing; each reader process read every key first; latency from the write's reply \
             to the reader hearing of it (cacheback: its near tier taking the announcement, \
             which drops the copy; raw: the RESP3 push parsed), one clock",
        );
    r.figure("propagation", delays.json());
    r.figure("heard", delays.len());
    r.figure("expected", expected);
    r.figure("unmatched", matched.unmatched + unknown);
    r.figure("subscriptions_lost", lost);
    r.figure("redis_cpu_us_per_write", stats::round3(cpu));
    r.figure("redis_bytes_out_per_write", stats::round3(bytes));
    r.figure(
        "redis_commands_per_write",
        stats::round3(pass.spent.commands_per(writes)),
    );
    r.figure(
        "redis_cpu_us_per_reader_told",
        stats::round3(per_reader_cpu),
    );
    r.figure(
        "redis_bytes_out_per_reader_told",
        stats::round3(per_reader_bytes),
    );
    if mode == Mode::Tracking {
        r.figure("tracking_table_items", pass.before.tracking_items);
    }
    r.baseline = Some(Baseline {
        name: format!("the same writes with nobody listening ({quiet_name})"),
        figures: json!({
            "redis_cpu_us_per_write": stats::round3(quiet_cpu),
            "redis_bytes_out_per_write": stats::round3(quiet_bytes),
            "redis_commands_per_write": stats::round3(quiet.spent.commands_per(quiet_writes)),
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
        ratio: stats::round3(cpu / quiet_cpu.max(1e-9)),
        ratio_of: "Redis CPU per write".to_owned(),
    });
    let p99 = delays.after_reply_us(0.99);
    let table = if mode == Mode::Tracking {
        format!(
            "; tracking table {} (key, reader) pairs",
            pass.before.tracking_items
        )
    } else {
        String::new()
    };
    r.summary = format!(
        "from the write's reply {} ({:.0}% before it; from sending p50 {}, p99 {}); heard \
         {}/{expected}; Redis per write {cpu:.1} µs CPU, {bytes:.0} B out (nobody listening \
         {quiet_cpu:.1} µs, {quiet_bytes:.0} B): {per_reader_cpu:+.2} µs, \
         {per_reader_bytes:+.0} B per reader told{table}",
        delays.summary(),
        delays.before_reply() * 100.0,
        report::micros(delays.after_send_us(0.5)),
        report::micros(delays.after_send_us(0.99)),
        delays.len(),
    );
    r.check(
        "every reader hears every write",
        format!("{}/{expected}", delays.len()),
        delays.len() as u64 == expected && matched.unmatched == 0 && lost == 0,
    );
    r.check(
        "propagation p99 < 5 ms on loopback",
        report::micros(p99),
        p99 < 5_000.0,
    );
    r
}
