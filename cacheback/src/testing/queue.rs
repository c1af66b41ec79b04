use std::collections::BTreeSet;

use crate::clock::Timestamp;
use crate::queue::{Delivery, Queue, RefreshRequest};
use crate::store::ClaimToken;

fn request(n: u32) -> RefreshRequest {
    RefreshRequest {
        job: "suite".to_owned(),
        key: format!("conformance:suite:{n:032x}"),
        args: n.to_be_bytes().to_vec(),
        codec: 1,
        token: ClaimToken::random(),
        generation: u64::from(n),
        enqueued_at: Timestamp::from_millis(1_704_067_200_000 + u64::from(n)),
        prior_failures: n % 3,
        queue: "default".to_owned(),
    }
}

async fn enqueue(queue: &dyn Queue, r: RefreshRequest) {
    queue
        .enqueue(r)
        .await
        .unwrap_or_else(|e| panic!("enqueue failed: {e}"));
}

async fn receive_all(queue: &dyn Queue, n: usize, max: usize) -> Vec<Delivery> {
    let mut out = Vec::new();
    // Bounded: a queue that loses messages fails here instead of hanging forever.
    for _ in 0..(n * 20 + 20) {
        if out.len() >= n {
            break;
        }
        let batch = queue
            .receive(max)
            .await
            .unwrap_or_else(|e| panic!("receive failed: {e}"));
        assert!(
            batch.len() <= max,
            "receive({max}) returned {} deliveries",
            batch.len()
        );
        out.extend(batch);
    }
    assert_eq!(out.len(), n, "expected {n} deliveries");
    out
}

fn request_of(d: &Delivery) -> &RefreshRequest {
    d.message
        .as_ref()
        .unwrap_or_else(|e| panic!("a well-formed request came back malformed: {e}"))
}

/// Runs the [`Queue`] conformance suite against `queue`, which must start empty. Panics on the
/// first violation.
pub async fn queue_suite(queue: &dyn Queue) {
    requests_round_trip(queue).await;
    acked_messages_are_not_redelivered(queue).await;
    batches_respect_max(queue).await;
    many_requests_are_sent_at_once(queue).await;
    dead_letters_are_not_redelivered(queue).await;
}

async fn requests_round_trip(queue: &dyn Queue) {
    let sent = request(1);
    enqueue(queue, sent.clone()).await;
    let got = receive_all(queue, 1, 10).await;
    assert_eq!(
        request_of(&got[0]),
        &sent,
        "a request must arrive unchanged"
    );
    assert_eq!(got[0].attempt, 1, "a first delivery has attempt 1");
    queue.ack(&got[0]).await.expect("ack failed");
}

async fn acked_messages_are_not_redelivered(queue: &dyn Queue) {
    enqueue(queue, request(2)).await;
    let got = receive_all(queue, 1, 10).await;
    queue.ack(&got[0]).await.expect("ack failed");
    // A marker sent after the ack must be the next thing received.
    enqueue(queue, request(3)).await;
    let next = receive_all(queue, 1, 10).await;
    assert_eq!(
        request_of(&next[0]).generation,
        3,
        "an acknowledged message must not be delivered again"
    );
    queue.ack(&next[0]).await.expect("ack failed");
}

async fn batches_respect_max(queue: &dyn Queue) {
    for n in 10..15 {
        enqueue(queue, request(n)).await;
    }
    let got = receive_all(queue, 5, 2).await;
    let generations: BTreeSet<u64> = got.iter().map(|d| request_of(d).generation).collect();
    assert_eq!(
        generations,
        (10..15).collect(),
        "every enqueued request must be delivered exactly once"
    );
    for d in &got {
        queue.ack(d).await.expect("ack failed");
    }
}

async fn many_requests_are_sent_at_once(queue: &dyn Queue) {
    assert!(queue.enqueue_many(Vec::new()).await.is_empty());
    // Fewer than a consumer may hold unacknowledged (a broker prefetch of 10).
    let sent: Vec<RefreshRequest> = (30..38).map(request).collect();
    let results = queue.enqueue_many(sent.clone()).await;
    assert_eq!(results.len(), sent.len(), "one result per request");
    for result in results {
        result.unwrap_or_else(|e| panic!("enqueue_many failed: {e}"));
    }
    let got = receive_all(queue, sent.len(), 5).await;
    let mut arrived: Vec<RefreshRequest> = got.iter().map(|d| request_of(d).clone()).collect();
    arrived.sort_by_key(|r| r.generation);
    assert_eq!(
        arrived, sent,
        "every request of a batch must arrive, unchanged and once"
    );
    for d in &got {
        queue.ack(d).await.expect("ack failed");
    }
}

async fn dead_letters_are_not_redelivered(queue: &dyn Queue) {
    enqueue(queue, request(20)).await;
    let got = receive_all(queue, 1, 10).await;
    queue
        .dead_letter(&got[0], "conformance suite")
        .await
        .expect("dead_letter failed");
    enqueue(queue, request(21)).await;
    let next = receive_all(queue, 1, 10).await;
    assert_eq!(
        request_of(&next[0]).generation,
        21,
        "a dead-lettered message must not be delivered again"
    );
    queue.ack(&next[0]).await.expect("ack failed");
}
