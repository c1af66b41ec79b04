use cacheback::cacheback;

struct Api;

impl Api {
    #[cacheback]
    async fn tweets(&self, user: String) -> Vec<String> {
        vec![user]
    }
}

fn main() {}
