//! A small test runner for test binaries with `harness = false`, whose tests share one
//! expensive fixture (a broker vhost, a server) that must be cleaned up when they are done,
//! and which must not run at the same time (they restart the broker).
//!
//! It runs the selected tests one after the other, each under `catch_unwind`, prints libtest's
//! `test <name> ... ok` lines and a summary, and understands the arguments `cargo test` passes
//! on: a name filter (substring, or whole with `--exact`), `--list`; the rest (`--nocapture`,
//! `--test-threads`, ...) is accepted and ignored.
//!
//! ```no_run
//! use cacheback_test_support::runner;
//!
//! fn one(fixture: &String) {
//!     assert!(!fixture.is_empty());
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let tests: &[runner::Test<String>] = &[("one", one)];
//!     let selected = runner::select(tests);
//!     if selected.is_empty() {
//!         return std::process::ExitCode::SUCCESS; // listed, or filtered out
//!     }
//!     runner::run(&"fixture".to_owned(), &selected)
//! }
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::time::Instant;

/// A named test taking the shared fixture.
pub type Test<C> = (&'static str, fn(&C));

/// The tests the command line selects (none after `--list`, which prints them).
pub fn select<C>(tests: &[Test<C>]) -> Vec<Test<C>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exact = args.iter().any(|a| a == "--exact");
    let list = args.iter().any(|a| a == "--list");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let chosen: Vec<Test<C>> = tests
        .iter()
        .filter(|(name, _)| {
            filters.is_empty()
                || filters.iter().any(|f| {
                    if exact {
                        name == f
                    } else {
                        name.contains(f.as_str())
                    }
                })
        })
        .copied()
        .collect();
    if list {
        for (name, _) in &chosen {
            println!("{name}: test");
        }
        return Vec::new();
    }
    if chosen.is_empty() {
        println!("running 0 tests (filtered out)");
    }
    chosen
}

/// Runs `tests` one after the other with `fixture`; the exit code says whether all passed.
pub fn run<C>(fixture: &C, tests: &[Test<C>]) -> ExitCode {
    println!("\nrunning {} tests", tests.len());
    let started = Instant::now();
    let mut failed = Vec::new();
    for (name, test) in tests {
        let took = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| test(fixture)));
        let secs = took.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => println!("test {name} ... ok ({secs:.1} s)"),
            Err(_) => {
                println!("test {name} ... FAILED ({secs:.1} s)");
                failed.push(*name);
            }
        }
    }
    let verdict = if failed.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {} passed; {} failed; finished in {:.1} s",
        tests.len() - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failures: {failed:?}");
        ExitCode::FAILURE
    }
}
