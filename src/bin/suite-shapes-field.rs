//! The schema-skew service with a field added to `Quota`: version 1's methods, names and
//! signatures as written, but another wire shape (see `suite-shapes-v1`).

use serde::{Deserialize, Serialize};

loopback_singleton_suite::shapes_service! {
    /// A rate limit, now with a burst allowance.
    #[derive(Serialize, Deserialize, loopback_singleton::Schema)]
    pub struct Quota {
        per_window: u32,
        burst: u32,
    }

    /// How strictly the limit applies.
    #[derive(Serialize, Deserialize, loopback_singleton::Schema)]
    pub enum Mode {
        Strict,
        Lenient,
    }

    impl Quota {
        fn new(per_window: u32) -> Self {
            Quota { per_window, burst: 0 }
        }
    }

    impl Mode {
        fn last() -> Self {
            let _ = Mode::Strict;
            Mode::Lenient
        }
    }
}
