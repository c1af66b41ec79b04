//! W7, footprint: bytes per entry of 1,000,000 entries in the memory store, next to raw moka
//! (`moka::future::Cache<u64, Arc<Value>>`) holding the same values.
//!
//! Method: each store is filled in a fresh child process of this binary (so nothing else lives
//! in its heap), which reads its resident set size (`/proc/self/statm`) with the empty store
//! built, inserts N entries (fresh `Value`s, as a service would), runs the store's pending
//! maintenance, and reads it again: bytes per entry = RSS delta ÷ N (glibc malloc's rounding
//! and headers included, as they are in production). Median of 3 children per store. The
//! value's own share is estimated as `Arc` header + struct + string capacities.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cacheback::{Cacheback, Job, MemoryStore, Policy};
use serde_json::json;

use crate::machine::rss_bytes;
use crate::report::{self, Baseline, Record};
use crate::stats::{self, Spread};
use crate::value::{BenchJob, Fetcher, Value};
use crate::workloads::Ctx;

/// The hidden first argument that makes this binary a W7 child.
pub(crate) const CHILD_COMMAND: &str = "__w7-child";
const TRIALS: usize = 3;

pub(crate) fn footprint(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let n: u64 = ctx.scale.pick(1_000_000, 100_000);
    let per_entry = |store: &str| -> Result<(Spread, f64), String> {
        let mut samples = Vec::new();
        let mut value_bytes = 0.0;
        for _ in 0..TRIALS {
            let out = child(store, n)?;
            samples.push(
                out["bytes_per_entry"]
                    .as_f64()
                    .ok_or("child gave no figure")?,
            );
            value_bytes = out["value_bytes"].as_f64().unwrap_or(0.0);
        }
        Ok((Spread::of(&samples).ok_or("no trials")?, value_bytes))
    };
    let (ours, value_bytes) = per_entry("memorystore")?;
    let (moka, _) = per_entry("moka")?;
    let ratio = ours.median / moka.median;
    let mut r = Record::new("W7", format!("{n} entries"), "cacheback MemoryStore")
        .param("entries", n)
        .param("trials", TRIALS as u64)
        .param(
            "method",
            "RSS delta (/proc/self/statm) in a fresh child process per store, ÷ entries; median of 3",
        );
    r.figure("bytes_per_entry", ours.json());
    r.figure("value_bytes_estimate", value_bytes);
    r.figure(
        "structure_bytes_per_entry",
        stats::round3(ours.median - value_bytes),
    );
    r.baseline = Some(Baseline {
        name: "raw moka::future::Cache<u64, Arc<Value>>".to_owned(),
        figures: json!({ "bytes_per_entry": moka.json(), "structure_bytes_per_entry": stats::round3(moka.median - value_bytes) })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        ratio: stats::round3(ratio),
        ratio_of: "bytes/entry, cacheback ÷ moka".to_owned(),
    });
    r.summary = format!(
        "{:.0} B/entry (moka {:.0}); value itself ≈ {value_bytes:.0} B",
        ours.median, moka.median
    );
    r.check(
        "≤ 1.2× raw moka bytes per entry, or ≤ 400 bytes per entry",
        format!("{:.0} B = {}", ours.median, report::times(ratio)),
        ratio <= 1.2 || ours.median <= 400.0,
    );
    Ok(vec![r])
}

fn child(store: &str, n: u64) -> Result<serde_json::Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args([CHILD_COMMAND, store, &n.to_string()])
        .output()
        .map_err(|e| format!("cannot run the W7 child: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "W7 child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("W7 child output: {e}"))
}

/// The arguments of a W7 child (`__w7-child STORE ENTRIES`).
#[derive(Debug, clap::Args)]
pub(crate) struct ChildArgs {
    /// `memorystore` or `moka`.
    store: String,
    /// Entries to insert.
    #[arg(default_value_t = 1_000_000)]
    entries: u64,
}

/// The child: fills one store and prints `{"bytes_per_entry", "value_bytes"}`.
pub(crate) fn child_main(args: &ChildArgs) {
    let store = args.store.as_str();
    let n = args.entries;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (before, after) = rt.block_on(async {
        match store {
            "memorystore" => {
                let memory = MemoryStore::builder().max_entries(2 * n).build();
                let client = Cacheback::builder()
                    .store(memory.clone())
                    .in_process_worker(false)
                    .build()
                    .expect("client");
                let job = BenchJob {
                    fetcher: Fetcher::new(Duration::ZERO),
                    policy: Policy::default().lifetime(Duration::from_secs(3600)),
                };
                assert_eq!(job.name(), "bench");
                let handle = client.job(job);
                let before = rss_bytes().unwrap_or(0);
                for key in 0..n {
                    handle.set(key, Value::new(key)).await.expect("set");
                }
                let count = memory.entry_count();
                assert_eq!(count, n, "every entry is kept");
                (before, rss_bytes().unwrap_or(0))
            }
            "moka" => {
                let cache: moka::future::Cache<u64, Arc<Value>> = moka::future::Cache::new(2 * n);
                let before = rss_bytes().unwrap_or(0);
                for key in 0..n {
                    cache.insert(key, Arc::new(Value::new(key))).await;
                }
                cache.run_pending_tasks().await;
                assert_eq!(cache.entry_count(), n, "every entry is kept");
                (before, rss_bytes().unwrap_or(0))
            }
            other => panic!("unknown store `{other}`"),
        }
    });
    let per_entry = after.saturating_sub(before) as f64 / n as f64;
    println!(
        "{}",
        json!({
            "store": store,
            "entries": n,
            "rss_before": before,
            "rss_after": after,
            "bytes_per_entry": stats::round3(per_entry),
            "value_bytes": Value::new(0).arc_bytes(),
        })
    );
}
