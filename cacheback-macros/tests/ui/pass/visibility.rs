//! `pub`, `pub(crate)`, `pub(super)` and private cached fns compile without warnings, whether
//! or not their `job()` is used.
#![deny(warnings, missing_debug_implementations)]

use cacheback::cacheback;

/// Public.
#[cacheback]
pub async fn public(n: u32) -> u32 {
    n
}

/// Crate-visible.
#[cacheback]
pub(crate) async fn crate_visible(n: u32) -> u32 {
    n
}

/// Private, and its `job()` is never used.
#[cacheback]
async fn private(n: u32) -> u32 {
    n
}

mod inner {
    use cacheback::cacheback;

    /// Visible to the parent module only.
    #[cacheback]
    pub(super) async fn parent_visible(n: u32) -> u32 {
        n
    }

    /// Visible in the whole crate, from a private module.
    #[cacheback]
    pub(crate) async fn deep(n: u32) -> u32 {
        n
    }

    pub(super) mod deeper {
        use cacheback::cacheback;

        /// Visible in `inner` only.
        #[cacheback]
        pub(in crate::inner) async fn deepest(n: u32) -> u32 {
            n
        }
    }

    pub(super) async fn use_deepest() -> cacheback::Result<u32> {
        deeper::deepest::job().delete(6).await?;
        Ok(*deeper::deepest(6).await?)
    }
}

async fn use_them() -> cacheback::Result<u32> {
    let total = *public(1).await?
        + *crate_visible(2).await?
        + *private(3).await?
        + *inner::parent_visible(4).await?
        + *inner::deep(5).await?
        + inner::use_deepest().await?;
    public::job().invalidate(1).await?;
    crate_visible::job().delete(2).await?;
    inner::parent_visible::job().set(4, 40).await?;
    inner::deep::job().refresh(5).await?;
    Ok(total)
}

fn main() {
    drop(use_them());
}
