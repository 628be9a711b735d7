//! Hygiene: the expansion names everything by absolute path, so it compiles in a
//! module without the prelude, next to user items named like std's and serde's.
#![no_implicit_prelude]

mod hygiene {
    #![no_implicit_prelude]

    // User items that shadow names a careless expansion would use unqualified.
    #[allow(dead_code)]
    struct Result;
    #[allow(dead_code)]
    struct Vec;
    #[allow(dead_code)]
    mod serde {}

    #[derive(::std::default::Default)]
    pub struct Tally {
        total: u64,
    }

    #[::loopback_singleton::local_singleton]
    impl Tally {
        pub fn add(&mut self, n: u64, label: &str) -> ::std::string::String {
            self.total += n;
            ::std::format!("{label}: {}", self.total)
        }

        pub async fn total(&self) -> u64 {
            self.total
        }
    }
}

fn main() {
    let _ = hygiene::TallyClient::connect;
}
