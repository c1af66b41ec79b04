//! The `cacheback` command against a fleet on a Redis Cluster reached over TLS
//! (`rediss+cluster://`), whose queue is spread over the cluster's default 8 shards: queues
//! add up over the shards, dead letters carry their shard in their id and are shown, replayed
//! onto their shard and purged, entries are read from the master that owns them.
//!
//! The nodes' certificates are signed by a throwaway CA. The command and the fleet's processes
//! trust it the way an operator trusts a private CA, with `SSL_CERT_FILE`; without it the
//! command fails with a clear error.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use cacheback::Job;
use cacheback_test_support::RedisCluster;
use cacheback_test_support::process::{Proc, field, finish, spawn_self, wait_for};
use serde_json::Value;
use support::{Profile, Report, Run, WITHIN};

#[test]
fn child_process() {
    support::child_main();
}

/// A fleet on a TLS cluster: web and worker processes (this binary's children, see
/// `support::child_main`) and the command, all trusting the cluster's CA.
struct ClusterFleet {
    cluster: RedisCluster,
    ca: PathBuf,
    prefix: String,
}

impl ClusterFleet {
    fn start(name: &str) -> Option<ClusterFleet> {
        let cluster = RedisCluster::builder().tls().start()?;
        let ca = cluster.ca_path().expect("a TLS cluster has a CA");
        Some(ClusterFleet {
            cluster,
            ca,
            prefix: cacheback_test_support::unique_prefix(name),
        })
    }

    fn vars(&self, users: &str, reports: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CB_URL", self.cluster.url()),
            ("CB_PREFIX", self.prefix.clone()),
            ("CB_USERS", users.to_owned()),
            ("CB_REPORTS", reports.to_owned()),
            ("SSL_CERT_FILE", self.ca.display().to_string()),
        ]
    }

    /// A web process that reads these users' profiles and these reports (all misses); how
    /// many refreshes it enqueued.
    fn web(&self, users: &str, reports: &str) -> u64 {
        let lines = finish(spawn_self("web", &self.vars(users, reports)), "WEB", WITHIN);
        field(&lines[0], "enqueued")
    }

    fn worker(&self, role: &str) -> Proc {
        spawn_self(role, &self.vars("", ""))
    }

    /// `cacheback --url rediss+cluster://... --prefix .. ARGS`, trusting the CA unless told
    /// not to.
    fn run(&self, args: &[&str], trust: bool) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cacheback"));
        command
            .args(["--url", &self.cluster.url(), "--prefix", &self.prefix])
            .args(args)
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .stdin(Stdio::null());
        if trust {
            command.env("SSL_CERT_FILE", &self.ca);
        }
        let out = command.output().expect("run cacheback");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn cli(&self, args: &[&str]) -> Run {
        self.run(args, true)
    }

    fn json(&self, args: &[&str]) -> Value {
        let run = self.cli(&[args, &["--json"]].concat());
        assert_eq!(run.code, 0, "{args:?} failed: {run:?}");
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {run:?}"))
    }

    /// The key text a client of this fleet derives for `args` of `job`.
    fn key<J: Job>(&self, job: J, args: &J::Args) -> String {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in = rt.enter();
        let client = support::client(&self.cluster.url(), &self.prefix);
        client.job(job).key(args).unwrap()
    }

    fn dead_letters(&self) -> Vec<Value> {
        let listed = self.json(&["dead-letters", "list", "default"]);
        listed.as_array().cloned().unwrap_or_default()
    }
}

#[test]
fn the_command_reads_and_repairs_a_sharded_queue_on_a_tls_cluster() {
    let Some(fleet) = ClusterFleet::start("cli-tls-cluster") else {
        return;
    };
    assert!(fleet.cluster.url().starts_with("rediss+cluster://"));

    // Without the CA the command says what failed, and fails as Redis failures do.
    let run = fleet.run(&["queues"], false);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!run.stderr.is_empty(), "{run:?}");
    assert_eq!(fleet.json(&["queues"]), serde_json::json!([]));

    // Twelve misses, no worker: twelve requests over the queue's shards, counted as one queue.
    let users: Vec<String> = (1..=12).map(|n| format!("user{n}")).collect();
    assert_eq!(fleet.web(&users.join(","), ""), 12);
    let queues = fleet.json(&["queues"]);
    assert_eq!(queues.as_array().unwrap().len(), 1, "{queues}");
    assert_eq!(queues[0]["queue"], "default");
    assert_eq!(queues[0]["depth"], 12, "{queues}");
    // Naming the fleet's number of shards explicitly reads the same.
    assert_eq!(fleet.json(&["queues", "--shards", "8"])[0]["depth"], 12);
    // A wrong number of shards misses the requests in the other shards, it does not fail.
    let one = fleet.json(&["queues", "--shards", "1"]);
    assert!(
        one.as_array().unwrap().is_empty() || one[0]["depth"].as_u64().unwrap() < 12,
        "{one}"
    );

    // A worker of the old release drains them, and dead-letters the reports it does not know.
    let mut old = fleet.worker("worker");
    wait_for("the worker drains the queue", WITHIN, || {
        fleet.json(&["queues"])[0]["depth"] == 0
    });
    let profile = fleet.key(Profile, &"user1".to_owned());
    wait_for("user1's profile is written", WITHIN, || {
        fleet.cli(&["entry", &profile]).code == 0
    });
    let entry = fleet.json(&["entry", &profile]);
    assert_eq!(entry["generation"], 1, "{entry}");

    assert_eq!(fleet.web("", "1,2,3,4,5,6"), 6);
    wait_for("six dead letters", WITHIN, || {
        fleet.dead_letters().len() == 6
    });
    let letters = fleet.dead_letters();
    let mut shards: Vec<&str> = letters
        .iter()
        .map(|l| {
            let id = l["id"].as_str().unwrap();
            let (shard, _) = id
                .split_once('/')
                .unwrap_or_else(|| panic!("a sharded id is `<shard>/<stream id>`: {id}"));
            shard
        })
        .collect();
    shards.sort_unstable();
    shards.dedup();
    assert!(
        shards.len() > 1,
        "six reports land on more than one shard: {letters:?}"
    );
    assert_eq!(fleet.json(&["queues"])[0]["dead_letters"], 6);

    // Shown from its shard; replayed onto it; the new release's worker writes the report.
    let first = letters[0]["id"].as_str().unwrap().to_owned();
    let shown = fleet.json(&["dead-letters", "show", "default", &first]);
    assert_eq!(shown["id"], first.as_str());
    assert_eq!(shown["request"]["job"], "report");
    let key = shown["request"]["key"].as_str().unwrap().to_owned();
    old.kill();
    let _new = fleet.worker("worker-v2");
    let replayed = fleet.json(&["dead-letters", "replay", "default", &first, "--yes"]);
    assert_eq!(replayed["done"], 1, "{replayed}");
    wait_for("the replayed report is written", WITHIN, || {
        fleet.cli(&["entry", &key]).code == 0
    });
    assert_eq!(fleet.dead_letters().len(), 5);
    let missing = format!("{}/1-0", shards[0]);
    assert_eq!(
        fleet
            .cli(&["dead-letters", "show", "default", &missing])
            .code,
        3,
        "an id on a shard that does not hold it"
    );
    let run = fleet.cli(&["dead-letters", "show", "default", "99/1-0"]);
    assert_eq!(run.code, 2, "a shard the queue does not have: {run:?}");

    // Purged over every shard, nothing replayed.
    let purged = fleet.json(&["dead-letters", "purge", "default", "--all", "--yes"]);
    assert_eq!(purged["done"], 5, "{purged}");
    assert!(fleet.dead_letters().is_empty());
    let queues = fleet.json(&["queues"]);
    assert_eq!(
        (
            queues[0]["depth"].as_u64(),
            queues[0]["dead_letters"].as_u64()
        ),
        (Some(0), Some(0)),
        "{queues}"
    );
    let report = fleet.key(Report, &2);
    let run = fleet.cli(&["entry", &report]);
    assert_eq!(run.code, 3, "a purged report is never written: {run:?}");
}
