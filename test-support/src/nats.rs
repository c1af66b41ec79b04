//! A throwaway `nats-server -js` per test binary: a free loopback port, JetStream storage in a
//! temp dir, killed on drop (its log printed when that happens during a panic).
//! [`NatsServer::stop`] and [`NatsServer::start_again`] restart it on the same port with its
//! streams intact, for fault tests.
//!
//! When the binary is missing, [`NatsServer::start`] skips with a loud message (it returns
//! `None`), unless `CACHEBACK_REQUIRE_NATS=1`, where it panics. The binary is
//! `$CACHEBACK_NATS_SERVER`, else `nats-server` on `PATH`.
//!
//! ```no_run
//! use cacheback_test_support::nats::NatsServer;
//!
//! let Some(mut server) = NatsServer::start() else {
//!     return; // skipped, loudly
//! };
//! println!("{}", server.url());
//! server.stop();
//! server.start_again();
//! ```

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;
use crate::server::free_port;

/// How long a server may take to accept connections.
const PATIENCE: Duration = Duration::from_secs(10);

/// A `nats-server` with JetStream, owned by one test binary.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn required() -> bool {
    std::env::var("CACHEBACK_REQUIRE_NATS").is_ok_and(|v| v == "1" || v == "true")
}

fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CACHEBACK_NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

impl NatsServer {
    /// A server on a free port, or `None` (after a loud message) when `nats-server` is not
    /// installed and `CACHEBACK_REQUIRE_NATS` is not set.
    ///
    /// # Panics
    ///
    /// When the server does not start, or the binary is missing and `CACHEBACK_REQUIRE_NATS=1`.
    pub fn start() -> Option<NatsServer> {
        match Self::try_start() {
            Ok(server) => Some(server),
            Err(Error::Missing(what)) if !required() => {
                eprintln!("\n!!!!!!!!!! {what}: SKIPPING these NATS tests !!!!!!!!!!\n");
                None
            }
            Err(Error::Missing(what)) => panic!("CACHEBACK_REQUIRE_NATS=1 but {what}"),
            Err(e) => panic!("{e}"),
        }
    }

    /// A server on a free port, or why not.
    pub fn try_start() -> Result<NatsServer, Error> {
        let binary =
            binary().ok_or_else(|| Error::Missing("nats-server is not installed".into()))?;
        let dir = tempfile::tempdir()
            .map_err(|e| Error::Broker(format!("nats-server: no temp dir: {e}")))?;
        let mut server = NatsServer {
            binary,
            port: free_port()?,
            dir,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let store = self.dir.path().join("js");
        let child = Command::new(&self.binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&store)
            .arg("-l")
            .arg(self.dir.path().join("nats.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Broker(format!("cannot spawn nats-server: {e}")))?;
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = self.log();
                return Err(Error::Broker(format!(
                    "nats-server exited with {status}\n{log}"
                )));
            }
            if Instant::now() > deadline {
                self.stop();
                let log = self.log();
                return Err(Error::Broker(format!("nats-server did not listen\n{log}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Kills the server (SIGKILL). Its streams stay on disk for [`NatsServer::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again on the same port and storage.
    ///
    /// # Panics
    ///
    /// When it does not start.
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn().unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- nats-server log ({}) ----\n{}---- end of nats-server log ----",
                self.url(),
                self.log()
            );
        }
    }
}
