//! Child processes of the harness: the binary re-invokes itself as
//! `cacheback-bench __child ROLE [ARGS...]` for workloads and reliability runs that need real OS
//! processes (W2 across processes, the chaos run). Roles are dispatched by prefix to the module
//! that owns them.

use std::process::{Child, Command, Stdio};

/// The first argument that marks a child process.
pub(crate) const CHILD_COMMAND: &str = "__child";

/// Starts this binary as a child with `role` and `args`, stdout piped (children report on
/// stdout, one line per fact), stderr inherited.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn spawn(role: &str, args: &[String]) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    Command::new(exe)
        .arg(CHILD_COMMAND)
        .arg(role)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start a `{role}` child: {e}"))
}

/// The child's `main`: runs `role` and exits with its status (1 and a message on error).
pub(crate) fn child_main(args: &[String]) -> ! {
    let Some((role, rest)) = args.split_first() else {
        eprintln!("cacheback-bench {CHILD_COMMAND}: missing role");
        std::process::exit(2);
    };
    let result = if role.starts_with("chaos-") {
        crate::reliability::chaos::child(role, rest)
    } else if role.starts_with("w2-") {
        crate::workloads::w2::child(role, rest)
    } else {
        Err(format!("unknown child role `{role}`"))
    };
    match result {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            eprintln!("cacheback-bench {CHILD_COMMAND} {role}: {error}");
            std::process::exit(1);
        }
    }
}
