//! # A real service: axum + PostgreSQL, read through a job and a cached page
//!
//! Run with: `cargo run -p cacheback-examples --bin service -- --self-test`
//!
//! It needs a PostgreSQL server (`CACHEBACK_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`); it creates a database of its own and drops
//! it when it exits. It serves, on 127.0.0.1 (port `$PORT`, default a free one):
//!
//! - `GET /tweets/{user}`: a user's tweets as JSON, read from PostgreSQL through the
//!   `UserTweets` job (`jobs.rs`) by a three-line handler; `Age` and `Cache-Status` say how.
//! - `POST /tweets/{user}` with the text as body: writes a tweet and invalidates the user's
//!   job key and page (they are served once more while one refresh reads the new rows).
//! - `GET /timeline/{user}`: an HTML page whose handler only sets `Cache-Control: max-age=5,
//!   stale-while-revalidate=60`; the `CachebackLayer` around it does the rest.
//!
//! Try `curl -i localhost:PORT/timeline/alice`, `curl -i -d 'hi' localhost:PORT/tweets/alice`.
//! `--self-test` requests its own server instead, prints the answers and exits.
//!
//! Where the parts are: `db.rs` (schema, queries), `jobs.rs` (the database job),
//! `routes.rs` (the router, the layer), `self_test.rs` (the scripted requests).

mod db;
mod jobs;
mod routes;
mod self_test;
#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::time::Duration;

use cacheback::Cacheback;
use cacheback_examples::pg::Database;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let Some(database) = Database::create("service").await else {
        return Err("no PostgreSQL server to use".into());
    };
    db::migrate(&database.pool).await?;
    let cache = Cacheback::builder().build()?; // in memory, with an in-process worker
    let app = routes::app(&cache, database.pool.clone())?;
    let port: u16 = std::env::var("PORT").map_or(Ok(0), |port| port.parse())?;
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    let addr = listener.local_addr()?;
    println!(
        "serving http://{addr}/timeline/alice (database {})",
        database.name()
    );
    let server = axum::serve(listener, app);
    if std::env::args().any(|arg| arg == "--self-test") {
        tokio::select! {
            served = server.into_future() => served?,
            tested = self_test::run(addr) => tested?,
        }
    } else {
        let ctrl_c = async { tokio::signal::ctrl_c().await.unwrap_or_default() };
        server.with_graceful_shutdown(ctrl_c).await?;
    }
    cache.shutdown(Duration::from_secs(1)).await;
    database.pool.close().await;
    Ok(())
}
