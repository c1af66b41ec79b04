//! W5, the miss path: the first read of a missing key (the fetch sleeps 50 ms) with
//! `fetch_on_miss` on and off, and 64 concurrent first reads of one missing key — for cacheback,
//! and for the peers on the 64 concurrent misses (moka `get_with`, plain `#[cached]`,
//! amalgam-cache `get_or_set`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cacheback::Policy;

use crate::peers::{Lifetime, Subject};
use crate::report::{self, Record};
use crate::stats::{self, Spread};
use crate::value::{ClientSetup, Fetcher, memory_client};
use crate::workloads::{Ctx, runtime};

const FETCH: Duration = Duration::from_millis(50);
const CONCURRENT: usize = 64;

pub(crate) fn memory(ctx: &Ctx) -> Result<Vec<Record>, String> {
    let singles = ctx.scale.pick(20, 5);
    let trials = ctx.scale.pick(5, 2);
    let rt = runtime();
    rt.block_on(async {
        let mut records = Vec::new();
        for fetch_on_miss in [true, false] {
            let fetcher = Fetcher::new(FETCH);
            let (handle, queue) = memory_client(
                &ClientSetup::new(
                    Policy::default()
                        .lifetime(Duration::from_secs(3600))
                        .fetch_on_miss(fetch_on_miss),
                ),
                Arc::clone(&fetcher),
                None,
            );
            let subject = Arc::new(Subject::Cacheback {
                handle,
                queue: queue.into(),
            });
            records.push(single(&subject, &fetcher, singles, fetch_on_miss).await?);
            let mut r = concurrent(&subject, &fetcher, trials, fetch_on_miss).await?;
            if fetch_on_miss {
                let max = r.number("fetches_per_trial/max").unwrap_or(f64::NAN);
                let got = r.number("callers_with_value_per_trial/min").unwrap_or(0.0);
                r.check(
                    "64 concurrent misses of one key → 1 fetch, all 64 callers get the value",
                    format!("max {max} fetches, min {got} callers with the value"),
                    max == 1.0 && got == CONCURRENT as f64,
                );
            }
            records.push(r);
        }
        for peer in ["moka", "cached", "amalgam"] {
            let fetcher = Fetcher::new(FETCH);
            let hour = Duration::from_secs(3600);
            let subject = Arc::new(match peer {
                "moka" => Subject::moka(hour, Arc::clone(&fetcher)),
                "amalgam" => Subject::amalgam(hour, Arc::clone(&fetcher))?,
                _ => Subject::cached(false, Lifetime::W2, Arc::clone(&fetcher)).await,
            });
            records.push(concurrent(&subject, &fetcher, trials, true).await?);
        }
        Ok(records)
    })
}

async fn single(
    subject: &Arc<Subject>,
    fetcher: &Fetcher,
    n: usize,
    fetch_on_miss: bool,
) -> Result<Record, String> {
    let mut hist = stats::latency_histogram();
    let mut with_value = 0u64;
    let calls_before = fetcher.calls();
    for i in 0..n {
        let t = Instant::now();
        let read = subject.read(10_000 + i as u64).await;
        stats::record(&mut hist, t.elapsed());
        with_value += u64::from(read.value.is_some());
    }
    // With fetch_on_miss off the fetches run in the worker: let them finish before counting.
    tokio::time::sleep(FETCH * 3).await;
    let fetches = fetcher.calls() - calls_before;
    let mut r = Record::new(
        "W5",
        format!(
            "first read of a missing key, fetch_on_miss {}",
            on_off(fetch_on_miss)
        ),
        subject.name(),
    )
    .param("fetch_ms", FETCH.as_millis() as u64)
    .param("keys", n as u64);
    r.figure("latency", stats::latency_figures(&hist));
    r.figure("fetch_calls", fetches);
    r.figure("callers_with_value", with_value);
    r.summary = format!(
        "p50 {}, max {}; {fetches} fetches for {n} keys; {with_value}/{n} callers got a value",
        report::micros(stats::ns_to_us(hist.value_at_quantile(0.5))),
        report::micros(stats::ns_to_us(hist.max())),
    );
    r.latencies = Some(hist);
    Ok(r)
}

async fn concurrent(
    subject: &Arc<Subject>,
    fetcher: &Fetcher,
    trials: usize,
    fetch_on_miss: bool,
) -> Result<Record, String> {
    let mut hist = stats::latency_histogram();
    let mut fetches = Vec::new();
    let mut got = Vec::new();
    for trial in 0..trials {
        let key = 20_000 + trial as u64;
        let calls_before = fetcher.calls();
        let barrier = Arc::new(tokio::sync::Barrier::new(CONCURRENT));
        let readers: Vec<_> = (0..CONCURRENT)
            .map(|_| {
                let (subject, barrier) = (Arc::clone(subject), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let t = Instant::now();
                    let read = subject.read(key).await;
                    (t.elapsed(), read.value.is_some())
                })
            })
            .collect();
        let mut with_value = 0.0;
        for reader in readers {
            let (took, some) = reader.await.map_err(|e| e.to_string())?;
            stats::record(&mut hist, took);
            with_value += f64::from(u8::from(some));
        }
        tokio::time::sleep(FETCH * 3).await;
        fetches.push((fetcher.calls() - calls_before) as f64);
        got.push(with_value);
    }
    let f = Spread::of(&fetches).ok_or("no trials")?;
    let g = Spread::of(&got).ok_or("no trials")?;
    let mut r = Record::new(
        "W5",
        format!(
            "64 concurrent first reads of one key, fetch_on_miss {}",
            on_off(fetch_on_miss)
        ),
        subject.name(),
    )
    .param("fetch_ms", FETCH.as_millis() as u64)
    .param("readers", CONCURRENT as u64)
    .param("trials", trials as u64)
    .param("what_it_does", subject.describe());
    r.figure("fetches_per_trial", f.json());
    r.figure("callers_with_value_per_trial", g.json());
    r.figure("latency", stats::latency_figures(&hist));
    r.summary = format!(
        "fetches {} (max {}); callers with the value {} (min {}); p50 {}, max {}",
        f.median,
        f.max,
        g.median,
        g.min,
        report::micros(stats::ns_to_us(hist.value_at_quantile(0.5))),
        report::micros(stats::ns_to_us(hist.max())),
    );
    r.latencies = Some(hist);
    Ok(r)
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}
