//! What the broker-backed queues (AMQP, NATS) share: the prefix they keep their messages under
//! (the builder's, else the first client's; see
//! [`Queue::bind_prefix`](super::Queue::bind_prefix)), the rule for route names, and the pause
//! between failed connection attempts.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Chain, Error, Result};

/// The first pause after a failed connection attempt; it doubles up to the configured maximum.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// Failed connection attempts and the pause they impose: calls made during the pause fail at
/// once with the last failure, so that `enqueue` fails fast while a broker is away.
#[derive(Debug, Default)]
pub(crate) struct ReconnectPause {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<Error>,
}

impl ReconnectPause {
    /// `Err` (the last failure, and when the next attempt is due) while the pause runs.
    pub(crate) fn check(&self, backend: &'static str) -> Result<()> {
        match (self.retry_at, &self.last_error) {
            (Some(at), Some(last)) if Instant::now() < at => Err(Error::queue(
                backend,
                format!(
                    "the broker is unreachable (next attempt in {:?}): {}",
                    at - Instant::now(),
                    Chain(last)
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Records a failed attempt: the pause doubles from 100 ms up to `max`.
    pub(crate) fn failed(&mut self, error: &Error, max: Duration) {
        self.failures = self.failures.saturating_add(1);
        let delay = FIRST_RECONNECT_DELAY
            .saturating_mul(1 << self.failures.min(16).saturating_sub(1))
            .min(max);
        self.retry_at = Some(Instant::now() + delay);
        self.last_error = Some(error.clone());
    }

    /// Records a successful attempt; returns how many failed before it.
    pub(crate) fn succeeded(&mut self) -> u32 {
        let failures = self.failures;
        *self = ReconnectPause::default();
        failures
    }
}

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

/// Route names: 1 to 100 bytes of ASCII letters, digits, `_`, `.`, `-` (they end up in AMQP
/// queue names, which are at most 255 bytes).
pub(crate) fn validate_route(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "queue name `{name}` must be 1 to 100 ASCII letters, digits, `_`, `.` or `-`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failed_attempts_pause_calls_for_a_doubling_time() {
        let mut pause = ReconnectPause::default();
        pause.check("test").unwrap();
        let refused = Error::queue("test", "connection refused");
        pause.failed(&refused, Duration::from_secs(1));
        let e = pause.check("test").unwrap_err().to_string();
        assert!(e.contains("connection refused"), "{e}");
        tokio::time::advance(Duration::from_millis(101)).await;
        pause.check("test").unwrap();
        pause.failed(&refused, Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(150)).await;
        assert!(pause.check("test").is_err(), "the second pause is 200 ms");
        for _ in 0..10 {
            pause.failed(&refused, Duration::from_secs(1));
        }
        tokio::time::advance(Duration::from_millis(1001)).await;
        pause.check("test").unwrap();
        assert_eq!(pause.succeeded(), 12);
    }

    #[test]
    fn route_names_are_checked() {
        assert!(validate_route("reports-2.v1").is_ok());
        assert!(validate_route("").is_err());
        assert!(validate_route("a b").is_err());
    }

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
