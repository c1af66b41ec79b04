use cacheback::cacheback;

#[cacheback(fetch_on_miss = "yes")]
async fn flag_as_string() -> u32 {
    0
}

#[cacheback(jitter = "0.1", schema_version = 1.5, queue = reports)]
async fn several() -> u32 {
    0
}

#[cacheback(fetch_on_miss)]
async fn missing_value() -> u32 {
    0
}

fn main() {}
