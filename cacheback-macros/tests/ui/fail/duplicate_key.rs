use cacheback::cacheback;

#[cacheback(lifetime = "30s", lifetime = "1m")]
async fn tweets(user: String) -> Vec<String> {
    vec![user]
}

fn main() {}
