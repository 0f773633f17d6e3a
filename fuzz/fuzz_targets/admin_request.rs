//! Any admin request head and body against the admin guard and the JSON parser: a request let
//! through names an accepted host, carries no foreign Origin, is no cross-site fetch, and as a
//! mutation presents the token and declares a body JSON; nothing may panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = flipgate::fuzzing::admin_request(data);
});
