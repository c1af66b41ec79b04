use cacheback::cacheback;

#[cacheback(client = 42)]
async fn report(year: u16) -> u16 {
    year
}

fn main() {}
