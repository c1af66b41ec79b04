use cacheback::cacheback;

#[cacheback]
async fn describe<T: std::fmt::Debug>(value: T) -> String {
    format!("{value:?}")
}

fn main() {}
