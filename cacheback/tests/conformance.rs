//! The embedded backends pass the Store and Queue conformance suites.

use cacheback::{LocalQueue, MemoryStore, testing};

#[tokio::test]
async fn memory_store_conforms() {
    testing::store_suite(&MemoryStore::new()).await;
}

#[tokio::test]
async fn bounded_memory_store_conforms() {
    testing::store_suite(&MemoryStore::builder().max_bytes(1 << 20).build()).await;
}

#[tokio::test]
async fn local_queue_conforms() {
    testing::queue_suite(&LocalQueue::new(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_a_memory_store_behave() {
    testing::client_suite(std::sync::Arc::new(MemoryStore::new())).await;
}
