//! `AmqpQueue` against the RabbitMQ running on this machine (127.0.0.1:5672, guest/guest), in
//! a fresh vhost made for this test binary and deleted when it ends. The scenarios are those
//! of every broker-backed queue (`support/brokers.rs`); they run one after the other (one of
//! them restarts the broker), under this binary's own runner (`harness = false`).
//!
//! Skipped loudly when the broker is unreachable, unless `CACHEBACK_REQUIRE_AMQP=1`.

mod support;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cacheback::AmqpQueue;
use cacheback::queue::Queue;
use cacheback_test_support::rabbitmq::{RabbitVhost, rabbitmqctl};
use cacheback_test_support::runner::{self, Test};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use support::brokers::{self, Broker};
use support::fleet::{self, QueueKind};

struct Rabbit {
    vhost: RabbitVhost,
}

/// Runs `f` to completion on a runtime of its own, on a thread of its own (the scenarios call
/// the broker's hooks from inside their runtime).
fn off_runtime<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
    .unwrap()
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
        let url = self.vhost.url();
        let queue = format!("{prefix}:queue:{route}");
        let bytes = bytes.to_vec();
        off_runtime(async move {
            let conn = Connection::connect(&url, ConnectionProperties::default())
                .await
                .unwrap();
            let channel = conn.create_channel().await.unwrap();
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &bytes,
                    BasicProperties::default(),
                )
                .await
                .unwrap();
            let _ = channel.close(200, "done".into()).await;
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
        let name = format!("{prefix}:queue:{route}");
        self.vhost
            .queues()
            .into_iter()
            .find(|(n, _, _)| *n == name)
            .map_or(0, |(_, _, unacked)| unacked)
    }

    fn waiting(&self, prefix: &str, route: &str) -> u64 {
        let name = format!("{prefix}:queue:{route}");
        self.vhost
            .queues()
            .into_iter()
            .find(|(n, _, _)| *n == name)
            .map_or(0, |(_, ready, _)| ready)
    }

    fn outage(&self) -> Box<dyn brokers::Guard + '_> {
        Box::new(self.vhost.outage())
    }

    fn drop_connections(&self) {
        rabbitmqctl(&[
            "close_all_connections",
            "-p",
            self.vhost.name(),
            "cacheback test",
        ])
        .unwrap();
    }
}

fn conformance(r: &Rabbit) {
    brokers::conformance(r);
}

fn fleet_exactly_one_fetch(r: &Rabbit) {
    brokers::fleet_makes_exactly_one_fetch(r);
}

fn killed_worker_is_redelivered(r: &Rabbit) {
    // No visibility timeout: the broker redelivers as soon as the connection closes.
    brokers::killed_worker_is_redelivered(r, Duration::from_secs(10));
}

fn dead_letters_keep_their_reasons(r: &Rabbit) {
    brokers::dead_letters_keep_their_reasons(r);
}

fn broker_restart_loses_no_request(r: &Rabbit) {
    brokers::broker_restart_loses_no_request(r);
}

fn acks_of_a_lost_connection_do_nothing(r: &Rabbit) {
    brokers::acks_of_a_lost_connection_do_nothing(r);
}

fn graceful_stop_leaves_nothing_pending(r: &Rabbit) {
    brokers::graceful_stop_leaves_nothing_pending(r);
}

fn a_full_queue_refuses(r: &Rabbit) {
    brokers::a_full_queue_refuses(r);
}

fn main() -> ExitCode {
    if fleet::child_main() {
        return ExitCode::SUCCESS;
    }
    let tests: &[Test<Rabbit>] = &[
        ("conformance", conformance),
        ("fleet_exactly_one_fetch", fleet_exactly_one_fetch),
        ("killed_worker_is_redelivered", killed_worker_is_redelivered),
        (
            "dead_letters_keep_their_reasons",
            dead_letters_keep_their_reasons,
        ),
        (
            "acks_of_a_lost_connection_do_nothing",
            acks_of_a_lost_connection_do_nothing,
        ),
        (
            "graceful_stop_leaves_nothing_pending",
            graceful_stop_leaves_nothing_pending,
        ),
        ("a_full_queue_refuses", a_full_queue_refuses),
        (
            "broker_restart_loses_no_request",
            broker_restart_loses_no_request,
        ),
    ];
    let selected = runner::select(tests);
    if selected.is_empty() {
        return ExitCode::SUCCESS;
    }
    let Some(vhost) = RabbitVhost::create() else {
        return ExitCode::SUCCESS;
    };
    runner::run(&Rabbit { vhost }, &selected)
}
