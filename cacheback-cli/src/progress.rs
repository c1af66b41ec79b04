//! Long work: a progress bar with rate and ETA on a terminal, plain periodic lines otherwise
//! (logs, CI), and Ctrl-C, which stops the work between two items instead of killing it.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the plain lines are printed.
const LINE_EVERY: Duration = Duration::from_secs(1);

/// Set once Ctrl-C was pressed; long commands check it between items.
#[derive(Debug, Clone)]
pub(crate) struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Starts listening for Ctrl-C (needs a tokio runtime). The listener lives as long as the
    /// process: it only sets the flag.
    pub(crate) fn listen() -> Self {
        let flag = Arc::new(AtomicBool::new(false));
        let set = Arc::clone(&flag);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                set.store(true, Ordering::SeqCst);
            }
        });
        Interrupt(flag)
    }

    /// Whether Ctrl-C was pressed.
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Progress of one long command, shown on stderr.
#[derive(Debug)]
pub(crate) struct Progress {
    what: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    bar: Option<ProgressBar>,
    last_line: Instant,
}

impl Progress {
    /// Progress of `what` (a verb: "replayed", "warmed") over `total` items when known.
    pub(crate) fn new(what: &'static str, total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(n) => ProgressBar::new(n),
                None => ProgressBar::new_spinner(),
            };
            let template = if total.is_some() {
                "{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}"
            } else {
                "{spinner} {msg} {pos} {per_sec}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.set_message(what);
            bar
        });
        Progress {
            what,
            total,
            done: 0,
            started: Instant::now(),
            bar,
            last_line: Instant::now(),
        }
    }

    /// Records `n` more items done.
    pub(crate) fn advance(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.last_line.elapsed() >= LINE_EVERY => {
                self.last_line = Instant::now();
                eprintln!("{}", self.line());
            }
            None => {}
        }
    }

    /// The plain line: `replayed 120/500 (40.0/s, ETA 9s)`.
    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        match self.total {
            Some(total) => {
                let left = total.saturating_sub(self.done) as f64;
                let eta = if rate > 0.0 {
                    crate::output::span(Duration::from_secs_f64(left / rate))
                } else {
                    "?".to_owned()
                };
                format!(
                    "{} {}/{total} ({rate:.1}/s, ETA {eta})",
                    self.what, self.done
                )
            }
            None => format!("{} {} ({rate:.1}/s)", self.what, self.done),
        }
    }

    /// Clears the bar; the caller prints the summary.
    pub(crate) fn finish(self) -> u64 {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.done
    }
}
