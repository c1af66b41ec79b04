use cacheback::cacheback;

struct Report {
    total: u64,
}

#[cacheback]
async fn report(year: u16) -> Result<Report, std::io::Error> {
    Ok(Report { total: year.into() })
}

fn main() {}
