//! [`KeyError`], why a key could not be derived, and how a rejected name is shown in it.

use std::fmt;

use serde::ser;

use super::{MAX_JOB_NAME_LEN, MAX_PREFIX_LEN};

/// Why a key could not be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    /// The args' `Serialize` impl reported an error.
    #[error("args could not be serialized: {0}")]
    Serialize(String),
    /// The canonical encoding of the args is longer than `limit` bytes.
    #[error("args are too large: their canonical encoding exceeds {limit} bytes")]
    ArgsTooLarge {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
    /// The prefix is the empty string.
    #[error("prefix is empty")]
    EmptyPrefix,
    /// The prefix is longer than [`MAX_PREFIX_LEN`] bytes.
    #[error("prefix `{}` is {len} bytes long, more than the maximum of {max}", Shown(.prefix), max = MAX_PREFIX_LEN)]
    PrefixTooLong {
        /// The rejected prefix.
        prefix: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The prefix contains a character outside `[A-Za-z0-9_.-]`.
    #[error("prefix `{}` {reason}", Shown(.prefix))]
    InvalidPrefix {
        /// The rejected prefix.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The job name is the empty string.
    #[error("job name is empty")]
    EmptyJobName,
    /// The job name is longer than [`MAX_JOB_NAME_LEN`] bytes.
    #[error("job name `{}` is {len} bytes long, more than the maximum of {max}", Shown(.name), max = MAX_JOB_NAME_LEN)]
    JobNameTooLong {
        /// The rejected job name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The job name contains whitespace, a control character, a non-ASCII character, `{` or `}`.
    #[error("job name `{}` {reason}", Shown(.name))]
    InvalidJobName {
        /// The rejected job name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl ser::Error for KeyError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        KeyError::Serialize(msg.to_string())
    }
}

/// Displays a rejected name escaped (so control characters show as `\n`, `\u{0}`, …) and cut
/// short, so that an error message stays one readable line whatever the input was.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_CHARS: usize = 80;
        for c in self.0.chars().take(MAX_CHARS) {
            write!(f, "{}", c.escape_debug())?;
        }
        if self.0.chars().nth(MAX_CHARS).is_some() {
            f.write_str("...")?;
        }
        Ok(())
    }
}
