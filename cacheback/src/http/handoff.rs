//! Handing a response the fetch does not store to the request that caused the fetch, so that
//! the origin is called once for it and the body streams instead of being read whole.
//!
//! A request's key carries a [`Handoff`]; it is no part of the key (never serialized, hashed
//! or compared), so it reaches the fetch only when the fetch runs in this process with the
//! args the request read with: a miss it fetches, a refetch, a forced refresh. A fetch
//! started by someone else (the request joined it) or a refresh from the queue sees no handoff
//! (the one it gets is `None`): what it does not store, it drops.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::response::Parts;

use crate::http::body::OriginStream;

/// A response of the origin that the fetch did not store: its head, the body chunks the fetch
/// read, and the rest of the body, unread.
pub(crate) struct Handed {
    pub(crate) head: Parts,
    pub(crate) read: Vec<Bytes>,
    pub(crate) rest: OriginStream,
}

/// Where a fetch leaves a [`Handed`] response for the request waiting for it. Empty (`None`
/// inside) when no request waits, as in a refresh.
#[derive(Clone, Default)]
pub(crate) struct Handoff(Option<Arc<Mutex<Option<Handed>>>>);

impl Handoff {
    /// A handoff a request waits on (one small allocation).
    pub(crate) fn armed() -> Self {
        Handoff(Some(Arc::new(Mutex::new(None))))
    }

    /// Leaves `handed` for the waiting request; without one, drops it, and with it the
    /// origin's body (and connection).
    pub(crate) fn give(&self, handed: Handed) {
        if let Some(slot) = &self.0 {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(handed);
        }
    }

    /// The response a fetch left, if any.
    pub(crate) fn take(&self) -> Option<Handed> {
        let slot = self.0.as_ref()?;
        slot.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

// Not part of the key: every handoff is equal to every other and hashes to nothing.
impl PartialEq for Handoff {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Handoff {}

impl Hash for Handoff {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};

    fn handed() -> Handed {
        let (head, ()) = http::Response::new(()).into_parts();
        let rest = Empty::new().map_err(|never| match never {}).boxed_unsync();
        Handed {
            head,
            read: vec![Bytes::from_static(b"x")],
            rest,
        }
    }

    #[test]
    fn only_an_armed_handoff_keeps_what_it_is_given() {
        let armed = Handoff::armed();
        let copy = armed.clone();
        copy.give(handed());
        assert!(
            armed.take().is_some(),
            "the request finds what its fetch left"
        );
        assert!(armed.take().is_none(), "once");

        let empty = Handoff::default();
        empty.give(handed());
        assert!(
            empty.take().is_none(),
            "a refresh's handoff drops what it is given"
        );
        assert!(armed == empty, "no part of a key");
    }
}
