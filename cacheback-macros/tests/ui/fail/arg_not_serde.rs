use cacheback::cacheback;

#[derive(Clone)]
struct Region(String);

#[cacheback]
async fn report(region: Region) -> String {
    region.0
}

fn main() {}
