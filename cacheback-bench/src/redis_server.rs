//! A `redis-server` of the harness's own: loopback only, a free port, a temp dir, no persistence
//! (`--save '' --appendonly no`), killed on drop. (The core crate's `tests/support` harness is
//! test-only, so the bench carries this small one.) For fault runs it can be stopped with
//! `SHUTDOWN SAVE` and started again on the same port and dir, its data intact.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
#[derive(Debug)]
pub(crate) struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one and waits (up to 10 s) until it answers `PING`.
    pub(crate) fn start() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
        let port = free_port()?;
        let child = spawn_server(port, dir.path())?;
        let mut server = RedisServer { child, port, dir };
        server.wait_ready()?;
        Ok(server)
    }

    /// Waits (up to 10 s) until the server answers `PING`.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("redis-server exited with {status}: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "redis-server did not answer PING within 10 s: {}",
            self.log()
        ))
    }

    /// Stops the server with `SHUTDOWN SAVE` (its data goes to `dump.rdb` in its dir, although
    /// it runs without save points) and waits (up to 10 s) for the process to exit. Start it
    /// again with [`RedisServer::start_again`]; dropping a stopped server is fine.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn stop_saving(&mut self) -> Result<(), String> {
        // The server closes the connection without a reply when it shuts down; an error reply
        // means it refused (it could not save).
        let reply = self.command("SHUTDOWN SAVE").unwrap_or_default();
        if reply.starts_with('-') {
            return Err(format!("SHUTDOWN SAVE refused: {}", reply.trim_end()));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("waiting for redis-server: {e}")),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(format!(
            "redis-server did not exit within 10 s of SHUTDOWN SAVE (killed): {}",
            self.log()
        ))
    }

    /// Starts the server again on the same port and dir, so it loads what
    /// [`RedisServer::stop_saving`] saved, and waits (up to 10 s) until it answers `PING`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn start_again(&mut self) -> Result<(), String> {
        if let Ok(None) = self.child.try_wait() {
            return Err("redis-server is still running".to_owned());
        }
        self.child = spawn_server(self.port, self.dir.path())?;
        self.wait_ready()
    }

    /// `redis://127.0.0.1:PORT/`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Sends one inline command and returns the raw reply (for `INFO`, `FLUSHALL`, ...).
    pub(crate) fn command(&self, line: &str) -> Result<String, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            reply.extend_from_slice(&buf[..n]);
            if n == 0 || reply_complete(&reply) {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&reply).into_owned())
    }

    fn ping(&self) -> bool {
        self.command("PING").is_ok_and(|r| r.starts_with("+PONG"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `redis-server` on loopback `port` with `dir` as its working dir (log and dump there),
/// without save points or append-only file.
fn spawn_server(port: u16, dir: &std::path::Path) -> Result<Child, String> {
    Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server (is it installed?): {e}"))
}

/// A port nothing listens on right now (the OS picks it).
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// Whether a RESP reply is complete: a simple line, or a bulk string with all its bytes.
fn reply_complete(reply: &[u8]) -> bool {
    let Some(end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    match reply.first() {
        Some(b'$') => {
            let len: i64 = std::str::from_utf8(&reply[1..end])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            len < 0 || reply.len() >= end + 2 + len as usize + 2
        }
        _ => true,
    }
}

/// The calls of each command in an `INFO commandstats` reply (`cmdstat_get:calls=12,...`).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn command_calls(info: &str) -> Vec<(String, u64)> {
    info.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_are_parsed() {
        let info = "$120\r\n# Commandstats\r\ncmdstat_get:calls=12,usec=30,usec_per_call=2.5\r\n\
                    cmdstat_info:calls=1,usec=10\r\ncmdstat_config|set:calls=2,usec=1\r\n";
        assert_eq!(
            command_calls(info),
            vec![
                ("get".to_owned(), 12),
                ("info".to_owned(), 1),
                ("config|set".to_owned(), 2)
            ]
        );
    }

    #[test]
    fn replies_are_complete_when_all_bytes_arrived() {
        assert!(reply_complete(b"+PONG\r\n"));
        assert!(!reply_complete(b"+PON"));
        assert!(!reply_complete(b"$5\r\nhel"));
        assert!(reply_complete(b"$5\r\nhello\r\n"));
        assert!(reply_complete(b"$-1\r\n"));
    }

    #[test]
    fn a_server_starts_answers_and_stops() {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED: redis-server is not installed");
            return;
        }
        let server = RedisServer::start().expect("redis-server starts");
        assert!(server.url().starts_with("redis://127.0.0.1:"));
        assert!(server.command("SET a 1").unwrap().starts_with("+OK"));
        let info = server.command("INFO commandstats").unwrap();
        assert!(
            command_calls(&info)
                .iter()
                .any(|(c, n)| c == "set" && *n == 1)
        );
        let port = server.port;
        drop(server);
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
    }

    #[test]
    fn a_server_restarts_with_its_data() {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED: redis-server is not installed");
            return;
        }
        let mut server = RedisServer::start().expect("redis-server starts");
        assert!(server.command("SET a 1").unwrap().starts_with("+OK"));
        server.stop_saving().expect("SHUTDOWN SAVE");
        assert!(server.command("PING").is_err());
        assert!(server.start_again().is_ok());
        assert_eq!(server.command("GET a").unwrap(), "$1\r\n1\r\n");
        assert!(server.start_again().is_err(), "already running");
    }
}
