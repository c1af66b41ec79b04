//! # basic: one job, read through the cache
//!
//! Run with: `cargo run -p cacheback-examples --bin basic`
//!
//! A [`Job`] wraps a slow call (here a 100 ms sleep). Reading it through the client gives,
//! for one key:
//!
//! 1. `miss_fetched`: nothing cached yet, so the read waits for the fetch;
//! 2. `hit`: the value is fresh (younger than its 500 ms `lifetime`) and answered at once;
//! 3. `stale`: once older than its lifetime, the old value is still answered at once, while one
//!    refresh runs in the background (on the in-process worker of the default client);
//! 4. `hit` again, with the refreshed value.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cacheback::{Cacheback, Job, Policy, Status};

const LIFETIME: Duration = Duration::from_millis(500);
const FETCH_TIME: Duration = Duration::from_millis(100);

/// The slow call: squares a number, and says which call made the answer.
struct SlowSquare {
    calls: AtomicUsize,
}

impl Job for SlowSquare {
    type Args = u64;
    type Value = String;
    type Error = std::convert::Infallible;

    fn name(&self) -> &str {
        "slow_square" // stable: it names the job's keys
    }

    fn policy(&self) -> Policy {
        Policy::default().lifetime(LIFETIME)
    }

    async fn fetch(&self, n: u64) -> Result<String, Self::Error> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(FETCH_TIME).await;
        Ok(format!("{n}² = {} (fetch #{call})", n * n))
    }
}

#[tokio::main]
async fn main() -> cacheback::Result<()> {
    // The embedded defaults: an in-memory store and an in-process refresh worker.
    let cache = Cacheback::builder().build()?;
    let squares = cache.job(SlowSquare {
        calls: AtomicUsize::new(0),
    });

    let read = async |expected: Status| -> cacheback::Result<()> {
        let started = Instant::now();
        let lookup = squares.get_with_status(12).await?;
        let value = lookup.value.as_deref().map_or("none", String::as_str);
        let took = started.elapsed();
        println!(
            "{:<13} {value:<26} in {took:>10.1?}",
            lookup.status.as_str()
        );
        assert_eq!(lookup.status, expected);
        Ok(())
    };

    read(Status::MissFetched).await?; // waits for fetch #1
    read(Status::Hit).await?; // answered from the cache
    tokio::time::sleep(LIFETIME).await;
    read(Status::Stale).await?; // fetch #1 at once; fetch #2 starts in the background
    tokio::time::sleep(FETCH_TIME * 3).await;
    read(Status::Hit).await?; // fetch #2, from the cache

    cache.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
