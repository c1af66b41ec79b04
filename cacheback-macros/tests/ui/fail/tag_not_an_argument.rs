use cacheback::cacheback;

#[cacheback(tags = ["user:{user}"])]
async fn not_an_argument(id: u64) -> u64 {
    id
}

fn main() {}
