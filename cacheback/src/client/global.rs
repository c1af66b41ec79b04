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
/// The default client is private to the process: in a fleet, nothing it caches is shared with
/// the other processes and no other worker refreshes it. Since that is rarely what a deployed
/// program wants, building it logs a `WARN` event (once, target `cacheback::global`) that says
/// so and how to configure a client: [`set_global`] at start-up, or `client = ...` on the
/// attribute. A program that means to use the default can silence it by installing the same
/// client itself: `set_global(Cacheback::builder().build()?)`.
///
/// # Panics
///
/// When building the default client fails: outside a Tokio runtime.
pub fn global() -> &'static Cacheback {
    GLOBAL.get_or_init(|| {
        tracing::warn!(
            target: "cacheback::global",
            "no client was installed with `cacheback::set_global`, so a private in-memory \
             client with an in-process worker was built: #[cacheback] fns without \
             `client = ...` share nothing with other processes; call \
             `cacheback::set_global(client)` at start-up, or pass `client = ...` to the \
             attribute"
        );
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
