//! `--queue redis|amqp|nats`: which queue carries the refresh requests of the workloads that
//! take the option (W3 through Redis). The store stays the harness's Redis; RabbitMQ is the
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
        let e = |e: cacheback::Error| e.to_string();
        Ok(match self.choice {
            QueueChoice::Redis => Arc::new(cacheback::RedisQueue::from_url(redis_url).map_err(e)?),
            QueueChoice::Amqp => {
                let vhost = self
                    .rabbit
                    .get_or_init(|| RabbitVhost::try_create().map_err(|e| e.to_string()))
                    .as_ref()
                    .map_err(Clone::clone)?;
                Arc::new(cacheback::AmqpQueue::from_url(&vhost.url()).map_err(e)?)
            }
            QueueChoice::Nats => {
                let server = self
                    .nats
                    .get_or_init(|| NatsServer::try_start().map_err(|e| e.to_string()))
                    .as_ref()
                    .map_err(Clone::clone)?;
                Arc::new(cacheback::NatsQueue::from_url(&server.url()).map_err(e)?)
            }
        })
    }
}
