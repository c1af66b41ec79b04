use cacheback::cacheback;

#[cacheback]
async fn tweets(user: &str) -> Vec<String> {
    vec![user.to_owned()]
}

#[cacheback]
async fn sum(numbers: &[u64]) -> u64 {
    numbers.iter().sum()
}

#[cacheback]
async fn nested(names: Vec<&'static str>) -> usize {
    names.len()
}

pub struct Pool;

#[cacheback]
async fn lookup(db: &Pool, id: u64) -> u64 {
    let _ = db;
    id
}

fn main() {}
