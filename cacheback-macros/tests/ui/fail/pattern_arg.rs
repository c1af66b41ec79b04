use cacheback::cacheback;

#[cacheback]
async fn area((width, height): (u32, u32)) -> u32 {
    width * height
}

#[cacheback]
async fn ignored(_: u32) -> u32 {
    0
}

fn main() {}
