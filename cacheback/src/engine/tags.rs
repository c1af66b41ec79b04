//! Tags on the read and write paths: the tag clock read before a fetch (recorded in the
//! entry), and what an entry's tags make of it when it is read.
//!
//! The memory store answers both exactly and without awaiting. In front of a remote store a
//! client keeps a [`TagTable`]: the tag states it has read (or been told of), each trusted
//! for the client's tag check interval after it was read from the store; announcements of
//! tag changes (when the client watches the store's changes, as a near cache does) update it
//! at once, and its own `invalidate_tag` / `delete_tag` too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tracing::warn;

use crate::clock::Timestamp;
use crate::engine::Core;
use crate::engine::registry::JobEntry;
use crate::entry::{Entry, Payload};
use crate::error::Chain;
use crate::store::{Change, TagStates};
use crate::tags::{EntryTags, TagState, Verdict, tag_digest};

/// The tag states this process knows of a remote store's prefix.
#[derive(Debug)]
pub(crate) struct TagTable {
    /// How long a state read from the store is trusted.
    interval: Duration,
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// The highest tag clock value seen: a lower bound of the store's.
    clock: u64,
    /// Tag digest → its state, and when it was read from the store.
    states: HashMap<u128, (TagState, Timestamp)>,
    /// The size at which untrusted states are swept next.
    sweep_at: usize,
}

impl TagTable {
    pub(crate) fn new(interval: Duration) -> Self {
        TagTable {
            interval,
            inner: Mutex::new(Table::default()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every update is a plain insert or max: a panic cannot leave it half-written.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The highest tag clock value this process has seen.
    pub(crate) fn clock(&self) -> u64 {
        self.table().clock
    }

    /// What `tags` make of their entry at `now`, if every tag's state was read within the
    /// interval; `None`: read them from the store.
    pub(crate) fn cached(&self, tags: &EntryTags, now: Timestamp) -> Option<Verdict> {
        let table = self.table();
        let mut known = true;
        let verdict =
            tags.verdict(
                tags.names
                    .iter()
                    .map(|name| match table.states.get(&tag_digest(name)) {
                        Some(&(state, read_at)) if self.trusted(read_at, now) => state,
                        _ => {
                            known = false;
                            TagState::default()
                        }
                    }),
            );
        // A deletion known within the interval decides whatever the other tags say.
        (known || verdict == Verdict::Deleted).then_some(verdict)
    }

    /// Whether a state read from the store at `read_at` is still trusted at `now`.
    fn trusted(&self, read_at: Timestamp, now: Timestamp) -> bool {
        now >= read_at && now.since(read_at) < self.interval
    }

    /// What `tags` make of their entry with whatever this process knows, however old (a tag
    /// it knows nothing of counts as never invalidated): for when the store cannot be read.
    pub(crate) fn best_known(&self, tags: &EntryTags) -> Verdict {
        let table = self.table();
        tags.verdict(tags.names.iter().map(|name| {
            table
                .states
                .get(&tag_digest(name))
                .map_or_else(TagState::default, |&(state, _)| state)
        }))
    }

    /// Records states read from the store at `now` (`names[i]`'s is `read.states[i]`). States
    /// no longer trusted are dropped when the table has doubled since the last sweep, so it
    /// holds about the tags read within one interval.
    pub(crate) fn learn(&self, names: &[&str], read: &TagStates, now: Timestamp) {
        let mut table = self.table();
        table.clock = table.clock.max(read.clock);
        for (name, &state) in names.iter().zip(&read.states) {
            let known = table.states.entry(tag_digest(name)).or_insert((state, now));
            *known = (known.0.max(state), now);
        }
        if table.states.len() >= table.sweep_at.max(1024) {
            table
                .states
                .retain(|_, &mut (_, read_at)| self.trusted(read_at, now));
            table.sweep_at = table.states.len() * 2;
        }
    }

    /// Applies an announced change: a tag's new state is taken at once (a tag this process
    /// has not read yet will be read from the store anyway); after a lost subscription,
    /// every state is read again.
    pub(crate) fn apply(&self, change: Change) {
        let mut table = self.table();
        match change {
            Change::Tagged { tag, state } => {
                table.clock = table.clock.max(state.invalidated);
                if let Some(known) = table.states.get_mut(&tag) {
                    known.0 = known.0.max(state);
                }
            }
            Change::Lost | Change::Watching => table.states.clear(),
            Change::Written { .. } => {}
        }
    }
}

/// The tag clock to record in what a fetch starting now produces: exact with the memory
/// store. In front of a remote store: one read of the clock for a job this process has seen
/// with tags (a value it wrote, an entry it read or is refreshing); for other jobs, which
/// pay nothing, the highest value this process has seen. Never more than the store's clock,
/// so a tag invalidated during the fetch always counts; a lower one may make the first
/// tagged value a process writes for a job Stale once more than needed.
pub(crate) async fn clock_before_fetch<J>(core: &Core, job: &JobEntry<J>) -> u64 {
    if let Some(memory) = &core.memory {
        return memory.tag_clock_sync(&core.prefix);
    }
    if !job.tags_seen() {
        return core.tags.clock();
    }
    match core.store.tag_states(&core.prefix, &[]).await {
        Ok(read) => {
            core.tags.learn(&[], &read, core.now());
            read.clock
        }
        Err(error) => {
            // What this process saw is a lower bound: the entry may read as Stale once
            // more than needed, never Fresh after an invalidation.
            job.metrics.store_error("tag_states");
            warn!(error = %Chain(&error), "could not read the tag clock; using the last one seen");
            core.tags.clock()
        }
    }
}

/// What `tags` make of their entry now, without awaiting: exact with the memory store; from
/// the table in front of a remote store, `None` when it must be read first.
#[inline]
pub(crate) fn verdict_now(core: &Core, tags: &EntryTags, now: Timestamp) -> Option<Verdict> {
    match &core.memory {
        Some(memory) => Some(memory.tag_verdict_sync(&core.prefix, tags)),
        None => core.tags.cached(tags, now),
    }
}

/// What `tags` make of their entry now, reading their states from the store when this
/// process's are older than the check interval. If the store cannot be read, what this
/// process last knew decides.
pub(crate) async fn verdict(core: &Core, tags: &EntryTags) -> Verdict {
    let now = core.now();
    if let Some(verdict) = verdict_now(core, tags, now) {
        return verdict;
    }
    let names: Vec<&str> = tags.names().collect();
    match core.store.tag_states(&core.prefix, &names).await {
        Ok(read) => {
            core.tags.learn(&names, &read, now);
            tags.verdict(read.states)
        }
        Err(error) => {
            warn!(error = %Chain(&error), "could not read tag states; judging by the last ones seen");
            core.tags.best_known(tags)
        }
    }
}

/// The entry as its tags' `verdict` makes it at `now`: Stale (its fresh window closed now),
/// missing (a tombstone keeping its generation), or as it is.
pub(crate) fn judged(mut entry: Entry, verdict: Verdict, now: Timestamp) -> Entry {
    match verdict {
        Verdict::Current => entry,
        Verdict::Stale => {
            entry.meta.fresh_until = entry.meta.fresh_until.min(now);
            entry
        }
        Verdict::Deleted => Entry::new(entry.meta, Payload::tombstone()),
    }
}

/// A read entry as its tags make it, reading their states if needed.
pub(crate) async fn judge(core: &Core, entry: Option<Entry>) -> Option<Entry> {
    let entry = entry?;
    let Some(tags) = entry.tags.clone() else {
        return Some(entry);
    };
    let verdict = verdict(core, &tags).await;
    Some(judged(entry, verdict, core.now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    fn at(ms: u64) -> Timestamp {
        T0.saturating_add(Duration::from_millis(ms))
    }

    #[test]
    fn states_are_trusted_for_the_interval_and_announcements_apply_at_once() {
        let table = TagTable::new(Duration::from_secs(1));
        let tags = EntryTags::new(5, vec!["a".into()]).unwrap();
        assert_eq!(table.cached(&tags, T0), None, "never read");
        table.learn(&["a"], &TagStates::new(5, vec![TagState::new(4, 0)]), T0);
        assert_eq!(table.clock(), 5);
        assert_eq!(table.cached(&tags, at(999)), Some(Verdict::Current));
        assert_eq!(table.cached(&tags, at(1_000)), None, "read again");
        table.apply(Change::Tagged {
            tag: tag_digest("a"),
            state: TagState::new(6, 0),
        });
        assert_eq!(table.clock(), 6);
        assert_eq!(table.cached(&tags, at(10)), Some(Verdict::Stale));
        table.apply(Change::Lost);
        assert_eq!(table.cached(&tags, at(10)), None);
        assert_eq!(table.clock(), 6, "the clock only moves forward");

        // A deletion read within the interval decides even if another tag is unknown.
        let two = EntryTags::new(5, vec!["a".into(), "b".into()]).unwrap();
        table.learn(&["a"], &TagStates::new(7, vec![TagState::new(7, 7)]), T0);
        assert_eq!(table.cached(&two, at(10)), Some(Verdict::Deleted));
    }

    #[test]
    fn states_no_longer_trusted_are_swept() {
        let table = TagTable::new(Duration::from_secs(1));
        let names: Vec<String> = (0..1_500).map(|i| format!("t{i}")).collect();
        let old: Vec<&str> = names[..1_000].iter().map(String::as_str).collect();
        let read = TagStates::new(0, vec![TagState::default(); old.len()]);
        table.learn(&old, &read, T0);
        let new: Vec<&str> = names[1_000..].iter().map(String::as_str).collect();
        let read = TagStates::new(0, vec![TagState::default(); new.len()]);
        table.learn(&new, &read, at(2_000));
        assert_eq!(
            table.table().states.len(),
            500,
            "only what is still trusted is kept"
        );
    }

    #[test]
    fn judged_entries_keep_their_generation() {
        let mut meta = crate::entry::EntryMeta::new(T0, at(10_000), at(20_000));
        meta.generation = 7;
        let entry = Entry::new(meta, Payload::encoded(1, bytes::Bytes::new()));
        let stale = judged(entry.clone(), Verdict::Stale, at(5));
        assert_eq!(stale.meta.fresh_until, at(5));
        let gone = judged(entry, Verdict::Deleted, at(5));
        assert!(gone.is_tombstone());
        assert_eq!(gone.meta.generation, 7);
    }
}
