//! # Metrics: cacheback's counters and histograms on a Prometheus endpoint
//!
//! Run with: `cargo run -p cacheback-examples --bin prometheus -- --seconds 60`
//! then `curl -s localhost:9000/metrics | grep cacheback_`
//!
//! cacheback reports through the `metrics` facade; any recorder works. Here it is
//! `metrics-exporter-prometheus`, installed *before* the job is registered (a job's metric
//! handles are registered with it). The names and labels are in one table, in the crate docs'
//! "Metrics" section; `docs/grafana-dashboard.json` is a Grafana dashboard over them.

use std::net::Ipv4Addr;
use std::time::Duration;

use cacheback::{Cacheback, Policy, job_fn};
use clap::Parser;
use metrics_exporter_prometheus::PrometheusBuilder;

/// Reads ten keys of a job with a one-second lifetime, so that every kind of read shows.
#[derive(Debug, Parser)]
struct Args {
    /// The port of `/metrics` on 127.0.0.1.
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// How long to run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    PrometheusBuilder::new()
        .with_http_listener((Ipv4Addr::LOCALHOST, args.port))
        .install()?;
    let cache = Cacheback::builder().prefix("prometheus-demo").build()?;
    let square = cache.job(job_fn(
        "square",
        Policy::default().lifetime(Duration::from_secs(1)),
        |n: u64| async move {
            tokio::time::sleep(Duration::from_millis(20)).await; // the upstream
            Ok::<_, std::io::Error>(n * n)
        },
    ));
    eprintln!("metrics on http://127.0.0.1:{}/metrics", args.port);
    let mut every = tokio::time::interval(Duration::from_millis(10));
    for i in 0..args.seconds * 100 {
        every.tick().await;
        square.get(i % 10).await?;
    }
    Ok(())
}
