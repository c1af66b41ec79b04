//! `AmqpQueue` against the RabbitMQ running on this machine (127.0.0.1:5672, guest/guest), in
//! a fresh vhost made for this test binary and deleted when it ends. The scenarios are those
//! of every broker-backed queue (`support/brokers.rs`), plus acks after a lost connection;
//! they run one after the other (one of them restarts the broker), under this binary's own
//! runner (`harness = false`).
//!
//! Skipped loudly when the broker is unreachable, unless `CACHEBACK_REQUIRE_AMQP=1`.

mod support;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cacheback::AmqpQueue;
use cacheback::queue::Queue;
use cacheback_test_support::rabbitmq::{RabbitVhost, rabbitmqctl};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use support::brokers::{self, Broker, Guard, off_runtime, request, runtime, take_one};
use support::fleet::QueueKind;
use support::unique_prefix;

struct Rabbit {
    vhost: RabbitVhost,
}

impl Rabbit {
    /// `(ready, unacknowledged)` of `route`'s queue.
    fn counts(&self, prefix: &str, route: &str) -> (u64, u64) {
        let name = format!("{prefix}:queue:{route}");
        self.vhost
            .queues()
            .into_iter()
            .find(|(n, _, _)| *n == name)
            .map_or((0, 0), |(_, ready, unacked)| (ready, unacked))
    }
}

impl Broker for Rabbit {
    fn queue(&self, prefix: &str, routes: &[&str], max_len: Option<u64>) -> Arc<dyn Queue> {
        let mut builder = AmqpQueue::builder(&self.vhost.url())
            .prefix(prefix)
            .queues(routes.iter().copied())
            .poll_interval(Duration::from_millis(100))
            .max_reconnect_delay(Duration::from_millis(500));
        if max_len.is_some() {
            builder = builder.max_len(max_len);
        }
        Arc::new(builder.build().unwrap())
    }

    fn kind(&self) -> QueueKind {
        QueueKind::Amqp(self.vhost.url())
    }

    fn publish_raw(&self, prefix: &str, route: &str, bytes: &[u8]) {
        let (url, queue, bytes) = (
            self.vhost.url(),
            format!("{prefix}:queue:{route}"),
            bytes.to_vec(),
        );
        off_runtime(async move {
            let conn = Connection::connect(&url, ConnectionProperties::default())
                .await
                .unwrap();
            let channel = conn.create_channel().await.unwrap();
            let options = BasicPublishOptions::default();
            let properties = BasicProperties::default();
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    options,
                    &bytes,
                    properties,
                )
                .await
                .unwrap();
            let _ = conn.close(200, "done".into()).await;
        });
    }

    fn dead_letter_reasons(&self, prefix: &str, route: &str) -> Vec<String> {
        let queue = AmqpQueue::builder(&self.vhost.url())
            .prefix(prefix)
            .build()
            .unwrap();
        let route = route.to_owned();
        let letters = off_runtime(async move { queue.dead_letters(&route, 100).await.unwrap() });
        letters.into_iter().map(|l| l.reason).collect()
    }

    fn held(&self, prefix: &str, route: &str) -> u64 {
        self.counts(prefix, route).1
    }

    fn waiting(&self, prefix: &str, route: &str) -> u64 {
        self.counts(prefix, route).0
    }

    fn outage(&self) -> Box<dyn Guard + '_> {
        Box::new(self.vhost.outage())
    }

    fn redelivery_bound(&self) -> Duration {
        // No visibility timeout: the broker redelivers as soon as the connection closes.
        Duration::from_secs(10)
    }
}

/// A delivery whose connection was closed is not acknowledged on the new one: the ack does
/// nothing and the broker delivers the message again, counting the attempt.
fn acks_of_a_lost_connection_do_nothing(r: &Rabbit) {
    let prefix = unique_prefix("lost");
    runtime().block_on(async {
        let queue = r.queue(&prefix, &["default"], None);
        queue.enqueue(request("a", 1)).await.unwrap();
        let first = take_one(&queue).await;
        assert_eq!(first.attempt, 1);
        let vhost = r.vhost.name();
        rabbitmqctl(&["close_all_connections", "-p", vhost, "cacheback test"]).unwrap();
        queue
            .ack(&first)
            .await
            .expect("an ack of a lost delivery is a no-op");
        let again = take_one(&queue).await;
        assert_eq!(again.attempt, 2, "redelivered, counted");
        assert_eq!(again.message.as_ref().unwrap().generation, 1);
        queue.ack(&again).await.unwrap();
        queue.ack(&again).await.expect("a second ack does nothing");
        queue.enqueue(request("a", 2)).await.unwrap();
        let next = take_one(&queue).await;
        let generation = next.message.as_ref().unwrap().generation;
        assert_eq!(generation, 2, "the first one was acknowledged for good");
        queue.ack(&next).await.unwrap();
    });
}

fn main() -> ExitCode {
    brokers::main(
        &[(
            "acks_of_a_lost_connection_do_nothing",
            acks_of_a_lost_connection_do_nothing,
        )],
        || RabbitVhost::create().map(|vhost| Rabbit { vhost }),
    )
}
