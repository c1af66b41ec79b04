//! The dashboard's one page, rendered on the server: fleet counts per job, queues, dead letters
//! with their buttons, and the served-age chart as inline SVG. No script: a meta refresh keeps
//! it live, and the buttons are plain forms.

use std::fmt::Write;
use std::time::Duration;

use cacheback::clock::Timestamp;
use cacheback::fleet_stats::{FleetStats, JobStats};
use cacheback::queue::RedisDeadLetter;

use crate::output::{relative, span};
use crate::standalone::{QueueJson, id_time};

/// Everything one page shows.
#[derive(Debug)]
pub(crate) struct View {
    pub(crate) prefix: String,
    pub(crate) now: Timestamp,
    pub(crate) refresh_secs: u64,
    pub(crate) notice: Option<String>,
    pub(crate) stats: FleetStats,
    pub(crate) queues: Vec<QueueJson>,
    /// The newest dead letters of each queue that has any.
    pub(crate) dead_letters: Vec<(String, Vec<RedisDeadLetter>)>,
}

/// Text made safe for HTML (element content and quoted attributes).
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
form{display:inline}.notice{background:#e8f5e9;padding:.5em}\
.muted{color:#888}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}";

fn per_minute(n: u64) -> String {
    n.to_string()
}

/// The served-age chart: one bar per bucket, summed over the jobs.
fn age_chart(jobs: &[JobStats]) -> String {
    let mut sums = [0u64; JobStats::AGE_BUCKETS.len()];
    for job in jobs {
        for (sum, n) in sums.iter_mut().zip(job.served_age) {
            *sum += n;
        }
    }
    let max = sums.iter().copied().max().unwrap_or(0).max(1);
    let (bar, gap, height) = (60u64, 20u64, 120u64);
    let width = (bar + gap) * sums.len() as u64 + gap;
    let mut svg = format!(
        "<svg id=\"served-age\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" \
         height=\"{}\" role=\"img\" aria-label=\"reads by age of the value served\">",
        height + 40
    );
    for (i, (n, label)) in sums.iter().zip(JobStats::AGE_BUCKETS).enumerate() {
        let h = n * height / max;
        let x = gap + i as u64 * (bar + gap);
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"{bar}\" height=\"{h}\" fill=\"#4a78b5\">\
             <title>{n} reads served {label} old</title></rect>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{n}</text>\
             <text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
            height + 12 - h,
            x + bar / 2,
            height + 8 - h,
            x + bar / 2,
            height + 30,
            escape(label)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn jobs_table(out: &mut String, stats: &FleetStats) {
    out.push_str("<h2>Jobs, whole fleet, last minute</h2>");
    if stats.jobs.is_empty() {
        out.push_str(
            "<p class=\"muted\">No counts published: build the clients with \
             <code>.fleet_stats(true)</code> and run a <code>StatsPublisher</code>.</p>",
        );
        return;
    }
    out.push_str(
        "<table id=\"jobs\"><tr><th>job</th><th>hits</th><th>stale</th><th>misses</th>\
         <th>refreshes</th><th>failures</th><th>refresh lag</th></tr>",
    );
    for job in &stats.jobs {
        let _ = write!(
            out,
            "<tr data-job=\"{name}\"><td>{name}</td><td class=\"n hits\">{}</td>\
             <td class=\"n stale\">{}</td><td class=\"n misses\">{}</td>\
             <td class=\"n refreshes\">{}</td><td class=\"n failures\">{}</td><td class=\"n\">{}</td></tr>",
            per_minute(job.hits),
            per_minute(job.stale),
            per_minute(job.misses),
            per_minute(job.refreshes),
            per_minute(job.failures),
            job.mean_refresh_lag.map_or_else(|| "-".to_owned(), span),
            name = escape(&job.job),
        );
    }
    out.push_str("</table>");
}

fn queues_table(out: &mut String, queues: &[QueueJson]) {
    out.push_str("<h2>Queues</h2>");
    if queues.is_empty() {
        out.push_str("<p class=\"muted\">No queues under this prefix.</p>");
        return;
    }
    out.push_str(
        "<table id=\"queues\"><tr><th>queue</th><th>depth</th><th>oldest</th><th>pending</th>\
         <th>lag</th><th>consumers</th><th>dead letters</th></tr>",
    );
    for q in queues {
        let pending: u64 = q.groups.iter().map(|g| g.pending).sum();
        let lag = q
            .groups
            .iter()
            .map(|g| g.lag.map_or_else(|| "?".to_owned(), |l| l.to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        let consumers = q
            .groups
            .iter()
            .flat_map(|g| &g.consumers)
            .map(|c| {
                format!(
                    "{} <span class=\"muted\">(idle {})</span>",
                    escape(&c.name),
                    span(Duration::from_millis(c.idle_ms))
                )
            })
            .collect::<Vec<_>>()
            .join("<br>");
        let _ = write!(
            out,
            "<tr data-queue=\"{name}\"><td>{name}</td><td class=\"n depth\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n pending\">{pending}</td><td class=\"n\">{lag}</td><td class=\"consumers\">{}</td>\
             <td class=\"n dead\">{}</td></tr>",
            q.depth,
            q.oldest_age_ms
                .map_or_else(|| "-".to_owned(), |ms| span(Duration::from_millis(ms))),
            if consumers.is_empty() {
                "<span class=\"muted\">none</span>".to_owned()
            } else {
                consumers
            },
            q.dead_letters,
            name = escape(&q.queue),
        );
    }
    out.push_str("</table>");
}

/// The page that asks before a button's write that cannot be undone (a purge) or that acts on
/// every dead letter of a queue: its "yes" posts the same form again, confirmed; "no" goes
/// back to the page. No meta refresh: a reload must not confirm anything.
pub(crate) fn confirm(prefix: &str, action: &str, queue: &str, id: &str, question: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <title>cacheback: {prefix}</title><style>{STYLE}</style></head><body>\
         <h1>cacheback <span class=\"muted\">prefix</span> {prefix}</h1>\
         <p id=\"question\">{question}</p>\
         <form method=\"post\" action=\"/{action}\"><input type=\"hidden\" name=\"queue\" \
         value=\"{queue}\"><input type=\"hidden\" name=\"id\" value=\"{id}\">\
         <input type=\"hidden\" name=\"confirm\" value=\"yes\">\
         <button type=\"submit\" class=\"confirm\">Yes, {action}</button> \
         <a href=\"/\" class=\"cancel\">No, back to the dashboard</a></form></body></html>",
        prefix = escape(prefix),
        question = escape(question),
        queue = escape(queue),
        id = escape(id),
    )
}

fn button(action: &str, queue: &str, id: &str, label: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/{action}\"><input type=\"hidden\" name=\"queue\" \
         value=\"{}\"><input type=\"hidden\" name=\"id\" value=\"{}\">\
         <button type=\"submit\" class=\"{class}\">{label}</button></form>",
        escape(queue),
        escape(id)
    )
}

fn dead_letters(out: &mut String, view: &View) {
    out.push_str("<h2>Dead letters</h2>");
    if view.dead_letters.is_empty() {
        out.push_str("<p class=\"muted\" id=\"no-dead-letters\">None.</p>");
        return;
    }
    for (queue, letters) in &view.dead_letters {
        let _ = write!(
            out,
            "<h3>{} {} {}</h3><table class=\"dead-letters\"><tr><th>id</th><th>age</th>\
             <th>job</th><th>attempt</th><th>reason</th><th></th></tr>",
            escape(queue),
            button("replay", queue, "all", "Replay all", "replay-all"),
            button("purge", queue, "all", "Purge all", "purge-all"),
        );
        for l in letters {
            let age = id_time(&l.id).map_or_else(|| "?".to_owned(), |t| relative(t, view.now));
            let _ = write!(
                out,
                "<tr class=\"dead-letter\" data-id=\"{id}\"><td>{id}</td><td>{age}</td><td>{}</td>\
                 <td class=\"n\">{}</td><td>{}</td><td>{} {}</td></tr>",
                escape(l.job.as_deref().unwrap_or("-")),
                l.attempt,
                escape(&l.reason),
                button("replay", queue, &l.id, "Replay", "replay"),
                button("purge", queue, &l.id, "Purge", "purge"),
                id = escape(&l.id),
            );
        }
        out.push_str("</table>");
    }
}

/// The whole page.
pub(crate) fn render(view: &View) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let refresh = if view.refresh_secs > 0 {
        format!(
            "<meta http-equiv=\"refresh\" content=\"{}\">",
            view.refresh_secs
        )
    } else {
        String::new()
    };
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\">{refresh}\
         <title>cacheback: {prefix}</title><style>{STYLE}</style></head><body>\
         <h1>cacheback <span class=\"muted\">prefix</span> {prefix}</h1>\
         <p class=\"muted\">{} · {} live process(es) publishing counts</p>",
        crate::output::time(view.now),
        view.stats.processes.len(),
        prefix = escape(&view.prefix),
    );
    if let Some(notice) = &view.notice {
        let _ = write!(
            out,
            "<p class=\"notice\" id=\"notice\">{}</p>",
            escape(notice)
        );
    }
    jobs_table(&mut out, &view.stats);
    queues_table(&mut out, &view.queues);
    dead_letters(&mut out, view);
    out.push_str("<h2>Served age, last minute</h2>");
    out.push_str(&age_chart(&view.stats.jobs));
    out.push_str("</body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn the_chart_has_a_bar_per_bucket() {
        let svg = age_chart(&[]);
        assert_eq!(svg.matches("<rect").count(), JobStats::AGE_BUCKETS.len());
        assert!(svg.contains("&gt;= 1h"), "{svg}");
    }
}
