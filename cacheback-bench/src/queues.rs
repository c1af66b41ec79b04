//! `--queue redis|amqp|nats`: which queue carries the refresh requests of the workloads that
//! take the option (W3 through Redis, W2 across processes). The store stays the harness's Redis; RabbitMQ is the
//! broker on this machine (a vhost of the run's own, deleted at the end), NATS a `nats-server`
//! the harness starts.

use std::sync::{Arc, OnceLock};

use cacheback::queue::Queue;
use cacheback_test_support::nats::NatsServer;
use cacheback_test_support::rabbitmq::RabbitVhost;

/// The queue behind the refreshes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum QueueChoice {
    /// Redis Streams on the harness's Redis.
    #[default]
    Redis,
    /// RabbitMQ on 127.0.0.1:5672 (guest/guest), in a vhost of this run.
    Amqp,
    /// NATS JetStream on a `nats-server` this run starts.
    Nats,
}

impl QueueChoice {
    /// The command-line value naming this queue (`--queue`).
    pub(crate) fn arg(self) -> &'static str {
        match self {
            QueueChoice::Redis => "redis",
            QueueChoice::Amqp => "amqp",
            QueueChoice::Nats => "nats",
        }
    }

    /// The queue's type name, for records.
    pub(crate) fn name(self) -> &'static str {
        match self {
            QueueChoice::Redis => "RedisQueue",
            QueueChoice::Amqp => "AmqpQueue",
            QueueChoice::Nats => "NatsQueue",
        }
    }
}

/// The broker of a run, started on first use and stopped (or its vhost deleted) with the run.
#[derive(Debug, Default)]
pub(crate) struct Brokers {
    choice: QueueChoice,
    rabbit: OnceLock<Result<RabbitVhost, String>>,
    nats: OnceLock<Result<NatsServer, String>>,
}

impl Brokers {
    pub(crate) fn new(choice: QueueChoice) -> Self {
        Brokers {
            choice,
            ..Brokers::default()
        }
    }

    /// The queue chosen.
    pub(crate) fn choice(&self) -> QueueChoice {
        self.choice
    }

    /// A queue of the chosen kind; `redis_url` serves the Redis one. The queue takes the
    /// client's prefix.
    pub(crate) fn queue(&self, redis_url: &str) -> Result<Arc<dyn Queue>, String> {
        let url = self.url(redis_url)?;
        Ok(AnyQueue::open(self.choice, &url)?.shared())
    }

    /// The URL of the chosen queue (starting its broker on first use), for child processes.
    pub(crate) fn url(&self, redis_url: &str) -> Result<String, String> {
        Ok(match self.choice {
            QueueChoice::Redis => redis_url.to_owned(),
            QueueChoice::Amqp => self
                .rabbit
                .get_or_init(|| RabbitVhost::try_create().map_err(|e| e.to_string()))
                .as_ref()
                .map_err(Clone::clone)?
                .url(),
            QueueChoice::Nats => self
                .nats
                .get_or_init(|| NatsServer::try_start().map_err(|e| e.to_string()))
                .as_ref()
                .map_err(Clone::clone)?
                .url(),
        })
    }
}

/// A queue of any kind, with what the workloads read from it.
#[derive(Debug, Clone)]
pub(crate) enum AnyQueue {
    Redis(cacheback::RedisQueue),
    Amqp(cacheback::AmqpQueue),
    Nats(cacheback::NatsQueue),
}

impl AnyQueue {
    /// A queue of kind `choice` at `url`, under the prefix of the client it is given to.
    pub(crate) fn open(choice: QueueChoice, url: &str) -> Result<AnyQueue, String> {
        let e = |e: cacheback::Error| e.to_string();
        Ok(match choice {
            QueueChoice::Redis => AnyQueue::Redis(cacheback::RedisQueue::from_url(url).map_err(e)?),
            QueueChoice::Amqp => AnyQueue::Amqp(cacheback::AmqpQueue::from_url(url).map_err(e)?),
            QueueChoice::Nats => AnyQueue::Nats(cacheback::NatsQueue::from_url(url).map_err(e)?),
        })
    }

    /// Requests this handle enqueued so far.
    pub(crate) fn enqueued(&self) -> u64 {
        match self {
            AnyQueue::Redis(q) => q.enqueued(),
            AnyQueue::Amqp(q) => q.enqueued(),
            AnyQueue::Nats(q) => q.enqueued(),
        }
    }

    /// The queue for a client builder.
    pub(crate) fn shared(&self) -> Arc<dyn Queue> {
        match self {
            AnyQueue::Redis(q) => Arc::new(q.clone()),
            AnyQueue::Amqp(q) => Arc::new(q.clone()),
            AnyQueue::Nats(q) => Arc::new(q.clone()),
        }
    }
}
