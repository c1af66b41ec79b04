//! The chaos run's driver: Redis, the child processes, the timeline of faults, the final check
//! and the report.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use cacheback::JobHandle;
use cacheback_test_support::RedisServer;
use serde_json::{Value as Json, json};

use super::Args;
use super::child_proc::{
    BACKOFF_INITIAL, BACKOFF_MAX, ChaosJob, FAIL_P, FETCH_TIMEOUT, HANG_P, JOB_NAME, LIFETIME,
    REFRESH_TIMEOUT, VISIBILITY, WORKER_CONCURRENCY, client, now_ms,
};
use super::logs::{self, LogFile, Outcome, ProcessLog};

/// Children get this long to start before the fault window opens.
const STARTUP_MS: u64 = 2_000;
/// A read that ends within this long after Redis answered again is counted apart
/// ("reconnecting", while the connections re-establish); none may fail.
const RECONNECT_GRACE_MS: u64 = 1_000;
/// How long Redis stays down.
const REDIS_DOWN: Duration = Duration::from_secs(1);
/// The replacement worker starts this long after the kill.
const REPLACEMENT_AFTER_MS: u64 = 2_000;
/// The driver checks the keys this often after the fault window.
const MONITOR_EVERY_MS: u64 = 250;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One child process and what it told the driver.
#[derive(Debug)]
struct Proc {
    name: String,
    role: &'static str,
    child: Option<Child>,
    log: PathBuf,
    ready: bool,
    in_flight: usize,
    summary: Option<Json>,
    exit: Option<String>,
    killed_at: Option<u64>,
    /// Where a worker's heartbeats go (`logs/<name>.hb`), for looking into a run afterwards.
    heartbeats: Option<LogFile>,
    /// A worker's processed count at its last heartbeat before Redis answered again.
    processed_at_up: u64,
    /// When a worker processed its first refresh after Redis answered again.
    resumed_at: Option<u64>,
}

/// The child processes; all still running are killed when it drops (error paths included).
#[derive(Debug)]
struct Fleet {
    procs: Vec<Proc>,
    /// When Redis answered again after its restart.
    redis_up_at: Option<u64>,
    tx: Sender<(usize, String)>,
    rx: Receiver<(usize, String)>,
}

impl Fleet {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        Fleet {
            procs: Vec::new(),
            redis_up_at: None,
            tx,
            rx,
        }
    }

    /// Starts a child (`chaos-<role>`) whose stdout lines are forwarded to the driver.
    fn spawn(
        &mut self,
        role: &'static str,
        name: &str,
        common: &[String],
        log_dir: &Path,
    ) -> Result<usize, String> {
        let log = log_dir.join(format!("{name}.log"));
        let mut args = vec![
            "--name".to_owned(),
            name.to_owned(),
            "--log".to_owned(),
            log.display().to_string(),
        ];
        args.extend_from_slice(common);
        let mut child = crate::fleet::spawn(&format!("chaos-{role}"), &args)?;
        let idx = self.procs.len();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| format!("{name}: no stdout"))?;
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((idx, line)).is_err() {
                    break;
                }
            }
        });
        self.procs.push(Proc {
            name: name.to_owned(),
            role,
            child: Some(child),
            log,
            ready: false,
            in_flight: 0,
            summary: None,
            exit: None,
            killed_at: None,
            heartbeats: match role {
                "worker" => Some(LogFile::create(
                    &log_dir.join(format!("{name}.hb")),
                    name,
                    "heartbeats: in_flight processed last_poll_ms now_ms",
                )?),
                _ => None,
            },
            processed_at_up: 0,
            resumed_at: None,
        });
        eprintln!("chaos: started {name}");
        Ok(idx)
    }

    /// Handles the lines that arrive within `wait` (at least one wait, then all queued).
    fn pump(&mut self, wait: Duration) {
        match self.rx.recv_timeout(wait) {
            Ok((idx, line)) => self.handle(idx, &line),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
        }
        while let Ok((idx, line)) = self.rx.try_recv() {
            self.handle(idx, &line);
        }
    }

    fn handle(&mut self, idx: usize, line: &str) {
        let proc = &mut self.procs[idx];
        if line == "READY" {
            proc.ready = true;
        } else if let Some(beat) = line.strip_prefix("HB ") {
            if let Some(hb) = &proc.heartbeats {
                hb.line(beat);
            }
            // `<in_flight> <processed> <last poll ms> <now ms>`
            let f: Vec<u64> = beat.split(' ').filter_map(|n| n.parse().ok()).collect();
            if let [in_flight, processed, _, at] = f[..] {
                proc.in_flight = usize::try_from(in_flight).unwrap_or(usize::MAX);
                match self.redis_up_at {
                    Some(up) if at > up => {
                        if proc.resumed_at.is_none() && processed > proc.processed_at_up {
                            proc.resumed_at = Some(at);
                        }
                    }
                    _ => proc.processed_at_up = processed,
                }
            }
        } else if let Some(summary) = line.strip_prefix("SUMMARY ") {
            match serde_json::from_str(summary) {
                Ok(json) => proc.summary = Some(json),
                Err(e) => eprintln!("chaos: {}: unreadable summary ({e}): {summary}", proc.name),
            }
        } else {
            eprintln!("[{}] {line}", proc.name);
        }
    }

    /// Records exits; an exit before `expected_exit_ms` (other than a kill) is an error.
    fn check_exits(&mut self, expected_exit_ms: u64) -> Result<(), String> {
        for proc in &mut self.procs {
            let Some(child) = proc.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                proc.exit = Some(status.to_string());
                proc.child = None;
                if !status.success() || now_ms() + 500 < expected_exit_ms {
                    return Err(format!(
                        "{} exited early or failed ({status}); see its stderr above",
                        proc.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// `kill -9`s a child and reaps it; returns when (unix ms).
    fn kill(&mut self, idx: usize) -> Result<u64, String> {
        let proc = &mut self.procs[idx];
        let mut child = proc
            .child
            .take()
            .ok_or_else(|| format!("{} is not running", proc.name))?;
        child
            .kill()
            .map_err(|e| format!("kill -9 {}: {e}", proc.name))?;
        let at = now_ms();
        let status = child
            .wait()
            .map_err(|e| format!("reaping {}: {e}", proc.name))?;
        proc.exit = Some(status.to_string());
        proc.killed_at = Some(at);
        Ok(at)
    }

    fn running(&self) -> usize {
        self.procs.iter().filter(|p| p.child.is_some()).count()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for proc in &mut self.procs {
            if let Some(mut child) = proc.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The kill of a worker mid-refresh.
#[derive(Debug, Clone, Copy)]
struct Kill {
    idx: usize,
    at: u64,
    in_flight: usize,
}

/// The Redis restart.
#[derive(Debug, Clone, Copy)]
struct Restart {
    down_at: u64,
    exited_at: u64,
    up_at: u64,
    /// `DBSIZE` before the stop and after the start (the data must survive).
    keys_before: Option<u64>,
    keys_after: Option<u64>,
}

/// `DBSIZE`, or `None` if Redis did not answer.
fn dbsize(redis: &RedisServer) -> Option<u64> {
    redis.query(&["DBSIZE"]).ok()
}

/// What the driver saw of each key after the fault window.
#[derive(Debug, Default)]
struct KeyWatch {
    /// Key -> `fetched_at` of its first value fetched after the faults stopped.
    refreshed: BTreeMap<u64, u64>,
    /// Key -> `fresh_until` of the value it held when first looked at after the faults.
    fresh_until_at_end: BTreeMap<u64, u64>,
    /// Peeks that failed or found no entry.
    peek_errors: u64,
    missing: u64,
}

async fn watch_keys(job: &JobHandle<ChaosJob>, keys: u64, faults_until: u64, w: &mut KeyWatch) {
    for key in 0..keys {
        if w.refreshed.contains_key(&key) {
            continue;
        }
        match job.peek(key).await {
            Ok(Some(peek)) => {
                let fetched_at = peek.meta.fetched_at.as_millis();
                if fetched_at >= faults_until {
                    w.refreshed.insert(key, fetched_at);
                } else {
                    w.fresh_until_at_end
                        .entry(key)
                        .or_insert(peek.meta.fresh_until.as_millis());
                }
            }
            Ok(None) => w.missing += 1,
            Err(_) => w.peek_errors += 1,
        }
    }
}

/// Runs the whole chaos run.
pub(super) fn run(args: &Args) -> Result<(), String> {
    let log_dir = args.out.join("logs");
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
    for entry in std::fs::read_dir(&log_dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|x| x == "log" || x == "hb") {
            let _ = std::fs::remove_file(path);
        }
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; use --release");
    }
    let mut redis = RedisServer::try_start().map_err(|e| e.to_string())?;
    let url = redis.url();
    let prefix = format!("chaos-{}-{}", std::process::id(), now_ms());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let cache = rt.block_on(async { client(&url, &prefix) })?;
    let job = cache.job(ChaosJob::new((0, 0), None));
    let warm = rt.block_on(job.refresh_many(0..args.keys, 32, |_| {}));
    if warm.failed > 0 {
        return Err(format!(
            "warming failed for {} keys: {:?}",
            warm.failed,
            warm.failures.first().map(|(k, e)| format!("key {k}: {e}"))
        ));
    }
    eprintln!(
        "chaos: redis-server at {url}, prefix `{prefix}`, {} keys warmed",
        args.keys
    );

    let window_ms = args.seconds * 1_000;
    let start_ms = now_ms() + STARTUP_MS;
    let faults_until = start_ms + window_ms;
    let recovery_ms =
        ms(LIFETIME + FETCH_TIMEOUT + BACKOFF_MAX + REFRESH_TIMEOUT + VISIBILITY) + 1_000;
    let check_at = faults_until + recovery_ms;
    let until_ms = check_at + 1_000;
    let kill_at = start_ms + window_ms / 4;
    let restart_at = start_ms + window_ms / 2;
    let common: Vec<String> = [
        ("--url", url.clone()),
        ("--prefix", prefix.clone()),
        ("--keys", args.keys.to_string()),
        ("--readers", args.readers.to_string()),
        ("--start-ms", start_ms.to_string()),
        ("--faults-until-ms", faults_until.to_string()),
        ("--until-ms", until_ms.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_owned(), v])
    .collect();

    let mut fleet = Fleet::new();
    for name in ["web-1", "web-2"] {
        fleet.spawn("web", name, &common, &log_dir)?;
    }
    let victim = fleet.spawn("worker", "worker-1", &common, &log_dir)?;
    fleet.spawn("worker", "worker-2", &common, &log_dir)?;
    let ready_by = now_ms() + 15_000;
    while fleet.procs.iter().any(|p| !p.ready) {
        fleet.pump(Duration::from_millis(10));
        fleet.check_exits(until_ms)?;
        if now_ms() > ready_by {
            let late: Vec<&str> = fleet
                .procs
                .iter()
                .filter(|p| !p.ready)
                .map(|p| p.name.as_str())
                .collect();
            return Err(format!("children not ready within 15 s: {late:?}"));
        }
    }
    let ready_at = now_ms();
    if ready_at > start_ms {
        eprintln!(
            "chaos: warning: children were ready {} ms after the planned start",
            ready_at - start_ms
        );
    }
    eprintln!(
        "chaos: fault window of {} s from t=0; kill at t={:.1} s, Redis restart at t={:.1} s, \
         check at t={:.1} s",
        args.seconds,
        (kill_at - start_ms) as f64 / 1e3,
        (restart_at - start_ms) as f64 / 1e3,
        (check_at - start_ms) as f64 / 1e3
    );

    let mut kill: Option<Kill> = None;
    let mut forced_kill = false;
    let mut replacement: Option<usize> = None;
    let mut restart: Option<Restart> = None;
    let mut watch = KeyWatch::default();
    let mut next_watch = faults_until;
    let t = |at: u64| at.saturating_sub(start_ms) as f64 / 1e3;
    loop {
        fleet.pump(Duration::from_millis(5));
        fleet.check_exits(until_ms)?;
        let now = now_ms();
        if kill.is_none() && now >= kill_at {
            let in_flight = fleet.procs[victim].in_flight;
            // Mid-refresh: the worker's last heartbeat (every 20 ms) had refreshes running.
            if in_flight > 0 || now >= kill_at + 5_000 {
                forced_kill = in_flight == 0;
                let at = fleet.kill(victim)?;
                eprintln!(
                    "chaos: t={:.2} s kill -9 worker-1 with {in_flight} refreshes in flight",
                    t(at)
                );
                kill = Some(Kill {
                    idx: victim,
                    at,
                    in_flight,
                });
            }
        }
        if let Some(k) = kill
            && replacement.is_none()
            && now >= k.at + REPLACEMENT_AFTER_MS
        {
            replacement = Some(fleet.spawn("worker", "worker-3", &common, &log_dir)?);
        }
        if restart.is_none() && now >= restart_at {
            let keys_before = dbsize(&redis);
            let down_at = now_ms();
            redis.stop_saving().map_err(|e| e.to_string())?;
            let exited_at = now_ms();
            std::thread::sleep(REDIS_DOWN);
            redis.start_again().map_err(|e| e.to_string())?;
            let up_at = now_ms();
            fleet.redis_up_at = Some(up_at);
            let keys_after = dbsize(&redis);
            eprintln!(
                "chaos: t={:.2} s Redis stopped (SHUTDOWN SAVE), answering again at t={:.2} s",
                t(down_at),
                t(up_at)
            );
            restart = Some(Restart {
                down_at,
                exited_at,
                up_at,
                keys_before,
                keys_after,
            });
        }
        if now >= next_watch {
            rt.block_on(watch_keys(&job, args.keys, faults_until, &mut watch));
            next_watch = now_ms() + MONITOR_EVERY_MS;
        }
        if now >= check_at {
            break;
        }
    }
    // The last look: a few tries, in case a peek fails.
    for _ in 0..3 {
        rt.block_on(watch_keys(&job, args.keys, faults_until, &mut watch));
        if watch.refreshed.len() as u64 == args.keys {
            break;
        }
    }
    let lost: Vec<u64> = (0..args.keys)
        .filter(|k| !watch.refreshed.contains_key(k))
        .collect();
    eprintln!(
        "chaos: t={:.2} s check: {} of {} keys refreshed after the faults stopped",
        t(now_ms()),
        watch.refreshed.len(),
        args.keys
    );

    // Let the children finish (they stop at `until_ms` on their own).
    let exit_by = until_ms + 20_000;
    while fleet.running() > 0 && now_ms() < exit_by {
        fleet.pump(Duration::from_millis(20));
        fleet.check_exits(until_ms)?;
    }
    fleet.pump(Duration::from_millis(50));
    if fleet.running() > 0 {
        return Err("children did not exit within 20 s of their deadline".to_owned());
    }
    let missing_summaries: Vec<&str> = fleet
        .procs
        .iter()
        .filter(|p| p.killed_at.is_none() && p.summary.is_none())
        .map(|p| p.name.as_str())
        .collect();
    if !missing_summaries.is_empty() {
        return Err(format!("no summary from {missing_summaries:?}"));
    }

    let plan = Plan {
        args,
        start_ms,
        faults_until,
        check_at,
        recovery_ms,
        ready_at,
        forced_kill,
        replacement: replacement.is_some(),
    };
    let report = analyse(&plan, &fleet, kill, restart, &watch, &lost)?;
    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let json_path = args.out.join("chaos.json");
    let md_path = args.out.join("chaos.md");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&report.json).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;
    std::fs::write(&md_path, &report.markdown)
        .map_err(|e| format!("cannot write {}: {e}", md_path.display()))?;
    println!("{}", report.markdown);
    eprintln!(
        "chaos: wrote {}, {} and {}",
        json_path.display(),
        md_path.display(),
        log_dir.display()
    );
    drop(cache);
    if report.failures.is_empty() {
        Ok(())
    } else {
        Err(format!("FAILED: {}", report.failures.join("; ")))
    }
}

/// The run's fixed facts, for the analysis.
#[derive(Debug)]
struct Plan<'a> {
    args: &'a Args,
    start_ms: u64,
    faults_until: u64,
    check_at: u64,
    recovery_ms: u64,
    ready_at: u64,
    forced_kill: bool,
    replacement: bool,
}

/// The outcome: JSON, Markdown and the failed requirements.
#[derive(Debug)]
struct Report {
    json: Json,
    markdown: String,
    failures: Vec<String>,
}

fn sum(summaries: &[&Json], field: &str) -> u64 {
    summaries
        .iter()
        .map(|s| s[field].as_u64().unwrap_or(0))
        .sum()
}

fn max(summaries: &[&Json], field: &str) -> u64 {
    summaries
        .iter()
        .map(|s| s[field].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0)
}

fn analyse(
    plan: &Plan<'_>,
    fleet: &Fleet,
    kill: Option<Kill>,
    restart: Option<Restart>,
    watch: &KeyWatch,
    lost: &[u64],
) -> Result<Report, String> {
    let args = plan.args;
    let mut logs_by_idx = Vec::new();
    for proc in &fleet.procs {
        let text = std::fs::read_to_string(&proc.log)
            .map_err(|e| format!("cannot read {}: {e}", proc.log.display()))?;
        let log = logs::parse(&text).map_err(|e| format!("{}: {e}", proc.log.display()))?;
        logs_by_idx.push(log);
    }
    let web_logs: Vec<&ProcessLog> = logs_by_idx.iter().filter(|l| l.role == "web").collect();
    let worker_logs: Vec<&ProcessLog> = logs_by_idx.iter().filter(|l| l.role == "worker").collect();
    let web: Vec<&Json> = fleet
        .procs
        .iter()
        .filter(|p| p.role == "web")
        .filter_map(|p| p.summary.as_ref())
        .collect();
    let workers: Vec<&Json> = fleet
        .procs
        .iter()
        .filter(|p| p.role == "worker")
        .filter_map(|p| p.summary.as_ref())
        .collect();
    let all: Vec<&Json> = web.iter().chain(workers.iter()).copied().collect();

    let outage = restart.map(|r| (r.down_at, r.up_at));
    let failed_reads = web_logs.iter().flat_map(|l| l.failed_reads.iter());
    let (failed_up, failed_outage, failed_reconnect) =
        logs::count_phases(failed_reads, outage, RECONNECT_GRACE_MS);
    let fallback_reads = web_logs.iter().flat_map(|l| l.fallback_reads.iter());
    let (fallback_up, fallback_outage, fallback_reconnect) =
        logs::count_phases(fallback_reads, outage, RECONNECT_GRACE_MS);
    let failed_logged = failed_up + failed_outage + failed_reconnect;
    let reads = sum(&web, "reads");
    let served = sum(&web, "served");
    let failed = sum(&web, "failed");
    let panics = sum(&all, "panics") + sum(&web, "reader_panics");
    let wrong_key = sum(&web, "wrong_key");
    let stale_served = sum(&web, "stale_served");
    let staleness_mean = if stale_served == 0 {
        0.0
    } else {
        sum(&web, "staleness_sum_ms") as f64 / stale_served as f64
    };
    let staleness_max = max(&web, "staleness_max_ms");
    let staleness_p99 = max(&web, "staleness_p99_ms");

    let worker_fetches: Vec<&logs::Fetch> =
        worker_logs.iter().flat_map(|l| l.fetches.iter()).collect();
    let events = logs::stale_events(worker_fetches.iter().copied(), ms(VISIBILITY));
    let outcome_count = |fetches: &[&logs::Fetch], want: Option<Outcome>| {
        fetches
            .iter()
            .filter(|f| f.end.map(|(_, o)| o) == want)
            .count()
    };
    let in_window: Vec<&logs::Fetch> = worker_fetches
        .iter()
        .copied()
        .filter(|f| (plan.start_ms..plan.faults_until).contains(&f.start))
        .collect();
    let window_err = outcome_count(&in_window, Some(Outcome::Err));
    let window_hang = outcome_count(&in_window, Some(Outcome::Cancelled));
    let share = |n: usize, of: usize| {
        if of == 0 { 0.0 } else { n as f64 / of as f64 }
    };
    let refetches = logs::refetches_of_fresh(worker_fetches.iter().copied(), ms(LIFETIME));
    let refetches_outside_outage = refetches
        .iter()
        .filter(|(_, start)| match outage {
            // The earlier value may not have been stored while Redis was down (or right after).
            Some((down, up)) => !(down.saturating_sub(ms(LIFETIME))
                ..=up + ms(VISIBILITY) + RECONNECT_GRACE_MS)
                .contains(start),
            None => true,
        })
        .count();
    let web_fetches: Vec<&logs::Fetch> = web_logs.iter().flat_map(|l| l.fetches.iter()).collect();
    let web_fetch_spans: Vec<logs::ReadSpan> = web_fetches
        .iter()
        .map(|f| logs::ReadSpan {
            start: f.start,
            end: f.end.map_or(f.start, |(at, _)| at),
            key: f.key,
            reason: String::new(),
        })
        .collect();
    let (web_fetch_up, web_fetch_outage, web_fetch_reconnect) =
        logs::count_phases(&web_fetch_spans, outage, RECONNECT_GRACE_MS);

    // The killed worker's cut fetches and their redelivery.
    let mut kill_json = Json::Null;
    let mut kill_text = "none".to_owned();
    if let Some(k) = kill {
        let killed = &logs_by_idx[k.idx];
        let others: Vec<&ProcessLog> = worker_logs
            .iter()
            .copied()
            .filter(|l| l.name != killed.name)
            .collect();
        let redelivered = logs::redeliveries(
            killed,
            k.at,
            &others,
            ms(REFRESH_TIMEOUT + VISIBILITY) + 2_000,
        );
        let delays: Vec<u64> = redelivered.iter().filter_map(|(_, d)| *d).collect();
        let not_seen = redelivered.len() - delays.len();
        let (min_d, max_d) = (delays.iter().min().copied(), delays.iter().max().copied());
        kill_json = json!({
            "at_s": (k.at - plan.start_ms) as f64 / 1e3,
            "in_flight_at_kill": k.in_flight,
            "forced_without_refresh_in_flight": plan.forced_kill,
            "fetches_cut": redelivered.len(),
            "redelivered_after_ms": { "min": min_d, "max": max_d, "not_seen": not_seen },
            "replacement_started": plan.replacement,
        });
        kill_text = format!(
            "worker-1 at t={:.1} s, {} refreshes in flight{}, {} fetches cut; refetched by another \
             worker {} after the kill{}",
            (k.at - plan.start_ms) as f64 / 1e3,
            k.in_flight,
            if plan.forced_kill {
                " (forced: none seen in 5 s)"
            } else {
                ""
            },
            redelivered.len(),
            match (min_d, max_d) {
                (Some(a), Some(b)) => format!("{:.1}–{:.1} s", a as f64 / 1e3, b as f64 / 1e3),
                _ => "—".to_owned(),
            },
            if not_seen > 0 {
                format!(" ({not_seen} not refetched within the window)")
            } else {
                String::new()
            }
        );
    }
    // Workers alive at the restart: when each processed its first refresh after Redis
    // answered again.
    let resumed: Vec<(String, Option<u64>)> = fleet
        .procs
        .iter()
        .filter(|p| p.role == "worker" && p.killed_at.is_none())
        .map(|p| {
            let after = restart.and_then(|r| p.resumed_at.map(|at| at.saturating_sub(r.up_at)));
            (p.name.clone(), after)
        })
        .collect();
    let resumed_text = resumed
        .iter()
        .map(|(name, after)| match after {
            Some(ms) => format!("{name} +{:.2} s", *ms as f64 / 1e3),
            None => format!("{name} never"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let restart_text = restart.map_or("none".to_owned(), |r| {
        format!(
            "at t={:.1} s: down {:.2} s (SHUTDOWN SAVE {} ms, {} ms stopped, {} ms until PING); \
             keys {} before, {} after; workers refreshing again: {resumed_text} after Redis \
             answered",
            (r.down_at - plan.start_ms) as f64 / 1e3,
            (r.up_at - r.down_at) as f64 / 1e3,
            r.exited_at - r.down_at,
            ms(REDIS_DOWN),
            r.up_at
                .saturating_sub(r.exited_at)
                .saturating_sub(ms(REDIS_DOWN)),
            r.keys_before.map_or("?".to_owned(), |n| n.to_string()),
            r.keys_after.map_or("?".to_owned(), |n| n.to_string()),
        )
    });

    // Recovery after the faults: per key, from when it needed a refresh (the faults stopped,
    // or its value turned stale, whichever is later) to the refreshed value's fetch.
    let delays: Vec<u64> = watch
        .refreshed
        .iter()
        .map(|(key, fetched_at)| {
            let due = watch
                .fresh_until_at_end
                .get(key)
                .map_or(plan.faults_until, |f| (*f).max(plan.faults_until));
            fetched_at.saturating_sub(due)
        })
        .collect();
    let bound = ms(REFRESH_TIMEOUT + VISIBILITY);
    let late = delays.iter().filter(|d| **d > bound).count();
    let max_delay = delays.iter().max().copied().unwrap_or(0);
    let all_refreshed_at = watch.refreshed.values().max().copied();
    let dead_letters = sum(&workers, "dead_lettered");

    let mut failures = Vec::new();
    if panics > 0 {
        failures.push(format!("{panics} panics"));
    }
    if failed_up > 0 {
        failures.push(format!("{failed_up} reads failed while Redis was up"));
    }
    if failed_reconnect > 0 {
        failures.push(format!(
            "{failed_reconnect} reads failed in the {RECONNECT_GRACE_MS} ms after Redis answered again"
        ));
    }
    if !lost.is_empty() {
        failures.push(format!(
            "{} refreshes lost (keys {:?}...)",
            lost.len(),
            &lost[..lost.len().min(10)]
        ));
    }
    if let Some(r) = restart
        && r.keys_after.unwrap_or(0) < args.keys
    {
        failures.push(format!(
            "Redis held {:?} keys after its restart ({:?} before): data lost",
            r.keys_after, r.keys_before
        ));
    }
    if wrong_key > 0 {
        failures.push(format!("{wrong_key} reads got another key's value"));
    }
    if failed_logged as u64 != failed {
        failures.push(format!(
            "the logs hold {failed_logged} failed reads, the summaries count {failed}"
        ));
    }

    let json = json!({
        "seconds": args.seconds,
        "start_ms": plan.start_ms,
        "faults_until_ms": plan.faults_until,
        "check_at_ms": plan.check_at,
        "keys": args.keys,
        "processes": { "web": 2, "readers_per_web": args.readers, "workers": 2,
                       "worker_concurrency": WORKER_CONCURRENCY, "redis": 1 },
        "policy": {
            "job": JOB_NAME,
            "lifetime_ms": ms(LIFETIME), "fetch_timeout_ms": ms(FETCH_TIMEOUT),
            "refresh_timeout_ms": ms(REFRESH_TIMEOUT), "visibility_timeout_ms": ms(VISIBILITY),
            "retry_backoff_ms": [ms(BACKOFF_INITIAL), ms(BACKOFF_MAX)],
            "fault_fail_p": FAIL_P, "fault_hang_p": HANG_P,
        },
        "children_ready_late_ms": plan.ready_at.saturating_sub(plan.start_ms),
        "reads": reads,
        "reads_served": served,
        "reads_failed": {
            "total": failed,
            "redis_up": failed_up,
            "redis_down": failed_outage,
            "reconnecting": failed_reconnect,
            "reconnect_grace_ms": RECONNECT_GRACE_MS,
        },
        "reads_by_status": {
            "hit": sum(&web, "hit"), "stale": sum(&web, "stale"),
            "stale_refetched": sum(&web, "stale_refetched"), "miss": sum(&web, "miss"),
            "miss_fetched": sum(&web, "miss_fetched"),
        },
        "reads_served_by_fallback_fetch": {
            "redis_up": fallback_up, "redis_down": fallback_outage, "reconnecting": fallback_reconnect,
        },
        "wrong_key": wrong_key,
        "read_timeouts": sum(&web, "timed_out"),
        "panics": panics,
        "refreshes_lost": lost.len(),
        "lost_keys": lost,
        "recovery": {
            "check_after_faults_ms": plan.check_at - plan.faults_until,
            "recovery_budget_ms": plan.recovery_ms,
            "max_refresh_delay_ms": max_delay,
            "late_refreshes": late,
            "late_bound_ms": bound,
            "last_key_refreshed_after_faults_ms": all_refreshed_at.map(|a| a.saturating_sub(plan.faults_until)),
            "peek_errors": watch.peek_errors,
            "missing_entries": watch.missing,
        },
        "staleness_ms": { "max": staleness_max, "mean": staleness_mean, "p99_worst_process": staleness_p99,
                          "stale_reads": stale_served },
        "fetches": {
            "worker": events.fetches,
            "worker_ok": outcome_count(&worker_fetches, Some(Outcome::Ok)),
            "worker_err": outcome_count(&worker_fetches, Some(Outcome::Err)),
            "worker_cut_by_timeout": outcome_count(&worker_fetches, Some(Outcome::Cancelled)),
            "worker_unfinished": events.unfinished,
            "in_window": in_window.len(),
            "in_window_err_share": share(window_err, in_window.len()),
            "in_window_hang_share": share(window_hang, in_window.len()),
            "web_fallback": web_fetches.len(),
            "web_fallback_redis_up": web_fetch_up,
            "web_fallback_redis_down": web_fetch_outage,
            "web_fallback_reconnecting": web_fetch_reconnect,
            "refetches_of_fresh_value": refetches.len(),
            "refetches_of_fresh_value_outside_outage": refetches_outside_outage,
        },
        "stale_events": events.events,
        "duplicate_fetches": events.duplicates,
        "duplicate_fetches_per_stale_event": { "mean": events.duplicates_per_event(), "max": events.max_per_event.saturating_sub(1) },
        "worker_kill": kill_json,
        "redis_restart": restart.map(|r| json!({
            "at_s": (r.down_at - plan.start_ms) as f64 / 1e3,
            "down_at_ms": r.down_at,
            "up_at_ms": r.up_at,
            "downtime_ms": r.up_at - r.down_at,
            "shutdown_save_ms": r.exited_at - r.down_at,
            "keys_before": r.keys_before,
            "keys_after": r.keys_after,
            "workers_resumed_after_ms": resumed.iter()
                .map(|(name, after)| (name.clone(), json!(after)))
                .collect::<serde_json::Map<String, Json>>(),
        })),
        "dead_letters": dead_letters,
        "processes_detail": fleet.procs.iter().map(|p| json!({
            "name": p.name, "exit": p.exit, "killed": p.killed_at.is_some(), "summary": p.summary,
        })).collect::<Vec<_>>(),
        "failures": failures,
    });

    let pass = |ok: bool| if ok { "ok" } else { "**FAIL**" };
    let mut md = String::new();
    md.push_str(&format!(
        "## Chaos run: {} s of faults\n\n2 web processes × {} readers (steady reads of {} keys), \
         2 worker processes (concurrency {}), 1 Redis; job `{JOB_NAME}`: lifetime {} s, \
         fetch_timeout {} s, refresh_timeout {} s, retry backoff {}–{} ms, visibility timeout \
         {} s. In the fault window the fetch fails {:.0}% and hangs {:.0}% of the time.\n\n",
        args.seconds,
        args.readers,
        args.keys,
        WORKER_CONCURRENCY,
        LIFETIME.as_secs_f64(),
        FETCH_TIMEOUT.as_secs_f64(),
        REFRESH_TIMEOUT.as_secs_f64(),
        ms(BACKOFF_INITIAL),
        ms(BACKOFF_MAX),
        VISIBILITY.as_secs_f64(),
        FAIL_P * 100.0,
        HANG_P * 100.0,
    ));
    md.push_str("| metric | value | requirement |\n|---|---|---|\n");
    let mut row = |metric: &str, value: String, req: &str| {
        md.push_str(&format!("| {metric} | {value} | {req} |\n"));
    };
    row("reads served", format!("{served} of {reads}"), "");
    row(
        "reads failed, Redis up",
        failed_up.to_string(),
        &format!("0: {}", pass(failed_up == 0)),
    );
    row(
        "reads failed, Redis down",
        format!(
            "{failed_outage} (reads fall back to a synchronous fetch, which the faults fail; no near cache yet, SPEC §11)"
        ),
        "reported",
    );
    row(
        "reads failed, reconnecting",
        format!("{failed_reconnect} (ended ≤ {RECONNECT_GRACE_MS} ms after Redis answered again)"),
        &format!("0: {}", pass(failed_reconnect == 0)),
    );
    row(
        "reads served by a fallback fetch",
        format!(
            "{fallback_up} with Redis up, {fallback_outage} Redis down, {fallback_reconnect} reconnecting"
        ),
        "",
    );
    row(
        "reads served another key's value",
        wrong_key.to_string(),
        &format!("0: {}", pass(wrong_key == 0)),
    );
    row(
        "panics",
        panics.to_string(),
        &format!("0: {}", pass(panics == 0)),
    );
    row(
        "refreshes lost",
        format!(
            "{} of {} keys not refreshed {:.0} s after the faults stopped",
            lost.len(),
            args.keys,
            (plan.check_at - plan.faults_until) as f64 / 1e3
        ),
        &format!("0: {}", pass(lost.is_empty())),
    );
    row(
        "refresh after the faults stopped",
        format!(
            "max {:.2} s after a key needed it; {late} keys later than refresh_timeout + visibility ({:.0} s)",
            max_delay as f64 / 1e3,
            bound as f64 / 1e3
        ),
        "reported",
    );
    row(
        "staleness served",
        format!(
            "max {:.2} s, mean {:.0} ms, p99 {:.2} s (worst process), over {stale_served} stale reads",
            staleness_max as f64 / 1e3,
            staleness_mean,
            staleness_p99 as f64 / 1e3
        ),
        "reported",
    );
    row(
        "worker fetches",
        format!(
            "{} ({} ok, {} failed, {} cut by fetch_timeout, {} cut by the kill); in the window {:.1}% failed, {:.1}% hung",
            events.fetches,
            outcome_count(&worker_fetches, Some(Outcome::Ok)),
            outcome_count(&worker_fetches, Some(Outcome::Err)),
            outcome_count(&worker_fetches, Some(Outcome::Cancelled)),
            events.unfinished,
            share(window_err, in_window.len()) * 100.0,
            share(window_hang, in_window.len()) * 100.0
        ),
        "",
    );
    row(
        "web fallback fetches",
        format!(
            "{} ({web_fetch_up} with Redis up, {web_fetch_outage} Redis down, {web_fetch_reconnect} reconnecting)",
            web_fetches.len()
        ),
        "counted apart",
    );
    row("stale events", events.events.to_string(), "");
    row(
        "duplicate fetches per stale event",
        format!(
            "mean {:.4}, max {} ({} duplicates)",
            events.duplicates_per_event(),
            events.max_per_event.saturating_sub(1),
            events.duplicates
        ),
        "reported",
    );
    row(
        "refetches of a still-fresh value",
        format!(
            "{} ({refetches_outside_outage} outside the Redis restart)",
            refetches.len()
        ),
        "reported",
    );
    row("worker kill", kill_text, "");
    row("Redis restart", restart_text, "");
    row("dead letters", dead_letters.to_string(), "reported");
    md.push('\n');
    if plan.ready_at > plan.start_ms {
        md.push_str(&format!(
            "Note: the children were ready {} ms after the planned start.\n\n",
            plan.ready_at - plan.start_ms
        ));
    }
    md.push_str(&format!(
        "Notes:\n\n\
         - *Redis down*: a read that cannot reach the store falls back to a synchronous fetch \
           (`StoreFallback::Fetch`), uncached; inside the fault window that fetch fails or \
           hangs like any other, so such reads fail. There is no near cache yet (SPEC §11).\n\
         - *Reconnecting*: reads that ended within {RECONNECT_GRACE_MS} ms after Redis answered \
           again are counted apart, and must not fail: a connection whose reconnection attempt \
           failed during the outage reconnects on its next command (a refused command is tried \
           once more at once; without that, the first command failed and workers idled 2–3 s).\n\
         - *Staleness*: `age - lifetime` of each Stale value served. *Stale events*: worker \
           fetches of one key grouped while they overlap in time; a fetch whose worker was \
           killed counts as running until its start + the visibility timeout. *Duplicates*: \
           fetches that started while another fetch of the same key was running. Web \
           processes' fallback fetches are counted apart.\n\
         - *Refresh after the faults stopped*: per key, from the later of the fault window's \
           end and the moment its value turned stale, to the `fetched_at` of the first value \
           fetched after the window (the driver peeks every key every {MONITOR_EVERY_MS} ms).\n\n"
    ));
    md.push_str(&format!(
        "Result: {}\n",
        if failures.is_empty() {
            "pass".to_owned()
        } else {
            format!("FAIL — {}", failures.join("; "))
        }
    ));
    Ok(Report {
        json,
        markdown: md,
        failures,
    })
}
