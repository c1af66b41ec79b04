use cacheback::cacheback;

#[cacheback(jitter = 1.5, early_refresh = 0.0)]
async fn out_of_range() -> u32 {
    0
}

#[cacheback(name = "user tweets", queue = "")]
async fn bad_names() -> u32 {
    0
}

fn main() {}
