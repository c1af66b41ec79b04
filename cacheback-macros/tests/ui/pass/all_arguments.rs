//! Every argument at once, and each form of `client = ...`.
#![deny(warnings)]

use std::sync::{Arc, OnceLock};

use cacheback::{Cacheback, cacheback};

static CACHE: OnceLock<Cacheback> = OnceLock::new();

fn cache() -> &'static Cacheback {
    CACHE.get_or_init(|| Cacheback::builder().build().expect("client"))
}

fn owned_cache() -> Cacheback {
    cache().clone()
}

fn shared_cache() -> Arc<Cacheback> {
    Arc::new(cache().clone())
}

#[cacheback(
    name = "reports.by_region",
    lifetime = "1h30m",
    stale_ttl = "2d",
    refresh_timeout = "90s",
    fetch_timeout = "500ms",
    stale_threshold = "10m",
    stale_if_error = "1h",
    fetch_on_miss = false,
    fleet_coalescing = true,
    early_refresh = 1,
    jitter = 0.1,
    queue = "reports",
    schema_version = 2,
    tags = ["region:{region}", "year:{year}", "reports"],
    client = cache()
)]
async fn report(region: String, year: u16) -> Result<String, std::io::Error> {
    Ok(format!("{region} {year}"))
}

#[cacheback(client = owned_cache())]
async fn with_owned_client() -> u8 {
    1
}

#[cacheback(client = shared_cache(), lifetime = "1h 30m")]
async fn with_shared_client() -> u8 {
    2
}

#[cacheback(client = CACHE.get().expect("installed at start-up"))]
async fn with_any_expression() -> u8 {
    3
}

/// Tags from a fn of the key arguments and the value, each by reference.
fn summary_tags(region: &String, year: &u16, value: &String) -> cacheback::Tags {
    cacheback::Tags::new()
        .with(format!("region:{region}"))
        .with(format!("year:{year}:{}", value.len()))
}

#[cacheback(client = cache(), tags = summary_tags)]
async fn summary(region: String, year: u16) -> String {
    format!("{region} {year}")
}

/// A closure that captures nothing needs no parameter types; key arguments named like the
/// generated method's parameters (`args`, `value`) are fine.
#[cacheback(client = cache(), tags = |args, value| cacheback::Tags::new().with(format!("{args}:{value}")))]
async fn shadowing(value: u8) -> u8 {
    value
}

/// No key arguments: the tags are fixed.
#[cacheback(client = cache(), tags = ["settings"])]
async fn settings() -> u8 {
    0
}

async fn call_them() -> cacheback::Result<()> {
    let _: Option<Arc<String>> = report("emea".into(), 2024).await?;
    let _: Arc<u8> = with_owned_client().await?;
    let _: Arc<u8> = with_shared_client().await?;
    let _: Arc<u8> = with_any_expression().await?;
    let _: Arc<String> = summary("emea".into(), 2024).await?;
    let _: Arc<u8> = shadowing(1).await?;
    let _: Arc<u8> = settings().await?;
    Ok(())
}

fn main() {
    drop(call_them());
}
