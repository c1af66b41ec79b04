//! # Fleet demo on RabbitMQ: the split deployment with refresh requests on AMQP
//!
//! Run with (each in its own terminal; RabbitMQ and Redis on this machine):
//!
//! ```text
//! cargo run -p cacheback-examples --bin fleet_amqp -- worker
//! cargo run -p cacheback-examples --bin fleet_amqp -- worker
//! cargo run -p cacheback-examples --bin fleet_amqp -- web --user alice
//! ```
//!
//! The web process reads every second: a miss at first, then hits, then stale reads while one
//! refresh runs on one of the workers (`fetched by pid` names it). The requests wait in the
//! quorum queue `fleet-demo:queue:default` (`rabbitmqctl list_queues`); `kill -9` a worker
//! mid-refresh and RabbitMQ hands its request to the other at once. Values live in Redis, as
//! in the `fleet_web`/`fleet_worker` pair (`src/fleet.rs`: the job and the Redis settings).

use cacheback::AmqpQueue;
use cacheback_examples::fleet::{self, FleetArgs};
use cacheback_examples::split::{self, Role};
use clap::Parser;

/// A web or worker process of the fleet demo, on RabbitMQ.
#[derive(Debug, Parser)]
struct Args {
    /// This process's side of the deployment.
    #[arg(value_enum)]
    role: Role,
    /// The broker (the vhost is the path: `%2f` is `/`).
    #[arg(
        long,
        env = "CACHEBACK_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
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
    let queue = AmqpQueue::builder(&args.amqp_url).prefetch(16).build()?;
    split::run(&args.fleet, queue, args.role, &args.user).await?;
    Ok(())
}
