//! Keeping near copies coherent, measured against the alternatives SCALING.md weighs: how fast
//! an invalidation reaches other processes and what it costs Redis.
//!
//! - **N3, one write heard by 4 reader processes**, four ways in one run: cacheback's own
//!   announcements (the `PUBLISH` inside its write script, a near cache in each reader), raw
//!   pub/sub (`SET` + `PUBLISH` of 24 bytes), Redis's client tracking in its default mode
//!   (`CLIENT TRACKING ON`: an `invalidate` push for each key the connection read) and in
//!   broadcast mode (`CLIENT TRACKING ON BCAST PREFIX`). See `propagation.rs`.
//! - **N4, announcement fan-out to 16 processes** at rising write rates, every process holding
//!   every hot key (announcements alone) and each holding a disjoint 1/16 of them, against
//!   client tracking for that disjoint case (tracking's best case). See `fanout.rs`.
//!
//! Every reader is an OS process of its own (`__child coherence-reader`, `reader.rs`), started
//! by the harness with its stdin piped: it sets up, reads its keys, prints [`READY`], notes the
//! wall-clock time at which each invalidation reaches it until its stdin closes, then writes
//! those receipts to a file and prints a one-line JSON report. The writer runs in the harness
//! process (`writer.rs`), noting when each write was sent and when its reply came; a receipt
//! is matched to the latest write of its key sent before it arrived, and its latency is the
//! time from that write's reply (an invalidation that overtook the reply counts as 0). Both
//! sides read the same clock (`CLOCK_REALTIME`, one machine).
//!
//! Each measurement starts a `redis-server` of its own, so that `INFO cpu` and `INFO stats`
//! deltas (`counters.rs`) count its traffic alone, and compares each way of invalidating
//! against the same writes with nobody listening, in the same run.

mod announced;
mod counters;
mod fanout;
mod propagation;
mod reader;
mod writer;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cacheback::{Job, Policy};
use serde::Deserialize;

use crate::stats;

pub(crate) use fanout::fanout;
pub(crate) use propagation::propagation;
pub(crate) use reader::main as reader_main;

/// What a reader prints once it listens and has read its keys.
const READY: &str = "ready";

/// How a reader hears of writes (and how the writer writes for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// cacheback's own path: a client with a near cache in front of `RedisStore`, hearing the
    /// announcement its write script publishes; timed when the near tier takes it (and drops
    /// the copy in the same step). The writer is a cacheback client's `set`.
    Cacheback,
    /// Raw pub/sub: `SUBSCRIBE` on a RESP3 connection; the writer pipelines `SET` and a
    /// `PUBLISH` of 24 bytes.
    Pubsub,
    /// `CLIENT TRACKING ON` (default mode) on a RESP3 connection: an `invalidate` push for each
    /// key this connection read, once per read.
    Tracking,
    /// `CLIENT TRACKING ON BCAST PREFIX <prefix>`: an `invalidate` push for every key written
    /// under the prefix, read or not.
    Bcast,
}

impl Mode {
    /// The name on the command line.
    fn arg(self) -> &'static str {
        match self {
            Mode::Cacheback => "cacheback",
            Mode::Pubsub => "pubsub",
            Mode::Tracking => "tracking",
            Mode::Bcast => "bcast",
        }
    }
}

/// What a reader process is told (`URL PREFIX --mode M --keys K [--readers P --index R]
/// [--disjoint] [--rearm] [--entries] --out FILE`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReaderPlan {
    /// The measurement's Redis.
    url: String,
    /// The measurement's key prefix.
    prefix: String,
    /// How this reader hears of writes.
    #[arg(long, value_enum)]
    mode: Mode,
    /// The hot keys are `0..keys`.
    #[arg(long)]
    keys: u64,
    /// Reader processes in the measurement.
    #[arg(long, default_value_t = 1)]
    readers: u64,
    /// This reader's number, `0..readers`.
    #[arg(long, default_value_t = 0)]
    index: u64,
    /// This reader reads only the keys `i` with `i % readers == index` (else every key).
    #[arg(long)]
    disjoint: bool,
    /// Reads a key of its own again as soon as its invalidation arrives, as a process that
    /// keeps serving it would (the near copy comes back; tracking is armed again).
    #[arg(long)]
    rearm: bool,
    /// The keys are cacheback's entries of the [`Hot`] job under the prefix (a tracking reader
    /// of a cacheback fleet), not `<prefix>:k:<i>`.
    #[arg(long)]
    entries: bool,
    /// Where the receipts go.
    #[arg(long)]
    out: PathBuf,
}

impl ReaderPlan {
    /// The command line of a reader.
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            self.url.clone(),
            self.prefix.clone(),
            "--mode".to_owned(),
            self.mode.arg().to_owned(),
            "--keys".to_owned(),
            self.keys.to_string(),
            "--readers".to_owned(),
            self.readers.to_string(),
            "--index".to_owned(),
            self.index.to_string(),
        ];
        for (on, flag) in [
            (self.disjoint, "--disjoint"),
            (self.rearm, "--rearm"),
            (self.entries, "--entries"),
        ] {
            if on {
                args.push(flag.to_owned());
            }
        }
        args.push("--out".to_owned());
        args.push(self.out.display().to_string());
        args
    }

    /// The keys this reader reads.
    fn own_keys(&self) -> Vec<u64> {
        (0..self.keys)
            .filter(|i| !self.disjoint || i % self.readers.max(1) == self.index)
            .collect()
    }

    /// Whether key `i` is one this reader reads.
    fn owns(&self, i: u64) -> bool {
        !self.disjoint || i % self.readers.max(1) == self.index
    }
}

/// The job whose entries cacheback's writers and readers share: values the writer sets itself
/// (a miss would fetch one, but every key is written before it is read).
#[derive(Debug)]
pub(crate) struct Hot;

impl Job for Hot {
    type Args = u64;
    type Value = crate::value::Value;
    type Error = std::convert::Infallible;

    fn name(&self) -> &str {
        "coherence"
    }

    fn policy(&self) -> Policy {
        // Never stale during a run: no claim or refresh traffic mixes with the writes.
        Policy::default().lifetime(Duration::from_secs(3600))
    }

    async fn fetch(&self, key: u64) -> Result<crate::value::Value, std::convert::Infallible> {
        Ok(crate::value::Value::new(key))
    }
}

/// The Redis key of hot key `i` for the raw ways (`Pubsub`, `Tracking`, `Bcast`).
fn raw_key(prefix: &str, i: u64) -> String {
    format!("{}{i}", raw_key_prefix(prefix))
}

/// What every raw key starts with (the prefix `Bcast` tracks).
fn raw_key_prefix(prefix: &str) -> String {
    format!("{prefix}:k:")
}

/// The channel of raw pub/sub.
fn raw_channel(prefix: &str) -> String {
    format!("{prefix}:changes")
}

/// Raw pub/sub's message for key `i`: 24 bytes, as cacheback's announcement of a write (a
/// digest and a generation) is about; the key's number first.
fn raw_payload(i: u64) -> [u8; 24] {
    let mut payload = [0u8; 24];
    payload[..8].copy_from_slice(&i.to_be_bytes());
    payload
}

/// The key number in a raw pub/sub message.
fn key_of_payload(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

/// The digest at the end of a cacheback entry key (`prefix:job:<32 hex digits>`).
fn digest_of_entry_key(key: &str) -> Option<u128> {
    let hex = key.get(key.len().checked_sub(32)?..)?;
    u128::from_str_radix(hex, 16).ok()
}

/// Now, in nanoseconds since the Unix epoch: the clock writer and readers share.
fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// One write: its key, when it was sent and when its reply came (Unix ns), and which step of
/// the measurement it belongs to.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    key: u32,
    sent_ns: u64,
    reply_ns: u64,
    step: usize,
}

/// One step's delays, each receipt's: from its write's reply to the receipt (negative when the
/// receipt came first) and from its write's sending, in nanoseconds, sorted.
#[derive(Debug, Clone, Default)]
struct Delays {
    from_reply: Vec<i64>,
    from_send: Vec<u64>,
}

impl Delays {
    /// Receipts counted.
    fn len(&self) -> usize {
        self.from_send.len()
    }

    /// The `q` quantile from the reply (nearest rank), in µs; 0 with no receipts.
    fn after_reply_us(&self, q: f64) -> f64 {
        let n = self.from_reply.len();
        if n == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n);
        stats::round3(self.from_reply[rank - 1] as f64 / 1e3)
    }

    /// The `q` quantile from the sending (nearest rank), in µs; 0 with no receipts.
    fn after_send_us(&self, q: f64) -> f64 {
        stats::nearest_rank(&self.from_send, q).map_or(0.0, stats::ns_to_us)
    }

    /// The share of receipts that arrived before their write's reply.
    fn before_reply(&self) -> f64 {
        let early = self.from_reply.partition_point(|&d| d < 0);
        early as f64 / self.len().max(1) as f64
    }

    /// As JSON: count, and p50/p99/p99.9/max in µs from the reply and from the sending.
    fn json(&self) -> serde_json::Value {
        let reply = |q| self.after_reply_us(q);
        let send = |q| self.after_send_us(q);
        serde_json::json!({
            "count": self.len(),
            "from_reply": {
                "p50_us": reply(0.5), "p99_us": reply(0.99), "p999_us": reply(0.999),
                "max_us": reply(1.0), "share_before_reply": stats::round3(self.before_reply()),
            },
            "from_send": {
                "p50_us": send(0.5), "p99_us": send(0.99), "p999_us": send(0.999),
                "max_us": send(1.0),
            },
        })
    }

    /// `p50 12 µs, p99 345 µs, max 1.2 ms` from the reply.
    fn summary(&self) -> String {
        format!(
            "p50 {}, p99 {}, max {}",
            signed_micros(self.after_reply_us(0.5)),
            signed_micros(self.after_reply_us(0.99)),
            signed_micros(self.after_reply_us(1.0)),
        )
    }
}

/// [`report::micros`](crate::report::micros), with a minus sign when negative.
fn signed_micros(us: f64) -> String {
    let text = crate::report::micros(us.abs());
    if us < 0.0 { format!("−{text}") } else { text }
}

/// Receipts matched to the writes that caused them, per step.
#[derive(Debug)]
struct Matched {
    /// Delays per step.
    delays: Vec<Delays>,
    /// Receipts with no write of their key sent before them (should be none).
    unmatched: u64,
    /// Receipts matched to a write the same reader had already been matched to: a reader
    /// lagging by more than the time between two writes of a key (should be none).
    repeated: u64,
}

/// Matches each reader's receipts `(key, unix ns)` to the latest write of the key sent before
/// the receipt arrived. `stamps` are in the order they were sent.
fn match_receipts(stamps: &[Stamp], steps: usize, readers: &[Vec<(u32, u64)>]) -> Matched {
    let mut by_key: HashMap<u32, Vec<usize>> = HashMap::new();
    for (n, s) in stamps.iter().enumerate() {
        by_key.entry(s.key).or_default().push(n);
    }
    let mut matched = Matched {
        delays: vec![Delays::default(); steps],
        unmatched: 0,
        repeated: 0,
    };
    for receipts in readers {
        let mut seen = vec![false; stamps.len()];
        for &(key, at_ns) in receipts {
            let Some(writes) = by_key.get(&key) else {
                matched.unmatched += 1;
                continue;
            };
            let before = writes.partition_point(|&n| stamps[n].sent_ns <= at_ns);
            let Some(&n) = before.checked_sub(1).and_then(|b| writes.get(b)) else {
                matched.unmatched += 1;
                continue;
            };
            if std::mem::replace(&mut seen[n], true) {
                matched.repeated += 1;
            }
            let stamp = stamps[n];
            if let Some(d) = matched.delays.get_mut(stamp.step) {
                d.from_reply
                    .push(i64::try_from(at_ns).unwrap_or(i64::MAX) - stamp.reply_ns as i64);
                d.from_send.push(at_ns - stamp.sent_ns);
            }
        }
    }
    for d in &mut matched.delays {
        d.from_reply.sort_unstable();
        d.from_send.sort_unstable();
    }
    matched
}

/// A reader's receipts as written to its file: 12 bytes each, the key number (u32) and the
/// Unix ns (u64), little-endian.
fn encode_receipts(receipts: &[(u32, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(receipts.len() * 12);
    for &(key, at) in receipts {
        out.extend_from_slice(&key.to_le_bytes());
        out.extend_from_slice(&at.to_le_bytes());
    }
    out
}

fn decode_receipts(bytes: &[u8]) -> Result<Vec<(u32, u64)>, String> {
    if !bytes.len().is_multiple_of(12) {
        return Err(format!("a receipts file of {} bytes", bytes.len()));
    }
    Ok(bytes
        .chunks_exact(12)
        .map(|c| {
            let key = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let mut at = [0u8; 8];
            at.copy_from_slice(&c[4..]);
            (key, u64::from_le_bytes(at))
        })
        .collect())
}

/// What a reader prints last (one JSON line), next to its receipts file.
#[derive(Debug, Deserialize)]
struct ReaderReport {
    /// Invalidations heard.
    receipts: u64,
    /// Messages that named no hot key.
    unknown: u64,
    /// Times the subscription was lost (cacheback only; a loss flushes the near cache).
    lost: u64,
    /// Keys read again after their invalidation.
    rearmed: u64,
}

/// A reader's report and its receipts.
#[derive(Debug)]
struct Heard {
    report: ReaderReport,
    receipts: Vec<(u32, u64)>,
}

/// The reader processes of one measurement: started together, ready together, stopped together
/// (by closing their stdin); killed if dropped before.
struct Readers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    /// Lines the readers print, with the reader's number.
    lines: Receiver<(usize, String)>,
    plans: Vec<ReaderPlan>,
}

impl Readers {
    /// Starts one reader process per plan.
    fn start(plans: Vec<ReaderPlan>) -> Result<Readers, String> {
        let (tx, lines) = channel();
        let mut readers = Readers {
            children: Vec::new(),
            stdins: Vec::new(),
            lines,
            plans: Vec::new(),
        };
        for (n, plan) in plans.into_iter().enumerate() {
            let mut child = crate::fleet::spawn_driven("coherence-reader", &plan.args())?;
            let stdin = child.stdin.take().ok_or("a reader without a stdin")?;
            let stdout = child.stdout.take().ok_or("a reader without a stdout")?;
            readers.children.push(child);
            readers.stdins.push(stdin);
            readers.plans.push(plan);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    if tx.send((n, line)).is_err() {
                        return;
                    }
                }
            });
        }
        Ok(readers)
    }

    /// Waits until every reader printed `what` (a line equal to it, or any JSON line when
    /// `what` is `{`), up to `within`; returns those lines in reader order.
    fn wait_for(&mut self, what: &str, within: Duration) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + within;
        let mut got: Vec<Option<String>> = vec![None; self.children.len()];
        while got.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok((n, line)) if line == what || (what == "{" && line.starts_with('{')) => {
                    got[n] = Some(line);
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) if left.is_zero() => {
                    let missing = got.iter().filter(|g| g.is_none()).count();
                    return Err(format!(
                        "{missing} reader processes did not say `{what}` within {within:?}"
                    ));
                }
                Err(RecvTimeoutError::Timeout) => {
                    // A reader that failed will never say it: stop at once.
                    for child in &mut self.children {
                        if let Ok(Some(status)) = child.try_wait()
                            && !status.success()
                        {
                            return Err(format!(
                                "a reader process failed ({status}); its error is above"
                            ));
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "the reader processes stopped before saying `{what}` (their errors are \
                         above)"
                    ));
                }
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Waits until every reader is ready.
    fn ready(&mut self, within: Duration) -> Result<(), String> {
        self.wait_for(READY, within).map(drop)
    }

    /// Stops the readers (closes their stdin), waits for their reports and reads their
    /// receipts.
    fn finish(mut self, within: Duration) -> Result<Vec<Heard>, String> {
        for stdin in &mut self.stdins {
            // Any byte or the end of stdin stops a reader.
            let _ = stdin.write_all(b"\n");
        }
        self.stdins.clear();
        let lines = self.wait_for("{", within)?;
        let deadline = Instant::now() + within;
        for child in &mut self.children {
            loop {
                match child.try_wait().map_err(|e| e.to_string())? {
                    Some(status) if status.success() => break,
                    Some(status) => return Err(format!("a reader process failed: {status}")),
                    None if Instant::now() > deadline => {
                        return Err("a reader process did not exit".to_owned());
                    }
                    None => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        lines
            .iter()
            .zip(&self.plans)
            .map(|(line, plan)| {
                let report: ReaderReport = serde_json::from_str(line)
                    .map_err(|e| format!("a reader's report `{line}`: {e}"))?;
                let receipts = read_receipts(&plan.out)?;
                if receipts.len() as u64 != report.receipts {
                    return Err(format!(
                        "a reader reported {} receipts and wrote {}",
                        report.receipts,
                        receipts.len()
                    ));
                }
                Ok(Heard { report, receipts })
            })
            .collect()
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        for child in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

fn read_receipts(path: &Path) -> Result<Vec<(u32, u64)>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    decode_receipts(&bytes)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Args {
        #[command(flatten)]
        plan: ReaderPlan,
    }

    /// A reader parses exactly the plan its parent passed.
    #[test]
    fn a_plan_survives_the_command_line() {
        for (mode, flags) in [(Mode::Tracking, true), (Mode::Cacheback, false)] {
            let plan = ReaderPlan {
                url: "redis://127.0.0.1:1".to_owned(),
                prefix: "n4-1".to_owned(),
                mode,
                keys: 16_000,
                readers: 16,
                index: 3,
                disjoint: flags,
                rearm: flags,
                entries: flags,
                out: PathBuf::from("/tmp/x.bin"),
            };
            let argv = std::iter::once("child".to_owned()).chain(plan.args());
            let parsed = Args::try_parse_from(argv).unwrap().plan;
            assert_eq!(format!("{parsed:?}"), format!("{plan:?}"));
        }
        // The binary routes the line to the reader role.
        let line = "cacheback-bench __child coherence-reader redis://127.0.0.1:1 p --mode bcast \
                    --keys 10 --out x";
        let cli = crate::Cli::try_parse_from(line.split_whitespace()).unwrap();
        assert!(matches!(
            cli.command,
            Some(crate::Command::Child {
                role: crate::fleet::Role::CoherenceReader(_)
            })
        ));
    }

    #[test]
    fn disjoint_readers_share_the_keys_out() {
        let plan = |index| ReaderPlan {
            url: String::new(),
            prefix: String::new(),
            mode: Mode::Tracking,
            keys: 10,
            readers: 3,
            index,
            disjoint: true,
            rearm: false,
            entries: false,
            out: PathBuf::new(),
        };
        assert_eq!(plan(1).own_keys(), [1, 4, 7]);
        let all: usize = (0..3).map(|i| plan(i).own_keys().len()).sum();
        assert_eq!(all, 10);
        assert!(plan(2).owns(5) && !plan(2).owns(4));
    }

    #[test]
    fn keys_travel_in_payloads_names_and_files() {
        assert_eq!(raw_payload(7).len(), 24);
        assert_eq!(key_of_payload(&raw_payload(7)), Some(7));
        assert_eq!(key_of_payload(b"short"), None);
        let digest = 0x0123_4567_89ab_cdef_0011_2233_4455_6677_u128;
        assert_eq!(
            digest_of_entry_key(&format!("p:coherence:{digest:032x}")),
            Some(digest)
        );
        assert_eq!(digest_of_entry_key("p:k:7"), None);
        let receipts = vec![(1, 10), (u32::MAX, u64::MAX)];
        assert_eq!(
            decode_receipts(&encode_receipts(&receipts)).unwrap(),
            receipts
        );
        assert!(decode_receipts(&[0; 13]).is_err());
    }

    #[test]
    fn receipts_match_the_latest_write_sent_before_them() {
        let stamp = |key, sent_ns, reply_ns, step| Stamp {
            key,
            sent_ns,
            reply_ns,
            step,
        };
        // Key 1 written at 100 (reply 150) and at 1,000 (reply 1,040); key 2 at 200.
        let stamps = [
            stamp(1, 100, 150, 0),
            stamp(2, 200, 260, 0),
            stamp(1, 1_000, 1_040, 1),
        ];
        let readers = vec![
            // 50 after the reply; 10 before the reply; the second write, 60 after.
            vec![(1, 200), (2, 250), (1, 1_100)],
            // Before any write of key 1; a key never written; the first write twice.
            vec![(1, 50), (9, 300), (1, 300), (1, 400)],
        ];
        let m = match_receipts(&stamps, 2, &readers);
        assert_eq!((m.unmatched, m.repeated), (2, 1));
        assert_eq!(m.delays[0].from_reply, [-10, 50, 150, 250]);
        assert_eq!(m.delays[0].from_send, [50, 100, 200, 300]);
        assert_eq!(m.delays[1].from_reply, [60]);
        assert_eq!(m.delays[1].from_send, [100]);
        assert!((m.delays[0].before_reply() - 0.25).abs() < 1e-9);
        assert_eq!(m.delays[0].after_reply_us(0.5), 0.05);
        assert_eq!(m.delays[0].after_reply_us(0.0), -0.01);
        assert_eq!(m.delays[0].after_send_us(1.0), 0.3);
        assert_eq!(
            m.delays[1].summary(),
            "p50 0.06 µs, p99 0.06 µs, max 0.06 µs"
        );
        assert_eq!(signed_micros(-1_500.0), "−1.5 ms");
    }
}
