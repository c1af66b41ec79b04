//! Exit codes and the error a command fails with.

use std::fmt;
use std::process::ExitCode;

/// Why a command failed, with the exit code that says so.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) code: u8,
    pub(crate) message: String,
}

/// The command did what it was asked.
pub(crate) const OK: u8 = 0;
/// Redis (or the cache) failed or answered something unexpected.
pub(crate) const ERROR: u8 = 1;
/// The command line was wrong: an unknown command or flag, a malformed key, id or JSON.
pub(crate) const USAGE: u8 = 2;
/// What the command names does not exist: no such entry, dead letter or job.
pub(crate) const NOT_FOUND: u8 = 3;
/// A command that writes was not confirmed (no `--yes`, and no terminal to ask on, or the
/// answer was no).
pub(crate) const REFUSED: u8 = 4;
/// Stopped by Ctrl-C before the end; what was done is in the summary.
pub(crate) const INTERRUPTED: u8 = 130;

impl Failed {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Failed {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(NOT_FOUND, message)
    }

    /// Prints the message on stderr and turns the code into the process's exit code.
    pub(crate) fn exit(self) -> ExitCode {
        eprintln!("cacheback: {}", self.message);
        ExitCode::from(self.code)
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A cache error, with its whole chain of causes on one line.
impl From<cacheback::Error> for Failed {
    fn from(error: cacheback::Error) -> Self {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        Failed::new(ERROR, message)
    }
}

/// What a command returns.
pub(crate) type Outcome = Result<u8, Failed>;

/// The process exit code of an outcome (errors printed on stderr).
pub(crate) fn exit_code(outcome: Outcome) -> ExitCode {
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failed) => failed.exit(),
    }
}
