use std::rc::Rc;

use cacheback::cacheback;

async fn slow() {}

#[cacheback]
async fn report(year: u16) -> u16 {
    let shared = Rc::new(year);
    slow().await;
    *shared
}

fn main() {}
