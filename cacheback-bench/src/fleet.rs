//! Child processes of the harness: the binary re-invokes itself as
//! `cacheback-bench __child ROLE [ARGS...]` for workloads and reliability runs that need real OS
//! processes (W2 across processes, N3/N4's readers, the chaos run). Each role is a subcommand
//! whose arguments belong to the module that owns it.

use std::process::{Child, Command, Stdio};

/// The first argument that marks a child process.
pub(crate) const CHILD_COMMAND: &str = "__child";

/// What a child process does.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Role {
    /// A chaos web process: steady reads of every key.
    #[cfg(feature = "redis")]
    #[command(name = "chaos-web")]
    ChaosWeb(crate::reliability::chaos::ChildArgs),
    /// A chaos worker process: drains the Redis Streams queue.
    #[cfg(feature = "redis")]
    #[command(name = "chaos-worker")]
    ChaosWorker(crate::reliability::chaos::ChildArgs),
    /// A W2 reader process: 16 readers of each trial's key at the trial's instant.
    #[cfg(feature = "redis")]
    #[command(name = "w2-reader")]
    W2Reader(crate::workloads::w2::FleetPlan),
    /// The W2 worker process.
    #[cfg(feature = "redis")]
    #[command(name = "w2-worker")]
    W2Worker(crate::workloads::w2::FleetPlan),
    /// An N3/N4 reader process: hears invalidations until its stdin closes.
    #[cfg(feature = "redis")]
    #[command(name = "coherence-reader")]
    CoherenceReader(crate::workloads::coherence::ReaderPlan),
}

/// Starts this binary as a child with `role` and `args`, stdout piped (children report on
/// stdout, one line per fact), stderr inherited.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn spawn(role: &str, args: &[String]) -> Result<Child, String> {
    spawn_with(role, args, Stdio::null())
}

/// Starts this binary as a child with `role` and `args` as [`spawn`] does, with its stdin
/// piped too, for a child the parent drives (it stops when its stdin closes).
#[cfg(feature = "redis")]
pub(crate) fn spawn_driven(role: &str, args: &[String]) -> Result<Child, String> {
    spawn_with(role, args, Stdio::piped())
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
fn spawn_with(role: &str, args: &[String], stdin: Stdio) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    Command::new(exe)
        .arg(CHILD_COMMAND)
        .arg(role)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start a `{role}` child: {e}"))
}

/// The child's `main`: runs `role` and exits with its status (1 and a message on error).
pub(crate) fn child_main(role: Role) -> ! {
    let (name, result) = run(role);
    match result {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            eprintln!("cacheback-bench {CHILD_COMMAND} {name}: {error}");
            std::process::exit(1);
        }
    }
}

/// Runs `role`; returns its name and its outcome.
#[cfg(feature = "redis")]
fn run(role: Role) -> (&'static str, Result<(), String>) {
    match role {
        Role::ChaosWeb(args) => ("chaos-web", crate::reliability::chaos::web(args)),
        Role::ChaosWorker(args) => ("chaos-worker", crate::reliability::chaos::worker(args)),
        Role::W2Reader(plan) => ("w2-reader", crate::workloads::w2::reader(plan)),
        Role::W2Worker(plan) => ("w2-worker", crate::workloads::w2::worker(plan)),
        Role::CoherenceReader(plan) => (
            "coherence-reader",
            crate::workloads::coherence::reader_main(plan),
        ),
    }
}

/// Without Redis there are no child roles.
#[cfg(not(feature = "redis"))]
fn run(role: Role) -> (&'static str, Result<(), String>) {
    match role {}
}
