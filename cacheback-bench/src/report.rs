//! What a run produces: one [`Record`] per workload variant, written as JSON lines and summed up
//! in a Markdown table.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Map, Value as Json, json};

/// The result of one workload variant for one subject (cacheback or a peer).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Record {
    /// `W1` ... `W7`.
    pub(crate) workload: &'static str,
    /// Which variant, e.g. `memory, 64 tasks`.
    pub(crate) variant: String,
    /// What was measured: `cacheback` or the peer's name.
    pub(crate) subject: String,
    /// The parameters of the variant.
    pub(crate) params: Map<String, Json>,
    /// Every figure, by name.
    pub(crate) figures: Map<String, Json>,
    /// The raw baseline run in the same process, if the workload has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) baseline: Option<Baseline>,
    /// The targets of WORKLOADS.md this record decides.
    pub(crate) targets: Vec<Check>,
    /// One line for the table.
    pub(crate) summary: String,
    /// Read latencies, for the plot (not serialized: the figures carry the percentiles).
    #[serde(skip)]
    pub(crate) latencies: Option<Histogram<u64>>,
}

impl Record {
    /// A record with no figures yet.
    pub(crate) fn new(workload: &'static str, variant: impl Into<String>, subject: &str) -> Self {
        Record {
            workload,
            variant: variant.into(),
            subject: subject.to_owned(),
            params: Map::new(),
            figures: Map::new(),
            baseline: None,
            targets: Vec::new(),
            summary: String::new(),
            latencies: None,
        }
    }

    /// Adds a parameter.
    pub(crate) fn param(mut self, name: &str, value: impl Into<Json>) -> Self {
        self.params.insert(name.to_owned(), value.into());
        self
    }

    /// Adds a figure.
    pub(crate) fn figure(&mut self, name: &str, value: impl Into<Json>) {
        self.figures.insert(name.to_owned(), value.into());
    }

    /// Adds a target check.
    pub(crate) fn check(&mut self, target: &str, measured: impl Into<String>, met: bool) {
        self.targets.push(Check {
            target: target.to_owned(),
            measured: measured.into(),
            met,
        });
    }

    /// A figure as a number, looked up by a `/`-separated path (`reader/p99_us`).
    pub(crate) fn number(&self, path: &str) -> Option<f64> {
        let mut parts = path.split('/');
        let mut at = self.figures.get(parts.next()?)?;
        for part in parts {
            at = at.get(part)?;
        }
        at.as_f64()
    }
}

/// The record of a variant that could not be measured (a server missing, say), saying why.
pub(crate) fn not_measured(workload: &'static str, variant: &str, why: &str) -> Record {
    let mut r = Record::new(workload, variant, "cacheback");
    r.figure("error", why);
    r.summary = format!("not measured: {why}");
    r
}

/// A raw baseline measured in the same run, and how cacheback compares with it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Baseline {
    /// What the baseline is.
    pub(crate) name: String,
    /// Its figures.
    pub(crate) figures: Map<String, Json>,
    /// cacheback's figure divided by the baseline's (see `ratio_of`).
    pub(crate) ratio: f64,
    /// Which figure the ratio is of.
    pub(crate) ratio_of: String,
}

/// One target of WORKLOADS.md, decided by a record.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// The target, as WORKLOADS.md words it.
    pub(crate) target: String,
    /// The measured figure it was decided on.
    pub(crate) measured: String,
    /// Whether it was met.
    pub(crate) met: bool,
}

/// Serializes a record with the run's facts (time, scale, machine, versions) as one JSON line.
pub(crate) fn json_line(record: &Record, run: &Json) -> String {
    let mut value = serde_json::to_value(record).expect("records serialize");
    if let Json::Object(map) = &mut value {
        map.insert("run".to_owned(), run.clone());
    }
    value.to_string()
}

/// Formats a rate: `12.3 M/s`, `45.6 k/s`, `789/s`.
pub(crate) fn rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2} M/s", per_sec / 1e6)
    } else if per_sec >= 1e4 {
        format!("{:.1} k/s", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}/s")
    }
}

/// Formats a duration given in microseconds with a unit that keeps 3 significant digits.
pub(crate) fn micros(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.1} ms", us / 1e3)
    } else if us >= 10.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.2} µs")
    }
}

/// Formats a ratio: `1.23×`.
pub(crate) fn times(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}×")
    } else {
        format!("{x:.2}×")
    }
}

/// Makes text safe inside a Markdown table cell.
pub(crate) fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The Markdown table of a run: one row per record.
pub(crate) fn markdown_table(records: &[Record]) -> String {
    let mut out = String::new();
    out.push_str("| id | variant | subject | result | same-run baseline | ratio | targets |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for r in records {
        let (baseline, ratio) = match &r.baseline {
            Some(b) => (
                b.name.clone(),
                format!("{} ({})", times(b.ratio), b.ratio_of),
            ),
            None => ("—".to_owned(), "—".to_owned()),
        };
        let targets = if r.targets.is_empty() {
            "—".to_owned()
        } else {
            r.targets
                .iter()
                .map(|c| {
                    let mark = if c.met { "met" } else { "**missed**" };
                    format!("{mark}: {} ({})", c.target, c.measured)
                })
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.workload,
            cell(&r.variant),
            cell(&r.subject),
            cell(&r.summary),
            cell(&baseline),
            cell(&ratio),
            cell(&targets),
        );
    }
    out
}

/// The run-level facts attached to every line.
pub(crate) fn run_facts(scale: &str, started: &str, machine: Json) -> Json {
    json!({
        "started": started,
        "scale": scale,
        "machine": machine,
        "versions": {
            "cacheback": env!("CARGO_PKG_VERSION"),
            "moka": env!("BENCH_VERSION_MOKA"),
            "cached": env!("BENCH_VERSION_CACHED"),
            "tokio": env!("BENCH_VERSION_TOKIO"),
            "redis-rs": env!("BENCH_VERSION_REDIS"),
            "rustc": env!("BENCH_RUSTC_VERSION"),
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let mut r = Record::new("W1", "memory, 1 task", "cacheback").param("reads", 1_000_000);
        r.figure("ops_per_sec", 5.0e6);
        r.figure("latency", json!({ "p50_us": 0.1, "p99_us": 0.4 }));
        r.summary = "5.00 M/s | p50 0.10 µs".to_owned();
        r.baseline = Some(Baseline {
            name: "moka future get".to_owned(),
            figures: Map::new(),
            ratio: 0.8,
            ratio_of: "ops/s".to_owned(),
        });
        r.check("within 1.5× of moka", "0.80×", true);
        r.check("≥ 6.9 M/s", "5.00 M/s", false);
        r
    }

    #[test]
    fn number_follows_paths() {
        let r = sample();
        assert_eq!(r.number("ops_per_sec"), Some(5.0e6));
        assert_eq!(r.number("latency/p99_us"), Some(0.4));
        assert_eq!(r.number("latency/nope"), None);
        assert_eq!(r.number("nope"), None);
    }

    #[test]
    fn json_line_is_one_line_with_the_run_facts() {
        let run = run_facts("quick", "2026-01-01T00:00:00Z", json!({ "nproc": 2 }));
        let line = json_line(&sample(), &run);
        assert!(!line.contains('\n'));
        let back: Json = serde_json::from_str(&line).unwrap();
        assert_eq!(back["workload"], "W1");
        assert_eq!(back["run"]["machine"]["nproc"], 2);
        assert_eq!(back["run"]["scale"], "quick");
        assert_eq!(back["figures"]["ops_per_sec"], 5.0e6);
        assert_eq!(back["baseline"]["ratio"], 0.8);
        assert_eq!(back["targets"][1]["met"], false);
        assert!(back.get("latencies").is_none());
    }

    #[test]
    fn table_has_a_row_per_record_and_escapes_pipes() {
        let table = markdown_table(&[sample(), Record::new("W7", "x", "moka")]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[2].contains("5.00 M/s \\| p50 0.10 µs"));
        assert!(lines[2].contains("met: within 1.5× of moka (0.80×)<br>**missed**: ≥ 6.9 M/s"));
        assert!(lines[2].contains("0.80× (ops/s)"));
        assert!(lines[3].ends_with("| — | — | — |"));
        // Every row has the header's number of cells.
        let cells = |l: &str| l.replace("\\|", "").matches('|').count();
        assert!(lines.iter().all(|l| cells(l) == cells(lines[0])));
    }

    #[test]
    fn units() {
        assert_eq!(rate(12_345_678.0), "12.35 M/s");
        assert_eq!(rate(45_600.0), "45.6 k/s");
        assert_eq!(rate(789.4), "789/s");
        assert_eq!(micros(0.123), "0.12 µs");
        assert_eq!(micros(42.0), "42 µs");
        assert_eq!(micros(4_500.0), "4.5 ms");
        assert_eq!(micros(2_500_000.0), "2.50 s");
        assert_eq!(times(1.234), "1.23×");
        assert_eq!(times(250.4), "250×");
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
