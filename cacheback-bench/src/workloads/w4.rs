//! W4, mixed and fleet-like (one process, memory store): 10,000 keys read with Zipf(1.1)
//! popularity by 8 reader tasks for 20 s; lifetime 2 s; the fetch sleeps 20 ms. Cold start
//! (empty cache) and prewarmed (every key fetched first).
//!
//! Readers model request handlers: each read is followed by `yield_now`, as a handler returns
//! to the runtime between requests (a reader that never yields would starve the refresh tasks
//! sharing its 2 worker threads, which no real server does).
//!
//! Definitions, the same for every subject:
//! - *served past its lifetime*: the value's own timestamp (end of its fetch) plus the lifetime
//!   is before the read's end; the age past it is the difference. A key nobody reads for a
//!   while is served that far past its lifetime by its next read (stale-while-revalidate
//!   refreshes on read), so the age also measures how sparsely a key is read.
//! - *waited for its refresh*: for a read served past its lifetime, the time since the first
//!   read of the same key that was served the same value past its lifetime (the read that
//!   asked for the refresh): how long the refresh has taken so far, whatever the read rate.
//! - *refresh event*: the fetches of one key, grouped so that a fetch starting more than half a
//!   lifetime after the group's first starts a new group (no legitimate refresh of a key can
//!   follow the previous one that soon); *fetch calls per refresh event* = fetches ÷ groups.
//!   The cold-start miss of a key is an event like any other.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cacheback::Policy;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::peers::{Read, Subject, W4_LIFETIME};
use crate::report::{self, Record};
use crate::stats;
use crate::value::{ClientSetup, Fetcher, memory_client, unix_ms};
use crate::workloads::{Ctx, Scale, runtime};
use crate::zipf::Zipf;

pub(crate) const KEYS: usize = 10_000;
pub(crate) const ZIPF_S: f64 = 1.1;
pub(crate) const FETCH: Duration = Duration::from_millis(20);
pub(crate) const READERS: usize = 8;

/// The run length of a scale.
pub(crate) fn duration(scale: Scale) -> Duration {
    scale.pick(Duration::from_secs(20), Duration::from_secs(2))
}

/// Worker concurrency of the in-process worker in W4: all 10,000 keys turn stale every 2 s and
/// each refresh sleeps 20 ms, so keeping up takes 100 refreshes in flight; the default options
/// (16 to start with, grown while requests wait) are measured too, as their own variant.
pub(crate) const WORKER_CONCURRENCY: usize = 128;

/// W4 on the memory store: cold start (fetch_on_miss on, then off) and prewarmed (worker of
/// 128, then the default options); a new client each.
pub(crate) fn memory(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let rt = runtime();
    let mut records = Vec::new();
    let variants = [
        ("memory, cold start", false, true, WORKER_CONCURRENCY),
        (
            "memory, cold start, fetch_on_miss off",
            false,
            false,
            WORKER_CONCURRENCY,
        ),
        ("memory, prewarmed", true, true, WORKER_CONCURRENCY),
        ("memory, prewarmed, default worker options", true, true, 16),
    ];
    for (variant, prewarm, fetch_on_miss, concurrency) in variants {
        let record = rt.block_on(async {
            let fetcher = Fetcher::new(FETCH);
            let mut setup = ClientSetup::new(
                Policy::default()
                    .lifetime(W4_LIFETIME)
                    .fetch_on_miss(fetch_on_miss),
            );
            setup.worker = Some(concurrency);
            let (handle, queue) = memory_client(&setup, Arc::clone(&fetcher), None);
            let subject = Arc::new(Subject::Cacheback {
                handle,
                queue: queue.into(),
            });
            let r = mixed(subject, &fetcher, duration(ctx.scale), prewarm, variant).await?;
            Ok::<_, String>(
                r.param("worker_concurrency", concurrency as u64)
                    .param("fetch_on_miss", fetch_on_miss),
            )
        })?;
        records.push(with_targets(record));
    }
    Ok(records)
}

/// W4 on Redis, as WORKLOADS.md defines it: `RedisStore` + `RedisQueue` and a worker of 128 in
/// this process; cold start and prewarmed, a fresh key prefix each. Then the same with a near
/// cache in front of Redis (room for every key), as a service that reads a hot key set would
/// run it, and as amalgam-cache (memory L1 + Redis L2) runs in W6.
#[cfg(feature = "redis")]
pub(crate) fn redis(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let url = ctx.redis()?.url();
    let rt = runtime();
    let mut records = Vec::new();
    let variants = [
        ("Redis, cold start", false, false),
        ("Redis, prewarmed", true, false),
        ("Redis + near cache, cold start", false, true),
        ("Redis + near cache, prewarmed", true, true),
    ];
    for (variant, prewarm, near) in variants {
        let record = rt.block_on(async {
            let fetcher = Fetcher::new(FETCH);
            let mut setup = ClientSetup::new(Policy::default().lifetime(W4_LIFETIME));
            setup.worker = Some(WORKER_CONCURRENCY);
            setup.near = near.then_some(2 * KEYS as u64);
            let prefix = format!("w4-{prewarm}-{near}-{}", std::process::id());
            let (client, handle, queue) =
                crate::value::redis_client(&url, &prefix, &setup, Arc::clone(&fetcher))?;
            if near {
                // Measure the near cache serving, not its start.
                crate::workloads::near::live(&client).await?;
            }
            let subject = Arc::new(Subject::Cacheback {
                handle,
                queue: queue.into(),
            });
            let r = mixed(subject, &fetcher, duration(ctx.scale), prewarm, variant).await?;
            client.shutdown(Duration::from_secs(5)).await;
            Ok::<_, String>(
                r.param("worker_concurrency", WORKER_CONCURRENCY as u64)
                    .param("store", "RedisStore")
                    .param("queue", "RedisQueue")
                    .param("near_cache", near),
            )
        })?;
        records.push(with_targets(record));
    }
    Ok(records)
}

/// Decides the targets of WORKLOADS.md on a W4 record, from its figures.
fn with_targets(mut r: Record) -> Record {
    let per_event = r
        .number("fetch_calls_per_refresh_event")
        .unwrap_or(f64::NAN);
    let rate = r.number("reads_per_sec").unwrap_or(0.0);
    let p99 = r.number("read_latency/p99_us").unwrap_or(f64::NAN);
    let backlog = r.number("queue_backlog_at_end").unwrap_or(f64::NAN);
    let mean_past = r
        .number("served_past_lifetime/mean_age_past_ms")
        .unwrap_or(0.0);
    r.check(
        "fetch calls per stale event = 1.00",
        format!("{per_event:.3}"),
        (per_event - 1.0).abs() < 0.005,
    );
    r.check("≥ 50,000 reads/s", report::rate(rate), rate >= 50_000.0);
    r.check("read p99 < 5 ms", report::micros(p99), p99 < 5_000.0);
    r.check(
        "no backlog at the end",
        format!("{backlog}"),
        backlog == 0.0,
    );
    r.check(
        "mean age past fresh_until of served values < 100 ms",
        format!("{mean_past:.1} ms"),
        mean_past < 100.0,
    );
    r
}

/// The lifetime of W4's values, in milliseconds.
const LIFETIME_MS: u64 = W4_LIFETIME.as_millis() as u64;

/// What one reader task saw, or (merged) all of them.
#[derive(Debug, Default)]
struct ReaderTally {
    /// Reads made.
    reads: u64,
    /// Reads that returned no value.
    empty: u64,
    /// Reads that returned a value past its lifetime.
    past: u64,
    /// The sum of those values' ages past their lifetime, in ms.
    past_sum_ms: u64,
    /// The largest of those ages, in ms.
    past_max_ms: u64,
    /// The sum of those reads' waits for their key's refresh, in ms.
    waited_sum_ms: u64,
    /// The longest such wait, in ms.
    waited_max_ms: u64,
    /// Reads by the status they returned.
    statuses: HashMap<&'static str, u64>,
}

impl ReaderTally {
    /// Counts a read of `key` that has just ended.
    fn note(&mut self, key: u64, read: Read, first_past: &FirstPast) {
        self.reads += 1;
        *self.statuses.entry(read.status).or_default() += 1;
        match read.value {
            None => self.empty += 1,
            Some(v) => {
                let now = unix_ms();
                let past = now.saturating_sub(v.at_ms + LIFETIME_MS);
                if past > 0 {
                    self.past += 1;
                    self.past_sum_ms += past;
                    self.past_max_ms = self.past_max_ms.max(past);
                    let waited = now.saturating_sub(first_past.seen(key, v.at_ms, now));
                    self.waited_sum_ms += waited;
                    self.waited_max_ms = self.waited_max_ms.max(waited);
                }
            }
        }
    }

    /// Adds another reader's tally to this one.
    fn add(&mut self, other: ReaderTally) {
        self.reads += other.reads;
        self.empty += other.empty;
        self.past += other.past;
        self.past_sum_ms += other.past_sum_ms;
        self.past_max_ms = self.past_max_ms.max(other.past_max_ms);
        self.waited_sum_ms += other.waited_sum_ms;
        self.waited_max_ms = self.waited_max_ms.max(other.waited_max_ms);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
    }
}

/// For each key, the value (its timestamp) last served past its lifetime and when that was
/// first seen, shared by the reader tasks; touched only by reads served past the lifetime.
struct FirstPast {
    /// Per key, in one word so that readers agree on it: the value's timestamp (its low 32
    /// bits: enough to tell a key's values apart) above the first sighting's distance from
    /// that timestamp, in ms.
    keys: Vec<AtomicU64>,
}

impl FirstPast {
    fn new() -> Self {
        FirstPast {
            keys: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// When `key`'s value `at_ms` was first served past its lifetime (`now` if this read is
    /// the first).
    fn seen(&self, key: u64, at_ms: u64, now: u64) -> u64 {
        let Some(slot) = usize::try_from(key).ok().and_then(|k| self.keys.get(k)) else {
            return now;
        };
        let tag = at_ms & 0xffff_ffff;
        let mine = (tag << 32) | (now.saturating_sub(at_ms) & 0xffff_ffff);
        let mut current = slot.load(Ordering::Acquire);
        loop {
            if current >> 32 == tag {
                return at_ms + (current & 0xffff_ffff);
            }
            match slot.compare_exchange(current, mine, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return now,
                Err(actual) => current = actual,
            }
        }
    }
}

/// What the readers of one run saw, merged.
#[derive(Debug)]
struct Reads {
    /// Every read's latency.
    hist: Histogram<u64>,
    /// The readers' tallies.
    tally: ReaderTally,
    /// From the readers' start until the last one ended, in seconds.
    elapsed_s: f64,
}

/// Runs W4 against `subject` for `length`, after prewarming every key if asked.
pub(crate) async fn mixed(
    subject: Arc<Subject>,
    fetcher: &Fetcher,
    length: Duration,
    prewarm: bool,
    variant: &str,
) -> Result<Record, String> {
    if prewarm {
        prewarm_keys(&subject).await?;
    }
    fetcher.reset();
    let reads = read_for(&subject, length).await?;
    let backlog = subject.backlog().await;
    let log = fetcher.log();
    let derived = Derived::of(&reads, &log);
    let mut r = Record::new("W4", variant, subject.name())
        .param("keys", KEYS as u64)
        .param("zipf_s", ZIPF_S)
        .param("lifetime_ms", LIFETIME_MS)
        .param("fetch_ms", FETCH.as_millis() as u64)
        .param("readers", READERS as u64)
        .param("duration_s", length.as_secs_f64())
        .param("prewarmed", prewarm)
        .param("what_it_does", subject.describe());
    derived.add_figures(&mut r, &reads, backlog);
    r.summary = derived.summary(&reads, backlog);
    r.latencies = Some(reads.hist);
    Ok(r)
}

/// Reads every key once, 500 keys at a time: the 10,000 fetches take about 0.4 s, well within
/// one lifetime.
async fn prewarm_keys(subject: &Arc<Subject>) -> Result<(), String> {
    let t = Instant::now();
    let warmers: Vec<_> = (0..500u64)
        .map(|w| {
            let subject = Arc::clone(subject);
            tokio::spawn(async move {
                for key in (w..KEYS as u64).step_by(500) {
                    subject.read(key).await;
                }
            })
        })
        .collect();
    for w in warmers {
        w.await.map_err(|e| e.to_string())?;
    }
    eprintln!(
        "   prewarmed {KEYS} keys in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `READERS` reader tasks reading Zipf-chosen keys of `subject` for `length`; what they saw.
async fn read_for(subject: &Arc<Subject>, length: Duration) -> Result<Reads, String> {
    let zipf = Arc::new(Zipf::new(KEYS, ZIPF_S));
    let first_past = Arc::new(FirstPast::new());
    let start = Instant::now();
    let deadline = start + length;
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let (subject, zipf) = (Arc::clone(subject), Arc::clone(&zipf));
            let first_past = Arc::clone(&first_past);
            let seed = 0xC0FFEE + i as u64;
            tokio::spawn(reader(subject, zipf, first_past, seed, deadline))
        })
        .collect();
    let mut hist = stats::latency_histogram();
    let mut tally = ReaderTally::default();
    for r in readers {
        let (h, t) = r.await.map_err(|e| e.to_string())?;
        stats::merge(&mut hist, &h);
        tally.add(t);
    }
    Ok(Reads {
        hist,
        tally,
        elapsed_s: start.elapsed().as_secs_f64(),
    })
}

/// One reader task: reads keys drawn from `zipf` (an RNG of `seed`) until `deadline`, yielding
/// to the runtime after each read as a request handler would.
async fn reader(
    subject: Arc<Subject>,
    zipf: Arc<Zipf>,
    first_past: Arc<FirstPast>,
    seed: u64,
    deadline: Instant,
) -> (Histogram<u64>, ReaderTally) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut hist = stats::latency_histogram();
    let mut tally = ReaderTally::default();
    while Instant::now() < deadline {
        let key = zipf.sample(&mut rng) as u64;
        let t = Instant::now();
        let read = subject.read(key).await;
        stats::record(&mut hist, t.elapsed());
        tally.note(key, read, &first_past);
        tokio::task::yield_now().await;
    }
    (hist, tally)
}

/// The figures of one run that are derived from its reads and its fetch log.
#[derive(Debug)]
struct Derived {
    /// Reads per second over the run.
    reads_per_sec: f64,
    /// Fetches made during the run.
    fetches: usize,
    /// Refresh events (see the module docs).
    events: usize,
    /// Fetches per refresh event; 0 with no event.
    per_event: f64,
    /// The share of reads that returned no value (rounded to 3 decimals).
    empty_share: f64,
    /// The share of reads served past their lifetime (rounded to 3 decimals).
    past_share: f64,
    /// The mean age past the lifetime of those, in ms; 0 with none.
    mean_past_ms: f64,
    /// Their mean wait for their key's refresh, in ms; 0 with none.
    mean_waited_ms: f64,
}

impl Derived {
    /// Derives the figures of a run.
    fn of(reads: &Reads, log: &[(u64, Instant)]) -> Self {
        let all = &reads.tally;
        let events = refresh_events(log, W4_LIFETIME / 2);
        let fetches = log.len() as f64;
        let share = |n: u64| stats::round3(n as f64 / all.reads.max(1) as f64);
        Derived {
            reads_per_sec: all.reads as f64 / reads.elapsed_s,
            fetches: log.len(),
            events,
            per_event: if events == 0 {
                0.0
            } else {
                fetches / events as f64
            },
            empty_share: share(all.empty),
            past_share: share(all.past),
            mean_past_ms: mean(all.past_sum_ms, all.past),
            mean_waited_ms: mean(all.waited_sum_ms, all.past),
        }
    }

    /// Adds the run's figures to its record.
    fn add_figures(&self, r: &mut Record, reads: &Reads, backlog: Option<u64>) {
        let all = &reads.tally;
        r.figure("reads", all.reads);
        r.figure("reads_per_sec", stats::round3(self.reads_per_sec));
        r.figure("read_latency", stats::latency_figures(&reads.hist));
        r.figure("fetch_calls", self.fetches as u64);
        r.figure("refresh_events", self.events as u64);
        r.figure(
            "fetch_calls_per_refresh_event",
            stats::round3(self.per_event),
        );
        r.figure("empty_read_share", self.empty_share);
        r.figure(
            "served_past_lifetime",
            json!({
                "share": self.past_share,
                "mean_age_past_ms": stats::round3(self.mean_past_ms),
                "max_age_past_ms": all.past_max_ms,
                "mean_waited_for_refresh_ms": stats::round3(self.mean_waited_ms),
                "max_waited_for_refresh_ms": all.waited_max_ms,
            }),
        );
        r.figure("statuses", json!(all.statuses));
        match backlog {
            Some(b) => r.figure("queue_backlog_at_end", b),
            None => r.figure("queue_backlog_at_end", "n/a (no queue)"),
        }
    }

    /// The run's line in the table.
    fn summary(&self, reads: &Reads, backlog: Option<u64>) -> String {
        format!(
            "{}; p50 {}, p99 {}; {} fetches, {:.2}/event; empty {:.1}%; past lifetime {:.1}% (mean {:.0} ms, max {} ms; waited for the refresh mean {:.0} ms, max {} ms); backlog {}",
            report::rate(self.reads_per_sec),
            report::micros(stats::ns_to_us(reads.hist.value_at_quantile(0.5))),
            report::micros(stats::ns_to_us(reads.hist.value_at_quantile(0.99))),
            self.fetches,
            self.per_event,
            100.0 * self.empty_share,
            100.0 * self.past_share,
            self.mean_past_ms,
            reads.tally.past_max_ms,
            self.mean_waited_ms,
            reads.tally.waited_max_ms,
            backlog.map_or("n/a".to_owned(), |b| b.to_string()),
        )
    }
}

/// `sum / n`, 0 when `n` is 0.
fn mean(sum: u64, n: u64) -> f64 {
    if n == 0 { 0.0 } else { sum as f64 / n as f64 }
}

/// Groups each key's fetches into refresh events: a fetch starting more than `gap` after the
/// first fetch of the key's current event starts a new one.
pub(crate) fn refresh_events(log: &[(u64, Instant)], gap: Duration) -> usize {
    let mut by_key: HashMap<u64, Vec<Instant>> = HashMap::new();
    for &(key, at) in log {
        by_key.entry(key).or_default().push(at);
    }
    by_key
        .into_values()
        .map(|mut starts| {
            starts.sort_unstable();
            let mut events = 0;
            let mut current: Option<Instant> = None;
            for s in starts {
                if current.is_none_or(|first| s.duration_since(first) > gap) {
                    events += 1;
                    current = Some(s);
                }
            }
            events
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_group_fetches_per_key() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let gap = Duration::from_millis(1000);
        let log = vec![
            (1, ms(0)),
            (1, ms(5)),
            (1, ms(900)),  // same event as 0
            (1, ms(2100)), // new event
            (2, ms(0)),
            (2, ms(3000)),
            (3, ms(10)),
        ];
        assert_eq!(refresh_events(&log, gap), 5);
        assert_eq!(refresh_events(&[], gap), 0);
    }

    #[test]
    fn a_wait_counts_from_the_first_read_past_the_lifetime_of_that_value() {
        let first = FirstPast::new();
        assert_eq!(first.seen(7, 100, 5_000), 5_000, "the first sighting");
        assert_eq!(first.seen(7, 100, 5_040), 5_000, "the same value later");
        assert_eq!(
            first.seen(7, 200, 9_000),
            9_000,
            "a newer value starts again"
        );
        assert_eq!(first.seen(8, 100, 9_500), 9_500, "keys are apart");
        assert_eq!(
            first.seen(u64::MAX, 1, 3),
            3,
            "a key out of range waits nothing"
        );
    }
}
