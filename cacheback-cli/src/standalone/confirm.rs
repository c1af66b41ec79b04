//! Every command that writes runs only when confirmed: `--yes`, or a "y" typed on a terminal.

use std::io::{BufRead, IsTerminal, Write};

use crate::exit::{Failed, REFUSED};

/// Confirms `action` (e.g. "replay 3 dead letters of queue `default`"): at once with `yes`,
/// else by asking on the terminal; refused when there is no terminal to ask on.
pub(crate) fn confirm(action: &str, yes: bool) -> Result<(), Failed> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failed::new(
            REFUSED,
            format!("refusing to {action} without --yes (no terminal to ask for confirmation)"),
        ));
    }
    eprint!("{action}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failed::new(REFUSED, format!("could not read the answer: {e}")))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failed::new(
            REFUSED,
            format!("not confirmed: did not {action}"),
        ))
    }
}
