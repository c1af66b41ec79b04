//! The connection to the server (made on first use; the client reconnects by itself after
//! that), the two streams, and each route's durable pull consumer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::{Client, ConnectOptions, connection::State};
use tracing::info;

use super::NatsQueue;
use crate::error::{Error, Result};
use crate::queue::binding::ReconnectPause;

/// The backend name in errors and metrics.
pub(crate) const BACKEND: &str = "nats";

/// What went wrong talking to the server, with the client library's error as its source.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub(crate) struct Failure {
    what: String,
    #[source]
    source: crate::BoxError,
}

/// A queue error for `what`, caused by `source`.
pub(crate) fn failure(what: impl Into<String>, source: impl Into<crate::BoxError>) -> Error {
    Error::queue(
        BACKEND,
        Failure {
            what: what.into(),
            source: source.into(),
        },
    )
}

/// A queue error for an operation that did not finish in time.
pub(crate) fn timed_out(what: &str, after: Duration) -> Error {
    Error::queue(BACKEND, format!("{what} timed out after {after:?}"))
}

/// The client, its JetStream context, and what was set up on the server through it.
pub(crate) struct Link {
    pub(crate) client: Client,
    pub(crate) js: async_nats::jetstream::Context,
    streams_ready: AtomicBool,
    consumers: tokio::sync::Mutex<HashMap<String, PullConsumer>>,
}

impl Link {
    /// Forgets the streams and consumers set up through this client, so the next call makes
    /// sure they exist again (after a server lost its storage, or a consumer was deleted).
    pub(crate) async fn forget_setup(&self) {
        self.streams_ready.store(false, Ordering::Release);
        self.consumers.lock().await.clear();
    }

    /// `Err` while the client is reconnecting: a publish now would wait in the client's
    /// buffer, and could reach the stream after the caller was told it failed.
    pub(crate) fn check_connected(&self) -> Result<()> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(Error::queue(
                BACKEND,
                format!("not connected to the NATS server ({state}); reconnecting"),
            )),
        }
    }
}

/// The client, once connected, and the pause after failed first connections.
#[derive(Default)]
pub(crate) struct LinkState {
    link: Option<Arc<Link>>,
    pause: ReconnectPause,
}

impl NatsQueue {
    /// The client, connecting it on first use (failing at once during the pause after a
    /// failed attempt).
    pub(crate) async fn link(&self) -> Result<Arc<Link>> {
        let inner = &*self.inner;
        let mut state = inner.link.lock().await;
        if let Some(link) = &state.link {
            return Ok(Arc::clone(link));
        }
        state.pause.check(BACKEND)?;
        match self.connect().await {
            Ok(link) => {
                let link = Arc::new(link);
                if state.pause.succeeded() > 0 {
                    info!("connected to the NATS server");
                }
                state.link = Some(Arc::clone(&link));
                Ok(link)
            }
            Err(error) => {
                state
                    .pause
                    .failed(&error, inner.options.max_reconnect_delay);
                Err(error)
            }
        }
    }

    async fn connect(&self) -> Result<Link> {
        let o = self.inner.options;
        let max_delay = o.max_reconnect_delay;
        let options = ConnectOptions::new()
            .name(format!(
                "cacheback-{}-{}",
                std::process::id(),
                self.prefix()
            ))
            .connection_timeout(o.connect_timeout)
            .reconnect_delay_callback(move |attempts| {
                let exponent = u32::try_from(attempts.min(16)).unwrap_or(16);
                Duration::from_millis(100)
                    .saturating_mul(1 << exponent)
                    .min(max_delay)
            });
        let connect = async_nats::connect_with_options(self.inner.url.as_str(), options);
        let client = tokio::time::timeout(o.connect_timeout, connect)
            .await
            .map_err(|_| timed_out("connecting to the NATS server", o.connect_timeout))?
            .map_err(|e| failure("could not connect to the NATS server", e))?;
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(o.command_timeout);
        Ok(Link {
            client,
            js,
            streams_ready: AtomicBool::new(false),
            consumers: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Creates the work-queue stream and the dead-letter stream unless they exist (their
    /// settings are those of whoever created them).
    pub(crate) async fn ensure_streams(&self, link: &Link) -> Result<()> {
        if link.streams_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let o = &self.inner.options;
        let prefix = self.prefix();
        let queue = stream::Config {
            name: self.stream_name("queue"),
            subjects: vec![format!("{prefix}.queue.>")],
            retention: RetentionPolicy::WorkQueue,
            max_messages: o
                .max_len
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            discard: DiscardPolicy::New,
            duplicate_window: o.duplicate_window,
            storage: StorageType::File,
            ..Default::default()
        };
        let dead = stream::Config {
            name: self.stream_name("dead"),
            subjects: vec![format!("{prefix}.dead.>")],
            retention: RetentionPolicy::Limits,
            max_messages: i64::try_from(o.dead_letter_max_len).unwrap_or(i64::MAX),
            discard: DiscardPolicy::Old,
            storage: StorageType::File,
            ..Default::default()
        };
        for config in [queue, dead] {
            let name = config.name.clone();
            link.js
                .get_or_create_stream(config)
                .await
                .map_err(|e| failure(format!("could not create stream `{name}`"), e))?;
        }
        link.streams_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// `route`'s durable pull consumer for this queue's worker pool.
    pub(crate) async fn consumer(&self, link: &Link, route: &str) -> Result<PullConsumer> {
        let mut consumers = link.consumers.lock().await;
        if let Some(consumer) = consumers.get(route) {
            return Ok(consumer.clone());
        }
        self.ensure_streams(link).await?;
        let o = &self.inner.options;
        let durable = format!("{}-{route}", self.inner.group);
        let config = pull::Config {
            durable_name: Some(durable.clone()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: o.ack_wait,
            max_deliver: i64::from(o.max_deliver),
            filter_subject: self.subject("queue", route),
            ..Default::default()
        };
        let stream_name = self.stream_name("queue");
        let stream = link
            .js
            .get_stream(&stream_name)
            .await
            .map_err(|e| failure(format!("could not find stream `{stream_name}`"), e))?;
        let consumer = stream
            .get_or_create_consumer(&durable, config)
            .await
            .map_err(|e| failure(format!("could not create consumer `{durable}`"), e))?;
        consumers.insert(route.to_owned(), consumer.clone());
        Ok(consumer)
    }

    /// `<prefix>-<kind>`: the `queue` and `dead` streams.
    pub(crate) fn stream_name(&self, kind: &str) -> String {
        format!("{}-{kind}", self.prefix())
    }

    /// Publishes and waits for the stream's ack, within the command timeout. A stream that
    /// vanished (a server that lost its storage) is created again by the next call.
    pub(crate) async fn publish(
        &self,
        link: &Link,
        subject: String,
        message: PublishMessage,
    ) -> Result<()> {
        let timeout = self.inner.options.command_timeout;
        let acked = async { link.js.send_publish(subject.clone(), message).await?.await };
        match tokio::time::timeout(timeout, acked).await {
            Ok(Ok(_ack)) => Ok(()),
            Ok(Err(e)) => {
                if e.kind() == async_nats::jetstream::context::PublishErrorKind::StreamNotFound {
                    link.forget_setup().await;
                }
                Err(failure(format!("could not publish to `{subject}`"), e))
            }
            Err(_) => Err(timed_out(&format!("publishing to `{subject}`"), timeout)),
        }
    }
}
