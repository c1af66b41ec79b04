//! Reads of one entry key share commands under load: while a read of a key is on its way to
//! memcached, further reads of that key wait for it to come back and then go out together as
//! one `mg`, whose reply each of them takes. A lone read is a plain `mg` with nothing added; a
//! hot key's burst costs memcached (and this process) two commands rather than one per reader.
//!
//! A waiter takes only the reply to a command sent after it asked, so no read returns an entry
//! older than one whose write finished before the read began. Each command after the first runs
//! in a task of its own, bounded by the store's command timeout, so a reader that gives up (its
//! future dropped) never strands the readers that waited for it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use crate::error::Result;
use crate::store::Entry;

/// A read's answer, shared by every reader of its command.
pub(super) type Reply = Result<Option<Entry>>;

/// The keys being read, each with the readers waiting for its next command.
#[derive(Default)]
pub(super) struct Reads {
    keys: Mutex<HashMap<String, Vec<oneshot::Sender<Reply>>>>,
}

/// What a reader of a key does: send the command itself, or wait for the next one.
pub(super) enum Turn {
    /// No read of the key is on its way: this reader sends one, and hands the key on with
    /// [`Reads::done`] when the command is over (or given up).
    Send,
    /// A read of the key is on its way: the reply to the next command comes here (an error
    /// on receiving means the turn was dropped unsent; the reader then reads on its own).
    Wait(oneshot::Receiver<Reply>),
}

impl Reads {
    /// Whether the reader of `name` sends its command or waits for the next one.
    pub(super) fn turn(&self, name: &str) -> Turn {
        let mut keys = self.lock();
        match keys.get_mut(name) {
            Some(waiting) => {
                let (reply, waited) = oneshot::channel();
                waiting.push(reply);
                Turn::Wait(waited)
            }
            None => {
                keys.insert(name.to_owned(), Vec::new());
                Turn::Send
            }
        }
    }

    /// Ends the command in flight for `name`: the readers that waited meanwhile, who now
    /// need a command of their own (the key stays in flight for them), or none (the key is
    /// free again).
    pub(super) fn done(&self, name: &str) -> Vec<oneshot::Sender<Reply>> {
        let mut keys = self.lock();
        match keys.get_mut(name) {
            Some(waiting) if !waiting.is_empty() => std::mem::take(waiting),
            _ => {
                keys.remove(name);
                Vec::new()
            }
        }
    }

    /// Gives `name` up without a command for its waiters: they each read on their own.
    pub(super) fn abandon(&self, name: &str) {
        self.lock().remove(name);
    }

    /// How many keys have a read on its way (for tests).
    #[cfg(test)]
    pub(super) fn in_flight(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<oneshot::Sender<Reply>>>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reader_sends_and_the_others_wait_for_the_next_command() {
        let reads = Reads::default();
        assert!(matches!(reads.turn("k"), Turn::Send));
        let Turn::Wait(_first) = reads.turn("k") else {
            panic!("a second reader waits");
        };
        let Turn::Wait(_second) = reads.turn("k") else {
            panic!("a third reader waits");
        };
        assert!(matches!(reads.turn("other"), Turn::Send));
        // The command ends: the two waiters need the next one, and the key stays in flight.
        assert_eq!(reads.done("k").len(), 2);
        assert!(matches!(reads.turn("k"), Turn::Wait(_)));
        assert_eq!(reads.done("k").len(), 1);
        // Nobody waited for that one: the key is free.
        assert!(reads.done("k").is_empty());
        assert!(reads.done("other").is_empty());
        assert_eq!(reads.in_flight(), 0);
        assert!(matches!(reads.turn("k"), Turn::Send));
        reads.abandon("k");
        assert_eq!(reads.in_flight(), 0);
    }
}
