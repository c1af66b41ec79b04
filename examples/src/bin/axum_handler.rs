//! # axum: a handler that reads through the cache
//!
//! Run with: `cargo run -p cacheback-examples --bin axum_handler`
//!
//! It serves `GET /price/{item}` on 127.0.0.1, port `$PORT` (default: a free one), until Ctrl-C:
//! try `curl -i http://127.0.0.1:PORT/price/apple` twice. `-- --self-test` makes it request its
//! own server instead, print the answers and exit.
//!
//! The router's state is a `JobHandle`: a cheap clone of the client plus the job. The handler
//! reads through it, so the slow call runs once per key however many requests wait for it, and
//! later requests are answered from the cache; the `x-cache` header says which.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::{Router, http::StatusCode, routing::get};
use cacheback::{Cacheback, Job, JobHandle};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The slow call: a price (in cents) from a pricing service that takes 300 ms. Its values are
/// fresh for the default `lifetime`, 10 minutes.
struct Price;

impl Job for Price {
    type Args = String;
    type Value = u64;
    type Error = std::convert::Infallible;

    fn name(&self) -> &str {
        "price"
    }

    async fn fetch(&self, item: String) -> Result<u64, Self::Error> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(item.len() as u64 * 100 + 99)
    }
}

type Answer = ([(&'static str, &'static str); 1], String);

async fn price(
    State(prices): State<JobHandle<Price>>,
    Path(item): Path<String>,
) -> Result<Answer, (StatusCode, String)> {
    let lookup = prices.get_with_status(item.clone()).await;
    let lookup = lookup.map_err(|error| (StatusCode::BAD_GATEWAY, error.to_string()))?;
    let cents = lookup.value.map_or(0, |cents| *cents);
    let body = format!("{item}: ${}.{:02}\n", cents / 100, cents % 100);
    Ok(([("x-cache", lookup.status.as_str())], body))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let cache = Cacheback::builder().build()?; // in memory, with an in-process worker
    let app = Router::new()
        .route("/price/{item}", get(price))
        .with_state(cache.job(Price));
    let port: u16 = std::env::var("PORT").map_or(Ok(0), |port| port.parse())?;
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    let addr = listener.local_addr()?;
    println!("serving http://{addr}/price/apple");
    let server = axum::serve(listener, app);
    if std::env::args().any(|arg| arg == "--self-test") {
        // Serve until the self-test is done; dropping the server then closes it.
        tokio::select! {
            served = server.into_future() => served?,
            tested = self_test(addr) => tested?,
        }
    } else {
        let ctrl_c = async { tokio::signal::ctrl_c().await.unwrap_or_default() };
        server.with_graceful_shutdown(ctrl_c).await?;
    }
    cache.shutdown(Duration::from_secs(1)).await;
    Ok(())
}

/// Requests the price of an apple twice (a miss, then a hit), failing on anything but a 200.
async fn self_test(addr: SocketAddr) -> Result<(), BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    for _ in 0..2 {
        let response = client
            .get(format!("http://{addr}/price/apple").parse()?)
            .await?;
        if response.status() != StatusCode::OK {
            return Err(format!("GET /price/apple answered {}", response.status()).into());
        }
        let cache = response.headers()["x-cache"].clone();
        let body = response.into_body().collect().await?.to_bytes();
        print!("x-cache: {cache:?}, {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}
