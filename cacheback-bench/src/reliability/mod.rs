//! Reliability runs (issue #5), next to the workloads because they share the harness's
//! `redis-server`, child processes and statistics:
//!
//! ```text
//! cargo run --release -p cacheback-bench -- chaos   # 2 web + 2 worker processes, faults, 60 s
//! cargo run --release -p cacheback-bench -- soak    # 10 min of W4-like load, RSS + connections
//! ```

pub(crate) mod chaos;
pub(crate) mod soak;
