use loopback_singleton::local_singleton;

#[derive(Default)]
pub struct Greeter {
    greeting: String,
}

#[local_singleton]
impl Greeter {
    pub fn set(&mut self, greeting: &'static str) {
        self.greeting = greeting.to_owned();
    }
}

fn main() {}
