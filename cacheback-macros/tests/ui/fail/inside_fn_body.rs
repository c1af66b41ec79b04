use cacheback::cacheback;

fn main() {
    #[cacheback]
    async fn local(n: u32) -> u32 {
        n
    }
}
