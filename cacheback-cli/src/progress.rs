//! Long work: a progress bar with rate and ETA on a terminal, plain periodic lines otherwise
//! (logs, CI), an optional pace (items per second), and Ctrl-C, which stops the work between
//! two items instead of killing it.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;

/// How often the plain lines are printed.
const LINE_EVERY: Duration = Duration::from_secs(1);

/// Set once Ctrl-C was pressed; long commands check it between items, and wait for it while
/// they pause.
#[derive(Debug, Clone)]
pub(crate) struct Interrupt(watch::Receiver<bool>);

impl Interrupt {
    /// Starts listening for Ctrl-C (needs a tokio runtime). On Unix the handler is in place
    /// when this returns, so a Ctrl-C right after it stops the work instead of killing the
    /// process. The listener lives as long as the process: it only sets the flag.
    pub(crate) fn listen() -> Self {
        let (set, flag) = watch::channel(false);
        #[cfg(unix)]
        let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
        tokio::spawn(async move {
            #[cfg(unix)]
            let pressed = match signal {
                Ok(mut signal) => signal.recv().await.is_some(),
                Err(_) => false,
            };
            #[cfg(not(unix))]
            let pressed = tokio::signal::ctrl_c().await.is_ok();
            if pressed {
                let _ = set.send(true);
            }
        });
        Interrupt(flag)
    }

    /// Whether Ctrl-C was pressed.
    pub(crate) fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once Ctrl-C was pressed (never, when the handler could not be installed).
    pub(crate) async fn pressed(&self) {
        let mut flag = self.0.clone();
        if flag.wait_for(|pressed| *pressed).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A pace of at most `per_second` items a second: each batch of work waits until the one
/// before it has had its share of time (`n` items: `n / per_second` seconds). A batch that ran
/// late (a slow Redis) is not made up for with a burst: the next one waits its full share.
#[derive(Debug)]
pub(crate) struct Pace {
    per_second: u32,
    /// When the next batch may start (`None`: at once).
    next: Option<tokio::time::Instant>,
}

impl Pace {
    pub(crate) fn new(per_second: u32) -> Self {
        Pace {
            per_second: per_second.max(1),
            next: None,
        }
    }

    /// How many items to do at once: about ten batches a second, and never more than `most`.
    pub(crate) fn batch(&self, most: usize) -> usize {
        usize::try_from(self.per_second / 10)
            .unwrap_or(most)
            .clamp(1, most.max(1))
    }

    /// Waits until a batch of `n` items may start, or until Ctrl-C: `false` then, and the
    /// batch is not counted.
    pub(crate) async fn wait(&mut self, n: u64, interrupt: Option<&Interrupt>) -> bool {
        let Some(interrupt) = interrupt else {
            self.ready(n).await;
            return true;
        };
        tokio::select! {
            biased;
            () = interrupt.pressed() => false,
            () = self.ready(n) => true,
        }
    }

    /// Waits until a batch of `n` items may start. Cancel-safe: a wait given up counts
    /// nothing.
    async fn ready(&mut self, n: u64) {
        let now = tokio::time::Instant::now();
        let start = match self.next {
            Some(next) if next > now => {
                tokio::time::sleep_until(next).await;
                next
            }
            // On time, or late by less than one item: keep to the schedule (no drift).
            Some(next) if now - next < self.share(1) => next,
            // Later than that: start from now, no burst to catch up.
            _ => now,
        };
        self.next = Some(start + self.share(n));
    }

    /// The time `n` items take at this pace.
    fn share(&self, n: u64) -> Duration {
        Duration::from_secs(n) / self.per_second
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

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pace_spreads_items_over_time() {
        let started = Instant::now();
        let mut pace = Pace::new(10);
        for _ in 0..30 {
            assert!(pace.wait(1, None).await);
        }
        // The first at once, then one every 100 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(2900));

        // A third of a second each: no drift from rounding the pauses to whole milliseconds.
        let started = Instant::now();
        let mut pace = Pace::new(3);
        for _ in 0..31 {
            pace.wait(1, None).await;
        }
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_takes_its_share_of_time() {
        assert_eq!(Pace::new(10).batch(100), 1);
        assert_eq!(Pace::new(250).batch(100), 25);
        assert_eq!(Pace::new(50_000).batch(100), 100);
        assert_eq!(Pace::new(0).batch(100), 1, "at least one a second");
        let mut pace = Pace::new(1000);
        let started = Instant::now();
        pace.wait(100, None).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "the first at once");
        pace.wait(100, None).await;
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        pace.wait(1, None).await;
        assert_eq!(started.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ran_late_is_not_made_up_for_with_a_burst() {
        let mut pace = Pace::new(10);
        pace.wait(1, None).await;
        // A slow item: a second instead of 100 ms.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let late = Instant::now();
        pace.wait(1, None).await;
        assert_eq!(late.elapsed(), Duration::ZERO, "late already: at once");
        pace.wait(1, None).await;
        assert_eq!(
            late.elapsed(),
            Duration::from_millis(100),
            "then a full share, not a burst of the nine missed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ctrl_c_ends_a_pause_at_once_and_counts_nothing() {
        let (press, flag) = watch::channel(false);
        let interrupt = Interrupt(flag);
        let mut pace = Pace::new(1);
        assert!(pace.wait(1, Some(&interrupt)).await);
        let started = Instant::now();
        let presser = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            press.send(true).unwrap();
            press
        });
        assert!(!pace.wait(1, Some(&interrupt)).await, "stopped by Ctrl-C");
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert!(interrupt.is_set());
        let _press = presser.await.unwrap();
        // The pause given up counted nothing: without Ctrl-C, the item waits its turn.
        pace.wait(1, None).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
