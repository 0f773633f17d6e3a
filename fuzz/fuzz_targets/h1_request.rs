//! Any client bytes planned against a fixed table: a forwarded request's upstream head must be
//! valid, carry flipgate's forwarding fields once, no hop-by-hop field, and otherwise only the
//! client's own field lines; nothing may panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = flipgate::fuzzing::h1_request(data);
});
