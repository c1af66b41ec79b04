//! What a workload cost Redis, from `INFO cpu` and `INFO commandstats` before and after: its
//! CPU time and each command's calls and time (commands run inside Lua scripts are counted
//! too, under their own names, besides the `evalsha` that ran them).

use std::collections::BTreeMap;

use cacheback_test_support::RedisServer;

use crate::report::Record;
use crate::stats;

/// Redis's counters at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    cpu_s: f64,
    /// Command name → (calls, microseconds).
    commands: BTreeMap<String, (u64, u64)>,
}

/// What Redis spent between two snapshots.
#[derive(Debug, Clone)]
pub(crate) struct Cost {
    cpu_s: f64,
    /// (command, calls, microseconds), most time first.
    commands: Vec<(String, u64, u64)>,
}

/// The CPU time (user + system, seconds) `server` has used so far.
pub(crate) fn server_cpu_seconds(server: &RedisServer) -> Result<f64, String> {
    let cpu: String = server.query(&["INFO", "cpu"]).map_err(|e| e.to_string())?;
    Ok(cpu_seconds(&cpu))
}

impl Snapshot {
    /// Reads the counters (two `INFO` calls).
    pub(crate) fn take(server: &RedisServer) -> Result<Snapshot, String> {
        let cpu_s = server_cpu_seconds(server)?;
        let stats: String = server
            .query(&["INFO", "commandstats"])
            .map_err(|e| e.to_string())?;
        Ok(Snapshot {
            cpu_s,
            commands: commandstats(&stats),
        })
    }

    /// What was spent from `self` until `after`.
    pub(crate) fn until(&self, after: &Snapshot) -> Cost {
        let mut commands: Vec<(String, u64, u64)> = after
            .commands
            .iter()
            .filter_map(|(name, &(calls, usec))| {
                let (calls0, usec0) = self.commands.get(name).copied().unwrap_or((0, 0));
                let calls = calls.saturating_sub(calls0);
                (calls > 0).then(|| (name.clone(), calls, usec.saturating_sub(usec0)))
            })
            // The snapshots' own INFO calls are not the workload's.
            .filter(|(name, ..)| name != "info")
            .collect();
        commands.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        Cost {
            cpu_s: (after.cpu_s - self.cpu_s).max(0.0),
            commands,
        }
    }
}

impl Cost {
    /// Adds to `record`, per unit of work (`n` of them): Redis CPU in µs, commands, and each
    /// command's calls and µs.
    pub(crate) fn record_per(&self, record: &mut Record, n: u64, unit: &str) {
        let n = n.max(1) as f64;
        record.figure(
            &format!("redis_cpu_us_per_{unit}"),
            stats::round3(self.cpu_s * 1e6 / n),
        );
        let total: u64 = self.commands.iter().map(|c| c.1).sum();
        record.figure(
            &format!("redis_commands_per_{unit}"),
            stats::round3(total as f64 / n),
        );
        let each: serde_json::Map<String, serde_json::Value> = self
            .commands
            .iter()
            .map(|(name, calls, usec)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "calls": stats::round3(*calls as f64 / n),
                        "us": stats::round3(*usec as f64 / n),
                    }),
                )
            })
            .collect();
        record.figure(
            &format!("redis_per_{unit}"),
            serde_json::Value::Object(each),
        );
    }

    /// One line: Redis CPU per unit and the most expensive commands.
    pub(crate) fn summary_per(&self, n: u64, unit: &str) -> String {
        let n = n.max(1) as f64;
        let top: Vec<String> = self
            .commands
            .iter()
            .take(4)
            .map(|(name, calls, usec)| {
                format!(
                    "{name} {:.2}×/{:.1} µs",
                    *calls as f64 / n,
                    *usec as f64 / n
                )
            })
            .collect();
        format!(
            "Redis CPU {:.1} µs per {unit} ({})",
            self.cpu_s * 1e6 / n,
            top.join(", ")
        )
    }
}

/// `used_cpu_sys` + `used_cpu_user` of an `INFO cpu` reply, in seconds.
fn cpu_seconds(info: &str) -> f64 {
    info.lines()
        .filter_map(|line| {
            let (key, value) = line.trim_end().split_once(':')?;
            matches!(key, "used_cpu_sys" | "used_cpu_user").then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// `cmdstat_<name>:calls=N,usec=U,...` lines of an `INFO commandstats` reply.
fn commandstats(info: &str) -> BTreeMap<String, (u64, u64)> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim_end().strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            Some((name.to_owned(), (field("calls")?, field("usec")?)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_replies_are_read() {
        let cpu = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\n\
                   used_cpu_sys_children:9.0\r\n";
        assert!((cpu_seconds(cpu) - 3.75).abs() < 1e-9);
        let stats = "# Commandstats\r\n\
                     cmdstat_get:calls=10,usec=25,usec_per_call=2.50,rejected_calls=0,failed_calls=0\r\n\
                     cmdstat_evalsha:calls=4,usec=40,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n";
        let parsed = commandstats(stats);
        assert_eq!(parsed["get"], (10, 25));
        assert_eq!(parsed["evalsha"], (4, 40));
    }

    #[test]
    fn costs_are_differences_without_the_snapshots_own_info() {
        let before = Snapshot {
            cpu_s: 1.0,
            commands: [("get".to_owned(), (10, 20)), ("info".to_owned(), (2, 5))].into(),
        };
        let after = Snapshot {
            cpu_s: 1.5,
            commands: [
                ("get".to_owned(), (30, 60)),
                ("info".to_owned(), (4, 9)),
                ("xadd".to_owned(), (10, 100)),
            ]
            .into(),
        };
        let cost = before.until(&after);
        assert!((cost.cpu_s - 0.5).abs() < 1e-9);
        assert_eq!(
            cost.commands,
            [("xadd".to_owned(), 10, 100), ("get".to_owned(), 20, 40)]
        );
        assert_eq!(
            cost.summary_per(10, "refresh"),
            "Redis CPU 50000.0 µs per refresh (xadd 1.00×/10.0 µs, get 2.00×/4.0 µs)"
        );
    }
}
