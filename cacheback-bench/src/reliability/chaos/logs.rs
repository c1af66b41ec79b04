//! The chaos run's per-process logs and the pure analysis of them.
//!
//! Fetch accounting must survive a Redis restart and a `kill -9`, so it does not go through
//! Redis: every child process appends lines to a file of its own, one `write(2)` per line on an
//! `O_APPEND` file (nothing is buffered in the process, so a killed process loses nothing it
//! wrote). The driver reads the files after the run. Lines, fields separated by one space:
//!
//! ```text
//! P <name> <role> <pid>            the header: which process wrote this file
//! S <id> <key> <ms>                fetch <id> of <key> started at <ms> (unix ms)
//! E <id> <ms> ok|err|cancelled     fetch <id> ended (cancelled: dropped, i.e. cut by
//!                                  `fetch_timeout` or a shutdown)
//! R <start> <end> <key> <reason>   a read that returned an error or no value (web processes)
//! M <start> <end> <key>            a read answered by a synchronous fallback fetch (web)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// An append-only log file written a whole line per system call.
#[derive(Debug)]
pub(super) struct LogFile {
    file: Mutex<File>,
}

impl LogFile {
    /// Creates (truncates) `path` and writes the header line.
    pub(super) fn create(path: &Path, name: &str, role: &str) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let log = LogFile {
            file: Mutex::new(file),
        };
        log.line(&format!("P {name} {role} {}", std::process::id()));
        Ok(log)
    }

    /// Appends one line (a newline is added). A failed write is reported on stderr once per
    /// line and otherwise ignored: the run goes on, and the analysis notices missing lines.
    pub(super) fn line(&self, text: &str) {
        let mut buf = String::with_capacity(text.len() + 1);
        buf.push_str(text);
        buf.push('\n');
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(e) = file.write_all(buf.as_bytes()) {
            eprintln!("chaos: cannot write a log line: {e}");
        }
    }
}

/// How a fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Returned a value.
    Ok,
    /// Returned an error.
    Err,
    /// Dropped before it finished: cut by `fetch_timeout` (a hanging fetch) or a shutdown.
    Cancelled,
}

/// One fetch, as its process logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fetch {
    /// The key (the job's args).
    pub(super) key: u64,
    /// When it started (unix ms).
    pub(super) start: u64,
    /// When it ended, and how; `None` if the process died (or was killed) first.
    pub(super) end: Option<(u64, Outcome)>,
}

/// A read of a web process: when it started and ended, and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReadSpan {
    /// Start (unix ms).
    pub(super) start: u64,
    /// End (unix ms).
    pub(super) end: u64,
    /// The key read.
    pub(super) key: u64,
    /// Why it failed (empty for fallback-served reads).
    pub(super) reason: String,
}

/// Everything one process logged.
#[derive(Debug, Clone, Default)]
pub(super) struct ProcessLog {
    /// The process's name in the run (`web-1`, `worker-2`, ...).
    pub(super) name: String,
    /// `web` or `worker`.
    pub(super) role: String,
    /// Its pid.
    pub(super) pid: u32,
    /// Its fetches, in start order.
    pub(super) fetches: Vec<Fetch>,
    /// Reads that failed (error or no value).
    pub(super) failed_reads: Vec<ReadSpan>,
    /// Reads answered by a synchronous fallback fetch (the store could not be read).
    pub(super) fallback_reads: Vec<ReadSpan>,
}

/// Parses a process's log. Lines that do not parse (there should be none) are counted in the
/// error, never silently dropped.
pub(super) fn parse(text: &str) -> Result<ProcessLog, String> {
    let mut log = ProcessLog::default();
    let mut by_id: HashMap<u64, usize> = HashMap::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        if parse_line(line, &mut log, &mut by_id).is_none() {
            bad.push(n + 1);
        }
    }
    if !bad.is_empty() {
        return Err(format!(
            "{} lines do not parse (first: line {})",
            bad.len(),
            bad[0]
        ));
    }
    Ok(log)
}

fn parse_line(line: &str, log: &mut ProcessLog, by_id: &mut HashMap<u64, usize>) -> Option<()> {
    let mut f = line.splitn(5, ' ');
    match f.next()? {
        "P" => {
            log.name = f.next()?.to_owned();
            log.role = f.next()?.to_owned();
            log.pid = f.next()?.parse().ok()?;
        }
        "S" => {
            let id: u64 = f.next()?.parse().ok()?;
            let key = f.next()?.parse().ok()?;
            let start = f.next()?.parse().ok()?;
            by_id.insert(id, log.fetches.len());
            log.fetches.push(Fetch {
                key,
                start,
                end: None,
            });
        }
        "E" => {
            let id: u64 = f.next()?.parse().ok()?;
            let at = f.next()?.parse().ok()?;
            let outcome = match f.next()? {
                "ok" => Outcome::Ok,
                "err" => Outcome::Err,
                "cancelled" => Outcome::Cancelled,
                _ => return None,
            };
            let fetch = log.fetches.get_mut(*by_id.get(&id)?)?;
            fetch.end = Some((at, outcome));
        }
        kind @ ("R" | "M") => {
            let span = ReadSpan {
                start: f.next()?.parse().ok()?,
                end: f.next()?.parse().ok()?,
                key: f.next()?.parse().ok()?,
                reason: f.next().unwrap_or("").to_owned(),
            };
            if kind == "R" {
                log.failed_reads.push(span);
            } else {
                log.fallback_reads.push(span);
            }
        }
        _ => return None,
    }
    Some(())
}

/// Refresh fetches grouped into stale events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct EventStats {
    /// Fetches considered.
    pub(super) fetches: usize,
    /// Stale events: maximal groups of fetches of one key that overlap in time.
    pub(super) events: usize,
    /// Fetches that started while another fetch of the same key was still running.
    pub(super) duplicates: usize,
    /// The largest group.
    pub(super) max_per_event: usize,
    /// Fetches without an end line (their process died first).
    pub(super) unfinished: usize,
}

impl EventStats {
    /// Duplicate fetches per stale event.
    pub(super) fn duplicates_per_event(&self) -> f64 {
        if self.events == 0 {
            0.0
        } else {
            self.duplicates as f64 / self.events as f64
        }
    }
}

/// Groups `fetches` into stale events: per key, a fetch that starts before every earlier fetch
/// of that key has ended joins their event (and is a duplicate); otherwise it starts a new one.
/// A fetch without an end line counts as running until `start + unfinished_ms` (its process was
/// killed; its message is redelivered after the visibility timeout).
pub(super) fn stale_events<'a>(
    fetches: impl IntoIterator<Item = &'a Fetch>,
    unfinished_ms: u64,
) -> EventStats {
    let mut by_key: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    let mut stats = EventStats::default();
    for f in fetches {
        stats.fetches += 1;
        let end = match f.end {
            Some((at, _)) => at.max(f.start),
            None => {
                stats.unfinished += 1;
                f.start.saturating_add(unfinished_ms)
            }
        };
        by_key.entry(f.key).or_default().push((f.start, end));
    }
    for spans in by_key.values_mut() {
        spans.sort_unstable();
        let mut group_end = 0;
        let mut group_size = 0;
        for &(start, end) in spans.iter() {
            if group_size > 0 && start < group_end {
                group_size += 1;
                stats.duplicates += 1;
                group_end = group_end.max(end);
            } else {
                stats.events += 1;
                group_size = 1;
                group_end = end;
            }
            stats.max_per_event = stats.max_per_event.max(group_size);
        }
    }
    stats
}

/// Fetches that started less than `lifetime_ms` after a successful fetch of the same key had
/// ended: the value they replace was (most likely) still Fresh, so a reader could not have
/// asked for them. Expected only where the earlier value could not be stored (Redis down).
/// Returns the start times of such fetches.
pub(super) fn refetches_of_fresh<'a>(
    fetches: impl IntoIterator<Item = &'a Fetch>,
    lifetime_ms: u64,
) -> Vec<(u64, u64)> {
    let mut by_key: BTreeMap<u64, Vec<&Fetch>> = BTreeMap::new();
    for f in fetches {
        by_key.entry(f.key).or_default().push(f);
    }
    let mut out = Vec::new();
    for (key, mut list) in by_key {
        list.sort_unstable_by_key(|f| f.start);
        let mut last_ok_end: Option<u64> = None;
        for f in list {
            if let Some(ok_end) = last_ok_end
                && f.start >= ok_end
                && f.start < ok_end + lifetime_ms
            {
                out.push((key, f.start));
            }
            if let Some((at, Outcome::Ok)) = f.end {
                last_ok_end = Some(last_ok_end.map_or(at, |prev| prev.max(at)));
            }
        }
    }
    out
}

/// Where a read falls relative to the Redis outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Redis was up for the whole read.
    Up,
    /// The read overlapped `[down, up]`.
    Outage,
    /// The read ended within the grace period after Redis answered again (connections
    /// re-establishing).
    Reconnecting,
}

/// Classifies a read against the outage `[down, up]` and a reconnection grace after it.
pub(super) fn phase(read: &ReadSpan, outage: Option<(u64, u64)>, grace_ms: u64) -> Phase {
    match outage {
        Some((down, up)) if read.end >= down && read.start <= up => Phase::Outage,
        Some((_, up)) if read.end >= up && read.start <= up + grace_ms => Phase::Reconnecting,
        _ => Phase::Up,
    }
}

/// Counts reads per [`Phase`]: `(up, outage, reconnecting)`.
pub(super) fn count_phases<'a>(
    reads: impl IntoIterator<Item = &'a ReadSpan>,
    outage: Option<(u64, u64)>,
    grace_ms: u64,
) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    for read in reads {
        match phase(read, outage, grace_ms) {
            Phase::Up => counts.0 += 1,
            Phase::Outage => counts.1 += 1,
            Phase::Reconnecting => counts.2 += 1,
        }
    }
    counts
}

/// For each fetch the killed process left unfinished, how long after the kill another process
/// started a fetch of the same key (within `within_ms`): the redelivery of its message.
/// Returns `(key, delay_ms)`, or `(key, None)` when no such fetch was seen.
pub(super) fn redeliveries(
    killed: &ProcessLog,
    kill_ms: u64,
    others: &[&ProcessLog],
    within_ms: u64,
) -> Vec<(u64, Option<u64>)> {
    killed
        .fetches
        .iter()
        .filter(|f| f.end.is_none() && f.start <= kill_ms)
        .map(|cut| {
            let next = others
                .iter()
                .flat_map(|p| p.fetches.iter())
                .filter(|f| {
                    f.key == cut.key && f.start >= kill_ms && f.start <= kill_ms + within_ms
                })
                .map(|f| f.start - kill_ms)
                .min();
            (cut.key, next)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(key: u64, start: u64, end: Option<u64>) -> Fetch {
        Fetch {
            key,
            start,
            end: end.map(|at| (at, Outcome::Ok)),
        }
    }

    #[test]
    fn logs_parse_and_pair_starts_with_ends() {
        let text = "P worker-1 worker 42\nS 0 7 1000\nS 1 8 1001\nE 1 1040 err\nE 0 1050 ok\n\
                    S 2 7 3000\nE 2 4000 cancelled\nS 3 9 5000\n\
                    R 10 20 3 store error: connection refused\nM 30 70 4\n";
        let log = parse(text).unwrap();
        assert_eq!(
            (log.name.as_str(), log.role.as_str(), log.pid),
            ("worker-1", "worker", 42)
        );
        assert_eq!(
            log.fetches,
            vec![
                Fetch {
                    key: 7,
                    start: 1000,
                    end: Some((1050, Outcome::Ok))
                },
                Fetch {
                    key: 8,
                    start: 1001,
                    end: Some((1040, Outcome::Err))
                },
                Fetch {
                    key: 7,
                    start: 3000,
                    end: Some((4000, Outcome::Cancelled))
                },
                Fetch {
                    key: 9,
                    start: 5000,
                    end: None
                },
            ]
        );
        assert_eq!(log.failed_reads.len(), 1);
        assert_eq!(
            log.failed_reads[0].reason,
            "store error: connection refused"
        );
        assert_eq!(
            log.fallback_reads[0],
            ReadSpan {
                start: 30,
                end: 70,
                key: 4,
                reason: String::new()
            }
        );
        assert!(parse("P a b 1\nX what\n").unwrap_err().contains("line 2"));
    }

    #[test]
    fn overlapping_fetches_of_one_key_are_one_event_with_duplicates() {
        let fetches = [
            // key 1: two sequential events, the second with two duplicates chained by overlap.
            fetch(1, 0, Some(100)),
            fetch(1, 200, Some(300)),
            fetch(1, 250, Some(400)),
            fetch(1, 350, Some(360)),
            // key 2: back to back (the second starts exactly at the first's end): no overlap.
            fetch(2, 0, Some(50)),
            fetch(2, 50, Some(80)),
        ];
        let stats = stale_events(&fetches, 2_000);
        assert_eq!(
            stats,
            EventStats {
                fetches: 6,
                events: 4,
                duplicates: 2,
                max_per_event: 3,
                unfinished: 0
            }
        );
        assert!((stats.duplicates_per_event() - 0.5).abs() < 1e-9);
        assert_eq!(stale_events(&[], 2_000).duplicates_per_event(), 0.0);
    }

    #[test]
    fn an_unfinished_fetch_runs_until_the_visibility_timeout() {
        // Killed at some point after 1000; its message is redelivered after 2000 ms.
        let redelivered = [fetch(5, 1000, None), fetch(5, 3100, Some(3150))];
        let stats = stale_events(&redelivered, 2_000);
        assert_eq!(
            (stats.events, stats.duplicates, stats.unfinished),
            (2, 0, 1)
        );
        // A second fetch while the killed one's message is still pending is a duplicate.
        let early = [fetch(5, 1000, None), fetch(5, 1500, Some(1550))];
        let stats = stale_events(&early, 2_000);
        assert_eq!(
            (stats.events, stats.duplicates, stats.max_per_event),
            (1, 1, 2)
        );
    }

    #[test]
    fn refetches_of_a_fresh_value_are_found() {
        let fetches = [
            fetch(1, 0, Some(50)),
            fetch(1, 2_100, Some(2_150)), // after the lifetime: fine
            fetch(1, 3_000, Some(3_050)), // 850 ms after an ok fetch: the value was fresh
            Fetch {
                key: 2,
                start: 0,
                end: Some((40, Outcome::Err)),
            },
            fetch(2, 500, Some(550)), // after a failure: fine
        ];
        assert_eq!(refetches_of_fresh(&fetches, 2_000), vec![(1, 3_000)]);
    }

    #[test]
    fn reads_are_classified_against_the_outage() {
        let read = |start, end| ReadSpan {
            start,
            end,
            key: 0,
            reason: String::new(),
        };
        let outage = Some((1_000, 2_000));
        assert_eq!(phase(&read(0, 999), outage, 500), Phase::Up);
        assert_eq!(phase(&read(990, 1_010), outage, 500), Phase::Outage);
        assert_eq!(phase(&read(1_990, 2_300), outage, 500), Phase::Outage);
        assert_eq!(phase(&read(2_001, 2_300), outage, 500), Phase::Reconnecting);
        assert_eq!(phase(&read(2_600, 2_700), outage, 500), Phase::Up);
        assert_eq!(phase(&read(1_500, 1_600), None, 500), Phase::Up);
        let reads = [
            read(0, 1),
            read(1_500, 1_600),
            read(2_100, 2_200),
            read(9_000, 9_001),
        ];
        assert_eq!(count_phases(&reads, outage, 500), (2, 1, 1));
    }

    #[test]
    fn redeliveries_are_timed_from_the_kill() {
        let killed = ProcessLog {
            fetches: vec![
                fetch(1, 900, None),
                fetch(2, 950, Some(980)),
                fetch(3, 990, None),
            ],
            ..ProcessLog::default()
        };
        let other = ProcessLog {
            fetches: vec![fetch(2, 1_200, Some(1_250)), fetch(1, 2_700, Some(2_750))],
            ..ProcessLog::default()
        };
        assert_eq!(
            redeliveries(&killed, 1_000, &[&other], 5_000),
            vec![(1, Some(1_700)), (3, None)]
        );
    }
}
