use cacheback::cacheback;

#[cacheback(lifetime = "5min")]
async fn unknown_unit() -> u32 {
    0
}

#[cacheback(stale_ttl = "30")]
async fn no_unit() -> u32 {
    0
}

#[cacheback(fetch_timeout = "1.5s")]
async fn fraction() -> u32 {
    0
}

#[cacheback(lifetime = 30s)]
async fn not_a_string() -> u32 {
    0
}

#[cacheback(lifetime = "0s")]
async fn zero_lifetime() -> u32 {
    0
}

fn main() {}
