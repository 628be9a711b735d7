use loopback_singleton::local_singleton;

#[derive(Default)]
pub struct Counter {
    value: u64,
}

#[local_singleton]
impl Counter {
    pub fn fill(&self, out: &mut Vec<u64>) {
        out.push(self.value);
    }
}

fn main() {}
