//! Zero, one and many parameters; `mut` parameters; `Result` and plain return types; cfg and
//! lint attributes; raw identifiers.
#![deny(warnings)]

use std::sync::Arc;

use cacheback::cacheback;

#[cacheback]
async fn no_params() -> Result<String, std::io::Error> {
    Ok("x".to_owned())
}

#[cacheback]
async fn one_param(id: u64) -> Result<Vec<u8>, std::fmt::Error> {
    Ok(id.to_be_bytes().to_vec())
}

#[cacheback]
async fn three_params(a: String, b: Option<u32>, c: Vec<(u8, bool)>) -> (String, usize) {
    (a, b.unwrap_or(0) as usize + c.len())
}

#[cacheback]
async fn mutable_param(mut items: Vec<u32>) -> Vec<u32> {
    items.sort();
    items
}

#[cacheback]
async fn returns_nothing(_event: String) {}

#[cacheback]
async fn full_result_path(
    n: i64,
) -> ::std::result::Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    Ok(n)
}

#[cacheback]
async fn r#type(kind: String) -> String {
    kind
}

/// `expect` lands on the body, where the lint fires.
#[cacheback]
#[expect(unused_variables)]
async fn with_lint_attributes(n: u32) -> u32 {
    let unused = n;
    1
}

#[cfg(any())]
#[cacheback]
async fn compiled_out(n: NoSuchType) -> NoSuchType {
    n
}

async fn call_them() -> cacheback::Result<()> {
    let _: Arc<String> = no_params().await?;
    let _: Arc<Vec<u8>> = one_param(1).await?;
    let _: Arc<(String, usize)> = three_params("a".into(), Some(1), vec![(1, true)]).await?;
    let _: Arc<Vec<u32>> = mutable_param(vec![3, 1, 2]).await?;
    let _: Arc<()> = returns_nothing("e".into()).await?;
    let _: Arc<i64> = full_result_path(-1).await?;
    let _: Arc<String> = r#type("k".into()).await?;
    let _: Arc<u32> = with_lint_attributes(1).await?;
    no_params::job().invalidate(()).await?;
    // One parameter: the job takes it as it is, not as a one-element tuple.
    one_param::job().invalidate(1).await?;
    mutable_param::job().delete(vec![1, 2, 3]).await?;
    three_params::job()
        .set(("a".into(), None, vec![]), ("a".into(), 0))
        .await?;
    assert_eq!(r#type::job().name(), "signatures::type");
    Ok(())
}

fn main() {
    drop(call_them());
}
