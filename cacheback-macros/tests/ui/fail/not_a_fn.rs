use cacheback::cacheback;

#[cacheback]
struct Report;

fn main() {}
