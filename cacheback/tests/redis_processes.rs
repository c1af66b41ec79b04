//! The fleet with real OS processes sharing one `redis-server`, on Redis Streams (the
//! scenarios live in `support/fleet.rs`, shared with the other queues):
//!
//! - 4 reader processes × 16 concurrent readers hit one stale key at the same moment, with a
//!   separate worker process: exactly 1 fetch, in each of 10 trials, and every reader gets the
//!   stale value at once.
//! - The same with a near cache in every reader process, each holding a copy of the key read
//!   while it was fresh: still exactly 1 fetch per stale event.
//! - 4 reader processes × 16 concurrent readers read one cold key at the same moment, the job
//!   coalescing misses across the fleet: exactly 1 fetch in each of 5 trials, every reader
//!   gets its value; without fleet coalescing, one fetch per process.
//! - A worker process `kill -9`ed in the middle of a fetch: another worker process completes
//!   the refresh after the visibility timeout.
//!
//! The children are this test binary itself, re-invoked with `--exact child_process` and their
//! role in `CACHEBACK_CHILD`; `child_process` does nothing in a normal run.

#![cfg(feature = "redis")]

mod support;

use support::fleet::{self, QueueKind};
use support::{RedisServer, unique_prefix};

/// A child process: a reader process or a worker process, by `CACHEBACK_CHILD`.
#[test]
fn child_process() {
    fleet::child_main(); // a normal test run: nothing to do
}

#[test]
fn four_reader_processes_and_a_worker_process_make_exactly_one_fetch() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    fleet::exactly_one_fetch(&server, QueueKind::Redis, &unique_prefix("fleet"));
}

#[test]
fn four_reader_processes_with_near_caches_still_make_exactly_one_fetch() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    fleet::exactly_one_fetch_with_near_caches(&server, &unique_prefix("fleetnear"));
}

#[test]
fn a_worker_killed_mid_fetch_is_replaced_after_the_visibility_timeout() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let took = fleet::killed_worker_is_replaced(&server, QueueKind::Redis, &unique_prefix("kill9"));
    eprintln!("refresh completed {took:?} after the kill (visibility timeout 1 s)");
}

#[test]
fn a_cold_key_read_by_four_processes_is_fetched_once_across_the_fleet() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("coldfleet");
    let readers = 4 * 16;
    for trial in 0..5 {
        let (fetches, got_first) = fleet::cold_key_burst(&server, &prefix, trial, true);
        assert_eq!(fetches, 1, "trial {trial}: one fetch across the fleet");
        assert_eq!(
            got_first, readers,
            "trial {trial}: every reader got that fetch's value"
        );
    }
    // Without it, each process fetches once (a slow process may find another's value, so at
    // least two fetches is all that is certain).
    let (fetches, _) = fleet::cold_key_burst(&server, &prefix, 99, false);
    eprintln!("without fleet coalescing: {fetches} fetches");
    assert!(fetches >= 2, "without fleet coalescing, {fetches} fetches");
}
