use cacheback::cacheback;

#[cacheback]
async fn describe(value: impl std::fmt::Debug) -> String {
    format!("{value:?}")
}

#[cacheback]
async fn numbers() -> impl Iterator<Item = u32> {
    0..3
}

fn main() {}
