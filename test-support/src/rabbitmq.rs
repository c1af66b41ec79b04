//! A fresh RabbitMQ vhost per test binary, on the broker running on this machine
//! (`$CACHEBACK_AMQP_ADDR`, default `127.0.0.1:5672`, user guest/guest), managed with
//! `rabbitmqctl`. Deleted on drop; vhosts left behind by killed runs are deleted when the next
//! one is made. [`RabbitVhost::outage`] stops the broker's application until the guard drops.
//!
//! When the broker is not reachable (or `rabbitmqctl` is missing), [`RabbitVhost::create`]
//! skips with a loud message, unless `CACHEBACK_REQUIRE_AMQP=1`, where it panics.
//!
//! ```no_run
//! use cacheback_test_support::rabbitmq::RabbitVhost;
//!
//! let Some(vhost) = RabbitVhost::create() else {
//!     return; // skipped, loudly
//! };
//! println!("{}", vhost.url());
//! ```

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::Error;

/// The name prefix of test vhosts: `cb-test-<pid>-<random>`.
const VHOST_PREFIX: &str = "cb-test-";

/// A vhost owned by one test binary; deleted on drop.
#[derive(Debug)]
pub struct RabbitVhost {
    name: String,
    addr: SocketAddr,
}

fn addr() -> SocketAddr {
    std::env::var("CACHEBACK_AMQP_ADDR")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5672)))
}

fn required() -> bool {
    std::env::var("CACHEBACK_REQUIRE_AMQP").is_ok_and(|v| v == "1" || v == "true")
}

/// Runs `rabbitmqctl -q <args>`; the error holds its output.
pub fn rabbitmqctl(args: &[&str]) -> Result<String, Error> {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .map_err(|e| Error::Missing(format!("cannot run rabbitmqctl: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(Error::Broker(format!(
            "rabbitmqctl {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

fn reachable(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

impl RabbitVhost {
    /// A fresh vhost, or `None` (after a loud message) when the broker is unreachable and
    /// `CACHEBACK_REQUIRE_AMQP` is not set.
    ///
    /// # Panics
    ///
    /// When the vhost cannot be made, or the broker is unreachable and
    /// `CACHEBACK_REQUIRE_AMQP=1`.
    pub fn create() -> Option<RabbitVhost> {
        match Self::try_create() {
            Ok(vhost) => Some(vhost),
            Err(Error::Missing(what)) if !required() => {
                eprintln!("\n!!!!!!!!!! {what}: SKIPPING these RabbitMQ tests !!!!!!!!!!\n");
                None
            }
            Err(Error::Missing(what)) => panic!("CACHEBACK_REQUIRE_AMQP=1 but {what}"),
            Err(e) => panic!("{e}"),
        }
    }

    /// A fresh vhost, or why not.
    pub fn try_create() -> Result<RabbitVhost, Error> {
        let addr = addr();
        if !reachable(addr) {
            return Err(Error::Missing(format!("no AMQP broker at {addr}")));
        }
        remove_abandoned();
        let name = format!("{VHOST_PREFIX}{}-{:08x}", std::process::id(), random());
        rabbitmqctl(&["add_vhost", &name])?;
        let vhost = RabbitVhost { name, addr };
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &vhost.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ])?;
        Ok(vhost)
    }

    /// The vhost's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `amqp://guest:guest@<addr>/<vhost>`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/{}", self.addr, self.name)
    }

    /// `rabbitmqctl list_queues` of this vhost: `(name, ready, unacknowledged)` per queue.
    pub fn queues(&self) -> Vec<(String, u64, u64)> {
        let out = rabbitmqctl(&[
            "list_queues",
            "-p",
            &self.name,
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        out.lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let name = parts.next()?.to_owned();
                let ready = parts.next()?.parse().ok()?;
                let unacked = parts.next()?.parse().ok()?;
                Some((name, ready, unacked))
            })
            .collect()
    }

    /// Stops the broker's application (`rabbitmqctl stop_app`: every connection is closed, the
    /// port refuses) until the returned guard drops, which starts it again and waits for it,
    /// even when the test panics.
    pub fn outage(&self) -> Outage {
        rabbitmqctl(&["stop_app"]).unwrap_or_else(|e| panic!("{e}"));
        Outage { addr: self.addr }
    }
}

impl Drop for RabbitVhost {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl(&["delete_vhost", &self.name]) {
            eprintln!("could not delete test vhost {}: {e}", self.name);
        }
    }
}

/// The broker's application stopped; started again when dropped.
#[derive(Debug)]
#[must_use = "the broker starts again when the guard drops"]
pub struct Outage {
    addr: SocketAddr,
}

impl Outage {
    /// Starts the broker again now, and waits (up to 60 s) for it to take connections.
    pub fn end(self) {
        drop(self);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl(&["start_app"]) {
            eprintln!("could not start the broker again: {e}");
        }
        let _ = rabbitmqctl(&["await_startup"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reachable(self.addr) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Deletes test vhosts whose process is gone (a run that was killed before its drop).
fn remove_abandoned() {
    let Ok(list) = rabbitmqctl(&["list_vhosts", "--no-table-headers", "name"]) else {
        return;
    };
    for name in list.lines().map(str::trim) {
        let Some(rest) = name.strip_prefix(VHOST_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = rabbitmqctl(&["delete_vhost", name]);
        }
    }
}

fn random() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}
