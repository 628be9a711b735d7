//! The handshake: every handshake message decoded from arbitrary bytes (and re-encoded),
//! the client's reply decoding, and the daemon's side of the handshake fed a framed
//! stream (nobody without the secret is admitted; the daemon says nothing but its
//! challenge).
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopback_singleton::fuzzing;
use loopback_singleton_fuzz::{Target, framed};

fuzz_target!(|data: &[u8]| {
    fuzzing::handshake_messages(data);
    let _ = fuzzing::reply::<u64>(data);
    let _ = fuzzing::reply::<Option<Vec<u8>>>(data);
    let _ = fuzzing::reply::<Result<i64, String>>(data);
    fuzzing::daemon_handshake::<Target>(&framed(data));
});
