//! `#[dep]` parameters: several, anywhere in the signature, of types imported or reached by a
//! path, on fns of any visibility; `init` and `job()` used from outside the fn's module.
#![deny(warnings, missing_debug_implementations)]

use std::sync::Arc;

use cacheback::{JobHandle, cacheback};

mod driver {
    /// A pool from elsewhere: neither `Clone`, `Debug` nor serializable.
    #[allow(missing_debug_implementations)]
    pub struct Pool;
}

use driver::Pool;

/// Reads through a repository.
pub trait Repo: Send + Sync {
    /// One row.
    fn row(&self, id: u64) -> String;
}

/// Public, one dependency and one key argument.
#[cacheback]
pub async fn user(#[dep] db: &Pool, id: u64) -> Result<String, std::io::Error> {
    let _: &Pool = db;
    Ok(id.to_string())
}

#[cacheback(fetch_on_miss = false)]
pub(crate) async fn report(
    #[dep] db: &Pool,
    region: String,
    #[dep] repo: &Arc<dyn Repo>,
    year: u16,
) -> Vec<String> {
    let _: &Pool = db;
    vec![region, repo.row(u64::from(year))]
}

#[cacheback]
async fn only_deps(#[dep] r#type: &String) -> usize {
    r#type.len()
}

mod nested {
    use cacheback::cacheback;

    #[cacheback]
    pub(super) async fn through_super(#[dep] db: &super::Pool, n: u32) -> u32 {
        let _: &super::Pool = db;
        n
    }
}

#[derive(Debug)]
struct Rows;

impl Repo for Rows {
    fn row(&self, id: u64) -> String {
        id.to_string()
    }
}

async fn use_them() -> cacheback::Result<()> {
    let handle: JobHandle<_> = user::init(Pool)?;
    handle.invalidate(1).await?;
    let _: Arc<String> = user(1).await?;
    user::job()?.delete(1).await?;

    report::init(Pool, Arc::new(Rows))?;
    let _: Option<Arc<Vec<String>>> = report("emea".to_owned(), 2024).await?;
    report::job()?.refresh(("emea".to_owned(), 2024)).await?;

    only_deps::init("x".to_owned())?;
    let _: Arc<usize> = only_deps().await?;
    only_deps::job()?.peek(()).await?;

    nested::through_super::init(Pool)?;
    let _: Arc<u32> = nested::through_super(3).await?;
    Ok(())
}

fn main() {
    drop(use_them());
}
