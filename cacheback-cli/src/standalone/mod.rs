//! The `cacheback` command: what needs no job code, against any Redis URL and prefix.
//! `queues.rs` the queues, `top.rs` the live view, `dead_letters.rs` the dead letters, `entry.rs` entries by raw key,
//! `confirm.rs` the confirmation every write asks for; the dashboard is in `crate::dashboard`.

mod confirm;
mod dead_letters;
mod entry;
mod queues;
mod top;

use std::process::ExitCode;

use cacheback::{RedisQueue, RedisStore};
use clap::{Parser, Subcommand};

use crate::exit::{Failed, exit_code};

pub(crate) use self::confirm::confirm;
pub(crate) use self::dead_letters::{Steps, Which, Write, apply, id_time, newest, parse_id};
pub(crate) use self::queues::QueueJson;

/// Operate a cacheback fleet on Redis: queues, dead letters, entries.
///
/// Exit codes: 0 done; 1 Redis failed or answered something unexpected; 2 bad command line
/// (unknown flag, malformed key, id or JSON); 3 not found (no such entry or dead letter);
/// 4 a write was not confirmed (pass `--yes`); 130 stopped by Ctrl-C (a summary says what
/// was done; run the same command again to go on).
#[derive(Debug, Parser)]
#[command(name = "cacheback", version)]
pub struct Cli {
    #[command(flatten)]
    target: Target,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Where the fleet lives.
#[derive(Debug, Clone, clap::Args)]
struct Target {
    /// The fleet's Redis (`redis://`, `rediss://`, `redis+unix:///path`,
    /// `redis+cluster://host:port,host:port`, `rediss+cluster://...`). Over TLS the server's
    /// certificate is checked against the system's roots, or against the PEM file named by
    /// `SSL_CERT_FILE` (a private CA).
    #[arg(
        long,
        global = true,
        env = "CACHEBACK_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    url: String,
    /// The fleet's prefix (the clients' `.prefix(...)`).
    #[arg(long, global = true, env = "CACHEBACK_PREFIX", default_value = "")]
    prefix: String,
    /// How many streams each queue of the fleet is spread over, when the fleet's queues set
    /// it (`RedisQueueBuilder::shards`); default: the library's (1 on one Redis, 8 on a
    /// Redis Cluster).
    #[arg(long, global = true, env = "CACHEBACK_QUEUE_SHARDS")]
    shards: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Queues: depth, oldest request, consumer groups (pending, lag) and their consumers.
    Queues(queues::QueuesArgs),
    /// Dead letters: list, show, replay, purge.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLetterCommand),
    /// One entry by its raw key: windows, age, generation, claim and failure state.
    Entry(entry::EntryArgs),
    /// The fleet at a glance, redrawn every second: per-job counts of the last minute, queues.
    Top(top::TopArgs),
    /// A live web page for the prefix: per-job counts of the whole fleet, queues, dead
    /// letters (with replay and purge buttons), served ages. Stop it with Ctrl-C.
    Dashboard {
        /// Where to listen (port 0 picks a free one; the address is printed on stderr).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Seconds between reloads of the page (0: none).
        #[arg(long, default_value_t = 2)]
        refresh: u64,
    },
}

impl Target {
    fn prefix(&self) -> Result<&str, Failed> {
        if self.prefix.is_empty() {
            return Err(Failed::usage(
                "no prefix: pass --prefix or set CACHEBACK_PREFIX to the fleet's prefix",
            ));
        }
        Ok(&self.prefix)
    }

    fn queue(&self) -> Result<RedisQueue, Failed> {
        let mut builder = RedisQueue::builder(&self.url).prefix(self.prefix()?);
        if let Some(shards) = self.shards {
            builder = builder.shards(shards);
        }
        Ok(builder.build()?)
    }

    fn store(&self) -> Result<RedisStore, Failed> {
        Ok(RedisStore::builder(&self.url).build()?)
    }
}

impl Cli {
    /// Runs the command and returns the process's exit code (errors are printed on stderr).
    pub async fn run(self) -> ExitCode {
        let json = self.json;
        exit_code(match self.command {
            Command::Queues(args) => queues::run(&self.target, args, json).await,
            Command::DeadLetters(command) => dead_letters::run(&self.target, command, json).await,
            Command::Entry(args) => entry::run(&self.target, args, json).await,
            Command::Top(args) => top::run(&self.target, args, json).await,
            Command::Dashboard { listen, refresh } => {
                match (self.target.prefix(), self.target.queue()) {
                    (Ok(prefix), Ok(queue)) => {
                        let url = &self.target.url;
                        crate::dashboard::serve(url, prefix, queue, listen, refresh).await
                    }
                    (Err(failed), _) | (_, Err(failed)) => Err(failed),
                }
            }
        })
    }
}
