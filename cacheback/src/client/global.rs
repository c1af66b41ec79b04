//! The process-wide client used by `#[cacheback]` functions that name no `client = ...`.

use std::sync::OnceLock;

use crate::client::Cacheback;

static GLOBAL: OnceLock<Cacheback> = OnceLock::new();

/// The process-wide client: the one installed with [`set_global`], or else a client with the
/// embedded defaults (memory store, in-process worker), built on first use.
///
/// `#[cacheback]` functions without a `client = ...` argument read through it. The default
/// client's worker runs on the Tokio runtime of that first use, so a program with several
/// runtimes (e.g. `#[tokio::test]`s) should install its own client, or pass `client = ...`.
///
/// # Panics
///
/// When building the default client fails: outside a Tokio runtime.
pub fn global() -> &'static Cacheback {
    GLOBAL.get_or_init(|| {
        Cacheback::builder()
            .build()
            .unwrap_or_else(|e| panic!("cacheback: cannot build the default client: {e}"))
    })
}

/// Installs the process-wide client (for example one backed by Redis, with the worker settings
/// of a web or a worker process). Call it at start-up, before the first `#[cacheback]` call.
/// Fails, handing the client back, if a global client is already installed or was already
/// built by [`global`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = cacheback::Cacheback::builder().prefix("myapp").build().unwrap();
/// assert!(cacheback::set_global(client).is_ok());
/// assert_eq!(cacheback::global().prefix(), "myapp");
/// # }
/// ```
pub fn set_global(client: Cacheback) -> Result<(), Cacheback> {
    GLOBAL.set(client)
}
