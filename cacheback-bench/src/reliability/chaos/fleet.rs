//! The chaos run's child processes as the driver sees them: each one's stdout lines (ready,
//! heartbeats, summary), its exit, and the `kill -9`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use serde_json::Value as Json;

use super::child::now_ms;
use super::logs::LogFile;

/// One child process and what it told the driver.
#[derive(Debug)]
pub(super) struct Proc {
    pub(super) name: String,
    pub(super) role: &'static str,
    child: Option<Child>,
    pub(super) log: PathBuf,
    pub(super) ready: bool,
    pub(super) in_flight: usize,
    pub(super) summary: Option<Json>,
    pub(super) exit: Option<String>,
    pub(super) killed_at: Option<u64>,
    /// Where a worker's heartbeats go (`logs/<name>.hb`), for looking into a run afterwards.
    heartbeats: Option<LogFile>,
    /// A worker's processed count at its last heartbeat before Redis answered again.
    processed_at_up: u64,
    /// When a worker processed its first refresh after Redis answered again.
    pub(super) resumed_at: Option<u64>,
}

/// The child processes; all still running are killed when it drops (error paths included).
#[derive(Debug)]
pub(super) struct Fleet {
    pub(super) procs: Vec<Proc>,
    /// When Redis answered again after its restart.
    pub(super) redis_up_at: Option<u64>,
    tx: Sender<(usize, String)>,
    rx: Receiver<(usize, String)>,
}

impl Fleet {
    pub(super) fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        Fleet {
            procs: Vec::new(),
            redis_up_at: None,
            tx,
            rx,
        }
    }

    /// Starts a child (`chaos-<role>`) whose stdout lines are forwarded to the driver.
    pub(super) fn spawn(
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
    pub(super) fn pump(&mut self, wait: Duration) {
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
    pub(super) fn check_exits(&mut self, expected_exit_ms: u64) -> Result<(), String> {
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
    pub(super) fn kill(&mut self, idx: usize) -> Result<u64, String> {
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

    pub(super) fn running(&self) -> usize {
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
