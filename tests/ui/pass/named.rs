//! `name = "..."` replaces the default `<crate>.<Type>` singleton name.

use loopback_singleton::{Service, local_singleton};

#[derive(Default)]
pub struct Registry {
    entries: Vec<String>,
}

#[local_singleton(name = "my-registry.v1")]
impl Registry {
    pub fn register(&mut self, entry: String) -> usize {
        self.entries.push(entry);
        self.entries.len()
    }
}

const _: () = assert!(matches!(<Registry as Service>::NAME.as_bytes(), b"my-registry.v1"));

fn main() {}
