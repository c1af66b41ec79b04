//! The `cacheback` command against a real Redis (spawned per test) and a real fleet: web and
//! worker processes (see `support`), each a client on the shared Redis store and queue. Every
//! command's output is checked, as a table and as `--json`.

mod support;

use cacheback_test_support::process::wait_for;
use serde_json::Value;
use support::{Fleet, Profile, Report, WITHIN, row};

#[test]
fn child_process() {
    support::child_main();
}

#[test]
fn queues_show_the_backlog_then_the_workers_that_drain_it() {
    let Some(fleet) = Fleet::start("cli-queues") else {
        return;
    };
    let run = fleet.cli(&["queues"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("no queues under prefix"), "{run:?}");
    assert_eq!(fleet.json(&["queues"]), serde_json::json!([]));

    // Three misses with no worker running: three requests wait, no group reads them yet.
    assert_eq!(fleet.web("alice,bob,carol", ""), 3);
    let queues = fleet.json(&["queues"]);
    assert_eq!(queues[0]["queue"], "default");
    assert_eq!(queues[0]["depth"], 3);
    assert_eq!(queues[0]["dead_letters"], 0);
    assert!(
        queues[0]["oldest_age_ms"].as_u64().unwrap() < 60_000,
        "{queues}"
    );
    assert_eq!(queues[0]["groups"], serde_json::json!([]));
    let table = fleet.table(&["queues"]);
    assert!(table.starts_with("QUEUE"), "{table}");
    let cells = row(&table, "default");
    assert_eq!(cells[1], "3", "{table}");
    assert!(table.contains("(no worker yet)"), "{table}");

    // The claim of a key whose refresh waits is visible before any value exists.
    let alice = fleet.key(Profile, &"alice".to_owned());
    let run = fleet.cli(&["entry", &alice]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("no entry at key"), "{run:?}");

    // A worker starts and drains the stream; it shows as the group's only consumer.
    let _worker = fleet.worker("worker");
    wait_for("the worker drains the queue", WITHIN, || {
        let q = fleet.json(&["queues", "default"]);
        q[0]["depth"] == 0
            && q[0]["groups"][0]["consumers"]
                .as_array()
                .is_some_and(|c| c.len() == 1)
    });
    let queues = fleet.json(&["queues"]);
    let group = &queues[0]["groups"][0];
    assert_eq!(group["name"], "cacheback-workers");
    assert_eq!(group["pending"], 0);
    assert_eq!(group["lag"], 0, "{group}");
    assert_eq!(queues[0]["oldest_age_ms"], Value::Null);
    let consumer = &group["consumers"][0];
    assert_eq!(consumer["pending"], 0);
    assert!(consumer["idle_ms"].as_u64().unwrap() < 60_000, "{consumer}");
    let table = fleet.table(&["queues"]);
    let cells = row(&table, "default");
    assert_eq!(&cells[..3], ["default", "0", "-"], "{table}");
    assert_eq!(cells[4..], ["cacheback-workers", "0", "0", "1"], "{table}");
    assert!(table.contains("CONSUMER"), "{table}");
    assert!(
        table.contains(consumer["name"].as_str().unwrap()),
        "{table}"
    );

    // Entries by raw key: the worker wrote alice's profile once, released the claim.
    let entry = fleet.json(&["entry", &alice]);
    assert_eq!(entry["key"], alice.as_str());
    assert_eq!(entry["state"], "fresh");
    assert_eq!(entry["generation"], 1);
    assert_eq!(entry["claim"], Value::Null);
    assert_eq!(entry["failures"], 0);
    assert!(entry["age_ms"].as_u64().unwrap() < 60_000, "{entry}");
    assert_eq!(
        entry["size"],
        "profile of alice".len() + 1,
        "postcard: length, bytes"
    );
    let table = fleet.table(&["entry", &format!("{{{alice}}}")]);
    assert_eq!(row(&table, "state")[1], "fresh", "{table}");
    assert_eq!(row(&table, "generation")[1], "1", "{table}");
    assert_eq!(row(&table, "claim")[1], "none", "{table}");

    // Bad input: a key that does not parse, a key of another prefix.
    let run = fleet.cli(&["entry", "not-a-key"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("is not a key"), "{run:?}");
    let other = alice.replacen(&fleet.prefix, "other", 1);
    assert_eq!(fleet.cli(&["entry", &other]).code, 2);

    // top: nothing published yet, then a web process that publishes its counts.
    let screen = fleet.table(&["top", "--iterations", "1"]);
    assert!(screen.starts_with("cacheback top  prefix"), "{screen}");
    assert!(screen.contains("no job counts published"), "{screen}");
    assert!(
        screen.contains("cacheback-workers"),
        "the queues too: {screen}"
    );
    let _web = fleet.live_web("eve,fay", "");
    wait_for("the web process's counts", WITHIN, || {
        let screen = fleet.json(&["top", "--iterations", "1"]);
        screen["jobs"][0]["misses"] == 2
    });
    let screen = fleet.json(&["top", "--iterations", "1"]);
    assert_eq!(screen["processes"], 1);
    assert_eq!(screen["jobs"][0]["job"], "profile");
    assert_eq!(screen["queues"][0]["queue"], "default");
    let lines = fleet.table(&["top", "--iterations", "2", "--interval", "0.1"]);
    assert_eq!(
        lines.matches("cacheback top").count(),
        2,
        "two screens: {lines}"
    );
    let cells = row(&lines, "profile");
    assert_eq!(cells[3], "2", "JOB HITS STALE MISSES: {lines}");
}

#[test]
fn dead_letters_are_listed_shown_replayed_and_purged() {
    let Some(fleet) = Fleet::start("cli-dead") else {
        return;
    };
    // Old workers do not know `report`: each report read is dead-lettered.
    let mut old = fleet.worker("worker");
    assert_eq!(fleet.web("", "1,2,3"), 3);
    wait_for("three dead letters", WITHIN, || fleet.dead_letters() == 3);
    let letters = fleet.json(&["dead-letters", "list", "default"]);
    for letter in letters.as_array().unwrap() {
        assert_eq!(letter["job"], "report");
        assert_eq!(letter["attempt"], 1);
        let reason = letter["reason"].as_str().unwrap();
        assert!(reason.contains("unknown job `report`"), "{reason}");
    }
    let table = fleet.table(&["dead-letters", "list", "default"]);
    assert_eq!(table.lines().count(), 4, "a header and 3 rows: {table}");
    let first = letters[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        row(&table, &first)[4],
        "report",
        "id, age (2 words), attempt, job: {table}"
    );
    assert_eq!(fleet.json(&["queues"])[0]["dead_letters"], 3);

    // Show: the reason, the decoded request and the raw payload.
    let shown = fleet.json(&["dead-letters", "show", "default", &first]);
    assert_eq!(shown["id"], first.as_str());
    let key = shown["request"]["key"].as_str().unwrap().to_owned();
    assert!(
        key.starts_with(&format!("{}:report:", fleet.prefix)),
        "{shown}"
    );
    assert_eq!(shown["request"]["job"], "report");
    assert!(!shown["message_hex"].as_str().unwrap().is_empty());
    let table = fleet.table(&["dead-letters", "show", "default", &first]);
    assert!(table.contains("unknown job `report`"), "{table}");
    assert_eq!(row(&table, "key")[1], key, "{table}");
    assert_eq!(
        fleet.cli(&["dead-letters", "show", "default", "1-0"]).code,
        3
    );
    assert_eq!(
        fleet
            .cli(&["dead-letters", "show", "default", "bogus"])
            .code,
        2
    );

    // No write without --yes (and no terminal to ask on).
    let run = fleet.cli(&["dead-letters", "replay", "default", &first]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("--yes"), "{run:?}");
    let run = fleet.cli(&["dead-letters", "replay", "default"]);
    assert_eq!(run.code, 2, "ids or --all: {run:?}");
    assert_eq!(
        fleet
            .json(&["dead-letters", "list", "default"])
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The new release's workers know `report`: a replayed dead letter is refreshed.
    old.kill();
    let _new = fleet.worker("worker-v2");
    let run = fleet.cli(&["dead-letters", "replay", "default", &first, "--yes"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("replayed 1 of 1"), "{run:?}");
    wait_for("the replayed report is written", WITHIN, || {
        fleet.cli(&["entry", &key]).code == 0
    });
    assert_eq!(fleet.json(&["entry", &key])["generation"], 1);
    let again = fleet.json(&["dead-letters", "replay", "default", &first, "--yes"]);
    assert_eq!(again["done"], 0);
    assert_eq!(
        again["not_found"], 1,
        "a dead letter is replayed once: {again}"
    );

    let all = fleet.json(&["dead-letters", "replay", "default", "--all", "--yes"]);
    assert_eq!(all["done"], 2, "{all}");
    assert_eq!(all["interrupted"], false);
    for n in [1, 2, 3] {
        let key = fleet.key(Report, &n);
        wait_for("every report is written", WITHIN, || {
            fleet.cli(&["entry", &key]).code == 0
        });
    }
    assert_eq!(
        fleet.json(&["dead-letters", "list", "default"]),
        serde_json::json!([])
    );

    // Another program's entries in the stream are dead-lettered as malformed; purge them.
    let stream = format!("{{{}:queue}}:stream:default", fleet.prefix);
    for _ in 0..3 {
        let _: String = fleet.server.cmd(&["XADD", &stream, "*", "m", "garbage"]);
    }
    wait_for("three malformed dead letters", WITHIN, || {
        fleet.dead_letters() == 3
    });
    let letters = fleet.json(&["dead-letters", "list", "default"]);
    let garbage = letters[0]["id"].as_str().unwrap().to_owned();
    let shown = fleet.json(&["dead-letters", "show", "default", &garbage]);
    assert_eq!(shown["request"], Value::Null);
    assert_eq!(shown["message_hex"], "67617262616765", "`garbage`: {shown}");
    let table = fleet.table(&["dead-letters", "show", "default", &garbage]);
    assert!(table.contains("does not decode"), "{table}");

    assert_eq!(
        fleet
            .cli(&["dead-letters", "purge", "default", "--all"])
            .code,
        4
    );
    let run = fleet.cli(&["dead-letters", "purge", "default", &garbage, "-y"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("purged 1 of 1"), "{run:?}");
    let purged = fleet.json(&["dead-letters", "purge", "default", "--all", "--yes"]);
    assert_eq!(purged["done"], 2, "{purged}");
    assert_eq!(
        fleet.json(&["dead-letters", "list", "default"]),
        serde_json::json!([])
    );
    let run = fleet.cli(&["dead-letters", "list", "default"]);
    assert!(run.stdout.contains("no dead letters"), "{run:?}");
}
