//! Operating a cacheback fleet from the command line.
//!
//! Two tools share this crate:
//!
//! - **The `cacheback` command** (`cargo install --path cacheback-cli`), for what needs no job
//!   code, against any Redis URL (`--url` or `CACHEBACK_REDIS_URL`) and prefix (`--prefix` or
//!   `CACHEBACK_PREFIX`):
//!
//!   | command | what it shows or does |
//!   |---|---|
//!   | `cacheback queues [QUEUE...]` | depth, oldest request's age, dead letters; each consumer group's pending and lag; each consumer's pending and idle time |
//!   | `cacheback dead-letters list QUEUE` | the newest dead letters: id, age, attempt, job, reason |
//!   | `cacheback dead-letters show QUEUE ID` | one dead letter: reason, attempt, the decoded request and the raw payload |
//!   | `cacheback dead-letters replay QUEUE (ID... \| --all) [--rate N] [--yes]` | puts them back on the queue as new requests, removes them |
//!   | `cacheback dead-letters purge QUEUE (ID... \| --all) [--rate N] [--yes]` | deletes them |
//!   | `cacheback entry KEY` | an entry by its raw key: windows, age, generation, size, claim holder, failures, retry-after |
//!   | `cacheback top [--interval S] [--iterations N]` | the fleet at a glance, a screen every second until Ctrl-C (exit 0): each job's counts of the last minute from the processes that publish them, then the queues |
//!   | `cacheback dashboard [--listen ADDR] [--refresh S]` | the same as a live web page, with the dead letters and their replay and purge buttons (a purge, and replaying a whole queue's, ask on a page of their own first) |
//!
//!   Tables by default, `--json` for scripts. Commands that write ask for confirmation on a
//!   terminal and refuse without `--yes` elsewhere. `--all` shows a progress bar with rate and
//!   ETA on a terminal (plain lines every second otherwise), stops cleanly on Ctrl-C with a
//!   summary, and goes on where it stopped when run again. `--rate N` replays or purges at
//!   most N dead letters a second, so that replaying 50,000 does not hand the workers 50,000
//!   refreshes at once.
//!
//!   Over TLS (`rediss://`, `rediss+cluster://`) the server's certificate is checked against
//!   the system's roots, or against the PEM file `SSL_CERT_FILE` names (a private CA).
//!
//! - **Admin subcommands a service mounts** in its own binary ([`AdminCommand`], [`Admin`]):
//!   `inspect`, `refresh`, `invalidate`, `delete` and `warm` an entry by job name and args
//!   given as JSON, decoded into the job's own `Args` type so the key is exactly the fleet's;
//!   `invalidate-tag` and `delete-tag` every entry carrying a tag.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | Redis or a fetch failed, or answered something unexpected (message on stderr) |
//! | 2 | bad command line: unknown flag, missing prefix, malformed key, id or JSON args |
//! | 3 | not found: no such entry, dead letter or job |
//! | 4 | a write was not confirmed: pass `--yes` |
//! | 130 | stopped by Ctrl-C; the summary says what was done and how to go on |

mod admin;
mod dashboard;
mod entry_view;
mod exit;
mod output;
mod progress;
mod standalone;

pub use admin::{Admin, AdminCommand};
pub use standalone::Cli;
