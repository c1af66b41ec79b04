//! # macro: cache an `async fn` with one attribute
//!
//! Run with: `cargo run -p cacheback-examples --bin macro`
//!
//! `#[cacheback::cacheback(...)]` turns an `async fn` into a cached one, the way
//! django-cacheback's `@cacheback` decorator does: the fn keeps its name, and every call is
//! answered from the cache (here an in-memory client with an in-process refresh worker,
//! installed with `cacheback::set_global`). Its arguments make the key, its body is the fetch,
//! and it now returns `cacheback::Result<Arc<V>>`. A `#[dep]` parameter, here the API client,
//! is no part of the key: `exchange_rate::init(api)` gives it to the fn's job once, at
//! start-up, and the cached fn takes the other arguments only. Next to the fn, a module of the
//! same name gives the job's handle, `exchange_rate::job()`, for everything else:
//! `get_with_status`, `set`, `invalidate`, `refresh`, `peek`... (they take the fn's key
//! argument itself; a tuple when there are several).

use std::time::{Duration, Instant};

use cacheback::{Cacheback, cacheback};

/// The client of a third-party rates API (here, 200 ms and made-up numbers). In a real program
/// it would hold a connection pool and credentials: not something to put in a cache key.
struct RatesApi;

impl RatesApi {
    async fn rate(&self, pair: &str) -> Result<f64, std::io::Error> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(if pair == "EUR/USD" { 1.08 } else { 1.0 })
    }
}

/// The slow call, cached: the job lends `api` to each fetch, and `pair` makes the key.
#[cacheback(name = "exchange_rate", lifetime = "30s", stale_ttl = "1h")]
async fn exchange_rate(#[dep] api: &RatesApi, pair: String) -> Result<f64, std::io::Error> {
    api.rate(&pair).await
}

#[tokio::main]
async fn main() -> cacheback::Result<()> {
    // Start-up, in every process: the client of the `#[cacheback]` fns without `client = ...`
    // (in a fleet, one with a Redis store), then the fns' dependencies.
    let client = Cacheback::builder().build()?;
    cacheback::set_global(client.clone()).expect("installed once, at start-up");
    exchange_rate::init(RatesApi)?;

    for attempt in [
        "first call (a miss: waits for the fetch)",
        "second call (a hit)",
    ] {
        let started = Instant::now();
        let rate = exchange_rate("EUR/USD".to_owned()).await?;
        println!("{attempt:<42} EUR/USD {rate} in {:.1?}", started.elapsed());
    }

    // The job behind the fn: `invalidate` marks the value stale and queues one refresh; until
    // it lands, reads still answer the old value at once.
    let job = exchange_rate::job()?;
    job.invalidate("EUR/USD".to_owned()).await?;
    let started = Instant::now();
    let lookup = job.get_with_status("EUR/USD".to_owned()).await?;
    let (status, took) = (lookup.status, started.elapsed());
    println!(
        "{:<42} {status} in {took:.1?}, while the refresh runs",
        "read after invalidate"
    );

    client.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
