//! `cacheback dead-letters`: list, show (reason and payload), replay (one, several or all),
//! purge (one, several or all). Replay and purge of all walk the dead letters that existed when
//! the command started, page by page, with progress, at an optional pace (`--rate`), and stop
//! cleanly on Ctrl-C; replayed and purged dead letters are gone, so running the same command
//! again goes on where it stopped.

use cacheback::RedisQueue;
use cacheback::queue::{RedisDeadLetter, Replay};
use clap::Subcommand;
use serde::Serialize;

use super::{Target, confirm};
use crate::exit::{Failed, INTERRUPTED, OK, Outcome};
use crate::output::{Table, clip, hex, now, print_json, relative, time};
use crate::progress::{Interrupt, Pace, Progress};

/// Dead letters read or changed per round trip by `--all`.
const PAGE: usize = 100;

#[derive(Debug, Subcommand)]
pub(super) enum DeadLetterCommand {
    /// The newest dead letters of a queue, newest first.
    List {
        /// The queue.
        queue: String,
        /// How many to list.
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
    /// One dead letter: why, when, its request and its raw payload.
    Show {
        /// The queue.
        queue: String,
        /// The dead letter's id (from `list`).
        id: String,
    },
    /// Puts dead letters back on their queue (as new requests) and removes them.
    Replay(Selection),
    /// Deletes dead letters for good.
    Purge(Selection),
}

/// Which dead letters a write applies to.
#[derive(Debug, clap::Args)]
pub(super) struct Selection {
    /// The queue.
    queue: String,
    /// The dead letters' ids.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    ids: Vec<String>,
    /// Every dead letter of the queue that exists when the command starts.
    #[arg(long)]
    all: bool,
    /// Do it without asking.
    #[arg(long, short = 'y')]
    yes: bool,
    /// At most N dead letters a second (default: as fast as Redis answers), so that replaying
    /// thousands does not hand the workers thousands of refreshes at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rate: Option<u32>,
}

/// A dead letter, as `--json` prints it.
#[derive(Debug, Serialize)]
struct DeadLetterJson {
    id: String,
    /// When it was dead-lettered (the time in its id).
    dead_lettered_at: Option<String>,
    reason: String,
    attempt: u32,
    source_id: String,
    job: Option<String>,
    request: Option<RequestJson>,
    /// The original message, hex.
    message_hex: Option<String>,
}

#[derive(Debug, Serialize)]
struct RequestJson {
    job: String,
    key: String,
    args_hex: String,
    codec: u8,
    generation: u64,
    enqueued_at: String,
    prior_failures: u32,
    queue: String,
}

impl DeadLetterJson {
    fn new(letter: &RedisDeadLetter) -> Self {
        DeadLetterJson {
            id: letter.id.clone(),
            dead_lettered_at: id_time(&letter.id).map(time),
            reason: letter.reason.clone(),
            attempt: letter.attempt,
            source_id: letter.source_id.clone(),
            job: letter.job.clone(),
            request: letter.request.as_ref().map(|r| RequestJson {
                job: r.job.clone(),
                key: r.key.clone(),
                args_hex: hex(&r.args),
                codec: r.codec,
                generation: r.generation,
                enqueued_at: time(r.enqueued_at),
                prior_failures: r.prior_failures,
                queue: r.queue.clone(),
            }),
            message_hex: letter.message.as_deref().map(hex),
        }
    }
}

/// A dead letter id as numbers, in the order the queue pages through them: a stream id
/// (`<ms>-<seq>`), prefixed with its shard (`<shard>/<ms>-<seq>`) on a queue spread over
/// several shards; ordered by stream id, then shard.
pub(crate) fn parse_id(id: &str) -> Option<(u64, u64, u64)> {
    let (shard, stream_id) = match id.split_once('/') {
        Some((shard, rest)) => (shard.parse().ok()?, rest),
        None => (0, id),
    };
    let (ms, seq) = stream_id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?, shard))
}

pub(crate) fn id_time(id: &str) -> Option<cacheback::clock::Timestamp> {
    parse_id(id).map(|(ms, ..)| cacheback::clock::Timestamp::from_millis(ms))
}

/// Checks that `id` is a dead-letter id of a queue spread over `shards` streams: a stream id
/// (`1700000000000-0`), prefixed with its shard (`3/1700000000000-0`) when there are several.
fn check_id(id: &str, shards: usize) -> Result<(), Failed> {
    let Some((.., shard)) = parse_id(id) else {
        return Err(Failed::usage(format!(
            "`{id}` is not a dead letter id (like 1700000000000-0, or 3/1700000000000-0 on a \
             queue spread over shards)"
        )));
    };
    let sharded = id.contains('/');
    if shards <= 1 && sharded {
        return Err(Failed::usage(format!(
            "`{id}` names a shard, but the queue is one stream: its dead letter ids read like \
             1700000000000-0 (pass --shards if the fleet's queues set it)"
        )));
    }
    if shards > 1 && !sharded {
        return Err(Failed::usage(format!(
            "`{id}` names no shard: the queue is spread over {shards} shards, and its dead \
             letter ids read `<shard>/<stream id>` (like 3/1700000000000-0)"
        )));
    }
    if shards > 1 && usize::try_from(shard).map_or(true, |shard| shard >= shards) {
        return Err(Failed::usage(format!(
            "`{id}` names a shard the queue does not have: it is spread over {shards} shards, \
             0 to {}",
            shards - 1
        )));
    }
    Ok(())
}

pub(super) async fn run(target: &Target, command: DeadLetterCommand, json: bool) -> Outcome {
    let queue = target.queue()?;
    match command {
        DeadLetterCommand::List { queue: name, count } => list(&queue, &name, count, json).await,
        DeadLetterCommand::Show { queue: name, id } => show(&queue, &name, &id, json).await,
        DeadLetterCommand::Replay(selection) => write(&queue, selection, Write::Replay, json).await,
        DeadLetterCommand::Purge(selection) => write(&queue, selection, Write::Purge, json).await,
    }
}

async fn list(queue: &RedisQueue, name: &str, count: usize, json: bool) -> Outcome {
    let letters = queue.dead_letters(name, count).await?;
    if json {
        print_json(&letters.iter().map(DeadLetterJson::new).collect::<Vec<_>>())?;
        return Ok(OK);
    }
    if letters.is_empty() {
        println!("no dead letters in queue `{name}`");
        return Ok(OK);
    }
    let now = now();
    let mut table = Table::new(&["ID", "AGE", "ATTEMPT", "JOB", "REASON"]);
    for l in &letters {
        table.row(vec![
            l.id.clone(),
            id_time(&l.id).map_or_else(|| "?".to_owned(), |t| relative(t, now)),
            l.attempt.to_string(),
            l.job.clone().unwrap_or_else(|| "-".to_owned()),
            clip(&l.reason, 80),
        ]);
    }
    print!("{}", table.render());
    Ok(OK)
}

async fn show(queue: &RedisQueue, name: &str, id: &str, json: bool) -> Outcome {
    check_id(id, queue.shards())?;
    let Some(letter) = queue.find_dead_letter(name, id).await? else {
        return Err(Failed::not_found(format!(
            "no dead letter `{id}` in queue `{name}`"
        )));
    };
    let shown = DeadLetterJson::new(&letter);
    if json {
        print_json(&shown)?;
        return Ok(OK);
    }
    let mut table = Table::new(&["FIELD", "VALUE"]);
    let mut field = |name: &str, value: String| table.row(vec![name.to_owned(), value]);
    field("id", shown.id);
    field(
        "dead-lettered at",
        shown.dead_lettered_at.unwrap_or_default(),
    );
    field("reason", shown.reason);
    field("attempt", shown.attempt.to_string());
    field("source id", shown.source_id);
    match shown.request {
        Some(r) => {
            field("job", r.job);
            field("key", r.key);
            field("generation", r.generation.to_string());
            field("enqueued at", r.enqueued_at);
            field("prior failures", r.prior_failures.to_string());
            field("args (hex)", r.args_hex);
        }
        None => field("request", "does not decode (malformed message)".to_owned()),
    }
    field(
        "payload (hex)",
        shown.message_hex.unwrap_or_else(|| "(none)".to_owned()),
    );
    print!("{}", table.render());
    Ok(OK)
}

/// A write to dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    Replay,
    Purge,
}

impl Write {
    fn verb(self) -> &'static str {
        match self {
            Write::Replay => "replay",
            Write::Purge => "purge",
        }
    }

    pub(crate) fn done(self) -> &'static str {
        match self {
            Write::Replay => "replayed",
            Write::Purge => "purged",
        }
    }
}

/// What a replay or purge did, as `--json` prints it.
#[derive(Debug, Default, Serialize)]
pub(crate) struct WriteReport {
    /// Dead letters replayed or purged.
    pub(crate) done: u64,
    /// Ids that were not (or no longer) there.
    pub(crate) not_found: u64,
    /// Dead letters without a message, which cannot be replayed (left as they are).
    pub(crate) no_message: u64,
    /// Stopped by Ctrl-C before the end.
    pub(crate) interrupted: bool,
}

/// Which dead letters a write applies to.
#[derive(Debug, Clone)]
pub(crate) enum Which {
    /// These ids.
    Ids(Vec<String>),
    /// Those up to this id (the newest when the command started).
    UpTo((u64, u64, u64)),
}

/// The newest dead letter of `name` now, what `--all` goes up to (`None`: there are none).
pub(crate) async fn newest(queue: &RedisQueue, name: &str) -> Result<Option<Which>, Failed> {
    let newest = queue.dead_letters(name, 1).await?;
    Ok(newest
        .first()
        .and_then(|l| parse_id(&l.id))
        .map(Which::UpTo))
}

/// How a write goes from one batch of dead letters to the next: the command's at its pace
/// (if any) until Ctrl-C; the dashboard's buttons (the default) at once to the end.
#[derive(Debug, Default)]
pub(crate) struct Steps {
    pace: Option<Pace>,
    interrupt: Option<Interrupt>,
}

impl Steps {
    /// Dead letters replayed or purged per call to Redis: a page, or fewer at a pace.
    fn batch(&self, op: Write) -> usize {
        match (op, &self.pace) {
            // One script per dead letter.
            (Write::Replay, _) => 1,
            (Write::Purge, Some(pace)) => pace.batch(PAGE),
            (Write::Purge, None) => PAGE,
        }
    }

    /// Waits until a batch of `n` may go; `false` once Ctrl-C was pressed.
    async fn next(&mut self, n: usize) -> bool {
        let interrupt = self.interrupt.as_ref();
        if interrupt.is_some_and(Interrupt::is_set) {
            return false;
        }
        match &mut self.pace {
            Some(pace) => pace.wait(n as u64, interrupt).await,
            None => true,
        }
    }
}

/// Applies `op` to the dead letters `which` of queue `name`, in pages, calling `advance` with
/// each batch's size; stops between two batches on Ctrl-C (`interrupted` in the report).
pub(crate) async fn apply(
    queue: &RedisQueue,
    name: &str,
    which: Which,
    op: Write,
    mut steps: Steps,
    mut advance: impl FnMut(u64),
) -> Result<WriteReport, Failed> {
    let mut result = WriteReport::default();
    let mut after: Option<String> = None;
    let mut ids = match &which {
        Which::Ids(ids) => ids.clone(),
        Which::UpTo(_) => Vec::new(),
    };
    let size = steps.batch(op);
    loop {
        let page: Vec<String> = match &which {
            Which::Ids(_) => ids.drain(..ids.len().min(PAGE)).collect(),
            Which::UpTo(end) => queue
                .dead_letter_page(name, after.as_deref(), PAGE)
                .await?
                .into_iter()
                .map(|l| l.id)
                .take_while(|id| parse_id(id).is_some_and(|id| id <= *end))
                .collect(),
        };
        if page.is_empty() {
            break;
        }
        let full = page.len() == PAGE;
        after = page.last().cloned();
        for batch in page.chunks(size) {
            if !steps.next(batch.len()).await {
                result.interrupted = true;
                return Ok(result);
            }
            let asked = batch.len() as u64;
            match op {
                Write::Replay => {
                    for id in batch {
                        match queue.replay_dead_letter(name, id).await? {
                            Replay::Replayed => result.done += 1,
                            Replay::NotFound => result.not_found += 1,
                            _ => result.no_message += 1,
                        }
                    }
                }
                Write::Purge => {
                    let removed = queue.remove_dead_letters(name, batch).await?;
                    result.done += removed;
                    result.not_found += asked.saturating_sub(removed);
                }
            }
            advance(asked);
        }
        if matches!(which, Which::UpTo(_)) && !full {
            break;
        }
    }
    Ok(result)
}

async fn write(queue: &RedisQueue, selection: Selection, op: Write, json: bool) -> Outcome {
    let Selection {
        queue: name,
        ids,
        all,
        yes,
        rate,
    } = selection;
    for id in &ids {
        check_id(id, queue.shards())?;
    }
    // What `--all` covers: the dead letters up to the newest one now. Later ones (a replayed
    // request dead-lettered again) are left for the next run.
    let (which, total, what) = if all {
        let Some(which) = newest(queue, &name).await? else {
            report(op, &name, &WriteReport::default(), 0, json)?;
            return Ok(OK);
        };
        let total = queue.stats(&name).await?.dead_letters;
        let what = format!("{} all {total} dead letters of queue `{name}`", op.verb());
        (which, total, what)
    } else {
        let total = ids.len() as u64;
        let what = format!("{} {total} dead letter(s) of queue `{name}`", op.verb());
        (Which::Ids(ids), total, what)
    };
    confirm(&what, yes)?;
    let steps = Steps {
        pace: rate.map(Pace::new),
        interrupt: Some(Interrupt::listen()),
    };
    let mut progress = Progress::new(op.done(), Some(total));
    let result = apply(queue, &name, which, op, steps, |n| progress.advance(n)).await?;
    progress.finish();
    report(op, &name, &result, total, json)?;
    Ok(if result.interrupted { INTERRUPTED } else { OK })
}

fn report(
    op: Write,
    name: &str,
    result: &WriteReport,
    total: u64,
    json: bool,
) -> Result<(), Failed> {
    if json {
        return print_json(result);
    }
    let mut line = format!(
        "{} {} of {total} dead letter(s) of queue `{name}`",
        op.done(),
        result.done
    );
    if result.not_found > 0 {
        line.push_str(&format!(", {} not found", result.not_found));
    }
    if result.no_message > 0 {
        line.push_str(&format!(
            ", {} left (no message to replay)",
            result.no_message
        ));
    }
    if result.interrupted {
        line.push_str("; interrupted by Ctrl-C: run the same command again to go on");
    }
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_compare_as_numbers() {
        assert!(parse_id("10-0") > parse_id("9-5"));
        assert!(parse_id("9-10") > parse_id("9-9"));
        assert_eq!(parse_id("nope"), None);
        // Shards: by stream id first, then shard.
        assert!(parse_id("1/9-9") > parse_id("0/9-9"));
        assert!(parse_id("0/10-0") > parse_id("7/9-9"));
        assert_eq!(parse_id("3/9-9"), Some((9, 9, 3)));
        assert_eq!(parse_id("x/9-9"), None);
        assert!(check_id("2/1-0", 8).is_ok());
        assert!(check_id("1-0", 1).is_ok());
        for (id, shards) in [("x", 1), ("x", 8), ("2/1-0", 1), ("1-0", 8), ("8/1-0", 8)] {
            let refused = check_id(id, shards).unwrap_err();
            assert_eq!(
                refused.code,
                crate::exit::USAGE,
                "{id} with {shards} shards"
            );
        }
    }
}
