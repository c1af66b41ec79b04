//! How the script prints: the table's rows, durations the way a person reads them, and the
//! closing summary.

use std::fmt;
use std::time::Duration;

/// What the script observed, for the summary (and the smoke test).
#[derive(Debug)]
pub(crate) struct Summary {
    pub(crate) requests: usize,
    pub(crate) upstream_calls: usize,
    pub(crate) latencies: Vec<Duration>,
    /// One label per request: `miss`, `hit`, `stale`, `refreshed`.
    pub(crate) statuses: Vec<String>,
}

/// Formats a latency the way a person reads it: µs, ms or s.
pub(crate) struct Latency(pub(crate) Duration);

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0.as_micros();
        let text = if micros < 1_000 {
            format!("{micros} µs")
        } else if micros < 1_000_000 {
            format!("{:.1} ms", self.0.as_secs_f64() * 1e3)
        } else {
            format!("{:.2} s", self.0.as_secs_f64())
        };
        f.pad(&text)
    }
}

/// A duration in seconds, briefly (`3 s`, `0.75 s`).
pub(crate) struct Secs(pub(crate) Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = if self.0.subsec_millis() == 0 {
            format!("{} s", self.0.as_secs())
        } else {
            format!("{:.2} s", self.0.as_secs_f64())
        };
        f.pad(&text)
    }
}

/// One line of the table.
pub(crate) struct Row<'r> {
    pub(crate) number: &'r str,
    pub(crate) at: &'r str,
    pub(crate) request: &'r str,
    pub(crate) cache: &'r str,
    pub(crate) latency: &'r str,
    pub(crate) upstream: &'r str,
    pub(crate) age: &'r str,
    pub(crate) tweets: &'r str,
}

impl Row<'_> {
    pub(crate) fn print(&self) {
        println!(
            "{:>5}  {:>7}  {:<24}  {:<10}  {:>9}  {:>8}  {:>4}  {}",
            self.number,
            self.at,
            self.request,
            self.cache,
            self.latency,
            self.upstream,
            self.age,
            self.tweets
        );
    }
}

/// The width of the table's rules.
const RULE_WIDTH: usize = 100;

impl Row<'static> {
    /// The column titles, underlined.
    pub(crate) fn print_heading() {
        Row {
            number: "#",
            at: "at",
            request: "request",
            cache: "x-cache",
            latency: "latency",
            upstream: "upstream",
            age: "age",
            tweets: "tweets served",
        }
        .print();
        println!("{}", "─".repeat(RULE_WIDTH));
    }
}

/// `"stale ×20"`, `"miss 4, hit 3"`: how many times each label occurs, in order of appearance.
pub(crate) fn tally(labels: &[String], separator: &str) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for label in labels {
        match counts.iter_mut().find(|(l, _)| l == label) {
            Some((_, count)) => *count += 1,
            None => counts.push((label, 1)),
        }
    }
    counts
        .iter()
        .map(|(label, count)| format!("{label}{separator}{count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Summary {
    pub(crate) fn print(&self, upstream_delay: Duration) {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
        let slowest = sorted.last().copied().unwrap_or_default();
        println!();
        println!("{}", "─".repeat(RULE_WIDTH));
        println!(
            "{} requests ({}): median latency {}, slowest {}.",
            self.requests,
            tally(&self.statuses, " "),
            Latency(median),
            Latency(slowest),
        );
        println!(
            "Upstream was called {} times. Without cacheback every request would have waited \
             {} and\nupstream would have been called {} times.",
            self.upstream_calls,
            Secs(upstream_delay),
            self.requests
        );
    }
}
