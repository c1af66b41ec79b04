//! What commands print: aligned tables for people, JSON for scripts, times and durations.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cacheback::clock::Timestamp;
use serde::Serialize;

use crate::exit::{ERROR, Failed};

/// A table printed with its columns aligned (the last column is not padded).
#[derive(Debug)]
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&'static str]) -> Self {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table's text, a line per row, after a header line.
    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            for (i, cell) in row.iter().enumerate() {
                if i == last {
                    out.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push('\n');
        }
        out
    }
}

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn print_json(value: &impl Serialize) -> Result<(), Failed> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failed::new(ERROR, format!("could not write JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// The local wall clock.
pub(crate) fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp::from_millis(ms)
}

/// A timestamp as RFC 3339 UTC with milliseconds.
pub(crate) fn time(t: Timestamp) -> String {
    if t == Timestamp::MAX {
        return "never".to_owned();
    }
    let at = UNIX_EPOCH + Duration::from_millis(t.as_millis());
    humantime::format_rfc3339_millis(at).to_string()
}

/// A short duration for tables: `850ms`, `12.3s`, `4m10s`, `3h12m`, `2d4h`.
pub(crate) fn span(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// How far `t` is from `now`: `12.3s ago`, `in 4m10s`.
pub(crate) fn relative(t: Timestamp, now: Timestamp) -> String {
    if t == Timestamp::MAX {
        return "never".to_owned();
    }
    if t <= now {
        format!("{} ago", span(now.since(t)))
    } else {
        format!("in {}", span(t.since(now)))
    }
}

/// Milliseconds, for JSON.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Bytes as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// At most `max` characters of `text`, with `…` when cut.
pub(crate) fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let mut table = Table::new(&["QUEUE", "DEPTH", "NOTE"]);
        table.row(vec!["default".into(), "3".into(), "x".into()]);
        table.row(vec!["q".into(), "12345".into(), "long note".into()]);
        assert_eq!(
            table.render(),
            "QUEUE    DEPTH  NOTE\ndefault  3      x\nq        12345  long note\n"
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(span(Duration::from_millis(850)), "850ms");
        assert_eq!(span(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(span(Duration::from_secs(250)), "4m10s");
        assert_eq!(span(Duration::from_secs(3 * 3600 + 720)), "3h12m");
        assert_eq!(span(Duration::from_secs(2 * 86_400 + 4 * 3600)), "2d4h");
        let now = Timestamp::from_millis(10_000);
        assert_eq!(relative(Timestamp::from_millis(9_000), now), "1.0s ago");
        assert_eq!(relative(Timestamp::from_millis(10_500), now), "in 500ms");
        assert_eq!(relative(Timestamp::MAX, now), "never");
    }

    #[test]
    fn bytes_and_text_are_shown_safely() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
        assert_eq!(
            time(Timestamp::from_millis(1_500)),
            "1970-01-01T00:00:01.500Z"
        );
    }
}
