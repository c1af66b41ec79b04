//! The `cacheback` command against a real Redis (spawned per test) and a real fleet: web and
//! worker processes (see `support`), each a client on the shared Redis store and queue. Every
//! command's output is checked, as a table and as `--json`.

mod support;

use std::process::Stdio;

use cacheback_test_support::process::wait_for;
use serde_json::Value;
use support::{
    Fleet, Killed, Profile, Report, Run, WITHIN, ctrl_c, exit_code, lines, next_line, row,
};

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

/// `count` dead letters in queue `default` (reads of reports, a job the old workers do not
/// know), and no worker left running: what is put back on the queue stays there, countable.
fn dead_letters_and_no_worker(fleet: &Fleet, count: u64) {
    let mut old = fleet.worker("worker");
    let reports: Vec<String> = (1..=count).map(|n| n.to_string()).collect();
    assert_eq!(fleet.web("", &reports.join(",")), count);
    wait_for("every report dead-lettered", WITHIN, || {
        fleet.depth_and_dead_letters() == (0, count)
    });
    old.kill();
}

/// Runs `cacheback ARGS` with no terminal, presses Ctrl-C (SIGINT) once it printed its first
/// progress line, and returns what it printed (stderr from that line on) and its exit code.
fn ctrl_c_at_the_first_progress_line(fleet: &Fleet, args: &[&str]) -> Run {
    let mut child = Killed(
        fleet
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cacheback"),
    );
    let stderr = lines(child.0.stderr.take().unwrap());
    let stdout = lines(child.0.stdout.take().unwrap());
    let progress = next_line(&stderr, "progress line", |l| l.contains(" ("));
    ctrl_c(&child.0);
    let code = exit_code(&mut child.0);
    let collect = |lines: std::sync::mpsc::Receiver<String>| {
        lines.iter().map(|l| format!("{l}\n")).collect::<String>()
    };
    Run {
        code,
        stdout: collect(stdout),
        stderr: format!("{progress}\n{}", collect(stderr)),
    }
}

/// The number after `verb ` at the start of a summary: `replayed 12 of 40 ...` gives 12.
fn done_of(summary: &str, verb: &str) -> u64 {
    summary
        .strip_prefix(&format!("{verb} "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{verb} N` in {summary:?}"))
}

/// What an interrupted `--all` printed: a progress line, exit 130, a summary with how many were
/// done and how to go on. Returns how many were done.
fn check_interrupted(run: &Run, verb: &str, total: u64) -> u64 {
    let progress = run.stderr.lines().next().unwrap_or_default();
    assert!(
        progress.starts_with(&format!("{verb} ")) && progress.contains(&format!("/{total} (")),
        "a plain progress line: {run:?}"
    );
    assert!(progress.contains("/s, ETA "), "{run:?}");
    assert_eq!(run.code, 130, "{run:?}");
    let done = done_of(&run.stdout, verb);
    assert!(
        (1..total).contains(&done),
        "stopped between two dead letters: {run:?}"
    );
    assert_eq!(
        run.stdout.trim_end(),
        format!(
            "{verb} {done} of {total} dead letter(s) of queue `default`; interrupted by Ctrl-C: \
             run the same command again to go on"
        ),
        "{run:?}"
    );
    done
}

#[test]
fn replay_all_stops_on_ctrl_c_between_two_letters_and_goes_on_when_run_again() {
    let Some(fleet) = Fleet::start("cli-replay-ctrl-c") else {
        return;
    };
    const TOTAL: u64 = 40;
    dead_letters_and_no_worker(&fleet, TOTAL);

    // 40 dead letters at 10 a second take 4 s; at the first progress line (after 1 s), Ctrl-C.
    let replay = ["dead-letters", "replay", "default", "--all", "--yes"];
    let run = ctrl_c_at_the_first_progress_line(&fleet, &[&replay[..], &["--rate", "10"]].concat());
    let done = check_interrupted(&run, "replayed", TOTAL);
    // Nothing lost, nothing twice: each replayed dead letter is one request on the queue, the
    // others are still dead letters.
    assert_eq!(fleet.depth_and_dead_letters(), (done, TOTAL - done));

    // The same command again replays the rest, and only the rest.
    let rest = fleet.json(&replay);
    assert_eq!(rest["done"], TOTAL - done, "{rest}");
    assert_eq!(rest["not_found"], 0, "{rest}");
    assert_eq!(rest["interrupted"], false, "{rest}");
    assert_eq!(fleet.depth_and_dead_letters(), (TOTAL, 0));

    // Workers that know `report` run every replayed refresh: none fails, each report is
    // written.
    let _new = fleet.worker("worker-v2");
    wait_for("the replayed refreshes run", WITHIN, || {
        fleet.depth_and_dead_letters() == (0, 0)
    });
    for n in [1, 20, 40] {
        let key = fleet.key(Report, &n);
        wait_for("the report is written", WITHIN, || {
            fleet.cli(&["entry", &key]).code == 0
        });
    }
}

#[test]
fn purge_all_stops_on_ctrl_c_between_two_batches_and_goes_on_when_run_again() {
    let Some(fleet) = Fleet::start("cli-purge-ctrl-c") else {
        return;
    };
    const TOTAL: u64 = 60;
    dead_letters_and_no_worker(&fleet, TOTAL);

    // 60 at 20 a second (in batches of 2) take 3 s; at the first progress line, Ctrl-C.
    let purge = ["dead-letters", "purge", "default", "--all", "--yes"];
    let run = ctrl_c_at_the_first_progress_line(&fleet, &[&purge[..], &["--rate", "20"]].concat());
    let done = check_interrupted(&run, "purged", TOTAL);
    assert_eq!(done % 2, 0, "whole batches of 2: {run:?}");
    // The purged are gone, the others still there, nothing was put back on the queue.
    assert_eq!(fleet.depth_and_dead_letters(), (0, TOTAL - done));

    let rest = fleet.json(&purge);
    assert_eq!(rest["done"], TOTAL - done, "{rest}");
    assert_eq!(rest["not_found"], 0, "{rest}");
    assert_eq!(rest["interrupted"], false, "{rest}");
    assert_eq!(fleet.depth_and_dead_letters(), (0, 0));

    // A rate must be a positive number of dead letters a second.
    let run = fleet.cli(&[&purge[..], &["--rate", "0"]].concat());
    assert_eq!(run.code, 2, "{run:?}");
}

#[test]
fn top_prints_a_screen_per_interval_showing_what_changed_and_stops_on_ctrl_c() {
    let Some(fleet) = Fleet::start("cli-top-screens") else {
        return;
    };
    assert_eq!(fleet.web("ann,bob,cid", ""), 3);

    // Without a terminal: plain screens one after the other, no escape codes. After the
    // first, two more requests wait; the screens after it show them.
    let mut top = Killed(
        fleet
            .command(&["top", "--iterations", "3", "--interval", "0.5"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start cacheback top"),
    );
    let screens = lines(top.0.stdout.take().unwrap());
    let first = next_line(&screens, "the queue on the first screen", |l| {
        l.starts_with("default ")
    });
    assert_eq!(first.split_whitespace().nth(1), Some("3"), "{first}");
    assert_eq!(fleet.read_here(&["dan", "eve"]), 2);
    assert_eq!(exit_code(&mut top.0), 0);
    let rest: String = screens.iter().map(|l| format!("{l}\n")).collect();
    assert!(!rest.contains('\x1b'), "no escape codes: {rest:?}");
    let after: Vec<&str> = rest.split("cacheback top  prefix").skip(1).collect();
    assert_eq!(after.len(), 2, "three screens in all: {first}\n{rest}");
    let depth = |screen: &str| row(screen, "default")[1].to_owned();
    assert_eq!(depth(after[1]), "5", "the last screen: {rest}");

    // --json: one document per line, one line per screen.
    let mut top = Killed(
        fleet
            .command(&["top", "--iterations", "3", "--interval", "0.5", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start cacheback top --json"),
    );
    let screens = lines(top.0.stdout.take().unwrap());
    let first = next_line(&screens, "the first screen", |_| true);
    assert_eq!(fleet.read_here(&["fay", "gus"]), 2);
    assert_eq!(exit_code(&mut top.0), 0);
    let all: Vec<Value> = std::iter::once(first)
        .chain(screens.iter())
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[0]["queues"][0]["depth"], 5, "{all:?}");
    assert_eq!(all[2]["queues"][0]["depth"], 7, "{all:?}");
    let times: Vec<&str> = all.iter().map(|s| s["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|t| t[0] < t[1]), "{times:?}");

    // Ctrl-C while `top` waits an hour for its next screen ends it at once.
    let mut top = Killed(
        fleet
            .command(&["top", "--interval", "3600", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start cacheback top --interval 3600"),
    );
    let screens = lines(top.0.stdout.take().unwrap());
    next_line(&screens, "the first screen", |_| true);
    ctrl_c(&top.0);
    assert_eq!(exit_code(&mut top.0), 0);
    assert_eq!(screens.iter().count(), 0, "no second screen");
}
