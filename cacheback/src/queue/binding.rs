//! The prefix a broker-backed queue keeps its messages under: the builder's, else the first
//! client's (see [`Queue::bind_prefix`](super::Queue::bind_prefix)). Shared by the queues whose
//! names derive from the prefix alone (AMQP, NATS).

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The prefix of a queue used without a client.
pub(crate) const DEFAULT_PREFIX: &str = "cacheback";

/// A queue's prefix: fixed by the builder, or adopted from the first client bound.
#[derive(Debug)]
pub(crate) struct PrefixBinding {
    /// What the queue is called in errors (`"AmqpQueue"`).
    queue: &'static str,
    explicit: Option<String>,
    bound: OnceLock<String>,
}

impl PrefixBinding {
    /// A binding; `explicit` must already be a valid prefix.
    pub(crate) fn new(queue: &'static str, explicit: Option<String>) -> Self {
        PrefixBinding {
            queue,
            explicit,
            bound: OnceLock::new(),
        }
    }

    /// The prefix in use: the bound one, else (a queue used on its own) the builder's or
    /// `"cacheback"`, which is then fixed.
    pub(crate) fn get(&self) -> &str {
        self.bound.get_or_init(|| {
            self.explicit
                .clone()
                .unwrap_or_else(|| DEFAULT_PREFIX.to_owned())
        })
    }

    /// The prefix, if a client bound it or the queue was used.
    pub(crate) fn current(&self) -> Option<&str> {
        self.bound.get().map(String::as_str)
    }

    /// Adopts `prefix` unless the queue already has another one.
    pub(crate) fn bind(&self, prefix: &str) -> Result<()> {
        let wanted = self.explicit.as_deref().unwrap_or(prefix);
        let bound = self.bound.get_or_init(|| wanted.to_owned());
        if bound == prefix {
            return Ok(());
        }
        let why = match &self.explicit {
            Some(own) => format!("the {} was built with prefix `{own}`", self.queue),
            None => format!(
                "the {} is already in use under prefix `{bound}`",
                self.queue
            ),
        };
        Err(Error::config(format!(
            "{why}, but the client's prefix is `{prefix}`: its refresh requests would go to \
             another application's queues. Build the queue without `.prefix(...)` (it takes the \
             client's) or with the same prefix"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_prefix_is_adopted_and_a_second_one_refused() {
        let binding = PrefixBinding::new("TestQueue", None);
        assert_eq!(binding.current(), None);
        binding.bind("app").unwrap();
        binding.bind("app").unwrap();
        let e = binding.bind("other").unwrap_err().to_string();
        assert!(e.contains("already in use under prefix `app`"), "{e}");
        assert_eq!(binding.get(), "app");
    }

    #[test]
    fn an_explicit_prefix_refuses_another_client() {
        let binding = PrefixBinding::new("TestQueue", Some("mine".into()));
        let e = binding.bind("theirs").unwrap_err().to_string();
        assert!(e.contains("built with prefix `mine`"), "{e}");
        let unused = PrefixBinding::new("TestQueue", None);
        assert_eq!(unused.get(), DEFAULT_PREFIX);
    }
}
