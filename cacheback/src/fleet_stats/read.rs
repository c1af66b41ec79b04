//! Reading the fleet's published counts back ([`FleetStatsReader`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::error::Result;
use crate::redis_support::{self, Conn, ConnOptions, Failure};
use crate::tally::AGE_BUCKETS;

use super::{procs_key, slot_key, slot_of};

/// Slots read: the current one and the five before it, about the last minute.
const SLOTS: u64 = 6;
/// A process that published within this long counts as live.
const LIVE: Duration = Duration::from_secs(30);

/// What the whole fleet counted in about the last minute (the current 10-second slot and the
/// five before it), from [`FleetStatsReader::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetStats {
    /// The processes that published in the last 30 s, with the time of their last
    /// publication, by name.
    pub processes: Vec<(String, Timestamp)>,
    /// Each job's counts, by name.
    pub jobs: Vec<JobStats>,
}

/// One job's counts across the fleet, in [`FleetStats`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct JobStats {
    /// The job's name.
    pub job: String,
    /// Reads answered with a fresh value.
    pub hits: u64,
    /// Reads answered with a stale value (a refresh on its way).
    pub stale: u64,
    /// Reads without a cached value (answered empty, or fetched).
    pub misses: u64,
    /// Refreshes that stored a new value.
    pub refreshes: u64,
    /// Refreshes whose fetch failed.
    pub failures: u64,
    /// Mean time refresh requests waited in the queue, when any refresh ran.
    pub mean_refresh_lag: Option<Duration>,
    /// Reads served with a value by its age: under 1 s, 10 s, 1 min, 10 min, 1 h, and older
    /// ([`JobStats::AGE_BUCKETS`]).
    pub served_age: [u64; AGE_BUCKETS],
}

impl JobStats {
    /// The labels of [`JobStats::served_age`]'s buckets.
    pub const AGE_BUCKETS: [&'static str; AGE_BUCKETS] =
        ["< 1s", "< 10s", "< 1m", "< 10m", "< 1h", ">= 1h"];

    fn add(&mut self, count: &str, n: u64, lag: &mut (u64, u64)) {
        match count {
            "hit" => self.hits += n,
            "stale" => self.stale += n,
            "miss" => self.misses += n,
            "refresh_ok" => self.refreshes += n,
            "refresh_failed" => self.failures += n,
            "lag_ms" => lag.0 += n,
            "lag_n" => lag.1 += n,
            other => {
                if let Some(i) = other
                    .strip_prefix("age")
                    .and_then(|i| i.parse::<usize>().ok())
                    .filter(|i| *i < AGE_BUCKETS)
                {
                    self.served_age[i] += n;
                }
            }
        }
    }
}

/// Reads the counts a fleet's [`StatsPublisher`](super::StatsPublisher)s published.
#[derive(Clone)]
pub struct FleetStatsReader {
    conn: Conn,
    prefix: String,
}

impl fmt::Debug for FleetStatsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetStatsReader")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl FleetStatsReader {
    /// A reader of the counts published under `prefix` in the Redis at `url`. Does not
    /// connect: the first read does.
    pub fn from_url(url: &str, prefix: &str) -> Result<Self> {
        crate::key::validate_prefix(prefix).map_err(|e| crate::Error::config(e.to_string()))?;
        let client = redis_support::open(url)?;
        Ok(FleetStatsReader {
            conn: Conn::lazy(client, ConnOptions::default(), Duration::ZERO)?,
            prefix: prefix.to_owned(),
        })
    }

    /// The counts of about the last minute before `now` (one round trip).
    pub async fn read(&self, now: Timestamp) -> Result<FleetStats> {
        let current = slot_of(now);
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(procs_key(&self.prefix));
        for slot in current.saturating_sub(SLOTS - 1)..=current {
            pipe.cmd("HGETALL").arg(slot_key(&self.prefix, slot));
        }
        let mut replies: Vec<BTreeMap<String, u64>> = self
            .conn
            .pipeline(&pipe, "HGETALL")
            .await
            .map_err(Failure::into_store)?;
        let procs = if replies.is_empty() {
            BTreeMap::new()
        } else {
            replies.remove(0)
        };
        let processes = procs
            .into_iter()
            .map(|(id, at)| (id, Timestamp::from_millis(at)))
            .filter(|(_, at)| now.since(*at) < LIVE)
            .collect();
        let mut jobs: BTreeMap<String, (JobStats, (u64, u64))> = BTreeMap::new();
        for slot in replies {
            for (field, n) in slot {
                let Some((count, job)) = field.split_once('|') else {
                    continue;
                };
                let (stats, lag) = jobs.entry(job.to_owned()).or_insert_with(|| {
                    let stats = JobStats {
                        job: job.to_owned(),
                        ..JobStats::default()
                    };
                    (stats, (0, 0))
                });
                stats.add(count, n, lag);
            }
        }
        Ok(FleetStats {
            processes,
            jobs: jobs
                .into_values()
                .map(|(mut stats, (ms, n))| {
                    stats.mean_refresh_lag = (n > 0).then(|| Duration::from_millis(ms / n));
                    stats
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_fields() {
        let mut stats = JobStats::default();
        let mut lag = (0, 0);
        for (count, n) in [
            ("hit", 5),
            ("stale", 2),
            ("miss", 1),
            ("refresh_ok", 3),
            ("refresh_failed", 1),
            ("lag_ms", 300),
            ("lag_n", 3),
            ("age1", 4),
            ("age9", 1),
            ("unknown", 1),
        ] {
            stats.add(count, n, &mut lag);
        }
        assert_eq!(
            (
                stats.hits,
                stats.stale,
                stats.misses,
                stats.refreshes,
                stats.failures
            ),
            (5, 2, 1, 3, 1)
        );
        assert_eq!(lag, (300, 3));
        assert_eq!(stats.served_age, [0, 4, 0, 0, 0, 0]);
        assert_eq!(super::super::SLOT.as_secs() * SLOTS, 60, "about a minute");
    }
}
