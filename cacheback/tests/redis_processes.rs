//! The fleet with real OS processes sharing one `redis-server`, on Redis Streams (the
//! scenarios live in `support/fleet.rs`, shared with the other queues):
//!
//! - 4 reader processes × 16 concurrent readers hit one stale key at the same moment, with a
//!   separate worker process: exactly 1 fetch, in each of 10 trials, and every reader gets the
//!   stale value at once.
//! - The same with a near cache in every reader process, each holding a copy of the key read
//!   while it was fresh: still exactly 1 fetch per stale event.
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
