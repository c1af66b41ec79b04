use std::cell::Cell;
use std::rc::Rc;

use cacheback::cacheback;

#[cacheback]
async fn counted(#[dep] counter: &Rc<Cell<u32>>, id: u64) -> u64 {
    counter.set(counter.get() + 1);
    id
}

fn main() {}
