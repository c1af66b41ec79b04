//! The server's life: finding the binary, spawning it, waiting for `PING`, stopping and
//! restarting it, and killing it on drop.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// How long a start, a stop or a restart may take.
const PATIENCE: Duration = Duration::from_secs(10);

/// Where the server listens.
#[derive(Debug, Clone)]
pub(crate) enum Listen {
    Tcp(u16),
    Unix(PathBuf),
    /// TLS only (plain TCP off), with a throwaway CA in the server's temp dir.
    Tls(u16),
}

/// How the server is reached, before it has a port or a socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Transport {
    #[default]
    Tcp,
    Unix,
    Tls,
    /// TLS with the CA and certificate made already in this dir (shared by a cluster's nodes).
    TlsFrom(PathBuf),
}

/// A server to start: loopback TCP unless asked otherwise, plus any extra config arguments.
///
/// ```no_run
/// use cacheback_test_support::RedisServer;
///
/// let server = RedisServer::builder()
///     .arg("--maxmemory")
///     .arg("10mb")
///     .try_start()
///     .expect("redis-server starts");
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RedisServerBuilder {
    transport: Transport,
    args: Vec<OsString>,
}

impl RedisServerBuilder {
    /// Listen on a unix socket in the server's temp dir (TCP off).
    pub fn unix_socket(mut self) -> Self {
        self.transport = Transport::Unix;
        self
    }

    /// Listen with TLS only (`rediss://`), with a certificate for `127.0.0.1` signed by a
    /// throwaway CA ([`RedisServer::ca_pem`]); needs the `openssl` command.
    pub fn tls(mut self) -> Self {
        self.transport = Transport::Tls;
        self
    }

    /// TLS as [`tls`](Self::tls), with the CA and certificate `tls::make_certificates` made
    /// in `certificates` (copied into the server's own dir), so that several servers trust
    /// each other.
    pub(crate) fn tls_from(mut self, certificates: PathBuf) -> Self {
        self.transport = Transport::TlsFrom(certificates);
        self
    }

    /// One more argument for `redis-server` (after the harness's own), e.g. `--maxmemory`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the server and waits (up to 10 s) until it answers `PING`.
    ///
    /// # Errors
    ///
    /// [`Error::Missing`] when `redis-server` (or `openssl`, for TLS) is not installed,
    /// [`Error::Server`] when it did not start (with its log).
    pub fn try_start(self) -> Result<RedisServer, Error> {
        let binary = binary().ok_or_else(|| {
            Error::Missing(
                "redis-server not found (set CACHEBACK_REDIS_SERVER or install redis-server)"
                    .to_owned(),
            )
        })?;
        if matches!(self.transport, Transport::Tls | Transport::TlsFrom(_)) {
            crate::tls::check_openssl()?;
        }
        let mut last = Error::Server("did not start".to_owned());
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..5 {
            let dir = tempfile::tempdir()
                .map_err(|e| Error::Server(format!("cannot make a temp dir: {e}")))?;
            let listen = match &self.transport {
                Transport::Tcp => Listen::Tcp(free_port()?),
                Transport::Unix => Listen::Unix(dir.path().join("redis.sock")),
                Transport::Tls => {
                    crate::tls::make_certificates(dir.path())?;
                    Listen::Tls(free_port()?)
                }
                Transport::TlsFrom(certificates) => {
                    crate::tls::copy_certificates(certificates, dir.path())?;
                    Listen::Tls(free_port()?)
                }
            };
            let mut server = RedisServer {
                binary: binary.clone(),
                listen,
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

    /// Starts the server, or returns `None` after a loud message when `redis-server` (or
    /// `openssl`) is missing and `CACHEBACK_REQUIRE_REDIS` is not set.
    ///
    /// # Panics
    ///
    /// When the server does not start, or a program is missing and `CACHEBACK_REQUIRE_REDIS=1`.
    pub fn start(self) -> Option<RedisServer> {
        match self.try_start() {
            Ok(server) => Some(server),
            Err(Error::Missing(what)) if !required() => {
                eprintln!("\n!!!!!!!!!! {what}: SKIPPING this Redis test !!!!!!!!!!\n");
                None
            }
            Err(Error::Missing(what)) => panic!("CACHEBACK_REQUIRE_REDIS=1 but {what}"),
            Err(e) => panic!("{e}"),
        }
    }
}

/// A `redis-server` owned by one test (or one benchmark run); killed when dropped, its log
/// printed when that happens during a panic.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    pub(crate) listen: Listen,
    dir: tempfile::TempDir,
    args: Vec<OsString>,
    child: Option<Child>,
}

pub(crate) fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CACHEBACK_REDIS_SERVER") {
        return Some(PathBuf::from(path));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("redis-server");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let fallback = PathBuf::from("/usr/bin/redis-server");
    fallback.is_file().then_some(fallback)
}

/// Whether a missing program fails instead of skipping (`CACHEBACK_REQUIRE_REDIS=1`).
pub(crate) fn required() -> bool {
    std::env::var("CACHEBACK_REQUIRE_REDIS").is_ok_and(|v| v == "1" || v == "true")
}

/// A loopback port nothing listens on right now (the OS picks it).
pub(crate) fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Server(format!("cannot find a free port: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Server(format!("cannot find a free port: {e}")))?
        .port();
    assert_ne!(port, 6379, "never the shared Redis");
    Ok(port)
}

impl RedisServer {
    /// A server to configure before starting it (unix socket, TLS, extra arguments).
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// A server on a free loopback TCP port, or `None` (after a loud message) when
    /// `redis-server` is not installed and `CACHEBACK_REQUIRE_REDIS` is not set.
    ///
    /// # Panics
    ///
    /// See [`RedisServerBuilder::start`].
    pub fn start() -> Option<RedisServer> {
        Self::builder().start()
    }

    /// A server on a unix socket in its temp dir (TCP off); see [`RedisServer::start`].
    pub fn start_unix() -> Option<RedisServer> {
        Self::builder().unix_socket().start()
    }

    /// A TLS-only server (`rediss://`); see [`RedisServerBuilder::tls`] and
    /// [`RedisServer::start`].
    pub fn start_tls() -> Option<RedisServer> {
        Self::builder().tls().start()
    }

    /// A server on a free loopback TCP port, or why not (for harnesses that report errors
    /// rather than skip).
    ///
    /// # Errors
    ///
    /// See [`RedisServerBuilder::try_start`].
    pub fn try_start() -> Result<RedisServer, Error> {
        Self::builder().try_start()
    }

    /// The server's temp dir: its log, its socket or certificates, and `dump.rdb` after
    /// [`RedisServer::stop_saving`].
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("redis.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The arguments of `redis-server`: no persistence, loopback, the listener, the extras.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir())
            .arg("--logfile")
            .arg(self.log_path())
            .args(["--daemonize", "no"]);
        match &self.listen {
            Listen::Tcp(port) => {
                cmd.arg("--port").arg(port.to_string());
            }
            Listen::Unix(path) => {
                cmd.args(["--port", "0", "--unixsocket"])
                    .arg(path)
                    .args(["--unixsocketperm", "700"]);
            }
            Listen::Tls(port) => {
                cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                    .args(crate::tls::server_args(self.dir()));
            }
        }
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Starts the process and waits (up to 10 s) for `PING`; on failure the error holds the log.
    fn spawn(&mut self) -> Result<(), Error> {
        let child = self
            .command()
            .spawn()
            .map_err(|e| Error::Server(format!("cannot spawn {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(Error::Server(format!(
                    "exited with {status}\n{}",
                    self.log()
                )));
            }
            if self.ping() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(Error::Server(format!(
                    "no PING answer within 10 s\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server (SIGKILL) and waits for it to exit. Data is lost (no persistence).
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Kills the server and starts it again on the same port or socket, empty.
    ///
    /// # Panics
    ///
    /// When it does not answer again within 10 s.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.start_again() {
                Ok(()) => return,
                // The port can linger for a moment after the kill.
                Err(e) if Instant::now() > deadline => panic!("restart failed: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Stops the server with `SHUTDOWN SAVE` (its data goes to `dump.rdb` in its dir, although
    /// it runs without save points) and waits (up to 10 s) for the process to exit. Start it
    /// again with [`RedisServer::start_again`]; dropping a stopped server is fine.
    ///
    /// # Errors
    ///
    /// When the server refused (it could not save) or did not exit in time (it is killed then).
    pub fn stop_saving(&mut self) -> Result<(), Error> {
        // The server closes the connection without a reply when it shuts down; an error reply
        // means it refused.
        if let Err(e) = self.query_raw::<redis::Value>(&["SHUTDOWN", "SAVE"])
            && matches!(
                e.kind(),
                redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
            )
        {
            return Err(Error::Server(format!("SHUTDOWN SAVE refused: {e}")));
        }
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            match self.child.as_mut().map(Child::try_wait) {
                None | Some(Ok(Some(_))) => {
                    self.child = None;
                    return Ok(());
                }
                Some(Ok(None)) => std::thread::sleep(Duration::from_millis(5)),
                Some(Err(e)) => return Err(Error::Server(format!("waiting for the exit: {e}"))),
            }
        }
        self.kill();
        Err(Error::Server(format!(
            "did not exit within 10 s of SHUTDOWN SAVE (killed)\n{}",
            self.log()
        )))
    }

    /// Starts a stopped server again on the same port or socket and dir, so it loads what
    /// [`RedisServer::stop_saving`] saved, and waits (up to 10 s) until it answers `PING`.
    ///
    /// # Errors
    ///
    /// When it is still running, or did not start (with its log).
    pub fn start_again(&mut self) -> Result<(), Error> {
        if self.is_running() {
            return Err(Error::Server("still running".to_owned()));
        }
        self.spawn()
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- redis-server log ({}) ----\n{}---- end of redis-server log ----",
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
    fn a_server_starts_answers_and_stops() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        assert!(server.url().starts_with("redis://127.0.0.1:"));
        let _: () = server.cmd(&["SET", "a", "1"]);
        assert_eq!(server.command_calls("set"), 1);
        let port = server.port();
        drop(server);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn a_server_restarts_with_its_data_after_a_saving_stop() {
        let Some(mut server) = RedisServer::start() else {
            return;
        };
        let _: () = server.cmd(&["SET", "a", "1"]);
        server.stop_saving().expect("SHUTDOWN SAVE");
        assert!(server.query::<String>(&["PING"]).is_err());
        server.start_again().expect("starts again");
        assert_eq!(server.cmd::<String>(&["GET", "a"]), "1");
        assert!(server.start_again().is_err(), "already running");
    }

    #[test]
    fn a_restart_after_a_kill_is_empty() {
        let Some(mut server) = RedisServer::start() else {
            return;
        };
        let _: () = server.cmd(&["SET", "a", "1"]);
        server.stop();
        assert!(!server.is_running());
        server.restart();
        assert_eq!(server.cmd::<Option<String>>(&["GET", "a"]), None);
    }

    #[test]
    fn extra_arguments_reach_the_server() {
        let Some(server) = RedisServer::builder()
            .arg("--maxmemory")
            .arg("12345678")
            .start()
        else {
            return;
        };
        let config: Vec<String> = server.cmd(&["CONFIG", "GET", "maxmemory"]);
        assert_eq!(config, ["maxmemory", "12345678"]);
    }
}
