//! A flag byte then any upstream bytes: an accepted response head must be rewritten into a valid
//! one without hop-by-hop fields or ambiguous framing, and nothing may panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flipgate::fuzzing::h1_response(data);
});
