//! The fleet demo on another queue: the same job and Redis store as [`fleet`](crate::fleet),
//! with refresh requests on RabbitMQ (`fleet_amqp`) or NATS JetStream (`fleet_nats`). One
//! binary per transport plays either role, so this module holds both roles once.

use std::time::Duration;

use cacheback::queue::Queue;
use cacheback::{Cacheback, JobHandle, RedisStore, Status, Worker, WorkerOptions};

use crate::fleet::{FleetArgs, UserTweets, shutdown_signal};

/// Which side of the split deployment this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Reads a user's tweets every second and prints what it got.
    Web,
    /// Runs the refreshes the web processes enqueue.
    Worker,
}

/// Builds the client on the shared Redis store and `queue` (which takes the client's prefix),
/// then plays `role` until Ctrl-C or SIGTERM.
pub async fn run(
    fleet: &FleetArgs,
    queue: impl Queue,
    role: Role,
    user: &str,
) -> cacheback::Result<()> {
    let store = RedisStore::from_url(&fleet.redis_url)?;
    let cache = Cacheback::builder()
        .prefix(&fleet.prefix)
        .store(store)
        .queue(queue)
        .build()?;
    let tweets = cache.try_job(fleet.job())?;
    match role {
        Role::Worker => work(&cache).await,
        Role::Web => read_every_second(&tweets, user).await,
    }
}

async fn work(cache: &Cacheback) -> cacheback::Result<()> {
    let worker = Worker::builder(cache)
        .options(WorkerOptions::default().drain_timeout(Duration::from_secs(30)))
        .build()?;
    eprintln!("worker (pid {}) running refreshes", std::process::id());
    let report = worker.run_until(shutdown_signal()).await;
    eprintln!("worker stopped: {report:?}");
    Ok(())
}

async fn read_every_second(tweets: &JobHandle<UserTweets>, user: &str) -> cacheback::Result<()> {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            _ = every.tick() => {}
        }
        let read = tweets.get_with_status(user.to_owned()).await?;
        let fetched_by = read
            .value
            .as_ref()
            .and_then(|t| t.first())
            .map(|t| t.fetched_by_pid);
        let note = match read.status {
            Status::Miss | Status::Stale if read.refresh_triggered => " (refresh enqueued)",
            _ => "",
        };
        println!("{:?}: fetched by pid {fetched_by:?}{note}", read.status);
    }
}
