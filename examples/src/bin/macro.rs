//! # macro: cache an `async fn` with one attribute
//!
//! Run with: `cargo run -p cacheback-examples --bin macro`
//!
//! `#[cacheback::cacheback(...)]` turns an `async fn` into a cached one, the way
//! django-cacheback's `@cacheback` decorator does: the fn keeps its name and arguments, and
//! every call is answered from the cache (here the process-wide default client: in memory,
//! with an in-process refresh worker). Its arguments make the key, its body is the fetch, and
//! it now returns `cacheback::Result<Arc<V>>`. Next to it, a module of the same name gives the
//! job's handle, `exchange_rate::job()`, for everything else: `get_with_status`, `set`,
//! `invalidate`, `refresh`, `peek`... (their arguments are the fn's, as a tuple).

use std::time::{Duration, Instant};

use cacheback::cacheback;

/// The slow call: a rate from a third-party API (here, 200 ms and a made-up number).
#[cacheback(name = "exchange_rate", lifetime = "30s", stale_ttl = "1h")]
async fn exchange_rate(from: String, to: String) -> Result<f64, std::io::Error> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rate = if (from.as_str(), to.as_str()) == ("EUR", "USD") {
        1.08
    } else {
        1.0
    };
    Ok(rate)
}

fn eur_usd() -> (String, String) {
    ("EUR".to_owned(), "USD".to_owned())
}

#[tokio::main]
async fn main() -> cacheback::Result<()> {
    for attempt in [
        "first call (a miss: waits for the fetch)",
        "second call (a hit)",
    ] {
        let started = Instant::now();
        let rate = exchange_rate("EUR".to_owned(), "USD".to_owned()).await?;
        println!("{attempt:<42} EUR→USD {rate} in {:.1?}", started.elapsed());
    }

    // The job behind the fn: `invalidate` marks the value stale and queues one refresh; until
    // it lands, reads still answer the old value at once.
    exchange_rate::job().invalidate(eur_usd()).await?;
    let started = Instant::now();
    let lookup = exchange_rate::job().get_with_status(eur_usd()).await?;
    let (status, took) = (lookup.status, started.elapsed());
    println!(
        "{:<42} {status} in {took:.1?}, while the refresh runs",
        "read after invalidate"
    );

    cacheback::global().shutdown(Duration::from_secs(1)).await;
    Ok(())
}
