//! The schema-skew service with a variant inserted in the middle of `Mode`, which shifts
//! `Lenient`'s index on the wire (see `suite-shapes-v1`).

use serde::{Deserialize, Serialize};

loopback_singleton_suite::shapes_service! {
    /// A rate limit.
    #[derive(Serialize, Deserialize, loopback_singleton::Schema)]
    pub struct Quota {
        per_window: u32,
    }

    /// How strictly the limit applies, now with a middle ground.
    #[derive(Serialize, Deserialize, loopback_singleton::Schema)]
    pub enum Mode {
        Strict,
        Relaxed,
        Lenient,
    }

    impl Quota {
        fn new(per_window: u32) -> Self {
            Quota { per_window }
        }
    }

    impl Mode {
        fn last() -> Self {
            let _ = (Mode::Strict, Mode::Relaxed);
            Mode::Lenient
        }
    }
}
