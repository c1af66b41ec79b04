use cacheback::cacheback;

#[cacheback(tags = ["user {id}", "a{{b}}", 7])]
async fn bad_literals(id: u64) -> u64 {
    id
}

#[cacheback(tags = [])]
async fn no_tags(id: u64) -> u64 {
    id
}

fn wrong_arguments(id: &String, value: &u64) -> cacheback::Tags {
    cacheback::Tags::new().with(format!("{id}:{value}"))
}

#[cacheback(tags = wrong_arguments)]
async fn wrong_fn(id: u64) -> u64 {
    id
}

fn main() {}
