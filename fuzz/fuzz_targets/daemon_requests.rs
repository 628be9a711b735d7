//! The daemon's request loop after a handshake: frames, headers, request kinds and the
//! service's request decoding and dispatch, on a framed stream built from fuzz input.
//! Every request up to the first violation gets one well-formed reply, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopback_singleton::fuzzing;
use loopback_singleton_fuzz::{Target, framed, limit};

fuzz_target!(|data: &[u8]| {
    if let Some((&selector, rest)) = data.split_first() {
        // Mostly the default limit: the small ones are the frames target's business.
        let max_frame = if selector < 0xe0 {
            1 << 20
        } else {
            limit(selector)
        };
        fuzzing::daemon_requests(Target::default(), &framed(rest), max_frame);
    }
});
