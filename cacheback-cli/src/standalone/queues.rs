//! `cacheback queues`: each queue's depth, dead letters and oldest request, its consumer groups
//! (pending, lag) and their consumers (pending, idle time).

use cacheback::queue::QueueStats;
use serde::Serialize;

use super::Target;
use crate::exit::{OK, Outcome};
use crate::output::{Table, millis, now, print_json, span};

#[derive(Debug, clap::Args)]
pub(super) struct QueuesArgs {
    /// The queues to show (default: every queue under the prefix).
    names: Vec<String>,
}

/// A queue, as `--json` prints it.
#[derive(Debug, Serialize)]
pub(crate) struct QueueJson {
    pub(crate) queue: String,
    pub(crate) depth: u64,
    pub(crate) dead_letters: u64,
    /// Age of the oldest unacknowledged request, in milliseconds.
    pub(crate) oldest_age_ms: Option<u64>,
    pub(crate) groups: Vec<GroupJson>,
}

#[derive(Debug, Serialize)]
pub(crate) struct GroupJson {
    pub(crate) name: String,
    pub(crate) pending: u64,
    pub(crate) lag: Option<u64>,
    pub(crate) last_delivered_id: String,
    pub(crate) consumers: Vec<ConsumerJson>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ConsumerJson {
    pub(crate) name: String,
    pub(crate) pending: u64,
    pub(crate) idle_ms: u64,
}

impl QueueJson {
    pub(crate) fn new(stats: QueueStats) -> Self {
        let now = now();
        QueueJson {
            oldest_age_ms: stats.oldest_enqueued_at.map(|t| millis(now.since(t))),
            queue: stats.queue,
            depth: stats.depth,
            dead_letters: stats.dead_letters,
            groups: stats
                .groups
                .into_iter()
                .map(|g| GroupJson {
                    name: g.name,
                    pending: g.pending,
                    lag: g.lag,
                    last_delivered_id: g.last_delivered_id,
                    consumers: g
                        .consumers
                        .into_iter()
                        .map(|c| ConsumerJson {
                            name: c.name,
                            pending: c.pending,
                            idle_ms: millis(c.idle),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// The stats of `names`, or of every queue under the prefix.
pub(crate) async fn collect(
    target: &Target,
    names: Vec<String>,
) -> Result<Vec<QueueJson>, crate::exit::Failed> {
    let queue = target.queue()?;
    let names = if names.is_empty() {
        queue.queue_names().await?
    } else {
        names
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        out.push(QueueJson::new(queue.stats(&name).await?));
    }
    Ok(out)
}

/// The two tables: one line per queue and group, then one line per consumer.
pub(crate) fn render(queues: &[QueueJson]) -> String {
    let mut table = Table::new(&[
        "QUEUE",
        "DEPTH",
        "OLDEST",
        "DEAD",
        "GROUP",
        "PENDING",
        "LAG",
        "CONSUMERS",
    ]);
    let mut consumers = Table::new(&["QUEUE", "GROUP", "CONSUMER", "PENDING", "IDLE"]);
    for q in queues {
        let oldest = q.oldest_age_ms.map_or_else(
            || "-".to_owned(),
            |ms| span(std::time::Duration::from_millis(ms)),
        );
        let first = [
            q.queue.clone(),
            q.depth.to_string(),
            oldest,
            q.dead_letters.to_string(),
        ];
        if q.groups.is_empty() {
            let mut row = first.to_vec();
            row.extend(["(no worker yet)".into(), "-".into(), "-".into(), "0".into()]);
            table.row(row);
        }
        for g in &q.groups {
            let mut row = first.to_vec();
            row.extend([
                g.name.clone(),
                g.pending.to_string(),
                g.lag.map_or_else(|| "?".to_owned(), |l| l.to_string()),
                g.consumers.len().to_string(),
            ]);
            table.row(row);
            for c in &g.consumers {
                consumers.row(vec![
                    q.queue.clone(),
                    g.name.clone(),
                    c.name.clone(),
                    c.pending.to_string(),
                    span(std::time::Duration::from_millis(c.idle_ms)),
                ]);
            }
        }
    }
    let mut out = table.render();
    if !consumers.is_empty() {
        out.push('\n');
        out.push_str(&consumers.render());
    }
    out
}

pub(super) async fn run(target: &Target, args: QueuesArgs, json: bool) -> Outcome {
    let queues = collect(target, args.names).await?;
    if json {
        print_json(&queues)?;
    } else if queues.is_empty() {
        println!("no queues under prefix `{}`", target.prefix()?);
    } else {
        print!("{}", render(&queues));
    }
    Ok(OK)
}
