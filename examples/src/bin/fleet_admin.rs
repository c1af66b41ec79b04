//! # Fleet demo, admin side: the admin subcommands mounted in a service's own binary
//!
//! Run with: `cargo run -p cacheback-examples --bin fleet_admin -- admin inspect user_tweets '"alice"'`
//!
//! on the Redis (`CACHEBACK_REDIS_URL`) and prefix (`CACHEBACK_PREFIX`) of the `fleet_web` and
//! `fleet_worker` processes. The args are JSON, decoded into the job's own `Args` type, so the
//! key is exactly the one the fleet reads. Also: `admin jobs`, `admin refresh user_tweets
//! '"alice"'`, `admin invalidate ...`, `admin delete ... --yes`, and
//! `admin warm user_tweets users.jsonl` (one JSON value per line; a progress bar on a terminal;
//! Ctrl-C stops it and prints the `--skip` that resumes it). `--json` prints JSON.

use std::process::ExitCode;
use std::time::Duration;

use cacheback_cli::{Admin, AdminCommand};
use cacheback_examples::fleet::FleetArgs;
use clap::{Parser, Subcommand};

/// The fleet demo's own command line: its settings, then a subcommand.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(subcommand)]
    command: Command,
}

/// A real service would have `serve`, `migrate`, ... here, next to `admin`.
#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and manage the fleet's cached entries.
    Admin(AdminCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let fleet = match args.fleet.connect(|queue| queue) {
        Ok(fleet) => fleet,
        Err(error) => {
            eprintln!("fleet_admin: {error}");
            return ExitCode::FAILURE;
        }
    };
    let Command::Admin(command) = args.command;
    let code = Admin::new().job(&fleet.tweets).run(command).await;
    fleet.cache.shutdown(Duration::from_secs(5)).await;
    code
}
