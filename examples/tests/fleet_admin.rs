//! The admin subcommands as a service mounts them (`fleet_admin`), against a real Redis:
//! each command's output and exit code, the key being the fleet's own, and a warm stopped by
//! Ctrl-C then resumed where it stopped.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cacheback_examples::fleet::FleetArgs;
use cacheback_test_support::{RedisServer, unique_prefix};
use serde_json::Value;

const WITHIN: Duration = Duration::from_secs(30);

struct Service {
    server: RedisServer,
    prefix: String,
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Service {
    fn start() -> Option<Service> {
        Some(Service {
            server: RedisServer::start()?,
            prefix: unique_prefix("admin"),
        })
    }

    fn command(&self, upstream_ms: u64, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet_admin"));
        cmd.args(["--redis-url", &self.server.url(), "--prefix", &self.prefix])
            .args(["--upstream-ms", &upstream_ms.to_string(), "admin"])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn admin(&self, args: &[&str]) -> Run {
        let out = self.command(0, args).output().expect("run fleet_admin");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn json(&self, args: &[&str]) -> Value {
        let run = self.admin(&[args, &["--json"]].concat());
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {run:?}"))
    }

    /// The fleet's own client, as `fleet_web` builds it.
    fn fleet_args(&self) -> FleetArgs {
        FleetArgs {
            redis_url: self.server.url(),
            prefix: self.prefix.clone(),
            lifetime_secs: 10,
            upstream_ms: 0,
        }
    }
}

#[tokio::test]
async fn admin_commands_act_on_the_fleets_own_keys() {
    let Some(svc) = Service::start() else { return };
    let fleet = svc.fleet_args().connect(|q| q).unwrap();
    let alice = fleet.tweets.key(&"alice".to_owned()).unwrap();

    assert_eq!(svc.json(&["jobs"]), serde_json::json!(["user_tweets"]));
    let run = svc.admin(&["inspect", "user_tweets", "\"alice\""]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains(&format!("no entry at key `{alice}`")),
        "{run:?}"
    );
    let run = svc.admin(&["inspect", "user_tweets", "alice"]);
    assert_eq!(run.code, 2, "not JSON: {run:?}");
    assert!(
        run.stderr
            .contains("is not valid args of job `user_tweets`"),
        "{run:?}"
    );
    let run = svc.admin(&["inspect", "nope", "1"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("no job `nope` (known: user_tweets)"),
        "{run:?}"
    );

    // refresh: fetched in the admin process, written under the key the fleet reads.
    let refreshed = svc.json(&["refresh", "user_tweets", "\"alice\""]);
    assert_eq!(refreshed["key"], alice.as_str());
    assert_eq!(refreshed["value"][0]["text"], "alice: tweet 1");
    let read = fleet
        .tweets
        .get_with_status("alice".to_owned())
        .await
        .unwrap();
    assert_eq!(
        read.status,
        cacheback::Status::Hit,
        "the fleet reads what admin wrote"
    );

    let shown = svc.json(&["inspect", "user_tweets", "\"alice\""]);
    assert_eq!(shown["key"], alice.as_str());
    assert_eq!(shown["state"], "fresh");
    assert_eq!(shown["generation"], 1);
    assert_eq!(shown["value"].as_array().unwrap().len(), 3);
    let table = svc.admin(&["inspect", "user_tweets", "\"alice\""]).stdout;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("state") && l.ends_with("fresh")),
        "{table}"
    );
    assert!(table.contains("alice: tweet 3"), "{table}");

    // invalidate: stale (still served), one refresh waiting on the queue (no worker runs).
    let done = svc.json(&["invalidate", "user_tweets", "\"alice\""]);
    assert_eq!(done["done"], "invalidated, refresh enqueued");
    let shown = svc.json(&["inspect", "user_tweets", "\"alice\""]);
    assert_eq!(shown["state"], "stale");
    assert_eq!(shown["generation"], 2);
    assert_eq!(fleet.queue.len("default").await.unwrap(), 1);

    // delete: asks first.
    let run = svc.admin(&["delete", "user_tweets", "\"alice\""]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("--yes"), "{run:?}");
    let run = svc.admin(&["delete", "user_tweets", "\"alice\"", "--yes"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.trim(), format!("deleted: {alice}"));
    assert_eq!(svc.admin(&["inspect", "user_tweets", "\"alice\""]).code, 3);

    // Tag commands act on the prefix; deleting a tag asks first, like deleting an entry.
    let run = svc.admin(&["delete-tag", "user:alice"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("--yes"), "{run:?}");
    let done = svc.json(&["invalidate-tag", "user:alice"]);
    assert_eq!(done["done"], "invalidated");
    assert_eq!(done["prefix"], svc.prefix.as_str());
}

/// Reads a child's stderr lines into a channel.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The number after `--skip ` in a summary line.
fn skip_of(summary: &str) -> u64 {
    let at = summary
        .find("--skip ")
        .unwrap_or_else(|| panic!("no --skip in {summary:?}"));
    summary[at + 7..].trim().parse().unwrap()
}

#[tokio::test]
async fn warm_stops_on_ctrl_c_and_resumes_where_it_stopped() {
    let Some(svc) = Service::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.jsonl");
    let mut file = std::fs::File::create(&path).unwrap();
    for i in 1..=40 {
        writeln!(file, "\"user{i}\"").unwrap();
    }
    drop(file);
    let path = path.to_str().unwrap();

    // 100 ms per fetch, one at a time: about 4 s in all. Without a terminal, progress is a
    // plain line a second; at the first one, Ctrl-C.
    let mut child = svc
        .command(100, &["warm", "user_tweets", path, "--concurrency", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    let progress = lines.recv_timeout(WITHIN).expect("a progress line");
    assert!(
        progress.starts_with("warmed ") && progress.contains("/40 ("),
        "{progress}"
    );
    assert!(progress.contains("ETA"), "{progress}");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("interrupted by Ctrl-C"), "{stdout}");
    let done = skip_of(&stdout);
    assert!((1..40).contains(&done), "stopped early: {stdout}");
    assert!(
        stdout.starts_with(&format!("warmed {done} keys")),
        "{stdout}"
    );

    // Resumed with the printed --skip: exactly the rest is warmed.
    let rest = svc
        .command(
            0,
            &[
                "warm",
                "user_tweets",
                path,
                "--skip",
                &done.to_string(),
                "--json",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(rest.status.code(), Some(0));
    let summary: Value = serde_json::from_slice(&rest.stdout).unwrap();
    assert_eq!(summary["refreshed"], 40 - done, "{summary}");
    assert_eq!(summary["lines_done"], 40);
    assert_eq!(summary["interrupted"], false);
    for user in ["\"user1\"", "\"user40\""] {
        assert_eq!(svc.json(&["inspect", "user_tweets", user])["generation"], 1);
    }

    // A line that is not args of the job is reported, and fails the run.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "\"ok\"\n42\n").unwrap();
    let run = svc.admin(&["warm", "user_tweets", bad.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    let summary: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(summary["refreshed"], 1);
    assert_eq!(summary["bad_lines"][0][0], 2, "{summary}");
}
