//! The default name `<crate>.<Type>` of a non-ASCII type name can't name a directory:
//! a compile error at the type, not a runtime error at every `connect`.

use loopback_singleton::local_singleton;

#[derive(Default)]
pub struct Zähler {
    value: u64,
}

#[local_singleton]
impl Zähler {
    pub fn get(&self) -> u64 {
        self.value
    }
}

fn main() {}
