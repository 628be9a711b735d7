//! Version 1 of the schema-skew service (see `loopback_singleton_suite::shapes_service`).

use serde::{Deserialize, Serialize};

loopback_singleton_suite::shapes_service! {
    /// A rate limit.
    #[derive(Serialize, Deserialize, loopback_singleton::Schema)]
    pub struct Quota {
        per_window: u32,
    }

    /// How strictly the limit applies.
    #[derive(Serialize, Deserialize, loopback_singleton::Schema)]
    pub enum Mode {
        Strict,
        Lenient,
    }

    impl Quota {
        fn new(per_window: u32) -> Self {
            Quota { per_window }
        }
    }

    impl Mode {
        fn last() -> Self {
            let _ = Mode::Strict;
            Mode::Lenient
        }
    }
}
