//! The frame readers of both sides (blocking and async) on arbitrary bytes: they agree
//! with each other and with `holds_frame`, and refuse frames above the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopback_singleton_fuzz::limit;

fuzz_target!(|data: &[u8]| {
    if let Some((&selector, rest)) = data.split_first() {
        loopback_singleton::fuzzing::frames(rest, limit(selector));
    }
});
