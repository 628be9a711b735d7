use loopback_singleton::local_singleton;

#[derive(Default)]
pub struct Holder<T> {
    value: T,
}

#[local_singleton]
impl<T: Clone> Holder<T> {
    pub fn get(&self) -> T {
        self.value.clone()
    }
}

fn main() {}
