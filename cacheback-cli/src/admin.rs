//! Admin subcommands a service mounts in its own binary: inspect, warm, refresh, invalidate
//! and delete a job's entries by job name and args given as JSON, and invalidate or delete
//! every entry carrying a tag. The args are decoded into
//! the registered job's own `Args` type and hashed by its own handle, so the key is exactly
//! the one the fleet reads.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::BufRead;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use cacheback::{Cacheback, Job, JobHandle};
use clap::Subcommand;
use serde::Serialize;

use crate::entry_view::EntryView;
use crate::exit::{ERROR, Failed, INTERRUPTED, OK, Outcome, exit_code};
use crate::output::{now, print_json};
use crate::progress::{Interrupt, Progress};
use crate::standalone::confirm;

/// The admin subcommands, for a service's own command line: flatten them into its clap parser
/// and hand them to [`Admin::run`].
///
/// ```no_run
/// use std::process::ExitCode;
///
/// use cacheback::{Cacheback, Policy, job_fn};
/// use cacheback_cli::{Admin, AdminCommand};
/// use clap::Parser;
///
/// #[derive(Parser)]
/// enum Cli {
///     /// Serve requests.
///     Serve,
///     /// Inspect and manage cached entries, e.g. `myapp admin inspect double 21 --json`.
///     Admin(AdminCommand),
/// }
///
/// #[tokio::main]
/// async fn main() -> ExitCode {
///     let cache = Cacheback::builder().build().expect("a client");
///     let double = cache.job(job_fn("double", Policy::default(), |n: u32| async move {
///         Ok::<_, std::io::Error>(n * 2)
///     }));
///     match Cli::parse() {
///         Cli::Serve => ExitCode::SUCCESS, // the service itself
///         Cli::Admin(command) => Admin::new().job(&double).run(command).await,
///     }
/// }
/// ```
#[derive(Debug, clap::Args)]
pub struct AdminCommand {
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// The jobs these commands know.
    Jobs,
    /// A job's entry for some args: value, windows, age, generation, claim and failure state.
    Inspect {
        /// The job's name.
        job: String,
        /// The args, as JSON (e.g. `"alice"`, `42`, `{"id": 7}`).
        args: String,
    },
    /// Fetches now and writes the value (waits for the fetch).
    Refresh {
        /// The job's name.
        job: String,
        /// The args, as JSON.
        args: String,
    },
    /// Marks the entry stale (still served) and enqueues one refresh.
    Invalidate {
        /// The job's name.
        job: String,
        /// The args, as JSON.
        args: String,
    },
    /// Deletes the entry: the next read misses.
    Delete {
        /// The job's name.
        job: String,
        /// The args, as JSON.
        args: String,
        /// Do it without asking.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Marks every entry carrying a tag stale, of every job of the prefix, across the fleet
    /// (still served; each refreshed on its next read).
    InvalidateTag {
        /// The tag (as the jobs' `tags` give it, e.g. `user:42`).
        tag: String,
    },
    /// Makes every entry carrying a tag read as missing, of every job of the prefix, across
    /// the fleet.
    DeleteTag {
        /// The tag.
        tag: String,
        /// Do it without asking.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Refreshes the args listed in a file, one JSON value per line, with progress; Ctrl-C
    /// stops between keys and says how to resume.
    Warm {
        /// The job's name.
        job: String,
        /// The file of args, one JSON value per line (`-` reads stdin).
        file: PathBuf,
        /// Fetches at a time.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Lines to skip first (to resume an interrupted warm).
        #[arg(long, default_value_t = 0)]
        skip: u64,
    },
}

type Boxed<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// One registered job, its `Args` and `Value` types erased behind JSON.
trait AdminJob: Send + Sync {
    fn inspect<'a>(&'a self, args: &'a str, json: bool) -> Boxed<'a>;
    fn refresh<'a>(&'a self, args: &'a str, json: bool) -> Boxed<'a>;
    fn invalidate<'a>(&'a self, args: &'a str, json: bool) -> Boxed<'a>;
    fn delete<'a>(&'a self, args: &'a str, yes: bool, json: bool) -> Boxed<'a>;
    fn warm<'a>(&'a self, lines: Lines, options: WarmOptions, json: bool) -> Boxed<'a>;
}

/// The admin commands of a service: its jobs by name. Cheap to build at start-up.
#[derive(Default)]
pub struct Admin {
    jobs: BTreeMap<String, Arc<dyn AdminJob>>,
    /// The client of the first job registered: tags act on its prefix.
    client: Option<Cacheback>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("jobs", &self.jobs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// No jobs yet: add them with [`Admin::job`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes a job reachable by its name, through this handle (its client, prefix and
    /// policy: exactly what the service itself reads with).
    #[must_use]
    ///
    /// The tag commands act on the prefix of the first job's client (tags span every job of
    /// a prefix).
    pub fn job<J: Job>(mut self, handle: &JobHandle<J>) -> Self {
        if self.client.is_none() {
            self.client = Some(handle.client().clone());
        }
        self.jobs
            .insert(handle.name().to_owned(), Arc::new(Typed(handle.clone())));
        self
    }

    /// Runs one command and returns the exit code the process should end with (the codes of
    /// the `cacheback` command: 0 done, 1 failed, 2 bad args, 3 not found, 4 not confirmed,
    /// 130 interrupted). Results go to stdout, errors and progress to stderr.
    pub async fn run(&self, command: AdminCommand) -> ExitCode {
        exit_code(self.dispatch(command).await)
    }

    async fn dispatch(&self, command: AdminCommand) -> Outcome {
        let json = command.json;
        match command.action {
            Action::Jobs => {
                let names: Vec<&String> = self.jobs.keys().collect();
                if json {
                    print_json(&names)?;
                } else {
                    for name in names {
                        println!("{name}");
                    }
                }
                Ok(OK)
            }
            Action::Inspect { job, args } => self.find(&job)?.inspect(&args, json).await,
            Action::Refresh { job, args } => self.find(&job)?.refresh(&args, json).await,
            Action::Invalidate { job, args } => self.find(&job)?.invalidate(&args, json).await,
            Action::Delete { job, args, yes } => self.find(&job)?.delete(&args, yes, json).await,
            Action::InvalidateTag { tag } => self.tag(&tag, false, true, json).await,
            Action::DeleteTag { tag, yes } => self.tag(&tag, true, yes, json).await,
            Action::Warm {
                job,
                file,
                concurrency,
                skip,
            } => {
                let job = self.find(&job)?;
                let lines = Lines::open(&file, skip)?;
                job.warm(lines, WarmOptions { concurrency, skip }, json)
                    .await
            }
        }
    }

    /// `invalidate_tag`, or with `delete` (after confirming) `delete_tag`, on the client's
    /// prefix.
    async fn tag(&self, tag: &str, delete: bool, yes: bool, json: bool) -> Outcome {
        #[derive(Serialize)]
        struct Done<'a> {
            prefix: &'a str,
            tag: &'a str,
            done: &'a str,
        }
        let client = self.client.as_ref().ok_or_else(|| {
            Failed::usage("no job is registered: tags act on the client of the jobs (Admin::job)")
        })?;
        let prefix = client.prefix();
        let done = if delete {
            confirm(
                &format!("delete every entry tagged `{tag}` under prefix `{prefix}`"),
                yes,
            )?;
            client.delete_tag(tag).await.map_err(tag_error)?;
            "deleted"
        } else {
            client.invalidate_tag(tag).await.map_err(tag_error)?;
            "invalidated"
        };
        if json {
            print_json(&Done { prefix, tag, done })?;
        } else {
            println!("{done}: every entry tagged `{tag}` under prefix `{prefix}`");
        }
        Ok(OK)
    }

    fn find(&self, name: &str) -> Result<&Arc<dyn AdminJob>, Failed> {
        self.jobs.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.jobs.keys().map(String::as_str).collect();
            Failed::not_found(format!(
                "no job `{name}` (known: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })
    }
}

struct Typed<J: Job>(JobHandle<J>);

impl<J: Job> Typed<J> {
    fn args(&self, text: &str) -> Result<J::Args, Failed> {
        serde_json::from_str(text).map_err(|e| {
            Failed::usage(format!(
                "`{text}` is not valid args of job `{}`: {e}",
                self.0.name()
            ))
        })
    }

    /// Prints what a write did: `{"job", "key", "done": ...}` or a line.
    fn report(&self, key: &str, what: &str, json: bool) -> Result<u8, Failed> {
        #[derive(Serialize)]
        struct Done<'a> {
            job: &'a str,
            key: &'a str,
            done: &'a str,
        }
        if json {
            print_json(&Done {
                job: self.0.name(),
                key,
                done: what,
            })?;
        } else {
            println!("{what}: {key}");
        }
        Ok(OK)
    }
}

/// A tag command's error: a tag the library refuses is a bad command line.
fn tag_error(error: cacheback::Error) -> Failed {
    match error {
        cacheback::Error::InvalidTag { message } => Failed::usage(message),
        other => other.into(),
    }
}

fn value_json<V: Serialize>(value: &V) -> Result<serde_json::Value, Failed> {
    serde_json::to_value(value)
        .map_err(|e| Failed::new(ERROR, format!("the value does not convert to JSON: {e}")))
}

impl<J: Job> AdminJob for Typed<J> {
    fn inspect<'a>(&'a self, text: &'a str, json: bool) -> Boxed<'a> {
        Box::pin(async move {
            let args = self.args(text)?;
            let key = self.0.key(&args)?;
            let Some(peek) = self.0.peek(args).await? else {
                return Err(Failed::not_found(format!("no entry at key `{key}`")));
            };
            let mut view = EntryView::new(peek.key, peek.meta, false, peek.claim, now());
            view.value = peek.value.as_deref().map(value_json).transpose()?;
            view.decode_error = peek.decode_error;
            if json {
                print_json(&view)?;
            } else {
                print!("{}", view.render());
            }
            Ok(OK)
        })
    }

    fn refresh<'a>(&'a self, text: &'a str, json: bool) -> Boxed<'a> {
        Box::pin(async move {
            let args = self.args(text)?;
            let key = self.0.key(&args)?;
            let value = self.0.refresh(args).await?;
            if json {
                #[derive(Serialize)]
                struct Refreshed<'a> {
                    job: &'a str,
                    key: &'a str,
                    done: &'static str,
                    value: serde_json::Value,
                }
                print_json(&Refreshed {
                    job: self.0.name(),
                    key: &key,
                    done: "refreshed",
                    value: value_json(&*value)?,
                })?;
                return Ok(OK);
            }
            println!("refreshed: {key}\n{}", value_json(&*value)?);
            Ok(OK)
        })
    }

    fn invalidate<'a>(&'a self, text: &'a str, json: bool) -> Boxed<'a> {
        Box::pin(async move {
            let args = self.args(text)?;
            let key = self.0.key(&args)?;
            let done = if self.0.invalidate(args).await? {
                "invalidated, refresh enqueued"
            } else {
                "invalidated, no refresh enqueued (no value, or a refresh already runs)"
            };
            self.report(&key, done, json)
        })
    }

    fn delete<'a>(&'a self, text: &'a str, yes: bool, json: bool) -> Boxed<'a> {
        Box::pin(async move {
            let args = self.args(text)?;
            let key = self.0.key(&args)?;
            confirm(&format!("delete the entry `{key}`"), yes)?;
            self.0.delete(args).await?;
            self.report(&key, "deleted", json)
        })
    }

    fn warm<'a>(&'a self, lines: Lines, options: WarmOptions, json: bool) -> Boxed<'a> {
        Box::pin(warm(self, lines, options, json))
    }
}

/// How `warm` runs.
#[derive(Debug, Clone, Copy)]
struct WarmOptions {
    concurrency: usize,
    skip: u64,
}

/// The lines of a warm file (or stdin), after the skipped ones, with their count when the
/// file could be counted.
struct Lines {
    reader: Box<dyn BufRead + Send>,
    total: Option<u64>,
}

impl Lines {
    fn open(path: &PathBuf, skip: u64) -> Result<Self, Failed> {
        let open = || {
            std::fs::File::open(path)
                .map_err(|e| Failed::usage(format!("could not open `{}`: {e}", path.display())))
        };
        let (mut reader, total): (Box<dyn BufRead + Send>, _) = if path.as_os_str() == "-" {
            (Box::new(std::io::BufReader::new(std::io::stdin())), None)
        } else {
            // One pass to count the lines gives the progress bar its ETA.
            let count = std::io::BufReader::new(open()?).lines().count() as u64;
            (
                Box::new(std::io::BufReader::new(open()?)),
                Some(count.saturating_sub(skip)),
            )
        };
        let mut line = String::new();
        for _ in 0..skip {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
        }
        Ok(Lines { reader, total })
    }
}

/// What `warm` did, as `--json` prints it.
#[derive(Debug, Default, Serialize)]
struct WarmSummary {
    /// Keys refreshed.
    refreshed: u64,
    /// Keys whose fetch failed.
    failed: u64,
    /// Lines that are not args of the job (line number and why), the first 20.
    bad_lines: Vec<(u64, String)>,
    /// Lines consumed, the skipped ones included: `--skip` this to resume.
    lines_done: u64,
    /// Stopped by Ctrl-C before the end.
    interrupted: bool,
    /// The first failures (args as JSON, error), at most 20.
    failures: Vec<(serde_json::Value, String)>,
}

async fn warm<J: Job>(job: &Typed<J>, lines: Lines, options: WarmOptions, json: bool) -> Outcome {
    let interrupt = Interrupt::listen();
    let mut progress = Progress::new("warmed", lines.total);
    let mut summary = WarmSummary {
        lines_done: options.skip,
        ..WarmSummary::default()
    };
    let mut bad_lines = 0u64;
    let read = std::sync::Mutex::new((lines.reader, options.skip, Vec::new(), false));
    // The args, read lazily: Ctrl-C stops the reading, and the keys already started finish.
    let args = std::iter::from_fn(|| {
        let mut guard = read.lock().ok()?;
        let (reader, line_no, bad, interrupted) = &mut *guard;
        loop {
            if interrupt.is_set() {
                *interrupted = true;
                return None;
            }
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            *line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            match job.args(line.trim()) {
                Ok(args) => return Some(args),
                Err(e) => bad.push((*line_no, e.message)),
            }
        }
    });
    let report = job
        .0
        .refresh_many(args, options.concurrency, |_| progress.advance(1))
        .await;
    progress.finish();
    let (_, line_no, bad, interrupted) = read.into_inner().unwrap_or_else(|e| e.into_inner());
    bad_lines += bad.len() as u64;
    summary.bad_lines = bad.into_iter().take(20).collect();
    summary.refreshed = report.refreshed as u64;
    summary.failed = report.failed as u64;
    summary.lines_done = line_no;
    summary.interrupted = interrupted;
    for (args, error) in report.failures.iter().take(20) {
        summary
            .failures
            .push((value_json(args)?, error.to_string()));
    }
    if json {
        print_json(&summary)?;
    } else {
        let mut line = format!(
            "warmed {} keys of job `{}`, {} failed, {bad_lines} bad lines",
            summary.refreshed,
            job.0.name(),
            summary.failed
        );
        if interrupted {
            line.push_str(&format!(
                "; interrupted by Ctrl-C after line {line_no}: resume with --skip {line_no}"
            ));
        }
        println!("{line}");
        for (no, why) in &summary.bad_lines {
            eprintln!("line {no}: {why}");
        }
        for (args, error) in &summary.failures {
            eprintln!("{args}: {error}");
        }
    }
    Ok(if interrupted {
        INTERRUPTED
    } else if summary.failed > 0 || bad_lines > 0 {
        ERROR
    } else {
        OK
    })
}
