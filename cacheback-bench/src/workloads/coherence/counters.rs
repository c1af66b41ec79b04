//! Redis's own cost of a stretch of writes, from its counters before and after: CPU
//! (`used_cpu_sys` + `used_cpu_user` of `INFO cpu`), bytes sent (`total_net_output_bytes` of
//! `INFO stats`) and commands processed; and what it holds: memory in use and the
//! client-tracking table's size. Read on one long-lived connection, so the readings add the
//! same small cost to every stretch.

use redis::aio::MultiplexedConnection;

/// Redis's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Counters {
    /// CPU time used so far, system + user, in seconds.
    cpu_s: f64,
    /// Bytes written to clients so far.
    net_out_bytes: u64,
    /// Commands processed so far.
    commands: u64,
    /// (key, client) pairs in the tracking table now.
    pub(super) tracking_items: u64,
    /// Bytes of memory in use now (`used_memory`).
    pub(super) used_memory: u64,
}

/// What Redis spent between two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Spent {
    /// CPU seconds.
    pub(super) cpu_s: f64,
    /// Bytes sent.
    pub(super) net_out_bytes: u64,
    /// Commands processed (the second reading's `INFO` included).
    pub(super) commands: u64,
}

impl Counters {
    /// Reads the counters (one `INFO cpu stats memory`).
    pub(super) async fn read(conn: &mut MultiplexedConnection) -> Result<Counters, String> {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .arg("stats")
            .arg("memory")
            .query_async(conn)
            .await
            .map_err(|e| format!("INFO cpu stats memory failed: {e}"))?;
        Ok(Counters::parse(&info))
    }

    fn parse(info: &str) -> Counters {
        let mut c = Counters::default();
        for line in info.lines() {
            let Some((name, value)) = line.trim_end().split_once(':') else {
                continue;
            };
            let int = || value.parse::<u64>().unwrap_or(0);
            match name {
                "used_cpu_sys" | "used_cpu_user" => c.cpu_s += value.parse::<f64>().unwrap_or(0.0),
                "total_net_output_bytes" => c.net_out_bytes = int(),
                "total_commands_processed" => c.commands = int(),
                "tracking_total_items" => c.tracking_items = int(),
                "used_memory" => c.used_memory = int(),
                _ => {}
            }
        }
        c
    }

    /// What was spent from `self` until `later`.
    pub(super) fn until(&self, later: &Counters) -> Spent {
        Spent {
            cpu_s: (later.cpu_s - self.cpu_s).max(0.0),
            net_out_bytes: later.net_out_bytes.saturating_sub(self.net_out_bytes),
            commands: later.commands.saturating_sub(self.commands),
        }
    }
}

impl Spent {
    /// Redis CPU in µs per one of `n` units of work.
    pub(super) fn cpu_us_per(&self, n: u64) -> f64 {
        self.cpu_s * 1e6 / n.max(1) as f64
    }

    /// Bytes sent per one of `n` units of work.
    pub(super) fn bytes_per(&self, n: u64) -> f64 {
        self.net_out_bytes as f64 / n.max(1) as f64
    }

    /// Commands per one of `n` units of work.
    pub(super) fn commands_per(&self, n: u64) -> f64 {
        self.commands as f64 / n.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_replies_are_read_and_subtracted() {
        let before = Counters::parse(
            "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\n\
             used_cpu_sys_children:9.0\r\n\r\n# Stats\r\ntotal_commands_processed:10\r\n\
             total_net_output_bytes:1000\r\ntracking_total_items:4000\r\n\
             tracking_total_prefixes:0\r\n\r\n# Memory\r\nused_memory:123456\r\n\
             used_memory_human:120.56K\r\n",
        );
        assert!((before.cpu_s - 3.75).abs() < 1e-9);
        assert_eq!(before.tracking_items, 4_000);
        assert_eq!(before.used_memory, 123_456);
        let after = Counters {
            cpu_s: 4.0,
            net_out_bytes: 5_000,
            commands: 30,
            ..before
        };
        let spent = before.until(&after);
        assert!((spent.cpu_s - 0.25).abs() < 1e-9);
        assert_eq!((spent.net_out_bytes, spent.commands), (4_000, 20));
        assert!((spent.cpu_us_per(1_000) - 250.0).abs() < 1e-6);
        assert!((spent.bytes_per(1_000) - 4.0).abs() < 1e-9);
        assert!((spent.commands_per(0) - 20.0).abs() < 1e-9);
    }
}
