//! A throwaway `memcached` per test: spawn it on a free loopback port, wait until it answers
//! `version`, kill it on drop (printing its log when a test failed), stop and restart it for
//! fault tests.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// How long a start or a restart may take.
const PATIENCE: Duration = Duration::from_secs(10);

/// Bound on one [`MemcachedServer::cmd`] exchange.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A server to start: loopback TCP on a free port, UDP off, plus any extra arguments.
///
/// ```no_run
/// use cacheback_test_support::MemcachedServer;
///
/// let server = MemcachedServer::builder()
///     .arg("-I")
///     .arg("2m")
///     .try_start()
///     .expect("memcached starts");
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct MemcachedServerBuilder {
    args: Vec<OsString>,
}

impl MemcachedServerBuilder {
    /// One more argument for `memcached` (after the harness's own), e.g. `-I` or `-m`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the server and waits (up to 10 s) until it answers `version`.
    ///
    /// # Errors
    ///
    /// [`Error::Missing`] when `memcached` is not installed, [`Error::Memcached`] when it did
    /// not start (with its log).
    pub fn try_start(self) -> Result<MemcachedServer, Error> {
        let binary = binary().ok_or_else(|| {
            Error::Missing(
                "memcached not found (set CACHEBACK_MEMCACHED or install memcached)".to_owned(),
            )
        })?;
        let mut last = Error::Memcached("did not start".to_owned());
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..5 {
            let dir = tempfile::tempdir()
                .map_err(|e| Error::Memcached(format!("cannot make a temp dir: {e}")))?;
            let mut server = MemcachedServer {
                binary: binary.clone(),
                port: free_port()?,
                dir,
                args: self.args.clone(),
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Starts the server, or returns `None` after a loud message when `memcached` is missing
    /// and `CACHEBACK_REQUIRE_MEMCACHED` is not set.
    ///
    /// # Panics
    ///
    /// When the server does not start, or it is missing and `CACHEBACK_REQUIRE_MEMCACHED=1`.
    pub fn start(self) -> Option<MemcachedServer> {
        match self.try_start() {
            Ok(server) => Some(server),
            Err(Error::Missing(what)) if !required() => {
                eprintln!("\n!!!!!!!!!! {what}: SKIPPING this memcached test !!!!!!!!!!\n");
                None
            }
            Err(Error::Missing(what)) => panic!("CACHEBACK_REQUIRE_MEMCACHED=1 but {what}"),
            Err(e) => panic!("{e}"),
        }
    }
}

/// A `memcached` owned by one test; killed when dropped, its log printed when that happens
/// during a panic. It listens on its own port, so a memcached service on 11211 never matters.
#[derive(Debug)]
pub struct MemcachedServer {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<OsString>,
    child: Option<Child>,
}

fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CACHEBACK_MEMCACHED") {
        return Some(PathBuf::from(path));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("memcached");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let fallback = PathBuf::from("/usr/bin/memcached");
    fallback.is_file().then_some(fallback)
}

/// Whether a missing binary fails instead of skipping (`CACHEBACK_REQUIRE_MEMCACHED=1`).
fn required() -> bool {
    std::env::var("CACHEBACK_REQUIRE_MEMCACHED").is_ok_and(|v| v == "1" || v == "true")
}

/// Whether this process runs as root, where memcached must be told which user to run as.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A loopback port nothing listens on right now (the OS picks it).
fn free_port() -> Result<u16, Error> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| Error::Memcached(format!("cannot find a free port: {e}")))?
        .port();
    assert_ne!(port, 11211, "never a shared memcached");
    Ok(port)
}

impl MemcachedServer {
    /// A server to configure before starting it (extra arguments).
    pub fn builder() -> MemcachedServerBuilder {
        MemcachedServerBuilder::default()
    }

    /// A server on a free loopback port, or `None` (after a loud message) when `memcached` is
    /// not installed and `CACHEBACK_REQUIRE_MEMCACHED` is not set.
    ///
    /// # Panics
    ///
    /// See [`MemcachedServerBuilder::start`].
    pub fn start() -> Option<MemcachedServer> {
        Self::builder().start()
    }

    /// A server on a free loopback port, or why not.
    ///
    /// # Errors
    ///
    /// See [`MemcachedServerBuilder::try_start`].
    pub fn try_start() -> Result<MemcachedServer, Error> {
        Self::builder().try_start()
    }

    /// `memcache://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("memcache://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's temp dir (its log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("memcached.log")
    }

    /// The server's log so far (its stderr, with `-v`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn command(&self) -> Result<Command, Error> {
        let log = std::fs::File::create(self.log_path())
            .map_err(|e| Error::Memcached(format!("cannot create its log: {e}")))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "0", "-l", "127.0.0.1", "-v"]);
        if running_as_root() {
            cmd.args(["-u", "root"]);
        }
        cmd.args(&self.args)
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        Ok(cmd)
    }

    /// Starts the process and waits (up to 10 s) for `version`; on failure the error holds
    /// the log.
    fn spawn(&mut self) -> Result<(), Error> {
        let child = self.command()?.spawn().map_err(|e| {
            Error::Memcached(format!("cannot spawn {}: {e}", self.binary.display()))
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(Error::Memcached(format!(
                    "exited with {status}\n{}",
                    self.log()
                )));
            }
            if self.cmd("version").is_ok_and(|v| v.starts_with("VERSION")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(Error::Memcached(format!(
                    "no answer to `version` within 10 s\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends one text-protocol command line (e.g. `version`, `flush_all`, `mg <key> v`) on a
    /// new connection and returns the first line of the reply, without its `\r\n`.
    ///
    /// # Errors
    ///
    /// When the server does not answer.
    pub fn cmd(&self, line: &str) -> Result<String, Error> {
        let io = |e: std::io::Error| Error::Memcached(format!("`{line}`: {e}"));
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(io)?;
        stream.set_read_timeout(Some(ANSWER_WITHIN)).map_err(io)?;
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(io)?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).map_err(io)?;
        Ok(reply.trim_end().to_owned())
    }

    /// One counter of `stats` (`cmd_get`, `cmd_set`, `curr_items`, ...).
    ///
    /// # Errors
    ///
    /// When the server does not answer, or has no such counter.
    pub fn stat(&self, name: &str) -> Result<u64, Error> {
        let io = |e: std::io::Error| Error::Memcached(format!("`stats`: {e}"));
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(io)?;
        stream.set_read_timeout(Some(ANSWER_WITHIN)).map_err(io)?;
        stream.write_all(b"stats\r\n").map_err(io)?;
        let prefix = format!("STAT {name} ");
        for line in BufReader::new(stream).lines() {
            let line = line.map_err(io)?;
            if let Some(value) = line.strip_prefix(&prefix) {
                return value
                    .parse()
                    .map_err(|_| Error::Memcached(format!("`stats`: {line}")));
            }
            if line == "END" {
                break;
            }
        }
        Err(Error::Memcached(format!("`stats` has no `{name}`")))
    }

    /// Kills the server (SIGKILL) and waits for it to exit. Its data is lost.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Kills the server if it runs and starts it again on the same port, empty.
    ///
    /// # Panics
    ///
    /// When it does not answer again within 10 s.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("restart failed: {e}"),
                // The port can linger for a moment after the kill.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MemcachedServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- memcached log ({}) ----\n{}---- end of memcached log ----",
                self.url(),
                self.log()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_starts_answers_restarts_empty_and_stops() {
        let Some(mut server) = MemcachedServer::start() else {
            return;
        };
        assert!(server.url().starts_with("memcache://127.0.0.1:"));
        assert_eq!(server.cmd("mn").unwrap(), "MN");
        assert_eq!(server.cmd("mg missing v").unwrap(), "EN");
        assert_eq!(server.stat("cmd_get").unwrap(), 1);
        assert!(server.stat("no_such_counter").is_err());
        let port = server.port();
        server.stop();
        assert!(!server.is_running());
        assert!(server.cmd("version").is_err(), "stopped");
        server.restart();
        assert!(server.is_running());
        assert_eq!(server.port(), port, "same port");
        assert!(server.cmd("version").unwrap().starts_with("VERSION "));
        drop(server);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn extra_arguments_reach_the_server() {
        let Some(server) = MemcachedServer::builder().arg("-I").arg("2m").start() else {
            return;
        };
        let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        stream.write_all(b"stats settings\r\n").unwrap();
        let reader = BufReader::new(stream);
        let line = reader
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("STAT item_size_max ") || l == "END");
        assert_eq!(line.as_deref(), Some("STAT item_size_max 2097152"));
    }
}
