//! A type name of over 64 characters makes a default name `<crate>.<Type>` too long to
//! be a singleton name, whatever the crate: a compile error at the type.

use loopback_singleton::local_singleton;

#[derive(Default)]
pub struct ThisTypeNameIsLongerThanTheSixtyFourCharactersThatASingletonNameMayHave {
    value: u64,
}

#[local_singleton]
impl ThisTypeNameIsLongerThanTheSixtyFourCharactersThatASingletonNameMayHave {
    pub fn get(&self) -> u64 {
        self.value
    }
}

fn main() {}
