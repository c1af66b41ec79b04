//! A `redis-server` of the harness's own: loopback only, a free port, a temp dir, no persistence
//! (`--save '' --appendonly no`), killed on drop. (The core crate's `tests/support` harness is
//! test-only, so the bench carries this small one.)

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
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server (is it installed?): {e}"))?;
        let mut server = RedisServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if server.ping() {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "redis-server exited with {status}: {}",
                    server.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "redis-server did not answer PING within 10 s: {}",
            server.log()
        ))
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
}
