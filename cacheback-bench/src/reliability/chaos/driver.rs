//! The chaos run's driver: Redis, the child processes, the timeline of faults and the final
//! check; then the analysis and the report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cacheback::JobHandle;
use cacheback_test_support::RedisServer;

use super::Args;
use super::analysis::{self, KeyWatch, Kill, Plan, Restart, ms};
use super::child::QueueArgs;
use super::child::{
    BACKOFF_MAX, ChaosJob, FETCH_TIMEOUT, LIFETIME, REFRESH_TIMEOUT, VISIBILITY, client, now_ms,
};
use super::fleet::Fleet;
use super::report::{self, Facts, Report};
use crate::queues::Brokers;

/// Children get this long to start before the fault window opens.
const STARTUP_MS: u64 = 2_000;
/// How long Redis stays down.
pub(super) const REDIS_DOWN: Duration = Duration::from_secs(1);
/// The replacement worker starts this long after the kill.
const REPLACEMENT_AFTER_MS: u64 = 2_000;
/// The driver checks the keys this often after the fault window.
pub(super) const MONITOR_EVERY_MS: u64 = 250;

/// `DBSIZE`, or `None` if Redis did not answer.
fn dbsize(redis: &RedisServer) -> Option<u64> {
    redis.query(&["DBSIZE"]).ok()
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

/// When each step of the run happens (unix ms).
#[derive(Debug, Clone, Copy)]
struct Timeline {
    start_ms: u64,
    faults_until: u64,
    recovery_ms: u64,
    check_at: u64,
    /// The children stop then.
    until_ms: u64,
    kill_at: u64,
    restart_at: u64,
}

impl Timeline {
    fn new(seconds: u64) -> Self {
        let window_ms = seconds * 1_000;
        let start_ms = now_ms() + STARTUP_MS;
        let faults_until = start_ms + window_ms;
        let recovery_ms =
            ms(LIFETIME + FETCH_TIMEOUT + BACKOFF_MAX + REFRESH_TIMEOUT + VISIBILITY) + 1_000;
        let check_at = faults_until + recovery_ms;
        Timeline {
            start_ms,
            faults_until,
            recovery_ms,
            check_at,
            until_ms: check_at + 1_000,
            kill_at: start_ms + window_ms / 4,
            restart_at: start_ms + window_ms / 2,
        }
    }

    /// Seconds from the start of the fault window to `at`.
    fn t(&self, at: u64) -> f64 {
        at.saturating_sub(self.start_ms) as f64 / 1e3
    }
}

/// The driver's state while the run goes on.
struct Driver<'a> {
    args: &'a Args,
    rt: tokio::runtime::Runtime,
    redis: RedisServer,
    job: JobHandle<ChaosJob>,
    timeline: Timeline,
    fleet: Fleet,
    log_dir: PathBuf,
    /// The arguments every child gets.
    common: Vec<String>,
    victim: usize,
    ready_at: u64,
    kill: Option<Kill>,
    forced_kill: bool,
    replacement: Option<usize>,
    restart: Option<Restart>,
    watch: KeyWatch,
}

/// Runs the whole chaos run.
pub(super) fn run(args: &Args) -> Result<(), String> {
    let log_dir = clean_log_dir(&args.out)?;
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; use --release");
    }
    let redis = RedisServer::try_start().map_err(|e| e.to_string())?;
    let url = redis.url();
    let prefix = format!("chaos-{}-{}", std::process::id(), now_ms());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let brokers = Brokers::new(args.queue);
    let queue = QueueArgs {
        queue: args.queue,
        queue_url: brokers.url(&url)?,
    };
    let cache = rt.block_on(async { client(&url, &prefix, &queue) })?;
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
    let timeline = Timeline::new(args.seconds);
    let mut driver = Driver {
        args,
        rt,
        redis,
        job,
        timeline,
        fleet: Fleet::new(),
        common: child_args(args, &timeline, &url, &prefix, &queue),
        log_dir,
        victim: 0,
        ready_at: 0,
        kill: None,
        forced_kill: false,
        replacement: None,
        restart: None,
        watch: KeyWatch::default(),
    };
    driver.start_fleet()?;
    driver.fault_window()?;
    let lost = driver.final_check();
    driver.wait_for_exits()?;
    let report = driver.report(&lost)?;
    write_report(&args.out, &driver.log_dir, &report)?;
    drop(cache);
    if report.failures.is_empty() {
        Ok(())
    } else {
        Err(format!("FAILED: {}", report.failures.join("; ")))
    }
}

/// `OUT/logs`, created, without the logs of an earlier run.
fn clean_log_dir(out: &Path) -> Result<PathBuf, String> {
    let log_dir = out.join("logs");
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
    for entry in std::fs::read_dir(&log_dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|x| x == "log" || x == "hb") {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(log_dir)
}

/// The arguments every child gets: Redis, the keys, the timeline.
fn child_args(
    args: &Args,
    timeline: &Timeline,
    url: &str,
    prefix: &str,
    queue: &QueueArgs,
) -> Vec<String> {
    [
        ("--queue", queue.queue.arg().to_owned()),
        ("--queue-url", queue.queue_url.clone()),
        ("--url", url.to_owned()),
        ("--prefix", prefix.to_owned()),
        ("--keys", args.keys.to_string()),
        ("--readers", args.readers.to_string()),
        ("--start-ms", timeline.start_ms.to_string()),
        ("--faults-until-ms", timeline.faults_until.to_string()),
        ("--until-ms", timeline.until_ms.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_owned(), v])
    .chain(args.near_cache.then(|| "--near-cache".to_owned()))
    .collect()
}

impl Driver<'_> {
    fn spawn(&mut self, role: &'static str, name: &str) -> Result<usize, String> {
        self.fleet.spawn(role, name, &self.common, &self.log_dir)
    }

    /// Starts 2 web and 2 worker processes and waits (up to 15 s) until each is ready.
    fn start_fleet(&mut self) -> Result<(), String> {
        for name in ["web-1", "web-2"] {
            self.spawn("web", name)?;
        }
        self.victim = self.spawn("worker", "worker-1")?;
        self.spawn("worker", "worker-2")?;
        let ready_by = now_ms() + 15_000;
        let until_ms = self.timeline.until_ms;
        while self.fleet.procs.iter().any(|p| !p.ready) {
            self.fleet.pump(Duration::from_millis(10));
            self.fleet.check_exits(until_ms)?;
            if now_ms() > ready_by {
                let late: Vec<&str> = self
                    .fleet
                    .procs
                    .iter()
                    .filter(|p| !p.ready)
                    .map(|p| p.name.as_str())
                    .collect();
                return Err(format!("children not ready within 15 s: {late:?}"));
            }
        }
        let tl = self.timeline;
        self.ready_at = now_ms();
        if self.ready_at > tl.start_ms {
            eprintln!(
                "chaos: warning: children were ready {} ms after the planned start",
                self.ready_at - tl.start_ms
            );
        }
        eprintln!(
            "chaos: fault window of {} s from t=0; kill at t={:.1} s, Redis restart at t={:.1} s, \
             check at t={:.1} s",
            self.args.seconds,
            tl.t(tl.kill_at),
            tl.t(tl.restart_at),
            tl.t(tl.check_at)
        );
        Ok(())
    }

    /// The fault window and the recovery after it: the kill, the replacement, the restart,
    /// and the keys watched, until the check.
    fn fault_window(&mut self) -> Result<(), String> {
        let tl = self.timeline;
        let mut next_watch = tl.faults_until;
        loop {
            self.fleet.pump(Duration::from_millis(5));
            self.fleet.check_exits(tl.until_ms)?;
            let now = now_ms();
            if self.kill.is_none() && now >= tl.kill_at {
                self.kill_mid_refresh(now)?;
            }
            if let Some(k) = self.kill
                && self.replacement.is_none()
                && now >= k.at + REPLACEMENT_AFTER_MS
            {
                self.replacement = Some(self.spawn("worker", "worker-3")?);
            }
            if self.restart.is_none() && now >= tl.restart_at {
                self.restart_redis()?;
            }
            if now >= next_watch {
                self.rt.block_on(watch_keys(
                    &self.job,
                    self.args.keys,
                    tl.faults_until,
                    &mut self.watch,
                ));
                next_watch = now_ms() + MONITOR_EVERY_MS;
            }
            if now >= tl.check_at {
                return Ok(());
            }
        }
    }

    /// `kill -9`s worker-1 once its last heartbeat (every 20 ms) had refreshes running, or
    /// 5 s after the planned kill regardless.
    fn kill_mid_refresh(&mut self, now: u64) -> Result<(), String> {
        let in_flight = self.fleet.procs[self.victim].in_flight;
        if in_flight == 0 && now < self.timeline.kill_at + 5_000 {
            return Ok(());
        }
        self.forced_kill = in_flight == 0;
        let at = self.fleet.kill(self.victim)?;
        eprintln!(
            "chaos: t={:.2} s kill -9 worker-1 with {in_flight} refreshes in flight",
            self.timeline.t(at)
        );
        self.kill = Some(Kill {
            idx: self.victim,
            at,
            in_flight,
        });
        Ok(())
    }

    /// Stops Redis with `SHUTDOWN SAVE`, keeps it down for [`REDIS_DOWN`], starts it again.
    fn restart_redis(&mut self) -> Result<(), String> {
        let keys_before = dbsize(&self.redis);
        let down_at = now_ms();
        self.redis.stop_saving().map_err(|e| e.to_string())?;
        let exited_at = now_ms();
        std::thread::sleep(REDIS_DOWN);
        self.redis.start_again().map_err(|e| e.to_string())?;
        let up_at = now_ms();
        self.fleet.redis_up_at = Some(up_at);
        let keys_after = dbsize(&self.redis);
        eprintln!(
            "chaos: t={:.2} s Redis stopped (SHUTDOWN SAVE), answering again at t={:.2} s",
            self.timeline.t(down_at),
            self.timeline.t(up_at)
        );
        self.restart = Some(Restart {
            down_at,
            exited_at,
            up_at,
            keys_before,
            keys_after,
        });
        Ok(())
    }

    /// The last look at the keys (a few tries, in case a peek fails); the keys not refreshed
    /// after the faults stopped.
    fn final_check(&mut self) -> Vec<u64> {
        let keys = self.args.keys;
        for _ in 0..3 {
            self.rt.block_on(watch_keys(
                &self.job,
                keys,
                self.timeline.faults_until,
                &mut self.watch,
            ));
            if self.watch.refreshed.len() as u64 == keys {
                break;
            }
        }
        let lost: Vec<u64> = (0..keys)
            .filter(|k| !self.watch.refreshed.contains_key(k))
            .collect();
        eprintln!(
            "chaos: t={:.2} s check: {} of {keys} keys refreshed after the faults stopped",
            self.timeline.t(now_ms()),
            self.watch.refreshed.len(),
        );
        lost
    }

    /// Lets the children finish (they stop at `until_ms` on their own), each with a summary.
    fn wait_for_exits(&mut self) -> Result<(), String> {
        let until_ms = self.timeline.until_ms;
        let exit_by = until_ms + 20_000;
        while self.fleet.running() > 0 && now_ms() < exit_by {
            self.fleet.pump(Duration::from_millis(20));
            self.fleet.check_exits(until_ms)?;
        }
        self.fleet.pump(Duration::from_millis(50));
        if self.fleet.running() > 0 {
            return Err("children did not exit within 20 s of their deadline".to_owned());
        }
        let missing_summaries: Vec<&str> = self
            .fleet
            .procs
            .iter()
            .filter(|p| p.killed_at.is_none() && p.summary.is_none())
            .map(|p| p.name.as_str())
            .collect();
        if missing_summaries.is_empty() {
            Ok(())
        } else {
            Err(format!("no summary from {missing_summaries:?}"))
        }
    }

    /// Analyses the logs and builds the report.
    fn report(&self, lost: &[u64]) -> Result<Report, String> {
        let tl = self.timeline;
        let plan = Plan {
            args: self.args,
            start_ms: tl.start_ms,
            faults_until: tl.faults_until,
            check_at: tl.check_at,
            recovery_ms: tl.recovery_ms,
            ready_at: self.ready_at,
            forced_kill: self.forced_kill,
            replacement: self.replacement.is_some(),
        };
        let analysis = analysis::analyse(&plan, &self.fleet, self.kill, self.restart, &self.watch)?;
        Ok(report::report(&Facts {
            plan: &plan,
            fleet: &self.fleet,
            restart: self.restart,
            watch: &self.watch,
            lost,
            analysis: &analysis,
        }))
    }
}

/// Writes `chaos.json` and `chaos.md` to `out` and prints the Markdown.
fn write_report(out: &Path, log_dir: &Path, report: &Report) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    let json_path = out.join("chaos.json");
    let md_path = out.join("chaos.md");
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
    Ok(())
}
