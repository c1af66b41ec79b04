//! Test support: a throwaway `redis-server` per test (or per group of tests).
//!
//! [`RedisServer::start`] spawns `redis-server` on a free loopback port in a temp dir (no
//! persistence), waits for `PING`, and kills it on drop, printing its log when the test
//! failed. [`RedisServer::stop`] and [`RedisServer::restart`] (same port) inject faults.
//!
//! When the binary is missing the tests skip with a loud message, unless
//! `CACHEBACK_REQUIRE_REDIS=1`, where they fail. The binary is `$CACHEBACK_REDIS_SERVER`, else
//! `redis-server` on `PATH`, else `/usr/bin/redis-server`. Never the shared server on 6379.

#![allow(dead_code, unreachable_pub)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the server listens.
#[derive(Debug, Clone)]
enum Listen {
    Tcp(u16),
    Unix(PathBuf),
    /// TLS only (plain TCP off), with a throwaway CA in the server's temp dir.
    Tls(u16),
}

/// A `redis-server` owned by one test.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    listen: Listen,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn binary() -> Option<PathBuf> {
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

fn required() -> bool {
    std::env::var("CACHEBACK_REQUIRE_REDIS").is_ok_and(|v| v == "1" || v == "true")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let port = listener.local_addr().expect("local addr").port();
    assert_ne!(port, 6379, "never the shared Redis");
    port
}

impl RedisServer {
    /// A server on a free loopback TCP port, or `None` (after a loud message) when
    /// `redis-server` is not installed and `CACHEBACK_REQUIRE_REDIS` is not set.
    pub fn start() -> Option<RedisServer> {
        Self::start_with(|| Listen::Tcp(free_port()))
    }

    /// A server on a unix socket in its temp dir (TCP off).
    pub fn start_unix() -> Option<RedisServer> {
        Self::start_with(|| Listen::Unix(PathBuf::new()))
    }

    /// A TLS-only server (`rediss://`) with a certificate for `127.0.0.1` signed by a throwaway
    /// CA ([`RedisServer::ca_pem`]); needs the `openssl` command.
    pub fn start_tls() -> Option<RedisServer> {
        let openssl = Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !openssl {
            let message = "the openssl command is missing (it makes the test certificates): \
                           SKIPPING this Redis TLS test";
            if required() {
                panic!("CACHEBACK_REQUIRE_REDIS=1 but {message}");
            }
            eprintln!("\n!!!!!!!!!! {message} !!!!!!!!!!\n");
            return None;
        }
        Self::start_with(|| Listen::Tls(free_port()))
    }

    /// The PEM of the CA that signed a TLS server's certificate.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca.crt")).expect("a TLS server's CA")
    }

    fn make_certificates(&self) -> Result<(), String> {
        let dir = self.dir.path();
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")
            .map_err(|e| e.to_string())?;
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=cacheback test CA",
            ],
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .map_err(|e| format!("cannot run openssl: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "openssl {args:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(())
    }

    fn start_with(listen: impl Fn() -> Listen) -> Option<RedisServer> {
        let Some(binary) = binary() else {
            let message = "redis-server not found (set CACHEBACK_REDIS_SERVER or install \
                           redis-server): SKIPPING this Redis test";
            if required() {
                panic!("CACHEBACK_REQUIRE_REDIS=1 but {message}");
            }
            eprintln!("\n!!!!!!!!!! {message} !!!!!!!!!!\n");
            return None;
        };
        let mut last_log = String::new();
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let listen = match listen() {
                Listen::Unix(_) => Listen::Unix(dir.path().join("redis.sock")),
                tcp => tcp,
            };
            let mut server = RedisServer {
                binary: binary.clone(),
                listen,
                dir,
                child: None,
            };
            if matches!(server.listen, Listen::Tls(_))
                && let Err(e) = server.make_certificates()
            {
                panic!("cannot make TLS certificates: {e}");
            }
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server did not start; last log:\n{last_log}");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts the process and waits (bounded) for `PING`. On failure returns the log.
    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .arg("--daemonize")
            .arg("no");
        match &self.listen {
            Listen::Tcp(port) => {
                cmd.arg("--port").arg(port.to_string());
            }
            Listen::Unix(path) => {
                cmd.arg("--port")
                    .arg("0")
                    .arg("--unixsocket")
                    .arg(path)
                    .arg("--unixsocketperm")
                    .arg("700");
            }
            Listen::Tls(port) => {
                let file = |name: &str| self.dir.path().join(name);
                cmd.arg("--port")
                    .arg("0")
                    .arg("--tls-port")
                    .arg(port.to_string())
                    .arg("--tls-cert-file")
                    .arg(file("server.crt"))
                    .arg("--tls-key-file")
                    .arg(file("server.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(file("ca.crt"))
                    .arg("--tls-auth-clients")
                    .arg("no");
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot spawn {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("exited with {status}\n{}", self.log()));
            }
            if self.ping() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("no PING answer within 10 s\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A client for this server (trusting a TLS server's CA).
    pub fn client(&self) -> redis::Client {
        match &self.listen {
            Listen::Tls(_) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(self.ca_pem()),
                },
            )
            .expect("TLS client"),
            _ => redis::Client::open(self.url()).expect("client"),
        }
    }

    fn ping(&self) -> bool {
        let client = self.client();
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut conn).is_ok()
    }

    /// The server's URL (`redis://127.0.0.1:PORT` or `redis+unix:///…/redis.sock`).
    pub fn url(&self) -> String {
        match &self.listen {
            Listen::Tcp(port) => format!("redis://127.0.0.1:{port}"),
            Listen::Unix(path) => format!("redis+unix://{}", path.display()),
            Listen::Tls(port) => format!("rediss://127.0.0.1:{port}"),
        }
    }

    /// The TCP port (panics for a unix-socket server).
    pub fn port(&self) -> u16 {
        match &self.listen {
            Listen::Tcp(port) | Listen::Tls(port) => *port,
            Listen::Unix(_) => panic!("a unix-socket server has no port"),
        }
    }

    /// The unix socket path, if that is how it listens.
    pub fn socket(&self) -> Option<&Path> {
        match &self.listen {
            Listen::Unix(path) => Some(path),
            Listen::Tcp(_) | Listen::Tls(_) => None,
        }
    }

    /// A plain synchronous connection, for setting up and inspecting state in tests.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the test redis-server")
    }

    /// Runs one command on a fresh connection.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.conn())
            .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
    }

    /// How many times `command` (lowercase, e.g. `"get"`) ran, from `INFO commandstats`.
    pub fn command_calls(&self, command: &str) -> u64 {
        let info: String = self.cmd(&["INFO", "commandstats"]);
        let needle = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&needle))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Total commands processed by the server (every command, `INFO` included).
    pub fn total_commands(&self) -> u64 {
        let info: String = self.cmd(&["INFO", "stats"]);
        info.lines()
            .find_map(|line| line.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Kills the server (SIGKILL) and waits for it to exit. Data is lost (no persistence).
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port or socket.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The port can linger for a moment after the kill.
                Err(log) if Instant::now() > deadline => panic!("restart failed:\n{log}"),
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

    /// The server's log so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.log_path()) {
            let _ = file.read_to_string(&mut text);
        }
        text
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

/// A prefix unique to this call, so tests sharing a server never see each other's keys.
pub fn unique_prefix(name: &str) -> String {
    format!("{name}-{:08x}", fastrand_u32())
}

fn fastrand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// Polls `check` every 5 ms until it holds or `within` passes; panics with `what` then.
/// For conditions that depend on real Redis round trips (never for correctness by sleeping).
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
