//! Child processes for fleet tests: the test binary re-invokes itself with a role in
//! `CACHEBACK_CHILD` (the binary's `child_process` test, or its `main`, runs the role), prints
//! `MARKER key=value ...` lines, and the parent reads them back.
//!
//! ```no_run
//! use cacheback_test_support::process::{field, finish, spawn_self};
//! use std::time::Duration;
//!
//! let child = spawn_self("worker", &[("CB_URL", "redis://127.0.0.1:1".to_owned())]);
//! let lines = finish(child, "WORKER", Duration::from_secs(30));
//! assert_eq!(field(&lines[0], "processed"), 1);
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable holding a child's role.
pub const ROLE_VAR: &str = "CACHEBACK_CHILD";

/// The role this process was started with, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// A child process, killed (SIGKILL) if it is dropped before it finished.
#[derive(Debug)]
pub struct Proc(Option<Child>);

impl Proc {
    /// Kills the child with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns this test binary as a child with `role` and the variables `vars`; its stdout is
/// read by [`finish`], its stderr is the test's.
pub fn spawn_self(role: &str, vars: &[(&str, String)]) -> Proc {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "child_process",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE_VAR, role)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    Proc(Some(cmd.spawn().expect("spawn a child process")))
}

/// Waits (bounded) for a child and returns its lines from `marker` on; panics if it failed.
pub fn finish(mut proc: Proc, marker: &str, within: Duration) -> Vec<String> {
    let mut child = proc.0.take().expect("a running child");
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait().expect("the child's status") {
            Some(status) => {
                let out = BufReader::new(child.stdout.take().expect("the child's stdout"));
                // libtest prints "test child_process ... " without a newline before the
                // test's own output: find the marker anywhere in the line.
                let lines: Vec<String> = out
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|l| l.find(marker).map(|at| l[at..].to_owned()))
                    .collect();
                assert!(status.success(), "child failed with {status}: {lines:?}");
                return lines;
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child did not finish within {within:?}");
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Polls `check` every 5 ms until it holds; panics with `what` after `within`.
pub fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The number after `name=` in a `MARKER key=value ...` line.
pub fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}
