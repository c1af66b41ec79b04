//! # Fleet demo on NATS: the split deployment with refresh requests on JetStream
//!
//! Run with (each in its own terminal; Redis on this machine):
//!
//! ```text
//! nats-server -js
//! cargo run -p cacheback-examples --bin fleet_nats -- worker
//! cargo run -p cacheback-examples --bin fleet_nats -- worker
//! cargo run -p cacheback-examples --bin fleet_nats -- web --user alice
//! ```
//!
//! The web process reads every second: a miss at first, then hits, then stale reads while one
//! refresh runs on one of the workers (`fetched by pid` names it). Requests wait in the
//! work-queue stream `fleet-demo-queue`; both workers pull from the durable consumer
//! `cacheback-workers-default`. `kill -9` a worker mid-refresh and the other gets its request
//! after `--ack-wait-secs`. Values live in Redis, as in the `fleet_web`/`fleet_worker` pair
//! (`src/fleet.rs`: the job and the Redis settings).

use std::time::Duration;

use cacheback::NatsQueue;
use cacheback_examples::fleet::{self, FleetArgs};
use cacheback_examples::split::{self, Role};
use clap::Parser;

/// A web or worker process of the fleet demo, on NATS JetStream.
#[derive(Debug, Parser)]
struct Args {
    /// This process's side of the deployment.
    #[arg(value_enum)]
    role: Role,
    /// The NATS server (JetStream enabled).
    #[arg(
        long,
        env = "CACHEBACK_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// An unacknowledged refresh (its worker died) is delivered again after this long.
    #[arg(long, default_value_t = 30)]
    ack_wait_secs: u64,
    /// The user whose tweets the web process reads.
    #[arg(long, default_value = "alice")]
    user: String,
    #[command(flatten)]
    fleet: FleetArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    fleet::init_logging("cacheback=info,cacheback_examples=info");
    let args = Args::parse();
    // No `.prefix(...)`: the queue takes the client's (`--prefix`, `CACHEBACK_PREFIX`).
    let queue = NatsQueue::builder(&args.nats_url)
        .ack_wait(Duration::from_secs(args.ack_wait_secs))
        .build()?;
    split::run(&args.fleet, queue, args.role, &args.user).await?;
    Ok(())
}
