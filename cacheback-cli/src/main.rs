//! The `cacheback` command: queues, dead letters and entries of a fleet on Redis. See the
//! crate docs (`cargo doc -p cacheback-cli --open`) or `cacheback --help`.

use std::process::ExitCode;

use cacheback_cli::Cli;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    Cli::parse().run().await
}
