//! Readers of one key sharing commands, for the stores that read over the network: while a
//! read of a key is on its way, further reads of that key wait for it to come back and then go
//! out together as one command, whose reply each of them takes. A lone read is sent as it is;
//! a hot key's burst costs the server (and this process) two commands rather than one per
//! reader.
//!
//! A waiter takes only the reply to a command sent after it asked, so no read returns an entry
//! older than one whose write finished before the read began. This module keeps the book of
//! who sends and who waits; each store sends the next command from a task of its own, bounded
//! by its command timeout, so a reader that gives up (its future dropped) never strands the
//! readers that waited for it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// The keys being read, each with the readers waiting for its next command; `R` is a reply.
pub(crate) struct SameKey<R> {
    keys: Mutex<HashMap<Vec<u8>, Vec<oneshot::Sender<R>>>>,
}

impl<R> Default for SameKey<R> {
    fn default() -> Self {
        SameKey {
            keys: Mutex::default(),
        }
    }
}

/// What a reader of a key does: send the command itself, or wait for the next one.
pub(crate) enum Turn<R> {
    /// No read of the key is on its way: this reader sends one, and hands the key on with
    /// [`SameKey::done`] when the command is over (or given up).
    Send,
    /// A read of the key is on its way: the reply to the next command comes here (an error
    /// on receiving means the key was given up unsent; the reader then reads on its own).
    Wait(oneshot::Receiver<R>),
}

impl<R> SameKey<R> {
    /// Whether the reader of `key` sends its command or waits for the next one.
    pub(crate) fn turn(&self, key: &[u8]) -> Turn<R> {
        let mut keys = self.lock();
        match keys.get_mut(key) {
            Some(waiting) => {
                let (reply, waited) = oneshot::channel();
                waiting.push(reply);
                Turn::Wait(waited)
            }
            None => {
                keys.insert(key.to_vec(), Vec::new());
                Turn::Send
            }
        }
    }

    /// Ends the command in flight for `key`: the readers that waited meanwhile, who now need
    /// a command of their own (the key stays in flight for them), or none (the key is free
    /// again).
    pub(crate) fn done(&self, key: &[u8]) -> Vec<oneshot::Sender<R>> {
        let mut keys = self.lock();
        match keys.get_mut(key) {
            Some(waiting) if !waiting.is_empty() => std::mem::take(waiting),
            _ => {
                keys.remove(key);
                Vec::new()
            }
        }
    }

    /// Gives `key` up without a command for its waiters: they each read on their own.
    pub(crate) fn abandon(&self, key: &[u8]) {
        self.lock().remove(key);
    }

    /// How many keys have a read on its way (for tests).
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Vec<oneshot::Sender<R>>>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reader_sends_and_the_others_wait_for_the_next_command() {
        let reads = SameKey::<u32>::default();
        assert!(matches!(reads.turn(b"k"), Turn::Send));
        let Turn::Wait(_first) = reads.turn(b"k") else {
            panic!("a second reader waits");
        };
        let Turn::Wait(_second) = reads.turn(b"k") else {
            panic!("a third reader waits");
        };
        assert!(matches!(reads.turn(b"other"), Turn::Send));
        // The command ends: the two waiters need the next one, and the key stays in flight.
        assert_eq!(reads.done(b"k").len(), 2);
        assert!(matches!(reads.turn(b"k"), Turn::Wait(_)));
        assert_eq!(reads.done(b"k").len(), 1);
        // Nobody waited for that one: the key is free.
        assert!(reads.done(b"k").is_empty());
        assert!(reads.done(b"other").is_empty());
        assert_eq!(reads.in_flight(), 0);
        assert!(matches!(reads.turn(b"k"), Turn::Send));
        reads.abandon(b"k");
        assert_eq!(reads.in_flight(), 0);
    }
}
