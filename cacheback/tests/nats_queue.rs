//! `NatsQueue` against a `nats-server -js` this test binary starts on a free port (and kills
//! and restarts for the fault scenarios). The scenarios are those of every broker-backed queue
//! (`support/brokers.rs`) plus duplicate detection; they run one after the other under this
//! binary's own runner (`harness = false`), on one server.
//!
//! Skipped loudly when `nats-server` is missing, unless `CACHEBACK_REQUIRE_NATS=1`.

mod support;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cacheback::NatsQueue;
use cacheback::queue::Queue;
use cacheback_test_support::nats::NatsServer;
use support::brokers::{self, Broker, Guard, off_runtime, request, runtime};
use support::fleet::QueueKind;

struct Nats {
    server: Mutex<NatsServer>,
    url: String,
}

impl Nats {
    fn builder(&self, prefix: &str) -> cacheback::queue::NatsQueueBuilder {
        NatsQueue::builder(&self.url)
            .prefix(prefix)
            .poll_interval(Duration::from_millis(100))
            .max_reconnect_delay(Duration::from_millis(500))
    }

    /// `(waiting, held)` of the default pool's consumer of `route`, 0 when it does not exist.
    fn consumer_counts(&self, prefix: &str, route: &str) -> (u64, u64) {
        let (url, stream, consumer) = (
            self.url.clone(),
            format!("{prefix}-queue"),
            format!("cacheback-workers-{route}"),
        );
        off_runtime(async move {
            let client = async_nats::connect(url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let Ok(stream) = js.get_stream(&stream).await else {
                return (0, 0);
            };
            let Ok(mut consumer) = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&consumer)
                .await
            else {
                return (0, 0);
            };
            let info = consumer.info().await.unwrap();
            (info.num_pending, info.num_ack_pending as u64)
        })
    }
}

impl Broker for Nats {
    fn queue(&self, prefix: &str, routes: &[&str], max_len: Option<u64>) -> Arc<dyn Queue> {
        let mut builder = self.builder(prefix).queues(routes.iter().copied());
        if max_len.is_some() {
            builder = builder.max_len(max_len);
        }
        Arc::new(builder.build().unwrap())
    }

    fn kind(&self) -> QueueKind {
        QueueKind::Nats(self.url.clone())
    }

    fn publish_raw(&self, prefix: &str, route: &str, bytes: &[u8]) {
        let (url, subject, bytes) = (
            self.url.clone(),
            format!("{prefix}.queue.{route}"),
            bytes.to_vec(),
        );
        off_runtime(async move {
            let client = async_nats::connect(url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            js.publish(subject, bytes.into())
                .await
                .unwrap()
                .await
                .unwrap();
        });
    }

    fn dead_letter_reasons(&self, prefix: &str, route: &str) -> Vec<String> {
        let queue = self.builder(prefix).build().unwrap();
        let route = route.to_owned();
        let letters = off_runtime(async move { queue.dead_letters(&route, 100).await.unwrap() });
        letters.into_iter().map(|l| l.reason).collect()
    }

    fn held(&self, prefix: &str, route: &str) -> u64 {
        self.consumer_counts(prefix, route).1
    }

    fn waiting(&self, prefix: &str, route: &str) -> u64 {
        self.consumer_counts(prefix, route).0
    }

    fn outage(&self) -> Box<dyn Guard + '_> {
        self.server.lock().unwrap().stop();
        Box::new(Outage(self))
    }

    fn redelivery_bound(&self) -> Duration {
        // The fleet's workers use an ack_wait of 1 s.
        Duration::from_secs(10)
    }
}

/// The server stopped; started again (same port, same storage) when dropped.
struct Outage<'a>(&'a Nats);

impl Drop for Outage<'_> {
    fn drop(&mut self) {
        self.0.server.lock().unwrap().start_again();
    }
}

/// The same request enqueued twice within the duplicate window is stored once.
fn a_duplicate_enqueue_is_dropped(n: &Nats) {
    let prefix = support::unique_prefix("dup");
    let queue = n.queue(&prefix, &["default"], None);
    let request = request("a", 1);
    runtime().block_on(async {
        queue.enqueue(request.clone()).await.unwrap();
        queue.enqueue(request.clone()).await.unwrap();
        let mut again = request.clone();
        again.token = cacheback::store::ClaimToken::random();
        queue.enqueue(again).await.unwrap();
        let got = queue.receive(10).await.unwrap();
        assert_eq!(
            got.len(),
            2,
            "the duplicate was dropped, the new claim kept"
        );
        for d in &got {
            queue.ack(d).await.unwrap();
        }
    });
}

fn main() -> ExitCode {
    brokers::main(
        &[(
            "a_duplicate_enqueue_is_dropped",
            a_duplicate_enqueue_is_dropped,
        )],
        || {
            let server = NatsServer::start()?;
            let url = server.url();
            Some(Nats {
                server: Mutex::new(server),
                url,
            })
        },
    )
}
