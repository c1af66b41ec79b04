//! A real fleet for the command's tests: web and worker processes (the test binary re-invoked
//! with a role; each test binary's `child_process` test calls [`child_main`]), each a client on
//! a spawned Redis's store and queue, and the `cacheback` command run against it.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cacheback::fleet_stats::StatsPublisher;
use cacheback::{Cacheback, Job, Policy, RedisQueue, RedisStore, Status, Worker};
use cacheback_test_support::process::{Proc, field, finish, role, spawn_self};
use cacheback_test_support::{RedisServer, unique_prefix};
use serde_json::Value;

pub const WITHIN: Duration = Duration::from_secs(30);

/// A user's profile: the job every process of the fleet knows.
#[derive(Debug)]
pub struct Profile;

impl Job for Profile {
    type Args = String;
    type Value = String;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        "profile"
    }

    fn policy(&self) -> Policy {
        Policy::default()
            .lifetime(Duration::from_secs(3600))
            .fetch_on_miss(false)
    }

    async fn fetch(&self, user: String) -> Result<String, std::io::Error> {
        Ok(format!("profile of {user}"))
    }
}

/// A report: a job the web processes of a new release read before any worker knows it.
#[derive(Debug)]
pub struct Report;

impl Job for Report {
    type Args = u32;
    type Value = String;
    type Error = std::io::Error;

    fn name(&self) -> &str {
        "report"
    }

    fn policy(&self) -> Policy {
        Policy::default()
            .lifetime(Duration::from_secs(3600))
            .fetch_on_miss(false)
    }

    async fn fetch(&self, n: u32) -> Result<String, std::io::Error> {
        Ok(format!("report {n}"))
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set for children"))
}

fn list(name: &str) -> Vec<String> {
    env(name)
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A process's client on the fleet's Redis store and queue.
pub fn client(url: &str, prefix: &str) -> Cacheback {
    client_with(url, prefix, false)
}

fn client_with(url: &str, prefix: &str, fleet_stats: bool) -> Cacheback {
    let queue = RedisQueue::builder(url)
        .poll_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    Cacheback::builder()
        .prefix(prefix)
        .store(RedisStore::from_url(url).unwrap())
        .queue(queue)
        .fleet_stats(fleet_stats)
        .build()
        .unwrap()
}

/// The children's entry point: `web` reads (each miss enqueues one refresh), `web-live` does
/// too, then publishes its counts every 200 ms until killed; `worker` and `worker-v2` (which
/// knows `report` too) run refreshes until killed.
pub fn child_main() {
    let Some(role) = role() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (url, live) = (env("CB_URL"), role == "web-live");
        let cache = client_with(&url, &env("CB_PREFIX"), live);
        let profiles = cache.job(Profile);
        match role.as_str() {
            "web" | "web-live" => {
                let reports = cache.job(Report);
                let mut enqueued = 0;
                for user in list("CB_USERS") {
                    let read = profiles.get_with_status(user).await.unwrap();
                    assert_eq!(read.status, Status::Miss);
                    enqueued += u32::from(read.refresh_triggered);
                }
                for n in list("CB_REPORTS") {
                    let read = reports.get_with_status(n.parse().unwrap()).await.unwrap();
                    enqueued += u32::from(read.refresh_triggered);
                }
                println!("WEB enqueued={enqueued}");
                if live {
                    let publisher = StatsPublisher::builder(&cache, &url)
                        .interval(Duration::from_millis(200))
                        .build()
                        .unwrap();
                    publisher.run_until(std::future::pending()).await;
                }
                cache.shutdown(Duration::from_secs(5)).await;
            }
            "worker" | "worker-v2" => {
                if role == "worker-v2" {
                    cache.job(Report);
                }
                let worker = Worker::builder(&cache).build().unwrap();
                worker.run_until(std::future::pending()).await;
            }
            other => panic!("unknown role {other}"),
        }
    });
}

/// The fleet of one test: its Redis and prefix.
pub struct Fleet {
    pub server: RedisServer,
    pub prefix: String,
}

/// What one run of the command printed, and its exit code.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Fleet {
    pub fn start(name: &str) -> Option<Fleet> {
        Some(Fleet {
            server: RedisServer::start()?,
            prefix: unique_prefix(name),
        })
    }

    pub fn vars(&self, users: &str, reports: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CB_URL", self.server.url()),
            ("CB_PREFIX", self.prefix.clone()),
            ("CB_USERS", users.to_owned()),
            ("CB_REPORTS", reports.to_owned()),
        ]
    }

    /// Runs a web process that reads these users' profiles and these reports, all misses;
    /// returns how many refreshes it enqueued.
    pub fn web(&self, users: &str, reports: &str) -> u64 {
        let lines = finish(spawn_self("web", &self.vars(users, reports)), "WEB", WITHIN);
        field(&lines[0], "enqueued")
    }

    /// A web process that reads like [`Fleet::web`], then stays up publishing its counts.
    pub fn live_web(&self, users: &str, reports: &str) -> Proc {
        spawn_self("web-live", &self.vars(users, reports))
    }

    pub fn worker(&self, role: &str) -> Proc {
        spawn_self(role, &self.vars("", ""))
    }

    /// Reads these users' profiles from this process (all misses: each enqueues a refresh) and
    /// returns how many refreshes it enqueued: quicker than [`Fleet::web`], for a change that
    /// must land between two screens of `top`.
    pub fn read_here(&self, users: &[&str]) -> u64 {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let cache = client(&self.server.url(), &self.prefix);
            let profiles = cache.job(Profile);
            let mut enqueued = 0;
            for user in users {
                let read = profiles.get_with_status((*user).to_owned()).await.unwrap();
                assert_eq!(read.status, Status::Miss);
                enqueued += u64::from(read.refresh_triggered);
            }
            // The enqueues finish in the background; shutting down waits for them.
            cache.shutdown(Duration::from_secs(5)).await;
            enqueued
        })
    }

    /// `cacheback --url .. --prefix .. ARGS` with no terminal (stdin closed), not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cacheback"));
        command
            .args(["--url", &self.server.url(), "--prefix", &self.prefix])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Runs `cacheback --url .. --prefix .. ARGS` with no terminal.
    pub fn cli(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("run cacheback");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a command that must succeed, with `--json`, and parses what it printed.
    pub fn json(&self, args: &[&str]) -> Value {
        let run = self.cli(&[args, &["--json"]].concat());
        assert_eq!(run.code, 0, "{args:?} failed: {run:?}");
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {run:?}"))
    }

    /// How many dead letters queue `default` holds, as `dead-letters list --json` says.
    pub fn dead_letters(&self) -> usize {
        let listed = self.json(&["dead-letters", "list", "default"]);
        listed.as_array().map_or(0, Vec::len)
    }

    /// Queue `default`'s depth (requests waiting) and dead letters, as `queues --json` says.
    pub fn depth_and_dead_letters(&self) -> (u64, u64) {
        let queues = self.json(&["queues", "default"]);
        let count = |field: &str| {
            queues[0][field]
                .as_u64()
                .unwrap_or_else(|| panic!("no {field} in {queues}"))
        };
        (count("depth"), count("dead_letters"))
    }

    /// Runs a command that must succeed and returns its table.
    pub fn table(&self, args: &[&str]) -> String {
        let run = self.cli(args);
        assert_eq!(run.code, 0, "{args:?} failed: {run:?}");
        run.stdout
    }

    /// The key text a client of this fleet derives for `args` of `job`.
    pub fn key<J: Job>(&self, job: J, args: &J::Args) -> String {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in = rt.enter();
        let key = client(&self.server.url(), &self.prefix).job(job).key(args);
        key.unwrap()
    }
}

/// The line of a table whose first cell is `first`.
pub fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row `{first}` in\n{table}"))
}

/// The lines `from` prints, as they come (read on a thread until it closes).
pub fn lines(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line of `lines` that `wanted` accepts, waiting at most [`WITHIN`] in all; panics
/// (with the lines skipped) when none comes.
pub fn next_line(
    lines: &mpsc::Receiver<String>,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + WITHIN;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return line,
            Ok(line) => skipped.push(line),
            Err(e) => panic!("no {what} ({e}); got {skipped:#?}"),
        }
    }
}

/// A child process killed (and waited for) when dropped, so that a failed test leaves none
/// running.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Presses Ctrl-C in `child`: sends it SIGINT.
pub fn ctrl_c(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -INT: {status}");
}

/// Waits at most [`WITHIN`] for `child` to exit and returns its exit code (killing it and
/// panicking if it does not).
pub fn exit_code(child: &mut Child) -> i32 {
    let deadline = Instant::now() + WITHIN;
    loop {
        if let Some(status) = child.try_wait().expect("the command's status") {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the command did not exit within {WITHIN:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
