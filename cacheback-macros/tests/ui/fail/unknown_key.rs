use cacheback::cacheback;

#[cacheback(ttl = "30s")]
async fn tweets(user: String) -> Vec<String> {
    vec![user]
}

fn main() {}
