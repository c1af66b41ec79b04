//! The soak run's samples and its verdict: pure functions over the sample series, so the rules
//! are tested without running anything.
//!
//! The rules (issue: "flat within ±10% after warm-up"): the warm-up is the first 60 s, or the
//! first 20% of a run shorter than 5 minutes; every later sample of resident memory, open file
//! descriptors, open sockets, established TCP connections and Redis `connected_clients` lies
//! within ±10% of that series' post-warm-up median. Besides: the bounded memory store never held
//! more than its bound, the load kept running in every interval (reads and refreshes), and no
//! operation failed.

use serde::Serialize;
use serde_json::{Value as Json, json};

use super::probe::ProcessProbe;
use crate::stats::{self, Spread};

/// Allowed deviation from the post-warm-up median, as a fraction of it.
pub(crate) const TOLERANCE: f64 = 0.10;

/// The longest warm-up, seconds.
const MAX_WARMUP_S: f64 = 60.0;

/// The warm-up's share of a short run.
const WARMUP_SHARE: f64 = 0.20;

/// One sample: the process and Redis now, and what the load did since the previous sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Sample {
    /// Seconds since the load started.
    pub(crate) t_s: f64,
    /// This process: resident memory, threads, descriptors, connections.
    #[serde(flatten)]
    pub(crate) process: ProcessProbe,
    /// Redis `connected_clients` (the `INFO` connection that asks included).
    pub(crate) redis_clients: Option<u64>,
    /// Redis `used_memory`, bytes.
    pub(crate) redis_used_memory: Option<u64>,
    /// Refresh requests in the stream (enqueued, not yet acknowledged).
    pub(crate) queue_backlog: Option<u64>,
    /// Entries in the bounded memory store (tombstones included).
    pub(crate) store_entries: u64,
    /// Reads in the interval.
    pub(crate) reads: u64,
    /// Reads per second in the interval.
    pub(crate) reads_per_sec: f64,
    /// Reads that got no value.
    pub(crate) empty_reads: u64,
    /// `set` calls in the interval.
    pub(crate) sets: u64,
    /// `invalidate` calls in the interval.
    pub(crate) invalidates: u64,
    /// `delete` calls in the interval.
    pub(crate) deletes: u64,
    /// Fetch calls in the interval (synchronous misses and worker refreshes).
    pub(crate) fetches: u64,
    /// Refresh requests the worker processed in the interval.
    pub(crate) refreshes: u64,
    /// Failed reads and writes in the interval.
    pub(crate) errors: u64,
}

/// How flat one series is after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Flatness {
    /// Post-warm-up median.
    pub(crate) median: f64,
    /// Post-warm-up minimum.
    pub(crate) min: f64,
    /// Post-warm-up maximum.
    pub(crate) max: f64,
    /// The largest distance from the median, as a fraction of it (infinite when the median is
    /// 0 and some sample is not).
    pub(crate) worst_deviation: f64,
    /// Whether every sample is within the tolerance.
    pub(crate) flat: bool,
}

/// The flatness of `values` (non-empty) within `tolerance` of their median.
pub(crate) fn flatness(values: &[f64], tolerance: f64) -> Option<Flatness> {
    let Spread { median, min, max } = Spread::of(values)?;
    let worst = (max - median).max(median - min);
    let worst_deviation = if worst == 0.0 {
        0.0
    } else if median == 0.0 {
        f64::INFINITY
    } else {
        worst / median.abs()
    };
    Some(Flatness {
        median,
        min,
        max,
        worst_deviation,
        // A hair of slack so that exactly ±10% passes despite rounding.
        flat: worst_deviation <= tolerance + 1e-12,
    })
}

/// The warm-up of a run of `run_s` seconds: 60 s, or 20% of a shorter run's length.
pub(crate) fn warmup_seconds(run_s: f64) -> f64 {
    (run_s * WARMUP_SHARE).min(MAX_WARMUP_S)
}

/// Least-squares slope of `(x, y)` points; `None` for fewer than two distinct `x`.
pub(crate) fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    Some(sxy / sxx)
}

/// One rule of the verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Check {
    /// The rule.
    pub(crate) rule: String,
    /// What was measured.
    pub(crate) observed: String,
    /// Whether it holds.
    pub(crate) ok: bool,
}

/// The verdict of a soak run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Verdict {
    /// Warm-up length, seconds.
    pub(crate) warmup_s: f64,
    /// Samples after the warm-up.
    pub(crate) judged_samples: usize,
    /// Post-warm-up flatness of each series held flat, by name.
    pub(crate) series: Vec<(String, Flatness)>,
    /// Resident memory trend after the warm-up (least squares), KiB per minute.
    pub(crate) rss_trend_kib_per_min: Option<f64>,
    /// Every rule, held or not.
    pub(crate) checks: Vec<Check>,
}

impl Verdict {
    /// Whether every rule holds.
    pub(crate) fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The rules that do not hold, as sentences.
    pub(crate) fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.rule, c.observed))
            .collect()
    }

    /// As JSON.
    pub(crate) fn json(&self) -> Json {
        let series: serde_json::Map<String, Json> = self
            .series
            .iter()
            .map(|(name, f)| {
                (
                    name.clone(),
                    json!({
                        "median": stats::round3(f.median),
                        "min": stats::round3(f.min),
                        "max": stats::round3(f.max),
                        "worst_deviation": if f.worst_deviation.is_finite() {
                            json!(stats::round3(f.worst_deviation))
                        } else {
                            Json::Null
                        },
                        "flat": f.flat,
                    }),
                )
            })
            .collect();
        json!({
            "ok": self.ok(),
            "warmup_s": self.warmup_s,
            "judged_samples": self.judged_samples,
            "tolerance": TOLERANCE,
            "series": series,
            "rss_trend_kib_per_min": self.rss_trend_kib_per_min.map(stats::round3),
            "checks": self.checks,
        })
    }
}

/// The series held flat: name and how to read it from a sample (`None`: not sampled).
type Series = (&'static str, fn(&Sample) -> Option<f64>);

const FLAT_SERIES: [Series; 5] = [
    ("rss_kib", |s| Some(s.process.rss_kib as f64)),
    ("open_fds", |s| Some(s.process.fds as f64)),
    ("open_sockets", |s| Some(s.process.sockets as f64)),
    ("tcp_established", |s| {
        Some(s.process.tcp_established as f64)
    }),
    ("redis_connected_clients", |s| {
        s.redis_clients.map(|c| c as f64)
    }),
];

/// Judges `samples` (in time order) of a run whose warm-up lasted `warmup_s`, with the memory
/// store bounded to `max_entries`.
pub(crate) fn judge(samples: &[Sample], warmup_s: f64, max_entries: u64) -> Verdict {
    let judged: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= warmup_s).collect();
    let mut checks = vec![Check {
        rule: "at least 2 samples after the warm-up".to_owned(),
        observed: format!("{} of {} samples", judged.len(), samples.len()),
        ok: judged.len() >= 2,
    }];
    let mut series = Vec::new();
    for (name, read) in FLAT_SERIES {
        let values: Option<Vec<f64>> = judged.iter().map(|s| read(s)).collect();
        let rule = format!("{name} within ±{:.0}% of its median", TOLERANCE * 100.0);
        match values.as_deref().and_then(|v| flatness(v, TOLERANCE)) {
            Some(f) => {
                checks.push(Check {
                    rule,
                    observed: format!(
                        "median {}, min {}, max {} (worst {})",
                        f.median,
                        f.min,
                        f.max,
                        percent(f.worst_deviation)
                    ),
                    ok: f.flat,
                });
                series.push((name.to_owned(), f));
            }
            None => checks.push(Check {
                rule,
                observed: "not sampled after the warm-up".to_owned(),
                ok: false,
            }),
        }
    }
    let most_entries = samples.iter().map(|s| s.store_entries).max().unwrap_or(0);
    checks.push(Check {
        rule: format!("memory store entries ≤ its bound of {max_entries} in every sample"),
        observed: format!("at most {most_entries}"),
        ok: most_entries <= max_entries,
    });
    let idle = judged
        .iter()
        .filter(|s| s.reads == 0 || s.refreshes == 0)
        .count();
    checks.push(Check {
        rule: "the load ran in every interval after the warm-up (reads and refreshes)".to_owned(),
        observed: format!("{idle} idle intervals of {}", judged.len()),
        ok: idle == 0,
    });
    let errors: u64 = samples.iter().map(|s| s.errors).sum();
    checks.push(Check {
        rule: "no failed reads or writes".to_owned(),
        observed: format!("{errors} failed"),
        ok: errors == 0,
    });
    let rss_points: Vec<(f64, f64)> = judged
        .iter()
        .map(|s| (s.t_s / 60.0, s.process.rss_kib as f64))
        .collect();
    Verdict {
        warmup_s,
        judged_samples: judged.len(),
        series,
        rss_trend_kib_per_min: slope(&rss_points),
        checks,
    }
}

/// A fraction as a percentage with one decimal (`∞` when infinite).
pub(crate) fn percent(fraction: f64) -> String {
    if fraction.is_finite() {
        format!("{:.1}%", fraction * 100.0)
    } else {
        "∞".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A healthy sample at `t_s` with resident memory `rss_kib`.
    fn sample(t_s: f64, rss_kib: u64) -> Sample {
        Sample {
            t_s,
            process: ProcessProbe {
                rss_kib,
                rss_anon_kib: rss_kib / 2,
                threads: 4,
                fds: 12,
                sockets: 2,
                tcp_established: 2,
            },
            redis_clients: Some(3),
            store_entries: 2_000,
            reads: 10_000,
            refreshes: 100,
            ..Sample::default()
        }
    }

    /// Samples every 10 s for 10 minutes, memory from `rss(t)`.
    fn run(rss: impl Fn(f64) -> u64) -> Vec<Sample> {
        (1..=60)
            .map(|i| {
                let t = f64::from(i) * 10.0;
                sample(t, rss(t))
            })
            .collect()
    }

    #[test]
    fn flatness_is_measured_against_the_median() {
        let f = flatness(&[100.0, 105.0, 95.0, 110.0, 90.0], 0.10).unwrap();
        assert_eq!((f.median, f.min, f.max), (100.0, 90.0, 110.0));
        assert!((f.worst_deviation - 0.10).abs() < 1e-12);
        assert!(f.flat, "exactly ±10% passes");
        let f = flatness(&[100.0, 100.0, 111.0], 0.10).unwrap();
        assert!(!f.flat);
        assert!((f.worst_deviation - 0.11).abs() < 1e-12);
        assert_eq!(flatness(&[], 0.10), None);
    }

    #[test]
    fn flatness_of_zero_and_constant_series() {
        let f = flatness(&[0.0, 0.0, 0.0], 0.10).unwrap();
        assert!(f.flat);
        assert_eq!(f.worst_deviation, 0.0);
        let f = flatness(&[0.0, 0.0, 1.0], 0.10).unwrap();
        assert!(!f.flat);
        assert!(f.worst_deviation.is_infinite());
        // Small integer counts (connections) must be constant: 2 → 3 is +50%.
        assert!(!flatness(&[2.0, 2.0, 3.0], 0.10).unwrap().flat);
        assert!(flatness(&[2.0, 2.0, 2.0], 0.10).unwrap().flat);
    }

    #[test]
    fn warmup_is_a_minute_or_a_fifth_of_a_short_run() {
        assert_eq!(warmup_seconds(600.0), 60.0);
        assert_eq!(warmup_seconds(300.0), 60.0);
        assert_eq!(warmup_seconds(60.0), 12.0);
    }

    #[test]
    fn a_flat_run_passes_and_warmup_growth_is_ignored() {
        // Memory climbs during the first minute, then wobbles ±5% around 40 MiB.
        let samples = run(|t| {
            if t < 60.0 {
                (t * 500.0) as u64
            } else if (t as u64 / 10).is_multiple_of(2) {
                42_000
            } else {
                38_000
            }
        });
        let v = judge(&samples, 60.0, 2_000);
        assert!(v.ok(), "{:?}", v.failures());
        assert_eq!(v.judged_samples, 55);
        assert_eq!(v.series.len(), 5);
        assert!(v.rss_trend_kib_per_min.unwrap().abs() < 100.0);
    }

    #[test]
    fn steady_growth_fails_with_the_reason() {
        // +60 KiB per second from 30 MiB: +36 MiB over the judged 9 minutes.
        let samples = run(|t| 30_000 + (t * 60.0) as u64);
        let v = judge(&samples, 60.0, 2_000);
        assert!(!v.ok());
        let failures = v.failures();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].starts_with("rss_kib within ±10%"),
            "{failures:?}"
        );
        let trend = v.rss_trend_kib_per_min.unwrap();
        assert!((trend - 3_600.0).abs() < 1e-6, "{trend}");
    }

    #[test]
    fn a_leaked_connection_fails() {
        let mut samples = run(|_| 40_000);
        for s in samples.iter_mut().skip(30) {
            s.process.sockets = 3;
            s.process.tcp_established = 3;
            s.redis_clients = Some(4);
            s.process.fds = 13;
        }
        let v = judge(&samples, 60.0, 2_000);
        let failures = v.failures();
        // fds 12 → 13 is within 10%; the connection counts are not.
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures.iter().any(|f| f.starts_with("open_sockets")));
        assert!(failures.iter().any(|f| f.starts_with("tcp_established")));
        assert!(
            failures
                .iter()
                .any(|f| f.starts_with("redis_connected_clients"))
        );
    }

    #[test]
    fn bound_idle_load_errors_and_missing_samples_fail() {
        let mut samples = run(|_| 40_000);
        samples[3].store_entries = 2_001; // during the warm-up: still counts
        samples[40].refreshes = 0;
        samples[50].errors = 2;
        samples[20].redis_clients = None;
        let v = judge(&samples, 60.0, 2_000);
        let failures = v.failures();
        assert_eq!(failures.len(), 4, "{failures:?}");
        assert!(failures.iter().any(|f| f.contains("entries ≤ its bound")));
        assert!(failures.iter().any(|f| f.contains("1 idle intervals")));
        assert!(failures.iter().any(|f| f.contains("2 failed")));
        assert!(
            failures
                .iter()
                .any(|f| f.contains("redis_connected_clients") && f.contains("not sampled"))
        );
    }

    #[test]
    fn too_short_a_run_cannot_pass() {
        let samples = vec![sample(5.0, 1_000), sample(10.0, 1_000), sample(15.0, 1_000)];
        let v = judge(&samples, 12.0, 2_000);
        assert!(!v.ok());
        assert!(v.failures()[0].contains("1 of 3 samples"));
        assert_eq!(v.rss_trend_kib_per_min, None);
    }

    #[test]
    fn slope_of_a_line() {
        let points: Vec<(f64, f64)> = (0..10)
            .map(|x| (f64::from(x), 3.0 * f64::from(x) + 1.0))
            .collect();
        assert!((slope(&points).unwrap() - 3.0).abs() < 1e-12);
        assert_eq!(slope(&[(1.0, 2.0)]), None);
        assert_eq!(slope(&[(1.0, 2.0), (1.0, 3.0)]), None);
    }
}
