//! Test support: a throwaway `redis-server` per test (or per group of tests), from the
//! `cacheback-test-support` crate (the bench harness uses the same one). Test files keep
//! `mod support; use support::{RedisServer, eventually, unique_prefix};`.

// Each test binary uses a different part of the harness, through this private module.
#![allow(unused_imports, unreachable_pub)]

pub use cacheback_test_support::{
    Error, RedisServer, RedisServerBuilder, eventually, unique_prefix,
};
pub use cacheback_test_support::{MemcachedServer, MemcachedServerBuilder};

/// Fleets of OS processes on one Redis store and any queue.
#[cfg(feature = "redis")]
pub mod fleet;

/// The scenarios every broker-backed queue passes.
#[cfg(all(feature = "redis", feature = "testing"))]
pub mod brokers;
