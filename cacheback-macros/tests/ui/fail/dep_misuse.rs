use cacheback::cacheback;

pub struct Pool;

pub trait Repo {}

#[cacheback]
async fn by_value(#[dep] _db: Pool, id: u64) -> u64 {
    id
}

#[cacheback]
async fn mutable(#[dep] _db: &mut Pool, id: u64) -> u64 {
    id
}

#[cacheback]
async fn with_lifetime(#[dep] _db: &'static Pool, id: u64) -> u64 {
    id
}

#[cacheback]
async fn trait_object(#[dep] _repo: &dyn Repo, id: u64) -> u64 {
    id
}

#[cacheback]
async fn borrowing(#[dep] _names: &Vec<&str>, id: u64) -> u64 {
    id
}

#[cacheback]
async fn with_arguments(#[dep(shared)] _db: &Pool, id: u64) -> u64 {
    id
}

fn main() {}
