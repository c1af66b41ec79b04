use cacheback::cacheback;

#[cacheback]
fn tweets(user: String) -> Vec<String> {
    vec![user]
}

fn main() {}
