//! The connection to the broker: opened on first use, replaced when it dies, with a doubling
//! pause between failed attempts during which calls fail at once (so `enqueue` fails fast while
//! the broker is away). Also the declaration of each route's queues, once per connection.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};
use tracing::{info, warn};

use super::{AmqpQueue, lock};
use crate::error::{Error, Result};
use crate::queue::binding::ReconnectPause;

/// The backend name in errors and metrics.
pub(crate) const BACKEND: &str = "amqp";

/// What went wrong talking to the broker, with the client library's error as its source.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub(crate) struct Failure {
    what: String,
    #[source]
    source: lapin::Error,
}

/// A queue error for `what`, caused by `source`.
pub(crate) fn failure(what: impl Into<String>, source: lapin::Error) -> Error {
    Error::queue(
        BACKEND,
        Failure {
            what: what.into(),
            source,
        },
    )
}

/// A queue error for an operation that did not finish in time.
pub(crate) fn timed_out(what: &str, after: Duration) -> Error {
    Error::queue(BACKEND, format!("{what} timed out after {after:?}"))
}

/// One connection and its publishing channel (in confirm mode).
pub(crate) struct Link {
    /// Counts connections: deliveries remember the one they came on.
    pub(crate) generation: u64,
    pub(crate) connection: Connection,
    pub(crate) publish: Channel,
    /// Routes whose queues were declared on this connection.
    declared: Mutex<HashSet<String>>,
    /// One declaration at a time: a burst of first enqueues declares a route once.
    declaring: tokio::sync::Mutex<()>,
}

impl Link {
    fn is_usable(&self) -> bool {
        self.connection.status().connected() && self.publish.status().connected()
    }
}

/// The current connection, if any, and the pause after failed attempts.
#[derive(Default)]
pub(crate) struct LinkState {
    link: Option<Arc<Link>>,
    generation: u64,
    pause: ReconnectPause,
}

impl AmqpQueue {
    /// The live connection, opening one if there is none (unless a pause after a failed
    /// attempt is running: then the last failure, at once).
    pub(crate) async fn link(&self) -> Result<Arc<Link>> {
        let inner = &*self.inner;
        let mut state = inner.link.lock().await;
        if let Some(link) = &state.link {
            if link.is_usable() {
                return Ok(Arc::clone(link));
            }
            warn!(
                generation = link.generation,
                "the AMQP connection is gone; reconnecting"
            );
            state.link = None;
        }
        state.pause.check(BACKEND)?;
        match self.connect(state.generation + 1).await {
            Ok(link) => {
                let link = Arc::new(link);
                let failures = state.pause.succeeded();
                if failures > 0 {
                    info!(after_failures = failures, "reconnected to the broker");
                }
                state.generation = link.generation;
                state.link = Some(Arc::clone(&link));
                Ok(link)
            }
            Err(error) => {
                state
                    .pause
                    .failed(&error, self.inner.options.max_reconnect_delay);
                Err(error)
            }
        }
    }

    /// Drops the connection `generation` if it is still the current one (after a timeout: a
    /// hung connection is not trusted again).
    pub(crate) async fn invalidate(&self, generation: u64) {
        let mut state = self.inner.link.lock().await;
        if state
            .link
            .as_ref()
            .is_some_and(|l| l.generation == generation)
        {
            state.link = None;
        }
    }

    async fn connect(&self, generation: u64) -> Result<Link> {
        let o = &self.inner.options;
        let properties = ConnectionProperties::default().with_connection_name(
            format!("cacheback-{}-{}", std::process::id(), self.prefix()).into(),
        );
        let open = async {
            let connection = Connection::connect_uri(self.inner.uri.clone(), properties)
                .await
                .map_err(|e| failure("could not connect to the broker", e))?;
            let publish = connection
                .create_channel()
                .await
                .map_err(|e| failure("could not open a channel", e))?;
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| failure("could not enable publisher confirms", e))?;
            Ok(Link {
                generation,
                connection,
                publish,
                declared: Mutex::new(HashSet::new()),
                declaring: tokio::sync::Mutex::new(()),
            })
        };
        tokio::time::timeout(o.connect_timeout, open)
            .await
            .unwrap_or_else(|_| Err(timed_out("connecting to the broker", o.connect_timeout)))
    }

    /// Declares `route`'s queue and dead-letter queue on `link` unless done already. A
    /// channel of its own: a refused declaration (the queue exists with other arguments)
    /// closes only that channel.
    pub(crate) async fn declare(&self, link: &Link, route: &str) -> Result<()> {
        if lock(&link.declared).contains(route) {
            return Ok(());
        }
        let _one_at_a_time = link.declaring.lock().await;
        if lock(&link.declared).contains(route) {
            return Ok(()); // declared while this call waited
        }
        let prefix = self.prefix();
        let (queue, dead) = (queue_name(prefix, route), dead_name(prefix, route));
        let o = &self.inner.options;
        let declare = async {
            let channel = link
                .connection
                .create_channel()
                .await
                .map_err(|e| failure("could not open a channel", e))?;
            let durable = QueueDeclareOptions::durable();
            channel
                .queue_declare(dead.as_str().into(), durable, quorum())
                .await
                .map_err(|e| failure(format!("could not declare queue `{dead}`"), e))?;
            channel
                .queue_declare(queue.as_str().into(), durable, self.queue_arguments(&dead))
                .await
                .map_err(|e| {
                    failure(
                        format!(
                            "could not declare queue `{queue}` (if it exists with other \
                             arguments, every process of the prefix must use the same \
                             delivery_limit and max_len)"
                        ),
                        e,
                    )
                })?;
            let _ = channel.close(200, "declared".into()).await;
            Ok(())
        };
        tokio::time::timeout(o.command_timeout, declare)
            .await
            .unwrap_or_else(|_| Err(timed_out("declaring queues", o.command_timeout)))?;
        lock(&link.declared).insert(route.to_owned());
        Ok(())
    }

    /// A route's queue: quorum, with the delivery limit, the bound and the dead-letter route.
    fn queue_arguments(&self, dead: &str) -> FieldTable {
        let o = &self.inner.options;
        let mut args = quorum();
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(o.delivery_limit)),
        );
        args.insert("x-dead-letter-exchange".into(), long_string(""));
        args.insert("x-dead-letter-routing-key".into(), long_string(dead));
        if let Some(max_len) = o.max_len {
            args.insert(
                "x-max-length".into(),
                AMQPValue::LongLongInt(i64::try_from(max_len).unwrap_or(i64::MAX)),
            );
            args.insert("x-overflow".into(), long_string("reject-publish"));
        }
        args
    }
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args
}

pub(crate) fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// The queue of `route`'s refresh requests.
pub(crate) fn queue_name(prefix: &str, route: &str) -> String {
    format!("{prefix}:queue:{route}")
}

/// The queue of `route`'s dead letters.
pub(crate) fn dead_name(prefix: &str, route: &str) -> String {
    format!("{prefix}:dead:{route}")
}

pub(crate) fn short(s: &str) -> ShortString {
    ShortString::from(s)
}
